"""Write the teaching notebooks from the cell sources below, without outputs.

Run from the repository root after editing a notebook's cells here:

    python notebooks/build_notebooks.py

Each notebook's first code cell is its parameters cell (tagged ``parameters``). It reads
``REZERO_NOTEBOOK_SMALL=1`` from the environment to run at a tiny size, as the test
suite does (``tests/test_notebooks.py``).
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str, *, tags: tuple[str, ...] = ()):
    cell = new_code_cell(text.strip("\n"))
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def parameters(text: str):
    return code(text, tags=("parameters",))


# ------------------------------------------------------------------------------------------
# 01: dynamical isometry
# ------------------------------------------------------------------------------------------

DYNAMICAL_ISOMETRY = [
    md("""
# Dynamical isometry: why deep networks need well-conditioned Jacobians

A deep network is a long composition of maps. Its input-output Jacobian
J = dx_L / dx_0 decides two things at once: how a small change of the input reaches the
output (forward signal), and how the gradient of the loss reaches the first layers
(backward signal, through J^T). If the singular values of J are far from 1, some
directions are amplified and others are erased, and training a deep network stalls.

A network is **dynamically isometric** when all singular values of J are close to 1.
This notebook builds the idea up in four steps:

1. a scalar chain, where depth alone makes signals vanish or explode;
2. products of random Gaussian matrices, where the *average* is fine but the *spread* of
   singular values grows with depth (the Fuss-Catalan law);
3. residual connections and normalisation, measured on deep tanh networks;
4. ReZero (`x + alpha * F(x)` with `alpha = 0` at initialisation), which starts exactly
   isometric.

Run it top to bottom; it takes under a minute on a 2-core CPU at the default sizes.
"""),
    parameters("""
import os

# REZERO_NOTEBOOK_SMALL=1 (set by the test suite) runs every cell at a tiny size.
SMALL = os.environ.get("REZERO_NOTEBOOK_SMALL", "0") == "1"

WIDTH = 32 if SMALL else 128           # hidden width N of the MLPs
PRODUCT_DEPTHS = (1, 4) if SMALL else (1, 4, 16)   # depths of the Gaussian products
NETWORKS = 2 if SMALL else 8           # random networks per depth (linear Jacobians do not depend on the input)
DEPTH = 8 if SMALL else 32             # depth of the tanh networks in part 3
NUM_INPUTS = 2 if SMALL else 4         # inputs per tanh network
SEED = 0
"""),
    code("""
import math
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

# tqdm (used by the toolkit for progress bars) warns in notebooks without ipywidgets.
warnings.filterwarnings("ignore", message="IProgress not found")

from rezero_dynamics import DeepMLP, TransformerEncoder, jacobian_matrix, jacobian_spectrum
from rezero_dynamics import theory
from rezero_dynamics.plots import plot_log10_singular_value_histograms

torch.manual_seed(SEED)
pd.set_option("display.precision", 4)
"""),
    md("""
## 1. A scalar chain

Take the simplest deep network: L layers that each multiply by the same weight w, so
x_L = w^L x_0. Its Jacobian is the number dx_L / dx_0 = w^L, and backpropagation
multiplies the gradient by the same factor. Even a weight very close to 1 gives an
exponentially small or large factor at depth 100.
"""),
    code("""
depths = np.arange(0, 101)
chain = pd.DataFrame({f"w = {w}": w ** depths for w in (0.9, 0.99, 1.0, 1.01, 1.1)}, index=depths)
chain.index.name = "depth L"
chain.loc[[10, 50, 100]]
"""),
    code("""
figure, axis = plt.subplots(figsize=(6, 3.5), layout="constrained")
for column in chain:
    axis.plot(chain.index, chain[column], label=column)
axis.set_yscale("log")
axis.set_xlabel("depth L")
axis.set_ylabel("|dx_L / dx_0| = w^L")
axis.set_title("a scalar chain vanishes or explodes")
axis.legend(fontsize="small");
"""),
    md("""
Only w = 1 keeps the signal at every depth. A real layer is a matrix, so there is not
one factor but one per direction: the singular values of J. Keeping the *mean* squared
singular value at 1 (the usual "variance-preserving" initialisation) is the matrix
version of w = 1. The next part shows that this is not enough.

## 2. Products of random Gaussian matrices

A deep linear network without residual connections has the Jacobian J = W_L ... W_1. With
Gaussian weights of variance 1/N, the mean squared singular value of J is
chi = tr(J^T J) / N = 1 on average at every depth: the variance is preserved. But the
squared singular values lambda = s^2 follow the **Fuss-Catalan law** at large width,
whose moments are m_1 = 1 and m_2 = L + 1: the spread grows with depth, and most
singular values drift towards 0 while a few grow large.

`DeepMLP` with `activation="linear"` and `variant="none"` is exactly this product. First
we check that the measured Jacobian is the matrix product itself.
"""),
    code("""
generator = torch.Generator().manual_seed(SEED)
linear_net = DeepMLP(WIDTH, 3, activation="linear", variant="none", bias=False, generator=generator)
jacobian = jacobian_matrix(linear_net.stack, torch.randn(1, WIDTH), dtype=torch.float64)
product = torch.eye(WIDTH, dtype=torch.float64)
for block in linear_net.blocks:
    product = block.sublayer.linear.weight.detach().double() @ product
product_max_error = float((jacobian - product).abs().max())
print("Jacobian shape:", tuple(jacobian.shape))
print("max |J - W_3 W_2 W_1| =", product_max_error)
"""),
    md("""
Now the spectrum at several depths, over a few random networks, against the theory
curve (`theory.fuss_catalan_overlay`). The histogram is over log10 s, so the curve is
the Fuss-Catalan density transformed to that axis.
"""),
    code("""
def gaussian_product_spectrum(depth: int, network: int) -> pd.DataFrame:
    generator = torch.Generator().manual_seed(1000 * depth + network)
    net = DeepMLP(WIDTH, depth, activation="linear", variant="none", bias=False, generator=generator)
    spectrum = jacobian_spectrum(net.stack, torch.randn(1, WIDTH), dtype=torch.float64,
                                 labels={"depth": depth, "variant": "Gaussian product"})
    return spectrum.to_frame().assign(sample=network)   # one sample per network


products = pd.concat(
    [gaussian_product_spectrum(depth, network) for depth in PRODUCT_DEPTHS for network in range(NETWORKS)],
    ignore_index=True,
)
plot_log10_singular_value_histograms(
    products, theory={depth: theory.fuss_catalan_overlay(depth) for depth in PRODUCT_DEPTHS}
);
"""),
    md("""
The moments make the comparison a number: m_k is the mean of lambda^k = s^(2k) over all
singular values. The theory is the limit of infinite width at fixed depth. At finite
width the measured values scatter around it, and the deviation grows with the ratio of
depth to width: raise `WIDTH` to see it shrink.
"""),
    code("""
lam = products.assign(lam=products["singular_value"] ** 2)
moments = lam.groupby("depth")["lam"].agg(m1="mean", m2=lambda x: (x**2).mean())
moments["m1 theory"] = [theory.fuss_catalan_moment(1, d) for d in moments.index]
moments["m2 theory"] = [theory.fuss_catalan_moment(2, d) for d in moments.index]
moments["largest s"] = products.groupby("depth")["singular_value"].max()
moments["edge theory"] = [math.sqrt(theory.fuss_catalan_edge(d)) for d in moments.index]
moments
"""),
    md("""
The mean m_1 stays near 1 while m_2 grows like L + 1, and the largest singular value
sits near the right edge of the support, sqrt((L+1)^(L+1) / L^L), which grows like
sqrt(e (L + 1)). At depth 16 (the default sizes) the smallest singular values fall
below float64 precision and count as zeros; the legend gives their number. Variance
preservation alone leaves a deep network badly conditioned.

## 3. What residual connections and normalisation do to the spectrum

Now a deep tanh MLP (`DEPTH` blocks of width `WIDTH`, Gaussian weights with
sigma_w = 1) in each residual variant of the toolkit:

| variant | block | Jacobian of one block |
| --- | --- | --- |
| `none` | F(x) | J_F |
| `residual` | x + F(x) | I + J_F |
| `pre_norm` | x + F(Norm(x)) | I + J_F J_Norm |
| `post_norm` | Norm(x + F(x)) | J_Norm (I + J_F) |
| `rezero` | x + alpha F(x) | I + alpha J_F |

`jacobian_spectrum` measures every singular value of the whole stack at a few Gaussian
inputs; `summary()` gives chi (the mean squared singular value), the extremes, the
condition number and the number of exact zeros per input.
"""),
    code("""
VARIANTS = ("none", "residual", "pre_norm", "post_norm", "rezero")
inputs = torch.randn(NUM_INPUTS, WIDTH)
spectra = {}
for variant in VARIANTS:
    generator = torch.Generator().manual_seed(SEED)
    net = DeepMLP(WIDTH, DEPTH, activation="tanh", variant=variant, generator=generator)
    spectra[variant] = jacobian_spectrum(net.stack, inputs, dtype=torch.float64,
                                         labels={"variant": variant, "depth": DEPTH})

summary = pd.concat([s.summary() for s in spectra.values()])
table = summary.groupby("variant", sort=False)[["chi", "max", "min_nonzero", "condition_number", "num_zeros"]].mean()
table.insert(1, "chi per block", table["chi"] ** (1 / DEPTH))   # geometric mean growth of chi per block
table
"""),
    code("""
plot_log10_singular_value_histograms(pd.concat([s.to_frame() for s in spectra.values()], ignore_index=True));
"""),
    md("""
How to read the table (`num_zeros` counts singular values below float64 precision
relative to the largest):

* **`none`**: a plain tanh network is a product of J_F = D W, with D the diagonal of
  tanh' values (at most 1). chi shrinks at every block, and the spectrum spreads as in
  part 2 but faster: at the default sizes its smallest singular values fall below
  working precision.
* **`residual`**: each block adds its branch to the identity, J = prod (I + J_F). The
  spectrum is far better conditioned than without skips, but chi is multiplied by a
  factor above 1 at every block (the "chi per block" column), so it grows exponentially
  with depth.
* **`pre_norm`**: the normalised branch adds a contribution of fixed size to a residual
  stream that keeps growing, so each later block changes the signal relatively less. chi
  grows much more slowly than with plain residual connections.
* **`post_norm`**: a LayerNorm output does not change when a constant is added to all
  features of its input, and barely changes when the input is scaled (only through the
  small `eps` added to the variance). Its Jacobian is zero in the first direction and
  nearly zero in the second. In a deep stack both fall below working precision, so about
  two singular values per input count as zeros, and the product of many normalisations
  spreads the rest of the spectrum over decades.
* **`rezero`**: every singular value is 1.

For linear residual branches the spread has a closed form. With
J = prod_l (I + alpha W_l) the moments are `theory.residual_linear_moments(alpha, L)`:
alpha controls how far the network is from isometry. ReZero networks are this family
with a learned alpha per layer.
"""),
    code("""
rows = []
for alpha in (0.0, 0.1, 0.3):
    generator = torch.Generator().manual_seed(SEED)
    net = DeepMLP(WIDTH, DEPTH, activation="linear", variant="rezero", alpha_init=alpha, bias=False,
                  generator=generator)
    s = jacobian_spectrum(net.stack, torch.randn(1, WIDTH), dtype=torch.float64).singular_values[0]
    m1, m2, _ = theory.residual_linear_moments(alpha, DEPTH)
    rows.append({"alpha": alpha, "m1": float((s**2).mean()), "m1 theory": m1,
                 "m2": float((s**4).mean()), "m2 theory": m2,
                 "condition number": float(s.max() / s.min())})
pd.DataFrame(rows).set_index("alpha")
"""),
    md("""
## 4. ReZero starts exactly isometric

A ReZero block computes x + alpha F(x) with alpha initialised to 0. At alpha = 0 the
block is the identity map whatever F is, so its Jacobian is I + 0 * J_F = I, and so is
the Jacobian of any stack of such blocks. The measurement agrees to the last bit: every
singular value is 1, for the tanh MLP of part 3 and for a Transformer encoder with
attention and feed-forward sublayers.
"""),
    code("""
mlp_values = spectra["rezero"].singular_values
encoder = TransformerEncoder(d_model=16 if SMALL else 32, depth=DEPTH, heads=2, variant="rezero")
tokens = torch.randn(NUM_INPUTS, 4 if SMALL else 8, encoder.d_model)
encoder_values = jacobian_spectrum(encoder, tokens, dtype=torch.float64).singular_values

rezero_max_deviation = max(float((mlp_values - 1).abs().max()), float((encoder_values - 1).abs().max()))
print(f"MLP: {mlp_values.numel()} singular values, Transformer: {encoder_values.numel()}")
print("max |s - 1| over all of them:", rezero_max_deviation)
"""),
    md("""
Isometry at initialisation does not stop learning: the gradient of the loss with respect
to alpha is the inner product of the backpropagated signal with F(x), which is not
zero, so the alphas move away from 0 in the first steps and each block starts to
contribute. Notebook `03_alpha_and_gradients_over_training.ipynb` follows the alphas
and the spectrum during training.

**Summary.** Depth multiplies Jacobians. Preserving the mean squared singular value is
not enough, because the spread grows with depth (Fuss-Catalan). Skip connections keep an
identity path; normalisation controls the scale but may add zeros and spread; ReZero
begins at the identity, with every singular value exactly 1.
"""),
]


# ------------------------------------------------------------------------------------------
# 02: spectra of your model
# ------------------------------------------------------------------------------------------

SPECTRA_OF_YOUR_MODEL = [
    md("""
# Jacobian spectra of your own model

`rezero_dynamics.spectra` works on any `nn.Module` or function of one tensor. This
notebook defines a small custom module and measures its input-output Jacobian spectrum
three ways:

1. **exactly**: the dense Jacobian per input sample, then all singular values;
2. **matrix-free**: Jacobian-vector products only, for inputs too large for the dense
   matrix (extreme singular values by Lanczos, the density by stochastic Lanczos
   quadrature, chi by random probes);
3. **across depth**: the spectrum after every block in one pass (a depth profile).

Every method is checked against the exact spectrum on the way.
"""),
    parameters("""
import os

# REZERO_NOTEBOOK_SMALL=1 (set by the test suite) runs every cell at a tiny size.
SMALL = os.environ.get("REZERO_NOTEBOOK_SMALL", "0") == "1"

CHANNELS = 4 if SMALL else 8          # channels of the 1-D convolutional network
LENGTH = 8 if SMALL else 32           # signal length; the Jacobian is (CHANNELS*LENGTH) square
DEPTH = 4 if SMALL else 16            # residual blocks
NUM_INPUTS = 2 if SMALL else 4        # input samples for the exact spectrum
BIG_LENGTH = 128 if SMALL else 1024   # signal length of the large model (matrix-free part)
PROBES = 8 if SMALL else 32           # random probe vectors for SLQ and the moments
SEED = 0
"""),
    code("""
import copy
import warnings

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch import nn

# tqdm (used by the toolkit for progress bars) warns in notebooks without ipywidgets.
warnings.filterwarnings("ignore", message="IProgress not found")

from rezero_dynamics.plots import plot_log10_density, plot_log10_singular_value_histograms
from rezero_dynamics.spectra import JacobianTooLargeError, jacobian_matrix, jacobian_spectrum
from rezero_dynamics.spectra.depth_profile import depth_profile
from rezero_dynamics.spectra.matrix_free import (
    JacobianOperator,
    extreme_singular_values,
    jacobian_moments,
    spectral_density,
)

torch.manual_seed(SEED)
pd.set_option("display.precision", 4)
"""),
    md("""
## A custom module

A 1-D convolutional residual network that is not part of the toolkit: each block adds
`alpha * tanh(conv(x))` to its input, with one fixed `alpha` for all blocks. Inputs have
shape (batch, channels, length). Nothing about it is registered anywhere; the spectra
module only calls it.

The blocks are kept in a `ModuleList` called `blocks`, which is all a depth profile
needs later.
"""),
    code("""
class ConvBlock(nn.Module):
    \"\"\"x + alpha * tanh(conv(x)) on signals of shape (B, C, T).\"\"\"

    def __init__(self, channels: int, alpha: float) -> None:
        super().__init__()
        self.conv = nn.Conv1d(channels, channels, kernel_size=3, padding=1)
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * torch.tanh(self.conv(x))


class ConvResNet(nn.Module):
    def __init__(self, channels: int, depth: int, alpha: float) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(channels, alpha) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def build(alpha: float) -> ConvResNet:
    torch.manual_seed(SEED)   # the same weights for every alpha
    return ConvResNet(CHANNELS, DEPTH, alpha)


model = build(alpha=0.5)
inputs = torch.randn(NUM_INPUTS, CHANNELS, LENGTH)
print(model(inputs).shape)
"""),
    md("""
## 1. Exact spectrum

`jacobian_spectrum(fn, inputs)` takes a batch (B, *in_shape) and treats each sample as a
batch of one: sample b gives a Jacobian of shape (C*T, C*T). The computation runs in
float64 on copies of the parameters, under `torch.no_grad()`, and the module is left as
it was (parameters, mode and dtype).

The `labels` become columns of the frames, which the plot functions group by.
"""),
    code("""
exact = {}
for alpha in (0.0, 0.1, 0.5):
    exact[alpha] = jacobian_spectrum(build(alpha), inputs, dtype=torch.float64,
                                     labels={"variant": f"alpha = {alpha}", "depth": DEPTH})

pd.concat([s.summary() for s in exact.values()]).groupby("variant", sort=False)[
    ["n_in", "chi", "max", "min", "condition_number", "num_zeros"]
].mean()
"""),
    code("""
plot_log10_singular_value_histograms(pd.concat([s.to_frame() for s in exact.values()], ignore_index=True));
"""),
    md("""
At alpha = 0 each block is the identity and every singular value is 1; a larger alpha
spreads the spectrum. `jacobian_matrix` gives the dense matrix itself, for example to
check one entry against a finite difference:
"""),
    code("""
x0 = inputs[:1].double()
J = jacobian_matrix(model, x0, dtype=torch.float64)
model64 = copy.deepcopy(model).double()   # a float64 copy; the model itself stays float32
step = 1e-6
direction = torch.zeros_like(x0)
direction[0, 0, 0] = 1.0
with torch.no_grad():
    finite_difference = (model64(x0 + step * direction) - model64(x0 - step * direction)) / (2 * step)
finite_difference_max_error = float((J[:, 0] - finite_difference.reshape(-1)).abs().max())
print("J shape:", tuple(J.shape))
print("max |J[:, 0] - central difference| =", finite_difference_max_error)
"""),
    md("""
## 2. Matrix-free spectra

The dense Jacobian has (C*T)^2 entries, so it stops at a few thousand input dimensions.
Here is the same network on signals of length `BIG_LENGTH`. With a small memory budget
the exact method raises `JacobianTooLargeError` before any forward pass, and the message
says what to do instead.
"""),
    code("""
big_model = build(alpha=0.5)
big_input = torch.randn(1, CHANNELS, BIG_LENGTH)
budget = 2**20 if SMALL else 64 * 2**20   # bytes
try:
    jacobian_spectrum(big_model, big_input, dtype=torch.float64, memory_budget=budget)
except JacobianTooLargeError as error:
    print(error)
"""),
    md("""
`JacobianOperator` applies J and J^T to vectors without forming J. Three estimators
build on it:

* `extreme_singular_values`: the k largest or smallest singular values by
  Golub-Kahan-Lanczos bidiagonalisation, with residuals and a `converged` flag;
* `spectral_density`: the density of log10 s by stochastic Lanczos quadrature (SLQ),
  with the spread over probe vectors;
* `jacobian_moments`: chi = tr(J^T J) / n and m2 = tr((J^T J)^2) / n from random sign
  vectors, with standard errors.

First on the small model, where the exact spectrum is known.
"""),
    code("""
operator = JacobianOperator(model, inputs[:1], dtype=torch.float64)
exact_values = exact[0.5].singular_values[0].numpy()

largest = extreme_singular_values(operator, k=4, which="largest", seed=SEED)
smallest = extreme_singular_values(operator, k=4, which="smallest", seed=SEED)
pd.DataFrame({
    "largest (Lanczos)": largest.values, "largest (exact)": exact_values[:4],
    "smallest (Lanczos)": smallest.values, "smallest (exact)": exact_values[::-1][:4],
})
"""),
    code("""
lanczos_max_error = max(
    np.abs(largest.values - exact_values[:4]).max(), np.abs(smallest.values - exact_values[::-1][:4]).max()
)
print(f"converged: {largest.converged} and {smallest.converged} after "
      f"{largest.iterations} and {smallest.iterations} Golub-Kahan steps; max error {lanczos_max_error:.2e}")
"""),
    md("""
The moment estimates come with standard errors; the exact values should lie within a
few of them.
"""),
    code("""
moments = jacobian_moments(operator, probes=PROBES, seed=SEED)
exact_chi = float((exact_values**2).mean())
exact_m2 = float((exact_values**4).mean())
chi_z_score = (moments.chi - exact_chi) / moments.chi_stderr
pd.DataFrame(
    {"estimate": [moments.chi, moments.m2], "standard error": [moments.chi_stderr, moments.m2_stderr],
     "exact": [exact_chi, exact_m2]},
    index=["chi", "m2"],
)
"""),
    md("""
SLQ gives a smooth density. On the same axes as the exact histogram (bars are fractions
of singular values per bin, so the density is scaled by the bin width):
"""),
    code("""
density = spectral_density(operator, probes=PROBES, steps=min(60, operator.shape[1]), seed=SEED)
figure = plot_log10_singular_value_histograms(exact[0.5].to_frame().query("sample == 0"), bins=30)
axis = figure.axes[0]
low, high = np.log10(exact_values.min()), np.log10(exact_values.max())
bin_width = (high - low) / 30
frame = density.to_frame()
axis.plot(frame["log10_singular_value"], frame["density"] * bin_width, color="black", label="SLQ")
axis.legend(fontsize="small");
"""),
    md("""
Now the large model, without forming its Jacobian. The same calls work unchanged, and
the cost of each product grows only linearly with the input size.
"""),
    code("""
big_operator = JacobianOperator(big_model, big_input, dtype=torch.float64)
big_largest = extreme_singular_values(big_operator, k=3, which="largest", seed=SEED)
big_moments = jacobian_moments(big_operator, probes=PROBES, seed=SEED)
big_density = spectral_density(big_operator, probes=max(2, PROBES // 4), steps=40, seed=SEED)
print(f"n = {big_operator.shape[1]} input dimensions")
print("largest singular values:", np.round(big_largest.values, 4), "converged:", big_largest.converged)
print(f"chi = {big_moments.chi:.4f} +- {big_moments.chi_stderr:.4f}")
plot_log10_density(big_density.to_frame().assign(variant="alpha = 0.5", depth=DEPTH));
"""),
    md("""
## 3. Depth profiles

How does the spectrum build up block by block? `depth_profile(stack, x)` forms each
block's Jacobian at its own input and multiplies them up, so L blocks cost L block
Jacobians rather than L whole-network ones. It takes anything with a `blocks` list (like
`ConvResNet`), an `nn.Sequential`, or a list of modules. The summary has one row per
block with log10 of chi, of the largest and of the smallest nonzero singular value of
the Jacobian up to that block. Its other columns: `num_zeros` counts singular values
below float64 precision relative to the largest, `log_abs_det` is the natural log of
|det J| (the sum of the natural logs of the singular values, NaN when one is zero), and
`chi_growth` is chi after this block divided by chi after the previous one (by 1, the
identity's chi, for the first block).
"""),
    code("""
profiles = {alpha: depth_profile(build(alpha), inputs[:1]) for alpha in (0.1, 0.5, 1.0)}
profiles[0.5].summary.head()
"""),
    code("""
figure, axis = plt.subplots(figsize=(7.5, 3.8), layout="constrained")
for (alpha, profile), colour in zip(profiles.items(), ("C0", "C1", "C2")):
    summary = profile.summary
    axis.plot(summary["block"], summary["log10_max"], color=colour, label=f"alpha = {alpha}: max")
    axis.plot(summary["block"], summary["log10_min_nonzero"], color=colour, linestyle="--", label="min")
axis.axhline(0, color="0.6", linewidth=0.8, linestyle=":")
axis.set_xlabel("block")
axis.set_ylabel("log10 singular value")
axis.set_title("largest and smallest singular value after each block")
axis.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.0, 0.5));
"""),
    md("""
The last row of a profile is the spectrum of the whole network, so it must match the
exact spectrum of part 1:
"""),
    code("""
last_block = profiles[0.5].frame.query("block == @DEPTH")["log10_singular_value"].to_numpy()
profile_max_error = float(np.abs(np.sort(last_block) - np.sort(np.log10(exact_values))).max())
print("max |log10 s (profile) - log10 s (exact)| =", profile_max_error)
"""),
    md("""
**Where to go next.** `method="qr"` in `depth_profile` keeps the profile finite past a
thousand blocks, where singular values leave float64's range. The
`rezero-dynamics spectrum` command runs these methods on the toolkit's Transformers and
MLPs (`--method lanczos`, `--method slq`) and draws the figures.
"""),
]


# ------------------------------------------------------------------------------------------
# 03: alpha and gradients over training
# ------------------------------------------------------------------------------------------

TRAINING = [
    md("""
# Alpha and gradients over training

This notebook trains small character-level Transformer language models with the toolkit's
`train` function and explores what it records: the loss, each ReZero alpha, the gradient
norm of every block, and the input-output Jacobian spectrum at a few steps. A post-norm
model of the same size trains beside the ReZero one for contrast.

Everything goes into a temporary folder that is deleted at the end.
"""),
    parameters("""
import os

# REZERO_NOTEBOOK_SMALL=1 (set by the test suite) runs every cell at a tiny size.
SMALL = os.environ.get("REZERO_NOTEBOOK_SMALL", "0") == "1"

DEPTH = 4 if SMALL else 12            # Transformer layers
D_MODEL = 16 if SMALL else 32         # model width
SEQ_LEN = 16 if SMALL else 32         # characters per training window
STEPS = 30 if SMALL else 300          # optimisation steps
SPECTRUM_EVERY = 15 if SMALL else 100 # steps between Jacobian spectra
SEED = 0
"""),
    code("""
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

# tqdm (used by the toolkit for progress bars) warns in notebooks without ipywidgets.
warnings.filterwarnings("ignore", message="IProgress not found")

from rezero_dynamics.plots import (
    plot_alpha_trajectories,
    plot_grad_norm_heatmap,
    plot_grad_norm_profiles,
    plot_log10_singular_value_histograms,
    plot_training_curves,
)
from rezero_dynamics.tracking import read_records
from rezero_dynamics.training import TrainConfig, read_status, train

pd.set_option("display.precision", 4)
"""),
    md("""
## Train

`TrainConfig` holds every setting; its defaults are a 12-layer ReZero language model on
the embedded corpus (Python's own help text). Here the sizes come from the parameters
cell. `track_every=1` records every step; `spectrum_every` records the exact Jacobian
spectrum of the encoder (embeddings in, hidden states out) on a fixed probe batch.
"""),
    code("""
workspace = tempfile.TemporaryDirectory()
root = Path(workspace.name)

base = dict(
    task="lm", depth=DEPTH, d_model=D_MODEL, heads=2, seq_len=SEQ_LEN, batch_size=16, steps=STEPS,
    lr=3e-3, eval_every=max(1, STEPS // 5), eval_batches=2, track_every=1,
    spectrum_every=SPECTRUM_EVERY, spectrum_inputs=2, spectrum_tokens=8, checkpoint_every=0, seed=SEED,
)
results = {}
for variant in ("rezero", "post_norm"):
    config = TrainConfig(variant=variant, **base)
    results[variant] = train(config, root / variant, run_name=variant)
    print(variant, read_status(root / variant))
"""),
    md("""
## The records

Each run folder has `records.csv`: tidy rows of (run, step, quantity, layer, value).
`read_records` on the parent folder reads both runs into one frame. `layer` is the block
index for per-block quantities, the parameter name for alphas, and `all` for scalars.
"""),
    code("""
records = read_records(root)
print(records.shape)
records.groupby("quantity")["layer"].nunique().rename("layers per quantity")
"""),
    code("""
records.head()
"""),
    md("""
Ordinary pandas gets any view. The loss per run, every `STEPS // 5` steps:
"""),
    code("""
loss = records.query("quantity == 'loss'").pivot_table(index="step", columns="run", values="value")
loss.iloc[:: max(1, STEPS // 5)]
"""),
    code("""
plot_training_curves(records);
"""),
    md("""
## Alpha trajectories

At step 0 every alpha is exactly 0, so the ReZero model is the identity map from
embeddings to hidden states. The gradient of the loss with respect to each alpha is not
zero, so the optimiser moves them at once. With Adam each alpha moves by about the
learning rate per step at first, whatever the size of its gradient.
"""),
    code("""
alpha = records.query("quantity == 'alpha' and run == 'rezero'").pivot_table(
    index="step", columns="layer", values="value", sort=False
)
# Parameter names such as encoder.blocks.3.gate.alpha, shortened to the block index.
alpha = alpha.rename(columns=lambda name: name.removeprefix("encoder.blocks.").removesuffix(".gate.alpha"))
alpha.iloc[[0, 1, 2, len(alpha) // 2, -1]]
"""),
    code("""
plot_alpha_trajectories(records, run="rezero");
"""),
    md("""
## Gradient norms per block

`grad_norm` is the L2 norm of the gradient over each block's parameters (`layer` = block
index, `other` = embeddings and head). In a post-norm stack the gradient reaching the
first blocks has passed through every LayerNorm above them; in ReZero it reaches every
block through the identity path.
"""),
    code("""
grad_norms = records.query("quantity == 'grad_norm' and layer != 'other'").assign(block=lambda f: f["layer"].astype(int))
grad_norms.pivot_table(index="block", columns="run", values="value", aggfunc="median")
"""),
    code("""
figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
plot_grad_norm_heatmap(records, run="rezero", ax=axes[0])
plot_grad_norm_heatmap(records, run="post_norm", ax=axes[1]);
"""),
    md("""
At the default sizes the post-norm gradients fall by about four orders of magnitude from
the last block to the first, while ReZero's stay within a factor of a few across
depth. The depth profiles show the same at three steps:
"""),
    code("""
figure, axes = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
for axis, run in zip(axes, ("rezero", "post_norm")):
    plot_grad_norm_profiles(records, steps=[0, STEPS // 2, STEPS - 1], run=run, ax=axis)
"""),
    md("""
## Spectra during training

`spectra.csv` has one row per singular value, with the `step` it was measured at (the
model after that many updates). The histogram function groups by any column: one panel
per step, runs overlaid.
"""),
    code("""
spectra = pd.concat([pd.read_csv(root / run / "spectra.csv") for run in results], ignore_index=True)
spectra.groupby(["run", "step"])["singular_value"].agg(["min", "max", "count"])
"""),
    code("""
plot_log10_singular_value_histograms(spectra, depth="step", variant="run");
"""),
    md("""
At step 0 the ReZero spectrum is a spike at exactly 1. As the alphas grow it widens but
stays centred near 1. The post-norm spectrum starts spread over decades with its exact
zeros (two per token, from the LayerNorms), and at the default sizes training moves it
further down: the same vanishing signal that the gradient norms of its first blocks
show.

The records also contain `alpha_grad`, `activation_rms` (root-mean-square output of each
block), `update_norm` (size of each block's optimiser step), `lr` and the Jacobian
summaries `jacobian_chi`, `jacobian_max`, `jacobian_min_nonzero` and
`jacobian_num_zeros`: try `records.query("quantity == 'activation_rms'")`.
"""),
    code("""
rezero_step0 = spectra.query("run == 'rezero' and step == 0")["singular_value"]
rezero_step0_max_deviation = float((rezero_step0 - 1).abs().max())
initial_alphas_max = float(alpha.iloc[0].abs().max())
final_alphas_max = float(alpha.iloc[-1].abs().max())
window = max(1, STEPS // 10)
loss_drop = float(loss["rezero"].iloc[:window].mean() - loss["rezero"].iloc[-window:].mean())
print("ReZero at step 0: max |s - 1| =", rezero_step0_max_deviation, "| max |alpha| =", initial_alphas_max)
print("after training: max |alpha| =", final_alphas_max, f"| training loss fell by {loss_drop:.3f} nats")
"""),
    code("""
workspace.cleanup()
"""),
]


NOTEBOOKS = {
    "01_dynamical_isometry.ipynb": DYNAMICAL_ISOMETRY,
    "02_spectra_of_your_model.ipynb": SPECTRA_OF_YOUR_MODEL,
    "03_alpha_and_gradients_over_training.ipynb": TRAINING,
}


def build_notebook(cells: list) -> nbformat.NotebookNode:
    for number, cell in enumerate(cells):
        cell.id = f"cell-{number:02d}"  # fixed ids, so rebuilding an unchanged notebook changes nothing
    notebook = new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def main() -> None:
    for name, cells in NOTEBOOKS.items():
        notebook = build_notebook(cells)
        nbformat.validate(notebook)
        nbformat.write(notebook, HERE / name)
        print(f"wrote {HERE / name}")


if __name__ == "__main__":
    main()
