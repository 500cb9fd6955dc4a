"""The one training loop (train.loop.fit) with a tiny fake task, and the precision plugin's backward/step.

The fake task draws its batch order and dropout masks from torch's global RNG, so a resumed fit reaches the
uninterrupted fit's weights only if the checkpoint really carries the RNG state, the optimiser, the scheduler
and the loop's bookkeeping.
"""
from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dllab import DllabError
from dllab.core.events import Callback
from dllab.train.loop import Meter, Task, fit
from dllab.train.precision import Precision

CPU = torch.device("cpu")


class SumMeter(Meter):
    def __init__(self):
        self.total, self.n = torch.zeros(()), 0

    def add(self, loss, logits, targets):
        self.total += loss.detach()
        self.n += 1

    def summary(self):
        return {"train_loss": self.total.item() / max(self.n, 1)}


class ToyTask(Task):
    """A 4-class linear classifier with dropout on 24 random points, batches of 8 in a random order.
    ``val_accs``: the validation accuracy each epoch reports (to choose the best epoch)."""

    def __init__(self, epochs=4, val_accs=(0.5, 0.9, 0.7, 0.8), interval="epoch", test_final=False,
                 precision="fp32", max_grad_norm=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Dropout(0.2), nn.Linear(5, 4))
        super().__init__("toy", model, CPU, Precision(precision, CPU), epochs)
        self.x, self.y = torch.randn(24, 5), torch.randint(0, 4, (24,))
        self.val_accs, self.scheduler_interval, self.test_final = list(val_accs), interval, test_final
        self.max_grad_norm = max_grad_norm
        self.calls: list[str] = []
        self.validated = 0

    def configure_optimizers(self, params):
        opt = torch.optim.SGD(params, lr=0.5, momentum=0.9)
        # (LambdaLR computes the lr from its step count: a resume that lost the count would show)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5 ** (k // 2))

    def num_batches(self):
        return 3

    def batches(self, epoch):
        order = torch.randperm(24)
        return [(self.x[order[i:i + 8]], self.y[order[i:i + 8]]) for i in range(0, 24, 8)]

    def training_step(self, step_model, batch):
        x, y = batch
        with self.precision.autocast():
            logits = step_model(x)
        return F.cross_entropy(logits.float(), y), logits, y

    def new_meter(self):
        return SumMeter()

    def validate(self, model):
        self.validated += 1
        return {"val_acc": self.val_accs[self.validated - 1]}

    def test(self, model):
        self.calls.append("test")
        return {"test_acc": float(model[1].weight.detach().sum())}

    def on_train_end(self):
        self.calls.append("train_end")

    def result(self, history, best, tests):
        return {"history": history, "best": best, **{f"{k}_acc": v["test_acc"] for k, v in tests.items()}}


class MemoryCheckpoint:
    """A CheckpointIO in memory that serialises (as a file would: later training must not change what it holds);
    ``die_after``: raise KeyboardInterrupt right after that many saves, as a killed run."""

    def __init__(self, die_after: int = 0):
        self.blob, self.saves, self.die_after = None, 0, die_after

    def exists(self):
        return self.blob is not None

    def save(self, state):
        buf = io.BytesIO()
        torch.save(state, buf)
        self.blob, self.saves = buf.getvalue(), self.saves + 1
        if self.saves == self.die_after:
            raise KeyboardInterrupt

    def load(self):
        return torch.load(io.BytesIO(self.blob), weights_only=True)


class Recorder(Callback):
    def __init__(self, task=None):
        self.events: list[tuple] = []
        self.task = task
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, variant, step, loss):
        assert loss.requires_grad is False
        self.events.append(("batch", step))

    def on_epoch_end(self, variant, history):
        self.events.append(("epoch", history[-1]["epoch"], len(history)))
        if self.task is not None:
            self.weights.append(self.task.model[1].weight.detach().clone())

    def on_fit_end(self, variant, result):
        self.events.append(("fit_end", variant))


def test_callbacks_are_called_in_order_with_steps_counted_over_the_fit():
    rec = Recorder()
    fit(ToyTask(epochs=2), callbacks=[rec])
    assert rec.events == [("batch", 1), ("batch", 2), ("batch", 3), ("epoch", 1, 1),
                          ("batch", 4), ("batch", 5), ("batch", 6), ("epoch", 2, 2), ("fit_end", "toy")]


def test_the_best_validation_epoch_is_restored_and_tested():
    task = ToyTask(test_final=True)
    rec = Recorder(task)
    out = fit(task, callbacks=[rec])
    assert out["best"] == {"epoch": 2, "val_acc": 0.9}
    assert [r["epoch"] for r in out["history"]] == [1, 2, 3, 4]
    assert torch.equal(task.model[1].weight, rec.weights[1])             # epoch 2's weights, not the last ones
    assert out["final_acc"] == pytest.approx(float(rec.weights[3].sum()))   # the final weights tested first
    assert out["best_acc"] == pytest.approx(float(rec.weights[1].sum()))
    assert task.calls == ["train_end", "test", "test"]


def test_the_last_epoch_as_best_keeps_the_final_weights_and_tests_once():
    task = ToyTask(epochs=2, val_accs=(0.5, 0.9))
    rec = Recorder(task)
    out = fit(task, callbacks=[rec])
    assert out["best"]["epoch"] == 2 and torch.equal(task.model[1].weight, rec.weights[1])
    assert task.calls == ["train_end", "test"] and "final_acc" not in out


def test_a_final_test_of_weights_that_are_also_the_best_is_not_run_twice():
    task = ToyTask(epochs=2, val_accs=(0.5, 0.9), test_final=True)
    rec = Recorder(task)
    out = fit(task, callbacks=[rec])
    assert out["best"]["epoch"] == 2 and task.calls == ["train_end", "test"]
    assert out["final_acc"] == out["best_acc"] == pytest.approx(float(rec.weights[1].sum()))


def test_a_task_without_epochs_is_validated_and_tested_as_is():
    task = ToyTask(epochs=0)
    before = task.model[1].weight.detach().clone()
    rec = Recorder()
    out = fit(task, callbacks=[rec])
    assert out["history"] == [{"variant": "toy", "epoch": 0, "val_acc": 0.5}] and out["best"]["epoch"] == 0
    assert torch.equal(task.model[1].weight, before) and task.calls == ["train_end", "test"]
    assert rec.events == [("epoch", 0, 1), ("fit_end", "toy")]


@pytest.mark.parametrize("interval, lrs", [("epoch", [0.5, 0.5, 0.25, 0.25]),                  # 4 scheduler steps
                                           ("step", [0.5 * 0.5 ** (k // 2) for k in (3, 6, 9, 12)])])  # 12
def test_the_scheduler_steps_per_epoch_or_per_step(interval, lrs):
    """The history's lr: what the epoch trained at (per epoch), or where the steps left it (per step)."""
    out = fit(ToyTask(interval=interval))
    assert [r["lr"] for r in out["history"]] == lrs


def test_resume_from_a_checkpoint_mid_fit_ends_with_the_uninterrupted_weights_and_history():
    ref_task = ToyTask(test_final=True)
    ref = fit(ref_task)
    ck = MemoryCheckpoint(die_after=2)                   # killed right after epoch 2's state was saved
    with pytest.raises(KeyboardInterrupt):
        fit(ToyTask(test_final=True), checkpoint=ck)
    torch.manual_seed(123)                               # whatever the RNG did since: the checkpoint restores it
    task = ToyTask(test_final=True)
    task.validated = 2                                   # (the fake validation's script continues too)
    lines = []

    class Log:
        def log(self, msg):
            lines.append(msg)

        def note(self, msg):
            lines.append(msg)
    rec = Recorder()
    out = fit(task, callbacks=[rec], checkpoint=ck, reporter=Log())
    assert [e for e in rec.events if e[0] == "batch"][0] == ("batch", 7)          # epochs 3 and 4 only
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(out.pop("history")) == drop(ref.pop("history")) and out == ref
    assert torch.equal(task.model[1].weight, ref_task.model[1].weight)
    assert "[toy] resuming after epoch 2" in lines
    assert ck.saves == 3                                 # epoch 3's; the last epoch's state is not saved


def test_a_checkpoint_from_another_task_is_a_one_line_error():
    ck = MemoryCheckpoint()
    task = ToyTask()
    fit(task, checkpoint=ck)
    state = ck.load()
    del state["progress"]["best"]
    ck.blob = None
    ck.save(state)
    with pytest.raises(DllabError, match="does not match this variant; delete it"):
        fit(ToyTask(), checkpoint=ck)


def test_a_model_without_trainable_parameters_is_refused():
    task = ToyTask()
    task.model.requires_grad_(False)
    with pytest.raises(DllabError, match=r"\[toy\] has no trainable parameters"):
        fit(task)


# --- the precision plugin: backward, unscale, clip, step ------------------------------------------------

def _grads_of(model):
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["bf16-mixed", "fp16-mixed"])
def test_optimizer_step_unscales_then_shows_then_clips_then_steps(name):
    """Under bf16 autocast (and fp16 with a loss scale of 2**16, on the CPU), the hook sees the gradients at
    their true scale before clipping; the step then applies the clipped ones."""
    prec = Precision(name, CPU)
    torch.manual_seed(0)
    model = nn.Linear(6, 3)
    x, y = torch.randn(16, 6), torch.randint(0, 3, (16,))
    ref = nn.Linear(6, 3)
    ref.load_state_dict(model.state_dict())
    with torch.autocast("cpu", dtype=prec.dtype):
        ref_loss = F.cross_entropy(ref(x).float(), y)
    ref_loss.backward()                                    # the same autocast, no loss scaling
    true = _grads_of(ref)
    true_norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in true])).item()

    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    with prec.autocast():
        loss = F.cross_entropy(model(x).float(), y)
    prec.backward(loss)
    if name == "fp16-mixed":                               # scaled for the backward pass
        assert model.weight.grad.abs().max() > 1000 * true[0].abs().max()
    max_norm = true_norm / 4
    prec.optimizer_step(opt, list(model.parameters()), max_norm, lambda: seen.append(_grads_of(model)))
    assert len(seen) == 1
    for g, t in zip(seen[0], true):
        assert torch.allclose(g, t, rtol=1e-3, atol=1e-6)  # unscaled, not yet clipped
    step = [b - p.detach() for b, p in zip(before, model.parameters())]   # lr 1: the update is the gradient
    step_norm = torch.linalg.vector_norm(torch.stack([s.norm() for s in step])).item()
    assert step_norm == pytest.approx(max_norm, rel=1e-3)                  # clipped before the step
    for s, t in zip(step, true):
        assert torch.allclose(s, t * max_norm / true_norm, rtol=1e-3, atol=1e-6)


def test_optimizer_step_without_clipping_is_the_plain_step():
    prec = Precision("fp32", CPU)
    torch.manual_seed(0)
    a, b = nn.Linear(4, 2), nn.Linear(4, 2)
    b.load_state_dict(a.state_dict())
    x, y = torch.randn(8, 4), torch.randint(0, 2, (8,))
    opt_a, opt_b = torch.optim.Adam(a.parameters(), 1e-2), torch.optim.Adam(b.parameters(), 1e-2)
    with prec.autocast():
        loss = F.cross_entropy(a(x), y)
    prec.backward(loss)
    prec.optimizer_step(opt_a)
    F.cross_entropy(b(x), y).backward()
    opt_b.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_the_loop_clips_at_the_tasks_max_grad_norm(monkeypatch):
    seen = []
    real = nn.utils.clip_grad_norm_
    monkeypatch.setattr(nn.utils, "clip_grad_norm_", lambda params, norm: seen.append(norm) or real(params, norm))
    fit(ToyTask(epochs=1, max_grad_norm=0.25))
    assert seen == [0.25] * 3
    seen.clear()
    fit(ToyTask(epochs=1))
    assert seen == []


def test_image_training_needs_no_run(tmp_path, monkeypatch):
    """train_model with the default hooks: trained, tested (final and best), nothing written anywhere."""
    from dllab.core.config import OptimConfig, TrainConfig
    from dllab.data.images import ImageData, Split
    from dllab.train.variants import train_model

    monkeypatch.chdir(tmp_path)
    g = torch.Generator().manual_seed(0)
    split = lambda n: Split(torch.randint(0, 256, (n, 1, 6, 6), dtype=torch.uint8, generator=g),  # noqa: E731
                            torch.randint(0, 3, (n,), generator=g))
    data = ImageData("tiny", ["a", "b", "c"], split(32), split(8), split(8), None, "generated")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 3))
    out = train_model(model, data, "v", CPU, train=TrainConfig(epochs=2, batch_size=8, precision="fp32"),
                      optim=OptimConfig(name="adam", lr=1e-2))
    assert {"test_acc", "test_acc_last", "best_epoch", "val_acc", "final_val_acc"} <= set(out)
    assert not {"best_test_acc", "best_test_loss"} & set(out)
    assert out["epochs"] == 2 and list(tmp_path.iterdir()) == []
