"""Diagnose a model at one point: its input-output Jacobian and how it builds up block by block.

Measured on given inputs, with the model in eval mode on a float64 copy of its state
(the model itself is left unchanged):

* chi = tr(J^T J) / n (mean squared singular value over input dimensions), with a
  standard error over input samples, or over probe vectors when there is one sample;
* spread = m2 / chi^2 - 1 with m2 = tr((J^T J)^2) / n: 0 for an isometry;
* the count and fraction of singular values below ``near_zero_relative`` times the
  largest of their sample;
* the depth profile: chi after every block, and its growth per block, exp of the slope
  of a least-squares line through ln chi against block index (block 0 is the input,
  where chi = 1);
* the activation RMS entering the first block and after every block, with its growth
  per block fitted the same way.

``exact`` forms the dense Jacobian. ``probes`` estimates chi and m2 with Rademacher
probes (Hutchinson) and the depth profile by pushing the probes through the blocks. It
estimates the near-zero fraction by stochastic Lanczos quadrature with a quarter of the
probes (at least 2).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import jvp, vmap

from ..residual import ResidualBlock
from ..spectra import DEFAULT_MEMORY_BUDGET, jacobian_spectrum
from ..spectra.depth_profile import depth_profile
from ..spectra.exact import analysis_call
from .findings import Finding, verdict_of
from .predictions import TheoryPrediction
from .rules import Architecture, activation_findings, chi_findings, is_isometric, near_zero_findings, spread_findings
from .thresholds import limit

METHODS: tuple[str, ...] = ("auto", "exact", "probes")


@dataclass(frozen=True)
class ModelDiagnosis:
    """The measured spectrum statistics of a model, its depth profile and its findings.

    ``profile`` has one row per block (0 = the input): block, chi (geometric mean over
    samples) and activation_rms. Growth rates are per block. ``near_zero_count`` and
    ``num_zeros`` are means over samples of the per-sample counts; ``size`` is the
    number of singular values per sample.
    """

    target: str
    method: str
    num_inputs: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    chi: float
    chi_stderr: float
    spread: float
    size: int
    near_zero_count: float
    near_zero_fraction: float
    num_zeros: float
    chi_growth_per_block: float | None
    activation_rms_ratio: float
    activation_rms_growth_per_block: float | None
    profile: pd.DataFrame
    theory: TheoryPrediction | None
    findings: tuple[Finding, ...]
    verdict: str
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def isometric(self) -> bool:
        return self.verdict == "isometric"


def find_blocks(model: nn.Module) -> list[nn.Module] | None:
    """Return the model's blocks in order: ``blocks``, ``stack.blocks``, or an nn.Sequential's
    children; None when none of these exist."""
    for owner in (model, getattr(model, "stack", None)):
        blocks = getattr(owner, "blocks", None) if owner is not None else None
        if blocks is not None and len(blocks) > 0:
            return list(blocks)
    if isinstance(model, nn.Sequential) and len(model) > 0:
        return list(model)
    return None


def describe_architecture(model: nn.Module, in_size: int) -> Architecture:
    """Count post-norm blocks and LayerNorms, and the directions one LayerNorm removes."""
    post_norm = sum(isinstance(m, ResidualBlock) and m.variant == "post_norm" for m in model.modules())
    norms = [m for m in model.modules() if isinstance(m, nn.LayerNorm)]
    per_norm = 0
    if norms:
        width = math.prod(norms[0].normalized_shape)
        per_norm = in_size // width if width and in_size % width == 0 else 0
    return Architecture(post_norm, len(norms), per_norm)


def _growth_per_block(values: np.ndarray) -> float | None:
    """exp of the least-squares slope of ln(values) against their index; None if fewer than 2."""
    logs = np.log(values)
    if len(values) < 2 or not np.isfinite(logs).all():
        return None
    slope = np.polyfit(np.arange(len(values)), logs, 1)[0]
    return float(math.exp(slope))


def _forward_trace(model, blocks, inputs, dtype) -> tuple[torch.Tensor | None, np.ndarray, torch.Size]:
    """Run the model once on ``inputs``: return the first block's input, the RMS entering
    the first block and after each block, and the output shape of one sample."""
    captured: dict[str, object] = {"input": None, "rms": {}}
    handles = []
    if blocks:
        def before_first(module, args):
            if captured["input"] is None and args and isinstance(args[0], torch.Tensor):
                captured["input"] = args[0].detach()

        handles.append(blocks[0].register_forward_pre_hook(before_first))
        for index, block in enumerate(blocks, start=1):
            def after(module, args, output, index=index):
                if isinstance(output, torch.Tensor):  # blocks that return tuples get no RMS
                    captured["rms"].setdefault(index, output.detach().square().mean().sqrt())

            handles.append(block.register_forward_hook(after))
    try:
        with torch.no_grad(), analysis_call(model, "eval", dtype) as call:
            output = call(inputs)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(output, torch.Tensor):
        raise ValueError(
            f"the model returned {type(output).__name__}, not a tensor; diagnose a module that returns "
            f"one tensor, e.g. wrap it to return the hidden states"
        )
    first = captured["input"]
    rms = [float(first.square().mean().sqrt())] if first is not None else []
    if blocks and len(captured["rms"]) == len(blocks):  # else some block returned no tensor
        rms += [float(captured["rms"][i]) for i in sorted(captured["rms"])]
    return first, np.array(rms), output.shape[1:]


def _probe_chi_profile(blocks, hidden: torch.Tensor, probes: int, seed: int, dtype) -> np.ndarray:
    """chi after every block for one sample, by pushing Rademacher probes through the blocks (JVPs)."""
    generator = torch.Generator().manual_seed(seed)
    signs = torch.randint(0, 2, (probes, *hidden.shape), generator=generator).to(hidden.device, dtype) * 2 - 1
    size = hidden.numel()
    chis = []
    with torch.no_grad():
        for block in blocks:
            with analysis_call(block, "eval", dtype) as call:
                _, signs = vmap(lambda t: jvp(call, (hidden,), (t,)))(signs)
                hidden = call(hidden)
            chis.append(float(signs.square().sum() / (probes * size)))
    return np.array(chis)


def _exact_statistics(model, inputs, dtype, memory_budget, seed):
    spectrum = jacobian_spectrum(model, inputs, dtype=dtype, memory_budget=memory_budget, seed=seed)
    values = spectrum.singular_values  # (B, k)
    n = spectrum.in_dim
    chi = values.square().sum(dim=1) / n
    m2 = values.pow(4).sum(dim=1) / n
    near_zero = (values < limit("near_zero_relative") * values[:, :1]).sum(dim=1).double()
    stderr = float(chi.std() / math.sqrt(len(chi))) if len(chi) > 1 else 0.0
    return {
        "chi": float(chi.mean()), "chi_stderr": stderr, "spread": float((m2 / chi.square() - 1).mean()),
        "size": values.shape[1], "near_zero_count": float(near_zero.mean()),
        "num_zeros": float(spectrum.num_zeros.double().mean()),
    }


def _probe_statistics(model, inputs, dtype, probes, seed):
    from ..spectra.matrix_free import JacobianOperator, extreme_singular_values, jacobian_moments, spectral_density

    chis, errors, spreads, near_zero, zeros = [], [], [], [], []
    size = 0
    for b in range(inputs.shape[0]):
        operator = JacobianOperator(model, inputs[b : b + 1], dtype=dtype, seed=seed)
        size = min(operator.shape)
        moments = jacobian_moments(operator, probes=probes, seed=seed)
        chis.append(moments.chi)
        errors.append(moments.chi_stderr)
        spreads.append(moments.m2 / moments.chi**2 - 1)
        largest = extreme_singular_values(operator, 1, seed=seed).values[0]
        # SLQ needs fewer probes than the moments: it only locates the mass below the cut.
        density = spectral_density(operator, probes=max(2, probes // 4), seed=seed)
        cut = math.log10(largest * limit("near_zero_relative")) if largest > 0 else -math.inf
        below = density.grid < cut
        grid, values = density.grid[below], density.density[below]
        mass = float(np.sum((values[1:] + values[:-1]) / 2 * np.diff(grid)))  # trapezoid rule
        near_zero.append((density.zero_fraction + mass) * size)
        zeros.append(density.zero_fraction * size)
    chi = np.array(chis)
    stderr = float(chi.std(ddof=1) / math.sqrt(len(chi))) if len(chi) > 1 else errors[0]
    return {
        "chi": float(chi.mean()), "chi_stderr": stderr, "spread": float(np.mean(spreads)), "size": size,
        "near_zero_count": float(np.mean(near_zero)), "num_zeros": float(np.mean(zeros)),
    }


def choose_method(method: str, in_size: int, out_size: int, dtype: torch.dtype, memory_budget: int) -> str:
    """Resolve ``auto``: ``exact`` when the dense Jacobian and its SVD copy fit the budget."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    return "exact" if 2 * in_size * out_size * dtype.itemsize <= memory_budget else "probes"


def diagnose_model(
    model: nn.Module,
    inputs: torch.Tensor,
    *,
    target: str = "model",
    blocks: Sequence[nn.Module] | None = None,
    theory: TheoryPrediction | None = None,
    method: str = "auto",
    dtype: torch.dtype = torch.float64,
    probes: int = 16,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    seed: int = 0,
) -> ModelDiagnosis:
    """Measure the Jacobian of ``model`` at ``inputs`` (B, *in_shape), block by block, and
    return its statistics and findings (see the module docstring).

    ``blocks`` defaults to ``find_blocks(model)``. Without blocks there is no depth
    profile and no activation growth, and the report notes why. ``theory`` is the
    prediction shown next to the measurement, when one covers the model.
    """
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 1:
        raise ValueError(
            f"inputs must be a floating-point tensor of shape (B, *in_shape), got "
            f"{getattr(inputs, 'dtype', type(inputs).__name__)}; for token models diagnose the part "
            f"after the embedding"
        )
    blocks = list(blocks) if blocks is not None else find_blocks(model)
    notes = []
    inputs = inputs.detach().to(dtype)
    first_input, rms, out_shape = _forward_trace(model, blocks, inputs, dtype)
    in_size, out_size = math.prod(inputs.shape[1:]), math.prod(out_shape)
    method = choose_method(method, in_size, out_size, dtype, memory_budget)
    if method == "exact":
        stats = _exact_statistics(model, inputs, dtype, memory_budget, seed)
    else:
        stats = _probe_statistics(model, inputs, dtype, probes, seed)
        notes.append(f"chi, spread and the near-zero fraction are estimates from {probes} probe vectors")

    chi_profile = None
    if blocks is None:
        notes.append("the model has no 'blocks' list and is not an nn.Sequential, so there is no depth profile")
    elif first_input is None:
        notes.append("the model's forward pass never called its first block, so there is no depth profile")
    else:
        try:
            per_sample = []
            for b in range(first_input.shape[0]):
                hidden = first_input[b : b + 1]
                if method == "exact":
                    log10_chi = depth_profile(blocks, hidden, dtype=dtype, memory_budget=memory_budget).summary["log10_chi"]
                    per_sample.append(log10_chi.to_numpy() * math.log(10))
                else:
                    per_sample.append(np.log(_probe_chi_profile(blocks, hidden, probes, seed, dtype)))
            chi_profile = np.exp(np.concatenate([[0.0], np.mean(per_sample, axis=0)]))
        except ValueError as error:  # blocks that change the size, or rank-deficient blocks
            notes.append(f"no depth profile: {error}")

    growth = _growth_per_block(chi_profile) if chi_profile is not None else None
    rms_growth = _growth_per_block(rms) if len(rms) > 1 else None
    rms_ratio = float(rms[-1] / rms[0]) if len(rms) > 1 and rms[0] > 0 else math.nan
    length = len(chi_profile) if chi_profile is not None else len(rms)
    profile = pd.DataFrame({"block": np.arange(length)})
    profile["chi"] = chi_profile if chi_profile is not None else np.nan
    profile["activation_rms"] = rms if len(rms) == length else np.nan

    architecture = describe_architecture(model, in_size)
    subject = "model"
    findings = [
        *chi_findings(subject, stats["chi"], growth),
        *spread_findings(subject, stats["spread"]),
        *near_zero_findings(subject, stats["near_zero_count"], stats["size"], stats["num_zeros"], architecture),
        *activation_findings(subject, rms_ratio, rms_growth if rms_growth is not None else math.nan),
    ]
    isometric = is_isometric(stats["chi"], stats["spread"], stats["near_zero_count"])
    return ModelDiagnosis(
        target=target, method=method, num_inputs=inputs.shape[0], in_shape=tuple(inputs.shape[1:]),
        out_shape=tuple(out_shape), chi=stats["chi"], chi_stderr=stats["chi_stderr"], spread=stats["spread"],
        size=stats["size"], near_zero_count=stats["near_zero_count"],
        near_zero_fraction=stats["near_zero_count"] / stats["size"], num_zeros=stats["num_zeros"],
        chi_growth_per_block=growth, activation_rms_ratio=rms_ratio, activation_rms_growth_per_block=rms_growth,
        profile=profile, theory=theory, findings=tuple(findings), verdict=verdict_of(findings, isometric),
        notes=tuple(notes),
    )
