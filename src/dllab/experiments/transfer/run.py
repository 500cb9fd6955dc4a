"""lab1.transfer's run function: the source CNN (reused or trained here), the classical probe on its frozen
features and the fine-tuned variants, wired together; the config is in ``transfer/config.py``."""
from __future__ import annotations

from dllab import DllabError
from dllab.data.images import ImageData
from dllab.experiments.common import (classical_probe, describe_data, get_cnn, load_data, record_model,
                                      spec_data)
from dllab.features.saved import ImageEmbedding, save_image_classifiers
from dllab.experiments.transfer.config import REFERENCE, SPEC_VERDICT, TRAINED_KEYS, TransferConfig
from dllab.report import transfer as report
from dllab.runner.run import Run
from dllab.train.checkpoint import model_state
from dllab.train.reuse import CNNSource, SavedCNN
from dllab.train.saved_model import input_spec
from dllab.train.transfer import check_source_model, check_variants, target_variants
from dllab.train.variants import Variant, build_for, train_variants


def get_source(cfg: TransferConfig, run: Run) -> tuple[SavedCNN, ImageData, ImageData | None]:
    """(the source model, the target data, the source data when the source is trained here)."""
    src = cfg.source
    model = src.factory or "cnn"
    ref = CNNSource("source", src.run, src.variant, "source", src.depth, "source model", "source_model", model=model)
    found = ref.find()  # a wrong source.run (or one built by another model) fails before any data is loaded
    target = load_data(cfg, run)
    record_model(run, model)
    src_data = None if found else load_data(cfg, run, src.data, key="source.data")
    if src_data is not None and src_data.shape[0] != target.shape[0]:
        raise DllabError(f"source images have {src_data.shape[0]} channels, target images {target.shape[0]}")
    arch = {"base_channels": src.base_channels, "depth": src.depth, "residual": src.residual}
    variant = Variant("source", model, arch)
    if model != "cnn":   # a user's model lacking what the variants call fails before the source trains
        check_source_model(found.model if found else build_for(src_data, variant, cfg.seed), model, cfg.variants,
                           cfg.classifiers, cfg.freeze_blocks, target.num_classes)
    source = get_cnn(run, ref, target, lambda: train_variants(cfg, src_data, [variant], run.device,
                                                              run.training_hooks(), src.train, src.optim,
                                                              src.data.augment), found)
    # Where the pixels came from, both datasets (load_data wrote only the last one it loaded).
    run.write_env(data=(f"source: {describe_data(src_data)} | " if src_data else "")
                  + f"target: {describe_data(target)}",
                  data_fallback=bool(target.warnings or (src_data and src_data.warnings)))
    return source, target, src_data


def probe_source(cfg: TransferConfig, run: Run, source: SavedCNN, target: ImageData) -> dict[str, float]:
    """The classical classifiers on the source model's frozen features of the target images: their report table,
    their summary keys, and each one fitted here saved as models/<classifier>/ with the extractor beside it."""
    fitted: dict = {}
    accs, dim, precision = classical_probe(run, source.model, target, run.device, cfg.train.precision,
                                           cfg.train.eval_batch_size, cfg.classifiers, cfg.knn_k, cfg.seed, fitted)
    run.add(*report.classical_table(accs, dim, cfg.knn_k))
    # the extractor takes the target's images; its own outputs are the source's classes
    spec = input_spec(target)
    state = model_state(source.model, source.classes, result=source.result, input={**spec, "classes": source.classes})
    save_image_classifiers(run.model_io, fitted, accs, ImageEmbedding(
        state, f"source model ({source.describe()})", source.origin, precision, cfg.train.eval_batch_size, spec), run)
    return {f"{n}.{split}_acc": a[split] for n, a in accs.items() for split in ("val", "test") if split in a}


def run_transfer(cfg: TransferConfig, run: Run) -> dict[str, float]:
    check_variants(cfg.variants)
    source, target, src_data = get_source(cfg, run)
    tuned = target_variants(cfg.variants, source, cfg.optim, cfg.sgd, cfg.freeze_blocks,  # fails before training
                            target.num_classes)
    spec_setting = cfg.data.name == "cifar100" and not cfg.data.classes
    stand_in = spec_data(cfg, run.experiment)   # one of the experiment's own datasets, not the user's
    run.add(*report.note_classes(source, target, spec_setting, stand_in))
    summary = {f"source.{k}": source.result[k] for k in TRAINED_KEYS if k in source.result}
    if cfg.classifiers:
        summary.update(probe_source(cfg, run, source, target))
    if "head" in cfg.variants and source.name == "cnn":   # a user's model has no spec'd fc layer to speak of
        run.add(*report.note_head(source.model.num_features, target.num_classes))
    results = train_variants(cfg, target, tuned, run.device, run.training_hooks())
    summary.update({f"{name}.{k}": res[k] for name, res in results.items() for k in TRAINED_KEYS if k in res})
    run.add(*report.variants_report(run.history, results, tuned, src_data),
            *report.accuracy_figure(summary, list(cfg.classifiers) + list(cfg.variants),
                                    f"target: {cfg.data.name}, {target.num_classes} classes",
                                    REFERENCE if spec_setting else None),
            *report.closing_notes(results, summary, target, SPEC_VERDICT if stand_in else ""))
    return summary
