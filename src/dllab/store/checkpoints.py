"""Where a run keeps trained state, per variant (or any trained part: a decoder, a strategy):

    checkpoints/<name>.pt   the end-of-epoch training state while ``name`` trains (a resume continues it);
                            deleted once its result is saved
    models/<name>.pt        the finished weights (best validation) that later runs and experiments reuse
    models/<name>/          the same weights as a model anyone can use: model.safetensors, model.json, MODEL.md
                            (``train.saved_model``; ``dllab.load_model``, ``dllab predict``)

Both are written with ``train.checkpoint`` (tensors and plain values only, read back with weights_only).
Torch-free: this only knows the paths.
"""
from __future__ import annotations

from pathlib import Path

CHECKPOINTS, MODELS = "checkpoints", "models"


class RunCheckpoints:
    """The checkpoint and model paths of one run folder (``root``)."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def checkpoint(self, name: str) -> Path:
        return self.root / CHECKPOINTS / f"{name}.pt"

    def model(self, name: str) -> Path:
        return self.root / MODELS / f"{name}.pt"

    def model_folder(self, name: str) -> Path:
        return self.root / MODELS / name

    def discard_checkpoint(self, name: str) -> None:
        """``name`` is finished: its training state is no longer needed (its result replaces it)."""
        self.checkpoint(name).unlink(missing_ok=True)
