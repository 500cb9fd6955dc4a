"""FGSM / PGD / adversarial accuracy / FGSM training loss, on linear and tiny trained models."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dllab import DllabError
from dllab.attacks.methods import adversarial_accuracy, fgsm, fgsm_training_loss, make_fgsm_loss, pgd
from dllab.train.inference import logits_of


class Linear2(nn.Module):
    """Identity normalisation, features = flattened pixels, one Linear: the FGSM closed form is known."""
    def __init__(self, weight, bias):
        super().__init__()
        self.normalize = nn.Identity()
        self.classifier = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.classifier.weight.copy_(weight)
            self.classifier.bias.copy_(bias)

    def features(self, x):
        return self.normalize(x).flatten(1)

    def forward(self, x):
        return self.classifier(self.features(x))


class MLP(nn.Module):
    def __init__(self, k=3, hidden=32, bn=False):
        super().__init__()
        self.normalize = nn.Identity()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(48, hidden),
                                  *([nn.BatchNorm1d(hidden)] if bn else []), nn.ReLU())
        self.classifier = nn.Linear(hidden, k)

    def features(self, x):
        return self.body(self.normalize(x))

    def forward(self, x):
        return self.classifier(self.features(x))


def _linear_model(seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(2, 12, generator=g)
    w[1] = w[0] + torch.where(torch.rand(12, generator=g) < 0.5, -1.0, 1.0) * (0.1 + torch.rand(12, generator=g))
    return Linear2(w, torch.tensor([0.1, -0.2]))               # W[1] - W[0] has no zero entry


def _toy_data(n=240, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(k, 3, 4, 4, generator=g)
    y = torch.arange(n) % k
    x = (0.5 + 0.12 * protos[y] + 0.1 * torch.randn(n, 3, 4, 4, generator=g)).clamp(0, 1)
    return x, y


def train_toy_mlp(n: int = 240):
    """The MLP trained (seed 0, Adam, 150 full-batch steps) on ``n`` toy images, in eval mode: (model, x, y)."""
    torch.manual_seed(0)
    x, y = _toy_data(n)
    model = MLP()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


@pytest.fixture(scope="module")
def trained():
    model, x, y = train_toy_mlp()
    assert (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x, y


# ---- FGSM -----------------------------------------------------------------------------------

def test_fgsm_matches_closed_form_for_a_linear_two_class_model():
    # For 2 classes, grad_x CE = p_other * (W[other] - W[y]) with p_other > 0, so
    # x_adv = x + eps * sign(W[1 - y] - W[y]) (no clamping in the interior).
    model = _linear_model()
    x = 0.3 + 0.4 * torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w = model.classifier.weight.detach()
    direction = torch.sign(w[1 - y] - w[y]).view(6, 3, 2, 2)
    eps = 0.05
    torch.testing.assert_close(fgsm(model, x, y, eps), x + eps * direction, rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_eps0_is_identity_and_output_is_clamped():
    model = _linear_model()
    x = torch.rand(6, 3, 2, 2, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([1, 0, 1, 0, 1, 0])
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    w = model.classifier.weight.detach()
    direction = torch.sign(w[1 - y] - w[y]).view(6, 3, 2, 2)
    x_adv = fgsm(model, x, y, 0.6)                          # eps big enough to leave [0, 1] unclamped
    assert x_adv.min() >= 0 and x_adv.max() <= 1
    torch.testing.assert_close(x_adv, (x + 0.6 * direction).clamp(0, 1), rtol=0, atol=0)
    assert ((x + 0.6 * direction) > 1).any() and ((x + 0.6 * direction) < 0).any()
    with pytest.raises(DllabError):
        fgsm(model, x, y, -0.1)


# ---- PGD ------------------------------------------------------------------------------------

def test_pgd_stays_in_the_ball_and_beats_fgsm(trained):
    model, x, y = trained
    eps = 0.06
    x_pgd = pgd(model, x, y, eps, steps=10, generator=torch.Generator().manual_seed(0))
    assert (x_pgd - x).abs().max() <= eps + 1e-6
    assert x_pgd.min() >= 0 and x_pgd.max() <= 1
    x_fgsm = fgsm(model, x, y, eps)
    acc = {name: (model(a).argmax(1) == y).float().mean().item()
           for name, a in [("clean", x), ("fgsm", x_fgsm), ("pgd", x_pgd)]}
    assert acc["fgsm"] < acc["clean"]                      # the attack does something...
    assert acc["pgd"] <= acc["fgsm"]                       # ...and PGD at least as much
    loss = {name: F.cross_entropy(model(a), y).item() for name, a in [("fgsm", x_fgsm), ("pgd", x_pgd)]}
    assert loss["pgd"] > loss["fgsm"]
    assert all(p.grad is None for p in model.parameters())


def test_pgd_is_reproducible_with_a_generator_and_eps0_is_identity(trained):
    model, x, y = trained
    a = pgd(model, x[:10], y[:10], 0.03, steps=3, generator=torch.Generator().manual_seed(5))
    b = pgd(model, x[:10], y[:10], 0.03, steps=3, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    assert torch.equal(pgd(model, x[:10], y[:10], 0.0), x[:10])


# ---- adversarial accuracy -------------------------------------------------------------------

def test_adversarial_accuracy_eps0_is_clean_accuracy_exactly(trained):
    model, x, y = trained
    model = copy.deepcopy(model).train()                   # evaluation must switch to eval itself
    clean = (logits_of(model, x, batch_size=64).argmax(1) == y).sum().item() / len(y)
    acc = adversarial_accuracy(model, x, y, [0.0, 0.06, 0.15], attack="fgsm", batch_size=64)
    assert acc[0.0] == clean
    assert acc[0.15] <= acc[0.06] < acc[0.0]
    assert model.training
    acc_pgd = adversarial_accuracy(model, x, y, [0.0, 0.15], attack="pgd", batch_size=64, steps=5,
                                   generator=torch.Generator().manual_seed(0))
    assert acc_pgd[0.0] == clean and acc_pgd[0.15] <= acc[0.15]
    with pytest.raises(DllabError, match="unknown attack"):
        adversarial_accuracy(model, x, y, [0.1], attack="cw")


# ---- FGSM adversarial training loss ---------------------------------------------------------

def test_fgsm_training_loss_alpha1_is_plain_cross_entropy():
    torch.manual_seed(0)
    model = MLP(bn=True).train()
    x, y = _toy_data(16)
    loss, logits = fgsm_training_loss(model, x, y, eps=0.1, alpha=1.0)
    torch.manual_seed(0)
    ref_model = MLP(bn=True).train()
    ref_logits = ref_model(x)
    assert torch.equal(loss, F.cross_entropy(ref_logits, y)) and torch.equal(logits, ref_logits)


def test_fgsm_training_loss_leaves_no_param_grads_before_backward():
    torch.manual_seed(0)
    model = MLP(bn=True).train()
    x, y = _toy_data(16)
    loss_fn = make_fgsm_loss(eps=0.05, alpha=0.5)
    loss, logits = loss_fn(model, x, y)
    assert logits.shape == (16, 3) and loss.ndim == 0
    assert all(p.grad is None for p in model.parameters())   # the inner attack gradient left nothing
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.training


def test_fgsm_training_loss_value_and_gradient_match_a_manual_computation():
    torch.manual_seed(0)
    model = MLP()                       # no BN, so the extra forwards of the manual version are harmless
    x, y = _toy_data(16)
    eps, alpha = 0.05, 0.3
    loss, _ = fgsm_training_loss(model, x, y, eps, alpha)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]

    ref = copy.deepcopy(model)
    ref.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(ref(xr), y), xr)
    x_adv = (x + eps * g.sign()).clamp(0, 1).detach()        # detached: no gradient through the attack
    expected = alpha * F.cross_entropy(ref(x), y) + (1 - alpha) * F.cross_entropy(ref(x_adv), y)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    for a, b in zip(got, [p.grad for p in ref.parameters()]):
        torch.testing.assert_close(a, b)


def test_make_fgsm_loss_validates():
    with pytest.raises(DllabError):
        make_fgsm_loss(eps=0.1, alpha=1.5)
    with pytest.raises(DllabError):
        make_fgsm_loss(eps=-0.1)


def test_attacks_work_when_called_under_inference_mode():
    # Evaluation code often wraps everything in torch.inference_mode(); the input gradient must still work.
    model = _linear_model()
    with torch.inference_mode():
        x = 0.3 + 0.4 * torch.rand(4, 3, 2, 2)
        y = torch.tensor([0, 1, 0, 1])
        x_adv = fgsm(model, x, y, 0.05)
        x_pgd = pgd(model, x, y, 0.05, steps=2, generator=torch.Generator().manual_seed(0))
    w = model.classifier.weight.detach()
    torch.testing.assert_close(x_adv, x + 0.05 * torch.sign(w[1 - y] - w[y]).view(4, 3, 2, 2))
    assert (x_pgd - x).abs().max() <= 0.05 + 1e-6


# ---- attacks measured over models (analysis.robustness), as Lab 4 runs them -----------------------

def test_attack_models_measures_each_model_as_adversarial_accuracy_does(trained, monkeypatch):
    from conftest import Recorder
    from dllab.attacks import robustness
    from dllab.attacks.settings import AttackConfig
    from dllab.data.images import Split

    model, x, y = trained
    split = Split((x * 255).round().to(torch.uint8), y)
    reporter = Recorder()
    pgd_cfg = AttackConfig(name="pgd", epsilons=[0.0, 0.06], steps=2)
    clean, accs = robustness.attack_models({"model": model}, split, pgd_cfg, seed=4, batch_size=64,
                                           reporter=reporter)
    expect = adversarial_accuracy(model, split.x, y, [0.0, 0.06], attack="pgd", batch_size=64, steps=2,
                                  step_size=None, random_start=True, generator=torch.Generator().manual_seed(4))
    assert accs["model"] == expect and clean["model"] == expect[0.0] > 0.9       # seed and options reach PGD
    assert reporter.logs == [f"[model] pgd accuracy: 0: {expect[0.0]:.4f}, 0.06: {expect[0.06]:.4f}"]
    # Two models: each measured, and a note names the model it is about.
    monkeypatch.setattr(robustness, "rising_accuracy_note", lambda accs, attack: f"{attack} rises")
    fgsm_cfg = AttackConfig(epsilons=[0.0, 0.06])
    torch.manual_seed(1)
    untrained = MLP().eval()
    clean, accs = robustness.attack_models({"std": model, "other": untrained}, split, fgsm_cfg, reporter=reporter)
    assert set(clean) == set(accs) == {"std", "other"} and accs["std"][0.0] == clean["std"]
    assert accs["std"] != accs["other"]
    assert {"std model: fgsm rises", "other model: fgsm rises"} <= set(reporter.notes)
    assert robustness.attack_models({"std": model}, split, fgsm_cfg)[1]["std"] == accs["std"]   # QUIET: no run


def test_attack_table_reuses_the_done_sweep_and_logs_each_sweep_it_measures(trained):
    from conftest import Recorder
    from dllab.attacks.robustness import attack_table
    from dllab.attacks.settings import AttackConfig
    from dllab.data.images import Split

    model, x, y = trained
    split = Split((x * 255).round().to(torch.uint8), y)
    cfg, reporter = AttackConfig(epsilons=[0.0, 0.06], steps=2), Recorder()
    done = {"std": {0.0: -1.0, 0.06: -1.0}}                   # not an accuracy: it must come back as given
    table = attack_table({"std": model}, split, cfg, ["fgsm", "pgd", "fgsm"], done, seed=3, batch_size=64,
                         reporter=reporter)
    expect = adversarial_accuracy(model, split.x, y, [0.0, 0.06], attack="pgd", batch_size=64, steps=2,
                                  step_size=None, random_start=True, generator=torch.Generator().manual_seed(3))
    assert table == {"std": {"fgsm": done["std"], "pgd": expect}}
    # the long part (PGD/APGD with restarts, per model) shows in the log as it goes; the reused sweep is not logged
    assert reporter.logs == [f"[std] pgd accuracy: 0: {expect[0.0]:.4f}, 0.06: {expect[0.06]:.4f}"]


def test_attack_examples_perturb_the_drawn_images_per_epsilon(trained):
    from dllab.attacks.robustness import attack_examples
    from dllab.attacks.settings import AttackConfig
    from dllab.data.images import Split

    model, x, y = trained
    split = Split((x * 255).round().to(torch.uint8), y)
    labels, out = attack_examples(model, split, AttackConfig(epsilons=[0.0, 0.1], examples=3), seed=2)
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(2))[:3]
    assert torch.equal(labels, y[idx]) and list(out) == [0.0, 0.1]
    clean_x, clean_pred = out[0.0]
    assert torch.equal(clean_x, split.x[idx].float() / 255) and torch.equal(clean_pred, model(clean_x).argmax(1))
    assert torch.equal(out[0.1][0], fgsm(model, clean_x, labels, 0.1))
    assert attack_examples(model, split, AttackConfig(examples=0))[1] == {}
