"""largebatch: large mini-batch training in PyTorch, and diagnostics of the minima it reaches."""

__version__ = "0.1.0"

from largebatch.gradient.noise import GradientNoise, noise_variance  # noqa: E402
from largebatch.optim.scaling import scale_lr  # noqa: E402

__all__ = ["GradientNoise", "noise_variance", "scale_lr", "__version__"]
