"""Lab 2's run functions and the text wiring they share: the pretrained model, the splits and their
embeddings, recorded in the run (env.json, the report's notes; a resumed run refuses another model or data
source) and cached in its folder. The configs are in ``lab2/config.py``."""
from __future__ import annotations

import torch

from dllab.core import distributed
from dllab.data.text import TextSplit, load_text_splits, text_source
from dllab.experiments.common import FEATURES_FILE, Features, cached_features
from dllab.experiments.lab2.config import (FEATURES_REFERENCE, FINETUNE_REFERENCE, SST2_NOTE, FeaturesConfig,
                                           FinetuneConfig, TextDataConfig)
from dllab.features.classifiers import fit_classifiers
from dllab.features.saved import EmbeddingInfo, save_classifiers
from dllab.features.text import embed_splits, features_key
from dllab.models import hf
from dllab.report.text import classifiers_report, strategies_report
from dllab.runner.run import Run
from dllab.text.finetune import SUMMARY_KEYS, log_amp_choice, precisions, run_strategies, tokenized_by
from dllab.text.saved import TextModelInfo
from dllab.text.strategies import StrategyContext, TrainSettings


# --- text: the pretrained model, the splits, their embeddings ---------------------------------------

def open_text_model(run: Run, name: str, fallback: str = "") -> tuple[str, str]:
    """``hf.open_model`` in this run: env.json records the model (a resumed run refuses another) and the report
    describes it. Returns (name used, folder or hub id)."""
    name, source = hf.open_model(name, fallback, reporter=run)
    run.check_source("model", f"{name} ({source})")
    run.write_env(text_model=name, text_model_source=source)
    run.note(f"model: {hf.describe(name, hf.load_config(source))}")
    return name, source


def load_text_data(run: Run, dcfg: TextDataConfig, seed: int) -> dict[str, TextSplit]:
    """``load_text_splits``, with where they came from (a resumed run refuses another source) and their sizes
    in env.json."""
    splits = load_text_splits(dcfg, seed)
    where = text_source(dcfg)
    run.check_source("data", where)
    run.write_env(data=f"{where}; " + " / ".join(f"{s} {len(v)}" for s, v in splits.items()))
    return splits


def text_features(run: Run, source: str, splits: dict[str, TextSplit], pooling: str, max_length: int,
                  batch_size: int, seed: int, device: torch.device) -> Features:
    """The sentence embeddings of every split (``embed_splits``, a progress bar unless the run is quiet), kept
    in the run's features.npz."""
    feats, reused = cached_features(
        run, features_key(source, splits, pooling, max_length, seed),
        lambda: embed_splits(source, splits, pooling, max_length, batch_size, device, not run.quiet, run), splits)
    if reused:
        run.log(f"features: reusing {FEATURES_FILE}")
    return feats


def data_info(dcfg: TextDataConfig, splits: dict[str, TextSplit]) -> dict:
    """What a saved model's model.json and card say of its data: the dataset, where it came from, the sizes."""
    return {"name": dcfg.name, "source": text_source(dcfg), **{f"{s}_sentences": len(v) for s, v in splits.items()}}


# --- lab2.features --------------------------------------------------------------------------------------

def run_features(cfg: FeaturesConfig, run: Run) -> dict[str, float]:
    # Nothing here trains: under torchrun rank 0 extracts and fits alone, the other ranks wait for its summary.
    return distributed.on_main(_features, cfg, run)


def _features(cfg: FeaturesConfig, run: Run) -> dict[str, float]:
    fc = cfg.features
    name, source = open_text_model(run, cfg.model.name, cfg.model.fallback)
    splits = load_text_data(run, cfg.data, cfg.seed)
    feats = text_features(run, source, splits, fc.pooling, cfg.data.max_length, fc.batch_size, cfg.seed,
                          run.device)
    run.write_env(precision="fp32 (inference only)")
    timings: dict[str, float] = {}
    fitted: dict = {}
    acc = fit_classifiers(*feats["train"], {"validation": feats["validation"], "test": feats["test"]},
                          names=fc.classifiers, k=fc.k, seed=cfg.seed, timings=timings, fitted=fitted)
    for clf, a in acc.items():
        run.log(f"{clf}: val {a['validation']:.4f} test {a['test']:.4f}")
    save_classifiers(run.model_io, fitted, acc,
                     EmbeddingInfo(name, source, fc.pooling, cfg.data.max_length, data_info(cfg.data, splits)), run)
    run.add(*classifiers_report(acc, timings, FEATURES_REFERENCE, name, fc.pooling, fc.k, len(feats["train"][1])))
    return {f"{clf}.{split}_acc": a[long] for clf, a in acc.items()
            for split, long in (("val", "validation"), ("test", "test"))}


# --- lab2.finetune --------------------------------------------------------------------------------------

def run_finetune(cfg: FinetuneConfig, run: Run) -> dict[str, float]:
    ft = cfg.finetune
    if "full_amp" in ft.strategies:
        log_amp_choice(run, ft.amp, run.device)
    name, source = open_text_model(run, cfg.model.name, cfg.model.fallback)
    splits = load_text_data(run, cfg.data, cfg.seed)
    settings = TrainSettings(epochs=ft.epochs, batch_size=ft.batch_size, eval_batch_size=ft.eval_batch_size,
                             weight_decay=ft.weight_decay, warmup=ft.warmup,
                             group_by_length=cfg.data.group_by_length, seed=cfg.seed)
    if "pretrained" in ft.strategies:
        run.note(SST2_NOTE)
    info = TextModelInfo(name, source, cfg.data.max_length, ft.epochs, data_info(cfg.data, splits))
    results = run_strategies(ft.strategies, StrategyContext(source, ft, run.device, cfg.seed),
                             tokenized_by(splits, cfg.data.max_length), settings, run.training_hooks(), info)
    run.write_env(precision=precisions(results))
    if results:
        run.add(*strategies_report(results, FINETUNE_REFERENCE, name,
                                   f"train n={len(splits['train'])}, {ft.epochs} epoch(s), batch {ft.batch_size}, "
                                   f"max_length {cfg.data.max_length}"))
    # test_acc_last: only a strategy that trained has one (and a result kept before dllab recorded it has none)
    return {f"{strategy}.{k}": r[k] for strategy, r in results.items() for k in SUMMARY_KEYS if r.get(k) is not None}
