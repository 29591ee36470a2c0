"""Interruption and crash safety: SIGINT and SIGTERM during train and compare, and
``kill -9`` at random moments, followed by a resume that must match an uninterrupted run."""

from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import run_cli as run
from rezero_dynamics.data import CharCorpus
from rezero_dynamics.tracking import RECORD_COLUMNS, read_csv_rows, read_records
from rezero_dynamics.training import TrainConfig, load_checkpoint, train

TRAIN = ["--depth", "2", "--d-model", "16", "--heads", "2", "--seq-len", "16", "--batch-size", "4",
         "--eval-every", "20", "--eval-batches", "1", "--checkpoint-every", "5", "--steps", "120", "--no-progress"]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120.0) -> None:
    """Poll until ``path`` exists; fail if the process ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(f"the process ended with {process.returncode} before {path} appeared: "
                                 f"{process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


@pytest.fixture
def one_thread():
    """Run single-threaded: with two threads, sums in a child process and in this one
    differed in their last bits on a 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _start_cli(arguments: list[str]) -> subprocess.Popen:
    # The same thread count as this process, so floating-point sums match the in-process runs.
    environment = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "MKL_NUM_THREADS": "1"}
    # A child inherits ignored signals (pytest started under nohup ignores SIGINT), so restore them.
    return subprocess.Popen([sys.executable, "-m", "rezero_dynamics", *arguments], stderr=subprocess.PIPE,
                            text=True, env=environment, preexec_fn=_default_signals)


def _default_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sorted_records(run_dir: Path) -> pd.DataFrame:
    frame = read_records(run_dir)
    return frame.sort_values(["step", "quantity", "layer"], kind="stable").reset_index(drop=True)


def _assert_same_weights(first: Path, second: Path) -> None:
    model_a = load_checkpoint(first / "checkpoint.pt")["model"]
    model_b = load_checkpoint(second / "checkpoint.pt")["model"]
    assert model_a.keys() == model_b.keys()
    for name in model_a:
        assert torch.equal(model_a[name], model_b[name]), name


@pytest.mark.parametrize(("signal_number", "exit_status", "message"), [
    (signal.SIGINT, 130, "interrupted; records and the last checkpoint are kept; continue with --resume"),
    (signal.SIGTERM, 143, "terminated (SIGTERM); records and the last checkpoint are kept; continue with --resume"),
])
def test_train_signal_then_resume(tmp_path, capsys, signal_number, exit_status, message, one_thread):
    # The same folder name in both, because it is the run name in every record row.
    reference, interrupted = tmp_path / "reference" / "run", tmp_path / "interrupted" / "run"
    assert run(["train", *TRAIN, "--output-dir", str(reference)], capsys)[0] == 0

    process = _start_cli(["train", *TRAIN, "--output-dir", str(interrupted)])
    _wait_for(interrupted / "checkpoint.pt", process)  # the checkpoint of step 5 exists
    process.send_signal(signal_number)
    _, err = process.communicate(timeout=120)
    assert process.returncode == exit_status, err
    assert message in err
    assert "Traceback" not in err

    status = json.loads((interrupted / "status.json").read_text())
    assert status["status"] == "interrupted"
    reached = status["step"]
    assert 5 <= reached < 119
    assert load_checkpoint(interrupted / "checkpoint.pt")["step"] == reached
    assert read_records(interrupted)["step"].max() == reached  # flushed up to the step reached

    status_code, out, err = run(["train", *TRAIN, "--output-dir", str(interrupted), "--resume"], capsys)
    assert status_code == 0, err
    assert "completed at step 119" in out
    pd.testing.assert_frame_equal(_sorted_records(interrupted), _sorted_records(reference))
    _assert_same_weights(interrupted, reference)


def test_compare_interrupted_then_resumed(tmp_path, capsys, one_thread):
    options = [*TRAIN[:-3], "--steps", "60", "--no-progress", "--depths", "2"]
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    assert run(["compare", *options, "--variants", "pre_norm", "--output-dir", str(reference)], capsys)[0] == 0

    process = _start_cli(["compare", *options, "--variants", "rezero,pre_norm", "--output-dir", str(interrupted)])
    _wait_for(interrupted / "runs" / "pre_norm-L2-s0" / "checkpoint.pt", process)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "finished runs are kept in runs.csv; continue with --resume" in err

    runs = pd.read_csv(interrupted / "runs.csv").set_index("run")
    assert runs.loc["rezero-L2-s0", "status"] == "completed"
    assert runs.loc["pre_norm-L2-s0", "status"] == "interrupted"
    finished_records = (interrupted / "runs" / "rezero-L2-s0" / "records.csv").read_bytes()

    status, _, err = run(["compare", *options, "--variants", "rezero,pre_norm", "--output-dir", str(interrupted),
                          "--resume"], capsys)
    assert status == 0, err
    runs = pd.read_csv(interrupted / "runs.csv")
    assert runs["run"].tolist() == ["rezero-L2-s0", "pre_norm-L2-s0"]
    assert runs["status"].tolist() == ["completed", "completed"]
    # The completed run was skipped, not trained again.
    assert (interrupted / "runs" / "rezero-L2-s0" / "records.csv").read_bytes() == finished_records
    resumed, straight = interrupted / "runs" / "pre_norm-L2-s0", reference / "runs" / "pre_norm-L2-s0"
    pd.testing.assert_frame_equal(_sorted_records(resumed), _sorted_records(straight))
    _assert_same_weights(resumed, straight)


def test_compare_resume_with_other_settings(tmp_path, capsys):
    options = [*TRAIN[:-3], "--steps", "3", "--no-progress", "--depths", "2", "--variants", "rezero"]
    assert run(["compare", *options, "--output-dir", str(tmp_path / "c")], capsys)[0] == 0
    status, _, err = run(["compare", *options, "--lr", "0.5", "--output-dir", str(tmp_path / "c"), "--resume"], capsys)
    assert status == 2
    assert "resume with settings that differ from run rezero-L2-s0's (lr)" in err


# -- kill -9 at random moments ---------------------------------------------------------

KILL_CONFIG = TrainConfig(depth=2, d_model=8, heads=2, seq_len=8, batch_size=2, steps=60, eval_every=10,
                          eval_batches=1, checkpoint_every=4, spectrum_every=10, spectrum_inputs=1,
                          spectrum_tokens=2)
REPETITIONS = 20


@pytest.fixture(scope="module")
def small_corpus():
    text = CharCorpus.default()
    return CharCorpus(text.vocabulary, text.train[:5_000], text.validation[:1_000], text.test[:1_000], "pydoc slice")


def _train_with_slow_checkpoints(run_dir: Path, corpus: CharCorpus) -> None:
    """Child process: train, writing each checkpoint in small chunks so kills land inside writes."""
    # tqdm guards every bar, even a disabled one, with a multiprocessing lock that a forked
    # child shares with its parent. A child killed while holding it would block the
    # parent's next bar forever, so the child makes locks of its own.
    import threading

    import tqdm.std

    from rezero_dynamics.training import loop

    tqdm.std.TqdmDefaultWriteLock.mp_lock = multiprocessing.RLock()
    tqdm.std.TqdmDefaultWriteLock.th_lock = threading.RLock()
    for bar_class in {tqdm.std.tqdm, loop.tqdm}:
        bar_class.set_lock(tqdm.std.TqdmDefaultWriteLock())
    torch.set_num_threads(1)
    real_save = torch.save

    def chunked_save(obj, path):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        data = buffer.getvalue()
        with open(path, "wb") as handle:
            for start in range(0, len(data), 4096):
                handle.write(data[start : start + 4096])
                handle.flush()
                time.sleep(0.0005)

    torch.save = chunked_save
    train(KILL_CONFIG, run_dir, corpus=corpus)
    os._exit(0)


def _assert_files_parse(run_dir: Path) -> None:
    for name in ("config.json", "status.json"):
        if (run_dir / name).exists():
            assert isinstance(json.loads((run_dir / name).read_text()), dict), name
    if (run_dir / "records.csv").exists():
        text = (run_dir / "records.csv").read_text()
        complete = text[: text.rfind("\n") + 1]
        rows = list(csv.reader(io.StringIO(complete)))
        if rows:
            assert tuple(rows[0]) == RECORD_COLUMNS
        for row in rows[1:]:
            assert len(row) == len(RECORD_COLUMNS), row
            int(row[1])
            float(row[4])
        frame = read_records(run_dir)
        assert frame[["run", "step", "quantity", "layer"]].notna().all().all()
    if (run_dir / "spectra.csv").exists():
        frame = read_csv_rows(run_dir / "spectra.csv")
        if len(frame.columns):
            assert frame.notna().all().all()
    if (run_dir / "checkpoint.pt").exists():
        assert isinstance(load_checkpoint(run_dir / "checkpoint.pt")["step"], int)


def test_kill_nine_then_resume(tmp_path, small_corpus, one_thread):
    reference = tmp_path / "reference" / "run"
    train(KILL_CONFIG, reference, corpus=small_corpus)
    context = multiprocessing.get_context("fork")
    # The kill delays are spread over the time an unkilled child takes, fork included.
    started = time.perf_counter()
    timed = context.Process(target=_train_with_slow_checkpoints, args=(tmp_path / "timed" / "run", small_corpus))
    timed.start()
    timed.join()
    duration = time.perf_counter() - started
    assert timed.exitcode == 0
    expected_records = _sorted_records(reference)
    expected_spectra = read_csv_rows(reference / "spectra.csv").sort_values(["step", "index"]).reset_index(drop=True)

    delays = random.Random(0)
    outcomes = {"no checkpoint yet": 0, "inside a checkpoint write": 0, "finished before the kill": 0}
    landed = attempt = 0
    while landed < REPETITIONS:
        assert attempt < 3 * REPETITIONS, f"only {landed} of {attempt} kills landed during the run: {outcomes}"
        run_dir = tmp_path / f"killed-{attempt}" / "run"
        child = context.Process(target=_train_with_slow_checkpoints, args=(run_dir, small_corpus))
        child.start()
        delay = delays.uniform(0.0, duration)
        time.sleep(delay / 20 if attempt < 2 else delay)  # the first kills land before any checkpoint
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        attempt += 1
        if child.exitcode == 0:  # it ran faster than the timed child, so draw shorter delays
            outcomes["finished before the kill"] += 1
            duration *= 0.8
            continue
        landed += 1
        if (run_dir / "checkpoint.pt.tmp").exists():
            outcomes["inside a checkpoint write"] += 1
        if not (run_dir / "checkpoint.pt").exists():
            outcomes["no checkpoint yet"] += 1

        _assert_files_parse(run_dir)
        result = train(KILL_CONFIG, run_dir, corpus=small_corpus, resume=(run_dir / "config.json").exists())
        assert result.status == "completed", attempt
        pd.testing.assert_frame_equal(_sorted_records(run_dir), expected_records, obj=f"records {attempt}")
        spectra = read_csv_rows(run_dir / "spectra.csv").sort_values(["step", "index"]).reset_index(drop=True)
        pd.testing.assert_frame_equal(spectra, expected_spectra, obj=f"spectra {attempt}")
        _assert_same_weights(run_dir, reference)
    print(f"kill -9 outcomes of {REPETITIONS} kills during the run ({attempt} attempts): {outcomes}")


def test_partial_row_dropped_on_read_and_reopen(tmp_path):
    from rezero_dynamics.tracking import RecordWriter

    path = tmp_path / "records.csv"
    RecordWriter(path).append([("run", 0, "loss", "all", 1.5), ("run", 1, "loss", "all", 1.25)])
    with open(path, "a") as handle:
        handle.write("run,2,loss,al")  # a row cut short by a crash
    assert read_records(path)["step"].tolist() == [0, 1]

    RecordWriter(path).append([("run", 2, "loss", "all", 1.0)])  # reopening cuts the partial row off
    assert path.read_text().splitlines()[-2:] == ["run,1,loss,all,1.25", "run,2,loss,all,1.0"]
    assert read_records(path)["value"].tolist() == [1.5, 1.25, 1.0]


def test_partial_header_reads_empty(tmp_path):
    path = tmp_path / "spectra.csv"
    path.write_text("run,st")
    assert read_csv_rows(path).empty
    assert list(read_records(path).columns) == list(RECORD_COLUMNS)


def test_resume_before_first_checkpoint(tmp_path, small_corpus):
    config = TrainConfig(depth=1, d_model=8, heads=2, seq_len=8, batch_size=2, steps=3, eval_every=0,
                         eval_batches=1, checkpoint_every=0)
    reference = train(config, tmp_path / "a" / "run", corpus=small_corpus).run_dir
    killed = tmp_path / "b" / "run"
    killed.mkdir(parents=True)
    (killed / "config.json").write_text((reference / "config.json").read_text())
    (killed / "records.csv").write_text("run,step,quantity,layer,value\nrun,0,loss,all,9.0\nrun,1,lo")
    assert train(config, killed, corpus=small_corpus, resume=True).status == "completed"
    pd.testing.assert_frame_equal(_sorted_records(killed), _sorted_records(reference))


def test_plain_pickle_checkpoint_no_warning(tmp_path):
    import pickle
    import warnings

    from rezero_dynamics.training import CheckpointError, load_checkpoint

    path = tmp_path / "checkpoint.pt"
    path.write_bytes(pickle.dumps({"step": 1}, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(CheckpointError, match="was not loaded"):
            load_checkpoint(path)


def _tiny_run_statuses(tmp_path, monkeypatch, stop_at: int | None):
    """Train 6 steps with checkpoints every 2; return every status.json written and the result."""
    from rezero_dynamics.training import loop
    from rezero_dynamics.training.step import TrainingStep

    written = []
    write_json = loop._write_json

    def record(path, payload):
        if path.name == loop.STATUS_FILE:
            written.append(dict(payload))
        write_json(path, payload)

    monkeypatch.setattr(loop, "_write_json", record)
    if stop_at is not None:
        call = TrainingStep.__call__

        def stop(self, step, batch):
            if step == stop_at:  # as a second SIGINT that stops at once, between checkpoints
                raise KeyboardInterrupt
            return call(self, step, batch)

        monkeypatch.setattr(TrainingStep, "__call__", stop)
    config = TrainConfig(depth=1, d_model=8, heads=2, seq_len=8, batch_size=2, steps=6, eval_every=0,
                         eval_batches=1, checkpoint_every=2)
    corpus = CharCorpus.from_text("abcdefgh" * 200)
    try:
        train(config, tmp_path / "run", corpus=corpus)
    except KeyboardInterrupt:
        pass
    return written


def test_status_step_follows_checkpoints(tmp_path, monkeypatch):
    written = _tiny_run_statuses(tmp_path, monkeypatch, stop_at=None)
    assert [(w["status"], w["step"]) for w in written] == [
        ("running", -1), ("running", 2), ("running", 4), ("running", 5), ("completed", 5),
    ]


def test_status_step_is_checkpoint_when_interrupted(tmp_path, monkeypatch):
    written = _tiny_run_statuses(tmp_path, monkeypatch, stop_at=3)
    assert written[-1]["status"] == "interrupted"
    assert written[-1]["step"] == 2
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2


def test_sigterm_after_completion_exits_zero(tmp_path, monkeypatch, capsys):
    import rezero_dynamics.training as training
    from rezero_dynamics.cli import Terminated, main

    real_train = training.train

    def train_then_signal(*args, **kwargs):
        real_train(*args, **kwargs)
        raise Terminated()  # SIGTERM right after the completed status was written

    monkeypatch.setattr(training, "train", train_then_signal)
    argv = ["train", "--depth", "1", "--d-model", "8", "--heads", "2", "--seq-len", "8", "--batch-size", "2",
            "--steps", "2", "--eval-every", "0", "--eval-batches", "1", "--no-progress",
            "--output-dir", str(tmp_path / "run")]
    assert main(argv) == 0
    assert "SIGTERM arrived after the run completed" in capsys.readouterr().err
