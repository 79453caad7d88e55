"""The loss registry: per-example losses by name (``train.loss``), built in or from plugins.

A loss is a function ``loss(logits, targets) -> losses``: ``logits`` of shape ``(N, C)`` (float32
or wider), ``targets`` as the dataset gives them (class indices of shape ``(N,)``), and one
loss per example, shape ``(N,)``, in nats (``reduction="none"``). The engine needs the
per-example values: it weights them (the multiplicative noise's loss weights ``w_i``) and scales
their sum by ``W / B`` so the gradient is that of the mean over the global batch
(:mod:`largebatch.engine.update`).

Built in: ``cross_entropy``, ``l_i = -log softmax(z_i)[y_i]``; with ``train.label_smoothing``
``eps`` the *training* loss is the cross-entropy against ``(1 - eps) onehot(y_i) + eps / C``.

Which loss is used where:

- training: ``train.loss`` (cross-entropy smoothed by ``train.label_smoothing``, the only loss
  it applies to);
- evaluation (``metrics.jsonl``'s ``train_loss`` and ``val_loss``, ``evals.jsonl``: the mean
  ``(1/N) sum_i l_i`` over a split) and ``largebatch analyze`` (the mean over each batch): the
  same loss *without* label smoothing, so losses of runs with and without it compare; a plugin
  loss registered with ``evaluate=False`` (a training-only objective) is evaluated and analysed
  as plain cross-entropy instead.

Example:

>>> import torch
>>> from largebatch.config import TrainConfig
>>> logits, y = torch.tensor([[2.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0])
>>> training_loss(TrainConfig())(logits, y)  # nats, one per example
tensor([0.1269, 2.1269])
>>> training_loss(TrainConfig(label_smoothing=0.2))(logits, y)
tensor([0.3269, 1.9269])
>>> evaluation_loss(TrainConfig(label_smoothing=0.2)) is cross_entropy
True
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from largebatch.config import ConfigError, TrainConfig
from largebatch.errors import UserError

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits, targets) -> losses``: one value per example, shape ``(N,)``."""


@dataclass(frozen=True)
class LossInfo:
    name: str
    description: str
    """One line: what it computes."""
    fn: LossFn
    """The per-example loss (``reduction="none"``)."""
    evaluate: bool = True
    """Whether evaluation and analysis report this loss (True), or plain cross-entropy (False:
    a training-only objective whose values would not compare across runs)."""


LOSSES: dict[str, LossInfo] = {}


def register(info: LossInfo) -> LossInfo:
    if info.name in LOSSES:
        raise ValueError(f"loss '{info.name}' is registered twice")
    LOSSES[info.name] = info
    return info


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy in nats: ``-log softmax(logits)[targets]``, shape ``(N,)``."""
    return F.cross_entropy(logits, targets, reduction="none")


register(
    LossInfo("cross_entropy", "cross-entropy; train.label_smoothing smooths it", cross_entropy)
)


def check_loss_name(name: str) -> LossInfo:
    """The registry entry of ``name``; :class:`ConfigError` naming the valid names if none."""
    if name not in LOSSES:
        raise ConfigError(
            f"train.loss: '{name}' is not one of: {', '.join(sorted(LOSSES))} (a plugin's name? "
            "install the plugin, or name its module in train.plugins)"
        )
    return LOSSES[name]


def training_loss(train: TrainConfig) -> LossFn:
    """The per-example loss a run trains on: ``train.loss`` (label-smoothed cross-entropy
    under ``train.label_smoothing``)."""
    info = check_loss_name(train.loss)
    if info.fn is cross_entropy:
        return functools.partial(
            F.cross_entropy, reduction="none", label_smoothing=train.label_smoothing
        )
    return _checked(info)


def _evaluated(train: TrainConfig) -> LossInfo:
    """The registry entry a run is evaluated and analysed with: ``train.loss``, or cross-entropy
    for a loss registered with ``evaluate=False``."""
    info = check_loss_name(train.loss)
    return info if info.evaluate else check_loss_name("cross_entropy")


def evaluation_loss(train: TrainConfig) -> LossFn:
    """The per-example loss a run is evaluated and analysed with: ``train.loss`` without label
    smoothing, or :func:`cross_entropy` for a loss registered with ``evaluate=False``."""
    info = _evaluated(train)
    return cross_entropy if info.fn is cross_entropy else _checked(info)


def evaluation_loss_name(train: TrainConfig) -> str:
    """The registry name of :func:`evaluation_loss` (what analyses and their figures report)."""
    return _evaluated(train).name


def mean_loss(loss: LossFn) -> LossFn:
    """The batch mean of a per-example loss, ``(1/N) sum_i l_i`` (what the analysis functions
    take as ``loss_fn``); :func:`cross_entropy` gives ``F.cross_entropy`` itself."""
    if loss is cross_entropy:
        return F.cross_entropy
    return lambda logits, targets: loss(logits, targets).mean()


def _checked(info: LossInfo) -> LossFn:
    """``info.fn``, refusing a result that is not one value per example."""

    def per_example(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        losses = info.fn(logits, targets)
        if not isinstance(losses, torch.Tensor) or losses.shape != logits.shape[:1]:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
            raise UserError(
                f"train.loss={info.name} returned {shape} for a batch of {logits.shape[0]}: a "
                "loss returns one value per example, shape (N,) (reduction='none')"
            )
        return losses

    return per_example
