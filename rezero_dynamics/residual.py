"""Residual connections as a switch: one wrapper for any sublayer F.

Variants (``x`` has the feature dimension last; L is the number of residual branches
in the whole stack, passed as ``residual_branches``):

* ``none``:       F(x), no skip connection;
* ``residual``:   x + F(x);
* ``pre_norm``:   x + F(Norm(x));
* ``post_norm``:  Norm(x + F(x));
* ``rezero``:     x + alpha * F(x), with ``alpha`` a learned scalar initialised to
  ``alpha_init`` (Bachlechner et al., "ReZero is All You Need", arXiv 2003.04887);
* ``rezero_pre_norm``:  x + alpha * F(Norm(x));
* ``rezero_post_norm``: Norm(x + alpha * F(x));
* ``gpt2``:       x + F(Norm(x)), with the weight of F's last layer scaled by 1/sqrt(L)
  at initialisation and a final norm after the stack (Radford et al. 2019, "Language
  Models are Unsupervised Multitask Learners");
* ``fixup``:      x + (s * F(x + a) + b), no norm, with scalars s = 1, a = b = 0 at
  initialisation, F's last layer set to 0 and F's other weight layers scaled by
  L^(-1/(2m - 2)) for m weight layers in F (Zhang, Dauphin and Ma 2019, "Fixup
  Initialization", arXiv 1901.09321);
* ``zero_gamma``: x + Norm(F(x)), a norm at the end of the branch whose scale and shift
  start at 0 (Goyal et al. 2017, "Accurate, Large Minibatch SGD", arXiv 1706.02677);
* ``deepnorm``:   Norm(a * x + F(x)) with a = L^(1/4), and F's value-path weights
  scaled by b = (4L)^(-1/4) at initialisation (Wang et al. 2022, "DeepNet",
  arXiv 2203.00555).

With ``alpha = 0`` a ReZero block is the identity map, so a stack of them has an
input-output Jacobian equal to the identity (every singular value is 1). ``fixup`` and
``zero_gamma`` blocks are the identity map at initialisation too, because their branch
output is exactly 0.

Variants that change F's initial weights do it in place when the block is built. They
find F's weight layers (``nn.Linear`` and convolutions) in registration order: the last
one is F's output layer unless F defines ``output_layer``, and F may define
``value_path_weights()`` to name the weights that DeepNorm scales (default: all of them).

A block built with a ``shortcut`` S uses S(x) in place of x on the skip path, as a
ResNet block that changes the image shape does.

Post-norm with learning-rate warm-up is a schedule, not a block: it is ``post_norm``
trained with ``TrainConfig(warmup_steps=...)``.

New variants register in ``VARIANTS``; models only ever build blocks through
``ResidualBlock``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VARIANTS: tuple[str, ...] = (
    "none", "residual", "pre_norm", "post_norm", "rezero",
    "rezero_pre_norm", "rezero_post_norm", "gpt2", "fixup", "zero_gamma", "deepnorm",
)
NORMS: tuple[str, ...] = ("layer", "batch")
BLOCK_NORMS: tuple[str, ...] = (*NORMS, "batch2d")
"""Norms a block accepts: ``NORMS`` for (..., width) features, ``batch2d`` for images."""

GATED_VARIANTS: tuple[str, ...] = ("rezero", "rezero_pre_norm", "rezero_post_norm")
"""Variants with a ReZero gate ``alpha``."""
NORMED_VARIANTS: tuple[str, ...] = (
    "pre_norm", "post_norm", "rezero_pre_norm", "rezero_post_norm", "gpt2", "zero_gamma", "deepnorm",
)
"""Variants whose block owns a norm."""
DEPTH_AWARE_VARIANTS: tuple[str, ...] = ("gpt2", "fixup", "deepnorm")
"""Variants whose initialisation depends on the number of residual branches L."""
FINAL_NORM_VARIANTS: tuple[str, ...] = ("gpt2",)
"""Variants whose stack ends with a norm after the last block."""


def check_variant(variant: str) -> str:
    """Return ``variant`` unchanged, or raise ValueError naming the valid choices."""
    if variant not in VARIANTS:
        raise ValueError(
            f"unknown residual variant {variant!r}; choose one of {', '.join(VARIANTS)}"
        )
    return variant


def make_norm(kind: str, width: int) -> nn.Module:
    """Build a fresh normalisation layer over the last dimension of size ``width``.

    ``layer`` is LayerNorm. ``batch`` is BatchNorm1d over inputs of shape (B, width),
    so it suits the MLP only. ``batch2d`` is BatchNorm2d over the ``width`` channels of
    images (B, width, H, W), for convolutional branches.
    """
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    if kind == "batch2d":
        return nn.BatchNorm2d(width)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(BLOCK_NORMS)}")


class ReZeroGate(nn.Module):
    """Learned scalar ``alpha`` that scales a residual branch.

    One gate may be shared by several ``ResidualBlock`` instances (a Transformer layer
    gates attention and feed-forward with one alpha by default).
    """

    def __init__(self, alpha_init: float = 0.0) -> None:
        super().__init__()
        if not math.isfinite(alpha_init):
            raise ValueError(f"alpha_init must be a finite number, got {alpha_init!r}")
        self.alpha = nn.Parameter(torch.tensor(float(alpha_init)))

    def forward(self, branch: torch.Tensor) -> torch.Tensor:
        return self.alpha * branch

    def extra_repr(self) -> str:
        return f"alpha={self.alpha.detach().item():.4g}"


def weight_layers(module: nn.Module) -> list[nn.Module]:
    """Return the ``nn.Linear`` and convolution layers in ``module``, in registration order."""
    kinds = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    return [child for child in module.modules() if isinstance(child, kinds)]


def branch_output_layer(sublayer: nn.Module) -> nn.Module:
    """Return the last weight layer of a residual branch: ``sublayer.output_layer`` if set.

    Otherwise the last ``nn.Linear`` or convolution registered in ``sublayer``.
    """
    layer = getattr(sublayer, "output_layer", None)
    if layer is not None:
        return layer
    layers = weight_layers(sublayer)
    if not layers:
        raise ValueError(
            f"{type(sublayer).__name__} has no nn.Linear or convolution layer; variants that "
            f"initialise the branch's last layer need one, or an 'output_layer' attribute"
        )
    return layers[-1]


def branch_value_path_weights(sublayer: nn.Module) -> list[torch.Tensor]:
    """Return the weights DeepNorm scales: ``sublayer.value_path_weights()`` if defined.

    Otherwise the weight of every ``nn.Linear`` and convolution in ``sublayer``. Entries
    may be views of parameters (the value rows of a fused query-key-value projection).
    """
    method = getattr(sublayer, "value_path_weights", None)
    if method is not None:
        return list(method())
    return [layer.weight for layer in weight_layers(sublayer)]


def deepnorm_constants(residual_branches: int) -> tuple[float, float]:
    """Return DeepNorm's (a, b) for a stack of L = ``residual_branches`` residual branches.

    DeepNet's encoder-only rule for N layers of two sublayers each is a = (2N)^(1/4) and
    b = (8N)^(-1/4) (paper values, not checked here against the paper's table). With
    L = 2N this is a = L^(1/4) and b = (4L)^(-1/4), which also covers stacks with one
    branch per block (the MLP).
    """
    return residual_branches**0.25, (4 * residual_branches) ** -0.25


class ResidualBlock(nn.Module):
    """Wrap a sublayer F with the residual connection named by ``variant``.

    The formulas are in this module's docstring. ``gpt2``, ``fixup`` and ``deepnorm``
    rescale or zero F's weights in place when the block is built, so build the block
    from a freshly initialised F.

    Args:
        sublayer: F, a module that maps (..., width) to (..., width).
        variant: one of ``VARIANTS``.
        width: size of the last dimension, used to build the norm.
        norm: ``layer`` (LayerNorm, the default) or ``batch`` (BatchNorm1d). Every
            variant in ``NORMED_VARIANTS`` builds one norm; each block owns its own.
        alpha_init: initial alpha of a gated block that builds its own gate.
        gate: an existing ``ReZeroGate`` to share; only valid with ``GATED_VARIANTS``.
        residual_branches: L, the number of residual branches in the whole stack (a
            Transformer layer has two). Required by ``DEPTH_AWARE_VARIANTS``.
        shortcut: a module S on the skip path, which then carries S(x) in place of x
            (e.g. the downsampling shortcut of a ResNet); ``None`` is the identity.
    """

    def __init__(
        self,
        sublayer: nn.Module,
        variant: str,
        width: int,
        *,
        norm: str = "layer",
        alpha_init: float = 0.0,
        gate: ReZeroGate | None = None,
        residual_branches: int | None = None,
        shortcut: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.variant = check_variant(variant)
        if shortcut is not None and variant == "none":
            raise ValueError("variant 'none' has no skip path, so it takes no shortcut; pass shortcut=None")
        if gate is not None and variant not in GATED_VARIANTS:
            raise ValueError(
                f"a shared ReZero gate needs variant {', '.join(map(repr, GATED_VARIANTS))}, got {variant!r}"
            )
        if norm not in BLOCK_NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(BLOCK_NORMS)}")
        if variant in DEPTH_AWARE_VARIANTS and (
            isinstance(residual_branches, bool) or not isinstance(residual_branches, int) or residual_branches < 1
        ):
            raise ValueError(
                f"variant {variant!r} needs residual_branches, the number of residual branches in "
                f"the stack (a positive integer), got {residual_branches!r}"
            )
        self.sublayer = sublayer
        self.shortcut = shortcut
        self.norm = make_norm(norm, width) if variant in NORMED_VARIANTS else None
        if variant in GATED_VARIANTS:
            self.gate = gate if gate is not None else ReZeroGate(alpha_init)
        else:
            self.gate = None
        self.residual_scale = 1.0
        if variant == "gpt2":
            with torch.no_grad():
                branch_output_layer(sublayer).weight.mul_(residual_branches**-0.5)
        elif variant == "fixup":
            self._init_fixup(residual_branches)
        elif variant == "zero_gamma":
            with torch.no_grad():
                self.norm.weight.zero_()
                self.norm.bias.zero_()
        elif variant == "deepnorm":
            self.residual_scale, weight_scale = deepnorm_constants(residual_branches)
            with torch.no_grad():
                for weight in branch_value_path_weights(sublayer):
                    weight.mul_(weight_scale)

    def _init_fixup(self, residual_branches: int) -> None:
        # Fixup puts a scalar bias before every layer of the branch. Here only the branch
        # input and output get one, because the branch's inner layers are not known. Its
        # dense layers' vector biases already shift each unit before the activation.
        self.fixup_bias_in = nn.Parameter(torch.zeros(()))
        self.fixup_scale = nn.Parameter(torch.ones(()))
        self.fixup_bias_out = nn.Parameter(torch.zeros(()))
        output_layer = branch_output_layer(self.sublayer)
        inner_layers = [layer for layer in weight_layers(self.sublayer) if layer is not output_layer]
        with torch.no_grad():
            output_layer.weight.zero_()
            if output_layer.bias is not None:
                output_layer.bias.zero_()
            if inner_layers:
                m = len(inner_layers) + 1
                for layer in inner_layers:
                    layer.weight.mul_(residual_branches ** (-1.0 / (2 * m - 2)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variant = self.variant
        if variant == "none":
            return self.sublayer(x)
        skip = x if self.shortcut is None else self.shortcut(x)
        if variant == "rezero":
            return skip + self.gate(self.sublayer(x))
        if variant in ("pre_norm", "gpt2"):
            return skip + self.sublayer(self.norm(x))
        if variant == "post_norm":
            return self.norm(skip + self.sublayer(x))
        if variant == "residual":
            return skip + self.sublayer(x)
        if variant == "rezero_pre_norm":
            return skip + self.gate(self.sublayer(self.norm(x)))
        if variant == "rezero_post_norm":
            return self.norm(skip + self.gate(self.sublayer(x)))
        if variant == "fixup":
            return skip + (self.fixup_scale * self.sublayer(x + self.fixup_bias_in) + self.fixup_bias_out)
        if variant == "zero_gamma":
            return skip + self.norm(self.sublayer(x))
        return self.norm(self.residual_scale * skip + self.sublayer(x))  # "deepnorm"

    def extra_repr(self) -> str:
        if self.variant == "deepnorm":
            return f"variant={self.variant!r}, residual_scale={self.residual_scale:.4g}"
        return f"variant={self.variant!r}"


class BlockStack(nn.Module):
    """Blocks applied in order: the hidden-to-hidden part of a model.

    ``blocks`` lists them in order, and ``alphas()`` names every ReZero alpha, so tools
    never have to guess where layers are. ``final_norm`` (optional) runs after the last
    block, as in pre-norm Transformers.
    """

    def __init__(self, blocks: list[nn.Module], final_norm: nn.Module | None = None) -> None:
        super().__init__()
        if len(blocks) == 0:
            raise ValueError("a block stack needs at least one block; got depth 0")
        self.blocks = nn.ModuleList(blocks)
        self.final_norm = final_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        return x

    def __len__(self) -> int:
        return len(self.blocks)

    def alphas(self) -> dict[str, nn.Parameter]:
        """Return each distinct ReZero alpha by parameter name, in block order."""
        return named_alphas(self)

    def between(self, start: int, stop: int) -> "BlockStack":
        """Return a stack of ``blocks[start:stop]``, sharing their modules, without final norm.

        It maps the hidden state after block ``start - 1`` to the state after block
        ``stop - 1``: an endpoint for Jacobians of part of a network.
        """
        if not 0 <= start < stop <= len(self.blocks):
            raise ValueError(
                f"invalid block range [{start}, {stop}) for a stack of {len(self.blocks)} blocks; "
                f"need 0 <= start < stop <= {len(self.blocks)}"
            )
        return BlockStack(list(self.blocks[start:stop]))


def named_alphas(module: nn.Module) -> dict[str, nn.Parameter]:
    """Return each distinct ``ReZeroGate.alpha`` below ``module`` by parameter name.

    A gate shared by two sublayers appears once, under the name where it was first
    registered. Order follows module registration order, which is block order.
    """
    found: dict[str, nn.Parameter] = {}
    for name, child in module.named_modules():  # named_modules skips repeated modules
        if isinstance(child, ReZeroGate):
            found[f"{name}.alpha" if name else "alpha"] = child.alpha
    return found
