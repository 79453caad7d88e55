"""Noise with the gradient covariance's own shape, drawn from the micro-batch deviations.

With ``n`` micro-batches of ``m`` examples per update, micro-batch mean gradients ``g_j`` and
their mean ``g = (1/n) sum_j g_j``, the transform adds to the averaged gradient::

    g  <-  g + sqrt(c) * sqrt(m / (n - 1)) * sum_j xi_j (g_j - g),      xi_j ~ N(0, 1)

Why this has covariance ``c * Sigma`` (``Sigma``: per-example gradient covariance): the ``xi_j``
are independent of the data, so over ``xi`` the noise has mean 0 and covariance
``c * m/(n-1) * sum_j d_j d_j^T`` with ``d_j = g_j - g``. Over the data, ``g_j`` are independent
with covariance ``Sigma / m``, so ``Cov(d_j) = Sigma/m - 2 Sigma/(n m) + Sigma/(n m) =
Sigma (n-1)/(n m)`` and ``E[sum_j d_j d_j^T] = Sigma (n-1)/m``: the total is ``c * Sigma`` exactly.
In words: the span of the ``n`` micro-batch gradients holds ``n - 1`` free samples of SGD's own
noise. Units: ``c`` is 1/examples (:mod:`largebatch.gradient.calibration`); the noise has the
gradient's units.

**One buffer during backward.** The hooks see running sums, not the ``g_j``. With
``S_j = sum_{i<=j} g_i`` and ``xi_{n+1} = 0``, summation by parts gives
``sum_j xi_j g_j = sum_j (xi_j - xi_{j+1}) S_j``, so after micro-batch ``j`` one buffer takes
``(xi_j - xi_{j+1}) S_j`` (the ``xi`` are drawn at :meth:`begin_update`), and at the end
``sum_j xi_j (g_j - g) = sum_j xi_j g_j - (sum_j xi_j) g``.

**Loss scale (the engine's convention).** After micro-batch ``j`` of ``k`` on one rank, ``p.grad``
holds ``(W / B) * sum of the per-example gradients so far`` = ``S_j / k`` for equal micro-batches
of ``m`` examples (each micro-batch's mean loss times ``m W / B = 1/k``): in your own loop,
``(loss / k).backward()``. The transform multiplies by ``k`` to get ``S_j``.

**DDP** (``W`` ranks, ``k`` micro-batches each). Every rank draws the same ``xi`` (one generator,
seeded identically) and uses its own slice; the one-buffer partial sums are added over ranks with
``all_reduce`` (a sum, in place) before use; ``g`` is the all-reduced gradient. What the hook sees
after the *last* micro-batch decides the groups (``last_microbatch``):

- ``"reduced"`` (DDP's default: the last backward all-reduces, so ``p.grad`` is already the global
  mean ``g``): the last micro-batches of all ranks cannot be told apart and count as one group of
  ``W m`` examples; it shares one ``xi`` across ranks, weighted ``1/sqrt(W)`` per rank, which is
  the unequal-size form of the same estimator (``sum_j m_j d_j d_j^T / (n - 1)``, unbiased for any
  group sizes). ``n = W (k - 1) + 1``; needs ``k >= 2``.
- ``"local"`` (the hook runs before the all-reduce): every rank's micro-batches are groups,
  ``n = W k`` -- exactly the single-process result with ``W k`` micro-batches (rank ``r``'s
  micro-batch ``j`` is micro-batch ``r k + j``); one micro-batch per rank is enough.

Either way all ranks compute the same numbers and the replicas stay bit-identical. With ``W = 1``
the two are the same. ``n < 2`` raises ``ValueError``.

Cost: one buffer of the parameters' size, one ``torch._foreach_add_`` per micro-batch (the
coefficients are host floats drawn from a CPU generator: no host-device sync), one all-reduce per
update under DDP, two ``torch._foreach_add_`` at the end.

Example (your own loop: call the hooks yourself)::

    >>> import torch
    >>> from largebatch.gradient.base import UpdateInfo
    >>> from largebatch.gradient.microbatch_noise import MicrobatchNoise
    >>> model = torch.nn.Linear(4, 1)
    >>> noise = MicrobatchNoise(model.parameters(), covariance_multiplier=0.03, micro_batch_size=8)
    >>> x, y, k = torch.randn(32, 4), torch.randn(32, 1), 4
    >>> info = UpdateInfo(step=0, lr=0.1)
    >>> noise.begin_update(k, info)
    >>> for j, (xj, yj) in enumerate(zip(x.chunk(k), y.chunk(k))):
    ...     (torch.nn.functional.mse_loss(model(xj), yj) / k).backward()
    ...     noise.after_microbatch(j, [p.grad for p in model.parameters()])
    >>> noise.apply_([p.grad for p in model.parameters()], info)   # then optimizer.step()
    >>> noise.t
    1
    >>> ckpt = {"model": model.state_dict(), "noise": noise.state_dict()}  # torch.save(ckpt, ...)
    >>> resumed = MicrobatchNoise(model.parameters(), 0.03, micro_batch_size=8)
    >>> resumed.load_state_dict(ckpt["noise"])
    >>> resumed.t, torch.equal(resumed.generator.get_state(), noise.generator.get_state())
    (1, True)

**Checkpoints.** This kind acts per micro-batch, so ``attach`` refuses it and its state is not in
``optimizer.state_dict()``: save ``noise.state_dict()`` (``t`` and the generator state) next to the
model's and the optimizer's, between updates, and call ``noise.load_state_dict`` on resume; the
resumed run then draws exactly what the uninterrupted run would have. The transform is also a
``torch.distributed.checkpoint`` ``Stateful``: ``dcp.save({"model": ..., "noise": noise}, ...)``.

Paper: Wen et al. 2020, "An empirical study of large-batch stochastic gradient descent with
structured covariance noise" (AISTATS).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from largebatch.gradient.base import GradientTransform, UpdateInfo

AllReduce = Callable[[torch.Tensor], Any]
LAST_MICROBATCH = ("reduced", "local")


def check_multiplier(covariance_multiplier: float) -> None:
    """Refuse a covariance multiplier ``c`` that is negative, nan or infinite."""
    try:
        c = float(covariance_multiplier)
    except (TypeError, ValueError):
        c = math.nan
    if not (math.isfinite(c) and c >= 0):
        raise ValueError(
            "covariance_multiplier is c (1/examples) and must be a finite number >= 0 (0 = off; "
            f"largebatch.gradient.calibration computes it), got {covariance_multiplier!r}"
        )


class MicrobatchKind(GradientTransform):
    """What the micro-batch noise kinds share: parameters, flat buffers, groups, DDP, state.

    Subclasses get ``num_buffers`` flat buffers of the parameters' total size, laid out one after
    the other in ``self.flat``; ``self.views[b]`` are buffer ``b``'s per-parameter views.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        covariance_multiplier: float,
        micro_batch_size: int,
        *,
        num_buffers: int,
        generator_device: torch.device | str | None,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        all_reduce: AllReduce | None = None,
        last_microbatch: str = "reduced",
    ) -> None:
        params = [p for p in params if p.requires_grad]
        if not params:
            raise ValueError(f"{self.name} got no parameters that require gradients")
        device, dtype = params[0].device, params[0].dtype
        if any(p.device != device or p.dtype != dtype for p in params):
            raise ValueError(f"{self.name} expects all parameters on one device with one dtype")
        check_multiplier(covariance_multiplier)
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, {world_size=}")
        if world_size > 1 and all_reduce is None:
            raise ValueError(
                f"{self.name} with world_size={world_size} needs all_reduce "
                "(e.g. DistContext.all_reduce_sum)"
            )
        if last_microbatch not in LAST_MICROBATCH:
            raise ValueError(
                f"last_microbatch must be one of {LAST_MICROBATCH}, got '{last_microbatch}'"
            )
        self.params = params
        self.c = float(covariance_multiplier)
        self.micro_batch_size = int(micro_batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.all_reduce = all_reduce
        self.last_microbatch = last_microbatch
        self.seed = int(seed)
        self.t = 0
        self.generator = torch.Generator(device=generator_device or device)
        self.generator.manual_seed(self.seed)
        self.numel = sum(p.numel() for p in params)
        self.flat = torch.zeros(num_buffers * self.numel, device=device, dtype=dtype)
        self.views: list[list[torch.Tensor]] = []
        for b in range(num_buffers):
            start, views = b * self.numel, []
            for p in params:
                views.append(self.flat[start : start + p.numel()].view_as(p))
                start += p.numel()
            self.views.append(views)
        self._k: int | None = None  # micro-batches of the update in progress
        self._seen = 0

    def num_groups(self, num_microbatches: int) -> int:
        """``n``: the micro-batch groups an update of ``num_microbatches`` per rank has."""
        k, w = num_microbatches, self.world_size
        return w * k if self.last_microbatch == "local" else w * (k - 1) + 1

    def _begin(self, num_microbatches: int) -> int:
        k = int(num_microbatches)
        n = self.num_groups(k) if k >= 1 else 0
        if n < 2 and self.c > 0:  # c = 0 adds nothing and needs nothing
            raise ValueError(
                f"{self.name} needs at least 2 micro-batches per update (got {k} per rank on "
                f"{self.world_size} rank(s), last_microbatch='{self.last_microbatch}'): lower "
                "train.micro_batch_size so that the global batch splits into 2 or more"
            )
        self._k, self._seen = k, 0
        return k

    def _finish(self) -> int:
        """Check that every micro-batch was seen; return ``k`` and close the update."""
        if self._k is None:
            raise ValueError(f"{self.name}: call begin_update before apply_")
        if self._seen != self._k:
            raise ValueError(
                f"{self.name}: after_microbatch ran {self._seen} times for {self._k} micro-batches"
            )
        k, self._k = self._k, None
        return k

    def _step(self, index: int) -> int:
        if self._k is None:
            raise ValueError(f"{self.name}: call begin_update before after_microbatch")
        assert index == self._seen, f"micro-batch {index} out of order (expected {self._seen})"
        self._seen += 1
        return self._k

    def _reduce(self, tensor: torch.Tensor) -> None:
        if self.all_reduce is not None:
            out = self.all_reduce(tensor)
            if isinstance(out, torch.Tensor) and out is not tensor:
                tensor.copy_(out)

    @staticmethod
    def _pairs(
        buffers: list[torch.Tensor], grads: list[torch.Tensor | None]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The buffer views and gradients of the parameters that have a gradient."""
        if len(grads) != len(buffers):
            raise ValueError(f"expected {len(buffers)} gradients, got {len(grads)}")
        kept = [(b, g) for b, g in zip(buffers, grads, strict=True) if g is not None]
        return [b for b, _ in kept], [g for _, g in kept]

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.generator.set_state(state["generator"].cpu())  # torch.load may have moved it


class MicrobatchNoise(MicrobatchKind):
    """Adds ``sqrt(c m / (n-1)) * sum_j xi_j (g_j - g)``: covariance ``c * Sigma`` in expectation.

    Args:
        params: the parameters whose gradients get noise (one device, one dtype).
        covariance_multiplier: ``c`` (1/examples), from :mod:`largebatch.gradient.calibration`;
            0 leaves the gradients bit-identical and costs nothing.
        micro_batch_size: ``m``, examples per micro-batch (per rank).
        seed: seed of the transform's own CPU generator (the ``xi``); the same on every rank.
        world_size: ``W``, the number of DDP ranks.
        rank: this rank.
        all_reduce: in-place sum over ranks of a tensor (``DistContext.all_reduce_sum``); needed
            when ``world_size > 1``.
        last_microbatch: ``"reduced"`` if ``p.grad`` after the last micro-batch is already the
            all-reduced mean (DDP), ``"local"`` if it is still this rank's running sum.

    Hooks: ``begin_update(k, info)`` draws ``n`` standard normals (float64, CPU generator) and
    zeroes the buffer; ``after_microbatch(j, grads)`` with ``grads`` the running sums
    (``S_j / k``, see the module docstring); ``apply_(grads, info)`` with the final averaged
    gradients adds the noise in place.
    """

    name = "microbatch_noise"

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        covariance_multiplier: float,
        micro_batch_size: int,
        *,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        all_reduce: AllReduce | None = None,
        last_microbatch: str = "reduced",
    ) -> None:
        super().__init__(
            params,
            covariance_multiplier,
            micro_batch_size,
            num_buffers=1,
            generator_device="cpu",
            seed=seed,
            world_size=world_size,
            rank=rank,
            all_reduce=all_reduce,
            last_microbatch=last_microbatch,
        )
        self._coef: list[float] = []
        self._xi_sum = 0.0
        self._scale = 0.0

    def draw_coefficients(self, num_microbatches: int) -> tuple[list[float], float]:
        """This rank's ``xi`` per micro-batch and the sum of all ranks' ``xi`` (one draw)."""
        k, w, r = num_microbatches, self.world_size, self.rank
        z = torch.randn(self.num_groups(k), generator=self.generator, dtype=torch.float64)
        if self.last_microbatch == "local":
            return z[r * k : (r + 1) * k].tolist(), float(z.sum())
        # The merged last group (W m examples) shares z[-1]; 1/sqrt(W) per rank gives it weight
        # W m in the estimator, as its size asks.
        last = float(z[-1])
        mine = z[r * (k - 1) : (r + 1) * (k - 1)].tolist() + [last / math.sqrt(w)]
        return mine, float(z[:-1].sum()) + math.sqrt(w) * last

    def begin_update(self, num_microbatches: int, info: UpdateInfo) -> None:
        k = self._begin(num_microbatches)
        if self.c == 0:
            return
        xi, self._xi_sum = self.draw_coefficients(k)
        # after micro-batch j the running sum is S_j / k: coefficient k (xi_j - xi_{j+1})
        self._coef = [k * (xi[j] - (xi[j + 1] if j + 1 < k else 0.0)) for j in range(k)]
        self.flat.zero_()

    @torch.no_grad()
    def after_microbatch(self, index: int, grads: list[torch.Tensor | None]) -> None:
        self._step(index)
        if self.c == 0:
            return
        bufs, gs = self._pairs(self.views[0], grads)
        if bufs:
            torch._foreach_add_(bufs, gs, alpha=self._coef[index])

    @torch.no_grad()
    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        k = self._finish()
        self.t += 1
        if self.c == 0:
            return
        self._reduce(self.flat)  # sum_j xi_j g_j over all ranks' groups
        bufs, gs = self._pairs(self.views[0], grads)
        n = self.num_groups(k)
        self._scale = math.sqrt(self.c * self.micro_batch_size / (n - 1))
        if bufs:
            torch._foreach_add_(bufs, gs, alpha=-self._xi_sum)  # sum_j xi_j (g_j - g)
            torch._foreach_add_(gs, bufs, alpha=self._scale)

    def last_noise(self) -> torch.Tensor:
        """The noise added by the last update, flat in parameter order (a new tensor)."""
        return self.flat * self._scale

    def injected_variance(self) -> torch.Tensor:
        """Mean over entries of the last noise squared (a device scalar: read it when logging)."""
        return self.last_noise().pow(2).mean()
