"""Per-layer gradient norms: how much signal reaches each layer (vanishing gradients show up here)."""
from __future__ import annotations

import torch
from torch import nn


class GradNormRecorder:
    """Mean L2 norm of each weight gradient over an epoch's batches.

    Norms are summed on the device and read once per epoch: one ``.norm()`` per layer and step, no sync.
    Call :meth:`step` after ``backward()`` (after unscaling, under fp16) and :meth:`epoch_end` per epoch.
    """

    def __init__(self, layers: list[tuple[str, nn.Module]]):
        self.names = [n for n, _ in layers]
        self.weights = [m.weight for _, m in layers]
        self._sum: torch.Tensor | None = None
        self._count = 0

    def step(self) -> None:
        norms = torch.stack([w.grad.detach().float().norm() if w.grad is not None else
                             torch.zeros((), device=w.device) for w in self.weights])
        self._sum = norms if self._sum is None else self._sum + norms
        self._count += 1

    def epoch_end(self) -> list[float]:
        out = (self._sum / max(self._count, 1)).tolist() if self._sum is not None else []
        self._sum, self._count = None, 0
        return out


def block_grad_ratio(names: list[str], norms: list[float], prefix: str = "blocks.") -> float:
    """Mean gradient norm of the first block / that of the last block (``blocks.<i>.*`` layers)."""
    per_block: dict[int, list[float]] = {}
    for n, v in zip(names, norms):
        if n.startswith(prefix):
            per_block.setdefault(int(n[len(prefix):].split(".")[0]), []).append(v)
    if len(per_block) < 2:
        return float("nan")
    first, last = per_block[min(per_block)], per_block[max(per_block)]
    return (sum(first) / len(first)) / max(sum(last) / len(last), 1e-30)
