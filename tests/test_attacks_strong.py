"""The stronger attacks and adversarial-training modes of issue #25: PGD with restarts, torchattacks' APGD-CE
(when the extra is installed), fgsm-rs / pgd training, the catastrophic-overfitting sentence, and lab4.adv-train
with several modes end to end."""
import copy

import pytest
import torch
import torch.nn.functional as F

from test_attacks import MLP, _toy_data, train_toy_mlp

from dllab import DllabError
from dllab.attacks.methods import fgsm, make_adv_loss, pgd, training_example
from dllab.attacks.robustness import overfit_epsilons, robustness_sentence


@pytest.fixture(scope="module")
def trained():
    return train_toy_mlp(n=120)


def _loss(model, x, y):
    with torch.no_grad():
        return F.cross_entropy(model(x), y, reduction="none")


def _pgd_before_restarts(model, x, y, eps, steps, step_size, generator):
    """attacks/methods.py's pgd as it was before restarts (random start), copied as the reference."""
    x0 = x.detach()
    lo, hi = (x0 - eps).clamp(min=0), (x0 + eps).clamp(max=1)
    noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype)
    x_adv = torch.min(torch.max(x0 + (2 * noise - 1) * eps, lo), hi)
    for _ in range(steps):
        xr = x_adv.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(xr), y, reduction="sum"), xr)
        x_adv = torch.min(torch.max(x_adv + step_size * g.sign(), lo), hi)
    return x_adv


# ---- PGD with restarts ----------------------------------------------------------------------------

def test_pgd_restarts_1_equals_pgd_before_restarts(trained):
    model, x, y = trained
    got = pgd(model, x, y, 0.1, steps=3, generator=torch.Generator().manual_seed(5))
    ref = _pgd_before_restarts(model, x, y, 0.1, 3, 2.5 * 0.1 / 3, torch.Generator().manual_seed(5))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_pgd_with_restarts_is_at_least_as_strong_per_example(trained):
    model, x, y = trained
    eps = 0.15
    one = pgd(model, x, y, eps, steps=3, generator=torch.Generator().manual_seed(1))
    five = pgd(model, x, y, eps, steps=3, restarts=5, generator=torch.Generator().manual_seed(1))
    assert (five - x).abs().max() <= eps + 1e-6 and five.min() >= 0 and five.max() <= 1
    l1, l5 = _loss(model, one, y), _loss(model, five, y)
    assert (l5 >= l1).all() and (l5 > l1).any()          # the same first start, then better ones kept


def test_pgd_restarts_must_be_positive(trained):
    model, x, y = trained
    with pytest.raises(DllabError, match="restarts >= 1"):
        pgd(model, x, y, 0.1, restarts=0)


# ---- adversarial-training modes -------------------------------------------------------------------

def test_fgsm_rs_example_is_within_eps_and_differs_from_fgsm(trained):
    model, x, y = trained
    eps = 0.05
    torch.manual_seed(0)
    rs = training_example(model, x, y, eps, "fgsm-rs")
    plain = fgsm(model, x, y, eps)
    assert (rs - x).abs().max() <= eps + 1e-6 and rs.min() >= 0 and rs.max() <= 1
    assert not torch.equal(rs, plain)
    # the random start spreads the perturbation over the ball; FGSM's sits on its corners
    assert ((rs - x).abs() < eps - 1e-4).float().mean() > 0.1 > ((plain - x).abs() < eps - 1e-4).float().mean()


def test_pgd_training_step_matches_a_hand_computation():
    torch.manual_seed(0)
    model = MLP()
    x, y = _toy_data(16)
    eps, alpha, steps, step = 0.05, 0.3, 2, 0.03
    ref = copy.deepcopy(model)
    torch.manual_seed(7)
    loss, _ = make_adv_loss(eps, alpha, "pgd", steps, step)(model, x, y)
    loss.backward()

    torch.manual_seed(7)                                   # the same random start, by hand
    x_adv = (x + (2 * torch.rand(x.shape) - 1) * eps).clamp(x - eps, x + eps).clamp(0, 1)
    for _ in range(steps):
        xr = x_adv.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(ref(xr), y), xr)
        x_adv = torch.min(torch.max(x_adv + step * g.sign(), (x - eps).clamp(min=0)), (x + eps).clamp(max=1))
    expected = alpha * F.cross_entropy(ref(x), y) + (1 - alpha) * F.cross_entropy(ref(x_adv.detach()), y)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for a, b in zip([p.grad for p in model.parameters()], [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(a, b)


def test_fgsm_mode_is_todays_fgsm_loss_and_unknown_modes_fail():
    from dllab.attacks.methods import fgsm_training_loss, make_fgsm_loss

    torch.manual_seed(0)
    model, (x, y) = MLP(), _toy_data(16)
    torch.testing.assert_close(make_adv_loss(0.05, 0.5, "fgsm")(model, x, y)[0],
                               fgsm_training_loss(model, x, y, 0.05, 0.5)[0], rtol=0, atol=0)
    assert make_fgsm_loss(0.01).__name__ == "fgsm_loss(eps=0.01, alpha=0.5)"
    with pytest.raises(DllabError, match="fgsm-rs"):
        make_adv_loss(0.05, 0.5, "free")


# ---- the catastrophic-overfitting sentence --------------------------------------------------------

def test_the_sentence_reports_catastrophic_overfitting_when_the_numbers_show_it():
    clean = {"standard": 0.80, "adv": 0.78, "adv_pgd": 0.70}
    accs = {"standard": {"fgsm": {0: 0.80, 0.03: 0.10}, "pgd": {0: 0.80, 0.03: 0.00}},
            "adv": {"fgsm": {0: 0.78, 0.03: 0.65}, "pgd": {0: 0.78, 0.03: 0.02}},      # FGSM high, PGD collapsed
            "adv_pgd": {"fgsm": {0: 0.70, 0.03: 0.45}, "pgd": {0: 0.70, 0.03: 0.38}}}
    assert overfit_epsilons(clean["adv"], accs["adv"]["fgsm"], accs["adv"]["pgd"]) == [0.03]
    assert overfit_epsilons(clean["standard"], accs["standard"]["fgsm"], accs["standard"]["pgd"]) == []
    s = robustness_sentence(clean, accs)
    assert s.startswith("Catastrophic overfitting") and "adv at eps 0.03" in s and "adv_pgd at" not in s
    assert "most robust model is adv_pgd (0.380)" in s and "\n" not in s


def test_the_sentence_says_there_is_none_when_pgd_does_not_collapse():
    clean = {"standard": 0.80, "adv": 0.78}
    accs = {"standard": {"fgsm": {0: 0.80, 0.03: 0.10}, "pgd": {0: 0.80, 0.03: 0.01}},   # FGSM itself is low
            "adv": {"fgsm": {0: 0.78, 0.03: 0.50}, "pgd": {0: 0.78, 0.03: 0.30}}}
    s = robustness_sentence(clean, accs)
    assert s.startswith("No catastrophic overfitting") and "most robust model is adv (0.300)" in s
    assert "cannot be judged" in robustness_sentence(clean, {"adv": {"fgsm": {0.03: 0.5}}})
    tie = {m: {"fgsm": {0.03: 0.2}, "pgd": {0.03: 0.1}} for m in clean}
    assert "standard, adv are equally robust (0.100)" in robustness_sentence(clean, tie)


def test_the_standard_model_is_not_judged_and_the_ranking_skips_epsilons_where_every_model_is_at_zero():
    # the standard model's FGSM accuracy rising at a large eps (one step overshooting) is not catastrophic
    # overfitting, which is a property of FGSM training
    clean = {"standard": 0.60, "adv": 0.58}
    accs = {"standard": {"fgsm": {0.05: 0.08, 0.3: 0.35}, "pgd": {0.05: 0.001, 0.3: 0.0}},
            "adv": {"fgsm": {0.05: 0.14, 0.3: 0.16}, "pgd": {0.05: 0.076, 0.3: 0.0}}}
    assert overfit_epsilons(clean["standard"], accs["standard"]["fgsm"], accs["standard"]["pgd"]) == [0.3]
    s = robustness_sentence(clean, accs)
    assert s.startswith("No catastrophic overfitting")
    assert "Under PGD at eps 0.05 the most robust model is adv (0.076) (from eps 0.3 on every model is at 0)." in s


# ---- APGD (torchattacks, optional) ----------------------------------------------------------------

def test_apgd_runs_and_is_at_least_as_strong_as_fgsm(trained):
    pytest.importorskip("torchattacks")
    from dllab.core import registry

    model, x, y = trained
    eps = 0.15
    state = torch.random.get_rng_state()
    adv = registry.get("attack", "apgd")(model, x, y, eps, steps=10)
    assert torch.equal(torch.random.get_rng_state(), state)       # torchattacks' seeding does not leak
    assert (adv - x).abs().max() <= eps + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    correct = lambda xa: (model(xa).argmax(1) == y).float().mean().item()   # noqa: E731
    assert correct(adv) <= correct(fgsm(model, x, y, eps)) < correct(x)


def test_apgd_absent_is_a_one_line_error_naming_the_extra(trained, monkeypatch):
    import sys

    from dllab.attacks.apgd import apgd

    model, x, y = trained
    monkeypatch.setitem(sys.modules, "torchattacks", None)       # import torchattacks -> ImportError
    with pytest.raises(DllabError, match=r"pip install 'dllab\[attacks\]'"):
        apgd(model, x, y, 0.1)


# ---- lab4.adv-train with several modes, end to end ------------------------------------------------

@pytest.mark.slow   # an end-to-end run; the fast loop covers its parts with unit tests
def test_adv_train_with_three_modes_reports_each_mode_under_each_attack(tmp_path):
    import json

    from conftest import make_imagefolder
    from dllab.runner.experiment import run_experiment

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images = make_imagefolder(tmp_path / "data", classes=classes, n_train=15, n_test=8, size=16)
    n = torch.get_num_threads()
    torch.set_num_threads(1)          # tiny models: a second thread only contends on a shared machine
    try:
        run = run_experiment("lab4.adv-train", "smoke",
                             ["device=cpu", "data.name=imagefolder", f"data.root={images}", "ood.names=[heldout]",
                              "ood.detectors=[msp]", "adv.modes=[fgsm,fgsm-rs,pgd]", "adv.steps=2",
                              "attack.steps=2", "attack.restarts=2"], out=str(tmp_path / "run"), quiet=True)
    finally:
        torch.set_num_threads(n)
    summary = json.loads((run.path / "metrics.json").read_text())["summary"]
    models = ["standard", "adv", "adv_fgsm-rs", "adv_pgd"]
    for m in models:
        assert (m == "standard") or (run.path / "models" / f"{m}.pt").is_file()
        for a in ("fgsm", "pgd"):
            for e in (0.01, 0.05):
                assert 0 <= summary[f"{m}.{a}.acc@{e:g}"] <= summary[f"{m}.test_acc"] + 1e-9
        assert summary[f"{m}.fgsm.acc@0.01"] == summary[f"{m}.acc@0.01"]   # the attack.name sweep, reused
    assert set(summary) == set(registry_metrics(run.cfg))
    md = (run.path / "report.md").read_text()
    assert "Accuracy per adversarial-training mode" in md and "adv_fgsm-rs" in md
    sentence = [s for s in run.notes if "catastrophic overfitting" in s.lower()]
    assert len(sentence) == 1 and sentence[0] in md


def registry_metrics(cfg):
    from dllab.experiments.lab4.config import adv_train_metrics

    return adv_train_metrics(cfg)


def test_an_attack_whose_extra_is_missing_is_refused_with_the_config(tmp_path, capsys, monkeypatch):
    import importlib.util

    from dllab.cli.main import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchattacks" else real(name, *a))
    for key in ("attack.name=apgd", "adv.attacks=[fgsm,apgd]"):
        code = main(["run", "lab4.adv-train", "--profile", "smoke", "--quiet", "--set", key,
                     "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.startswith("dllab: error:") and "\n" not in err
        assert "pip install 'dllab[attacks]'" in err and not (tmp_path / "out").exists()


def test_apgd_through_adversarial_accuracy_with_the_configs_options(trained):
    pytest.importorskip("torchattacks")
    from dllab.attacks.robustness import attack_options
    from dllab.attacks.methods import adversarial_accuracy

    model, x, y = trained
    options = attack_options("apgd", steps=5, restarts=2, seed=3)
    assert options == {"steps": 5, "restarts": 2, "seed": 3}
    accs = adversarial_accuracy(model, x, y, [0.0, 0.15], attack="apgd", **options)
    assert accs[0.15] <= adversarial_accuracy(model, x, y, [0.15], attack="fgsm")[0.15] < accs[0.0]


# ---- the spec's numbers beside Lab 4's ------------------------------------------------------------

def test_the_mode_table_puts_the_spec_fgsm_numbers_beside_the_models_the_spec_trained():
    from dllab.experiments.lab4.config import ADV_REF, FGSM_REF
    from dllab.report.robustness import mode_table

    accs = {n: {"fgsm": {0.0: 0.9, 0.01: 0.5}, "pgd": {0.0: 0.9, 0.01: 0.3}} for n in ("standard", "adv", "adv_pgd")}
    clean = {n: 0.9 for n in accs}
    table, _ = mode_table(clean, accs, "words", {"standard": FGSM_REF, "adv": ADV_REF})
    assert table.header[-1] == "spec (FGSM)"
    spec = {row[0]: row[-1] for row in table.rows}
    assert spec == {"standard": FGSM_REF["acc@0.01"], "adv": ADV_REF["acc@0.01"], "adv_pgd": ""}
    plain, _ = mode_table(clean, accs, "words")      # no spec: no column
    assert "spec (FGSM)" not in plain.header and len(plain.rows[0]) == len(table.rows[0]) - 1


def test_every_lab4_experiment_has_the_spec_clean_accuracy_beside_its_own():
    from dllab.core import registry
    from dllab.report.render import summary_rows

    for name, key, spec in [("lab4.ood", "model.test_acc", 0.8473), ("lab4.fgsm", "model.test_acc", 0.8473),
                            ("lab4.odin", "model.test_acc", 0.8473), ("lab4.adv-train", "standard.test_acc", 0.8473),
                            ("lab4.adv-train", "adv.test_acc", 0.8681)]:
        rows = summary_rows({key: 0.5}, registry.get_experiment(name).reference)
        assert rows[0][:3] == [key, "0.5000", f"{spec:.4f}"], (name, rows[0])


def test_the_spec_adv_numbers_stand_only_beside_a_model_trained_with_the_specs_setting():
    from dllab.core.config import make_config
    from dllab.core.registry import get_experiment
    from dllab.experiments.lab4.config import ADV_REF, FGSM_REF
    from dllab.experiments.lab4.run import _spec_fgsm
    from dllab.report.robustness import comparison_tables

    exp = get_experiment("lab4.adv-train")

    def spec(*sets):
        return _spec_fgsm(make_config(exp.config_cls, exp.profiles, "smoke", list(sets)))

    assert spec() == {"standard": FGSM_REF, "adv": ADV_REF}
    assert spec("adv.epsilon=0.031") == spec("adv.alpha=0") == {"standard": FGSM_REF}
    accs = {"standard": {0.0: 0.9, 0.01: 0.5}, "adv": {0.0: 0.8, 0.01: 0.6}}
    metrics = {n: {"heldout": {"msp": {"auroc": 0.5, "fpr95": 0.9}}} for n in accs}
    header = comparison_tables(accs, metrics, "fgsm", spec("adv.epsilon=0.031"))[0].header
    assert "spec standard" in header and "spec adv" not in header
    assert not any(h.startswith("spec") for h in comparison_tables(accs, metrics, "pgd", {})[0].header)


def test_the_spec_numbers_a_run_does_not_reproduce_are_named_with_the_reason():
    from dllab.core.config import make_config
    from dllab.core.registry import get_experiment
    from dllab.experiments.lab4.config import ADV_REF, FGSM_REF
    from dllab.train.saved_model import ModelContext

    exp = get_experiment("lab4.adv-train")

    def config(*sets):
        return make_config(exp.config_cls, exp.profiles, "smoke", list(sets))

    assert exp.spec_off(config()) == {} and exp.spec_off(config("adv.alpha=0.5", "attack.epsilons=[0,0.3]")) == {}
    eps = exp.spec_off(config("adv.epsilon=0.03"))
    assert set(eps) == {"adv.test_acc", *(f"adv.{k}" for k in ADV_REF)}
    assert "eps 0.03 and alpha 0.5" in eps["adv.acc@0.01"]
    pgd = exp.spec_off(config("attack.name=pgd"))   # <model>.acc@<eps> are then PGD's; eps 0 is clean either way
    assert set(pgd) == {f"{n}.{k}" for n in ("standard", "adv") for k in FGSM_REF if k != "acc@0"}
    assert "under pgd" in pgd["standard.acc@0.01"]
    # the model cards take the same rule: the spec's adv numbers stay off a model trained at another eps
    reference = ModelContext.of("lab4.adv-train", config("adv.epsilon=0.03")).reference
    assert "standard.test_acc" in reference and not any(k.startswith("adv.") for k in reference)
    assert "adv.test_acc" in ModelContext.of("lab4.adv-train", config()).reference
