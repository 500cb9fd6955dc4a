"""Detectors against OOD sets: build the configured detectors, fit them, score the ID images and each OOD
set (one forward pass serves the logit detectors), the metrics of every (OOD set, detector), flat summary
keys, and the arrays of scores.npz (which the experiment saves). Scores follow ``analysis.ood``: larger = more
likely OOD.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dllab.core import registry
from dllab.data.images import ImageData, Split, balanced_subset
from dllab.core.events import QUIET, Reporter
from dllab.core.config import sections
from dllab.ood.settings import METRICS, AutoencoderConfig, OdinSetting, OODConfig
from dllab.train.inference import logits_of
from dllab.ood.base import Detector, FeatureDetector, LogitDetector, features_of
from dllab.ood.datasets import OODSet
from dllab.ood.metrics import ood_metrics


def build_detectors(names: Sequence[str], batch_size: int, odin: OdinSetting, autoencoder: AutoencoderConfig,
                    seed: int = 0, tag: str = "", reporter: Reporter = QUIET,
                    ood: OODConfig | None = None) -> dict[str, Detector]:
    """The registered detectors ``names`` (each once), not fitted yet: build them once per model, since the
    autoencoder's decoder belongs to the model it was fitted on. Each takes what it needs of the settings
    (``Detector.from_settings``): ``odin``, ``autoencoder``, ``seed`` (the decoder's shuffling),
    ``progress``, which sends a fitting detector's epochs to ``reporter``'s log under ``tag``, and the
    sub-sections of ``ood`` by name (``knn``, ``vim``, ``react``, ``ash``; their defaults when ``ood`` is None)."""
    def progress(epoch: int, loss: float) -> None:
        reporter.log(f"[{tag or 'autoencoder'}] decoder epoch {epoch}/{autoencoder.epochs} "
                     f"reconstruction MSE {loss:.5f}")

    ood_sections = dict(sections(ood if ood is not None else OODConfig()))
    settings = {**ood_sections, "odin": odin, "autoencoder": autoencoder, "seed": seed, "progress": progress}
    detectors = {d: registry.get("detector", d).from_settings(batch_size=batch_size, **settings)
                 for d in dict.fromkeys(names)}
    for name, det in detectors.items():
        det.label = det.label or name   # figures name a detector that has no label of its own by its name
    return detectors


def _learns_from_features(det: Detector) -> bool:
    return isinstance(det, FeatureDetector) and det.fits


def score_images(model, x, detectors: dict[str, Detector], batch_size: int = 256) -> dict[str, torch.Tensor]:
    """{"logits": (N, K), name: (N,)} for images ``x``; one forward pass serves the logit detectors, one more
    (``model.forward_features``) the feature detectors."""
    logits = logits_of(model, x, batch_size)
    wanted = any(isinstance(d, FeatureDetector) for d in detectors.values())
    features = features_of(model, x, batch_size) if wanted else None
    out = {"logits": logits}
    for name, det in detectors.items():
        if isinstance(det, LogitDetector):
            out[name] = det.score_logits(logits)
        elif isinstance(det, FeatureDetector):
            out[name] = det.score_features(model, features)
        else:
            out[name] = det.score(model, x)
    return out


def ood_evaluation(model, id_x, ood_sets: dict[str, torch.Tensor], detectors: dict[str, Detector],
                   batch_size: int = 256):
    """Scores of the ID images and of every OOD set, and the metrics of every (OOD set, detector), with
    detectors already fitted.

    Returns (scores {"id" | ood name: {"logits" | detector: tensor}}, metrics {ood: {detector: {metric: v}}}).
    """
    scores = {"id": score_images(model, id_x, detectors, batch_size)}
    metrics = {}
    for name, x in ood_sets.items():
        scores[name] = score_images(model, x, detectors, batch_size)
        metrics[name] = {d: ood_metrics(scores["id"][d], scores[name][d]) for d in detectors}
    return scores, metrics


def fit_and_evaluate(model, detectors: dict[str, Detector], train: Split, id_x, ood_sets: dict[str, torch.Tensor],
                     batch_size: int = 256, tag: str = "", reporter: Reporter = QUIET):
    """Fit every detector on ``train`` (ID training images and labels), then ``ood_evaluation``; what fitting
    did (a note, right after each fit) and each OOD set's AUROCs (a log line) go to ``reporter`` (``tag`` names
    the model when there are two)."""
    # One pass over the training images gives the features every feature detector that learns is fitted on.
    wanted = any(_learns_from_features(d) for d in detectors.values())
    features = features_of(model, train.x, batch_size) if wanted else None
    for name, det in detectors.items():
        if _learns_from_features(det):
            det.fit_features(model, features, train.y)
        else:
            det.fit(model, train.x, train.y)
        if note := det.fit_note():
            reporter.note(f"{name} detector{' (' + tag + ')' if tag else ''}: {note}")
    scores, metrics = ood_evaluation(model, id_x, ood_sets, detectors, batch_size)
    for ood, per_det in metrics.items():
        reporter.log(f"{tag + ' ' if tag else ''}{ood}: "
                     + ", ".join(f"{d} AUROC {m['auroc']:.3f}" for d, m in per_det.items()))
    return scores, metrics


def evaluate_ood(model, detectors: dict[str, Detector], data: ImageData, ood_sets: Sequence[OODSet],
                 batch_size: int = 256, fit_limit: int = 0, seed: int = 0, tag: str = "",
                 reporter: Reporter = QUIET) -> tuple[dict, dict]:
    """``fit_and_evaluate`` on ``data``'s test images vs every OOD set; the detectors are fitted on a
    class-balanced subset of ``fit_limit`` of its training images and labels (0 = all), drawn with ``seed``
    (from a generator of its own: the draw changes no other random number). Returns (scores, metrics);
    ``score_arrays`` turns the scores into scores.npz's arrays."""
    fit_on = balanced_subset(data.train, fit_limit, torch.Generator().manual_seed(seed))
    return fit_and_evaluate(model, detectors, fit_on, data.test.x, {s.name: s.x for s in ood_sets}, batch_size, tag,
                            reporter)


def metric_keys(metrics: dict, prefix: str = "", which: Sequence[str] = METRICS) -> dict[str, float]:
    """Flat summary keys ``[prefix.][ood.]detector.metric``; the OOD set's name only when there are several."""
    several = len(metrics) > 1
    out = {}
    for ood, per_det in metrics.items():
        for d, m in per_det.items():
            head = ".".join(p for p in (prefix, ood if several else "", d) if p)
            out.update({f"{head}.{k}": m[k] for k in which})
    return out


def score_arrays(scores: dict, classes: Sequence[str], id_labels: torch.Tensor,
                 detectors: Sequence[str]) -> dict[str, np.ndarray]:
    """The content of scores.npz: ``classes``, ``detectors``, ``ood_sets`` (string arrays), ``id.labels``,
    and for g in ``id`` + the OOD sets ``g.logits`` (N, K) float32 and ``g.<detector>`` (N,) float32."""
    arrays = {"classes": np.array(list(classes)), "detectors": np.array(list(detectors)),
              "ood_sets": np.array([g for g in scores if g != "id"]), "id.labels": id_labels.numpy()}
    for g, per_group in scores.items():
        for k, v in per_group.items():
            arrays[f"{g}.{k}"] = v.detach().float().cpu().numpy()
    return arrays


BENCHMARK_METRICS = ("auroc", "fpr95")   # what the near/far table shows (OpenOOD's columns)


def benchmark_keys(metrics: dict, groups: dict[str, Sequence[str]],
                   which: Sequence[str] = BENCHMARK_METRICS) -> dict[str, float]:
    """The near/far benchmark's summary keys from ``metrics`` ({ood: {detector: {metric: v}}}) and ``groups``
    ({"near" | "far": [ood set names]}): ``<group>.<set>.<detector>.<metric>`` per set and
    ``<group>.<detector>.<metric>``, the unweighted mean over the group's sets (OpenOOD's near/far mean)."""
    out = {}
    for group, sets in groups.items():
        detectors = dict.fromkeys(d for s in sets for d in metrics[s])
        for s in sets:
            out.update({f"{group}.{s}.{d}.{m}": metrics[s][d][m] for d in metrics[s] for m in which})
        for d in detectors:
            out.update({f"{group}.{d}.{m}": float(np.mean([metrics[s][d][m] for s in sets])) for m in which})
    return out
