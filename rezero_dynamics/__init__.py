"""rezero_dynamics: signal propagation in deep residual networks, built around ReZero.

Layout (imports point down the list):

* ``cli``: the ``rezero-dynamics`` command; parsing only.
* ``studies``: named studies (spectrum sweeps) built from the parts below.
* ``plots``: figures from tidy frames.
* ``models``: deep MLPs, Transformers and CIFAR ResNets built from ``residual``.
* ``spectra``: Jacobians and their spectra for any ``nn.Module``; imports no models.
* ``data``: the embedded text corpus.
* ``residual``: the residual variants and the ReZero gate.
"""

from .models import CharTransformerLM, CifarResNet, DeepMLP, TransformerEncoder
from .residual import VARIANTS, BlockStack, ResidualBlock, ReZeroGate, named_alphas
from .spectra import JacobianSpectrum, jacobian_matrix, jacobian_spectrum

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "BlockStack",
    "CharTransformerLM",
    "CifarResNet",
    "DeepMLP",
    "JacobianSpectrum",
    "ReZeroGate",
    "ResidualBlock",
    "TransformerEncoder",
    "jacobian_matrix",
    "jacobian_spectrum",
    "named_alphas",
]
