"""Diagnosis: verdicts on a model's signal propagation or a training run, with advice.

* ``diagnose_model``: chi, spread, near-zero singular values, the depth profile of chi
  and of activation RMS, next to theory where it applies (``predictions``).
* ``diagnose_run`` / ``diagnose_folder``: alphas, gradient-norm ratios across depth,
  loss spikes, divergence and Jacobian spectra recorded during training.
* ``THRESHOLDS``: every limit in one table, documented in ``docs/diagnose.md``.
"""

from .findings import Finding
from .model import METHODS, ModelDiagnosis, diagnose_model, find_blocks
from .predictions import TheoryPrediction, identity_prediction, predict_mlp
from .report import diagnosis_frame, format_report, to_dict
from .runs import RunDiagnosis, diagnose_folder, diagnose_run, find_runs
from .targets import INPUT_KINDS, Target, TargetError, parse_input_shape, toolkit_target, user_target
from .thresholds import SEVERITIES, THRESHOLDS, Threshold, limit

__all__ = [
    "INPUT_KINDS",
    "METHODS",
    "SEVERITIES",
    "THRESHOLDS",
    "Finding",
    "ModelDiagnosis",
    "RunDiagnosis",
    "Target",
    "TargetError",
    "TheoryPrediction",
    "Threshold",
    "diagnose_folder",
    "diagnose_model",
    "diagnose_run",
    "diagnosis_frame",
    "find_blocks",
    "find_runs",
    "format_report",
    "identity_prediction",
    "limit",
    "parse_input_shape",
    "predict_mlp",
    "to_dict",
    "toolkit_target",
    "user_target",
]
