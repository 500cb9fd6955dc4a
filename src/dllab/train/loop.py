"""The one training loop: image classifiers (``train.image.ImageTask``) and text fine-tuning
(``text.strategies.TextTask``) both train with ``fit``.

A ``Task`` says what differs between them, as a LightningModule does for Lightning's Trainer: the model and
its precision, the optimiser and LR scheduler, the batches of an epoch, the loss of a batch (under as much
autocast as the task wants), the evaluation of a split, the history row and the result. ``fit`` does the rest:
  - the optimiser steps, through the ``Precision`` object (autocast, loss scaling, backward, unscale, gradient
    clipping, step: no precision branches here), and the scheduler, per epoch or per step;
  - after every epoch: validation, the best-validation weights (all of them, or only the trainable ones), the
    history row to the callbacks, and the training state to a ``CheckpointIO``, so a killed run continues from
    it and ends with exactly the numbers of an uninterrupted one (same seed, CPU, deterministic): the task's
    batches depend only on (seed, epoch) or on a generator whose state is checkpointed, and the RNG states are
    saved with the weights;
  - with ``task.early_stop`` (``train.early_stop``, see train/early_stop.py): after each epoch its monitor's
    history column is watched, and the fit ends early once it has not improved for ``patience`` epochs; the
    best weights are then the monitor's best epoch's (a validation monitor's), the stop is recorded in the
    history row (``stop_reason``), the log, the report's notes and the result (``stopped_epoch``), and the
    counter travels in the checkpoint;
  - at the end: the tests (of the final and/or the best weights, as the task says) and ``on_fit_end``.
A task with 0 epochs is validated and tested as it is.

Under torchrun (see dllab.core.distributed) the model trains in DistributedDataParallel (``distributed.wrap``); the
task gives each rank its share of every global batch and all-reduces what it measures, so every rank holds the
same history and picks the same best epoch. Rank 0 alone writes checkpoints (``train.checkpoint``).

Nothing here knows about run folders: progress goes to ``dllab.core.events`` callbacks and a Reporter.
"""
from __future__ import annotations

import math
import time
from typing import Any, Iterable, Sequence

import torch
from torch import nn

from dllab import DllabError
from dllab.core import distributed
from dllab.core.machine import seconds_since_process_start
from dllab.core.events import QUIET, Callback, CheckpointIO, Reporter
from dllab.core.progress import progress_bar
from dllab.train.checkpoint import restore_training_state, trained_weights, training_state
from dllab.train.early_stop import EarlyStopping
from dllab.train.precision import Precision

BAR_EVERY = 10   # steps between progress-bar updates of the running loss (each one waits for the device)


class Meter:
    """What a task sums over an epoch's training steps (on the device: reading a number waits for it)."""

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        raise NotImplementedError

    def postfix(self) -> dict[str, str]:
        """The progress bar's running figures."""
        return {}

    def summary(self) -> dict[str, float]:
        """The epoch's figures for the history row (all-reduced over the ranks under torchrun)."""
        raise NotImplementedError


class Task:
    """What one kind of training brings to ``fit``; subclasses fill in the methods that raise here."""
    scheduler_interval = "epoch"            # the LR scheduler steps once per "epoch" or per optimiser "step"
    max_grad_norm: float | None = None      # clip the gradients' total norm (after unscaling)
    early_stop: EarlyStopping | None = None   # stop when a history column stops improving (train.early_stop)
    trainable_only = False                  # checkpoints and the best state keep only the trainable weights
    test_final = False                      # test the final weights too, before the best-validation ones
    sync_bn = False                         # DDP: BatchNorm statistics over the global batch
    compile = False                         # torch.compile the training model

    def __init__(self, name: str, model: nn.Module, device: torch.device, precision: Precision, epochs: int):
        self.name, self.model, self.device, self.precision, self.epochs = name, model, device, precision, epochs

    # --- training ---
    def configure_optimizers(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
        """(optimiser, LR scheduler or None) for the trainable ``params``."""
        raise NotImplementedError

    def train_mode(self, step_model: nn.Module) -> None:
        """Put the model in training mode (``step_model``: the model as it trains, DDP-wrapped or compiled)."""
        step_model.train()

    def num_batches(self) -> int:
        raise NotImplementedError

    def batches(self, epoch: int) -> Iterable:
        """This rank's training batches of ``epoch`` (1, 2, ...)."""
        raise NotImplementedError

    def training_step(self, step_model: nn.Module, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, logits, targets) of one batch; the task applies ``self.precision.autocast()`` over as much of
        it as it should."""
        raise NotImplementedError

    def new_meter(self) -> Meter:
        raise NotImplementedError

    def on_before_optimizer_step(self) -> None:
        """Each step, between backward and the optimiser step, with the gradients at their true scale."""

    def on_train_epoch_end(self) -> None:
        """After each epoch's training steps, before validation."""

    def on_train_end(self) -> None:
        """After the last epoch (or the validation of a task that does not train), before the tests."""

    # --- evaluation and records ---
    def validate(self, model: nn.Module) -> dict[str, float]:
        """The validation figures ({} without a validation split); ``val_acc`` picks the best epoch."""
        raise NotImplementedError

    def test(self, model: nn.Module) -> dict[str, float]:
        raise NotImplementedError

    def history_row(self, epoch: int, train: dict, val: dict, lr: float, seconds: float) -> dict[str, Any]:
        return {"variant": self.name, "epoch": epoch, **train, **val, "lr": lr, "seconds": seconds}

    def epoch_line(self, row: dict[str, Any]) -> str | None:
        """A log line for the epoch's row (None: none)."""
        return None

    def result(self, history: list[dict], best: dict[str, Any], tests: dict[str, dict]) -> dict[str, Any]:
        """The fit's result from the history, the best epoch ({"epoch", "val_acc"}) and ``tests``: "final" (with
        ``test_final``) and "best" (the best-validation weights, or the final ones when no split picked any)."""
        raise NotImplementedError

    # --- checkpointed bookkeeping of the task's own (plain values) ---
    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def kept_tests(tests: dict[str, dict]) -> dict[str, Any]:
    """``fit``'s test figures under ``saved_model.METRICS_RULE``: the kept weights' ("best", else "final") as
    ``test_*``, and the last epoch's ("final", when the task tests it) as ``test_*_last``."""
    final = tests.get("final", {})
    return {**tests.get("best", final), **{f"{k}_last": v for k, v in final.items()}}


def fit(task: Task, callbacks: Sequence[Callback] = (), checkpoint: CheckpointIO | None = None,
        reporter: Reporter = QUIET, progress: bool = False) -> dict[str, Any]:
    """Train ``task.model`` for ``task.epochs`` (continuing from ``checkpoint`` when it holds a state), test it,
    and return ``task.result(...)``. On return the model holds the best-validation weights (the final ones when
    there is no validation split). ``progress``: show a progress bar per epoch (on a terminal)."""
    loop = _Loop(task, callbacks, checkpoint, reporter, progress)
    if task.epochs > 0:
        loop.setup()
        loop.restore()
        _log_startup(reporter)
        while loop.epoch < task.epochs and not loop.should_stop:
            loop.run_epoch()
    else:
        loop.validate_as_is()
    return loop.finish()


_startup_logged = False


def _log_startup(reporter: Reporter) -> None:
    """Once per process, before its first training batch: how long start-up took (imports, data loading,
    model building); kept small by importing what a run does not use only inside the functions needing it."""
    global _startup_logged
    if _startup_logged:
        return
    _startup_logged = True
    age = seconds_since_process_start()
    if age is not None:
        reporter.log(f"first batch after {age:.1f} s (process start)")


def _copy_weights(weights: dict[str, torch.Tensor], into: dict | None) -> dict:
    """``weights`` copied to the CPU into ``into`` (tensors allocated on the first call, then reused): an
    improving epoch costs one copy per tensor, and the copy takes no device memory."""
    if into is None or into.keys() != weights.keys():
        return {k: v.detach().to("cpu", copy=True) for k, v in weights.items()}
    for k, v in weights.items():
        into[k].copy_(v)
    return into


class _Loop:
    """One ``fit``: the steps it runs (set up, restore, epochs, finish) and what they share."""

    def __init__(self, task: Task, callbacks: Sequence[Callback], checkpoint: CheckpointIO | None,
                 reporter: Reporter, progress: bool):
        self.task, self.callbacks, self.checkpoint = task, list(callbacks), checkpoint
        self.reporter, self.progress = reporter, progress
        self.model, self.precision = task.model, task.precision
        self.epoch = 0
        self.should_stop = False     # set after an epoch to end the fit there (early stopping)
        self.history: list[dict] = []
        self.best: dict[str, Any] = {"val_acc": -1.0, "epoch": 0, "state": None}

    def setup(self) -> None:
        task = self.task
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise DllabError(f"[{task.name}] has no trainable parameters")
        self.opt, self.sched = task.configure_optimizers(self.params)
        self.step_sched = self.sched if task.scheduler_interval == "step" else None
        self.epoch_sched = self.sched if task.scheduler_interval == "epoch" else None
        step_model = distributed.wrap(self.model, task.device, task.sync_bn)
        self.step_model = torch.compile(step_model) if task.compile else step_model

    def restore(self) -> None:
        """Continue from the end-of-epoch state a killed run left in the checkpoint, if any."""
        if self.checkpoint is None or not self.checkpoint.exists():
            return
        self.epoch, progress = restore_training_state(self.checkpoint.load(), self.model, self.opt, self.sched,
                                                      self.precision, str(self.checkpoint))
        try:
            self.history, self.best = list(progress["history"]), dict(progress["best"])
            self.task.load_state_dict(progress)
            if self.task.early_stop is not None:   # the patience counter goes on where the killed run left it
                self.task.early_stop.load_state_dict(progress["early_stop"])
        except (KeyError, TypeError, ValueError) as e:
            raise DllabError(f"checkpoint {self.checkpoint} does not match this variant; delete it to restart "
                             "the variant") from e
        self.reporter.log(f"[{self.task.name}] resuming after epoch {self.epoch}")

    def run_epoch(self) -> None:
        """Train one epoch, validate, record it (callbacks, log), checkpoint."""
        task = self.task
        self.epoch += 1
        t0 = time.perf_counter()
        train, lr = self.train_epoch()
        val = task.validate(self.model)
        row = task.history_row(self.epoch, train, val, lr, time.perf_counter() - t0)
        self.track_best(val, self.watch(row))
        self.history.append(row)
        if not math.isfinite(row["train_loss"]):
            self.reporter.note(f"[{task.name}] training loss became {row['train_loss']} in epoch {self.epoch}")
        for cb in self.callbacks:
            cb.on_epoch_end(task.name, self.history)
        line = task.epoch_line(row)
        if line:
            self.reporter.log(line)
        if self.checkpoint is not None and self.epoch < task.epochs and not self.should_stop:
            # (after the last epoch the result replaces the checkpoint)
            progress = {"history": self.history, "best": self.best, **task.state_dict()}
            if task.early_stop is not None:
                progress["early_stop"] = task.early_stop.state_dict()
            self.checkpoint.save(training_state(self.epoch, self.model, self.opt, self.sched, self.precision,
                                                progress, task.trainable_only))

    def train_epoch(self) -> tuple[dict[str, float], float]:
        """One pass over the task's batches: (the meter's summary, the learning rate the epoch trained at)."""
        task, opt, prec = self.task, self.opt, self.precision
        task.train_mode(self.step_model)
        meter, n = task.new_meter(), task.num_batches()
        first = (self.epoch - 1) * n
        bar = progress_bar(total=n, desc=f"{task.name} {self.epoch}/{task.epochs}", show=self.progress)
        for i, batch in enumerate(task.batches(self.epoch)):
            loss, logits, targets = task.training_step(self.step_model, batch)
            opt.zero_grad(set_to_none=True)
            prec.backward(loss)
            prec.optimizer_step(opt, self.params, task.max_grad_norm, task.on_before_optimizer_step)
            if self.step_sched is not None:
                self.step_sched.step()
            meter.add(loss, logits, targets)
            for cb in self.callbacks:
                cb.on_train_batch_end(task.name, first + i + 1, loss.detach())
            if not bar.disable and (i % BAR_EVERY == 0 or i == n - 1):
                bar.set_postfix(meter.postfix())
            bar.update()
        bar.close()
        summary, lr = meter.summary(), opt.param_groups[0]["lr"]
        if self.epoch_sched is not None:
            self.epoch_sched.step()
        task.on_train_epoch_end()
        return summary, lr

    def watch(self, row: dict[str, Any]) -> bool | None:
        """Early stopping's look at the epoch's ``row``: whether its validation monitor improved (None when there
        is no early stopping or it watches a training column). A stop is recorded in the row and the log."""
        es = self.task.early_stop
        if es is None:
            return None
        improved = es.update(self.epoch, row)
        if es.stopped:
            self.should_stop = True
            row["stop_reason"] = es.reason
            self.reporter.log(f"[{self.task.name}] early stopping after epoch {self.epoch}/{self.task.epochs}: "
                              f"{es.reason}")
            self.reporter.note(f"{self.task.name} stopped early after epoch {self.epoch} of {self.task.epochs}: "
                               f"{es.reason}")
        return improved if es.monitor.startswith("val_") else None

    def track_best(self, val: dict[str, float], improved: bool | None = None) -> None:
        """Keep the weights of the best epoch so far: that of the best validation accuracy (the first epoch that
        reached it), or with early stopping on a validation column the monitor's best (``improved``). The last
        epoch's need no copy: they are the model's own at the end."""
        acc = val.get("val_acc")
        better = acc is not None and acc > self.best["val_acc"] if improved is None else improved
        if not better:
            return
        state = None
        if self.epoch < self.task.epochs:
            weights = trained_weights(self.model, self.task.trainable_only)
            state = _copy_weights(weights, self.best["state"])
        self.best = {"val_acc": -1.0 if acc is None else acc, "epoch": self.epoch, "state": state}

    def validate_as_is(self) -> None:
        """A task that does not train: one validation, recorded as epoch 0."""
        val = self.task.validate(self.model)
        self.history = [{"variant": self.task.name, "epoch": 0, **val}]
        self.best = {"val_acc": val.get("val_acc", -1.0), "epoch": 0, "state": None}
        for cb in self.callbacks:
            cb.on_epoch_end(self.task.name, self.history)

    def finish(self) -> dict[str, Any]:
        """The tests, with the best-validation weights restored, and the result."""
        task, best = self.task, self.best
        task.on_train_end()
        tests = {}
        if task.test_final:
            tests["final"] = task.test(self.model)
        if "final" in tests and 0 < best["epoch"] == self.epoch:
            tests["best"] = tests["final"]   # the final weights are the best: one test of them, not two
        elif best["epoch"] > 0 or not task.test_final:
            if 0 < best["epoch"] < self.epoch:
                self.model.load_state_dict(best["state"], strict=not task.trainable_only)
            tests["best"] = task.test(self.model)
        result = task.result(self.history, {"epoch": best["epoch"], "val_acc": best["val_acc"]}, tests)
        if task.early_stop is not None:   # 0: it ran every epoch
            result.update(stopped_epoch=task.early_stop.stopped_epoch, stop_reason=task.early_stop.reason)
        for cb in self.callbacks:
            cb.on_fit_end(task.name, result)
        return result
