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
"""
from __future__ import annotations

import math
import sys
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import DllabError
from ..config import OptimConfig, TrainConfig
from ..data.images import Batches, ImageData, Split
from ..env import seconds_since_process_start
from .checkpoint import load_checkpoint, load_weights, save_checkpoint, save_model
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
    """(mean cross-entropy, accuracy) of ``model`` on a split (in fp32 unless ``precision`` says otherwise)."""
    model.eval()
    precision = precision or Precision("fp32", device)
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    for x, y in Batches(split, batch_size, device):
        with precision.autocast():
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    n = max(len(split), 1)
    return loss_sum.item() / n, correct.item() / n


def _progress(total: int, desc: str, quiet: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=quiet or not sys.stderr.isatty())


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


def fit(model: nn.Module, data: ImageData, train: TrainConfig, optim: OptimConfig, run, variant: str,
        device: torch.device, seed: int = 0, augment: bool = False, loss_fn: LossFn = cross_entropy_loss,
        extra_row: dict | None = None) -> dict:
    """Train ``model`` as ``variant`` of ``run``; returns (and saves) the variant's result dict.

    On return ``model`` holds the best-validation weights (the final ones when there is no validation
    split), the same weights saved as ``models/<variant>.pt`` for later experiments to reuse. A variant
    already finished in this run folder is not trained again: its weights and result are loaded.
    """
    done = run.result(variant)
    if done is not None:
        run.log(f"[{variant}] already finished in this run folder; loading its saved weights")
        path = run.path / "models" / f"{variant}.pt"
        load_weights(path, model, load_checkpoint(path).get("state_dict"))
        return done

    model.to(device)
    if train.channels_last and any(isinstance(m, nn.Conv2d) for m in model.modules()):
        model.to(memory_format=torch.channels_last)  # activations follow the weights' layout
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise DllabError(f"[{variant}] has no trainable parameters")
    opt = make_optimizer(params, optim)
    sched = make_scheduler(opt, optim, train.epochs)
    prec = resolve_precision(train.precision, device, model_kind(model))
    log_precision(run, prec, variant)
    scaler = prec.scaler    # a no-op unless fp16-mixed: the step below has no precision branches
    grads = GradNormRecorder(model.weight_layers()) if train.grad_norms else None
    step_model = torch.compile(model) if train.compile else model

    history: list[dict] = []
    grad_history: list[list[float]] = []
    best = {"val_acc": -1.0, "epoch": 0, "state": None}
    start_epoch = 1
    ckpt_path = run.checkpoint_path(variant)
    if ckpt_path.exists():
        ck = load_checkpoint(ckpt_path)
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler"):
                sched.load_state_dict(ck["scheduler"])
            prec.load_scaler_state(ck.get("scaler"))
            torch.set_rng_state(ck["rng_cpu"])
            if device.type == "cuda" and ck.get("rng_cuda") is not None:
                torch.cuda.set_rng_state(ck["rng_cuda"])
            history, grad_history, best = list(ck["history"]), list(ck["grad_history"]), dict(ck["best"])
            start_epoch = int(ck["epoch"]) + 1
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise DllabError(f"checkpoint {ckpt_path} does not match this variant ({type(e).__name__}); "
                             "delete it to restart the variant") from None
        run.log(f"[{variant}] resuming after epoch {ck['epoch']}")

    batches = Batches(data.train, train.batch_size, device, shuffle=True, augment=augment, seed=seed)
    _log_startup(run)
    for epoch in range(start_epoch, train.epochs + 1):
        t0 = time.perf_counter()
        set_train_mode(model)
        batches.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        bar = _progress(len(batches), f"{variant} {epoch}/{train.epochs}", run.quiet)
        for i, (x, y) in enumerate(batches):
            with prec.autocast():
                loss, logits = loss_fn(step_model, x, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)      # gradient norms and clipping see true-scale gradients
            if grads is not None:
                grads.step()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach().float() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            seen += len(y)
            if bar.disable is False and (i % 10 == 0 or i == len(batches) - 1):
                bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}", acc=f"{correct.item() / seen:.3f}")
            bar.update()
        bar.close()
        train_loss, train_acc = loss_sum.item() / seen, correct.item() / seen
        if not math.isfinite(train_loss):
            run.note(f"[{variant}] training loss became {train_loss} in epoch {epoch}")
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        row = {"variant": variant, "epoch": epoch, "train_loss": train_loss, "train_acc": train_acc}
        if data.val is not None:
            row["val_loss"], row["val_acc"] = evaluate(model, data.val, device, train.eval_batch_size,
                                                       prec)
            if row["val_acc"] > best["val_acc"]:
                best = {"val_acc": row["val_acc"], "epoch": epoch, "state": _copy_state(model, best["state"])}
        row.update(lr=lr, seconds=round(time.perf_counter() - t0, 3), **(extra_row or {}))
        history.append(row)
        if grads is not None:
            grad_history.append(grads.epoch_end())
        run.add_history(history, variant)
        run.log(f"[{variant}] epoch {epoch}/{train.epochs} loss {train_loss:.4f} acc {train_acc:.4f}"
                + (f" val_acc {row['val_acc']:.4f}" if "val_acc" in row else "") + f" ({row['seconds']:.1f}s)")
        save_checkpoint(ckpt_path, {
            "epoch": epoch, "model": model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict() if sched is not None else None,
            "scaler": prec.scaler_state(),
            "rng_cpu": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state() if device.type == "cuda" else None,
            "history": history, "grad_history": grad_history, "best": best,
        })

    result = {"variant": variant, "epochs": train.epochs,
              "train_acc": history[-1]["train_acc"] if history else float("nan"),
              "seconds": sum(r["seconds"] for r in history)}
    result["test_loss"], result["test_acc"] = evaluate(model, data.test, device, train.eval_batch_size,
                                                       prec)
    if best["state"] is not None:
        result.update(best_epoch=best["epoch"], val_acc=best["val_acc"],
                      final_val_acc=history[-1].get("val_acc"))
        model.load_state_dict(best["state"])
        result["best_test_loss"], result["best_test_acc"] = evaluate(model, data.test, device,
                                                                     train.eval_batch_size, prec)
    if grads is not None:
        result["grad_norms"] = {"layers": grads.names, "per_epoch": grad_history}
    # The best-validation weights are what later experiments (transfer, OOD) reuse.
    save_model(run.path / "models" / f"{variant}.pt", model, data.classes, result=result)
    run.save_result(variant, result)
    ckpt_path.unlink(missing_ok=True)  # the saved model + result replace the training state
    return result
