"""The training loop, for language models and classifiers.

A run folder contains five files:

* ``config.json``: the settings;
* ``records.csv``: tidy rows, appended as training goes;
* ``spectra.csv``: Jacobian singular values at scheduled steps;
* ``checkpoint.pt``: written every ``checkpoint_every`` steps and at the end;
* ``status.json``: running, completed, diverged, interrupted or failed, with the step
  and the cause. While running and after an interruption the step is that of the newest
  checkpoint; the file is rewritten atomically at each checkpoint.

Divergence is detected without a host synchronisation per step: a device tensor keeps
the first step with a non-finite loss or gradient norm, and it is read at evaluations,
checkpoints and the end. A diverged run keeps all records and its last finite
checkpoint.

SIGINT (Ctrl-C) and SIGTERM stop the run at the end of the current step: the records
are flushed, a checkpoint of that step is written and the status becomes
``interrupted``, so ``resume=True`` continues exactly. A second signal stops at once.
A run killed outright (``kill -9``) keeps its last checkpoint and only complete record
rows (see ``tracking.records``), and it resumes from that checkpoint, or from step 0
when none was written yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .._checks import check_model_fits, check_seed
from ..data import CharCorpus, load_cifar10, load_digits, load_enwik8
from ..models import ACTIVATIONS, RESNET_VARIANTS, WEIGHT_INITS
from ..models.resnet import resnet_blocks_per_stage
from ..residual import GATED_VARIANTS, NORMS, check_variant
from ..tracking import RECORDS_FILE, Every, LogSpaced, RecordWriter, Tracker
from ..tracking.records import read_csv_rows, read_records, replace_atomically
from .checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .distributed import Distributed, check_batch_size, distributed_from_environment, rank_device
from .interrupts import DeferredSignals
from .step import PRECISIONS, TrainingStep
from .tasks import ClassificationTask, LanguageModelTask

log = logging.getLogger(__name__)

TASKS: dict[str, tuple[str, ...]] = {"lm": ("default", "enwik8"), "classifier": ("digits", "cifar10")}
CLASSIFIER_MODELS: tuple[str, ...] = ("mlp", "resnet")
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "adagrad")
DECAYS: tuple[str, ...] = ("none", "cosine", "linear")
TRACK_SCHEDULES: tuple[str, ...] = ("every", "log")
STATUS_FILE = "status.json"
SPECTRA_FILE = "spectra.csv"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one run. Defaults: a 12-layer ReZero character LM on the embedded corpus.

    ``task`` is ``lm`` (data ``default`` or ``enwik8``) or ``classifier`` (data ``digits``
    or ``cifar10``); ``data`` left at None becomes the task's first data set.
    ``data_path`` locates enwik8 or the CIFAR-10 batch folder. The LM uses d_model,
    heads, d_ff and seq_len; the classifier's MLP uses width, activation, init, sigma_w
    and norm. ``classifier_model="resnet"`` trains a CIFAR ResNet instead, with ``depth``
    its number of weighted layers (6n + 2: 20, 56, 110, ...). ``depth`` left at None
    becomes 20 for the ResNet and 12 otherwise. ``validate`` rejects a setting the chosen
    model does not use when it differs from its default, and ``alpha_init`` other than 0
    for a variant without alpha. ``batch_size``
    is the global batch, split over the processes of a ``torchrun`` run. ``precision``
    (fp32, bf16 or fp16) sets autocast for the forward pass and the loss; ``compile``
    runs the model through ``torch.compile``.
    """

    task: str = "lm"
    data: str | None = None
    data_path: str | None = None
    variant: str = "rezero"
    depth: int | None = None
    d_model: int = 64
    heads: int = 4
    d_ff: int | None = None
    seq_len: int = 64
    width: int = 256
    activation: str = "relu"
    init: str = "gaussian"
    sigma_w: float = 1.0
    norm: str = "layer"
    classifier_model: str = "mlp"
    alpha_init: float = 0.0
    dropout: float = 0.0
    batch_size: int = 16
    steps: int = 200
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    alpha_lr: float | None = None
    alpha_weight_decay: bool = False
    warmup_steps: int = 0
    decay: str = "none"
    clip_norm: float | None = None
    eval_every: int = 50
    eval_batches: int = 8
    track_every: int = 1
    track_schedule: str = "every"
    spectrum_every: int = 0
    spectrum_inputs: int = 2
    spectrum_tokens: int = 16
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    compile: bool = False

    def __post_init__(self) -> None:
        if self.data is None and self.task in TASKS:
            object.__setattr__(self, "data", TASKS[self.task][0])
        if self.depth is None:
            object.__setattr__(self, "depth", 20 if self.classifier_model == "resnet" else 12)

    def validate(self) -> "TrainConfig":
        """Return self, or raise ValueError naming the first invalid setting and the fix."""
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")
        if self.data not in TASKS[self.task]:
            raise ValueError(f"data {self.data!r} does not fit task {self.task!r}; choose one of {', '.join(TASKS[self.task])}")
        if self.data in ("enwik8", "cifar10") and not self.data_path:
            raise ValueError(f"data {self.data!r} needs data_path (--data-path): the local file or folder to read")
        if self.data not in ("enwik8", "cifar10") and self.data_path:
            raise ValueError(
                f"data_path (--data-path) {self.data_path!r} is not read by data {self.data!r} (--data), which is "
                f"built in; drop --data-path or choose --data enwik8 or cifar10"
            )
        check_variant(self.variant)
        for name in ("depth", "d_model", "heads", "seq_len", "width", "batch_size", "steps", "eval_batches",
                     "spectrum_inputs", "spectrum_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_every", "track_every", "checkpoint_every", "warmup_steps", "spectrum_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables), got {getattr(self, name)}")
        choices = {"track_schedule": TRACK_SCHEDULES, "optimizer": OPTIMIZERS, "decay": DECAYS, "activation": ACTIVATIONS, "init": WEIGHT_INITS, "norm": NORMS, "classifier_model": CLASSIFIER_MODELS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("lr", "sigma_w"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if self.alpha_lr is not None and not (self.alpha_lr > 0 and math.isfinite(self.alpha_lr)):
            raise ValueError(f"alpha_lr must be a positive finite number or None, got {self.alpha_lr}")
        if self.clip_norm is not None and not (self.clip_norm > 0 and math.isfinite(self.clip_norm)):
            raise ValueError(f"clip_norm must be a positive finite number or None, got {self.clip_norm}")
        if not math.isfinite(self.alpha_init):
            raise ValueError(f"alpha_init must be finite, got {self.alpha_init}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.task == "lm" and self.spectrum_every and self.spectrum_tokens > self.seq_len:
            raise ValueError(
                f"spectrum_tokens={self.spectrum_tokens} exceeds seq_len={self.seq_len}; use --spectrum-tokens "
                f"at most --seq-len"
            )
        check_seed("seed", self.seed)
        check_model_fits("depth", self.depth, self._parameters_per_block(), 4)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.classifier_model == "resnet":
            self._validate_resnet()
        self._validate_unused()
        return self

    def _parameters_per_block(self) -> int:
        """Return a lower bound on the weights of one block of the model this config trains."""
        if self.task == "lm":
            d_ff = 4 * self.d_model if self.d_ff is None else self.d_ff
            return 4 * self.d_model**2 + 2 * self.d_model * d_ff
        if self.classifier_model == "resnet":
            return 9 * 16 * 16  # one 3 x 3 convolution of the narrowest stage
        return self.width**2

    def _validate_unused(self) -> None:
        if self.task == "lm":
            model = "the character LM, a Transformer with LayerNorm and sizes set by --d-model, --heads and --d-ff"
            unused = ("width", "activation", "init", "sigma_w", "norm")
        elif self.classifier_model == "resnet":
            model = "the ResNet, which has fixed ReLU, He initialisation, batch norm and 16/32/64 channels"
            unused = ("width", "activation", "init", "sigma_w", "norm", "d_model", "heads", "d_ff", "seq_len")
        else:
            model = "the MLP classifier"
            unused = ("d_model", "heads", "d_ff", "seq_len")
        defaults = {item.name: item.default for item in dataclasses.fields(self)}
        for name in unused:
            value = getattr(self, name)
            if value != defaults[name]:
                raise ValueError(
                    f"{name}={value!r} is not used by {model}; leave --{name.replace('_', '-')} at its "
                    f"default {defaults[name]!r}"
                )
        if self.alpha_init != 0.0 and self.variant not in GATED_VARIANTS:
            raise ValueError(
                f"alpha_init={self.alpha_init} is not used by variant {self.variant!r}, which has no alpha; "
                f"use one of {', '.join(GATED_VARIANTS)} or leave --alpha-init at 0"
            )

    def _validate_resnet(self) -> None:
        if self.task != "classifier":
            raise ValueError(f"classifier_model 'resnet' needs task 'classifier', got task {self.task!r}")
        if self.variant not in RESNET_VARIANTS:
            raise ValueError(
                f"variant {self.variant!r} is not available for the ResNet; choose one of {', '.join(RESNET_VARIANTS)}"
            )
        resnet_blocks_per_stage(self.depth)  # raises unless depth = 6n + 2


@dataclass
class TrainResult:
    """Outcome of a run: final status, the last step run, and the cause of a stop."""

    status: str
    step: int
    cause: str | None
    run_dir: Path


def build_task(config: TrainConfig, corpus: CharCorpus | None = None):
    """Load the data named by ``config`` and return its task (``corpus`` overrides LM data)."""
    if config.task == "lm":
        if corpus is None:
            corpus = load_enwik8(config.data_path) if config.data == "enwik8" else CharCorpus.default()
        return LanguageModelTask(corpus, config)
    dataset = load_cifar10(config.data_path) if config.data == "cifar10" else load_digits(config.seed)
    return ClassificationTask(dataset, config)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimiser with ReZero alphas in their own parameter group.

    Alphas get no weight decay unless ``alpha_weight_decay``, and use ``alpha_lr`` if set.
    """
    alpha_ids = {id(p) for p in model.alphas().values()}
    groups = [{"params": [p for p in model.parameters() if id(p) not in alpha_ids], "weight_decay": config.weight_decay}]
    if alpha_ids:
        groups.append({
            "params": [p for p in model.parameters() if id(p) in alpha_ids],
            "weight_decay": config.weight_decay if config.alpha_weight_decay else 0.0,
            "lr": config.alpha_lr if config.alpha_lr is not None else config.lr,
        })
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    return torch.optim.Adagrad(groups, lr=config.lr)


def track_schedule(config: TrainConfig):
    """Return the tracker's schedule: every ``track_every`` steps, or ``track_every`` steps
    per decade, logarithmically spaced (``track_schedule="log"``)."""
    if config.track_schedule == "log":
        return LogSpaced(per_decade=max(1, config.track_every))
    return Every(config.track_every)


def learning_rate_factor(step: int, config: TrainConfig) -> float:
    """Return the multiplier of the base learning rate at ``step``: linear warm-up, then decay."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.decay == "none":
        return 1.0
    span = max(1, config.steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    if config.decay == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _write_json(path: Path, payload: dict) -> None:
    replace_atomically(path, lambda temporary: temporary.write_text(json.dumps(payload, indent=2)))


def _wrap_model(model: nn.Module, device: torch.device, config: TrainConfig, context: Distributed) -> nn.Module:
    """Return the module that computes the loss: ``model`` in DistributedDataParallel
    under torchrun, then through ``torch.compile`` if ``config.compile``."""
    wrapped = model
    if context.enabled:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        wrapped = torch.compile(wrapped)
    return wrapped


def _truncate_after(path: Path, after_step: int) -> None:
    """Drop rows of a CSV with a ``step`` column recorded after ``after_step``, and a
    partial last row. A file without a complete header is removed."""
    if not path.exists():
        return
    frame = read_records(path) if path.name == RECORDS_FILE else read_csv_rows(path)
    if "step" not in frame.columns:
        path.unlink()
        return
    kept = frame[frame["step"] <= after_step]
    replace_atomically(path, lambda temporary: kept.to_csv(temporary, index=False))


def _check_same_settings(saved: dict, settings: dict, source: str) -> None:
    if saved != settings:
        changed = sorted(k for k in settings if saved.get(k) != settings[k])
        raise ValueError(
            f"resume with settings that differ from the {source} ({', '.join(changed)}); "
            f"rerun with the original settings or start a new run folder"
        )


def read_status(run_dir: str | Path) -> dict:
    """Return a run folder's ``status.json`` as a dict."""
    return json.loads((Path(run_dir) / STATUS_FILE).read_text())


def train(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    corpus: CharCorpus | None = None,
    resume: bool = False,
    run_name: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train one model with the settings in ``config`` and record everything in ``run_dir``.

    With ``resume=True`` training continues from ``run_dir/checkpoint.pt``: model,
    optimiser, schedule, batch sampler and RNG state are restored, so on the same device
    the loss curve continues exactly as the uninterrupted run's would. Records written
    after the checkpoint are dropped first.

    The run uses its own forked RNG seeded with ``config.seed``: model initialisation and
    dropout masks depend on the seed alone, and the caller's RNG state is left untouched.

    Started by ``torchrun`` (``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set), every process
    calls ``train`` with the same settings: the model is wrapped in
    DistributedDataParallel, each rank trains on its slice of the global batch, and rank
    0 alone evaluates and writes records, spectra, checkpoints and the status. A
    checkpoint resumes under any number of processes that divides ``batch_size``.
    """
    config.validate()
    run_dir = Path(run_dir)
    task = build_task(config, corpus)
    with distributed_from_environment(torch.device(config.device)) as context:
        check_batch_size(config.batch_size, context)
        device = rank_device(torch.device(config.device), context)
        if context.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
        devices = [device.index or 0] if device.type == "cuda" else []
        # NOTE: under torchrun the ranks could see a signal at different steps and then wait
        # on each other, so signals are not deferred there and stop the run at once.
        signals = DeferredSignals(enabled=not context.enabled)
        with torch.random.fork_rng(devices=devices), signals:
            torch.manual_seed(config.seed)
            return _train(config, task, run_dir, device, resume, run_name or run_dir.name, progress, context, signals)


def _train(
    config: TrainConfig, task, run_dir: Path, device: torch.device, resume: bool, run_name: str, progress: bool,
    context: Distributed = Distributed(), signals: DeferredSignals | None = None,
) -> TrainResult:
    signals = signals or DeferredSignals(enabled=False)
    model = task.build_model().to(device).train()
    # The probe is built from the freshly initialised model, before any checkpoint is
    # loaded, so a resumed run measures spectra on the same inputs as an uninterrupted one.
    main = context.is_main
    probe = task.probe(model, config.spectrum_inputs, config.spectrum_tokens) if config.spectrum_every and main else None
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    settings = dataclasses.asdict(config)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    records_path = run_dir / RECORDS_FILE
    spectra_path = run_dir / SPECTRA_FILE
    start = 0
    state: dict = {}

    if resume and not checkpoint_path.exists() and (run_dir / "config.json").is_file():
        # The run was killed before its first checkpoint: start it again at step 0.
        _check_same_settings(json.loads((run_dir / "config.json").read_text()), settings, "config.json's")
        if main:
            _truncate_after(records_path, -1)
            _truncate_after(spectra_path, -1)
    elif resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        _check_same_settings(state["config"], settings, "checkpoint's")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = state["step"] + 1
        if main:
            _truncate_after(records_path, state["step"])
            _truncate_after(spectra_path, state["step"])
    elif main and (records_path.exists() or checkpoint_path.exists()):
        raise ValueError(f"{run_dir} already contains a run; resume it (--resume) or choose a new folder")
    if context.rank > 0:
        # Each rank draws its own dropout masks. NOTE: on ranks > 0 they restart from
        # this seed at a resume, so only rank 0's masks continue exactly.
        torch.manual_seed(hash((config.seed, context.rank, start)) % 2**63)

    if main:  # before any record file, so a folder killed at any moment can be resumed
        _write_json(run_dir / "config.json", settings)
    # Rank 0 records; the other ranks' trackers record nothing and write nothing.
    tracker = Tracker(
        model, RecordWriter(records_path) if main else None, run=run_name,
        schedule=track_schedule(config) if main else Every(0), activation_rms=main, update_norm=main,
        spectrum_probe=probe,
        spectrum_schedule=Every(config.spectrum_every), spectra_path=spectra_path if main else None,
    )
    run_step = TrainingStep(
        _wrap_model(model, device, config, context), list(model.parameters()), task.loss, optimizer, scheduler,
        tracker, device=device, precision=config.precision, clip_norm=config.clip_norm, context=context,
    )
    if resume and "scaler" in state:
        run_step.scaler.load_state_dict(state["scaler"])
    status, cause, step = "running", None, start - 1
    saved_step = start - 1  # the step of the newest checkpoint
    if main:
        _write_json(run_dir / STATUS_FILE, {"status": status, "step": step, "cause": None})

    def save(at_step: int) -> None:
        nonlocal saved_step
        if not main:
            return
        save_checkpoint(
            {
                "config": settings, "step": at_step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "batch_rng": generator.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
                **({"scaler": run_step.scaler.state_dict()} if run_step.scaler.is_enabled() else {}),
            },
            checkpoint_path,
        )
        saved_step = at_step
        # A sweep monitor reads progress here; the step is always one a resume starts after.
        _write_json(run_dir / STATUS_FILE, {"status": "running", "step": at_step, "cause": None})

    def save_on_stop(at_step: int, saved: bool) -> None:
        tracker.flush()
        if not saved and divergence() is None:
            save(at_step)  # the step just finished, so a resumed run continues exactly

    def divergence() -> str | None:
        bad = int(run_step.first_bad_step.item())  # a host sync, only at evaluations, spectra and checkpoints
        return None if bad < 0 else f"non-finite loss or gradient norm at step {bad}"

    started = time.perf_counter()
    try:
        # Every quantity labelled step k describes the model after k updates: loss, gradients
        # and alphas of step k, its spectrum and its validation metric (evaluated before the
        # update of step k). The final state is labelled ``steps``.
        for step in tqdm(range(start, config.steps), desc=run_name, disable=not progress, initial=start, total=config.steps):
            evaluate = config.eval_every and step % config.eval_every == 0
            if evaluate or (config.spectrum_every and step % config.spectrum_every == 0):
                cause = divergence()  # no evaluation or spectrum of non-finite weights
                if cause:
                    status = "diverged"
                    break
            if evaluate and main:
                tracker.record_scalar(step, task.metric, task.evaluate(model, device))
            run_step(step, task.train_batch(generator, device))

            last = step == config.steps - 1
            checkpoint = (config.checkpoint_every and step % config.checkpoint_every == 0 and step > 0) or last
            if checkpoint:
                cause = divergence()
                if cause:
                    status = "diverged"
                    break
                tracker.flush()
                save(step)
            signals.stop_if_requested(lambda: save_on_stop(step, saved=checkpoint))
        else:
            status = "completed"
            if main:
                tracker.record_scalar(config.steps, task.metric, task.evaluate(model, device))
            if config.spectrum_every and main:
                tracker.record_spectrum(config.steps)  # the trained model, after the last update
            tracker.flush()
    except Exception as error:
        status, cause = "failed", f"{type(error).__name__}: {error}"
        raise
    except BaseException as error:  # KeyboardInterrupt (SIGINT), and the CLI's SIGTERM exception
        signal_name = "SIGINT or Ctrl-C" if isinstance(error, KeyboardInterrupt) else type(error).__name__
        status, cause = "interrupted", f"interrupted ({signal_name}); resume from the last checkpoint"
        step = saved_step  # a second signal can stop between checkpoints; resume starts after this step
        raise
    finally:
        tracker.close()
        seconds = round(time.perf_counter() - started, 2)
        if main:
            _write_json(run_dir / STATUS_FILE, {"status": status, "step": step, "cause": cause, "seconds": seconds})
        if status == "diverged" and main:
            checkpoint_note = "the last finite checkpoint" if checkpoint_path.exists() else "no checkpoint (none was due before)"
            log.warning("%s diverged: %s; records and %s are kept in %s", run_name, cause, checkpoint_note, run_dir)
    return TrainResult(status, step, cause, run_dir)
