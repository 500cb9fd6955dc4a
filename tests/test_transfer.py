"""lab1.transfer: feature cache, frozen layers, new heads, source models from other runs, wrong sources.

Everything runs on a generated ImageFolder tree (10 classes of 8x8 colour blobs, conftest.make_imagefolder),
so these tests need no dataset and take seconds.
"""
import json

import pytest
import torch
from conftest import make_imagefolder

from dllab import DllabError
from dllab.core.config import OptimConfig, TrainConfig
from dllab.data.images import ImageData, Split
from dllab.features import image as image_features
from dllab.experiments.transfer import config as transfer
from dllab.experiments.common import FEATURES_FILE, cached_features
from dllab.train.transfer import fine_tune_variant, frozen_prefixes
from dllab.train.variants import build_for, train_model
from dllab.core.registry import build_model
from dllab.runner.experiment import run_experiment
from dllab.runner.run import Run
from dllab.train.checkpoint import load_checkpoint, load_model, save_model


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """<root>/{train,test}/c0..c9: the smoke profile's source is c0-c4, its target c5-c9."""
    return make_imagefolder(tmp_path_factory.mktemp("imgs"), classes=[f"c{k}" for k in range(10)],
                            n_train=24, n_test=6, size=8)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from a second thread, and on a busy 2-core machine OpenMP's spinning
    # workers make every op 5-10x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cnn_depth_runs(image_root, tmp_path_factory):
    """One tiny lab1.cnn-depth smoke run with plain_d2, plain_d5 and res_d5."""
    out = tmp_path_factory.mktemp("cnn") / "run"
    sets = [f"data.root={image_root}", "data.name=imagefolder", "plain_depths=[2,5]", "residual_depths=[5]",
            "data.train_limit=100", "data.test_limit=20"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return run_experiment("lab1.cnn-depth", "smoke", sets=sets, out=str(out), quiet=True, argv=[]).path
    finally:
        torch.set_num_threads(threads)


def data_sets(root) -> list[str]:
    """Smoke profile on the generated tree: source = classes c0-c4, target = c5-c9 (the profile's split)."""
    return [f"data.root={root}", "data.name=imagefolder", f"source.data.root={root}", "source.data.name=imagefolder"]


def run_transfer(root, out, *sets):
    return run_experiment("lab1.transfer", "smoke", sets=data_sets(root) + list(sets), out=str(out), quiet=True,
                          argv=[])


def summary(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())["summary"]


def body_state(path):
    """Everything but the classifier of a saved model, weights and BatchNorm statistics."""
    sd = load_checkpoint(path)["state_dict"]
    return {k: v for k, v in sd.items() if not k.startswith("classifier.")}


# ---- feature cache ----------------------------------------------------------------------------

def test_features_are_extracted_once_and_reused_on_resume(image_root, tmp_path, monkeypatch):
    calls = []
    real = image_features.extract_features

    def counting(model, split, *a, **k):
        calls.append(len(split))
        return real(model, split, *a, **k)

    monkeypatch.setattr(image_features, "extract_features", counting)
    out = tmp_path / "t"
    run_transfer(image_root, out, "variants=[head]")
    assert len(calls) == 3                                  # train, val, test: once each
    cache = out / FEATURES_FILE
    mtime, first = cache.stat().st_mtime_ns, summary(out)
    for key in ("svm.val_acc", "svm.test_acc", "knn.val_acc", "knn.test_acc", "head.val_acc", "head.test_acc"):
        assert key in first

    run_experiment("", resume=str(out), quiet=True, argv=[])
    assert len(calls) == 3, "a resumed run extracted the features again"
    assert cache.stat().st_mtime_ns == mtime
    assert summary(out) == first

    # The cache is keyed on the extractor: another source model's features are not taken from it.
    cfg = transfer.TransferConfig()
    run = Run(out, "lab1.transfer", cfg, quiet=True)
    source, _ = load_model(out / "models" / "source.pt")
    data = ImageData("gen", ["a", "b"], Split(torch.zeros(4, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1, 0, 1])),
                     None, Split(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.tensor([0, 1])), None, "gen")
    splits = image_features.feature_splits(data)

    def cached():
        return cached_features(run, image_features.fingerprint(source, splits, "fp32"),
                               lambda: image_features.extract_splits(source, splits, torch.device("cpu")), splits)
    feats, reused = cached()
    assert not reused and feats["train"][0].shape == (4, 8) and len(calls) == 5
    assert cached()[1] is True and len(calls) == 5


# ---- frozen layers ----------------------------------------------------------------------------

def _toy_data(k=4, n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    x = (torch.rand(n, 3, 8, 8, generator=g) * 128 + y.view(-1, 1, 1, 1) * 30).to(torch.uint8)
    return ImageData("toy", [str(i) for i in range(k)], Split(x, y), None, Split(x[:16], y[:16]), None, "toy")


def _source(depth=3):
    torch.manual_seed(0)
    model = build_model("cnn", num_classes=10, in_channels=3, base_channels=8, depth=depth, residual=True, stats=None)
    model.train()
    with torch.no_grad():                       # non-trivial BatchNorm running statistics, as after training
        for _ in range(3):
            model(torch.rand(32, 3, 8, 8) * 3)
    return model


@pytest.mark.parametrize("variant,frozen,trained", [
    ("head", ("normalize.", "stem.", "blocks."), ("classifier.",)),
    ("partial", ("normalize.", "stem.", "blocks.0.", "blocks.1."), ("blocks.2.", "classifier.")),
])
def test_frozen_parameters_and_batchnorm_statistics_do_not_change(tmp_path, variant, frozen, trained):
    data = _toy_data()
    model = build_for(data, fine_tune_variant(variant, _source(), freeze_blocks=2), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = Run.create("lab1.transfer", transfer.TransferConfig(), out=str(tmp_path / "r"), quiet=True)
    train_model(model, data, variant, torch.device("cpu"), run.training_hooks(), TrainConfig(epochs=2, batch_size=16),
                OptimConfig(name="adam", lr=1e-2))
    after = model.state_dict()
    assert set(after) == set(before)
    for k in after:
        if k.startswith(frozen):
            assert torch.equal(after[k], before[k]), f"{variant}: frozen {k} changed"
    changed = [k for k in after if k.startswith(trained) and not torch.equal(after[k], before[k])]
    assert any(k.endswith("weight") for k in changed), f"{variant}: trainable layers did not train"
    if variant == "partial":   # the unfrozen block's BatchNorm statistics do move (so the check above can fail)
        assert "blocks.2.bn1.running_mean" in changed and "blocks.2.bn1.num_batches_tracked" in changed
    frozen_names = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen_names and all(n.startswith(frozen) for n in frozen_names)
    assert frozen_prefixes(variant, 2) == [p for p in frozen]


def test_partial_refuses_more_frozen_blocks_than_the_source_has():
    with pytest.raises(DllabError, match="freeze_blocks=4"):
        fine_tune_variant("partial", _source(depth=3), freeze_blocks=4)


# ---- the new classifier -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", ["head", "full_adam", "full_sgd", "partial"])
def test_new_classifier_has_the_target_class_count(variant):
    source = _source()
    model = build_for(_toy_data(k=7), fine_tune_variant(variant, source, freeze_blocks=1), seed=0)
    out = model.eval()(torch.rand(5, 3, 8, 8))
    assert out.shape == (5, 7)
    if variant == "head":   # fc (C -> C) + ReLU + classifier (C -> k), as the spec's unused fc layer
        fc, _, cls = model.classifier
        assert (fc.in_features, fc.out_features, cls.out_features) == (8, 8, 7)
    assert model.dllab_spec["kwargs"]["num_classes"] == 7
    assert source.classifier.out_features == 10      # the source itself is left alone


def test_experiment_saves_target_sized_models_and_reports(image_root, tmp_path):
    out = tmp_path / "t"
    run_transfer(image_root, out, "variants=[head,full_adam,scratch]", "classifiers=[svm]")
    s = summary(out)
    assert {"svm.val_acc", "svm.test_acc", "head.val_acc", "full_adam.val_acc", "full_adam.test_acc",
            "scratch.val_acc", "scratch.test_acc", "source.val_acc"} <= set(s)
    assert not any(k.startswith("knn.") for k in s)
    model, blob = load_model(out / "models" / "full_adam.pt")          # rebuilds from its spec
    assert model.classifier.out_features == 5 and blob["classes"] == [f"c{k}" for k in range(5, 10)]
    head_model, _ = load_model(out / "models" / "head.pt")            # fc + ReLU + classifier rebuilds too
    assert head_model.classifier[2].weight.shape == (5, 8)
    # head trained only its head: its body is the source's, bit for bit (BatchNorm statistics included)
    src, head = body_state(out / "models" / "source.pt"), body_state(out / "models" / "head.pt")
    assert src.keys() == head.keys() and all(torch.equal(src[k], head[k]) for k in src)
    report = (out / "report.md").read_text()
    assert "Does pretraining help here?" in report and "0.5548" in report     # spec numbers beside the run's
    assert "not CIFAR-100" in report and "fc + ReLU" in report
    assert (out / "curves.png").exists() and (out / "accuracy.png").exists() and (out / "report.html").exists()

    # The next run reuses this run's source model instead of training one.
    second = tmp_path / "second"
    run_transfer(image_root, second, f"source.run={out}", "variants=[full_adam]", "classifiers=[]")
    assert json.loads((second / "env.json").read_text())["source_model"] == str(out.resolve() / "models" / "source.pt")
    assert not (second / "models" / "source.pt").exists()
    assert set(summary(second)) == {"source.val_acc", "source.test_acc", "source.test_acc_last", "full_adam.val_acc",
                                    "full_adam.test_acc", "full_adam.test_acc_last"}


def test_unknown_variants_are_refused(image_root, tmp_path):
    with pytest.raises(DllabError, match=r"variants=\[head,fine\]: value 2 \(fine\): choose one of head, full_adam"):
        run_transfer(image_root, tmp_path / "bad", "variants=[head,fine]")


# ---- the source model -------------------------------------------------------------------------

def test_source_from_a_cnn_depth_run_is_found_and_loaded(image_root, tmp_path, cnn_depth_runs):
    src_run = cnn_depth_runs
    out = tmp_path / "t"
    run_transfer(image_root, out, f"source.run={src_run}", "variants=[head]", "classifiers=[svm]")
    env = json.loads((out / "env.json").read_text())
    assert env["source_model"] == str((src_run / "models" / "res_d5.pt").resolve())   # res_d5 before plain_d5
    assert not (out / "models" / "source.pt").exists(), "the source was trained again"
    src, head = body_state(src_run / "models" / "res_d5.pt"), body_state(out / "models" / "head.pt")
    assert all(torch.equal(src[k], head[k]) for k in src)
    s = summary(out)
    assert "svm.val_acc" in s and "head.val_acc" in s
    assert s["source.val_acc"] == json.loads((src_run / "results" / "res_d5.json").read_text())["val_acc"]

    out2 = tmp_path / "t2"
    run_transfer(image_root, out2, f"source.run={src_run}", "source.variant=plain_d5", "variants=[]",
                 "classifiers=[]")
    assert json.loads((out2 / "env.json").read_text())["source_model"].endswith("plain_d5.pt")


def _one_line_error(excinfo):
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_a_source_of_the_wrong_depth_is_refused(image_root, tmp_path, cnn_depth_runs):
    with pytest.raises(DllabError) as e:
        run_transfer(image_root, tmp_path / "t", f"source.run={cnn_depth_runs}", "source.variant=plain_d2")
    msg = _one_line_error(e)
    assert "depth=2" in msg and "depth=5" in msg and "plain_d2.pt" in msg


def test_an_mlp_source_is_refused(tmp_path, image_root):
    mlp_run = tmp_path / "mlp_run"
    model = build_model("mlp", num_classes=10, in_channels=3, image_size=8, depth=5, stats=None)
    save_model(mlp_run / "models" / "res_d5.pt", model, [str(i) for i in range(10)])
    with pytest.raises(DllabError) as e:
        run_transfer(image_root, tmp_path / "t", f"source.run={mlp_run}")
    msg = _one_line_error(e)
    assert "name='mlp'" in msg and "name='cnn'" in msg


def test_a_source_variant_without_a_source_run_is_refused(image_root, tmp_path):
    with pytest.raises(DllabError, match="source.variant=res_d5 needs source.run"):
        run_transfer(image_root, tmp_path / "t", "source.variant=res_d5")


def test_pretraining_verdict_says_when_a_gap_is_only_sampling_noise():
    from dllab.report.significance import accuracy_gap, pretraining_verdict

    assert accuracy_gap(0.60, 0.50, 2000)[0] == "Yes"
    assert accuracy_gap(0.50, 0.60, 2000)[0] == "No, it hurts"
    verdict, diff, noise = accuracy_gap(0.55, 0.50, 100)          # 5 points on 100 images: within ±13.8
    assert verdict == "Not measurably" and diff == pytest.approx(0.05) and noise == pytest.approx(0.138, abs=1e-3)
    results = {"full_adam": {"val_acc": 0.5548}, "scratch": {"val_acc": 0.5541}}
    assert "Not measurably: full_adam" in pretraining_verdict(results, 5000)
    assert pretraining_verdict({"full_adam": {"val_acc": 0.6}}, 5000) is None      # no scratch baseline
