"""What a dataset builder reports that changes the run is said on the console at the start:
files skipped with data.skip_corrupt, and a Caltech101 tree with fewer than its 101 classes."""

from __future__ import annotations

import json

from largebatch.config import load_config
from largebatch.engine import train
from largebatch.engine.records import data_notes
from tests.data.imagegen import make_caltech_tree


def test_skipped_files_and_missing_classes_are_printed(tmp_path, capsys):
    tree = make_caltech_tree(tmp_path / "data", corrupt=True, classes=("a", "b"), per_class=6)
    overrides = [
        "data.name=caltech101",
        f"data.root={tree.parent}",
        f"data.cache_dir={tmp_path / 'cache'}",
        "data.skip_corrupt=true",
        "data.image_size=16",
        "model.name=mlp",
        "model.hidden=[8]",
        "train.epochs=1",
        "train.global_batch_size=4",
        "train.progress=false",
        "optim.base_batch_size=4",
    ]
    assert train(load_config(None, overrides), tmp_path / "run").status == "completed"
    err = capsys.readouterr().err
    lines = err.splitlines()
    skipped = [ln for ln in lines if "skip" in ln and "a/image_0099.jpg" in ln]
    assert len(skipped) == 1, err
    classes = [ln for ln in lines if "2 classes" in ln and "101" in ln]
    assert len(classes) == 1, err
    notes = json.loads((tmp_path / "run" / "data.json").read_text())["notes"]
    assert skipped[0].strip() in notes and classes[0].strip() in notes


def test_notes_are_quiet_for_a_complete_dataset():
    assert data_notes("caltech101", {"num_classes": 101, "official_classes": True}) == []
    assert data_notes("fashion_mnist", {"num_train": 60000}) == []


def test_many_skipped_files_are_summarised_in_one_line():
    info = {"skipped_corrupt": 12, "skipped_files": [f"c/{i}.jpg" for i in range(12)]}
    (note,) = data_notes("image_folder", info)
    assert "12" in note and "c/0.jpg" in note and "c/11.jpg" not in note and "data.json" in note
