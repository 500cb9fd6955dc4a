"""Lab 1's run functions: the data, the variants' training loop and the report sections, wired together.

Thin on purpose: each function loads its data (``experiments.common``), trains its variants
(``train.variants``) and hands the results to ``report.variants``. The configs are in ``lab1/config.py``.
"""
from __future__ import annotations

from dllab.experiments.common import load_data, record_model
from dllab.experiments.lab1.config import TEST_KEYS, CNNDepthConfig, MLPConfig, MLPDepthConfig
from dllab.report.variants import accuracy_table, accuracy_vs_depth, curves_figure, plain_vs_residual
from dllab.runner.run import Run
from dllab.train.gradients import block_grad_ratio
from dllab.train.variants import Variant, train_variants


def run_mlp(cfg: MLPConfig, run: Run) -> dict[str, float]:
    data = load_data(cfg, run)
    record_model(run, cfg.model)
    variants = [Variant(name, cfg.model, {"width": cfg.width}, optim=opt, meta={"optimizer": f"{opt.name} lr {opt.lr:g}"})
                for name, opt in (("sgd", cfg.sgd), ("adam", cfg.adam))]
    results = train_variants(cfg, data, variants, run.device, run.training_hooks())
    run.add(*accuracy_table(results, variants),
            *curves_figure(run.history, ["sgd", "adam"], "curves.png",
                           "Loss and accuracy per epoch, SGD vs Adam (dashed: validation)"))
    return {f"{n}.{k}": results[n][k] for n in ("sgd", "adam") for k in (*TEST_KEYS, "val_acc") if k in results[n]}


def _depth_variants(model: str, plain: list[int], residual: list[int], **kwargs) -> list[Variant]:
    return ([Variant(f"plain_d{d}", model, {"depth": d, "residual": False, **kwargs}, meta={"depth": d, "residual": "no"})
             for d in plain] +
            [Variant(f"res_d{d}", model, {"depth": d, "residual": True, **kwargs}, meta={"depth": d, "residual": "yes"})
             for d in residual])


def run_mlp_depth(cfg: MLPDepthConfig, run: Run) -> dict[str, float]:
    data = load_data(cfg, run)
    record_model(run, "mlp")
    variants = _depth_variants("mlp", cfg.plain_depths, cfg.residual_depths, width=cfg.width)
    results = train_variants(cfg, data, variants, run.device, run.training_hooks())
    summary: dict[str, float] = {}
    for v in variants:
        r = results[v.name]
        summary.update({f"{v.name}.{k}": r[k] for k in TEST_KEYS})
        gn = r.get("grad_norms")
        if gn and gn["per_epoch"]:
            summary[f"{v.name}.grad_ratio"] = block_grad_ratio(gn["layers"], gn["per_epoch"][0])
            v.meta["grad ratio (first/last block, epoch 1)"] = f"{summary[f'{v.name}.grad_ratio']:.3g}"
    run.add(*plain_vs_residual(run.history, results, variants, "MLPs"))
    return summary


def run_cnn_depth(cfg: CNNDepthConfig, run: Run) -> dict[str, float]:
    data = load_data(cfg, run)
    model = cfg.model.factory or "cnn"   # a user's model is built for each variant with the same arguments
    record_model(run, model)
    variants = _depth_variants(model, cfg.plain_depths, cfg.residual_depths, base_channels=cfg.base_channels)
    results = train_variants(cfg, data, variants, run.device, run.training_hooks())
    run.add(*plain_vs_residual(run.history, results, variants, "CNNs"),
            *accuracy_vs_depth(results, sorted(set(cfg.plain_depths) | set(cfg.residual_depths))))
    summary = {f"{v.name}.{k}": results[v.name][k] for k in TEST_KEYS for v in variants}
    summary.update({f"{v.name}.val_acc": results[v.name]["val_acc"] for v in variants if "val_acc" in results[v.name]})
    return summary
