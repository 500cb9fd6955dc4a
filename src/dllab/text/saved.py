"""Lab 2's fine-tuned models as folders anyone can use: ``models/<strategy>/`` of a ``lab2.finetune`` run.

    full fine-tunes   config.json + model.safetensors (Hugging Face ``save_pretrained``) and the tokenizer's files:
                      the folder alone loads with ``AutoModelForSequenceClassification.from_pretrained``
    lora              adapter_config.json + adapter_model.safetensors (``PeftModel.save_pretrained``: the adapters
                      and the trained head only) and the tokenizer's files; the frozen base model is loaded from
                      where model.json says it came from (``model.base``), a local folder or an offline name
    every strategy    model.json (``"kind": "text"``: base model, strategy, max_length, class names, the precision
                      it was evaluated in, metrics) and MODEL.md (``train.model_card``)

Only what trained is saved: ``baseline`` is an untrained random head and ``pretrained`` the published SST-2 model,
which its hub id already names (a copy would be hundreds of MB of someone else's weights).

``load_text_model`` reads a folder back as untrusted data: model.json through the bounded JSON reader, weights from
safetensors only (``use_safetensors=True``), ``local_files_only=True`` and never ``trust_remote_code``, so a
config naming custom code is refused, not run; anything missing or damaged is one ``RunFolderError`` line.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from safetensors import safe_open
from torch import nn

from dllab import RunFolderError
from dllab.core import untrusted
from dllab.core.untrusted import printable
from dllab.data.text import CLASSES
from dllab.models import hf
from dllab.text.strategies import Prepared
from dllab.train.precision import NAMES as PRECISIONS
from dllab.train.saved_model import (DESCRIPTION, METRICS_RULE, library_load, not_safetensors, present,
                                     read_json_description)

KIND = "text"
FULL_WEIGHTS, ADAPTER_WEIGHTS, ADAPTER_CONFIG = "model.safetensors", "adapter_model.safetensors", "adapter_config.json"
# The result's figures model.json keeps (which test_acc is which: METRICS_RULE; the result says, not this module)
METRIC_KEYS = ("test_acc", "val_acc", "best_epoch", "test_acc_last", "seconds", "trainable_params")
MAX_LENGTH_LIMIT = 2 ** 16


@dataclass(frozen=True)
class TextModelInfo:
    """What a run knows of the models its strategies train: the pretrained model they start from (the name as
    configured and the folder or hub id it resolved to), the tokenised length, the epochs and the data."""
    name: str
    source: str
    max_length: int
    epochs: int
    data: dict[str, Any] = field(default_factory=dict)   # name, source, train/val/test sentence counts


# --- writing ------------------------------------------------------------------------------------------

def save_strategy(io, name: str, p: Prepared, result: dict[str, Any], info: TextModelInfo) -> None:
    """Strategy ``name``'s kept (best-validation) model ``p.model`` as ``models/<name>/`` through ``io`` (the run's
    ``SavedModelIO``: rank 0, a temp folder renamed into place). A strategy that did not train saves nothing."""
    if io is None or not p.train:
        return
    io.save_folder(partial(_fill, name, p, result, info))


def _fill(name: str, p: Prepared, result: dict[str, Any], info: TextModelInfo, folder: Path) -> dict[str, Any]:
    """The model's and tokenizer's files in ``folder``; returns model.json's text part."""
    lora = hasattr(p.model, "peft_config")
    base = p.model.get_base_model() if lora else p.model
    base.config.id2label = dict(enumerate(CLASSES))   # the saved config.json names the classes too
    base.config.label2id = {c: i for i, c in enumerate(CLASSES)}
    with hf.quiet_transformers():   # no "Writing model shards" bar in a --quiet run
        p.model.save_pretrained(folder)
    (folder / "README.md").unlink(missing_ok=True)   # peft's template card: MODEL.md is the card
    hf.load_tokenizer(p.tokenizer_source).save_pretrained(folder)
    return {"kind": KIND,
            "model": {"library": "peft" if lora else "transformers", "architecture": type(base).__name__,
                      "strategy": name, "adapter": "lora" if lora else None,
                      "base": {"name": info.name, "source": info.source},
                      "precision": p.precision.name if p.precision else "fp32"},
            "weights": ADAPTER_WEIGHTS if lora else FULL_WEIGHTS,
            "input": {"classes": CLASSES, "max_length": info.max_length, "tokenizer": "saved in this folder",
                      "data": info.data},
            "metrics": {**{k: result[k] for k in METRIC_KEYS if k in result}, "epochs": info.epochs},
            "metrics_rule": METRICS_RULE}


# --- reading (untrusted) ------------------------------------------------------------------------------

def read_text_description(folder: Path) -> dict[str, Any]:
    """model.json of a text model folder, checked: kind, class names, max_length, adapter, base, precision."""
    path = Path(folder) / DESCRIPTION
    desc = read_json_description(folder, KIND)
    model, inp = desc["model"], desc["input"]
    classes, max_length = inp.get("classes"), inp.get("max_length")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)):
        raise RunFolderError(f"{path}: input.classes is malformed (expected a list of class names)")
    if not (type(max_length) is int and 0 < max_length <= MAX_LENGTH_LIMIT):
        raise RunFolderError(f"{path}: input.max_length is malformed (expected a positive integer)")
    base = model.get("base")
    if model.get("adapter") not in (None, "lora") or model.get("precision") not in PRECISIONS:
        raise RunFolderError(f"{path}: model.adapter or model.precision is malformed")
    if model.get("adapter") and not (isinstance(base, dict) and isinstance(base.get("name"), str)
                                     and isinstance(base.get("source"), str)):
        raise RunFolderError(f"{path}: model.base is malformed (a LoRA adapter needs its base model's name and "
                             "source)")
    return desc


def load_text_model(folder: Path) -> tuple[nn.Module, Any, dict[str, Any]]:
    """``(model, tokenizer, model.json)`` of a text model folder: the classifier in eval mode on the CPU (a
    ``PeftModel`` for LoRA) and its saved tokenizer."""
    folder = Path(folder)
    untrusted.check_tree(folder, "model folder")
    desc = read_text_description(folder)
    lora = desc["model"]["adapter"] == "lora"
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS) if lora else ("config.json", FULL_WEIGHTS):
        _check_file(folder, name)
    model = _load_lora(folder, desc) if lora else _load_full(folder)
    if model.config.num_labels != len(desc["input"]["classes"]):
        raise RunFolderError(f"{folder}: the model has {model.config.num_labels} outputs but model.json names "
                             f"{len(desc['input']['classes'])} classes")
    tokenizer = library_load(folder, "tokenizer", hf.from_local, "AutoTokenizer", str(folder))
    return model.eval(), tokenizer, desc


def _check_file(folder: Path, name: str) -> None:
    """``name`` is there, and a ``.safetensors`` file has a safetensors header (a pickle put in its place, or
    a damaged file, is refused here, before any library reads it)."""
    path = present(folder / name, f"a text model folder holds {DESCRIPTION}, the model's files and its tokenizer's "
                                  "(copy the whole folder, or run the strategy again)")
    if path.suffix != ".safetensors":
        return
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except Exception as e:   # SafetensorError for a bad header, OSError
        with open(path, "rb") as f:   # a regular file: check_tree refused links, FIFOs and devices
            raise not_safetensors(path, f.read(2)) from e


def _load_full(folder: Path) -> nn.Module:
    return library_load(folder, "model", hf.from_local, "AutoModelForSequenceClassification", str(folder),
                        use_safetensors=True)


def _load_lora(folder: Path, desc: dict[str, Any]) -> nn.Module:
    """The base model (``model.base``), then the adapters and head of ``folder`` on it."""
    from peft import PeftModel
    classes = desc["input"]["classes"]
    source = hf.saved_source(desc["model"]["base"]["name"], desc["model"]["base"]["source"])
    base = library_load(folder, f"base model {printable(source)}", hf.from_local,
                        "AutoModelForSequenceClassification", source, use_safetensors=True, num_labels=len(classes))
    with warnings.catch_warnings():   # transformers 5 deprecation noise from inside peft, not ours to fix
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return library_load(folder, "LoRA adapter", PeftModel.from_pretrained, base, str(folder),
                            is_trainable=False, local_files_only=True)
