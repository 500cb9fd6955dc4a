"""A saved text model (``text.saved``) over sentences (``data.text.read_sentences``): the class and its
probability per sentence.

Sentences are tokenised by the folder's own tokenizer, truncated at the model's ``max_length``, and go through the
model in length-sorted batches padded to their longest row (as the run evaluated them), in the precision the run
evaluated in.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from dllab.data.text import TextSplit, tokenize
from dllab.text.strategies import batch_logits
from dllab.train.inference import eval_mode
from dllab.train.precision import Precision

BATCH_SIZE = 256


@torch.inference_mode()
def predict_sentences(model: torch.nn.Module, tokenizer, description: dict[str, Any], rows: list[dict[str, Any]],
                      device: torch.device | str = "cpu", batch_size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """``rows`` (from ``read_sentences``) with ``class``, ``index`` and ``probability`` added. ``model`` and
    ``tokenizer`` are those ``load_text_model`` returned with ``description``; the model moves to ``device``."""
    device = torch.device(device)
    classes, max_length = description["input"]["classes"], description["input"]["max_length"]
    precision = Precision(description["model"]["precision"], device)
    split = tokenize(TextSplit([r["input"] for r in rows], np.zeros(len(rows), dtype=np.int64)), tokenizer,
                     max_length)
    probs = torch.zeros(len(rows), len(classes))
    model.to(device)
    with eval_mode(model):
        for idx, logits in batch_logits(model, split, batch_size, device, precision):
            probs[torch.as_tensor(idx)] = torch.softmax(logits.float(), dim=1).cpu()
    p, k = probs.max(dim=1)
    return [{**r, "class": classes[j], "index": j, "probability": float(pj)}
            for r, j, pj in zip(rows, k.tolist(), p.tolist())]
