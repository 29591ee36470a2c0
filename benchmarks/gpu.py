"""GPU benchmarks in one script, sized to finish in under 8 minutes on one GPU.

Prints, on the chosen device:

1. exact-Jacobian throughput: ``jacobian_matrix`` (reverse mode) of a tanh MLP, width N,
   depth L, float32, with 2 L N^3 multiply-adds counted as FLOPs, against the rate of
   one plain N x N matmul;
2. matrix-free top-k: time of ``extreme_singular_values`` (Golub-Kahan-Lanczos) for the
   16 largest singular values of a 4-layer tanh MLP Jacobian, float64;
3. tracking overhead: step time with a Tracker recording the cheap quantities every
   step (loss, learning rate, per-block gradient norms, alphas and their gradients,
   activation RMS) over the same TrainingStep without a tracker, interleaved rounds;
4. training throughput: tokens per second of the 12-layer, 512-wide character LM (8
   heads, d_ff 2048) for post_norm, pre_norm and rezero. The package's TrainingStep
   runs against a minimal hand-written loop of the same model (forward, cross-entropy,
   backward, Adam step), each eager and through ``torch.compile``.

Compiled measurements that would start after ``--budget`` seconds are skipped and
marked as such, so the script ends in time even where compiling is slow.

Usage (from the repository root):
    python benchmarks/gpu.py                  # the full sizes on cuda
    python benchmarks/gpu.py --smoke          # tiny sizes on CPU, to check that it runs
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # timing.py, when run from elsewhere
from timing import best_time  # noqa: E402

from rezero_dynamics.models import CharTransformerLM, DeepMLP  # noqa: E402
from rezero_dynamics.spectra import jacobian_matrix  # noqa: E402
from rezero_dynamics.spectra.matrix_free import JacobianOperator, extreme_singular_values  # noqa: E402
from rezero_dynamics.tracking import Every, Tracker  # noqa: E402
from rezero_dynamics.training.step import TrainingStep  # noqa: E402

VARIANTS = ("post_norm", "pre_norm", "rezero")


@dataclass(frozen=True)
class Sizes:
    jacobian_width: int
    jacobian_depth: int
    free_width: int
    top_k: int
    lm_depth: int
    d_model: int
    heads: int
    batch_size: int
    seq_len: int
    steps: int
    rounds: int


FULL = Sizes(jacobian_width=2048, jacobian_depth=32, free_width=8192, top_k=16, lm_depth=12, d_model=512, heads=8,
             batch_size=16, seq_len=512, steps=20, rounds=5)
SMOKE = Sizes(jacobian_width=32, jacobian_depth=4, free_width=64, top_k=4, lm_depth=2, d_model=16, heads=2,
              batch_size=2, seq_len=16, steps=2, rounds=2)
VOCABULARY = 256  # bytes, as in enwik8


def synchronized(device: torch.device):
    """Return a function that waits for the device's queued work (CUDA runs asynchronously)."""
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def timed(function, device: torch.device, repeats: int) -> float:
    """Return the best wall time of ``function``, including the device work it queued."""
    wait = synchronized(device)

    def call() -> None:
        function()
        wait()

    wait()
    return best_time(call, repeats)


def jacobian_throughput(sizes: Sizes, device: torch.device, repeats: int) -> None:
    width, depth = sizes.jacobian_width, sizes.jacobian_depth
    torch.manual_seed(0)
    model = DeepMLP(width, depth, activation="tanh", variant="residual", sigma_w=1.0).to(device)
    x = torch.randn(1, width, device=device)
    a, b = torch.randn(width, width, device=device), torch.randn(width, width, device=device)
    matmul_rate = 2 * width**3 / timed(lambda: a @ b, device, 20)
    jacobian_matrix(model, x, mode="reverse")  # warm-up
    seconds = timed(lambda: jacobian_matrix(model, x, mode="reverse"), device, repeats)
    rate = 2 * depth * width**3 / seconds
    print(f"1. exact Jacobian, tanh MLP N = {width}, L = {depth}, float32: {seconds * 1000:.1f} ms, "
          f"{rate / 1e9:.1f} GFLOP/s = {rate / matmul_rate:.2f} of the plain matmul rate ({matmul_rate / 1e9:.0f} GFLOP/s)")


def matrix_free_top_k(sizes: Sizes, device: torch.device, repeats: int) -> None:
    width, k = sizes.free_width, sizes.top_k
    torch.manual_seed(0)
    model = DeepMLP(width, 4, activation="tanh", variant="residual", sigma_w=1.0).to(device, torch.float64)
    x = torch.randn(1, width, device=device, dtype=torch.float64)
    result = None

    def run() -> None:
        nonlocal result
        result = extreme_singular_values(JacobianOperator(model, x), k, tol=1e-6)

    run()  # warm-up
    seconds = timed(run, device, repeats)
    print(f"2. matrix-free top-{k}, 4-layer tanh MLP N = {width}, float64: {seconds:.3f} s, "
          f"{result.iterations} Lanczos steps, converged {result.converged}")


def lm_loss(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])  # (B, T, V)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCABULARY), batch[:, 1:].reshape(-1))


def build_lm(sizes: Sizes, variant: str, device: torch.device) -> CharTransformerLM:
    torch.manual_seed(0)
    return CharTransformerLM(VOCABULARY, sizes.d_model, sizes.lm_depth, heads=sizes.heads, variant=variant,
                             max_len=sizes.seq_len).to(device).train()


def package_step(model: CharTransformerLM, device: torch.device, precision: str, tracker: Tracker | None,
                 compiled: bool, backend: str) -> TrainingStep:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    forward = torch.compile(model, backend=backend) if compiled else model
    return TrainingStep(forward, list(model.parameters()), lm_loss, optimizer, scheduler, tracker,
                        device=device, precision=precision)


def minimal_step(model: CharTransformerLM, device: torch.device, precision: str, compiled: bool, backend: str):
    """Build a hand-written training step of the same model: autocast forward and loss, backward, Adam step."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    forward = torch.compile(model, backend=backend) if compiled else model
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]

    def step(index: int, batch: torch.Tensor) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = lm_loss(forward, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_seconds(step, batches: list[torch.Tensor], sizes: Sizes, device: torch.device, repeats: int) -> float:
    """Return the best time per step over ``repeats`` runs of ``sizes.steps`` steps, after 3 warm-up steps."""
    for index in range(3):  # warm-up; compiles the first time
        step(index, batches[index % len(batches)])
    counter = iter(range(3, 10**9))

    def run() -> None:
        for _ in range(sizes.steps):
            index = next(counter)
            step(index, batches[index % len(batches)])

    return timed(run, device, repeats) / sizes.steps


def tracking_overhead(sizes: Sizes, device: torch.device, precision: str, batches: list[torch.Tensor]) -> None:
    model = build_lm(sizes, "rezero", device)
    untracked = package_step(model, device, precision, None, compiled=False, backend="inductor")
    tracker = Tracker(model, None, schedule=Every(1), update_norm=False, flush_every=50)
    tracked = package_step(model, device, precision, tracker, compiled=False, backend="inductor")
    plain_times, tracked_times = [], []
    for _ in range(sizes.rounds):  # interleaved, so both share the machine's drift
        plain_times.append(step_seconds(untracked, batches, sizes, device, 1))
        tracked_times.append(step_seconds(tracked, batches, sizes, device, 1))
        tracker.flush()  # the flush is part of the cost
    plain, with_tracker = statistics.median(plain_times), statistics.median(tracked_times)
    print(f"3. tracking overhead, {sizes.lm_depth}-layer rezero LM, cheap quantities every step: untracked {plain * 1000:.1f} ms, "
          f"tracked {with_tracker * 1000:.1f} ms per step, ratio {with_tracker / plain:.3f} "
          f"(median of {sizes.rounds} rounds of {sizes.steps} steps)")


def throughput(sizes: Sizes, device: torch.device, precision: str, batches: list[torch.Tensor], backend: str,
               budget: float, started: float, repeats: int) -> None:
    tokens = sizes.batch_size * sizes.seq_len
    print(f"4. training throughput, {sizes.lm_depth}-layer LM d_model {sizes.d_model}, {sizes.batch_size} x {sizes.seq_len} tokens "
          f"per step, {precision}, Adam; tokens per second (package / minimal loop):")
    for variant in VARIANTS:
        cells = []
        for compiled in (False, True):
            if compiled and time.perf_counter() - started > budget:
                cells.append("compiled: skipped (over --budget)")
                continue
            if compiled:
                torch._dynamo.reset()  # each model compiles afresh, never reaching TorchDynamo's recompile limit
            ours = step_seconds(package_step(build_lm(sizes, variant, device), device, precision, None, compiled, backend),
                                batches, sizes, device, repeats)
            plain = step_seconds(minimal_step(build_lm(sizes, variant, device), device, precision, compiled, backend),
                                 batches, sizes, device, repeats)
            label = f"compiled ({backend})" if compiled else "eager"
            cells.append(f"{label}: {tokens / ours:,.0f} / {tokens / plain:,.0f} = {plain / ours:.3f}")
        print(f"   {variant:9s} " + "; ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (a 2-layer LM) on CPU, to check that the script runs")
    parser.add_argument("--device", default=None, help="default: cuda, or cpu with --smoke")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None,
                        help="autocast of the LM steps; default bf16 on cuda, fp32 on cpu")
    parser.add_argument("--compile-backend", default=None,
                        help="torch.compile backend; default inductor, eager (TorchDynamo alone) with --smoke")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds after which no further compiled measurement starts")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best counts")
    args = parser.parse_args()

    sizes = SMOKE if args.smoke else FULL
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("CUDA is not available; pass --smoke (or --device cpu) to run on the CPU")
    precision = args.precision or ("bf16" if device.type == "cuda" else "fp32")
    backend = args.compile_backend or ("eager" if args.smoke else "inductor")
    repeats = 1 if args.smoke else args.repeats
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine()
    print(f"torch {torch.__version__}, device {device} ({name}), {torch.get_num_threads()} CPU threads")

    started = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, VOCABULARY, (sizes.batch_size, sizes.seq_len + 1), generator=generator).to(device)
               for _ in range(4)]
    jacobian_throughput(sizes, device, repeats)
    matrix_free_top_k(sizes, device, repeats)
    tracking_overhead(sizes, device, precision, batches)
    throughput(sizes, device, precision, batches, backend, args.budget, started, repeats)
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
