"""The main job: train residual variants side by side and write a report.

``reproduce(scale)`` trains post-norm, pre-norm and ReZero character-level Transformer
language models at a depth where the choice matters, with Jacobian spectra before and
during training, and writes ``report.md`` with steps-to-target and speed-ups, the
figures, the runs table and the tidy records.

Scales:

* ``ci``: the embedded corpus (``pydoc_data.topics``), 32 layers, d_model 64, 200 steps;
  a few minutes on a 2-core CPU.
* ``small``: the embedded corpus, depths 12 and 64, 1,000 steps. An estimate from the
  step times of the ``ci`` scale puts it at about an hour on a 2-core CPU.
* ``paper``: enwik8 from ``data_path``, 12 layers, d_model 512, 8 heads, d_ff 2048,
  sequence length 512: sized after the ReZero paper's enwik8 Transformers and meant for a
  GPU. NOTE: batch size, learning rate and step count here are not checked against the
  paper.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..training import TrainConfig
from .compare import collect_records, collect_spectra, compare

log = logging.getLogger(__name__)

VARIANTS = ("post_norm", "pre_norm", "rezero")


@dataclass(frozen=True)
class Scale:
    """One size of the reproduce study."""

    base: TrainConfig
    depths: tuple[int, ...]
    target: float  # validation bits per character
    variants: tuple[str, ...] = VARIANTS
    seeds: tuple[int, ...] = (0,)
    overrides: dict[str, dict] = field(default_factory=dict)


SCALES: dict[str, Scale] = {
    "ci": Scale(
        TrainConfig(
            d_model=64, heads=4, seq_len=64, batch_size=16, steps=200, lr=1e-3, eval_every=10,
            eval_batches=4, spectrum_every=100, spectrum_inputs=1, spectrum_tokens=16, checkpoint_every=0,
        ),
        depths=(32,),
        target=3.6,
    ),
    "small": Scale(
        TrainConfig(
            d_model=64, heads=4, seq_len=128, batch_size=16, steps=1000, lr=1e-3, eval_every=25,
            eval_batches=8, spectrum_every=250, spectrum_inputs=2, spectrum_tokens=16, checkpoint_every=250,
        ),
        depths=(12, 64),
        target=2.6,
    ),
    "paper": Scale(
        TrainConfig(
            data="enwik8", d_model=512, heads=8, d_ff=2048, seq_len=512, batch_size=22, steps=100_000,
            lr=2e-4, eval_every=1000, eval_batches=32, spectrum_every=20_000, spectrum_inputs=1,
            spectrum_tokens=8, checkpoint_every=5000, device="cuda",
        ),
        depths=(12,),
        target=1.2,  # bits per byte: the paper's convergence threshold on enwik8
    ),
}


def reproduce(
    scale: str = "ci",
    output_dir: str | Path = "runs/reproduce",
    *,
    data_path: str | None = None,
    device: str | None = None,
    progress: bool = False,
    devices: list[str] | None = None,
) -> Path:
    """Run the study at ``scale`` into ``output_dir`` and write its report; return the report path.

    ``devices`` spreads the runs over several devices, one worker process each (see ``compare``).
    """
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    settings = SCALES[scale]
    base = settings.base
    if base.data == "enwik8":
        if not data_path:
            raise ValueError(f"scale {scale!r} trains on enwik8; pass its path with --data-path")
        base = dataclasses.replace(base, data_path=str(data_path))
    if device is not None:
        base = dataclasses.replace(base, device=device)
    base.validate()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    runs = compare(
        base, output_dir, variants=settings.variants, depths=settings.depths, seeds=settings.seeds,
        target=settings.target, progress=progress, overrides=settings.overrides, devices=devices,
    )
    seconds = time.perf_counter() - started
    records = collect_records(output_dir)
    records.to_csv(output_dir / "records.csv", index=False)
    spectra = collect_spectra(output_dir)
    figures = write_figures(records, spectra, runs, output_dir / "figures")
    report = output_dir / "report.md"
    report.write_text(render_report(scale, settings, base, runs, figures, seconds))
    return report


def write_figures(records: pd.DataFrame, spectra: pd.DataFrame, runs: pd.DataFrame, folder: Path) -> list[Path]:
    """Draw every figure of the study into ``folder`` and return their paths."""
    from ..plots import (
        plot_alpha_trajectories,
        plot_grad_norm_heatmap,
        plot_grad_norm_profiles,
        plot_log10_singular_value_histograms,
        plot_training_curves,
    )

    folder.mkdir(parents=True, exist_ok=True)
    written = []

    def save(figure, name: str) -> None:
        path = folder / name
        figure.savefig(path, dpi=110)
        plt.close(figure)
        written.append(path)

    def attempt(draw, name: str) -> None:
        # One figure that cannot be drawn (say, a run with no finite values) must not
        # cost the report the others.
        try:
            save(draw(), name)
        except ValueError as error:
            log.warning("figure %s was not drawn: %s", name, error)
            plt.close("all")

    if (records["quantity"] == "loss").any():
        attempt(lambda: plot_training_curves(records), "training_curves.png")
    names = [r for r in runs["run"] if (records["run"] == r).any()]
    for name in names:
        run_records = records[records["run"] == name]
        if (run_records["quantity"] == "alpha").any():
            attempt(lambda: plot_alpha_trajectories(run_records), f"alpha_{name}.png")
    grad_runs = [n for n in names if (records[(records["run"] == n)]["quantity"] == "grad_norm").any()]
    if grad_runs:

        def draw_grad_norms():
            figure, axes = plt.subplots(len(grad_runs), 2, figsize=(12, 3.4 * len(grad_runs)), squeeze=False)
            figure.set_layout_engine("constrained")
            for row, name in zip(axes, grad_runs):
                run_records = records[records["run"] == name]
                steps = np.sort(run_records["step"].unique())
                plot_grad_norm_heatmap(run_records, ax=row[0])
                plot_grad_norm_profiles(run_records, [steps[0], steps[len(steps) // 2], steps[-1]], ax=row[1])
            return figure

        attempt(draw_grad_norms, "grad_norms.png")
    if not spectra.empty:

        def draw_spectra():
            figure = plot_log10_singular_value_histograms(spectra, depth="step", variant="run")
            figure.suptitle("input-output Jacobian of the block stack during training")
            return figure

        attempt(draw_spectra, "jacobian_spectra.png")
    return written


def _format(value: float, *, integer: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not reached"
    return f"{int(value)}" if integer else f"{value:.2f}"


def speedup_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Add ``speedup_vs_best_baseline`` per run: steps of the fastest other variant at the
    same depth divided by this run's steps, minus 1 (0.5 = 50% faster; negative = slower)."""
    runs = runs.copy()
    values = []
    for _, row in runs.iterrows():
        others = runs[(runs["depth"] == row["depth"]) & (runs["variant"] != row["variant"])]["steps_to_target"].dropna()
        if math.isnan(row["steps_to_target"]) or others.empty:
            values.append(float("nan"))
        else:
            values.append(others.min() / max(row["steps_to_target"], 1.0) - 1.0)
    runs["speedup_vs_best_baseline"] = values
    return runs


def verdict(runs: pd.DataFrame, target: float) -> list[str]:
    """State, per depth, whether ReZero reached the target first, computed from the runs."""
    lines = []
    for depth, group in runs.groupby("depth"):
        rezero = group[group["variant"] == "rezero"]
        baselines = group[group["variant"] != "rezero"]
        if rezero.empty:
            continue
        rezero_steps = rezero["steps_to_target"].min()
        reached = baselines.dropna(subset=["steps_to_target"])
        if math.isnan(rezero_steps):
            lines.append(
                f"- Depth {depth}: ReZero did not reach {target} bits per character; the paper's effect "
                f"does not appear at this scale."
            )
        elif reached.empty:
            longest = int(baselines["step"].max()) + 1 if len(baselines) else 0
            lines.append(
                f"- Depth {depth}: ReZero reached {target} bits per character at step {int(rezero_steps)}; "
                f"no baseline reached it within {longest} steps, so the paper's effect appears "
                f"(speed-up at least {longest / max(rezero_steps, 1) - 1:.0%})."
            )
        else:
            best = reached.loc[reached["steps_to_target"].idxmin()]
            ratio = best["steps_to_target"] / max(rezero_steps, 1.0) - 1.0
            appears = "appears" if ratio > 0 else "does not appear"
            lines.append(
                f"- Depth {depth}: ReZero reached {target} bits per character at step {int(rezero_steps)}, "
                f"the fastest baseline ({best['variant']}) at step {int(best['steps_to_target'])}: "
                f"{ratio:+.0%} for ReZero, so the paper's effect {appears} here."
            )
    return lines


def render_report(scale: str, settings: Scale, base: TrainConfig, runs: pd.DataFrame, figures: list[Path], seconds: float) -> str:
    """Write the markdown report of a reproduce run."""
    table = speedup_table(runs)
    lines = [
        f"# ReZero reproduction, scale `{scale}`",
        "",
        f"Character-level Transformer language models, d_model {base.d_model}, {base.heads} heads, "
        f"sequence length {base.seq_len}, batch {base.batch_size}, {base.steps} steps of {base.optimizer} "
        f"at learning rate {base.lr}, data `{base.data}`. Wall time {seconds / 60:.1f} min.",
        "",
        f"Target: validation bits per character <= {settings.target}. Steps-to-target is the first "
        f"evaluation (every {base.eval_every} steps) at or below it. The speed-up compares a run with the "
        f"fastest other variant at the same depth (0.56 would mean 56% faster, the paper's "
        f"figure for 12-layer Transformers on enwik8).",
        "",
        "| run | status | final train loss (bits) | final validation bpc | steps to target | speed-up vs best other |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for _, row in table.iterrows():
        speedup = row["speedup_vs_best_baseline"]
        speedup_text = "" if math.isnan(speedup) else f"{speedup:+.0%}"
        lines.append(
            f"| {row['run']} | {row['status']} | {_format(row['final_loss_bits'])} | "
            f"{_format(row['final_metric'])} | {_format(row['steps_to_target'], integer=True)} | {speedup_text} |"
        )
    lines += ["", "## Where the paper's effect appears", "", *verdict(runs, settings.target), ""]
    lines += [
        "## How far to trust these numbers",
        "",
        f"- {len(settings.seeds)} seed(s) per variant: seed-to-seed spread is not measured here.",
        f"- Validation is evaluated every {base.eval_every} steps on {base.eval_batches} fixed batches, so "
        f"steps-to-target is resolved to {base.eval_every} steps. Every quantity labelled step k describes "
        f"the model after k updates.",
        "- The final training loss is that of the last minibatch.",
        "",
    ]
    failed = runs[runs["status"] != "completed"]
    if len(failed):
        lines += ["## Runs that did not complete", ""]
        lines += [f"- {row['run']}: {row['status']} ({row['cause']})" for _, row in failed.iterrows()]
        lines.append("")
    lines += ["## Figures", ""]
    lines += [f"![{path.stem}](figures/{path.name})" for path in figures]
    lines += [
        "",
        "## Files",
        "",
        "- `runs.csv`: one row per run (status, final values, steps to target).",
        "- `records.csv`: every tracked quantity, tidy (run, step, quantity, layer, value).",
        "- `runs/<run>/`: each run's config, records, Jacobian spectra, checkpoint and status.",
        "",
    ]
    return "\n".join(lines)
