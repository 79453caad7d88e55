"""Checkpoint load errors are one plain line that says what is wrong and what to do."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from largebatch import checkpoint as ck
from largebatch.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo owned",))


def _plain_one_line(message: str) -> None:
    assert "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message  # torch's advice to turn the safety off: not ours
    assert len(message) < 400


def test_a_pickle_that_runs_code_is_refused_in_one_plain_line(tmp_path):
    path = tmp_path / "last.pt"
    torch.save({"format": ck.FORMAT, "model": _RunsCode()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _plain_one_line(str(err.value))
    assert "posix.system" in str(err.value) or "system" in str(err.value)
    assert "refused" in str(err.value)


@pytest.mark.parametrize("data", [b"garbage" * 10, b""])
def test_garbage_and_empty_files_are_one_plain_line(tmp_path, data):
    path = tmp_path / "last.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="truncated|not a checkpoint") as err:
        load_checkpoint(path)
    _plain_one_line(str(err.value))


def test_a_truncated_checkpoint_is_one_plain_line(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "model": {"w": torch.zeros(1000)}})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="truncated") as err:
        load_checkpoint(path)
    _plain_one_line(str(err.value))


def test_torch_messages_with_colour_and_many_lines_become_one_plain_line(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    path.write_bytes(b"x")

    def load(*args, **kwargs):
        raise pickle.UnpicklingError(
            "\x1b[31mWeights only load failed.\x1b[0m Re-running `torch.load` with `weights_only`"
            " set to `False` will likely succeed.\n\n\x1b[1mUnsupported operand 103\x1b[0m\n\nmore"
        )

    monkeypatch.setattr(torch, "load", load)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _plain_one_line(str(err.value))


def test_stale_temp_files_never_look_like_checkpoints(tmp_path):
    # The temporary name is hidden and carries the writer's pid: what records cleans up.
    path = tmp_path / "checkpoints" / "last.pt"
    seen = []
    save_checkpoint(path, {"epoch": 0})
    ck.atomic_write_bytes(path, lambda f: seen.extend(os.listdir(path.parent)))
    assert sorted(seen) == sorted(["last.pt", f".last.pt.tmp-{os.getpid()}"])
