"""Named studies built from the models, spectra, data and plots.

``spectrum_study`` compares the input-output Jacobian spectra of residual variants at
several depths, at initialisation, on embedded text or Gaussian inputs.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_model_fits, check_positive_int, check_seed
from ..data.text import DEFAULT_CORPUS_NAME, CharVocabulary, default_corpus, text_windows
from ..models import ACTIVATIONS, WEIGHT_INITS, DeepMLP, TransformerEncoder
from ..residual import check_variant
from ..spectra import DEFAULT_MEMORY_BUDGET, JACOBIAN_MODES, jacobian_spectrum

log = logging.getLogger(__name__)

MODELS: tuple[str, ...] = ("transformer", "mlp")
INPUT_KINDS: tuple[str, ...] = ("text", "gaussian")
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "float64": torch.float64}
SPECTRUM_METHODS: tuple[str, ...] = ("auto", "exact", "lanczos", "slq")


def choose_method(config: "SpectrumConfig") -> str:
    """Resolve ``auto``: ``exact`` when the dense Jacobian and its SVD copy fit the memory
    budget, else ``slq``. Other methods are returned unchanged."""
    if config.method != "auto":
        return config.method
    n = math.prod(config.input_shape)
    itemsize = torch.finfo(DTYPES[config.dtype]).bits // 8
    return "exact" if 2 * n * n * itemsize <= config.memory_budget else "slq"


@dataclass(frozen=True)
class SpectrumConfig:
    """Settings of a spectrum study; every field has a default that runs on a 2-core CPU.

    For the Transformer each input is a sequence of ``seq_len`` tokens of width
    ``width`` (= d_model), so each Jacobian is (seq_len * width) square. For the MLP each
    input is one vector of ``width``.
    """

    model: str = "transformer"
    variants: tuple[str, ...] = ("post_norm", "pre_norm", "rezero")
    depths: tuple[int, ...] = (4, 12, 64)
    width: int = 64
    heads: int = 4
    d_ff: int | None = None
    seq_len: int = 16
    num_inputs: int = 4
    inputs: str = "text"
    alpha_init: float = 0.0
    activation: str = "tanh"
    init: str = "gaussian"
    sigma_w: float = 1.0
    sigma_b: float = 0.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float64"
    mode: str = "auto"
    method: str = "auto"
    k: int = 16
    probes: int = 10
    lanczos_steps: int = 60
    memory_budget: int = DEFAULT_MEMORY_BUDGET

    def validate(self) -> "SpectrumConfig":
        """Return self, or raise ValueError naming the first invalid setting and the fix."""
        _check_in("model", self.model, MODELS)
        _check_in("inputs", self.inputs, INPUT_KINDS)
        _check_in("dtype", self.dtype, tuple(DTYPES))
        _check_in("Jacobian mode", self.mode, JACOBIAN_MODES)
        _check_in("method", self.method, SPECTRUM_METHODS)
        _check_in("activation", self.activation, ACTIVATIONS)
        _check_in("init", self.init, WEIGHT_INITS)
        if not self.variants:
            raise ValueError("no variants given; name at least one, e.g. rezero")
        for variant in self.variants:
            check_variant(variant)
        for name, values in (("variants", self.variants), ("depths", self.depths)):
            if len(set(values)) != len(values):
                raise ValueError(f"{name} {list(values)} repeat a value; list each once")
        if not self.depths:
            raise ValueError("no depths given; name at least one, e.g. 12")
        for depth in self.depths:
            check_positive_int("depth", depth)
        for name in ("width", "heads", "seq_len", "num_inputs", "k", "probes", "lanczos_steps"):
            check_positive_int(name, getattr(self, name))
        check_seed("seed", self.seed)
        if self.model == "transformer":
            d_ff = 4 * self.width if self.d_ff is None else self.d_ff
            per_block = 4 * self.width**2 + 2 * self.width * d_ff  # attention and feed-forward weights
        else:
            per_block = self.width**2
        itemsize = torch.finfo(DTYPES[self.dtype]).bits // 8 if self.dtype in DTYPES else 4
        check_model_fits("depth", max(self.depths), per_block, itemsize)
        if self.model == "transformer" and self.width % self.heads != 0:
            raise ValueError(
                f"width={self.width} is not divisible by heads={self.heads}; pick heads that divide the width"
            )
        size = math.prod(self.input_shape)
        if self.method == "lanczos" and self.k > size:
            raise ValueError(
                f"k={self.k} exceeds the Jacobian's size {size} ({' x '.join(map(str, self.input_shape))}); "
                f"use --k {size} or less, or --method exact for every singular value"
            )
        if not math.isfinite(self.alpha_init) or not math.isfinite(self.sigma_w):
            raise ValueError(f"alpha_init and sigma_w must be finite, got {self.alpha_init} and {self.sigma_w}")
        if not (math.isfinite(self.sigma_b) and self.sigma_b >= 0):
            raise ValueError(f"sigma_b must be a finite number >= 0, got {self.sigma_b}")
        if self.memory_budget <= 0:
            raise ValueError(f"memory_budget must be positive, got {self.memory_budget} bytes")
        return self

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample input shape: (seq_len, width) for the Transformer, (width,) for the MLP."""
        return (self.seq_len, self.width) if self.model == "transformer" else (self.width,)


def _check_in(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def build_stack(config: SpectrumConfig, variant: str, depth: int) -> nn.Module:
    """Build the hidden-to-hidden block stack the study differentiates, at initialisation."""
    if config.model == "transformer":
        return TransformerEncoder(
            config.width, depth, heads=config.heads, d_ff=config.d_ff, variant=variant,
            alpha_init=config.alpha_init,
        )
    return DeepMLP(
        config.width, depth, activation=config.activation, variant=variant, init=config.init,
        sigma_w=config.sigma_w, sigma_b=config.sigma_b, alpha_init=config.alpha_init,
    ).stack


def study_inputs(config: SpectrumConfig) -> torch.Tensor:
    """Make the study's inputs, (num_inputs, *input_shape), in float32 on the CPU.

    ``text``: windows of ``seq_len`` characters drawn from the embedded corpus, embedded by
    a seeded Gaussian character embedding plus sinusoidal positions, each token vector
    scaled to unit root-mean-square. For the MLP the token vectors of a window are
    averaged first. ``gaussian``: independent standard normal entries.
    """
    generator = torch.Generator().manual_seed(config.seed)
    if config.inputs == "gaussian":
        return torch.randn(config.num_inputs, *config.input_shape, generator=generator)

    from ..models.transformer import sinusoidal_positions

    text = default_corpus()
    vocabulary = CharVocabulary.from_text(text)
    windows = text_windows(vocabulary.encode(text), config.num_inputs, config.seq_len, generator)  # (B, T)
    embedding = torch.randn(len(vocabulary), config.width, generator=generator)  # (V, D)
    vectors = embedding[windows] + sinusoidal_positions(config.seq_len, config.width)  # (B, T, D)
    vectors = vectors / vectors.square().mean(dim=-1, keepdim=True).sqrt()
    if config.model == "mlp":
        vectors = vectors.mean(dim=1)
        vectors = vectors / vectors.square().mean(dim=-1, keepdim=True).sqrt()
    return vectors


def spectrum_study(config: SpectrumConfig, *, progress: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Run the study: the Jacobian spectrum of every (variant, depth) on the same inputs.

    Models are built from seed ``config.seed`` (one fixed stream per variant and depth), in
    their own forked RNG, so the caller's global RNG is untouched.

    Methods (``config.method``; ``auto`` picks with ``choose_method`` and logs the choice):

    * ``exact``: every singular value. Returns ``(singular_values, summary)``, tidy,
      with ``variant`` and ``depth`` columns.
    * ``lanczos``: the ``k`` largest and ``k`` smallest singular values per input,
      matrix-free. Same frames; ``which`` is largest or smallest, ``converged`` and
      ``residual`` the quality of each value.
    * ``slq``: the density of log10 singular values by stochastic Lanczos quadrature.
      Returns ``(density, summary)``: density has log10_singular_value, density, spread
      per (variant, depth, sample); summary has zero_fraction and probe estimates of chi.
    """
    config.validate()
    method = choose_method(config)
    device = torch.device(config.device)
    dtype = DTYPES[config.dtype]
    inputs = study_inputs(config).to(device)
    log.info(
        "spectrum study: %s, variants %s, depths %s, inputs %s (%s), %d samples of shape %s, %s, method %s",
        config.model, ",".join(config.variants), ",".join(map(str, config.depths)), config.inputs,
        DEFAULT_CORPUS_NAME if config.inputs == "text" else "N(0, 1)", config.num_inputs,
        config.input_shape, config.dtype, method,
    )

    jobs = [(v, d) for d in config.depths for v in config.variants]
    values, summaries = [], []
    for index, (variant, depth) in enumerate(tqdm(jobs, desc=f"spectra ({method})", disable=not progress)):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((config.seed * 1_000_003 + index) % 2**64)
            stack = build_stack(config, variant, depth)
        stack = stack.to(device)
        labels = {"variant": variant, "depth": depth}
        if method == "exact":
            spectrum = jacobian_spectrum(
                stack, inputs, mode=config.mode, dtype=dtype, memory_budget=config.memory_budget,
                labels=labels, seed=config.seed,
            )
            values.append(spectrum.to_frame())
            summaries.append(spectrum.summary())
        else:
            frame, summary = _matrix_free_job(stack, inputs, config, method, dtype)
            values.append(frame.assign(**labels))
            summaries.append(summary.assign(**labels))
    values_frame = pd.concat(values, ignore_index=True)
    summary_frame = pd.concat(summaries, ignore_index=True).assign(method=method)
    return values_frame, summary_frame


def _matrix_free_job(stack, inputs, config: SpectrumConfig, method: str, dtype) -> tuple[pd.DataFrame, pd.DataFrame]:
    from ..spectra.matrix_free import JacobianOperator, extreme_singular_values, jacobian_moments, spectral_density

    frames, summaries = [], []
    for sample in range(inputs.shape[0]):
        operator = JacobianOperator(stack, inputs[sample : sample + 1], dtype=dtype, seed=config.seed)
        moments = jacobian_moments(operator, probes=max(2, config.probes), seed=config.seed)
        row = {"sample": sample, "n_in": operator.shape[1], "n_out": operator.shape[0],
               "chi": moments.chi, "chi_stderr": moments.chi_stderr}
        if method == "lanczos":
            k = min(config.k, min(operator.shape))
            for which in ("largest", "smallest"):
                result = extreme_singular_values(operator, k, which=which, seed=config.seed)
                values = result.values
                frames.append(pd.DataFrame({
                    "sample": sample, "which": which, "index": np.arange(len(values)),
                    "singular_value": values, "residual": result.residuals, "converged": result.converged,
                }))
                row[f"{which}_converged"] = result.converged
                row[f"{which}_iterations"] = result.iterations
        else:
            density = spectral_density(operator, probes=config.probes, steps=config.lanczos_steps, seed=config.seed)
            frames.append(density.to_frame().assign(sample=sample))
            row["zero_fraction"] = density.zero_fraction
        summaries.append(row)
    frame = pd.concat(frames, ignore_index=True)
    if method == "lanczos":
        # Zero to working precision, relative to each sample's largest singular value.
        largest = frame["sample"].map(frame[frame["which"] == "largest"].groupby("sample")["singular_value"].max())
        n = math.prod(config.input_shape)
        frame["is_zero"] = frame["singular_value"] <= largest * n * torch.finfo(dtype).eps
        positive = frame["singular_value"].where(~frame["is_zero"])
        frame["log10_singular_value"] = np.log10(positive)
    return frame, pd.DataFrame(summaries)


def theory_overlays(config: SpectrumConfig) -> dict[int, pd.DataFrame]:
    """Return the predicted density of log10 singular values per depth, where theory covers
    the study's setting. Raises ValueError otherwise.

    Covered: linear MLPs with Gaussian weights (biases are 0 by default) and one variant,

    * ``none``: products of Gaussian matrices (Fuss-Catalan law);
    * ``residual`` or ``rezero``: prod (I + alpha W) with alpha = sigma_w, or
      alpha_init * sigma_w for ReZero, by the alpha^2 L = t limit (free multiplicative
      Brownian motion), which needs small alpha and many layers.
    """
    from ..theory import fuss_catalan_overlay, residual_linear_overlay

    linear_gaussian = config.model == "mlp" and config.activation == "linear" and config.init == "gaussian"
    variants = tuple(config.variants)
    if linear_gaussian and variants == ("none",):
        return {depth: fuss_catalan_overlay(depth, sigma2=config.sigma_w**2) for depth in config.depths}
    if linear_gaussian and variants in (("residual",), ("rezero",)):
        alpha = config.sigma_w * (config.alpha_init if variants == ("rezero",) else 1.0)
        if alpha == 0:
            raise ValueError(
                "at alpha = 0 the network is the identity map: every singular value is 1, so there is "
                "no density to draw; use a nonzero --alpha-init (rezero) or --sigma-w (residual)"
            )
        for depth in config.depths:
            # The limit's m_1 = e^t against the exact (1 + alpha^2)^L: apart by L alpha^4 / 2 in log.
            gap = abs(depth * math.log1p(alpha**2) - depth * alpha**2)
            if gap > 0.05:
                raise ValueError(
                    f"the residual-network theory curve needs alpha^2 small and depth large; at alpha={alpha:g} "
                    f"and depth {depth} its mean squared singular value is off by {math.expm1(gap):.0%}. "
                    "Use a smaller --sigma-w (residual) or --alpha-init (rezero), below about 0.3 in size"
                )
        return {depth: residual_linear_overlay(alpha, depth) for depth in config.depths}
    raise ValueError(
        "no theory curve covers this setting; theory overlays need --model mlp --activation linear "
        "--init gaussian and one of --variants none, residual or rezero (with --alpha-init above 0)"
    )


def summarise_by_group(summary: pd.DataFrame, values: pd.DataFrame, tiny: float = 1e-3) -> pd.DataFrame:
    """Aggregate a study per (variant, depth): mean chi, extreme singular values, tiny fraction.

    ``fraction_tiny`` is the share of singular values below ``tiny`` times their sample's
    largest, zeros included.
    """
    keys = ["depth", "variant"]
    relative = values["singular_value"] / values.groupby(keys + ["sample"])["singular_value"].transform("max")
    tiny_share = (relative < tiny).groupby([values[k] for k in keys]).mean().rename("fraction_tiny")
    grouped = summary.groupby(keys, sort=False).agg(
        chi=("chi", "mean"), max=("max", "max"), min_nonzero=("min_nonzero", "min"),
        num_zeros=("num_zeros", "mean"),
    )
    return grouped.join(tiny_share).reset_index()


def config_as_dict(config: SpectrumConfig) -> dict:
    """Return the config as JSON-ready values (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
