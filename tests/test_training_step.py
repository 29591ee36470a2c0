"""The training step: no host synchronisation, autocast, gradient scaling and torch.compile."""

import functools
import traceback

import pandas as pd
import pytest
import torch

from rezero_dynamics.data import CharCorpus
from rezero_dynamics.tracking import Every, Tracker, read_records
from rezero_dynamics.training import TrainConfig, train
from rezero_dynamics.training.loop import build_optimizer, build_task
from rezero_dynamics.training.step import TrainingStep

TINY = dict(depth=2, d_model=16, heads=2, seq_len=16, batch_size=4)
HOST_TRANSFERS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture(scope="module")
def corpus():
    text = CharCorpus.default()
    return CharCorpus(text.vocabulary, text.train[:20_000], text.validation[:4_000], text.test[:4_000], "pydoc slice")


def make_step(config, corpus, device="cpu", **step_options):
    """Build the task, model, optimiser and tracked TrainingStep that ``train`` builds."""
    torch.manual_seed(config.seed)
    task = build_task(config, corpus)
    model = task.build_model().to(device).train()
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tracker = Tracker(model, None, schedule=Every(1), per_parameter=True, flush_every=1000)
    run_step = TrainingStep(
        model, list(model.parameters()), task.loss, optimizer, scheduler, tracker,
        device=torch.device(device), precision=config.precision, clip_norm=config.clip_norm, **step_options,
    )
    return task, model, run_step


def records(tracker):
    tracker.flush()
    return pd.DataFrame(tracker.rows, columns=["run", "step", "quantity", "layer", "value"])


def grad_norms(tracker):
    frame = records(tracker).query("quantity == 'grad_norm'").sort_values(["step", "layer"])
    return frame["value"].tolist()


@pytest.mark.parametrize("precision,clip_norm", [("fp32", None), ("bf16", None), ("fp32", 0.5)])
def test_step_makes_no_host_transfer(corpus, monkeypatch, precision, clip_norm):
    config = TrainConfig(precision=precision, clip_norm=clip_norm, **TINY)
    task, model, run_step = make_step(config, corpus)
    generator = torch.Generator().manual_seed(0)
    run_step(0, task.train_batch(generator, torch.device("cpu")))  # creates the optimiser state
    # Adam keeps its step counters on the host (PyTorch 2.13, non-capturable) and reads them
    # with .item() on every device. That is no device synchronisation, so it is allowed.
    host_counters = {id(state["step"]) for state in run_step.optimizer.state.values()}
    calls = []

    def counting(name, original):
        def wrapper(self, *args, **kwargs):
            if id(self) not in host_counters:
                calls.append(f"Tensor.{name}\n" + "".join(traceback.format_stack(limit=6)[:-1]))
            return original(self, *args, **kwargs)

        return wrapper

    with monkeypatch.context() as patch:
        for name in HOST_TRANSFERS:
            patch.setattr(torch.Tensor, name, counting(name, getattr(torch.Tensor, name)))
        for step in range(1, 5):
            run_step(step, task.train_batch(generator, torch.device("cpu")))
    assert calls == [], "\n".join(calls[:3])
    frame = records(run_step.tracker)
    assert sorted(frame["step"].unique()) == [0, 1, 2, 3, 4]
    assert {"loss", "grad_norm", "grad_norm_param", "alpha", "update_norm", "activation_rms"} <= set(frame["quantity"])
    assert int(run_step.first_bad_step) == -1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_step_makes_no_cuda_sync(corpus, precision):
    config = TrainConfig(precision=precision, **TINY)
    task, model, run_step = make_step(config, corpus, device="cuda")
    generator = torch.Generator().manual_seed(0)
    device = torch.device("cuda")
    run_step(0, task.train_batch(generator, device))
    torch.cuda.synchronize()
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 5):
            run_step(step, task.train_batch(generator, device))
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    assert len(grad_norms(run_step.tracker)) == 5 * (config.depth + 1)


def test_scaled_gradient_norms_equal_unscaled(corpus):
    config = TrainConfig(clip_norm=None, **TINY)
    plain_task, _, plain = make_step(config, corpus)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    scaled_task, _, scaled = make_step(config, corpus, scaler=scaler)
    plain_batches, scaled_batches = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    for step in range(3):
        plain(step, plain_task.train_batch(plain_batches, torch.device("cpu")))
        scaled(step, scaled_task.train_batch(scaled_batches, torch.device("cpu")))
    assert scaler.get_scale() == 2.0**12  # no overflow, so no step was skipped
    # Scaling by a power of two commutes with rounding, so unscaled norms match closely.
    assert grad_norms(scaled.tracker) == pytest.approx(grad_norms(plain.tracker), rel=1e-6)
    losses = [records(t).query("quantity == 'loss'")["value"].tolist() for t in (scaled.tracker, plain.tracker)]
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def test_clipping_sees_unscaled_gradients(corpus):
    config = TrainConfig(clip_norm=1e-3, **TINY)
    task, _, run_step = make_step(config, corpus, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    generator = torch.Generator().manual_seed(1)
    for step in range(2):
        run_step(step, task.train_batch(generator, torch.device("cpu")))
    frame = records(run_step.tracker).query("quantity == 'grad_norm'")
    total = frame.groupby("step")["value"].apply(lambda v: float((v**2).sum() ** 0.5))
    assert total.tolist() == pytest.approx([1e-3, 1e-3], rel=1e-4)


def test_bf16_autocast_covers_forward_only(corpus):
    losses = {}
    for precision in ("fp32", "bf16"):
        config = TrainConfig(precision=precision, **TINY)
        task, model, run_step = make_step(config, corpus)
        seen = []
        model.head.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        run_step(0, task.train_batch(torch.Generator().manual_seed(0), torch.device("cpu")))
        losses[precision] = records(run_step.tracker).query("quantity == 'loss'")["value"].item()
        assert seen == [torch.bfloat16 if precision == "bf16" else torch.float32]
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(p.grad is None or p.grad.dtype == torch.float32 for p in model.parameters())
    assert losses["bf16"] != losses["fp32"]
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_compile_matches_eager(tmp_path, corpus, monkeypatch):
    # Inductor would spend about 100 s compiling on a 2-core CPU; aot_eager still traces the
    # model with its tracker hooks through TorchDynamo and AOTAutograd.
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    settings = dict(steps=3, eval_every=0, eval_batches=1, checkpoint_every=0, **TINY)
    train(TrainConfig(**settings), tmp_path / "eager", corpus=corpus)
    train(TrainConfig(compile=True, **settings), tmp_path / "compiled", corpus=corpus)
    for quantity in ("loss", "grad_norm", "activation_rms", "alpha", "val_bpc"):
        eager = read_records(tmp_path / "eager").query("quantity == @quantity").sort_values(["step", "layer"])
        compiled = read_records(tmp_path / "compiled").query("quantity == @quantity").sort_values(["step", "layer"])
        assert len(compiled) == len(eager) > 0, quantity
        assert compiled["value"].tolist() == pytest.approx(eager["value"].tolist(), rel=1e-5), quantity


def test_spectra_stay_float64_under_bf16(tmp_path, corpus):
    settings = dict(variant="pre_norm", steps=1, eval_every=0, eval_batches=1, checkpoint_every=0,
                    spectrum_every=1, spectrum_inputs=1, spectrum_tokens=4, **TINY)
    for precision in ("fp32", "bf16"):
        train(TrainConfig(precision=precision, **settings), tmp_path / precision, corpus=corpus)
    fp32 = pd.read_csv(tmp_path / "fp32" / "spectra.csv").query("step == 0")
    bf16 = pd.read_csv(tmp_path / "bf16" / "spectra.csv").query("step == 0")
    assert len(fp32) == 4 * TINY["d_model"]
    # Before the first update both runs have the same weights. A float64 spectrum is
    # identical, while a float32 one taken inside bf16 autocast would differ by about 1e-3.
    assert bf16["singular_value"].tolist() == fp32["singular_value"].tolist()
