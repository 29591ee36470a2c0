"""Tracker statistics against brute-force computations, and the no-host-sync contract."""

import re

import numpy as np
import pandas as pd
import pytest
import torch

from rezero_dynamics.models import CharTransformerLM, DeepMLP
from rezero_dynamics.tracking import Every, LogSpaced, RecordWriter, Tracker, read_records


def lm_step(model, tracker, optimizer, step, generator):
    tracker.start_step(step)
    tokens = torch.randint(0, 20, (2, 9), generator=generator)
    logits = model(tokens[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 20), tokens[:, 1:].reshape(-1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    tracker.record_gradients(step, loss, 0.01)
    optimizer.step()
    tracker.end_step(step)
    return loss


def frame(tracker):
    return pd.DataFrame(tracker.rows, columns=["run", "step", "quantity", "layer", "value"])


def test_grad_norm_per_block_matches_brute_force():
    torch.manual_seed(0)
    model = CharTransformerLM(20, 16, 3, heads=2, variant="pre_norm")
    tracker = Tracker(model, activation_rms=False, update_norm=False)
    tracker.start_step(0)
    tokens = torch.randint(0, 20, (2, 9))
    loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 20), tokens[:, 1:].reshape(-1))
    loss.backward()
    tracker.record_gradients(0, loss, 0.1)
    tracker.end_step(0)
    tracker.flush()
    norms = frame(tracker).query("quantity == 'grad_norm'").set_index("layer")["value"]
    for index, block in enumerate(model.blocks):
        expected = torch.sqrt(sum(p.grad.square().sum() for p in block.parameters())).item()
        assert norms[str(index)] == pytest.approx(expected, rel=1e-5)
    block_ids = {id(p) for b in model.blocks for p in b.parameters()}
    rest = torch.sqrt(sum(p.grad.square().sum() for p in model.parameters() if id(p) not in block_ids)).item()
    assert norms["other"] == pytest.approx(rest, rel=1e-5)


def test_rezero_step_zero_gradients():
    torch.manual_seed(0)
    model = DeepMLP(8, 4, activation="tanh", variant="rezero", in_features=5, out_features=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))

    for step in range(2):
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        for name, alpha in model.alphas().items():
            assert alpha.grad.abs().item() > 0, (step, name)
        for block in model.blocks:
            weight_grad = block.sublayer.linear.weight.grad
            if step == 0:
                assert torch.count_nonzero(weight_grad).item() == 0  # alpha = 0 blocks the branch
            else:
                assert torch.count_nonzero(weight_grad).item() > 0
        optimizer.step()


def test_alpha_records_and_step_zero_identity():
    torch.manual_seed(0)
    model = CharTransformerLM(20, 16, 2, heads=2, variant="rezero")
    tracker = Tracker(model)
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    generator = torch.Generator().manual_seed(0)
    for step in range(3):
        lm_step(model, tracker, optimizer, step, generator)
    tracker.close()
    records = frame(tracker)
    alpha = records.query("quantity == 'alpha'")
    assert sorted(alpha["layer"].unique()) == ["encoder.blocks.0.gate.alpha", "encoder.blocks.1.gate.alpha"]
    assert (alpha.query("step == 0")["value"] == 0).all()
    assert (alpha.query("step == 2")["value"].abs() > 0).all()
    # At step 0 only alpha has a gradient inside each block, so the block norm is |alpha grad|.
    step0 = records.query("step == 0")
    grads = step0.query("quantity == 'alpha_grad'")["value"].abs().to_numpy()
    norms = step0.query("quantity == 'grad_norm' and layer != 'other'")["value"].to_numpy()
    assert norms == pytest.approx(grads, rel=1e-5)


def test_update_norm_matches_parameter_change():
    torch.manual_seed(0)
    model = DeepMLP(6, 2, variant="residual")
    tracker = Tracker(model, activation_rms=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.blocks[1].parameters()]
    tracker.start_step(0)
    loss = model(torch.randn(4, 6)).square().mean()
    loss.backward()
    tracker.record_gradients(0, loss, 0.5)
    optimizer.step()
    tracker.end_step(0)
    tracker.flush()
    after = list(model.blocks[1].parameters())
    expected = torch.sqrt(sum((a - b).square().sum() for a, b in zip(after, before))).item()
    recorded = frame(tracker).query("quantity == 'update_norm' and layer == '1'")["value"].item()
    assert recorded == pytest.approx(expected, rel=1e-5)


def test_activation_rms_matches_block_output():
    torch.manual_seed(0)
    model = DeepMLP(6, 2, variant="residual")
    tracker = Tracker(model, update_norm=False)
    x = torch.randn(4, 6)
    tracker.start_step(0)
    loss = model(x).sum()
    loss.backward()
    tracker.record_gradients(0, loss, 0.1)
    tracker.end_step(0)
    tracker.flush()
    expected = model.blocks[0](x).square().mean().sqrt().item()
    recorded = frame(tracker).query("quantity == 'activation_rms' and layer == '0'")["value"].item()
    assert recorded == pytest.approx(expected, rel=1e-6)


def test_schedule_skips_steps():
    model = DeepMLP(4, 1)
    tracker = Tracker(model, schedule=Every(3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(7):
        tracker.start_step(step)
        loss = model(torch.randn(2, 4)).sum()
        optimizer.zero_grad()
        loss.backward()
        tracker.record_gradients(step, loss, 0.1)
        optimizer.step()
        tracker.end_step(step)
    tracker.flush()
    assert sorted(frame(tracker)["step"].unique()) == [0, 3, 6]


def test_log_spaced_schedule():
    due = [step for step in range(1001) if LogSpaced(per_decade=4)(step)]
    assert due[:4] == [0, 1, 2, 3]
    for decade in (10, 100, 1000):
        assert decade in due, decade
    assert len(due) < 25


def test_per_step_path_makes_no_host_sync(monkeypatch):
    torch.manual_seed(0)
    model = CharTransformerLM(20, 16, 2, heads=2, variant="rezero")
    tracker = Tracker(model, per_parameter=True, flush_every=1000)
    optimizer = torch.optim.Adam(model.parameters(), 0.01)
    generator = torch.Generator().manual_seed(0)

    def forbidden(name):
        def fail(*args, **kwargs):
            raise AssertionError(f"Tensor.{name} called in the per-step path")

        return fail

    with monkeypatch.context() as patch:
        for name in ("item", "tolist", "cpu", "numpy", "__float__", "__bool__"):
            patch.setattr(torch.Tensor, name, forbidden(name))
        tracker.start_step(0)
        tokens = torch.randint(0, 20, (2, 9), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(tokens[:, :-1]).reshape(-1, 20), tokens[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        tracker.record_gradients(0, loss, 0.01)
        tracker.end_step(0)
    tracker.flush()
    assert len(tracker.rows) > 0


def test_model_without_blocks():
    with pytest.raises(ValueError, match="has no attribute 'blocks'; pass blocks="):
        Tracker(torch.nn.Linear(3, 3))


def test_records_survive_cut_line(tmp_path):
    path = tmp_path / "records.csv"
    writer = RecordWriter(path)
    writer.append([("a", 0, "loss", "all", 1.5), ("a", 1, "loss", "all", 1.25)])
    with open(path, "a") as handle:
        handle.write("a,2,loss,al")  # a crash in the middle of a row
    records = read_records(path)
    assert records["step"].tolist() == [0, 1]
    assert records["value"].tolist() == [1.5, 1.25]


def test_interrupted_flush_keeps_rows(tmp_path, monkeypatch):
    """A signal raised while rows are being written leaves them buffered, so close writes them."""
    torch.manual_seed(0)
    model = DeepMLP(8, 2, variant="rezero")
    writer = RecordWriter(tmp_path / "records.csv")
    tracker = Tracker(model, writer, schedule=Every(1), flush_every=1000)
    loss = model(torch.randn(4, 8)).square().mean()
    loss.backward()
    tracker.record_scalar(0, "loss", loss.detach())
    tracker.end_step(0)
    original_append = RecordWriter.append

    def interrupted(self, rows):
        raise KeyboardInterrupt

    monkeypatch.setattr(RecordWriter, "append", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tracker.flush()
    monkeypatch.setattr(RecordWriter, "append", original_append)
    tracker.close()
    records = read_records(tmp_path / "records.csv")
    assert (records["quantity"] == "loss").sum() == 1
    assert len(records) == len(tracker.rows)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("ref,0,grad_norm,1,abc", "line 3: value must be a number, got 'abc'"),
        ("ref,x,grad_norm,1,1.0", "line 3: step must be an integer, got 'x'"),
        ("ref,2.5,grad_norm,1,1.0", "line 3: step must be an integer, got '2.5'"),
    ],
)
def test_records_bad_row_rejected(tmp_path, row, message):
    path = tmp_path / "records.csv"
    path.write_text("run,step,quantity,layer,value\nref,0,grad_norm,1,1.5\n" + row + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} {message}")):
        read_records(path)


def test_records_keep_nan_and_inf(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("run,step,quantity,layer,value\nref,0,loss,,nan\nref,1,loss,,inf\nref,2,loss,,-inf\n")
    records = read_records(path)
    assert records["step"].dtype == np.int64
    assert np.isnan(records["value"].iloc[0])
    assert records["value"].iloc[1:].tolist() == [np.inf, -np.inf]


def test_records_binary_file_rejected(tmp_path):
    path = tmp_path / "records.csv"
    path.write_bytes(b"run,step\n\xa8\x01\x02\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a UTF-8 CSV file (invalid byte 0xa8 on line 2)")):
        read_records(path)


def test_records_wrong_columns_rejected(tmp_path):
    path = tmp_path / "records.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="has columns \\['a', 'b'\\], expected"):
        read_records(path)
