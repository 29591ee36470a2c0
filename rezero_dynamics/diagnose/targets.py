"""Diagnosis targets: a toolkit model built by name, or a user's model from a Python file.

User files are executed as Python, like any script the user runs. Every mistake in
them (a syntax error, a missing function, a factory that returns something else, an
input of the wrong shape) raises ``TargetError`` with one line that names the file and
the fix.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..spectra.exact import analysis_call
from ..studies.spectrum import SpectrumConfig, build_stack, study_inputs
from ..theory import tanh_fixed_point
from .predictions import TheoryPrediction, identity_prediction, predict_mlp

INPUT_KINDS: tuple[str, ...] = ("auto", "text", "gaussian", "fixed_point")


class TargetError(ValueError):
    """A diagnosis target could not be loaded or run; the message names the file and the fix."""


@dataclass(frozen=True)
class Target:
    """A model ready to diagnose: the module, its inputs (B, *in_shape) and any theory."""

    name: str
    model: nn.Module
    inputs: torch.Tensor
    theory: TheoryPrediction | None = None


def toolkit_target(config: SpectrumConfig, inputs: str = "auto") -> Target:
    """Build the block stack that ``spectrum`` would build for the first variant and depth of
    ``config``, with its inputs, at initialisation.

    ``inputs``: ``text`` (embedded corpus windows), ``gaussian`` (N(0, 1)), ``fixed_point``
    (tanh MLP without skips: tanh(sqrt(q*) z), the post-activations at the mean-field
    fixed point, so the tanh theory holds from the first block), or ``auto``: text for
    the Transformer, fixed_point for a tanh MLP without skips, gaussian for other MLPs.
    """
    if inputs not in INPUT_KINDS:
        raise TargetError(f"unknown inputs {inputs!r}; choose one of {', '.join(INPUT_KINDS)}")
    variant, depth = config.variants[0], config.depths[0]
    tanh_plain = config.model == "mlp" and config.activation == "tanh" and variant == "none"
    if inputs == "auto" and config.model == "transformer":
        inputs = "text"
    elif inputs == "auto":
        inputs = "fixed_point" if tanh_plain else "gaussian"
    if inputs == "fixed_point" and not tanh_plain:
        raise TargetError(
            f"--inputs fixed_point applies only to the tanh MLP without skips (diagnose mlp --activation tanh "
            f"--variant none) because it samples the tanh mean-field fixed point; for {config.model} "
            f"--variant {variant} use --inputs auto, gaussian or text (Transformer)"
        )
    config = replace(config, variants=(variant,), depths=(depth,), inputs="gaussian" if inputs == "fixed_point" else inputs)
    config.validate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(config.seed * 1_000_003 % 2**64)  # as spectrum_study's first job
        stack = build_stack(config, variant, depth)
    samples = study_inputs(config)
    if inputs == "fixed_point":
        q_star = tanh_fixed_point(config.sigma_w**2, config.sigma_b**2)
        samples = torch.tanh(math.sqrt(q_star) * samples)

    if config.model == "mlp":
        theory = predict_mlp(
            depth=depth, activation=config.activation, variant=variant, init=config.init,
            sigma_w=config.sigma_w, sigma_b=config.sigma_b, alpha_init=config.alpha_init,
        )
    else:
        theory = identity_prediction() if variant == "rezero" and config.alpha_init == 0 else None
    name = f"{config.model} {variant}, depth {depth}, {inputs} inputs"
    return Target(name, stack.to(config.device), samples.to(config.device), theory)


def parse_input_shape(text: str) -> tuple[int, ...]:
    """Parse ``16,64`` into (16, 64): the shape of one sample, without the batch dimension."""
    try:
        shape = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise TargetError(f"--input-shape {text!r} is not a list of integers; write it like 16,64") from None
    if not shape or any(size < 1 for size in shape):
        raise TargetError(f"--input-shape {text!r} needs positive sizes, like 16,64 (one sample, no batch dimension)")
    return shape


def _split_spec(spec: str) -> tuple[Path, str]:
    path, separator, function = spec.rpartition(":")
    if not separator or not path.endswith(".py") or not function.isidentifier():
        raise TargetError(f"{spec!r} is not FILE.py:FUNCTION; name the file and the function, e.g. models.py:build")
    return Path(path), function


def load_function(spec: str):
    """Execute the file of ``FILE.py:FUNCTION`` and return the function."""
    path, function = _split_spec(spec)
    if not path.is_file():
        raise TargetError(f"{path}: file not found; check the path in {spec!r}")
    source = path.read_text(encoding="utf-8")
    try:
        code = compile(source, str(path), "exec")
    except SyntaxError as error:
        raise TargetError(f"{path} line {error.lineno}: syntax error: {error.msg}; fix the file and run again") from None
    module_name = f"_rezero_dynamics_user_{abs(hash(path.resolve()))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.path.insert(0, str(path.resolve().parent))  # so the file can import its neighbours
    try:
        exec(code, module.__dict__)
    except Exception as error:
        raise TargetError(f"{path}: running the file failed with {type(error).__name__}: {_one_line(error)}; fix the file") from None
    finally:
        sys.path.remove(str(path.resolve().parent))
    found = module.__dict__.get(function)
    if found is None:
        candidates = sorted(n for n, v in module.__dict__.items() if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module_name)
        hint = f"; the file defines {', '.join(candidates)}" if candidates else ""
        raise TargetError(f"{path} has no function {function!r}; define it or name another{hint}")
    if not callable(found):
        raise TargetError(f"{path}: {function!r} is a {type(found).__name__}, not a function; name a function that returns the model")
    return found


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__


def user_target(
    spec: str, *, input_shape: tuple[int, ...] | None = None, example_input: str | None = None,
    num_inputs: int = 2, seed: int = 0,
) -> Target:
    """Load a user's model from ``FILE.py:FUNCTION`` (a function with no arguments that
    returns an ``nn.Module``) with inputs of ``input_shape`` (per sample; N(0, 1)) or from
    ``example_input`` (``FILE.py:FUNCTION`` returning a floating tensor (B, *in_shape)).

    The factory runs with torch's CPU generator seeded by ``seed``, so its random
    initialisation repeats from run to run. The model is run once on one input sample to
    check the shape.
    """
    factory = load_function(spec)
    path, function = _split_spec(spec)
    try:
        with torch.random.fork_rng(devices=[]):  # --seed sets the initialisation without touching the caller's RNG
            torch.default_generator.manual_seed(seed)
            model = factory()
    except Exception as error:
        raise TargetError(f"{path}: {function}() raised {type(error).__name__}: {_one_line(error)}; fix the factory") from None
    if not isinstance(model, nn.Module):
        raise TargetError(
            f"{path}: {function}() returned {type(model).__name__}, not a torch.nn.Module; return the model "
            f"instance (e.g. 'return MyNet()')"
        )
    if (input_shape is None) == (example_input is None):
        raise TargetError(
            f"{spec}: give exactly one of --input-shape (one sample's shape, e.g. 16,64) or --example-input "
            f"FILE.py:FUNCTION (a function returning a batch of inputs)"
        )
    if input_shape is not None:
        generator = torch.Generator().manual_seed(seed)
        inputs = torch.randn(num_inputs, *input_shape, generator=generator)
        described = f"--input-shape {','.join(map(str, input_shape))}"
    else:
        inputs = _example_inputs(example_input)
        described = f"the inputs of {example_input}"
    parameter = next(model.parameters(), None)
    if parameter is not None:
        inputs = inputs.to(parameter.device)
    try:
        with torch.no_grad(), analysis_call(model, "eval", torch.float64) as call:
            output = call(inputs[:1].double())
    except Exception as error:
        if any(isinstance(m, nn.Embedding) for m in model.modules()):
            fix = (
                "the model contains an nn.Embedding, which takes token ids, and a Jacobian needs "
                "floating-point inputs: return the part after the embedding (e.g. model.encoder) and "
                "give its input shape"
            )
        else:
            fix = "pass the shape of one sample without the batch dimension, as the model's forward expects it"
        raise TargetError(
            f"{path}: {function}() model failed on one sample of shape {tuple(inputs.shape[1:])} from {described} "
            f"({type(error).__name__}: {_one_line(error)}); {fix}"
        ) from None
    if not isinstance(output, torch.Tensor):
        raise TargetError(
            f"{spec}: the model returned {type(output).__name__}, not a tensor; a Jacobian needs a "
            f"forward that returns one tensor, so return a wrapper module whose forward returns the part to "
            f"diagnose, e.g. model(x)[0]"
        )
    return Target(f"{spec}", model, inputs, None)


def _example_inputs(spec: str) -> torch.Tensor:
    function = load_function(spec)
    path, name = _split_spec(spec)
    try:
        inputs = function()
    except Exception as error:
        raise TargetError(f"{path}: {name}() raised {type(error).__name__}: {_one_line(error)}; fix the function") from None
    if not isinstance(inputs, torch.Tensor) or not inputs.is_floating_point() or inputs.dim() < 2:
        got = f"a {inputs.dtype} tensor of shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise TargetError(
            f"{path}: {name}() returned {got}; return a floating-point batch (B, *in_shape), e.g. "
            f"embeddings rather than token ids"
        )
    return inputs
