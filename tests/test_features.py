"""Classical classifiers on fixed features (``dllab.features.classifiers``): generic arrays in, accuracies out."""
from __future__ import annotations

import numpy as np
import pytest

from dllab import DllabError
from dllab.core import registry
from dllab.features.classifiers import fit_classifiers


def _blobs(n: int, dim: int, shift: float, seed: int):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.normal(size=(n, dim)).astype(np.float32)
    x[:, 0] += shift * (2 * y - 1)
    return x, y


def test_separable_features_are_classified_by_every_classifier():
    x, y = _blobs(400, 8, 3.0, 0)
    xv, yv = _blobs(200, 8, 3.0, 1)
    acc = fit_classifiers(x, y, {"validation": (xv, yv), "train": (x, y)}, k=5)
    assert list(acc) == registry.names("classifier") == ["knn", "logreg", "svm"]
    for name, splits in acc.items():
        assert set(splits) == {"validation", "train"}
        assert splits["validation"] > 0.9, (name, splits)


def test_features_are_standardised():
    """The informative dimension is a thousand times smaller than the noise: unscaled Euclidean k-NN would
    see only noise; after standardisation it separates the classes."""
    x, y = _blobs(400, 4, 3.0, 0)
    xv, yv = _blobs(200, 4, 3.0, 1)
    scale = np.array([1e-3, 1e3, 1e3, 1e3], dtype=np.float32)
    acc = fit_classifiers(x * scale, y, {"validation": (xv * scale, yv)}, names=["knn"], k=15)
    assert acc["knn"]["validation"] > 0.85


def test_multiclass_labels_subset_of_names_and_timings():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=5.0, size=(4, 6))
    y = rng.integers(0, 4, 300)
    x = centres[y] + rng.normal(size=(300, 6))
    timings: dict[str, float] = {}
    acc = fit_classifiers(x[:200], y[:200], {"test": (x[200:], y[200:])}, names=["logreg"], timings=timings)
    assert list(acc) == ["logreg"] and acc["logreg"]["test"] > 0.9
    assert list(timings) == ["logreg"] and timings["logreg"] >= 0


def test_k_larger_than_training_set_is_clipped():
    x, y = _blobs(6, 3, 5.0, 0)
    acc = fit_classifiers(x, y, {"train": (x, y)}, names=["knn"], k=50)
    assert 0.0 <= acc["knn"]["train"] <= 1.0


def test_unknown_classifier_is_a_one_line_error():
    x, y = _blobs(20, 3, 3.0, 0)
    with pytest.raises(DllabError) as e:
        fit_classifiers(x, y, {"v": (x, y)}, names=["svm", "forest"])
    assert "'forest'" in str(e.value) and "logreg" in str(e.value) and "\n" not in str(e.value)


def test_probe_scores_val_and_test_and_its_key_follows_the_inputs():
    """What an experiment caches (results/classical.json): computed from arrays alone, no run folder."""
    from dllab.features.classifiers import probe, probe_key

    feats = {"train": _blobs(200, 4, 3.0, 0), "val": _blobs(50, 4, 3.0, 1), "test": _blobs(50, 4, 3.0, 2)}
    out = probe(feats, names=["logreg", "knn"], k=3)
    assert set(out) == {"logreg", "knn"} and all(set(a) == {"val", "test", "seconds"} for a in out.values())
    assert out["logreg"]["val"] == fit_classifiers(*feats["train"], {"val": feats["val"]}, ["logreg"])["logreg"]["val"]
    key = probe_key(feats, ["logreg", "knn"], k=3)
    assert key == probe_key(feats, ["logreg", "knn"], k=3)
    moved = {**feats, "test": (feats["test"][0] + 1, feats["test"][1])}
    assert len({key, probe_key(feats, ["knn"], k=3), probe_key(feats, ["logreg", "knn"], k=5),
                probe_key(feats, ["logreg", "knn"], k=3, seed=1), probe_key(moved, ["logreg", "knn"], k=3)}) == 5
