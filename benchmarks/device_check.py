"""Throughput of every experiment's training on this machine, and the projected time of a full run.

For each experiment, each model it trains (the variants of the chosen profile's config, e.g. lab1.cnn-depth
paper: 6 CNNs of 64 channels) is trained by dllab's own loop (train.loop.fit, with train.image.ImageTask or
text.strategies.TextTask) for a bounded number of steps on generated data of the profile's shapes: one epoch
to warm up (cuDNN autotuning, kernel caches), one timed. Generated data, because the device machine need not
hold the datasets and the speed does not depend on the pixels. Printed per model: images (or tokens) per
second; per experiment: the projected training time of a full run = sum over its models of (training images x
epochs) / images per second. Not included: data loading, evaluation and the analysis phases (attacks, OOD
scoring, ODIN's grid). lab1.transfer's fine-tuning variants are timed as full training of the same CNN (an
upper bound for ``head`` and ``partial``, which train fewer layers).

    python benchmarks/device_check.py                      # paper profiles on the default device
    python benchmarks/device_check.py --smoke              # smoke profiles, CPU (the test runs this)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dllab.cli.main import choose_omp_wait_policy

choose_omp_wait_policy()   # before torch loads, as `dllab run` does

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dllab.core.config import make_config  # noqa: E402
from dllab.core.machine import describe_device, resolve_device, seed_everything  # noqa: E402
from dllab.core import registry  # noqa: E402
from dllab.core.registry import get_experiment  # noqa: E402
from dllab.runner.run import Run

# Full training-set sizes (before the validation split) of the datasets the paper profiles use.
TRAIN_SIZES = {"mnist": 60000, "cifar10": 50000, "cifar100": 50000}
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "cifar100": (3, 32, 32)}
ROTTEN_TOMATOES_TRAIN = 8530


@dataclass
class Job:
    """One model an experiment trains: what to build and how much a full run trains it."""
    experiment: str
    variant: str
    model: str
    kwargs: dict
    dataset: str
    classes: int
    train_images: int          # training images of a full run (after limits and the validation split)
    train: object              # TrainConfig
    optim: object              # OptimConfig
    fgsm: tuple | None = None  # (eps, alpha): adversarial training, one extra forward/backward per step


def _n_train(data) -> int:
    n = TRAIN_SIZES[data.name]
    if data.classes:
        n = n * len(data.classes) // 10
    if data.train_limit:
        n = min(n, data.train_limit)
    return int(n * (1 - data.val_fraction))


def _classes(data) -> int:
    return len(data.classes) or (100 if data.name == "cifar100" else 10)


def image_jobs(name: str, cfg) -> list[Job]:
    """The models ``name`` trains under ``cfg`` (read from its config, as the experiment would)."""
    mk = lambda variant, model, kwargs, data=cfg.data, train=getattr(cfg, "train", None), \
        optim=getattr(cfg, "optim", None), fgsm=None: Job(name, variant, model, kwargs, data.name,  # noqa: E731
                                                          _classes(data), _n_train(data), train, optim, fgsm)
    if name == "lab1.mlp":
        return [mk(v, "basic_mlp", {"width": cfg.width}, optim=o) for v, o in (("sgd", cfg.sgd), ("adam", cfg.adam))]
    if name in ("lab1.mlp-depth", "lab1.cnn-depth"):
        model, extra = (("mlp", {"width": cfg.width}) if name == "lab1.mlp-depth"
                        else ("cnn", {"base_channels": cfg.base_channels}))
        return ([mk(f"plain_d{d}", model, {"depth": d, "residual": False, **extra}) for d in cfg.plain_depths] +
                [mk(f"res_d{d}", model, {"depth": d, "residual": True, **extra}) for d in cfg.residual_depths])
    if name == "lab1.transfer":
        src = cfg.source
        arch = {"depth": src.depth, "base_channels": src.base_channels, "residual": src.residual}
        jobs = [] if src.run else [mk("source", "cnn", arch, data=src.data, train=src.train, optim=src.optim)]
        return jobs + [mk(v, "cnn", arch, optim=cfg.sgd if v == "full_sgd" else cfg.optim) for v in cfg.variants]
    if name.startswith("lab4."):
        if cfg.model.run:
            return []
        arch = {"depth": 5, "base_channels": cfg.model.base_channels, "residual": cfg.model.residual}
        jobs = [mk("standard", "cnn", arch)]
        if name == "lab4.adv-train":
            jobs.append(mk("adv", "cnn", arch, fgsm=(cfg.adv.epsilon, cfg.adv.alpha)))
        return jobs
    return []


def _synthetic_images(job: Job, n: int):
    from dllab.data.images import ImageData, Split
    g = torch.Generator().manual_seed(0)
    c, h, w = SHAPES[job.dataset]
    split = lambda k: Split(torch.randint(0, 256, (k, c, h, w), dtype=torch.uint8, generator=g),  # noqa: E731
                            torch.randint(0, job.classes, (k,), generator=g))
    return ImageData(job.dataset, [str(i) for i in range(job.classes)], split(n), None, split(8),
                     job.dataset, "generated")


def time_image_job(job: Job, steps: int, device: torch.device) -> tuple[float, str]:
    """(images per second of the second epoch, precision) for ``steps`` batches per epoch."""
    from dllab.train.image import cross_entropy_loss
    from dllab.train.variants import Variant, build_for, train_model
    loss_fn = cross_entropy_loss
    if job.fgsm:
        from dllab.attacks.methods import make_fgsm_loss
        loss_fn = make_fgsm_loss(*job.fgsm)
    n = steps * job.train.batch_size
    data = _synthetic_images(job, n)
    model = build_for(data, Variant(job.variant, job.model, job.kwargs), 0)
    train = job.train.model_copy(update={"epochs": 2})   # a config section (pydantic)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp), job.experiment, None, quiet=True)
        train_model(model, data, job.variant, device, run.training_hooks(), train, job.optim, loss_fn=loss_fn)
        seconds = run.history[-1]["seconds"]
        precision = run.env.get("precision", "?").split(" ", 1)[0]
    return n / seconds, precision


def time_text(cfg, steps: int, device: torch.device, tiny: bool) -> list[tuple[str, float, float, str]]:
    """lab2.finetune: [(strategy, tokens/s, projected seconds, precision)] on a randomly initialised model of
    the configured size (DistilBERT's for paper; a tiny BERT with --smoke)."""
    from transformers import AutoConfig, AutoModelForSequenceClassification, BertConfig
    from dllab.data.text import TokenizedSplit
    from transformers.utils import logging as hf_logging
    from dllab.text import strategies as S
    from dllab.train.loop import fit
    hf_logging.disable_progress_bar()
    ft = cfg.finetune
    if tiny or cfg.model.name == "minilm":
        config = BertConfig(vocab_size=1000, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64, num_labels=2)
    else:
        config = AutoConfig.for_model("distilbert", num_labels=2)   # distilbert-base-uncased's shape
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_config(config).save_pretrained(tmp)
        rng = np.random.default_rng(0)
        L = cfg.data.max_length
        split = lambda n: TokenizedSplit([list(rng.integers(5, config.vocab_size, L)) for _ in range(n)],  # noqa: E731
                                         rng.integers(0, 2, n), 0)
        splits = {"train": split(steps * ft.batch_size), "validation": split(ft.eval_batch_size),
                  "test": split(8)}
        ctx = S.StrategyContext(tmp, ft, device, 0)
        settings = S.TrainSettings(epochs=2, batch_size=ft.batch_size, eval_batch_size=ft.eval_batch_size,
                                   group_by_length=False)
        n_train = min(ROTTEN_TOMATOES_TRAIN, cfg.data.train_limit or ROTTEN_TOMATOES_TRAIN)
        for name in ft.strategies:
            if name in ("baseline", "pretrained"):
                continue                      # evaluated only
            try:
                p = registry.get("strategy", name)(ctx)
            except S.StrategySkipped as e:
                print(f"  {name:<12} skipped: {e}")
                continue
            history = fit(S.TextTask(p, splits, settings, device, name))["history"]
            per_s = len(splits["train"]) / history[-1]["seconds"]
            out.append((name, per_s * L, n_train * ft.epochs / per_s, p.precision.name if p.precision else "fp32"))
    return out


def _fmt(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="smoke profiles on the CPU (seconds; the test runs this)")
    p.add_argument("--steps", type=int, default=0, help="timed batches per model (default 40, smoke 1)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda (default: auto, smoke: cpu)")
    p.add_argument("--only", default="", help="comma-separated experiments (default: all that train)")
    args = p.parse_args(argv)
    profile = "smoke" if args.smoke else "paper"
    steps = args.steps or (1 if args.smoke else 40)
    device = resolve_device(args.device or ("cpu" if args.smoke else "auto"))
    seed_everything(0)
    names = [n for n in (args.only.split(",") if args.only else
                         ["lab1.mlp", "lab1.mlp-depth", "lab1.cnn-depth", "lab1.transfer", "lab2.finetune",
                          "lab4.ood", "lab4.fgsm", "lab4.adv-train", "lab4.odin"]) if n]
    print(f"device check: {profile} profiles on {describe_device(device)}, torch {torch.__version__}, "
          f"{steps} timed batches per model")
    t_all = time.perf_counter()
    timed: dict[tuple, tuple[float, str]] = {}   # the same model + settings is timed once (lab4 shares one)
    for name in names:
        exp = get_experiment(name)
        cfg = make_config(exp.config_cls, exp.profiles, profile)
        total = 0.0
        print(f"{name}:")
        if name == "lab2.finetune":
            for strategy, tok_s, projected, prec in time_text(cfg, steps, device, tiny=args.smoke):
                print(f"  {strategy:<12} {tok_s:10.0f} tokens/s  {prec:<10}  full run {_fmt(projected)}")
                total += projected
        else:
            for job in image_jobs(name, cfg):
                key = (job.model, str(job.kwargs), job.dataset, job.classes, str(job.train), job.fgsm)
                if key not in timed:
                    timed[key] = time_image_job(job, steps, device)
                img_s, prec = timed[key]
                projected = job.train_images * job.train.epochs / img_s
                total += projected
                print(f"  {job.variant:<12} {img_s:10.0f} images/s  {prec:<10}  "
                      f"{job.train_images} x {job.train.epochs} epochs: {_fmt(projected)}")
        print(f"  => projected training time of `dllab run {name} --profile {profile}`: {_fmt(total)}")
        sys.stdout.flush()
    print(f"device check done in {time.perf_counter() - t_all:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
