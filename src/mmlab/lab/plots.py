"""One plot style for every lesson: readable labels, a light grid, no display needed."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

STYLE = {
    "figure.dpi": 110,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
}


def figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.0):
    """A figure and its axes in the lab's style."""
    plt.rcParams.update(STYLE)
    return plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)


def grouped_bars(ax, labels, series, width: float = 0.8) -> None:
    """Bars side by side per label: ``series`` is ``[(name, {label: value})]``, one colour per series,
    sharing ``width`` of each label's slot; labels on the x axis, a legend of the series' names."""
    n = len(series)
    for i, (name, values) in enumerate(series):
        offset = (i - (n - 1) / 2) * width / n
        ax.bar([x + offset for x in range(len(labels))], [values[lb] for lb in labels], width / n, label=name)
    ax.set_xticks(list(range(len(labels))), labels, rotation=30, ha="right")
    ax.legend()
