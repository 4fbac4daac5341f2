"""Local static catalogs as hostile input: folders that link back to themselves (symlinks, ``../``) are walked
once per real document, and assets stay under the catalog's folder (``../``, absolute paths and symlinks out
of it are refused) unless ``--allow-asset-schemes file`` says otherwise. Real files, real symlinks."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from rsclip.ingest import catalogs, stac

pytestmark = pytest.mark.timeout(120)  # a combinatorial walk would hang: a hang fails


def _catalog(folder: Path, children: list[str], items: list[str]) -> Path:
    links = [{"rel": "child", "href": c, "type": "application/json"} for c in children]
    links += [{"rel": "item", "href": i, "type": "application/geo+json"} for i in items]
    path = folder / "catalog.json"
    path.write_text(json.dumps({"type": "Catalog", "stac_version": "1.0.0", "id": folder.name or "root",
                                "description": "test", "links": links}))
    return path


def _item(path: Path, asset_href: str) -> None:
    path.write_text(json.dumps({
        "type": "Feature", "stac_version": "1.0.0", "id": path.stem, "geometry": {"type": "Point",
        "coordinates": [0.0, 0.0]}, "bbox": [0.0, 0.0, 0.0, 0.0], "links": [],
        "properties": {"datetime": "2021-01-01T00:00:00Z"}, "assets": {"visual": {"href": asset_href}}}))


def test_a_catalog_whose_folders_link_back_to_themselves_is_walked_once(tmp_path):
    root = tmp_path / "cat"
    (root / "sub").mkdir(parents=True)
    for name in ("a", "b"):  # two loops: a walk by link text would visit 2^depth documents
        (root / name).symlink_to(".", target_is_directory=True)
    (root / "x.tif").write_bytes(b"II*\x00")
    _item(root / "one.json", "./x.tif")
    catalog = _catalog(root, ["a/catalog.json", "b/catalog.json", "sub/catalog.json"], ["one.json", "a/one.json"])
    _catalog(root / "sub", ["../catalog.json", "../a/catalog.json"], ["../b/one.json"])
    found = list(catalogs.document_items(str(catalog)))
    assert [entry.id for entry in found] == ["one"]
    (source,) = stac.list_items(stac.StacOptions(stac=str(catalog)))
    assert not source.problem and os.path.realpath(source.uri) == str((root / "x.tif").resolve())
    assert catalogs.document_key(str(root / "a" / "b" / "one.json")) == str((root / "one.json").resolve())


def test_a_local_catalogs_assets_stay_under_its_folder_unless_allowed(tmp_path):
    root, outside = tmp_path / "cat", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "inside.tif").write_bytes(b"II*\x00")
    (outside / "secret.tif").write_bytes(b"II*\x00")
    (root / "link.tif").symlink_to(outside / "secret.tif")
    hrefs = {"inside": "./inside.tif", "up": "../elsewhere/secret.tif", "absolute": str(outside / "secret.tif"),
             "link": "./link.tif", "file-url": f"file://{outside / 'secret.tif'}"}
    for name, href in hrefs.items():
        _item(root / f"{name}.json", href)
    catalog = _catalog(root, [], [f"{name}.json" for name in hrefs])
    listed = {s.item_id: s.problem for s in stac.list_items(stac.StacOptions(stac=str(catalog)))}
    assert listed["inside"] == ""
    for name in ("up", "absolute", "link"):
        assert "outside the catalog's folder" in listed[name], name
    assert listed["file-url"]  # file:// is never read from a catalog
    allowed = {s.item_id: s.problem for s in stac.list_items(stac.StacOptions(
        stac=str(catalog), allow_asset_schemes=("file",)))}
    assert {name for name, problem in allowed.items() if problem} == {"file-url"}
