import pytest

from largebatch.cli import main
from largebatch.config import ConfigError, load_config, parse_override, resolved
from largebatch.data import build_dataset, check_dataset_name
from largebatch.models import build_model, check_model_name


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


def test_names_are_checked_by_their_registries():
    # config.validate does not know the names (no import of the registries: no cycle).
    cfg = load_config(None, ["model.name=resnet9000", "data.name=imagenet"])
    with pytest.raises(ConfigError) as err:
        check_model_name(cfg.model.name)
    assert str(err.value).startswith("model.name: 'resnet9000' is not one of: cnn1d, cnn2d, mlp")
    with pytest.raises(ConfigError) as err:
        check_dataset_name(cfg.data.name)
    assert str(err.value).startswith("data.name: 'imagenet' is not one of: caltech101, cifar10")
    with pytest.raises(ConfigError, match="model.name: 'resnet9000'"):
        build_model(cfg.model, (40,), 10)
    with pytest.raises(ConfigError, match="data.name: 'imagenet'"):
        build_dataset(cfg.data)
    assert check_model_name("mlp").name == "mlp"
    assert check_dataset_name("mnist1d").input_kind == "sequence"


def test_parse_override_values():
    assert parse_override("optim.nesterov=true") == ("optim", "nesterov", True)
    assert parse_override("train.micro_batch_size=null") == ("train", "micro_batch_size", None)


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "configs/mnist1d_mlp.yaml", "train.global_batch_size=0"],
        ["train", "configs/mnist1d_mlp.yaml", "optim.lr=-1"],
        ["train", "configs/mnist1d_mlp.yaml", "train.bogus=1"],
        ["train", "does/not/exist.yaml"],
    ],
)
def test_cli_config_errors_exit_2(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_cli_unknown_model_name_exits_2(tmp_path, capsys):
    argv = ["train", "configs/mnist1d_mlp.yaml", "model.name=nope", "data.num_samples=200"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error: model.name: 'nope' is not one of: cnn1d" in err and "Traceback" not in err


def test_cli_unknown_model_name_makes_no_run_dir(tmp_path):
    argv = ["train", "configs/mnist1d_mlp.yaml", "model.name=nope", "data.num_samples=200"]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


def test_cli_bad_yaml_exits_2(tmp_path, capsys):
    bad = write(tmp_path, "train: [unclosed\n")
    assert main(["train", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize(
    "override, key",
    [
        ("noise.alpha=nan", "noise.alpha"),
        ("optim.lr=inf", "optim.lr"),
        ("optim.lr=nan", "optim.lr"),
        ("optim.weight_decay=-inf", "optim.weight_decay"),
        ("optim.grad_clip_norm=.inf", "optim.grad_clip_norm"),
        ("optim.milestones=[5, .nan]", "optim.milestones[1]"),
        ("noise.gamma=1e999", "noise.gamma"),
    ],
)
def test_non_finite_numbers_are_config_errors(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"{key}: must be a finite number")


def test_non_finite_numbers_in_yaml_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"^noise\.alpha: must be a finite number, got nan"):
        load_config(write(tmp_path, "noise:\n  alpha: .nan\n"))
    with pytest.raises(ConfigError, match=r"^optim\.lr: must be a finite number, got inf"):
        load_config(write(tmp_path, "optim:\n  lr: .inf\n"))


@pytest.mark.parametrize("device", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_forms_accepted(device):
    assert load_config(None, [f"train.device={device}"]).train.device == device


@pytest.mark.parametrize("device", ["cuda:abc", "cuda:", "cuda:-1", "cuda0", "gpu", "cpu:0", ""])
def test_device_forms_rejected(device):
    with pytest.raises(ConfigError, match=r"^train\.device: '.*' is not one of: auto, cpu, cuda"):
        load_config(None, [f"train.device='{device}'"])


def test_warmup_longer_than_the_run_is_an_error():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.epochs=3", "optim.warmup_epochs=5"])
    assert "optim.warmup_epochs (5.0)" in str(err.value) and "3 epochs" in str(err.value)
    with pytest.raises(ConfigError, match="optim.warmup_epochs"):
        load_config(None, ["train.epochs=3", "optim.warmup_epochs=3"])
    assert load_config(None, ["train.epochs=3", "optim.warmup_epochs=2.5"]).optim.warmup_epochs


def test_warmup_is_checked_against_the_scaled_run():
    # scale_epochs stretches the run (not the warmup, see optim.schedules.build_schedule):
    # 2 epochs at 4x the base batch are 8 epochs, so a 5-epoch warmup fits.
    base = ["train.epochs=2", "optim.warmup_epochs=5", "train.global_batch_size=512"]
    base += ["optim.base_batch_size=128"]
    cfg = load_config(None, [*base, "train.scale_epochs=true"])
    assert cfg.optim.warmup_epochs == 5.0
    with pytest.raises(ConfigError, match=r"2 epochs"):
        load_config(None, [*base, "train.scale_epochs=false"])
    # Shrunk below the base batch: 8 epochs at B=32 against 128 are round(8 / 4) = 2 epochs.
    small = ["train.epochs=8", "optim.warmup_epochs=3", "train.global_batch_size=32"]
    small += ["optim.base_batch_size=128", "train.scale_epochs=true"]
    with pytest.raises(ConfigError, match=r"2 epochs \(train\.epochs=8 x 0\.25"):
        load_config(None, small)
