"""Models: a registry of builders (see :mod:`largebatch.models.registry`)."""

from largebatch.models import cnn1d, cnn2d, mlp  # noqa: F401  (registers the models)
from largebatch.models.ghost_batchnorm import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    convert_to_ghost_batchnorm,
)
from largebatch.models.registry import (
    MODELS,
    ModelInfo,
    build_model,
    check_model_fits,
    check_model_name,
)

from . import cifar_resnet, resnet  # noqa: F401  (registers the ResNets)

__all__ = [
    "MODELS",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "ModelInfo",
    "build_model",
    "check_model_fits",
    "check_model_name",
    "convert_to_ghost_batchnorm",
]
