"""Which process of a torchrun job this is (rank, world size), from torchrun's variables (``environ.launch_info``).

Torch-free, apart from ``core.distributed`` (torch.distributed's process group, collectives, DDP): the CLI's
error lines and the run folder ask who they are before torch loads, or in a command that never loads it.
Without torchrun (or with one process) this is rank 0 of 1.
"""
from __future__ import annotations

from dllab.core import environ


def check() -> None:
    """torchrun's variables, when set, are valid and come from torchrun: else one ``DllabError`` line."""
    environ.launch_info(strict=True)


def launched() -> bool:
    """Started by torchrun with more than one process."""
    return environ.launch_info().world_size > 1


def world_size() -> int:
    return environ.launch_info().world_size


def rank() -> int:
    return environ.launch_info().rank


def local_rank() -> int:
    return environ.launch_info().local_rank


def is_main() -> bool:
    return rank() == 0
