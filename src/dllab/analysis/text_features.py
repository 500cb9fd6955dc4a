"""Frozen text features: the last layer's sentence embedding of every split, extracted once per run.

The cache (``features.npz`` in the run folder) is keyed on the model, the pooling, ``max_length``, the split
sizes and the seed (which picks the subsets), so a resumed run reuses it and another setting never does.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch

from ..data.text import TextSplit, tokenize
from ..text import hf

FEATURES_FILE = "features.npz"


def cached_features(run, source: str, splits: dict[str, TextSplit], pooling: str, max_length: int,
                    batch_size: int, seed: int, device: torch.device) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{split: (embeddings, labels)} of the model at ``source`` (folder or hub id), from ``features.npz`` when it
    matches, else extracted (a progress bar unless the run is quiet) and written atomically."""
    key = {"model": source, "pooling": pooling, "max_length": max_length,
           "sizes": {s: len(v) for s, v in splits.items()}, "seed": seed}

    def extract() -> dict[str, np.ndarray]:
        tokenizer, encoder = hf.load_tokenizer(source), hf.load_encoder(source)
        t0 = time.perf_counter()
        out = {}
        for s, split in splits.items():
            out[f"{s}_x"] = hf.extract_features(encoder, tokenize(split, tokenizer, max_length), pooling,
                                                batch_size, device, not run.quiet)
            out[f"{s}_y"] = split.labels
        run.log(f"features: {sum(len(v) for v in splits.values())} sentences embedded in "
                f"{time.perf_counter() - t0:.0f}s ({pooling} pooling)")
        return out

    arrays, reused = run.cached_arrays(FEATURES_FILE, json.dumps(key, sort_keys=True), extract)
    if reused:
        run.log(f"features: reusing {FEATURES_FILE}")
    return {s: (arrays[f"{s}_x"], arrays[f"{s}_y"]) for s in splits}
