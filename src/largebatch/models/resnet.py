"""ResNet-18 and ResNet-50 (He et al., 2016, "Deep Residual Learning for Image Recognition").

The ImageNet architecture: a 7x7 stride-2 convolution and a 3x3 stride-2 max-pool (the stem),
four stages of residual blocks at 64/128/256/512 base channels, global average pooling and a
linear classifier.

- ResNet-18: basic blocks (two 3x3 convolutions), [2, 2, 2, 2] per stage; 11,689,512 parameters
  at 1000 classes.
- ResNet-50: bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4), [3, 4, 6, 3] per stage;
  25,557,032 parameters at 1000 classes. The stride of a down-sampling bottleneck sits on its
  3x3 convolution ("ResNet v1.5", as in torchvision); the original put it on the first 1x1.
  Both have the same parameters; v1.5 is slightly more accurate and slightly slower.

Projection shortcuts (1x1 convolution + BatchNorm) where the shape changes, identity elsewhere.
Convolutions have no bias when followed by BatchNorm. Weights: Kaiming-normal (fan-out) for
convolutions, BatchNorm gamma 1 and beta 0, PyTorch's default for the classifier. With
``zero_init_residual`` the last BatchNorm gamma of each block starts at 0, so every block starts
as the identity (Goyal et al., 2017).

``model.channels`` is not used: the widths are the published ones. With ``model.batchnorm:
false`` every BatchNorm becomes an identity and convolutions get biases (for experiments that need
a model without BatchNorm, not for accuracy).
"""

from __future__ import annotations

import torch
from torch import nn

from largebatch.config import ModelConfig
from largebatch.models.registry import ModelInfo, register


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _conv(c_in: int, c_out: int, k: int, stride: int = 1, batchnorm: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=not batchnorm)


class BasicBlock(nn.Module):
    """3x3 conv - BN - ReLU - 3x3 conv - BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, c_in: int, width: int, stride: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv(c_in, width, 3, stride, batchnorm)
        self.bn1 = _norm(width, batchnorm)
        self.conv2 = _conv(width, c_out, 3, 1, batchnorm)
        self.bn2 = _norm(c_out, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride, batchnorm)

    def last_norm(self) -> nn.Module:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce - 3x3 (carries the stride) - 1x1 expand x4, each with BN, plus the shortcut."""

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = _conv(c_in, width, 1, 1, batchnorm)
        self.bn1 = _norm(width, batchnorm)
        self.conv2 = _conv(width, width, 3, stride, batchnorm)
        self.bn2 = _norm(width, batchnorm)
        self.conv3 = _conv(width, c_out, 1, 1, batchnorm)
        self.bn3 = _norm(c_out, batchnorm)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = _shortcut(c_in, c_out, stride, batchnorm)

    def last_norm(self) -> nn.Module:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.shortcut(x))


def _shortcut(c_in: int, c_out: int, stride: int, batchnorm: bool) -> nn.Module:
    if stride == 1 and c_in == c_out:
        return nn.Identity()
    return nn.Sequential(_conv(c_in, c_out, 1, stride, batchnorm), _norm(c_out, batchnorm))


class ResNet(nn.Module):
    """ImageNet-style ResNet: stem, four stages, global average pool, (dropout), linear."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        in_channels: int = 3,
        batchnorm: bool = True,
        dropout: float = 0.0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=not batchnorm),
            _norm(64, batchnorm),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        stages = []
        c_in = 64
        for i, (width, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(c_in, width, stride, batchnorm))
                c_in = width * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(c_in, num_classes)
        _init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.stages(self.stem(x))).flatten(1)
        return self.fc(self.dropout(h))


def _init_weights(model: nn.Module, zero_init_residual: bool) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock | Bottleneck) and isinstance(m.last_norm(), nn.BatchNorm2d):
                nn.init.zeros_(m.last_norm().weight)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)


def _builder(make):
    def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"{cfg.name} takes images (C, H, W); got example shape {input_shape}")
        return make(
            num_classes,
            in_channels=input_shape[0],
            batchnorm=cfg.batchnorm,
            dropout=cfg.dropout,
        )

    return build


register(
    ModelInfo(
        name="resnet18",
        description="ResNet-18 (He et al. 2016), ImageNet stem, basic blocks; 11.7M params at 1000",
        build=_builder(resnet18),
        input_kind="image",
        reference_params=11_689_512,
        reference_classes=1000,
    )
)
register(
    ModelInfo(
        name="resnet50",
        description="ResNet-50 (He et al. 2016), ImageNet stem, bottlenecks; the paper's model",
        build=_builder(resnet50),
        input_kind="image",
        reference_params=25_557_032,
        reference_classes=1000,
    )
)
