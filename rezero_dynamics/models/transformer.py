"""Transformer encoder stacks and a character-level language model.

Attention is written out with matmul and softmax rather than
``torch.nn.functional.scaled_dot_product_attention`` or ``nn.TransformerEncoderLayer``.
On CPU the fused kernel has no forward-mode rule and no batching rule for its backward,
so ``torch.func.jacfwd`` and ``jacrev`` fail on it. ``nn.TransformerEncoderLayer`` also
switches to a fused fast path in eval mode. The explicit form works under ``jacrev``,
``jacfwd`` and ``vmap`` in train and eval mode.

Shapes: B batch, T tokens, D = d_model, H heads, E = D / H per head.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .._checks import check_positive_int
from ..residual import (
    FINAL_NORM_VARIANTS,
    GATED_VARIANTS,
    BlockStack,
    ResidualBlock,
    ReZeroGate,
    check_variant,
    named_alphas,
)

FEED_FORWARD_ACTIVATIONS: tuple[str, ...] = ("relu", "gelu")


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention; (..., T, D) -> (..., T, D).

    With ``causal=True`` token t attends to tokens 0..t only. Dropout acts on the
    attention weights and on the output.
    """

    def __init__(self, d_model: int, heads: int, *, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % heads != 0:
            raise ValueError(
                f"d_model={d_model} is not divisible by heads={heads}; pick heads that divide d_model"
            )
        self.heads = heads
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attention_dropout = nn.Dropout(dropout)
        self.output_dropout = nn.Dropout(dropout)
        for linear in (self.qkv, self.out):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d_model = x.shape[-1]
        tokens = x.shape[-2]
        head_dim = d_model // self.heads
        q, k, v = self.qkv(x).split(d_model, dim=-1)  # each (..., T, D)
        # (..., T, D) -> (..., H, T, E)
        q, k, v = (t.unflatten(-1, (self.heads, head_dim)).transpose(-3, -2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) / math.sqrt(head_dim)  # (..., H, T, T)
        if self.causal:
            future = torch.ones(tokens, tokens, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        weights = self.attention_dropout(scores.softmax(dim=-1))
        y = (weights @ v).transpose(-3, -2).flatten(-2)  # (..., T, D)
        return self.output_dropout(self.out(y))

    def value_path_weights(self) -> list[torch.Tensor]:
        """Return the value projection (rows 2D..3D of ``qkv.weight``, a view) and ``out.weight``.

        DeepNorm scales these at initialisation and leaves the query and key projections.
        """
        d_model = self.out.in_features
        return [self.qkv.weight[2 * d_model :], self.out.weight]


class FeedForward(nn.Module):
    """Position-wise feed-forward network D -> d_ff -> D; (..., T, D) -> (..., T, D)."""

    def __init__(self, d_model: int, d_ff: int, *, activation: str = "relu", dropout: float = 0.0) -> None:
        super().__init__()
        if activation not in FEED_FORWARD_ACTIVATIONS:
            raise ValueError(
                f"unknown feed-forward activation {activation!r}; "
                f"choose one of {', '.join(FEED_FORWARD_ACTIVATIONS)}"
            )
        self.expand = nn.Linear(d_model, d_ff)
        self.activation = nn.ReLU() if activation == "relu" else nn.GELU()
        self.contract = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)
        for linear in (self.expand, self.contract):
            nn.init.xavier_uniform_(linear.weight)
            nn.init.zeros_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.contract(self.activation(self.expand(x))))


class TransformerBlock(nn.Module):
    """One Transformer layer: an attention sublayer, then a feed-forward sublayer.

    Each sublayer is wrapped in ``ResidualBlock(variant)`` with its own norm. For the
    gated variants (``rezero``, ``rezero_pre_norm``, ``rezero_post_norm``), one alpha
    gates both sublayers (``self.gate``), as in the ReZero authors' code;
    ``alpha_per_sublayer=True`` gives each sublayer its own alpha.
    ``residual_branches`` is L for ``gpt2``, ``fixup`` and ``deepnorm``: the number of
    residual branches in the whole stack, 2 per layer. The output projections (``out``
    of attention, ``contract`` of the feed-forward network) are the branches' last layers.
    """

    def __init__(
        self,
        d_model: int,
        heads: int,
        d_ff: int,
        variant: str,
        *,
        causal: bool = False,
        dropout: float = 0.0,
        alpha_init: float = 0.0,
        alpha_per_sublayer: bool = False,
        activation: str = "relu",
        residual_branches: int | None = None,
    ) -> None:
        super().__init__()
        check_variant(variant)
        # Registered before the sublayers, so the shared alpha is named "<block>.gate.alpha".
        self.gate = ReZeroGate(alpha_init) if variant in GATED_VARIANTS and not alpha_per_sublayer else None
        attention = SelfAttention(d_model, heads, causal=causal, dropout=dropout)
        feed_forward = FeedForward(d_model, d_ff, activation=activation, dropout=dropout)
        options = {"alpha_init": alpha_init, "gate": self.gate, "residual_branches": residual_branches}
        self.attention = ResidualBlock(attention, variant, d_model, **options)
        self.feed_forward = ResidualBlock(feed_forward, variant, d_model, **options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.feed_forward(self.attention(x))


class TransformerEncoder(BlockStack):
    """A stack of ``depth`` Transformer layers; embeddings (..., T, D) in, (..., T, D) out.

    This is the endpoint of the ReZero paper's Jacobian analysis: no token embedding, no
    head. ``final_norm=True`` adds a LayerNorm after the last layer (usual with pre-norm);
    ``gpt2`` always has one. The depth-aware variants see L = 2 * depth residual branches.
    """

    def __init__(
        self,
        d_model: int,
        depth: int,
        *,
        heads: int = 4,
        d_ff: int | None = None,
        variant: str = "rezero",
        causal: bool = False,
        dropout: float = 0.0,
        alpha_init: float = 0.0,
        alpha_per_sublayer: bool = False,
        activation: str = "relu",
        final_norm: bool = False,
    ) -> None:
        check_positive_int("d_model", d_model)
        check_positive_int("depth", depth)
        check_positive_int("heads", heads)
        check_variant(variant)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        d_ff = 4 * d_model if d_ff is None else check_positive_int("d_ff", d_ff)
        blocks = [
            TransformerBlock(
                d_model, heads, d_ff, variant,
                causal=causal, dropout=dropout, alpha_init=alpha_init,
                alpha_per_sublayer=alpha_per_sublayer, activation=activation,
                residual_branches=2 * depth,
            )
            for _ in range(depth)
        ]
        final_norm = final_norm or variant in FINAL_NORM_VARIANTS
        super().__init__(blocks, nn.LayerNorm(d_model) if final_norm else None)
        self.d_model = d_model
        self.variant = variant
        self.causal = causal

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[-1] != self.d_model:
            raise ValueError(
                f"expected embeddings of shape (..., T, {self.d_model}), got {tuple(x.shape)}; "
                f"the last dimension must equal d_model"
            )
        return super().forward(x)


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """Return the fixed sinusoidal position encodings of "Attention Is All You Need"; (length, D)."""
    position = torch.arange(length, dtype=torch.float32)[:, None]
    frequency = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(length, d_model)
    table[:, 0::2] = torch.sin(position * frequency)
    table[:, 1::2] = torch.cos(position * frequency[: d_model // 2])
    return table


class CharTransformerLM(nn.Module):
    """Character-level language model: token embedding + positions, causal encoder, head.

    ``forward`` maps token ids (..., T) to next-token logits (..., T, vocab_size).
    ``embed`` gives the encoder's input (..., T, D), so that ``encoder`` alone is the
    hidden-to-hidden Jacobian endpoint.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 128,
        depth: int = 12,
        *,
        heads: int = 4,
        d_ff: int | None = None,
        variant: str = "rezero",
        max_len: int = 512,
        dropout: float = 0.0,
        alpha_init: float = 0.0,
        alpha_per_sublayer: bool = False,
        final_norm: bool = False,
    ) -> None:
        super().__init__()
        check_positive_int("vocab_size", vocab_size)
        check_positive_int("d_model", d_model)
        check_positive_int("max_len", max_len)
        self.max_len = max_len
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
        self.encoder = TransformerEncoder(
            d_model, depth, heads=heads, d_ff=d_ff, variant=variant, causal=True,
            dropout=dropout, alpha_init=alpha_init, alpha_per_sublayer=alpha_per_sublayer,
            final_norm=final_norm,
        )
        self.head = nn.Linear(d_model, vocab_size)
        if variant == "fixup":
            # Fixup initialises the classification layer to 0 as well.
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    def alphas(self) -> dict[str, nn.Parameter]:
        """Return each ReZero alpha by parameter name, in block order."""
        return named_alphas(self)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Map token ids (..., T) to encoder inputs (..., T, D)."""
        length = tokens.shape[-1]
        if length > self.max_len:
            raise ValueError(
                f"sequence length {length} exceeds max_len={self.max_len}; "
                f"build the model with a larger max_len or use shorter sequences"
            )
        return self.embedding(tokens) + self.positions[:length]

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens)))
