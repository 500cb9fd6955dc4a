"""What the lower layers may tell the top: the whole interface between a run folder and the code below it.

Nothing below the experiments knows about run folders. Functions return values; while they work they may say
something through a ``Reporter`` (a line for the log, or a note for the report), and a training loop calls
``Callback`` hooks and saves its state through a ``CheckpointIO``, as Lightning's loops do. The runner's
``Run`` implements all three for one run folder; tests and notebooks pass nothing (``QUIET``) or their own.
Torch-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence


class Reporter(Protocol):
    def log(self, msg: str) -> None:
        """A progress line: the run's log.txt and the console."""

    def note(self, msg: str) -> None:
        """A line the report shows under "Notes": a fallback, a skipped part, a substitution."""


class _Quiet:
    """A Reporter that drops everything: the default below the experiments."""

    def log(self, msg: str) -> None:
        pass

    def note(self, msg: str) -> None:
        pass


QUIET: Reporter = _Quiet()


class Callback:
    """Hooks a training loop calls; override what you need (every hook is a no-op here)."""

    def on_train_batch_end(self, variant: str, step: int, loss: Any) -> None:
        """After optimiser step ``step`` (counted from 1 over the whole fit); ``loss`` is a device tensor:
        reading it (``.item()``) waits for the device, so do it only when needed."""

    def on_epoch_end(self, variant: str, history: list[dict[str, Any]]) -> None:
        """After each epoch's validation, with every history row of the variant so far."""

    def on_fit_end(self, variant: str, result: dict[str, Any]) -> None:
        """Once the variant is trained and tested."""


class CheckpointIO(Protocol):
    """Where a loop keeps its end-of-epoch training state (Lightning's CheckpointIO plugin)."""

    def exists(self) -> bool: ...

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any]: ...


def _nowhere(name: str) -> None:
    return None


def _compute(name: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
    return compute(), False


def _unrecorded(who: str, precision: Any) -> None:
    pass


@dataclass(frozen=True)
class TrainingHooks:
    """What training code (``train.variants.train_variants``, ``text.finetune.run_strategies``) is handed instead
    of a run: ``Run.training_hooks()`` fills it for one run folder; the defaults keep nothing (tests, notebooks).
    Each field takes the name of the variant (or strategy) it is about."""
    callbacks: Sequence[Callback] = ()
    # name -> where the loop keeps its end-of-epoch training state (None: nowhere, no resume)
    checkpoint: Callable[[str], CheckpointIO | None] = _nowhere
    # name -> where the finished weights go (``models/<name>.pt`` of a run), for later experiments to reuse
    models: Callable[[str], CheckpointIO | None] = _nowhere
    reporter: Reporter = QUIET
    # (name, compute) -> (result, reused): an earlier session's result of ``name``, else compute()'s, kept
    reuse: Callable[[str, Callable[[], Any]], tuple[Any, bool]] = _compute
    # (name, resolved train.precision.Precision): the precision a fit trains in, for env.json and the log
    record_precision: Callable[[str, Any], None] = _unrecorded
    progress: bool = False        # show progress bars (on a terminal)
