"""Models built from ``rezero_dynamics.residual``: deep MLPs and Transformers.

Every model exposes ``blocks`` (its residual blocks in order) and ``alphas()`` (each
ReZero alpha by parameter name).
"""

from .mlp import ACTIVATIONS, WEIGHT_INITS, DeepMLP, DenseBranch, init_dense
from .transformer import (
    CharTransformerLM,
    FeedForward,
    SelfAttention,
    TransformerBlock,
    TransformerEncoder,
    sinusoidal_positions,
)

__all__ = [
    "ACTIVATIONS",
    "WEIGHT_INITS",
    "CharTransformerLM",
    "DeepMLP",
    "DenseBranch",
    "FeedForward",
    "SelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "init_dense",
    "sinusoidal_positions",
]
