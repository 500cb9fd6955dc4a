"""Choosing ODIN's (T, eps) as the paper does: score every grid cell, pick the best by AUROC on a seeded
validation part of the ID and OOD images, report it (and MSP beside it) on the rest; ``search_sets`` does
it against each of several OOD sets (the experiment saves each set's arrays, ``search_arrays``).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from dllab import ConfigError
from dllab.core.events import QUIET, Reporter
from dllab.ood.settings import OdinGridConfig
from dllab.ood.msp import msp_scores
from dllab.train.inference import logits_of
from dllab.ood.odin import odin_grid
from dllab.ood.metrics import ood_metrics


def split_mask(n: int, fraction: float, g: torch.Generator) -> torch.Tensor:
    """A seeded boolean mask with round(n * fraction) True entries (the validation part)."""
    if not 0 < fraction < 1:
        raise ConfigError(f"odin.val_fraction={fraction}: must be between 0 and 1")
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=g)[:int(round(n * fraction))]] = True
    if mask.all() or not mask.any():
        raise ConfigError(f"odin.val_fraction={fraction} leaves an empty validation or test part of {n} images")
    return mask


def odin_search(model, id_x, ood_x, id_val: torch.Tensor, ood_val: torch.Tensor, temperatures: Sequence[float],
                epsilons: Sequence[float], batch_size: int = 256, id_cache: dict | None = None) -> dict:
    """ODIN over the (T, eps) grid on ID and OOD images; AUROC and FPR95 of every cell on the validation
    part (``*_val`` masks) and on the rest (test); the best cell by validation AUROC (ties: the first, i.e.
    the lowest T, then the lowest eps) with its test metrics; MSP's test metrics from ``logits_of`` on the
    same batches as the grid, so the (T=1, eps=0) cell equals MSP bit for bit. Pass the same ``id_cache``
    dict for several OOD sets and the ID images are scored once.
    """
    Ts, Es = [float(t) for t in temperatures], [float(e) for e in epsilons]
    if not Ts or not Es:
        raise ConfigError("odin.temperatures and odin.epsilons need at least one value each")
    cache = id_cache if id_cache is not None else {}
    if cache.get("key") != (Ts, Es, batch_size):
        cache.update(key=(Ts, Es, batch_size), grid=odin_grid(model, id_x, Ts, Es, batch_size),
                     msp=msp_scores(logits_of(model, id_x, batch_size)).numpy())
    grid_id, msp_id = cache["grid"], cache["msp"]
    grid_ood = odin_grid(model, ood_x, Ts, Es, batch_size)
    msp_ood = msp_scores(logits_of(model, ood_x, batch_size)).numpy()
    iv, ov = id_val.numpy(), ood_val.numpy()
    shape = (len(Ts), len(Es))
    res: dict = {k: np.zeros(shape) for k in ("val_auroc", "test_auroc", "val_fpr95", "test_fpr95")}
    for i in range(len(Ts)):
        for j in range(len(Es)):
            for part, mi, mo in (("val", iv, ov), ("test", ~iv, ~ov)):
                m = ood_metrics(grid_id[i, j][mi], grid_ood[i, j][mo])
                res[f"{part}_auroc"][i, j], res[f"{part}_fpr95"][i, j] = m["auroc"], m["fpr95"]
    bi, bj = np.unravel_index(int(np.argmax(res["val_auroc"])), shape)
    res.update(best=(int(bi), int(bj)), T=Ts, eps=Es, grid_id=grid_id, grid_ood=grid_ood, msp_id=msp_id,
               msp_ood=msp_ood, best_test=ood_metrics(grid_id[bi, bj][~iv], grid_ood[bi, bj][~ov]),
               msp_test=ood_metrics(msp_id[~iv], msp_ood[~ov]))
    return res


def msp_cell(res: dict) -> dict[str, float] | None:
    """Test AUROC and FPR95 of the grid cell (T=1, eps=0), which is plain MSP, when the grid has it."""
    T, E = res["T"], res["eps"]
    if 1.0 not in T or 0.0 not in E:
        return None
    ij = (T.index(1.0), E.index(0.0))
    return {k: float(res[f"test_{k}"][ij]) for k in ("auroc", "fpr95")}


def search_summary(res: dict, prefix: str = "") -> dict[str, float]:
    """Summary keys (each prefixed ``prefix``): the chosen T and eps, their validation AUROC and test AUROC
    and FPR95, MSP's test AUROC and FPR95 beside them, and the (T=1, eps=0) cell's test AUROC when the grid
    has it (it must equal MSP's exactly)."""
    (bi, bj), p = res["best"], prefix
    out = {f"{p}odin.best_T": res["T"][bi], f"{p}odin.best_eps": res["eps"][bj],
           f"{p}odin.val_auroc": float(res["val_auroc"][bi, bj]),
           f"{p}odin.auroc": res["best_test"]["auroc"], f"{p}odin.fpr95": res["best_test"]["fpr95"],
           f"{p}msp.auroc": res["msp_test"]["auroc"], f"{p}msp.fpr95": res["msp_test"]["fpr95"]}
    if (cell := msp_cell(res)) is not None:
        out[f"{p}odin.grid_auroc@T1_eps0"] = cell["auroc"]
    return out


def search_arrays(res: dict, id_val: torch.Tensor, ood_val: torch.Tensor) -> dict[str, np.ndarray]:
    """The content of odin_grid_<ood>.npz: every image's score per (T, eps) (``scores_id``/``scores_ood``
    [T, eps, N]), the validation masks, MSP's scores and the AUROC/FPR95 grids."""
    return {"temperatures": np.array(res["T"]), "epsilons": np.array(res["eps"]),
            "scores_id": res["grid_id"], "scores_ood": res["grid_ood"], "id_is_val": id_val.numpy(),
            "ood_is_val": ood_val.numpy(), "msp_id": res["msp_id"], "msp_ood": res["msp_ood"],
            **{k: res[k] for k in ("val_auroc", "test_auroc", "val_fpr95", "test_fpr95")}}


def search_sets(model, id_x, ood_sets, grid: OdinGridConfig, batch_size: int = 256, seed: int = 0,
                reporter: Reporter = QUIET
                ) -> tuple[dict[str, float], dict[str, tuple[dict, torch.Tensor, torch.Tensor]]]:
    """``odin_search`` against each of ``ood_sets`` over ``grid``, the validation masks (``grid.val_fraction``)
    drawn with ``seed`` (the ID one first, then one per set, in order); the ID images are scored once. Per
    set: its summary keys (prefixed with its name when there are several), and to ``reporter`` a log line and
    a note if the (T=1, eps=0) cell is not exactly MSP.
    Returns (summary keys, {set name: (search result, ID validation mask, OOD validation mask)})."""
    g = torch.Generator().manual_seed(seed)
    id_val = split_mask(len(id_x), grid.val_fraction, g)
    id_cache: dict = {}
    summary, results = {}, {}
    for s in ood_sets:
        ood_val = split_mask(len(s.x), grid.val_fraction, g)
        r = odin_search(model, id_x, s.x, id_val, ood_val, grid.temperatures, grid.epsilons, batch_size, id_cache)
        summary.update(_record(reporter, r, s.name, f"{s.name}." if len(ood_sets) > 1 else ""))
        results[s.name] = (r, id_val, ood_val)
    return summary, results


def _record(reporter: Reporter, res: dict, ood: str, prefix: str) -> dict[str, float]:
    """``search_summary``'s keys, with the chosen cell logged and a note if the (T=1, eps=0) cell, plain MSP,
    does not reproduce the MSP detector's AUROC exactly."""
    out, cell = search_summary(res, prefix), msp_cell(res)
    if cell is not None and cell["auroc"] != out[f"{prefix}msp.auroc"]:
        reporter.note(f"{ood}: ODIN at T=1, eps=0 ({cell['auroc']}) differs "
                      f"from MSP ({out[f'{prefix}msp.auroc']}); it should equal it exactly")
    (bi, bj), T, E = res["best"], res["T"], res["eps"]
    reporter.log(f"{ood}: best T={T[bi]:g} eps={E[bj]:g} val AUROC {res['val_auroc'][bi, bj]:.4f}, test AUROC "
                 f"{res['best_test']['auroc']:.4f} (MSP {res['msp_test']['auroc']:.4f})")
    return out
