"""Compare variants: train every (variant, depth, seed), one after another or one per GPU.

A run that fails or diverges is recorded in ``runs.csv`` with its cause, and the others
go on. Each run writes its own folder under ``runs/``. Given several devices, runs are
independent jobs: each device gets its own worker process, which takes the next
waiting run whenever it finishes one.

An interrupted comparison (SIGINT or SIGTERM) marks the runs it stopped as
``interrupted`` in ``runs.csv`` and keeps the rows of the runs it finished.
``compare(..., resume=True)`` keeps completed and diverged runs, continues the
interrupted or failed ones from their checkpoints and starts the rest.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from ..residual import GATED_VARIANTS
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
    devices: Sequence[str] | None = None,
    resume: bool = False,
) -> pd.DataFrame:
    """Train every combination of ``variants`` x ``depths`` x ``seeds`` from ``base``.

    ``overrides`` maps a variant name to extra settings for its runs (for example a
    warm-up for post-norm). An entry of ``variants`` may also be a label whose
    overrides name the variant, so one comparison can hold post-norm with and without
    warm-up: ``variants=["post_norm", "post_norm_warmup"]`` with
    ``overrides={"post_norm_warmup": {"variant": "post_norm", "warmup_steps": 1000}}``.
    Runs and rows are named by the label. ``base.alpha_init`` applies to variants with
    an alpha only; the others start from their own definition. ``target`` is the validation metric value whose first
    crossing is reported as ``steps_to_target``. Returns the runs table, also written to
    ``output_dir/runs.csv`` after every run, so an interrupted comparison keeps the rows
    of the runs it finished. The table follows the order of the combinations.

    ``devices`` (e.g. ``["cuda:0", "cuda:1"]``) runs one worker process per device, each
    training one run at a time on its device. None, or a single device, trains in this
    process on ``base.device`` (or that device), one run after another.

    With ``resume=True`` the rows of completed and diverged runs are read back from
    ``runs.csv`` and those runs are skipped. The others resume from their run folders.
    """
    output_dir = Path(output_dir)
    (output_dir / "runs").mkdir(parents=True, exist_ok=True)
    metric = "val_bpc" if base.task == "lm" else "val_accuracy"
    lower_is_better = base.task == "lm"
    jobs = []
    labels = []  # the entry of ``variants`` that each job came from
    for depth in depths:
        for variant in variants:
            for seed in seeds:
                name = run_name(variant, depth, seed)
                settings = {"variant": variant, "depth": depth, "seed": seed, **(overrides or {}).get(variant, {})}
                if settings["variant"] not in GATED_VARIANTS:
                    settings.setdefault("alpha_init", 0.0)  # the base's alpha_init is for the gated variants
                jobs.append((name, dataclasses.replace(base, **settings), output_dir / "runs" / name))
                labels.append(variant)
    for _, config, _ in jobs:  # reject a bad depth or seed before the first run starts
        config.validate()
    devices = list(devices or [])
    if len(devices) == 1:
        jobs = [(name, dataclasses.replace(config, device=devices[0]), run_dir) for name, config, run_dir in jobs]

    rows: dict[int, dict] = {}
    if resume:
        _check_settings_unchanged(jobs)
        kept = _finished_runs(output_dir)
        rows = {index: kept[job[0]] for index, job in enumerate(jobs) if job[0] in kept}
    pending = [index for index in range(len(jobs)) if index not in rows]
    bar = tqdm(total=len(jobs), initial=len(rows), desc="runs", disable=not progress)

    def finished(index: int, outcome: dict) -> None:
        name, config, run_dir = jobs[index]
        row = {"run": name, "variant": labels[index], "depth": config.depth, "seed": config.seed, "metric": metric}
        row.update(outcome)
        row.update(summarise_run(run_dir, target, lower_is_better, metric))
        rows[index] = row
        _write_runs(output_dir, [rows[i] for i in sorted(rows)])
        bar.update()

    # One single-process pool per device ("spawn": CUDA cannot be used in a forked child).
    context = multiprocessing.get_context("spawn")
    workers = [ProcessPoolExecutor(1, mp_context=context) for _ in devices] if len(devices) > 1 else []

    def continues(index: int) -> bool:
        return resume and (jobs[index][2] / "config.json").is_file()

    def run_in_worker(index: int, worker: int) -> dict:
        name, config, run_dir = jobs[index]
        config = dataclasses.replace(config, device=devices[worker])
        return workers[worker].submit(train_job, name, config, run_dir, continues(index)).result()

    try:
        if workers:
            run_on_workers(pending, len(workers), run_in_worker, lambda position, outcome: finished(pending[position], outcome))
        else:
            for index in pending:
                finished(index, train_job(*jobs[index], continues(index)))
    except BaseException as error:
        # NOTE: the tests interrupt only the single-process path; the worker path is untested here.
        if not isinstance(error, Exception):  # SIGINT or SIGTERM: mark the runs it stopped
            for index in pending:
                if index not in rows and jobs[index][2].exists():
                    step = _status_step(jobs[index][2])
                    finished(index, {"status": "interrupted", "step": step, "cause": f"interrupted ({type(error).__name__})"})
        raise
    finally:
        bar.close()
        for worker in workers:
            worker.shutdown(wait=True, cancel_futures=True)
    return pd.DataFrame([rows[i] for i in sorted(rows)])


def train_job(name: str, config: TrainConfig, run_dir: Path, resume: bool = False) -> dict:
    """Train one run and return its status, last step and cause; a failure is returned, not raised."""
    try:
        result = train(config, run_dir, run_name=name, progress=False, resume=resume)
        return {"status": result.status, "step": result.step, "cause": result.cause}
    except Exception as error:  # one broken run must not stop the comparison
        log.error("run %s failed: %s: %s", name, type(error).__name__, error)
        return {"status": "failed", "step": -1, "cause": f"{type(error).__name__}: {error}"}


def run_on_workers(
    jobs: Sequence,
    workers: int,
    run: Callable[[object, int], dict],
    finished: Callable[[int, dict], None],
) -> None:
    """Run every job once on one of ``workers`` workers, each worker taking the next waiting job.

    ``run(job, worker)`` runs one job on worker ``worker`` (0 ... workers-1, one job at a
    time each, from its own thread) and returns its outcome. ``finished(index, outcome)``
    is called in the calling thread, in order of completion. An exception in ``run``
    stops the waiting jobs and is raised here after the running ones end.
    """
    waiting: queue.SimpleQueue = queue.SimpleQueue()
    for index, job in enumerate(jobs):
        waiting.put((index, job))
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def feed(worker: int) -> None:
        while not stop.is_set():
            try:
                index, job = waiting.get_nowait()
            except queue.Empty:
                break
            try:
                done.put((index, run(job, worker), None))
            except BaseException as error:  # reported to the calling thread
                stop.set()
                done.put((index, None, error))
        done.put(None)

    threads = [threading.Thread(target=feed, args=(worker,), daemon=True) for worker in range(workers)]
    for thread in threads:
        thread.start()
    error: BaseException | None = None
    try:
        remaining = len(threads)
        while remaining:
            item = done.get()
            if item is None:
                remaining -= 1
            elif item[2] is not None:
                error = error or item[2]
            else:
                finished(item[0], item[1])
    finally:
        stop.set()
    if error is not None:
        raise error


def _check_settings_unchanged(jobs: Sequence[tuple[str, TrainConfig, Path]]) -> None:
    """Raise ValueError if a run folder was started with other settings than its job's.

    The device is not compared: a resumed comparison may run on other devices.
    """
    for name, config, run_dir in jobs:
        path = run_dir / "config.json"
        if not path.is_file():
            continue
        saved, settings = json.loads(path.read_text()), dataclasses.asdict(config)
        changed = sorted(k for k in settings if k != "device" and saved.get(k) != settings[k])
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
