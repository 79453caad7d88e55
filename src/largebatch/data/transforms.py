"""Batched image transforms on the device, every random draw from a given ``torch.Generator``.

All functions take a batch ``(N, C, H, W)`` (uint8 or float) and work on whole batches with
tensor ops: no per-image Python. Random parameters are drawn on the generator's device (so the
generator's state alone decides them: a run is reproducible, and a resumed run that restores the
generator draws the same crops) and moved to the images' device.

- :func:`random_resized_crop`: Inception-style crop (area scale ``(0.08, 1)``, aspect ratio
  ``(3/4, 4/3)``, a box per image), resampled to ``size`` with ``grid_sample`` (bilinear).
- :func:`random_hflip`: flip each image with probability ``p``.
- :func:`resize_center_crop`: resize the shorter side, then the central square (validation).
- :func:`pad_random_crop`: CIFAR's pad-4 random crop.
- :func:`normalize`: to float, ``/255`` for uint8, then per-channel mean/std.

:class:`ImageSplit` is a :class:`~largebatch.data.base.Split` over a uint8 image tensor held on
the device, which gathers a batch by index and applies these transforms.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from largebatch.data.base import Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

# transform(x, generator) -> x for a batch (N, C, H, W).
BatchTransform = Callable[[torch.Tensor, "torch.Generator | None"], torch.Tensor]


def _rand(n: int, generator: torch.Generator | None, like: torch.Tensor) -> torch.Tensor:
    """``n`` uniform draws in [0, 1) from ``generator`` on its own device, moved to ``like``'s."""
    device = generator.device if generator is not None else like.device
    return torch.rand(n, generator=generator, device=device).to(like.device)


def _randint(
    high: int, n: int, generator: torch.Generator | None, like: torch.Tensor
) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randint(high, (n,), generator=generator, device=device).to(like.device)


def _float(x: torch.Tensor) -> torch.Tensor:
    return x.float() if not x.is_floating_point() else x


def random_crop_boxes(
    n: int,
    height: int,
    width: int,
    generator: torch.Generator | None,
    like: torch.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
) -> torch.Tensor:
    """Boxes ``(n, 4)`` as ``(x0, y0, w, h)`` in pixels, float, one per image.

    As in Szegedy et al. (and torchvision): up to ``attempts`` draws of an area fraction in
    ``scale`` and a log-uniform aspect ratio in ``ratio``; the first draw that fits is kept, and an
    image where none fits gets the largest central box with the ratio clamped into ``ratio``.
    All images draw the same number of values, so the generator advances by a fixed amount.
    """
    area = float(height * width)
    u = _rand(n * attempts * 4, generator, like).view(4, n, attempts)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[1])
    w = torch.sqrt(target_area * aspect).round()
    h = torch.sqrt(target_area / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    # First fitting attempt per image (argmax returns the first maximum).
    pick = fits.int().argmax(1, keepdim=True)
    w_sel = w.gather(1, pick).squeeze(1)
    h_sel = h.gather(1, pick).squeeze(1)
    x0 = ((width - w_sel + 1) * u[2].gather(1, pick).squeeze(1)).floor()
    y0 = ((height - h_sel + 1) * u[3].gather(1, pick).squeeze(1)).floor()
    # Fallback: the whole image, cropped to the nearest allowed aspect ratio, centred.
    in_ratio = width / height
    if in_ratio < ratio[0]:
        fw, fh = float(width), float(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        fw, fh = float(round(height * ratio[1])), float(height)
    else:
        fw, fh = float(width), float(height)
    none = ~fits.any(1)
    w_sel = torch.where(none, torch.full_like(w_sel, fw), w_sel)
    h_sel = torch.where(none, torch.full_like(h_sel, fh), h_sel)
    x0 = torch.where(none, torch.full_like(x0, (width - fw) // 2), x0)
    y0 = torch.where(none, torch.full_like(y0, (height - fh) // 2), y0)
    return torch.stack([x0, y0, w_sel, h_sel], dim=1)


def crop_resize(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Resample box ``(x0, y0, w, h)`` of each image to ``size x size`` (bilinear), as float.

    With ``align_corners=False`` output pixel ``j`` samples input position
    ``x0 + (j + 0.5) * w / size`` (pixel centres), so a box equal to the image at the same size
    returns the image exactly.
    """
    n, _, height, width = x.shape
    xf = _float(x)
    boxes = boxes.to(device=x.device, dtype=xf.dtype)
    x0, y0, w, h = boxes.unbind(1)
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=xf.dtype)
    theta[:, 0, 0] = w / width
    theta[:, 0, 2] = (2 * x0 + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * y0 + h) / height - 1
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(xf, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: torch.Tensor,
    size: int,
    generator: torch.Generator | None,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """A random box per image (see :func:`random_crop_boxes`) resampled to ``size``; float out."""
    boxes = random_crop_boxes(len(x), x.shape[-2], x.shape[-1], generator, x, scale, ratio)
    return crop_resize(x, boxes, size)


def random_hflip(
    x: torch.Tensor, generator: torch.Generator | None, p: float = 0.5
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p`` (one draw per image)."""
    flip = _rand(len(x), generator, x) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size x size`` pixels (exact slicing, no resampling)."""
    height, width = x.shape[-2:]
    if size > height or size > width:
        raise ValueError(f"center_crop: crop {size} is larger than the image {height}x{width}")
    top, left = (height - size) // 2, (width - size) // 2
    return x[..., top : top + size, left : left + size]


def resize_center_crop(x: torch.Tensor, size: int, resize_to: int | None = None) -> torch.Tensor:
    """Resize the shorter side to ``resize_to`` (default ``round(size / 0.875)``, i.e. 256 for
    224), then take the central ``size x size``; the validation transform. Float out."""
    resize_to = round(size / 0.875) if resize_to is None else resize_to
    if resize_to < size:
        raise ValueError(f"resize_center_crop: resize_to {resize_to} is smaller than size {size}")
    xf = _float(x)
    height, width = x.shape[-2:]
    if min(height, width) != resize_to:
        s = resize_to / min(height, width)
        if height <= width:
            new = (resize_to, max(resize_to, round(width * s)))
        else:
            new = (max(resize_to, round(height * s)), resize_to)
        xf = F.interpolate(xf, size=new, mode="bilinear", align_corners=False, antialias=s < 1)
    return center_crop(xf, size)


def pad_random_crop(
    x: torch.Tensor, generator: torch.Generator | None, padding: int = 4
) -> torch.Tensor:
    """Zero-pad by ``padding`` pixels and take a random crop of the original size per image."""
    n, c, height, width = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    dy = _randint(2 * padding + 1, n, generator, x)
    dx = _randint(2 * padding + 1, n, generator, x)
    rows = (dy.view(n, 1) + torch.arange(height, device=x.device)).view(n, 1, height, 1)
    cols = (dx.view(n, 1) + torch.arange(width, device=x.device)).view(n, 1, 1, width)
    # Two gathers: rows first (N, C, H, W + 2p), then columns (N, C, H, W).
    out = padded.gather(2, rows.expand(n, c, height, width + 2 * padding))
    return out.gather(3, cols.expand(n, c, height, width))


def normalize(
    x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """To float32 (``/255`` when uint8), then ``(x - mean) / std`` per channel."""
    return normalize_scaled(x, mean, std, 255.0 if x.dtype == torch.uint8 else 1.0)


def normalize_scaled(
    x: torch.Tensor, mean: Sequence[float], std: Sequence[float], scale: float
) -> torch.Tensor:
    """``(x / scale - mean) / std`` per channel, as float32; one fused multiply-add."""
    m = torch.tensor(mean, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    # (x/scale - m)/s == x * (1/(scale*s)) + (-m/s)
    return torch.addcmul(-m / s, x.float(), 1.0 / (scale * s))


def imagenet_train_transform(size: int) -> BatchTransform:
    """Random resized crop to ``size`` and a random flip; values stay on the 0..255 scale."""

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_hflip(random_resized_crop(x, size, generator), generator)

    return transform


def imagenet_eval_transform(size: int) -> BatchTransform:
    """Central crop of ``size`` from stored images already resized so their side is ~size/0.875."""

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return resize_center_crop(x, size, resize_to=max(size, min(x.shape[-2:])))

    return transform


def cifar_train_transform(padding: int = 4) -> BatchTransform:
    """Pad-and-crop then a random flip (He et al., 2016, Sec. 4.2)."""

    def transform(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return random_hflip(pad_random_crop(x, generator, padding), generator)

    return transform


class ImageSplit(Split):
    """A split held as a uint8 image tensor ``(N, C, H, W)`` on the device.

    ``get_batch`` gathers by index on the device, applies ``train_transform`` when ``augment`` is
    set (else ``eval_transform``, if any), and normalises to float32 with ``mean``/``std``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        train_transform: BatchTransform | None = None,
        eval_transform: BatchTransform | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"ImageSplit holds uint8 (N, C, H, W); got {images.dtype} {images.shape}"
            )
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.y = labels.long().to(images.device)
        self.mean, self.std = tuple(mean), tuple(std)
        self.train_transform = train_transform
        self.eval_transform = eval_transform

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y.cpu()

    def get_batch(
        self, indices: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if indices.device != self.images.device:
            indices = indices.to(self.images.device, non_blocking=True)
        x = self.images.index_select(0, indices)
        y = self.y.index_select(0, indices)
        transform = self.train_transform if augment else self.eval_transform
        if transform is not None:
            x = transform(x, generator)
        # Transforms keep the 0..255 value scale (uint8 or float), so one normalisation fits all.
        return normalize_scaled(x, self.mean, self.std, 255.0), y
