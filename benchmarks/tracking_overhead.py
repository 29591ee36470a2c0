"""Measure the step-time cost of tracking every step on the 12-layer language model.

Compares, in one run and interleaved to share the machine's noise:
* a minimal hand-written training loop (forward, backward, Adam step), and
* the same loop with a Tracker recording every step the cheap quantities: loss,
  learning rate, per-block gradient norms, alphas and their gradients, and activation
  RMS (update norms, which copy all parameters, are off).

Prints the median step time of each and their ratio (tracked / untracked).

Usage: python benchmarks/tracking_overhead.py [--rounds 6] [--steps 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from rezero_dynamics.models import CharTransformerLM
from rezero_dynamics.tracking import Every, Tracker


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="alternating rounds of each loop")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per round")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = CharTransformerLM(96, args.d_model, 12, heads=4, variant="rezero", max_len=args.seq_len).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tokens = torch.randint(0, 96, (args.batch_size, args.seq_len + 1), device=device)

    def step(tracked: Tracker | None, index: int) -> None:
        if tracked is not None:
            tracked.start_step(index)
        logits = model(tokens[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 96), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if tracked is not None:
            tracked.record_gradients(index, loss, 1e-3)
        optimizer.step()
        if tracked is not None:
            tracked.end_step(index)

    def timed_round(tracked: bool) -> float:
        tracker_for_round = Tracker(model, None, schedule=Every(1), update_norm=False, flush_every=50) if tracked else None
        step(tracker_for_round, 0)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        for index in range(1, args.steps + 1):
            step(tracker_for_round, index)
        if tracker_for_round is not None:
            tracker_for_round.close()  # the flush is part of the cost
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / args.steps

    plain, tracked = [], []
    for _ in range(args.rounds):
        plain.append(timed_round(False))
        tracked.append(timed_round(True))
    plain_median, tracked_median = statistics.median(plain), statistics.median(tracked)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, device {device}")
    print(f"12-layer LM, d_model {args.d_model}, {args.batch_size} x {args.seq_len} tokens per step")
    print(f"untracked step: {plain_median * 1000:.1f} ms (median of {args.rounds} rounds of {args.steps} steps)")
    print(f"tracked step:   {tracked_median * 1000:.1f} ms")
    print(f"ratio tracked / untracked: {tracked_median / plain_median:.3f}")


if __name__ == "__main__":
    main()
