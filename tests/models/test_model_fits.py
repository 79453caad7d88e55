import pytest

from largebatch.config import ConfigError, ModelConfig
from largebatch.data import DATASETS
from largebatch.models import MODELS, build_model, check_model_fits
from largebatch.models.registry import models_for


@pytest.mark.parametrize(
    "model, shape, dataset, fit",
    [
        ("cnn2d", (40,), "mnist1d", "cnn1d, mlp"),
        ("resnet20", (40,), "mnist1d", "cnn1d, mlp"),
        ("resnet50", "sequence", "mnist1d", "cnn1d, mlp"),
        ("cnn1d", (1, 28, 28), "fashion_mnist", "cnn2d, mlp, resnet18, resnet20, resnet50"),
        ("cnn1d", "image", "cifar10", "cnn2d, mlp, resnet18"),
    ],
)
def test_a_model_that_does_not_fit_names_those_that_do(model, shape, dataset, fit):
    with pytest.raises(ConfigError) as err:
        check_model_fits(model, shape, dataset)
    message = str(err.value)
    assert message.startswith(f"model.name={model} takes ")
    assert f"data.name={dataset} gives" in message
    assert f"models that fit: {fit}" in message


@pytest.mark.parametrize(
    "model, shape",
    [("mlp", (40,)), ("mlp", (3, 32, 32)), ("cnn1d", (40,)), ("cnn1d", (1, 40))]
    + [("cnn2d", (1, 28, 28)), ("resnet20", (3, 32, 32)), ("resnet18", "image")],
)
def test_models_that_fit_pass(model, shape):
    check_model_fits(model, shape)


def test_build_model_refuses_data_it_does_not_fit():
    with pytest.raises(ConfigError, match="models that fit: cnn1d, mlp"):
        build_model(ModelConfig(name="cnn2d"), (40,), 10)


def test_every_dataset_has_a_kind_some_model_fits():
    for name, info in DATASETS.items():
        assert info.input_kind in ("sequence", "image"), name
        assert "mlp" in models_for(info.input_kind)
    assert models_for("sequence") == ["cnn1d", "mlp"]
    assert set(models_for("image")) == set(MODELS) - {"cnn1d"}
