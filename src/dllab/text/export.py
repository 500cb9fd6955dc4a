"""The text branch of ``dllab export``: a Lab 2 model folder (``"kind": "text"``) as ``train.export`` exports it.

The folder is read exactly as ``dllab predict`` reads it (``text.saved.load_text_model``: model.json checked,
safetensors headers checked, local files only, no remote code; a LoRA variant is its base model, named by
model.json, with the folder's adapter on it). A LoRA model is then merged (peft's ``merge_and_unload``: each
adapter's low-rank update added into the weight it adapts) into a plain classifier of the base architecture,
so the exported graph has no adapter branches; the check compares the export with the model *as loaded*, so it
covers the merge too.

Inputs ``input_ids`` and ``attention_mask`` (batch and sequence axes dynamic), output ``logits``. The check runs
on the sentences the user names (``--inputs``: text files, one sentence a line), else on the run's own test
sentences when they can be read here (model.json's ``config``: the run's data settings and seed, local files
only), else on a few fixed sentences; the command says which.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pydantic
import torch

from dllab import DllabError
from dllab.data.text import balanced_subset, local_folder, read_jsonl_splits, read_sentences
from dllab.text.saved import load_text_model
from dllab.train.export import CHECK_INPUTS, Subject

# The check sentences when neither --inputs nor the run's data are at hand: short and long, so that padding is
# exercised.
SENTENCES = ["A gripping, beautifully acted film.", "Dull.", "I wanted to like it, but the plot goes nowhere "
             "and the dialogue is flat from the first scene to the last.", "Not bad at all, actually."]
FIXED = "fixed sentences"


class Logits(torch.nn.Module):
    """The classifier as a function of two tensors to its logits: what the exporters trace."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class RunTextData(pydantic.BaseModel):
    """The data settings of the run that saved the model, as model.json's flat ``config`` holds them (untrusted:
    checked here; what is not a text data setting is ignored)."""
    model_config = pydantic.ConfigDict(strict=True, extra="ignore")
    name: str
    root: str = ""
    test_limit: pydantic.NonNegativeInt = 0
    seed: int = 0


def text_subject(folder: Path, inputs: Sequence[str | Path] | None, limit: int = CHECK_INPUTS) -> Subject:
    """What ``train.export.export_model`` exports and checks for the text model in ``folder``: the plain
    classifier (LoRA merged), its input names and dynamic axes, and at most ``limit`` tokenised check sentences."""
    model, tokenizer, desc = load_text_model(folder)
    texts, described = check_sentences(desc, inputs)
    encoded = tokenizer(texts[:limit], padding=True, truncation=True, max_length=desc["input"]["max_length"],
                        return_tensors="pt")
    x = (encoded["input_ids"], encoded["attention_mask"])
    with torch.inference_mode():   # the model as predict runs it, before any merge
        expected = Logits(model)(*x).float().numpy()
    axes = {"batch": 0, "sequence": 1}
    dynamic = {name: {i: axis for axis, i in axes.items()} for name in ("input_ids", "attention_mask")}
    return Subject(Logits(merged(model)).eval(), ("input_ids", "attention_mask"), {**dynamic, "logits": {0: "batch"}},
                   x, described, expected)


def merged(model: torch.nn.Module) -> torch.nn.Module:
    """A LoRA ``PeftModel`` as the plain classifier it amounts to (adapters merged into the weights they adapt,
    the trained head in place); any other model as it is."""
    if not hasattr(model, "merge_and_unload"):
        return model
    return model.merge_and_unload().eval()


def check_sentences(desc: dict[str, Any], inputs: Sequence[str | Path] | None) -> tuple[list[str], str]:
    """The sentences the check runs and what they are: the lines of the files ``inputs`` names, else the run's
    test sentences, else ``SENTENCES`` (with why the run's could not be read)."""
    if inputs:
        return [row["input"] for row in read_sentences([], files=inputs)], "the given sentences"
    try:
        return run_sentences(desc)
    except DllabError as e:
        return list(SENTENCES), f"{FIXED}: {e}"


def run_sentences(desc: dict[str, Any]) -> tuple[list[str], str]:
    """The test sentences of the run that saved the model, subset as the run subset them (its data settings and
    seed in model.json's ``config``), from local files only: a dataset name never starts a download."""
    config = desc.get("config")
    settings = {key[5:]: value for key, value in config.items() if key.startswith("data.")} \
        if isinstance(config, dict) else {}
    if "name" not in settings:
        raise DllabError("model.json does not name the run's data")
    try:
        data = RunTextData(**{**settings, "seed": config.get("seed", 0)})
    except pydantic.ValidationError as e:
        raise DllabError("the run's data settings in model.json are malformed") from e
    folder = local_folder(data.name, data.root)
    if folder is None:
        raise DllabError(f"the run's data ({data.name}) are not on this machine")
    test = balanced_subset(read_jsonl_splits(folder)["test"], data.test_limit, data.seed)
    return test.texts[:CHECK_INPUTS], f"the run's test sentences, {data.name} from {folder}"
