"""Exact input-output Jacobians of any ``nn.Module`` or function, and their spectra.

The Jacobian of a map f from an input tensor of shape ``in_shape`` to an output tensor
of shape ``out_shape`` is materialised as an (m, n) matrix with m = prod(out_shape) and
n = prod(in_shape): a (T, D) sequence gives a (T*D) x (T*D) matrix. It is built with
``torch.func``:

* ``forward`` mode pushes n tangent vectors through ``jvp``; ``auto`` picks it when n < m.
* ``reverse`` mode pulls m cotangent vectors through one ``vjp``; ``auto`` picks it when
  m <= n. For a square depth-64 Transformer Jacobian (1024 x 1024, float64) reverse
  mode was 1.3 to 2.3 times faster than forward mode on a 2-core CPU with PyTorch 2.13
  (``benchmarks/spectrum_default.py``).

Both run in chunks of basis vectors batched with ``vmap``; the chunk size follows a
memory budget. The whole computation runs under ``torch.no_grad()``: function
transforms still differentiate with respect to the input, but parameters that require
gradients build no autograd graph and receive no ``.grad``.

Dense matrices stop at a few thousand dimensions; larger maps need matrix-free methods.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp, vmap
from tqdm.auto import tqdm

from .result import JacobianSpectrum

JACOBIAN_MODES: tuple[str, ...] = ("auto", "forward", "reverse")
MODULE_MODES: tuple[str, ...] = ("eval", "train", "as_is")
DEFAULT_MEMORY_BUDGET: int = 2 * 2**30  # bytes

# The Jacobian is stored once and copied once more by the SVD.
_MATRIX_COPIES = 2


class JacobianTooLargeError(ValueError):
    """The dense Jacobian would not fit in the memory budget."""


class NonFiniteError(ValueError):
    """An input, output or Jacobian contains NaN or infinity."""


class SVDConvergenceError(ValueError):
    """The SVD did not converge with any of the drivers tried."""


def format_bytes(num_bytes: float) -> str:
    """Format a byte count with a binary unit, e.g. ``1.5 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(num_bytes) < 1024 or unit == "TiB":
            return f"{num_bytes:.1f} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def _check_finite(tensor: torch.Tensor, what: str, fix: str) -> None:
    bad = (~torch.isfinite(tensor)).sum().item()
    if bad:
        raise NonFiniteError(f"{what} contains {bad} non-finite value(s) (NaN or inf) out of {tensor.numel()}; {fix}")


def _position(flat_index: int, shape: tuple[int, ...]) -> str:
    """Describe element ``flat_index`` of a tensor of ``shape`` as ``(i, j, ...) (flat index k)``."""
    position, rest = [], flat_index
    for size in reversed(shape):
        position.append(rest % size)
        rest //= size
    return f"{tuple(reversed(position))} (flat index {flat_index})"


def _first_non_finite(tensor: torch.Tensor) -> int:
    return int((~torch.isfinite(tensor)).reshape(-1).nonzero()[0, 0])


def locate_non_finite(fn: object, x: torch.Tensor, *, module_mode: str = "eval", dtype: torch.dtype | None = None) -> str:
    """Describe where a forward pass of ``fn`` at ``x`` first produces NaN or infinity.

    Forward hooks on every named submodule record the first module, in the order the
    modules finish, whose output is non-finite, with the element's index. Parameters
    and buffers that are non-finite are named too. Returns one or more sentences, or
    an empty string when nothing non-finite is found (or ``fn`` is a plain function).
    Runs under ``torch.no_grad`` on a snapshot of the state cast to ``dtype``.
    """
    if not isinstance(fn, nn.Module):
        return ""
    dtype = dtype or x.dtype
    sentences = []
    bad_tensors = [
        name for name, tensor in itertools.chain(fn.named_parameters(), fn.named_buffers())
        if tensor.is_floating_point() and not torch.isfinite(tensor).all()
    ]
    if bad_tensors:
        sentences.append(f"Non-finite parameters or buffers: {', '.join(bad_tensors[:10])}.")
    first: list[str] = []

    def hook_for(name: str):
        def hook(module: nn.Module, inputs: tuple, output: object) -> None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            for number, tensor in enumerate(outputs):
                if first or not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point()):
                    continue
                if not torch.isfinite(tensor).all():
                    which = f"output {number}" if len(outputs) > 1 else "output"
                    first.append(
                        f"The first module whose output is non-finite is {name or '(the model itself)'!r} "
                        f"({type(module).__name__}), at {which} element "
                        f"{_position(_first_non_finite(tensor), tuple(tensor.shape))}."
                    )

        return hook

    handles = [module.register_forward_hook(hook_for(name)) for name, module in fn.named_modules()]
    try:
        with torch.no_grad(), analysis_call(fn, module_mode, dtype) as call:
            call(x.detach().to(dtype))
    except Exception as error:  # the location is a diagnosis; a second failure must not hide the first
        sentences.append(f"Locating the non-finite value failed ({type(error).__name__}: {error}).")
    finally:
        for handle in handles:
            handle.remove()
    return " ".join(sentences + first)


def _check_jacobian_finite(jacobian: torch.Tensor, what: str, in_shape: tuple, out_shape: tuple, location: Callable[[], str]) -> None:
    """Raise NonFiniteError naming the first non-finite entry of ``jacobian`` and where the
    forward pass first went non-finite (``location``, called only on failure)."""
    bad = int((~torch.isfinite(jacobian)).sum())
    if not bad:
        return
    row, column = divmod(_first_non_finite(jacobian), jacobian.shape[1])
    where = location() or (
        "Every module's output is finite, so the derivative itself is infinite or NaN (for example "
        "the square root or the norm of a zero vector)."
    )
    raise NonFiniteError(
        f"{what} contains {bad} non-finite value(s) (NaN or inf) out of {jacobian.numel()}; analyse in float64 "
        f"or at a smaller depth. The first is the derivative of output element {_position(row, out_shape)} "
        f"with respect to input element {_position(column, in_shape)}. {where}"
    )


def _batch_norms_in_training(module: nn.Module) -> list[str]:
    return [
        name or type(module).__name__
        for name, child in module.named_modules()
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.training
    ]


def _cast_state(module: nn.Module, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Map one name per (owning module, attribute) slot to a detached copy cast to ``dtype``.

    A module reached by several paths (a ReZero gate shared by two sublayers) must be
    swapped once only. ``functional_call`` swaps every name it is given, and on PyTorch
    2.13 swapping the same slot twice restored a plain tensor in place of the Parameter.
    Tensors shared by different modules (tied weights) get one copy under each name.
    """
    cast: dict[int, torch.Tensor] = {}
    slots: set[tuple[int, str]] = set()
    tensors: dict[str, torch.Tensor] = {}
    named = itertools.chain(
        ((n, t, False) for n, t in module.named_parameters(remove_duplicate=False)),
        ((n, t, True) for n, t in module.named_buffers(remove_duplicate=False)),
    )
    for name, tensor, is_buffer in named:
        owner_path, _, attribute = name.rpartition(".")
        slot = (id(module.get_submodule(owner_path)), attribute)
        if slot in slots:
            continue
        slots.add(slot)
        if id(tensor) not in cast:
            copy = tensor.detach()
            if tensor.is_floating_point():
                copy = copy.to(dtype, copy=is_buffer)  # buffers may be updated in place
            elif is_buffer:
                copy = copy.clone()
            cast[id(tensor)] = copy
        tensors[name] = cast[id(tensor)]
    return tensors


@contextlib.contextmanager
def module_mode_context(fn: object, module_mode: str) -> Iterator[None]:
    """Put every submodule of module ``fn`` in ``module_mode`` and restore each flag on exit.

    ``eval`` and ``train`` set the mode; ``as_is`` leaves it. Plain functions pass through.
    Raises ValueError for BatchNorm in training mode: batch statistics couple the
    samples of a batch, so a per-sample Jacobian is not defined.
    """
    _check_choice("module_mode", module_mode, MODULE_MODES)
    if not isinstance(fn, nn.Module):
        yield
        return
    saved_modes = [(child, child.training) for child in fn.modules()]
    try:
        if module_mode == "eval":
            fn.eval()
        elif module_mode == "train":
            fn.train()
        training_norms = _batch_norms_in_training(fn)
        if training_norms:
            raise ValueError(
                f"BatchNorm in training mode ({', '.join(training_norms)}) normalises with the "
                f"statistics of the batch, so one sample's output depends on the other samples "
                f"and a per-sample Jacobian is not defined; analyse with module_mode='eval', "
                f"which uses the running statistics"
            )
        yield
    finally:
        for child, training in saved_modes:
            child.training = training


def pure_call(
    fn: nn.Module | Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return a function of the input that evaluates ``fn`` on a snapshot of its state.

    For a module the snapshot contains detached parameters and cloned buffers cast to
    ``dtype``, so the caller's module keeps its tensors and dtype and gets no gradients.
    The module's training flags are read at each call (see ``module_mode_context``).
    A plain function is returned as it is; it must accept inputs of ``dtype``.
    """
    if not isinstance(fn, nn.Module):
        return fn
    tensors = _cast_state(fn, dtype)
    return lambda x: functional_call(fn, tensors, (x,), tie_weights=False)


@contextlib.contextmanager
def analysis_call(
    fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    module_mode: str,
    dtype: torch.dtype,
) -> Iterator[Callable[[torch.Tensor], torch.Tensor]]:
    """Yield a pure function of the input that evaluates ``fn`` for analysis.

    Combines ``module_mode_context`` and ``pure_call``: inside the block every submodule
    is in ``module_mode``; on exit each training flag is restored, also after an error.
    """
    with module_mode_context(fn, module_mode):
        yield pure_call(fn, dtype)


def _check_devices(fn: object, x: torch.Tensor) -> None:
    if not isinstance(fn, nn.Module):
        return
    first = next(itertools.chain(fn.named_parameters(), fn.named_buffers()), None)
    if first is not None and first[1].device != x.device:
        name, tensor = first
        raise ValueError(
            f"inputs are on {x.device} but the module's tensor {name!r} is on {tensor.device}; "
            f"move the inputs or the module to one device"
        )


def _saved_bytes_per_direction(call: Callable, x: torch.Tensor) -> int:
    """Estimate the memory one tangent or cotangent direction needs: the bytes autograd
    saves for one backward pass through ``call`` at ``x``, plus input and output.

    Only saved tensors that depend on ``x`` count, once each: weights saved for the
    backward pass are shared by every direction of a batched pass.
    """
    total = 0
    seen: set[tuple[int, int]] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        nonlocal total
        key = (tensor.data_ptr(), tensor.numel())
        if tensor.requires_grad and key not in seen:
            seen.add(key)
            total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = call(x.detach().clone().requires_grad_(True))
    return total + (x.numel() + out.numel()) * x.element_size()


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Fork the global RNG and seed it, so every pass draws the same dropout masks and the
    caller's RNG state is left untouched."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.default_generator.manual_seed(seed)
        if devices:
            with torch.cuda.device(devices[0]):
                torch.cuda.manual_seed(seed)
        yield


def _reverse_jacobian(call, x, out_numel, chunk_size, seed, device, linearized=None) -> torch.Tensor:
    n = x.numel()
    jacobian = x.new_empty(out_numel, n)
    if linearized is None:
        with _seeded_rng(seed, device):
            linearized = vjp(call, x)
    out, vjp_fn = linearized
    for start in range(0, out_numel, chunk_size):
        stop = min(start + chunk_size, out_numel)
        cotangents = torch.zeros(stop - start, out_numel, dtype=x.dtype, device=x.device)
        cotangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        (rows,) = vmap(vjp_fn)(cotangents.reshape(stop - start, *out.shape))  # (c, *in_shape)
        jacobian[start:stop] = rows.reshape(stop - start, n)
    return jacobian


def _forward_jacobian(call, x, out_numel, chunk_size, seed, device, linearized=None) -> torch.Tensor:
    n = x.numel()
    jacobian = x.new_empty(out_numel, n)

    def push(tangent: torch.Tensor) -> torch.Tensor:
        return jvp(call, (x,), (tangent,))[1]

    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        tangents = torch.zeros(stop - start, n, dtype=x.dtype, device=x.device)
        tangents[torch.arange(stop - start), torch.arange(start, stop)] = 1.0
        with _seeded_rng(seed, device):
            columns = vmap(push, randomness="same")(tangents.reshape(stop - start, *x.shape))  # (c, *out_shape)
        jacobian[:, start:stop] = columns.reshape(stop - start, out_numel).T
    return jacobian


def _meta_output_numel(fn: object, x: torch.Tensor, dtype: torch.dtype, memory_budget: float) -> int | None:
    """Return the output size of module ``fn`` at ``x`` from a pass on the meta device.

    The meta device allocates no data. Returns None for plain functions, for modules
    that cannot run there, and when a square Jacobian would fit the budget, because the
    real pass then checks the size.
    """
    if not isinstance(fn, nn.Module) or _MATRIX_COPIES * x.numel() ** 2 * dtype.itemsize <= memory_budget:
        return None
    try:
        tensors = {name: t.to("meta") for name, t in _cast_state(fn, dtype).items()}
        with torch.no_grad():
            out = functional_call(fn, tensors, (torch.empty_like(x, device="meta", dtype=dtype),), tie_weights=False)
        return out.numel() if isinstance(out, torch.Tensor) else None
    except Exception:  # the shape is then checked after the first real forward pass
        return None


def _check_budget(n: int, m: int, x: torch.Tensor, memory_budget: float) -> None:
    matrix_bytes = m * n * x.element_size()
    if _MATRIX_COPIES * matrix_bytes > memory_budget:
        raise JacobianTooLargeError(
            f"the Jacobian is {m} x {n} in {str(x.dtype).removeprefix('torch.')}, "
            f"{format_bytes(matrix_bytes)}, and needs about {format_bytes(_MATRIX_COPIES * matrix_bytes)} with "
            f"its SVD, over the memory budget of {format_bytes(memory_budget)}; use a shorter sequence "
            f"or a smaller width, or raise memory_budget (--memory-budget on the command line)"
        )


def _jacobian_of_call(
    call: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    mode: str,
    memory_budget: int,
    chunk_size: int | None,
    seed: int,
    out_numel_hint: int | None = None,
) -> tuple[torch.Tensor, torch.Size, str]:
    """Return (J, output shape, mode used) for a prepared pure ``call``; runs under no_grad."""
    if out_numel_hint is not None:
        _check_budget(x.numel(), out_numel_hint, x, memory_budget)
    # One forward pass serves both the output check and, in reverse mode, every VJP.
    linearized = None
    with _seeded_rng(seed, x.device):
        if mode == "forward":
            out = call(x)
        else:
            linearized = vjp(call, x)
            out = linearized[0]
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        raise ValueError(
            f"the function must return one floating-point tensor, got {type(out).__name__}"
            + (f" of dtype {out.dtype}" if isinstance(out, torch.Tensor) else "")
            + "; wrap it so that it returns the tensor to differentiate"
        )
    _check_finite(out, "the model's output", "check the model's weights and inputs, or analyse in float64")

    n, m = x.numel(), out.numel()
    matrix_bytes = m * n * x.element_size()
    _check_budget(n, m, x, memory_budget)
    if mode == "auto":
        mode = "forward" if n < m else "reverse"
    directions = n if mode == "forward" else m
    if chunk_size is None:
        with _seeded_rng(seed, x.device):
            per_direction = _saved_bytes_per_direction(call, x)
        spare = memory_budget - _MATRIX_COPIES * matrix_bytes
        chunk_size = int(min(directions, max(1, spare // max(per_direction, 1))))
    build = _forward_jacobian if mode == "forward" else _reverse_jacobian
    jacobian = build(call, x, m, chunk_size, seed, x.device, linearized if mode == "reverse" else None)
    return jacobian, out.shape, mode


ANALYSIS_DTYPES = (torch.float32, torch.float64)


def _validate_options(dtype: torch.dtype, memory_budget: float, chunk_size: int | None) -> None:
    if dtype not in ANALYSIS_DTYPES:
        raise ValueError(
            f"dtype {dtype} is not supported for Jacobian spectra; use torch.float32 or torch.float64 "
            f"(the SVD has no half-precision kernels, and half precision would hide small singular values)"
        )
    if not (isinstance(memory_budget, (int, float)) and math.isfinite(memory_budget) and memory_budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes, got {memory_budget!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")


def _validate_inputs(x: torch.Tensor, what: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(
            f"{what} have dtype {x.dtype}, but a Jacobian needs floating-point inputs; for a "
            f"language model, differentiate the encoder at the embeddings, e.g. "
            f"jacobian_spectrum(model.encoder, model.embed(tokens))"
        )
    _check_finite(x, what, "remove or replace the non-finite entries before the analysis")


def jacobian_matrix(
    fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    mode: str = "auto",
    dtype: torch.dtype | None = None,
    module_mode: str = "eval",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    chunk_size: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Compute the dense Jacobian of ``fn`` at ``x``; shape (prod(out.shape), prod(x.shape)).

    Args:
        fn: a module or a function of one tensor that returns one tensor.
        x: the point of evaluation, passed to ``fn`` as it is. Include any batch
            dimension the module needs. A batch of B samples gives one Jacobian that
            couples them.
        mode: ``forward``, ``reverse`` or ``auto`` (forward when n < m, else reverse).
        dtype: floating type of the computation; default ``x.dtype``. A module's
            parameters are cast for the analysis only.
        module_mode: ``eval`` (default: dropout off, BatchNorm uses running statistics),
            ``train`` (dropout on, one mask shared by all directions), or ``as_is``.
        memory_budget: bytes for the Jacobian, its SVD copy and the batched directions.
            ``JacobianTooLargeError`` is raised before any forward pass if the Jacobian and
            its SVD copy (twice the matrix) do not fit. The single forward pass that
            evaluates the model is not counted.
        chunk_size: directions per batched pass; default: as many as the budget allows.
        seed: seed of the dropout masks in ``train`` mode; the caller's RNG is not used.

    Raises:
        JacobianTooLargeError, NonFiniteError, ValueError: with the value and the fix.
    """
    _check_choice("Jacobian mode", mode, JACOBIAN_MODES)
    _validate_inputs(x, "inputs")
    dtype = dtype or x.dtype
    _validate_options(dtype, memory_budget, chunk_size)
    _check_devices(fn, x)
    x = x.detach().to(dtype)
    hint = _meta_output_numel(fn, x, dtype, memory_budget)
    with torch.no_grad(), analysis_call(fn, module_mode, dtype) as call:
        try:
            jacobian, out_shape, _ = _jacobian_of_call(
                call, x, mode=mode, memory_budget=memory_budget, chunk_size=chunk_size, seed=seed,
                out_numel_hint=hint,
            )
        except NonFiniteError as error:
            where = locate_non_finite(fn, x, module_mode=module_mode, dtype=dtype)
            raise NonFiniteError(f"{error}. {where}" if where else str(error)) from None
    _check_jacobian_finite(
        jacobian, "the Jacobian", tuple(x.shape), tuple(out_shape),
        lambda: locate_non_finite(fn, x, module_mode=module_mode, dtype=dtype),
    )
    return jacobian


def singular_values(matrix: torch.Tensor) -> torch.Tensor:
    """Return the singular values of ``matrix`` in descending order.

    If ``torch.linalg.svdvals`` does not converge (``torch.linalg.LinAlgError``) it is
    retried in float64, then with the QR-iteration driver gesvd: through ``driver=``
    on CUDA (then the Jacobi driver gesvdj), through ``scipy.linalg.svd`` on the CPU.
    A retry returns float64 values. Raises SVDConvergenceError listing every attempt.
    """
    attempts: list[str] = []

    def note(what: str, error: Exception) -> None:
        attempts.append(f"{what}: {(str(error).splitlines() or [type(error).__name__])[0]}")

    try:
        return torch.linalg.svdvals(matrix)
    except torch.linalg.LinAlgError as error:
        note(f"torch.linalg.svdvals in {str(matrix.dtype).removeprefix('torch.')}", error)
    wide = matrix.to(torch.float64)
    if matrix.dtype != torch.float64:
        try:
            return torch.linalg.svdvals(wide)
        except torch.linalg.LinAlgError as error:
            note("torch.linalg.svdvals in float64", error)
    if matrix.is_cuda:
        # NOTE: the tests run this CUDA branch on no GPU; only the CPU fallback is tested.
        for driver in ("gesvd", "gesvdj"):
            try:
                return torch.linalg.svdvals(wide, driver=driver)
            except torch.linalg.LinAlgError as error:
                note(f"torch.linalg.svdvals in float64 with driver={driver!r}", error)
    else:
        import numpy as np
        import scipy.linalg

        try:
            values = scipy.linalg.svd(wide.detach().numpy(), compute_uv=False, lapack_driver="gesvd")
            return torch.from_numpy(values)
        except (np.linalg.LinAlgError, ValueError) as error:
            note("scipy.linalg.svd in float64 with lapack_driver='gesvd'", error)
    raise SVDConvergenceError(
        f"the SVD of the {matrix.shape[0]} x {matrix.shape[1]} matrix did not converge ("
        + "; ".join(attempts)
        + "); check the matrix for NaN or very large entries, or analyse a smaller depth or width"
    )


def jacobian_spectrum(
    fn: nn.Module | Callable[[torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    *,
    mode: str = "auto",
    dtype: torch.dtype | None = None,
    module_mode: str = "eval",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    chunk_size: int | None = None,
    zero_rtol: float | None = None,
    seed: int = 0,
    labels: dict[str, object] | None = None,
    progress: bool = False,
) -> JacobianSpectrum:
    """Compute the singular values of the per-sample input-output Jacobian of ``fn``.

    ``inputs`` has shape (B, *in_shape). Sample b is passed as ``inputs[b:b+1]``, a batch
    of one, so modules that need a batch dimension work. Its Jacobian is taken with
    respect to that sample alone. To analyse part of a model, pass that part, e.g.
    ``model.encoder`` with embeddings as inputs, or ``model.stack`` of an MLP.

    ``zero_rtol`` sets which singular values count as exact zeros (see
    ``JacobianSpectrum``). ``labels`` (e.g. variant and depth) are copied into the
    result's frames. Other arguments are those of ``jacobian_matrix``.
    """
    _check_choice("Jacobian mode", mode, JACOBIAN_MODES)
    _validate_inputs(inputs, "inputs")
    if inputs.dim() < 1 or inputs.shape[0] == 0:
        raise ValueError(
            f"inputs must have shape (B, *in_shape) with B >= 1, got {tuple(inputs.shape)}"
        )
    dtype = dtype or inputs.dtype
    _validate_options(dtype, memory_budget, chunk_size)
    if zero_rtol is not None and not (math.isfinite(zero_rtol) and zero_rtol >= 0):
        raise ValueError(f"zero_rtol must be a finite number >= 0, got {zero_rtol!r}")
    _check_devices(fn, inputs)
    inputs = inputs.detach().to(dtype)
    hint = _meta_output_numel(fn, inputs[:1], dtype, memory_budget)

    rows = []
    used_mode = mode
    out_shape: tuple[int, ...] = ()
    with torch.no_grad(), analysis_call(fn, module_mode, dtype) as call:
        for b in tqdm(range(inputs.shape[0]), desc="Jacobians", disable=not progress, leave=False):
            try:
                jacobian, out_full_shape, used_mode = _jacobian_of_call(
                    call, inputs[b : b + 1], mode=mode, memory_budget=memory_budget,
                    chunk_size=chunk_size, seed=seed, out_numel_hint=hint,
                )
            except NonFiniteError as error:
                where = locate_non_finite(fn, inputs[b : b + 1], module_mode=module_mode, dtype=dtype)
                raise NonFiniteError(f"sample {b}: {error}" + (f". {where}" if where else "")) from None
            _check_jacobian_finite(
                jacobian, f"the Jacobian of sample {b}", tuple(inputs[b : b + 1].shape), tuple(out_full_shape),
                lambda: locate_non_finite(fn, inputs[b : b + 1], module_mode=module_mode, dtype=dtype),
            )
            rows.append(singular_values(jacobian).to("cpu", torch.float64))
            out_shape = tuple(out_full_shape[1:]) if out_full_shape[:1] == (1,) else tuple(out_full_shape)
            del jacobian

    in_shape = tuple(inputs.shape[1:])
    if zero_rtol is None:
        zero_rtol = max(math.prod(in_shape), math.prod(out_shape)) * torch.finfo(dtype).eps
    return JacobianSpectrum(
        singular_values=torch.stack(rows),
        in_shape=in_shape,
        out_shape=out_shape,
        zero_rtol=float(zero_rtol),
        mode=used_mode,
        dtype=str(dtype).removeprefix("torch."),
        module_mode=module_mode,
        labels=dict(labels or {}),
    )
