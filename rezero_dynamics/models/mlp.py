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
from ..residual import BlockStack, ResidualBlock, check_variant, named_alphas

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
        norm: ``layer`` or ``batch``; used by ``pre_norm`` and ``post_norm`` only.
        alpha_init: initial alpha of ``rezero`` blocks.
        in_features: if given, a Linear layer maps (..., in_features) to the width first.
        out_features: if given, a Linear head maps the width to (..., out_features).
        generator: random source for the initialisation, for reproducible models.

    Shapes: input (..., in_features or width), output (..., out_features or width).
    ``stack`` is the hidden-to-hidden part, ``blocks`` its blocks in order.
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
        self.width = width
        self.variant = variant

        self.input_layer = nn.Linear(in_features, width) if in_features is not None else None
        blocks = []
        for _ in range(depth):
            branch = DenseBranch(width, activation, bias=bias)
            init_dense(branch.linear, init, sigma_w, sigma_b, generator)
            blocks.append(ResidualBlock(branch, variant, width, norm=norm, alpha_init=alpha_init))
        self.stack = BlockStack(blocks)
        self.output_layer = nn.Linear(width, out_features) if out_features is not None else None

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

