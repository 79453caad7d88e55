"""Figure helpers shared by the analyses' and the reports' figures.

:func:`log_axis_at` puts a log axis with a tick at each value given (batch sizes 32, 64, 128
written out, no minor ticks). :func:`plain_log_y` makes a log y axis that reads as plain numbers
(0.6, 2, 30, not ``6 x 10^-1``), labels minor ticks only where they do not crowd, and on an axis
shorter than half a decade (where 1..9 x 10^k give no ticks at all) spaces ticks evenly
instead.

    >>> from matplotlib.figure import Figure
    >>> ax = Figure().add_subplot(1, 1, 1)
    >>> _ = ax.plot([0, 1], [0.5, 2.0])
    >>> plain_log_y(ax)
    >>> ax.get_yscale(), ax.yaxis.get_major_formatter()(0.5, 0)
    ('log', '0.5')
"""

from __future__ import annotations

import math
from typing import Any


def minor_log_label(ax: Any, value: float) -> str:
    """The label of a minor tick (2..9 x 10^k) of a log y axis, or none: at 2, 3 and 5 up to
    about a decade, at 2 and 5 up to 2.5 decades, none beyond (they would sit on each other)."""
    low, high = ax.get_ylim()
    if low <= 0 or value <= 0:
        return ""
    decades = math.log10(high / low)
    mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    if (decades <= 1.2 and mantissa in (2, 3, 5)) or (decades <= 2.5 and mantissa in (2, 5)):
        return f"{value:.3g}"
    return ""


def plain_log_y(ax: Any) -> None:
    """Put ``ax``'s y axis on a log scale labelled with plain numbers (call after plotting)."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: minor_log_label(ax, v)))
    low, high = ax.get_ylim()
    if 0 < low and high / low < 10**0.5:  # too short for ticks at 1..9 x 10^k: evenly spaced
        ax.yaxis.set_major_locator(MaxNLocator(nbins=5))
        ax.yaxis.set_minor_locator(NullLocator())


def log_axis_at(ax: Any, axis: str, values: list[float], base: int = 2) -> None:
    """A log ``axis`` (``"x"`` or ``"y"``) with a tick at each value given, written out in full
    (1024, not 2^10), and no minor ticks."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator, ScalarFormatter

    getattr(ax, f"set_{axis}scale")("log", base=base)
    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(sorted(set(values))))
    fmt = ScalarFormatter()
    fmt.set_scientific(False)
    target.set_major_formatter(fmt)
    target.set_minor_locator(NullLocator())
    target.set_minor_formatter(NullFormatter())
