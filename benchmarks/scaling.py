"""Data-parallel scaling: training images/s of dllab's loop with 1 process and with N (torchrun, DDP).

On CPUs the cores are split between the processes (OMP_NUM_THREADS = cores / processes, so every setting
uses all of them and no more): the ratio says whether N processes of cores/N threads train faster than one
process of all the cores. With CUDA, each process drives one GPU: the ratio is the scaling over GPUs and the
per-GPU images/s shows the efficiency. Each setting starts fresh under torchrun (``--worker`` mode); inside,
train.variants.train_model (train.loop.fit) trains the Lab 1 CNN on random CIFAR-sized images (pixels do not
change the speed) for ``--epochs`` epochs with no validation split, and the median epoch time after the first
(warm-up) epoch is quoted. Settings are interleaved over ``--repeats`` rounds and the median is printed.
Start-up and data loading are not timed.
Usage (from the repo root; the machine should be otherwise idle):

    .venv/bin/python benchmarks/scaling.py                 # CPU: 1 vs 2 processes (or --nproc N)
    .venv/bin/python benchmarks/scaling.py --device cuda   # 1 GPU vs all visible GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def worker(args) -> None:
    """One setting, inside torchrun: fit for ``args.epochs`` epochs; rank 0 writes the epoch times."""
    import torch

    from dllab.core import distributed, ranks
    from dllab.core.config import OptimConfig, TrainConfig
    from dllab.data.images import ImageData, Split
    from dllab.core.registry import build_model
    from dllab.runner.run import Run
    from dllab.train.variants import train_model

    distributed.init()
    device = distributed.device_for(torch.device(args.device))
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    data = ImageData("random", [str(c) for c in range(10)], Split(x, y), None, Split(x[:1], y[:1]), "cifar10",
                     "random uint8")
    torch.manual_seed(0)
    model = build_model("cnn", depth=5, base_channels=args.channels, residual=True, stats="cifar10")
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, precision=args.precision)
    with tempfile.TemporaryDirectory() as tmp:
        path = distributed.broadcast(tmp)    # rank 0's folder: the Run's (unused) files are rank 0's
        run = Run(Path(path), "bench", None, quiet=True)
        train_model(model, data, "bench", device, run.training_hooks(), cfg, OptimConfig(name="adam"))
        seconds = [r["seconds"] for r in run.history]
        distributed.barrier()
    if ranks.is_main():
        Path(args.out).write_text(json.dumps({"seconds": seconds, "threads": torch.get_num_threads()}))
    distributed.teardown()


def measure(args, nproc: int, cores: int) -> tuple[float, int]:
    """(images/s, threads per process) of one fresh torchrun of ``nproc`` processes."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // nproc))}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               __file__, "--worker", "--out", str(out), "--device", args.device, "--images", str(args.images),
               "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--channels", str(args.channels),
               "--precision", args.precision]
        subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
        times = json.loads(out.read_text())
    return args.images / statistics.median(times["seconds"][1:]), times["threads"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--nproc", type=int, default=0, help="processes to compare with one (default: 2 on CPU, "
                                                        "every visible GPU on CUDA)")
    p.add_argument("--images", type=int, default=4096, help="training images per epoch")
    p.add_argument("--epochs", type=int, default=4, help="epochs per setting; the first is a warm-up")
    p.add_argument("--batch-size", type=int, default=128, help="the global batch (split over the processes)")
    p.add_argument("--channels", type=int, default=16, help="CNN width (quick profile: 16, paper: 64)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16-mixed", "auto"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.epochs < 2:
        p.error("--epochs must be at least 2: the first epoch is a warm-up and is not timed")
    if args.worker:
        return worker(args)

    import torch

    from dllab.core import cpus
    from dllab.cli.main import choose_omp_wait_policy
    choose_omp_wait_policy()   # as `dllab run` does: passive waiting on a busy machine (the processes inherit it)
    if args.device == "cuda":
        gpus = torch.cuda.device_count()
        if gpus < 1:
            sys.exit("no CUDA device is visible")
        n, cores = args.nproc or gpus, cpus.usable()
        print(f"CUDA: {torch.cuda.get_device_name(0)} x {gpus}; comparing 1 and {n} processes (one GPU each)")
    else:
        n, cores = args.nproc or 2, cpus.usable()
        print(f"CPU: {cores} cores; comparing 1 process x {cores} threads and {n} processes x {max(1, cores // n)}")
    print(f"before: {cpus.describe_load()}; OMP_WAIT_POLICY="
          f"{os.environ.get('OMP_WAIT_POLICY', '(OpenMP default)')}")
    rates: dict[int, list[float]] = {1: [], n: []}
    for _ in range(args.repeats):
        for k in (1, n):
            rate, threads = measure(args, k, cores)
            rates[k].append(rate)
            print(f"  {k} process(es) x {threads} threads: {rate:.0f} images/s", flush=True)
    one, many = statistics.median(rates[1]), statistics.median(rates[n])
    print(f"after: {cpus.describe_load()}")
    print(f"median images/s: 1 process {one:.0f}, {n} processes {many:.0f}"
          + (f" ({many / n:.0f} per GPU)" if args.device == "cuda" else ""))
    print(f"speed-up {n} vs 1: {many / one:.2f}x" + (f" (scaling efficiency {many / one / n:.0%})"
                                                     if args.device == "cuda" else ""))


if __name__ == "__main__":
    main()
