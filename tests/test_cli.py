import json
import math

import pandas as pd
import pytest
import torch

from conftest import run_cli as run

SMALL = ["spectrum", "--depths", "1,3", "--width", "8", "--heads", "2", "--seq-len", "3", "--num-inputs", "2", "--no-progress"]




def test_spectrum_writes_results(tmp_path, capsys):
    output = tmp_path / "result"
    status, out, err = run([*SMALL, "--output-dir", str(output)], capsys)
    assert status == 0, err
    assert sorted(p.name for p in output.iterdir()) == [
        "config.json", "log10_singular_values.png", "singular_values.csv", "summary.csv",
    ]
    values = pd.read_csv(output / "singular_values.csv")
    # 3 variants x 2 depths x 2 inputs x (3 tokens * 8 features) singular values
    assert len(values) == 3 * 2 * 2 * 24
    rezero = values[values["variant"] == "rezero"]["singular_value"]
    assert rezero.sub(1.0).abs().max() < 1e-12
    config = json.loads((output / "config.json").read_text())
    assert config["depths"] == [1, 3]
    assert "post_norm" in out
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_spectrum_mlp_gaussian(tmp_path, capsys):
    output = tmp_path / "mlp"
    status, _, err = run(
        ["spectrum", "--model", "mlp", "--inputs", "gaussian", "--variants", "none,rezero", "--depths", "2",
         "--width", "6", "--num-inputs", "2", "--dtype", "float32", "--no-progress", "--output-dir", str(output)],
        capsys,
    )
    assert status == 0, err
    summary = pd.read_csv(output / "summary.csv")
    assert set(summary["variant"]) == {"none", "rezero"}
    assert set(summary["dtype"]) == {"float32"}
    assert summary.loc[summary["variant"] == "rezero", "chi"].sub(1).abs().max() < 1e-6


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--variants", "rezero,postnorm"], "unknown value(s) 'postnorm'; choose from"),
        (["--depths", "0"], "must be a positive integer, got 0"),
        (["--depths", "4,x"], "invalid integer 'x'"),
        (["--depths", "4,4"], "repeated value(s) 4; list each once"),
        (["--sigma-w", "-1"], "must be positive"),
        (["--width", "10", "--heads", "4"], "width=10 is not divisible by heads=4"),
        (["--alpha-init", "nan"], "must be a finite number"),
        (["--memory-budget", "-1"], "must be positive"),
        (["--model", "cnn"], "invalid choice: 'cnn'"),
    ],
)
def test_spectrum_bad_arguments(tmp_path, capsys, arguments, message):
    output = tmp_path / "never"
    status, _, err = run(["spectrum", *arguments, "--output-dir", str(output)], capsys)
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_spectrum_unwritable_output(tmp_path, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    status, _, err = run([*SMALL, "--output-dir", str(blocker / "out")], capsys)
    assert status == 2
    assert "cannot be written" in err
    assert "choose a writable path" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt"]


def test_spectrum_keeps_existing_results(tmp_path, capsys):
    output = tmp_path / "old"
    output.mkdir()
    (output / "keep.csv").write_text("1")
    status, _, err = run([*SMALL, "--output-dir", str(output)], capsys)
    assert status == 2
    assert "pass --overwrite" in err
    status, _, err = run([*SMALL, "--output-dir", str(output), "--overwrite"], capsys)
    assert status == 2
    assert "also contains keep.csv" in err
    assert [p.name for p in output.iterdir()] == ["keep.csv"]


def test_spectrum_overwrites_earlier_result(tmp_path, capsys):
    output = tmp_path / "result"
    assert run([*SMALL, "--output-dir", str(output)], capsys)[0] == 0
    first = (output / "summary.csv").read_text()
    status, _, err = run([*SMALL, "--seed", "1", "--output-dir", str(output), "--overwrite"], capsys)
    assert status == 0, err
    assert (output / "summary.csv").read_text() != first
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


@pytest.mark.parametrize("target", [".", "..", ""])
def test_spectrum_never_replaces_working_folder(tmp_path, capsys, monkeypatch, target):
    work = tmp_path / "work"
    work.mkdir()
    (work / "precious.txt").write_text("keep me")
    monkeypatch.chdir(work)
    status, _, err = run([*SMALL, "--output-dir", target, "--overwrite"], capsys)
    assert status == 2
    assert "name a new folder" in err
    assert (work / "precious.txt").read_text() == "keep me"


def test_spectrum_folder_permissions(tmp_path, capsys):
    output = tmp_path / "result"
    assert run([*SMALL, "--output-dir", str(output)], capsys)[0] == 0
    assert output.stat().st_mode & 0o055 == 0o055 & ~_umask()


def _umask():
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_spectrum_sigterm_leaves_nothing(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    output = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "rezero_dynamics", "spectrum", "--depths", "64", "--variants", "post_norm",
         "--num-inputs", "8", "--no-progress", "--output-dir", str(output)],
        stderr=subprocess.PIPE, text=True,
    )
    time.sleep(6)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 143, err
    assert "terminated (SIGTERM); no results were written" in err
    assert list(tmp_path.iterdir()) == []


def test_spectrum_failure_writes_nothing(tmp_path, capsys):
    output = tmp_path / "too-big"
    status, _, err = run([*SMALL, "--method", "exact", "--memory-budget", "1e-9", "--output-dir", str(output)], capsys)
    assert status == 2
    assert "over the memory budget" in err
    assert list(tmp_path.iterdir()) == []


def test_spectrum_cuda_unavailable(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    status, _, err = run([*SMALL, "--device", "cuda", "--output-dir", str(tmp_path / "x")], capsys)
    assert status == 2
    assert "CUDA is not available" in err


def test_float_formatting_in_summary(tmp_path, capsys):
    status, out, _ = run([*SMALL, "--variants", "rezero", "--depths", "2", "--output-dir", str(tmp_path / "r")], capsys)
    assert status == 0
    chi_line = [line for line in out.splitlines() if "rezero" in line][0]
    assert math.isclose(float(chi_line.split()[2]), 1.0)


@pytest.mark.parametrize("method", ["lanczos", "slq"])
def test_spectrum_matrix_free_methods(tmp_path, capsys, method):
    output = tmp_path / method
    status, out, err = run(
        [*SMALL, "--depths", "2", "--method", method, "--k", "3", "--probes", "3", "--lanczos-steps", "10",
         "--output-dir", str(output)],
        capsys,
    )
    assert status == 0, err
    assert f"method: {method}" in out
    values = pd.read_csv(output / ("density.csv" if method == "slq" else "singular_values.csv"))
    if method == "lanczos":
        rezero = values[values["variant"] == "rezero"]
        assert sorted(rezero["which"].unique()) == ["largest", "smallest"]
        assert rezero["singular_value"].sub(1.0).abs().max() < 1e-12
    else:
        assert {"log10_singular_value", "density", "spread"} <= set(values.columns)
    assert json.loads((output / "config.json").read_text())["method_used"] == method


def test_spectrum_auto_picks_slq_over_budget(tmp_path, capsys):
    output = tmp_path / "auto"
    # 24 x 24 float64 needs 9 KiB with its SVD copy; a 4 KiB budget forces the matrix-free path.
    status, out, err = run(
        [*SMALL, "--depths", "1", "--variants", "rezero", "--probes", "2", "--lanczos-steps", "5",
         "--memory-budget", str(4 / 2**20), "--output-dir", str(output)],
        capsys,
    )
    assert status == 0, err
    assert "method: slq (picked by auto)" in out


def test_spectrum_lanczos_k_too_large(tmp_path, capsys):
    status, _, err = run([*SMALL, "--method", "lanczos", "--k", "2000", "--output-dir", str(tmp_path / "k")], capsys)
    assert status == 2
    assert "k=2000 exceeds the Jacobian's size 24 (3 x 8); use --k 24 or less" in err


def test_spectrum_theory_overlay(tmp_path, capsys):
    output = tmp_path / "theory"
    status, _, err = run(
        ["spectrum", "--model", "mlp", "--activation", "linear", "--variants", "none", "--depths", "1,4",
         "--width", "64", "--num-inputs", "2", "--inputs", "gaussian", "--theory", "--no-progress",
         "--output-dir", str(output)],
        capsys,
    )
    assert status == 0, err
    assert (output / "log10_singular_values.png").exists()
    status, _, err = run([*SMALL, "--theory", "--output-dir", str(tmp_path / "no")], capsys)
    assert status == 2
    assert "no theory curve covers this setting" in err


def test_spectrum_residual_theory_overlay(tmp_path, capsys):
    options = ["spectrum", "--model", "mlp", "--activation", "linear", "--variants", "rezero", "--depths", "16",
               "--width", "32", "--num-inputs", "1", "--inputs", "gaussian", "--theory", "--no-progress"]
    status, _, err = run([*options, "--alpha-init", "0.2", "--output-dir", str(tmp_path / "ok")], capsys)
    assert status == 0, err
    assert (tmp_path / "ok" / "log10_singular_values.png").exists()
    status, _, err = run([*options, "--alpha-init", "1.0", "--output-dir", str(tmp_path / "far")], capsys)
    assert status == 2
    assert "at alpha=1 and depth 16 its mean squared singular value is off by" in err
    status, _, err = run([*options, "--alpha-init", "-0.2", "--output-dir", str(tmp_path / "negative")], capsys)
    assert status == 0, err
    status, _, err = run([*options, "--alpha-init", "0", "--output-dir", str(tmp_path / "zero")], capsys)
    assert status == 2
    assert "at alpha = 0 the network is the identity map" in err


def test_train_defaults_follow_task_and_model():
    from rezero_dynamics import cli

    parser = cli.build_parser()
    classifier = cli._train_config(parser.parse_args(["train", "--task", "classifier"]))
    assert classifier.data == "digits"
    assert classifier.depth == 12
    resnet = cli._train_config(parser.parse_args(["train", "--task", "classifier", "--classifier-model", "resnet"]))
    assert resnet.depth == 20
    chosen = cli._train_config(parser.parse_args(["train", "--task", "classifier", "--classifier-model", "resnet",
                                                  "--depth", "56", "--data", "digits"]))
    assert (chosen.depth, chosen.data) == (56, "digits")
    assert cli._train_config(parser.parse_args(["train"])).data == "default"


def test_depth_past_memory_rejected(monkeypatch):
    from rezero_dynamics import _checks
    from rezero_dynamics.studies import SpectrumConfig
    from rezero_dynamics.training import TrainConfig

    monkeypatch.setattr(_checks, "memory_bytes", lambda: 2**20)  # 1 MiB
    # MLP of width 64 in float64: 64 * 64 * 8 = 32 KiB per block, so 32 blocks fill 1 MiB.
    SpectrumConfig(model="mlp", width=64, depths=(32,)).validate()
    with pytest.raises(ValueError, match=r"depth 33 needs about 0.00101 GiB .*\(4096 per block, 8 bytes each\)"):
        SpectrumConfig(model="mlp", width=64, depths=(4, 33)).validate()
    # LM of d_model 64: 4 * 64**2 + 2 * 64 * 256 = 49152 weights of 4 bytes per block.
    TrainConfig(depth=5).validate()
    with pytest.raises(ValueError, match=r"depth 6 needs .*\(49152 per block, 4 bytes each\)"):
        TrainConfig(depth=6).validate()


def test_compare_checks_every_depth_first(tmp_path):
    from rezero_dynamics.studies import compare
    from rezero_dynamics.training import TrainConfig

    base = TrainConfig(depth=1, d_model=8, heads=2, seq_len=8, batch_size=2, steps=1, eval_every=0, eval_batches=1)
    with pytest.raises(ValueError, match="depth 100000000000000 needs"):
        compare(base, tmp_path, variants=("rezero",), depths=(1, 10**14), seeds=(0,), progress=False)
    assert not (tmp_path / "runs" / "rezero-L1-s0").exists()
