"""Which string queries are images (issue 25, item 4): a string that names an image is read as one, and a
missing one is an error naming it, never a text search for the path; text with slashes and dots stays text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rsclip.errors import NotFound
from rsclip.search.encoding import Text, is_image_query, looks_like_image_path, text_vector
from rsclip.search.examples import query_examples
from rsclip.search.query import query
from tests.helpers import write_scene_table

IMAGES = ["/data/missing.jpg", "chips/port_12.PNG", "scene.tif", "scene.TIFF", "my photo.jpeg", "x.bmp", "x.webp",
          "x.jp2", "s3://bucket/prefix/no-suffix", "file:///tmp/no-suffix", "../up/x.png"]
TEXTS = ["airport/runway", "3.5 m resolution", "harbour, 2020.", "a .jpg of an airport", "png", "jpg images",
         "runways/taxiways.", "https://example.org/page", "/", "storage tanks near the port.tifs"]


@pytest.mark.parametrize("name", IMAGES)
def test_a_string_naming_an_image_is_an_image(name):
    assert looks_like_image_path(name) and is_image_query(name)
    assert not looks_like_image_path(Text(name)) and not is_image_query(Text(name))


@pytest.mark.parametrize("text", TEXTS)
def test_text_with_slashes_and_dots_is_text(text):
    assert not looks_like_image_path(text) and not is_image_query(text)


@pytest.fixture(scope="module")
def small_db(tiny_model, rsicd_files, tmp_path_factory):
    db = tmp_path_factory.mktemp("encoding") / "db"
    write_scene_table(db, tiny_model, rsicd_files[::300][:6])
    return db


def test_a_missing_image_path_is_an_error_not_a_text_search(small_db, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    with pytest.raises(NotFound, match=re.escape(f"image query {missing}: no such file; to search for these "
                                                 "words as text, pass Text(...)")):
        query(small_db, missing, 3)
    with pytest.raises(NotFound, match=r"^image query chips/missing\.png: no such file"):  # as given, not absolute
        query(small_db, "chips/missing.png", 3)
    with pytest.raises(NotFound, match="missing.jpg: no such file$"):  # a Path is never text: no hint
        query(small_db, Path(missing), 3)
    with pytest.raises(NotFound, match=re.escape(f"image query {missing}: no such file")):  # an example too
        query_examples(small_db, [missing], k=3)


def test_an_existing_image_path_is_an_image(small_db, rsicd_files):
    path = str(rsicd_files[0])  # in the table: the image finds itself unless left out
    assert query(small_db, path, 1, exclude_self=False)["uri"].tolist() == [path]


@pytest.mark.parametrize("text", ["airport/runway", "3.5 m resolution", "harbour, 2020."])
def test_text_queries_with_slashes_and_dots_search_the_text(small_db, tiny_model, text):
    want = query(small_db, text_vector(text, str(tiny_model)), 3)
    assert query(small_db, text, 3)["id"].tolist() == want["id"].tolist()
    assert query(small_db, Text("missing.jpg"), 3)["id"].tolist() == query(
        small_db, text_vector("missing.jpg", str(tiny_model)), 3)["id"].tolist()
