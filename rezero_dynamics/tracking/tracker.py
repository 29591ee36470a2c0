"""Tracker: per-block training statistics recorded on schedules, kept on the device.

Per optimisation step the training loop calls, in order::

    tracker.start_step(step)             # before the forward pass
    loss.backward(); clip gradients       # (and unscale them, under AMP)
    tracker.record_gradients(step, loss, lr)   # the gradient the optimiser applies
    optimizer.step()
    tracker.end_step(step)

Quantities (rows of ``records.csv``; ``layer`` is the block index, or ``other`` for
parameters outside the blocks such as embeddings and the head):

* ``loss``, ``lr``;
* ``grad_norm``: L2 norm of the gradient over each block's parameters, read from
  ``p.grad`` (not from backward hooks); ``grad_norm_param`` per tensor on request;
* ``alpha`` and ``alpha_grad`` for each ReZero alpha (``layer`` is the alpha's name);
* ``activation_rms``: root-mean-square of each block's output, from forward hooks;
* ``update_norm``: L2 norm of each block's parameter change made by the optimiser step;
* ``jacobian_chi``, ``jacobian_max``, ``jacobian_min_nonzero``, ``jacobian_num_zeros``:
  the exact input-output Jacobian spectrum of the block stack on a fixed probe batch,
  on its own schedule, with every singular value appended to ``spectra_path``. It runs
  before the step's forward pass and leaves the module's mode, the RNG state and the
  gradients as they were.

Every statistic is a device tensor until ``flush``, which moves all buffered values to
the host in one transfer and appends them to the records. Between flushes the per-step
path calls no ``.item()``, ``.tolist()`` or ``.cpu()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..residual import named_alphas
from ..spectra import jacobian_spectrum
from .records import CsvAppender, RecordWriter
from .schedules import Every

OTHER = "other"


class Tracker:
    """Record training statistics of ``model`` on a schedule; see the module docstring.

    Args:
        model: the model being trained. Its blocks are ``model.blocks`` unless ``blocks``
            is given.
        writer: where flushed rows go; None keeps them in ``rows`` only.
        run: the run name written in every row.
        schedule: a function of the step that returns whether to record it (e.g. ``Every(10)``).
        per_parameter: also record ``grad_norm_param`` for every parameter tensor.
        activation_rms, update_norm: switch these quantities on or off.
        flush_every: flush after this many recorded steps.
        spectrum_probe: ``(stack, inputs)``: the module whose Jacobian spectrum is
            recorded and its probe batch (B, *in_shape). None records no spectra.
        spectrum_schedule: when to record the spectrum (default: never).
        spectra_path: CSV file that receives every singular value (tidy, with ``step``).
    """

    def __init__(
        self,
        model: nn.Module,
        writer: RecordWriter | None = None,
        *,
        run: str = "run",
        blocks: Sequence[nn.Module] | None = None,
        schedule: Callable[[int], bool] = Every(1),
        per_parameter: bool = False,
        activation_rms: bool = True,
        update_norm: bool = True,
        flush_every: int = 50,
        spectrum_probe: tuple[nn.Module, torch.Tensor] | None = None,
        spectrum_schedule: Callable[[int], bool] = Every(0),
        spectra_path: str | Path | None = None,
    ) -> None:
        if blocks is None:
            blocks = getattr(model, "blocks", None)
            if blocks is None:
                raise ValueError(
                    f"{type(model).__name__} has no attribute 'blocks'; pass blocks=[...] with its "
                    f"residual blocks in order"
                )
        blocks = list(blocks)
        if not blocks:
            raise ValueError("the model has no blocks to track; pass blocks=[...] with at least one module")
        self.model = model
        self.writer = writer
        self.run = run
        self.schedule = schedule
        self.per_parameter = per_parameter
        self.track_update_norm = update_norm
        self.flush_every = flush_every
        self.rows: list[tuple] = []
        self.spectrum_probe = spectrum_probe
        self.spectrum_schedule = spectrum_schedule
        self.spectra_path = Path(spectra_path) if spectra_path is not None else None
        self._spectra_writer: CsvAppender | None = None

        # Group every trainable parameter by the block that owns it; the rest is "other".
        owner: dict[int, int] = {}
        for index, block in enumerate(blocks):
            for parameter in block.parameters():
                owner.setdefault(id(parameter), index)
        self.layer_labels = [str(i) for i in range(len(blocks))] + [OTHER]
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.parameter_names = [n for n, _ in named]
        self.parameters = [p for _, p in named]
        if not self.parameters:
            raise ValueError(
                f"{type(model).__name__} has no parameters that require gradients, so there are no "
                f"gradient or update norms to record; pass the model being trained"
            )
        group = [owner.get(id(p), len(blocks)) for p in self.parameters]
        self._group_index = torch.tensor(group, dtype=torch.long)
        self._group_cache: dict[tuple, torch.Tensor] = {}
        self.alphas = model.alphas() if hasattr(model, "alphas") else named_alphas(model)

        self._due = False
        self._snapshot: list[torch.Tensor] | None = None
        self._pending: list[tuple[int, str, list[str], torch.Tensor]] = []
        self._recorded_steps = 0
        self._activations: dict[int, torch.Tensor] = {}
        self._hooks = []
        if activation_rms:
            for index, block in enumerate(blocks):
                self._hooks.append(block.register_forward_hook(self._activation_hook(index)))

    # -- per-step path: device work only ------------------------------------------------

    def _activation_hook(self, index: int):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self._due and torch.is_grad_enabled():
                self._activations[index] = output.detach().float().square().mean().sqrt()

        return hook

    def start_step(self, step: int) -> None:
        """Decide whether ``step`` is recorded; if so, snapshot parameters for the update norm.

        Records the Jacobian spectrum first when its schedule is due (a host-side step).
        """
        if self.spectrum_probe is not None and self.spectrum_schedule(step):
            self.record_spectrum(step)
        self._due = bool(self.schedule(step))
        self._activations = {}
        if self._due and self.track_update_norm:
            self._snapshot = torch._foreach_mul([p.detach() for p in self.parameters], 1.0)

    def record_gradients(self, step: int, loss: torch.Tensor, lr: float | torch.Tensor) -> None:
        """Record loss, learning rate, gradient norms, alphas and activations of a due step.

        Call after backward (and after clipping or unscaling), before ``optimizer.step()``.
        """
        if not self._due:
            return
        device = loss.device
        self._push(step, "loss", ["all"], loss.detach().float().reshape(1))
        # torch.full fills on the device; torch.as_tensor(lr, device=...) would copy from the host.
        learning_rate = lr.detach().float().reshape(1) if torch.is_tensor(lr) else torch.full((1,), float(lr), device=device)
        self._push(step, "lr", ["all"], learning_rate)

        with_grad = tuple(i for i, p in enumerate(self.parameters) if p.grad is not None)
        if with_grad:
            norms = torch.stack(torch._foreach_norm([self.parameters[i].grad.detach() for i in with_grad])).float()
            groups = self._device_groups(with_grad, norms.device)
            squares = torch.zeros(len(self.layer_labels), device=norms.device).index_add_(0, groups, norms.square())
            self._push(step, "grad_norm", self.layer_labels, squares.sqrt())
            if self.per_parameter:
                self._push(step, "grad_norm_param", [self.parameter_names[i] for i in with_grad], norms)

        if self.alphas:
            names = list(self.alphas)
            values = torch.stack([a.detach().float() for a in self.alphas.values()])
            grads = torch.stack(
                [a.grad.detach().float() if a.grad is not None else torch.zeros_like(a, dtype=torch.float32) for a in self.alphas.values()]
            )
            self._push(step, "alpha", names, values)
            self._push(step, "alpha_grad", names, grads)

        if self._activations:
            indices = sorted(self._activations)
            self._push(step, "activation_rms", [str(i) for i in indices], torch.stack([self._activations[i] for i in indices]))

    def end_step(self, step: int) -> None:
        """Record the update norm of a due step, and flush every ``flush_every`` recorded steps."""
        if not self._due:
            return
        if self._snapshot is not None:
            differences = torch._foreach_sub([p.detach() for p in self.parameters], self._snapshot)
            norms = torch.stack(torch._foreach_norm(differences)).float()
            squares = torch.zeros(len(self.layer_labels), device=norms.device).index_add_(
                0, self._device_groups(tuple(range(len(self.parameters))), norms.device), norms.square()
            )
            self._push(step, "update_norm", self.layer_labels, squares.sqrt())
            self._snapshot = None
        self._due = False
        self._activations = {}
        self._recorded_steps += 1
        if self._recorded_steps % self.flush_every == 0:
            self.flush()

    def _device_groups(self, indices: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Block index of each parameter in ``indices``, cached on ``device``: copying it from
        the host every step would synchronise a CUDA device."""
        key = (indices, device)
        if key not in self._group_cache:
            self._group_cache[key] = self._group_index[list(indices)].to(device)
        return self._group_cache[key]

    def _push(self, step: int, quantity: str, labels: list[str], values: torch.Tensor) -> None:
        self._pending.append((step, quantity, labels, values))

    # -- host side -----------------------------------------------------------------------

    def record_spectrum(self, step: int) -> None:
        """Record the Jacobian spectrum of the probe's stack at ``step`` (float64, eval mode).

        ``jacobian_spectrum`` works on detached copies of the parameters under a forked
        RNG and restores every submodule's mode, so training continues unchanged.
        """
        if self.spectrum_probe is None:
            raise ValueError("this tracker has no spectrum_probe; pass (stack, inputs) when creating it")
        stack, inputs = self.spectrum_probe
        spectrum = jacobian_spectrum(stack, inputs, dtype=torch.float64, labels={"run": self.run, "step": step})
        summary = spectrum.summary()
        for quantity in ("chi", "max", "min_nonzero", "num_zeros"):
            self.record_scalar(step, f"jacobian_{quantity}", float(summary[quantity].mean()))
        if self.spectra_path is not None:
            frame = spectrum.to_frame()
            if self._spectra_writer is None:
                self._spectra_writer = CsvAppender(self.spectra_path, frame.columns)
            self._spectra_writer.append_frame(frame)

    def record_scalar(self, step: int, quantity: str, value: float, layer: str = "all") -> None:
        """Record a host-side scalar (an evaluation metric, say) right away, without a schedule."""
        self._pending.append((step, quantity, [layer], torch.tensor([float(value)])))

    def flush(self) -> None:
        """Move buffered values to the host in one transfer and append them as rows."""
        if not self._pending:
            return
        # Buffered values leave ``_pending`` only after their rows are written, so a signal
        # raised in between leaves them for ``close`` to write.
        pending = self._pending
        # One concatenation and one host transfer per device (a CUDA run plus CPU scalars).
        host: list[list[float]] = [[] for _ in pending]
        by_device: dict[torch.device, list[int]] = {}
        for index, (*_, values) in enumerate(pending):
            by_device.setdefault(values.device, []).append(index)
        for indices in by_device.values():
            flat = torch.cat([pending[i][3].reshape(-1) for i in indices]).cpu().tolist()
            offset = 0
            for i in indices:
                size = pending[i][3].numel()
                host[i] = flat[offset : offset + size]
                offset += size
        rows = []
        for (step, quantity, labels, _), values in zip(pending, host):
            rows.extend((self.run, step, quantity, label, value) for label, value in zip(labels, values))
        if self.writer is not None:
            self.writer.append(rows)
        self._pending = []
        self.rows.extend(rows)

    def close(self) -> None:
        """Flush and remove the forward hooks."""
        self.flush()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
