"""What the engine needs from a dataset: two splits that turn index batches into tensors.

The engine owns the order: every epoch it draws one permutation of the training indices from the
run's seed, cuts it into global batches and hands each rank its slice (see
:mod:`largebatch.data.sampling`). A :class:`Split` only turns a batch of indices into ``(x, y)`` on
the training device. Small datasets hold everything as device tensors and index them
(:class:`TensorSplit`): no per-sample Python in the hot path. Datasets decoded from disk may
override :meth:`Split.iter_batches` to prefetch with DataLoader workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from largebatch.config import ConfigError

# augment(x, generator) -> x: a batched, device-side augmentation drawn from ``generator``.
Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class Split:
    """One split of a dataset (train or validation)."""

    def __len__(self) -> int:
        raise NotImplementedError

    @property
    def labels(self) -> torch.Tensor:
        """All labels as a CPU int64 tensor (for stratified subsets and class counts)."""
        raise NotImplementedError

    def get_batch(
        self, indices: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x, y)`` for ``indices`` on the split's device; ``augment`` draws from
        ``generator`` so a resumed run draws the same augmentation."""
        raise NotImplementedError

    def iter_batches(
        self,
        index_batches: Iterable[torch.Tensor],
        augment: bool = False,
        generator: torch.Generator | None = None,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in index_batches:
            yield self.get_batch(indices, augment, generator)


class TensorSplit(Split):
    """A split held as two tensors on one device, batched by ``index_select``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment_fn: Augment | None = None) -> None:
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} examples but y has {len(y)}")
        self.x = x
        self.y = y.long()
        self.augment_fn = augment_fn

    def __len__(self) -> int:
        return len(self.y)

    @property
    def labels(self) -> torch.Tensor:
        return self.y.cpu()

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device), self.augment_fn)

    def subset(self, indices: torch.Tensor) -> TensorSplit:
        indices = indices.to(self.x.device)
        return TensorSplit(self.x[indices], self.y[indices], self.augment_fn)

    def get_batch(
        self, indices: torch.Tensor, augment: bool = False, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if indices.device != self.x.device:
            indices = indices.to(self.x.device, non_blocking=True)
        x = self.x.index_select(0, indices)
        y = self.y.index_select(0, indices)
        if augment and self.augment_fn is not None:
            x = self.augment_fn(x, generator)
        return x, y


@dataclass
class DatasetBundle:
    """A dataset ready to train on: the splits and what a model needs to know about them."""

    train: Split
    val: Split
    num_classes: int
    input_shape: tuple[int, ...]
    """Shape of one example, e.g. ``(40,)`` for MNIST-1D or ``(1, 28, 28)`` for F-MNIST."""
    info: dict[str, Any] = field(default_factory=dict)
    """Provenance for the run directory: source files, counts, split manifest hash."""


def train_subset_indices(labels: torch.Tensor, train_subset: int, seed: int) -> torch.Tensor:
    """``data.train_subset``: the stratified subset of the training labels, or a
    :class:`ConfigError` naming both numbers when it asks for more examples than there are."""
    if train_subset > len(labels):
        raise ConfigError(
            f"data.train_subset={train_subset} is larger than the training set "
            f"({len(labels)} examples); use at most {len(labels)}, or leave it unset (null) to "
            "train on all of it"
        )
    return stratified_subset(labels, train_subset, seed)


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Indices of ``size`` examples with class proportions kept, drawn from ``seed`` (sorted).

    ``size`` must be at most ``len(labels)``; equal to it, every index is returned.
    """
    n = len(labels)
    if size > n:
        raise ValueError(f"a subset of {size} examples was asked of {n}")
    if size == n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed)
    classes = labels.unique()
    picked = []
    # Largest-remainder allocation so the sizes sum exactly to ``size``.
    counts = torch.stack([(labels == c).sum() for c in classes]).double()
    quota = counts * size / n
    take = quota.floor().long()
    remainder = size - int(take.sum())
    if remainder > 0:
        order = torch.argsort(quota - take.double(), descending=True, stable=True)
        take[order[:remainder]] += 1
    for c, k in zip(classes, take.tolist(), strict=True):
        idx = torch.nonzero(labels == c).flatten()
        perm = torch.randperm(len(idx), generator=g)
        picked.append(idx[perm[:k]])
    return torch.cat(picked).sort().values
