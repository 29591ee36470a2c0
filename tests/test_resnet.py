"""CIFAR ResNets: He et al.'s layer and parameter counts, ReZero identity at init, training."""

import pytest
import torch
from torch import nn
from torch.nn import functional

from rezero_dynamics.models import RESNET_VARIANTS, CifarResNet, ResNetBlock
from rezero_dynamics.spectra import jacobian_spectrum
from rezero_dynamics.training import TrainConfig, read_status, train

# Parameters of ResNet-20, 56 and 110 for CIFAR-10 as He et al. 2016 print them (rounded).
PUBLISHED_MILLIONS = {20: ("0.27", 2), 56: ("0.85", 2), 110: ("1.7", 1)}


def expected_parameters(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Count He et al.'s option-A ResNet by hand: 3x3 convolutions without bias, BN scale and shift."""
    n = (depth - 2) // 6
    total = in_channels * 16 * 9 + 2 * 16  # stem convolution and its batch norm
    width = 16
    for channels in (16, 32, 64):
        for _ in range(n):
            total += width * channels * 9 + 2 * channels  # first convolution and batch norm
            total += channels * channels * 9 + 2 * channels  # second convolution and batch norm
            width = channels
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_resnet_weighted_layer_count(depth):
    model = CifarResNet(depth)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth
    assert len(model.blocks) == 3 * (depth - 2) // 6


@pytest.mark.parametrize("depth", [20, 56, 110])
def test_resnet_parameter_count(depth):
    count = sum(p.numel() for p in CifarResNet(depth).parameters())
    assert count == expected_parameters(depth)
    printed, digits = PUBLISHED_MILLIONS[depth]
    assert f"{count / 1e6:.{digits}f}" == printed


def test_zero_gamma_same_parameters_as_standard():
    standard = sum(p.numel() for p in CifarResNet(20).parameters())
    assert sum(p.numel() for p in CifarResNet(20, variant="zero_gamma").parameters()) == standard


@pytest.mark.parametrize("training", [True, False])
def test_rezero_blocks_identity_at_init(training):
    model = CifarResNet(20, variant="rezero").train(training)
    x = model.embed(torch.randn(4, 3, 32, 32))
    internal = 0
    for block in model.blocks:
        y = block(x)
        if block.downsamples:
            assert torch.equal(y, block.residual.shortcut(x))
        else:
            internal += 1
            assert torch.equal(y, x)
        x = y
    assert internal == 7  # 9 blocks, 2 of which downsample


def test_standard_blocks_not_identity():
    model = CifarResNet(20, variant="residual").eval()
    x = model.embed(torch.randn(2, 3, 32, 32))
    assert not torch.allclose(model.blocks[1](x), x)


@pytest.mark.parametrize("variant", ["zero_gamma", "fixup"])
def test_zero_branch_blocks_at_init(variant):
    # Inputs after the stem's ReLU are >= 0, so ReLU(S(x) + 0) = S(x): each block is its shortcut.
    model = CifarResNet(14, variant=variant)
    x = model.embed(torch.randn(3, 3, 16, 16))
    assert (x >= 0).all()
    for block in model.blocks:
        skip = x if block.residual.shortcut is None else block.residual.shortcut(x)
        y = block(x)
        assert torch.equal(y, skip)
        x = y


def test_fixup_resnet_initialisation():
    torch.manual_seed(5)
    plain = CifarResNet(14, variant="residual", batch_norm=False)
    torch.manual_seed(5)
    fixup = CifarResNet(14, variant="fixup")
    # L = 6 branches of m = 2 convolutions: the first is scaled by 6^(-1/2), the second is 0.
    for reference, block in zip(plain.blocks, fixup.blocks):
        branch = block.residual.sublayer
        torch.testing.assert_close(branch.conv1.weight, reference.residual.sublayer.conv1.weight / 6**0.5)
        assert torch.count_nonzero(branch.conv2.weight) == 0
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fixup.modules())
    assert torch.count_nonzero(fixup(torch.randn(2, 3, 16, 16))) == 0  # the head starts at 0


def test_rezero_block_jacobian_is_identity():
    model = CifarResNet(14, variant="rezero")
    x = model.embed(torch.randn(2, 3, 4, 4)).detach()  # (2, 16, 4, 4): a 256 x 256 Jacobian
    spectrum = jacobian_spectrum(model.stack.between(0, 2), x, dtype=torch.float64)
    assert model.blocks[1].downsamples is False
    torch.testing.assert_close(spectrum.singular_values, torch.ones(2, 256, dtype=torch.float64))
    standard = CifarResNet(14, variant="residual")
    x = standard.embed(torch.randn(1, 3, 4, 4)).detach()
    values = jacobian_spectrum(standard.stack.between(0, 1), x, dtype=torch.float64).singular_values
    assert (values - 1).abs().max() > 0.1


@pytest.mark.parametrize("variant", RESNET_VARIANTS)
def test_resnet_variants_train_three_steps(variant):
    model = CifarResNet(8, variant=variant, in_channels=1, image_shape=(1, 8, 8))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        loss = functional.cross_entropy(model(torch.randn(8, 64)), torch.randint(0, 10, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


@pytest.mark.parametrize(("stride", "side"), [(1, 8), (2, 4)])
def test_rezero_block_shortcut_follows_stride(stride, side):
    block = ResNetBlock(16, 32, stride, "rezero", residual_branches=3)
    x = torch.randn(2, 16, 8, 8)
    y = block(x)
    assert y.shape == (2, 32, side, side)
    # alpha = 0: the output is the option-A shortcut, x subsampled by the stride with 16 zero channels.
    expected = functional.pad(x[..., ::stride, ::stride], (0, 0, 0, 0, 0, 16))
    assert torch.equal(y, expected)


def test_rezero_resnet_alphas():
    model = CifarResNet(8, variant="rezero", alpha_init=0.25)
    alphas = model.alphas()
    assert list(alphas) == [f"stack.blocks.{i}.residual.gate.alpha" for i in range(3)]
    assert all(a.item() == 0.25 for a in alphas.values())
    assert CifarResNet(8).alphas() == {}


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: CifarResNet(12), "6n \\+ 2 layers .* got depth 12"),
        (lambda: CifarResNet(20, variant="pre_norm"), "variant 'pre_norm' is not available for the CIFAR ResNet"),
        (lambda: CifarResNet(20, variant="prenorm"), "unknown residual variant 'prenorm'"),
        (lambda: CifarResNet(20, in_channels=1, image_shape=(3, 32, 32)), "image_shape must be"),
    ],
)
def test_resnet_argument_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_resnet_input_shape_errors():
    model = CifarResNet(8, in_channels=1, image_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="flattened images have 63 features"):
        model(torch.randn(2, 63))
    with pytest.raises(ValueError, match=r"expected images of shape \(B, 3, H, W\)"):
        CifarResNet(8)(torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "lm"}, "needs task 'classifier'"),
        ({"variant": "gpt2"}, "variant 'gpt2' is not available for the ResNet"),
        ({"depth": 12}, "got depth 12"),
        ({"classifier_model": "vgg"}, "unknown classifier_model 'vgg'"),
    ],
)
def test_resnet_config_errors(settings, message):
    config = {"task": "classifier", "data": "digits", "classifier_model": "resnet", "depth": 20, **settings}
    if config["task"] == "lm":
        config["data"] = "default"
    with pytest.raises(ValueError, match=message):
        TrainConfig(**config).validate()


def test_train_resnet_on_digits(tmp_path):
    config = TrainConfig(task="classifier", data="digits", classifier_model="resnet", depth=8, variant="rezero",
                         batch_size=8, steps=3, eval_every=0, checkpoint_every=0, optimizer="sgd", lr=0.05)
    result = train(config, tmp_path / "run")
    assert result.status == "completed"
    assert read_status(tmp_path / "run")["status"] == "completed"
