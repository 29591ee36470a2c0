"""Run every paper-figure script at one scale and assemble ``paper_figures/README.md``.

Each script runs in its own Python process with the same ``--scale``, ``--data-path``
and ``--device``, one after another or ``--jobs`` at a time. A failing script is
reported and the others go on. Wall times go to ``timings.csv``, one row per script and
scale (replaced on rerun), with the CPU count and the load averages before and after,
so times measured on a shared machine can be distinguished from idle ones. The README
shows every figure and one table of all claims, read back from each script's
``<name>.md``.

    python paper_figures/run_all.py --scale ci
    python paper_figures/run_all.py --scale paper --data-path DATA --only transformer_convergence
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import CLAIM_COLUMNS, FIGURES_DIR, SCALE_NAMES, read_claims  # noqa: E402

# (script name, what it reproduces), in the order of the README.
SCRIPTS: tuple[tuple[str, str], ...] = (
    ("jacobian_spectra", "Jacobian singular values at initialisation and during training"),
    ("alpha_trajectories", "ReZero alphas over training"),
    ("transformer_convergence", "12-layer Transformers: steps to a target bits per character"),
    ("deep_mlp_convergence", "32-layer fully connected networks: steps to fit the training set"),
    ("resnet_convergence", "ResNets: epochs to a target accuracy"),
    ("deep_transformers", "Transformers of 100+ layers without warm-up or LayerNorm"),
    ("toy_model", "Scalar toy model x_L = (1 + alpha w)^L x_0"),
)
TIMINGS_FILE = "timings.csv"


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    names = [name for name, _ in SCRIPTS]
    parser = argparse.ArgumentParser(description="Run every paper-figure script and write paper_figures/README.md.")
    parser.add_argument("--scale", choices=SCALE_NAMES, default="ci", help="size of the runs (default: ci)")
    parser.add_argument("--data-path", default=None, help="enwik8 file or CIFAR-10 folder, for --scale paper")
    parser.add_argument("--device", default=None, help="torch device passed to every script")
    parser.add_argument("--only", default=None, help=f"comma-separated scripts to run (default: all of {', '.join(names)})")
    parser.add_argument("--jobs", type=int, default=1, help="scripts to run at the same time (default: 1)")
    parser.add_argument("--root", type=Path, default=None,
                        help="folder for the scripts' output folders and the README (default: paper_figures/; "
                             "required at --scale smoke)")
    args = parser.parse_args(argv)
    if args.root is None:
        if args.scale == "smoke":
            parser.error("--scale smoke needs --root: smoke numbers must not replace the committed ci figures "
                         "and README in paper_figures/; pass a scratch folder such as --root /tmp/paper_figures")
        args.root = FIGURES_DIR
    args.selected = names if args.only is None else [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(args.selected) - set(names))
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; choose from {', '.join(names)}")
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    return args


def report(text: str) -> None:
    """Print one line or block in a single write, so lines of parallel scripts do not mix."""
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def run_script(name: str, args: argparse.Namespace) -> dict:
    """Run one script in a subprocess and return its timing row."""
    command = [sys.executable, str(FIGURES_DIR / f"{name}.py"), "--scale", args.scale, "--out", str(args.root / name)]
    if args.data_path:
        command += ["--data-path", args.data_path]
    if args.device:
        command += ["--device", args.device]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    report(f"[run_all] {name} --scale {args.scale}")
    result = subprocess.run(command, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        report(result.stdout)
    seconds = time.perf_counter() - started
    report(f"[run_all] {name} finished with exit status {result.returncode} in {seconds:.0f} s")
    return {
        "script": name, "scale": args.scale, "seconds": round(seconds, 1), "exit_status": result.returncode, "jobs": args.jobs,
        "finished_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()), "cpus": os.cpu_count(),
        "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
    }


def update_timings(root: Path, rows: list[dict]) -> pd.DataFrame:
    """Replace the rows of the scripts just run in ``timings.csv`` and return the whole table."""
    path = root / TIMINGS_FILE
    new = pd.DataFrame(rows)
    if path.exists():
        old = pd.read_csv(path)
        keep = ~old.set_index(["script", "scale"]).index.isin(new.set_index(["script", "scale"]).index)
        new = pd.concat([old[keep], new], ignore_index=True)
    new.to_csv(path, index=False)
    return new


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|")


def render_readme(root: Path, timings: pd.DataFrame | None) -> str:
    """Return the README text: how to run, one table of all claims, then every figure."""
    lines = [
        "# Paper figures",
        "",
        "One script per figure or table of Bachlechner et al., \"ReZero is All You Need: Fast Convergence at",
        "Large Depth\" (arXiv 2003.04887), each writing `<name>/<name>.png`, `<name>.csv` (the plotted numbers,",
        "tidy) and `<name>.md` (its claims). Paper values that could not be checked against the paper are",
        "marked \"(paper value, not checked here)\".",
        "",
        "```bash",
        "python paper_figures/run_all.py --scale ci                        # every script, embedded data, CPU",
        "python paper_figures/toy_model.py --scale ci --out /tmp/toy       # one script",
        "python paper_figures/run_all.py --scale paper --data-path DATA    # enwik8 or CIFAR-10, meant for a GPU",
        "```",
        "",
        "Scales: `smoke` is a size check for the tests (seconds) and writes only where `--out` or `--root`",
        "points, never here; `ci` uses the embedded text",
        "(`pydoc_data.topics`) and scikit-learn's digits at sizes that run in minutes on a 2-core CPU; `paper`",
        "uses enwik8 or CIFAR-10 from `--data-path` at the paper's model sizes and is meant for a GPU. The",
        "`ours (paper)` column stays blank until a script has run at that scale. Each `<name>.md` gives the",
        "exact settings of each run.",
        "",
        "## Claims",
        "",
        "| " + " | ".join(CLAIM_COLUMNS) + " |",
        "|" + " --- |" * len(CLAIM_COLUMNS),
    ]
    missing = []
    for name, _ in SCRIPTS:
        table_path = root / name / f"{name}.md"
        if not table_path.exists():
            missing.append(name)
            continue
        for _, row in read_claims(table_path).iterrows():
            cells = [f"[{name}]({name}/{name}.md): {row['claim']}", *(row[c] for c in CLAIM_COLUMNS[1:])]
            lines.append("| " + " | ".join(_escape(cell) for cell in cells) + " |")
    lines.append("")
    if missing:
        lines += [f"Not run yet: {', '.join(missing)}.", ""]
    if timings is not None and len(timings):
        lines += [
            "## Run times",
            "",
            "Wall time of each script, from `timings.csv`. The load average (1 minute) before and after shows",
            "whether other processes shared the machine: above the CPU count, the times are inflated. Scripts",
            "run with `--jobs 2` also share the machine with each other.",
            "",
            "| script | scale | seconds | exit status | jobs | CPUs | load before | load after | finished (UTC) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for _, row in timings.sort_values(["scale", "script"]).iterrows():
            lines.append(
                f"| {row['script']} | {row['scale']} | {row['seconds']:.0f} | {row['exit_status']} | {row['jobs']} | {row['cpus']} | "
                f"{row['load_1min_before']} | {row['load_1min_after']} | {row['finished_utc']} |"
            )
        lines.append("")
    lines += ["## Figures", ""]
    for name, title in SCRIPTS:
        image = root / name / f"{name}.png"
        if not image.exists():
            continue
        lines += [
            f"### {title}",
            "",
            f"`python paper_figures/{name}.py`; claims in [{name}.md]({name}/{name}.md), numbers in "
            f"[{name}.csv]({name}/{name}.csv).",
            "",
            f"![{name}]({name}/{name}.png)",
            "",
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_arguments(argv)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(lambda name: run_script(name, args), args.selected))
    timings = update_timings(args.root, rows)
    (args.root / "README.md").write_text(render_readme(args.root, timings), encoding="utf-8")
    failed = [row["script"] for row in rows if row["exit_status"] != 0]
    if failed:
        print(f"[run_all] failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
