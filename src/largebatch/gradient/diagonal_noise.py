"""Anisotropic diagonal noise: ``N(0, c * diag(Sigma_hat))``, ``Sigma_hat`` estimated in the run.

Before the optimizer step the averaged gradient gets, per coordinate ``i``::

    g_i  <-  g_i + sqrt(c * v_i) * z_i,         z_i ~ N(0, 1)

where ``v`` is a running estimate of ``diag(Sigma)``, the per-example gradient variance, and ``c``
(1/examples) the target multiplier (:mod:`largebatch.gradient.calibration`). The added variance per
coordinate is ``c * v_i``: the diagonal of SGD's own noise at the target, without its
correlations (Zhu et al. 2019, "The anisotropic noise in stochastic gradient descent").

**The estimate.** With ``n`` micro-batch groups of sizes ``m_j`` (``M = sum_j m_j`` examples),
group means ``g_j`` and overall mean ``g``, ``u = sum_j m_j (g_j - g)^2 / (n - 1)`` is unbiased for
``diag(Sigma)`` for any group sizes: ``Var(g_j - g) = Sigma (1/m_j - 1/M)``, summed with weights
``m_j`` gives ``Sigma (n - 1)``. For ``k`` equal micro-batches of ``m`` this is
``m/(k-1) * sum_j (g_j - g)^2``. It is computed as ``sum_j m_j g_j^2 - M g^2`` (clamped at 0
against rounding; accurate while a coordinate's micro-batch spread is not ~1e4 times smaller than
its mean). Each update's ``u`` enters an exponential moving average with ``decay`` (0.95: about
the last 20 updates), bias-corrected: ``v = ema / (1 - decay^s)`` after ``s`` estimates, so ``v``
is unbiased from the first update on.

Loss scale, DDP and ``last_microbatch`` are as in :mod:`largebatch.gradient.microbatch_noise`:
after micro-batch ``j`` of ``k`` the hook sees ``S_j / k``, whence ``g_j = k (S_j/k - S_{j-1}/k)``;
under DDP the per-rank sums ``sum_j g_j^2`` (and, with ``"reduced"``, the sums before the last
micro-batch, which give the mean of the ranks' last micro-batches as one group of ``W m``) are added
over ranks in one all-reduce; every rank then holds the same ``v`` and draws the same ``z`` from
the same generator, so the replicas stay bit-identical.

Cost: three flat buffers of the parameters' size (difference, sum of squares, average); per
micro-batch four ``torch._foreach_*`` ops with host-float coefficients (no host-device sync); per
update one all-reduce and one ``normal_`` over the flat buffer.

**Checkpoints.** This kind acts per micro-batch, so ``attach`` refuses it and its state is not in
``optimizer.state_dict()``: save ``noise.state_dict()`` (``t``, the generator state, the moving
average and its count) next to the model's and the optimizer's, between updates, and call
``noise.load_state_dict`` on resume; the resumed run then draws exactly what the uninterrupted run
would have. The transform is also a ``torch.distributed.checkpoint`` ``Stateful``:
``dcp.save({"model": ..., "noise": noise}, ...)``.

Example (your own loop: call the hooks yourself)::

    >>> import torch
    >>> from largebatch.gradient.base import UpdateInfo
    >>> from largebatch.gradient.diagonal_noise import DiagonalNoise
    >>> model = torch.nn.Linear(4, 1)
    >>> noise = DiagonalNoise(model.parameters(), covariance_multiplier=0.03, micro_batch_size=8)
    >>> x, y, k = torch.randn(32, 4), torch.randn(32, 1), 4
    >>> info = UpdateInfo(step=0, lr=0.1)
    >>> noise.begin_update(k, info)
    >>> for j, (xj, yj) in enumerate(zip(x.chunk(k), y.chunk(k))):
    ...     (torch.nn.functional.mse_loss(model(xj), yj) / k).backward()
    ...     noise.after_microbatch(j, [p.grad for p in model.parameters()])
    >>> noise.apply_([p.grad for p in model.parameters()], info)   # then optimizer.step()
    >>> noise.variance_estimate().shape       # diag(Sigma_hat), flat in parameter order
    torch.Size([5])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from largebatch.gradient.base import UpdateInfo
from largebatch.gradient.microbatch_noise import AllReduce, MicrobatchKind


class DiagonalNoise(MicrobatchKind):
    """Adds ``N(0, c * diag(v))``, ``v`` a running estimate of the per-example gradient variance.

    Args:
        params: the parameters whose gradients get noise (one device, one dtype).
        covariance_multiplier: ``c`` (1/examples); 0 leaves the gradients bit-identical (and
            estimates nothing).
        micro_batch_size: ``m``, examples per micro-batch (per rank).
        decay: of the moving average of the per-update estimates, in ``[0, 1)``; 0 uses each
            update's own estimate.
        seed: seed of the transform's own generator (on the parameters' device); the same on
            every rank.
        world_size, rank, all_reduce, last_microbatch: as for
            :class:`~largebatch.gradient.microbatch_noise.MicrobatchNoise`.

    Hooks: ``begin_update(k, info)`` zeroes the sums; ``after_microbatch(j, grads)`` with the
    running sums ``S_j / k``; ``apply_(grads, info)`` with the final averaged gradients updates
    the estimate and adds the noise in place.
    """

    name = "diagonal_noise"

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        covariance_multiplier: float,
        micro_batch_size: int,
        *,
        decay: float = 0.95,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        all_reduce: AllReduce | None = None,
        last_microbatch: str = "reduced",
    ) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        super().__init__(
            params,
            covariance_multiplier,
            micro_batch_size,
            num_buffers=3,
            generator_device=None,
            seed=seed,
            world_size=world_size,
            rank=rank,
            all_reduce=all_reduce,
            last_microbatch=last_microbatch,
        )
        self.decay = float(decay)
        self.num_estimates = 0
        n = self.numel
        # flat = [sum of squares | previous running sum | moving average]
        self._squares, self._previous, self._average = (
            self.flat[:n],
            self.flat[n : 2 * n],
            self.flat[2 * n :],
        )

    def begin_update(self, num_microbatches: int, info: UpdateInfo) -> None:
        self._begin(num_microbatches)
        if self.c > 0:
            self.flat[: 2 * self.numel].zero_()

    @torch.no_grad()
    def after_microbatch(self, index: int, grads: list[torch.Tensor | None]) -> None:
        k = self._step(index)
        if self.c == 0 or (self.last_microbatch == "reduced" and index == k - 1):
            return  # the reduced last micro-batch is handled in apply_
        squares, gs = self._pairs(self.views[0], grads)
        previous, _ = self._pairs(self.views[1], grads)
        if not gs:
            return
        torch._foreach_sub_(previous, gs)  # -g_j / k: the sign goes with the square
        torch._foreach_addcmul_(squares, previous, previous, value=float(k * k))
        torch._foreach_copy_(previous, gs)

    @torch.no_grad()
    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        k = self._finish()
        self.t += 1
        if self.c == 0:
            return
        w, n, size = self.world_size, self.num_groups(k), self.numel
        reduced = self.last_microbatch == "reduced"
        self._reduce(self.flat[: 2 * size] if reduced else self._squares)
        squares, gs = self._pairs(self.views[0], grads)
        previous, _ = self._pairs(self.views[1], grads)
        if reduced and gs:
            # previous = sum_r S_{r,k-1} / k; the ranks' last micro-batches have mean
            # (k / W) (W g - previous): add W m * mean^2 (in units of m).
            torch._foreach_neg_(previous)
            torch._foreach_add_(previous, gs, alpha=float(w))
            torch._foreach_addcmul_(squares, previous, previous, value=k * k / w)
        if gs:
            torch._foreach_addcmul_(squares, gs, gs, value=-float(k * w))
        estimate = self._squares.mul_(self.micro_batch_size / (n - 1)).clamp_min_(0)
        self._average.lerp_(estimate, 1 - self.decay)
        self.num_estimates += 1
        correction = 1 - self.decay**self.num_estimates
        noise = self._squares.normal_(generator=self.generator)
        noise.mul_(self._previous.copy_(self._average).sqrt_())
        if gs:
            torch._foreach_add_(gs, squares, alpha=math.sqrt(self.c / correction))

    def variance_estimate(self) -> torch.Tensor:
        """``v``: the bias-corrected per-coordinate variance estimate, flat in parameter order."""
        if self.num_estimates == 0:
            return torch.zeros_like(self._average)
        return self._average / (1 - self.decay**self.num_estimates)

    def injected_variance(self) -> torch.Tensor:
        """Mean over entries of the variance added by the last update, ``c * mean(v)``."""
        return self.c * self.variance_estimate().mean()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["num_estimates"] = self.num_estimates
        state["average"] = self._average.detach().clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.num_estimates = int(state["num_estimates"])
        self._average.copy_(state["average"])
