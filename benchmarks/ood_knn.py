"""The knn OOD detector's scoring time: 10,000 test points against 25,000 ID training features of 512 dimensions
(the size issue #25 sets: under 5 s on 2 cores).

The features are random ReLU'd Gaussians (the time depends only on the shapes: one chunked matrix product and a
``topk`` per chunk, ``dllab.ood.knn.kth_neighbour_distance``). The detector is fitted once (normalising the
bank), then ``score_features`` runs once untimed (oneDNN builds its kernels) and ``--repeats`` times timed; the
median and the range of the wall time are printed, with the CPU time of all threads (on a machine
shared with other jobs, CPU time / threads is the wall time it would take idle), the thread count and the load.
Usage (from the repo root; note the load, `cat /proc/loadavg`):

    .venv/bin/python benchmarks/ood_knn.py --repeats 5
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from dllab.ood.knn import KNN


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", type=int, default=25_000, help="ID training features (default 25000)")
    p.add_argument("--test", type=int, default=10_000, help="test points scored (default 10000)")
    p.add_argument("--dim", type=int, default=512, help="feature dimension (default 512)")
    p.add_argument("--k", type=int, default=50, help="the k-th neighbour (default 50)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs (default 3)")
    args = p.parse_args(argv)

    g = torch.Generator().manual_seed(0)
    train = torch.randn(args.train, args.dim, generator=g).relu_()
    test = torch.randn(args.test, args.dim, generator=g).relu_()
    det = KNN(k=args.k).fit_features(None, train)
    det.score_features(None, test[:1000])                     # warm-up
    times, cpu = [], []
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        scores = det.score_features(None, test)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    assert scores.shape == (args.test,) and torch.isfinite(scores).all()
    print(f"knn (k={args.k}): {args.test} test x {args.train} train x {args.dim} features, "
          f"{torch.get_num_threads()} threads, {cpu_name()}, load {os.getloadavg()[0]:.1f}")
    print(f"score time: median {statistics.median(times):.2f} s (min {min(times):.2f}, max {max(times):.2f}) "
          f"over {args.repeats} runs; CPU time (all threads) median {statistics.median(cpu):.2f} s")


if __name__ == "__main__":
    main()
