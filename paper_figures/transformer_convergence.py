"""12-layer Transformer language models: steps to a target validation bits per character.

Variants: post-norm, post-norm with a linear learning-rate warm-up, pre-norm, GPT-2 norm
(the library's ``gpt2`` variant: pre-norm, a final LayerNorm and each branch's output
layer scaled down at initialisation), ReZero with alpha = 1 and ReZero with alpha = 0. All share the model size, data, optimiser and
learning rate; only post-norm + warm-up ramps its learning rate. The speed-up of ReZero
(alpha = 0) is the steps of the fastest baseline divided by its own, minus 1.

The ci scale trains on the embedded text (``pydoc_data.topics``). The paper scale trains
on enwik8 from ``--data-path`` with the sizes of the paper scale of
``rezero_dynamics.studies.reproduce``, to a target of 1.2 bits per byte (the paper's value, not checked here).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NOT_CHECKED,
    Claim,
    Stopwatch,
    format_speedup,
    parse_arguments,
    run_command_line,
    prepare_config,
    save_figure,
    save_frame,
    train_variants,
    write_claims,
)

from rezero_dynamics.residual import VARIANTS as LIBRARY_VARIANTS  # noqa: E402
from rezero_dynamics.studies.reproduce import SCALES as REPRODUCE_SCALES  # noqa: E402
from rezero_dynamics.training import TrainConfig  # noqa: E402
from rezero_dynamics.training.metrics import speedup  # noqa: E402

NAME = "transformer_convergence"
REZERO = "rezero"
BASELINES = ("post_norm", "post_norm_warmup", "pre_norm", "gpt2")
# Iterations to 1.2 bits per byte on enwik8 of the 12-layer Transformers in the ReZero
# paper (arXiv 2003.04887), written from memory and not checked against the paper.
PAPER_STEPS = {
    "post_norm": "diverged " + NOT_CHECKED,
    "post_norm_warmup": "13,690 " + NOT_CHECKED,
    "pre_norm": "17,765 " + NOT_CHECKED,
    "gpt2": "21,187 " + NOT_CHECKED,
    "rezero_alpha1": "14,506 " + NOT_CHECKED,
    "rezero": "8,800 " + NOT_CHECKED,
}
PAPER_SPEEDUP = 0.56
BPC_AXIS_TOP = 10.0  # above log2 of a byte vocabulary (8 bits), the start of every run


@dataclass(frozen=True)
class ConvergenceScale:
    config: TrainConfig
    target: float  # validation bits per character
    warmup_steps: int  # of post_norm_warmup


SCALES = {
    "smoke": ConvergenceScale(
        TrainConfig(depth=2, d_model=8, heads=2, seq_len=8, batch_size=2, steps=6, eval_every=2, eval_batches=1,
                    checkpoint_every=0),
        target=6.9, warmup_steps=3,
    ),
    # The target was set after a first ci run, in which the two fastest variants reached
    # it about two-thirds of the way through the 300 steps.
    "ci": ConvergenceScale(
        TrainConfig(depth=12, d_model=64, heads=4, seq_len=64, batch_size=16, steps=300, lr=1e-3, eval_every=15,
                    eval_batches=4, checkpoint_every=0, track_every=5),
        target=3.4, warmup_steps=60,
    ),
    # NOTE: the warm-up length is not checked against the paper.
    "paper": ConvergenceScale(
        replace(REPRODUCE_SCALES["paper"].base, depth=12, spectrum_every=0, checkpoint_every=0, track_every=100),
        target=1.2, warmup_steps=8000,
    ),
}


def run_overrides(scale: ConvergenceScale) -> dict[str, dict]:
    """Settings of each run label: its library variant and what differs from the base."""
    return {
        "post_norm": {},
        "post_norm_warmup": {"variant": "post_norm", "warmup_steps": scale.warmup_steps},
        "pre_norm": {},
        "gpt2": {},
        "rezero_alpha1": {"variant": "rezero", "alpha_init": 1.0},
        "rezero": {"alpha_init": 0.0},
    }


def available_labels(overrides: dict[str, dict]) -> tuple[list[str], list[str]]:
    """Split run labels into those whose variant the library has and those it lacks."""
    present, missing = [], []
    for label, settings in overrides.items():
        (present if settings.get("variant", label) in LIBRARY_VARIANTS else missing).append(label)
    return present, missing


def format_steps(steps: float) -> str:
    return "not reached" if math.isnan(steps) else f"{steps:.0f} steps"


def mark_diverged(table: pd.DataFrame, curves: pd.DataFrame, uniform_bits: float) -> pd.DataFrame:
    """Relabel completed runs as diverged when their final validation bpc is NaN or above
    both ``uniform_bits`` and their first validation bpc.

    A uniform guess over the vocabulary scores log2(vocabulary size) bits per character,
    so a run that ends above that level, and above where it started, has learned nothing
    and got worse; its steps to target do not count.
    """
    table = table.copy()
    first = curves.sort_values("step").groupby("run")["value"].first()
    start = table["run"].map(first)
    final = table["final_metric"]
    worse = ~(final <= uniform_bits) & ~(final <= start)
    diverged = (table["status"] == "completed") & worse
    table.loc[diverged, "status"] = [
        f"diverged: final validation bpc {value:.4g}, above the uniform-guess level {uniform_bits:.2f}"
        for value in final[diverged]
    ]
    table.loc[diverged, "steps_to_target"] = math.nan
    return table


def draw(curves: pd.DataFrame, table: pd.DataFrame, target: float):
    figure, (left, right) = plt.subplots(1, 2, figsize=(13, 4.4))
    figure.set_layout_engine("constrained")
    for run, rows in curves.groupby("run", sort=False):
        left.plot(rows["step"], rows["value"], marker=".", label=run)
    left.axhline(target, color="0.5", linestyle=":", label=f"target {target:g}")
    # A diverging run (say ReZero at alpha = 1) would stretch the axis over hundreds of bits.
    left.set_ylim(target - 1.0, min(float(curves["value"].max()), BPC_AXIS_TOP) + 0.2)
    left.set_xlabel("step")
    left.set_ylabel("validation bits per character")
    left.set_title(f"validation (cut off above {BPC_AXIS_TOP:g} bits)")
    left.legend(fontsize="small")
    steps = table["steps_to_target"]
    bars = right.bar(table["label"], steps.fillna(0), color=["0.6" if np.isnan(v) else "C0" for v in steps])
    for bar, value in zip(bars, steps):
        right.annotate("not reached" if np.isnan(value) else f"{value:.0f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       ha="center", va="bottom", fontsize="small")
    right.set_ylabel(f"steps to validation bpc {target:g}")
    right.set_title("steps to target (lower is faster)")
    right.tick_params(axis="x", labelrotation=20)
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, __doc__, argv)
    clock = Stopwatch()
    scale = SCALES[args.scale]
    config, task = prepare_config(scale.config, args)
    uniform_bits = math.log2(len(task.corpus.vocabulary))
    overrides = run_overrides(scale)
    labels, missing = available_labels(overrides)
    comparison = train_variants(config, variants=labels, depths=[config.depth], target=scale.target, overrides=overrides)
    table = comparison.runs.rename(columns={"variant": "label"})[["label", "run", "status", "steps_to_target", "final_metric"]]
    curves = comparison.records[comparison.records["quantity"] == "val_bpc"][["run", "step", "value"]]
    table = mark_diverged(table, curves, uniform_bits)
    save_figure(draw(curves, table, scale.target), args)
    save_frame(pd.concat([curves.assign(kind="val_bpc"), table.assign(kind="steps_to_target")], ignore_index=True), args)

    steps = table.set_index("label")["steps_to_target"]
    status = table.set_index("label")["status"]
    reached = steps.reindex([b for b in BASELINES if b in steps.index]).dropna()
    rezero_steps = float(steps.get(REZERO, math.nan))
    if math.isnan(rezero_steps):
        best_text = "ReZero did not reach the target"
        holds = None if reached.empty else False
    elif reached.empty:
        best_text = f"only ReZero reached the target ({rezero_steps:.0f} steps); no baseline within {config.steps}"
        holds = True
    else:
        ratio = speedup(float(reached.min()), rezero_steps)
        best_text = f"{format_speedup(ratio)} against {reached.idxmin()} ({reached.min():.0f} vs {rezero_steps:.0f} steps)"
        holds = ratio > 0
    claims = [Claim(
        f"ReZero (alpha = 0) reaches {scale.target:g} bits per character sooner than the best baseline",
        f"{PAPER_SPEEDUP:.0%} faster on enwik8; ReZero {PAPER_STEPS[REZERO].removesuffix(NOT_CHECKED)}iterations to "
        f"1.2 bits per byte {NOT_CHECKED}",
        best_text,
        holds,
    )]
    for label in overrides:
        if label == REZERO:
            continue
        if label in missing:
            claims.append(Claim(f"ReZero faster than {label}", PAPER_STEPS[label],
                                f"not run: variant {overrides[label].get('variant', label)!r} is not in this library version", None))
            continue
        other = float(steps[label])
        diverged = status[label].startswith("diverged")
        comparable = not diverged and not (math.isnan(other) and math.isnan(rezero_steps))
        ours = f"{format_steps(other)} ({status[label]}) vs ReZero {format_steps(rezero_steps)}"
        if diverged:
            ours += "; a diverged run gives no convergence time to compare"
        claims.append(Claim(
            f"ReZero faster than {label}",
            PAPER_STEPS[label],
            ours,
            bool(np.nan_to_num(other, nan=np.inf) > rezero_steps) if comparable else None,
        ))
    c = config
    settings = (
        f"{c.depth}-layer LMs on `{c.data}`, d_model {c.d_model}, {c.heads} heads, sequence length {c.seq_len}, "
        f"batch {c.batch_size}, {c.steps} steps of {c.optimizer} at lr {c.lr}, warm-up {scale.warmup_steps} steps "
        f"for post_norm_warmup only, validation every {c.eval_every} steps"
    )
    notes = [
        f"Steps to target: the first validation (every {c.eval_every} steps) at or below {scale.target:g}; "
        f"'not reached' within {c.steps} steps.",
        "One seed per variant; the spread across seeds is not measured.",
        f"A run is marked diverged when its final validation bpc is above its first one and above {uniform_bits:.2f} "
        f"bits, the level of a uniform guess over the {len(task.corpus.vocabulary)}-character vocabulary (log2 of "
        "its size); it does not count as reaching the target.",
    ]
    if missing:
        notes.append(f"Not run, because this library version lacks the variant: {', '.join(missing)}.")
    write_claims(args, "12-layer Transformers: steps to a target bits per character", claims, settings=settings,
                 seconds=clock.seconds, notes=notes)
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main, NAME))
