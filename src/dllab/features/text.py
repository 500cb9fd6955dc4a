"""Frozen text features: the last layer's sentence embedding of every split.

``features_key`` names what the embeddings depend on (the model, the pooling, ``max_length``, the split sizes
and the seed, which picks the subsets), so a cache of them (the experiment's ``features.npz``) is reused
exactly when none of those changed.
"""
from __future__ import annotations

import json
import time

import numpy as np
import torch
from torch import nn

from dllab import ConfigError
from dllab.core.progress import progress_bar
from dllab.data.text import TextSplit, iterate_batches, num_batches, tokenize
from dllab.core.events import QUIET, Reporter
from dllab.models import hf


def features_key(source: str, splits: dict[str, TextSplit], pooling: str, max_length: int, seed: int) -> str:
    """A string that changes with whatever ``embed_splits``' arrays depend on."""
    key = {"model": source, "pooling": pooling, "max_length": max_length,
           "sizes": {s: len(v) for s, v in splits.items()}, "seed": seed}
    return json.dumps(key, sort_keys=True)


def embed_splits(source: str, splits: dict[str, TextSplit], pooling: str, max_length: int, batch_size: int,
                 device: torch.device, progress: bool = False, reporter: Reporter = QUIET) -> dict[str, np.ndarray]:
    """``{"<split>_x": embeddings, "<split>_y": labels}`` of the model at ``source`` (folder or hub id) for every
    split (a progress bar with ``progress``); how long it took goes to ``reporter``'s log."""
    tokenizer, encoder = hf.load_tokenizer(source), hf.load_encoder(source)
    t0 = time.perf_counter()
    out = {}
    for s, split in splits.items():
        out[f"{s}_x"] = extract_features(encoder, tokenize(split, tokenizer, max_length), pooling,
                                            batch_size, device, progress)
        out[f"{s}_y"] = split.labels
    reporter.log(f"features: {sum(len(v) for v in splits.values())} sentences embedded in "
                 f"{time.perf_counter() - t0:.0f}s ({pooling} pooling)")
    return out


@torch.inference_mode()
def extract_features(encoder: nn.Module, split, pooling: str = "cls", batch_size: int = 64,
                     device: torch.device | str = "cpu", progress: bool = False) -> np.ndarray:
    """One vector per sentence from the last layer: the first token ([CLS]/<s>) or the mean over real tokens.

    Batches are sorted by length (little padding); rows come back in the split's order.
    """
    if pooling not in ("cls", "mean"):
        raise ConfigError(f"features.pooling={pooling}: choose cls or mean")
    encoder.eval().to(device)
    out = np.zeros((len(split), encoder.config.hidden_size), dtype=np.float32)
    for idx, batch in progress_bar(iterate_batches(split, batch_size), num_batches(split, batch_size),
                                   f"features ({pooling})", progress):
        mask = batch["attention_mask"].to(device)
        hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state
        if pooling == "cls":
            vec = hidden[:, 0]
        else:
            m = mask.unsqueeze(-1).to(hidden.dtype)
            vec = (hidden * m).sum(1) / m.sum(1).clamp(min=1)
        out[idx] = vec.float().cpu().numpy()
    return out
