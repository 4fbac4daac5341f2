"""``decode_image`` gives a JPEG's own pixels, RGB whatever the file's mode (issue 26: an RGB image is no longer
copied through ``convert``; other modes still are)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rsclip.geo.images import decode_image


def test_an_rgb_jpeg_decodes_to_pillows_own_pixels(rsicd_files):
    data = rsicd_files[0].read_bytes()
    decoded = decode_image(data, rsicd_files[0].name)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB"
        assert np.array_equal(decoded, np.asarray(im.convert("RGB")))
    assert decoded.dtype == np.uint8 and decoded.shape == (150, 150, 3)


def test_grey_and_cmyk_jpegs_still_become_rgb(rsicd_files):
    with Image.open(rsicd_files[1]) as im:
        rgb = im.convert("RGB")
    for mode in ("L", "CMYK"):
        buf = io.BytesIO()
        rgb.convert(mode).save(buf, format="JPEG", quality=95)
        decoded = decode_image(buf.getvalue(), f"chip-{mode}.jpg")
        with Image.open(io.BytesIO(buf.getvalue())) as im:
            assert im.mode == mode
            assert np.array_equal(decoded, np.asarray(im.convert("RGB")))
        assert decoded.shape == (150, 150, 3)
