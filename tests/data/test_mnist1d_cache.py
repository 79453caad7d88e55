"""MNIST-1D is generated once and then read from a disk cache keyed by its arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from largebatch.config import DataConfig
from largebatch.data import mnist1d


@pytest.fixture
def fresh(monkeypatch):
    """No in-process memo, counters at zero: each build goes to the disk cache or generates."""
    monkeypatch.setattr(mnist1d, "_CACHE", {})
    monkeypatch.setattr(mnist1d, "STATS", {"generated": 0, "cache_hits": 0})


def _build(cache_dir, num_samples=300):
    cfg = DataConfig(name="mnist1d", num_samples=num_samples, cache_dir=str(cache_dir))
    return mnist1d.build(cfg, torch.device("cpu"))


def _same(a, b) -> None:
    for split in ("train", "val"):
        ta, tb = getattr(a, split), getattr(b, split)
        assert torch.equal(ta.x, tb.x) and torch.equal(ta.y, tb.y)


def test_second_build_reads_the_cache_and_equals_the_first(tmp_path, fresh):
    first = _build(tmp_path)
    assert mnist1d.STATS == {"generated": 1, "cache_hits": 0}
    path = mnist1d.cache_path(300, 0.8, tmp_path)
    assert path.is_file() and path.parent == tmp_path / "mnist1d"
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temp left
    mnist1d._CACHE.clear()
    second = _build(tmp_path)
    assert mnist1d.STATS == {"generated": 1, "cache_hits": 1}
    _same(first, second)


def test_the_key_follows_the_arguments(tmp_path, fresh):
    assert mnist1d.cache_path(300, 0.8, tmp_path) != mnist1d.cache_path(400, 0.8, tmp_path)
    assert mnist1d.cache_path(300, 0.8, tmp_path) != mnist1d.cache_path(300, 0.7, tmp_path)
    small, large = _build(tmp_path, 300), _build(tmp_path, 400)
    assert len(small.train) + len(small.val) == 300 and len(large.train) + len(large.val) == 400


@pytest.mark.parametrize("damage", [b"", b"not an npz at all", "truncate"])
def test_a_corrupt_cache_is_regenerated(tmp_path, fresh, damage):
    first = _build(tmp_path)
    path = mnist1d.cache_path(300, 0.8, tmp_path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    else:
        path.write_bytes(damage)
    mnist1d._CACHE.clear()
    again = _build(tmp_path)
    assert mnist1d.STATS["generated"] == 2
    _same(first, again)
    with np.load(path) as f:  # rewritten whole
        assert len(f["x"]) == len(first.train)
