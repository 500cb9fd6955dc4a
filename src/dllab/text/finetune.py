"""A run's fine-tuning strategies, one after the other (what ``lab2.finetune`` wires together).

Each strategy is read back when an earlier session of the run finished it (``hooks.reuse``), skipped with a
report note when it cannot run here (``StrategySkipped``), else trained (from its checkpoint, if any) and its
result returned (``hooks.reuse`` keeps it). The run itself is never seen here: ``dllab.core.events.TrainingHooks``
bring what it keeps.
"""
from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Callable

from dllab.data.text import TextSplit, TokenizedSplit, tokenize
from dllab.core.events import Reporter, TrainingHooks
from dllab.core.progress import mmss
from dllab.models import hf
from dllab.text.saved import TextModelInfo, save_strategy
from dllab.text.strategies import (Outcome, Prepared, StrategyContext, StrategySkipped, TrainSettings, amp_precision,
                                   train_and_evaluate)

SUMMARY_KEYS = ("val_acc", "test_acc", "test_acc_last", "seconds", "trainable_params", "peak_mem_mb")


def log_amp_choice(reporter: Reporter, setting: str, device) -> None:
    """full_amp's precision, said up front: a bad ``finetune.amp`` fails now, not after the first strategies.
    Where mixed precision is not faster it is skipped later, with the reason in the report."""
    try:
        prec = amp_precision(setting, device)
    except StrategySkipped:
        return
    reporter.log(f"full_amp: precision {prec.name} ({prec.reason})")
    if prec.warning:
        reporter.log(f"warning: {prec.warning}")


def tokenized_by(splits: dict[str, TextSplit], max_length: int) -> Callable[[str], dict[str, TokenizedSplit]]:
    """``data(tokenizer_source)``: the splits tokenised by that model's tokenizer, once per tokenizer."""
    done: dict[str, dict[str, TokenizedSplit]] = {}

    def data(source: str) -> dict[str, TokenizedSplit]:
        if source not in done:
            tok = hf.load_tokenizer(source)
            done[source] = {s: tokenize(v, tok, max_length) for s, v in splits.items()}
        return done[source]
    return data


def run_strategies(names: list[str], ctx: StrategyContext, data: Callable[[str], dict], settings: TrainSettings,
                   hooks: TrainingHooks = TrainingHooks(), info: TextModelInfo | None = None) -> dict[str, dict]:
    """{strategy: result} for every strategy of ``names`` that ran (now, or in an earlier session:
    ``hooks.reuse``). Each one that trains saves its kept model to ``hooks.models(strategy)`` (described with
    ``info``; None: not saved)."""
    results: dict[str, dict] = {}
    for name in names:
        result = hooks.reuse(name, partial(_train, name, ctx, data, settings, hooks, info))[0]
        if result is not None:
            results[name] = result
    return results


def precisions(results: dict[str, dict]) -> str:
    """Each strategy's precision, as env.json records it."""
    return "; ".join(f"{s} {r['precision']}" for s, r in results.items())


def _train(name: str, ctx: StrategyContext, data, settings: TrainSettings, hooks: TrainingHooks,
           info: TextModelInfo | None) -> dict | None:
    """One strategy trained and tested (continuing from its checkpoint, if any), its model saved; None when it
    cannot run here."""
    log = hooks.reporter.log
    log(f"{name}: preparing")
    keep = partial(_save, name, hooks, info) if info is not None else None
    try:
        out = train_and_evaluate(name, ctx, data, settings, hooks.callbacks, hooks.checkpoint(name), hooks.reporter,
                                 hooks.progress, keep)
    except StrategySkipped as e:
        hooks.reporter.note(f"strategy {name} skipped: {e}")
        return None
    log(f"{name}: val {out.val_acc:.4f} test {out.test_acc:.4f}, {mmss(out.seconds)}, "
        f"{out.trainable_params:,} trainable, peak {out.peak_mem_mb:.0f} MB, {out.precision}")
    return _result(out)


def _result(out: Outcome) -> dict:
    result = asdict(out)
    result.pop("history")
    return result


def _save(name: str, hooks: TrainingHooks, info: TextModelInfo, p: Prepared, out: Outcome) -> None:
    """The strategy's kept model in models/<name>/ (before its result is kept: a result means a saved model)."""
    if p.train:
        save_strategy(hooks.models(name), name, p, _result(out), info)
    else:
        hooks.reporter.log(f"{name}: no model saved (nothing was trained)")
