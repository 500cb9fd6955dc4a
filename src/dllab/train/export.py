"""``dllab export``: a saved model (``models/<variant>/``) as ONNX or TorchScript, checked before it is written.

The export is made in memory, then a batch of real inputs goes through PyTorch and through the exported model
(onnxruntime for ONNX, ``torch.jit.load`` for TorchScript); only when the largest absolute difference of the
logits is within the tolerance (1e-4) is the file written (atomically). A mismatch is one line and leaves
nothing behind.

- Image models (``"kind": "image"``, or no kind: the folders of ``saved_model``): input ``images`` (N, C, H, W)
  floats in [0, 1] (the model normalises them itself), output ``logits``; the batch axis is dynamic. The check
  batch is the run's own test images, read with the run's data settings (model.json's ``config``), or the
  image files the user names when those data are not on this machine.
- Other kinds bring their own ``Subject`` (``text.export`` for Lab 2's text models); which kind a folder holds
  is decided above this layer (``dllab.api.export``), so this module knows nothing of them.

ONNX goes through ``torch.onnx.export(..., dynamo=False)``: the TorchScript-based exporter needs only the
``onnx`` package, where the default (torch.export-based) one also needs onnxscript; both come with
``dllab[export]``, and the check runs what the file holds, whichever exporter wrote it.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pydantic
import torch

from dllab import ConfigError, DataError, DllabError, RunFolderError
from dllab.core import untrusted
from dllab.core.config import DataConfig
from dllab.core.files import atomic_write
from dllab.data.images import DatasetMissing, load_images, to_unit_float
from dllab.train.predict import image_files, read_images
from dllab.train.saved_model import DESCRIPTION, load_saved_model

# The file each format is written to in the model folder unless --out says otherwise.
FORMATS = {"onnx": "model.onnx", "torchscript": "model.ts"}
TOLERANCE = 1e-4
CHECK_INPUTS = 64          # real inputs the check runs (the run's first test images)
EXTRA = "pip install 'dllab[export]'"


class ExportMismatch(DllabError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


@dataclass(frozen=True)
class Subject:
    """What is exported and checked: ``module`` maps ``inputs`` (positional, named ``names``) to logits.
    ``described`` says what the check inputs are (the command prints it); ``expected``, when given, are the
    logits the export must reproduce, computed from the model as loaded when ``module`` is a rewritten form of it
    (a LoRA adapter merged into its base): the check then covers the rewriting too."""
    module: torch.nn.Module
    names: tuple[str, ...]
    dynamic_axes: dict[str, dict[int, str]]
    inputs: tuple[torch.Tensor, ...]
    described: str = ""
    expected: np.ndarray | None = None


@dataclass(frozen=True)
class Exported:
    """The file written and how it was checked: ``max_abs_diff`` of the logits on ``checked`` real inputs."""
    path: Path
    format: str
    max_abs_diff: float
    checked: int
    tolerance: float
    inputs: str = ""   # what the check ran on (Subject.described)

    def __str__(self) -> str:
        on = f"on {self.checked} inputs" + (f" ({self.inputs})" if self.inputs else "")
        return f"{self.path}: max abs difference {self.max_abs_diff:.3g} (<= {self.tolerance:g}) against PyTorch {on}"


def export_model(folder: Path, fmt: str, subject_of: Callable[[], Subject], out: Path | None = None,
                 force: bool = False, tolerance: float = TOLERANCE) -> Exported:
    """Export the model saved in ``folder`` (``subject_of()`` loads it and its check inputs: ``image_subject``,
    or another kind's) as ``fmt`` (onnx | torchscript) to ``out`` (default: the folder's model.onnx / model.ts;
    an existing file is replaced only with ``force``), checked on real inputs first."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{untrusted.printable(fmt)}'; choose {' or '.join(FORMATS)}")
    folder = Path(folder)
    target = Path(out) if out is not None else folder / FORMATS[fmt]
    if target.exists() and not force:
        raise ConfigError(f"{target} already exists; pass --force (force=True) to replace it, or --out another file")
    runtime = onnxruntime() if fmt == "onnx" else None   # before any work: a missing extra is said first
    subject = subject_of()
    blob = (to_onnx if fmt == "onnx" else to_torchscript)(subject)
    diff = max_difference(subject, run_exported(fmt, blob, subject, runtime))
    if not diff <= tolerance:   # (NaN too)
        raise ExportMismatch(f"the exported {fmt} model's outputs differ from PyTorch's by {diff:.3g} (more than "
                             f"{tolerance:g}) on {len(subject.inputs[0])} inputs; nothing was written")
    atomic_write(target, lambda f: f.write(blob))
    return Exported(target, fmt, diff, len(subject.inputs[0]), tolerance, subject.described)


def onnxruntime():
    """The onnxruntime module, or one line naming the extra that installs it."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise DllabError(f"ONNX export needs onnxruntime (to check the exported model), which is not installed: "
                         f"{EXTRA}") from e
    return ort


# --- image models ----------------------------------------------------------------------------------------

def image_subject(folder: Path, inputs: Sequence[str | Path] | None) -> Subject:
    model, desc = load_saved_model(folder)
    spec = desc["input"]
    if inputs:
        files = image_files(inputs)[:CHECK_INPUTS]
        x = to_unit_float(read_images(files, spec["channels"], spec["height"], spec["width"]))
        described = "the given images"
    else:
        x = to_unit_float(test_images(folder / DESCRIPTION, desc))
        described = "the run's test images"
    return Subject(model, ("images",), {"images": {0: "batch"}, "logits": {0: "batch"}}, (x,), described)


def test_images(path: Path, desc: dict[str, Any]) -> torch.Tensor:
    """The first ``CHECK_INPUTS`` test images of the run that saved the model, read as the run read them
    (model.json's data settings). Data that are not on this machine: one line asking for ``--inputs``."""
    config = desc.get("config") if isinstance(desc.get("config"), dict) else {}
    settings = {k[5:]: v for k, v in config.items() if k.startswith("data.") and k[5:] in DataConfig.model_fields}
    ask = "give images to check the export with --inputs FILES/FOLDER (inputs= in Python)"
    if "name" not in settings:
        raise DataError(f"{path} does not name the data the model was trained on; {ask}")
    try:
        data_cfg = DataConfig(**settings)
    except (pydantic.ValidationError, DllabError) as e:
        raise RunFolderError(f"{path}: the data settings in \"config\" are malformed; {ask}") from e
    try:
        data = load_images(data_cfg, 0, str(config.get("profile", "quick")))
    except DatasetMissing as e:
        raise DataError(f"the run's test images ({data_cfg.name}) are not on this machine; {ask}") from e
    spec = desc["input"]
    if data.shape != (spec["channels"], spec["height"], spec["width"]):
        raise DataError(f"the run's data ({data_cfg.name}) here have images of {data.shape}, the model takes "
                        f"{(spec['channels'], spec['height'], spec['width'])}; {ask}")
    return data.test.x[:CHECK_INPUTS]


# --- exporting and running the export --------------------------------------------------------------------

def _example(subject: Subject) -> tuple[torch.Tensor, ...]:
    """Two rows of the check batch: the export is traced on a batch of another size than it is checked on,
    so the check also shows that the batch axis is dynamic."""
    return tuple(t[:2] for t in subject.inputs)


def to_onnx(subject: Subject) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():   # its deprecation notice (see the docstring), tracer notes: the check counts
        warnings.simplefilter("ignore")
        torch.onnx.export(subject.module, _example(subject), buffer, dynamo=False, input_names=list(subject.names),
                          output_names=["logits"], dynamic_axes=subject.dynamic_axes)
    return buffer.getvalue()


def to_torchscript(subject: Subject) -> bytes:
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")   # tracer warnings about Python values: the check below is what counts
        traced = torch.jit.trace(subject.module, _example(subject), check_trace=False, strict=False)
        torch.jit.save(traced, buffer)   # (torch 2.10+ calls TorchScript deprecated; the issue asks for it)
    return buffer.getvalue()


def run_exported(fmt: str, blob: bytes, subject: Subject, runtime=None) -> np.ndarray:
    """The exported model's logits for the check batch, run from the bytes that will be written."""
    if fmt == "onnx":
        session = runtime.InferenceSession(blob, providers=["CPUExecutionProvider"])
        feed = {name: t.numpy() for name, t in zip(subject.names, subject.inputs)}
        return session.run(["logits"], feed)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)   # TorchScript's deprecation notice
        loaded = torch.jit.load(io.BytesIO(blob), map_location="cpu")
    with torch.inference_mode():
        return loaded(*subject.inputs).numpy()


def max_difference(subject: Subject, exported: np.ndarray) -> float:
    """The largest absolute difference between PyTorch's logits (``subject.expected``, else its module's) and
    ``exported`` (inf when the shapes differ)."""
    expected = subject.expected
    if expected is None:
        with torch.inference_mode():
            expected = subject.module(*subject.inputs).float().numpy()
    if np.shape(exported) != expected.shape:
        return float("inf")
    return float(np.max(np.abs(np.asarray(exported, dtype=np.float64) - expected)))

