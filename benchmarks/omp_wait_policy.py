"""Why the CLI picks OMP_WAIT_POLICY by load: the Lab 1 CNN step's images/s under OpenMP's default
(spin-waiting) and PASSIVE policy, on an idle machine and beside one other busy process, in one run.

The policy is read when OpenMP starts, so each measurement runs in a fresh process (this file with
``--child``). Each cell is the median of ``--repeats`` interleaved runs. Usage (machine otherwise idle):

    .venv/bin/python benchmarks/omp_wait_policy.py --repeats 3
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import time


def child(images: int, batch_size: int) -> None:
    """Print the images/s of bf16 training steps of the quick profile's CNN (16 channels, depth 5)."""
    import torch
    import torch.nn.functional as F

    from dllab.core.registry import build_model

    torch.manual_seed(0)
    x_all = torch.randint(0, 256, (images, 3, 32, 32), dtype=torch.uint8)
    y_all = torch.randint(0, 10, (images,))
    model = build_model("cnn", depth=5, base_channels=16, residual=True).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), 1e-3)

    def epoch() -> float:
        t = time.perf_counter()
        for i in range(0, images, batch_size):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x_all[i:i + batch_size].float().div_(255)), y_all[i:i + batch_size])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return images / (time.perf_counter() - t)

    epoch()  # warm-up: oneDNN builds its kernels
    print(statistics.median(epoch() for _ in range(3)))


def spin(stop) -> None:
    while not stop.is_set():
        pass


def measure(policy: str | None, args) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    out = subprocess.run([sys.executable, __file__, "--child", "--images", str(args.images),
                          "--batch-size", str(args.batch_size)], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.images, args.batch_size)
        return

    from dllab.core import cpus  # torch-free: the parent must not load OpenMP before its children choose a policy

    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.repeats):
        for load in ("idle", "one busy process"):
            stop = mp.Event()
            hog = mp.Process(target=spin, args=(stop,)) if load != "idle" else None
            if hog:
                hog.start()
            try:
                for policy in ("default", "PASSIVE"):
                    results.setdefault((load, policy), []).append(measure(None if policy == "default" else policy,
                                                                          args))
            finally:
                if hog:
                    stop.set()
                    hog.join()
    print(f"CNN step (16 ch, depth 5, batch {args.batch_size}, bf16), {cpus.usable()} CPUs, images/s, "
          f"median of {args.repeats}")
    for load in ("idle", "one busy process"):
        d, pa = (statistics.median(results[(load, k)]) for k in ("default", "PASSIVE"))
        print(f"  {load:<17} default {d:6.0f}   PASSIVE {pa:6.0f}   default / PASSIVE = {d / pa:.2f}x")


if __name__ == "__main__":
    main()
