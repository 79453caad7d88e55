"""Multiplicative noise: random per-example loss weights ``w_i ~ N(1, s^2)``, one backward pass.

The loss of an update becomes ``(1/B) sum_i w_i l_i`` over the global batch of ``B`` examples, so
the gradient is ``g + e`` with ``e = (1/B) sum_i (w_i - 1) g_i`` (``g_i``: per-example gradients).
This is Wu et al. 2020, "On the noisy gradient descent that generalizes as SGD" (ICML).

**The scale.** Write ``w_i = 1 + s eps_i``, ``eps_i ~ N(0, 1)`` independent of the data.

- Uncentered (Wu et al.): over ``eps``, ``Cov(e) = s^2/B^2 sum_i g_i g_i^T``; over the data
  (``g_i`` i.i.d., mean ``mu``, covariance ``Sigma``) that is ``s^2/B (Sigma + mu mu^T)``, and
  ``e`` is uncorrelated with ``g``. ``s^2 = c B`` gives ``c (Sigma + mu mu^T)``: the target plus
  noise along the mean gradient, small when ``|mu|^2`` is small next to ``tr Sigma``.
- Centered (the default): ``w_i = 1 + s (eps_i - mean(eps))``, so the weights sum to ``B``. Then
  ``e = (s/B) sum_i eps_i (g_i - g)``, ``Cov(e) = s^2/B^2 sum_i (g_i - g)(g_i - g)^T`` over
  ``eps``, and over the data ``s^2 (B-1)/B^2 Sigma``. ``s^2 = c B^2 / (B - 1)`` gives ``c * Sigma``
  exactly, with no mean term.

Either way ``s^2 ~ c B``: at ``match: step`` that is ``B/B_S - 1``, the variance of the weights
that sampling ``B_S`` of the ``B`` examples would give (``B/B_S`` with probability ``B_S/B``,
else 0). Many weights are negative when ``s > 1``; that is what noise of SGD's size takes.

**Who draws what.** The transform owns a generator (seeded identically on every rank). Each update,
:meth:`begin_update` draws the weights of the whole global batch; rank ``r`` of ``W`` uses entries
``[r B/W, (r+1) B/W)`` and :meth:`loss_weights` hands them out micro-batch by micro-batch, in order.
So every example of the global batch gets its own weight, the draw does not depend on the number of
ranks, and a run is reproducible. Cost: one ``normal_`` of ``B`` values per update, one multiply
per micro-batch; no host-device sync. :meth:`apply_` does nothing.

Units: ``c`` in 1/examples (:mod:`largebatch.gradient.calibration`); weights are dimensionless.

**Checkpoints.** This kind hands out per-example loss weights, so ``attach`` refuses it and its
state is not in ``optimizer.state_dict()``: save ``noise.state_dict()`` (``t`` and the generator
state) next to the model's and the optimizer's, between updates, and call ``noise.load_state_dict``
on resume; the resumed run then draws exactly what the uninterrupted run would have. The transform
is also a ``torch.distributed.checkpoint`` ``Stateful``:
``dcp.save({"model": ..., "noise": noise}, ...)``.

Example (your own loop: weight the per-example losses yourself)::

    >>> import torch
    >>> from largebatch.gradient.base import UpdateInfo
    >>> from largebatch.gradient.multiplicative_noise import MultiplicativeNoise
    >>> model = torch.nn.Linear(4, 1)
    >>> noise = MultiplicativeNoise(covariance_multiplier=0.03, global_batch_size=32)
    >>> x, y, k = torch.randn(32, 4), torch.randn(32, 1), 2
    >>> info = UpdateInfo(step=0, lr=0.1)
    >>> noise.begin_update(k, info)
    >>> for xj, yj in zip(x.chunk(k), y.chunk(k)):
    ...     w = noise.loss_weights(len(xj), xj.device, info)        # (16,)
    ...     losses = (model(xj) - yj).pow(2).squeeze(1)               # per-example, (16,)
    ...     ((w * losses).sum() / 32).backward()                      # (1/B) sum_i w_i l_i
    >>> round(noise.weight_std, 4)                                    # s = sqrt(0.03 * 32^2 / 31)
    0.9955
"""

from __future__ import annotations

import math
from typing import Any

import torch

from largebatch.gradient.base import GradientTransform, UpdateInfo
from largebatch.gradient.microbatch_noise import check_multiplier


class MultiplicativeNoise(GradientTransform):
    """Per-example loss weights ``N(1, s^2)`` whose added gradient covariance is ``c * Sigma``.

    Args:
        covariance_multiplier: ``c`` (1/examples); 0 makes :meth:`loss_weights` return ``None``,
            so the loss, and the gradients, are bit-identical to the plain run.
        global_batch_size: ``B``, examples per update over all ranks.
        seed: seed of the transform's own generator; the same on every rank.
        world_size: ``W``; must divide ``B``.
        rank: this rank; it weights the examples ``[r B/W, (r+1) B/W)`` of the global draw.
        center: subtract the weights' noise mean over the global batch (exact ``c * Sigma``);
            False is Wu et al.'s uncentered form (``c (Sigma + mu mu^T)``, ``s^2 = c B``).
        device: where the weights are drawn (the model's device).

    Hooks: ``begin_update(k, info)`` draws the update's weights; ``loss_weights(m, device, info)``
    returns the next ``m`` of this rank's weights (shape ``(m,)``, float32); the engine's loss is
    then ``(W/B) * sum_i w_i l_i`` per micro-batch. ``apply_`` does nothing.
    """

    name = "multiplicative_noise"

    def __init__(
        self,
        covariance_multiplier: float,
        global_batch_size: int,
        *,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        center: bool = True,
        device: torch.device | str = "cpu",
    ) -> None:
        check_multiplier(covariance_multiplier)
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, {world_size=}")
        if global_batch_size < 2 or global_batch_size % world_size:
            raise ValueError(
                f"global_batch_size must be >= 2 and a multiple of world_size={world_size}, "
                f"got {global_batch_size}"
            )
        self.params: list[torch.nn.Parameter] = []  # it changes the loss, not the gradients
        self.c = float(covariance_multiplier)
        self.global_batch_size = int(global_batch_size)
        self.world_size = int(world_size)
        self.rank = int(rank)
        self.center = bool(center)
        self.seed = int(seed)
        self.t = 0
        b = self.global_batch_size
        self.weight_variance = self.c * b * b / (b - 1) if center else self.c * b
        self.weight_std = math.sqrt(self.weight_variance)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(self.seed)
        self._weights: torch.Tensor | None = None  # this rank's weights for the current update
        self._cursor = 0

    def begin_update(self, num_microbatches: int, info: UpdateInfo) -> None:
        self.t += 1
        if self.c == 0:
            return
        eps = torch.empty(self.global_batch_size, device=self.device)
        eps.normal_(generator=self.generator)
        if self.center:
            eps.sub_(eps.mean())
        weights = eps.mul_(self.weight_std).add_(1.0)
        share = self.global_batch_size // self.world_size
        self._weights = weights[self.rank * share : (self.rank + 1) * share]
        self._cursor = 0

    def loss_weights(
        self, num_examples: int, device: torch.device, info: UpdateInfo
    ) -> torch.Tensor | None:
        if self.c == 0:
            return None
        if self._weights is None:
            raise ValueError(f"{self.name}: call begin_update before loss_weights")
        end = self._cursor + num_examples
        if end > len(self._weights):
            raise ValueError(
                f"{self.name}: this rank asked for {end} weights in one update, but its share of "
                f"global_batch_size={self.global_batch_size} is {len(self._weights)}"
            )
        out = self._weights[self._cursor : end]
        self._cursor = end
        return out.to(device)

    def apply_(self, grads: list[torch.Tensor | None], info: UpdateInfo) -> None:
        return None

    def injected_variance(self) -> float:
        """The weights' variance ``s^2`` (the added gradient covariance is ``c * Sigma``)."""
        return self.weight_variance

    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])
        self.generator.set_state(state["generator"].cpu())  # torch.load may have moved it
