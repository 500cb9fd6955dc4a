"""Early stopping for the one training loop (``train.loop.fit``), as Lightning's ``EarlyStopping`` callback does it.

After each epoch the loop hands the epoch's history row to ``EarlyStopping.update``: the ``monitor`` column
improved if it beat the best value so far by more than ``min_delta`` (up for ``max``, down for ``min``); after
``patience`` epochs in a row without improvement (or a monitor that is no longer a finite number) the fit
stops. Its counters are plain values that travel in the loop's checkpoint (``state_dict``), so a run killed
and resumed stops at the same epoch as an uninterrupted one. Torch-free.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from dllab import DllabError


@dataclass
class EarlyStopping:
    monitor: str = "val_acc"
    mode: str = "max"                 # max | min
    patience: int = 1                 # epochs without improvement before the fit stops (>= 1)
    min_delta: float = 0.0
    key: str = "train.early_stop"     # the config key errors name
    # --- the counters (checkpointed) ---
    best: float | None = None         # the best value of the monitor so far
    best_epoch: int = 0
    wait: int = 0                     # epochs since the last improvement
    stopped_epoch: int = 0            # the epoch after which the fit stopped; 0 = it has not
    reason: str = ""                  # why it stopped, for the log, the report and the result

    @classmethod
    def from_config(cls, cfg: Any, key: str = "train.early_stop") -> EarlyStopping | None:
        """From an ``EarlyStopConfig``; None when it is off (patience 0)."""
        if not cfg.patience:
            return None
        return cls(cfg.monitor, cfg.direction, cfg.patience, cfg.min_delta, key)

    def improves(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, epoch: int, row: dict[str, Any]) -> bool:
        """Take the epoch's history ``row``; True when the monitor improved on it (a new best epoch). Sets
        ``stopped_epoch`` and ``reason`` when the fit should stop after this epoch."""
        value = self._value(row)
        if not math.isfinite(value):
            self._stop(epoch, f"{self.monitor} became {value}")
            return False
        if self.improves(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        if self.wait >= self.patience:
            delta = f" by more than {self.min_delta:g}" if self.min_delta else ""
            self._stop(epoch, f"{self.monitor} did not {'rise' if self.mode == 'max' else 'fall'}{delta} for "
                              f"{self.wait} epoch{'s' if self.wait != 1 else ''} (best {self.best:.4g} at epoch "
                              f"{self.best_epoch})")
        return False

    @property
    def stopped(self) -> bool:
        return self.stopped_epoch > 0

    def _value(self, row: dict[str, Any]) -> float:
        if self.monitor not in row:
            have = [k for k in row if k.startswith(("train_", "val_"))]
            raise DllabError(f"{self.key}.monitor={self.monitor}: variant {row.get('variant', '')} records no "
                             f"{self.monitor} (its history has {', '.join(have) or 'no such column'}); monitor "
                             "one of those")
        return float(row[self.monitor])

    def _stop(self, epoch: int, reason: str) -> None:
        self.stopped_epoch, self.reason = epoch, reason

    # --- checkpointed counters ---
    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items()
                if k in ("best", "best_epoch", "wait", "stopped_epoch", "reason")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state["best"]
        self.best = None if best is None else float(best)
        self.best_epoch, self.wait = int(state["best_epoch"]), int(state["wait"])
        self.stopped_epoch, self.reason = int(state["stopped_epoch"]), str(state["reason"])
