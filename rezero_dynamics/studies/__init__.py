"""Named studies built from models, spectra, training and plots.

* ``spectrum_study``: Jacobian spectra of residual variants at initialisation.
* ``compare``: train variants x depths x seeds one after another.
* ``reproduce``: the main job, variants side by side with a markdown report.
"""

from .compare import collect_records, collect_spectra, compare
from .reproduce import SCALES, reproduce
from .spectrum import (
    DTYPES,
    INPUT_KINDS,
    MODELS,
    SPECTRUM_METHODS,
    SpectrumConfig,
    choose_method,
    build_stack,
    config_as_dict,
    spectrum_study,
    study_inputs,
    summarise_by_group,
    theory_overlays,
)

__all__ = [
    "DTYPES",
    "INPUT_KINDS",
    "MODELS",
    "SCALES",
    "SPECTRUM_METHODS",
    "SpectrumConfig",
    "build_stack",
    "choose_method",
    "collect_records",
    "collect_spectra",
    "compare",
    "config_as_dict",
    "reproduce",
    "spectrum_study",
    "study_inputs",
    "summarise_by_group",
    "theory_overlays",
]
