"""CIFAR ResNets: epochs to a target validation accuracy, standard blocks against ReZero blocks.

The standard block is He et al.'s ReLU(x + BN(conv(ReLU(BN(conv(x)))))); the ReZero
block is x + alpha F(x) with the final ReLU moved into F and alpha = 0, so it is the
identity at initialisation (``rezero_dynamics.models.resnet``). Both train with SGD
(momentum 0.9) at the same constant learning rate.

The paper compares ResNet-56 on CIFAR-10. The ci scale trains the smaller ResNet-20 on
scikit-learn's 8x8 digits instead, so its numbers test the direction of the effect on a
far easier task, not the paper's value.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
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

from rezero_dynamics.plots import plot_training_curves  # noqa: E402
from rezero_dynamics.training import TrainConfig  # noqa: E402
from rezero_dynamics.training.metrics import speedup  # noqa: E402

NAME = "resnet_convergence"
VARIANTS = ("residual", "rezero")
PAPER_SPEEDUP = 0.32
TRAIN_IMAGES = {"digits": 1437, "cifar10": 45_000}  # training split sizes of the library's loaders


@dataclass(frozen=True)
class ResNetScale:
    settings: dict  # TrainConfig fields
    target: float  # validation accuracy


SCALES = {
    "smoke": ResNetScale(
        dict(task="classifier", data="digits", classifier_model="resnet", depth=8, batch_size=16, steps=6,
             optimizer="sgd", lr=0.05, eval_every=2, checkpoint_every=0),
        target=0.2,
    ),
    "ci": ResNetScale(
        dict(task="classifier", data="digits", classifier_model="resnet", depth=20, batch_size=64, steps=300,
             optimizer="sgd", lr=0.05, eval_every=15, checkpoint_every=0, track_every=5),
        target=0.95,
    ),
    # NOTE: ResNet-56 and CIFAR-10 follow the paper. Batch size, learning rate (without a
    # decay schedule), step count and the accuracy target are not checked against the paper.
    "paper": ResNetScale(
        dict(task="classifier", data="cifar10", classifier_model="resnet", depth=56, batch_size=128, steps=64_000,
             optimizer="sgd", lr=0.1, weight_decay=1e-4, eval_every=350, checkpoint_every=0, track_every=50),
        target=0.80,
    ),
}


def epochs(steps: float, config: TrainConfig) -> float:
    """Convert optimiser steps to passes over the training split."""
    return steps * config.batch_size / TRAIN_IMAGES[config.data]


def draw(records: pd.DataFrame, table: pd.DataFrame, target: float):
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    figure.set_layout_engine("constrained")
    plot_training_curves(records, ax=left)
    reached = table["epochs_to_target"]
    bars = right.bar(table["variant"], reached.fillna(0), color=["0.6" if math.isnan(v) else "C0" for v in reached])
    for bar, value in zip(bars, reached):
        right.annotate("not reached" if math.isnan(value) else f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                       ha="center", va="bottom", fontsize="small")
    right.set_ylabel(f"epochs to validation accuracy {target:g}")
    right.set_title("epochs to target (lower is faster)")
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, __doc__, argv)
    clock = Stopwatch()
    scale = SCALES[args.scale]
    model_name = f"ResNet-{scale.settings['depth']}"
    data_name = scale.settings["data"]
    claim_text = f"ReZero {model_name} reaches the target accuracy in fewer epochs than the standard {model_name}"
    config, _ = prepare_config(TrainConfig(**scale.settings), args)
    comparison = train_variants(config, variants=VARIANTS, depths=[config.depth], target=scale.target)
    table = comparison.runs[["variant", "run", "status", "steps_to_target", "final_metric"]].copy()
    table["epochs_to_target"] = [epochs(s, config) for s in table["steps_to_target"]]
    save_figure(draw(comparison.records, table, scale.target), args)
    curves = comparison.records[comparison.records["quantity"].isin(["loss", "val_accuracy"])][["run", "step", "quantity", "value"]]
    save_frame(pd.concat([curves.assign(kind="curve"), table.assign(kind="epochs_to_target")], ignore_index=True), args)

    by_variant = table.set_index("variant")
    standard, rezero = float(by_variant.loc["residual", "steps_to_target"]), float(by_variant.loc["rezero", "steps_to_target"])
    if math.isnan(rezero):
        ours, holds = "ReZero did not reach the target", (None if math.isnan(standard) else False)
    elif math.isnan(standard):
        ours, holds = f"only ReZero reached it ({epochs(rezero, config):.1f} epochs)", True
    else:
        ratio = speedup(standard, rezero)
        ours = f"{format_speedup(ratio)} (standard {epochs(standard, config):.1f}, ReZero {epochs(rezero, config):.1f} epochs)"
        holds = ratio > 0
    if config.data != "cifar10":
        ours += f", {model_name} on {data_name}, not ResNet-56 on CIFAR-10"
    claims = [
        Claim(claim_text, f"{PAPER_SPEEDUP:.0%} faster (ResNet-56, CIFAR-10)", ours, holds),
        Claim(
            "final validation accuracy of both",
            "not stated here",
            f"standard {by_variant.loc['residual', 'final_metric']:.3f}, ReZero {by_variant.loc['rezero', 'final_metric']:.3f}",
            None,
        ),
    ]
    c = config
    settings = (
        f"{model_name} on `{c.data}` ({TRAIN_IMAGES[c.data]} training images), batch {c.batch_size}, {c.steps} steps "
        f"({epochs(c.steps, c):.3g} epochs) of SGD with momentum 0.9 at a constant lr {c.lr}, weight decay "
        f"{c.weight_decay}, target validation accuracy {scale.target:g}, validation every {c.eval_every} steps"
    )
    write_claims(args, "ResNets: epochs to a target accuracy", claims, settings=settings, seconds=clock.seconds, notes=[
        f"Epochs to target = steps to target x batch / {TRAIN_IMAGES[c.data]}; resolved to {c.eval_every} steps.",
        "No data augmentation and no learning-rate decay; one seed per variant.",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main, NAME))
