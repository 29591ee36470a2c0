import matplotlib

matplotlib.use("Agg")  # tests render off-screen; the library itself never switches backends

import matplotlib.pyplot as plt
import pandas as pd
import pytest
import torch
from matplotlib.figure import Figure

from rezero_dynamics.plots import plot_log10_singular_value_histograms
from rezero_dynamics.spectra import jacobian_spectrum


def spectrum_frame():
    frames = []
    for depth in (1, 3):
        for variant, scale in (("rezero", 1.0), ("post_norm", 0.1)):
            diagonal = torch.tensor([scale, scale * 2, 0.0, 1.0], dtype=torch.float64)
            spectrum = jacobian_spectrum(
                lambda x: x * diagonal, torch.randn(2, 4, dtype=torch.float64),
                labels={"variant": variant, "depth": depth},
            )
            frames.append(spectrum.to_frame())
    return pd.concat(frames, ignore_index=True)


def test_histograms_one_panel_per_depth():
    figure = plot_log10_singular_value_histograms(spectrum_frame())
    assert isinstance(figure, Figure)
    titles = [axis.get_title() for axis in figure.axes]
    assert titles == ["depth 1", "depth 3"]
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert labels == ["rezero (1 of 4 zero)", "post_norm (1 of 4 zero)"]
    plt.close(figure)


def test_histograms_on_given_axes():
    figure, axes = plt.subplots(1, 2)
    assert plot_log10_singular_value_histograms(spectrum_frame(), ax=axes) is figure
    plt.close(figure)


def test_histograms_wrong_axes_count():
    figure, axis = plt.subplots()
    with pytest.raises(ValueError, match="got 1 Axes for 2 panel"):
        plot_log10_singular_value_histograms(spectrum_frame(), ax=axis)
    plt.close(figure)


def test_histograms_missing_column():
    with pytest.raises(ValueError, match="missing column"):
        plot_log10_singular_value_histograms(spectrum_frame().drop(columns="variant"))


def test_histograms_leave_global_style_alone():
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    figure = plot_log10_singular_value_histograms(spectrum_frame())
    plt.close(figure)
    assert matplotlib.get_backend() == backend
    assert dict(matplotlib.rcParams) == before


def test_histograms_draw_theory_curve():
    from rezero_dynamics.theory import fuss_catalan_overlay

    figure = plot_log10_singular_value_histograms(spectrum_frame(), theory={3: fuss_catalan_overlay(3)})
    labels = [text.get_text() for text in figure.axes[1].get_legend().get_texts()]
    assert "theory" in labels
    assert "theory" not in [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    plt.close(figure)
