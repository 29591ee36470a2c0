"""Command-line interface: argument parsing only; the work is done in ``studies`` and
``training``.

* ``spectrum``: exact input-output Jacobian spectra of residual variants at several
  depths. Its folder appears only when everything succeeded: results are written to a
  temporary folder beside it and renamed at the end.
* ``train``: one run. ``compare``: variants x depths x seeds. ``reproduce``: the main
  study with a report. These write records as they go, so an interrupted or failed
  run keeps what it recorded.
* ``plot``: redraw figures from the records of a folder.
* ``diagnose``: findings with severity and advice for a toolkit model, a user's model
  file or a run folder.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

import pandas as pd

from .residual import VARIANTS
from .studies import (
    DTYPES,
    SCALES,
    INPUT_KINDS,
    MODELS,
    SPECTRUM_METHODS,
    SpectrumConfig,
    config_as_dict,
    spectrum_study,
    summarise_by_group,
    theory_overlays,
)
from .models import ACTIVATIONS, RESNET_VARIANTS, WEIGHT_INITS
from .spectra import JACOBIAN_MODES
from .training import TrainConfig
from .diagnose import INPUT_KINDS as DIAGNOSE_INPUT_KINDS, METHODS as DIAGNOSE_METHODS

log = logging.getLogger("rezero_dynamics")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: stdout was closed by its reader
EXIT_DIVERGED = 3


class CommandError(Exception):
    """An error to report to the user in one line, without a traceback."""


class Terminated(BaseException):
    """SIGTERM arrived; handled like Ctrl-C (a BaseException, so ``except Exception`` lets it pass)."""


class OneLineErrorParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line that points to --help, not a usage block."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if not 0 <= value <= 2**63 - 1:  # as _checks.check_seed
        raise argparse.ArgumentTypeError(f"must be a seed from 0 to 2**63 - 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    value = _finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _comma_list(item: Callable[[str], object], choices: Sequence[str] | None = None):
    def parse(text: str) -> tuple:
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        repeated = sorted({p for p in parts if parts.count(p) > 1})
        if repeated:
            raise argparse.ArgumentTypeError(f"repeated value(s) {', '.join(repeated)}; list each once")
        if choices is not None:
            unknown = [p for p in parts if p not in choices]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown value(s) {', '.join(map(repr, unknown))}; choose from {', '.join(choices)}"
                )
        return tuple(item(p) for p in parts)

    return parse


def resolve_device(name: str, option: str = "--device") -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; check CUDA devices exist.

    ``option`` names the command-line option in error messages.
    """
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    index = name.partition(":")[2]
    if name != "cuda" and not (name.startswith("cuda:") and index.isdigit()):
        raise CommandError(f"{option} {name}: invalid device; use auto, cpu, cuda or cuda:K with K = 0, 1, ...")
    if not torch.cuda.is_available():
        raise CommandError(f"{option} {name}: CUDA is not available on this machine; use cpu")
    if index and int(index) >= torch.cuda.device_count():
        raise CommandError(
            f"{option} {name}: no such GPU; this machine has {torch.cuda.device_count()} (cuda:0 ...)"
        )
    return name


def compare_devices(device: str, devices: Sequence[str] | None) -> list[str]:
    """Return the devices that ``compare`` spreads its runs over, one worker process each.

    ``devices`` is checked and used as given. Otherwise ``device`` (after ``auto``) names
    them: ``cuda`` means every visible GPU, and any other device runs alone.
    """
    if devices:
        return [resolve_device(name, "--devices") for name in devices]
    resolved = resolve_device(device)
    if resolved == "cuda" and torch.cuda.device_count() > 1:
        return [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    return [resolved]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="rezero-dynamics",
        description="Signal propagation in deep residual networks: ReZero against its alternatives.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=OneLineErrorParser)

    default = SpectrumConfig()
    spectrum = commands.add_parser(
        "spectrum",
        help="input-output Jacobian singular values of residual variants at initialisation",
        description=(
            "Compute the exact singular values of the input-output Jacobian of block stacks "
            "(embeddings in, embeddings out) for each variant and depth, on the same inputs, and "
            "write log10_singular_values.png, singular_values.csv, summary.csv and config.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    spectrum.add_argument("--model", choices=MODELS, default=default.model, help="block type")
    spectrum.add_argument(
        "--variants", type=_comma_list(str, VARIANTS), default=",".join(default.variants),
        help=f"comma-separated residual variants from: {', '.join(VARIANTS)}",
    )
    spectrum.add_argument(
        "--depths", type=_comma_list(_positive_int), default=",".join(map(str, default.depths)),
        help="comma-separated numbers of blocks",
    )
    spectrum.add_argument("--width", type=_positive_int, default=default.width, help="d_model (Transformer) or hidden width (MLP)")
    spectrum.add_argument("--heads", type=_positive_int, default=default.heads, help="attention heads (Transformer)")
    spectrum.add_argument("--d-ff", type=_positive_int, default=None, help="feed-forward width (Transformer); None means 4 * width")
    spectrum.add_argument("--seq-len", type=_positive_int, default=default.seq_len, help="tokens per input (Transformer)")
    spectrum.add_argument("--num-inputs", type=_positive_int, default=default.num_inputs, help="input samples; one Jacobian each")
    spectrum.add_argument(
        "--inputs", choices=INPUT_KINDS, default=default.inputs,
        help="text: embedded windows of the pydoc_data.topics corpus that ships with Python; gaussian: N(0, 1)",
    )
    spectrum.add_argument("--alpha-init", type=_finite_float, default=default.alpha_init, help="initial alpha of rezero blocks")
    spectrum.add_argument("--activation", choices=ACTIVATIONS, default=default.activation, help="activation (MLP)")
    spectrum.add_argument("--init", choices=WEIGHT_INITS, default=default.init, help="weight init (MLP)")
    spectrum.add_argument("--sigma-w", type=_positive_float, default=default.sigma_w, help="weight scale sigma_w (MLP)")
    spectrum.add_argument("--seed", type=_seed, default=default.seed, help="seed of inputs and initialisation")
    spectrum.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    spectrum.add_argument("--dtype", choices=tuple(DTYPES), default=default.dtype, help="precision of the Jacobian and SVD")
    spectrum.add_argument(
        "--method", choices=SPECTRUM_METHODS, default=default.method,
        help="exact: every singular value from the dense Jacobian; lanczos: the --k largest and smallest, "
             "matrix-free; slq: density of log10 singular values, matrix-free; auto: exact when the dense "
             "Jacobian fits --memory-budget, else slq",
    )
    spectrum.add_argument("--jacobian-mode", dest="mode", choices=JACOBIAN_MODES, default=default.mode, help="exact method: forward (JVP) or reverse (VJP) mode")
    spectrum.add_argument("--k", type=_positive_int, default=default.k, help="lanczos: number of largest and of smallest singular values")
    spectrum.add_argument("--probes", type=_positive_int, default=default.probes, help="slq and moment estimates: random probe vectors")
    spectrum.add_argument("--lanczos-steps", type=_positive_int, default=default.lanczos_steps, help="slq: Lanczos steps per probe")
    spectrum.add_argument(
        "--memory-budget", type=_positive_float, default=default.memory_budget / 2**30,
        help="memory for one Jacobian and its SVD, in GiB",
    )
    spectrum.add_argument(
        "--output-dir", type=Path, default=None,
        help="folder for the results; default runs/spectrum-YYYYmmdd-HHMMSS",
    )
    spectrum.add_argument(
        "--theory", action="store_true",
        help="draw the random-matrix prediction on the histograms (needs --model mlp --activation linear "
             "--init gaussian and --variants none, residual or rezero)",
    )
    spectrum.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    spectrum.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    spectrum.set_defaults(handler=run_spectrum, interrupted_note="no results were written")

    train = commands.add_parser(
        "train", help="train one model and record its dynamics",
        description=(
            "Train one model (a character-level Transformer LM, or an MLP classifier) and record loss, "
            "per-block gradient norms, alphas, activation RMS, update norms and optional Jacobian "
            "spectra in a run folder, with checkpoints."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_train_options(train)
    train.add_argument("--output-dir", type=Path, default=None, help="run folder; default runs/train-YYYYmmdd-HHMMSS")
    train.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its checkpoint")
    train.add_argument("--tensorboard", action="store_true", help="also export the scalar records for TensorBoard")
    train.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    train.set_defaults(handler=run_train, interrupted_note="records and the last checkpoint are kept; continue with --resume")

    compare_parser = commands.add_parser(
        "compare", help="train variants x depths x seeds, one after another or one run per GPU",
        description="Train every combination; a failed or diverged run is recorded in runs.csv and the others go on.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    _add_train_options(compare_parser, skip=("variant", "depth", "seed"))
    compare_parser.add_argument("--variants", type=_comma_list(str, VARIANTS), default="post_norm,pre_norm,rezero", help="comma-separated variants")
    compare_parser.add_argument("--depths", type=_comma_list(_positive_int), default="12", help="comma-separated depths")
    compare_parser.add_argument("--seeds", type=_comma_list(_seed), default="0", help="comma-separated seeds")
    compare_parser.add_argument(
        "--devices", type=_comma_list(str), default=None,
        help="comma-separated devices, one worker process and one run at a time each (e.g. cuda:0,cuda:1); "
             "default: every visible GPU for --device cuda or auto, else --device alone",
    )
    compare_parser.add_argument("--target", type=_finite_float, default=None, help="validation metric value for steps-to-target")
    compare_parser.add_argument("--output-dir", type=Path, default=None, help="folder; default runs/compare-YYYYmmdd-HHMMSS")
    compare_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    compare_parser.add_argument(
        "--resume", action="store_true",
        help="continue the comparison in --output-dir: keep finished runs, resume the others",
    )
    compare_parser.set_defaults(
        handler=run_compare, interrupted_note="finished runs are kept in runs.csv; continue with --resume"
    )

    reproduce_parser = commands.add_parser(
        "reproduce", help="the main study: variants side by side, with a report",
        description=(
            "Train post-norm, pre-norm and ReZero Transformer language models side by side and write "
            "report.md with steps-to-target, speed-ups, figures and tidy records."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    reproduce_parser.add_argument("--scale", choices=tuple(SCALES), default="ci", help="ci: minutes on a CPU; small: about an hour; paper: enwik8 on a GPU")
    reproduce_parser.add_argument("--data-path", default=None, help="enwik8 file, for --scale paper")
    reproduce_parser.add_argument(
        "--device", default="auto", help="auto, cpu, cuda or cuda:K; cuda (or auto) uses every visible GPU, one run per GPU",
    )
    reproduce_parser.add_argument("--output-dir", type=Path, default=None, help="folder; default runs/reproduce-YYYYmmdd-HHMMSS")
    reproduce_parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    reproduce_parser.set_defaults(handler=run_reproduce, interrupted_note="finished runs and their records are kept")

    _add_diagnose_parser(commands)

    plot = commands.add_parser(
        "plot", help="redraw the figures of a run or comparison folder from its records",
        description="Read records.csv (and spectra.csv) below RUN_DIR and write the figures to RUN_DIR/figures.",
    )
    plot.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a folder written by train, compare or reproduce")
    plot.set_defaults(handler=run_plot, interrupted_note="some figures may be missing")
    return parser


def _add_diagnose_parser(commands) -> None:
    default = SpectrumConfig()
    diagnose = commands.add_parser(
        "diagnose", help="verdicts on a model's Jacobian or a training run, with what usually helps",
        description=(
            "Diagnose TARGET: a toolkit model by name (transformer or mlp, built from the options below), "
            "a model of your own as FILE.py:FUNCTION (a function returning an nn.Module; give --input-shape "
            "or --example-input), or a run folder from train, compare or reproduce (each run is diagnosed). "
            "Prints each finding with its severity, measured value, threshold and advice; thresholds and "
            "their reasons are listed in docs/diagnose.md. The exit status is 0 whatever the findings."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    diagnose.add_argument("target", metavar="TARGET", help="transformer, mlp, FILE.py:FUNCTION or a run folder")
    diagnose.add_argument("--variant", choices=VARIANTS, default="rezero", help="residual variant (toolkit models)")
    diagnose.add_argument("--depth", type=_positive_int, default=12, help="number of blocks (toolkit models)")
    diagnose.add_argument("--width", type=_positive_int, default=default.width, help="d_model (Transformer) or hidden width (MLP)")
    diagnose.add_argument("--heads", type=_positive_int, default=default.heads, help="attention heads (Transformer)")
    diagnose.add_argument("--d-ff", type=_positive_int, default=None, help="feed-forward width (Transformer); None means 4 * width")
    diagnose.add_argument("--seq-len", type=_positive_int, default=default.seq_len, help="tokens per input (Transformer)")
    diagnose.add_argument("--num-inputs", type=_positive_int, default=2, help="input samples; one Jacobian each")
    diagnose.add_argument(
        "--inputs", choices=DIAGNOSE_INPUT_KINDS, default="auto",
        help="toolkit models: text, gaussian, fixed_point (tanh MLP without skips, at the mean-field fixed "
             "point) or auto (text for the Transformer, fixed_point for a plain tanh MLP, else gaussian)",
    )
    diagnose.add_argument("--alpha-init", type=_finite_float, default=0.0, help="initial alpha of rezero blocks")
    diagnose.add_argument("--activation", choices=ACTIVATIONS, default=default.activation, help="activation (MLP)")
    diagnose.add_argument("--init", choices=WEIGHT_INITS, default=default.init, help="weight init (MLP)")
    diagnose.add_argument("--sigma-w", type=_positive_float, default=1.0, help="weight scale sigma_w (MLP)")
    diagnose.add_argument("--sigma-b", type=_finite_float, default=0.0, help="bias scale sigma_b (MLP), >= 0")
    diagnose.add_argument("--input-shape", default=None, help="FILE.py:FUNCTION targets: one sample's shape without the batch dimension, e.g. 16,64")
    diagnose.add_argument("--example-input", default=None, help="FILE.py:FUNCTION targets: FILE.py:FUNCTION returning an input batch (B, *in_shape)")
    diagnose.add_argument("--seed", type=_seed, default=0, help="seed of inputs, initialisation and probes")
    diagnose.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    diagnose.add_argument(
        "--method", choices=DIAGNOSE_METHODS, default="auto",
        help="exact: dense Jacobian; probes: Hutchinson and Lanczos estimates with standard errors; auto: exact "
             "when the dense Jacobian fits --memory-budget",
    )
    diagnose.add_argument("--probes", type=_positive_int, default=16, help="probe vectors of the probes method (at least 2)")
    diagnose.add_argument("--memory-budget", type=_positive_float, default=default.memory_budget / 2**30, help="memory for one Jacobian and its SVD, in GiB")
    diagnose.add_argument("--json", action="store_true", help="print the diagnoses as JSON instead of tables")
    diagnose.add_argument("--plot", type=Path, default=None, metavar="PATH", help="also write a figure of the depth profile or run series to PATH (.png, .pdf, .svg)")
    diagnose.set_defaults(handler=run_diagnose, interrupted_note="nothing was written")


_OPTION_HELP = {
    "variant": f"residual variant of every block, one of {', '.join(VARIANTS)} (post-norm with warm-up: "
               f"--variant post_norm --warmup-steps N); the ResNet accepts {', '.join(RESNET_VARIANTS)}",
    "warmup_steps": "linear learning-rate warm-up over the first N steps (0: none)",
    "task": "lm (character language model) or classifier (MLP or ResNet on images)",
    "classifier_model": "classifier network: mlp, or resnet (CIFAR ResNet with --depth 6n+2 layers, e.g. 20, 56, 110)",
    "data": "lm: default (pydoc_data.topics text) or enwik8; classifier: digits or cifar10 (default: default for lm, "
            "digits for classifier)",
    "depth": "number of blocks of the LM or MLP (default 12); weighted layers of the ResNet, 6n+2 such as 20, 56 "
             "or 110 (default 20)",
    "data_path": "enwik8 file or cifar-10-batches-py folder",
    "spectrum_every": "record Jacobian spectra of the block stack every N steps (0: never)",
    "track_every": "record tracked quantities every N steps (0: never), or N per decade with --track-schedule log",
    "track_schedule": "every (every N steps) or log (logarithmically spaced)",
    "checkpoint_every": "write a checkpoint every N steps (0: only at the end)",
    "eval_every": "evaluate on the validation split every N steps (0: only at the end)",
    "alpha_lr": "learning rate of the ReZero alphas; default: --lr",
    "alpha_weight_decay": "apply weight decay to the alphas too",
    "clip_norm": "clip the global gradient norm to this value",
    "device": "auto, cpu, cuda or cuda:K (train under torchrun: cuda is the GPU of each process's LOCAL_RANK; "
              "compare: cuda is every visible GPU)",
    "batch_size": "global batch size, split evenly over the processes of a torchrun run",
    "precision": "fp32, or autocast of the forward pass and loss to bf16 or fp16 (fp16 with a gradient scaler)",
    "compile": "run the model through torch.compile (the first steps take longer while it compiles)",
}


def _add_train_options(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """Add one option per TrainConfig field, typed from its annotation."""
    defaults = TrainConfig()
    for item in dataclasses.fields(TrainConfig):
        if item.name in skip:
            continue
        flag = "--" + item.name.replace("_", "-")
        default = getattr(defaults, item.name)
        if item.name in ("data", "depth"):
            # Left out of the namespace unless given, so TrainConfig picks them from the task and model.
            default = argparse.SUPPRESS
        help_text = _OPTION_HELP.get(item.name, item.name.replace("_", " "))
        if item.type == "bool":
            parser.add_argument(flag, action="store_true", help=help_text)
            continue
        if item.name == "device":
            parser.add_argument(flag, default="auto", help=help_text)
            continue
        parse = {"int": int, "float": _finite_float, "str": str}[item.type.split(" | ")[0]]
        if item.name == "seed":
            parse = _seed
        parser.add_argument(flag, type=parse, default=default, help=help_text)


def _train_config(args: argparse.Namespace, **fixed) -> TrainConfig:
    values = {item.name: getattr(args, item.name) for item in dataclasses.fields(TrainConfig) if hasattr(args, item.name)}
    values.update(fixed)
    values["device"] = resolve_device(values.get("device", "auto"))
    return TrainConfig(**values).validate()


SPECTRUM_FILES = frozenset(
    {"config.json", "log10_singular_values.png", "singular_values.csv", "density.csv", "summary.csv"}
)


def _prepare_output(output_dir: Path, overwrite: bool, known_files: frozenset[str]) -> Path:
    """Check that ``output_dir`` can be written and return a fresh temporary folder beside it.

    ``--overwrite`` replaces only a folder that contains nothing but an earlier result of the
    same command (``known_files``), and never the working folder or one above it.
    """
    if str(output_dir) in ("", "."):
        raise CommandError("--output-dir is empty or '.'; name a new folder for the results")
    resolved = output_dir.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise CommandError(f"--output-dir {output_dir} is the working folder or one above it; name a new folder")
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"--output-dir {output_dir}: exists and is not a folder; choose another path")
    if output_dir.is_dir() and any(output_dir.iterdir()):
        if not overwrite:
            raise CommandError(
                f"--output-dir {output_dir}: folder exists and is not empty; pass --overwrite or choose another path"
            )
        foreign = sorted(p.name for p in output_dir.iterdir() if p.name not in known_files)
        if foreign:
            raise CommandError(
                f"--output-dir {output_dir}: --overwrite replaces only an earlier result of this command, but "
                f"the folder also contains {', '.join(foreign[:5])}; choose another path"
            )
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    except OSError as error:
        raise CommandError(
            f"--output-dir {output_dir}: cannot be written ({error.strerror or error}); choose a writable path"
        ) from None
    umask = os.umask(0)
    os.umask(umask)
    staging.chmod(0o777 & ~umask)  # mkdtemp makes 0700; results should read like any new folder
    return staging


def _publish(staging: Path, output_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``output_dir``, replacing an earlier result."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)


def run_spectrum(args: argparse.Namespace) -> int:
    import matplotlib

    # The CLI writes files only; library plot functions never switch the backend.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_log10_density, plot_log10_singular_value_histograms

    if not math.isfinite(args.memory_budget * 2**30):
        raise CommandError(f"--memory-budget {args.memory_budget:g} GiB is too large; give the memory in GiB, e.g. 2")
    config = SpectrumConfig(
        model=args.model, variants=args.variants, depths=args.depths, width=args.width,
        heads=args.heads, d_ff=args.d_ff, seq_len=args.seq_len, num_inputs=args.num_inputs,
        inputs=args.inputs, alpha_init=args.alpha_init, activation=args.activation,
        init=args.init, sigma_w=args.sigma_w, seed=args.seed, device=resolve_device(args.device),
        dtype=args.dtype, mode=args.mode, method=args.method, k=args.k, probes=args.probes,
        lanczos_steps=args.lanczos_steps, memory_budget=int(args.memory_budget * 2**30),
    )
    try:
        config.validate()
        overlays = theory_overlays(config) if args.theory else None
    except ValueError as error:
        raise CommandError(str(error)) from None

    output_dir = args.output_dir or Path("runs") / time.strftime("spectrum-%Y%m%d-%H%M%S")
    staging = _prepare_output(output_dir, args.overwrite, SPECTRUM_FILES)
    try:
        started = time.perf_counter()
        values, summary = spectrum_study(config, progress=not args.no_progress)
        method = summary["method"].iloc[0]
        if method == "slq":
            figure = plot_log10_density(values)
        else:
            figure = plot_log10_singular_value_histograms(values, theory=overlays)
        extreme = " (largest and smallest only)" if method == "lanczos" else ""
        figure.suptitle(f"{config.model} input-output Jacobian at init, {config.inputs} inputs, {method}{extreme}")
        figure.savefig(staging / "log10_singular_values.png", dpi=120)
        plt.close(figure)
        values.to_csv(staging / ("density.csv" if method == "slq" else "singular_values.csv"), index=False)
        summary.to_csv(staging / "summary.csv", index=False)
        elapsed = time.perf_counter() - started
        (staging / "config.json").write_text(
            json.dumps(
                {**config_as_dict(config), "method_used": method, "seconds": round(elapsed, 1), "torch": torch.__version__},
                indent=2,
            )
        )
        _publish(staging, output_dir)
    except BaseException:  # also Ctrl-C and SIGTERM: no partial result is left behind
        shutil.rmtree(staging, ignore_errors=True)
        raise

    if method == "exact":
        table = summarise_by_group(summary, values)
    else:
        table = summary.groupby(["depth", "variant"], sort=False).mean(numeric_only=True).drop(columns="sample").reset_index()
    print(f"method: {method}" + (" (picked by auto)" if config.method == "auto" else ""))
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {output_dir} in {elapsed:.0f} s")
    return 0


def _default_dir(kind: str) -> Path:
    return Path("runs") / time.strftime(f"{kind}-%Y%m%d-%H%M%S")


def _new_folder(output_dir: Path) -> Path:
    """Return ``output_dir`` after checking that it is new or empty and could be created.

    Nothing is created here, so a run that fails on its data leaves no empty folder.
    """
    if str(output_dir) == ".":  # Path("") is Path(".") too
        raise CommandError("--output-dir is empty or '.'; name a new folder for the results")
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise CommandError(f"--output-dir {output_dir}: exists and is not an empty folder; choose a new path")
    existing = output_dir  # a relative path ends at ".", which exists
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as error:  # e.g. a folder on the way that this user may not search
        raise CommandError(
            f"--output-dir {output_dir}: cannot be written ({error.strerror or error}); choose a writable path"
        ) from None
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"--output-dir {output_dir}: cannot be written under {existing}; choose a writable path")
    return output_dir


def run_train(args: argparse.Namespace) -> int:
    from .training import train as train_run
    from .training.distributed import Distributed, torchrun_environment

    config = _train_config(args)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:  # checked before training, not after
        raise CommandError("--tensorboard needs the tensorboard package: pip install tensorboard")
    if args.resume:
        if args.output_dir is None:
            raise CommandError("--resume needs --output-dir: the run folder to continue")
        if not any((args.output_dir / name).is_file() for name in ("checkpoint.pt", "config.json")):
            raise CommandError(f"--resume: no checkpoint.pt in {args.output_dir}; pass the folder of an earlier run")
    context = torchrun_environment() or Distributed()
    if context.enabled and args.output_dir is None:
        raise CommandError("under torchrun, pass --output-dir: every process must write to the same run folder")
    output_dir = args.output_dir or _default_dir("train")
    if not args.resume and context.is_main:  # rank 0 may have written to it before another rank looks
        _new_folder(output_dir)
    args.status_dir = output_dir  # lets main tell a signal after completion from one during the run
    result = train_run(config, output_dir, resume=args.resume, progress=not args.no_progress and context.is_main)
    if not context.is_main:
        return 0 if result.status == "completed" else EXIT_DIVERGED
    if args.tensorboard:
        from .tracking.export import export_tensorboard

        export_tensorboard(output_dir)
    print(f"{result.status} at step {result.step}" + (f": {result.cause}" if result.cause else "") + f"; run folder {output_dir}")
    return 0 if result.status == "completed" else EXIT_DIVERGED


def run_compare(args: argparse.Namespace) -> int:
    from .studies import compare

    base = _train_config(args, variant=args.variants[0], depth=args.depths[0], seed=args.seeds[0])
    for depth in args.depths[1:]:  # before the output folder is made; compare checks every run again
        dataclasses.replace(base, depth=depth).validate()
    if args.resume:
        if args.output_dir is None or not (args.output_dir / "runs").is_dir():
            raise CommandError("--resume needs --output-dir: the folder of an earlier comparison, with its runs folder")
        output_dir = args.output_dir
    else:
        output_dir = _new_folder(args.output_dir or _default_dir("compare"))
    runs = compare(base, output_dir, variants=args.variants, depths=args.depths, seeds=args.seeds,
                   target=args.target, progress=not args.no_progress, devices=compare_devices(args.device, args.devices),
                   resume=args.resume)
    print(runs[["run", "status", "step", "final_loss_bits", "final_metric", "steps_to_target"]].to_string(index=False))
    print(f"wrote {output_dir / 'runs.csv'}")
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes files only
    from .studies import reproduce

    output_dir = _new_folder(args.output_dir or _default_dir("reproduce"))
    report = reproduce(args.scale, output_dir, data_path=args.data_path, device=resolve_device(args.device),
                       progress=not args.no_progress, devices=compare_devices(args.device, None))
    print(report.read_text())
    print(f"wrote {report}")
    return 0


def run_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")  # the CLI writes files only
    from .studies.reproduce import write_figures
    from .tracking import read_csv_rows, read_records

    run_dir = args.run_dir
    if not run_dir.is_dir():
        raise CommandError(f"RUN_DIR {run_dir} is not a folder; pass a folder written by train, compare or reproduce")
    try:
        records = read_records(run_dir)
    except FileNotFoundError as error:
        raise CommandError(str(error)) from None
    if records.empty:
        raise CommandError(f"RUN_DIR {run_dir} has no records yet; nothing to plot")
    figures_dir = run_dir / "figures"
    if figures_dir.exists() and not figures_dir.is_dir():
        raise CommandError(f"{figures_dir} is a file, but plot writes its figures into that folder; move or delete the file")
    spectra_files = sorted(run_dir.rglob("spectra.csv"))  # each run's own; reproduce keeps no combined copy
    spectra = pd.concat([read_csv_rows(p) for p in spectra_files], ignore_index=True) if spectra_files else pd.DataFrame()
    runs = pd.DataFrame({"run": list(dict.fromkeys(records["run"]))})
    figures = write_figures(records, spectra, runs, run_dir / "figures")
    for path in figures:
        print(path)
    return 0


def _diagnose_model_target(args: argparse.Namespace):
    from .diagnose import TargetError, parse_input_shape, toolkit_target, user_target

    if args.target in MODELS:
        if args.sigma_b < 0:
            raise CommandError(f"--sigma-b {args.sigma_b}: must be >= 0")
        config = SpectrumConfig(
            model=args.target, variants=(args.variant,), depths=(args.depth,), width=args.width, heads=args.heads,
            d_ff=args.d_ff, seq_len=args.seq_len, num_inputs=args.num_inputs, alpha_init=args.alpha_init,
            activation=args.activation, init=args.init, sigma_w=args.sigma_w, sigma_b=args.sigma_b, seed=args.seed,
            device=resolve_device(args.device),
        )
        return toolkit_target(config, args.inputs)
    shape = parse_input_shape(args.input_shape) if args.input_shape is not None else None
    try:
        target = user_target(args.target, input_shape=shape, example_input=args.example_input,
                             num_inputs=args.num_inputs, seed=args.seed)
    except TargetError as error:
        raise CommandError(str(error)) from None
    device = resolve_device(args.device)
    return dataclasses.replace(target, model=target.model.to(device), inputs=target.inputs.to(device))


def run_diagnose(args: argparse.Namespace) -> int:
    from .diagnose import diagnose_folder, diagnose_model, diagnosis_frame, format_report, to_dict

    target_text = args.target
    is_model_file = ":" in target_text and target_text.rpartition(":")[0].endswith(".py")
    if args.probes < 2:
        raise CommandError(f"--probes {args.probes}: a standard error needs at least 2 probe vectors")
    if not math.isfinite(args.memory_budget * 2**30):
        raise CommandError(f"--memory-budget {args.memory_budget:g} GiB is too large; give the memory in GiB, e.g. 2")
    if is_model_file or target_text in MODELS:
        target = _diagnose_model_target(args)
        try:
            diagnoses = [diagnose_model(
                target.model, target.inputs, target=target.name, theory=target.theory, method=args.method,
                probes=args.probes, memory_budget=int(args.memory_budget * 2**30), seed=args.seed,
            )]
        except RuntimeError as error:
            first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise CommandError(
                f"{target_text}: the Jacobian could not be computed ({type(error).__name__}: {first_line}); the "
                f"model must run under torch.func (jvp, vjp, vmap), e.g. without in-place ops on its inputs"
            ) from None
    elif target_text.endswith(".py"):
        raise CommandError(f"TARGET {target_text}: name the function that builds the model, as {target_text}:FUNCTION")
    elif Path(target_text).is_dir():
        diagnoses = diagnose_folder(target_text)
    else:
        raise CommandError(
            f"TARGET {target_text!r} is not a model name ({', '.join(MODELS)}), a FILE.py:FUNCTION or an existing "
            f"run folder; check the spelling or the path"
        )

    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")  # the CLI writes files only
        import matplotlib.pyplot as plt

        from .plots import plot_diagnosis

        # savefig appends .png to a path without a suffix; append it here so the printed path is the file.
        plot_path = args.plot if args.plot.suffix else args.plot.with_name(args.plot.name + ".png")
        figure = plot_diagnosis(diagnosis_frame(diagnoses))
        try:
            figure.savefig(plot_path, dpi=120)
        except (OSError, ValueError) as error:
            raise CommandError(f"--plot {args.plot}: cannot be written ({error}); choose a writable .png, .pdf or .svg path") from None
        finally:
            plt.close(figure)
    if args.json:
        print(json.dumps({"diagnoses": [to_dict(d) for d in diagnoses]}, indent=2))
    else:
        print("\n\n".join(format_report(d) for d in diagnoses))
        if args.plot is not None:
            print(f"wrote {plot_path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the exit status.

    0 success, 2 invalid input, 3 a training run diverged, 130 interrupted (Ctrl-C),
    141 stdout closed early (a pipe into ``head``; what a shell reports for a writer
    killed by SIGPIPE), 143 terminated (SIGTERM). A signal that reaches ``train`` after
    its status.json records completed exits 0 with a note, because the run is whole.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        status = args.handler(args)
        sys.stdout.flush()  # so that a closed pipe raises here, not at interpreter exit
        return status
    except BrokenPipeError:
        # The reader closed the pipe. Point stdout at /dev/null, so the flush at exit cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except (CommandError, ValueError, OSError) as error:  # OSError: unreadable files, a full disk, ...
        print(f"rezero-dynamics {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (KeyboardInterrupt, Terminated) as error:
        if _run_completed(args):
            name = "SIGINT" if isinstance(error, KeyboardInterrupt) else "SIGTERM"
            print(f"rezero-dynamics {args.command}: {name} arrived after the run completed; "
                  f"run folder {args.status_dir}", file=sys.stderr)
            return 0
        if isinstance(error, Terminated):
            print(f"rezero-dynamics {args.command}: terminated (SIGTERM); {args.interrupted_note}", file=sys.stderr)
            return EXIT_TERMINATED
        print(f"rezero-dynamics {args.command}: interrupted; {args.interrupted_note}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_completed(args: argparse.Namespace) -> bool:
    """Return whether the status.json of ``train`` records a completed run."""
    status_dir = getattr(args, "status_dir", None)
    try:
        return status_dir is not None and json.loads((status_dir / "status.json").read_text())["status"] == "completed"
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


if __name__ == "__main__":
    sys.exit(main())
