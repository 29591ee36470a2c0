import pytest
import torch
from torch import nn

from rezero_dynamics.models import DeepMLP, TransformerBlock, TransformerEncoder
from rezero_dynamics.residual import NORMED_VARIANTS, VARIANTS, BlockStack, ResidualBlock, ReZeroGate, named_alphas


def make_block(variant, width=6, **kwargs):
    torch.manual_seed(0)
    return ResidualBlock(nn.Linear(width, width), variant, width, **kwargs)


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_formula(variant):
    block = make_block(variant, alpha_init=0.7, residual_branches=4)
    if variant == "fixup":
        # Move the Fixup scalars and the zeroed layer off their initial values.
        with torch.no_grad():
            block.fixup_bias_in.fill_(0.3)
            block.fixup_scale.fill_(1.5)
            block.fixup_bias_out.fill_(-0.2)
            block.sublayer.weight.normal_()
    x = torch.randn(3, 6)
    f = block.sublayer
    expected = {
        "none": lambda: f(x),
        "residual": lambda: x + f(x),
        "pre_norm": lambda: x + f(block.norm(x)),
        "post_norm": lambda: block.norm(x + f(x)),
        "rezero": lambda: x + 0.7 * f(x),
        "rezero_pre_norm": lambda: x + 0.7 * f(block.norm(x)),
        "rezero_post_norm": lambda: block.norm(x + 0.7 * f(x)),
        "gpt2": lambda: x + f(block.norm(x)),
        "fixup": lambda: x + (1.5 * f(x + 0.3) - 0.2),
        "zero_gamma": lambda: x + block.norm(f(x)),
        "deepnorm": lambda: block.norm(4**0.25 * x + f(x)),
    }[variant]()
    torch.testing.assert_close(block(x), expected)


def test_rezero_alpha_zero_is_identity():
    block = make_block("rezero")
    x = torch.randn(4, 6)
    assert torch.equal(block(x), x)


def test_norms_only_where_needed():
    for variant in NORMED_VARIANTS:
        assert make_block(variant, residual_branches=4).norm is not None
    for variant in ("none", "residual", "rezero", "fixup"):
        assert make_block(variant, residual_branches=4).norm is None


def test_each_block_owns_its_norm():
    model = DeepMLP(8, 3, variant="post_norm")
    norms = [block.norm for block in model.blocks]
    assert len({id(n) for n in norms}) == 3


def test_batch_norm_selectable():
    model = DeepMLP(8, 2, variant="pre_norm", norm="batch")
    assert isinstance(model.blocks[0].norm, nn.BatchNorm1d)


def test_unknown_variant_message():
    with pytest.raises(ValueError, match=r"unknown residual variant 'rezer0'.*rezero"):
        ResidualBlock(nn.Identity(), "rezer0", 4)


def test_unknown_norm_message():
    with pytest.raises(ValueError, match=r"unknown norm 'group'"):
        ResidualBlock(nn.Identity(), "pre_norm", 4, norm="group")


def test_shared_gate_needs_rezero():
    with pytest.raises(ValueError, match="needs variant 'rezero'"):
        ResidualBlock(nn.Identity(), "residual", 4, gate=ReZeroGate())


def test_block_stack_depth_zero():
    with pytest.raises(ValueError, match="depth 0"):
        BlockStack([])


def test_transformer_one_alpha_per_layer_by_default():
    encoder = TransformerEncoder(8, 3, heads=2, variant="rezero", alpha_init=0.25)
    alphas = encoder.alphas()
    assert list(alphas) == [f"blocks.{i}.gate.alpha" for i in range(3)]
    block = encoder.blocks[0]
    assert block.attention.gate is block.feed_forward.gate
    assert all(a.item() == 0.25 for a in alphas.values())


def test_transformer_alpha_per_sublayer():
    encoder = TransformerEncoder(8, 2, heads=2, variant="rezero", alpha_per_sublayer=True)
    assert list(encoder.alphas()) == [
        "blocks.0.attention.gate.alpha",
        "blocks.0.feed_forward.gate.alpha",
        "blocks.1.attention.gate.alpha",
        "blocks.1.feed_forward.gate.alpha",
    ]


def test_shared_alpha_counted_once_in_parameters():
    encoder = TransformerEncoder(8, 1, heads=2, variant="rezero")
    scalar_parameters = [p for p in encoder.parameters() if p.dim() == 0]
    assert len(scalar_parameters) == 1


def test_shared_alpha_gets_both_gradients():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, 16, "rezero", alpha_init=0.5)
    x = torch.randn(5, 8)
    block(x).square().sum().backward()
    gate = block.gate.alpha
    assert gate.grad is not None and gate.grad.abs() > 0


def test_state_dict_round_trip_keeps_sharing():
    source = TransformerEncoder(8, 2, heads=2, variant="rezero", alpha_init=0.3)
    target = TransformerEncoder(8, 2, heads=2, variant="rezero")
    target.load_state_dict(source.state_dict())
    block = target.blocks[1]
    assert block.attention.gate is block.feed_forward.gate
    assert block.gate.alpha.item() == pytest.approx(0.3)


def test_mlp_alphas_in_block_order():
    model = DeepMLP(4, 3, variant="rezero")
    assert list(model.alphas()) == [f"stack.blocks.{i}.gate.alpha" for i in range(3)]


def test_non_rezero_models_have_no_alphas():
    assert named_alphas(TransformerEncoder(8, 2, heads=2, variant="pre_norm")) == {}


def test_between_is_composable():
    torch.manual_seed(0)
    encoder = TransformerEncoder(8, 4, heads=2, variant="pre_norm")
    x = torch.randn(3, 8)
    middle = encoder.between(1, 3)
    assert middle.blocks[0] is encoder.blocks[1]
    composed = encoder.between(3, 4)(middle(encoder.between(0, 1)(x)))
    torch.testing.assert_close(composed, encoder(x))


@pytest.mark.parametrize(("start", "stop"), [(2, 2), (-1, 2), (0, 5)])
def test_between_invalid_range(start, stop):
    encoder = TransformerEncoder(8, 4, heads=2)
    with pytest.raises(ValueError, match="invalid block range"):
        encoder.between(start, stop)
