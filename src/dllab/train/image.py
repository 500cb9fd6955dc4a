"""Image classification as a task of the one training loop (``train.loop.fit``).

``ImageTask`` trains one *variant* (one model + optimiser setting):
  - batches: ``data.images.Batches``, each epoch's order and augmentation from (seed, epoch); under torchrun each
    rank takes its 1/N share of every global batch (``train.batch_size``), so the averaged gradients make the
    step one process with the whole batch would take (BatchNorm excepted: its batch statistics are per rank
    unless ``train.sync_bn``);
  - loss: ``loss_fn(model, x, y) -> (loss, logits)`` inside autocast (cross-entropy, or another objective such
    as adversarial training);
  - per epoch: train loss/acc, validation loss/acc, learning rate, seconds; the scheduler (torch's, from
    ``optim.schedule``) steps per epoch, one-cycle's per step; optionally per-layer gradient norms
    (``train.grad_norms``), recorded at their true scale; optionally early stopping (``train.early_stop``);
  - gradients clipped to ``train.clip_grad_norm`` (by the Precision plugin, after unscaling), if set;
  - the final AND the best-validation weights are tested (all the weights: BatchNorm statistics too): the
    result's ``test_*`` are the best-validation (kept) weights', ``test_*_last`` the final ones'.
The epoch's training loss and accuracy, and the validation and test loss and accuracy, are sums all-reduced
over the ranks (each rank evaluates every N-th row), so every rank holds the same history.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from dllab import DllabError
from dllab.core import distributed
from dllab.core.config import OptimConfig, TrainConfig
from dllab.data.images import Batches, ImageData, Split
from dllab.models.common import weight_layers
from dllab.train.early_stop import EarlyStopping
from dllab.train.gradients import GradNormRecorder
from dllab.train.loop import Meter, Task, kept_tests
from dllab.train.precision import Precision, model_kind, resolve_precision

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


# How often each ``optim.schedule`` steps: OneCycleLR is defined over the optimiser steps, the others over epochs.
STEP_SCHEDULES = ("onecycle",)


def scheduler_interval(cfg: OptimConfig) -> str:
    """"step" or "epoch": when the loop steps ``cfg.schedule``'s scheduler (``Task.scheduler_interval``)."""
    return "step" if cfg.schedule in STEP_SCHEDULES else "epoch"


def make_scheduler(opt, cfg: OptimConfig, epochs: int, steps_per_epoch: int = 1):
    """``cfg.schedule`` as torch.optim.lr_scheduler's scheduler for ``opt`` over ``epochs`` (None: a constant lr)."""
    sched = torch.optim.lr_scheduler
    if cfg.schedule == "none":
        return None
    if cfg.schedule == "cosine":
        return sched.CosineAnnealingLR(opt, T_max=max(epochs, 1))
    if cfg.schedule == "step":
        return sched.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)
    if cfg.schedule == "onecycle":
        # Momentum (or Adam's beta1) is cycled against the lr, as in the one-cycle policy, unless the optimiser
        # has none to cycle (SGD without momentum keeps none).
        cycle = not (cfg.name == "sgd" and cfg.momentum == 0)
        return sched.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(epochs * steps_per_epoch, 1),
                                cycle_momentum=cycle)
    if cfg.schedule == "warmup_cosine":
        warm = sched.LinearLR(opt, start_factor=cfg.warmup_start_factor, total_iters=cfg.warmup_epochs)
        cosine = sched.CosineAnnealingLR(opt, T_max=max(epochs - cfg.warmup_epochs, 1))
        return sched.SequentialLR(opt, [warm, cosine], milestones=[cfg.warmup_epochs])
    raise DllabError(f"optim.schedule={cfg.schedule}: choose none, cosine, step, onecycle or warmup_cosine")


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


class ImageMeter(Meter):
    """Sample-weighted training loss and accuracy of an epoch."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), device=device, dtype=torch.long)
        self.seen, self.device = 0, device

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += loss.detach().float() * len(targets)
        self.correct += (logits.detach().argmax(1) == targets).sum()
        self.seen += len(targets)

    def postfix(self) -> dict[str, str]:
        seen = max(self.seen, 1)
        return {"loss": f"{self.loss_sum.item() / seen:.3f}", "acc": f"{self.correct.item() / seen:.3f}"}

    def summary(self) -> dict[str, float]:
        seen = torch.tensor(self.seen, device=self.device)
        distributed.all_reduce_sum(self.loss_sum, self.correct, seen)
        seen = seen.item()
        return {"train_loss": self.loss_sum.item() / seen, "train_acc": self.correct.item() / seen}


def uses_channels_last(train: TrainConfig, model: nn.Module) -> bool:
    """Whether ``ImageTask`` runs ``model`` channels-last: ``train.channels_last`` asks for it, and only a model
    with a convolution has activations whose layout it changes."""
    return bool(train.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()))


class ImageTask(Task):
    """Train ``model`` on ``data.train`` as variant ``name`` (``precision``: resolved from ``train.precision``
    for the model's kind unless given)."""
    test_final = True

    def __init__(self, model: nn.Module, data: ImageData, train: TrainConfig, optim: OptimConfig,
                 device: torch.device, name: str = "model", seed: int = 0, augment: bool = False,
                 loss_fn: LossFn = cross_entropy_loss, precision: Precision | None = None):
        precision = precision or resolve_precision(train.precision, device, model_kind(model))
        model.to(device)
        if uses_channels_last(train, model):
            model.to(memory_format=torch.channels_last)  # activations follow the weights' layout
        super().__init__(name, model, device, precision, train.epochs)
        self.data, self.train, self.optim, self.loss_fn = data, train, optim, loss_fn
        self.sync_bn, self.compile = train.sync_bn, train.compile
        self.max_grad_norm = train.clip_grad_norm or None    # (the Precision plugin clips, after unscaling)
        self.early_stop = EarlyStopping.from_config(train.early_stop)
        self.scheduler_interval = scheduler_interval(optim)
        self.grads = GradNormRecorder(weight_layers(model)) if train.grad_norms else None
        self.grad_history: list[list[float]] = []
        self.train_batches = Batches(data.train, distributed.per_rank_batch(train.batch_size), device,
                                     shuffle=True, augment=augment, seed=seed, part=distributed.part())

    def configure_optimizers(self, params):
        opt = make_optimizer(params, self.optim)
        return opt, make_scheduler(opt, self.optim, self.train.epochs, self.num_batches())

    def train_mode(self, step_model: nn.Module) -> None:
        set_train_mode(self.model)

    def num_batches(self) -> int:
        return len(self.train_batches)

    def batches(self, epoch: int):
        self.train_batches.set_epoch(epoch)
        return self.train_batches

    def training_step(self, step_model: nn.Module, batch):
        x, y = batch
        with self.precision.autocast():
            loss, logits = self.loss_fn(step_model, x, y)
        return loss, logits, y

    def new_meter(self) -> Meter:
        return ImageMeter(self.device)

    def on_before_optimizer_step(self) -> None:
        if self.grads is not None:
            self.grads.step()

    def on_train_epoch_end(self) -> None:
        if self.grads is not None:
            self.grad_history.append(self.grads.epoch_end())

    def _evaluate(self, split: Split) -> tuple[float, float]:
        return evaluate(self.model, split, self.device, self.train.eval_batch_size, self.precision)

    def validate(self, model: nn.Module) -> dict[str, float]:
        if self.data.val is None:
            return {}
        loss, acc = self._evaluate(self.data.val)
        return {"val_loss": loss, "val_acc": acc}

    def test(self, model: nn.Module) -> dict[str, float]:
        loss, acc = self._evaluate(self.data.test)
        return {"test_loss": loss, "test_acc": acc}

    def history_row(self, epoch: int, train: dict, val: dict, lr: float, seconds: float) -> dict[str, Any]:
        return super().history_row(epoch, train, val, lr, round(seconds, 3))

    def epoch_line(self, row: dict[str, Any]) -> str:
        return (f"[{self.name}] epoch {row['epoch']}/{self.epochs} loss {row['train_loss']:.4f} "
                f"acc {row['train_acc']:.4f}" + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "")
                + f" ({row['seconds']:.1f}s)")

    def result(self, history: list[dict], best: dict[str, Any], tests: dict[str, dict]) -> dict[str, Any]:
        """``test_*``: the kept weights' (the best validation epoch's, the last epoch's without a validation
        split: what the model holds when fit returns, and what is saved); ``test_*_last``: the last epoch's
        (``saved_model.METRICS_RULE``)."""
        result = {"variant": self.name, "epochs": self.epochs,
                  "train_acc": history[-1]["train_acc"] if history else float("nan"),
                  "seconds": sum(r["seconds"] for r in history), **kept_tests(tests)}
        if "best" in tests:
            result.update(best_epoch=best["epoch"], val_acc=best["val_acc"],
                          final_val_acc=history[-1].get("val_acc"))
        if self.grads is not None:
            result["grad_norms"] = {"layers": self.grads.names, "per_epoch": self.grad_history}
        return result

    def state_dict(self) -> dict[str, Any]:
        return {"grad_history": self.grad_history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.grad_history = list(state["grad_history"])
