"""Export of tidy records to other tools."""

from __future__ import annotations

from pathlib import Path

from .records import read_records


def export_tensorboard(run_dir: str | Path, log_dir: str | Path | None = None) -> Path:
    """Write every record of ``run_dir`` as TensorBoard scalars (tag ``quantity/layer``).

    Needs the ``tensorboard`` package; ``log_dir`` defaults to ``run_dir/tensorboard``.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ImportError("TensorBoard export needs the tensorboard package: pip install tensorboard") from None
    run_dir = Path(run_dir)
    log_dir = Path(log_dir) if log_dir is not None else run_dir / "tensorboard"
    records = read_records(run_dir)
    writer = SummaryWriter(log_dir=str(log_dir))
    try:
        for row in records.itertuples(index=False):
            writer.add_scalar(f"{row.quantity}/{row.layer}", row.value, global_step=int(row.step))
    finally:
        writer.close()
    return log_dir
