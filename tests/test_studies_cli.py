"""train, compare, reproduce and plot, from the library and the command line."""

import json

import pandas as pd
import pytest

from conftest import run_cli as run
from rezero_dynamics.studies import compare
from rezero_dynamics.studies.reproduce import speedup_table, verdict
from rezero_dynamics.training import TrainConfig

TINY = ["--depth", "2", "--d-model", "16", "--heads", "2", "--seq-len", "16", "--batch-size", "4",
        "--eval-every", "5", "--eval-batches", "1", "--no-progress"]




def test_compare_keeps_going_after_divergence(tmp_path):
    base = TrainConfig(depth=4, d_model=16, heads=2, seq_len=16, batch_size=4, steps=12, eval_every=4,
                       eval_batches=1, checkpoint_every=0)
    runs = compare(
        base, tmp_path, variants=["post_norm", "rezero"], depths=[4], target=100.0,
        overrides={"post_norm": {"lr": 1e6, "optimizer": "sgd"}},
    )
    status = dict(zip(runs["variant"], runs["status"]))
    assert status == {"post_norm": "diverged", "rezero": "completed"}
    assert runs.set_index("variant").loc["rezero", "steps_to_target"] == 0
    written = pd.read_csv(tmp_path / "runs.csv")
    assert written["run"].tolist() == ["post_norm-L4-s0", "rezero-L4-s0"]
    assert (tmp_path / "runs" / "post_norm-L4-s0" / "records.csv").exists()


def test_train_command(tmp_path, capsys):
    output = tmp_path / "run"
    status, out, err = run(["train", *TINY, "--steps", "6", "--spectrum-every", "5", "--spectrum-tokens", "4",
                            "--spectrum-inputs", "1", "--output-dir", str(output)], capsys)
    assert status == 0, err
    assert "completed at step 5" in out
    for name in ("config.json", "records.csv", "spectra.csv", "checkpoint.pt", "status.json"):
        assert (output / name).exists(), name
    assert json.loads((output / "status.json").read_text())["status"] == "completed"


def test_train_resume_command(tmp_path, capsys):
    output = tmp_path / "run"
    assert run(["train", *TINY, "--steps", "4", "--output-dir", str(output)], capsys)[0] == 0
    status, _, err = run(["train", *TINY, "--steps", "4", "--output-dir", str(output)], capsys)
    assert status == 2
    assert "not an empty folder" in err
    status, out, err = run(["train", *TINY, "--steps", "4", "--output-dir", str(output), "--resume"], capsys)
    assert status == 0, err


def test_train_diverged_exit_status(tmp_path, capsys):
    status, out, _ = run(["train", *TINY, "--variant", "post_norm", "--depth", "6", "--steps", "20", "--lr", "1e6",
                          "--optimizer", "sgd", "--output-dir", str(tmp_path / "bad")], capsys)
    assert status == 3
    assert "diverged" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--optimizer", "lion"], "unknown optimizer 'lion'"),
        (["--task", "vision"], "unknown task 'vision'"),
        (["--data", "enwik8"], "needs data_path (--data-path)"),
        (["--data", "enwik8", "--data-path", "/nonexistent/enwik8"], "enwik8 not found"),
        (["--lr", "nan"], "must be a finite number"),
        (["--steps", "0"], "steps must be a positive integer, got 0"),
        (["--variant", "prenorm"], "unknown residual variant 'prenorm'"),
    ],
)
def test_train_bad_arguments(tmp_path, capsys, arguments, message):
    status, _, err = run(["train", *TINY, *arguments, "--output-dir", str(tmp_path / "r")], capsys)
    assert status == 2
    assert message in err
    assert "Traceback" not in err


def test_plot_command(tmp_path, capsys):
    output = tmp_path / "run"
    assert run(["train", *TINY, "--variant", "rezero", "--steps", "4", "--output-dir", str(output)], capsys)[0] == 0
    status, out, err = run(["plot", str(output)], capsys)
    assert status == 0, err
    names = sorted(p.name for p in (output / "figures").iterdir())
    assert names == ["alpha_run.png", "grad_norms.png", "training_curves.png"]


def test_plot_missing_folder(tmp_path, capsys):
    status, _, err = run(["plot", str(tmp_path / "nothing")], capsys)
    assert status == 2
    assert "is not a folder" in err


def runs_frame(steps):
    return pd.DataFrame(
        {
            "run": [f"{v}-L32-s0" for v in steps], "variant": list(steps), "depth": 32, "seed": 0,
            "status": "completed", "step": 199, "cause": None, "final_loss_bits": 2.0, "final_metric": 3.0,
            "steps_to_target": list(steps.values()), "metric": "val_bpc",
        }
    )


def test_report_speedup_and_verdict():
    runs = runs_frame({"post_norm": float("nan"), "pre_norm": 150.0, "rezero": 100.0})
    table = speedup_table(runs).set_index("variant")
    assert table.loc["rezero", "speedup_vs_best_baseline"] == pytest.approx(0.5)
    assert table.loc["pre_norm", "speedup_vs_best_baseline"] == pytest.approx(100 / 150 - 1)
    lines = verdict(runs, 3.2)
    assert lines == [
        "- Depth 32: ReZero reached 3.2 bits per character at step 100, the fastest baseline (pre_norm) "
        "at step 150: +50% for ReZero, so the paper's effect appears here."
    ]


def test_report_verdict_when_rezero_is_slower():
    runs = runs_frame({"pre_norm": 80.0, "rezero": 100.0})
    assert "does not appear here" in verdict(runs, 3.2)[0]


def test_report_verdict_when_rezero_misses_target():
    runs = runs_frame({"pre_norm": 80.0, "rezero": float("nan")})
    assert "did not reach 3.2" in verdict(runs, 3.2)[0]


def test_plot_survives_infinite_gradients(tmp_path, capsys):
    base = TrainConfig(depth=6, d_model=16, heads=2, seq_len=16, batch_size=4, steps=10, eval_every=0,
                       eval_batches=1, checkpoint_every=0, lr=1e6, optimizer="sgd")
    compare(base, tmp_path, variants=["post_norm", "rezero"], depths=[6])
    status, out, err = run(["plot", str(tmp_path)], capsys)
    assert status == 0, err
    assert "grad_norms.png" in out


def test_read_records_prefers_combined_file(tmp_path):
    from rezero_dynamics.tracking import read_records

    base = TrainConfig(depth=2, d_model=16, heads=2, seq_len=16, batch_size=4, steps=3, eval_every=0,
                       eval_batches=1, checkpoint_every=0)
    compare(base, tmp_path, variants=["rezero"], depths=[2])
    runs_only = read_records(tmp_path)
    runs_only.to_csv(tmp_path / "records.csv", index=False)
    assert len(read_records(tmp_path)) == len(runs_only)


def test_resume_without_checkpoint(tmp_path, capsys):
    status, _, err = run(["train", *TINY, "--resume", "--output-dir", str(tmp_path / "none")], capsys)
    assert status == 2
    assert "no checkpoint.pt in" in err
    assert not (tmp_path / "none").exists()
