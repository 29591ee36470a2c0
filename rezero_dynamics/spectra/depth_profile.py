"""Depth profiles: the Jacobian spectrum after every block, in one pass.

For blocks f_1, ..., f_L the Jacobian of the first l blocks is J_l ... J_1, with J_l
the Jacobian of block l at its own input. ``depth_profile`` forms each J_l exactly
(``jacobian_matrix``) and accumulates the product, so L blocks cost L block Jacobians
instead of L whole-network Jacobians.

Two accumulations keep deep products finite:

* ``svd`` (default): the product is rescaled after every block and its scale carried
  as a logarithm. Singular values are exact; those below about eps times the largest
  count as zeros, as in the exact method. Suits normalised networks with exact zeros
  (LayerNorm).
* ``qr``: the product is kept as Q D U (orthogonal Q, diagonal D stored as log|d|, unit
  upper-triangular U), so log singular values stay finite at depth 1,000 and beyond even
  when they span more than float64's range. The sum of log singular values, log|det J|,
  is exact. When the span of log|d| fits in float64 (under 650 nats), singular values
  come from an SVD of D U and are exact; beyond, the sorted log|d| are reported: they
  converge to the log singular values as depth grows (Oseledets), marked ``qr_diagonal``.
  Needs square, full-rank block Jacobians.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .exact import (
    DEFAULT_MEMORY_BUDGET, NonFiniteError, _jacobian_of_call, _validate_inputs, analysis_call, singular_values,
)

PROFILE_METHODS: tuple[str, ...] = ("svd", "qr")
_SAFE_SPAN = 650.0  # nats: exp(650) ~ 1e282 stays inside float64


@dataclass(frozen=True)
class DepthProfile:
    """Spectra after every block.

    ``frame``: one row per (block, singular value): block (1 = after the first block),
    index, log10_singular_value (NaN for zeros), is_zero, source (``svd`` or
    ``qr_diagonal``). ``summary``: one row per block with log10_chi (chi = mean s^2),
    log10_max, log10_min_nonzero, num_zeros, log_abs_det (natural log, NaN with zeros)
    and chi_growth (chi of this block over the previous one).
    """

    frame: pd.DataFrame
    summary: pd.DataFrame
    method: str


def _blocks_of(stack: nn.Module | Sequence[Callable]) -> list:
    if hasattr(stack, "blocks"):
        blocks = list(stack.blocks)
        if getattr(stack, "final_norm", None) is not None:
            blocks.append(stack.final_norm)
        return blocks
    if isinstance(stack, (nn.Sequential, nn.ModuleList, list, tuple)):
        return list(stack)
    raise ValueError(
        f"{type(stack).__name__} has no 'blocks' and is not an nn.Sequential; pass a block stack, "
        f"an nn.Sequential or a list of modules"
    )


def _log10_row(log_values: np.ndarray, zeros: np.ndarray, block: int, source: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "block": block,
            "index": np.arange(len(log_values)),
            "log10_singular_value": np.where(zeros, np.nan, log_values / math.log(10)),
            "is_zero": zeros,
            "source": source,
        }
    )


def depth_profile(
    stack: nn.Module | Sequence[Callable],
    x: torch.Tensor,
    *,
    method: str = "svd",
    dtype: torch.dtype = torch.float64,
    module_mode: str = "eval",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    progress: bool = False,
) -> DepthProfile:
    """Compute the input-output Jacobian spectrum after every block of ``stack`` at ``x``.

    ``stack`` is a toolkit block stack (its ``blocks`` and ``final_norm``), any
    ``nn.Sequential``, or a list of modules. ``x`` is one input as the blocks take it
    (with a batch dimension of 1 where they need one); every block must keep its
    size. See the module docstring for ``method``.
    """
    if method not in PROFILE_METHODS:
        raise ValueError(f"unknown depth-profile method {method!r}; choose one of {', '.join(PROFILE_METHODS)}")
    _validate_inputs(x, "inputs")
    blocks = _blocks_of(stack)
    if not blocks:
        raise ValueError("the stack has no blocks; pass at least one module")
    hidden = x.detach().to(dtype)
    n = hidden.numel()
    eps = torch.finfo(dtype).eps
    frames, summaries = [], []
    product = torch.eye(n, dtype=dtype, device=x.device)  # svd: scaled product; qr: Q
    log_scale = 0.0
    log_d = torch.zeros(n, dtype=dtype, device=x.device)
    upper = torch.eye(n, dtype=dtype, device=x.device)
    previous_log_chi = 0.0

    for number, block in enumerate(tqdm(blocks, desc="blocks", disable=not progress), start=1):
        with torch.no_grad(), analysis_call(block, module_mode, dtype) as call:
            jacobian, _, _ = _jacobian_of_call(
                call, hidden, mode="auto", memory_budget=memory_budget, chunk_size=n, seed=0
            )
            hidden = call(hidden)
        if not bool(torch.isfinite(jacobian).all()):
            raise NonFiniteError(f"the Jacobian of block {number} contains non-finite values; check the weights and inputs")
        if jacobian.shape != (n, n):
            raise ValueError(
                f"block {number} maps {jacobian.shape[1]} to {jacobian.shape[0]} dimensions; a depth "
                f"profile needs blocks that keep the size ({n})"
            )

        if method == "svd":
            product = jacobian @ product
            largest = float(product.abs().max())
            if largest > 0:
                product = product / largest
                log_scale += math.log(largest)
            values = singular_values(product).cpu().numpy()
            zeros = values <= max(n * eps * values.max(), 1e-300) if values.max() > 0 else np.ones(n, bool)
            log_values = np.log(np.where(zeros, 1.0, values)) + log_scale
            source = "svd"
        else:
            q, r = torch.linalg.qr(jacobian @ product)
            # Make R's diagonal positive (flip Q's columns to match), so D needs no signs.
            signs = torch.where(torch.diagonal(r) < 0, -1.0, 1.0).to(dtype)
            q, r = q * signs[None, :], r * signs[:, None]
            diagonal = torch.diagonal(r)
            if bool((diagonal <= n * eps * diagonal.max()).any()):
                raise ValueError(
                    f"block {number} has a rank-deficient Jacobian (exact zero singular values); "
                    f"use method='svd', which counts zeros"
                )
            unit = r / diagonal[:, None]
            # U_new = D^-1 U' D U: entry (i, j) of D^-1 U' D is U'_ij d_j / d_i (j >= i).
            # Factors below e^-60 (1e-26, far under eps) are set to 0: they cannot change U
            # in float64, and leaving them would fill U with slow subnormal numbers.
            exponent = (log_d[None, :] - log_d[:, None]).clamp(max=700.0)
            factor = torch.where(exponent < -60.0, 0.0, torch.exp(exponent))
            upper = torch.triu(unit * factor) @ upper
            log_d = log_d + torch.log(diagonal)
            product = q
            span = float(log_d.max() - log_d.min())
            if span < _SAFE_SPAN:
                top = float(log_d.max())
                values = singular_values(torch.exp(log_d - top)[:, None] * upper).cpu().numpy()
                log_values = np.log(values) + top
                source = "svd"
            else:
                log_values = np.sort(log_d.cpu().numpy())[::-1]
                source = "qr_diagonal"
            zeros = np.zeros(n, dtype=bool)
            log_scale = 0.0

        frames.append(_log10_row(log_values, zeros, number, source))
        finite = log_values[~zeros]
        log_chi = float(np.logaddexp.reduce(2 * finite) - math.log(n)) if finite.size else -math.inf
        summaries.append(
            {
                "block": number,
                "log10_chi": log_chi / math.log(10),
                "log10_max": float(finite.max()) / math.log(10) if finite.size else -math.inf,
                "log10_min_nonzero": float(finite.min()) / math.log(10) if finite.size else math.nan,
                "num_zeros": int(zeros.sum()),
                "log_abs_det": float(log_d.sum()) if method == "qr" else (float(finite.sum()) if not zeros.any() else math.nan),
                "chi_growth": math.exp(log_chi - previous_log_chi) if math.isfinite(log_chi) else 0.0,
            }
        )
        previous_log_chi = log_chi
    return DepthProfile(pd.concat(frames, ignore_index=True), pd.DataFrame(summaries), method)
