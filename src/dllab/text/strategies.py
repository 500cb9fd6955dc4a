"""Fine-tuning strategies for a sequence classifier, and the text task that trains and evaluates them all.

A strategy only *prepares* a model: which parameters train (``requires_grad``), whether LoRA adapters wrap
it, which precision and learning rate it trains with, or that it is evaluated as is. ``train_and_evaluate``
then trains every strategy as the same ``TextTask`` of the one training loop (``train.loop.fit``, which image
classifiers use too), so differences in the results table come from the strategy, not from different loops.

``ctx.cfg`` is the experiment's ``finetune`` section (see ``experiments/lab2/config.py``): it has ``lr.<strategy>``,
``amp``, ``lora.{r,alpha,dropout,target_modules}`` and ``pretrained_model``.

Under torchrun (see dllab.core.distributed) every strategy that trains does so data-parallel, in PyTorch's
DistributedDataParallel: every rank draws the same batch order from the same generator and takes every N-th
row of each batch (a batch whose rows do not divide by N repeats its first rows, as DistributedSampler pads),
so ``batch_size`` stays the global batch. Validation and test counts are all-reduced (each rank predicts every
N-th batch). Raw DDP rather than ``accelerate``: the loop already owns what ``Accelerator.prepare`` would take
over (its length-grouped batching with a checkpointed generator, autocast and the GradScaler), so
``accelerate`` would only add a second way of doing each.
"""
from __future__ import annotations

import math
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dllab import DllabError
from dllab.core import distributed, registry
from dllab.data.text import TokenizedSplit, iterate_batches, num_batches
from dllab.core.machine import to_device
from dllab.core.events import QUIET, Callback, CheckpointIO, Reporter
from dllab.models.common import count_parameters
from dllab.core.registry import register
from dllab.train.loop import Meter, Task, fit, kept_tests
from dllab.train.precision import ALIASES, Precision, resolve_precision
from dllab.models import hf


@dataclass
class Prepared:
    """A model made ready by a strategy."""
    model: nn.Module
    tokenizer_source: str             # the data must be tokenised by this model's tokenizer
    train: bool = True                # False: evaluated as is (baseline, pretrained)
    lr: float = 0.0
    precision: Precision | None = None   # autocast + loss scaling while training and evaluating; None = fp32
    label_columns: list[int] | None = None   # logits[:, cols] in dataset class order (pretrained models)


class StrategySkipped(Exception):
    """A strategy that cannot run here (e.g. its model is not available offline); the reason goes in the report."""


@dataclass
class StrategyContext:
    model_source: str                 # resolved folder or hub id of the model every strategy starts from
    cfg: Any                          # the ``finetune`` config section
    device: torch.device
    seed: int = 0

    def fresh_classifier(self) -> nn.Module:
        """The pretrained transformer with a new random 2-class head; seeded, so every strategy starts
        from the same head as ``baseline``."""
        torch.manual_seed(self.seed)
        return hf.load_classifier(self.model_source, num_labels=2)


def _trainable_only(model: nn.Module, modules: list[nn.Module]) -> nn.Module:
    model.requires_grad_(False)
    for m in modules:
        m.requires_grad_(True)
    return model


@register("strategy", "baseline")
def baseline(ctx: StrategyContext) -> Prepared:
    """New random head, no training: the chance-level floor (~50% on balanced classes)."""
    return Prepared(ctx.fresh_classifier().requires_grad_(False), ctx.model_source, train=False)


@register("strategy", "full")
def full(ctx: StrategyContext) -> Prepared:
    """Every parameter trains, in fp32."""
    return Prepared(ctx.fresh_classifier().requires_grad_(True), ctx.model_source, lr=ctx.cfg.lr.full)


@register("strategy", "head_last")
def head_last(ctx: StrategyContext) -> Prepared:
    """Only the classification head and the last transformer layer train; the rest stays pretrained."""
    model = ctx.fresh_classifier()
    heads = [model.get_submodule(n) for n in hf.head_module_names(model)]
    _trainable_only(model, [hf.last_layer(model), *heads])
    return Prepared(model, ctx.model_source, lr=ctx.cfg.lr.head_last)


@register("strategy", "full_amp")
def full_amp(ctx: StrategyContext) -> Prepared:
    """Every parameter trains, under mixed precision (bf16 autocast, or fp16 + GradScaler on GPUs without
    bf16). Skipped where mixed precision would only be slower (a CPU without native bf16) unless
    ``finetune.amp`` forces it."""
    prec = amp_precision(ctx.cfg.amp, ctx.device)
    return Prepared(ctx.fresh_classifier().requires_grad_(True), ctx.model_source, lr=ctx.cfg.lr.full_amp,
                    precision=prec)


@register("strategy", "lora")
def lora(ctx: StrategyContext) -> Prepared:
    """Low-rank adapters on the attention projections (query/value by default) plus a trainable head
    (peft's ``modules_to_save``); the pretrained weights stay frozen."""
    # peft loads here, when LoRA is asked for: seconds of imports that every other strategy (and
    # lab2.features) would pay if it loaded at the top of this module.
    from peft import LoraConfig, TaskType, get_peft_model
    model = ctx.fresh_classifier()
    c = ctx.cfg.lora
    targets = list(c.target_modules) or hf.lora_default_targets(model)
    missing = [t for t in targets if t not in {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}]
    if missing:
        linears = sorted({n.rsplit(".", 1)[-1] for n, m in hf.last_layer(model).named_modules()
                          if isinstance(m, nn.Linear)})
        raise DllabError(f"finetune.lora.target_modules: {', '.join(missing)} not in {type(model).__name__}; "
                         f"its layers' linear modules are {', '.join(linears)}")
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=c.r, lora_alpha=c.alpha, lora_dropout=c.dropout,
                        target_modules=targets, modules_to_save=hf.head_module_names(model))
    with warnings.catch_warnings():   # transformers 5 deprecation noise from inside peft, not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(model, config)
    return Prepared(model, ctx.model_source, lr=ctx.cfg.lr.lora)


@register("strategy", "pretrained")
def pretrained(ctx: StrategyContext) -> Prepared:
    """A model already fine-tuned for sentiment, evaluated as is; its labels are mapped by name."""
    name = ctx.cfg.pretrained_model
    if not name:
        raise StrategySkipped("no finetune.pretrained_model set")
    try:   # not cached offline, or labels that name no sentiment: the other strategies' results still count
        source = hf.resolve_model(name)
        model = hf.load_classifier(source, num_labels=None).requires_grad_(False)
        cols = hf.label_columns(model.config.id2label)
    except DllabError as e:
        raise StrategySkipped(str(e)) from e
    return Prepared(model, source, train=False, label_columns=cols)


# --- precision and resource use -------------------------------------------------------------------

def amp_precision(setting: str, device: torch.device) -> Precision:
    """``finetune.amp`` (auto | bf16-mixed | fp16-mixed; bf16/fp16 as aliases) -> full_amp's Precision.

    ``auto`` picks what ``train.precision=auto`` would pick for a transformer (bf16 on GPUs that have it,
    else fp16 + GradScaler; on CPU bf16 where the probe measured it faster). Where that is fp32, mixed
    precision has nothing to show: ``StrategySkipped`` with the probe's figures as the reason."""
    if ALIASES.get(setting, setting) not in ("auto", "bf16-mixed", "fp16-mixed"):
        raise DllabError(f"finetune.amp={setting}: choose auto, bf16-mixed or fp16-mixed (or bf16, fp16)")
    prec = resolve_precision(setting, device, model_kind="transformer")
    if prec.name == "fp32":
        raise StrategySkipped(f"mixed precision is not faster than fp32 on this {device.type} ({prec.reason}); "
                              "--set finetune.amp=bf16 forces it")
    return prec


class Usage:
    """Wall time and peak memory from ``start()`` to ``stop()``: CUDA ``max_memory_allocated``, or on CPU the
    process's peak resident set (Linux ``VmHWM``, reset at the start through ``/proc/self/clear_refs``; where
    that cannot be reset, the process-lifetime ``ru_maxrss``). ``kind`` says which memory was measured."""

    def __init__(self, device: torch.device):
        self.device, self.mb, self.kind, self.seconds = device, float("nan"), "", float("nan")
        self._start = 0.0

    def start(self) -> "Usage":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "CUDA max_memory_allocated"
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.kind = "process peak RSS (VmHWM)"
            except OSError:
                self.kind = "process peak RSS since start (ru_maxrss)"
        self._start = time.perf_counter()
        return self

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._start
        if self.device.type == "cuda":
            self.mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        elif "VmHWM" in self.kind:
            with open("/proc/self/status") as f:
                line = next(ln for ln in f if ln.startswith("VmHWM:"))
            self.mb = int(line.split()[1]) / 1024
        else:
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            self.mb = rss / 2**20 if sys.platform == "darwin" else rss / 1024


# --- evaluation -------------------------------------------------------------------------------------

@torch.inference_mode()
def predict(model: nn.Module, split: TokenizedSplit, batch_size: int, device: torch.device,
            precision: Precision | None = None, label_columns: list[int] | None = None,
            part: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Predicted dataset class per row, in the split's order. ``part=(rank, world)``: only every world-th
    batch from the rank-th is predicted; the other rows stay -1."""
    model.eval()
    world = part[1]
    preds = np.zeros(len(split), dtype=np.int64) if world == 1 else np.full(len(split), -1, dtype=np.int64)
    for idx, logits in batch_logits(model, split, batch_size, device, precision, part):
        if label_columns is not None:
            logits = logits[:, label_columns]
        preds[idx] = logits.argmax(-1).cpu().numpy()
    return preds


def batch_logits(model: nn.Module, split: TokenizedSplit, batch_size: int, device: torch.device,
                 precision: Precision | None = None, part: tuple[int, int] = (0, 1)):
    """(row indices, logits) per batch of ``split`` (``iterate_batches``' length-sorted, padded batches) through
    ``model`` under ``precision``'s autocast; ``part=(rank, world)``: only every world-th batch from the rank-th.
    The caller holds ``model`` in eval mode and inference mode."""
    precision = precision or Precision("fp32", device)
    rank, world = part
    for b, (idx, batch) in enumerate(iterate_batches(split, batch_size)):
        if b % world != rank:
            continue
        with precision.autocast():
            logits = model(input_ids=to_device(batch["input_ids"], device),
                           attention_mask=to_device(batch["attention_mask"], device)).logits
        yield idx, logits   # outside autocast: what the caller does with the logits runs as it would without it


def accuracy(model, split: TokenizedSplit, batch_size: int, device, precision=None, label_columns=None) -> float:
    """Fraction of rows predicted right; under torchrun the ranks share the batches and add their counts."""
    part = distributed.part()
    right = predict(model, split, batch_size, device, precision, label_columns, part) == split.labels
    if part[1] == 1:
        return float(right.mean())
    count = torch.tensor(int(right.sum()), device=device)
    distributed.all_reduce_sum(count)
    return count.item() / len(split)


# --- the text task of the one training loop ---------------------------------------------------------

@dataclass
class TrainSettings:
    epochs: int = 1
    batch_size: int = 32
    eval_batch_size: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.1               # fraction of steps with a linear warm-up; then linear decay to 0
    max_grad_norm: float = 1.0
    group_by_length: bool = True
    seed: int = 0


@dataclass
class Outcome:
    val_acc: float
    test_acc: float
    seconds: float                    # wall time of preparing, training and validating (not the test pass)
    trainable_params: int
    peak_mem_mb: float
    memory_kind: str
    precision: str
    best_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    test_acc_last: float | None = None   # the last epoch's (None: nothing was trained, or only one weights tested)


def _linear_warmup_decay(total: int, warmup: float) -> Callable[[int], float]:
    warm = max(1, math.ceil(total * warmup))
    return lambda step: (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))


class TextMeter(Meter):
    """The mean of the epoch's step losses (averaged over the ranks under torchrun)."""

    def __init__(self, device: torch.device):
        self.loss_sum, self.steps = torch.zeros((), device=device), 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.loss_sum += loss.detach()
        self.steps += 1

    def postfix(self) -> dict[str, str]:
        return {"loss": f"{self.loss_sum.item() / max(self.steps, 1):.3f}"}

    def summary(self) -> dict[str, float]:
        world = distributed.part()[1]
        if world > 1:
            distributed.all_reduce_sum(self.loss_sum)
            self.loss_sum /= world
        return {"train_loss": self.loss_sum.item() / max(self.steps, 1)}


class TextTask(Task):
    """Fine-tune a prepared sequence classifier (``p.train``: else it is validated and tested as is) on
    ``splits`` (train, validation, test): AdamW on the parameters that require grad with a linear warm-up/decay
    per step, gradients clipped at ``s.max_grad_norm``; length-grouped batches from a numpy generator whose
    state is checkpointed, each rank taking its rows of every global batch; cross-entropy on the fp32 logits
    (autocast covers the model only); accuracy. Checkpoints and the best state hold the trainable weights
    only, and the best-validation ones are restored at the end and tested once. ``on_train_end`` is called
    after the last validation, before the test (``Usage.stop``: what a strategy's seconds and memory cover)."""
    scheduler_interval = "step"
    trainable_only = True

    def __init__(self, p: Prepared, splits: dict[str, TokenizedSplit], s: TrainSettings, device: torch.device,
                 name: str = "", on_train_end: Callable[[], None] | None = None):
        super().__init__(name, p.model.to(device), device, p.precision or Precision("fp32", device),
                         s.epochs if p.train else 0)
        self.p, self.splits, self.s = p, splits, s
        self.test_final = bool(p.train)   # test_acc_last: the last epoch's weights, beside the kept ones
        self.max_grad_norm = s.max_grad_norm
        self.rng = np.random.default_rng(s.seed)
        self._on_train_end = on_train_end

    def configure_optimizers(self, params):
        # fused AdamW: one kernel for all tensors (the per-tensor default is slower than the forward and
        # backward on CPU for a 22M-parameter model, whose 30k-row embedding matrix dominates).
        opt = torch.optim.AdamW(params, lr=self.p.lr, weight_decay=self.s.weight_decay,
                                fused=self.device.type in ("cpu", "cuda"))
        # Hand-written rather than transformers.get_linear_schedule_with_warmup, whose first step has lr 0.
        total = self.s.epochs * self.num_batches()
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, _linear_warmup_decay(total, self.s.warmup))

    def num_batches(self) -> int:
        return num_batches(self.splits["train"], self.s.batch_size)

    def batches(self, epoch: int):
        rank, world = distributed.part()
        for _, batch in iterate_batches(self.splits["train"], self.s.batch_size, self.rng, self.s.group_by_length):
            yield _rank_rows(batch, rank, world) if world > 1 else batch

    def training_step(self, step_model: nn.Module, batch):
        with self.precision.autocast():
            logits = step_model(input_ids=to_device(batch["input_ids"], self.device),
                                attention_mask=to_device(batch["attention_mask"], self.device)).logits
        labels = to_device(batch["labels"], self.device)
        return F.cross_entropy(logits.float(), labels), logits, labels

    def new_meter(self) -> Meter:
        return TextMeter(self.device)

    def on_train_end(self) -> None:
        if self._on_train_end is not None:
            self._on_train_end()

    def _accuracy(self, split: str) -> float:
        return accuracy(self.model, self.splits[split], self.s.eval_batch_size, self.device, self.p.precision,
                        self.p.label_columns)

    def validate(self, model: nn.Module) -> dict[str, float]:
        return {"val_acc": self._accuracy("validation")}

    def test(self, model: nn.Module) -> dict[str, float]:
        return {"test_acc": self._accuracy("test")}

    def history_row(self, epoch: int, train: dict, val: dict, lr: float, seconds: float) -> dict[str, Any]:
        return super().history_row(epoch, train, val, self.p.lr, seconds)   # the strategy's (peak) lr

    def result(self, history: list[dict], best: dict[str, Any], tests: dict[str, dict]) -> dict[str, Any]:
        """``test_acc``: the kept weights' (the best validation epoch's); ``test_acc_last``: the last epoch's, for
        a strategy that trains (``saved_model.METRICS_RULE``)."""
        return {"val_acc": best["val_acc"], "best_epoch": best["epoch"], "history": history, **kept_tests(tests)}

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


def _rank_rows(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    """This rank's rows of a global batch: every ``world``-th from ``rank``, after the batch is padded with
    its own first rows to a multiple of ``world`` (so every rank has rows, and as many)."""
    rows = distributed.shard(torch.arange(len(batch["labels"])), rank, world)
    return {k: v[rows] for k, v in batch.items()}


def train_and_evaluate(name: str, ctx: StrategyContext, data: Callable[[str], dict[str, TokenizedSplit]],
                       s: TrainSettings, callbacks: Sequence[Callback] = (), checkpoint: CheckpointIO | None = None,
                       reporter: Reporter = QUIET, progress: bool = False,
                       keep: Callable[[Prepared, Outcome], None] | None = None) -> Outcome:
    """Prepare strategy ``name``, train it with the one loop (``train.loop.fit``: from ``checkpoint``, if it holds
    a state), then test the selected epoch. ``data(tokenizer_source)`` gives the tokenised splits for the
    prepared model's tokenizer. ``keep(prepared, outcome)`` is handed the model with the weights tested (saving
    it: ``text.saved``)."""
    usage = Usage(ctx.device).start()
    p = registry.get("strategy", name)(ctx)
    splits = data(p.tokenizer_source)
    trainable = count_parameters(p.model, trainable_only=True)
    task = TextTask(p, splits, s, ctx.device, name, on_train_end=usage.stop)
    out = fit(task, callbacks, checkpoint, reporter, progress)
    label = p.precision.label if p.precision else "fp32"
    outcome = Outcome(out["val_acc"], out["test_acc"], usage.seconds, trainable, usage.mb, usage.kind, label,
                      out["best_epoch"], out["history"], out.get("test_acc_last"))
    if keep is not None:
        keep(p, outcome)
    return outcome
