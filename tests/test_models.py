import pytest
import torch
from torch.func import jacfwd, jacrev, vmap

from rezero_dynamics.models import CharTransformerLM, DeepMLP, TransformerEncoder
from rezero_dynamics.models.transformer import SelfAttention


def test_mlp_shapes_with_projections():
    model = DeepMLP(16, 3, in_features=64, out_features=10)
    assert model(torch.randn(5, 64)).shape == (5, 10)
    assert len(model.blocks) == 3


def test_mlp_mismatched_width_message():
    model = DeepMLP(16, 2)
    with pytest.raises(ValueError, match=r"input has 12 features.*expects 16.*in_features=12"):
        model(torch.randn(3, 12))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"width": 8, "depth": 0}, "depth must be a positive integer, got 0"),
        ({"width": 0, "depth": 2}, "width must be a positive integer, got 0"),
        ({"width": 8, "depth": 2, "activation": "sigmoid"}, "unknown activation 'sigmoid'"),
        ({"width": 8, "depth": 2, "init": "uniform"}, "unknown weight init 'uniform'"),
        ({"width": 8, "depth": 2, "variant": "deep_norm"}, "unknown residual variant 'deep_norm'"),
    ],
)
def test_mlp_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DeepMLP(**kwargs)


def test_gaussian_init_variance():
    generator = torch.Generator().manual_seed(0)
    model = DeepMLP(512, 1, init="gaussian", sigma_w=1.5, generator=generator)
    weight = model.blocks[0].sublayer.linear.weight
    assert weight.var().item() == pytest.approx(1.5**2 / 512, rel=0.02)


def test_orthogonal_init_is_orthogonal():
    model = DeepMLP(32, 1, init="orthogonal", sigma_w=2.0)
    weight = model.blocks[0].sublayer.linear.weight.detach()
    torch.testing.assert_close(weight @ weight.T, 4.0 * torch.eye(32), atol=1e-5, rtol=0)


def test_transformer_heads_must_divide():
    with pytest.raises(ValueError, match="d_model=10 is not divisible by heads=4"):
        TransformerEncoder(10, 2, heads=4)


def test_transformer_wrong_embedding_width():
    encoder = TransformerEncoder(8, 1, heads=2)
    with pytest.raises(ValueError, match=r"expected embeddings of shape \(\.\.\., T, 8\), got \(5, 6\)"):
        encoder(torch.randn(5, 6))


def test_transformer_accepts_any_batch_dims():
    encoder = TransformerEncoder(8, 2, heads=2, variant="pre_norm")
    x = torch.randn(2, 3, 5, 8)
    assert encoder(x).shape == x.shape
    torch.testing.assert_close(encoder(x)[1, 2], encoder(x[1, 2]))


def test_causal_attention_ignores_future():
    torch.manual_seed(0)
    encoder = TransformerEncoder(8, 2, heads=2, variant="post_norm", causal=True)
    x = torch.randn(6, 8)
    changed = x.clone()
    changed[4:] += torch.randn(2, 8)
    torch.testing.assert_close(encoder(x)[:4], encoder(changed)[:4])
    assert not torch.allclose(encoder(x)[4:], encoder(changed)[4:])


def test_causal_first_token_sees_itself_only():
    attention = SelfAttention(8, 2, causal=True)
    x = torch.randn(5, 8)
    # Values and output projection are the identity, so token 0 must return itself.
    attention.out.weight.data = torch.eye(8)
    attention.qkv.weight.data[16:] = torch.eye(8)
    y = attention(x)
    torch.testing.assert_close(y[0], x[0])


@pytest.mark.parametrize("training", [False, True])
def test_attention_under_function_transforms(training):
    torch.manual_seed(0)
    encoder = TransformerEncoder(8, 2, heads=2, variant="rezero", alpha_init=0.5, dropout=0.1 if training else 0.0)
    encoder.train(training)
    x = torch.randn(4, 8)
    assert jacrev(encoder)(x).shape == (4, 8, 4, 8)
    jacobian_forward = jacfwd(encoder, randomness="same")(x)
    assert jacobian_forward.shape == (4, 8, 4, 8)
    batched = vmap(encoder, randomness="different" if training else "error")(torch.randn(3, 4, 8))
    assert batched.shape == (3, 4, 8)
    if not training:
        torch.testing.assert_close(jacrev(encoder)(x), jacobian_forward)


def test_language_model_shapes():
    model = CharTransformerLM(vocab_size=30, d_model=16, depth=2, heads=2, max_len=12)
    tokens = torch.randint(0, 30, (3, 10))
    assert model(tokens).shape == (3, 10, 30)
    assert model.embed(tokens).shape == (3, 10, 16)
    assert model.blocks is model.encoder.blocks
    assert list(model.alphas()) == ["encoder.blocks.0.gate.alpha", "encoder.blocks.1.gate.alpha"]


def test_language_model_is_causal():
    model = CharTransformerLM(vocab_size=30, d_model=16, depth=2, heads=2, variant="pre_norm", max_len=12)
    tokens = torch.randint(0, 30, (1, 8))
    changed = tokens.clone()
    changed[0, 5:] = (changed[0, 5:] + 1) % 30
    torch.testing.assert_close(model(tokens)[0, :5], model(changed)[0, :5])


def test_language_model_too_long():
    model = CharTransformerLM(vocab_size=30, d_model=16, depth=1, heads=2, max_len=8)
    with pytest.raises(ValueError, match="sequence length 9 exceeds max_len=8"):
        model(torch.zeros(1, 9, dtype=torch.int64))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: DeepMLP(8, 2, sigma_w=-1.0), "sigma_w must be a positive finite number, got -1.0"),
        (lambda: DeepMLP(8, 2, sigma_w=float("nan")), "sigma_w must be a positive finite number"),
        (lambda: DeepMLP(8, 2, sigma_b=-0.1), "sigma_b must be a finite number >= 0"),
        (lambda: DeepMLP(8, 2, variant="rezero", alpha_init=float("nan")), "alpha_init must be a finite number"),
        (lambda: DeepMLP(8, 2, variant="rezero", norm="bogus"), "unknown norm 'bogus'"),
        (lambda: TransformerEncoder(8, 2, heads=2, alpha_init=float("inf")), "alpha_init must be a finite number"),
        (lambda: CharTransformerLM(20, d_model=0), "d_model must be a positive integer, got 0"),
    ],
)
def test_model_argument_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()
