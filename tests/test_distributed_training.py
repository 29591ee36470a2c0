"""Data-parallel training with two Gloo processes on CPU, against single-process runs."""

import json
import os
import socket
import warnings

import pytest
import torch
import torch.multiprocessing as mp

import rezero_dynamics.training.loop as loop
from rezero_dynamics.data import CharCorpus
from rezero_dynamics.tracking import Every, Tracker, read_records
from rezero_dynamics.training import TrainConfig, load_checkpoint, train
from rezero_dynamics.training.distributed import Distributed, distributed_from_environment, shard, torchrun_environment
from rezero_dynamics.training.loop import build_optimizer, build_task
from rezero_dynamics.training.step import TrainingStep

CONFIG = TrainConfig(depth=2, d_model=16, heads=2, seq_len=16, batch_size=4, steps=6, eval_every=3,
                     eval_batches=1, checkpoint_every=3)
STEP_BATCHES = 3


def small_corpus():
    text = CharCorpus.default()
    return CharCorpus(text.vocabulary, text.train[:20_000], text.validation[:4_000], text.test[:4_000], "pydoc slice")


def free_port():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


def tracked_grad_norms(context, corpus):
    """Train STEP_BATCHES steps of CONFIG with the loop's TrainingStep; return the grad_norm rows."""
    torch.manual_seed(CONFIG.seed)
    task = build_task(CONFIG, corpus)
    model = task.build_model().train()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if context.enabled else model
    optimizer = build_optimizer(model, CONFIG)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    tracker = Tracker(model, None, schedule=Every(1), activation_rms=False, update_norm=False, flush_every=1000)
    run_step = TrainingStep(wrapped, list(model.parameters()), task.loss, optimizer, scheduler, tracker,
                            device=torch.device("cpu"), context=context)
    generator = torch.Generator().manual_seed(CONFIG.seed)
    for step in range(STEP_BATCHES):
        run_step(step, task.train_batch(generator, torch.device("cpu")))
    tracker.flush()
    return [row for row in tracker.rows if row[2] in ("grad_norm", "loss")]


class StopAfter(KeyboardInterrupt):
    """Raised by every rank at the same step, so no rank waits on a collective."""


def worker(rank, world_size, port, folder):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    corpus = small_corpus()
    with distributed_from_environment(torch.device("cpu")) as context:
        assert context == Distributed(rank, world_size, rank)
        (folder / f"rank{rank}.json").write_text(json.dumps(tracked_grad_norms(context, corpus)))

        # A two-process run stopped right after its checkpoint at step 3.
        original_end_step = Tracker.end_step

        def end_step_then_stop(self, step):
            original_end_step(self, step)
            if step == 4:
                raise StopAfter

        Tracker.end_step = end_step_then_stop
        try:
            train(CONFIG, folder / "from-two", corpus=corpus)
        except StopAfter:
            pass
        finally:
            Tracker.end_step = original_end_step

        # Continue, with two processes, a run that one process stopped at step 3.
        train(CONFIG, folder / "from-one", corpus=corpus, resume=True)


def build_runs(folder, corpus):
    """Write the single-process runs into ``folder``, then run the two-process worker."""
    train(CONFIG, folder / "straight", corpus=corpus)

    original_save = loop.save_checkpoint

    def save_then_stop(state, path):
        original_save(state, path)
        if state["step"] == 3:
            raise KeyboardInterrupt

    loop.save_checkpoint = save_then_stop
    try:
        with pytest.raises(KeyboardInterrupt):
            train(CONFIG, folder / "from-one", corpus=corpus)
    finally:
        loop.save_checkpoint = original_save

    mp.start_processes(worker, args=(2, free_port(), folder), nprocs=2, join=True, start_method="spawn")


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory):
    corpus = small_corpus()
    # The port is chosen before the workers start, so another process may take it first.
    # Full-suite runs also failed in setup twice for a reason not captured. So the fixture
    # retries once in a fresh folder and warns with the first error. A deterministic
    # fault fails both attempts.
    for attempt in range(2):
        folder = tmp_path_factory.mktemp("ddp")
        try:
            build_runs(folder, corpus)
            return folder, corpus
        except mp.ProcessRaisedException as error:
            if attempt == 1:
                raise
            warnings.warn(f"two-process run failed, retrying once: {error}", stacklevel=1)


def series(run_dir, quantity):
    frame = read_records(run_dir).query("quantity == @quantity").sort_values(["step", "layer"])
    return frame["value"].tolist()


def test_rank_gradient_norms_equal(two_process_runs):
    folder, _ = two_process_runs
    rank0 = json.loads((folder / "rank0.json").read_text())
    rank1 = json.loads((folder / "rank1.json").read_text())
    assert len(rank0) == STEP_BATCHES * (CONFIG.depth + 2)  # loss plus grad_norm of each block and "other"
    assert rank0 == rank1


def test_ranks_match_single_process_batch(two_process_runs):
    folder, corpus = two_process_runs
    rank0 = json.loads((folder / "rank0.json").read_text())
    single = tracked_grad_norms(Distributed(), corpus)
    assert [row[1:4] for row in rank0] == [list(row[1:4]) for row in single]
    # Two half-batch means averaged by the all-reduce against one mean: float32 rounding.
    assert [row[4] for row in rank0] == pytest.approx([row[4] for row in single], rel=1e-5)


def test_two_process_run_resumes_in_one(two_process_runs):
    folder, corpus = two_process_runs
    assert json.loads((folder / "from-two" / "status.json").read_text())["status"] == "interrupted"
    assert load_checkpoint(folder / "from-two" / "checkpoint.pt")["step"] == 3
    train(CONFIG, folder / "from-two", corpus=corpus, resume=True)
    for quantity in ("loss", "grad_norm", "alpha", "val_bpc"):
        assert series(folder / "from-two", quantity) == pytest.approx(series(folder / "straight", quantity), rel=1e-4), quantity


def test_one_process_run_resumes_in_two(two_process_runs):
    folder, _ = two_process_runs
    assert json.loads((folder / "from-one" / "status.json").read_text())["status"] == "completed"
    for quantity in ("loss", "grad_norm", "alpha", "val_bpc"):
        assert series(folder / "from-one", quantity) == pytest.approx(series(folder / "straight", quantity), rel=1e-4), quantity


def test_rank_zero_alone_writes_records(two_process_runs):
    folder, _ = two_process_runs
    records = read_records(folder / "from-one")
    assert not records.duplicated(["step", "quantity", "layer"]).any()
    assert records["step"].max() == CONFIG.steps


def test_shard_splits_global_batch():
    batch = torch.arange(12).reshape(6, 2)
    parts = [shard(batch, Distributed(rank, 3, rank)) for rank in range(3)]
    assert torch.equal(torch.cat(parts), batch)
    features, labels = shard((batch, torch.arange(6)), Distributed(1, 2, 1))
    assert labels.tolist() == [3, 4, 5]
    assert features.shape == (3, 2)


def test_torchrun_environment_checks(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert torchrun_environment() is None
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="LOCAL_RANK, WORLD_SIZE are missing while RANK are set"):
        torchrun_environment()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "zero")
    with pytest.raises(ValueError, match="must be integers, got RANK='0', WORLD_SIZE='2', LOCAL_RANK='zero'"):
        torchrun_environment()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ValueError, match="RANK=2 is outside"):
        torchrun_environment()


def test_global_batch_must_split(monkeypatch, tmp_path):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")
    import rezero_dynamics.training.distributed as distributed

    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend: None)
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: None)
    with pytest.raises(ValueError, match="batch_size=4 does not split over 3 processes"):
        train(CONFIG, tmp_path / "run", corpus=small_corpus())
