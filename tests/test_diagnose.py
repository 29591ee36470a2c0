"""Diagnose: verdicts on toolkit models, user models and run folders."""

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import run_cli as run
from rezero_dynamics.diagnose import (
    THRESHOLDS,
    diagnose_folder,
    diagnose_model,
    diagnosis_frame,
    limit,
    toolkit_target,
)
from rezero_dynamics.diagnose.rules import Architecture
from rezero_dynamics.diagnose.runs import architecture_from_config
from rezero_dynamics.spectra import jacobian_spectrum
from rezero_dynamics.spectra.depth_profile import depth_profile
from rezero_dynamics.studies import SpectrumConfig
from rezero_dynamics.theory import tanh_critical_sigma_w2, tanh_jacobian_moments
from rezero_dynamics.tracking import RecordWriter

SMALL_TRANSFORMER = dict(model="transformer", width=8, heads=2, seq_len=4, num_inputs=2)


def transformer(variant, depth):
    return toolkit_target(SpectrumConfig(variants=(variant,), depths=(depth,), **SMALL_TRANSFORMER))


def tanh_mlp(sigma_w2, sigma_b2=0.0):
    config = SpectrumConfig(
        model="mlp", variants=("none",), depths=(32,), width=256, num_inputs=4, activation="tanh",
        sigma_w=math.sqrt(sigma_w2), sigma_b=math.sqrt(sigma_b2),
    )
    return toolkit_target(config)


def names(diagnosis):
    return [finding.name for finding in diagnosis.findings]


@pytest.mark.parametrize("depth", [12, 64])
def test_rezero_at_init_is_isometric(depth):
    target = transformer("rezero", depth)
    diagnosis = diagnose_model(target.model, target.inputs, theory=target.theory)
    assert diagnosis.findings == ()
    assert diagnosis.verdict == "isometric"
    assert diagnosis.chi == pytest.approx(1.0, abs=1e-12)
    assert diagnosis.spread == pytest.approx(0.0, abs=1e-10)
    assert diagnosis.near_zero_count == 0
    assert diagnosis.chi_growth_per_block == pytest.approx(1.0, abs=1e-12)
    assert diagnosis.activation_rms_ratio == pytest.approx(1.0, abs=1e-12)
    assert len(diagnosis.profile) == depth + 1
    assert diagnosis.theory.chi == 1.0


def test_post_norm_64_reports_vanishing_directions():
    target = transformer("post_norm", 64)
    diagnosis = diagnose_model(target.model, target.inputs)
    spectrum = jacobian_spectrum(target.model, target.inputs, dtype=torch.float64)
    values = spectrum.singular_values
    counts = (values < 1e-3 * values[:, :1]).sum(dim=1).double()
    finding = next(f for f in diagnosis.findings if f.name == "vanishing_directions")
    assert finding.severity == "critical"
    assert diagnosis.near_zero_count == float(counts.mean())
    assert diagnosis.num_zeros == float(spectrum.num_zeros.double().mean())
    assert finding.measured == pytest.approx(float(counts.mean()) / values.shape[1])
    assert f"{float(counts.mean()):g} of {values.shape[1]} singular values" in finding.message
    assert "Post-norm at this depth: each of the 128 LayerNorms" in finding.message
    assert "removes 4 directions" in finding.message  # one per token, 4 tokens
    assert diagnosis.verdict.startswith("critical")


def test_tanh_exploding_growth_matches_profile():
    target = tanh_mlp(1.5)
    diagnosis = diagnose_model(target.model, target.inputs, theory=target.theory)
    assert "exploding" in names(diagnosis)
    profiles = [depth_profile(target.model, x[None]).summary["log10_chi"].to_numpy() * math.log(10) for x in target.inputs]
    log_chi = np.concatenate([[0.0], np.mean(profiles, axis=0)])
    slope = np.polyfit(np.arange(33), log_chi, 1)[0]
    assert diagnosis.chi_growth_per_block == pytest.approx(math.exp(slope), rel=1e-9)
    assert diagnosis.chi_growth_per_block > limit("chi_growth_per_block_high")
    # The profile's last block is the whole stack: check it against the direct Jacobian.
    whole = jacobian_spectrum(target.model, target.inputs, dtype=torch.float64).chi
    assert diagnosis.profile["chi"].iloc[-1] == pytest.approx(float(torch.log(whole).mean().exp()), rel=1e-9)
    assert diagnosis.chi == pytest.approx(float(whole.mean()), rel=1e-12)
    theory = tanh_jacobian_moments(1.5, 0.0, 32)
    assert diagnosis.theory.chi_per_block == pytest.approx(theory["chi"])
    assert diagnosis.chi_growth_per_block == pytest.approx(theory["chi"], abs=0.02)


def test_tanh_at_criticality_chi_about_one():
    sigma_b2 = 0.05
    sigma_w2 = tanh_critical_sigma_w2(sigma_b2)
    assert tanh_jacobian_moments(sigma_w2, sigma_b2, 1)["chi"] == pytest.approx(1.0, abs=1e-10)
    target = tanh_mlp(sigma_w2, sigma_b2)
    diagnosis = diagnose_model(target.model, target.inputs, theory=target.theory)
    assert diagnosis.theory.chi_per_block == pytest.approx(1.0, abs=1e-10)
    assert diagnosis.chi_growth_per_block == pytest.approx(1.0, abs=0.01)
    assert abs(math.log(diagnosis.chi)) < math.log(1.5)
    assert "exploding" not in names(diagnosis)
    assert "vanishing" not in names(diagnosis)


def test_critical_sigma_matches_published_point():
    # The critical point at q* = 0.5 quoted by Pennington, Schoenholz and Ganguli (2017).
    assert tanh_critical_sigma_w2(0.0380) == pytest.approx(1.6880, abs=1e-3)
    assert tanh_critical_sigma_w2(0.0) == 1.0


def test_probe_estimate_brackets_exact_chi():
    target = transformer("pre_norm", 4)
    inputs = target.inputs[:1]
    exact = diagnose_model(target.model, inputs, method="exact")
    estimate = diagnose_model(target.model, inputs, method="probes", probes=32)
    assert estimate.method == "probes"
    assert estimate.chi_stderr > 0
    assert abs(estimate.chi - exact.chi) < 4 * estimate.chi_stderr
    np.testing.assert_allclose(np.log(estimate.profile["chi"]), np.log(exact.profile["chi"]), atol=0.35)


def test_thresholds_doc_matches_code():
    text = (Path(__file__).parents[1] / "docs" / "diagnose.md").read_text()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]+) \| (\w+) \|", text, flags=re.MULTILINE)
    documented = {name: (float(value), severity) for name, value, severity in rows}
    in_code = {name: (float(item.value), item.severity) for name, item in THRESHOLDS.items()}
    assert documented == in_code


# -- run folders -------------------------------------------------------------------------


def write_run(folder: Path, run: str, *, status="completed", alphas=None, first_grad=1.0, spike_at=None, steps=40):
    folder.mkdir(parents=True)
    writer = RecordWriter(folder / "records.csv")
    rows = []
    for step in range(steps):
        loss = 4.0 - 2.0 * step / steps
        rows.append((run, step, "loss", "all", loss * (3.0 if step == spike_at else 1.0)))
        for block, scale in ((0, first_grad), (1, 1.0), (2, 1.0)):
            rows.append((run, step, "grad_norm", str(block), scale))
        rows.append((run, step, "grad_norm", "other", 0.5))
        for name, final in (alphas or {}).items():
            rows.append((run, step, "alpha", name, final * step / (steps - 1)))
    writer.append(rows)
    (folder / "status.json").write_text(json.dumps({"status": status, "step": steps - 1, "cause": None}))


def test_run_names_negative_alpha(tmp_path):
    alphas = {"encoder.blocks.0.gate.alpha": 0.2, "encoder.blocks.1.gate.alpha": -0.05, "encoder.blocks.2.gate.alpha": 0.0}
    write_run(tmp_path / "run", "r", alphas=alphas, spike_at=30)
    (diagnosis,) = diagnose_folder(tmp_path / "run")
    negative = [f for f in diagnosis.findings if f.name == "alpha_negative"]
    assert [f.subject for f in negative] == ["r encoder.blocks.1.gate.alpha"]
    assert "encoder.blocks.1.gate.alpha" in negative[0].message
    assert negative[0].measured < limit("alpha_negative")
    near_zero = [f.subject for f in diagnosis.findings if f.name == "alpha_near_zero"]
    assert near_zero == ["r encoder.blocks.2.gate.alpha"]
    spikes = next(f for f in diagnosis.findings if f.name == "loss_spikes")
    assert "step(s) 30" in spikes.message
    assert "vanishing_gradients" not in names(diagnosis)


def test_compare_folder_diagnoses_each_run(tmp_path):
    write_run(tmp_path / "runs" / "post_norm-L4-s0", "post_norm-L4-s0", status="diverged", first_grad=1e-5)
    write_run(tmp_path / "runs" / "rezero-L4-s0", "rezero-L4-s0", alphas={"blocks.0.gate.alpha": 0.1})
    diagnoses = diagnose_folder(tmp_path)
    assert [d.target for d in diagnoses] == ["post_norm-L4-s0", "rezero-L4-s0"]
    post_norm, rezero = diagnoses
    assert set(names(post_norm)) == {"vanishing_gradients", "diverged"}
    vanishing = next(f for f in post_norm.findings if f.name == "vanishing_gradients")
    assert vanishing.measured == pytest.approx(1e-5)
    assert vanishing.severity == "critical"
    assert rezero.findings == ()


def test_real_run_spectra_checked(tmp_path):
    from rezero_dynamics.data import CharCorpus
    from rezero_dynamics.training import TrainConfig, train

    text = CharCorpus.default()
    corpus = CharCorpus(text.vocabulary, text.train[:20_000], text.validation[:4_000], text.test[:4_000], "slice")
    config = TrainConfig(variant="post_norm", depth=6, d_model=8, heads=2, seq_len=8, batch_size=4, steps=4,
                         eval_every=0, eval_batches=1, checkpoint_every=0, spectrum_every=2, spectrum_inputs=1,
                         spectrum_tokens=4)
    train(config, tmp_path / "run", corpus=corpus)
    (diagnosis,) = diagnose_folder(tmp_path / "run")
    assert diagnosis.status == "completed"
    assert list(diagnosis.spectra["step"]) == [0, 2, 4]
    spectra = pd.read_csv(tmp_path / "run" / "spectra.csv")
    last = spectra[spectra["step"] == 4]["singular_value"].to_numpy()
    assert diagnosis.spectra["chi"].iloc[-1] == pytest.approx(float(np.mean(last**2)))
    assert diagnosis.spectra["near_zero_count"].iloc[-1] == (last < 1e-3 * last.max()).sum()
    settings = json.loads((tmp_path / "run" / "config.json").read_text())
    assert architecture_from_config(settings) == Architecture(12, 12, 4)  # 2 sublayers x 6, 4 probe tokens
    assert architecture_from_config({**settings, "variant": "rezero"}) == Architecture()


# -- command line ----------------------------------------------------------------------------

SMALL_CLI = ["--width", "8", "--heads", "2", "--seq-len", "4"]


def test_cli_table(capsys):
    status, out, err = run(["diagnose", "transformer", "--variant", "rezero", "--depth", "3", *SMALL_CLI], capsys)
    assert status == 0, err
    assert "verdict: isometric" in out
    assert "no findings" in out


def test_cli_json(capsys):
    status, out, err = run(["diagnose", "transformer", "--variant", "post_norm", "--depth", "12", *SMALL_CLI, "--json"], capsys)
    assert status == 0, err
    (report,) = json.loads(out)["diagnoses"]
    assert report["kind"] == "model"
    found = {f["name"]: f for f in report["findings"]}
    vanishing = found["vanishing_directions"]
    assert vanishing["threshold"] == limit(vanishing["threshold_name"])
    assert vanishing["measured"] > vanishing["threshold"]
    assert len(report["profile"]) == 13


def test_cli_plot(tmp_path, capsys):
    path = tmp_path / "profile.png"
    status, out, err = run(["diagnose", "mlp", "--variant", "pre_norm", "--depth", "3", "--width", "6", "--plot", str(path)], capsys)
    assert status == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {path}" in out


def test_cli_run_folder(tmp_path, capsys):
    write_run(tmp_path / "run", "r", alphas={"blocks.1.gate.alpha": -0.05})
    status, out, err = run(["diagnose", str(tmp_path / "run")], capsys)
    assert status == 0, err
    assert "alpha_negative" in out
    assert "r blocks.1.gate.alpha" in out


USER_MODEL = """
import torch
from torch import nn

def build():
    return nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.Tanh()) for _ in range(3)])

def example():
    return torch.randn(2, 6)

def not_a_model():
    return 42

def token_model():
    return nn.Sequential(nn.Embedding(10, 6), nn.Linear(6, 6))
"""


def test_cli_user_model(tmp_path, capsys):
    file = tmp_path / "user_model.py"
    file.write_text(USER_MODEL)
    status, out, err = run(["diagnose", f"{file}:build", "--input-shape", "6"], capsys)
    assert status == 0, err
    assert f"model: {file}:build" in out
    status, out, err = run(["diagnose", f"{file}:build", "--example-input", f"{file}:example", "--json"], capsys)
    assert status == 0, err
    report = json.loads(out)["diagnoses"][0]
    assert report["num_inputs"] == 2
    assert len(report["profile"]) == 4


@pytest.mark.parametrize(
    ("source", "function", "extra", "expected"),
    [
        ("def build(:\n    pass\n", "build", ["--input-shape", "6"], "line 1: syntax error"),
        (USER_MODEL, "not_a_model", ["--input-shape", "6"], "returned int, not a torch.nn.Module; return the model"),
        (USER_MODEL, "build", ["--input-shape", "16,64"], "failed on one sample of shape (16, 64)"),
        (USER_MODEL, "missing", ["--input-shape", "6"], "has no function 'missing'; define it"),
        (USER_MODEL, "token_model", ["--input-shape", "6"], "return the part after the embedding (e.g. model.encoder)"),
        (USER_MODEL, "build", [], "give exactly one of --input-shape"),
    ],
)
def test_cli_user_model_errors(tmp_path, capsys, source, function, extra, expected):
    file = tmp_path / "bad_model.py"
    file.write_text(source)
    status, out, err = run(["diagnose", f"{file}:{function}", *extra], capsys)
    assert status == 2
    assert out == ""
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert str(file) in err
    assert expected in err


def test_cli_unknown_target(capsys):
    status, _, err = run(["diagnose", "no-such-thing"], capsys)
    assert status == 2
    assert "is not a model name (transformer, mlp), a FILE.py:FUNCTION or an existing run folder" in err


def test_plot_diagnosis_frame_and_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")  # tests render off-screen
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    from rezero_dynamics.plots import plot_diagnosis

    target = toolkit_target(SpectrumConfig(model="mlp", variants=("none",), depths=(4,), width=8, activation="linear"))
    diagnosis = diagnose_model(target.model, target.inputs, theory=target.theory)
    write_run(tmp_path / "run", "r", first_grad=0.5)
    frame = diagnosis_frame([diagnosis, *diagnose_folder(tmp_path / "run")])
    assert list(dict.fromkeys(frame["quantity"])) == ["log10_chi", "log10_activation_rms", "log10_grad_norm_ratio"]
    theory = frame[frame["source"] == "theory"]
    np.testing.assert_allclose(theory["value"], np.arange(5) * math.log10(diagnosis.theory.chi_per_block))
    ratio = frame[frame["quantity"] == "log10_grad_norm_ratio"]["value"]
    np.testing.assert_allclose(ratio, math.log10(0.5))
    figure, axes = plt.subplots(1, 3)
    assert plot_diagnosis(frame, ax=axes) is figure
    assert [a.get_xlabel() for a in axes] == ["block", "block", "step"]
    assert isinstance(plot_diagnosis(frame), Figure)
    with pytest.raises(ValueError, match="missing column"):
        plot_diagnosis(frame.drop(columns="x_name"))
    plt.close("all")
