"""Exact and matrix-free Jacobian spectra: speed against references, memory at scale.

Part 1, exact path on a tanh MLP (width N = 512, depth L = 64, float32): the FLOP rate of
``jacobian_matrix`` (reverse mode, 2 L N^3 multiply-adds counted as FLOPs) divided by
the rate of one plain N x N matmul, against ``torch.func.jacrev`` on the module as it
is and a row-by-row ``torch.autograd.grad`` loop. The loop is timed on 64 rows and
scaled to N rows (rows cost the same). Candidates are timed in interleaved rounds, with
PyTorch's default thread count and again with one thread.

Part 2, matrix-free top-16 singular values against materialise-and-``svdvals`` for a
4-layer tanh MLP at N = 1024, 2048, 4096 (float64; block Golub-Kahan-Lanczos with
its default block of 8 vectors, tolerance 1e-6): wall time, peak resident memory
above the model (each measurement in its own process, Linux only: the peak is reset
through /proc/self/clear_refs once the model is built and the path has run once at
N = 64) and the largest relative error
of the 16 values.

Usage: python benchmarks/spectra_scaling.py [--part 1|2|all] [--sizes 1024,2048,4096] [--block-size B]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

import torch

from timing import best_time

from rezero_dynamics.models import DeepMLP
from rezero_dynamics.spectra import jacobian_matrix


def part_one(rounds: int = 5) -> None:
    width, depth = 512, 64
    torch.manual_seed(0)
    model = DeepMLP(width, depth, activation="tanh", variant="residual", sigma_w=1.0)
    x = torch.randn(1, width)
    a, b = torch.randn(width, width), torch.randn(width, width)
    flops = 2 * depth * width**3

    rows = 64
    def loop() -> None:
        inputs = x.clone().requires_grad_(True)
        out = model(inputs).reshape(-1)
        for i in range(rows):
            torch.autograd.grad(out[i], inputs, retain_graph=True)

    candidates = {
        "jacobian_matrix": lambda: jacobian_matrix(model, x, mode="reverse"),
        "torch.func.jacrev": lambda: torch.func.jacrev(model)(x),
        "plain matmul": lambda: a @ b,
    }
    for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
        torch.set_num_threads(threads)
        # Interleaved rounds, so that a slow spell of the machine hits every candidate alike.
        best = {name: float("inf") for name in candidates}
        for _ in range(rounds):
            for name, function in candidates.items():
                best[name] = min(best[name], best_time(function, 1 if name != "plain matmul" else 20))
        loop_time = best_time(loop, 1) * width / rows
        matmul_rate = 2 * width**3 / best["plain matmul"]
        print(f"Part 1: tanh MLP, N = {width}, L = {depth}, float32, {threads} thread(s); "
              f"plain matmul {matmul_rate / 1e9:.0f} GFLOP/s")
        timed = (("jacobian_matrix", best["jacobian_matrix"]), ("torch.func.jacrev", best["torch.func.jacrev"]),
                 ("autograd row loop", loop_time))
        for name, seconds in timed:
            rate = flops / seconds
            print(f"  {name:18s} {seconds:8.3f} s  {rate / 1e9:7.1f} GFLOP/s  {rate / matmul_rate:5.2f} of matmul")
        ours = best["jacobian_matrix"]
        print(f"  speed-up over jacrev {best['torch.func.jacrev'] / ours:.2f}x, over the row loop {loop_time / ours:.1f}x")


CHILD = r"""
import json, sys, time, torch

def status_kib(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))

from rezero_dynamics.models import DeepMLP
from rezero_dynamics.spectra import jacobian_matrix
from rezero_dynamics.spectra.matrix_free import JacobianOperator, extreme_singular_values
width, path = int(sys.argv[1]), sys.argv[2]
block_size = None if sys.argv[3] == "default" else int(sys.argv[3])


def top16(model, x):
    if path == "dense":
        return torch.linalg.svdvals(jacobian_matrix(model, x, memory_budget=2**34))[:16].numpy()
    return extreme_singular_values(JacobianOperator(model, x), 16, tol=1e-6, block_size=block_size).values


def build(size):
    torch.manual_seed(0)
    return DeepMLP(size, 4, activation="tanh", variant="residual", sigma_w=1.0).double(), torch.randn(1, size, dtype=torch.float64)


top16(*build(64))  # one-time set-up of the libraries, kept out of the measurement
model, x = build(width)
model(x)
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")  # reset the peak (VmHWM) to the current resident size
base = status_kib("VmRSS")
started = time.perf_counter()
values = top16(model, x)
seconds = time.perf_counter() - started
peak = status_kib("VmHWM") - base
print(json.dumps({"seconds": seconds, "peak_kib": peak, "values": values.tolist()}))
"""


def run_child(width: int, path: str, block_size: str = "default") -> dict:
    output = subprocess.run(
        [sys.executable, "-c", CHILD, str(width), path, block_size], capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def part_two(sizes: list[int], block_size: str = "default") -> None:
    print(f"Part 2: top-16 singular values of a 4-layer tanh MLP, float64, Lanczos block size {block_size}")
    print(f"  {'N':>5} {'dense s':>9} {'free s':>8} {'speed-up':>9} {'dense MiB':>10} {'free MiB':>9} {'memory ratio':>13} {'max rel error':>14}")
    for width in sizes:
        dense, free = run_child(width, "dense"), run_child(width, "free", block_size)
        error = max(abs(f - d) / d for f, d in zip(free["values"], dense["values"]))
        ratio = dense["peak_kib"] / max(free["peak_kib"], 1)
        print(
            f"  {width:5d} {dense['seconds']:9.2f} {free['seconds']:8.2f} {dense['seconds'] / free['seconds']:8.1f}x "
            f"{dense['peak_kib'] / 1024:10.1f} {free['peak_kib'] / 1024:9.1f} {ratio:12.1f}x {error:14.2e}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("1", "2", "all"), default="all")
    parser.add_argument("--sizes", default="1024,2048,4096", help="comma-separated widths for part 2")
    parser.add_argument("--block-size", default="default", help="Lanczos block size for part 2 (default: the library's)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}")
    if args.part in ("1", "all"):
        part_one()
    if args.part in ("2", "all"):
        part_two([int(s) for s in args.sizes.split(",")], args.block_size)


if __name__ == "__main__":
    main()
