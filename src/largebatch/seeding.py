"""Seeds as named streams: one independent generator seed per ``(seed, stream, epoch, rank)``.

A run's ``train.seed`` feeds several random streams (the epoch's order, augmentation, dropout).
Each gets its seed by hashing the whole tuple with :class:`numpy.random.SeedSequence`, so no two
(stream, epoch, rank) combinations share a generator, whatever the number of ranks or epochs
(an arithmetic mix such as ``(seed * P + epoch) * 64 + rank`` collides past 64 ranks).

Example::

    >>> stream_seed(0, "order", 1) == stream_seed(0, "order", 1)
    True
    >>> len({stream_seed(0, "augment", e, r) for e in range(3) for r in range(100)})
    300
"""

from __future__ import annotations

import zlib

import numpy as np

STREAMS = ("order", "augment", "dropout", "init")


def stream_seed(seed: int, stream: str, epoch: int = 0, rank: int = 0) -> int:
    """A 63-bit seed for ``torch.Generator.manual_seed``, unique per (seed, stream, epoch, rank)."""
    if stream not in STREAMS:
        raise ValueError(f"unknown seed stream '{stream}'; streams: {', '.join(STREAMS)}")
    # crc32 of the name: a fixed, documented integer per stream (Python's hash() is salted).
    s = int(seed) % 2**64  # negative seeds are valid; SeedSequence takes non-negative words
    key = [s & 0xFFFFFFFF, s >> 32, zlib.crc32(stream.encode()), int(epoch), int(rank)]
    state = np.random.SeedSequence(key).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))
