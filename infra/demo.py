"""``make demo``: a local Ray head, a sample archive of real satellite images (chips and georeferenced
scenes), the embedding job submitted with ``ray job submit``, a few text queries, then the Ray head is stopped
and the command that serves the table on a map is printed.

    make demo                      # the default hub model (needs the Hugging Face hub, or the model cached)
    make demo MODEL=tiny           # offline: a tiny random CLIP built here (runs end to end; hits are random)
    make demo MODEL=/path/to/dir   # any save_pretrained CLIP folder, or MODEL=s3://bucket/model

The archive is a folder, ``.demo/archive`` (``chips/`` and ``scenes/``), and the tile table is written to
``.demo/tables``: both outlive the demo, so the table's tiles name files the web app reads afterwards (an
archive in a local S3 server stopped with the demo would leave a table whose previews cannot be read). Each
run starts both afresh. The scenes are GeoTIFFs cut into tiles with footprints (what the map draws), two of
them one place seen in 2009 and 2020 (dates from their names), so timelines and changes have two dates.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from infra.local_stack import RayHead, new_token  # noqa: E402

DEMO_DIR = ROOT / ".demo"
SHARED_DATA = Path(os.environ.get("RSCLIP_SHARED_DATA", ROOT.parent / "shared" / "data"))
# Landsat off the Bahamas, and one NAIP place in North Dakota in 2020 and 2009 (shared/data/README)
DEMO_SCENES = ("RGB.byte.tif", "m_4709963_se_14_1_20200831.tif", "m_4709963_se_14_1_20090818.tif")
DATE_IN_NAME = r"_(?P<datetime>\d{8})\.tif$"  # the NAIP scenes' acquisition dates
NAIP_BBOX = (-99.19, 47.0, -99.12, 47.04)  # lon/lat box around the NAIP scenes: the printed examples search it
QUERIES = ("airport", "farmland", "river", "beach", "dense residential area")
TINY = "tiny"
HUB_URL = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
RSICD_HUB_DATASET = "arampacha/rsicd"  # RSICD with captions, as Parquet (train / valid / test)


def hub_reachable(timeout: float = 5.0) -> bool:
    """True when the Hugging Face hub answers within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(urllib.request.Request(HUB_URL, method="HEAD"), timeout=timeout):
            return True
    except Exception:
        return False


def cached_on_hub(model: str) -> bool:
    """True when the hub model's config is already in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model, "config.json"), str)
    except Exception:
        return False


def resolve_model(model: str, demo_dir: Path = DEMO_DIR) -> str:
    """The model argument for the job: ``tiny`` is built under ``demo_dir``; a hub id must be reachable or
    cached.

    Raises ``SystemExit`` with instructions when the hub is unreachable (no silent fallback).
    """
    if model == TINY:
        from rsclip.testing import build_tiny_clip

        path = demo_dir / "models" / "tiny-clip"
        if not (path / "config.json").is_file():
            print(f"building the tiny random CLIP in {path} (offline; search results will be random)")
            build_tiny_clip(path)
        return str(path)
    if model.startswith("s3://") or Path(model).expanduser().exists():
        return str(Path(model).expanduser().resolve()) if not model.startswith("s3://") else model
    if cached_on_hub(model) or hub_reachable():
        return model
    raise SystemExit(
        f"make demo: the Hugging Face hub ({HUB_URL}) is unreachable from this machine and {model} is not in the "
        f"local cache, so the model cannot be downloaded.\n"
        f"Pass a local model instead:\n"
        f"  make demo MODEL=tiny              # a tiny random CLIP built offline (pipeline end to end, random hits)\n"
        f"  make demo MODEL=/path/to/clip     # a save_pretrained CLIP folder (e.g. a fine-tuned export)\n"
        f"  make demo MODEL=s3://bucket/clip  # the same, in object storage"
    )


def rsicd_from_parquet(parquet: Path, n_images: int, dest: Path) -> list[Path]:
    """Write up to ``n_images`` scenes of an RSICD Parquet file (the hub dataset's layout: ``filename`` and an
    ``image`` column of encoded bytes, or a struct holding them) to ``dest``, spread over the file."""
    import pyarrow.parquet as pq

    table = pq.read_table(parquet, columns=["filename", "image"])
    step = max(1, table.num_rows // max(1, n_images))
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for row in table.take(list(range(0, table.num_rows, step))[:n_images]).to_pylist():
        image = row["image"]
        data = image.get("bytes") if isinstance(image, dict) else image
        if not data:
            continue
        path = dest / Path(str(row["filename"])).name
        path.write_bytes(data)
        out.append(path)
    return out


def rsicd_from_hub(n_images: int, dest: Path) -> tuple[list[Path], str]:
    """Up to ``n_images`` RSICD test scenes from the public dataset on the Hugging Face hub (the seed's data),
    or ``([], why not)``."""
    if not hub_reachable():
        return [], f"the Hugging Face hub ({HUB_URL}) is unreachable"
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        files = [f for f in list_repo_files(RSICD_HUB_DATASET, repo_type="dataset")
                 if f.endswith(".parquet") and "test" in Path(f).name]
        if not files:
            return [], f"no test split Parquet file in {RSICD_HUB_DATASET}"
        parquet = hf_hub_download(RSICD_HUB_DATASET, sorted(files)[0], repo_type="dataset")
        images = rsicd_from_parquet(Path(parquet), n_images, dest)
    except Exception as exc:  # any hub or layout problem: say so and use the next source
        return [], f"fetching {RSICD_HUB_DATASET} failed ({type(exc).__name__}: {exc})"
    return images, f"{len(images)} RSICD test scenes from {RSICD_HUB_DATASET} on the Hugging Face hub"


def generated_images(n_images: int, dest: Path) -> list[Path]:
    """Synthetic stand-ins (smooth random colour fields, 224 px): only when no real images can be had."""
    import numpy as np
    from PIL import Image

    dest.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n_images):
        coarse = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        path = dest / f"generated_{i:04d}.jpg"
        Image.fromarray(coarse).resize((224, 224), Image.BICUBIC).save(path, quality=90)
        out.append(path)
    return out


def sample_files(n_images: int, workdir: Path = DEMO_DIR / "sample") -> tuple[list[Path], str]:
    """The demo archive and where it came from: RSICD test scenes from the hub when it is reachable; offline,
    RSICD/AID scenes from the shared data (spread over all classes); as a last resort generated images, and
    it says so. The real GeoTIFF scenes of :data:`DEMO_SCENES` (the map's tiles) are added when present."""
    scenes = [SHARED_DATA / "geotiff" / name for name in DEMO_SCENES if (SHARED_DATA / "geotiff" / name).is_file()]
    with_scenes = (f" and {len(scenes)} GeoTIFF scenes from {SHARED_DATA}" if scenes else
                   f" and NO GeoTIFF scene ({SHARED_DATA / 'geotiff'} is missing: set RSCLIP_SHARED_DATA), so "
                   "no tile has a place on the map")
    shutil.rmtree(workdir, ignore_errors=True)
    chips, why_not_hub = rsicd_from_hub(n_images, workdir / "hub")
    if chips:
        return chips + scenes, why_not_hub + with_scenes
    chips_dir = SHARED_DATA / "rsicd-aid" / "RSICD_images"
    if chips_dir.is_dir():
        found = sorted(chips_dir.glob("*.jpg"))
        picked = found[:: max(1, len(found) // n_images)][:n_images]
        return picked + scenes, f"{len(picked)} RSICD/AID scenes from {SHARED_DATA} ({why_not_hub})" + with_scenes
    generated = generated_images(n_images, workdir / "generated")
    return generated + scenes, (f"{len(generated)} GENERATED images, not satellite imagery: {why_not_hub} and "
                                f"{chips_dir} is missing (set RSCLIP_SHARED_DATA)") + with_scenes


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The demo's flags: ``--model`` and ``--images`` (defaults from ``$MODEL`` and ``$IMAGES``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("MODEL") or "openai/clip-vit-base-patch32",
                        help="hub id, save_pretrained folder, s3:// prefix, or 'tiny' (default: $MODEL or the hub model)")
    parser.add_argument("--images", type=int, default=int(os.environ.get("IMAGES", "300")),
                        help="RSICD scenes in the archive (default: 300)")
    parser.add_argument("--dir", type=Path, default=DEMO_DIR,
                        help="folder of the demo's archive, table and tiny model (default: .demo)")
    return parser.parse_args(argv)


def start_ray_head() -> RayHead:
    """A Ray head on 127.0.0.1, guarded by a fresh token."""
    print("starting a Ray head on 127.0.0.1 ...", flush=True)
    # Ray listens on every interface: the token keeps the network from running code on this machine
    head = RayHead(num_cpus=os.cpu_count() or 2, token=new_token()).start()
    print(f"  Ray dashboard {head.dashboard_url} (token in {head.auth_env['RAY_AUTH_TOKEN_PATH']})", flush=True)
    return head


def copy_archive(files: list[Path], origin: str, archive: Path) -> None:
    """Copy the sample into the folder ``archive`` (made afresh): GeoTIFF scenes under ``scenes/``, the rest
    under ``chips/``. It stays after the demo: the table's tiles name these files."""
    print(f"copying {origin} to {archive} ...", flush=True)
    shutil.rmtree(archive, ignore_errors=True)
    for f in files:
        dest = archive / ("scenes" if f.suffix == ".tif" else "chips") / f.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, dest)


def embed_archive(head: RayHead, archive: Path, db: Path, model: str) -> bool:
    """Submit the embedding job with ``ray job submit``, its lines printed as they come; False (said on stderr)
    when it failed."""
    entry = ["python", "jobs/embed_archive.py", "--archive", str(archive), "--db", str(db), "--model", model,
             "--datetime-from-name", DATE_IN_NAME]
    print("$ ray job submit --working-dir . -- " + shlex.join(entry), flush=True)
    started = time.monotonic()
    res = head.submit(entry, working_dir=ROOT, timeout=3600, echo=True)  # its lines as they come
    if res.returncode != 0:
        print(f"make demo: the embedding job failed (exit {res.returncode})", file=sys.stderr)
        return False
    print(f"  job finished in {time.monotonic() - started:.0f} s", flush=True)
    return True


def show_queries(db: Path, model: str) -> None:
    """Print the top hits of each of :data:`QUERIES`, then of one inside the NAIP scenes' box, and how many
    tiles the map can place."""
    import rsclip
    from rsclip.table import tiles

    for text, bbox in [*((t, None) for t in QUERIES), ("farmland", NAIP_BBOX)]:
        hits = rsclip.query(db, text, k=3, bbox=bbox)
        print(f"\n{text!r}" + (f" inside lon/lat box {','.join(map(str, bbox))}:" if bbox else ":"))
        for row in hits.itertuples():
            where = "" if row.lon_min != row.lon_min else f"  lon/lat {row.lon_min:.4f},{row.lat_min:.4f}"
            print(f"  {row.score:.3f}  {shown(row.uri)}  [{row.x},{row.y} {row.width}x{row.height}]{where}")
    if Path(model).name == "tiny-clip":
        print("\n(the tiny random model makes these hits random; pass MODEL=<a real CLIP> for real search)")
    table = tiles.open_table(db)
    placed = table.count_rows(f"{tiles.FOOTPRINT} IS NOT NULL")
    print(f"\n{placed} of {table.count_rows()} tiles have a footprint on the map (the GeoTIFF scenes' tiles)")


def shown(path) -> str:
    """``path`` as typed from the current folder: relative when it lies inside it."""
    full, here = Path(os.path.abspath(path)), Path.cwd()
    if "://" in str(path) or not full.is_relative_to(here):
        return str(path)
    text = str(full.relative_to(here))
    return text if "/" in text else f"./{text}"


def next_steps(db: Path) -> str:
    """What to run next, as printed (runs as printed from the current folder): the command that serves the
    table on a map with this environment's ``rsclip`` (no activated venv needed), then two searches of the
    NAIP place."""
    from rsclip.app.server import open_instructions

    program = Path(sys.executable).parent / "rsclip"
    rsclip = shlex.quote(shown(program)) if program.is_file() else f"{shlex.quote(sys.executable)} -m rsclip"
    box = " ".join(map(str, NAIP_BBOX))
    return (open_instructions(shown(db), program=rsclip) + "\n"
            f"Search one place (the NAIP scenes, North Dakota, seen in 2009 and 2020):\n"
            f"  {rsclip} query {shlex.quote(shown(db))} farmland --bbox {box} -k 5\n"
            f"  {rsclip} changes {shlex.quote(shown(db))} 2009 2020 --bbox {box} -k 5")


def main(argv: list[str] | None = None) -> int:
    """Run the demo; the exit status (1 when the embedding job failed). The Ray head it started is stopped;
    the archive and the table stay in ``--dir`` for the web app."""
    args = parse_args(argv)
    demo_dir = args.dir.absolute()
    demo_dir.mkdir(parents=True, exist_ok=True)
    model = resolve_model(args.model, demo_dir)
    files, origin = sample_files(args.images, demo_dir / "sample")
    archive, db = demo_dir / "archive", demo_dir / "tables"
    shutil.rmtree(db, ignore_errors=True)  # a table of an earlier run may name files that are gone
    head = None
    try:
        copy_archive(files, origin, archive)
        head = start_ray_head()
        if not embed_archive(head, archive, db, model):
            return 1
        show_queries(db, model)
    finally:
        print("\nstopping the Ray head ...", flush=True)
        if head is not None:
            head.stop()
    print("\n" + next_steps(db))
    return 0


if __name__ == "__main__":
    sys.exit(main())
