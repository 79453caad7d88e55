"""The comparison protocol: the choice uses only screen and promote seeds, the confirm numbers
only fresh seeds; budgets, failures and resumption; and one real quick run end to end."""

import json
from pathlib import Path

import pytest

from largebatch.cli import main
from largebatch.compare import protocol as protocol_module
from largebatch.compare.candidates import Candidate, default_candidates, resolve
from largebatch.compare.protocol import run_protocol
from largebatch.compare.spec import load_compare_spec
from largebatch.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(f"base: {REPO / 'configs' / 'mnist1d_mlp.yaml'}\n" + body)
    return path


SPEC = """
small: {train.global_batch_size: 32}
large: {train.global_batch_size: 256}
screen_seeds: 2
promote_seeds: 2
confirm_seeds: 3
promote: 2
candidates:
  - {name: A, family: regulariser, overrides: {train.label_smoothing: 0.1}}
  - {name: B, family: regulariser, grid: {optim.weight_decay: [0.001, 0.01]}}
  - {name: C, family: regulariser, overrides: {optim.nesterov: true}}
  - {name: slow, family: regulariser, overrides: {optim.grad_clip_norm: 1.0}}
  - {name: broken, family: regulariser, overrides: {optim.grad_clip_norm: 2.0}}
  - {name: O, family: optimisation, overrides: {optim.warmup_epochs: 1}}
"""


def fake_sweep(table):
    """A stand-in for run_sweep that writes each planned run's final metrics from
    ``table(label, seed) -> (train_acc, val_acc, epoch_time) | None`` (None: failed)."""
    trained = []

    def run(spec, out, workers=1):
        for r in spec.runs:
            d = Path(out) / "runs" / r.name
            if (d / "summary.json").exists():
                continue
            trained.append((r.label, r.seed))
            d.mkdir(parents=True)
            result = table(r.label, r.seed)
            status = "failed" if result is None else "completed"
            (d / "summary.json").write_text(json.dumps({"status": status}))
            if result is not None:
                train, val, t = result
                line = {
                    "epoch": 1,
                    "step": 1,
                    "train_acc": train,
                    "val_acc": val,
                    "epoch_time_s": t,
                }
                (d / "metrics.jsonl").write_text(json.dumps(line) + "\n")
        return Path(out), {}

    return run, trained


def table(label, seed):
    """Small 0.95/1.0; large 0.90/1.0 (a generalization gap of 5 points). A is good on the
    selection seeds (0-3) only; B wd=0.01 is steady; C is best on screen seeds, poor on promote;
    'slow' is the best of all but 3x slower; 'broken' fails; O (optimisation) is never run."""
    noise = 0.001 * seed
    if label.startswith("small +"):
        return 1.0, 0.955 + noise, 1.0
    vals = {
        "small (B=32)": 0.95,
        "large (B=256)": 0.90,
        "A": 0.94 if seed < 4 else 0.90,
        "B weight_decay=0.001": 0.91,
        "B weight_decay=0.01": 0.93,
        "C": 0.945 if seed < 2 else 0.905,
        "slow": 0.99,
        "O": 0.99,
    }
    if label == "broken":
        return None
    time = 3.0 if label == "slow" else 1.0
    return 1.0, vals[label] + noise, time


def test_choice_uses_selection_seeds_and_confirm_uses_fresh_ones(tmp_path, monkeypatch):
    run, trained = fake_sweep(table)
    monkeypatch.setattr(protocol_module, "run_sweep", run)
    spec = load_compare_spec(write_spec(tmp_path, SPEC))
    out, record = run_protocol(spec, tmp_path / "out", say=lambda *a: None)
    assert record["diagnosis"]["kind"] == "generalization"
    assert record["families"] == ["regulariser"]
    assert not any(label == "O" for label, _ in trained)  # the other family is not screened
    screen = {r["variant"]: r for r in record["screen"]}
    assert screen["C"]["score"] == pytest.approx(4.5)  # best on the screen seeds 0-1
    assert screen["slow"]["over_budget"] and not screen["slow"]["best_of_candidate"]
    assert screen["B weight_decay=0.01"]["best_of_candidate"]
    assert not screen["B weight_decay=0.001"]["best_of_candidate"]
    promoted = {r["variant"]: r["score"] for r in record["promote"]}
    assert set(promoted) == {"C", "A"}  # the two best within budget; 'broken' failed
    assert promoted["A"] == pytest.approx(4.0) and promoted["C"] == pytest.approx(2.5)
    assert record["chosen"]["variant"] == "A"
    assert record["seeds"] == {"screen": [0, 1], "promote": [2, 3], "confirm": [4, 5, 6]}
    # A does nothing on the fresh seeds: the confirmed gain is 0, not the 4 points it was
    # chosen on.
    confirm = {(label, seed) for label, seed in trained if seed >= 4}
    assert {label for label, _ in confirm} == {"small (B=32)", "large (B=256)", "A", "small + A"}
    text = (out / "protocol.md").read_text()
    assert "| fix − large (points) | 0.00 [0.00, 0.00] |" in text
    assert "| fraction of the gap closed (%) | 0 [0, 0] |" in text
    assert "does not meet the target" in text
    assert "over the time budget" in text


def test_a_second_run_trains_nothing_new(tmp_path, monkeypatch):
    run, trained = fake_sweep(table)
    monkeypatch.setattr(protocol_module, "run_sweep", run)
    spec = load_compare_spec(write_spec(tmp_path, SPEC))
    run_protocol(spec, tmp_path / "out", say=lambda *a: None)
    first = len(trained)
    _, record = run_protocol(spec, tmp_path / "out", say=lambda *a: None)
    assert len(trained) == first and record["chosen"]["variant"] == "A"


def test_fit_gap_screens_the_optimisation_family(tmp_path, monkeypatch):
    def fit_table(label, seed):
        if label == "large (B=256)":
            return 0.85, 0.84 + 0.001 * seed, 1.0
        if label == "small (B=32)" or label.startswith("small +"):
            return 1.0, 0.95 + 0.001 * seed, 1.0
        return 0.99, 0.94 + 0.001 * seed, 1.0

    run, trained = fake_sweep(fit_table)
    monkeypatch.setattr(protocol_module, "run_sweep", run)
    spec = load_compare_spec(write_spec(tmp_path, SPEC))
    _, record = run_protocol(spec, tmp_path / "out", say=lambda *a: None)
    assert record["diagnosis"]["kind"] == "fit"
    assert record["chosen"]["variant"] == "O"
    assert {r["variant"] for r in record["screen"]} == {"O"}


@pytest.mark.parametrize(
    "body, message",
    [
        ("small: {train.global_batch_size: 32}\n", "'large' is missing"),
        (SPEC + "bogus: 1\n", "unknown key 'bogus'"),
        (SPEC + "families: sometimes\n", "families must be one of"),
        (SPEC + "max_time: 0.5\n", "max_time must be"),
        (SPEC.replace("screen_seeds: 2", "screen_seeds: 0"), "'screen_seeds' must be"),
        (
            SPEC + "  - {name: A, family: regulariser}\n",
            "two candidates have the same name",
        ),
        (
            SPEC + "  - {name: Z, family: magic}\n",
            "family must be one of",
        ),
    ],
)
def test_spec_mistakes_are_one_error(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        load_compare_spec(write_spec(tmp_path, body))


def test_a_candidate_with_an_invalid_config_stops_before_any_run(tmp_path, capsys):
    path = write_spec(
        tmp_path,
        SPEC.replace("overrides: {train.label_smoothing: 0.1}", "overrides: {optim.sam_rho: 1}"),
    )
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "optim.sam_rho has no effect" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "runs").exists()


def test_small_not_smaller_than_large_is_refused(tmp_path):
    spec = load_compare_spec(
        write_spec(tmp_path, SPEC.replace("global_batch_size: 256", "global_batch_size: 32"))
    )
    with pytest.raises(UserError, match="must be smaller than the large batch"):
        run_protocol(spec, tmp_path / "out", say=lambda *a: None)


def test_default_candidates_resolve_and_stay_within_two_passes():
    resolved = [resolve(c, 32, 0.01, 30) for c in default_candidates(batchnorm=True)]
    by_name = {c.name: c for c in resolved}
    assert by_name["m-SAM"].overrides["train.micro_batch_size"] == 128
    assert by_name["LR"].grid["optim.lr"] == [0.005, 0.02]
    assert by_name["warmup"].grid["optim.warmup_epochs"] == [3.0, 6.0]
    assert all(v.passes <= 2 for c in resolved for v in c.variants())
    assert "Ghost BN" not in {c.name for c in default_candidates(batchnorm=False)}


def test_variant_labels_name_their_grid_point():
    c = Candidate("SAM", "regulariser", {"optim.sam": "sam"}, {"optim.sam_rho": [0.02, 0.05]})
    assert [v.overrides for v in c.variants()] == [
        {"optim.sam": "sam", "optim.sam_rho": 0.02},
        {"optim.sam": "sam", "optim.sam_rho": 0.05},
    ]


@pytest.mark.slow
def test_real_quick_protocol_end_to_end(tmp_path, tiny_mnist1d_overrides):
    """Real runs (tiny MNIST-1D MLP, no promote stage): every stage trains, the m-SAM fix at
    the small batch becomes SAM (one micro-batch there), protocol.md is written, and a second
    call trains nothing."""
    body = """
overrides: {data.num_samples: 600, model.hidden: [32, 32], train.epochs: 2,
            train.progress: false, optim.lr: 0.05, optim.base_batch_size: 16}
small: {train.global_batch_size: 16}
large: {train.global_batch_size: 128}
screen_seeds: 1
promote_seeds: 0
confirm_seeds: 2
promote: 1
families: regulariser
max_time: 1000
candidates:
  - {name: m-SAM, family: regulariser, overrides: {optim.sam: msam,
     train.micro_batch_size: 16}, passes: 2}
"""
    path = write_spec(tmp_path, body)
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 0
    record = json.loads((tmp_path / "out" / "protocol.json").read_text())
    assert record["chosen"]["variant"] == "m-SAM"
    assert record["chosen"]["at_small"]["optim.sam"] == "sam"
    assert "train.micro_batch_size" not in record["chosen"]["at_small"]
    assert record["confirm"]["fix_at_small"]["n"] == 2 and record["confirm"]["fix"]["n"] == 2
    assert (
        "## Chosen fix, confirmed on fresh seeds" in (tmp_path / "out" / "protocol.md").read_text()
    )


def test_a_signal_during_a_stage_stops_the_protocol_with_its_exit_code(tmp_path, monkeypatch):
    """A stage's sweep stopped by SIGTERM (its runs checkpointed) must not go on to choose from
    partial results: the command exits 143 and says how to continue."""

    def stopped(spec, out, workers=1):
        return Path(out), {"signal": 15, "runs": []}

    monkeypatch.setattr(protocol_module, "run_sweep", stopped)
    path = write_spec(tmp_path, SPEC)
    assert main(["compare", str(path), "--out", str(tmp_path / "out")]) == 143
    assert not (tmp_path / "out" / "protocol.json").exists()
