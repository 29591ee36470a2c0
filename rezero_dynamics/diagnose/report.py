"""Reports of diagnoses: a terminal table, JSON-ready dicts and a tidy frame for figures."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd

from .model import ModelDiagnosis
from .runs import RunDiagnosis

Diagnosis = ModelDiagnosis | RunDiagnosis


def _number(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}"


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (np.floating, np.integer)):
        return _json_value(value.item())
    return value


def _frame_records(frame: pd.DataFrame) -> list[dict]:
    return [{k: _json_value(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def to_dict(diagnosis: Diagnosis) -> dict:
    """Return the diagnosis as JSON-ready values (NaN and infinity become None)."""
    common = {
        "target": diagnosis.target,
        "verdict": diagnosis.verdict,
        "findings": [f.to_dict() for f in diagnosis.findings],
        "notes": list(diagnosis.notes),
    }
    if isinstance(diagnosis, ModelDiagnosis):
        d = diagnosis
        return {
            "kind": "model", **common, "method": d.method, "num_inputs": d.num_inputs,
            "in_shape": list(d.in_shape), "out_shape": list(d.out_shape),
            "chi": _json_value(d.chi), "chi_stderr": _json_value(d.chi_stderr), "spread": _json_value(d.spread),
            "singular_values_per_sample": d.size, "near_zero_count": _json_value(d.near_zero_count),
            "near_zero_fraction": _json_value(d.near_zero_fraction), "num_zeros": _json_value(d.num_zeros),
            "chi_growth_per_block": _json_value(d.chi_growth_per_block),
            "activation_rms_ratio": _json_value(d.activation_rms_ratio),
            "activation_rms_growth_per_block": _json_value(d.activation_rms_growth_per_block),
            "profile": _frame_records(d.profile),
            "theory": {k: _json_value(v) for k, v in d.theory.to_dict().items()} if d.theory else None,
        }
    return {
        "kind": "run", **common, "path": diagnosis.path, "status": diagnosis.status, "last_step": diagnosis.last_step,
        "alphas": _frame_records(diagnosis.alphas), "grad_ratio": _frame_records(diagnosis.grad_ratio),
        "spectra": _frame_records(diagnosis.spectra),
    }


def _findings_table(diagnosis: Diagnosis) -> list[str]:
    if not diagnosis.findings:
        return ["no findings"]
    lines = [f"{'severity':<9} {'finding':<22} {'measured':>10} {'threshold':>10}  subject"]
    for f in diagnosis.findings:
        lines.append(f"{f.severity:<9} {f.name:<22} {_number(f.measured):>10} {_number(f.threshold):>10}  {f.subject}")
        lines += textwrap.wrap(f.message, 96, initial_indent="    ", subsequent_indent="    ")
    return lines


def _model_lines(d: ModelDiagnosis) -> list[str]:
    error = f" +- {d.chi_stderr:.2g}" if d.chi_stderr else (" (exact)" if d.method == "exact" else "")
    rows = [
        ("chi (mean s^2)", f"{d.chi:.4g}{error}", d.theory.chi if d.theory else None),
        ("spread (m2/chi^2 - 1)", _number(d.spread), d.theory.spread if d.theory else None),
        ("near-zero singular values", f"{d.near_zero_count:g} of {d.size} ({d.near_zero_fraction:.1%}), {d.num_zeros:g} exactly 0",
         d.theory.near_zero_fraction if d.theory else None),
        ("chi growth per block", _number(d.chi_growth_per_block), d.theory.chi_per_block if d.theory else None),
        ("activation RMS last/first", _number(d.activation_rms_ratio), d.theory.activation_rms_ratio if d.theory else None),
        ("activation RMS growth/block", _number(d.activation_rms_growth_per_block), None),
    ]
    lines = [
        f"model: {d.target}",
        f"inputs: {d.num_inputs} of shape {d.in_shape}, output shape {d.out_shape}, method {d.method}",
        f"verdict: {d.verdict}",
        "",
        f"{'quantity':<28} {'measured':<36} theory",
    ]
    for name, measured, predicted in rows:
        lines.append(f"{name:<28} {measured:<36} {_number(predicted) if predicted is not None else '-'}")
    if d.theory:
        lines.append(f"theory: {d.theory.regime}; assumes {d.theory.assumption}")
    else:
        lines.append("theory: no prediction covers this model")
    return lines


def _run_lines(d: RunDiagnosis) -> list[str]:
    lines = [f"run: {d.target} ({d.path})", f"status: {d.status or 'unknown'} at step {d.last_step}", f"verdict: {d.verdict}"]
    if len(d.grad_ratio):
        ratios = d.grad_ratio["ratio"].dropna()
        if len(ratios):
            lines.append(f"gradient norm first/last block: {ratios.iloc[0]:.3g} at the first step, {ratios.iloc[-1]:.3g} at the last")
    if len(d.spectra):
        first, last = d.spectra.iloc[0], d.spectra.iloc[-1]
        lines.append(
            f"Jacobian chi: {first['chi']:.3g} at step {int(first['step'])}, {last['chi']:.3g} at step {int(last['step'])}; "
            f"near-zero {first['near_zero_fraction']:.1%} -> {last['near_zero_fraction']:.1%}"
        )
    return lines


def format_report(diagnosis: Diagnosis) -> str:
    """Return a readable report: the measurements, then one row per finding with its meaning."""
    lines = _model_lines(diagnosis) if isinstance(diagnosis, ModelDiagnosis) else _run_lines(diagnosis)
    lines += ["", *_findings_table(diagnosis)]
    lines += [f"note: {note}" for note in diagnosis.notes]
    return "\n".join(lines)


def diagnosis_frame(diagnoses: list[Diagnosis]) -> pd.DataFrame:
    """Return the series behind the diagnoses, tidy: target, quantity, x_name, x, value, source.

    Models give log10_chi and log10_activation_rms against block (source ``measured``,
    and ``theory`` for chi where a prediction exists). Runs give log10_grad_norm_ratio
    and log10_jacobian_chi against step.
    """
    frames = []
    for d in diagnoses:
        if isinstance(d, ModelDiagnosis):
            blocks = d.profile["block"].to_numpy()
            for quantity, column in (("log10_chi", "chi"), ("log10_activation_rms", "activation_rms")):
                values = d.profile[column].to_numpy(dtype=float)
                if np.isfinite(values).any():
                    frames.append(pd.DataFrame({"target": d.target, "quantity": quantity, "x_name": "block",
                                                "x": blocks, "value": np.log10(values), "source": "measured"}))
            if d.theory is not None and np.isfinite(d.profile["chi"].to_numpy(dtype=float)).any():
                frames.append(pd.DataFrame({"target": d.target, "quantity": "log10_chi", "x_name": "block", "x": blocks,
                                            "value": blocks * math.log10(d.theory.chi_per_block), "source": "theory"}))
        else:
            if len(d.grad_ratio):
                frames.append(pd.DataFrame({"target": d.target, "quantity": "log10_grad_norm_ratio", "x_name": "step",
                                            "x": d.grad_ratio["step"].to_numpy(),
                                            "value": np.log10(d.grad_ratio["ratio"].to_numpy(dtype=float)), "source": "measured"}))
            if len(d.spectra):
                frames.append(pd.DataFrame({"target": d.target, "quantity": "log10_jacobian_chi", "x_name": "step",
                                            "x": d.spectra["step"].to_numpy(),
                                            "value": np.log10(d.spectra["chi"].to_numpy(dtype=float)), "source": "measured"}))
    columns = ["target", "quantity", "x_name", "x", "value", "source"]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
