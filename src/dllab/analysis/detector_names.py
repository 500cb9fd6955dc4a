"""The names Lab 4's configs and summaries use for OOD detectors and metrics.

Kept free of torch: experiment configs import these at registration time, and ``dllab list`` must not
pay for torch. ``analysis.ood.DETECTORS`` maps each name to its detector class (a test checks they agree).
"""
from __future__ import annotations

from typing import Sequence

from .. import DllabError

DETECTOR_NAMES = ("msp", "max_logit", "energy", "odin", "autoencoder")
METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95")


def check_detectors(names: Sequence[str]) -> list[str]:
    bad = [d for d in names if d not in DETECTOR_NAMES]
    if bad or not names:
        raise DllabError(f"ood.detectors: unknown {bad or 'empty list'}; choose from {', '.join(DETECTOR_NAMES)}")
    return list(dict.fromkeys(names))
