"""The reader of the embedding job: list an archive, plan its tiles, read and decode them to small uint8 arrays.

Three steps, each a plain function on a batch dict (Ray Data calls them in CPU tasks; tests call them
directly):

1. :func:`list_archive` walks an ``s3://`` prefix or a local folder (recursively) for image files. It is
   also the job's probe of the store: a missing bucket, wrong credentials or an unreachable endpoint raise
   :class:`ArchiveError` within seconds.
2. :func:`plan_files` turns files into tile rows: a file no larger than ``max_chip`` pixels a side is one
   tile (the whole image); a larger raster is cut into a grid. Tile ids are ``store.tile_id`` of the window,
   so a rerun plans the same ids. Small chips carry their encoded bytes forward (one GET per chip).
3. :func:`read_tiles` decodes each tile (PIL for JPEG/PNG chips, rasterio window reads for TIFF/GeoTIFF)
   and resizes it to the model's shortest-side size, so only ~150 KB of uint8 per tile crosses the object
   store.

A file or tile that cannot be read becomes a row with ``status = error`` (stage and message kept), which
the writer records in ``<table>_errors``; systemic faults (credentials, endpoint) raise instead.
"""

from __future__ import annotations

import functools
import json
import warnings
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

import numpy as np

from rsclip import raster, storage, store
from rsclip.imageio import decode_image, image_size
from rsclip.preprocess import ImagePreprocess, resize_shortest_side

# Batch keys added by the reader (tile columns reuse the store's names).
SIZE = "size"  # file size in bytes
KIND = "kind"  # CHIP (Pillow) or RASTER (rasterio)
SCENE = "scene"  # JSON of raster.SceneInfo for RASTER rows
DATA = "data"  # encoded bytes of a small chip, else b""
STATUS = "status"
STAGE = "stage"
MESSAGE = "message"
PIXELS = "pixels"  # resized uint8 HWC bytes
PIXELS_HEIGHT = "pixels_height"
PIXELS_WIDTH = "pixels_width"

CHIP, RASTER = "chip", "raster"
# Row states through the pipeline.
TODO, PRESENT, NODATA, ERROR, READY, EMBEDDED = "todo", "present", "nodata", "error", "ready", "embedded"
# Stages named in the errors table.
STAGE_PLAN, STAGE_READ, STAGE_EMBED = "plan", "read", "embed"

TIFF_SUFFIXES = (".tif", ".tiff")
ARCHIVE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")
# Chips up to this size are fetched whole during planning and carried to the decode step.
SMALL_FILE_BYTES = 512 * 1024
HEADER_BYTES = 64 * 1024
# Seconds before a probe of an unreachable store gives up (the job must fail fast, not hang).
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 20

# Exceptions that mean the store itself is unusable: they stop the job instead of being recorded per file.
SYSTEMIC_ERRORS = ("EndpointConnectionError", "NoCredentialsError", "ConnectTimeoutError", "PermissionError",
                   "InvalidAccessKeyId", "SignatureDoesNotMatch")

PLAN_COLUMNS = (store.ID, store.URI, *store.WINDOW_COLUMNS, *store.BOUNDS_COLUMNS, store.CRS,
                KIND, SCENE, DATA, STATUS, STAGE, MESSAGE)
READ_COLUMNS = tuple(c for c in PLAN_COLUMNS if c not in (DATA, SCENE)) + (PIXELS, PIXELS_HEIGHT, PIXELS_WIDTH)


class ArchiveError(RuntimeError):
    """The archive cannot be listed at all (missing bucket or folder, credentials, endpoint)."""


def _s3fs():
    return storage.import_s3fs().S3FileSystem(
        **storage.s3fs_options(),
        config_kwargs={
            "connect_timeout": CONNECT_TIMEOUT_S,
            "read_timeout": READ_TIMEOUT_S,
            "retries": {"max_attempts": 3, "mode": "standard"},
        },
    )


def filesystem(uri: str):
    """``(fsspec filesystem, path)`` for ``uri``, with short timeouts on S3 so faults surface quickly."""
    if storage.is_remote(uri):
        _, path = storage.filesystem(uri)
        return _s3fs(), path
    return storage.filesystem(uri)


def describe_fault(exc: BaseException, uri: str) -> str:
    """A one-line cause for a store fault on ``uri``."""
    name = type(exc).__name__
    text = str(exc)
    if "Could not connect" in text or name in ("EndpointConnectionError", "ConnectTimeoutError"):
        endpoint = storage.aws_settings().get("endpoint", "the S3 endpoint")
        return f"cannot reach {endpoint} for {uri}: {text}"
    if isinstance(exc, PermissionError) or "signature" in text.lower() or "AccessDenied" in text \
            or "InvalidAccessKeyId" in text:
        return f"access to {uri} denied (check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY): {text}"
    if "bucket does not exist" in text.lower() or "NoSuchBucket" in text:
        return f"bucket of {uri} does not exist: {text}"
    return f"cannot list {uri}: {name}: {text}"


def is_systemic(exc: BaseException) -> bool:
    """True for faults of the store (credentials, endpoint) rather than of one file."""
    if isinstance(exc, PermissionError):
        return True
    text = f"{type(exc).__name__} {exc}"
    return any(name in text for name in SYSTEMIC_ERRORS) or "Could not connect to the endpoint" in text


def check_bucket(uri: str) -> None:
    """Raise :class:`ArchiveError` unless the bucket of an ``s3://`` ``uri`` exists and is readable."""
    if not storage.is_remote(uri):
        return
    fs, path = filesystem(uri)
    bucket = path.split("/", 1)[0]
    try:
        fs.call_s3("head_bucket", Bucket=bucket)  # one request, whatever the bucket holds
    except FileNotFoundError as exc:
        raise ArchiveError(f"bucket {bucket!r} of {uri} does not exist ({exc})") from None
    except Exception as exc:
        raise ArchiveError(describe_fault(exc, uri)) from None


def list_archive(uri: str) -> list[tuple[str, int]]:
    """``(uri, size)`` of every image file under ``uri`` (``s3://`` prefix or local folder), sorted.

    A prefix or folder without images gives ``[]``. Raises :class:`ArchiveError` for a missing bucket or
    folder, refused credentials and an unreachable endpoint.
    """
    remote = storage.is_remote(uri)
    if not remote and not storage.local_path(uri).is_dir():
        if storage.local_path(uri).is_file():
            fs, path = filesystem(uri)
            return [(str(storage.local_path(uri).resolve()), int(fs.size(path)))]
        raise ArchiveError(f"archive folder not found: {uri}")
    check_bucket(uri)
    fs, root = filesystem(uri)
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as exc:
        raise ArchiveError(describe_fault(exc, uri)) from None
    files = []
    for path, info in found.items():
        if info.get("type", "file") != "file" or not path.lower().endswith(ARCHIVE_SUFFIXES):
            continue
        if any(part.startswith(".") for part in PurePosixPath(path).parts):
            continue  # hidden files and folders (.DS_Store, .ipynb_checkpoints)
        files.append((f"s3://{path}" if remote else path, int(info.get("size") or 0)))
    return sorted(files)


def _empty_plan_row(uri: str) -> dict[str, Any]:
    return {
        store.ID: "", store.URI: uri, store.X: 0, store.Y: 0, store.WIDTH: 0, store.HEIGHT: 0,
        **{c: np.nan for c in store.BOUNDS_COLUMNS}, store.CRS: "", KIND: CHIP, SCENE: "", DATA: b"",
        STATUS: TODO, STAGE: "", MESSAGE: "",
    }


def error_row(uri: str, stage: str, message: str, window=(0, 0, 0, 0)) -> dict[str, Any]:
    """A plan row recording that ``uri`` (or one window of it) failed at ``stage``."""
    row = _empty_plan_row(uri)
    row.update({store.X: window[0], store.Y: window[1], store.WIDTH: window[2], store.HEIGHT: window[3]})
    row.update({STATUS: ERROR, STAGE: stage, MESSAGE: message[:2000]})
    return row


def _fetch(uri: str, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(uri)
    if start is None:
        return fs.cat_file(path)
    return fs.cat_file(path, start=start, end=end)


def _tile_row(uri, window, kind, bounds=None, crs=None, scene="", data=b"") -> dict[str, Any]:
    row = _empty_plan_row(uri)
    x, y, w, h = window
    row.update({store.ID: store.tile_id(uri, x, y, w, h), store.X: x, store.Y: y, store.WIDTH: w,
                store.HEIGHT: h, KIND: kind, SCENE: scene, DATA: data, store.CRS: crs or ""})
    if bounds is not None:
        row.update(dict(zip(store.BOUNDS_COLUMNS, bounds)))
    return row


def plan_chip(uri: str, size: int, options: raster.RasterOptions) -> list[dict[str, Any]]:
    """Tile rows of a JPEG/PNG/... image: one whole-image tile, or a grid when larger than ``max_chip``.

    Raises ``ValueError`` for empty, unreadable, too small and oversized (bomb) images.
    """
    if size == 0:
        raise ValueError(f"{uri}: empty file")
    small = size <= SMALL_FILE_BYTES
    data = _fetch(uri) if small else _fetch(uri, 0, HEADER_BYTES)
    try:
        width, height = image_size(data, uri)
    except ValueError:
        if small:
            raise
        data = _fetch(uri)
        width, height = image_size(data, uri)
    carried = data if small else b""
    if max(width, height) <= options.max_chip:
        return [_tile_row(uri, (0, 0, width, height), CHIP, data=carried)]
    return [_tile_row(uri, w, CHIP, data=carried)
            for w in raster.grid_windows(width, height, options.tile_size, options.overlap)]


def plan_raster(uri: str, options: raster.RasterOptions) -> list[dict[str, Any]]:
    """Tile rows of a TIFF/GeoTIFF/COG opened with rasterio (see ``raster.plan_scene``), with WGS84 bounds.

    Raises ``ValueError`` for unreadable rasters, unsupported data types and all-nodata scenes.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    with raster.gdal_env(), warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(raster.gdal_path(uri)) as src:
                scene, windows = raster.plan_scene(src, options)
                text = json.dumps(asdict(scene))
                return [
                    _tile_row(uri, w, RASTER, raster.window_bounds_wgs84(src, w), scene.crs, scene=text)
                    for w in windows
                ]
        except RasterioError as exc:
            raise ValueError(f"{uri}: not a readable raster ({exc})") from None


def plan_file(uri: str, size: int, options: raster.RasterOptions) -> list[dict[str, Any]]:
    """Tile rows for one file, or one error row when it cannot be planned (systemic faults raise)."""
    try:
        if uri.lower().endswith(TIFF_SUFFIXES):
            if size == 0:
                raise ValueError(f"{uri}: empty file")
            return plan_raster(uri, options)
        return plan_chip(uri, size, options)
    except Exception as exc:
        if is_systemic(exc):
            raise
        text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        return [error_row(uri, STAGE_PLAN, text if uri in text else f"{uri}: {text}")]


def rows_to_batch(rows: list[dict[str, Any]], columns) -> dict[str, np.ndarray]:
    """Row dicts as a column batch with the given ``columns`` (object arrays for text and bytes)."""
    batch: dict[str, np.ndarray] = {}
    for c in columns:
        values = [r[c] for r in rows]
        if c in store.BOUNDS_COLUMNS:
            batch[c] = np.asarray(values, dtype=np.float64)
        elif c in (*store.WINDOW_COLUMNS, PIXELS_HEIGHT, PIXELS_WIDTH):
            batch[c] = np.asarray(values, dtype=np.int64)
        else:
            arr = np.empty(len(values), dtype=object)
            arr[:] = values
            batch[c] = arr
    return batch


def plan_files(batch: dict[str, np.ndarray], options: dict) -> dict[str, np.ndarray]:
    """Ray Data stage: file rows (``uri``, ``size``) to tile rows (:data:`PLAN_COLUMNS`).

    ``options`` is ``asdict(RasterOptions)`` (plain data crosses into workers; rebuilt typed here).
    """
    opts = raster.RasterOptions(**{k: tuple(v) if isinstance(v, list) else v for k, v in options.items()})
    rows: list[dict[str, Any]] = []
    for uri, size in zip(batch[store.URI], batch[SIZE]):
        rows.extend(plan_file(str(uri), int(size), opts))
    return rows_to_batch(rows, PLAN_COLUMNS)


def _decode_chip(uri: str, data: bytes, cache: dict) -> np.ndarray:
    if uri not in cache:
        cache.clear()  # one decoded image at a time: tiles of one big image arrive together
        cache[uri] = decode_image(data or _fetch(uri), uri)
    return cache[uri]


def _read_raster(uri: str, window, scene_json: str, cache: dict) -> np.ndarray | None:
    import rasterio

    if uri not in cache:
        for src in cache.values():
            src.close()
        cache.clear()
        cache[uri] = rasterio.open(raster.gdal_path(uri))
    scene = raster.SceneInfo(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in json.loads(scene_json).items()})
    return raster.read_window(cache[uri], window, scene)


@functools.lru_cache(maxsize=4)
def _table_at(db: str, table: str, version: int):
    tbl = store.open_table(db, table)
    tbl.checkout(version)
    return tbl


def mark_present(batch: dict[str, np.ndarray], db: str, table: str, version: int) -> dict[str, np.ndarray]:
    """Ray Data stage: status ``present`` for ``todo`` rows whose id is in the table (as of ``version``, the
    table when the job started)."""
    status = np.asarray(batch[STATUS]).astype(object)
    todo = np.flatnonzero(status == TODO)
    if len(todo) and version > 0:
        ids = [str(batch[store.ID][i]) for i in todo]
        found = store.existing_ids(_table_at(db, table, version), ids)
        for i, tile in zip(todo, ids):
            if tile in found:
                status[i] = PRESENT
    out = dict(batch)
    out[STATUS] = status
    # a present tile's bytes need not travel any further
    data = np.asarray(batch[DATA]).astype(object)
    data[status == PRESENT] = b""
    out[DATA] = data
    return out


def read_tiles(batch: dict[str, np.ndarray], preprocess: dict) -> dict[str, np.ndarray]:
    """Ray Data stage: decode rows with status ``todo`` and resize them for the model (status ``ready``);
    all-nodata windows become ``nodata``, unreadable ones ``error``. Output columns: :data:`READ_COLUMNS`.

    ``preprocess`` is ``asdict(ImagePreprocess)`` of the model.
    """
    from rasterio.errors import NotGeoreferencedWarning

    prep = ImagePreprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})
    n = len(batch[store.URI])
    pixels = np.empty(n, dtype=object)
    pixels[:] = [b""] * n
    heights = np.zeros(n, dtype=np.int64)
    widths = np.zeros(n, dtype=np.int64)
    status = batch[STATUS].copy()
    stage = batch[STAGE].copy()
    message = batch[MESSAGE].copy()
    chips: dict[str, np.ndarray] = {}
    scenes: dict[str, Any] = {}
    try:
        with raster.gdal_env(), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            for i in range(n):
                if status[i] != TODO:
                    continue
                uri = str(batch[store.URI][i])
                window = tuple(int(batch[c][i]) for c in store.WINDOW_COLUMNS)
                try:
                    if batch[KIND][i] == RASTER:
                        image = _read_raster(uri, window, str(batch[SCENE][i]), scenes)
                        if image is None:
                            status[i] = NODATA
                            continue
                    else:
                        whole = _decode_chip(uri, batch[DATA][i], chips)
                        x, y, w, h = window
                        image = whole[y : y + h, x : x + w]
                        if image.shape[:2] != (h, w):
                            raise ValueError(f"{uri}: decoded size {whole.shape[1]}x{whole.shape[0]} does not "
                                             f"hold window {window}")
                    image = np.ascontiguousarray(resize_shortest_side(image, prep))
                except Exception as exc:
                    if is_systemic(exc):
                        raise
                    status[i], stage[i] = ERROR, STAGE_READ
                    text = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
                    message[i] = text if uri in text else f"{uri}: {text}"
                    continue
                pixels[i] = image.tobytes()
                heights[i], widths[i] = image.shape[:2]
                status[i] = READY
    finally:
        for src in scenes.values():
            src.close()
    out = {c: batch[c] for c in READ_COLUMNS if c in batch}
    out.update({STATUS: status, STAGE: stage, MESSAGE: message, PIXELS: pixels,
                PIXELS_HEIGHT: heights, PIXELS_WIDTH: widths})
    return {c: out[c] for c in READ_COLUMNS}


def batch_images(batch: dict[str, np.ndarray], rows) -> list[np.ndarray]:
    """The ``(h, w, 3)`` uint8 images of ``rows`` of a read batch."""
    return [
        np.frombuffer(batch[PIXELS][i], dtype=np.uint8).reshape(
            int(batch[PIXELS_HEIGHT][i]), int(batch[PIXELS_WIDTH][i]), 3)
        for i in rows
    ]
