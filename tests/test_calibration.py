"""The noise target ``c``: closed forms under no, linear and square-root LR scaling."""

from __future__ import annotations

import doctest
import math

import pytest

from largebatch.gradient import calibration
from largebatch.gradient.calibration import (
    NoiseCalibration,
    covariance_multiplier,
    epoch_multiplier,
    step_multiplier,
)

B_S, B_L, LR_S = 32, 512, 0.1


def test_step_closed_form():
    assert step_multiplier(B_S, B_L) == pytest.approx(1 / 32 - 1 / 512, rel=1e-15)
    assert covariance_multiplier("step", B_S, B_L) == pytest.approx(15 / 512)


def test_epoch_is_zero_under_linear_scaling():
    for b_s, b_l, lr in [(32, 512, 0.1), (128, 4096, 0.05), (256, 8192, 0.1 * 3)]:
        assert epoch_multiplier(b_s, b_l, lr, lr * b_l / b_s) == 0.0
    cal = NoiseCalibration("epoch", B_S, B_L, base_lr=LR_S, lr=LR_S * B_L / B_S)
    assert cal.multiplier == 0.0 and not cal.clamped
    assert "nothing is added" in cal.summary()


def test_epoch_equals_step_under_sqrt_scaling():
    lr_l = LR_S * math.sqrt(B_L / B_S)
    assert epoch_multiplier(B_S, B_L, LR_S, lr_l) == pytest.approx(1 / B_S - 1 / B_L, rel=1e-12)


def test_epoch_without_scaling_closed_form():
    # lr_L = lr_S: c = B_L / B_S^2 - 1 / B_L
    assert epoch_multiplier(B_S, B_L, LR_S, LR_S) == pytest.approx(B_L / B_S**2 - 1 / B_L)
    assert epoch_multiplier(B_S, B_L, LR_S, LR_S) > step_multiplier(B_S, B_L)


def test_epoch_matches_the_per_epoch_noise_it_is_derived_from():
    # steps x lr^2 x (Sigma/B + c Sigma) per epoch, with Sigma = 1 and N = 1
    lr_l = 0.37
    c = epoch_multiplier(B_S, B_L, LR_S, lr_l)
    small = (1 / B_S) * LR_S**2 / B_S
    large = (1 / B_L) * lr_l**2 * (1 / B_L + c)
    assert large == pytest.approx(small, rel=1e-12)


def test_a_target_equal_to_the_run_adds_nothing():
    assert covariance_multiplier("step", 256, 256) == 0.0
    assert covariance_multiplier("epoch", 256, 256, base_lr=0.1, lr=0.1) == 0.0


def test_negative_target_is_clamped_and_said():
    superlinear = NoiseCalibration("epoch", B_S, B_L, base_lr=LR_S, lr=LR_S * 2 * B_L / B_S)
    assert superlinear.raw < 0 and superlinear.clamped and superlinear.multiplier == 0.0
    assert "clamped to 0" in superlinear.summary()
    smaller = NoiseCalibration("step", 512, 32)
    assert smaller.clamped and smaller.multiplier == 0.0


def test_scale_multiplies_either():
    assert covariance_multiplier("step", B_S, B_L, scale=3.0) == pytest.approx(3 * 15 / 512)
    c = covariance_multiplier("epoch", B_S, B_L, base_lr=LR_S, lr=LR_S, scale=0.5)
    assert c == pytest.approx(0.5 * (B_L / B_S**2 - 1 / B_L))
    assert "scale is 0" in NoiseCalibration("step", B_S, B_L, scale=0.0).summary()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"match": "per_step"}, "noise.match"),
        ({"match": "epoch"}, "base lr"),
        ({"match": "step", "scale": -1.0}, "noise.scale"),
        ({"match": "step", "batch_size": 0}, "batch sizes"),
    ],
)
def test_mistakes_raise_and_name_the_fix(kwargs, fragment):
    args = {"base_batch_size": B_S, "batch_size": B_L} | kwargs
    with pytest.raises(ValueError, match=fragment):
        NoiseCalibration(**args)


def test_docstring_examples_run():
    assert doctest.testmod(calibration).failed == 0
