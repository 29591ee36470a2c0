"""Compare variants: train every (variant, depth, seed) one after another.

A run that fails or diverges is recorded in ``runs.csv`` with its cause, and the others
go on. Each run writes its own folder under ``runs/``. An interrupted comparison
(SIGINT or SIGTERM) marks the run it stopped as ``interrupted`` in ``runs.csv`` and keeps
the rows of the runs it finished. ``compare(..., resume=True)`` keeps completed and
diverged runs, continues the interrupted or failed ones from their checkpoints and
starts the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..tracking import read_csv_rows, read_records
from ..tracking.records import replace_atomically
from ..training import TrainConfig, train
from ..training.loop import STATUS_FILE
from ..training.metrics import steps_to_target

log = logging.getLogger(__name__)

RUNS_FILE = "runs.csv"


def run_name(variant: str, depth: int, seed: int) -> str:
    """Name of one run in a comparison, e.g. ``rezero-L32-s0``."""
    return f"{variant}-L{depth}-s{seed}"


def _final(records: pd.DataFrame, quantity: str) -> float:
    rows = records[records["quantity"] == quantity]
    return float(rows.sort_values("step")["value"].iloc[-1]) if len(rows) else float("nan")


def summarise_run(run_dir: Path, target: float | None, lower_is_better: bool, metric: str) -> dict:
    """Return a run's last training loss (in bits), last validation metric and steps to ``target``."""
    try:
        records = read_records(run_dir)
    except FileNotFoundError:
        return {"final_loss_bits": float("nan"), "final_metric": float("nan"), "steps_to_target": float("nan")}
    evaluations = records[records["quantity"] == metric]
    reached = (
        steps_to_target(evaluations, target, lower_is_better=lower_is_better)
        if target is not None and len(evaluations) else float("nan")
    )
    return {
        "final_loss_bits": _final(records, "loss") / math.log(2),  # records hold nats
        "final_metric": _final(records, metric),
        "steps_to_target": reached,
    }


def compare(
    base: TrainConfig,
    output_dir: str | Path,
    *,
    variants: Sequence[str],
    depths: Sequence[int],
    seeds: Sequence[int] = (0,),
    target: float | None = None,
    progress: bool = False,
    overrides: dict[str, dict] | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Train every combination of ``variants`` x ``depths`` x ``seeds`` from ``base``.

    ``overrides`` maps a variant name to extra settings for its runs (for example a
    warm-up for post-norm). ``target`` is the validation metric value whose first
    crossing is reported as ``steps_to_target``. Returns the runs table, also written to
    ``output_dir/runs.csv`` after every run, so an interrupted comparison keeps the rows
    of the runs it finished. With ``resume=True`` the rows of finished runs are read back
    from ``runs.csv`` and those runs are skipped.
    """
    output_dir = Path(output_dir)
    (output_dir / "runs").mkdir(parents=True, exist_ok=True)
    metric = "val_bpc" if base.task == "lm" else "val_accuracy"
    lower_is_better = base.task == "lm"
    jobs = [(v, d, s) for d in depths for v in variants for s in seeds]
    configs = {
        run_name(v, d, s): dataclasses.replace(base, variant=v, depth=d, seed=s, **(overrides or {}).get(v, {}))
        for v, d, s in jobs
    }
    finished = {}
    if resume:
        _check_settings_unchanged(output_dir, configs)
        finished = _finished_runs(output_dir)
    rows = []
    for variant, depth, seed in tqdm(jobs, desc="runs", disable=not progress):
        name = run_name(variant, depth, seed)
        config = configs[name]
        run_dir = output_dir / "runs" / name
        if name in finished:
            log.info("run %s is %s; kept", name, finished[name]["status"])
            rows.append(finished[name])
            continue
        row = {"run": name, "variant": variant, "depth": depth, "seed": seed, "metric": metric}
        try:
            result = train(config, run_dir, run_name=name, progress=False,
                           resume=resume and (run_dir / "config.json").is_file())
            row.update(status=result.status, step=result.step, cause=result.cause)
        except Exception as error:  # one broken run must not stop the comparison
            log.error("run %s failed: %s: %s", name, type(error).__name__, error)
            row.update(status="failed", step=-1, cause=f"{type(error).__name__}: {error}")
        except BaseException as error:  # SIGINT or SIGTERM: mark this run, keep the others, stop
            row.update(status="interrupted", step=_status_step(run_dir), cause=f"interrupted ({type(error).__name__})")
            row.update(summarise_run(run_dir, target, lower_is_better, metric))
            _write_runs(output_dir, [*rows, row])
            raise
        row.update(summarise_run(run_dir, target, lower_is_better, metric))
        rows.append(row)
        _write_runs(output_dir, rows)
    return pd.DataFrame(rows)


def _check_settings_unchanged(output_dir: Path, configs: dict[str, TrainConfig]) -> None:
    """Raise ValueError if a run folder was started with settings other than ``configs``'."""
    for name, config in configs.items():
        path = output_dir / "runs" / name / "config.json"
        if not path.is_file():
            continue
        saved, settings = json.loads(path.read_text()), dataclasses.asdict(config)
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        if changed:
            raise ValueError(
                f"resume with settings that differ from run {name}'s ({', '.join(changed)}); "
                f"rerun with the original settings or start a new comparison folder"
            )


def _finished_runs(output_dir: Path) -> dict[str, dict]:
    """Return the rows of ``runs.csv`` whose run completed or diverged, by run name."""
    path = output_dir / RUNS_FILE
    if not path.is_file():
        return {}
    table = pd.read_csv(path)
    done = table[table["status"].isin(["completed", "diverged"])]
    return {row["run"]: {k: (None if pd.isna(v) and k == "cause" else v) for k, v in row.items()}
            for row in done.to_dict("records")}


def _status_step(run_dir: Path) -> int:
    """Return the last step in a run's status.json, or -1 when it has none."""
    try:
        return int(json.loads((run_dir / STATUS_FILE).read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def _write_runs(output_dir: Path, rows: list[dict]) -> None:
    replace_atomically(output_dir / RUNS_FILE, lambda temporary: pd.DataFrame(rows).to_csv(temporary, index=False))


def collect_records(output_dir: str | Path) -> pd.DataFrame:
    """Read the records of every run of a comparison into one tidy frame."""
    return read_records(Path(output_dir) / "runs")


def collect_spectra(output_dir: str | Path) -> pd.DataFrame:
    """Read the Jacobian spectra of every run of a comparison into one tidy frame (may be empty)."""
    frames = [read_csv_rows(path) for path in sorted((Path(output_dir) / "runs").glob("*/spectra.csv"))]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
