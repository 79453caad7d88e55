"""The public API's docstring examples run, and the README's three lines work as written."""

import doctest

import pytest
import torch

import largebatch.gradient.noise
import largebatch.optim.scaling
from largebatch import GradientNoise, scale_lr


@pytest.mark.parametrize("module", [largebatch.gradient.noise, largebatch.optim.scaling])
def test_docstring_examples_run(module):
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0


def test_readme_three_lines_add_the_noise_in_step():
    torch.manual_seed(0)
    model = torch.nn.Linear(10, 3)
    lr = scale_lr(base_lr=0.01, base_batch_size=32, batch_size=512, rule="linear")
    assert lr == pytest.approx(0.16)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    noise = GradientNoise(model.parameters(), alpha=1e-5, gamma=0.55, seed=0)
    noise.attach(optimizer)
    before = model.weight.detach().clone()
    model.weight.grad = torch.zeros_like(model.weight)
    model.bias.grad = torch.zeros_like(model.bias)
    optimizer.step()
    # zero gradient: the whole update is lr times the noise, std sqrt(alpha) at t = 0
    step = (before - model.weight.detach()) / lr
    assert step.abs().max() > 0 and step.std().item() == pytest.approx(1e-5**0.5, rel=0.6)
    assert noise.t == 1
