import math

import numpy as np
import pytest
import torch
from torch import nn

from rezero_dynamics.models import DeepMLP, TransformerEncoder
from rezero_dynamics.spectra import jacobian_spectrum
from rezero_dynamics.spectra.depth_profile import depth_profile


def test_last_block_matches_whole_stack():
    model = DeepMLP(16, 6, activation="tanh", variant="pre_norm", sigma_w=1.5)
    x = torch.randn(1, 16, dtype=torch.float64)
    profile = depth_profile(model.stack, x)
    for depth in (1, 3, 6):
        exact = jacobian_spectrum(model.stack.between(0, depth), x).singular_values[0].numpy()
        measured = 10 ** profile.frame.query("block == @depth")["log10_singular_value"].to_numpy()
        np.testing.assert_allclose(measured, exact, rtol=1e-10)
    qr = depth_profile(model.stack, x, method="qr")
    np.testing.assert_allclose(
        qr.frame["log10_singular_value"].to_numpy(), profile.frame["log10_singular_value"].to_numpy(), atol=1e-10
    )


def test_post_norm_zeros_counted():
    encoder = TransformerEncoder(8, 3, heads=2, variant="post_norm")
    profile = depth_profile(encoder, torch.randn(1, 3, 8, dtype=torch.float64))
    assert (profile.summary["num_zeros"] >= 3).all()  # each LayerNorm removes one direction per token
    with pytest.raises(ValueError, match="rank-deficient.*method='svd'"):
        depth_profile(encoder, torch.randn(1, 3, 8, dtype=torch.float64), method="qr")


def test_sequential_supported():
    torch.manual_seed(0)
    sequential = nn.Sequential(nn.Linear(5, 5), nn.Tanh(), nn.Linear(5, 5)).double()
    x = torch.randn(1, 5, dtype=torch.float64)
    profile = depth_profile(sequential, x)
    exact = jacobian_spectrum(sequential, x).singular_values[0].numpy()
    np.testing.assert_allclose(10 ** profile.frame.query("block == 3")["log10_singular_value"].to_numpy(), exact, rtol=1e-10)


def test_two_thousand_linear_layers_stay_finite():
    depth, width = 2000, 16
    model = DeepMLP(width, depth, activation="linear", bias=False, generator=torch.Generator().manual_seed(0))
    profile = depth_profile(model.stack, torch.randn(1, width, dtype=torch.float64), method="qr")
    values = profile.frame["log10_singular_value"].to_numpy()
    assert np.isfinite(values).all()
    log_dets = np.cumsum(
        [torch.linalg.slogdet(block.sublayer.linear.weight.double())[1].item() for block in model.blocks]
    )
    np.testing.assert_allclose(profile.summary["log_abs_det"].to_numpy(), log_dets, rtol=1e-10)
    last = profile.frame.query("block == @depth")["log10_singular_value"].to_numpy() * math.log(10)
    assert last.sum() == pytest.approx(log_dets[-1], rel=1e-10)
    assert last.max() - last.min() > 650  # beyond the range float64 could hold in one matrix
    assert set(profile.frame.query("block == @depth")["source"]) == {"qr_diagonal"}


def test_profile_bad_arguments():
    with pytest.raises(ValueError, match="unknown depth-profile method 'lu'"):
        depth_profile(nn.Sequential(nn.Identity()), torch.randn(3), method="lu")
    with pytest.raises(ValueError, match="has no 'blocks' and is not an nn.Sequential"):
        depth_profile(nn.Linear(3, 3), torch.randn(3))
    with pytest.raises(ValueError, match="keep the size"):
        depth_profile(nn.Sequential(nn.Linear(3, 4)), torch.randn(3, dtype=torch.float64))
