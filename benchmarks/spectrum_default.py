"""Time the default ``rezero-dynamics spectrum`` study and compare Jacobian modes.

Prints, in one run on the current machine:
* wall time of the default study (the README's first command without file output);
* for one depth-64 Transformer stack, the time of forward-mode over reverse-mode
  Jacobians (a ratio above 1 means reverse mode, which ``auto`` picks for square
  Jacobians, is faster).

Usage: python benchmarks/spectrum_default.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from timing import best_time

from rezero_dynamics.models import TransformerEncoder
from rezero_dynamics.spectra import jacobian_matrix
from rezero_dynamics.studies import SpectrumConfig, spectrum_study, summarise_by_group


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="repeats of the mode comparison; the best time counts")
    args = parser.parse_args()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    config = SpectrumConfig()
    started = time.perf_counter()
    values, summary = spectrum_study(config)
    print(f"default spectrum study: {time.perf_counter() - started:.1f} s")
    print(summarise_by_group(summary, values).to_string(index=False, float_format=lambda v: f"{v:.4g}"))

    torch.manual_seed(0)
    stack = TransformerEncoder(config.width, 64, heads=config.heads, variant="post_norm")
    x = torch.randn(config.seq_len, config.width, dtype=torch.float64)
    forward = best_time(lambda: jacobian_matrix(stack, x, mode="forward"), args.repeats)
    reverse = best_time(lambda: jacobian_matrix(stack, x, mode="reverse"), args.repeats)
    print(
        f"depth-64 Jacobian, {x.numel()} x {x.numel()} float64: forward {forward:.2f} s, "
        f"reverse {reverse:.2f} s, forward / reverse = {forward / reverse:.2f}"
    )


if __name__ == "__main__":
    main()
