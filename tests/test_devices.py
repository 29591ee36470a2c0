"""Device options of the commands, and compare's scheduling of runs over devices."""

import threading
import time

import pandas as pd
import pytest
import torch

from conftest import run_cli as run
from rezero_dynamics.cli import compare_devices
from rezero_dynamics.studies import compare
from rezero_dynamics.studies.compare import run_on_workers
from rezero_dynamics.training import TrainConfig

TINY = ["--depth", "2", "--d-model", "16", "--heads", "2", "--seq-len", "16", "--batch-size", "4",
        "--eval-every", "5", "--eval-batches", "1", "--no-progress"]


def fake_gpus(monkeypatch, count):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_compare_devices_from_device(monkeypatch):
    fake_gpus(monkeypatch, 0)
    assert compare_devices("auto", None) == ["cpu"]
    assert compare_devices("cpu", None) == ["cpu"]
    fake_gpus(monkeypatch, 3)
    assert compare_devices("auto", None) == ["cuda:0", "cuda:1", "cuda:2"]
    assert compare_devices("cuda", None) == ["cuda:0", "cuda:1", "cuda:2"]
    assert compare_devices("cuda:1", None) == ["cuda:1"]
    assert compare_devices("cpu", None) == ["cpu"]
    assert compare_devices("auto", ("cuda:2", "cuda:0")) == ["cuda:2", "cuda:0"]
    fake_gpus(monkeypatch, 1)
    assert compare_devices("cuda", None) == ["cuda"]


def test_compare_devices_rejects_missing_gpu(monkeypatch, tmp_path, capsys):
    fake_gpus(monkeypatch, 2)
    status, _, err = run(["compare", *TINY, "--steps", "2", "--devices", "cuda:0,cuda:2",
                          "--output-dir", str(tmp_path / "c")], capsys)
    assert status == 2
    assert "--device cuda:2: no such GPU; this machine has 2" in err
    status, _, err = run(["compare", *TINY, "--devices", "cuda:0,cuda:0", "--output-dir", str(tmp_path / "c")], capsys)
    assert status == 2
    assert "repeated value(s) cuda:0" in err


def test_run_on_workers_spreads_jobs():
    devices = ["fake:0", "fake:1", "fake:2"]
    running = {device: 0 for device in devices}
    max_concurrent = {device: 0 for device in devices}
    lock = threading.Lock()
    started = []

    def fake_run(job, worker):
        device = devices[worker]
        with lock:
            running[device] += 1
            max_concurrent[device] = max(max_concurrent[device], running[device])
            started.append(job)
        time.sleep(0.02 if job % 3 else 0.06)  # uneven run lengths
        with lock:
            running[device] -= 1
        return {"job": job, "device": device}

    outcomes = {}
    run_on_workers(range(10), len(devices), fake_run, lambda index, outcome: outcomes.setdefault(index, outcome))
    assert sorted(outcomes) == list(range(10))
    assert sorted(started) == list(range(10))  # every job exactly once
    assert all(outcomes[i]["job"] == i for i in range(10))
    assert max_concurrent == {device: 1 for device in devices}
    assert {outcome["device"] for outcome in outcomes.values()} == set(devices)


def test_run_on_workers_stops_after_error():
    def fail_on_two(job, worker):
        if job == 2:
            raise RuntimeError("job 2 failed")
        return {}

    finished = []
    with pytest.raises(RuntimeError, match="job 2 failed"):
        run_on_workers(range(50), 1, fail_on_two, lambda index, outcome: finished.append(index))
    assert finished == [0, 1]


def test_compare_in_two_worker_processes(tmp_path):
    base = TrainConfig(depth=2, d_model=16, heads=2, seq_len=16, batch_size=4, steps=3, eval_every=0,
                       eval_batches=1, checkpoint_every=0)
    runs = compare(base, tmp_path, variants=["rezero"], depths=[2], seeds=[0, 1], devices=["cpu", "cpu"])
    assert runs["run"].tolist() == ["rezero-L2-s0", "rezero-L2-s1"]
    assert runs["status"].tolist() == ["completed"] * 2
    assert pd.read_csv(tmp_path / "runs.csv")["run"].tolist() == runs["run"].tolist()
    sequential = compare(base, tmp_path / "sequential", variants=["rezero"], depths=[2], seeds=[1])
    assert sequential["final_loss_bits"].iloc[0] == pytest.approx(runs["final_loss_bits"].iloc[1], rel=1e-6)


def test_train_under_torchrun_needs_output_dir(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    status, _, err = run(["train", *TINY, "--steps", "2"], capsys)
    assert status == 2
    assert "under torchrun, pass --output-dir" in err


def test_train_precision_option(tmp_path, capsys):
    status, _, err = run(["train", *TINY, "--steps", "2", "--precision", "fp8", "--output-dir", str(tmp_path / "a")], capsys)
    assert status == 2
    assert "unknown precision 'fp8'; choose one of fp32, bf16, fp16" in err
    status, out, err = run(["train", *TINY, "--steps", "2", "--precision", "bf16", "--output-dir", str(tmp_path / "b")], capsys)
    assert status == 0, err
    assert "completed at step 1" in out


def test_fp16_run_keeps_scaler_in_checkpoint(tmp_path, capsys):
    output = tmp_path / "run"
    status, _, err = run(["train", *TINY, "--steps", "2", "--precision", "fp16", "--output-dir", str(output)], capsys)
    assert status == 0, err
    state = torch.load(output / "checkpoint.pt", weights_only=True)
    assert state["scaler"]["scale"] > 0
    assert state["config"]["precision"] == "fp16"
