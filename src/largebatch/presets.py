"""Presets: the YAML configs in the repository's ``configs/``, usable by name from any directory.

``configs/`` at the repository root is the source of truth. A regular install ships a copy inside
the package (``largebatch/configs/``, written by ``setup.py`` at build time); an editable install
or a checkout reads ``configs/`` beside ``src/`` directly. Either way::

    largebatch train mnist1d_cnn               # a preset by name
    largebatch train configs/mnist1d_cnn.yaml  # the repository path, from any directory
    largebatch train ./my_config.yaml          # any file

Example::

    >>> from largebatch.presets import resolve_preset, list_presets
    >>> resolve_preset("mnist1d_cnn").name
    'mnist1d_cnn.yaml'
    >>> resolve_preset("configs/mnist1d_cnn.yaml").resolve() == resolve_preset("mnist1d_cnn")
    True
    >>> "mnist1d_cnn" in list_presets()
    True
"""

from __future__ import annotations

from pathlib import Path

from largebatch.errors import UserError

DIRNAME = "configs"


def presets_root() -> Path | None:
    """The folder holding the presets: the installed copy, else the source tree's ``configs/``."""
    package = Path(__file__).resolve().parent
    for candidate in (package / DIRNAME, package.parents[1] / DIRNAME):
        if candidate.is_dir():
            return candidate
    return None


def list_presets(subdir: str = "") -> dict[str, Path]:
    """Preset name -> file, for the ``*.yaml`` directly in ``configs/`` (or ``configs/subdir``)."""
    root = presets_root()
    folder = root / subdir if root is not None else None
    if folder is None or not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))}


def resolve_preset(name_or_path: str | Path) -> Path:
    """The config file ``name_or_path`` names.

    In order: an existing file; a preset name (``mnist1d_cnn``, ``mnist1d_cnn.yaml``,
    ``sweeps/demo``); a repository path (``configs/mnist1d_cnn.yaml``) looked up among the
    presets, so the commands in the presets' headers work from any directory.

    Raises:
        UserError: nothing matches; the message lists the presets.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    root = presets_root()
    if root is not None:
        parts = path.parts
        rel = Path(*parts[1:]) if parts and parts[0] == DIRNAME and len(parts) > 1 else path
        candidate = root / rel
        if candidate.suffix != ".yaml":
            candidate = candidate.with_name(candidate.name + ".yaml")
        if candidate.is_file():
            return candidate.resolve()
    names = ", ".join(list_presets()) or "(none found: is the package installed?)"
    raise UserError(f"'{name_or_path}' is neither a file nor a preset; presets: {names}")


def resolve_in(name_or_path: str | Path, subdir: str, what: str) -> Path:
    """The spec file ``name_or_path`` names, a preset looked up in ``configs/<subdir>/``.

    In order: an existing file; a name in ``configs/<subdir>/`` (``demo``, ``demo.yaml``); a
    repository path (``configs/sweeps/demo.yaml``) or a preset name with its folder
    (``sweeps/demo``) from any directory.

    Raises:
        UserError: nothing matches; one line listing the ``what`` presets (``sweep``).
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    tries = [f"{subdir}/{name_or_path}"]
    if len(path.parts) > 1:
        tries.append(str(name_or_path))
    for candidate in tries:
        try:
            return resolve_preset(candidate)
        except UserError:
            pass
    names = ", ".join(list_presets(subdir)) or "(none found: is the package installed?)"
    raise UserError(
        f"'{name_or_path}' is neither a file nor a {what} preset; {what} presets: {names}"
    )


def header_field(path: Path, key: str) -> str | None:
    """The text of ``# Key: ...`` in a preset's comment header (continuation lines joined), e.g.
    ``header_field(path, "Time")``; None when the header has no such field."""
    found: list[str] = []
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    for line in lines:
        if not line.startswith("#"):
            break  # the header ends at the first line that is not a comment
        body = line[1:].strip()
        field, sep, rest = body.partition(":")
        is_field = bool(sep) and field.isalpha() and field[:1].isupper() and " " not in field
        if found and (is_field or not body):
            break
        if is_field and field == key:
            found.append(rest.strip())
        elif found:
            found.append(body)
    return " ".join(found) if found else None
