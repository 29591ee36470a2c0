"""One optimisation step: forward and loss under autocast, backward, unscale, clip, track, update.

The step makes no host synchronisation on CUDA for fp32 and bf16: the loss, the gradient
norm and the divergence flag stay on the device, and the tracker buffers its statistics
there until a flush. fp16 is the exception: ``GradScaler.step`` reads its overflow flag
on the host once per step (PyTorch 2.13, non-fused optimisers).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..tracking import Tracker
from .distributed import Distributed, mean_over_ranks, shard

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """Return a gradient scaler, enabled for fp16 only (bf16 has the exponent range of fp32)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


class TrainingStep:
    """Run optimisation steps of ``model`` on batches of a task.

    Args:
        model: the module that computes the loss: the plain model, or the same model
            wrapped in DistributedDataParallel and/or ``torch.compile``.
        parameters: the trained parameters (of the unwrapped model).
        loss: ``loss(model, batch)``, a 0-dim tensor, the mean over the batch.
        optimizer, scheduler: the optimiser and its learning-rate scheduler.
        tracker: records statistics of the steps its schedule selects; None records nothing.
        precision: ``fp32``, ``bf16`` or ``fp16``; autocast covers the forward pass and
            the loss only.
        scaler: the gradient scaler; default ``make_scaler(precision, device)``.
        clip_norm: clip the global gradient norm to this value (None: no clipping).
        context: the data-parallel context; the global batch is sharded by rank.

    ``first_bad_step`` is a device tensor: the first step whose loss or gradient norm was
    not finite, or -1. Under fp16 only the loss counts, because the scaler skips steps
    whose gradients overflow and lowers its scale.
    """

    def __init__(
        self,
        model: nn.Module,
        parameters: list[nn.Parameter],
        loss: Callable[[nn.Module, object], torch.Tensor],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        tracker: Tracker | None,
        *,
        device: torch.device,
        precision: str = "fp32",
        scaler: torch.amp.GradScaler | None = None,
        clip_norm: float | None = None,
        context: Distributed = Distributed(),
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
        self.model = model
        self.parameters = parameters
        self.loss = loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.tracker = tracker
        self.device = device
        self.autocast_dtype = AUTOCAST_DTYPES[precision]
        self.scaler = scaler if scaler is not None else make_scaler(precision, device)
        self.clip_norm = clip_norm
        self.context = context
        self.check_gradients = precision != "fp16"
        self.first_bad_step = torch.full((), -1, dtype=torch.long, device=device)

    def __call__(self, step: int, batch) -> None:
        """Train on this rank's shard of the global ``batch`` and record ``step`` if due."""
        tracker = self.tracker
        if tracker is not None:
            tracker.start_step(step)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            loss = self.loss(self.model, shard(batch, self.context))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()  # DDP has averaged the gradients over ranks when this returns
        self.scaler.unscale_(self.optimizer)  # measure and clip the gradient the optimiser applies
        if self.clip_norm is not None:
            grad_norm = nn.utils.clip_grad_norm_(self.parameters, self.clip_norm)
        else:
            grads = [p.grad for p in self.parameters if p.grad is not None]
            grad_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        loss = mean_over_ranks(loss.float(), self.context)  # the loss of the global batch
        finite = torch.isfinite(loss) & (torch.isfinite(grad_norm) if self.check_gradients else True)
        self.first_bad_step = torch.where(~finite & (self.first_bad_step < 0), step, self.first_bad_step)
        if tracker is not None:
            tracker.record_gradients(step, loss, self.scheduler.get_last_lr()[0])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if tracker is not None:
            tracker.end_step(step)
