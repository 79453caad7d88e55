"""A small 1-D CNN for MNIST-1D (after the reference CNN of Greydanus' MNIST-1D benchmark)."""

from __future__ import annotations

from torch import nn

from largebatch.config import ModelConfig
from largebatch.models.registry import ModelInfo, register

KERNEL, STRIDE, PADDING = 5, 2, 1


def conv_output_length(length: int, layers: int) -> int:
    """Length after ``layers`` convolutions of kernel 5, stride 2, padding 1 (PyTorch's formula
    ``floor((L + 2 p - k) / s) + 1``); 0 or less when the signal is too short."""
    for _ in range(layers):
        if length + 2 * PADDING < KERNEL:
            return 0
        length = (length + 2 * PADDING - KERNEL) // STRIDE + 1
    return length


MIN_LENGTH = next(n for n in range(1, 100) if conv_output_length(n, 3) >= 1)


class CNN1D(nn.Module):
    """Three stride-2 convolutions (kernel 5), optional BatchNorm, ReLU, then a linear classifier.

    Input ``(N, L)`` or ``(N, 1, L)``, ``L >= 15``; with ``channels=25`` and no BatchNorm this is
    the MNIST-1D paper's CNN. Building it runs no forward pass: BatchNorm buffers start at their
    defaults (running mean 0, variance 1, no batches tracked).
    """

    def __init__(
        self,
        length: int,
        num_classes: int,
        channels: int = 25,
        batchnorm: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for _ in range(3):
            layers.append(
                nn.Conv1d(c_in, channels, KERNEL, STRIDE, padding=PADDING, bias=not batchnorm)
            )
            if batchnorm:
                layers.append(nn.BatchNorm1d(channels))
            layers.append(nn.ReLU(inplace=True))
            c_in = channels
        self.features = nn.Sequential(*layers)
        # Computed, not probed: a probe forward in training mode would update the BatchNorm
        # running statistics of a model nobody has trained yet.
        out_len = conv_output_length(length, layers=3)
        if out_len < 1:
            raise ValueError(
                f"cnn1d: a signal of {length} samples is too short for three stride-2 "
                f"convolutions; it needs at least {MIN_LENGTH} samples"
            )
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = nn.Linear(channels * out_len, num_classes)

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        h = self.features(x).flatten(1)
        return self.classifier(self.dropout(h))


def _build(cfg: ModelConfig, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if len(input_shape) not in (1, 2) or (len(input_shape) == 2 and input_shape[0] != 1):
        raise ValueError(f"cnn1d takes 1-D signals (L,) or (1, L); got example shape {input_shape}")
    return CNN1D(input_shape[-1], num_classes, cfg.channels, cfg.batchnorm, cfg.dropout)


register(
    ModelInfo(
        name="cnn1d",
        description="1-D CNN for MNIST-1D: 3 stride-2 convs, optional BatchNorm",
        build=_build,
        input_kind="sequence",
    )
)
