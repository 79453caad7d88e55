"""Gradient transforms: act in place on the list of gradients between backward and step."""

from largebatch.gradient.clip import clip_global_norm_
from largebatch.gradient.noise import GradientNoise, is_bias_or_norm, noise_variance

__all__ = [
    "GradientNoise",
    "clip_global_norm_",
    "is_bias_or_norm",
    "noise_variance",
]
