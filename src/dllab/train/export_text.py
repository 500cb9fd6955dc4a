"""The text branch of ``dllab export``: a Hugging Face classifier saved beside model.json (``"kind": "text"``),
loaded from safetensors only (``models.hf``: local files, no remote code), exported with its tokenised inputs
``input_ids`` and ``attention_mask`` (batch and sequence axes dynamic) and ``logits`` out."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from dllab import ConfigError, DataError
from dllab.core import untrusted
from dllab.models.hf import load_classifier, load_tokenizer

ADAPTER = "adapter_config.json"
# The check sentences when no --inputs are given: short and long, so that padding is exercised.
SENTENCES = ["A gripping, beautifully acted film.", "Dull.", "I wanted to like it, but the plot goes nowhere "
             "and the dialogue is flat from the first scene to the last.", "Not bad at all, actually."]


class Logits(torch.nn.Module):
    """The classifier as a function of two tensors to its logits: what the exporters trace."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def text_model(folder: Path, inputs: Sequence[str | Path] | None, limit: int):
    """What ``export.Subject`` holds for the classifier in ``folder``: the module, its input names, their
    dynamic axes and the tokenised check sentences (at most ``limit``)."""
    if (folder / ADAPTER).is_file():
        raise ConfigError(f"{folder} holds a LoRA adapter, not a whole model: export needs it merged into its base "
                          "model (peft's merge_and_unload), which this folder does not hold; export a fully "
                          "fine-tuned variant instead")
    model = load_classifier(str(folder), num_labels=None).eval()
    tokenizer = load_tokenizer(str(folder))
    encoded = tokenizer(sentences(inputs)[:limit], padding=True, truncation=True, return_tensors="pt")
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {i: axis for axis, i in axes.items()} for name in ("input_ids", "attention_mask")}
    return (Logits(model).eval(), ("input_ids", "attention_mask"), {**dynamic, "logits": {0: "batch"}},
            (encoded["input_ids"], encoded["attention_mask"]))


def sentences(inputs: Sequence[str | Path] | None) -> list[str]:
    """The check sentences: the non-empty lines of the files ``inputs`` names, else ``SENTENCES``."""
    if not inputs:
        return list(SENTENCES)
    lines: list[str] = []
    for item in inputs:
        path = Path(item)
        if not path.is_file():
            raise DataError(f"{path}: no such file (a text model is checked on the lines of text files)")
        lines += [line.strip() for line in untrusted.read_text(path).splitlines() if line.strip()]
    if not lines:
        raise DataError("the --inputs files hold no sentences (one per line)")
    return lines
