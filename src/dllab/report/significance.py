"""Is a difference in accuracy more than sampling noise? Verdicts the reports state in words."""
from __future__ import annotations

import math


def accuracy_gap(a: float, b: float, n: int) -> tuple[str, float, float]:
    """(verdict, a - b, noise): "Yes" when ``a`` beats ``b`` by more than the 95% band of the difference of two
    accuracies measured on the same ``n`` images (independent approximation), "No, it hurts" when it falls
    short by more, else "Not measurably"."""
    diff = a - b
    noise = 1.96 * math.sqrt(max(a * (1 - a) + b * (1 - b), 1e-12) / max(n, 1))
    if diff > noise:
        return "Yes", diff, noise
    if diff < -noise:
        return "No, it hurts", diff, noise
    return "Not measurably", diff, noise


def pretraining_verdict(results: dict[str, dict], n_eval: int, split: str = "val", spec: str = "") -> str | None:
    """A sentence answering the transfer spec's question from a run's numbers: full_adam (else the best
    pretrained full/partial variant) against scratch, with the sampling noise of ``n_eval`` images; ``spec``,
    the spec's own answer (the experiment holds its numbers), is added after it."""
    key = f"{split}_acc"   # test_acc: the kept (best validation) weights', as val_acc is their epoch's
    pre = [n for n in ("full_adam", "full_sgd", "partial", "head") if n in results]
    if "scratch" not in results or not pre:
        return None
    name = pre[0]
    a, b = results[name].get(key), results["scratch"].get(key)
    if a is None or b is None:
        return None
    verdict, diff, noise = accuracy_gap(a, b, n_eval)
    test = ""
    if split == "val" and "test_acc" in results[name] and "test_acc" in results["scratch"]:
        test = (f"; on the test split {results[name]['test_acc']:.4f} against "
                f"{results['scratch']['test_acc']:.4f}")
    ours = (f"Does pretraining help here? {verdict}: {name} (fine-tuned from the source weights) reaches "
            f"{split} accuracy {a:.4f} against {b:.4f} from scratch ({100 * diff:+.1f} points; differences within "
            f"±{100 * noise:.1f} points are sampling noise on {n_eval} {split} images){test}.")
    return f"{ours} {spec}" if spec else ours
