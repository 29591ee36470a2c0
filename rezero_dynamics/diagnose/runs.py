"""Diagnose run folders written by ``train``, ``compare`` or ``reproduce``.

From a run's ``records.csv`` (tidy rows: run, step, quantity, layer, value):

* ``alpha``: each ReZero alpha whose values over the last part of training (the last
  ``tail_fraction`` of its recorded steps) stayed near 0 or went negative, by name;
* ``grad_norm``: the ratio of the first block's gradient norm to the last block's at
  every recorded step, and its median over the tail (vanishing or exploding);
* ``loss``: spikes above ``loss_spike_factor`` times the median of the previous
  ``loss_spike_window`` recorded losses.

From ``status.json``: a diverged or failed run. From ``spectra.csv``: the Jacobian
spectrum at the last recorded step, checked with the same rules as a model, next to
the first recorded step.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..tracking.records import RECORDS_FILE, read_csv_rows, read_records
from .findings import Finding, crossed, verdict_of
from .rules import Architecture, chi_findings, near_zero_findings, spread_findings
from .thresholds import limit

STATUS_FILE = "status.json"
SPECTRA_FILE = "spectra.csv"


@dataclass(frozen=True)
class RunDiagnosis:
    """Findings of one run, with the series they were drawn from.

    ``alphas``: one row per alpha (layer, tail_mean, tail_min, tail_max_abs, last).
    ``grad_ratio``: step, ratio (first block's gradient norm over the last block's).
    ``spectra``: step, chi, spread, near_zero_fraction, near_zero_count, size, num_zeros.
    ``step`` is the step of ``status.json`` (None without one), the step ``train``
    prints. ``last_step`` is the largest step in ``records.csv``. After a completed run
    it is one more than ``step``, because the final evaluation is recorded there.
    """

    target: str
    path: str
    status: str | None
    step: int | None
    last_step: int | None
    alphas: pd.DataFrame
    grad_ratio: pd.DataFrame
    spectra: pd.DataFrame
    findings: tuple[Finding, ...]
    verdict: str
    notes: tuple[str, ...] = field(default_factory=tuple)


def _tail(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of the last ``tail_fraction`` of the recorded steps (at least one step)."""
    steps = np.sort(rows["step"].unique())
    keep = max(1, math.ceil(limit("tail_fraction") * len(steps)))
    return rows[rows["step"].isin(steps[-keep:])]


def alpha_findings(run: str, records: pd.DataFrame) -> tuple[pd.DataFrame, list[Finding], list[str]]:
    """Flag alphas that stayed near 0 or went negative over the tail, per layer."""
    rows = records[records["quantity"] == "alpha"]
    if rows.empty:
        return pd.DataFrame(columns=["layer", "tail_mean", "tail_min", "tail_max_abs", "last"]), [], []
    if rows["step"].nunique() < 2:
        return pd.DataFrame(), [], ["alphas were recorded at one step only, so their trend is not checked"]
    tail = _tail(rows)
    table = tail.groupby("layer", sort=False)["value"].agg(
        tail_mean="mean", tail_min="min", tail_max_abs=lambda v: v.abs().max()
    )
    table["last"] = rows.sort_values("step").groupby("layer", sort=False)["value"].last()
    table = table.reset_index()
    first_step, last_step = int(tail["step"].min()), int(tail["step"].max())
    window = f"steps {first_step} to {last_step}"
    near_zero = table[table["tail_max_abs"] < limit("alpha_near_zero")]
    negative = table[(table["tail_max_abs"] >= limit("alpha_near_zero")) & (table["tail_mean"] < limit("alpha_negative"))]
    found = []
    if len(near_zero):
        found.append(crossed(
            "alpha_near_zero", _alphas_subject(run, near_zero), near_zero["tail_max_abs"].max(), "alpha_near_zero",
            f"{_count_alphas(near_zero)} stayed within {limit('alpha_near_zero'):g} of 0 over {window} "
            f"(max |alpha|: {_list_alphas(near_zero, 'tail_max_abs')}): their branches add almost nothing, "
            f"so those layers are skipped; raise --alpha-lr, or turn off weight decay on alphas if "
            f"--alpha-weight-decay is set.",
        ))
    if len(negative):
        found.append(crossed(
            "alpha_negative", _alphas_subject(run, negative), negative["tail_mean"].min(), "alpha_negative",
            f"{_count_alphas(negative)} averaged below 0 over {window} (mean: "
            f"{_list_alphas(negative, 'tail_mean')}): the sign alone is harmless (the branch can absorb "
            f"it), but an alpha that crossed 0 switched its branch off on the way; if it keeps shrinking, "
            f"lower --alpha-lr or the learning rate.",
        ))
    return table, found, []


def _alphas_subject(run: str, rows: pd.DataFrame) -> str:
    """Name the one alpha, or count several (the message lists them)."""
    return f"{run} {rows['layer'].iloc[0]}" if len(rows) == 1 else f"{run} {len(rows)} alphas"


def _count_alphas(rows: pd.DataFrame) -> str:
    return "1 alpha" if len(rows) == 1 else f"{len(rows)} alphas"


def _list_alphas(rows: pd.DataFrame, column: str) -> str:
    """List each alpha's name with its value of ``column``, e.g. ``blocks.1.gate.alpha -0.05``."""
    return ", ".join(f"{layer} {value:.3g}" for layer, value in zip(rows["layer"], rows[column]))


def grad_ratio_findings(run: str, records: pd.DataFrame) -> tuple[pd.DataFrame, list[Finding], list[str]]:
    """Compute the gradient norm of the first block over the last block per step; flag its tail median."""
    rows = records[(records["quantity"] == "grad_norm") & records["layer"].astype(str).str.isdigit()]
    if rows.empty:
        return pd.DataFrame(columns=["step", "ratio"]), [], ["no per-block gradient norms were recorded"]
    table = rows.assign(block=rows["layer"].astype(int)).pivot_table(index="step", columns="block", values="value")
    first, last = table.columns.min(), table.columns.max()
    if first == last:
        return pd.DataFrame(columns=["step", "ratio"]), [], ["the run has one block, so there is no gradient ratio"]
    ratio = (table[first] / table[last]).replace([np.inf, -np.inf], np.nan)
    series = ratio.rename("ratio").reset_index()
    tail = _tail(series.dropna())
    if tail.empty:
        return series, [], ["every gradient-norm ratio is non-finite"]
    median = float(tail["ratio"].median())
    subject = f"{run} blocks {first} / {last}"
    text = (
        f"the gradient norm of block {first} is {median:.3g} times that of block {last} (median over the "
        f"last {limit('tail_fraction'):.0%} of recorded steps, {float(series['ratio'].iloc[0]):.3g} at the first)"
    )
    found = []
    if median < limit("grad_ratio_vanishing"):
        rule = "grad_ratio_vanishing_critical" if median < limit("grad_ratio_vanishing_critical") else "grad_ratio_vanishing"
        found.append(crossed(
            "vanishing_gradients", subject, median, rule,
            f"{text}: the first blocks barely learn; ReZero (alpha = 0) or pre-norm keep gradients "
            f"even across depth, and warm-up helps post-norm.",
        ))
    elif median > limit("grad_ratio_exploding"):
        found.append(crossed(
            "exploding_gradients", subject, median, "grad_ratio_exploding",
            f"{text}: the first blocks take steps far larger than the last; clip gradients, lower the "
            f"learning rate, or use ReZero or pre-norm.",
        ))
    return series, found, []


def loss_findings(run: str, records: pd.DataFrame) -> list[Finding]:
    """Flag loss spikes: a loss above ``loss_spike_factor`` times the median of the previous window."""
    loss = records[(records["quantity"] == "loss")].sort_values("step")
    values = loss["value"].to_numpy(dtype=float)
    window = int(limit("loss_spike_window"))
    if len(values) < 3:
        return []
    previous = pd.Series(values).rolling(window, min_periods=2).median().shift(1).to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(previous > 0, values / previous, np.nan)
    spikes = np.isfinite(ratios) & (ratios > limit("loss_spike_factor"))
    if not spikes.any():
        return []
    steps = loss["step"].to_numpy()[spikes]
    largest = int(np.nanargmax(np.where(spikes, ratios, np.nan)))
    listed = ", ".join(map(str, steps[:5])) + (" ..." if len(steps) > 5 else "")
    return [crossed(
        "loss_spikes", run, float(ratios[largest]), "loss_spike_factor",
        f"{int(spikes.sum())} loss spike(s) at step(s) {listed}, the largest {ratios[largest]:.3g} times the "
        f"median of the previous {window} recorded losses (step {int(loss['step'].iloc[largest])}); warm-up, "
        f"a lower learning rate or gradient clipping usually remove them.",
    )]


def status_findings(run: str, status: dict | None) -> list[Finding]:
    """Flag a diverged or failed run from its ``status.json``."""
    if status is None or status.get("status") not in ("diverged", "failed"):
        return []
    cause = status.get("cause") or "no cause recorded"
    advice = (
        "lower the learning rate, add warm-up or clipping, or use ReZero, which starts as the identity"
        if status["status"] == "diverged" else "read the cause, fix it and rerun"
    )
    return [Finding(
        status["status"], "critical", run, float(status.get("step", math.nan)), math.nan, "",
        f"the run {status['status']} at step {status.get('step')}: {cause}; {advice}.",
    )]


def spectra_statistics(spectra: pd.DataFrame) -> pd.DataFrame:
    """Compute chi, spread and near-zero counts per recorded step, averaged over probe samples."""
    relative = limit("near_zero_relative")
    rows = []
    for (step, sample), group in spectra.groupby(["step", "sample"]):
        values = group["singular_value"].to_numpy(dtype=float)
        size = len(values)
        chi = float(np.sum(values**2) / size)
        m2 = float(np.sum(values**4) / size)
        rows.append({
            "step": step, "sample": sample, "chi": chi, "spread": m2 / chi**2 - 1 if chi > 0 else math.nan,
            "near_zero_count": int((values < relative * values.max()).sum()), "size": size,
            "num_zeros": int(group["is_zero"].astype(bool).sum()) if "is_zero" in group else 0,
        })
    per_sample = pd.DataFrame(rows)
    table = per_sample.groupby("step").mean(numeric_only=True).drop(columns="sample").reset_index()
    table["near_zero_fraction"] = table["near_zero_count"] / table["size"]
    return table


def architecture_from_config(config: dict) -> Architecture:
    """Describe the recorded model's normalisation from a run's ``config.json`` settings."""
    if config.get("variant") != "post_norm" or (config.get("task") != "lm" and config.get("norm") == "batch"):
        return Architecture()  # BatchNorm in eval mode is affine and removes no direction
    if config.get("task") == "lm":  # two sublayers per layer; the probe has spectrum_tokens tokens
        return Architecture(2 * config["depth"], 2 * config["depth"], config.get("spectrum_tokens", 0))
    return Architecture(config["depth"], config["depth"], 1)  # one LayerNorm per block on (B, width) inputs


def spectra_findings(
    run: str, spectra: pd.DataFrame, architecture: Architecture = Architecture()
) -> tuple[pd.DataFrame, list[Finding]]:
    """Apply the model rules to the last recorded spectrum; messages give the first step's value."""
    table = spectra_statistics(spectra)
    first, last = table.iloc[0], table.iloc[-1]
    subject = f"{run} Jacobian at step {int(last['step'])}"
    found = [
        *chi_findings(subject, float(last["chi"]), None),
        *spread_findings(subject, float(last["spread"])),
        *near_zero_findings(subject, float(last["near_zero_count"]), int(last["size"]), float(last["num_zeros"]), architecture),
    ]
    since = (
        f" (at step {int(first['step'])}: chi {first['chi']:.3g}, spread {first['spread']:.3g}, "
        f"near-zero {first['near_zero_fraction']:.1%})"
    )
    found = [Finding(f.name, f.severity, f.subject, f.measured, f.threshold, f.threshold_name, f.message + since) for f in found]
    return table, found


def diagnose_run(run_dir: str | Path) -> RunDiagnosis:
    """Diagnose one run folder (it contains ``records.csv``)."""
    run_dir = Path(run_dir)
    records = read_records(run_dir / RECORDS_FILE)
    run = str(records["run"].iloc[0]) if len(records) else run_dir.name
    status = json.loads((run_dir / STATUS_FILE).read_text()) if (run_dir / STATUS_FILE).is_file() else None
    notes = [] if status is not None else [f"no {STATUS_FILE}, so divergence is not checked"]

    alphas, found, more = alpha_findings(run, records)
    notes += more
    grad_ratio, grad_found, more = grad_ratio_findings(run, records)
    found += grad_found
    notes += more
    found += loss_findings(run, records)
    found += status_findings(run, status)
    spectra = pd.DataFrame(columns=["step", "chi", "spread", "near_zero_fraction"])
    spectra_path = run_dir / SPECTRA_FILE
    spectra_rows = read_csv_rows(spectra_path) if spectra_path.is_file() else pd.DataFrame()
    if len(spectra_rows.columns):  # a file cut short before its header ended reads as empty
        config_path = run_dir / "config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        spectra, spectra_found = spectra_findings(run, spectra_rows, architecture_from_config(config))
        found += spectra_found
    else:
        notes.append(f"no {SPECTRA_FILE} (train with --spectrum-every N to record Jacobian spectra)")
    last_step = int(records["step"].max()) if len(records) else None
    step = status.get("step") if status else None
    return RunDiagnosis(
        target=run, path=str(run_dir), status=status.get("status") if status else None,
        step=int(step) if step is not None else None, last_step=last_step,
        alphas=alphas, grad_ratio=grad_ratio, spectra=spectra, findings=tuple(found),
        verdict=verdict_of(found), notes=tuple(notes),
    )


def find_runs(folder: str | Path) -> list[Path]:
    """Return the run folders in ``folder``: itself when it has a ``status.json``, else every
    folder below it whose ``records.csv`` sits next to a ``status.json`` (the runs of a
    comparison), else itself when it has a ``records.csv``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder; pass a run folder written by train, compare or reproduce")
    if (folder / RECORDS_FILE).is_file() and (folder / STATUS_FILE).is_file():
        return [folder]
    runs = sorted(path.parent for path in folder.rglob(RECORDS_FILE) if (path.parent / STATUS_FILE).is_file())
    if runs:
        return runs
    if (folder / RECORDS_FILE).is_file():
        return [folder]
    raise FileNotFoundError(
        f"no run found in {folder}: no {RECORDS_FILE} in it or below it; pass a folder written by train, "
        f"compare or reproduce"
    )


def diagnose_folder(folder: str | Path) -> list[RunDiagnosis]:
    """Diagnose a run folder, or each run of a ``compare`` or ``reproduce`` folder."""
    return [diagnose_run(path) for path in find_runs(folder)]
