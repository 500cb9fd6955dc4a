"""A model's fitted OOD detectors, saved beside it: ``models/<variant>/ood/`` of a Lab 4 run.

    detectors.safetensors  each detector's ``state_dict()`` (statistics and the autoencoder's decoder weights),
                           as ``<detector>.<name>`` tensors: no pickle, nothing to execute
    ood.json               per detector: its settings (plain JSON), the threshold chosen on ID validation images
                           (``THRESHOLD_RULE``), the metrics it achieved on each OOD set, and what share of the ID
                           test images and of each OOD set it flags at that threshold

A score above the threshold is ``ood``, at or below it ``id``. ``read_ood_folder`` reads the folder back as
untrusted data (the bounded JSON reader, safetensors, detectors built only from the registry, every tensor's
shape checked against the model before it is used); anything damaged is one ``RunFolderError`` line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dllab import ConfigError, DllabError, RunFolderError
from dllab.core import registry, untrusted
from dllab.core.files import atomic_write_json
from dllab.core.untrusted import printable
from dllab.ood.base import Detector
from dllab.ood.evaluate import score_images
from dllab.train.inference import eval_mode
from dllab.train.saved_model import present, read_weights, write_tensors

FORMAT = "dllab-ood/1"
FOLDER, TENSORS, DESCRIPTION = "ood", "detectors.safetensors", "ood.json"
QUANTILE = 0.95
THRESHOLD_RULE = ("the score below which 95% of the ID validation images fall (TPR 95% on ID, the FPR95 "
                  "convention); a larger score is more OOD: above the threshold = ood, at or below = id")
TRAIN_NOTE = ("data.val_fraction was 0 (no validation split): the thresholds are the 95th percentile of the ID "
              "training images' scores, on which the detectors were fitted, so they flag fewer ID images than 5%")
PLAIN = (str, int, float, bool, type(None))
HOLDS = (f"a model's ood/ folder holds {TENSORS} and {DESCRIPTION} (copy the whole model folder, or run the Lab 4 "
         "experiment again)")   # what a missing file's message says the folder should hold


def threshold(scores: torch.Tensor) -> float:
    """The ``QUANTILE`` quantile of ``scores`` (numpy's linear interpolation between order statistics)."""
    return float(np.quantile(scores.double().numpy(), QUANTILE))


def threshold_images(data) -> tuple[str, torch.Tensor]:
    """Which ID images the thresholds come from: ("val", the validation split), or ("train", the training
    images) when the run has no validation split. Never the test split."""
    if data.val is not None and len(data.val.y):
        return "val", data.val.x
    return "train", data.train.x


@dataclass
class Thresholds:
    """Each detector's threshold and the ID split it was chosen on."""
    split: str
    images: int
    values: dict[str, float]


def fit_thresholds(model, detectors: dict[str, Detector], data, batch_size: int = 256) -> Thresholds:
    """The fitted ``detectors``' thresholds on ``data``'s ID validation images (``threshold_images``)."""
    split, x = threshold_images(data)
    scores = score_images(model, x, detectors, batch_size)
    return Thresholds(split, len(x), {d: threshold(scores[d]) for d in detectors})


def default_detector(names) -> str:
    """The detector ``dllab predict`` uses unless told: energy when it was fitted, else the first of ``names``."""
    return "energy" if "energy" in names else next(iter(names))


def describe(variant: str, detectors: dict[str, Detector], thresholds: Thresholds, scores: dict,
             metrics: dict) -> dict[str, Any]:
    """ood.json's content; ``scores`` and ``metrics`` as ``ood_evaluation`` returned them."""
    entries = {}
    for d, det in detectors.items():
        t = thresholds.values[d]
        entries[d] = {"label": det.label, "settings": det.settings(), "threshold": t,
                      "metrics": {ood: per_det[d] for ood, per_det in metrics.items()},
                      "flagged_at_threshold": {("id_test" if g == "id" else g): float((s[d] > t).double().mean())
                                               for g, s in scores.items()}}
    out = {"format": FORMAT, "variant": variant, "default": default_detector(entries),
           "threshold_rule": THRESHOLD_RULE, "threshold_split": thresholds.split,
           "threshold_images": thresholds.images, "detectors": entries}
    if thresholds.split != "val":
        out["threshold_note"] = TRAIN_NOTE
    return out


def write_ood_folder(model_folder: Path, description: dict[str, Any], detectors: dict[str, Detector]) -> Path:
    """``detectors``' states and ``description`` (``describe``) into ``model_folder``/ood/, each file written
    atomically; ood.json last, so a folder with one has its tensors."""
    folder = Path(model_folder) / FOLDER
    states = {f"{d}.{k}": v for d, det in detectors.items() for k, v in det.state_dict().items()}
    write_tensors(folder / TENSORS, states, FORMAT)
    atomic_write_json(folder / DESCRIPTION, description)
    return folder


# --- reading the folder back (untrusted) -----------------------------------------------------------------

@dataclass
class SavedDetector:
    """One saved detector, ready to score: its name, the detector (fitted state loaded) and its threshold."""
    name: str
    detector: Detector
    threshold: float

    def decisions(self, model, x: torch.Tensor, logits: torch.Tensor) -> list[dict[str, Any]]:
        """Per image of the batch ``x`` (whose ``logits`` the caller has): the score and the decision."""
        from dllab.ood.base import LogitDetector   # (the logit detectors reuse the caller's forward pass)

        det = self.detector
        scores = det.score_logits(logits.float().cpu()) if isinstance(det, LogitDetector) else det.score(model, x)
        return [{"detector": self.name, "ood_score": float(s), "threshold": self.threshold,
                 "decision": "ood" if s > self.threshold else "id"} for s in scores.tolist()]


def has_ood_folder(model_folder: Path) -> bool:
    return (Path(model_folder) / FOLDER).exists()


def read_ood_folder(model_folder: Path, model, input_spec: dict[str, Any]) -> tuple[dict[str, Any], dict]:
    """(ood.json, {name: (detector, threshold)}) of ``model_folder``/ood/, for ``model`` (as
    ``load_saved_model`` returned it, with its ``input_spec``). Every detector is built from the registry with
    its saved settings and loaded with its tensors, each checked against the model's shapes first."""
    folder = Path(model_folder) / FOLDER
    untrusted.check_tree(folder, "OOD folder")
    path = folder / DESCRIPTION
    desc = _checked_description(present(path, HOLDS))
    tensors = read_weights(folder / TENSORS, "detector statistics", HOLDS)
    dims = model_dims(model, input_spec)
    states: dict[str, dict[str, torch.Tensor]] = {d: {} for d in desc["detectors"]}
    for key, value in tensors.items():
        name, _, rest = key.partition(".")
        if name not in states or not rest:
            raise RunFolderError(f"{folder / TENSORS}: tensor '{printable(key)}' belongs to no detector in "
                                 f"{DESCRIPTION}")
        states[name][rest] = value
    detectors = {d: (_loaded_detector(folder, d, entry, states[d], dims), entry["threshold"])
                 for d, entry in desc["detectors"].items()}
    return desc, detectors


def _checked_description(path: Path) -> dict[str, Any]:
    """ood.json, checked: the format, and per detector a registered name, plain settings, a finite threshold."""
    desc = untrusted.read_json(path)
    if not isinstance(desc, dict) or desc.get("format") != FORMAT:
        raise RunFolderError(f"{path} is not a dllab OOD description (no \"format\": \"{FORMAT}\")")
    entries = desc.get("detectors")
    if not isinstance(entries, dict) or not entries:
        raise RunFolderError(f"{path}: 'detectors' is malformed (expected a detector name for each entry)")
    known = registry.names("detector")
    for name, entry in entries.items():
        if name not in known:
            raise RunFolderError(f"{path}: unknown detector '{printable(name)}' (not registered here)")
        settings = entry.get("settings") if isinstance(entry, dict) else None
        t = entry.get("threshold") if isinstance(entry, dict) else None
        if not (isinstance(settings, dict) and all(isinstance(v, PLAIN) for v in settings.values())):
            raise RunFolderError(f"{path}: the settings of detector '{name}' are malformed (expected plain values)")
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
            raise RunFolderError(f"{path}: the threshold of detector '{name}' is not a finite number")
    if desc.get("default") not in entries:
        desc["default"] = default_detector(entries)
    return desc


def model_dims(model, input_spec: dict[str, Any]) -> dict[str, int]:
    """The sizes a detector's state must agree with, from one forward pass of a blank image: ``classes``,
    ``channels``, ``height``, ``width``, and where the model has them ``features`` (forward_features) and
    ``maps`` (feature_maps' channels)."""
    c, h, w = (input_spec[k] for k in ("channels", "height", "width"))
    dims = {"channels": c, "height": h, "width": w}
    x = torch.zeros(1, c, h, w)
    with eval_mode(model), torch.inference_mode():
        dims["classes"] = model(x).shape[1]
        if callable(getattr(model, "forward_features", None)):
            dims["features"] = model.forward_features(x).shape[1]
        if callable(getattr(model, "feature_maps", None)):
            dims["maps"] = model.feature_maps(x).shape[1]
    return dims


def _loaded_detector(folder: Path, name: str, entry: dict[str, Any], state: dict[str, torch.Tensor],
                     dims: dict[str, int]) -> Detector:
    """Detector ``name`` built with its saved settings, its ``state`` checked (names, dtypes, shapes) and loaded."""
    cls = registry.get("detector", name)
    where = f"{folder}: detector '{name}'"
    try:
        defaults = cls().settings()
        if set(entry["settings"]) != set(defaults):
            raise DllabError(f"settings {sorted(entry['settings'])}, expected {sorted(defaults)}")
        wrong = [k for k, v in entry["settings"].items()
                 if defaults[k] is not None and _kind(v) != _kind(defaults[k])]
        if wrong:
            raise DllabError(f"setting {wrong[0]} is {entry['settings'][wrong[0]]!r}, not a {_kind(defaults[wrong[0]])}")
        det = cls(**entry["settings"])
        _check_shapes(state, det.state_shapes(dims))
        det.load_state_dict(state)
    except KeyError as e:
        raise RunFolderError(f"{where} needs what the model lacks ({e.args[0]})") from e
    except (DllabError, TypeError, ValueError) as e:
        raise RunFolderError(f"{where}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e
    det.label = entry.get("label") if isinstance(entry.get("label"), str) else name
    return det


def _kind(value: Any) -> str:
    """A setting's kind: ints and floats are both numbers (T = 1 may be saved as 1), a bool is not one."""
    return "number" if isinstance(value, (int, float)) and not isinstance(value, bool) else type(value).__name__


def _check_shapes(state: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Each tensor of ``state`` named in ``shapes`` floating and of that shape (-1: any size)."""
    for k, want in shapes.items():
        if k not in state:
            continue   # (load_state_dict names what is missing)
        have = tuple(state[k].shape)
        if not state[k].is_floating_point():
            raise DllabError(f"tensor {k} is {state[k].dtype}, not floating point")
        if len(have) != len(want) or any(w not in (-1, h) for w, h in zip(want, have)):
            need = [w if w >= 0 else "*" for w in want]
            raise DllabError(f"tensor {k} has shape {list(have)}, the model needs {need}")


def saved_detector(model_folder: Path, model, description: dict[str, Any], name: str | None = None
                   ) -> SavedDetector | None:
    """The detector ``name`` of ``model_folder``/ood/ (None: energy when it was fitted, else the first saved),
    for ``model`` and its model.json ``description``; None when the folder has no ood/ and no ``name`` is asked."""
    if not has_ood_folder(model_folder):
        if name is None:
            return None
        raise ConfigError(f"{model_folder} has no saved OOD detectors (ood/); --detector (detector=) is for the "
                          "models of a Lab 4 run (lab4.ood, lab4.adv-train) that fitted them")
    desc, detectors = read_ood_folder(model_folder, model, description["input"])
    name = desc["default"] if name is None else name
    if name not in detectors:
        raise ConfigError(f"{model_folder} has no saved detector '{printable(name)}'; it has "
                          f"{', '.join(detectors)}")
    return SavedDetector(name, *detectors[name])
