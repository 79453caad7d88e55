"""A small 2-D CNN with BatchNorm for 28x28 images (Fashion-MNIST, MNIST)."""

from __future__ import annotations

from torch import nn

from largebatch.config import ModelConfig
from largebatch.models.registry import ModelInfo, register


def _block(c_in: int, c_out: int, batchnorm: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=not batchnorm)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(c_out))
    layers.append(nn.ReLU(inplace=True))
    return layers


class CNN2D(nn.Module):
    """[conv-BN-ReLU x2, maxpool] at ``c`` and ``2c`` channels, global average pool, linear."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 32,
        batchnorm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            *_block(in_channels, c, batchnorm),
            *_block(c, c, batchnorm),
            nn.MaxPool2d(2),
            *_block(c, 2 * c, batchnorm),
            *_block(2 * c, 2 * c, batchnorm),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(2 * c, num_classes)

    def forward(self, x):
        return self.classifier(self.dropout(self.features(x)))


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) != 3:
        raise ValueError(f"cnn2d takes images (C, H, W); got example shape {input_shape}")
    return CNN2D(input_shape[0], num_classes, cfg.channels, cfg.batchnorm, cfg.dropout)


register(
    ModelInfo(
        name="cnn2d",
        description="small 2-D CNN with BatchNorm for 28x28 images: 4 convs, width model.channels",
        build=_build,
        input_kind="image",
    )
)
