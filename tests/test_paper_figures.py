"""Paper-figure scripts: every script at the smoke scale, plus exact checks of their numbers."""

from __future__ import annotations

import importlib
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

FIGURES_DIR = Path(__file__).resolve().parents[1] / "paper_figures"
sys.path.insert(0, str(FIGURES_DIR))

common = importlib.import_module("_common")
run_all = importlib.import_module("run_all")
SCRIPT_NAMES = [name for name, _ in run_all.SCRIPTS]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_outputs(tmp_path_factory) -> Path:
    """Run every script at the smoke scale once, each into ``root/<name>``; return root."""
    root = tmp_path_factory.mktemp("paper_figures")
    for name in SCRIPT_NAMES:
        module = importlib.import_module(name)
        assert module.main(["--scale", "smoke", "--out", str(root / name)]) == 0
    return root


def test_figure_scripts_are_all_listed():
    scripts = {path.stem for path in FIGURES_DIR.glob("*.py") if not path.stem.startswith("_")} - {"run_all"}
    assert scripts == set(SCRIPT_NAMES)


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_script_writes_png_csv_and_table(smoke_outputs, name):
    folder = smoke_outputs / name
    assert (folder / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    frame = pd.read_csv(folder / f"{name}.csv")
    assert len(frame) > 0
    claims = common.read_claims(folder / f"{name}.md")
    assert list(claims.columns) == list(common.CLAIM_COLUMNS)
    assert len(claims) > 0
    assert (claims["ours (ci)"] != "").all()
    assert (claims["ours (paper)"] == "").all()
    assert claims["effect holds"].str.match(r"^smoke: (yes|no|not measured)$").all()


def test_toy_gradient_at_alpha_zero_matches_closed_form():
    toy = importlib.import_module("toy_model")
    for depth in (1, 4, 16, 64):
        for w in (-0.7, 0.1, 0.5):
            grad_w, grad_alpha = toy.autograd_gradient(w, 0.0, depth)
            assert grad_w == 0.0
            expected = (toy.X0 - toy.TARGET) * depth * w * toy.X0
            assert grad_alpha == pytest.approx(expected, rel=1e-14, abs=1e-14)


def test_toy_closed_form_matches_autograd_away_from_zero():
    toy = importlib.import_module("toy_model")
    for w, alpha, depth in ((0.3, 0.5, 8), (-0.2, 1.0, 16), (0.05, 2.0, 3)):
        closed = toy.closed_form_gradient(w, alpha, depth)
        computed = toy.autograd_gradient(w, alpha, depth)
        assert computed[0] == pytest.approx(closed[0], rel=1e-12)
        assert computed[1] == pytest.approx(closed[1], rel=1e-12)


def test_toy_stable_rate_stops_at_first_unstable_rate():
    toy = importlib.import_module("toy_model")
    sweep = pd.DataFrame({
        "depth": 4, "alpha0": [0.0] * 4 + [1.0] * 4,
        "learning_rate": [1e-3, 1e-2, 1e-1, 1.0] * 2,
        "stable": [True, True, False, True, False, True, True, True],
        "steps_to_converge": [50.0, 10.0, np.nan, 3.0, np.nan, 20.0, 8.0, np.nan],
    })
    best = toy.best_runs(sweep).set_index("alpha0")
    assert best.loc[0.0, "max_stable_learning_rate"] == 1e-2  # 1.0 was stable, but 0.1 was not
    assert math.isnan(best.loc[1.0, "max_stable_learning_rate"])  # the smallest rate was unstable
    assert best.loc[0.0, "min_steps"] == 3.0
    assert best.loc[1.0, "min_steps"] == 8.0


def test_rezero_spectrum_at_init_is_all_ones(smoke_outputs):
    frame = pd.read_csv(smoke_outputs / "jacobian_spectra" / "jacobian_spectra.csv")
    at_init = frame[frame["stage"] == "init"]
    rezero = at_init[(at_init["variant"] == "rezero") & (at_init["statistic"] == "max_abs_log10")]
    assert len(rezero) == 3  # one per depth
    assert (rezero["value"].abs() < 1e-12).all()
    bars = at_init[(at_init["variant"] == "rezero") & (at_init["statistic"] == "fraction")]
    holding_zero = bars[(bars["bin_left"] <= 0.0) & (bars["bin_right"] >= 0.0)]
    assert holding_zero.groupby("depth")["value"].sum().eq(1.0).all()
    post_norm = at_init[(at_init["variant"] == "post_norm") & (at_init["statistic"] == "max_abs_log10")]
    assert (post_norm["value"] > 1e-3).all()


def test_claims_table_keeps_other_scale(tmp_path):
    claims_ci = [common.Claim("ReZero is faster", "56% faster", "+40% |alpha|", True)]
    claims_paper = [common.Claim("ReZero is faster", "56% faster", "+50%", False)]
    for scale, claims in (("ci", claims_ci), ("paper", claims_paper)):
        args = common.parse_arguments("example", "Example.", ["--scale", scale, "--out", str(tmp_path)])
        common.write_claims(args, "Example", claims, settings=f"{scale} settings", seconds=1.0)
    table = common.read_claims(tmp_path / "example.md")
    assert table.loc[0, "ours (ci)"] == "+40% |alpha|"
    assert table.loc[0, "ours (paper)"] == "+50%"
    assert table.loc[0, "effect holds"] == "ci: yes; paper: no"
    text = (tmp_path / "example.md").read_text()
    assert "- scale `ci`" in text
    assert "- scale `paper`" in text


def test_paper_scale_requires_data_path(tmp_path):
    module = importlib.import_module("alpha_trajectories")
    out = tmp_path / "out"
    with pytest.raises(common.FigureError, match="--data-path"):
        module.main(["--scale", "paper", "--out", str(out), "--device", "cpu"])
    assert not out.exists()


def test_missing_data_is_one_line_error(tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, str(FIGURES_DIR / "transformer_convergence.py"), "--scale", "paper",
               "--data-path", str(tmp_path / "enwik8"), "--device", "cpu", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "enwik8 not found" in result.stderr
    assert "Traceback" not in result.stderr
    assert not out.exists()


def test_every_run_failed_names_cause(tmp_path):
    from rezero_dynamics.training import TrainConfig

    config = TrainConfig(data="enwik8", data_path=str(tmp_path / "enwik8"), depth=2, d_model=8, heads=2, seq_len=8,
                         batch_size=2, steps=2, eval_every=1, eval_batches=1, checkpoint_every=0)
    with pytest.raises(common.FigureError, match=r"every run failed \(2 runs\): FileNotFoundError: enwik8 not found"):
        common.train_variants(config, variants=["rezero", "pre_norm"], depths=[2])


def test_unavailable_device_rejected(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        common.parse_arguments("example", "Example.", ["--device", "cuda", "--out", str(tmp_path)])
    assert stop.value.code == 2
    args = common.parse_arguments("example", "Example.", ["--out", str(tmp_path)])
    assert args.device == "cpu"


def test_smoke_scale_requires_out():
    with pytest.raises(SystemExit) as stop:
        common.parse_arguments("example", "Example.", ["--scale", "smoke"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        run_all.parse_arguments(["--scale", "smoke"])
    assert stop.value.code == 2


def test_smoke_replaces_ci_settings_line(tmp_path):
    claims = [common.Claim("ReZero is faster", "56% faster", "+40%", True)]
    for scale in ("ci", "paper", "smoke"):
        args = common.parse_arguments("example", "Example.", ["--scale", scale, "--out", str(tmp_path)])
        common.write_claims(args, "Example", claims, settings=f"{scale} settings", seconds=1.0)
    text = (tmp_path / "example.md").read_text()
    assert "- scale `ci`" not in text
    assert "- scale `paper`" in text
    assert "- scale `smoke`" in text


def test_diverged_run_not_counted():
    module = importlib.import_module("transformer_convergence")
    table = pd.DataFrame({
        "label": ["a", "b", "c", "d"], "run": ["a", "b", "c", "d"],
        "status": ["completed", "completed", "completed", "failed"],
        "steps_to_target": [30.0, 45.0, math.nan, math.nan],
        "final_metric": [3.0, 492.6, 7.0, math.nan],
    })
    curves = pd.DataFrame({"run": ["a", "b", "c", "a", "b", "c"], "step": [0, 0, 0, 15, 15, 15],
                           "value": [7.1, 110.0, 7.2, 5.0, 99.8, 7.1]})
    marked = module.mark_diverged(table, curves, uniform_bits=math.log2(103))
    assert marked["status"].str.startswith("diverged").tolist() == [False, True, False, False]
    assert math.isnan(marked.loc[1, "steps_to_target"])
    assert marked.loc[0, "steps_to_target"] == 30.0
    assert marked.loc[3, "status"] == "failed"


def test_alpha_trend_at_last_record():
    module = importlib.import_module("alpha_trajectories")
    rising = pd.Series([0.0, 0.01, 0.037], index=[0, 296, 298])
    assert module.describe_trend(rising, 298, 298) == "still rising at the last record (step 298): 0.037"
    falling = pd.Series([0.0, 0.05, 0.02], index=[0, 10, 20])
    assert module.describe_trend(falling, 10, 20) == "peak 0.05 at step 10, 0.02 at step 20 (60.0% below the peak)"


def test_deep_mlp_moving_average():
    module = importlib.import_module("deep_mlp_convergence")
    values = np.arange(1.0, 2 * module.WINDOW + 1)
    records = pd.DataFrame({"run": "a", "step": np.arange(len(values)) * 5, "quantity": "loss", "layer": "all", "value": values})
    smoothed = module.smoothed_losses(records)["smoothed"].to_numpy()
    assert np.isnan(smoothed[: module.WINDOW - 1]).all()
    assert smoothed[module.WINDOW - 1] == pytest.approx(values[: module.WINDOW].mean())
    assert smoothed[-1] == pytest.approx(values[-module.WINDOW:].mean())


def test_readme_lists_every_claim_and_figure(smoke_outputs):
    text = run_all.render_readme(smoke_outputs, None)
    assert "| " + " | ".join(common.CLAIM_COLUMNS) + " |" in text
    for name in SCRIPT_NAMES:
        assert f"![{name}]({name}/{name}.png)" in text
        rows = common.read_claims(smoke_outputs / name / f"{name}.md")
        assert sum(line.startswith(f"| [{name}]") for line in text.splitlines()) == len(rows)


def test_paper_scale_settings_validate():
    from dataclasses import replace

    from rezero_dynamics.training import TrainConfig

    spectra = importlib.import_module("jacobian_spectra")
    spectra.SCALES["paper"].init.validate()
    configs = {
        "jacobian_spectra": spectra.SCALES["paper"].training,
        "alpha_trajectories": importlib.import_module("alpha_trajectories").SCALES["paper"],
        "deep_transformers": importlib.import_module("deep_transformers").SCALES["paper"],
        "transformer_convergence": importlib.import_module("transformer_convergence").SCALES["paper"].config,
        "deep_mlp_convergence": importlib.import_module("deep_mlp_convergence").SCALES["paper"].config,
        "resnet_convergence": TrainConfig(**importlib.import_module("resnet_convergence").SCALES["paper"].settings),
    }
    for name, config in configs.items():
        assert config.data in ("enwik8", "cifar10"), name
        replace(config, data_path="unused").validate()
