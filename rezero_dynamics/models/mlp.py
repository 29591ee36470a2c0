"""Deep fully connected networks built from residual blocks.

Each block is ``ResidualBlock(F)`` with F(x) = phi(W x + b), W of shape (width, width).
With ``variant="none"`` and ``activation="linear"`` the network is a deep linear network,
whose Jacobian is the plain product W_L ... W_1.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_positive_int
from ..residual import FINAL_NORM_VARIANTS, BlockStack, ResidualBlock, check_variant, make_norm, named_alphas

ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "linear")
WEIGHT_INITS: tuple[str, ...] = ("gaussian", "orthogonal")


def make_activation(name: str) -> nn.Module:
    """Build the activation called ``name`` (one of ``ACTIVATIONS``)."""
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    if name == "linear":
        return nn.Identity()
    raise ValueError(f"unknown activation {name!r}; choose one of {', '.join(ACTIVATIONS)}")


class DenseBranch(nn.Module):
    """The residual branch F(x) = phi(W x + b) of one MLP block; (..., width) -> (..., width)."""

    def __init__(self, width: int, activation: str, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width, bias=bias)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))


def init_dense(
    linear: nn.Linear,
    init: str,
    sigma_w: float,
    sigma_b: float,
    generator: torch.Generator | None = None,
) -> None:
    """Initialise ``linear`` in place for signal-propagation studies.

    ``gaussian``: W_ij ~ N(0, sigma_w^2 / fan_in). ``orthogonal``: W = sigma_w * Q with Q
    a Haar-random orthogonal (or semi-orthogonal) matrix. Biases ~ N(0, sigma_b^2).
    """
    if init == "gaussian":
        nn.init.normal_(linear.weight, 0.0, sigma_w / math.sqrt(linear.in_features), generator=generator)
    elif init == "orthogonal":
        nn.init.orthogonal_(linear.weight, gain=sigma_w, generator=generator)
    else:
        raise ValueError(f"unknown weight init {init!r}; choose one of {', '.join(WEIGHT_INITS)}")
    if linear.bias is not None:
        nn.init.normal_(linear.bias, 0.0, sigma_b, generator=generator)


class DeepMLP(nn.Module):
    """A deep MLP: optional input layer, ``depth`` residual blocks of ``width``, optional head.

    Args:
        width: hidden width N of every block.
        depth: number of blocks L (at least 1).
        activation: ``tanh``, ``relu`` or ``linear``.
        variant: residual variant of every block (see ``rezero_dynamics.residual``).
        init: ``gaussian`` (variance sigma_w^2 / width) or ``orthogonal`` (gain sigma_w).
        sigma_w, sigma_b: weight and bias scales of the blocks' dense layers.
        bias: whether the blocks' dense layers have a bias.
        norm: ``layer`` or ``batch``; used by the variants with a norm
            (``rezero_dynamics.residual.NORMED_VARIANTS``) only.
        alpha_init: initial alpha of ``rezero``, ``rezero_pre_norm`` and
            ``rezero_post_norm`` blocks.
        in_features: if given, a Linear layer maps (..., in_features) to the width first.
        out_features: if given, a Linear head maps the width to (..., out_features).
        generator: random source for the initialisation, for reproducible models.

    Shapes: input (..., in_features or width), output (..., out_features or width).
    ``stack`` is the hidden-to-hidden part, ``blocks`` its blocks in order.

    Each block has one residual branch, so the depth-aware variants see L = ``depth``:
    ``gpt2`` scales each block's weight W by 1/sqrt(depth) and adds a final norm (of
    kind ``norm``) to the stack, ``deepnorm`` uses a = depth^(1/4) and scales W by
    (4 depth)^(-1/4), and ``fixup`` sets W (the branch's only weight layer) and the head
    to 0.
    """

    def __init__(
        self,
        width: int,
        depth: int,
        *,
        activation: str = "tanh",
        variant: str = "none",
        init: str = "gaussian",
        sigma_w: float = 1.0,
        sigma_b: float = 0.0,
        bias: bool = True,
        norm: str = "layer",
        alpha_init: float = 0.0,
        in_features: int | None = None,
        out_features: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("depth", depth)
        check_variant(variant)
        make_activation(activation)  # validates the name before any layer is built
        if init not in WEIGHT_INITS:
            raise ValueError(f"unknown weight init {init!r}; choose one of {', '.join(WEIGHT_INITS)}")
        if not (math.isfinite(sigma_w) and sigma_w > 0):
            raise ValueError(f"sigma_w must be a positive finite number, got {sigma_w!r}")
        if not (math.isfinite(sigma_b) and sigma_b >= 0):
            raise ValueError(f"sigma_b must be a finite number >= 0, got {sigma_b!r}")
        if variant == "fixup" and activation == "relu":
            raise ValueError(
                "variant 'fixup' with activation 'relu' cannot learn: Fixup sets each block's only "
                "dense layer to 0, so ReLU(W x + b) starts at ReLU's kink, where PyTorch's gradient "
                "is 0: W, b, the Fixup scale and the input bias never get a gradient, and only the "
                "output bias fixup_bias_out learns; use activation 'tanh' or 'linear'"
            )
        self.width = width
        self.variant = variant

        self.input_layer = nn.Linear(in_features, width) if in_features is not None else None
        blocks = []
        for _ in range(depth):
            branch = DenseBranch(width, activation, bias=bias)
            init_dense(branch.linear, init, sigma_w, sigma_b, generator)
            blocks.append(
                ResidualBlock(branch, variant, width, norm=norm, alpha_init=alpha_init, residual_branches=depth)
            )
        final_norm = make_norm(norm, width) if variant in FINAL_NORM_VARIANTS else None
        self.stack = BlockStack(blocks, final_norm)
        self.output_layer = nn.Linear(width, out_features) if out_features is not None else None
        if variant == "fixup" and self.output_layer is not None:
            # Fixup initialises the classification layer to 0 as well.
            nn.init.zeros_(self.output_layer.weight)
            nn.init.zeros_(self.output_layer.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.stack.blocks

    def alphas(self) -> dict[str, nn.Parameter]:
        """Return each ReZero alpha by parameter name, in block order."""
        return named_alphas(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = self.input_layer.in_features if self.input_layer is not None else self.width
        if x.shape[-1] != expected:
            raise ValueError(
                f"input has {x.shape[-1]} features in its last dimension (shape {tuple(x.shape)}) "
                f"but this MLP expects {expected}; reshape the input or build the model with "
                f"in_features={x.shape[-1]}"
            )
        if self.input_layer is not None:
            x = self.input_layer(x)
        x = self.stack(x)
        if self.output_layer is not None:
            x = self.output_layer(x)
        return x

