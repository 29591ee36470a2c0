"""Shared parts of the paper-figure scripts: arguments, output paths and the claims table.

"The paper" in this folder is Bachlechner, Majumder, Mao, Cottrell and McAuley, "ReZero
is All You Need: Fast Convergence at Large Depth", arXiv 2003.04887.

Every script in this folder is run as ``python paper_figures/<name>.py --scale
smoke|ci|paper [--out DIR] [--data-path P] [--device D]`` and writes ``<name>.png``,
``<name>.csv`` (the plotted numbers, tidy) and ``<name>.md`` (a table of claims) into
DIR, by default ``paper_figures/<name>/`` (``--out`` is required at the smoke scale, so
smoke numbers never replace the committed ci outputs). ``--device`` defaults to ``auto``
(``cuda`` when a GPU is visible, else ``cpu``).

Scales:

* ``smoke``: a size check for the test suite, seconds on a CPU. Its numbers mean nothing.
* ``ci``: the embedded data (``pydoc_data.topics`` text, scikit-learn digits), a few
  minutes per script on a 2-core CPU.
* ``paper``: enwik8 or CIFAR-10 from ``--data-path`` at the paper's sizes, meant for a GPU.

The claims table keeps one column per scale (``ours (ci)``, ``ours (paper)``). Writing
a table at one scale keeps the other scale's values of the same claims from the file
already in DIR, so a GPU run at ``paper`` scale fills its column next to the ``ci`` one.
Smoke values go into the ``ours (ci)`` column, with a line above the table saying so. Only
the settings lines of the scales whose values the table shows are kept.

Input errors (a missing or unreadable data set, an unavailable device, every run failed)
raise ``FigureError``; ``run_command_line`` prints them in one line and exits with 2.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

FIGURES_DIR = Path(__file__).resolve().parent
SCALE_NAMES: tuple[str, ...] = ("smoke", "ci", "paper")
CLAIM_COLUMNS: tuple[str, ...] = ("claim", "paper value", "ours (ci)", "ours (paper)", "effect holds")
SCALE_COLUMN = {"smoke": "ours (ci)", "ci": "ours (ci)", "paper": "ours (paper)"}
FIGURE_DPI = 100
NOT_CHECKED = "(paper value, not checked here)"

log = logging.getLogger(__name__)


class FigureError(Exception):
    """An input error to report in one line, without a traceback (exit status 2)."""


def parse_arguments(name: str, description: str, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the common command line of a figure script; ``out`` defaults to ``paper_figures/<name>/``.

    ``device`` is resolved as in the ``rezero-dynamics`` command line (``auto`` picks
    ``cuda`` when a GPU is visible). The output folder is created on the first write.
    """
    from rezero_dynamics.cli import CommandError, OneLineErrorParser, resolve_device

    parser = OneLineErrorParser(prog=f"{name}.py", description=description.strip().splitlines()[0])
    parser.add_argument("--scale", choices=SCALE_NAMES, default="ci", help="size of the runs (default: ci)")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output folder (default: paper_figures/{name}/; required at --scale smoke)")
    parser.add_argument("--data-path", default=None, help="enwik8 file or CIFAR-10 batch folder, for --scale paper")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default: auto)")
    args = parser.parse_args(argv)
    args.name = name
    if args.out is None:
        if args.scale == "smoke":
            parser.error(f"--scale smoke needs --out: smoke numbers must not replace the ci outputs in "
                         f"paper_figures/{name}/; pass a scratch folder such as --out /tmp/{name}")
        args.out = FIGURES_DIR / name
    try:
        args.device = resolve_device(args.device)
    except CommandError as error:
        parser.error(str(error))
    return args


def prepare_config(config, args: argparse.Namespace):
    """Return ``config`` on ``args.device`` with ``args.data_path`` and its task, its data loaded once.

    Raises FigureError when the scale needs ``--data-path`` and it is missing, or when the
    data cannot be loaded (the loader's message names the file and the fix).
    """
    from dataclasses import replace

    from rezero_dynamics.training.loop import build_task

    config = replace(config, device=args.device)
    if config.data in ("enwik8", "cifar10"):
        config = replace(config, data_path=require_data_path(args, "enwik8" if config.data == "enwik8" else "CIFAR-10"))
    try:
        task = build_task(config.validate())
    except (OSError, ValueError) as error:
        raise FigureError(f"cannot load data {config.data!r}: {error}") from None
    return config, task


def require_data_path(args: argparse.Namespace, what: str) -> str:
    """Return ``args.data_path``, or raise FigureError saying which data set to pass."""
    if not args.data_path:
        raise FigureError(f"--scale {args.scale} reads {what} from disk; pass its location with --data-path")
    return str(args.data_path)


def run_command_line(main: Callable[[], int], name: str) -> int:
    """Run a script's ``main``; print a FigureError as one line and return exit status 2."""
    try:
        return main()
    except FigureError as error:
        print(f"{name}.py: error: {error}", file=sys.stderr)
        return 2


def output_path(args: argparse.Namespace, suffix: str) -> Path:
    """Return ``DIR/<name><suffix>``, e.g. the figure path for suffix ``.png``; create DIR."""
    args.out.mkdir(parents=True, exist_ok=True)
    return args.out / f"{args.name}{suffix}"


def save_figure(figure, args: argparse.Namespace) -> Path:
    """Save ``figure`` as ``DIR/<name>.png`` at a small resolution and close it."""
    import matplotlib.pyplot as plt

    path = output_path(args, ".png")
    figure.savefig(path, dpi=FIGURE_DPI)
    plt.close(figure)
    return path


def save_frame(frame: pd.DataFrame, args: argparse.Namespace) -> Path:
    """Write the plotted numbers as ``DIR/<name>.csv`` (no index)."""
    path = output_path(args, ".csv")
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


@dataclass(frozen=True)
class Claim:
    """One row of the claims table, measured at one scale.

    ``holds`` is True or False when the run tests the qualitative effect, None when it
    cannot (say, no variant reached the target).
    """

    claim: str
    paper_value: str
    ours: str
    holds: bool | None


def format_holds(holds: bool | None) -> str:
    """Return ``yes``, ``no`` or ``not measured`` for a claim's verdict."""
    if holds is None:
        return "not measured"
    return "yes" if holds else "no"


def format_number(value: float, digits: int = 3) -> str:
    """Format a number with ``digits`` significant digits, or ``not reached`` for NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "not reached"
    return f"{value:.{digits}g}"


def format_speedup(ratio: float) -> str:
    """Format ``baseline_steps / steps - 1`` as a signed percentage (``+56%``)."""
    if math.isnan(ratio):
        return "not measured"
    return f"{ratio:+.0%}"


def _escape_cell(text: str) -> str:
    if "\n" in text:
        raise ValueError(f"table cell {text!r} contains a line break; put it on one line")
    return text.replace("|", "\\|")


def _split_row(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().removeprefix("|").removesuffix("|"))
    return [cell.strip().replace("\\|", "|") for cell in cells]


def read_claims(path: str | Path) -> pd.DataFrame:
    """Read the claims table of a figure's markdown file into a frame with ``CLAIM_COLUMNS``.

    Raises ValueError when the file has no table with exactly those columns.
    """
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    header = "| " + " | ".join(CLAIM_COLUMNS) + " |"
    if header not in lines:
        raise ValueError(f"{path} has no claims table with columns {', '.join(CLAIM_COLUMNS)}")
    start = lines.index(header) + 2  # skip the header and the separator row
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = _split_row(line)
        if len(cells) != len(CLAIM_COLUMNS):
            raise ValueError(f"{path}: table row {line!r} has {len(cells)} cells, expected {len(CLAIM_COLUMNS)}")
        rows.append(cells)
    return pd.DataFrame(rows, columns=list(CLAIM_COLUMNS))


def _parse_verdicts(text: str) -> dict[str, str]:
    verdicts = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        scale, _, verdict = part.partition(":")
        verdicts[scale.strip()] = verdict.strip()
    return verdicts


def write_claims(
    args: argparse.Namespace,
    title: str,
    claims: Sequence[Claim],
    *,
    settings: str,
    seconds: float,
    notes: Sequence[str] = (),
) -> Path:
    """Write ``DIR/<name>.md``: the settings of each scale run, the claims table and notes.

    Values of the other column are kept from an existing file in DIR, matched by claim
    text, as are the settings lines of the scales in that column.
    """
    path = output_path(args, ".md")
    column = SCALE_COLUMN[args.scale]
    other_column = "ours (paper)" if column == "ours (ci)" else "ours (ci)"
    kept_rows: dict[str, pd.Series] = {}
    kept_settings: list[str] = []
    if path.exists():
        try:
            kept_rows = {row["claim"]: row for _, row in read_claims(path).iterrows()}
        except ValueError as error:
            log.warning("not keeping values from %s: %s", path, error)
        for line in path.read_text(encoding="utf-8").splitlines():
            scale = line.removeprefix("- scale `").partition("`")[0] if line.startswith("- scale `") else None
            # Lines of scales that share this run's column describe values this run replaces.
            if scale in SCALE_COLUMN and SCALE_COLUMN[scale] != column:
                kept_settings.append(line)

    lines = [f"# {title}", ""]
    if args.scale == "smoke":
        lines += ["Scale smoke is a size check for the tests: the `ours (ci)` column holds smoke-scale values.", ""]
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    lines += ["Runs:", "", *kept_settings, f"- scale `{args.scale}` ({stamp}, {seconds:.0f} s): {settings}", ""]
    lines += ["| " + " | ".join(CLAIM_COLUMNS) + " |", "|" + " --- |" * len(CLAIM_COLUMNS)]
    for claim in claims:
        kept = kept_rows.get(claim.claim)
        verdicts = _parse_verdicts(kept["effect holds"]) if kept is not None else {}
        verdicts = {scale: verdict for scale, verdict in verdicts.items() if SCALE_COLUMN.get(scale) != column}
        verdicts[args.scale] = format_holds(claim.holds)
        cells = {
            "claim": claim.claim,
            "paper value": claim.paper_value,
            column: claim.ours,
            other_column: kept[other_column] if kept is not None else "",
            "effect holds": "; ".join(f"{scale}: {verdict}" for scale, verdict in verdicts.items()),
        }
        lines.append("| " + " | ".join(_escape_cell(cells[name]) for name in CLAIM_COLUMNS) + " |")
    if notes:
        lines += ["", "Notes:", "", *[f"- {note}" for note in notes]]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class Stopwatch:
    """Seconds since creation, for the run line of the claims table."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.started


@dataclass
class Comparison:
    """Runs table, tidy records and recorded spectra of a ``train_variants`` call."""

    runs: pd.DataFrame
    records: pd.DataFrame
    spectra: pd.DataFrame


def train_variants(base, *, variants: Sequence[str], depths: Sequence[int], target: float | None = None,
                   overrides: dict[str, dict] | None = None, seeds: Sequence[int] = (0,)) -> Comparison:
    """Train every variant x depth x seed with ``rezero_dynamics.studies.compare`` in a
    temporary folder and return its runs, records and spectra.

    ``variants`` may hold labels whose ``overrides`` name the variant, as in
    ``{"post_norm_warmup": {"variant": "post_norm", "warmup_steps": 100}}``; runs are
    named by the label. Checkpoints and run folders are deleted afterwards. Raises
    FigureError, naming the causes, when every run failed.
    """
    import tempfile

    from rezero_dynamics.studies import collect_records, collect_spectra, compare

    with tempfile.TemporaryDirectory(prefix="paper-figure-") as folder:
        runs = compare(base, folder, variants=variants, depths=depths, seeds=seeds, target=target, overrides=overrides)
        try:
            records = collect_records(folder)
        except FileNotFoundError:  # every run failed before its first record
            records = pd.DataFrame(columns=["run", "step", "quantity", "layer", "value"])
        spectra = collect_spectra(folder)
    if len(runs) and (runs["status"] == "failed").all():
        causes = sorted(set(runs["cause"].astype(str)))
        raise FigureError(f"every run failed ({len(runs)} runs): {'; '.join(causes)}")
    return Comparison(runs, records, spectra)
