"""The boards' plot layout: the legend beside the axes, distinct styles past ten series, and
error bars far wider than the means' spread cut so the means stay readable (said on the plot)."""

from __future__ import annotations

from gmbench.plot_layout import clip_to_means, figure, legend_outside, style


def test_legend_sits_right_of_the_axes_and_the_figure_grows_with_it():
    fig, ax = figure(40)
    for i in range(40):
        ax.plot([1, 2], [i, i + 1], label=f"series {i}", **style(i))
    legend_outside(fig, ax)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legend, axes = ax.get_legend().get_window_extent(renderer), ax.get_window_extent(renderer)
    assert legend.x0 > axes.x1  # nothing of the legend over the lines
    assert legend.y0 >= 0 and legend.x1 <= fig.bbox.width  # and all of it inside the figure
    assert fig.get_figheight() > figure(5)[0].get_figheight()


def test_series_past_ten_differ_in_line_style():
    assert style(0) != style(10) != style(20) and style(0) == style(9)


def test_clips_only_error_bars_that_would_swamp_the_means():
    fig, ax = figure(2)
    means = [10.0, 20.0, 30.0]
    assert not clip_to_means(ax, means, [9.0, 19.0, 29.0], [11.0, 21.0, 31.0])  # narrow bars: axis untouched
    assert clip_to_means(ax, means, [-500.0, 19.0, 29.0], [500.0, 21.0, 31.0])  # n=2 t-intervals
    low, high = ax.get_ylim()
    assert low == 8.0 and high == 32.0  # the means' range, 10% margin either side
    assert any("error bars are cut" in t.get_text() for t in ax.texts)
    assert not clip_to_means(figure(1)[1], [5.0], [-100.0], [100.0])  # one point: nothing to fit
