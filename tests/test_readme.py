"""The README says what the code does: the transform order is TRANSFORM_ORDER (and the
pipeline docstring's), every "Drop-in pieces" block runs, and the set-up commands are true."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import largebatch.gradient.pipeline as pipeline
from largebatch.config import Config, config_to_dict
from largebatch.gradient.pipeline import TRANSFORM_ORDER

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()

# A numbered item whose head is transform names in (single or double) backquotes, then a colon.
ITEM = re.compile(r"^\s*(\d+)\. (.*)$")
HEAD = re.compile(r"^((?:`{1,2}[a-z_]+`{1,2}(?:, )?)+):")


def section(text: str, heading: str) -> str:
    """The text under ``heading`` (a Markdown heading line) up to the next heading (``#`` lines
    inside fenced code blocks are not headings)."""
    lines = text[text.index(heading + "\n") + len(heading) + 1 :].splitlines(keepends=True)
    out, fenced = [], False
    for line in lines:
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            break
        out.append(line)
    return "".join(out)


def transform_names(text: str) -> list[str]:
    """The names at the head of the numbered items of ``text``, in order; the items must be
    numbered 1, 2, 3, ..."""
    numbers, names = [], []
    for line in text.splitlines():
        item = ITEM.match(line)
        if item is None:
            continue
        numbers.append(int(item.group(1)))
        head = HEAD.match(item.group(2))
        if head:
            names += re.findall(r"`{1,2}([a-z_]+)`{1,2}", head.group(1))
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    return names


def test_readme_transform_order_is_the_chain_order():
    text = section(README, "### The order of gradient transforms (one update)")
    assert transform_names(text) == list(TRANSFORM_ORDER)


def test_pipeline_docstring_transform_order_is_the_chain_order():
    doc = pipeline.__doc__ or ""
    listed = doc[: doc.index("Example::")]
    assert transform_names(listed) == list(TRANSFORM_ORDER)


def test_parser_sees_a_wrong_order():
    wrong = "1. backward: x\n2. `noise`: y\n3. `clip`: z\n"
    assert transform_names(wrong) == ["noise", "clip"] != list(TRANSFORM_ORDER[:2])


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.M | re.S)


DROP_IN = python_blocks(section(README, "## Drop-in pieces"))


def test_drop_in_section_has_a_block_per_piece():
    joined = "\n".join(DROP_IN)
    for piece in ("GradientNoise", "MicrobatchNoise", "LARS", "convert_to_ghost_batchnorm"):
        assert piece in joined, piece
    assert "scale_lr" in joined and "as_lambda_lr" in joined
    assert "SAM" in joined and "MomentumSAM" in joined
    assert "gradient_norm_penalty" in joined
    assert len(DROP_IN) == 7


@pytest.mark.parametrize("index", range(len(DROP_IN)))
def test_drop_in_block_runs(index):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 3)
    )
    scope = {
        "torch": torch,
        "model": model,
        "x": torch.randn(32, 8),
        "y": torch.randint(0, 3, (32,)),
    }
    exec(compile(DROP_IN[index], f"README.md drop-in block {index + 1}", "exec"), scope)
    # what each block promises, checked after it ran
    if "scheduler" in scope:  # warmup from 0: the LR follows the schedule update by update
        optimizer, schedule = scope["optimizer"], scope["scheduler"].lr_lambdas[0].__self__
        assert optimizer.param_groups[0]["lr"] == 0.0
        optimizer.step()
        scope["scheduler"].step()
        assert optimizer.param_groups[0]["lr"] == pytest.approx(schedule(1)) and schedule(1) > 0
    elif "optimizer" in scope:  # an update moves the weights
        optimizer = scope["optimizer"]
        before = [p.detach().clone() for p in scope["model"].parameters()]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(scope["model"](scope["x"]), scope["y"]).backward()
        optimizer.step()
        after = list(scope["model"].parameters())
        assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    if "GradientNoise" in scope:
        assert "largebatch" in scope["optimizer"].state_dict()  # the noise state rides along
    if "noise" in scope:
        assert scope["noise"].t == 1
    if "convert_to_ghost_batchnorm" in scope:
        assert type(scope["model"][1]).__name__ == "GhostBatchNorm1d"


def test_setup_commands_are_true():
    setup = section(README, "## Set-up: two commands")
    install = 'pip install torch==2.13.0 -e ".[dev]" && largebatch demo'
    assert install in setup and "python -m pytest -q" in setup
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "dev" in project["optional-dependencies"]
    assert project["scripts"]["largebatch"] == "largebatch.cli:main"
    pinned = re.search(r"pip install torch==([0-9.]+) ", setup).group(1)
    (minimum,) = [d[len("torch>=") :] for d in project["dependencies"] if d.startswith("torch>=")]
    version = [tuple(int(n) for n in v.split(".")[:2]) for v in (pinned, minimum)]
    assert version[0] >= version[1]  # the pinned torch satisfies the package's requirement
    from largebatch.cli import build_parser

    assert build_parser().parse_args(["demo"]).command == "demo"


# The keys the engine split and the drop-in API added (issues 9, 10, 12).
NEW_KEYS = [
    "train.log_every_steps",
    "train.eval_every_steps",
    "train.compile_mode",
    "train.tensorboard",
    "train.trackers",
    "optim.lars_form",
    "noise.kind",
    "noise.match",
    "noise.scale",
    "optim.sam",
    "optim.sam_rho",
    "optim.sam_normalize",
    "optim.grad_penalty_form",
    "train.label_smoothing",
    "train.loss",  # plugins
    "train.plugins",
    "model.args",
]


def test_new_config_keys_are_in_the_readme_table():
    table = section(README, "## Configuration keys")
    keys = {f"{name}.{key}" for name, values in config_to_dict(Config()).items() for key in values}
    for key in NEW_KEYS:
        assert key in keys and f"| `{key}` |" in table, key


def test_records_signals_and_lock_are_documented():
    assert "steps.jsonl" in README and "evals.jsonl" in README and "tensorboard/" in README
    assert "143 (128 + SIGTERM)" in README and "--resume" in README and "RUN/.lock" in README
