"""Training throughput (images/s) of dllab's loop on the Lab 1 CNN, against two baselines, in one run.

  dllab      train.loop.fit (train_model, in a run): in-memory uint8 tensors, batches made on the device, + its
             bookkeeping
  (a) manual the shortest hand-written loop over the same in-memory tensors (the ceiling for the model)
  (b) torchvision DataLoader(ImageFolder JPEGs, ToTensor + Normalize), the textbook pipeline
Same model (weights channels-last in all three, as dllab's TrainConfig does), batch size and precision;
one untimed warm-up, then each is timed ``--repeats`` times, interleaved, and the median is quoted.
It also times making batches alone (no model), and prints manual / DataLoader: since (a) makes its
batches at no cost, that ratio bounds what any input pipeline can gain over (b) for this model.
dllab's loop is timed in fp32 and in bf16-mixed; the last line is the precision ``auto`` picks on this CPU
(train/precision.py's probe) against the faster of the two: auto / best >= 0.95 means auto chose well.
Usage (from the repo root; the machine should be otherwise idle):

    .venv/bin/python benchmarks/train_throughput.py --data ../shared/data --images 2048 --repeats 3
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/train_throughput.py ...  # AVX2 CPU
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dllab.core.config import DataConfig, OptimConfig, TrainConfig
from dllab.data.images import Batches, Split, load_images, random_crop_flip
from dllab.models.common import DATASET_STATS
from dllab.core.registry import build_model
from dllab.runner.run import Run
from dllab.train.precision import Precision, model_kind, resolve_precision
from dllab.train.variants import train_model


def model_for(args):
    torch.manual_seed(0)
    model = build_model("cnn", depth=args.depth, base_channels=args.channels, residual=True, stats="cifar10")
    # dllab's fit stores conv weights channels-last (TrainConfig.channels_last); the baselines get the same
    # layout, so the contenders differ only in how batches are made.
    return model.to(memory_format=torch.channels_last) if args.channels_last else model


def time_dllab(args, data, precision) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(epochs=1, batch_size=args.batch_size, precision=precision,
                          channels_last=args.channels_last)
        run = Run(Path(tmp), "bench", None, quiet=True)
        no_val = type(data)(data.name, data.classes, data.train, None, Split(data.test.x[:1], data.test.y[:1]),
                            data.stats, data.source)
        t = time.perf_counter()
        run.reuse_or_run("bench", lambda: train_model(model_for(args), no_val, "bench", torch.device("cpu"),
                                                      run.training_hooks(), cfg, OptimConfig(name="adam"),
                                                      augment=args.augment))
        return len(data.train) / (time.perf_counter() - t)


def train_step(model, opt, x, y, precision) -> None:
    """The baselines' step: the minimal one, the same for both."""
    with Precision(precision, torch.device("cpu")).autocast():
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def time_manual(args, split: Split, precision) -> float:
    model = model_for(args)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    x_all, y_all = split.x, split.y
    t = time.perf_counter()
    model.train()
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(y_all), generator=g)
    for i in range(0, len(y_all), args.batch_size):
        idx = perm[i:i + args.batch_size]
        x, y = x_all[idx].float().div_(255), y_all[idx]
        if args.augment:
            x = random_crop_flip(x, g)
        train_step(model, opt, x, y, precision)
    return len(y_all) / (time.perf_counter() - t)


def textbook_loader(args, n):
    import torchvision
    from torchvision import transforms as T

    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if args.augment else []
    ds = torchvision.datasets.ImageFolder(str(Path(args.data) / "cifar10" / "train"), T.Compose([
        *aug, T.ToTensor(), T.Normalize(*DATASET_STATS["cifar10"])]))
    ds = torch.utils.data.Subset(ds, torch.randperm(len(ds), generator=torch.Generator().manual_seed(0))[:n].tolist())
    return torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)


def time_dataloader(args, n, precision) -> float:
    loader = textbook_loader(args, n)
    model = model_for(args)
    model.normalize = torch.nn.Identity()  # the pipeline normalises
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model.train()
    t = time.perf_counter()
    for x, y in loader:
        train_step(model, opt, x, y, precision)
    return n / (time.perf_counter() - t)


def time_batches_only(args, data) -> tuple[float, float]:
    """Images/s of making normalised batches alone, no model: (dllab Batches, textbook DataLoader)."""
    norm = model_for(args).normalize
    t = time.perf_counter()
    for x, _ in Batches(data.train, args.batch_size, torch.device("cpu"), shuffle=True, augment=args.augment):
        norm(x)
    dllab = len(data.train) / (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in textbook_loader(args, len(data.train)):
        pass
    return dllab, len(data.train) / (time.perf_counter() - t)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data", help="folder holding cifar10/{train,test}")
    p.add_argument("--images", type=int, default=4096, help="training images per timed epoch")
    p.add_argument("--channels", type=int, default=16, help="CNN width (quick profile: 16, paper: 64)")
    p.add_argument("--depth", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for baseline (b)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16-mixed"],
                   help="the baselines' precision and dllab's headline one (auto: as a run would resolve it)")
    p.add_argument("--augment", action="store_true", help="random crop + flip in every contender")
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false",
                   help="NCHW conv weights in every contender (default: channels-last, as TrainConfig)")
    args = p.parse_args()

    data = load_images(DataConfig(name="cifar10", root=args.data, train_limit=args.images, val_fraction=0),
                       profile="paper")
    auto = resolve_precision("auto", torch.device("cpu"), model_kind(model_for(args)))
    if args.precision == "auto":
        args.precision = auto.name
    print(f"CPU capability {torch.backends.cpu.get_cpu_capability()}; precision auto picks {auto.name} "
          f"({auto.reason})")
    print(f"CNN depth {args.depth} width {args.channels}, batch {args.batch_size}, {args.images} images, "
          f"{torch.get_num_threads()} threads, {args.repeats} repeats (median), baselines in {args.precision}")
    # Untimed warm-up: the first steps of a process build oneDNN kernels, which would otherwise be
    # charged to whichever contender runs first.
    for prec in ("fp32", "bf16-mixed"):
        time_manual(args, Split(data.train.x[:4 * args.batch_size], data.train.y[:4 * args.batch_size]), prec)
    results: dict[str, list[float]] = {}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every contender alike
        for prec in ("fp32", "bf16-mixed"):
            results.setdefault(f"dllab {prec}", []).append(time_dllab(args, data, prec))
        results.setdefault("manual", []).append(time_manual(args, data.train, args.precision))
        results.setdefault("dataloader", []).append(time_dataloader(args, args.images, args.precision))
        for k, v in zip(["batches only: dllab", "batches only: DataLoader"], time_batches_only(args, data)):
            results.setdefault(k, []).append(v)
    med = {k: statistics.median(v) for k, v in results.items()}
    for k, v in results.items():
        print(f"  {k:<22} {med[k]:8.0f} img/s   (runs: {', '.join(f'{x:.0f}' for x in v)})")
    d = med[f"dllab {args.precision}"]
    print(f"dllab / manual loop        = {d / med['manual']:.2f}x   (target >= 0.95x)")
    print(f"dllab / DataLoader+ToTensor = {d / med['dataloader']:.2f}x   (target >= 3x)")
    # Amdahl: no data pipeline can beat the model step alone, so manual/DataLoader bounds what any loader
    # could gain over the textbook one for this model; the batches-only ratio is the data layers' own speed.
    print(f"  bound for any loader: manual / DataLoader = {med['manual'] / med['dataloader']:.2f}x; batches only, "
          f"dllab / DataLoader = {med['batches only: dllab'] / med['batches only: DataLoader']:.1f}x")
    print(f"dllab bf16-mixed / fp32 = {med['dllab bf16-mixed'] / med['dllab fp32']:.2f}x")
    best = max(med["dllab fp32"], med["dllab bf16-mixed"])
    print(f"auto ({auto.name}) / best of (fp32, bf16-mixed) = {med[f'dllab {auto.name}'] / best:.2f}x   "
          "(target >= 0.95x)")


if __name__ == "__main__":
    main()
