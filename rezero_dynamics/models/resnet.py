"""CIFAR-style residual networks (He et al. 2016, "Deep Residual Learning for Image
Recognition", arXiv 1512.03385), with ReZero and its baselines.

ResNet-(6n+2): a 3x3 convolution with 16 channels, three stages of n blocks with 16, 32
and 64 channels (the first block of stages 2 and 3 halves the image side with stride 2),
global average pooling and a linear classifier. Each block has two 3x3 convolutions, so
the network has 6n + 2 weighted layers: ResNet-20, 56 and 110 have n = 3, 9 and 18.

Shortcuts are He et al.'s option A, which they used on CIFAR-10: the identity, and at a
stage change a parameter-free map that keeps every second pixel in each direction and
appends zero channels. All parameters are in convolutions, batch norms and the head,
which matches He et al.'s parameter counts (0.27M, 0.85M and 1.7M for ResNet-20, 56
and 110 with 10 classes).

Blocks by ``variant`` (F's convolutions are 3x3, BN is BatchNorm2d, S the shortcut):

* ``residual``: ReLU(S(x) + F(x)), F = conv-BN-ReLU-conv-BN (He et al.);
* ``none``: ReLU(F(x)), the plain network of the same depth;
* ``rezero``: S(x) + alpha * F(x), F = conv-BN-ReLU-conv-BN-ReLU, alpha starting at 0:
  the ReLU moves into the branch and nothing follows the addition, so a block without
  downsampling is the identity at initialisation. Keeping the batch norms is this
  module's choice (``batch_norm=False`` removes them); whether the ReZero paper kept
  them was not checked here;
* ``zero_gamma``: ReLU(S(x) + BN(F(x))), F = conv-BN-ReLU-conv, with the last BN's scale
  starting at 0 (Goyal et al. 2017): the standard block with gamma = 0;
* ``fixup``: ReLU(S(x) + s * F(x + a) + b), F = conv-ReLU-conv without batch norm, its
  last convolution and the classifier set to 0, its first convolution scaled by
  L^(-1/2) for L = 3n branches of two layers, and scalars s = 1, a = b = 0 (Zhang et
  al. 2019). Fixup's scalar bias before the ReLU is the first convolution's own bias.

Every block is a ``ResidualBlock`` (``rezero_dynamics.residual``) followed by the
post-addition activation.
"""

from __future__ import annotations

import torch
from torch import nn

from .._checks import check_positive_int
from ..residual import BlockStack, ResidualBlock, check_variant, named_alphas

RESNET_VARIANTS: tuple[str, ...] = ("residual", "none", "rezero", "zero_gamma", "fixup")
STAGE_CHANNELS: tuple[int, int, int] = (16, 32, 64)


def resnet_blocks_per_stage(depth: int) -> int:
    """Return n for a ResNet of ``depth`` = 6n + 2 weighted layers, or raise ValueError."""
    check_positive_int("depth", depth)
    if depth < 8 or (depth - 2) % 6 != 0:
        raise ValueError(
            f"a CIFAR ResNet has 6n + 2 layers (20, 32, 44, 56, 110, ...), got depth {depth}; "
            f"pick a depth with (depth - 2) divisible by 6"
        )
    return (depth - 2) // 6


class DownsampleShortcut(nn.Module):
    """He et al.'s option-A shortcut: (B, C, H, W) -> (B, out_channels, ceil(H/s), ceil(W/s)).

    It keeps every ``stride``-th pixel in each direction (all of them at stride 1, as in the
    block's branch) and appends zero channels; no parameters.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 2) -> None:
        super().__init__()
        check_positive_int("stride", stride)
        self.stride = stride
        if out_channels < in_channels:
            raise ValueError(
                f"a shortcut cannot drop channels ({in_channels} -> {out_channels}); use out_channels >= in_channels"
            )
        self.extra_channels = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[..., :: self.stride, :: self.stride]
        return nn.functional.pad(x, (0, 0, 0, 0, 0, self.extra_channels))

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class ConvBranch(nn.Module):
    """The residual branch F of one block: conv(stride)-[BN]-ReLU-conv-[BN]-[ReLU].

    ``batch_norm`` puts a BatchNorm2d after each convolution, ``last_norm=False`` leaves
    out the second one (a ``zero_gamma`` block owns it), and ``relu_last`` ends the
    branch with a ReLU (ReZero moves the post-addition ReLU here).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        *,
        batch_norm: bool = True,
        last_norm: bool = True,
        relu_last: bool = False,
    ) -> None:
        super().__init__()
        # A convolution gets a bias only where no batch norm follows it (Fixup's branch).
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batch_norm)
        self.norm1 = nn.BatchNorm2d(out_channels) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=not batch_norm)
        self.norm2 = nn.BatchNorm2d(out_channels) if batch_norm and last_norm else nn.Identity()
        self.relu_last = relu_last
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        y = self.norm2(self.conv2(y))
        return torch.relu(y) if self.relu_last else y


class ResNetBlock(nn.Module):
    """One CIFAR ResNet block: a ``ResidualBlock`` around a ``ConvBranch``, then ReLU.

    ``rezero`` blocks have no ReLU after the addition (see the module docstring).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        variant: str,
        *,
        residual_branches: int,
        alpha_init: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        if variant not in RESNET_VARIANTS:
            raise ValueError(
                f"variant {variant!r} is not available for the CIFAR ResNet; choose one of {', '.join(RESNET_VARIANTS)}"
            )
        batch_norm = batch_norm and variant != "fixup"
        branch = ConvBranch(
            in_channels, out_channels, stride,
            batch_norm=batch_norm, last_norm=variant != "zero_gamma", relu_last=variant == "rezero",
        )
        downsample = stride != 1 or in_channels != out_channels
        shortcut = DownsampleShortcut(in_channels, out_channels, stride) if downsample and variant != "none" else None
        self.residual = ResidualBlock(
            branch, variant, out_channels, norm="batch2d", alpha_init=alpha_init,
            residual_branches=residual_branches, shortcut=shortcut,
        )
        self.activation = nn.Identity() if variant == "rezero" else nn.ReLU()

    @property
    def downsamples(self) -> bool:
        """Whether the block changes the image shape, so it cannot be the identity."""
        return self.residual.shortcut is not None or self.residual.sublayer.conv1.stride != (1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.residual(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images: stem, ``stack`` of 3n blocks, pooling, ``head``.

    Args:
        depth: number of weighted layers, 6n + 2 (20, 56, 110, ...).
        variant: one of ``RESNET_VARIANTS`` (see the module docstring).
        num_classes: outputs of the linear head.
        in_channels: image channels (3 for CIFAR-10, 1 for digits).
        image_shape: (C, H, W); if given, ``forward`` also accepts flattened images
            (B, C * H * W), as the toolkit's image data sets store them.
        alpha_init: initial alpha of ``rezero`` blocks.
        batch_norm: keep the batch norms (default); ``fixup`` never has them.

    Shapes: input (B, C, H, W) or (B, C * H * W), output (B, num_classes).
    ``blocks`` lists the 3n blocks in order, ``alphas()`` their ReZero alphas.
    """

    def __init__(
        self,
        depth: int = 20,
        *,
        variant: str = "residual",
        num_classes: int = 10,
        in_channels: int = 3,
        image_shape: tuple[int, int, int] | None = None,
        alpha_init: float = 0.0,
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        n = resnet_blocks_per_stage(depth)
        check_variant(variant)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if image_shape is not None and (len(image_shape) != 3 or image_shape[0] != in_channels):
            raise ValueError(
                f"image_shape must be (C, H, W) with C = in_channels = {in_channels}, got {image_shape!r}"
            )
        self.depth = depth
        self.variant = variant
        self.image_shape = tuple(image_shape) if image_shape is not None else None
        stem_norm = batch_norm and variant != "fixup"

        width = STAGE_CHANNELS[0]
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=not stem_norm),
            nn.BatchNorm2d(width) if stem_norm else nn.Identity(),
            nn.ReLU(),
        )
        nn.init.kaiming_normal_(self.stem[0].weight, mode="fan_out", nonlinearity="relu")
        blocks = []
        for stage, channels in enumerate(STAGE_CHANNELS):
            for index in range(n):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(ResNetBlock(
                    width, channels, stride, variant,
                    residual_branches=3 * n, alpha_init=alpha_init, batch_norm=batch_norm,
                ))
                width = channels
        self.stack = BlockStack(blocks)
        self.head = nn.Linear(width, num_classes)
        if variant == "fixup":
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stack.blocks

    def alphas(self) -> dict[str, nn.Parameter]:
        """Return each ReZero alpha by parameter name, in block order."""
        return named_alphas(self)

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` as images (B, C, H, W), unflattening (B, C * H * W) if ``image_shape`` is set."""
        if x.dim() == 2 and self.image_shape is not None:
            expected = self.image_shape[0] * self.image_shape[1] * self.image_shape[2]
            if x.shape[1] != expected:
                raise ValueError(
                    f"flattened images have {x.shape[1]} features but image_shape {self.image_shape} "
                    f"needs {expected}; pass images of that shape"
                )
            return x.unflatten(1, self.image_shape)
        if x.dim() != 4 or x.shape[1] != self.stem[0].in_channels:
            raise ValueError(
                f"expected images of shape (B, {self.stem[0].in_channels}, H, W), got {tuple(x.shape)}; "
                f"flattened images need the model built with image_shape"
            )
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Map images to the stack's input (B, 16, H, W): the stem's output."""
        return self.stem(self.images(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.stack(self.embed(x))  # (B, 64, H / 4, W / 4)
        return self.head(features.mean(dim=(-2, -1)))
