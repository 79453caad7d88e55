"""Checkpoints: written atomically, loaded with ``weights_only=True``, checked for their format.

A checkpoint is a plain dict of tensors, numbers and strings (so ``torch.load(weights_only=True)``
reads it): ``format``, ``version``, ``epoch`` (completed epochs), ``step`` (completed optimizer
updates), ``model``, ``optimizer``, ``transforms`` (the gradient pipeline's state, including the
noise generator) and ``world_size``. Data order, augmentation and dropout are seeded from
``(train.seed, epoch, rank)`` at the start of each epoch, so they need no saved state.

Writing goes to a temporary file in the same folder, is flushed to disk, then renamed over the
old file: a kill at any moment leaves either the previous or the new checkpoint, both whole.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from largebatch.errors import UserError

FORMAT = "largebatch-checkpoint"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that is missing, truncated or not one of ours."""


_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_GLOBAL = re.compile(r"unsupported global:?\s*(?:GLOBAL\s+)?([\w.]+)", re.IGNORECASE)


def _reason(error: BaseException) -> str:
    """Torch's load error as one plain clause: no colour codes, no advice to turn
    ``weights_only`` off, no multi-line help text."""
    text = _ANSI.sub("", str(error))
    found = _GLOBAL.search(text)
    if found:
        return (
            f"it holds a Python object ({found.group(1)}), not only tensors and plain data, and "
            "loading it could run code, so it is refused (a largebatch checkpoint never does)"
        )
    if "Weights only load failed" in text:
        detail = ""
        for line in text.splitlines()[1:]:
            line = line.strip()
            if line and "weights_only" not in line and "http" not in line:
                detail = line
                break
        return f"it is truncated or not a largebatch checkpoint ({detail or 'unreadable data'})"
    if isinstance(error, KeyError | IndexError | UnicodeDecodeError | ValueError | TypeError):
        # bytes that are no pickle at all: the unpickler read them as opcodes
        return f"it is not a torch file, let alone a largebatch checkpoint ({type(error).__name__})"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first.split(". ")[0].rstrip(".")[:160] or "empty or cut short"  # first sentence
    return f"it is truncated or not a largebatch checkpoint ({type(error).__name__}: {first})"


def _text_reason(path: Path) -> str | None:
    """``it is a text file (...)`` when the file's first bytes are printable text, else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
        text = head.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if not text or not all(c.isprintable() or c in "\t\r\n" for c in text):
        return None
    if not text.strip():
        return "it holds only blank space, not a checkpoint"
    return f"it is a text file, not a checkpoint (it starts {text.strip().splitlines()[0][:40]!r})"


def atomic_write_bytes(path: Path, write: Any) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, fsync it, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise CheckpointError(
            f"{path} is a link to {os.readlink(path)}, which does not exist; restore the file it "
            "points to, or delete the link to restart the run"
        )
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train the run first (largebatch train)")
    where = f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        # A text file or other bytes reach torch's unpickler as opcodes and fail as KeyError,
        # IndexError, UnicodeDecodeError, ... as well as the usual RuntimeError / EOFError.
        reason = _text_reason(path) or _reason(e)
        raise CheckpointError(
            f"{where} cannot be read as a checkpoint: {reason}. Delete it to restart the run, "
            "or restore it from a copy."
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is a torch file but not a largebatch checkpoint (no format '{FORMAT}')"
        )
    if payload.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {payload.get('version')}; this largebatch reads "
            f"version {VERSION}"
        )
    return payload
