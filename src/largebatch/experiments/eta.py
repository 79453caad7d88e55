"""The time a sweep has left, from what its finished runs cost.

Each run left is weighted by its own setting's measured cost: seconds per epoch of that setting's
finished runs, times the epochs the run still has to train. A setting with no finished run yet
is estimated from the seconds per training example of every finished run times its examples
(epochs x training-set size); such an estimate is *rough* (a batch size's speed differs from
another's) until one run of that setting has finished. The runs left are then laid on the
sweep's workers, the running ones first (less the time they have already run), each next run on
the worker that frees first: the estimate is when the last one ends.

    >>> eta = Eta(workers=1)
    >>> eta.add(Job("B=32", epochs=10), seconds=50.0)
    >>> est = eta.estimate([(Job("B=32", epochs=10), 20.0), (Job("B=32", epochs=5), 0.0)])
    >>> est.seconds, est.rough
    (55.0, False)
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Job:
    """One run: its setting, the epochs it trains and its training examples per epoch."""

    setting: str
    epochs: float
    examples: float | None = None
    """Training examples per epoch; None when unknown (then every run counts as equal)."""


@dataclass(frozen=True)
class Estimate:
    seconds: float | None
    """Wall seconds until the last run ends; None before any run has been timed."""
    rough: bool
    """Some run left is of a setting not timed yet (estimated from other settings' cost)."""
    untimed: tuple[str, ...] = ()
    """The settings estimated from others."""

    def format(self) -> str:
        """``ETA 3m05s``, ``ETA ~3m05s (rough: 2 settings not timed yet)``, ``ETA unknown``."""
        if self.seconds is None:
            return "ETA unknown (no run finished yet)"
        text = format_seconds(self.seconds)
        if not self.rough:
            return f"ETA {text}"
        n = len(self.untimed)
        return f"ETA ~{text} (rough: {n} setting{'s' if n != 1 else ''} not timed yet)"


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@dataclass
class Eta:
    """Measured costs of finished runs, and the estimate for the runs left."""

    workers: int = 1
    _setting: dict[str, list[float]] = field(default_factory=dict)
    """setting -> [seconds, epochs] summed over its finished runs."""
    _seconds: float = 0.0
    _epochs: float = 0.0
    _example_seconds: float = 0.0
    _examples: float = 0.0

    def add(self, job: Job, seconds: float) -> None:
        """A finished run of ``job``: it took ``seconds`` to train ``job.epochs`` epochs."""
        if job.epochs <= 0 or seconds <= 0:
            return
        total = self._setting.setdefault(job.setting, [0.0, 0.0])
        total[0] += seconds
        total[1] += job.epochs
        self._seconds += seconds
        self._epochs += job.epochs
        if job.examples:
            self._example_seconds += seconds
            self._examples += job.epochs * job.examples

    def cost(self, job: Job) -> tuple[float, bool] | None:
        """Seconds ``job`` takes, and whether the number is rough; None before any timing."""
        if job.setting in self._setting:
            seconds, epochs = self._setting[job.setting]
            return job.epochs * seconds / epochs, False
        if job.examples and self._examples:
            return job.epochs * job.examples * self._example_seconds / self._examples, True
        if self._epochs:
            return job.epochs * self._seconds / self._epochs, True
        return None

    def estimate(self, left: list[tuple[Job, float]]) -> Estimate:
        """When the runs ``left`` end: ``(job, seconds it has run so far)`` each, the running
        ones (seconds > 0) first in the list or not; the others start in the order given."""
        if not left:
            return Estimate(0.0, False)
        costs = [(self.cost(job), job, spent) for job, spent in left]
        if any(c is None for c, _, _ in costs):
            return Estimate(None, True)
        running = [max(0.0, c[0] - spent) for c, _, spent in costs if c and spent > 0]
        queued = [c[0] for c, _, spent in costs if c and spent <= 0]
        slots = sorted(running)[: max(self.workers, len(running))]
        slots += [0.0] * max(0, self.workers - len(slots))
        heapq.heapify(slots)
        for seconds in queued:
            heapq.heappush(slots, heapq.heappop(slots) + seconds)
        untimed = tuple(dict.fromkeys(job.setting for c, job, _ in costs if c and c[1]))
        return Estimate(max(slots), bool(untimed), untimed)
