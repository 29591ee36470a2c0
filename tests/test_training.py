"""Training loop: metrics, divergence, checkpoints and exact resume."""

import json
import math

import pandas as pd
import pytest
import torch

from rezero_dynamics.data import CharCorpus
from rezero_dynamics.tracking import read_records
from rezero_dynamics.training import (
    CheckpointError,
    TrainConfig,
    bits_per_character,
    load_checkpoint,
    speedup,
    steps_to_target,
    train,
)

TINY = dict(depth=2, d_model=16, heads=2, seq_len=16, batch_size=4, eval_every=5, eval_batches=2, checkpoint_every=5)


@pytest.fixture(scope="module")
def corpus():
    text = CharCorpus.default()
    return CharCorpus(text.vocabulary, text.train[:20_000], text.validation[:4_000], text.test[:4_000], "pydoc slice")


@pytest.mark.parametrize("vocab_size", [2, 27, 256])
def test_uniform_model_scores_log2_vocab(vocab_size):
    targets = torch.randint(0, vocab_size, (3, 50))
    logits = torch.zeros(3, 50, vocab_size)
    assert bits_per_character(logits, targets).item() == pytest.approx(math.log2(vocab_size), rel=1e-6)


def test_steps_to_target_and_speedup():
    records = pd.DataFrame({"step": [0, 10, 20, 30], "value": [3.0, 2.0, 1.5, 1.1]})
    assert steps_to_target(records, 1.5) == 20
    assert math.isnan(steps_to_target(records, 1.0))
    assert steps_to_target(records.assign(value=[0.1, 0.5, 0.9, 0.95]), 0.9, lower_is_better=False) == 20
    assert speedup(156.0, 100.0) == pytest.approx(0.56)
    assert math.isnan(speedup(math.nan, 100.0))


def test_default_corpus_split(corpus):
    full = CharCorpus.default()
    total = full.train.numel() + full.validation.numel() + full.test.numel()
    assert total == len(full.vocabulary.decode(full.train)) + full.validation.numel() + full.test.numel()
    assert full.train.numel() / total == pytest.approx(0.9, abs=1e-4)


def test_training_lowers_loss_and_writes_run(tmp_path, corpus):
    result = train(TrainConfig(steps=30, lr=3e-3, **TINY), tmp_path / "run", corpus=corpus)
    assert result.status == "completed"
    records = read_records(tmp_path / "run")
    loss = records.query("quantity == 'loss'").sort_values("step")["value"].to_numpy()
    assert loss[-5:].mean() < loss[:5].mean() - 0.3
    validation = records.query("quantity == 'val_bpc'")
    assert validation["step"].tolist() == [0, 5, 10, 15, 20, 25, 30]
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "completed"
    assert status["step"] == 29


def test_divergence_is_recorded(tmp_path, corpus):
    config = TrainConfig(variant="post_norm", steps=40, lr=1e6, optimizer="sgd", **{**TINY, "depth": 6})
    result = train(config, tmp_path / "bad", corpus=corpus)
    assert result.status == "diverged"
    assert "non-finite loss or gradient norm at step 1" == result.cause
    status = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert status["status"] == "diverged"
    records = read_records(tmp_path / "bad")
    assert records.query("quantity == 'loss'")["step"].min() == 0
    assert records["step"].max() <= result.step


def test_resume_reproduces_loss_curve(tmp_path, corpus, monkeypatch):
    config = TrainConfig(steps=16, dropout=0.1, **TINY)
    train(config, tmp_path / "straight", corpus=corpus)

    import rezero_dynamics.training.loop as loop

    original = loop.save_checkpoint

    def save_then_die(state, path):
        original(state, path)
        if state["step"] == 10:
            raise KeyboardInterrupt  # the process is stopped right after this checkpoint

    interrupted = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(config, interrupted, corpus=corpus)
    status = json.loads((interrupted / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert load_checkpoint(interrupted / "checkpoint.pt")["step"] == 10

    result = train(config, interrupted, corpus=corpus, resume=True)
    assert result.status == "completed"

    def losses(path):
        return read_records(path).query("quantity == 'loss'").sort_values("step")["value"].tolist()

    assert losses(interrupted) == losses(tmp_path / "straight")
    assert len(losses(interrupted)) == 16


def test_resume_with_other_settings(tmp_path, corpus):
    train(TrainConfig(steps=6, **TINY), tmp_path / "run", corpus=corpus)
    with pytest.raises(ValueError, match=r"differ from the checkpoint's \(lr\)"):
        train(TrainConfig(steps=6, lr=0.5, **TINY), tmp_path / "run", corpus=corpus, resume=True)


def test_existing_run_needs_resume(tmp_path, corpus):
    train(TrainConfig(steps=2, **TINY), tmp_path / "run", corpus=corpus)
    with pytest.raises(ValueError, match="already contains a run; resume it"):
        train(TrainConfig(steps=2, **TINY), tmp_path / "run", corpus=corpus)


def test_checkpoint_loads_weights_only(tmp_path, corpus):
    train(TrainConfig(steps=6, **TINY), tmp_path / "run", corpus=corpus)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 5


def test_checkpoint_truncated(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "rezero_dynamics.checkpoint.v1", "step": 1, "x": torch.randn(1000)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_checkpoint_foreign(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not written by rezero_dynamics"):
        load_checkpoint(path)


class RunsCode:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path(__file__ if False else 'PWNED').touch()",))


def test_checkpoint_with_code_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "rezero_dynamics.checkpoint.v1", "payload": RunsCode()}, path)
    with pytest.raises(CheckpointError, match="could run code"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_invalid_config_messages():
    with pytest.raises(ValueError, match="unknown optimizer 'lion'"):
        TrainConfig(optimizer="lion").validate()
    with pytest.raises(ValueError, match="lr must be a positive finite number"):
        TrainConfig(lr=float("nan")).validate()
    with pytest.raises(ValueError, match="depth must be a positive integer, got 0"):
        TrainConfig(depth=0).validate()


def test_classifier_learns_digits(tmp_path):
    config = TrainConfig(
        task="classifier", data="digits", depth=4, width=32, variant="rezero", steps=60, batch_size=32,
        lr=3e-3, eval_every=20, checkpoint_every=0,
    )
    result = train(config, tmp_path / "digits")
    assert result.status == "completed"
    accuracy_rows = read_records(tmp_path / "digits").query("quantity == 'val_accuracy'")
    assert accuracy_rows["value"].iloc[-1] > 0.6  # chance is 0.1


def test_spectra_recorded_during_training(tmp_path, corpus):
    config = TrainConfig(steps=6, spectrum_every=3, spectrum_inputs=1, spectrum_tokens=4, **TINY)
    train(config, tmp_path / "run", corpus=corpus)
    spectra = pd.read_csv(tmp_path / "run" / "spectra.csv")
    assert sorted(spectra["step"].unique()) == [0, 3, 6]
    at_init = spectra.query("step == 0")["singular_value"]
    assert at_init.sub(1.0).abs().max() < 1e-12  # ReZero with alpha = 0 is the identity
    assert len(at_init) == 4 * 16
    chi = read_records(tmp_path / "run").query("quantity == 'jacobian_chi'")
    assert chi["step"].tolist() == [0, 3, 6]


def test_alpha_group_has_no_weight_decay():
    from rezero_dynamics.models import DeepMLP
    from rezero_dynamics.training.loop import build_optimizer

    model = DeepMLP(4, 3, variant="rezero")
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.1, alpha_lr=0.5))
    groups = optimizer.param_groups
    assert len(groups[1]["params"]) == 3
    assert groups[1]["weight_decay"] == 0.0
    assert groups[1]["lr"] == 0.5
    assert groups[0]["weight_decay"] == 0.1


def test_warmup_then_cosine():
    from rezero_dynamics.training.loop import learning_rate_factor

    config = TrainConfig(steps=110, warmup_steps=10, decay="cosine")
    assert learning_rate_factor(0, config) == pytest.approx(0.1)
    assert learning_rate_factor(9, config) == pytest.approx(1.0)
    assert learning_rate_factor(60, config) == pytest.approx(0.5)
    assert learning_rate_factor(110, config) == pytest.approx(0.0, abs=1e-12)


def test_spectrum_probes_leave_training_unchanged(tmp_path, corpus):
    plain = TrainConfig(steps=8, dropout=0.1, **TINY)
    probed = TrainConfig(steps=8, dropout=0.1, spectrum_every=2, spectrum_inputs=1, spectrum_tokens=4, **TINY)
    train(plain, tmp_path / "plain", corpus=corpus)
    train(probed, tmp_path / "probed", corpus=corpus)

    def series(path, quantity):
        return read_records(path).query("quantity == @quantity").sort_values(["step", "layer"])["value"].tolist()

    for quantity in ("loss", "grad_norm", "alpha", "val_bpc"):
        assert series(tmp_path / "plain", quantity) == series(tmp_path / "probed", quantity), quantity


def test_recorded_gradient_is_the_clipped_one(tmp_path, corpus):
    config = TrainConfig(steps=3, clip_norm=1e-3, lr=1e-4, **TINY)
    train(config, tmp_path / "run", corpus=corpus)
    norms = read_records(tmp_path / "run").query("quantity == 'grad_norm'")
    total = norms.groupby("step")["value"].apply(lambda v: float((v**2).sum() ** 0.5))
    assert total.tolist() == pytest.approx([1e-3] * 3, rel=1e-4)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad"])
def test_every_optimizer_trains(tmp_path, corpus, optimizer):
    lr = 0.05 if optimizer in ("sgd", "adagrad") else 3e-3
    result = train(TrainConfig(steps=12, optimizer=optimizer, lr=lr, **TINY), tmp_path / optimizer, corpus=corpus)
    assert result.status == "completed"
    loss = read_records(tmp_path / optimizer).query("quantity == 'loss'").sort_values("step")["value"].to_numpy()
    assert loss[-3:].mean() < loss[:3].mean()


def test_log_spaced_tracking(tmp_path, corpus):
    config = TrainConfig(steps=40, track_schedule="log", track_every=4, **TINY)
    train(config, tmp_path / "run", corpus=corpus)
    steps = sorted(read_records(tmp_path / "run").query("quantity == 'loss'")["step"].tolist())
    assert steps[:4] == [0, 1, 2, 3]
    assert 10 in steps
    assert len(steps) < 15
    with pytest.raises(ValueError, match="unknown track_schedule 'sqrt'"):
        TrainConfig(track_schedule="sqrt").validate()


def test_evaluation_is_deterministic_and_leaves_training_alone(tmp_path, corpus):
    from rezero_dynamics.training import LanguageModelTask

    config = TrainConfig(dropout=0.5, alpha_init=1.0, **TINY)
    task = LanguageModelTask(corpus, config)
    model = task.build_model().train()
    first = task.evaluate(model, torch.device("cpu"))
    assert task.evaluate(model, torch.device("cpu")) == first
    assert model.training

    every_five = TrainConfig(steps=12, dropout=0.3, **{**TINY, "eval_every": 5})
    every_seven = TrainConfig(steps=12, dropout=0.3, **{**TINY, "eval_every": 7})
    train(every_five, tmp_path / "five", corpus=corpus)
    train(every_seven, tmp_path / "seven", corpus=corpus)

    def losses(path):
        return read_records(path).query("quantity == 'loss'").sort_values("step")["value"].tolist()

    assert losses(tmp_path / "five") == losses(tmp_path / "seven")


def test_resume_keeps_spectrum_probe(tmp_path, corpus, monkeypatch):
    import rezero_dynamics.training.loop as loop

    config = TrainConfig(steps=12, spectrum_every=4, spectrum_inputs=1, spectrum_tokens=4, lr=1e-2,
                         **{**TINY, "checkpoint_every": 6})
    train(config, tmp_path / "straight", corpus=corpus)
    original = loop.save_checkpoint

    def save_then_die(state, path):
        original(state, path)
        if state["step"] == 6:
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            train(config, tmp_path / "resumed", corpus=corpus)
    train(config, tmp_path / "resumed", corpus=corpus, resume=True)
    straight = pd.read_csv(tmp_path / "straight" / "spectra.csv")
    resumed = pd.read_csv(tmp_path / "resumed" / "spectra.csv")
    assert straight["step"].tolist() == resumed["step"].tolist()
    assert straight["singular_value"].tolist() == resumed["singular_value"].tolist()


def test_divergence_before_spectrum_is_diverged(tmp_path, corpus):
    config = TrainConfig(variant="post_norm", steps=20, lr=1e6, optimizer="sgd", spectrum_every=5, spectrum_inputs=1,
                         spectrum_tokens=4, **{**TINY, "depth": 6, "eval_every": 0})
    result = train(config, tmp_path / "bad", corpus=corpus)
    assert result.status == "diverged"


def test_other_interruption_marked_interrupted(tmp_path, corpus, monkeypatch):
    import rezero_dynamics.training.loop as loop

    class Terminated(BaseException):
        pass

    def die(state, path):
        raise Terminated

    monkeypatch.setattr(loop, "save_checkpoint", die)
    with pytest.raises(Terminated):
        train(TrainConfig(steps=8, **TINY), tmp_path / "run", corpus=corpus)
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "interrupted"
    assert "Terminated" in status["cause"]


def test_checkpoint_garbage_file(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("hello\n")
    with pytest.raises(CheckpointError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_more_invalid_config_messages():
    with pytest.raises(ValueError, match="weight_decay must be a finite number >= 0, got -1"):
        TrainConfig(weight_decay=-1.0).validate()
    with pytest.raises(ValueError, match="use --spectrum-tokens at most --seq-len"):
        TrainConfig(seq_len=16, spectrum_every=1, spectrum_tokens=100).validate()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"task": "classifier", "classifier_model": "resnet", "activation": "tanh"}, "activation='tanh' is not used by the ResNet"),
        ({"task": "classifier", "classifier_model": "resnet", "width": 64}, "width=64 is not used by the ResNet"),
        ({"task": "classifier", "classifier_model": "resnet", "norm": "batch"}, "norm='batch' is not used by the ResNet"),
        ({"task": "classifier", "classifier_model": "resnet", "init": "orthogonal"}, "init='orthogonal' is not used by the ResNet"),
        ({"task": "classifier", "classifier_model": "resnet", "sigma_w": 2.0}, "sigma_w=2.0 is not used by the ResNet"),
        ({"variant": "deepnorm", "norm": "batch"}, "norm='batch' is not used by the character LM"),
        ({"task": "classifier", "seq_len": 32}, "seq_len=32 is not used by the MLP classifier"),
        ({"variant": "residual", "alpha_init": 0.5}, "alpha_init=0.5 is not used by variant 'residual'"),
    ],
)
def test_unused_settings_rejected(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**settings).validate()


def test_used_settings_accepted():
    TrainConfig(task="classifier", activation="tanh", width=64, norm="batch", variant="pre_norm").validate()
    TrainConfig(variant="rezero_pre_norm", alpha_init=0.5).validate()


def test_task_and_model_defaults():
    assert TrainConfig().data == "default"
    assert TrainConfig().depth == 12
    assert TrainConfig(task="classifier").validate().data == "digits"
    resnet = TrainConfig(task="classifier", classifier_model="resnet").validate()
    assert resnet.depth == 20
    assert resnet.data == "digits"
    assert TrainConfig(task="classifier", classifier_model="resnet", depth=56).depth == 56
