"""Where a dataset's files are looked for: an explicit ``data.root`` alone, or the defaults.

An explicit ``data.root`` is a promise about which data a run trains on, so it is never
replaced by a copy found elsewhere: if it does not exist, is a file, or lacks the expected files,
the run stops with a :class:`DataError` that names the path and the files expected there. Only an
unset ``data.root`` searches the default locations (``$LARGEBATCH_DATA``, system folders,
``~/.cache/largebatch/<name>``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from largebatch.data.registry import DataError


def explicit_root(root: str, expected: str = "the dataset's files", how_to_get: str = "") -> Path:
    """``data.root`` as a folder that exists; :class:`DataError` naming it, what is expected
    there and how to get it otherwise."""
    path = Path(root).expanduser()
    hint = f" To get them: {how_to_get}." if how_to_get else ""
    fix = f"set data.root to the folder that holds {expected}, or unset it to search the defaults"
    if not path.exists():
        raise DataError(f"data.root '{path}' does not exist; {fix}.{hint}")
    if not path.is_dir():
        raise DataError(f"data.root '{path}' is a file, not a folder; {fix}.{hint}")
    return path


def search_dirs(
    name: str,
    root: str | None,
    system_dirs: Iterable[str] = (),
    expected: str = "the dataset's files",
    how_to_get: str = "",
) -> list[Path]:
    """Folders to look in, in order.

    With ``root`` set: ``root`` and ``root/<name>`` only (``root`` checked to be a folder; the
    error names ``expected`` and ``how_to_get``).
    Without: ``$LARGEBATCH_DATA/<name>``, ``$LARGEBATCH_DATA``, ``system_dirs``, then
    ``~/.cache/largebatch/<name>`` (where ``largebatch download <name>`` puts files).
    """
    if root:
        path = explicit_root(root, expected, how_to_get)
        return [path, path / name]
    dirs: list[Path] = []
    env = os.environ.get("LARGEBATCH_DATA")
    if env:
        dirs += [Path(env) / name, Path(env)]
    dirs += [Path(p) for p in system_dirs]
    dirs.append(Path.home() / ".cache" / "largebatch" / name)
    return dirs


def not_in_root(
    root: str, name: str, expected: str, how_to_get: str = "", detail: str = ""
) -> DataError:
    """The error for an explicit ``data.root`` that lacks the files: names both, says the fix."""
    path = Path(root).expanduser()
    detail = f" {detail}" if detail else ""
    hint = f" To get them: {how_to_get}." if how_to_get else ""
    return DataError(
        f"{name}: data.root '{path}' does not hold {expected} (looked in {path} and "
        f"{path / name}).{detail} Set data.root to the folder that holds them, or unset it to "
        f"search the default locations.{hint}"
    )
