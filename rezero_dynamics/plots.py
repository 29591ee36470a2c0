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
    theory: dict[object, pd.DataFrame] | None = None,
) -> Figure:
    """Plot histograms of log10 singular values: one panel per depth, variants overlaid.

    ``frame`` has one row per singular value, as from ``JacobianSpectrum.to_frame()``, with
    columns ``sample``, ``log10_singular_value`` and ``is_zero`` and the grouping columns named by
    ``depth`` and ``variant``. Bar heights are fractions of all singular values of that
    variant and depth. Exact zeros have no log10 and are not drawn, but they count in the
    total, and the legend gives their mean number per sample.

    ``ax``: one Axes when there is one depth, or a sequence with one Axes per depth in
    ascending depth order. By default a new figure is made. Panels are titled with the
    column name and value ("depth 12"), so other groupings work too, such as
    ``depth="step"`` for spectra recorded during training.

    ``theory`` maps a depth value to a predicted density of log10 singular values
    (columns ``log10_singular_value`` and ``density``, e.g. ``theory.fuss_catalan_overlay``);
    it is drawn dashed on that panel, scaled by the bin width to match the bars.
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
        if theory is not None and depth_value in theory:
            curve = theory[depth_value]
            panel.plot(curve["log10_singular_value"], curve["density"] * (edges[1] - edges[0]),
                       color="black", linestyle="--", linewidth=1.2, label="theory")
        panel.set_title(f"{depth} {depth_value}")
        panel.set_xlabel("log10 singular value")
        panel.legend(fontsize="small")
    axes[0].set_ylabel("fraction of singular values")
    return axes[0].figure


def _panel_axes(ax: Axes | Sequence[Axes] | None, count: int, sharey: bool = True) -> list[Axes]:
    if ax is None:
        figure, created = plt.subplots(1, count, figsize=(4.2 * count, 3.6), sharey=sharey, squeeze=False)
        figure.set_layout_engine("constrained")
        return list(created[0])
    axes = [ax] if isinstance(ax, Axes) else list(np.ravel(ax))
    if len(axes) != count:
        raise ValueError(f"got {len(axes)} Axes for {count} panel(s); pass one Axes per panel")
    return axes


def _check_records(records: pd.DataFrame, quantity: str) -> pd.DataFrame:
    missing = [c for c in ("run", "step", "quantity", "layer", "value") if c not in records.columns]
    if missing:
        raise ValueError(f"records are missing column(s) {', '.join(missing)}; pass the output of read_records()")
    rows = records[records["quantity"] == quantity]
    if rows.empty:
        raise ValueError(f"the records contain no {quantity!r} rows; was it tracked in this run?")
    return rows


def _new_axes(ax: Axes | None, size: tuple[float, float] = (6.0, 3.8)) -> Axes:
    if ax is not None:
        return ax
    figure, created = plt.subplots(figsize=size)
    figure.set_layout_engine("constrained")
    return created


def plot_alpha_trajectories(records: pd.DataFrame, *, run: str | None = None, ax: Axes | None = None) -> Figure:
    """Plot each ReZero alpha against step, one line per layer coloured by depth.

    ``records`` is a tidy frame from ``read_records``; ``run`` picks one run when the
    frame contains several (the first run by default).
    """
    rows = _check_records(records, "alpha")
    run = run if run is not None else rows["run"].iloc[0]
    rows = rows[rows["run"] == run]
    layers = list(dict.fromkeys(rows["layer"]))  # registration order = block order
    axis = _new_axes(ax)
    colours = plt.get_cmap("viridis")
    for index, layer in enumerate(layers):
        line = rows[rows["layer"] == layer].sort_values("step")
        axis.plot(line["step"], line["value"], color=colours(index / max(1, len(layers) - 1)), linewidth=1.0)
    scalar = plt.cm.ScalarMappable(cmap=colours, norm=plt.Normalize(0, len(layers) - 1))
    axis.figure.colorbar(scalar, ax=axis, label="layer (0 = input side)")
    axis.axhline(0.0, color="0.6", linewidth=0.8, linestyle=":")
    axis.set_xlabel("step")
    axis.set_ylabel("alpha")
    axis.set_title(f"alpha per layer, {run}")
    return axis.figure


def _block_grad_norms(records: pd.DataFrame, run: str | None) -> tuple[pd.DataFrame, str]:
    rows = _check_records(records, "grad_norm")
    run = run if run is not None else rows["run"].iloc[0]
    rows = rows[(rows["run"] == run) & (rows["layer"].astype(str).str.isdigit())]
    table = rows.assign(block=rows["layer"].astype(int)).pivot_table(index="block", columns="step", values="value")
    return table, run


def plot_grad_norm_heatmap(records: pd.DataFrame, *, run: str | None = None, ax: Axes | None = None) -> Figure:
    """Plot the gradient norm of each block against step as a heatmap on a log colour scale."""
    from matplotlib.colors import LogNorm

    table, run = _block_grad_norms(records, run)
    table = table.where(np.isfinite(table))  # steps after a divergence (inf, NaN) are left blank
    values = table.to_numpy()
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size == 0:
        raise ValueError(f"run {run!r} has no positive gradient norms to draw on a log scale")
    axis = _new_axes(ax)
    steps = table.columns.to_numpy()
    mesh = axis.pcolormesh(
        steps, table.index.to_numpy(), table.to_numpy(), shading="nearest",
        norm=LogNorm(vmin=positive.min(), vmax=positive.max()), cmap="magma",
    )
    axis.figure.colorbar(mesh, ax=axis, label="gradient norm")
    axis.set_xlabel("step")
    axis.set_ylabel("block")
    axis.set_title(f"gradient norm per block, {run}")
    return axis.figure


def plot_grad_norm_profiles(
    records: pd.DataFrame, steps: Sequence[int], *, run: str | None = None, ax: Axes | None = None
) -> Figure:
    """Plot gradient norm against block index at the recorded steps nearest to ``steps``."""
    table, run = _block_grad_norms(records, run)
    table = table.where(np.isfinite(table))
    axis = _new_axes(ax)
    recorded = table.columns.to_numpy()
    for requested in steps:
        nearest = recorded[np.abs(recorded - requested).argmin()]
        axis.plot(table.index, table[nearest], marker="o", markersize=3, label=f"step {nearest}")
    axis.set_yscale("log")
    axis.set_xlabel("block")
    axis.set_ylabel("gradient norm")
    axis.set_title(f"gradient norm by depth, {run}")
    axis.legend(fontsize="small")
    return axis.figure


def plot_training_curves(records: pd.DataFrame, *, metric: str | None = None, ax: Axes | None = None) -> Figure:
    """Plot training loss (bits, solid) and the validation metric (dashed) per run.

    ``metric`` is the validation quantity, ``val_bpc`` or ``val_accuracy``; by default the
    one present. The loss is drawn in bits (nats / ln 2) so it shares the axis with bits
    per character; accuracy gets a second axis.
    """
    loss = _check_records(records, "loss")
    if metric is None:
        present = [m for m in ("val_bpc", "val_accuracy") if (records["quantity"] == m).any()]
        metric = present[0] if present else None
    axis = _new_axes(ax)
    metric_axis = axis.twinx() if metric == "val_accuracy" else axis
    colours = dict(zip(loss["run"].unique(), sns.color_palette(n_colors=loss["run"].nunique())))
    for run, colour in colours.items():
        line = loss[loss["run"] == run].sort_values("step")
        axis.plot(line["step"], line["value"] / np.log(2), color=colour, linewidth=0.8, alpha=0.8, label=f"{run} train")
        if metric is not None:
            evaluated = records[(records["run"] == run) & (records["quantity"] == metric)].sort_values("step")
            metric_axis.plot(evaluated["step"], evaluated["value"], color=colour, linestyle="--", marker=".", label=f"{run} {metric}")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (bits)")
    if metric_axis is not axis:
        metric_axis.set_ylabel(metric)
    axis.legend(fontsize="small", loc="upper right")
    axis.set_title("training and validation")
    return axis.figure


def plot_log10_density(
    frame: pd.DataFrame,
    *,
    depth: str = "depth",
    variant: str = "variant",
    theory: pd.DataFrame | None = None,
    ax: Axes | Sequence[Axes] | None = None,
) -> Figure:
    """Plot densities of log10 singular values (from SLQ): one panel per depth, variants overlaid.

    ``frame`` has columns ``log10_singular_value``, ``density`` and optionally ``spread``
    and ``sample`` (densities of several samples are averaged). ``theory``, a frame with
    ``log10_singular_value`` and ``density`` (e.g. from ``theory.fuss_catalan_overlay``),
    is drawn dashed on every panel.
    """
    missing = [c for c in ("log10_singular_value", "density", depth, variant) if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing column(s) {', '.join(missing)}; pass the density frame of the slq method")
    depths = sorted(frame[depth].unique())
    variants = list(dict.fromkeys(frame[variant]))
    axes = _panel_axes(ax, len(depths))
    colours = dict(zip(variants, sns.color_palette(n_colors=len(variants))))
    for panel, depth_value in zip(axes, depths):
        for name in variants:
            rows = frame[(frame[depth] == depth_value) & (frame[variant] == name)]
            if rows.empty:
                continue
            mean = rows.groupby("log10_singular_value", sort=True)["density"].mean()
            panel.plot(mean.index, mean.to_numpy(), color=colours[name], label=name)
            if "spread" in rows.columns:
                spread = rows.groupby("log10_singular_value", sort=True)["spread"].mean()
                panel.fill_between(mean.index, (mean - spread).clip(lower=0), mean + spread, color=colours[name], alpha=0.2)
        if theory is not None:
            panel.plot(theory["log10_singular_value"], theory["density"], color="black", linestyle="--", label="theory")
        panel.set_title(f"{depth} {depth_value}")
        panel.set_xlabel("log10 singular value")
        panel.legend(fontsize="small")
    axes[0].set_ylabel("density")
    return axes[0].figure


def add_theory_curve(ax: Axes, theory: pd.DataFrame, *, label: str = "theory", scale: float = 1.0) -> Figure:
    """Draw a theory density (columns log10_singular_value, density) on ``ax``, dashed.

    ``scale`` converts the density to the histogram's units: for bars that are fractions
    of singular values per bin, pass the bin width in log10 units.
    """
    ax.plot(theory["log10_singular_value"], theory["density"] * scale, color="black", linestyle="--", label=label)
    ax.legend(fontsize="small")
    return ax.figure


_DIAGNOSIS_COLUMNS = ("target", "quantity", "x_name", "x", "value", "source")


def plot_diagnosis(frame: pd.DataFrame, *, ax: Axes | Sequence[Axes] | None = None) -> Figure:
    """Plot the series behind diagnoses: one panel per quantity, one line per target.

    ``frame`` is tidy, as from ``diagnose.diagnosis_frame``: columns target, quantity,
    x_name (``block`` or ``step``), x, value and source (``measured`` solid, ``theory``
    dashed). ``ax``: one Axes per quantity, in order of first appearance.
    """
    missing = [c for c in _DIAGNOSIS_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"frame is missing column(s) {', '.join(missing)}; pass the output of diagnosis_frame()")
    if frame.empty:
        raise ValueError("frame is empty: the diagnoses have no depth profile or recorded series to plot")
    quantities = list(dict.fromkeys(frame["quantity"]))
    targets = list(dict.fromkeys(frame["target"]))
    axes = _panel_axes(ax, len(quantities), sharey=False)
    colours = dict(zip(targets, sns.color_palette(n_colors=len(targets))))
    for panel, quantity in zip(axes, quantities):
        rows = frame[frame["quantity"] == quantity]
        for (target, source), line in rows.groupby(["target", "source"], sort=False):
            line = line.sort_values("x")
            panel.plot(line["x"], line["value"], color=colours[target], linestyle="--" if source == "theory" else "-",
                       marker="." if len(line) < 40 else None, label=f"{target} ({source})" if source != "measured" else target)
        panel.axhline(0.0, color="0.6", linewidth=0.8, linestyle=":")
        panel.set_xlabel(rows["x_name"].iloc[0])
        panel.set_title(quantity)
        panel.legend(fontsize="small")
    axes[0].set_ylabel("log10 value")
    return axes[0].figure
