"""Diagnostics of a minimum: is it sharp, and how noisy are the gradients around it?

One module per concept, each an operator or an algorithm over plain callables, tested against
closed forms:

* :mod:`~largebatch.analysis.hvp`: the matrix-free Hessian of the loss over fixed samples;
* :mod:`~largebatch.analysis.eigen`: Lanczos, power iteration, stochastic Lanczos quadrature;
* :mod:`~largebatch.analysis.trace`: Hutchinson's trace estimator;
* :mod:`~largebatch.analysis.sharpness`: Keskar et al.'s epsilon-sharpness;
* :mod:`~largebatch.analysis.interpolate`: the 1-D parametric plot between two solutions;
* :mod:`~largebatch.analysis.surface`: Li et al.'s filter-normalised loss surfaces;
* :mod:`~largebatch.analysis.noise_scale`: McCandlish et al.'s gradient noise scale;
* :mod:`~largebatch.analysis.batchnorm`: explicit BatchNorm modes and statistics recomputation;
* :mod:`~largebatch.analysis.cli`: the ``largebatch analyze`` commands.
"""

from largebatch.analysis.batchnorm import bn_mode, has_batchnorm, recompute_bn_stats
from largebatch.analysis.eigen import EigenResult, lanczos, power_iteration, spectral_density
from largebatch.analysis.hvp import HessianOperator, fixed_batches, flatten, unflatten
from largebatch.analysis.interpolate import (
    InterpolationResult,
    RangeFormatError,
    interpolate_models,
    parse_range,
)
from largebatch.analysis.noise_scale import (
    NoiseScale,
    gradient_noise_scale,
    injected_noise_variance,
    minibatch_noise_variance,
)
from largebatch.analysis.sharpness import SharpnessResult, epsilon_sharpness
from largebatch.analysis.surface import filter_normalized_direction, loss_surface
from largebatch.analysis.trace import TraceEstimate, exact_trace, hutchinson_trace

__all__ = [
    "EigenResult",
    "HessianOperator",
    "InterpolationResult",
    "NoiseScale",
    "RangeFormatError",
    "SharpnessResult",
    "TraceEstimate",
    "bn_mode",
    "epsilon_sharpness",
    "exact_trace",
    "filter_normalized_direction",
    "fixed_batches",
    "flatten",
    "gradient_noise_scale",
    "has_batchnorm",
    "hutchinson_trace",
    "injected_noise_variance",
    "interpolate_models",
    "lanczos",
    "loss_surface",
    "minibatch_noise_variance",
    "parse_range",
    "power_iteration",
    "recompute_bn_stats",
    "spectral_density",
    "unflatten",
]
