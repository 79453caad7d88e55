"""The public API's docstring examples run, and the README's three lines work as written."""

import doctest
import importlib
import inspect

import pytest
import torch

import largebatch
from largebatch import GradientNoise, scale_lr

# Every module whose docstrings document the public API (the top-level package included).
PUBLIC_MODULES = [
    "largebatch",
    "largebatch.gradient.attach",
    "largebatch.gradient.base",
    "largebatch.gradient.info",
    "largebatch.gradient.noise",
    "largebatch.optim.lars",
    "largebatch.optim.penalty",
    "largebatch.optim.perturbation",
    "largebatch.optim.sam",
    "largebatch.optim.scaling",
    "largebatch.optim.schedules",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize("name", [n for n in largebatch.__all__ if n != "__version__"])
def test_every_export_is_documented_with_a_runnable_example(name):
    obj = getattr(largebatch, name)
    assert inspect.getdoc(obj), f"largebatch.{name} has no docstring"
    module = importlib.import_module(obj.__module__)
    examples = [obj.__doc__ or "", module.__doc__ or ""]
    covered = any(">>>" in d for d in examples) or f"lb.{name}(" in (largebatch.__doc__ or "")
    assert covered, f"largebatch.{name}: no runnable example in its docstring or its module's"
    assert obj.__module__ in PUBLIC_MODULES or f"lb.{name}(" in largebatch.__doc__


def test_version():
    assert largebatch.__version__.count(".") == 2


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
