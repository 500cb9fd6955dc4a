"""What the Lab 4 experiments compute, without configs or run folders: every detector's scores for a set of
images, the OOD metrics of ID vs several OOD sets, flat summary keys, an ODIN grid search on a
validation/test split, and arrays saved atomically for redrawing plots later.

Scores follow ``analysis.ood``: larger = more likely OOD. Images are uint8 or float in [0, 1].
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .. import DllabError
from .ood import DETECTORS, logits_of, msp_scores
from .ood.autoencoder import reconstruction_scores
from .ood.odin import odin_grid, odin_scores

DETECTOR_NAMES = ("msp", "max_logit", "energy", "odin", "autoencoder")
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def check_detectors(names: Sequence[str]) -> list[str]:
    bad = [d for d in names if d not in DETECTOR_NAMES]
    if bad or not names:
        raise DllabError(f"ood.detectors: unknown {bad or 'empty list'}; choose from {', '.join(DETECTOR_NAMES)}")
    return list(dict.fromkeys(names))


def score_images(model, x, detectors: Sequence[str], batch_size: int = 256,
                 odin: tuple[float, float] = (1000.0, 0.0014), decoder=None) -> dict[str, torch.Tensor]:
    """{"logits": (N, K), detector: (N,)} for images ``x``; one forward pass serves the logit detectors.
    ``odin`` = (T, eps); ``decoder`` = the autoencoder detector's trained decoder (needed for "autoencoder")."""
    logits = logits_of(model, x, batch_size)
    out = {"logits": logits}
    for d in check_detectors(detectors):
        if d in DETECTORS:
            out[d] = DETECTORS[d](logits)
        elif d == "odin":
            out[d] = odin_scores(model, x, odin[0], odin[1], batch_size)
        elif d == "autoencoder":
            if decoder is None:
                raise DllabError("the autoencoder detector needs a trained decoder")
            out[d] = reconstruction_scores(model, decoder, x, batch_size)
    return out


def ood_evaluation(model, id_x, ood_sets: dict[str, torch.Tensor], detectors: Sequence[str], batch_size: int = 256,
                   odin: tuple[float, float] = (1000.0, 0.0014), decoder=None):
    """Scores of the ID images and of every OOD set, and the metrics of every (OOD set, detector).

    Returns (scores {"id" | ood name: {"logits" | detector: tensor}}, metrics {ood: {detector: {metric: v}}}).
    """
    from .ood.metrics import ood_metrics   # scikit-learn: imported when needed, not by `dllab list`

    scores = {"id": score_images(model, id_x, detectors, batch_size, odin, decoder)}
    metrics = {}
    for name, x in ood_sets.items():
        scores[name] = score_images(model, x, detectors, batch_size, odin, decoder)
        metrics[name] = {d: ood_metrics(scores["id"][d], scores[name][d]) for d in check_detectors(detectors)}
    return scores, metrics


def metric_keys(metrics: dict, prefix: str = "", which: Sequence[str] = METRICS) -> dict[str, float]:
    """Flat summary keys ``[prefix.][ood.]detector.metric``; the OOD set's name only when there are several."""
    several = len(metrics) > 1
    out = {}
    for ood, per_det in metrics.items():
        for d, m in per_det.items():
            head = ".".join(p for p in (prefix, ood if several else "", d) if p)
            out.update({f"{head}.{k}": m[k] for k in which})
    return out


def save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed, written atomically (temp file + rename: a reader never sees half a file)."""
    from ..runs import atomic_write

    atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def score_arrays(scores: dict, classes: Sequence[str], id_labels: torch.Tensor,
                 detectors: Sequence[str]) -> dict[str, np.ndarray]:
    """The content of scores.npz: ``classes``, ``detectors``, ``ood_sets`` (string arrays), ``id.labels``,
    and for g in ``id`` + the OOD sets ``g.logits`` (N, K) float32 and ``g.<detector>`` (N,) float32."""
    groups = [g for g in scores if not g.startswith("_")]
    arrays = {"classes": np.array(list(classes)), "detectors": np.array(list(detectors)),
              "ood_sets": np.array([g for g in groups if g != "id"]), "id.labels": id_labels.numpy()}
    for g in groups:
        for k, v in scores[g].items():
            arrays[f"{g}.{k}"] = v.detach().float().cpu().numpy()
    return arrays


def split_mask(n: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A seeded boolean mask with round(n * fraction) True entries (the validation part)."""
    if not 0 < fraction < 1:
        raise DllabError(f"odin.val_fraction={fraction}: must be between 0 and 1")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:int(round(n * fraction))]] = True
    if mask.all() or not mask.any():
        raise DllabError(f"odin.val_fraction={fraction} leaves an empty validation or test part of {n} images")
    return mask


def odin_search(model, id_x, ood_x, id_val: torch.Tensor, ood_val: torch.Tensor, temperatures: Sequence[float],
                epsilons: Sequence[float], batch_size: int = 256, id_cache: dict | None = None) -> dict:
    """ODIN over the (T, eps) grid on ID and OOD images; AUROC and FPR95 of every cell on the validation
    part (``*_val`` masks) and on the rest (test); the best cell by validation AUROC (ties: the first, i.e.
    the lowest T, then the lowest eps) with its test metrics; MSP's test metrics from ``logits_of`` on the
    same batches as the grid, so the (T=1, eps=0) cell equals MSP bit for bit. Pass the same ``id_cache``
    dict for several OOD sets and the ID images are scored once.
    """
    from .ood.metrics import ood_metrics

    Ts, Es = [float(t) for t in temperatures], [float(e) for e in epsilons]
    if not Ts or not Es:
        raise DllabError("odin.temperatures and odin.epsilons need at least one value each")
    cache = id_cache if id_cache is not None else {}
    if cache.get("key") != (Ts, Es, batch_size):
        cache.update(key=(Ts, Es, batch_size), grid=odin_grid(model, id_x, Ts, Es, batch_size),
                     msp=msp_scores(logits_of(model, id_x, batch_size)).numpy())
    grid_id, msp_id = cache["grid"], cache["msp"]
    grid_ood = odin_grid(model, ood_x, Ts, Es, batch_size)
    msp_ood = msp_scores(logits_of(model, ood_x, batch_size)).numpy()
    iv, ov = id_val.numpy(), ood_val.numpy()
    shape = (len(Ts), len(Es))
    res: dict = {k: np.zeros(shape) for k in ("val_auroc", "test_auroc", "val_fpr95", "test_fpr95")}
    for i in range(len(Ts)):
        for j in range(len(Es)):
            for part, mi, mo in (("val", iv, ov), ("test", ~iv, ~ov)):
                m = ood_metrics(grid_id[i, j][mi], grid_ood[i, j][mo])
                res[f"{part}_auroc"][i, j], res[f"{part}_fpr95"][i, j] = m["auroc"], m["fpr95"]
    bi, bj = np.unravel_index(int(np.argmax(res["val_auroc"])), shape)
    res.update(best=(int(bi), int(bj)), T=Ts, eps=Es, grid_id=grid_id, grid_ood=grid_ood, msp_id=msp_id,
               msp_ood=msp_ood, best_test=ood_metrics(grid_id[bi, bj][~iv], grid_ood[bi, bj][~ov]),
               msp_test=ood_metrics(msp_id[~iv], msp_ood[~ov]))
    return res
