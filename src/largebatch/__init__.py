"""largebatch: large mini-batch training in PyTorch, and diagnostics of the minima it reaches.

The pieces a user adds to their own loop, each a few lines (every block below runs as a test).

**Gradient noise** (Jaiswal & Taura): before update ``t`` (first: ``t = 0``),
``g <- g + N(0, sigma_t^2 I)``, ``sigma_t^2 = alpha / (1 + t)^gamma``; ``alpha`` is a variance.
``attach`` runs it inside ``optimizer.step`` (plain, closure, GradScaler) with its state in
``optimizer.state_dict()``::

    >>> import torch, largebatch as lb
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
    ...                             torch.nn.ReLU(), torch.nn.Linear(16, 2))
    >>> noise = lb.GradientNoise(model.parameters(), alpha=1e-5, gamma=0.55, seed=0)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    >>> handle = noise.attach(opt)
    >>> model(torch.randn(32, 8)).pow(2).mean().backward(); opt.step()
    >>> noise.t, "largebatch" in opt.state_dict()
    (1, True)
    >>> handle.remove()

**LR scaling rules**: ``linear``: ``lr = base_lr * B / B_base`` (Goyal et al.); ``sqrt``:
``lr = base_lr * sqrt(B / B_base)`` (Hoffer et al.)::

    >>> lb.scale_lr(base_lr=0.1, base_batch_size=256, batch_size=4096, rule="linear")
    1.6

**Warmup and decay** as ``LambdaLR`` multipliers, e.g. warmup then cosine:
``f(t) = t / W`` for ``t < W``, then ``(1 + cos(pi (t - W) / (T - W))) / 2``::

    >>> sched = torch.optim.lr_scheduler.LambdaLR(opt, lb.warmup_cosine_lambda(5, 100))
    >>> opt.param_groups[0]["lr"]
    0.0

**LARS** (You et al. 2017; LR inside momentum; other published forms by name):
``v <- m v + lr * eta |w| / (|g| + wd |w|) * (g + wd w)``, ``w <- w - v``::

    >>> opt = lb.LARS(model.parameters(), lr=1.6, momentum=0.9, weight_decay=5e-4, eta=0.001)
    >>> opt.form.name, [g["trust_ratio"] for g in opt.param_groups]
    ('you2017', [True, False])

**Ghost BatchNorm** (Hoffer et al. 2017): each chunk ``x_j`` of ``ghost_batch_size`` examples is
normalised by its own statistics, ``y_j = gamma (x_j - mean(x_j)) / sqrt(var(x_j) + eps) + beta``::

    >>> model = lb.convert_to_ghost_batchnorm(model, ghost_batch_size=8)
    >>> type(model[1]).__name__
    'GhostBatchNorm1d'
"""

from largebatch._version import __version__  # noqa: E402
from largebatch.gradient.base import GradientTransform, TransformChain, UpdateInfo  # noqa: E402
from largebatch.gradient.noise import GradientNoise, noise_variance  # noqa: E402

# Noise kinds beyond the paper's isotropic noise (structured covariance, multiplicative, ...)
# are exported here by the module that defines them in largebatch/gradient/.
from largebatch.models.ghost_batchnorm import convert_to_ghost_batchnorm  # noqa: E402
from largebatch.optim.lars import LARS  # noqa: E402
from largebatch.optim.penalty import gradient_norm_penalty  # noqa: E402
from largebatch.optim.sam import SAM, MomentumSAM  # noqa: E402
from largebatch.optim.scaling import scale_lr  # noqa: E402
from largebatch.optim.schedules import (  # noqa: E402
    Schedule,
    as_lambda_lr,
    multistep_lambda,
    paper_lambda,
    warmup_cosine_lambda,
    warmup_lambda,
)

__all__ = [
    "LARS",
    "SAM",
    "GradientNoise",
    "MomentumSAM",
    "GradientTransform",
    "Schedule",
    "TransformChain",
    "UpdateInfo",
    "__version__",
    "as_lambda_lr",
    "convert_to_ghost_batchnorm",
    "gradient_norm_penalty",
    "multistep_lambda",
    "noise_variance",
    "paper_lambda",
    "scale_lr",
    "warmup_cosine_lambda",
    "warmup_lambda",
]
