"""Batched device-side transforms: shapes, determinism, and exact results on known images."""

from __future__ import annotations

import pytest
import torch

from largebatch.data import transforms as T


def images(n=6, h=20, w=24, dtype=torch.uint8) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, h, w), generator=g).to(dtype)


def test_random_resized_crop_shape_and_determinism():
    x = images()
    a = T.random_resized_crop(x, 16, torch.Generator().manual_seed(1))
    b = T.random_resized_crop(x, 16, torch.Generator().manual_seed(1))
    c = T.random_resized_crop(x, 16, torch.Generator().manual_seed(2))
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 255


def test_crop_boxes_respect_scale_ratio_and_bounds():
    x = images(n=2000, h=40, w=60)
    boxes = T.random_crop_boxes(len(x), 40, 60, torch.Generator().manual_seed(0), x)
    x0, y0, w, h = boxes.unbind(1)
    assert (x0 >= 0).all() and (y0 >= 0).all() and (x0 + w <= 60).all() and (y0 + h <= 40).all()
    area = w * h / (40 * 60)
    assert area.min() > 0.06 and area.max() <= 1.0  # rounding allows a little under 0.08
    ratio = w / h
    assert ratio.min() > 0.7 and ratio.max() < 1.45
    assert len(torch.unique(boxes, dim=0)) > 1900  # per-image boxes


def test_generator_advances_by_a_fixed_amount():
    # The number of draws does not depend on which attempts fit: resumable streams stay aligned.
    x = images()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    T.random_resized_crop(x, 8, g1)
    T.random_resized_crop(images(h=200, w=24), 8, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_full_box_at_same_size_is_identity():
    x = images(h=16, w=16)
    boxes = torch.tensor([[0.0, 0.0, 16.0, 16.0]]).repeat(len(x), 1)
    out = T.crop_resize(x, boxes, 16)
    torch.testing.assert_close(out, x.float(), atol=1e-3, rtol=0)


def test_box_selects_the_right_region():
    x = torch.zeros(1, 1, 8, 8)
    x[..., 2:6, 4:8] = 1.0  # the box (x0=4, y0=2, w=4, h=4)
    out = T.crop_resize(x, torch.tensor([[4.0, 2.0, 4.0, 4.0]]), 4)
    torch.testing.assert_close(out, torch.ones(1, 1, 4, 4))


def test_flip_really_flips():
    x = images()
    assert torch.equal(T.random_hflip(x, torch.Generator(), p=1.0), x.flip(-1))
    assert torch.equal(T.random_hflip(x, torch.Generator(), p=0.0), x)
    mixed = T.random_hflip(images(n=64), torch.Generator().manual_seed(0))
    flipped = [torch.equal(m, o.flip(-1)) for m, o in zip(mixed, images(n=64), strict=True)]
    assert 10 < sum(flipped) < 54


def test_center_crop_of_known_image():
    x = torch.arange(6 * 8).view(1, 1, 6, 8).float()
    out = T.center_crop(x, 4)
    assert torch.equal(out, x[..., 1:5, 2:6])
    # Resize-then-crop with the resize already done is the exact central crop.
    assert torch.equal(T.resize_center_crop(x, 4, resize_to=6), x[..., 1:5, 2:6])
    with pytest.raises(ValueError):
        T.center_crop(x, 7)


def test_resize_center_crop_resizes_shorter_side():
    x = torch.full((2, 3, 40, 80), 7.0)
    out = T.resize_center_crop(x, 16)  # shorter side -> round(16 / 0.875) = 18, crop 16
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out, torch.full_like(out, 7.0))


def test_pad_random_crop():
    x = images(n=50, h=8, w=8)
    out = T.pad_random_crop(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(len(x)):  # every output is one of the 25 windows of its padded image
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert not torch.equal(out, x)
    again = T.pad_random_crop(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)


def test_normalize():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = T.normalize(x)
    expected = (1 - torch.tensor(T.IMAGENET_MEAN)) / torch.tensor(T.IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], expected)
    assert out.dtype == torch.float32


def test_image_split_gathers_and_normalises():
    x = images(n=10, h=18, w=18)
    split = T.ImageSplit(
        x,
        torch.arange(10),
        T.IMAGENET_MEAN,
        T.IMAGENET_STD,
        T.imagenet_train_transform(16),
        T.imagenet_eval_transform(16),
    )
    xb, yb = split.get_batch(torch.tensor([3, 1]))
    assert yb.tolist() == [3, 1] and xb.shape == (2, 3, 16, 16)
    torch.testing.assert_close(xb, T.normalize(T.center_crop(x[[3, 1]], 16)))
    a, _ = split.get_batch(torch.tensor([0, 1]), True, torch.Generator().manual_seed(3))
    b, _ = split.get_batch(torch.tensor([0, 1]), True, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 3, 16, 16)
