"""Layout shared by the boards' plots (the Pareto plot and the compute curves).

A published digits board has 27 series: with the legend inside the axes (``loc="best"``) it
covered the lines, and matplotlib's ten-colour cycle gave three series one colour. So the
legend goes to the right of the axes in a figure sized to it, series past the first ten change
line style and marker, and error bars much wider than the spread of the means (two seeds make a
95% t-interval 12.7 standard errors wide) may be clipped so the means stay readable, with a note.
"""

from __future__ import annotations

import math

_LINES = ("-", "--", ":", "-.")
_MARKERS = ("o", "s", "^", "D")
_PER_LINE = 0.17  # inches of legend per entry at fontsize 7


def text(s) -> str:
    """A label matplotlib prints as given: '$' would start mathtext, a newline would break the legend."""
    return " ".join(str(s).splitlines()).replace("$", r"\$")


def figure(entries: int):
    """A figure with one axes, wide enough for a legend of ``entries`` on its right and tall
    enough to hold it (Figure, Axes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.5, max(4.5, 0.8 + _PER_LINE * entries)))
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def style(i: int) -> dict:
    """Line style and marker of the i-th series: one combination per series up to 40."""
    return {"linestyle": _LINES[(i // 10) % 4], "marker": _MARKERS[(i // 10) % 4]}


def legend_outside(fig, ax) -> None:
    """The legend to the right of the axes, then a layout that keeps both inside the figure."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    fig.tight_layout()


def clip_to_means(ax, means: list[float], lows: list[float], highs: list[float], log: bool = False) -> bool:
    """Limit the y axis to the means' range (with a margin) when the error bars would stretch it
    more than threefold; note the clipping on the axes. Returns whether it clipped."""
    finite = [m for m in means if math.isfinite(m) and (m > 0 or not log)]
    if len(finite) < 2:
        return False
    lo, hi = min(finite), max(finite)
    if log:
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo or abs(hi) or 1.0
    lo, hi = lo - 0.1 * span, hi + 0.1 * span
    ends = [v for v in lows + highs if math.isfinite(v) and (v > 0 or not log)]
    if log:
        ends = [math.log10(v) for v in ends]
    if not ends or (max(ends) - min(ends)) <= 3 * (hi - lo):
        return False
    ax.set_ylim(10 ** lo if log else lo, 10 ** hi if log else hi)
    ax.text(0.01, 0.01, "y axis fitted to the means; wider error bars are cut at its edges", fontsize=7,
            color="grey", transform=ax.transAxes, ha="left", va="bottom")
    return True
