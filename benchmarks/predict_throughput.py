"""Predict throughput on the CPU: images/s of batched inference, torch eager against onnxruntime, in one run.

The models are lab1.mlp's BasicMLP and lab1.cnn-depth's residual CNN (its first residual depth), built from the
registry with the quick profile's arguments and random weights (speed does not depend on the weights). Both
contenders see the same batches, as ``dllab.predict`` feeds them: ``--images`` random uint8 images of the
model's shape, made [0, 1] floats, in batches of ``--batch-size`` (predict's default 256); the timed work is
the forward pass to the logits (eager: ``torch.inference_mode``; onnxruntime: a session on the ONNX file
``dllab export`` writes, made by the same ``to_onnx``). Both use ``--threads`` threads (default: torch's
number). Each contender runs once untimed (warm-up), then ``--repeats`` times interleaved (ABBA order), so a
drift in the machine's load hits both alike; printed: median images/s of each and the ratio of the medians
(onnxruntime / eager).

    .venv/bin/python benchmarks/predict_throughput.py --repeats 7
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from dllab.cli.main import choose_omp_wait_policy

choose_omp_wait_policy()   # before torch loads, as `dllab run` does

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

import dllab  # noqa: E402
from dllab.core import registry  # noqa: E402
from dllab.data.images import to_unit_float  # noqa: E402
from dllab.train.export import Subject, to_onnx  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ood_knn import cpu_name  # noqa: E402


def quick_models() -> dict[str, tuple[torch.nn.Module, tuple[int, int, int]]]:
    """lab1.mlp's and lab1.cnn-depth's models with the quick profile's arguments: name -> (model, C×H×W)."""
    mlp = dllab.config("lab1.mlp", "quick")
    cnn = dllab.config("lab1.cnn-depth", "quick")
    torch.manual_seed(0)
    return {
        "lab1.mlp (basic_mlp, width 64)": (registry.build_model(
            mlp.model, num_classes=10, in_channels=1, image_size=28, stats="mnist", width=mlp.width), (1, 28, 28)),
        f"lab1.cnn-depth (cnn res_d{cnn.residual_depths[0]}, {cnn.base_channels} channels)": (registry.build_model(
            cnn.model.factory or "cnn", num_classes=10, in_channels=3, image_size=32, stats="cifar10",
            depth=cnn.residual_depths[0], residual=True, base_channels=cnn.base_channels), (3, 32, 32)),
    }


def batches(shape: tuple[int, int, int], images: int, batch_size: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (images, *shape), dtype=torch.uint8, generator=g)
    return [to_unit_float(x[i:i + batch_size]) for i in range(0, images, batch_size)]


def contenders(model: torch.nn.Module, data: list[torch.Tensor], threads: int) -> dict[str, callable]:
    """name -> a function that runs every batch once (eager, and onnxruntime on the exported model)."""
    model.eval()
    blob = to_onnx(Subject(model, ("images",), {"images": {0: "batch"}, "logits": {0: "batch"}}, (data[0],)))
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    arrays = [b.numpy() for b in data]

    def eager() -> None:
        with torch.inference_mode():
            for b in data:
                model(b)

    def onnxruntime() -> None:
        for a in arrays:
            session.run(["logits"], {"images": a})

    return {"torch eager": eager, "onnxruntime": onnxruntime}


def measure(runs: dict[str, callable], images: int, repeats: int) -> dict[str, float]:
    """Median images/s of each contender over ``repeats`` interleaved (ABBA) timed runs, after one warm-up."""
    names = list(runs)
    for name in names:
        runs[name]()
    rates: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            runs[name]()
            rates[name].append(images / (time.perf_counter() - start))
    return {n: statistics.median(v) for n, v in rates.items()}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=2048, help="images per timed run (default 2048)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--repeats", type=int, default=5, help="timed runs per contender (default 5)")
    p.add_argument("--threads", type=int, default=None, help="threads of both (default: torch's)")
    args = p.parse_args(argv)
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    print(f"{cpu_name()}, {threads} threads, load {load}; torch {torch.__version__}, onnxruntime {ort.__version__}; "
          f"{args.images} images in batches of {args.batch_size}, median of {args.repeats} interleaved runs")
    for name, (model, shape) in quick_models().items():
        data = batches(shape, args.images, args.batch_size)
        rates = measure(contenders(model, data, threads), args.images, args.repeats)
        eager, onnx = rates["torch eager"], rates["onnxruntime"]
        print(f"{name}: torch eager {eager:,.0f} images/s, onnxruntime {onnx:,.0f} images/s, "
              f"onnxruntime / eager {onnx / eager:.2f}x")


if __name__ == "__main__":
    main()
