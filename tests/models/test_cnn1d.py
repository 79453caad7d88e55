import pytest
import torch
from torch import nn

from largebatch.config import ModelConfig
from largebatch.models import build_model
from largebatch.models.cnn1d import CNN1D


def test_building_leaves_batchnorm_buffers_at_their_defaults():
    model = build_model(ModelConfig(name="cnn1d", channels=8, batchnorm=True), (40,), 10)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(norms) == 3
    for bn in norms:
        assert torch.equal(bn.running_mean, torch.zeros(8))
        assert torch.equal(bn.running_var, torch.ones(8))
        assert int(bn.num_batches_tracked) == 0
    assert model.training


@pytest.mark.parametrize("length", [15, 16, 17, 40, 41, 100])
def test_classifier_width_matches_the_features(length):
    model = CNN1D(length, 10, channels=4, batchnorm=True).eval()
    with torch.no_grad():
        features = model.features(torch.zeros(2, 1, length))
        assert model.classifier.in_features == features.flatten(1).shape[1]
        assert model(torch.zeros(2, length)).shape == (2, 10)


def test_too_short_a_signal_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 15 samples"):
        CNN1D(14, 10)
