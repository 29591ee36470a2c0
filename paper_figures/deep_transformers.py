"""ReZero Transformers of 100+ layers train without learning-rate warm-up or normalisation.

A 128-layer ReZero character language model (no LayerNorm anywhere, alpha = 0, constant
learning rate from step 0) is trained next to a post-norm model of the same depth and
settings as a contrast. The figure shows training loss and validation bits per
character of both, and the alphas of the ReZero model.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    NOT_CHECKED,
    Claim,
    Stopwatch,
    format_number,
    parse_arguments,
    run_command_line,
    prepare_config,
    save_figure,
    save_frame,
    train_variants,
    write_claims,
)

from rezero_dynamics.plots import plot_alpha_trajectories, plot_training_curves  # noqa: E402
from rezero_dynamics.training import TrainConfig  # noqa: E402

NAME = "deep_transformers"
VARIANTS = ("rezero", "post_norm")

SCALES = {
    "smoke": TrainConfig(depth=8, d_model=8, heads=2, seq_len=8, batch_size=2, steps=6, eval_every=3, eval_batches=1,
                         checkpoint_every=0),
    "ci": TrainConfig(depth=128, d_model=32, heads=4, seq_len=32, batch_size=8, steps=150, lr=1e-3, eval_every=25,
                      eval_batches=2, checkpoint_every=0, track_every=5),
    # NOTE: the depth follows the paper's 100+ layer ReZero Transformers; width, steps,
    # batch and learning rate are not checked against the paper.
    "paper": TrainConfig(data="enwik8", depth=128, d_model=256, heads=8, d_ff=1024, seq_len=512, batch_size=22,
                         steps=50_000, lr=2e-4, eval_every=1000, eval_batches=16, checkpoint_every=0, track_every=50),
}


def tidy_curves(records: pd.DataFrame) -> pd.DataFrame:
    """Return the plotted curves: training loss in bits and validation bits per character."""
    rows = records[records["quantity"].isin(["loss", "val_bpc", "alpha"])].copy()
    is_loss = rows["quantity"] == "loss"
    rows.loc[is_loss, "value"] = rows.loc[is_loss, "value"] / math.log(2)
    rows.loc[is_loss, "quantity"] = "train_loss_bits"
    return rows[["run", "step", "quantity", "layer", "value"]].reset_index(drop=True)


def draw(records: pd.DataFrame, rezero_run: str):
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    figure.set_layout_engine("constrained")
    plot_training_curves(records, ax=left)
    plot_alpha_trajectories(records, run=rezero_run, ax=right)
    return figure


def first_and_last(curve: pd.DataFrame) -> tuple[float, float]:
    ordered = curve.sort_values("step")["value"]
    return float(ordered.iloc[0]), float(ordered.iloc[-1])


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, __doc__, argv)
    clock = Stopwatch()
    config, _ = prepare_config(SCALES[args.scale], args)
    comparison = train_variants(config, variants=VARIANTS, depths=[config.depth])
    records, runs = comparison.records, comparison.runs.set_index("variant")
    rezero_run = runs.loc["rezero", "run"]
    save_figure(draw(records, rezero_run), args)
    curves = tidy_curves(records)
    save_frame(curves, args)

    def validation(variant: str) -> tuple[float, float]:
        rows = curves[(curves["run"] == runs.loc[variant, "run"]) & (curves["quantity"] == "val_bpc")]
        return first_and_last(rows) if len(rows) else (math.nan, math.nan)

    rezero_start, rezero_end = validation("rezero")
    post_start, post_end = validation("post_norm")
    rezero_losses = curves[(curves["run"] == rezero_run) & (curves["quantity"] == "train_loss_bits")]["value"]
    finite = bool(rezero_losses.map(math.isfinite).all()) and runs.loc["rezero", "status"] == "completed"
    rezero_drop = rezero_start - rezero_end
    post_drop = post_start - post_end
    claims = [
        Claim(
            f"a {config.depth}-layer ReZero Transformer trains without warm-up or LayerNorm: loss falls, no NaN",
            f"trains at 100+ layers {NOT_CHECKED}",
            f"validation bpc {format_number(rezero_start)} to {format_number(rezero_end)} in {config.steps} steps, "
            f"status {runs.loc['rezero', 'status']}, all losses finite: {'yes' if finite else 'no'}",
            bool(finite and rezero_drop > 0.1 * rezero_start),
        ),
        Claim(
            "post-norm at the same depth and settings learns less",
            f"qualitative {NOT_CHECKED}",
            f"post-norm validation bpc {format_number(post_start)} to {format_number(post_end)} "
            f"(status {runs.loc['post_norm', 'status']})",
            None if math.isnan(post_drop) or math.isnan(rezero_drop) else bool(post_drop < rezero_drop),
        ),
    ]
    c = config
    settings = (
        f"{c.depth} layers on `{c.data}`, d_model {c.d_model}, {c.heads} heads, sequence length {c.seq_len}, "
        f"batch {c.batch_size}, {c.steps} steps of {c.optimizer} at a constant lr {c.lr} (no warm-up, no decay, "
        f"no gradient clipping), validation every {c.eval_every} steps on {c.eval_batches} batches"
    )
    write_claims(args, "Training Transformers of 100+ layers", claims, settings=settings, seconds=clock.seconds, notes=[
        "ReZero blocks have no normalisation layer; the post-norm model has a LayerNorm after every sublayer.",
        "One seed per variant.",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main, NAME))
