"""Every example in every docstring of the package runs and prints what it says.

A module with a ``>>>`` anywhere in it is run through :mod:`doctest`; an example that no test
runs would go stale without anyone noticing.
"""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import largebatch

PACKAGE = Path(largebatch.__file__).parent


def modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>>" not in path.read_text():
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.append(".".join(parts))
    return names


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
