"""``largebatch bench``: a tiny model at two batch sizes writes its table, record and figure."""

import json
import math

import pytest

from largebatch.cli import main
from largebatch.errors import UserError
from largebatch.experiments.bench import parse_batch_sizes


def test_bench_writes_table_json_and_png(tmp_path, tiny_mnist1d_overrides):
    out = tmp_path / "bench"
    code = main(
        ["bench", "mnist1d_mlp", *tiny_mnist1d_overrides]
        + ["--batch-sizes", "32,16", "--steps", "2", "--repeats", "2", "--warmup", "1"]
        + ["--out", str(out)]
    )
    assert code == 0
    record = json.loads((out / "bench.json").read_text())
    assert [r["batch_size"] for r in record["rows"]] == [16, 32]
    for row in record["rows"]:
        assert math.isfinite(row["images_per_s"]) and row["images_per_s"] > 0
        assert math.isfinite(row["ms_per_update"]) and row["ms_per_update"] > 0
        assert row["peak_memory_mib"] is None  # CPU
    assert record["device"]  # the CPU model, named
    table = (out / "bench.md").read_text()
    assert "| 16 |" in table and "| 32 |" in table and record["device"] in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("text", ["", "32,x", "0,64", "-8"])
def test_bad_batch_sizes_name_the_fix(text):
    with pytest.raises(UserError, match="positive integers"):
        parse_batch_sizes(text)


def test_bench_on_a_batch_larger_than_the_data_is_a_user_error(tmp_path, capsys):
    code = main(
        ["bench", "mnist1d_mlp", "data.num_samples=100", "model.hidden=[8]"]
        + ["--batch-sizes", "4096", "--steps", "1", "--out", str(tmp_path / "b")]
    )
    assert code == 2
    assert "error:" in capsys.readouterr().err
