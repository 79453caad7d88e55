"""Fixtures: a generated Caltech101-layout tree and its official-layout zip (session-wide)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.data.imagegen import make_caltech_tree, pack_official


@pytest.fixture(scope="session")
def caltech_tree(tmp_path_factory) -> Path:
    """A clean tree (no corrupt file); read-only for the tests that share it."""
    return make_caltech_tree(tmp_path_factory.mktemp("caltech"))


@pytest.fixture(scope="session")
def caltech_zip_root(tmp_path_factory, caltech_tree) -> Path:
    """A folder holding only the official-layout caltech-101.zip of ``caltech_tree``."""
    root = tmp_path_factory.mktemp("caltech_zip")
    pack_official(caltech_tree, root)
    return root
