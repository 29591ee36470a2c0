"""Figures from tidy frames. Every function takes a DataFrame and an optional ``ax``, returns
the Figure, and leaves matplotlib's global state (backend, style, rcParams) alone."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes
from matplotlib.figure import Figure

_SPECTRUM_COLUMNS = ("sample", "log10_singular_value", "is_zero")


def plot_log10_singular_value_histograms(
    frame: pd.DataFrame,
    *,
    depth: str = "depth",
    variant: str = "variant",
    ax: Axes | Sequence[Axes] | None = None,
    bins: int = 60,
) -> Figure:
    """Plot histograms of log10 singular values: one panel per depth, variants overlaid.

    ``frame`` has one row per singular value, as from ``JacobianSpectrum.to_frame()``, with
    columns ``sample``, ``log10_singular_value`` and ``is_zero`` and the grouping columns named by
    ``depth`` and ``variant``. Bar heights are fractions of all singular values of that
    variant and depth. Exact zeros have no log10 and are not drawn, but they count in the
    total, and the legend gives their mean number per sample.

    ``ax``: one Axes when there is one depth, or a sequence with one Axes per depth in
    ascending depth order. By default a new figure is made.
    """
    missing = [c for c in (*_SPECTRUM_COLUMNS, depth, variant) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"frame is missing column(s) {', '.join(missing)}; pass the output of "
            f"JacobianSpectrum.to_frame() with '{depth}' and '{variant}' labels"
        )
    if frame.empty:
        raise ValueError("frame is empty: there are no singular values to plot")

    depths = sorted(frame[depth].unique())
    variants = list(dict.fromkeys(frame[variant]))
    axes = _panel_axes(ax, len(depths))
    colours = dict(zip(variants, sns.color_palette(n_colors=len(variants))))

    finite = frame.loc[~frame["is_zero"], "log10_singular_value"]
    low, high = (finite.min(), finite.max()) if len(finite) else (-1.0, 1.0)
    if high - low < 1e-6:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, bins + 1)

    for panel, depth_value in zip(axes, depths):
        at_depth = frame[frame[depth] == depth_value]
        for name in variants:
            rows = at_depth[at_depth[variant] == name]
            if rows.empty:
                continue
            values = rows.loc[~rows["is_zero"], "log10_singular_value"].to_numpy()
            label = name
            zeros = int(rows["is_zero"].sum())
            if zeros:
                per_sample = rows.groupby("sample")["is_zero"].agg(["sum", "size"]).mean()
                label = f"{name} ({per_sample['sum']:g} of {per_sample['size']:g} zero)"
            panel.hist(
                values, bins=edges, weights=np.full(len(values), 1.0 / len(rows)),
                histtype="stepfilled", alpha=0.35, color=colours[name], edgecolor=colours[name],
                linewidth=1.2, label=label,
            )
        panel.set_title(f"depth {depth_value}")
        panel.set_xlabel("log10 singular value")
        panel.legend(fontsize="small")
    axes[0].set_ylabel("fraction of singular values")
    return axes[0].figure


def _panel_axes(ax: Axes | Sequence[Axes] | None, count: int) -> list[Axes]:
    if ax is None:
        figure, created = plt.subplots(1, count, figsize=(4.2 * count, 3.6), sharey=True, squeeze=False)
        figure.set_layout_engine("constrained")
        return list(created[0])
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax))
    if len(axes) != count:
        raise ValueError(f"got {len(axes)} Axes for {count} depth panel(s); pass one Axes per depth")
    return axes
