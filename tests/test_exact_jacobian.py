"""Exact Jacobians against identities and brute-force references."""

import math

import pytest
import torch
from torch import nn

from conftest import autograd_row_loop
from rezero_dynamics.models import DeepMLP, TransformerEncoder
from rezero_dynamics.spectra import (
    JacobianTooLargeError,
    NonFiniteError,
    jacobian_matrix,
    jacobian_spectrum,
)


@pytest.mark.parametrize("depth", [1, 12, 64])
def test_rezero_transformer_isometric_at_init(depth):
    encoder = TransformerEncoder(8, depth, heads=2, variant="rezero")
    spectrum = jacobian_spectrum(encoder, torch.randn(2, 4, 8, dtype=torch.float64))
    torch.testing.assert_close(spectrum.singular_values, torch.ones(2, 32, dtype=torch.float64), atol=1e-12, rtol=0)
    assert spectrum.num_zeros.tolist() == [0, 0]


@pytest.mark.parametrize("depth", [1, 12, 64])
def test_rezero_mlp_isometric_at_init(depth):
    model = DeepMLP(16, depth, activation="tanh", variant="rezero", sigma_w=3.0)
    spectrum = jacobian_spectrum(model.stack, torch.randn(3, 16, dtype=torch.float64))
    torch.testing.assert_close(spectrum.singular_values, torch.ones(3, 16, dtype=torch.float64), atol=1e-12, rtol=0)
    assert spectrum.chi.tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_linear_residual_mlp_is_product(float64_default):
    alpha, width, depth = 0.3, 12, 5
    model = DeepMLP(width, depth, activation="linear", variant="rezero", alpha_init=alpha, bias=False)
    expected = torch.eye(width)
    for block in model.blocks:
        expected = (torch.eye(width) + alpha * block.sublayer.linear.weight.detach()) @ expected
    for mode in ("forward", "reverse"):
        jacobian = jacobian_matrix(model, torch.randn(1, width), mode=mode)
        torch.testing.assert_close(jacobian, expected, atol=1e-13, rtol=0)


@pytest.mark.parametrize("model_kind", ["tanh_mlp", "transformer", "causal_transformer"])
def test_modes_agree_with_row_loop(model_kind, float64_default):
    torch.manual_seed(0)
    if model_kind == "tanh_mlp":
        model = DeepMLP(10, 6, activation="tanh", variant="pre_norm", sigma_w=1.5, sigma_b=0.1)
        x = torch.randn(1, 10)
    else:
        model = TransformerEncoder(8, 3, heads=2, variant="post_norm", causal=model_kind == "causal_transformer")
        x = torch.randn(5, 8)
    model.eval()
    reference = autograd_row_loop(model, x)
    for mode in ("forward", "reverse"):
        jacobian = jacobian_matrix(model, x, mode=mode)
        assert (jacobian - reference).abs().max().item() < 1e-10, mode
    chunked = jacobian_matrix(model, x, mode="reverse", chunk_size=7)
    assert (chunked - reference).abs().max().item() < 1e-10


def test_causal_jacobian_block_lower_triangular():
    tokens, width = 6, 8
    encoder = TransformerEncoder(width, 2, heads=2, variant="pre_norm", causal=True)
    jacobian = jacobian_matrix(encoder, torch.randn(tokens, width, dtype=torch.float64))
    blocks = jacobian.reshape(tokens, width, tokens, width)  # (t_out, d_out, t_in, d_in)
    for t_out in range(tokens):
        for t_in in range(tokens):
            block_norm = blocks[t_out, :, t_in, :].abs().max().item()
            if t_in > t_out:
                assert block_norm == 0.0, (t_out, t_in)
            else:
                assert block_norm > 0.0, (t_out, t_in)


def test_non_causal_jacobian_is_dense():
    encoder = TransformerEncoder(8, 1, heads=2, variant="pre_norm")
    blocks = jacobian_matrix(encoder, torch.randn(4, 8, dtype=torch.float64)).reshape(4, 8, 4, 8)
    assert blocks[0, :, 3, :].abs().max().item() > 0


def test_parameters_get_no_gradient_and_state_is_kept():
    model = DeepMLP(8, 3, variant="pre_norm", norm="batch", activation="tanh")
    model.train()
    model.blocks[1].eval()
    with torch.no_grad():
        model(torch.randn(16, 8))  # give the running statistics non-default values
    model.blocks[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]

    jacobian = jacobian_matrix(model, torch.randn(1, 8), dtype=torch.float64)

    assert not jacobian.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key
        assert value.dtype == before[key].dtype, key


def test_batch_norm_in_training_rejected():
    model = DeepMLP(8, 2, variant="post_norm", norm="batch")
    with pytest.raises(ValueError, match="BatchNorm in training mode.*module_mode='eval'"):
        jacobian_matrix(model, torch.randn(1, 8), module_mode="train")
    assert model.training  # restored after the error


def test_dropout_train_mode_modes_agree():
    encoder = TransformerEncoder(8, 2, heads=2, variant="rezero", alpha_init=1.0, dropout=0.3)
    x = torch.randn(4, 8, dtype=torch.float64)
    state = torch.get_rng_state()
    forward = jacobian_matrix(encoder, x, mode="forward", module_mode="train", seed=3, chunk_size=5)
    reverse = jacobian_matrix(encoder, x, mode="reverse", module_mode="train", seed=3)
    evaluated = jacobian_matrix(encoder, x, module_mode="eval")
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(forward, reverse, atol=1e-12, rtol=0)
    assert not torch.allclose(forward, evaluated)


def test_plain_function_and_rectangular_map():
    weight = torch.randn(3, 5, dtype=torch.float64)
    jacobian = jacobian_matrix(lambda x: torch.tanh(x @ weight.T), torch.randn(5, dtype=torch.float64))
    assert jacobian.shape == (3, 5)
    spectrum = jacobian_spectrum(lambda x: x @ weight.T, torch.randn(2, 5, dtype=torch.float64))
    assert spectrum.singular_values.shape == (2, 3)
    torch.testing.assert_close(spectrum.singular_values[0], torch.linalg.svdvals(weight))


def test_memory_budget_error_before_allocating():
    encoder = TransformerEncoder(64, 1, heads=4)
    with pytest.raises(JacobianTooLargeError, match=r"4096 x 4096 in float32, 64\.0 MiB.*raise memory_budget"):
        jacobian_matrix(encoder, torch.randn(64, 64), memory_budget=100 * 2**20)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_rejected(bad):
    x = torch.randn(2, 4, 8)
    x[1, 2, 3] = bad
    with pytest.raises(NonFiniteError, match="inputs contains 1 non-finite value"):
        jacobian_spectrum(TransformerEncoder(8, 1, heads=2), x)


def test_nan_output_rejected():
    model = DeepMLP(4, 2, variant="residual")
    with torch.no_grad():
        model.blocks[1].sublayer.linear.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"sample 0: the model's output contains"):
        jacobian_spectrum(model, torch.randn(2, 4))


def test_integer_inputs_rejected():
    with pytest.raises(ValueError, match=r"floating-point inputs.*model\.embed"):
        jacobian_spectrum(nn.Identity(), torch.zeros(2, 3, dtype=torch.int64))


def test_unknown_mode_rejected():
    with pytest.raises(ValueError, match="unknown Jacobian mode 'sideways'"):
        jacobian_matrix(nn.Identity(), torch.randn(3), mode="sideways")


def test_float64_leaves_module_float32():
    model = DeepMLP(6, 2, variant="pre_norm")
    spectrum = jacobian_spectrum(model, torch.randn(2, 6), dtype=torch.float64)
    assert spectrum.dtype == "float64"
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_float32_and_float64_agree():
    model = DeepMLP(16, 4, activation="tanh", variant="none", sigma_w=1.2)
    x = torch.randn(2, 16)
    single = jacobian_spectrum(model, x, dtype=torch.float32).singular_values
    double = jacobian_spectrum(model, x, dtype=torch.float64).singular_values
    torch.testing.assert_close(single, double, rtol=1e-4, atol=1e-5)


def test_depth_64_post_norm_versus_rezero():
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    torch.manual_seed(1)
    post = jacobian_spectrum(TransformerEncoder(16, 64, heads=2, variant="post_norm"), x)
    rezero = jacobian_spectrum(TransformerEncoder(16, 64, heads=2, variant="rezero"), x)
    relative = post.singular_values / post.max[:, None]
    assert (relative < 1e-3).double().mean().item() > 0.5
    # The last LayerNorm alone removes the constant direction of each of the 4 tokens.
    assert post.num_zeros.min().item() >= 4
    assert torch.all((rezero.singular_values - 1).abs() < 1e-12)
    assert math.isinf(post.condition_number[0].item())


class TiedPair(nn.Module):
    """Two Linear layers sharing one weight Parameter, as tied embeddings and heads do."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(4, 4, bias=False)
        self.second = nn.Linear(4, 4, bias=False)
        self.second.weight = self.first.weight

    def forward(self, x):
        return self.second(torch.tanh(self.first(x)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_and_tied_parameters_kept(dtype):
    encoder = TransformerEncoder(8, 2, heads=2, variant="rezero", alpha_init=0.5)
    tied = TiedPair()
    for module, x in ((encoder, torch.randn(1, 3, 8)), (tied, torch.randn(1, 4))):
        before = dict(module.named_parameters(remove_duplicate=False))
        jacobian_spectrum(module, x, dtype=dtype)
        after = dict(module.named_parameters(remove_duplicate=False))
        for name, parameter in before.items():
            assert after[name] is parameter, name
            assert isinstance(after[name], nn.Parameter), name
    assert encoder.blocks[0].attention.gate.alpha is encoder.blocks[0].gate.alpha


def test_tied_weights_jacobian_in_float64():
    tied = TiedPair()
    x = torch.randn(4, dtype=torch.float64)
    weight = tied.first.weight.detach().double()
    expected = weight @ torch.diag(1 - torch.tanh(weight @ x) ** 2) @ weight
    torch.testing.assert_close(jacobian_matrix(tied, x, dtype=torch.float64), expected)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"chunk_size": -3}, "chunk_size must be a positive integer or None, got -3"),
        ({"chunk_size": 0}, "chunk_size must be a positive integer or None, got 0"),
        ({"memory_budget": 0}, "memory_budget must be a positive number of bytes, got 0"),
        ({"memory_budget": float("nan")}, "memory_budget must be a positive number of bytes"),
        ({"dtype": torch.bfloat16}, "use torch.float32 or torch.float64"),
        ({"dtype": torch.int32}, "use torch.float32 or torch.float64"),
        ({"zero_rtol": -1.0}, "zero_rtol must be a finite number >= 0"),
    ],
)
def test_option_errors(options, message):
    with pytest.raises(ValueError, match=message):
        jacobian_spectrum(nn.Linear(4, 4), torch.randn(1, 4), **options)


def test_budget_checked_before_forward_pass():
    calls = []
    encoder = TransformerEncoder(8, 1, heads=2)
    # The shape check runs the model on the meta device, which allocates nothing.
    encoder.blocks[0].register_forward_hook(lambda module, inputs, output: calls.append(output.device.type))
    with pytest.raises(JacobianTooLargeError, match=r"160000 x 160000"):
        jacobian_spectrum(encoder, torch.randn(1, 20_000, 8))
    assert "cpu" not in calls
