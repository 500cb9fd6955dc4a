"""Threshold-free metrics for OOD detection, from detector scores where larger = more likely OOD.

- ``auroc``: area under the ROC curve with OOD as the positive class. It is the probability that a
  random OOD sample scores higher than a random ID sample (ties count 1/2): 1.0 is perfect, 0.5 is
  chance, and swapping the ID and OOD sets gives 1 - AUROC.
- ``aupr_out``: average precision with OOD as positive, scores as they are.
- ``aupr_in``: average precision with ID as positive, scores negated.
  Both use scikit-learn's ``average_precision_score`` (step-wise, as in Hendrycks & Gimpel 2017);
  pytorch-ood integrates the PR curve with trapezoids instead, which can differ slightly.
- ``fpr95``: FPR at 95% TPR as in ODIN (Liang et al. 2018) and Hendrycks & Gimpel: ID is the positive
  class of the *acceptance* test "score <= t". Take the lowest threshold t that accepts at least 95%
  of the ID samples; fpr95 is the fraction of OOD samples accepted (wrongly taken for ID) at t.
  Lower is better; 0.0 = perfectly separated.
  Note: pytorch-ood's ``fpr_at_tpr`` takes OOD as positive instead (the fraction of ID samples
  rejected when 95% of OOD samples are detected); the two agree only for symmetric score distributions.

Hendrycks & Gimpel, ICLR 2017 (https://arxiv.org/abs/1610.02136);
Liang, Li & Srikant, ICLR 2018 (https://arxiv.org/abs/1706.02690).
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from dllab import DllabError


def _to_numpy(scores, what: str) -> np.ndarray:
    if hasattr(scores, "detach"):        # torch tensor, possibly on a GPU
        scores = scores.detach().float().cpu().numpy()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise DllabError(f"no {what} scores: OOD metrics need at least one ID and one OOD sample")
    if not np.all(np.isfinite(s)):
        raise DllabError(f"{what} scores contain NaN or inf; check the detector (e.g. an ODIN temperature "
                         "or energy T that overflows)")
    return s


def _labelled(scores_id, scores_ood) -> tuple[np.ndarray, np.ndarray]:
    """All scores and is-OOD labels (1 = OOD, the positive class)."""
    sid, sood = _to_numpy(scores_id, "ID"), _to_numpy(scores_ood, "OOD")
    return np.concatenate([sid, sood]), np.concatenate([np.zeros(sid.size), np.ones(sood.size)])


def fpr_at_tpr(scores_id, scores_ood, tpr: float = 0.95) -> float:
    """Fraction of OOD samples accepted as ID at the lowest threshold that accepts >= ``tpr`` of ID."""
    s, is_ood = _labelled(scores_id, scores_ood)
    # ID positive, ranked by -score. drop_intermediate=False keeps every threshold: dropping collinear
    # points could skip the first one with TPR >= tpr and report a larger FPR.
    fpr, tpr_curve, _ = roc_curve(1 - is_ood, -s, drop_intermediate=False)
    idx = int(np.searchsorted(tpr_curve, tpr, side="left"))  # tpr_curve is non-decreasing
    return float(fpr[min(idx, len(fpr) - 1)])


def ood_metrics(scores_id, scores_ood) -> dict[str, float]:
    """{"auroc", "aupr_in", "aupr_out", "fpr95"} for ID and OOD scores (arrays or tensors, larger = more OOD)."""
    s, is_ood = _labelled(scores_id, scores_ood)
    return {
        "auroc": float(roc_auc_score(is_ood, s)),
        "aupr_in": float(average_precision_score(1 - is_ood, -s)),
        "aupr_out": float(average_precision_score(is_ood, s)),
        "fpr95": fpr_at_tpr(scores_id, scores_ood, 0.95),
    }


def roc_pr_curves(scores_id, scores_ood) -> dict[str, np.ndarray]:
    """Curves for plotting, OOD as the positive class (matching ``auroc`` and ``aupr_out``).

    Returns {"fpr", "tpr", "roc_thresholds", "precision", "recall", "pr_thresholds"}: plot tpr
    against fpr for the ROC, precision against recall for the PR curve.
    """
    s, is_ood = _labelled(scores_id, scores_ood)
    fpr, tpr, roc_t = roc_curve(is_ood, s)
    precision, recall, pr_t = precision_recall_curve(is_ood, s)
    return {"fpr": fpr, "tpr": tpr, "roc_thresholds": roc_t,
            "precision": precision, "recall": recall, "pr_thresholds": pr_t}
