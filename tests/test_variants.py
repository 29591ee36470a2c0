"""Residual variants beyond the basic five: GPT-2, Fixup, zero-gamma, DeepNorm, ReZero with norms."""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional

from rezero_dynamics.models import CharTransformerLM, DeepMLP, TransformerEncoder
from rezero_dynamics.residual import VARIANTS, ResidualBlock
from rezero_dynamics.studies import compare
from rezero_dynamics.tracking import read_records
from rezero_dynamics.training import TrainConfig

NEW_VARIANTS = ("gpt2", "fixup", "zero_gamma", "deepnorm", "rezero_pre_norm", "rezero_post_norm")


def xavier_uniform_std(linear: nn.Linear) -> float:
    return math.sqrt(2.0 / (linear.in_features + linear.out_features))


def branch_outputs(block: ResidualBlock, x: torch.Tensor) -> torch.Tensor:
    """The branch term that a Fixup or zero-gamma block adds to ``x``."""
    if block.variant == "fixup":
        return block.fixup_scale * block.sublayer(x + block.fixup_bias_in) + block.fixup_bias_out
    return block.norm(block.sublayer(x))


def test_new_variants_registered():
    assert set(NEW_VARIANTS) <= set(VARIANTS)


@pytest.mark.parametrize("variant", ["fixup", "zero_gamma"])
def test_transformer_branches_zero_at_init(variant):
    encoder = TransformerEncoder(16, 3, heads=2, variant=variant)
    x = torch.randn(2, 5, 16)
    for layer in encoder.blocks:
        for block in (layer.attention, layer.feed_forward):
            assert torch.equal(branch_outputs(block, x), torch.zeros_like(x))
    assert torch.equal(encoder(x), x)


@pytest.mark.parametrize("variant", ["fixup", "zero_gamma"])
@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_mlp_branches_zero_at_init(variant, norm):
    model = DeepMLP(12, 4, activation="tanh", variant=variant, norm=norm, sigma_b=0.5)
    x = torch.randn(8, 12)
    for block in model.blocks:
        assert torch.equal(branch_outputs(block, x), torch.zeros_like(x))
    assert torch.equal(model(x), x)


def test_fixup_zeroes_head_and_scales_inner_layers():
    torch.manual_seed(3)
    plain = TransformerEncoder(16, 4, heads=2, variant="residual")
    torch.manual_seed(3)
    fixup = TransformerEncoder(16, 4, heads=2, variant="fixup")
    # L = 8 residual branches of m = 2 weight layers: inner layers scaled by 8^(-1/2).
    scale = 8 ** (-1.0 / (2 * 2 - 2))
    for plain_layer, fixup_layer in zip(plain.blocks, fixup.blocks):
        attention, feed_forward = fixup_layer.attention.sublayer, fixup_layer.feed_forward.sublayer
        torch.testing.assert_close(attention.qkv.weight, scale * plain_layer.attention.sublayer.qkv.weight)
        torch.testing.assert_close(feed_forward.expand.weight, scale * plain_layer.feed_forward.sublayer.expand.weight)
        assert torch.count_nonzero(attention.out.weight) == 0
        assert torch.count_nonzero(feed_forward.contract.weight) == 0
    model = CharTransformerLM(20, d_model=16, depth=2, heads=2, variant="fixup", max_len=8)
    assert torch.count_nonzero(model.head.weight) == 0


def test_fixup_relu_mlp_rejected():
    with pytest.raises(ValueError, match="'fixup' with activation 'relu' cannot learn.*only the output bias fixup_bias_out learns"):
        DeepMLP(8, 2, activation="relu", variant="fixup")


def test_fixup_relu_block_gradients():
    """The rejection message's claim: at Fixup's zero init only the output bias gets a gradient."""
    from rezero_dynamics.models.mlp import DenseBranch

    branch = DenseBranch(8, "relu")
    nn.init.zeros_(branch.linear.weight)
    nn.init.zeros_(branch.linear.bias)
    block = ResidualBlock(branch, "fixup", 8, residual_branches=2)
    block(torch.randn(4, 8)).square().sum().backward()
    gradients = {name: parameter.grad for name, parameter in block.named_parameters()}
    assert gradients["fixup_bias_out"].abs() > 0
    for name in ("sublayer.linear.weight", "sublayer.linear.bias", "fixup_scale", "fixup_bias_in"):
        assert torch.count_nonzero(gradients[name]) == 0, name


def test_gpt2_output_projection_std():
    depth, d_model = 6, 64
    encoder = TransformerEncoder(d_model, depth, heads=4, variant="gpt2")
    out = torch.cat([layer.attention.sublayer.out.weight.flatten() for layer in encoder.blocks])
    contract = torch.cat([layer.feed_forward.sublayer.contract.weight.flatten() for layer in encoder.blocks])
    first = encoder.blocks[0]
    cases = [
        (out, xavier_uniform_std(first.attention.sublayer.out) / math.sqrt(2 * depth)),
        (contract, xavier_uniform_std(first.feed_forward.sublayer.contract) / math.sqrt(2 * depth)),
    ]
    for weights, expected in cases:
        # The sample std of n i.i.d. uniform entries has relative standard error
        # sqrt((kurtosis - 1) / (4 n)) with kurtosis 9/5; allow 5 standard errors.
        tolerance = 5 * math.sqrt(0.8 / (4 * weights.numel()))
        assert weights.std().item() == pytest.approx(expected, rel=tolerance)
    # Layers that do not end a branch keep their unscaled initialisation.
    qkv = torch.cat([layer.attention.sublayer.qkv.weight.flatten() for layer in encoder.blocks])
    qkv_std = xavier_uniform_std(first.attention.sublayer.qkv)
    assert qkv.std().item() == pytest.approx(qkv_std, rel=5 * math.sqrt(0.8 / (4 * qkv.numel())))


def test_gpt2_mlp_weight_std():
    width, depth, sigma_w = 128, 8, 1.3
    model = DeepMLP(width, depth, variant="gpt2", sigma_w=sigma_w)
    weights = torch.cat([block.sublayer.linear.weight.flatten() for block in model.blocks])
    # One residual branch per block, so L = depth; Gaussian entries: relative error sqrt(2 / (4 n)).
    expected = sigma_w / math.sqrt(width) / math.sqrt(depth)
    assert weights.std().item() == pytest.approx(expected, rel=5 * math.sqrt(0.5 / weights.numel()))


@pytest.mark.parametrize("build", [
    lambda: TransformerEncoder(8, 2, heads=2, variant="gpt2"),
    lambda: DeepMLP(8, 2, variant="gpt2").stack,
])
def test_gpt2_stack_has_final_norm(build):
    stack = build()
    assert stack.final_norm is not None
    x = torch.randn(3, 8)
    torch.testing.assert_close(stack(x), stack.final_norm(stack.between(0, 2)(x)))


def test_deepnorm_layer_by_hand():
    depth, d_model = 3, 16
    encoder = TransformerEncoder(d_model, depth, heads=2, variant="deepnorm")
    a = (2 * depth) ** 0.25
    x = torch.randn(5, d_model)
    hidden = x
    for layer in encoder.blocks:
        for block in (layer.attention, layer.feed_forward):
            norm = block.norm
            hidden = functional.layer_norm(
                a * hidden + block.sublayer(hidden), (d_model,), norm.weight, norm.bias, norm.eps
            )
    torch.testing.assert_close(encoder(x), hidden, rtol=0, atol=1e-6)


def test_deepnorm_weight_scale():
    depth, d_model = 4, 16
    torch.manual_seed(7)
    post_norm = TransformerEncoder(d_model, depth, heads=2, variant="post_norm")
    torch.manual_seed(7)
    deepnorm = TransformerEncoder(d_model, depth, heads=2, variant="deepnorm")
    b = (8 * depth) ** -0.25
    for reference, layer in zip(post_norm.blocks, deepnorm.blocks):
        qkv, reference_qkv = layer.attention.sublayer.qkv.weight, reference.attention.sublayer.qkv.weight
        torch.testing.assert_close(qkv[: 2 * d_model], reference_qkv[: 2 * d_model])  # queries, keys
        torch.testing.assert_close(qkv[2 * d_model :], b * reference_qkv[2 * d_model :])  # values
        pairs = [
            (layer.attention.sublayer.out, reference.attention.sublayer.out),
            (layer.feed_forward.sublayer.expand, reference.feed_forward.sublayer.expand),
            (layer.feed_forward.sublayer.contract, reference.feed_forward.sublayer.contract),
        ]
        for scaled, unscaled in pairs:
            torch.testing.assert_close(scaled.weight, b * unscaled.weight)
    assert deepnorm.blocks[0].attention.residual_scale == pytest.approx((2 * depth) ** 0.25)


def test_depth_aware_block_needs_branch_count():
    with pytest.raises(ValueError, match="variant 'deepnorm' needs residual_branches"):
        ResidualBlock(nn.Linear(4, 4), "deepnorm", 4)


def test_branch_without_weight_layer_rejected():
    with pytest.raises(ValueError, match="Tanh has no nn.Linear or convolution layer"):
        ResidualBlock(nn.Tanh(), "gpt2", 4, residual_branches=2)


def test_rezero_with_norms_at_alpha_zero():
    x = torch.randn(4, 6) * 3 + 1
    pre = ResidualBlock(nn.Linear(6, 6), "rezero_pre_norm", 6)
    post = ResidualBlock(nn.Linear(6, 6), "rezero_post_norm", 6)
    assert torch.equal(pre(x), x)
    assert torch.equal(post(x), post.norm(x))
    assert not torch.allclose(post(x), x)


def test_rezero_norm_variants_share_gate_in_transformer():
    for variant in ("rezero_pre_norm", "rezero_post_norm"):
        encoder = TransformerEncoder(8, 2, heads=2, variant=variant, alpha_init=0.1)
        assert list(encoder.alphas()) == ["blocks.0.gate.alpha", "blocks.1.gate.alpha"]
        assert encoder.blocks[0].attention.gate is encoder.blocks[0].feed_forward.gate


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_three_steps(variant):
    models = [
        (CharTransformerLM(12, d_model=16, depth=2, heads=2, variant=variant, max_len=8), "lm"),
        (DeepMLP(16, 3, activation="tanh", variant=variant, in_features=10, out_features=4), "mlp"),
    ]
    for model, kind in models:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        before = [p.detach().clone() for p in model.parameters()]
        for _ in range(3):
            if kind == "lm":
                tokens = torch.randint(0, 12, (4, 9))
                logits = model(tokens[:, :-1])
                loss = functional.cross_entropy(logits.reshape(-1, 12), tokens[:, 1:].reshape(-1))
            else:
                loss = functional.cross_entropy(model(torch.randn(8, 10)), torch.randint(0, 4, (8,)))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in model.parameters())
        assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_post_norm_with_warmup_in_compare(tmp_path):
    base = TrainConfig(task="classifier", data="digits", width=16, depth=2, activation="tanh", batch_size=8,
                       steps=3, eval_every=0, checkpoint_every=0, lr=0.01)
    runs = compare(
        base, tmp_path, variants=["post_norm", "post_norm_warmup"], depths=[2],
        overrides={"post_norm_warmup": {"variant": "post_norm", "warmup_steps": 2}},
    )
    assert runs["status"].tolist() == ["completed", "completed"]
    config = json.loads((tmp_path / "runs" / "post_norm_warmup-L2-s0" / "config.json").read_text())
    assert config["variant"] == "post_norm"
    assert config["warmup_steps"] == 2
    records = read_records(tmp_path / "runs" / "post_norm_warmup-L2-s0")
    lr = records[records["quantity"] == "lr"].sort_values("step")["value"].tolist()
    assert lr == pytest.approx([0.005, 0.01, 0.01])


def test_compare_alpha_init_only_for_gated(tmp_path):
    base = TrainConfig(task="classifier", data="digits", width=16, depth=2, activation="tanh", batch_size=8,
                       steps=2, eval_every=0, checkpoint_every=0, alpha_init=0.5)
    runs = compare(base, tmp_path, variants=["residual", "rezero"], depths=[2])
    assert runs["status"].tolist() == ["completed", "completed"]
    residual = json.loads((tmp_path / "runs" / "residual-L2-s0" / "config.json").read_text())
    rezero = json.loads((tmp_path / "runs" / "rezero-L2-s0" / "config.json").read_text())
    assert residual["alpha_init"] == 0.0
    assert rezero["alpha_init"] == 0.5
