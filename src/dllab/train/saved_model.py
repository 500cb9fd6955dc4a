"""A trained model as a folder anyone can use: ``models/<variant>/`` of a run.

    model.safetensors  the weights (the best-validation state dict), safetensors: no pickle, nothing to execute
    model.json         how to rebuild it (registry name + keyword arguments), its input spec (channels, size,
                       normalisation, class names), the metrics it achieved and where it came from
    MODEL.md           the model card: data, config, metrics beside the spec's numbers, intended use and limits

It is written beside ``models/<variant>.pt`` (kept: resume and ``model.run=`` read it) by ``SavedModelIO``, the
run's ``models`` CheckpointIO, so every variant ``train_model`` saves gets one. ``load_saved_model`` reads the
folder back as untrusted data: model.json through the bounded JSON reader, the weights through safetensors, the
model built only from the registry; anything damaged is one ``RunFolderError`` line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors, save as dump_safetensors

from dllab import ConfigError, RunFolderError
from dllab.core import ranks, registry, untrusted
from dllab.core.untrusted import printable
from dllab.core.config import flatten
from dllab.core.files import atomic_folder, atomic_write, atomic_write_json, atomic_write_text
from dllab.models.common import DATASET_STATS
from dllab.train.checkpoint import CHECKPOINT_LIMIT, FileCheckpoint, check_spec, load_weights, plain
from dllab.train.image import uses_channels_last
from dllab.train.model_card import model_card
from dllab.train.settings import METRICS_RULE

FORMAT = "dllab-model/1"
WEIGHTS, DESCRIPTION, CARD = "model.safetensors", "model.json", "MODEL.md"


def input_spec(data) -> dict[str, Any]:
    """What a model trained on ``data`` (an ``ImageData``) takes: C×H×W images in [0, 1], normalised inside
    the model with ``data``'s statistics; and what it was trained and tested on, for the model card."""
    c, h, w = data.shape
    mean, std = DATASET_STATS.get(data.stats or "", (None, None))
    return {"channels": c, "height": h, "width": w, "range": [0.0, 1.0],
            "normalisation": {"stats": data.stats, "mean": mean, "std": std, "inside_model": True},
            "classes": list(data.classes),
            "data": {"name": data.name, "title": data.title, "source": data.source, "train_images": len(data.train.y),
                     "val_images": len(data.val.y) if data.val is not None else 0, "test_images": len(data.test.y)}}


def evaluation_spec(precision: str, train, model: torch.nn.Module) -> dict[str, Any]:
    """How the metrics of a model trained with ``train`` (a ``TrainConfig``) were measured: the resolved precision
    (``auto`` may be bf16 on one CPU and fp32 on another), the batch size and the memory layout, so a reload
    scores exactly as the run did (``ImageTask``'s evaluation)."""
    return {"precision": precision, "batch_size": train.eval_batch_size,
            "channels_last": uses_channels_last(train, model)}


def kept_result(result: dict[str, Any]) -> dict[str, Any]:
    """A variant's result under ``METRICS_RULE``'s names. Results saved before the rule (results/<variant>.json and
    the ``result`` in models/<variant>.pt of an older run, which ``--resume``, ``source.run=`` and ``model.run=``
    read) held the last epoch's figures as ``test_*`` and the saved weights' as ``best_test_*``; the same numbers
    are renamed, nothing is measured again. A result under today's names is returned as it is."""
    if "test_acc" not in result or "test_acc_last" in result:
        return result
    out = {k: v for k, v in result.items() if k not in ("best_test_acc", "best_test_loss")}
    out.update(test_loss_last=result.get("test_loss"), test_acc_last=result["test_acc"],
               test_loss=result.get("best_test_loss", result.get("test_loss")),
               test_acc=result.get("best_test_acc", result["test_acc"]))
    return {k: v for k, v in out.items() if v is not None}


def kept_metrics(result: dict[str, Any]) -> dict[str, Any]:
    """The result's figures of the weights that are saved (``METRICS_RULE``), the last epoch's as ``*_last``."""
    result = kept_result(result)
    out = {k: result.get(k) for k in ("test_acc", "test_loss", "val_acc", "best_epoch", "epochs", "test_acc_last",
                                      "test_loss_last")}
    return {k: v for k, v in plain(out).items() if v is not None}


@dataclass(frozen=True)
class ModelContext:
    """What the run knows about the models it saves: the experiment, its config and the spec's numbers."""
    experiment: str = ""
    description: str = ""
    profile: str = ""
    seed: int = 0
    config: dict[str, Any] = field(default_factory=dict)      # flat dotted keys, as --set takes them
    reference: dict[str, Any] = field(default_factory=dict)   # the spec's numbers, keyed as the summary

    @classmethod
    def of(cls, experiment: str, cfg) -> ModelContext:
        """The context of a run of ``experiment`` with config ``cfg`` (an unregistered experiment: no spec; a Run
        made without a config, as tests make one: no config)."""
        found = registry.get_experiment(experiment) if experiment in registry.experiment_names() else None
        return cls(experiment, getattr(found, "description", ""), getattr(cfg, "profile", ""),
                   getattr(cfg, "seed", 0), plain(flatten(cfg.model_dump(mode="json"))) if cfg is not None else {},
                   found.reference_without(found.spec_off(cfg)) if found is not None else {})


class SavedModelIO(FileCheckpoint):
    """The run's ``models/<variant>.pt`` (a ``FileCheckpoint``) that also writes the ``models/<variant>/``
    folder of the same weights whenever the model is saved."""

    def __init__(self, path: Path, folder: Path, context: ModelContext = ModelContext()):
        super().__init__(path)
        self.folder, self.context = Path(folder), context

    def save(self, state: dict[str, Any]) -> None:
        super().save(state)
        if ranks.is_main() and state.get("spec"):   # a model with no spec cannot be rebuilt from a folder
            write_model_folder(self.folder, state, self.context)

    def save_folder(self, fill: Callable[[Path], dict[str, Any]]) -> None:
        """A model saved as a whole folder of its library's files (Lab 2's Hugging Face models), on rank 0 only:
        ``fill(tmp)`` writes them into a temp folder and returns model.json's own part (``kind``, ``model``,
        ``input``, ``metrics``...); the run's part (``ModelContext``), model.json and MODEL.md are added, and the
        temp folder replaces ``models/<variant>/`` only once whole. No ``models/<variant>.pt``: nothing reuses it."""
        if not ranks.is_main():
            return
        with atomic_folder(self.folder) as tmp:
            description = plain({**context_part(self.folder.name, self.context), **fill(tmp)})
            atomic_write_json(tmp / DESCRIPTION, description)
            atomic_write_text(tmp / CARD, model_card(description))


def write_model_folder(folder: Path, state: dict[str, Any], context: ModelContext) -> None:
    """``state`` (``checkpoint.model_state`` with ``result`` and ``input``) as model.safetensors, model.json and
    MODEL.md in ``folder``, each written atomically; model.json last but one, so its weights are there."""
    write_tensors(folder / WEIGHTS, state["state_dict"])
    description = describe(folder.name, state, context)
    atomic_write_json(folder / DESCRIPTION, description)
    atomic_write_text(folder / CARD, model_card(description))


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], fmt: str = "pt") -> None:
    """``tensors`` as the safetensors file ``path`` (metadata ``format``: ``fmt``), written atomically."""
    # clone: safetensors refuses views and tensors that share memory (tied weights); the copies are the tensors' size
    blob = dump_safetensors({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()},
                            metadata={"format": fmt})
    atomic_write(path, lambda f: f.write(blob))


def describe(variant: str, state: dict[str, Any], context: ModelContext) -> dict[str, Any]:
    """model.json's content."""
    return plain({**context_part(variant, context), "model": state["spec"], "weights": WEIGHTS,
                  "input": state.get("input") or {"classes": list(state.get("classes") or [])},
                  "metrics": kept_metrics(state.get("result") or {}), "metrics_rule": METRICS_RULE,
                  **({"evaluation": state["evaluation"]} if state.get("evaluation") else {})})


def context_part(variant: str, context: ModelContext) -> dict[str, Any]:
    """What model.json says of any model, whatever its kind: the format, the variant, the spec's numbers, the
    run and its config."""
    prefix = f"{variant}."
    reference = {k[len(prefix):]: v for k, v in context.reference.items() if k.startswith(prefix)}
    if "acc@0" in reference:   # Lab 4's accuracy under an attack of eps 0: the clean test accuracy
        reference.setdefault("test_acc", reference["acc@0"])
    return {"format": FORMAT, "variant": variant, "reference": reference,
            "run": {"experiment": context.experiment, "description": context.description,
                    "profile": context.profile, "seed": context.seed},
            "config": context.config}


# --- reading a model folder back (untrusted) ---------------------------------------------------------

def find_model_folder(run_dir: Path, variant: str | None = None) -> Path:
    """``run_dir``/models/``variant``/ (``variant`` None: the run's only saved model), after checking that the run
    folder holds only regular files and folders. What is missing is one line saying what to pass instead."""
    run_dir = Path(run_dir)
    untrusted.check_tree(run_dir)
    models = run_dir / "models"
    # (a dot-folder is a save in progress, or one a killed process left: files.atomic_folder)
    available = sorted(p.name for p in models.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if models.is_dir() else []
    if not available:
        raise RunFolderError(f"{run_dir} holds no saved model folder (models/<variant>/){_why_none(run_dir)}")
    if variant is None and len(available) > 1:
        raise ConfigError(f"{run_dir} holds several models ({', '.join(available)}); choose one with --variant "
                          "(variant= in Python)")
    variant = variant or available[0]
    if variant not in available:
        raise ConfigError(f"{run_dir} has no model '{printable(variant)}'; it has {', '.join(available)}")
    return models / variant


def _why_none(run_dir: Path) -> str:
    if any(p.is_dir() and p.name.startswith("seed") for p in run_dir.iterdir()):
        return "; a run of several seeds keeps its models per seed: pass one of its seed<N> folders"
    if any((run_dir / "models").glob("*.pt")):
        return ("; its models/*.pt were saved before dllab wrote model folders: run the experiment again with this "
                "dllab")
    return "; pass the folder of a finished run of lab1.*, lab2.* or lab4.*"


def load_saved_model(folder: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The model saved in ``folder`` (in eval mode, on the CPU) and its model.json, from those two files alone."""
    folder = Path(folder)
    untrusted.check_tree(folder, "model folder")
    description = read_description(folder)
    model = build_saved(folder / DESCRIPTION, description["model"])
    load_weights(folder / WEIGHTS, model, read_weights(folder / WEIGHTS))
    return model.eval(), description


def saved_kind(folder: Path) -> str:
    """What model ``folder`` holds, from its model.json: "image" (also when it names no kind: the first model
    folders), "text", "features"."""
    kind = read_json_description(folder).get("kind", "image")
    if kind not in ("image", "text", "features"):
        raise RunFolderError(f"{Path(folder) / DESCRIPTION}: unknown model kind {printable(kind)!r} (image, text "
                             "or features)")
    return kind


def read_json_description(folder: Path, kind: str | None = None) -> dict[str, Any]:
    """model.json, read as untrusted JSON: an object with dllab's format; with ``kind``, also of that kind and
    with ``model`` and ``input`` objects (what each kind's reader then checks field by field)."""
    path = present(Path(folder) / DESCRIPTION)
    desc = untrusted.read_json(path)
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise RunFolderError(f"{path} is not a dllab model description (no \"format\": \"{FORMAT}\")")
    if kind is not None and (desc.get("kind") != kind or not isinstance(desc.get("model"), dict)
                             or not isinstance(desc.get("input"), dict)):
        raise RunFolderError(f"{path}: not a {kind} model description (\"kind\": \"{kind}\", model, input)")
    return desc


def library_load(folder: Path, what: str, load: Callable[..., Any], *args, **kwargs) -> Any:
    """``load(*args, **kwargs)``: a library (transformers, peft, scikit-learn) reading files of model ``folder``,
    which came from elsewhere; whatever it raises is one ``RunFolderError`` line naming ``what``."""
    try:
        return load(*args, **kwargs)
    except RunFolderError:
        raise
    except Exception as e:   # OSError, ValueError, KeyError, RuntimeError (shapes)...: the library's, not ours
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise RunFolderError(f"{folder}: the {what} cannot be loaded ({type(e).__name__}: {printable(first)})") from e


def present(path: Path, holds: str = "") -> Path:
    """``path`` when it is a file; else one line naming it and what its folder holds (``holds``: an image model
    folder's files by default), so the reader knows to copy the whole folder."""
    if not path.is_file():
        raise RunFolderError(f"{path} is missing; " + (holds or f"a model folder holds {WEIGHTS}, {DESCRIPTION} and "
                                                                 f"{CARD} (copy the whole folder, or run the variant again)"))
    return path


def read_description(folder: Path) -> dict[str, Any]:
    """model.json, checked: the format, the spec's shape, the input spec's class names and image shape."""
    path = folder / DESCRIPTION
    desc = read_json_description(folder)
    check_spec(path, desc.get("model"))
    spec_in = desc.get("input")
    classes = spec_in.get("classes") if isinstance(spec_in, dict) else None
    if not (isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes)):
        raise RunFolderError(f"{path}: input.classes is malformed (expected a list of class names)")
    if desc["model"]["kwargs"].get("num_classes", len(classes)) != len(classes):
        raise RunFolderError(f"{path}: the model has {desc['model']['kwargs']['num_classes']} outputs but "
                             f"input.classes names {len(classes)} classes")
    if not all(type(spec_in.get(k)) is int and 0 < spec_in[k] <= 2**16 for k in ("channels", "height", "width")):
        raise RunFolderError(f"{path}: input.channels/height/width are malformed (expected positive integers)")
    return desc


def build_saved(path: Path, spec: dict[str, Any]) -> torch.nn.Module:
    """The model ``spec`` names, built from the registry only: an import path in a file from elsewhere would make
    dllab import and call code that file chooses."""
    if registry.is_import_path(spec["name"]):
        raise RunFolderError(f"{path}: the model was built by the factory {spec['name']}; dllab rebuilds only "
                             "registered models from a model folder (register it: @register('model', ...))")
    if spec["name"] not in registry.names("model"):
        raise RunFolderError(f"{path}: unknown model '{spec['name']}' (not registered here); install the package "
                             "that registers it")
    try:
        return registry.build_model(spec["name"], **spec["kwargs"])
    except (TypeError, ValueError, RuntimeError, KeyError) as e:
        raise RunFolderError(f"{path}: the model spec cannot be built ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''})") from e


def read_weights(path: Path, what: str = "model weights", holds: str = "") -> dict[str, torch.Tensor]:
    """The safetensors file ``path`` (model.safetensors, or another of a model folder's tensor files: ``what``
    they are; ``holds``: what its folder holds, for ``present``'s message) as named tensors. Only the safetensors
    format is read (a header and raw tensors), so a pickle or anything else put in its place is refused, never
    loaded."""
    data = untrusted.read_bytes(present(path, holds), CHECKPOINT_LIMIT)
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError, OverflowError) as e:
        raise not_safetensors(path, data[:2], what) from e


def not_safetensors(path: Path, head: bytes, what: str = "model weights") -> RunFolderError:
    """The one line for a file ``path`` that should be safetensors and is not (``head``: its first bytes, which
    name a pickle when they are one)."""
    hint = " (it looks like a pickle)" if head[:1] == b"\x80" or head[:2] == b"PK" else ""
    return RunFolderError(f"{path} is not a safetensors file{hint}; dllab reads {what} only as safetensors: restore "
                          "the file written by dllab")
