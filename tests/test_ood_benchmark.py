"""The near/far OOD benchmark (OpenOOD style): the far-OOD noise sets, the near/far grouping, the summary keys,
the table builder on crafted numbers (group means, best per column, std over seeds), its Markdown/HTML/CSV, and
lab4.ood's smoke profile with ``ood.benchmark=true`` on generated images."""
import csv
import io
import json

import pytest
import torch

from dllab import DllabError
from dllab.core.config import DataConfig
from dllab.data.images import load_images
from dllab.ood.datasets import benchmark_groups, build_ood_set, gaussian_images
from dllab.ood.evaluate import benchmark_keys
from dllab.report import ood_table
from dllab.report.render import Doc, benchmark_table
from dllab.runner.experiment import aggregate, run_experiment

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _metrics(values: dict[str, dict[str, tuple[float, float]]]) -> dict:
    """{set: {detector: (auroc, fpr95)}} as ood_evaluation's metrics."""
    return {s: {d: {"auroc": a, "fpr95": f, "aupr_in": 0.5, "aupr_out": 0.5} for d, (a, f) in per.items()}
            for s, per in values.items()}


CRAFTED = _metrics({"heldout": {"msp": (0.70, 0.80), "energy": (0.74, 0.70)},
                    "mnist": {"msp": (0.90, 0.40), "energy": (0.80, 0.50)},
                    "gaussian": {"msp": (0.60, 0.90), "energy": (1.00, 0.00)}})
GROUPS = {"near": ["heldout"], "far": ["mnist", "gaussian"]}


# --- OOD sets and groups ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def id_data(tmp_path_factory):
    from conftest import make_imagefolder

    root = make_imagefolder(tmp_path_factory.mktemp("img"), classes=CLASSES, n_train=3, n_test=2, size=16)
    return load_images(DataConfig(name="imagefolder", root=str(root), classes=CLASSES[:6]), seed=0, profile="smoke")


def test_gaussian_and_uniform_sets_are_seeded_noise_shaped_like_the_id_images(id_data, tmp_path):
    uni, noise = build_ood_set("uniform", id_data, tmp_path, limit=7), build_ood_set("noise", id_data, tmp_path, limit=7)
    assert uni.name == "uniform" and torch.equal(uni.x, noise.x)         # uniform is noise's images, renamed
    gauss = build_ood_set("gaussian", id_data, tmp_path, limit=7)
    assert gauss.name == "gaussian" and gauss.x.dtype == torch.uint8 and tuple(gauss.x.shape) == (7, 3, 16, 16)
    assert torch.equal(gauss.x, build_ood_set("gaussian", id_data, tmp_path, limit=7).x)   # seeded
    assert len(build_ood_set("gaussian", id_data, tmp_path)) == len(id_data.test)          # 0 = as many as ID test
    big = gaussian_images(200, (3, 16, 16)).float()
    # clipping at 2 std (0 and 255) brings the std from 63.75 to about 61
    assert abs(big.mean().item() - 127.5) < 1.0 and 58 < big.std().item() < 63.75
    with pytest.raises(DllabError, match="at least one image"):
        gaussian_images(0, (3, 4, 4))


def test_near_group_is_cifar100_when_it_is_on_disk_else_heldout(tmp_path):
    assert benchmark_groups([], ["mnist", "gaussian", "mnist"], tmp_path) == {"near": ["heldout"],
                                                                             "far": ["mnist", "gaussian"]}
    (tmp_path / "cifar-100-python").mkdir()                        # torchvision's layout
    assert benchmark_groups([], ["mnist"], tmp_path)["near"] == ["cifar100-20"]
    assert benchmark_groups(["heldout"], ["mnist"], tmp_path)["near"] == ["heldout"]   # named: used as named


# --- summary keys and the table builder --------------------------------------------------------------

def test_benchmark_keys_hold_every_set_and_the_unweighted_group_means():
    keys = benchmark_keys(CRAFTED, GROUPS)
    assert keys["near.heldout.msp.auroc"] == 0.70 and keys["near.msp.fpr95"] == 0.80
    assert keys["far.gaussian.energy.fpr95"] == 0.0
    assert keys["far.msp.auroc"] == pytest.approx(0.75) and keys["far.energy.auroc"] == pytest.approx(0.90)
    assert keys["far.energy.fpr95"] == pytest.approx(0.25)
    assert not any(k.endswith(("aupr_in", "aupr_out")) for k in keys)
    assert len(keys) == 2 * 2 * (1 + 1 + 2 + 1)          # detectors x metrics x (near set, mean, far sets, mean)


def test_best_per_column_is_highest_auroc_and_lowest_fpr95_ties_all_marked():
    summary = {**benchmark_keys(CRAFTED, GROUPS), "model.test_acc": 0.5}
    summary["near.heldout.msp.auroc"] = 0.74                      # tie with energy
    cells = ood_table.benchmark_cells(summary)
    best = {(c.detector, *c.column) for c in ood_table.best_cells(cells)}
    assert ("msp", "near", "heldout", "auroc") in best and ("energy", "near", "heldout", "auroc") in best
    assert ("energy", "near", "heldout", "fpr95") in best and ("msp", "near", "heldout", "fpr95") not in best
    assert ("msp", "far", "mnist", "auroc") in best and ("energy", "far", "mean", "auroc") in best
    assert ("energy", "far", "mean", "fpr95") in best and ("msp", "far", "mean", "fpr95") not in best
    header, rows = ood_table.table_rows(cells)
    assert header == ["detector", "near: heldout AUROC", "near: heldout FPR95", "near mean AUROC", "near mean FPR95",
                      "far: mnist AUROC", "far: mnist FPR95", "far: gaussian AUROC", "far: gaussian FPR95",
                      "far mean AUROC", "far mean FPR95"]
    assert [d for d, _ in rows] == ["msp", "energy"]


def test_nan_is_never_best():
    cells = ood_table.benchmark_cells({"far.mnist.a.auroc": float("nan"), "far.mnist.b.auroc": 0.2})
    assert [c.detector for c in ood_table.best_cells(cells)] == ["b"]


def test_table_shows_mean_and_std_over_seeds_with_the_best_in_bold(tmp_path):
    seeds = [benchmark_keys(CRAFTED, GROUPS),
             benchmark_keys(_metrics({s: {d: (a - 0.02, f) for d, (a, f) in
                                          ((d, (m["auroc"], m["fpr95"])) for d, m in per.items())}
                                      for s, per in CRAFTED.items()}), GROUPS)]
    summary = aggregate(seeds)
    assert summary["near.msp.auroc"] == pytest.approx(0.69) and summary["near.msp.auroc.std"] == pytest.approx(0.01)
    doc = Doc(tmp_path)
    assert benchmark_table(doc, summary)
    md, page = doc.markdown(), doc.to_html("t")
    assert "| near: heldout AUROC |" in md and "near-OOD: heldout; far-OOD: mnist, gaussian" in md
    assert "| msp | 0.6900 ± 0.0100 |" in md and "**0.7300 ± 0.0100**" in md     # energy's near AUROC is best
    assert "<b>0.7300 ± 0.0100</b>" in page
    assert "0.0000 ± 0.0000" in md                                                  # energy's gaussian FPR95
    assert not benchmark_table(Doc(tmp_path), {"model.test_acc": 0.5})              # no benchmark: nothing


def test_names_from_a_run_folder_are_escaped_in_the_table(tmp_path):
    doc = Doc(tmp_path)
    benchmark_table(doc, {"near.x|y.<script>.auroc": 0.5})
    assert "<script>" not in doc.markdown() and "<script>" not in doc.to_html("t")
    assert "x\\|y" in doc.markdown()


def test_csv_holds_every_cell_with_its_std_and_best_flag(tmp_path):
    summary = aggregate([benchmark_keys(CRAFTED, GROUPS)] * 2)
    path = ood_table.write_benchmark_csv(tmp_path, summary)
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert len(rows) == len(benchmark_keys(CRAFTED, GROUPS))
    row = next(r for r in rows if (r["group"], r["set"], r["detector"], r["metric"]) == ("far", "mean", "energy",
                                                                                         "auroc"))
    assert float(row["mean"]) == pytest.approx(0.9) and float(row["std"]) == 0.0 and row["best"] == "1"
    assert ood_table.write_benchmark_csv(tmp_path / "none", {"model.test_acc": 0.5}) is None
    assert not list(tmp_path.glob(".*"))                                            # atomic: no temp file left


# --- lab4.ood end to end ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[str]:
    from conftest import make_imagefolder

    images = make_imagefolder(tmp_path_factory.mktemp("generated"), classes=CLASSES, n_train=15, n_test=8, size=16)
    return ["device=cpu", "data.name=imagefolder", f"data.root={images}"]


@pytest.fixture(scope="module")
def bench_run(generated, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    run = run_experiment("lab4.ood", "smoke", [*generated, "ood.benchmark=true"], out=str(out), quiet=True)
    return run, json.loads((run.path / "metrics.json").read_text())["summary"]


@pytest.mark.slow   # an end-to-end run; the table builder has its unit tests in the fast loop
def test_ood_smoke_with_the_benchmark_writes_the_table_everywhere(bench_run):
    from dllab.core.registry import get_experiment

    run, summary = bench_run
    detectors = run.cfg.ood.detectors
    for group, sets in {"near": ["heldout"], "far": ["mnist", "gaussian", "uniform"]}.items():
        for d in detectors:
            for m in ("auroc", "fpr95"):
                mean = sum(summary[f"{group}.{s}.{d}.{m}"] for s in sets) / len(sets)
                assert summary[f"{group}.{d}.{m}"] == pytest.approx(mean)
    assert summary["near.heldout.msp.auroc"] == summary["heldout.msp.auroc"]   # the same numbers, grouped
    listed = get_experiment("lab4.ood").metrics(run.cfg)
    assert set(summary) == set(listed) - {k for k in listed if ".cifar100-20." in k}
    assert any("near-OOD: heldout (no CIFAR-100" in n for n in run.notes)
    md = (run.path / "report.md").read_text()
    assert ood_table.TITLE in md and "| far: uniform AUROC |" in md and "**" in md
    assert "<b>" in (run.path / "report.html").read_text()
    rows = list(csv.DictReader(io.StringIO((run.path / ood_table.CSV_FILE).read_text())))
    assert {(r["group"], r["set"]) for r in rows} == {("near", "heldout"), ("near", "mean"), ("far", "mnist"),
                                                      ("far", "gaussian"), ("far", "uniform"), ("far", "mean")}


@pytest.mark.slow   # an end-to-end run; the fast loop covers its parts with unit tests
def test_ood_names_keys_keep_their_values_with_the_benchmark_on(bench_run, generated, tmp_path):
    # The same model, reused, without the benchmark; the autoencoder is left out: a run that trains the model
    # first draws the decoder from another RNG state, so its numbers differ for a reason of their own.
    src, with_bench = bench_run
    run = run_experiment("lab4.ood", "smoke", [*generated, f"model.run={src.path}",
                                               "ood.detectors=[msp,max_logit,energy,odin]"],
                         out=str(tmp_path / "plain"), quiet=True)
    plain = json.loads((run.path / "metrics.json").read_text())["summary"]
    assert "heldout.energy.fpr95" in plain and not any(ood_table.is_benchmark_key(k) for k in plain)
    assert not (run.path / ood_table.CSV_FILE).exists()
    assert {k: with_bench[k] for k in plain} == pytest.approx(plain)
    assert ood_table.TITLE not in (run.path / "report.md").read_text()


@pytest.mark.slow
def test_benchmark_over_seeds_reports_mean_and_std(bench_run, generated, tmp_path):
    src, _ = bench_run
    run = run_experiment("lab4.ood", "smoke", [*generated, f"model.run={src.path}", "ood.benchmark=true",
                                               "ood.detectors=[msp,energy]"], seeds=[0, 1], out=str(tmp_path / "r"),
                         quiet=True)
    summary = json.loads((run.path / "metrics.json").read_text())["summary"]
    assert "near.msp.auroc.std" in summary
    rows = list(csv.DictReader(io.StringIO((run.path / ood_table.CSV_FILE).read_text())))
    assert all(r["std"] != "" for r in rows)
    assert " ± " in (run.path / "report.md").read_text().split(ood_table.TITLE)[1].split("###")[0]
