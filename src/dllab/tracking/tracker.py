"""The tracker: a run's numbers and figures, also sent to its sinks, TensorBoard (by default) and MLflow / W&B
(optional extras), one module each (``tensorboard_sink``, ``mlflow_sink``, ``wandb_sink``).

The runner's ``Run`` owns one ``Tracker``, which its records (``store.records``) feed with what they record
(history rows, figures, metrics), so no experiment knows about it; the training loop adds the loss every
``log.every_steps`` steps. Every sink works offline: TensorBoard event files in ``<run>/tb/``, MLflow in a local
sqlite store (``./mlflow.db``, artifacts in ``./mlruns``) unless ``MLFLOW_TRACKING_URI`` says otherwise, W&B
in offline mode (``wandb sync`` uploads later, if ever). A sink's module (and its library) is imported only
when a run writes to it (``registry.get``).

A sink never takes a run down. The runner opens the sinks when the work starts (``start``): one that cannot
start (its library is broken, its store unreachable) is one warning line and left out, or, with
``log.on_sink_error=fail``, the run is refused before any work (a ``DllabError``). A sink that raises later is
switched off with one warning line; the run and its folder go on.

A sink is a class registered as a ``sink`` with the module it needs (``requires=``), built as
``Sink(path, experiment, hparams, quiet=...)``, with ``params(values)`` (optional: hyperparameters known after the
start, the run's dataset and model names), ``epoch(variant, numbers, epoch)``,
``step_loss(variant, loss, step, epoch)``, ``image(tag, file, png)``, ``finish(summary)``, ``flush()`` and
``close(ok)``; a class method ``open_sweep(folder, experiment, hparams, quiet)`` (optional) returns what a
sweep's points need to join the sweep (environment variables) and a function that closes it (``SweepTracker``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from dllab import DllabError
from dllab.core import environ, registry, untrusted
from dllab.core.config import flatten, to_dict

MESSAGE_CHARS = 160   # a library's error message is cut here: the warning stays one short line


def _numbers(row: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("epoch",)}


def flat_config(cfg) -> dict[str, Any]:
    """Every config key (dotted) with a value the sinks accept as a hyperparameter (lists as text)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(to_dict(cfg)).items()}


# What a run records of its own parts (env.json's dataset and model names), shown beside the config's keys in the
# hparams: the config only says data.name=imagefolder, or a factory's import path under model.factory.
LABELS = ("dataset", "model")


def describe(error: BaseException) -> str:
    """``Type: first line of the message``, printable and short: what a warning line says about a failure."""
    first = (str(error).strip().splitlines() or [""])[0]
    text = untrusted.printable(f"{type(error).__name__}: {first}" if first else type(error).__name__)
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


class SinkSet:
    """Named sinks that switch themselves off: a call that raises drops that sink with one warning line."""

    def __init__(self, on_error: str, warn: Callable[[str], None]):
        self.on_error, self.warn = on_error, warn
        self.open: list[tuple[str, Any]] = []

    def start(self, name: str, make: Callable[[], Any]) -> Any | None:
        """``make()``'s sink, kept under ``name``; one that cannot start is a warning (None), or with
        ``on_error=fail`` a ``DllabError`` (the caller has done no work yet)."""
        try:
            sink = make()
        except Exception as e:   # any failure of a third-party library, not only ImportError
            what = f"the {name} sink cannot start ({describe(e)})"
            if self.on_error == "fail":
                raise DllabError(f"{what}; repair it, leave it out of log.sinks, or set log.on_sink_error=warn to "
                                 "run without it") from e
            self.warn(f"{what}; going on without it (log.on_sink_error=fail refuses instead)")
            return None
        self.open.append((name, sink))
        return sink

    def each(self, doing: str, call: Callable[[Any], Any]) -> None:
        """``call(sink)`` for every open sink; one that raises is switched off, the others go on."""
        for name, sink in list(self.open):
            try:
                call(sink)
            except Exception as e:
                self.open.remove((name, sink))
                self.warn(f"the {name} sink failed while {doing} ({describe(e)}); switched off, the run goes on "
                          "without it")
                try:
                    sink.close(False)
                except Exception:   # it is already broken: its close may fail too, and is not worth a line
                    pass


class Tracker:
    """The sinks of one run folder. The runner opens them when the work starts (``start``) and closes them when
    it ends (``close``); a Run used without the runner (benchmarks, tests) opens them on first use and closes
    them with the summary (``finish``)."""

    def __init__(self, path: Path, experiment: str, cfg, quiet: bool = False,
                 log: Callable[..., None] | None = None):
        self.path, self.experiment, self.cfg, self.quiet, self.log = Path(path), experiment, cfg, quiet, log
        config = getattr(cfg, "log", None)
        self.names: list[str] = list(config.sinks) if config is not None else []
        self.every_steps: int = config.every_steps if config is not None else 0
        self.on_error: str = getattr(config, "on_sink_error", "warn")
        self._set: SinkSet | None = None
        self._started = False
        self._epochs: dict[str, int] = {}   # the last epoch each variant recorded: the step loss's epoch is next
        self.labels: dict[str, str] = {}

    def label(self, **env) -> None:
        """Keep the ``LABELS`` among ``env`` (what the run writes to env.json) for the hparams; the data and
        model are known before the first epoch opens the sinks."""
        new = {k: str(v) for k, v in env.items() if k in LABELS and self.labels.get(k) != str(v)}
        self.labels.update(new)
        if new and self._set is not None:   # the sinks are open already (the runner opens them first)
            self._set.each("recording the run's parts", lambda s: s.params(new) if hasattr(s, "params") else None)

    def warn(self, message: str) -> None:
        """One warning line on stderr (even under --quiet) and in the run's log.txt."""
        environ.warn(message)
        if self.log is not None:
            self.log(f"warning: {message}", echo=False)

    def start(self, history: Iterable[dict[str, Any]] = ()) -> None:
        """Open every sink now, before any work; ``history``: the rows a resumed run recorded before."""
        self._started = True
        for row in history:
            self._saw_epoch(str(row.get("variant", "")), row.get("epoch"))
        self._sinks()

    def _sinks(self) -> SinkSet:
        if self._set is None:   # a Run without a config (benchmarks, tests) has no sinks
            self._set = SinkSet(self.on_error, self.warn)
            hparams = {**flat_config(self.cfg), **self.labels} if self.names else {}
            for name in self.names:
                self._set.start(name, lambda n=name: registry.get("sink", n)(self.path, self.experiment, hparams,
                                                                             quiet=self.quiet))
        return self._set

    def _saw_epoch(self, variant: str, epoch: Any) -> None:
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            self._epochs[variant] = max(self._epochs.get(variant, 0), epoch)

    def epoch_rows(self, variant: str, rows: list[dict[str, Any]]) -> None:
        """History rows, each at its epoch (the numbers of history.csv)."""
        for row in rows:
            epoch = int(row.get("epoch", 0))
            self._saw_epoch(variant, epoch)
            numbers = _numbers(row)
            if self.names:
                self._sinks().each("writing an epoch", lambda s: s.epoch(variant, numbers, epoch))
        self.flush()

    def step(self, variant: str, step: int, loss) -> None:
        """The training loss (a tensor) of step ``step``, every ``log.every_steps`` steps: only then is it
        read from the device (``float()`` waits for it)."""
        if self.every_steps and self.names and step % self.every_steps == 0:
            self.step_loss(variant, step, float(loss))

    def step_loss(self, variant: str, step: int, loss: float) -> None:
        """The loss of training step ``step`` (numbered on across epochs), in the epoch being trained."""
        epoch = self._epochs.get(variant, 0) + 1
        if self.names:
            self._sinks().each("writing the step loss", lambda s: s.step_loss(variant, loss, step, epoch))

    def figure(self, file: Path) -> None:
        if self.names:
            png = file.read_bytes()
            self._sinks().each(f"adding {file.name}", lambda s: s.image(file.stem, file, png))
            self.flush()

    def finish(self, summary: dict[str, float]) -> None:
        """The summary numbers; a tracker the runner did not start is closed here (nothing follows)."""
        numbers = _numbers(summary)
        if self.names:
            self._sinks().each("writing the summary", lambda s: s.finish(numbers))
        if not self._started:
            self.close()

    def flush(self) -> None:
        if self._set is not None:
            self._set.each("flushing", lambda s: s.flush())

    def close(self, ok: bool = True) -> None:
        """Close every sink (``ok``: whether the run's work finished); a later use opens them again."""
        if self._set is not None:
            self._set.each("closing", lambda s: s.close(ok))
        self._set, self._started = None, False


class SweepTracker:
    """The sinks' side of a sweep: each sink with an ``open_sweep`` opens what groups the points (an MLflow parent
    run, a W&B group) and says, as environment variables, how each point's `dllab run` joins it."""

    def __init__(self, folder: Path, experiment: str, cfg, quiet: bool = False):
        self.folder, self.experiment, self.cfg, self.quiet = Path(folder), experiment, cfg, quiet
        config = getattr(cfg, "log", None)
        self.names: list[str] = list(config.sinks) if config is not None else []
        self.set = SinkSet(getattr(config, "on_sink_error", "warn"), environ.warn)
        self.env: dict[str, str] = {}

    def start(self) -> dict[str, str]:
        """Open each sink's sweep; returns the environment variables the points get."""
        hparams = flat_config(self.cfg)
        for name in self.names:
            opened = self.set.start(name, lambda n=name: self._open(n, hparams))
            if opened is not None:
                self.env.update(opened.env)
        return dict(self.env)

    def _open(self, name: str, hparams: dict[str, Any]):
        opener = getattr(registry.get("sink", name), "open_sweep", None)
        return opener(self.folder, self.experiment, hparams, self.quiet) if opener else NoSweep()

    def close(self, ok: bool) -> None:
        self.set.each("closing the sweep", lambda s: s.close(ok))

    def __enter__(self) -> dict[str, str]:
        return self.start()

    def __exit__(self, kind, value, traceback) -> None:
        self.close(kind is None)


class NoSweep:
    """What a sink without a sweep of its own (TensorBoard: each point's event files are enough) opens."""
    env: dict[str, str] = {}

    def close(self, ok: bool) -> None:
        pass
