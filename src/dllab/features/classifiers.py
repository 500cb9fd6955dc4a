"""Classical classifiers on fixed embeddings: how linearly separable (or locally clustered) are the features?

Shared by the text features experiment ([CLS] embeddings) and the image transfer experiment (CNN features):
give it arrays, it gives back accuracies. Features are standardised first (fit on train only), which
LinearSVC, logistic regression and Euclidean k-NN all need to treat every dimension alike.
"""
from __future__ import annotations

import hashlib
import time
import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from dllab import DllabError
from dllab.core import registry
from dllab.core.registry import register

# A classifier is registered as a factory (k, seed, max_iter) -> an unfitted sklearn estimator; the features
# are standardised in front of it (make_classifier).


@register("classifier", "svm")
def svm(k: int = 5, seed: int = 0, max_iter: int = 2000) -> LinearSVC:
    """Linear SVM (LinearSVC, C=1)."""
    return LinearSVC(C=1.0, max_iter=max_iter, random_state=seed)


@register("classifier", "logreg")
def logreg(k: int = 5, seed: int = 0, max_iter: int = 2000) -> LogisticRegression:
    """Logistic regression (C=1)."""
    return LogisticRegression(C=1.0, max_iter=max_iter)


@register("classifier", "knn")
def knn(k: int = 5, seed: int = 0, max_iter: int = 2000) -> KNeighborsClassifier:
    """k nearest neighbours (Euclidean)."""
    return KNeighborsClassifier(n_neighbors=k)


def make_classifier(name: str, k: int = 5, seed: int = 0, max_iter: int = 2000):
    """An sklearn pipeline: StandardScaler then the registered classifier ``name``."""
    return make_pipeline(StandardScaler(), registry.get("classifier", name)(k=k, seed=seed, max_iter=max_iter))


def fit_classifiers(train_x: np.ndarray, train_y: np.ndarray, eval_sets: dict[str, tuple[np.ndarray, np.ndarray]],
                    names: Sequence[str] | None = None, k: int = 5, seed: int = 0,
                    timings: dict[str, float] | None = None,
                    fitted: dict | None = None) -> dict[str, dict[str, float]]:
    """Fit each classifier of ``names`` (default: every registered one) on ``(train_x, train_y)``; return
    ``{name: {split: accuracy}}`` for every ``eval_sets[split] = (x, y)``. ``timings``, if given, receives each
    classifier's fit+score seconds, ``fitted`` each fitted pipeline (to save it: ``features.saved``)."""
    names = registry.names("classifier") if names is None else names
    if len(train_x) != len(train_y) or len(train_x) == 0:
        raise DllabError(f"features: {len(train_x)} training rows for {len(train_y)} labels")
    out: dict[str, dict[str, float]] = {}
    for name in names:
        t0 = time.perf_counter()
        clf = make_classifier(name, k=min(k, len(train_x)), seed=seed)
        with warnings.catch_warnings():
            # A linear model that has not fully converged at max_iter is still a fine probe; say nothing.
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(train_x, train_y)
        out[name] = {split: float((clf.predict(x) == np.asarray(y)).mean()) for split, (x, y) in eval_sets.items()}
        if timings is not None:
            timings[name] = time.perf_counter() - t0
        if fitted is not None:
            fitted[name] = clf
    return out


def probe_key(feats: dict[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str], k: int = 5, seed: int = 0) -> str:
    """A string that changes with whatever ``probe``'s accuracies depend on: the classifiers, k, the seed and
    the features."""
    return f"{list(names)}|k={k}|seed={seed}|" + hashlib.sha1(
        b"".join(np.ascontiguousarray(feats[n][0]).tobytes() for n in sorted(feats))).hexdigest()


def probe(feats: dict[str, tuple[np.ndarray, np.ndarray]], names: Sequence[str], k: int = 5,
          seed: int = 0, fitted: dict | None = None) -> dict[str, dict[str, float]]:
    """``fit_classifiers`` on ``feats["train"]``, scored on val/test -> {name: {"val": acc, "test": acc,
    "seconds": s}}; ``fitted``, if given, receives each fitted pipeline."""
    timings: dict[str, float] = {}
    acc = fit_classifiers(*feats["train"], {n: feats[n] for n in ("val", "test") if n in feats},
                          names=list(names), k=k, seed=seed, timings=timings, fitted=fitted)
    return {name: {**a, "seconds": round(timings.get(name, float("nan")), 2)} for name, a in acc.items()}
