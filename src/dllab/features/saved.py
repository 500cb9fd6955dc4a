"""lab2.features' fitted classifiers as folders anyone can use: ``models/<classifier>/`` of the run.

    classifier.safetensors  the fitted numbers as arrays: the standardisation (``scaler.mean``, ``scaler.scale``),
                            the class labels (``classes``), and a linear model's ``coef``/``intercept`` or k-NN's
                            standardised training features and their labels (``knn.train_x``, ``knn.train_y``)
    model.json              ``"kind": "features"``: the estimator, k, the embedding model (name and source), its
                            pooling and max_length, class names, the metrics
    MODEL.md                the model card (``train.model_card``)

No pickle (sklearn's own way to save an estimator runs code when read): ``load_classifier`` rebuilds the
scikit-learn pipeline from the arrays, so it predicts exactly as the fitted one did. Sentences are embedded by the
model model.json names (``hf.saved_source``: local files only) the way the run embedded them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.numpy import save as dump_arrays
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

from dllab import RunFolderError
from dllab.core import untrusted
from dllab.core.events import QUIET, Reporter
from dllab.data.text import TextSplit, tokenize
from dllab.features.text import extract_features
from dllab.models import hf
from dllab.train.saved_model import DESCRIPTION, library_load, read_json_description, read_weights

KIND = "features"
WEIGHTS = "classifier.safetensors"
CLASSES = ["negative", "positive"]        # data.text.LABELS 0 and 1
LINEAR = {"LinearSVC": LinearSVC, "LogisticRegression": LogisticRegression}
ESTIMATORS = (*LINEAR, "KNeighborsClassifier")
METRICS_RULE = "fitted once on the training embeddings (no epochs): test_acc and val_acc are this classifier's"


@dataclass(frozen=True)
class EmbeddingInfo:
    """How the run embedded its sentences: the model (name as configured, folder or hub id it resolved to), the
    pooling, max_length, and the data (name, source, sentence counts)."""
    name: str
    source: str
    pooling: str
    max_length: int
    data: dict[str, Any] = field(default_factory=dict)


# --- writing ------------------------------------------------------------------------------------------

def save_classifiers(model_io: Callable[[str], Any], fitted: dict[str, Pipeline], accuracies: dict[str, dict],
                     info: EmbeddingInfo, reporter: Reporter = QUIET) -> None:
    """Each fitted pipeline (standardisation + estimator) as ``models/<classifier>/`` through ``model_io(name)``
    (the run's ``SavedModelIO``); an estimator this module cannot write as arrays is logged and left out."""
    for name, pipe in fitted.items():
        estimator = type(pipe[-1]).__name__
        if estimator not in ESTIMATORS:
            reporter.log(f"{name}: no model saved ({estimator} is not one dllab saves as arrays)")
            continue
        model_io(name).save_folder(partial(_fill, name, pipe, accuracies.get(name, {}), info))


def _fill(name: str, pipe: Pipeline, acc: dict[str, float], info: EmbeddingInfo, folder: Path) -> dict[str, Any]:
    scaler, clf = pipe[0], pipe[-1]
    arrays = {"scaler.mean": scaler.mean_, "scaler.scale": scaler.scale_, "classes": clf.classes_}
    knn = isinstance(clf, KNeighborsClassifier)
    if knn:
        arrays.update({"knn.train_x": clf._fit_X, "knn.train_y": clf._y})
    else:
        arrays.update({"coef": clf.coef_, "intercept": clf.intercept_})
    (folder / WEIGHTS).write_bytes(dump_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    return {"kind": KIND,
            "model": {"library": "scikit-learn", "classifier": name, "estimator": type(clf).__name__,
                      "k": clf.n_neighbors if knn else None, "standardised": True,
                      "embedding": {"name": info.name, "source": info.source, "pooling": info.pooling}},
            "weights": WEIGHTS,
            "input": {"classes": CLASSES, "max_length": info.max_length, "data": info.data},
            "metrics": {"test_acc": acc.get("test"), "val_acc": acc.get("validation")},
            "metrics_rule": METRICS_RULE}


# --- reading (untrusted) ------------------------------------------------------------------------------

def read_features_description(folder: Path) -> dict[str, Any]:
    """model.json of a features folder, checked: kind, estimator, k, embedding, class names, max_length."""
    path = Path(folder) / DESCRIPTION
    desc = read_json_description(folder)
    model, inp = desc.get("model"), desc.get("input")
    if desc.get("kind") != KIND or not isinstance(model, dict) or not isinstance(inp, dict):
        raise RunFolderError(f"{path}: not a features model description (\"kind\": \"{KIND}\", model, input)")
    emb, classes = model.get("embedding"), inp.get("classes")
    ok = (model.get("estimator") in ESTIMATORS and isinstance(emb, dict)
          and all(isinstance(emb.get(k), str) for k in ("name", "source")) and emb.get("pooling") in ("cls", "mean")
          and type(inp.get("max_length")) is int and 0 < inp["max_length"] <= 2 ** 16
          and isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
          and (model["estimator"] != "KNeighborsClassifier" or (type(model.get("k")) is int and model["k"] > 0)))
    if not ok:
        raise RunFolderError(f"{path}: model or input is malformed (estimator, k, embedding, max_length, classes)")
    return desc


def load_classifier(folder: Path) -> tuple[Pipeline, dict[str, Any]]:
    """``(pipeline, model.json)``: the standardisation and estimator rebuilt from classifier.safetensors."""
    folder = Path(folder)
    untrusted.check_tree(folder, "model folder")
    desc = read_features_description(folder)
    arrays = {k: v.numpy() for k, v in read_weights(folder / WEIGHTS).items()}
    try:
        pipe = _rebuild(desc, arrays)
    except (KeyError, ValueError, IndexError) as e:
        raise RunFolderError(f"{folder / WEIGHTS}: the arrays do not make a {desc['model']['estimator']} "
                             f"({type(e).__name__}: {untrusted.printable(str(e))[:200]})") from e
    return pipe, desc


def _rebuild(desc: dict[str, Any], a: dict[str, np.ndarray]) -> Pipeline:
    """The fitted pipeline from its arrays, each checked against the others' shapes."""
    mean, scale, classes = a["scaler.mean"], a["scaler.scale"], a["classes"]
    d, n_classes = mean.shape[0], len(desc["input"]["classes"])
    if mean.shape != (d,) or scale.shape != (d,) or classes.shape != (n_classes,) or classes.dtype.kind not in "iu" \
            or not np.all((0 <= classes) & (classes < n_classes)):
        raise ValueError("scaler.mean, scaler.scale or classes have the wrong shape")
    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_, scaler.n_features_in_ = mean, scale, scale ** 2, d
    estimator = desc["model"]["estimator"]
    if estimator == "KNeighborsClassifier":
        x, y, k = a["knn.train_x"], a["knn.train_y"], desc["model"]["k"]
        if x.ndim != 2 or x.shape[1] != d or y.shape != (len(x),) or k > len(x) or y.dtype.kind not in "iu" \
                or y.min() < 0 or y.max() >= len(classes):
            raise ValueError("knn.train_x, knn.train_y or k do not fit")
        clf = KNeighborsClassifier(n_neighbors=k).fit(x, classes[y])
    else:
        coef, intercept = a["coef"], a["intercept"]
        rows = 1 if n_classes == 2 else n_classes
        if coef.shape != (rows, d) or intercept.shape != (rows,):
            raise ValueError("coef or intercept have the wrong shape")
        clf = LINEAR[estimator]()
        clf.coef_, clf.intercept_, clf.classes_, clf.n_features_in_ = coef, intercept, classes, d
    return make_pipeline(scaler, clf)


# --- prediction ---------------------------------------------------------------------------------------

def load_embedder(folder: Path, desc: dict[str, Any]) -> tuple[Any, torch.nn.Module]:
    """(tokenizer, encoder) of the embedding model model.json names, from local files only."""
    emb = desc["model"]["embedding"]
    source = hf.saved_source(emb["name"], emb["source"])
    what = f"embedding model {untrusted.printable(source)}"
    return (library_load(folder, what, hf.from_local, "AutoTokenizer", source),
            library_load(folder, what, hf.from_local, "AutoModel", source, use_safetensors=True))


def predict_sentences(pipe: Pipeline, embedder: tuple[Any, torch.nn.Module], desc: dict[str, Any],
                      rows: list[dict[str, Any]], device: torch.device | str = "cpu",
                      batch_size: int = 256) -> list[dict[str, Any]]:
    """``rows`` (``data.text.read_sentences``) with ``class``, ``index`` and ``probability`` (None for a
    LinearSVC, which has no probabilities) added: each sentence embedded as the run embedded it."""
    tokenizer, encoder = embedder
    split = tokenize(TextSplit([r["input"] for r in rows], np.zeros(len(rows), dtype=np.int64)), tokenizer,
                     desc["input"]["max_length"])
    x = extract_features(encoder, split, desc["model"]["embedding"]["pooling"], batch_size, device)
    labels = pipe.predict(x)
    probs = pipe.predict_proba(x).max(axis=1) if hasattr(pipe[-1], "predict_proba") else [None] * len(rows)
    names = desc["input"]["classes"]
    return [{**r, "class": names[int(j)], "index": int(j), "probability": None if p is None else float(p)}
            for r, j, p in zip(rows, labels, probs)]
