"""The training loop every image experiment uses.

``fit`` trains one *variant* (one model + optimiser setting) inside a run folder:
  - per epoch: train loss/acc, validation loss/acc, learning rate, seconds -> run's history.csv;
  - keeps the best-validation weights; at the end scores the final and the best-val model on test;
  - checkpoints the whole training state at the end of every epoch, atomically, so ``dllab run --resume``
    continues a killed run and ends with exactly the numbers of an uninterrupted one (same seed, CPU,
    deterministic): every epoch's batch order and augmentation depend only on (seed, epoch), and the
    RNG states are saved with the weights;
  - optionally records per-layer gradient norms (``train.grad_norms``).
A custom ``loss_fn(model, x, y) -> (loss, logits)`` plugs in other objectives (adversarial training).

Under torchrun (see dllab.distributed) the model trains in DistributedDataParallel: ``train.batch_size`` is
the global batch, each rank takes its 1/N share of every batch of the same (seed, epoch) order, and the
averaged gradients make a step what one process with the whole batch would take (BatchNorm excepted: its
batch statistics are per rank unless ``train.sync_bn``). The epoch's training loss and accuracy, and the
validation and test loss and accuracy, are sums all-reduced over the ranks (each rank evaluates every N-th
row), so every rank holds the same history and picks the same best epoch. Rank 0 alone writes the history,
checkpoints and models.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import DllabError, distributed
from ..config import OptimConfig, TrainConfig
from ..data.images import Batches, ImageData, Split
from ..env import seconds_since_process_start
from ..progress import progress_bar
from .checkpoint import (load_checkpoint, load_weights, restore_training_state, save_model,
                         save_training_state)
from .gradients import GradNormRecorder
from .precision import Precision, log_precision, model_kind, resolve_precision

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return F.cross_entropy(logits, y), logits


def make_optimizer(params, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    raise DllabError(f"optim.name={cfg.name}: choose sgd, adam or adamw")


def make_scheduler(opt, cfg: OptimConfig, epochs: int):
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    raise DllabError(f"optim.schedule={cfg.schedule}: choose none, cosine or step")


def set_train_mode(model: nn.Module) -> None:
    """train(), except frozen modules stay in eval: a frozen BatchNorm must not move its running stats."""
    model.train()
    for m in model.modules():
        params = list(m.parameters(recurse=False))
        if params and not any(p.requires_grad for p in params):
            m.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, split: Split, device: torch.device, batch_size: int = 1024,
             precision: Precision | None = None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` on a split (in fp32 unless ``precision`` says otherwise).
    Under torchrun each rank scores every N-th row and the sums are all-reduced."""
    model.eval()
    precision = precision or Precision("fp32", device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in Batches(split, batch_size, device, part=distributed.part(), pad=False):
        with precision.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    distributed.all_reduce_sum(loss_sum, correct)
    n = max(len(split), 1)
    return loss_sum.item() / n, correct.item() / n


def _copy_state(model: nn.Module, into: dict | None) -> dict:
    """The model's weights and buffers copied into ``into`` (tensors allocated on the first call, then
    reused): an improving epoch costs one copy per tensor, not deepcopy's allocations and Python walk."""
    current = model.state_dict()
    if into is None or into.keys() != current.keys():
        return {k: v.detach().clone() for k, v in current.items()}
    for k, v in current.items():
        into[k].copy_(v)
    return into


_startup_logged = False


def _log_startup(run) -> None:
    """Once per process, before its first training batch: how long start-up took (imports, data loading,
    model building); kept small by importing what a run does not use only inside the functions needing it."""
    global _startup_logged
    if _startup_logged:
        return
    _startup_logged = True
    age = seconds_since_process_start()
    if age is not None:
        run.log(f"first batch after {age:.1f} s (process start)")


class _Training:
    """One variant's training, as the short steps ``fit`` runs: restore, train an epoch, validate, checkpoint,
    finish. Holds what those steps share (model, optimiser, scheduler, precision, batches, bookkeeping)."""

    def __init__(self, model: nn.Module, data: ImageData, train: TrainConfig, optim: OptimConfig, run, variant: str,
                 device: torch.device, seed: int, augment: bool, loss_fn: LossFn, extra_row: dict | None):
        self.model, self.data, self.train, self.run, self.variant = model, data, train, run, variant
        self.device, self.loss_fn, self.extra_row = device, loss_fn, extra_row or {}
        model.to(device)
        if train.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
            model.to(memory_format=torch.channels_last)  # activations follow the weights' layout
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise DllabError(f"[{variant}] has no trainable parameters")
        self.opt = make_optimizer(self.params, optim)
        self.sched = make_scheduler(self.opt, optim, train.epochs)
        self.prec = resolve_precision(train.precision, device, model_kind(model))
        log_precision(run, self.prec, variant)
        self.grads = GradNormRecorder(model.weight_layers()) if train.grad_norms else None
        step_model = distributed.wrap(model, device, train.sync_bn)
        self.step_model = torch.compile(step_model) if train.compile else step_model
        self.batches = Batches(data.train, distributed.per_rank_batch(train.batch_size), device, shuffle=True,
                               augment=augment, seed=seed, part=distributed.part())
        self.ckpt = run.checkpoint_path(variant)
        self.history: list[dict] = []
        self.grad_history: list[list[float]] = []
        self.best = {"val_acc": -1.0, "epoch": 0, "state": None}
        self.epoch = 0

    def restore(self) -> None:
        """Continue from the end-of-epoch checkpoint a killed run left, if any."""
        if not distributed.on_main(self.ckpt.exists):
            return
        self.epoch, progress = restore_training_state(self.ckpt, self.model, self.opt, self.sched, self.prec)
        try:
            self.history, self.grad_history = list(progress["history"]), list(progress["grad_history"])
            self.best = dict(progress["best"])
        except (KeyError, TypeError):
            raise DllabError(f"checkpoint {self.ckpt} does not match this variant; delete it to restart the "
                             "variant") from None
        self.run.log(f"[{self.variant}] resuming after epoch {self.epoch}")

    def train_one_epoch(self) -> dict:
        self.epoch += 1
        t0 = time.perf_counter()
        set_train_mode(self.model)
        self.batches.set_epoch(self.epoch)
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        seen, scaler = 0, self.prec.scaler    # a no-op unless fp16-mixed: the step has no precision branches
        bar = progress_bar(total=len(self.batches), desc=f"{self.variant} {self.epoch}/{self.train.epochs}",
                           show=not self.run.quiet)
        for i, (x, y) in enumerate(self.batches):
            with self.prec.autocast():
                loss, logits = self.loss_fn(self.step_model, x, y)
            self.opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(self.opt)      # gradient norms see true-scale gradients
            if self.grads is not None:
                self.grads.step()
            scaler.step(self.opt)
            scaler.update()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            self.run.log_step(self.variant, (self.epoch - 1) * len(self.batches) + i + 1, loss.detach())
            seen += len(y)
            if bar.disable is False and (i % 10 == 0 or i == len(self.batches) - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            bar.update()
        bar.close()
        seen = torch.tensor(seen, device=self.device)
        distributed.all_reduce_sum(loss_sum, correct, seen)
        seen = seen.item()
        row = {"variant": self.variant, "epoch": self.epoch, "train_loss": loss_sum.item() / seen,
               "train_acc": correct.item() / seen}
        if not math.isfinite(row["train_loss"]):
            self.run.note(f"[{self.variant}] training loss became {row['train_loss']} in epoch {self.epoch}")
        self.lr, self.t0 = self.opt.param_groups[0]["lr"], t0
        if self.sched is not None:
            self.sched.step()
        return row

    def validate(self, row: dict) -> None:
        if self.data.val is not None:
            row["val_loss"], row["val_acc"] = evaluate(self.model, self.data.val, self.device,
                                                       self.train.eval_batch_size, self.prec)
            if row["val_acc"] > self.best["val_acc"]:
                self.best = {"val_acc": row["val_acc"], "epoch": self.epoch,
                             "state": _copy_state(self.model, self.best["state"])}
        row.update(lr=self.lr, seconds=round(time.perf_counter() - self.t0, 3), **self.extra_row)

    def checkpoint(self, row: dict) -> None:
        self.history.append(row)
        if self.grads is not None:
            self.grad_history.append(self.grads.epoch_end())
        self.run.add_history(self.history, self.variant)
        self.run.log(f"[{self.variant}] epoch {self.epoch}/{self.train.epochs} loss {row['train_loss']:.4f} "
                     f"acc {row['train_acc']:.4f}" + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
                     + f" ({row['seconds']:.1f}s)")
        save_training_state(self.ckpt, self.epoch, self.model, self.opt, self.sched, self.prec,
                            {"history": self.history, "grad_history": self.grad_history, "best": self.best})

    def finish(self) -> dict:
        """Test the final and the best-validation weights, save the best as models/<variant>.pt."""
        def test() -> tuple[float, float]:
            return evaluate(self.model, self.data.test, self.device, self.train.eval_batch_size, self.prec)

        history = self.history
        result = {"variant": self.variant, "epochs": self.train.epochs,
                  "train_acc": history[-1]["train_acc"] if history else float("nan"),
                  "seconds": sum(r["seconds"] for r in history)}
        result["test_loss"], result["test_acc"] = test()
        if self.best["state"] is not None:
            result.update(best_epoch=self.best["epoch"], val_acc=self.best["val_acc"],
                          final_val_acc=history[-1].get("val_acc"))
            self.model.load_state_dict(self.best["state"])
            result["best_test_loss"], result["best_test_acc"] = test()
        if self.grads is not None:
            result["grad_norms"] = {"layers": self.grads.names, "per_epoch": self.grad_history}
        # The best-validation weights are what later experiments (transfer, OOD) reuse.
        save_model(self.run.path / "models" / f"{self.variant}.pt", self.model, self.data.classes, result=result)
        return result   # fit saves it, and the saved model + result replace the training state


def fit(model: nn.Module, data: ImageData, train: TrainConfig, optim: OptimConfig, run, variant: str,
        device: torch.device, seed: int = 0, augment: bool = False, loss_fn: LossFn = cross_entropy_loss,
        extra_row: dict | None = None) -> dict:
    """Train ``model`` as ``variant`` of ``run``; returns (and saves) the variant's result dict.

    On return ``model`` holds the best-validation weights (the final ones when there is no validation
    split), the same weights saved as ``models/<variant>.pt`` for later experiments to reuse. A variant
    already finished in this run folder is not trained again: its weights and result are loaded.
    """
    def train_it() -> dict:
        t = _Training(model, data, train, optim, run, variant, device, seed, augment, loss_fn, extra_row)
        t.restore()
        _log_startup(run)
        while t.epoch < train.epochs:
            row = t.train_one_epoch()
            t.validate(row)
            t.checkpoint(row)
        return t.finish()

    result, reused = run.reuse_or_run(variant, train_it)
    if reused:
        path = run.path / "models" / f"{variant}.pt"
        load_weights(path, model, load_checkpoint(path).get("state_dict"))
    return result
