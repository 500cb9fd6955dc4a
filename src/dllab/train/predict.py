"""A saved image model (``saved_model``) over image files: the class and its probability per image.

Files are decoded a batch at a time (a folder of many images never sits in memory at once) in the model's
colour mode, resized to its input size when they differ, and fed as [0, 1] floats: the model normalises them
itself, as in training.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from PIL import Image

from dllab import DataError
from dllab.data.formats import decode_image
from dllab.data.images import IMAGE_EXTS, to_unit_float
from dllab.train.inference import eval_mode

BATCH_SIZE = 256


def image_files(inputs: Iterable[str | Path]) -> list[Path]:
    """The image files named by ``inputs``: files as given, folders as their image files (by extension, sorted,
    not recursive). A missing input or a folder without images is a one-line DataError."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS and f.is_file())
            if not found:
                raise DataError(f"{p}: no image files ({', '.join(sorted(IMAGE_EXTS))}) in this folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(f"{p}: no such file or folder")
    if not files:
        raise DataError("no images given: name image files or folders of images")
    return files


def read_images(paths: list[Path], channels: int, height: int, width: int) -> torch.Tensor:
    """``paths`` as a uint8 (N, C, H, W) tensor the model takes."""
    out = []
    for p in paths:
        img = decode_image(p, "L" if channels == 1 else "RGB")
        if img.shape[:2] != (height, width):
            img = np.asarray(Image.fromarray(img).resize((width, height), Image.BILINEAR))
        out.append(img[None] if img.ndim == 2 else img.transpose(2, 0, 1))
    return torch.from_numpy(np.stack(out))


# more columns per image of a batch from (model, images, logits): Lab 4's OOD score and decision (ood.saved)
Annotate = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], list[dict[str, Any]]]


def predict_images(model: torch.nn.Module, description: dict[str, Any], inputs: Iterable[str | Path],
                   device: torch.device | str = "cpu", batch_size: int = BATCH_SIZE,
                   annotate: Annotate | None = None) -> list[dict[str, Any]]:
    """One row per image of ``inputs`` (files or folders): ``input``, ``class``, ``index``, ``probability``,
    and what ``annotate`` adds. ``model`` is the one ``load_saved_model`` returned with ``description``, moved
    to ``device`` once."""
    spec = description["input"]
    classes = spec["classes"]
    files = image_files(inputs)
    model.to(device)
    rows = []
    with eval_mode(model):
        for i in range(0, len(files), batch_size):
            batch = files[i:i + batch_size]
            x = to_unit_float(read_images(batch, spec["channels"], spec["height"], spec["width"]), torch.device(device))
            with torch.inference_mode():
                logits = model(x).float()
            p, k = torch.softmax(logits, dim=1).cpu().max(dim=1)
            # outside inference mode: a detector may need the input's gradient (ODIN)
            extra = annotate(model, x, logits) if annotate is not None else [{}] * len(batch)
            rows += [{"input": str(f), "class": classes[j] if j < len(classes) else str(j), "index": j,
                      "probability": float(pj), **more}
                     for f, j, pj, more in zip(batch, k.tolist(), p.tolist(), extra)]
    return rows
