"""Chips larger than the model's input are decoded at reduced scale (issue 26); smaller ones, and the windows of
chips cut into a grid, keep every pixel as before.

Large JPEGs are made here from real RSICD chips (the shared data holds only 150-px chips)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from rsclip.geo import raster
from rsclip.geo.images import decode_image
from rsclip.ingest import batch as B, planning, reading
from rsclip.model.preprocess import ImagePreprocess, resize_shortest_side

PREP = ImagePreprocess()


def _jpeg(tmp_path: Path, source: Path, size: tuple[int, int]) -> Path:
    with Image.open(source) as im:
        big = im.convert("RGB").resize(size, Image.BICUBIC)
    out = tmp_path / f"{source.stem}-{size[0]}x{size[1]}.jpg"
    big.save(out, format="JPEG", quality=92)
    return out


def _read(path: Path, options: raster.RasterOptions = raster.RasterOptions()) -> dict:
    rows = planning.plan_file(str(path), path.stat().st_size, options)
    return reading.read_tiles(B.rows_to_batch(rows, B.PLAN_COLUMNS), vars(PREP))


def _pixels(out: dict, i: int) -> np.ndarray:
    image = np.asarray(out[B.PIXELS][i])
    assert image.shape == (out[B.PIXELS_HEIGHT][i], out[B.PIXELS_WIDTH][i], 3)
    return image


def test_decode_reduces_only_jpegs_at_least_twice_the_size_asked_for(tmp_path, rsicd_files):
    for size, reduced in (((600, 450), (225, 300)), ((1001, 600), (300, 501)), ((447, 447), (447, 447))):
        data = _jpeg(tmp_path, rsicd_files[0], size).read_bytes()
        assert decode_image(data, "x.jpg", reduce_to=224).shape[:2] == reduced
        assert decode_image(data, "x.jpg").shape[:2] == size[::-1]
    small = rsicd_files[0].read_bytes()
    assert np.array_equal(decode_image(small, "x.jpg", reduce_to=224), decode_image(small, "x.jpg"))


def test_a_chip_at_or_below_the_model_size_keeps_its_pixels(rsicd_files):
    out = _read(rsicd_files[3])
    assert out[B.STATUS][0] == B.READY
    expected = resize_shortest_side(decode_image(rsicd_files[3].read_bytes(), rsicd_files[3].name), PREP)
    assert np.array_equal(_pixels(out, 0), expected)


def test_a_large_whole_chip_is_read_reduced_and_close_to_the_full_decode(tmp_path, rsicd_files):
    path = _jpeg(tmp_path, rsicd_files[4], (900, 600))
    out = _read(path)
    assert list(out[B.STATUS]) == [B.READY]
    got = _pixels(out, 0).astype(int)
    reduced = decode_image(path.read_bytes(), path.name, reduce_to=PREP.shortest_edge)
    assert reduced.shape[:2] == (300, 450) and np.array_equal(got, resize_shortest_side(reduced, PREP))
    full = resize_shortest_side(decode_image(path.read_bytes(), path.name), PREP).astype(int)
    assert got.shape[0] == 224 and abs(got.shape[1] - full.shape[1]) <= 1
    width = min(got.shape[1], full.shape[1])
    assert np.abs(got[:, :width] - full[:, :width]).mean() < 6  # DCT scaling, not the same filter


def test_the_windows_of_a_chip_cut_into_a_grid_are_read_at_full_scale(tmp_path, rsicd_files):
    path = _jpeg(tmp_path, rsicd_files[5], (1000, 700))
    options = raster.RasterOptions(max_chip=512)
    out = _read(path, options)
    assert len(out[B.STATUS]) > 1 and set(out[B.STATUS]) == {B.READY}
    full = decode_image(path.read_bytes(), path.name)
    for i in range(len(out[B.STATUS])):
        x, y, w, h = (int(out[c][i]) for c in ("x", "y", "width", "height"))
        assert np.array_equal(_pixels(out, i), resize_shortest_side(full[y:y + h, x:x + w], PREP))
