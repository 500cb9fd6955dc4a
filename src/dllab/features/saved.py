"""Fitted classifiers on embeddings as folders anyone can use: ``models/<classifier>/`` of a lab2.features run
(sentence embeddings) or a lab1.transfer run (the source CNN's image features).

    classifier.safetensors  the fitted numbers as arrays: the standardisation (``scaler.mean``, ``scaler.scale``),
                            the class labels (``classes``), and a linear model's ``coef``/``intercept`` or k-NN's
                            standardised training features and their labels (``knn.train_x``, ``knn.train_y``)
    model.json              ``"kind": "features"``: the estimator, k, the embedding model (name and source), its
                            pooling and max_length, class names, the metrics
    MODEL.md                the model card (``train.model_card``)
    embedding/              image classifiers only: the feature extractor (the source CNN as the probe used it),
                            an image model folder (``train.saved_model``), so the folder stands alone

No pickle (sklearn's own way to save an estimator runs code when read): ``load_classifier`` rebuilds the
scikit-learn pipeline from the arrays, so it predicts exactly as the fitted one did. Sentences are embedded by the
model model.json names (``hf.saved_source``: local files only) the way the run embedded them; images by the
embedding/ model, in the precision and batch size the run extracted its features in.
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
from dllab.data.images import Split
from dllab.data.text import CLASSES, TextSplit, read_sentences, tokenize
from dllab.features import image as image_features
from dllab.features.text import extract_features
from dllab.models import hf
from dllab.train.precision import NAMES as PRECISIONS
from dllab.train.predict import image_files, read_images
from dllab.train.saved_model import (DESCRIPTION, ModelContext, library_load, load_saved_model,
                                     read_json_description, read_weights, write_model_folder)

KIND = "features"
WEIGHTS = "classifier.safetensors"
EMBEDDING = "embedding"                   # an image classifier's feature extractor: a model folder inside its own
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


@dataclass(frozen=True)
class ImageEmbedding:
    """How a run embedded its images (lab1.transfer's probe): the feature extractor's ``checkpoint.model_state``
    (with ``result`` and ``input``: what a model folder holds), what the report calls it, the resolved precision
    (fp32 | bf16-mixed | fp16-mixed) and batch size of the extraction, and the classifier's input (``input_spec``
    of the images it classifies)."""
    state: dict[str, Any]
    name: str
    origin: str
    precision: str
    batch_size: int
    input: dict[str, Any]


# --- writing ------------------------------------------------------------------------------------------

def save_classifiers(model_io: Callable[[str], Any], fitted: dict[str, Pipeline], accuracies: dict[str, dict],
                     info: EmbeddingInfo, reporter: Reporter = QUIET) -> None:
    """Each fitted pipeline (standardisation + estimator) as ``models/<classifier>/`` through ``model_io(name)``
    (the run's ``SavedModelIO``); an estimator this module cannot write as arrays is logged and left out."""
    for name, pipe in _savable(fitted, reporter):
        model_io(name).save_folder(partial(_fill, name, pipe, accuracies.get(name, {}), info))


def save_image_classifiers(model_io: Callable[[str], Any], fitted: dict[str, Pipeline],
                           accuracies: dict[str, dict], embedding: ImageEmbedding,
                           reporter: Reporter = QUIET) -> None:
    """``save_classifiers`` for classifiers on image features: each folder also holds the feature extractor as
    ``embedding/`` (a model folder), so it is usable alone."""
    if fitted and not embedding.state.get("spec"):   # a model with no spec cannot be rebuilt from a folder
        reporter.log("classifiers: no model saved (the feature extractor has no registry spec)")
        return
    for name, pipe in _savable(fitted, reporter):
        io = model_io(name)
        io.save_folder(partial(_fill_image, name, pipe, accuracies.get(name, {}), embedding, io.context))


def _savable(fitted: dict[str, Pipeline], reporter: Reporter) -> list[tuple[str, Pipeline]]:
    out = []
    for name, pipe in fitted.items():
        estimator = type(pipe[-1]).__name__
        if estimator in ESTIMATORS:
            out.append((name, pipe))
        else:
            reporter.log(f"{name}: no model saved ({estimator} is not one dllab saves as arrays)")
    return out


def _fill(name: str, pipe: Pipeline, acc: dict[str, float], info: EmbeddingInfo, folder: Path) -> dict[str, Any]:
    embedding = {"name": info.name, "source": info.source, "pooling": info.pooling}
    return _describe(name, pipe, _write_arrays(pipe, folder), acc, embedding,
                     {"classes": CLASSES, "max_length": info.max_length, "data": info.data})


def _fill_image(name: str, pipe: Pipeline, acc: dict[str, float], emb: ImageEmbedding, context: ModelContext,
                folder: Path) -> dict[str, Any]:
    # the extractor's own folder, from the weights the features came from: a classifier folder copied anywhere
    # (or a source model reused from a run that is gone) still embeds its images as the run did
    write_model_folder(folder / EMBEDDING, emb.state, context)
    embedding = {"kind": "image", "name": emb.name, "source": emb.origin, "pooling": "mean", "folder": EMBEDDING,
                 "precision": emb.precision, "batch_size": emb.batch_size}
    return _describe(name, pipe, _write_arrays(pipe, folder), acc, embedding, emb.input)


def _write_arrays(pipe: Pipeline, folder: Path) -> bool:
    """classifier.safetensors in ``folder``; whether the estimator is a k-NN."""
    scaler, clf = pipe[0], pipe[-1]
    arrays = {"scaler.mean": scaler.mean_, "scaler.scale": scaler.scale_, "classes": clf.classes_}
    knn = isinstance(clf, KNeighborsClassifier)
    if knn:
        arrays.update({"knn.train_x": clf._fit_X, "knn.train_y": clf._y})
    else:
        arrays.update({"coef": clf.coef_, "intercept": clf.intercept_})
    (folder / WEIGHTS).write_bytes(dump_arrays({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
    return knn


def _describe(name: str, pipe: Pipeline, knn: bool, acc: dict[str, float], embedding: dict[str, Any],
              inp: dict[str, Any]) -> dict[str, Any]:
    clf = pipe[-1]
    return {"kind": KIND,
            "model": {"library": "scikit-learn", "classifier": name, "estimator": type(clf).__name__,
                      "k": clf.n_neighbors if knn else None, "standardised": True, "embedding": embedding},
            "weights": WEIGHTS,
            "input": inp,
            # lab2.features names its splits validation/test, lab1.transfer's probe val/test
            "metrics": {"test_acc": acc.get("test"), "val_acc": acc.get("validation", acc.get("val"))},
            "metrics_rule": METRICS_RULE}


# --- reading (untrusted) ------------------------------------------------------------------------------

def read_features_description(folder: Path) -> dict[str, Any]:
    """model.json of a features folder, checked: kind, estimator, k, embedding, class names, and the input the
    embedding takes (max_length of sentences, or the images' shape)."""
    path = Path(folder) / DESCRIPTION
    desc = read_json_description(folder, KIND)
    model, inp = desc["model"], desc["input"]
    emb, classes = model.get("embedding"), inp.get("classes")
    ok = (model.get("estimator") in ESTIMATORS and isinstance(emb, dict)
          and all(isinstance(emb.get(k), str) for k in ("name", "source"))
          and (_image_input_ok(emb, inp) if is_image(desc) else _text_input_ok(emb, inp))
          and isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
          and (model["estimator"] != "KNeighborsClassifier" or (type(model.get("k")) is int and model["k"] > 0)))
    if not ok:
        raise RunFolderError(f"{path}: model or input is malformed (estimator, k, embedding, input, classes)")
    return desc


def is_image(desc: dict[str, Any]) -> bool:
    """Whether the classifier of model.json ``desc`` is on image features (else on sentence embeddings)."""
    emb = (desc.get("model") or {}).get("embedding")
    return isinstance(emb, dict) and emb.get("kind") == "image"


def _positive_int(value: Any) -> bool:
    return type(value) is int and 0 < value <= 2 ** 16


def _text_input_ok(emb: dict[str, Any], inp: dict[str, Any]) -> bool:
    return emb.get("pooling") in ("cls", "mean") and _positive_int(inp.get("max_length"))


def _image_input_ok(emb: dict[str, Any], inp: dict[str, Any]) -> bool:
    return (emb.get("folder") == EMBEDDING and emb.get("precision") in PRECISIONS
            and _positive_int(emb.get("batch_size")) and all(_positive_int(inp.get(k)) for k in
                                                              ("channels", "height", "width")))


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


def load_image_embedder(folder: Path) -> torch.nn.Module:
    """The feature extractor of an image classifier's folder (its embedding/ model folder), in eval mode on the CPU."""
    return load_saved_model(Path(folder) / EMBEDDING)[0]


def embed_images(embedder: torch.nn.Module, desc: dict[str, Any], x: torch.Tensor,
                 device: torch.device | str = "cpu") -> np.ndarray:
    """The features of uint8 images ``x`` (N, C, H, W) as the run extracted them: its precision (fp32 for fp16 off
    CUDA, where autocast has no fp16) and batch size."""
    emb, device = desc["model"]["embedding"], torch.device(device)
    precision = emb["precision"] if emb["precision"] != "fp16-mixed" or device.type == "cuda" else "fp32"
    split = Split(x, torch.zeros(len(x), dtype=torch.int64))
    return image_features.extract_features(embedder, split, device, emb["batch_size"], precision)


def predict_inputs(folder: Path, inputs: list, files: list, device: torch.device | str = "cpu",
                   batch_size: int = 256) -> list[dict[str, Any]]:
    """``dllab predict`` with the classifier saved in ``folder``: sentences (``data.text.read_sentences`` of
    ``inputs`` and ``files``) or, for a classifier on image features, image files or folders (``inputs``)."""
    pipe, desc = load_classifier(folder)
    if not is_image(desc):
        return predict_sentences(pipe, load_embedder(folder, desc), desc, read_sentences(inputs, files), device,
                                 batch_size)
    if files:
        raise RunFolderError(f"{folder} classifies images: name image files or folders as inputs (no --file)")
    embedder, inp, paths, rows = load_image_embedder(folder), desc["input"], image_files(inputs), []
    for i in range(0, len(paths), batch_size):
        batch = paths[i:i + batch_size]
        x = embed_images(embedder, desc, read_images(batch, inp["channels"], inp["height"], inp["width"]), device)
        rows += _classified(pipe, x, [{"input": str(p)} for p in batch], inp["classes"])
    return rows


def predict_sentences(pipe: Pipeline, embedder: tuple[Any, torch.nn.Module], desc: dict[str, Any],
                      rows: list[dict[str, Any]], device: torch.device | str = "cpu",
                      batch_size: int = 256) -> list[dict[str, Any]]:
    """``rows`` (``data.text.read_sentences``) with ``class``, ``index`` and ``probability`` (None for a
    LinearSVC, which has no probabilities) added: each sentence embedded as the run embedded it."""
    tokenizer, encoder = embedder
    split = tokenize(TextSplit([r["input"] for r in rows], np.zeros(len(rows), dtype=np.int64)), tokenizer,
                     desc["input"]["max_length"])
    x = extract_features(encoder, split, desc["model"]["embedding"]["pooling"], batch_size, device)
    return _classified(pipe, x, rows, desc["input"]["classes"])


def _classified(pipe: Pipeline, x: np.ndarray, rows: list[dict[str, Any]], names: list[str]) -> list[dict[str, Any]]:
    """``rows`` with the class of each row of features ``x``, its index and probability (None without one)."""
    labels = pipe.predict(x)
    probs = pipe.predict_proba(x).max(axis=1) if hasattr(pipe[-1], "predict_proba") else [None] * len(rows)
    return [{**r, "class": names[int(j)], "index": int(j), "probability": None if p is None else float(p)}
            for r, j, p in zip(rows, labels, probs)]
