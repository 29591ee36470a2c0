"""Residual connections as a switch: one wrapper for any sublayer F.

Variants (``x`` has the feature dimension last):

* ``none``:       F(x), no skip connection;
* ``residual``:   x + F(x);
* ``pre_norm``:   x + F(Norm(x));
* ``post_norm``:  Norm(x + F(x));
* ``rezero``:     x + alpha * F(x), with ``alpha`` a learned scalar initialised to
  ``alpha_init`` (Bachlechner et al., "ReZero is All You Need", arXiv 2003.04887).

With ``alpha = 0`` a ReZero block is the identity map, so a stack of them has an
input-output Jacobian equal to the identity (every singular value is 1).

New variants register in ``VARIANTS``; models only ever build blocks through
``ResidualBlock``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

VARIANTS: tuple[str, ...] = ("none", "residual", "pre_norm", "post_norm", "rezero")
NORMS: tuple[str, ...] = ("layer", "batch")


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
    so it suits the MLP only.
    """
    if kind == "layer":
        return nn.LayerNorm(width)
    if kind == "batch":
        return nn.BatchNorm1d(width)
    raise ValueError(f"unknown norm {kind!r}; choose one of {', '.join(NORMS)}")


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


class ResidualBlock(nn.Module):
    """Wrap a sublayer F with the residual connection named by ``variant``.

    Args:
        sublayer: F, a module that maps (..., width) to (..., width).
        variant: one of ``VARIANTS``.
        width: size of the last dimension, used to build the norm.
        norm: ``layer`` (LayerNorm, the default) or ``batch`` (BatchNorm1d).
            Only ``pre_norm`` and ``post_norm`` build a norm; each block owns its own.
        alpha_init: initial alpha of a ``rezero`` block that builds its own gate.
        gate: an existing ``ReZeroGate`` to share; only valid with ``rezero``.
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
    ) -> None:
        super().__init__()
        self.variant = check_variant(variant)
        if gate is not None and variant != "rezero":
            raise ValueError(f"a shared ReZero gate needs variant 'rezero', got {variant!r}")
        if norm not in NORMS:
            raise ValueError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")
        self.sublayer = sublayer
        self.norm = make_norm(norm, width) if variant in ("pre_norm", "post_norm") else None
        if variant == "rezero":
            self.gate = gate if gate is not None else ReZeroGate(alpha_init)
        else:
            self.gate = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variant = self.variant
        if variant == "rezero":
            return x + self.gate(self.sublayer(x))
        if variant == "pre_norm":
            return x + self.sublayer(self.norm(x))
        if variant == "post_norm":
            return self.norm(x + self.sublayer(x))
        if variant == "residual":
            return x + self.sublayer(x)
        return self.sublayer(x)  # "none"

    def extra_repr(self) -> str:
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
