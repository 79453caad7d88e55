"""He et al.'s CIFAR ResNets (2016, Sec. 4.2): ResNet-20 and ResNet-56.

A 3x3 convolution to 16 channels, three stages of ``n`` basic blocks at 16, 32 and 64 channels
(the first block of stages 2 and 3 halves the resolution with stride 2), global average pooling
and a linear classifier: ``6n + 2`` weighted layers (n = 3: ResNet-20, n = 9: ResNet-56).

Shortcuts are the paper's **option A**: identity, and where the shape changes, the input
subsampled with stride 2 and zero-padded to the new channel count; parameter-free. So the
parameter counts are the paper's: 269,722 (ResNet-20) and 853,018 (ResNet-56) at 10 classes,
published only rounded, as "0.27M" and "0.85M" (hence no ``reference_params`` in the registry;
the tests check these counts directly).

``model.channels`` is not used; ``model.batchnorm: false`` replaces BatchNorm by identities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from largebatch.config import ModelConfig
from largebatch.models.registry import ModelInfo, register


class PadShortcut(nn.Module):
    """Option A: subsample by ``stride`` and zero-pad the channels from ``c_in`` to ``c_out``."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.stride, self.pad = stride, c_out - c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        # Pad the channel dimension: (W_left, W_right, H_top, H_bottom, C_front, C_back).
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


class CifarBlock(nn.Module):
    """3x3 conv - BN - ReLU - 3x3 conv - BN, plus the (option A) shortcut, then ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, batchnorm: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=not batchnorm)
        self.bn1 = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=not batchnorm)
        self.bn2 = nn.BatchNorm2d(c_out) if batchnorm else nn.Identity()
        self.relu = nn.ReLU(inplace=True)
        if stride == 1 and c_in == c_out:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = PadShortcut(c_in, c_out, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 inputs (any size works: the pooling is global)."""

    def __init__(
        self,
        n: int,
        num_classes: int = 10,
        in_channels: int = 3,
        batchnorm: bool = True,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, 1, 1, bias=not batchnorm),
            nn.BatchNorm2d(16) if batchnorm else nn.Identity(),
            nn.ReLU(inplace=True),
        )
        blocks = []
        c_in = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(n):
                blocks.append(CifarBlock(c_in, width, 2 if (i > 0 and j == 0) else 1, batchnorm))
                c_in = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.blocks(self.stem(x))).flatten(1)
        return self.fc(self.dropout(h))


def _builder(n: int):
    def build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(f"{cfg.name} takes images (C, H, W); got example shape {input_shape}")
        return CifarResNet(n, num_classes, input_shape[0], cfg.batchnorm, cfg.dropout)

    return build


register(
    ModelInfo(
        name="resnet20",
        description="CIFAR ResNet-20 (He et al. 2016): widths 16/32/64, option-A shortcuts, 0.27M",
        build=_builder(3),
        input_kind="image",
    )
)
register(
    ModelInfo(
        name="resnet56",
        description="CIFAR ResNet-56 (He et al. 2016): widths 16/32/64, option-A shortcuts, 0.85M",
        build=_builder(9),
        input_kind="image",
    )
)
