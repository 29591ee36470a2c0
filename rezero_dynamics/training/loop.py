"""Training loop for the character-level Transformer language model.

A run folder holds ``config.json``, ``records.csv`` (tidy rows, appended as training
goes), ``checkpoint.pt`` (every ``checkpoint_every`` steps and at the end) and
``status.json`` (running, completed, diverged or interrupted, with the step and cause).

Divergence is detected without a host synchronisation per step: a device flag collects
non-finite losses and gradient norms, with the first bad step, and is read at every
evaluation and at the end. A diverged run keeps all records and its last finite
checkpoint.
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

from ..data.text import CharCorpus
from ..models import CharTransformerLM
from ..residual import check_variant
from ..tracking import RECORDS_FILE, Every, RecordWriter, Tracker
from ..tracking.records import read_records
from .checkpoints import CHECKPOINT_FILE, load_checkpoint, save_checkpoint
from .metrics import LN2

log = logging.getLogger(__name__)

OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd", "adagrad")
DECAYS: tuple[str, ...] = ("none", "cosine", "linear")
STATUS_FILE = "status.json"


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one language-model run; the defaults train in about a minute on 2 CPU cores."""

    variant: str = "rezero"
    depth: int = 12
    d_model: int = 64
    heads: int = 4
    d_ff: int | None = None
    alpha_init: float = 0.0
    dropout: float = 0.0
    seq_len: int = 64
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
    checkpoint_every: int = 100
    seed: int = 0
    device: str = "cpu"

    def validate(self) -> "TrainConfig":
        """Return self, or raise ValueError naming the first invalid setting and the fix."""
        check_variant(self.variant)
        for name in ("depth", "d_model", "heads", "seq_len", "batch_size", "steps", "eval_batches"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("eval_every", "track_every", "checkpoint_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 disables), got {getattr(self, name)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.decay not in DECAYS:
            raise ValueError(f"unknown decay {self.decay!r}; choose one of {', '.join(DECAYS)}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise ValueError(f"clip_norm must be positive or None, got {self.clip_norm}")
        return self


@dataclass
class TrainResult:
    """Outcome of a run: final status, the last step run, and the cause of a stop."""

    status: str
    step: int
    cause: str | None
    run_dir: Path


def build_language_model(config: TrainConfig, vocab_size: int) -> CharTransformerLM:
    return CharTransformerLM(
        vocab_size, config.d_model, config.depth, heads=config.heads, d_ff=config.d_ff,
        variant=config.variant, max_len=config.seq_len, dropout=config.dropout,
        alpha_init=config.alpha_init,
    )


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Build the optimiser with ReZero alphas in their own group.

    Alphas get no weight decay unless ``alpha_weight_decay`` and use ``alpha_lr`` when set.
    """
    alpha_ids = {id(p) for p in model.alphas().values()} if hasattr(model, "alphas") else set()
    others = [p for p in model.parameters() if id(p) not in alpha_ids]
    alphas = [p for p in model.parameters() if id(p) in alpha_ids]
    groups = [{"params": others, "weight_decay": config.weight_decay}]
    if alphas:
        groups.append({
            "params": alphas,
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


def sample_batch(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``batch_size`` windows of ``seq_len + 1`` tokens; (B, T + 1) int64."""
    starts = torch.randint(0, tokens.numel() - seq_len, (batch_size,), generator=generator)
    offsets = torch.arange(seq_len + 1)
    return tokens[starts[:, None] + offsets]


def language_model_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy in nats of ``batch`` (B, T + 1), as a 0-dim tensor."""
    logits = model(batch[:, :-1])  # (B, T, V)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@torch.no_grad()
def evaluate_bits_per_character(model: nn.Module, tokens: torch.Tensor, config: TrainConfig, device: torch.device) -> float:
    """Mean bits per character over ``eval_batches`` fixed windows of ``tokens`` (seeded, eval mode)."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(config.seed + 1)
    total = torch.zeros((), device=device)
    for _ in range(config.eval_batches):
        batch = sample_batch(tokens, config.batch_size, config.seq_len, generator).to(device)
        total += language_model_loss(model, batch)
    model.train(was_training)
    return (total / config.eval_batches / LN2).item()


def _write_json(path: Path, payload: dict) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2))
    temporary.replace(path)


def _truncate_records(path: Path, after_step: int) -> None:
    """Drop rows recorded after ``after_step`` so a resumed run does not repeat them."""
    if not path.exists():
        return
    frame = read_records(path)
    kept = frame[frame["step"] <= after_step]
    temporary = path.with_name(path.name + ".tmp")
    kept.to_csv(temporary, index=False)
    temporary.replace(path)


def train_language_model(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    corpus: CharCorpus | None = None,
    resume: bool = False,
    run_name: str | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train a character-level LM on ``corpus`` (default: the embedded corpus) in ``run_dir``.

    With ``resume=True`` training continues from ``run_dir/checkpoint.pt``: model,
    optimiser, schedule, batch sampler and RNG state are restored, so on the same device
    the loss curve continues exactly as the uninterrupted run's would.
    """
    config.validate()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    corpus = corpus or CharCorpus.default()
    device = torch.device(config.device)
    run_name = run_name or run_dir.name
    for split in ("train", "validation"):
        if corpus.split(split).numel() <= config.seq_len + 1:
            raise ValueError(
                f"the {split} split has {corpus.split(split).numel()} tokens, too few for seq_len="
                f"{config.seq_len}; use a shorter seq_len or a longer corpus"
            )

    # The run owns a forked, seeded RNG: model init and dropout masks depend on the seed
    # alone, and the caller's RNG state is left untouched.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        return _train(config, run_dir, corpus, device, resume, run_name, progress)


def _train(
    config: TrainConfig,
    run_dir: Path,
    corpus: CharCorpus,
    device: torch.device,
    resume: bool,
    run_name: str,
    progress: bool,
) -> TrainResult:
    model = build_language_model(config, len(corpus.vocabulary))
    model.to(device).train()
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate_factor(step, config))
    generator = torch.Generator().manual_seed(config.seed)
    start = 0

    checkpoint_path = run_dir / CHECKPOINT_FILE
    records_path = run_dir / RECORDS_FILE
    if resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        saved_config = state["config"]
        if saved_config != _config_dict(config):
            changed = sorted(k for k in saved_config if saved_config.get(k) != _config_dict(config).get(k))
            raise ValueError(
                f"--resume with settings that differ from the checkpoint's ({', '.join(changed)}); "
                f"rerun with the original settings or start a new run folder"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["batch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start = state["step"] + 1
        _truncate_records(records_path, state["step"])
    elif records_path.exists() or checkpoint_path.exists():
        raise ValueError(f"{run_dir} already contains a run; pass resume=True (--resume) or choose a new folder")

    _write_json(run_dir / "config.json", _config_dict(config))
    tracker = Tracker(model, RecordWriter(records_path), run=run_name, schedule=Every(config.track_every))
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    status, cause, step = "running", None, start - 1
    _write_json(run_dir / STATUS_FILE, {"status": status, "step": step})

    def save(at_step: int) -> None:
        save_checkpoint(
            {
                "config": _config_dict(config), "step": at_step, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "batch_rng": generator.get_state(), "torch_rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(device)} if device.type == "cuda" else {}),
            },
            checkpoint_path,
        )

    def divergence() -> str | None:
        bad = int(first_bad_step.item())  # a host sync, at evaluations and at the end only
        return None if bad < 0 else f"non-finite loss or gradient at step {bad}"

    started = time.perf_counter()
    try:
        for step in tqdm(range(start, config.steps), desc=run_name, disable=not progress, initial=start, total=config.steps):
            tracker.start_step(step)
            batch = sample_batch(corpus.train, config.batch_size, config.seq_len, generator).to(device)
            loss = language_model_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_norm is not None:
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            else:
                grad_norm = torch.linalg.vector_norm(
                    torch.stack(torch._foreach_norm([p.grad for p in model.parameters() if p.grad is not None]))
                )
            finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
            first_bad_step = torch.where(~finite & (first_bad_step < 0), step, first_bad_step)
            tracker.record_gradients(step, loss, scheduler.get_last_lr()[0])
            optimizer.step()
            scheduler.step()
            tracker.end_step(step)

            last = step == config.steps - 1
            if (config.eval_every and step % config.eval_every == 0) or last:
                cause = divergence()
                if cause:
                    status = "diverged"
                    break
                tracker.record_scalar(step, "val_bpc", evaluate_bits_per_character(model, corpus.validation, config, device))
                tracker.flush()
            if (config.checkpoint_every and step % config.checkpoint_every == 0 and step > 0) or last:
                cause = divergence()
                if cause:
                    status = "diverged"
                    break
                tracker.flush()
                save(step)
        else:
            status = "completed"
    except KeyboardInterrupt:
        status, cause = "interrupted", "interrupted by the user (SIGINT)"
        raise
    finally:
        tracker.close()
        seconds = round(time.perf_counter() - started, 2)
        if status == "running":
            status, cause = "failed", cause or "stopped by an error; see the traceback"
        _write_json(run_dir / STATUS_FILE, {"status": status, "step": step, "cause": cause, "seconds": seconds})
        if status == "diverged":
            log.warning("%s diverged: %s; records and the last finite checkpoint are kept in %s", run_name, cause, run_dir)
    return TrainResult(status, step, cause, run_dir)


def _config_dict(config: TrainConfig) -> dict:
    return dataclasses.asdict(config)
