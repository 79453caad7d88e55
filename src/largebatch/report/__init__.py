"""The report layer: read run directories back, summarise them over seeds, draw the figures.

- :mod:`~largebatch.report.data`: find, validate and group runs; per-setting statistics.
- :mod:`~largebatch.report.gap`: the paired gap estimates (gap closed, bootstrap intervals).
- :mod:`~largebatch.report.figures`: the PNG figures.
- :mod:`~largebatch.report.analyses`: what ``largebatch analyze`` left in the runs
  (epsilon-sharpness, the parametric plot).
- :mod:`~largebatch.report.command`: ``largebatch report`` (``report.md``, ``report.json``).

The names most callers need are re-exported here::

    >>> from largebatch.report import find_runs, group_runs, write_report
"""

from largebatch.report.command import cmd_report, write_report
from largebatch.report.data import find_runs, group_runs, stat, steps_to_target

__all__ = ["cmd_report", "find_runs", "group_runs", "stat", "steps_to_target", "write_report"]
