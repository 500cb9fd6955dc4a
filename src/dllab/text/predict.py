"""A saved text model (``text.saved``) over sentences: the class and its probability per sentence.

What the user names: each INPUT that is an existing file is a text file of sentences, one per line (blank lines
skipped); any other INPUT is a sentence itself; ``files`` (``--file F``) are always files. Sentences are
tokenised by the folder's own tokenizer, truncated at the model's ``max_length``, and go through the model in
length-sorted batches padded to their longest row (as the run evaluated them), in the precision the run
evaluated in.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from dllab import DataError
from dllab.core import untrusted
from dllab.core.machine import to_device
from dllab.data.text import TextSplit, iterate_batches, tokenize
from dllab.train.inference import eval_mode
from dllab.train.precision import Precision

BATCH_SIZE = 256
TEXT_FILE_LIMIT = 64 * 2 ** 20


def sentences(inputs: Iterable[str | Path], files: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """``{"input": sentence}`` per sentence named by ``inputs`` and ``files`` (a line of a file also gets
    ``"source": "<file>:<line>"``). A folder, an unreadable or empty file, or no sentence at all is one line."""
    out: list[dict[str, Any]] = []
    for item in inputs:
        if isinstance(item, Path) or Path(item).is_file() or Path(item).is_dir():
            out += _lines(Path(item))
        elif str(item).strip():
            out.append({"input": str(item)})
    for f in files:
        out += _lines(Path(f))
    if not out:
        raise DataError("no sentences given: name sentences, or text files of them (one per line)")
    return out


def _lines(path: Path) -> list[dict[str, Any]]:
    if path.is_dir():
        raise DataError(f"{path} is a folder; a text model takes sentences, or text files of them (one per line)")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        text = untrusted.read_bytes(path, TEXT_FILE_LIMIT).decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from e
    rows = [{"input": line.strip(), "source": f"{path}:{i}"} for i, line in enumerate(text.splitlines(), 1)
            if line.strip()]
    if not rows:
        raise DataError(f"{path} holds no sentences (one per line)")
    return rows


@torch.inference_mode()
def predict_sentences(model: torch.nn.Module, tokenizer, description: dict[str, Any], rows: list[dict[str, Any]],
                      device: torch.device | str = "cpu", batch_size: int = BATCH_SIZE) -> list[dict[str, Any]]:
    """``rows`` (from ``sentences``) with ``class``, ``index`` and ``probability`` added. ``model`` and
    ``tokenizer`` are those ``load_text_model`` returned with ``description``; the model moves to ``device``."""
    device = torch.device(device)
    classes, max_length = description["input"]["classes"], description["input"]["max_length"]
    precision = Precision(description["model"]["precision"], device)
    split = tokenize(TextSplit([r["input"] for r in rows], np.zeros(len(rows), dtype=np.int64)), tokenizer,
                     max_length)
    probs = torch.zeros(len(rows), len(classes))
    model.to(device)
    with eval_mode(model):
        for idx, batch in iterate_batches(split, batch_size):
            with precision.autocast():
                logits = model(input_ids=to_device(batch["input_ids"], device),
                               attention_mask=to_device(batch["attention_mask"], device)).logits
            probs[torch.as_tensor(idx)] = torch.softmax(logits.float(), dim=1).cpu()
    p, k = probs.max(dim=1)
    return [{**r, "class": classes[j], "index": j, "probability": float(pj)}
            for r, j, pj in zip(rows, k.tolist(), p.tolist())]
