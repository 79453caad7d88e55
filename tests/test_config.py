import pytest

from largebatch.cli import main
from largebatch.config import ConfigError, load_config, parse_override, resolved


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_defaults_and_overrides_are_typed(tmp_path):
    cfg = load_config(
        write(tmp_path, "train:\n  global_batch_size: 64\noptim:\n  lr: 1\n"),
        ["train.global_batch_size=1024", "optim.lr=0.05", "model.hidden=[8,8]", "noise.alpha=1e-5"],
    )
    assert cfg.train.global_batch_size == 1024
    assert cfg.optim.lr == 0.05 and isinstance(cfg.optim.lr, float)
    assert cfg.model.hidden == [8, 8]
    assert cfg.noise.alpha == 1e-5


def test_yaml_scientific_notation_is_a_number(tmp_path):
    cfg = load_config(write(tmp_path, "noise:\n  alpha: 1e-5\n"))
    assert cfg.noise.alpha == 1e-5


def test_paper_schedule_default_factor_is_literal_ten_percent():
    assert resolved(load_config(None, ["optim.schedule=paper"])).optim.decay_factor == 0.9
    ms = ["optim.schedule=multistep", "optim.milestones=[5]"]
    assert resolved(load_config(None, ms)).optim.decay_factor == 0.1


@pytest.mark.parametrize(
    "override, needle",
    [
        ("train.global_batch_sz=4", "unknown key 'train.global_batch_sz'"),
        ("trian.epochs=3", "unknown section 'trian'"),
        ("train.global_batch_size=0", "train.global_batch_size: must be > 0"),
        ("train.global_batch_size=abc", "train.global_batch_size: expected an integer"),
        ("train.global_batch_size=3.5", "expected an integer"),
        ("optim.lr=-0.1", "optim.lr: must be > 0"),
        ("optim.scaling=cubic", "optim.scaling: 'cubic' is not one of: none, linear, sqrt"),
        ("model.name=resnet9000", "model.name: 'resnet9000' is not one of"),
        ("data.name=imagenet", "data.name: 'imagenet' is not one of"),
        ("optim.momentum=1.5", "optim.momentum"),
        ("train.amp=fp8", "train.amp"),
        ("noise.alpha=-1", "noise.alpha"),
        ("optim.schedule=multistep", "optim.milestones"),
        ("train.micro_batch_size=256", "micro_batch_size"),
        ("epochs=3", "section.key"),
    ],
)
def test_bad_values_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=None) as err:
        load_config(None, [override])
    assert needle in str(err.value)


def test_valid_choices_are_listed():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["model.name=nope"])
    assert "mlp" in str(err.value) and "cnn1d" in str(err.value)


def test_parse_override_values():
    assert parse_override("optim.nesterov=true") == ("optim", "nesterov", True)
    assert parse_override("train.micro_batch_size=null") == ("train", "micro_batch_size", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "configs/mnist1d_mlp.yaml", "train.global_batch_size=0"],
        ["train", "configs/mnist1d_mlp.yaml", "optim.lr=-1"],
        ["train", "configs/mnist1d_mlp.yaml", "model.name=nope"],
        ["train", "configs/mnist1d_mlp.yaml", "train.bogus=1"],
        ["train", "does/not/exist.yaml"],
    ],
)
def test_cli_config_errors_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_bad_yaml_exits_2(tmp_path, capsys):
    bad = write(tmp_path, "train: [unclosed\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
