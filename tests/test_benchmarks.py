"""The benchmark scripts run end to end at tiny sizes on CPU."""

import math
import re
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_benchmark_smoke():
    finished = subprocess.run([sys.executable, str(BENCHMARKS / "gpu.py"), "--smoke"], capture_output=True,
                              text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = finished.stdout.splitlines()
    for section in ("1. exact Jacobian", "2. matrix-free top-4", "3. tracking overhead", "4. training throughput"):
        assert any(line.startswith(section) for line in lines), section
    assert "converged True" in finished.stdout
    overhead = re.search(r"ratio (\S+) \(median", finished.stdout)
    assert overhead is not None
    assert 0 < float(overhead.group(1)) < math.inf
    for variant in ("post_norm", "pre_norm", "rezero"):
        row = next(line for line in lines if line.strip().startswith(variant))
        ratios = [float(value) for value in re.findall(r"= ([0-9.]+)", row)]
        assert len(ratios) == 2, row  # eager and compiled
        assert all(ratio > 0 for ratio in ratios), row


def test_matrix_free_benchmark_smoke():
    """Part 2 of the spectra benchmark at a tiny width: both paths agree to rounding."""
    finished = subprocess.run([sys.executable, str(BENCHMARKS / "spectra_scaling.py"), "--part", "2", "--sizes", "64"],
                              capture_output=True, text=True, timeout=300, cwd=BENCHMARKS.parent)
    assert finished.returncode == 0, finished.stderr
    row = finished.stdout.strip().splitlines()[-1].split()
    assert row[0] == "64"
    assert float(row[-1]) < 1e-10  # largest relative error of the top 16 values
