"""Data-parallel training under ``torchrun``: process group, device per rank, batch shards.

``torchrun --nproc_per_node=N`` starts N processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each. ``train`` reads them through
``distributed_from_environment``. The process group uses NCCL on CUDA and Gloo on CPU.

``batch_size`` is the global batch: every rank draws the same global batch from the
same seeded generator and trains on its own contiguous slice of ``batch_size / N``
samples. After backward, DistributedDataParallel has averaged the gradients, so they
equal the single-process gradient of the whole batch up to float rounding, and every
rank has the same values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

TORCHRUN_VARIABLES: tuple[str, ...] = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Distributed:
    """This process's place in a data-parallel run; ``world_size`` 1 is a single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes files: rank 0, or the only process."""
        return self.rank == 0


def torchrun_environment() -> Distributed | None:
    """Return the rank, world size and local rank that ``torchrun`` set, or None outside it.

    Raises ValueError when only some of the variables are set or one is not an integer.
    """
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return None
    if len(present) < len(TORCHRUN_VARIABLES):
        missing = sorted(set(TORCHRUN_VARIABLES) - set(present))
        raise ValueError(
            f"the torchrun variables {', '.join(missing)} are missing while {', '.join(present)} are set; "
            f"start with torchrun, or unset {', '.join(present)} for a single process"
        )
    try:
        values = {name: int(os.environ[name]) for name in TORCHRUN_VARIABLES}
    except ValueError:
        shown = ", ".join(f"{name}={os.environ[name]!r}" for name in TORCHRUN_VARIABLES)
        raise ValueError(f"the torchrun variables must be integers, got {shown}") from None
    if not 0 <= values["RANK"] < values["WORLD_SIZE"]:
        raise ValueError(f"RANK={values['RANK']} is outside 0 ... WORLD_SIZE-1 (WORLD_SIZE={values['WORLD_SIZE']})")
    return Distributed(values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"])


def rank_device(device: torch.device, context: Distributed) -> torch.device:
    """Return the device of this rank: ``cuda`` becomes ``cuda:LOCAL_RANK`` in a multi-process run."""
    if not context.enabled or device.type != "cuda":
        return device
    if device.index is not None:
        raise ValueError(
            f"device {device} names one GPU, but torchrun starts {context.world_size} processes; "
            f"pass --device cuda so that each process takes the GPU of its LOCAL_RANK"
        )
    return torch.device("cuda", context.local_rank)


@contextlib.contextmanager
def distributed_from_environment(device: torch.device) -> Iterator[Distributed]:
    """Yield this process's ``Distributed`` context, joining the process group under torchrun.

    A group that the caller already initialised is used as it is and left open. A group
    started here (NCCL for CUDA devices, Gloo otherwise) is destroyed on exit.
    """
    if dist.is_available() and dist.is_initialized():
        yield Distributed(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        return
    context = torchrun_environment()
    if context is None or not context.enabled:
        yield context or Distributed()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank_device(device, context))
    dist.init_process_group(backend)
    try:
        yield context
    finally:
        dist.destroy_process_group()


def check_batch_size(batch_size: int, context: Distributed) -> None:
    """Raise ValueError unless the global ``batch_size`` splits evenly over the ranks."""
    if batch_size % context.world_size:
        raise ValueError(
            f"batch_size={batch_size} does not split over {context.world_size} processes; batch_size is the "
            f"global batch, so use a multiple of {context.world_size}"
        )


def shard(batch: torch.Tensor | tuple[torch.Tensor, ...], context: Distributed) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Return this rank's contiguous slice of a global batch (a tensor or a tuple of tensors)."""
    if not context.enabled:
        return batch
    if isinstance(batch, tuple):
        return tuple(shard(part, context) for part in batch)
    size = batch.shape[0] // context.world_size
    return batch[context.rank * size : (context.rank + 1) * size]


def mean_over_ranks(value: torch.Tensor, context: Distributed) -> torch.Tensor:
    """Return the mean of a detached ``value`` over the ranks; an all-reduce on the device, no host sync."""
    if not context.enabled:
        return value.detach()
    total = value.detach().clone()
    dist.all_reduce(total)  # SUM: ReduceOp.AVG exists for NCCL only
    return total / context.world_size
