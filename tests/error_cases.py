"""The bad inputs of docs/errors.md: each case builds one and returns the message it gets.

``python tests/error_cases.py`` rewrites docs/errors.md from these cases;
tests/test_error_catalogue.py checks every row of that file against them. A case runs
in a fresh folder ``folder``, which reads ``<tmp>`` in the catalogue. Parts of a message
that come from other libraries (a case's ``masks``) read ``…``.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import torch
from torch import nn

CATALOGUE = Path(__file__).resolve().parent.parent / "docs" / "errors.md"
MARKER = "code-ran.txt"


@dataclass(frozen=True)
class Case:
    id: str
    section: str
    bad_input: str
    run: Callable[[Path], str]
    masks: tuple[str, ...] = ()  # regexes; each match of group 1 becomes "…"
    needs_non_root: bool = False


CASES: list[Case] = []


def case(id: str, section: str, bad_input: str, masks: tuple[str, ...] = (), needs_non_root: bool = False):
    def register(run: Callable[[Path], str]) -> Callable[[Path], str]:
        CASES.append(Case(id, section, bad_input, run, masks, needs_non_root))
        return run

    return register


def cli_error(argv: list[str]) -> str:
    """Run the command line in-process; return its error output, which must come with status 2."""
    from rezero_dynamics.cli import main

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            status = main(argv)
        except SystemExit as exit_:
            status = exit_.code
    if status != 2:
        raise AssertionError(f"{argv} ended with status {status}, not 2: {stderr.getvalue()}")
    return stderr.getvalue().strip()


def error_of(action: Callable[[], object], expected: type[BaseException] = ValueError) -> str:
    """Call ``action`` and return the message of the ``expected`` exception it raises."""
    try:
        action()
    except expected as error:
        return str(error)
    raise AssertionError(f"{action} raised no {expected.__name__}")


TRAIN_TINY = ["--depth", "1", "--d-model", "8", "--heads", "2", "--seq-len", "8", "--batch-size", "2",
              "--steps", "1", "--eval-every", "0", "--eval-batches", "1", "--no-progress"]
CLI = "Command-line arguments"
CONFIG = "Configuration values"
DATA = "Data files"
CHECKPOINTS = "Checkpoints"
OUTPUT = "Output folders"
MODELS = "Models"
NUMERICS = "Non-finite values and numerical failures"


# -- command-line arguments --------------------------------------------------------------

@case("cli-no-command", CLI, "no command")
def _(folder):
    return cli_error([])


@case("cli-unknown-option", CLI, "`train --stepz 3`")
def _(folder):
    return cli_error(["train", "--stepz", "3"])


@case("cli-missing-value", CLI, "`train --steps` with no value")
def _(folder):
    return cli_error(["train", "--steps"])


@case("cli-unknown-variant", CLI, "`spectrum --variants rezero,postnorm`")
def _(folder):
    return cli_error(["spectrum", "--variants", "rezero,postnorm"])


@case("cli-depth-zero", CLI, "`spectrum --depths 0`")
def _(folder):
    return cli_error(["spectrum", "--depths", "0"])


@case("cli-depth-not-integer", CLI, "`spectrum --depths 4,x`")
def _(folder):
    return cli_error(["spectrum", "--depths", "4,x"])


@case("cli-depth-repeated", CLI, "`spectrum --depths 4,4`")
def _(folder):
    return cli_error(["spectrum", "--depths", "4,4"])


@case("cli-empty-list", CLI, "`compare --seeds ,`")
def _(folder):
    return cli_error(["compare", "--seeds", ","])


@case("cli-alpha-not-finite", CLI, "`spectrum --alpha-init nan`")
def _(folder):
    return cli_error(["spectrum", "--alpha-init", "nan"])


@case("cli-sigma-negative", CLI, "`spectrum --sigma-w -1`")
def _(folder):
    return cli_error(["spectrum", "--sigma-w", "-1"])


@case("cli-memory-budget-overflow", CLI, "`spectrum --memory-budget 1e308`")
def _(folder):
    return cli_error(["spectrum", "--memory-budget", "1e308"])


@case("cli-diagnose-memory-budget-overflow", CLI, "`diagnose mlp --memory-budget 1e308`")
def _(folder):
    return cli_error(["diagnose", "mlp", "--memory-budget", "1e308"])


@case("cli-invalid-choice", CLI, "`spectrum --model cnn`")
def _(folder):
    return cli_error(["spectrum", "--model", "cnn"])


@case("cli-invalid-device", CLI, "`train --device tpu`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--device", "tpu"])


@case("cli-lr-not-finite", CLI, "`train --lr nan`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--lr", "nan"])


@case("cli-seed-not-integer", CLI, "`train --seed 1.5`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--seed", "1.5"])


@case("cli-resume-without-folder", CLI, "`train --resume` without `--output-dir`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--resume"])


@case("cli-resume-no-run", CLI, "`train --resume` on a folder with no run")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--resume", "--output-dir", str(folder / "none")])


@case("cli-compare-resume-no-runs", CLI, "`compare --resume` on a folder with no runs")
def _(folder):
    return cli_error(["compare", *TRAIN_TINY, "--resume", "--output-dir", str(folder / "none")])


@case("cli-plot-not-folder", CLI, "`plot` of a path that does not exist")
def _(folder):
    return cli_error(["plot", str(folder / "missing")])


@case("cli-plot-no-records", CLI, "`plot` of a folder without records")
def _(folder):
    return cli_error(["plot", str(folder)])


@case("cli-seed-out-of-range", CLI, "`spectrum --seed 99999999999999999999`")
def _(folder):
    return cli_error(["spectrum", "--seed", "99999999999999999999"])


@case("cli-seeds-negative", CLI, "`compare --seeds 0,-1`")
def _(folder):
    return cli_error(["compare", "--seeds", "0,-1"])


@case("cli-depth-too-large", CLI, "`spectrum --depths 4,999999999999999999999`",
      masks=(r"more than the (.*) GiB of memory",))
def _(folder):
    return cli_error(["spectrum", "--depths", "4,999999999999999999999"])


@case("cli-compare-depth-too-large", CLI, "`compare --depths 4,99999999999999`",
      masks=(r"more than the (.*) GiB of memory",))
def _(folder):
    return cli_error(["compare", *TRAIN_TINY, "--depths", "4,99999999999999", "--output-dir", str(folder / "out")])


@case("cli-plot-bad-value", CLI, "`plot` of a run whose records.csv has the value `abc`")
def _(folder):
    (folder / "records.csv").write_text("run,step,quantity,layer,value\nref,0,grad_norm,1,abc\n")
    return cli_error(["plot", str(folder)])


@case("cli-diagnose-bad-step", CLI, "`diagnose` of a run whose records.csv has the step `x`")
def _(folder):
    (folder / "records.csv").write_text("run,step,quantity,layer,value\nref,x,grad_norm,1,1.0\n")
    return cli_error(["diagnose", str(folder)])


@case("cli-plot-binary-records", CLI, "`plot` of a run whose records.csv is random bytes")
def _(folder):
    (folder / "records.csv").write_bytes(bytes([0xA8, 0x13, 0xFF, 0x00, 0x42]) * 8)
    return cli_error(["plot", str(folder)])


@case("cli-plot-figures-is-file", CLI, "`plot` of a run whose `figures` is a file")
def _(folder):
    (folder / "records.csv").write_text("run,step,quantity,layer,value\nref,0,grad_norm,1,1.0\n")
    (folder / "figures").write_text("not a folder")
    return cli_error(["plot", str(folder)])


@case("cli-output-dir-empty", CLI, "`train --output-dir ''`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--output-dir", ""])


@case("cli-data-path-unused", CLI, "`train --data default --data-path enwik8`")
def _(folder):
    return cli_error(["train", *TRAIN_TINY, "--data", "default", "--data-path", "enwik8"])


# -- configuration values ------------------------------------------------------------------

def _train_config(**settings):
    from rezero_dynamics.training import TrainConfig

    return error_of(lambda: TrainConfig(**settings).validate())


def _spectrum_config(**settings):
    from rezero_dynamics.studies import SpectrumConfig

    return error_of(lambda: SpectrumConfig(**settings).validate())


@case("config-unknown-task", CONFIG, "`TrainConfig(task='vision')`")
def _(folder):
    return _train_config(task="vision")


@case("config-data-task-mismatch", CONFIG, "`TrainConfig(task='classifier', data='default')`")
def _(folder):
    return _train_config(task="classifier", data="default")


@case("config-data-path-missing", CONFIG, "`TrainConfig(data='enwik8')` without `data_path`")
def _(folder):
    return _train_config(data="enwik8")


@case("config-unknown-variant", CONFIG, "`TrainConfig(variant='prenorm')`")
def _(folder):
    return _train_config(variant="prenorm")


@case("config-depth-zero", CONFIG, "`TrainConfig(depth=0)`")
def _(folder):
    return _train_config(depth=0)


@case("config-negative-interval", CONFIG, "`TrainConfig(eval_every=-5)`")
def _(folder):
    return _train_config(eval_every=-5)


@case("config-unknown-optimizer", CONFIG, "`TrainConfig(optimizer='lion')`")
def _(folder):
    return _train_config(optimizer="lion")


@case("config-lr-nan", CONFIG, "`TrainConfig(lr=nan)`")
def _(folder):
    return _train_config(lr=float("nan"))


@case("config-clip-negative", CONFIG, "`TrainConfig(clip_norm=-1)`")
def _(folder):
    return _train_config(clip_norm=-1.0)


@case("config-weight-decay-negative", CONFIG, "`TrainConfig(weight_decay=-1.0).validate()`")
def _(folder):
    return _train_config(weight_decay=-1.0)


@case("config-seed-negative", CONFIG, "`TrainConfig(seed=-1).validate()`")
def _(folder):
    return _train_config(seed=-1)


@case("config-spectrum-seed-too-large", CONFIG, "`SpectrumConfig(seed=2**63).validate()`")
def _(folder):
    return _spectrum_config(seed=2**63)


@case("config-depth-too-large", CONFIG, "`TrainConfig(depth=10**15).validate()`", masks=(r"more than the (.*) GiB of memory",))
def _(folder):
    return _train_config(depth=10**15)


@case("config-dropout-one", CONFIG, "`TrainConfig(dropout=1.0)`")
def _(folder):
    return _train_config(dropout=1.0)


@case("config-spectrum-tokens", CONFIG, "`TrainConfig(seq_len=16, spectrum_every=1, spectrum_tokens=100)`")
def _(folder):
    return _train_config(seq_len=16, spectrum_every=1, spectrum_tokens=100)


@case("config-width-heads", CONFIG, "`SpectrumConfig(width=10, heads=4)`")
def _(folder):
    return _spectrum_config(width=10, heads=4)


@case("config-no-depths", CONFIG, "`SpectrumConfig(depths=())`")
def _(folder):
    return _spectrum_config(depths=())


@case("config-k-too-large", CONFIG, "`SpectrumConfig(method='lanczos', k=100000)`")
def _(folder):
    return _spectrum_config(method="lanczos", k=100_000)


@case("config-theory-not-covered", CONFIG, "`spectrum --theory` for a Transformer")
def _(folder):
    return cli_error(["spectrum", "--theory", "--output-dir", str(folder / "out")])


@case("config-resume-other-settings", CONFIG, "`train(..., resume=True)` with another learning rate")
def _(folder):
    from rezero_dynamics.data import CharCorpus
    from rezero_dynamics.training import TrainConfig, train

    corpus = CharCorpus.from_text("abcdefgh" * 200)
    tiny = dict(depth=1, d_model=8, heads=2, seq_len=8, batch_size=2, steps=1, eval_every=0, eval_batches=1)
    train(TrainConfig(**tiny), folder / "run", corpus=corpus)
    return error_of(lambda: train(TrainConfig(lr=0.5, **tiny), folder / "run", corpus=corpus, resume=True))


# -- data files ------------------------------------------------------------------------------

def _enwik8(path: Path) -> str:
    from rezero_dynamics.data import load_enwik8

    return error_of(lambda: load_enwik8(path), (ValueError, FileNotFoundError))


@case("data-enwik8-missing", DATA, "enwik8 path that does not exist")
def _(folder):
    return _enwik8(folder / "enwik8")


@case("data-enwik8-empty", DATA, "empty enwik8 file")
def _(folder):
    (folder / "enwik8").write_bytes(b"")
    return _enwik8(folder / "enwik8")


@case("data-enwik8-truncated", DATA, "enwik8 cut to 1,000 bytes")
def _(folder):
    (folder / "enwik8").write_bytes(b"<mediawiki>" + b"x" * 989)
    return _enwik8(folder / "enwik8")


@case("data-enwik8-zip", DATA, "enwik8.zip, not unzipped")
def _(folder):
    (folder / "enwik8.zip").write_bytes(b"PK\x03\x04" + b"\x00" * 100)
    return _enwik8(folder / "enwik8.zip")


def _cifar(folder: Path) -> str:
    from rezero_dynamics.data import load_cifar10

    return error_of(lambda: load_cifar10(folder), (ValueError, FileNotFoundError))


def _cifar_folder(folder: Path, first_batch: bytes | None) -> Path:
    """A CIFAR-10 folder with valid small batches, the first one replaced by ``first_batch``."""
    from rezero_dynamics.data.images import CIFAR10_BATCHES, CIFAR10_TEST

    batches = folder / "cifar-10-batches-py"
    batches.mkdir()
    valid = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    for name in (*CIFAR10_BATCHES, CIFAR10_TEST):
        (batches / name).write_bytes(valid)
    if first_batch is not None:
        (batches / CIFAR10_BATCHES[0]).write_bytes(first_batch)
    return batches


@case("data-cifar-folder-missing", DATA, "CIFAR-10 folder that does not exist")
def _(folder):
    return _cifar(folder / "cifar-10-batches-py")


@case("data-cifar-batch-missing", DATA, "CIFAR-10 folder without `data_batch_3`")
def _(folder):
    batches = _cifar_folder(folder, None)
    (batches / "data_batch_3").unlink()
    return _cifar(batches)


@case("data-cifar-truncated", DATA, "CIFAR-10 batch cut in half")
def _(folder):
    whole = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]}, protocol=2)
    return _cifar(_cifar_folder(folder, whole[: len(whole) // 2]))


@case("data-cifar-random-bytes", DATA, "CIFAR-10 batch of random bytes")
def _(folder):
    return _cifar(_cifar_folder(folder, b"\x80\x02}q\x00" + bytes(range(200, 256))))


@case("data-cifar-float-pixels", DATA, "CIFAR-10 batch with float pixels")
def _(folder):
    batch = {b"data": np.zeros((4, 3072), np.float32), b"labels": [0, 1, 2, 3]}
    return _cifar(_cifar_folder(folder, pickle.dumps(batch, protocol=2)))


@case("data-cifar-labels-range", DATA, "CIFAR-10 batch with label 12")
def _(folder):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}
    return _cifar(_cifar_folder(folder, pickle.dumps(batch, protocol=2)))


@case("data-cifar-string-labels", DATA, "CIFAR-10 batch with label `'a'`")
def _(folder):
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, "a"]}
    return _cifar(_cifar_folder(folder, pickle.dumps(batch, protocol=2)))


@case("data-cifar-no-images", DATA, "CIFAR-10 folder whose batches hold 0 images")
def _(folder):
    batches = _cifar_folder(folder, None)
    empty = pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2)
    for path in batches.iterdir():
        path.write_bytes(empty)
    return _cifar(batches)


@case("data-cifar-too-few-images", DATA, "CIFAR-10 folder of 20 training images, 5000 for validation")
def _(folder):
    return _cifar(_cifar_folder(folder, None))


@case("data-cifar-batch-file", DATA, "CIFAR-10 batch file `data_batch_1` passed instead of its folder")
def _(folder):
    return _cifar(_cifar_folder(folder, None) / "data_batch_1")


class _WritesMarker:
    """Unpickling this object would run ``exec`` and create the marker file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (exec, (f"open({str(self.path)!r}, 'w').close()",))


@case("data-cifar-runs-code", DATA, "CIFAR-10 batch whose unpickling would run code")
def _(folder):
    marker = folder / MARKER
    message = _cifar(_cifar_folder(folder, pickle.dumps({b"data": _WritesMarker(marker)}, protocol=2)))
    if marker.exists():
        raise AssertionError("unpickling the CIFAR-10 batch ran code")
    return message


@case("data-text-empty", DATA, "`CharCorpus.from_text('')`")
def _(folder):
    from rezero_dynamics.data import CharCorpus

    return error_of(lambda: CharCorpus.from_text(""))


@case("data-text-shorter-than-window", DATA, "a 5-token text for windows of 10")
def _(folder):
    from rezero_dynamics.data import text_windows

    return error_of(lambda: text_windows(torch.arange(5), 1, 10))


@case("data-text-unknown-character", DATA, "text with a character outside the vocabulary")
def _(folder):
    from rezero_dynamics.data import CharVocabulary

    return error_of(lambda: CharVocabulary.from_text("abc").encode("abz"))


# -- checkpoints --------------------------------------------------------------------------------

def _checkpoint(path: Path) -> str:
    from rezero_dynamics.training import CheckpointError, load_checkpoint

    return error_of(lambda: load_checkpoint(path), CheckpointError)


@case("checkpoint-missing", CHECKPOINTS, "checkpoint path that does not exist")
def _(folder):
    return _checkpoint(folder / "checkpoint.pt")


@case("checkpoint-truncated", CHECKPOINTS, "checkpoint cut to 300 bytes",
      masks=(r"truncated \((.*)\); resume",))
def _(folder):
    path = folder / "checkpoint.pt"
    torch.save({"format": "rezero_dynamics.checkpoint.v1", "step": 1, "x": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    return _checkpoint(path)


@case("checkpoint-plain-state-dict", CHECKPOINTS, "a plain `state_dict` saved with `torch.save`")
def _(folder):
    torch.save(nn.Linear(2, 2).state_dict(), folder / "checkpoint.pt")
    return _checkpoint(folder / "checkpoint.pt")


@case("checkpoint-numpy-file", CHECKPOINTS, "another tool's file (NumPy `.npy`) named checkpoint.pt",
      masks=(r"torch.save \((.*)\); pass",))
def _(folder):
    with open(folder / "checkpoint.pt", "wb") as handle:
        np.save(handle, np.zeros(3))
    return _checkpoint(folder / "checkpoint.pt")


@case("checkpoint-text-file", CHECKPOINTS, "a text file named checkpoint.pt",
      masks=(r"truncated \((.*)\); resume",))
def _(folder):
    (folder / "checkpoint.pt").write_text("hello\n")
    return _checkpoint(folder / "checkpoint.pt")


@case("checkpoint-runs-code", CHECKPOINTS, "checkpoint whose unpickling would run code",
      masks=(r"torch.save \((.*)\); pass",))
def _(folder):
    marker = folder / MARKER
    torch.save({"format": "rezero_dynamics.checkpoint.v1", "payload": _WritesMarker(marker)}, folder / "checkpoint.pt")
    message = _checkpoint(folder / "checkpoint.pt")
    if marker.exists():
        raise AssertionError("loading the checkpoint ran code")
    return message


# -- output folders ---------------------------------------------------------------------------

@case("output-not-empty", OUTPUT, "`train --output-dir` of a folder with files")
def _(folder):
    (folder / "notes.txt").write_text("keep")
    return cli_error(["train", *TRAIN_TINY, "--output-dir", str(folder)])


@case("output-parent-is-file", OUTPUT, "`train --output-dir` below a file")
def _(folder):
    (folder / "file.txt").write_text("not a folder")
    return cli_error(["train", *TRAIN_TINY, "--output-dir", str(folder / "file.txt" / "run")])


# These two run in ``folder`` as the working folder (see ``run_case``) and name the
# read-only folder by a relative path.

@case("output-read-only", OUTPUT, "`train --output-dir` in a read-only folder", needs_non_root=True)
def _(folder):
    locked = Path("locked")
    locked.mkdir()
    locked.chmod(0o500)
    try:
        return cli_error(["train", *TRAIN_TINY, "--output-dir", str(locked / "run")])
    finally:
        locked.chmod(0o700)


@case("output-spectrum-read-only", OUTPUT, "`spectrum --output-dir` in a read-only folder", needs_non_root=True)
def _(folder):
    locked = Path("locked")
    locked.mkdir()
    locked.chmod(0o500)
    try:
        return cli_error(["spectrum", "--output-dir", str(locked / "run")])
    finally:
        locked.chmod(0o700)


@case("output-working-folder", OUTPUT, "`spectrum --output-dir . --overwrite`")
def _(folder):
    return cli_error(["spectrum", "--output-dir", ".", "--overwrite"])


@case("output-foreign-files", OUTPUT, "`spectrum --overwrite` of a folder with other files")
def _(folder):
    (folder / "result").mkdir()
    (folder / "result" / "keep.csv").write_text("1")
    return cli_error(["spectrum", "--output-dir", "result", "--overwrite"])


# -- models ------------------------------------------------------------------------------------

@case("model-tracker-no-blocks", MODELS, "`Tracker(nn.Linear(2, 2))`")
def _(folder):
    from rezero_dynamics.tracking import Tracker

    return error_of(lambda: Tracker(nn.Linear(2, 2)))


@case("model-tracker-empty-blocks", MODELS, "`Tracker(model, blocks=[])`")
def _(folder):
    from rezero_dynamics.tracking import Tracker

    return error_of(lambda: Tracker(nn.Linear(2, 2), blocks=[]))


@case("model-tracker-no-parameters", MODELS, "`Tracker` of a model whose blocks have no parameters")
def _(folder):
    from rezero_dynamics.tracking import Tracker

    model = nn.Module()
    model.blocks = nn.ModuleList([nn.Identity(), nn.ReLU()])
    return error_of(lambda: Tracker(model))


@case("model-depth-profile-no-blocks", MODELS, "`depth_profile(nn.Sequential(), x)`")
def _(folder):
    from rezero_dynamics.spectra.depth_profile import depth_profile

    return error_of(lambda: depth_profile(nn.Sequential(), torch.zeros(1, 4)))


@case("model-depth-profile-not-a-stack", MODELS, "`depth_profile(nn.Linear(4, 4), x)`")
def _(folder):
    from rezero_dynamics.spectra.depth_profile import depth_profile

    return error_of(lambda: depth_profile(nn.Linear(4, 4), torch.zeros(1, 4)))


@case("model-integer-inputs", MODELS, "`jacobian_spectrum` of token ids")
def _(folder):
    from rezero_dynamics.spectra import jacobian_spectrum

    return error_of(lambda: jacobian_spectrum(nn.Embedding(5, 4), torch.zeros(1, 3, dtype=torch.long)))


@case("model-batch-norm-training", MODELS, "`jacobian_spectrum(..., module_mode='train')` with BatchNorm")
def _(folder):
    from rezero_dynamics.spectra import jacobian_spectrum

    return error_of(lambda: jacobian_spectrum(nn.BatchNorm1d(3), torch.randn(2, 3), module_mode="train"))


@case("model-jacobian-too-large", MODELS, "a 4096 x 4096 Jacobian with a 1 MiB budget")
def _(folder):
    from rezero_dynamics.spectra import JacobianTooLargeError, jacobian_spectrum

    return error_of(lambda: jacobian_spectrum(nn.Linear(4096, 4096), torch.zeros(1, 4096), memory_budget=2**20),
                    JacobianTooLargeError)


# -- non-finite values and numerical failures ---------------------------------------------------

@case("nonfinite-probe-input", NUMERICS, "NaN in the probe inputs of `jacobian_spectrum`")
def _(folder):
    from rezero_dynamics.models import DeepMLP
    from rezero_dynamics.spectra import NonFiniteError, jacobian_spectrum

    inputs = torch.ones(2, 4, dtype=torch.float64)
    inputs[1, 0] = float("nan")
    return error_of(lambda: jacobian_spectrum(DeepMLP(4, 2).double().stack, inputs), NonFiniteError)


@case("nonfinite-weights", NUMERICS, "a NaN weight in block 2 of a ReZero MLP")
def _(folder):
    from rezero_dynamics.models import DeepMLP
    from rezero_dynamics.spectra import NonFiniteError, jacobian_spectrum

    torch.manual_seed(0)
    model = DeepMLP(6, 4, variant="rezero").double()
    with torch.no_grad():
        model.stack.blocks[2].sublayer.linear.weight[3, 1] = float("nan")
    return error_of(lambda: jacobian_spectrum(model.stack, torch.ones(1, 6, dtype=torch.float64)), NonFiniteError)


class _SquareRoot(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x)


@case("nonfinite-derivative", NUMERICS, "`sqrt` at an input of 0 (finite output, infinite derivative)")
def _(folder):
    from rezero_dynamics.spectra import NonFiniteError, jacobian_spectrum

    inputs = torch.ones(1, 3, dtype=torch.float64)
    inputs[0, 2] = 0.0
    return error_of(lambda: jacobian_spectrum(nn.Sequential(nn.Identity(), _SquareRoot()), inputs), NonFiniteError)


@case("svd-no-convergence", NUMERICS, "an SVD that converges with no driver (simulated)")
def _(folder):
    import scipy.linalg

    from rezero_dynamics.spectra import SVDConvergenceError, singular_values

    def fails(*args, **kwargs):
        raise torch.linalg.LinAlgError("linalg.svd: The algorithm failed to converge")

    def scipy_fails(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    with mock.patch.object(torch.linalg, "svdvals", fails), mock.patch.object(scipy.linalg, "svd", scipy_fails):
        return error_of(lambda: singular_values(torch.eye(3)), SVDConvergenceError)


# -- running a case -----------------------------------------------------------------------------

NOBODY = 65534  # the conventional uid and gid of the unprivileged user "nobody"


def run_case(case: Case, folder: Path) -> str:
    """Run ``case`` in ``folder`` (also the working folder) and return its normalised message.

    Root ignores folder permissions, so as root a case that needs them runs in a forked
    child that switched to the user nobody.
    """
    previous = os.getcwd()
    os.chdir(folder)
    try:
        if case.needs_non_root and os.geteuid() == 0:
            message = _run_as_nobody(case, folder)
        else:
            message = case.run(folder)
    finally:
        os.chdir(previous)
    return normalise(case, message, folder)


def _run_as_nobody(case: Case, folder: Path) -> str:
    folder.chmod(0o777)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: never returns into the caller's code
        os.close(read_end)
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            payload = case.run(folder).encode()
            code = 0
        except BaseException as error:
            payload = f"{type(error).__name__}: {error}".encode()
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(payload)
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        payload = pipe.read().decode()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise AssertionError(f"case {case.id} failed as user nobody: {payload}")
    return payload


# -- the catalogue file ----------------------------------------------------------------------------

def normalise(case: Case, message: str, folder: Path) -> str:
    """Replace the case's folder by ``<tmp>`` and the masked parts by ``…``."""
    message = message.replace(str(folder), "<tmp>")
    for mask in case.masks:
        match = re.search(mask, message)
        if match:
            message = message[: match.start(1)] + "…" + message[match.end(1) :]
    return message


def escape(text: str) -> str:
    return text.replace("|", "\\|")


def unescape(text: str) -> str:
    return text.replace("\\|", "|")


def parse_catalogue(text: str) -> dict[str, str]:
    """Map each row id of the catalogue to its documented message."""
    rows = {}
    for line in text.splitlines():
        match = re.fullmatch(r"\| `([a-z0-9-]+)` \| (.*) \| `(.*)` \|", line)
        if match:
            rows[match.group(1)] = unescape(match.group(3))
    return rows


HEADER = """# Errors: the bad inputs the toolkit rejects

Every row is a bad input and the exact message it gets. The command line prints the
message on one line to standard error and exits with status 2; the library raises it
(ValueError or a subclass, FileNotFoundError for missing files, TypeError for a non-tensor).
`<tmp>` stands for the folder of the example, and `…` for text that comes from another
library (PyTorch or the pickle module) and changes between their versions.

The file is written by `python tests/error_cases.py`, and `tests/test_error_catalogue.py`
checks every row against the live message, so the catalogue and the code cannot drift.

Other outcomes of the command line: 3 when a training run diverged, 130 after SIGINT
(Ctrl-C) and 143 after SIGTERM. `train` and `compare` stop at the end of the current
step, flush the records, write a checkpoint of that step and mark the run `interrupted`;
`--resume` continues exactly. A second signal stops at once; status.json then gives the
step of the newest checkpoint. A signal that reaches `train` after its status.json records
`completed` exits 0 with a note that it arrived after completion.
"""


def render(messages: dict[str, str]) -> str:
    parts = [HEADER]
    for section in dict.fromkeys(c.section for c in CASES):
        parts.append(f"\n## {section}\n\n| id | bad input | message |\n|---|---|---|\n")
        for item in (c for c in CASES if c.section == section):
            parts.append(f"| `{item.id}` | {escape(item.bad_input)} | `{escape(messages[item.id])}` |\n")
    return "".join(parts)


def main() -> None:
    import tempfile

    messages = {}
    with tempfile.TemporaryDirectory() as root:
        for number, item in enumerate(CASES):
            folder = Path(root) / f"case{number}"
            folder.mkdir()
            messages[item.id] = run_case(item, folder)
    CATALOGUE.write_text(render(messages))
    print(f"wrote {len(CASES)} rows to {CATALOGUE}")


if __name__ == "__main__":
    main()
