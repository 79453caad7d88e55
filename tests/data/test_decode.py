"""Odd real-world image files decode as torchvision/PIL users expect (issue 13)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from largebatch.data.decode_cache import BACKGROUND, decode_image, open_rgb

# 16-bit values and their 8-bit images: round(v * 255 / 65535).
SIXTEEN = np.array([[0, 25700], [32768, 65535]], dtype=np.uint16)
EIGHT = np.array([[0, 100], [128, 255]], dtype=np.uint8)


@pytest.mark.parametrize("suffix, mode", [("png", "I;16"), ("tif", "I;16"), ("tif", "I;16B")])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path, suffix, mode):
    path = tmp_path / f"gray16.{suffix}"
    if mode == "I;16":
        Image.fromarray(SIXTEEN).save(path)
    else:
        Image.frombytes(mode, (2, 2), SIXTEEN.astype(">u2").tobytes()).save(path)
    with Image.open(path) as img:
        assert img.mode == mode
    rgb = np.asarray(open_rgb(path))
    assert rgb.shape == (2, 2, 3)
    for c in range(3):
        np.testing.assert_array_equal(rgb[..., c], EIGHT)
    # Through the cached decode as well (2x2 at resolution 2: no resize).
    np.testing.assert_array_equal(decode_image(path, 2)[..., 1], EIGHT)


def test_mode_i_holds_sixteen_bit_values(tmp_path):
    path = tmp_path / "gray32.tif"
    Image.fromarray(SIXTEEN.astype(np.int32), "I").save(path)
    with Image.open(path) as img:
        assert img.mode == "I"
    np.testing.assert_array_equal(np.asarray(open_rgb(path))[..., 0], EIGHT)


def test_exif_orientation_is_applied(tmp_path):
    # Stored 32 wide x 16 high: left half black, right half white. Orientation 6 means "rotate
    # 90 degrees clockwise to display": shown 16 wide x 32 high, black on top, white below.
    pixels = np.zeros((16, 32, 3), dtype=np.uint8)
    pixels[:, 16:] = 255
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    img.save(path, quality=95, exif=exif.tobytes())
    rgb = np.asarray(open_rgb(path)).astype(int)
    assert rgb.shape == (32, 16, 3)
    assert rgb[:12].max() < 30 and rgb[20:].min() > 225


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_transparent_pixels_are_composited_on_white(tmp_path, fmt):
    rgba = np.array(
        [
            [[255, 0, 0, 0], [0, 0, 255, 255]],  # transparent red; opaque blue
            [[0, 0, 0, 128], [0, 255, 0, 255]],  # half-transparent black; opaque green
        ],
        dtype=np.uint8,
    )
    path = tmp_path / f"alpha.{fmt}"
    Image.fromarray(rgba, "RGBA").save(path, lossless=True)
    rgb = np.asarray(open_rgb(path)).astype(int)
    assert BACKGROUND == (255, 255, 255)
    assert rgb[0, 0].tolist() == [255, 255, 255]  # not the red under the transparent pixel
    assert rgb[0, 1].tolist() == [0, 0, 255]
    assert rgb[1, 1].tolist() == [0, 255, 0]
    # 128/255 black over white: 255 * (1 - 128/255) = 127.
    assert np.abs(rgb[1, 0] - 127).max() <= 1


def test_la_and_palette_transparency_are_composited_on_white(tmp_path):
    la = Image.fromarray(np.array([[[0, 0], [0, 255]]], dtype=np.uint8), "LA")
    la.save(tmp_path / "la.png")
    assert np.asarray(open_rgb(tmp_path / "la.png")).tolist() == [[[255] * 3, [0] * 3]]
    p = Image.new("P", (2, 1))
    p.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)  # palette entry 0 (red) is transparent
    assert np.asarray(open_rgb(tmp_path / "p.png")).tolist() == [[[255] * 3, [0, 255, 0]]]


def test_plain_images_are_unchanged(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(np.asarray(open_rgb(tmp_path / "rgb.png")), pixels)
    gray = pixels[..., 0]
    Image.fromarray(gray).save(tmp_path / "l.png")
    np.testing.assert_array_equal(
        np.asarray(open_rgb(tmp_path / "l.png")), np.stack([gray] * 3, -1)
    )
