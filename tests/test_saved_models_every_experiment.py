"""Issue #23's acceptance, for every experiment: its smoke profile run once (on the CPU, the real ../shared/data as
the other tests read it), each saved ``models/<variant>/`` copied ALONE to a fresh folder, reloaded from it, and the
run's headline numbers recomputed on the same data split (loaded as the run loaded it: its config -> the data
module) must equal metrics.json's summary exactly. Nothing of the run folder is read but the copied model folder,
the config and the reported numbers.

Where each experiment is checked (``test_every_experiment_is_checked`` keeps this table whole):

- lab1.mlp        tests/test_saved_models.py (sgd, adam: ``<variant>.test_acc``)
- lab1.cnn-depth  tests/test_saved_models.py (every depth, slow: ``<variant>.test_acc``)
- lab1.mlp-depth  here (every depth: ``<variant>.test_acc``, with test_saved_models' check)
- lab1.transfer   here (source and every fine-tuned variant: ``<variant>.test_acc`` on its own data; svm and knn on
                  the saved source CNN's features: ``<clf>.val_acc`` and ``.test_acc``)
- lab2.features   tests/test_saved_text_models.py (svm, logreg, knn: ``<clf>.val_acc``/``.test_acc``, sentences
                  embedded again by the model the folder names)
- lab2.finetune   tests/test_saved_text_models.py (full, head_last, full_amp, lora: ``<strategy>.val_acc``/``.test_acc``)
- lab4.ood        here (``model.test_acc``; every ``<set>.<detector>.<metric>`` from the saved ood/ detectors)
- lab4.fgsm       here (``model.test_acc`` and ``fgsm.acc@<eps>`` for every eps, the attack on the reloaded model)
- lab4.odin       here (``model.test_acc``)
- lab4.adv-train  here (standard and adv: ``<m>.test_acc``, ``<m>.acc@<eps>``, ``<m>.<detector>.auroc``/``fpr95``)
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import dllab
from conftest import dllab_in_process, require_shared
from dllab.core.untrusted import read_json
from dllab.data.images import load_images
from dllab.train.saved_model import load_saved_model
from test_saved_models import check_reproduces, score_as_the_run_did

CHECKED_ELSEWHERE = {
    "lab1.mlp": "test_saved_models.py::test_mlp_saved_models_reproduce_the_test_accuracy",
    "lab1.cnn-depth": "test_saved_models.py::test_cnn_depth_saved_models_reproduce_the_test_accuracy",
    "lab2.features": "test_saved_text_models.py::test_each_classifier_reloads_without_pickle_with_the_runs_accuracy",
    "lab2.finetune": "test_saved_text_models.py::"
                     "test_each_trained_strategy_reloads_from_its_folder_alone_with_the_runs_accuracy",
}
CHECKED_HERE = {"lab1.mlp-depth", "lab1.transfer", "lab4.ood", "lab4.fgsm", "lab4.odin", "lab4.adv-train"}
CPU = torch.device("cpu")


def test_every_experiment_is_checked():
    """A new experiment must get its reproduction check (here or named in CHECKED_ELSEWHERE)."""
    assert {e.name for e in dllab.list_experiments()} == CHECKED_HERE | set(CHECKED_ELSEWHERE)
    tests = Path(__file__).parent
    for where in CHECKED_ELSEWHERE.values():
        file, name = where.split("::")
        assert f"def {name}(" in (tests / file).read_text(), where


# --- helpers -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread on a shared 2-core machine; restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def smoke(base: Path, experiment: str, *sets: str) -> Path:
    shared = require_shared()
    out = base / experiment
    args = [a for s in (f"data.root={shared}", *sets) for a in ("--set", s)]
    res = dllab_in_process("run", experiment, "--profile", "smoke", *args, "--device", "cpu", "--out", str(out),
                           "--quiet")
    assert res.returncode == 0, res.stderr
    return out


def config_of(run: Path):
    """The run's config (config.yaml, as ``dllab.load`` reads it) as its experiment's typed config."""
    flat = dllab.load(run).config
    return dllab.config(dllab.load(run).experiment, flat["profile"], {k: v for k, v in flat.items() if k != "profile"})


def summary(run: Path) -> dict:
    return read_json(run / "metrics.json")["summary"]


def alone(run: Path, variant: str, tmp_path: Path) -> Path:
    """models/<variant>/ copied to a folder of its own: no run around it."""
    dst = tmp_path / f"only-{variant}"
    shutil.copytree(run / "models" / variant, dst)
    return dst


# --- lab1.mlp-depth ----------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlp_depth_saved_models_reproduce_the_test_accuracy(tmp_path):
    check_reproduces(smoke(tmp_path, "lab1.mlp-depth"), tmp_path)


# --- lab1.transfer -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transfer_run(tmp_path_factory) -> Path:
    return smoke(tmp_path_factory.mktemp("transfer"), "lab1.transfer", f"source.data.root={require_shared()}")


@pytest.mark.slow
def test_transfer_image_models_reproduce_their_test_accuracy(transfer_run, tmp_path):
    cfg, reported = config_of(transfer_run), summary(transfer_run)
    target = load_images(cfg.data, cfg.seed, cfg.profile)
    source = load_images(cfg.source.data, cfg.seed, cfg.profile)
    variants = ["source", *cfg.variants]
    for v in variants:
        model, spec = load_saved_model(alone(transfer_run, v, tmp_path))
        data = source if v == "source" else target
        assert spec["input"]["classes"] == list(data.classes), v
        assert score_as_the_run_did(model, spec, data.test) == reported[f"{v}.test_acc"], v


@pytest.mark.slow
def test_transfer_classifiers_reproduce_their_accuracies_from_their_folder_alone(transfer_run, tmp_path):
    from dllab.features.saved import embed_images, load_classifier, load_image_embedder

    cfg, reported = config_of(transfer_run), summary(transfer_run)
    target = load_images(cfg.data, cfg.seed, cfg.profile)
    assert cfg.classifiers
    for name in cfg.classifiers:
        folder = alone(transfer_run, name, tmp_path)
        pipe, desc = load_classifier(folder)
        embedder = load_image_embedder(folder)           # the source CNN saved inside the classifier's folder
        assert desc["kind"] == "features" and desc["input"]["classes"] == list(target.classes)
        for short, split in (("val", target.val), ("test", target.test)):
            acc = float((pipe.predict(embed_images(embedder, desc, split.x)) == split.y.numpy()).mean())
            assert acc == reported[f"{name}.{short}_acc"], (name, short)
            assert desc["metrics"][f"{short}_acc"] == reported[f"{name}.{short}_acc"]
        assert "embedding/" in (folder / "MODEL.md").read_text()


@pytest.mark.slow
def test_predict_with_a_transfer_classifier_takes_images(transfer_run, tmp_path):
    from test_saved_models import write_test_pngs

    cfg = config_of(transfer_run)
    target = load_images(cfg.data, cfg.seed, cfg.profile)
    write_test_pngs(target, tmp_path / "pngs", n=5)
    for name in cfg.classifiers:
        rows = dllab.predict(transfer_run, tmp_path / "pngs", variant=name, device="cpu")
        assert len(rows) == 5 and all(r["class"] in target.classes for r in rows)
        assert all((r["probability"] is None) == (name == "svm") for r in rows)
    res = dllab_in_process("predict", transfer_run, "--variant", "knn", tmp_path / "pngs" / "00.png", "--json")
    assert res.returncode == 0, res.stderr


# --- Lab 4 -------------------------------------------------------------------------------------------

def clean_accuracy(folder: Path, cfg) -> float:
    """``model.test_acc`` of Lab 4: the reloaded model's fp32 accuracy on the ID test split, batched as the run."""
    from dllab.attacks.robustness import clean_accuracy as accuracy

    model, _ = load_saved_model(folder)
    return accuracy(model, load_images(cfg.data, cfg.seed, cfg.profile).test, CPU, cfg.analysis_batch_size)


def ood_keys(folder: Path, cfg, prefix: str = "") -> dict[str, float]:
    """Every OOD summary key ``[prefix.][set.]detector.metric`` recomputed from the folder's model and its saved
    ood/ detectors, on the ID test split against the OOD sets built as the run built them."""
    from dllab.data import data_root
    from dllab.ood.datasets import build_ood_sets
    from dllab.ood.evaluate import metric_keys, score_images
    from dllab.ood.metrics import ood_metrics
    from dllab.ood.saved import read_ood_folder

    model, spec = load_saved_model(folder)
    _, saved = read_ood_folder(folder, model, spec["input"])
    detectors = {d: det for d, (det, _) in saved.items()}
    data = load_images(cfg.data, cfg.seed, cfg.profile)
    sets = build_ood_sets(cfg.ood.names, data, data_root(cfg.ood.root or cfg.data.root), cfg.ood.limit,
                          cfg.data.allow_fallback and cfg.profile != "paper")
    ids = score_images(model, data.test.x, detectors, cfg.analysis_batch_size)
    metrics = {}
    for s in sets:
        scores = score_images(model, s.x, detectors, cfg.analysis_batch_size)
        metrics[s.name] = {d: ood_metrics(ids[d], scores[d]) for d in detectors}
    return metric_keys(metrics, prefix)


def attack_keys(folder: Path, cfg, prefix: str) -> dict[str, float]:
    """``<prefix>.acc@<eps>`` for every eps: the run's attack (its settings and seed) on the reloaded model."""
    from dllab.attacks.robustness import attack_sweep

    model, _ = load_saved_model(folder)
    a = cfg.attack
    accs = attack_sweep(model, load_images(cfg.data, cfg.seed, cfg.profile).test, a.name, a.epsilons,
                        cfg.analysis_batch_size, steps=a.steps, step_size=a.step_size, random_start=a.random_start,
                        seed=cfg.seed, restarts=a.restarts)
    return {f"{prefix}.acc@{e:g}": v for e, v in accs.items()}


def assert_reported(recomputed: dict[str, float], reported: dict[str, float], at_least: int = 1) -> None:
    """Each recomputed key the summary reports equals it exactly; at least ``at_least`` of them are there."""
    shared = sorted(set(recomputed) & set(reported))
    assert len(shared) >= at_least, (sorted(recomputed), sorted(reported))
    assert {k: recomputed[k] for k in shared} == {k: reported[k] for k in shared}


@pytest.mark.slow
def test_lab4_ood_model_and_detectors_reproduce_the_headline(tmp_path):
    run = smoke(tmp_path, "lab4.ood")
    cfg, reported = config_of(run), summary(run)
    folder = alone(run, "standard", tmp_path)
    assert clean_accuracy(folder, cfg) == reported["model.test_acc"]
    recomputed = ood_keys(folder, cfg)
    assert_reported(recomputed, reported, at_least=len(cfg.ood.names) * len(cfg.ood.detectors))
    assert "mnist.autoencoder.auroc" in recomputed


@pytest.mark.slow
def test_lab4_fgsm_model_reproduces_the_clean_and_attacked_accuracy(tmp_path):
    run = smoke(tmp_path, "lab4.fgsm")
    cfg, reported = config_of(run), summary(run)
    folder = alone(run, "standard", tmp_path)
    assert clean_accuracy(folder, cfg) == reported["model.test_acc"]
    assert_reported(attack_keys(folder, cfg, cfg.attack.name), reported, at_least=len(cfg.attack.epsilons))
    assert any(e > 0 for e in cfg.attack.epsilons)


@pytest.mark.slow
def test_lab4_odin_model_reproduces_the_clean_accuracy(tmp_path):
    run = smoke(tmp_path, "lab4.odin")
    cfg, reported = config_of(run), summary(run)
    assert clean_accuracy(alone(run, "standard", tmp_path), cfg) == reported["model.test_acc"]


@pytest.mark.slow
def test_lab4_adv_train_models_reproduce_accuracy_attacks_and_ood(tmp_path):
    from dllab.experiments.lab4.config import adv_model_names

    run = smoke(tmp_path, "lab4.adv-train")
    cfg, reported = config_of(run), summary(run)
    names = adv_model_names(cfg)
    assert names[0] == "standard" and len(names) >= 2
    for n in names:
        folder = alone(run, n, tmp_path)
        assert clean_accuracy(folder, cfg) == reported[f"{n}.test_acc"], n
        assert_reported(attack_keys(folder, cfg, n), reported, at_least=len(cfg.attack.epsilons))
        assert_reported(ood_keys(folder, cfg, n), reported, at_least=len(cfg.ood.detectors))
