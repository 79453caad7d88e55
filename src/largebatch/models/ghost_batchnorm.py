"""Ghost Batch Normalization (Hoffer, Hubara and Soudry, 2017, "Train longer, generalize better").

A large batch of ``N`` examples is normalised as ``N / g`` "ghost" batches of ``g`` examples, each
with its own mean and variance, so the normalisation noise of a small batch is kept when the
update uses a large one. In evaluation mode it is plain BatchNorm with the running statistics.

Training mode, for a batch split into chunks ``x_1 .. x_k`` of ``ghost_batch_size`` examples
(the last chunk may be smaller)::

    y_j = gamma * (x_j - mean(x_j)) / sqrt(var(x_j) + eps) + beta       (biased var, per channel)

Running statistics are updated **once per forward**, like BatchNorm's, with the size-weighted
average of the chunk statistics (chunk means; unbiased chunk variances)::

    running_mean <- (1 - momentum) * running_mean + momentum * sum_j (n_j / N) mean(x_j)
    running_var  <- (1 - momentum) * running_var  + momentum * sum_j (n_j / N) var_unbiased(x_j)

so their time scale does not depend on the number of chunks (updating once per chunk would raise
the effective momentum to ``1 - (1 - momentum)^k``). With ``ghost_batch_size >= N`` the module is
exactly ``BatchNorm``. The modules subclass ``torch.nn.modules.batchnorm._BatchNorm``, so code that
recognises normalisation layers (weight-decay exclusion, noise exclusion) still does, and their
``state_dict`` is BatchNorm's.

Example (a batch of 64 normalised as two ghost batches of 32; each chunk has mean 0)::

    >>> import torch
    >>> from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8))
    >>> model = convert_to_ghost_batchnorm(model, ghost_batch_size=32)
    >>> type(model[1]).__name__, model[1].ghost_batch_size
    ('GhostBatchNorm1d', 32)
    >>> y = model(torch.randn(64, 4) + torch.arange(64.0)[:, None])  # chunks differ in mean
    >>> [round(chunk.mean().abs().item(), 4) for chunk in y.split(32)]
    [0.0, 0.0]
    >>> int(model[1].num_batches_tracked)  # running statistics: updated once per forward
    1
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


class _GhostBatchNorm(_BatchNorm):
    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype)
        if ghost_batch_size < 1:
            raise ValueError(f"ghost_batch_size must be >= 1, got {ghost_batch_size}")
        self.ghost_batch_size = ghost_batch_size

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_batch_size={self.ghost_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        n = x.shape[0]
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats or n <= self.ghost_batch_size:
            return super().forward(x)  # eval, or one chunk: exactly BatchNorm

        factor = 0.0
        if self.training and self.track_running_stats:
            tracked = self.num_batches_tracked
            assert tracked is not None  # track_running_stats
            tracked.add_(1)
            if self.momentum is None:  # cumulative moving average, as in BatchNorm
                factor = 1.0 / float(tracked)
            else:
                factor = self.momentum
        g = self.ghost_batch_size
        full = (n // g) * g
        parts = [(x[:full], n // g)] + ([(x[full:], 1)] if full < n else [])
        outputs, means, variances, sizes = [], [], [], []
        for part, k in parts:
            y, mean, var = self._normalise_chunks(part, k)
            outputs.append(y)
            means.append(mean)
            variances.append(var)
            sizes.append(torch.full((k,), part.shape[0] / k, device=x.device))
        if self.training and self.track_running_stats:
            with torch.no_grad():
                w = torch.cat(sizes) / n  # (chunks,): each chunk's share of the batch
                mean = (torch.cat(means) * w[:, None]).sum(0)
                var = (torch.cat(variances) * w[:, None]).sum(0)
                self.running_mean.mul_(1 - factor).add_(mean, alpha=factor)  # type: ignore[union-attr]
                self.running_var.mul_(1 - factor).add_(var, alpha=factor)  # type: ignore[union-attr]
        return torch.cat(outputs) if len(outputs) > 1 else outputs[0]

    def _normalise_chunks(
        self, x: torch.Tensor, k: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Normalise ``x`` (N, C, *) as ``k`` equal chunks; also return each chunk's mean and
        unbiased variance, shape (k, C).

        The chunks become channels of one tensor (g, k * C, *), so a single fused ``batch_norm``
        call normalises them all; scratch running buffers with momentum 1 capture the chunk
        statistics without a second pass.
        """
        n, c = x.shape[:2]
        rest = x.shape[2:]
        g = n // k
        folded = x.reshape(k, g, c, *rest).transpose(0, 1).reshape(g, k * c, *rest)
        stats_dtype = self.running_mean.dtype if self.running_mean is not None else torch.float32
        mean = torch.zeros(k * c, device=x.device, dtype=stats_dtype)
        var = torch.ones(k * c, device=x.device, dtype=stats_dtype)
        weight = self.weight.repeat(k) if self.weight is not None else None
        bias = self.bias.repeat(k) if self.bias is not None else None
        track = self.training and self.track_running_stats
        y = F.batch_norm(
            folded,
            mean if track else None,
            var if track else None,
            weight,
            bias,
            training=True,
            momentum=1.0,
            eps=self.eps,
        )
        y = y.reshape(g, k, c, *rest).transpose(0, 1).reshape(n, c, *rest)
        return y, mean.view(k, c), var.view(k, c)


class GhostBatchNorm1d(_GhostBatchNorm):
    """Ghost BatchNorm for (N, C) or (N, C, L) inputs; a drop-in for ``nn.BatchNorm1d``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 3):
            raise ValueError(f"expected 2D or 3D input (got {x.dim()}D input)")


class GhostBatchNorm2d(_GhostBatchNorm):
    """Ghost BatchNorm for (N, C, H, W) inputs; a drop-in for ``nn.BatchNorm2d``."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"expected 4D input (got {x.dim()}D input)")


def convert_to_ghost_batchnorm(model: nn.Module, ghost_batch_size: int) -> nn.Module:
    """Replace every ``BatchNorm1d``/``BatchNorm2d`` in ``model`` by its Ghost counterpart,
    keeping parameters, buffers, device and dtype; returns the model (changed in place, except
    when ``model`` itself is a BatchNorm layer, which is returned replaced)."""
    if isinstance(model, nn.BatchNorm1d | nn.BatchNorm2d) and not isinstance(
        model, _GhostBatchNorm
    ):
        cls = GhostBatchNorm2d if isinstance(model, nn.BatchNorm2d) else GhostBatchNorm1d
        ref = model.weight if model.weight is not None else model.running_mean
        ghost = cls(
            model.num_features,
            ghost_batch_size,
            model.eps,
            model.momentum,
            model.affine,
            model.track_running_stats,
            device=ref.device if ref is not None else None,
            dtype=ref.dtype if ref is not None else None,
        )
        ghost.load_state_dict(model.state_dict())
        ghost.train(model.training)
        for p_new, p_old in zip(ghost.parameters(), model.parameters(), strict=True):
            p_new.requires_grad_(p_old.requires_grad)
        return ghost
    for name, child in model.named_children():
        new = convert_to_ghost_batchnorm(child, ghost_batch_size)
        if new is not child:
            setattr(model, name, new)
    return model
