"""How much gradient noise to add: the target covariance ``c * Sigma`` of the noise kinds.

``Sigma`` is the covariance of one example's gradient (units: gradient^2 per example). A mini-batch
gradient at batch ``B`` carries noise of covariance ``Sigma / B``. A large-batch run (batch
``B_L``, learning rate ``lr_L``) that imitates a small-batch reference (``B_S``, ``lr_S``) adds
noise of covariance ``c * Sigma`` to each averaged gradient; ``c`` has units 1/examples.

``match = "step"`` makes each large-batch *step* as noisy as a small-batch step::

    Sigma / B_L + c Sigma = Sigma / B_S        =>   c = 1/B_S - 1/B_L

``match = "epoch"`` makes each *epoch* as noisy, at the runs' learning rates. A step moves the
weights by ``lr * g``, so a step's noise in weight space has covariance ``lr^2 * Sigma / B``, and an
epoch of ``N`` examples has ``N / B`` steps whose independent noises add up::

    per-epoch noise  =  (N / B) * lr^2 * Sigma / B
    (N / B_L) lr_L^2 (Sigma / B_L + c Sigma)  =  (N / B_S) lr_S^2 Sigma / B_S
    =>   c = (1 / B_L) * ((lr_S B_L / (lr_L B_S))^2 - 1)

Closed forms (``r = B_L / B_S``): linear scaling (``lr_L = r lr_S``) gives ``c = 0`` -- the large
batch already carries the small batch's noise per epoch, and per-step matching there would inject
about ``r`` times too much; square-root scaling (``lr_L = sqrt(r) lr_S``) gives
``c = 1/B_S - 1/B_L``, the per-step value; no scaling (``lr_L = lr_S``) gives
``c = B_L / B_S^2 - 1/B_L``. ``scale`` multiplies either (for sweeps).

A negative ``c`` (``B_L < B_S`` for ``step``; ``lr_L`` scaled faster than linearly for ``epoch``)
asks to *remove* noise, which added noise cannot do: it is clamped to 0, and
:attr:`NoiseCalibration.clamped` and :meth:`NoiseCalibration.summary` say so.

Learning rates under a schedule: ``lr_S / lr_L`` is the ratio of the *peak* rates, i.e. the base
learning rate (the one given with the base batch size) over the scaled one -- the scaling rule's
ratio. Both runs follow the same schedule shape (warmup, decay), which multiplies ``lr_S`` and
``lr_L`` by the same factor at every fraction of training, so the per-epoch balance above holds at
every point and ``c`` is one constant per run. (Warmup that only the large run has is not part of
the shape; using the instantaneous warmup LR would inflate ``c`` exactly when warmup is protecting
early training, so the peak ratio is also the conservative choice.)

Example::

    >>> from largebatch.gradient.calibration import NoiseCalibration, covariance_multiplier
    >>> covariance_multiplier("step", base_batch_size=32, batch_size=512)
    0.029296875
    >>> covariance_multiplier("epoch", base_batch_size=32, batch_size=512, base_lr=0.1, lr=1.6)
    0.0
    >>> print(NoiseCalibration("epoch", 32, 512, base_lr=0.1, lr=1.6).summary())
    noise (match: epoch): c = 0 (the learning rates already match the reference's per-epoch noise); nothing is added
"""  # noqa: E501

from __future__ import annotations

from dataclasses import dataclass

MATCHES = ("epoch", "step")


def step_multiplier(base_batch_size: int, batch_size: int) -> float:
    """``1/B_S - 1/B_L``, unclamped (negative when ``B_L < B_S``)."""
    _check_batches(base_batch_size, batch_size)
    return 1.0 / base_batch_size - 1.0 / batch_size


def epoch_multiplier(base_batch_size: int, batch_size: int, base_lr: float, lr: float) -> float:
    """``(1/B_L) * ((lr_S B_L / (lr_L B_S))^2 - 1)``, unclamped.

    Args:
        base_batch_size: ``B_S``, the reference batch size.
        batch_size: ``B_L``, the run's global batch size.
        base_lr: ``lr_S``, the reference's (peak) learning rate, given with ``B_S``.
        lr: ``lr_L``, the run's scaled (peak) learning rate.
    """
    _check_batches(base_batch_size, batch_size)
    if not (base_lr > 0 and lr > 0):
        raise ValueError(f"learning rates must be > 0, got base_lr={base_lr}, lr={lr}")
    ratio = (base_lr * batch_size) / (lr * base_batch_size)
    excess = ratio * ratio - 1.0
    # Linear scaling computed in floating point lands within rounding of 1; it means exactly 0.
    return 0.0 if abs(excess) < 1e-9 else excess / batch_size


def covariance_multiplier(
    match: str,
    base_batch_size: int,
    batch_size: int,
    base_lr: float | None = None,
    lr: float | None = None,
    scale: float = 1.0,
) -> float:
    """``c`` for ``match`` (``epoch`` needs ``base_lr``, ``lr``), times ``scale``, clamped at 0."""
    return NoiseCalibration(match, base_batch_size, batch_size, base_lr, lr, scale).multiplier


@dataclass(frozen=True)
class NoiseCalibration:
    """The target ``c`` of one run, with the numbers it came from.

    Attributes:
        match: ``epoch`` or ``step``.
        base_batch_size: ``B_S`` (``optim.base_batch_size``).
        batch_size: ``B_L``, the global batch size.
        base_lr: ``lr_S`` (``optim.lr``); needed for ``epoch``.
        lr: ``lr_L``, the scaled peak learning rate; needed for ``epoch``.
        scale: multiplies ``c`` (>= 0).
    """

    match: str
    base_batch_size: int
    batch_size: int
    base_lr: float | None = None
    lr: float | None = None
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.match not in MATCHES:
            raise ValueError(f"noise.match must be one of {MATCHES}, got '{self.match}'")
        if self.scale < 0:
            raise ValueError(f"noise.scale must be >= 0, got {self.scale}")
        if self.match == "epoch" and (self.base_lr is None or self.lr is None):
            raise ValueError("noise.match 'epoch' needs both the base lr and the scaled lr")
        _check_batches(self.base_batch_size, self.batch_size)

    @property
    def raw(self) -> float:
        """``scale * c`` before clamping."""
        if self.match == "step":
            c = step_multiplier(self.base_batch_size, self.batch_size)
        else:
            assert self.base_lr is not None and self.lr is not None
            c = epoch_multiplier(self.base_batch_size, self.batch_size, self.base_lr, self.lr)
        return self.scale * c

    @property
    def clamped(self) -> bool:
        """The target was negative (the run is noisier than the reference) and was set to 0."""
        return self.raw < 0

    @property
    def multiplier(self) -> float:
        """``c >= 0``: the noise kinds add noise of covariance ``c * Sigma``."""
        return max(self.raw, 0.0)

    def summary(self) -> str:
        """One line for the run's log: the value of ``c``, and why it is 0 when it is."""
        head = f"noise (match: {self.match}): "
        if self.clamped:
            return (
                head + f"target c = {self.raw:.3g} < 0 (the run is already noisier than the "
                "reference); clamped to 0, nothing is added"
            )
        if self.raw == 0:
            why = (
                "the scale is 0"
                if self.scale == 0
                else "the learning rates already match the reference's per-epoch noise"
                if self.match == "epoch"
                else "the run's batch is the reference's"
            )
            return head + f"c = 0 ({why}); nothing is added"
        return head + f"c = {self.multiplier:.4g} per example (covariance c * Sigma added)"


def _check_batches(base_batch_size: int, batch_size: int) -> None:
    if base_batch_size < 1 or batch_size < 1:
        raise ValueError(
            f"batch sizes must be >= 1, got base_batch_size={base_batch_size}, "
            f"batch_size={batch_size}"
        )
