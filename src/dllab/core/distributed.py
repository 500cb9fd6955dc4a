"""Data-parallel runs on PyTorch's own engine: torchrun starts the processes, torch.distributed joins them.

``torchrun --nproc-per-node N -m dllab run EXP`` (or ``dllab run --nproc N EXP``, see dllab.runner.launch) starts N
copies of dllab; each reads its rank from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*),
and ``init`` joins them into one process group: NCCL for CUDA tensors, gloo for CPU ones. Without torchrun
(or with one process) nothing here does anything: ``ranks.world_size()`` is 1, ``ranks.is_main()`` is True,
the helpers call straight through, and a run is exactly what it was before.

Who does what:
  - every rank runs the experiment's code; the training loops wrap the model in DDP and each rank takes its
    shard of the epoch's batch order (``shard``);
  - rank 0 alone reads and writes the run folder (``store.folder`` and ``train.checkpoint`` gate on
    ``ranks.is_main``) and alone runs what must not run N times (feature extraction, attacks, OOD scoring): those
    functions go through ``on_main``, which runs them on rank 0 and hands the result to the other ranks, so
    all ranks continue with the same values and take the same path through the code.

torchrun's variables are read in ``environ.launch_info`` (which process this is: ``core.ranks``, torch-free):
they count only in a process torchrun started (it sets ``TORCHELASTIC_RUN_ID``). Leftovers in a plain shell
(``WORLD_SIZE=2 RANK=0 MASTER_ADDR=...``) would make ``init`` wait hours for peers that never come:
``environ.check``, which `dllab run` and `dllab sweep` call first, refuses them in one line; everywhere else
they read as a single process.
"""
from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dllab import ConfigError, DllabError
from dllab.core import ranks

T = TypeVar("T")

# A collective that waits this long means a peer is gone without its connection closing (a hung node): the
# job then ends instead of waiting forever. (A process that dies closes its connections, and torchrun stops
# the job at once.) Long enough for the other ranks to wait out rank 0's solo analysis of a paper profile.
TIMEOUT = timedelta(hours=6)

_inside_on_main = False


def active() -> bool:
    """A process group of more than one process has been joined, and this code runs on every rank (inside
    ``on_main`` rank 0 works alone: its collectives are no-ops)."""
    if not ranks.launched() or _inside_on_main:
        return False
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def init() -> None:
    """Join torchrun's process group (once; a no-op without torchrun). CUDA tensors talk over NCCL and CPU
    tensors over gloo, so a run on --device cpu works on a GPU machine too."""
    if not ranks.launched() or active():
        return
    backend = "gloo"
    if torch.cuda.is_available() and ranks.local_rank() < torch.cuda.device_count():
        torch.cuda.set_device(ranks.local_rank())
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


def part() -> tuple[int, int]:
    """(rank, world size) of the ranks sharing the work here: (0, 1) for a single process, and inside
    ``on_main``."""
    return (ranks.rank(), ranks.world_size()) if active() else (0, 1)


def backend(device) -> str | None:
    """The backend this run's tensors use (None for a single process)."""
    if not active():
        return None
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device):
    """The device of this rank: its own GPU (``cuda:LOCAL_RANK``) when the run is on CUDA."""
    if ranks.launched() and device.type == "cuda":
        if ranks.local_rank() >= torch.cuda.device_count():
            raise DllabError(f"process {ranks.local_rank()} of this machine needs GPU {ranks.local_rank()}, but "
                             f"{torch.cuda.device_count()} are visible; start at most one process per GPU")
        return torch.device("cuda", ranks.local_rank())
    return device


def teardown() -> None:
    if not ranks.launched():
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if active():
        dist.barrier()


def all_reduce_sum(*tensors) -> None:
    """Sum each tensor over the ranks, in place (one call per tensor; they are scalars or small)."""
    if active():
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def broadcast(obj: T) -> T:
    """Rank 0's ``obj`` on every rank. Picklable Python values travel between dllab's own processes only
    (never from a file)."""
    if not active():
        return obj
    box = [obj if ranks.is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class _Failed:
    """An exception raised on rank 0 inside ``on_main``, carried to the other ranks."""

    def __init__(self, error: BaseException):
        self.error = error


def on_main(fn: Callable[..., T], *args, **kwargs) -> T:
    """``fn(*args, **kwargs)`` run on rank 0 only; every rank returns its result (or raises its
    exception, a ``DllabError`` included, so all ranks stop together). Calls nested inside run directly."""
    global _inside_on_main
    if not active() or _inside_on_main:
        return fn(*args, **kwargs)
    result: Any = None
    if ranks.is_main():
        _inside_on_main = True
        try:
            result = fn(*args, **kwargs)
        except Exception as e:
            result = _Failed(e)
        finally:
            _inside_on_main = False
    result = broadcast(result)
    if isinstance(result, _Failed):
        result.error.from_main = True      # the same error is printed once, by rank 0 (cli)
        raise result.error
    return result


def main_only(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: ``fn`` runs through ``on_main`` (rank 0 computes, the others wait and get the result)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return on_main(fn, *args, **kwargs)
    return wrapper


def shard(order, rank: int, world: int, pad: bool = True):
    """This rank's share of ``order`` (a 1-d tensor of indices), as ``DistributedSampler`` takes it: padded
    with its own first indices to a multiple of ``world`` (``pad``; every rank then has as many), then every
    ``world``-th index from ``rank``. Rank r's i-th batch of b/world then holds the r-th, (r+world)-th, ...
    rows of the single-process batch i of b: together the ranks see exactly the batches one process would."""
    if pad and len(order) % world:
        extra = world - len(order) % world
        reps = -(-extra // max(len(order), 1))
        order = torch.cat([order, order.repeat(reps)[:extra]])
    return order[rank::world]


def wrap(model, device, sync_bn: bool = False):
    """``model`` in DistributedDataParallel (the same object back for a single process). ``sync_bn``:
    BatchNorm layers become SyncBatchNorm (statistics over the global batch, not each rank's share)."""
    if not active():
        return model
    if sync_bn and device.type != "cuda":
        raise ConfigError(f"train.sync_bn needs CUDA devices (PyTorch's SyncBatchNorm does not run on "
                          f"{device.type}); leave it off: each rank's BatchNorm then uses its share of the batch")
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index if device.index is not None else ranks.local_rank()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def per_rank_batch(batch_size: int, what: str = "train.batch_size") -> int:
    """The share of a global batch that one rank takes."""
    n = part()[1]
    if batch_size % n:
        raise ConfigError(f"{what}={batch_size} is the global batch and must divide evenly over the {n} "
                          f"processes; choose a multiple of {n}")
    return batch_size // n


def peer_lost(error: BaseException) -> bool:
    """Whether ``error`` is a collective failing because another process of the job is gone (killed, crashed,
    its machine down): gloo reports it as a RuntimeError naming its transport, NCCL as a DistError."""
    if not ranks.launched():
        return False
    text = str(error)
    return isinstance(error, dist.DistError) or (isinstance(error, RuntimeError) and (
        "gloo" in text or "NCCL" in text or "Connection reset by peer" in text or "Connection closed" in text))
