"""Command-line interface: argument parsing only; the work is done in ``studies``.

``rezero-dynamics spectrum`` computes exact input-output Jacobian spectra of residual
variants at several depths and writes a figure and tables to an output folder. The
folder appears only when everything succeeded: results are written to a temporary
folder beside it and renamed at the end.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from .residual import VARIANTS
from .studies import (
    DTYPES,
    INPUT_KINDS,
    MODELS,
    SpectrumConfig,
    config_as_dict,
    spectrum_study,
    summarise_by_group,
)
from .models import ACTIVATIONS, WEIGHT_INITS
from .spectra import JACOBIAN_MODES

log = logging.getLogger("rezero_dynamics")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class CommandError(Exception):
    """An error to report to the user in one line, without a traceback."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
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
        if choices is not None:
            unknown = [p for p in parts if p not in choices]
            if unknown:
                raise argparse.ArgumentTypeError(
                    f"unknown value(s) {', '.join(map(repr, unknown))}; choose from {', '.join(choices)}"
                )
        return tuple(item(p) for p in parts)

    return parse


def resolve_device(name: str) -> str:
    """Map ``auto`` to ``cuda`` when a GPU is visible, else ``cpu``; check CUDA devices exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise CommandError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise CommandError(
                f"--device {name}: no such GPU; this machine has {torch.cuda.device_count()} (cuda:0 ...)"
            )
        return name
    raise CommandError(f"--device {name}: invalid device; use auto, cpu, cuda or cuda:K")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rezero-dynamics",
        description="Signal propagation in deep residual networks: ReZero against its alternatives.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

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
        "--variants", type=_comma_list(str, VARIANTS), default=default.variants,
        help=f"comma-separated residual variants from: {', '.join(VARIANTS)}",
    )
    spectrum.add_argument(
        "--depths", type=_comma_list(_positive_int), default=default.depths,
        help="comma-separated numbers of blocks",
    )
    spectrum.add_argument("--width", type=_positive_int, default=default.width, help="d_model (Transformer) or hidden width (MLP)")
    spectrum.add_argument("--heads", type=_positive_int, default=default.heads, help="attention heads (Transformer)")
    spectrum.add_argument("--d-ff", type=_positive_int, default=None, help="feed-forward width (Transformer); default 4 * width")
    spectrum.add_argument("--seq-len", type=_positive_int, default=default.seq_len, help="tokens per input (Transformer)")
    spectrum.add_argument("--num-inputs", type=_positive_int, default=default.num_inputs, help="input samples; one Jacobian each")
    spectrum.add_argument(
        "--inputs", choices=INPUT_KINDS, default=default.inputs,
        help="text: embedded windows of the pydoc_data.topics corpus that ships with Python; gaussian: N(0, 1)",
    )
    spectrum.add_argument("--alpha-init", type=_finite_float, default=default.alpha_init, help="initial alpha of rezero blocks")
    spectrum.add_argument("--activation", choices=ACTIVATIONS, default=default.activation, help="activation (MLP)")
    spectrum.add_argument("--init", choices=WEIGHT_INITS, default=default.init, help="weight init (MLP)")
    spectrum.add_argument("--sigma-w", type=_finite_float, default=default.sigma_w, help="weight scale sigma_w (MLP)")
    spectrum.add_argument("--seed", type=int, default=default.seed, help="seed of inputs and initialisation")
    spectrum.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    spectrum.add_argument("--dtype", choices=tuple(DTYPES), default=default.dtype, help="precision of the Jacobian and SVD")
    spectrum.add_argument("--method", dest="mode", choices=JACOBIAN_MODES, default=default.mode, help="Jacobian mode: forward (JVP) or reverse (VJP)")
    spectrum.add_argument(
        "--memory-budget", type=_positive_float, default=default.memory_budget / 2**30,
        help="memory for one Jacobian and its SVD, in GiB",
    )
    spectrum.add_argument(
        "--output-dir", type=Path, default=None,
        help="folder for the results; default runs/spectrum-YYYYmmdd-HHMMSS",
    )
    spectrum.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    spectrum.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    spectrum.set_defaults(handler=run_spectrum)
    return parser


def _prepare_output(output_dir: Path, overwrite: bool) -> Path:
    """Check that ``output_dir`` can be written and return a fresh temporary folder beside it."""
    if output_dir.exists() and not output_dir.is_dir():
        raise CommandError(f"--output-dir {output_dir}: exists and is not a folder; choose another path")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise CommandError(
            f"--output-dir {output_dir}: folder exists and is not empty; pass --overwrite or choose another path"
        )
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    except OSError as error:
        raise CommandError(
            f"--output-dir {output_dir}: cannot be written ({error.strerror or error}); choose a writable path"
        ) from None


def _publish(staging: Path, output_dir: Path) -> None:
    """Move the finished ``staging`` folder to ``output_dir``, replacing an old one."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    os.replace(staging, output_dir)


def run_spectrum(args: argparse.Namespace) -> int:
    import matplotlib

    # The CLI writes files only; library plot functions never switch the backend.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import plot_log10_singular_value_histograms

    config = SpectrumConfig(
        model=args.model, variants=args.variants, depths=args.depths, width=args.width,
        heads=args.heads, d_ff=args.d_ff, seq_len=args.seq_len, num_inputs=args.num_inputs,
        inputs=args.inputs, alpha_init=args.alpha_init, activation=args.activation,
        init=args.init, sigma_w=args.sigma_w, seed=args.seed, device=resolve_device(args.device),
        dtype=args.dtype, mode=args.mode, memory_budget=int(args.memory_budget * 2**30),
    )
    try:
        config.validate()
    except ValueError as error:
        raise CommandError(str(error)) from None

    output_dir = args.output_dir or Path("runs") / time.strftime("spectrum-%Y%m%d-%H%M%S")
    staging = _prepare_output(output_dir, args.overwrite)
    try:
        started = time.perf_counter()
        values, summary = spectrum_study(config, progress=not args.no_progress)
        figure = plot_log10_singular_value_histograms(values)
        figure.suptitle(f"{config.model} input-output Jacobian at init, {config.inputs} inputs")
        figure.savefig(staging / "log10_singular_values.png", dpi=120)
        plt.close(figure)
        values.to_csv(staging / "singular_values.csv", index=False)
        summary.to_csv(staging / "summary.csv", index=False)
        elapsed = time.perf_counter() - started
        (staging / "config.json").write_text(
            json.dumps({**config_as_dict(config), "seconds": round(elapsed, 1), "torch": torch.__version__}, indent=2)
        )
        _publish(staging, output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    table = summarise_by_group(summary, values)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    print(f"wrote {output_dir} in {elapsed:.0f} s")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except (CommandError, ValueError) as error:
        print(f"rezero-dynamics {args.command}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"rezero-dynamics {args.command}: interrupted; no results were written", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
