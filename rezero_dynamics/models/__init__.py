"""Models built from ``rezero_dynamics.residual``: deep MLPs, Transformers and CIFAR ResNets.

Every model exposes ``blocks`` (its residual blocks in order) and ``alphas()`` (each
ReZero alpha by parameter name).
"""

from .mlp import ACTIVATIONS, WEIGHT_INITS, DeepMLP, DenseBranch, init_dense
from .resnet import RESNET_VARIANTS, CifarResNet, ConvBranch, DownsampleShortcut, ResNetBlock
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
    "CifarResNet",
    "ConvBranch",
    "DeepMLP",
    "DenseBranch",
    "DownsampleShortcut",
    "FeedForward",
    "RESNET_VARIANTS",
    "ResNetBlock",
    "SelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "init_dense",
    "sinusoidal_positions",
]
