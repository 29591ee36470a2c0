"""ReZero alpha per layer over the training of a deep ReZero Transformer language model.

Each layer of the model has one alpha, shared by its attention and feed-forward
sublayers and initialised to 0. The tracker records every alpha on a schedule; the left
panel draws each layer's alpha against step (``plot_alpha_trajectories``), the right one
the mean and the largest |alpha| over layers.
"""

from __future__ import annotations

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
    parse_arguments,
    run_command_line,
    prepare_config,
    save_figure,
    save_frame,
    train_variants,
    write_claims,
)

from rezero_dynamics.plots import plot_alpha_trajectories  # noqa: E402
from rezero_dynamics.training import TrainConfig  # noqa: E402

NAME = "alpha_trajectories"

SCALES = {
    "smoke": TrainConfig(depth=4, d_model=8, heads=2, seq_len=8, batch_size=2, steps=6, eval_every=3, eval_batches=1,
                         checkpoint_every=0),
    "ci": TrainConfig(depth=32, d_model=64, heads=4, seq_len=32, batch_size=8, steps=300, lr=1e-3, eval_every=50,
                      eval_batches=2, checkpoint_every=0, track_every=2),
    # NOTE: 64 layers and the model sizes follow the paper's deep enwik8 Transformers; the
    # step count, batch and learning rate are not checked against the paper.
    "paper": TrainConfig(data="enwik8", depth=64, d_model=512, heads=8, d_ff=2048, seq_len=512, batch_size=22,
                         steps=50_000, lr=2e-4, eval_every=1000, eval_batches=16, checkpoint_every=0, track_every=50),
}


def alpha_frame(records: pd.DataFrame) -> pd.DataFrame:
    """Return the alpha rows as (step, layer, name, alpha), ``layer`` the block index from 0."""
    rows = records[records["quantity"] == "alpha"]
    names = list(dict.fromkeys(rows["layer"]))  # registration order = block order
    index = {name: position for position, name in enumerate(names)}
    return pd.DataFrame({
        "step": rows["step"].to_numpy(), "layer": rows["layer"].map(index).to_numpy(),
        "name": rows["layer"].to_numpy(), "alpha": rows["value"].to_numpy(),
    }).sort_values(["step", "layer"], ignore_index=True)


def draw(records: pd.DataFrame, alphas: pd.DataFrame, depth: int):
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.2))
    figure.set_layout_engine("constrained")
    plot_alpha_trajectories(records, ax=left)
    left.set_title(f"alpha per layer, {depth}-layer ReZero LM")
    magnitude = alphas.assign(magnitude=alphas["alpha"].abs()).groupby("step")["magnitude"]
    right.plot(magnitude.mean().index, magnitude.mean().to_numpy(), label="mean |alpha| over layers")
    right.plot(magnitude.max().index, magnitude.max().to_numpy(), label="max |alpha| over layers")
    right.set_xlabel("step")
    right.set_ylabel("|alpha|")
    right.set_title("magnitude of alpha")
    right.legend(fontsize="small")
    return figure


def describe_trend(magnitude: pd.Series, peak_step: int, last_step: int) -> str:
    """Describe mean |alpha| by its peak and its last record, or as still rising when the peak is the last record."""
    if peak_step == last_step:
        return f"still rising at the last record (step {last_step}): {magnitude.loc[last_step]:.2g}"
    peak, last = magnitude.loc[peak_step], magnitude.loc[last_step]
    return f"peak {peak:.2g} at step {peak_step}, {last:.2g} at step {last_step} ({1 - last / peak:.1%} below the peak)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(NAME, __doc__, argv)
    clock = Stopwatch()
    config, _ = prepare_config(SCALES[args.scale], args)
    comparison = train_variants(config, variants=["rezero"], depths=[config.depth])
    records = comparison.records
    alphas = alpha_frame(records)
    if alphas.empty:
        raise RuntimeError(f"the ReZero run recorded no alphas: {comparison.runs.to_dict('records')}")
    save_figure(draw(records, alphas, config.depth), args)
    save_frame(alphas, args)

    magnitude = alphas.assign(magnitude=alphas["alpha"].abs()).groupby("step")["magnitude"].mean()
    first_step, last_step = int(magnitude.index.min()), int(magnitude.index.max())
    early_step = int(magnitude.index[min(len(magnitude) - 1, max(1, len(magnitude) // 10))])
    peak_step = int(magnitude.idxmax())
    largest = float(alphas["alpha"].abs().max())
    status = comparison.runs["status"].iloc[0]
    claims = [
        Claim(
            "alphas start at 0 and move away from it early in training",
            "alpha = 0 at initialisation",
            f"mean |alpha| {magnitude.loc[first_step]:.2g} at step {first_step}, "
            f"{magnitude.loc[early_step]:.2g} at step {early_step}",
            bool(magnitude.loc[first_step] == 0.0 and magnitude.loc[early_step] > 0.0),
        ),
        Claim(
            "|alpha| stays well below 1 in a deep ReZero Transformer",
            f"small values {NOT_CHECKED}",
            f"largest |alpha| {largest:.2g} over all layers and steps ({status})",
            largest < 1.0,
        ),
        Claim(
            "mean |alpha| first rises, then falls back during training",
            f"rise, then decay {NOT_CHECKED}",
            describe_trend(magnitude, peak_step, last_step),
            bool(peak_step < last_step and magnitude.loc[last_step] < 0.9 * magnitude.loc[peak_step]),
        ),
    ]
    c = config
    settings = (
        f"{c.depth}-layer ReZero LM on `{c.data}`, d_model {c.d_model}, {c.heads} heads, sequence length {c.seq_len}, "
        f"batch {c.batch_size}, {c.steps} steps of {c.optimizer} at lr {c.lr}, no warm-up, alphas recorded every "
        f"{c.track_every} steps"
    )
    write_claims(args, "ReZero alpha trajectories", claims, settings=settings, seconds=clock.seconds, notes=[
        "The value recorded at step k is alpha before the update of step k.",
        "One seed; a longer run may change the late-training trend.",
    ])
    return 0


if __name__ == "__main__":
    sys.exit(run_command_line(main, NAME))
