import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from rezero_dynamics.spectra import jacobian_spectrum

diagonals = st.lists(
    st.one_of(st.just(0.0), st.floats(min_value=1e-3, max_value=1e3)), min_size=1, max_size=12
).filter(lambda values: any(v != 0 for v in values))


@settings(max_examples=40, deadline=None)
@given(diagonal=diagonals)
def test_diagonal_map_spectrum(diagonal):
    scale = torch.tensor(diagonal, dtype=torch.float64)
    spectrum = jacobian_spectrum(lambda x: x * scale, torch.randn(1, len(diagonal), dtype=torch.float64))
    expected = torch.sort(scale.abs(), descending=True).values
    torch.testing.assert_close(spectrum.singular_values[0], expected)
    zeros = sum(v == 0 for v in diagonal)
    assert spectrum.num_zeros.item() == zeros
    log10 = spectrum.log10_singular_values()
    assert len(log10) == len(diagonal) - zeros
    assert np.all(np.isfinite(log10))
    assert spectrum.chi.item() == pytest.approx(float((scale**2).mean()))
    frame = spectrum.to_frame()
    assert frame["log10_singular_value"].isna().sum() == zeros
    assert frame["is_zero"].sum() == zeros
    assert math.isinf(spectrum.condition_number.item()) == (zeros > 0)


def test_layer_norm_zeros_per_token():
    # LayerNorm's Jacobian at a token removes the constant direction exactly. Without eps it
    # also removes the token's own centred direction (scale invariance); with eps that
    # direction survives, shrunk by about eps / (variance + eps).
    tokens, width = 5, 7
    # Token variances near 9 put the eps-shrunk direction near 1e-6 of the largest value.
    x = 3.0 * torch.randn(2, tokens, width, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with_eps = jacobian_spectrum(nn.LayerNorm(width, eps=1e-5), x)
    assert with_eps.num_zeros.tolist() == [tokens, tokens]
    radial = with_eps.singular_values[:, -2 * tokens : -tokens] / with_eps.max[:, None]
    assert radial.max().item() < 1e-4
    without_eps = jacobian_spectrum(nn.LayerNorm(width, eps=0.0), x)
    assert without_eps.num_zeros.tolist() == [2 * tokens, 2 * tokens]
    assert without_eps.min_nonzero.min().item() > 1e-3


def test_summary_and_frame_columns():
    spectrum = jacobian_spectrum(
        nn.Linear(4, 4).double(), torch.randn(3, 4, dtype=torch.float64), labels={"variant": "x", "depth": 2}
    )
    summary = spectrum.summary()
    assert len(summary) == 3
    for column in ("chi", "max", "min", "min_nonzero", "condition_number", "num_zeros", "mode", "dtype", "module_mode", "variant", "depth"):
        assert column in summary.columns, column
    frame = spectrum.to_frame()
    assert len(frame) == 12
    assert set(frame["depth"]) == {2}
    assert frame.groupby("sample")["index"].max().tolist() == [3, 3, 3]


def test_chi_is_frobenius_over_input_dim():
    weight = torch.randn(3, 6, dtype=torch.float64)
    spectrum = jacobian_spectrum(lambda x: x @ weight.T, torch.randn(1, 6, dtype=torch.float64))
    assert spectrum.chi.item() == pytest.approx(weight.square().sum().item() / 6)
    assert spectrum.in_shape == (6,)
    assert spectrum.out_shape == (3,)
