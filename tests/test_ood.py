"""OOD detectors, ODIN, the autoencoder detector and the metrics, on tiny hand-made inputs."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from dllab import DllabError
from dllab.core import registry
from dllab.ood.base import LogitDetector
from dllab.train.inference import logits_of
from dllab.ood.autoencoder import Autoencoder, reconstruct, reconstruction_scores, train_autoencoder
from dllab.ood.energy import Energy, energy_scores
from dllab.ood.max_logit import MaxLogit, max_logit_scores
from dllab.ood.metrics import fpr_at_tpr, ood_metrics, roc_pr_curves
from dllab.ood.msp import MSP, msp_scores
from dllab.ood.odin import ODIN, odin_grid, odin_scores
from dllab.models.decoder import conv_decoder


# ---- tiny stand-ins following the foundation's model contract --------------------------------

class Normalize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class TinyMLP(nn.Module):
    """Images (N, 3, 4, 4) in [0, 1] -> K logits; smooth (tanh) so first-order steps behave."""
    def __init__(self, k=3, hidden=16, bn=False):
        super().__init__()
        self.normalize = Normalize([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
        layers = [nn.Flatten(), nn.Linear(48, hidden)] + ([nn.BatchNorm1d(hidden)] if bn else []) + [nn.Tanh()]
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(hidden, k)

    def features(self, x):
        return self.body(self.normalize(x))

    def forward(self, x):
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    """The CNN's contract in miniature: normalize, stem, blocks (size-preserving), pool, classifier."""
    def __init__(self, k=3, c=8):
        super().__init__()
        self.normalize = Normalize([0.5, 0.5, 0.5], [0.25, 0.25, 0.25])
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.blocks = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(c, k)

    def feature_maps(self, x):
        return self.blocks(self.stem(self.normalize(x)))

    def features(self, x):
        return self.pool(self.feature_maps(x))

    def forward(self, x):
        return self.classifier(self.features(x))


def _images(n, seed=0, lo=0.2, hi=0.8, shape=(3, 4, 4)):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand((n, *shape), generator=g)


# ---- logit detectors ----------------------------------------------------------------------

def test_msp_orders_confident_as_in_distribution():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 1.0, 1.0], [3.0, 2.0, 0.0]])
    s = msp_scores(logits)
    assert s.shape == (3,)
    assert s[0] < s[2] < s[1]                       # confident < medium < uniform
    assert s[1].item() == pytest.approx(-1 / 3)     # uniform over 3 classes


def test_max_logit_uses_logit_scale_not_softmax():
    # MSP prefers row 1 (0.58 vs 0.5); max logit prefers row 0, whose logits are much larger.
    logits = torch.tensor([[5.0, 5.0, 0.0], [1.0, 0.0, 0.0]])
    s = max_logit_scores(logits)
    assert s.tolist() == [-5.0, -1.0]
    assert msp_scores(logits)[0] > msp_scores(logits)[1]


def test_energy_values_temperature_and_ordering():
    assert energy_scores(torch.tensor([[0.0, 0.0]])).item() == pytest.approx(-math.log(2))
    # T = 2 on logits (2, 2): -2 * logsumexp(1, 1) = -2 * (1 + log 2)
    assert energy_scores(torch.tensor([[2.0, 2.0]]), T=2.0).item() == pytest.approx(-2 * (1 + math.log(2)))
    s = energy_scores(torch.tensor([[8.0, 0.0], [1.0, 0.5]]))
    assert s[0] < s[1]                               # large logits = low energy = in-distribution
    # small T tends to -max logit
    assert energy_scores(torch.tensor([[3.0, 1.0]]), T=0.01).item() == pytest.approx(-3.0, abs=1e-6)
    with pytest.raises(DllabError):
        energy_scores(torch.tensor([[1.0, 2.0]]), T=0.0)


DETECTORS = ("autoencoder", "energy", "max_logit", "msp", "odin")


def test_detectors_registry_and_bad_logits():
    # and the feature-space ones, tested in test_ood_feature_detectors.py
    assert registry.names("detector") == sorted([*DETECTORS, "ash", "knn", "mahalanobis", "react", "vim"])
    logit_only = {n for n in DETECTORS if issubclass(registry.get("detector", n), LogitDetector)}
    assert logit_only == {"msp", "max_logit", "energy"}
    logits = torch.randn(5, 4)
    for n in logit_only:
        assert registry.get("detector", n)().score_logits(logits).shape == (5,)
    with pytest.raises(DllabError):
        msp_scores(torch.randn(5))


# ---- detector objects: fit(model, x, y) -> self, score(model, x) -> (N,) CPU float32 -------

@pytest.mark.parametrize("name", DETECTORS)
def test_every_detector_follows_the_object_contract(name):
    torch.manual_seed(0)
    model, x_train, y_train, x = TinyCNN(), _images(8, seed=1), torch.arange(8) % 2, _images(5, seed=2)
    cls = registry.get("detector", name)
    det = cls.from_settings(batch_size=2)
    assert det.batch_size == 2
    assert det.fit(model, x_train, y_train) is det
    s = det.score(model, x)
    assert s.shape == (5,) and s.dtype == torch.float32 and s.device.type == "cpu"
    doc = " ".join(cls.__doc__.split())
    assert "larger = more OOD" in doc and "https://arxiv.org/" in doc        # the formula's sign and the paper
    assert det.label


def test_msp_detector_is_msp_of_the_logits():
    torch.manual_seed(0)
    model, x = TinyMLP(), _images(7)
    torch.testing.assert_close(MSP(batch_size=3).score(model, x), msp_scores(logits_of(model, x)))


def test_max_logit_detector_is_minus_the_max_logit():
    torch.manual_seed(0)
    model, x = TinyMLP(), _images(7)
    assert torch.equal(MaxLogit().score(model, x), -logits_of(model, x).amax(1))


def test_energy_detector_uses_its_temperature():
    logits = torch.tensor([[2.0, 2.0]])
    assert Energy(T=2.0).score_logits(logits).item() == pytest.approx(-2 * (1 + math.log(2)))
    assert Energy().score_logits(logits).item() == pytest.approx(-(2 + math.log(2)))
    with pytest.raises(DllabError):
        Energy(T=0.0).score_logits(logits)


def test_odin_detector_is_odin_scores_with_its_setting():
    torch.manual_seed(0)
    model, x = TinyMLP(), _images(9)
    det = ODIN(T=10.0, eps=2e-3, batch_size=4)
    assert torch.equal(det.score(model, x), odin_scores(model, x, T=10.0, eps=2e-3, batch_size=4))
    assert det.label == "ODIN (T=10, eps=0.002)"
    with pytest.raises(DllabError, match="temperature"):
        ODIN(T=0.0)


def test_autoencoder_detector_owns_its_decoder_and_leaves_the_encoder_flags_alone():
    torch.manual_seed(0)
    enc = TinyCNN()
    enc.stem[0].weight.requires_grad_(False)                 # a caller's own freezing must survive
    flags = [p.requires_grad for p in enc.parameters()]
    x = _images(16, seed=1, shape=(3, 6, 6))
    det = Autoencoder(epochs=3, lr=1e-2, fit_batch_size=8, hidden=4, seed=0)
    with pytest.raises(DllabError, match="fit"):
        det.score(enc, x)
    seen = []
    det.progress = lambda e, loss: seen.append(e)
    torch.manual_seed(5)                                     # the decoder's initial weights
    assert det.fit(enc, x) is det
    assert [p.requires_grad for p in enc.parameters()] == flags
    assert det.decoder is not None and len(det.history) == 3 and seen == [1, 2, 3]
    assert torch.equal(det.score(enc, x), reconstruction_scores(enc, det.decoder, x))
    assert det.reconstruct(enc, x[:2]).shape == (2, 3, 6, 6)
    assert "on 16 ID training images" in det.fit_note()
    # the same initial weights and seed (the shuffling) train the same decoder
    torch.manual_seed(5)
    again = Autoencoder(epochs=3, lr=1e-2, fit_batch_size=8, hidden=4, seed=0).fit(enc, x)
    assert torch.equal(again.score(enc, x), det.score(enc, x))
    torch.manual_seed(5)
    other = Autoencoder(epochs=3, lr=1e-2, fit_batch_size=8, hidden=4, seed=1).fit(enc, x)
    assert not torch.equal(other.score(enc, x), det.score(enc, x))


def test_logits_of_accepts_uint8_channels_last_and_rejects_normalised_input():
    torch.manual_seed(0)
    model = TinyMLP()
    u8 = torch.randint(0, 256, (6, 4, 4, 3), dtype=torch.uint8)            # NHWC, CIFAR numpy style
    ref = logits_of(model, u8.permute(0, 3, 1, 2).float() / 255, batch_size=4)
    torch.testing.assert_close(logits_of(model, u8.numpy(), batch_size=4), ref)
    with pytest.raises(DllabError, match=r"\[0, 1\]"):
        logits_of(model, torch.randn(6, 3, 4, 4) * 3)


# ---- ODIN -----------------------------------------------------------------------------------

def test_odin_t1_eps0_is_msp_exactly():
    torch.manual_seed(0)
    model, x = TinyMLP(), _images(11)
    assert torch.equal(odin_scores(model, x, T=1.0, eps=0.0, batch_size=4),
                       msp_scores(logits_of(model, x, batch_size=4)))


@pytest.mark.parametrize("T", [1.0, 10.0])
def test_odin_perturbation_increases_tempered_max_softmax(T):
    torch.manual_seed(1)
    model, x = TinyMLP(), _images(16)    # interior of [0, 1]: the clamp is inactive
    clean = odin_scores(model, x, T=T, eps=0.0)
    perturbed = odin_scores(model, x, T=T, eps=2e-3)
    # score = -max S(x'; T): the step raises the max softmax, so every score goes down
    assert torch.all(perturbed < clean)
    # ...while a step the opposite way lowers the predicted class's tempered softmax (the sign is
    # not arbitrary). Compare that class, not the max: near a tie the max can switch to another class.
    from dllab.ood.odin import ascent_sign
    logits = logits_of(model, x)
    yhat = logits.argmax(1, keepdim=True)
    x_down = x - 2e-3 * ascent_sign(model.eval(), x, T)
    s_clean = torch.softmax(logits / T, 1).gather(1, yhat)
    s_down = torch.softmax(logits_of(model, x_down) / T, 1).gather(1, yhat)
    assert torch.all(s_down < s_clean)


def test_odin_grid_matches_odin_scores_for_every_pair_and_loaders():
    torch.manual_seed(2)
    model, x = TinyMLP(), _images(12)
    temps, epss = [1.0, 10.0, 1000.0], [0.0, 1e-3, 4e-3]
    grid = odin_grid(model, x, temps, epss, batch_size=5)     # 5 does not divide 12: a ragged last batch
    assert grid.shape == (3, 3, 12)
    for i, T in enumerate(temps):
        for j, eps in enumerate(epss):
            np.testing.assert_allclose(grid[i, j], odin_scores(model, x, T, eps, batch_size=5).numpy(),
                                       rtol=0, atol=1e-7)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, torch.zeros(12)), batch_size=5)
    np.testing.assert_array_equal(odin_grid(model, loader, temps, epss), grid)


def test_odin_runs_in_eval_mode_and_leaves_no_param_grads():
    torch.manual_seed(3)
    model, x = TinyMLP(bn=True), _images(8)
    model.train()
    stats = model.body[2].running_mean.clone()
    got = odin_scores(model, x, T=5.0, eps=1e-3)
    assert model.training and model.body[2].training      # mode restored
    assert torch.equal(model.body[2].running_mean, stats)  # BN statistics untouched
    assert all(p.grad is None for p in model.parameters())
    ref = odin_scores(copy.deepcopy(model).eval(), x, T=5.0, eps=1e-3)
    assert torch.equal(got, ref)


# ---- autoencoder ----------------------------------------------------------------------------

def test_conv_decoder_is_registered_and_outputs_images():
    assert registry.get("model", "conv_decoder") is conv_decoder
    out = conv_decoder(in_channels=8, hidden=4)(torch.randn(2, 8, 6, 6))
    assert out.shape == (2, 3, 6, 6) and out.min() >= 0 and out.max() <= 1


def test_autoencoder_trains_only_the_decoder():
    torch.manual_seed(0)
    enc = TinyCNN()
    enc.train()                                              # the detector must switch it to eval itself
    frozen = copy.deepcopy(enc.state_dict())
    g = torch.Generator().manual_seed(0)
    # smooth toy images (a per-image colour plus a gradient) as uint8, channels-last
    base = torch.rand(32, 1, 1, 3, generator=g)
    ramp = torch.linspace(0, 0.15, 8)
    x = base * 0.7 + ramp.view(1, 8, 1, 1) + ramp.view(1, 1, 8, 1)
    x = (x * 255).clamp(0, 255).to(torch.uint8)                           # (32, 8, 8, 3)
    assert x.shape == (32, 8, 8, 3)
    decoder0 = conv_decoder(in_channels=8, hidden=16)
    before = reconstruction_scores(enc, decoder0, x.numpy())

    seen = []
    decoder, history = train_autoencoder(enc, x.numpy(), epochs=20, lr=1e-2, batch_size=8,
                                         decoder=copy.deepcopy(decoder0), generator=g,
                                         progress=lambda e, loss: seen.append((e, loss)))
    # encoder: untrained, bit-identical (BN running stats included), mode and requires_grad flags restored
    assert all(p.requires_grad for p in enc.parameters()) and all(p.grad is None for p in enc.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in enc.state_dict().items())
    assert enc.training
    # decoder: changed, and the reconstruction got better
    assert any(not torch.equal(p, q) for p, q in zip(decoder.parameters(), decoder0.parameters()))
    assert len(history) == 20 and history[-1] < 0.5 * history[0]
    assert [e for e, _ in seen] == list(range(1, 21))
    after = reconstruction_scores(enc, decoder, x.numpy(), batch_size=10)
    assert after.shape == (32,) and after.mean() < before.mean()
    assert reconstruct(enc, decoder, x.numpy()).shape == (32, 3, 8, 8)


def test_autoencoder_needs_feature_maps():
    with pytest.raises(DllabError, match="feature_maps"):
        train_autoencoder(TinyMLP(), _images(4), epochs=1)


# ---- metrics --------------------------------------------------------------------------------

def test_metrics_perfect_separation():
    m = ood_metrics(np.array([0.0, 0.1, 0.2, 0.3]), np.array([1.0, 1.5, 2.0]))
    assert m == {"auroc": 1.0, "aupr_in": 1.0, "aupr_out": 1.0, "fpr95": 0.0}


def test_metrics_chance_level():
    m = ood_metrics(np.zeros(50), np.zeros(30))            # equal scores: no information
    assert m["auroc"] == 0.5 and m["fpr95"] == 1.0
    rng = np.random.default_rng(0)
    same = ood_metrics(rng.normal(size=20000), rng.normal(size=20000))   # identical distributions
    assert same["auroc"] == pytest.approx(0.5, abs=0.01)
    assert same["fpr95"] == pytest.approx(0.95, abs=0.01)


def test_fpr95_hand_computed():
    # ID scores 0..19: the lowest threshold accepting >= 95% of ID is t = 18 (19 of 20 accepted).
    # OOD scores <= 18 are accepted too: only 5.0 of five -> FPR95 = 1/5.
    sid = np.arange(20, dtype=float)
    assert fpr_at_tpr(sid, np.array([5.0, 18.5, 19.5, 25.0, 30.0])) == pytest.approx(0.2)
    # a tie with the threshold counts as accepted: 5.0 and 18.0 -> 2/5
    assert ood_metrics(sid, np.array([5.0, 18.0, 19.5, 25.0, 30.0]))["fpr95"] == pytest.approx(0.4)


def test_metrics_sign_convention_and_tensors():
    rng = np.random.default_rng(1)
    sid, sood = rng.normal(0, 1, 200), rng.normal(1, 1, 150)   # OOD scores higher = a good detector
    m, swapped = ood_metrics(sid, sood), ood_metrics(sood, sid)
    assert m["auroc"] > 0.7
    assert swapped["auroc"] == pytest.approx(1 - m["auroc"])
    assert ood_metrics(torch.tensor(sid), torch.tensor(sood)) == pytest.approx(m)
    with pytest.raises(DllabError):
        ood_metrics(sid, np.array([np.nan]))


def test_roc_pr_curves_shapes():
    c = roc_pr_curves(np.array([0.0, 1.0, 2.0]), np.array([1.5, 3.0]))
    assert c["fpr"].shape == c["tpr"].shape and c["precision"].shape == c["recall"].shape
    assert c["fpr"][0] == 0 and c["tpr"][-1] == 1


# ---- the pipeline Lab 4 runs: detectors from config sections, evaluated against OOD sets, ODIN searched -

def _id_data_and_ood_sets(n_train=12, n_test=10):
    from dllab.ood.datasets import OODSet
    from dllab.data.images import ImageData, Split

    def u8(n, seed, lo, hi):
        return (255 * _images(n, seed, lo, hi, shape=(3, 6, 6))).round().to(torch.uint8)

    split = lambda n, seed: Split(u8(n, seed, 0.3, 0.7), torch.arange(n) % 3)       # noqa: E731
    data = ImageData("toy", ["a", "b", "c"], split(n_train, 1), None, split(n_test, 2), None, "generated")
    return data, [OODSet("dark", u8(8, 3, 0.0, 0.3), "generated"), OODSet("bright", u8(6, 4, 0.7, 1.0), "generated")]


def test_build_detectors_takes_the_sections_settings_and_checks_the_names():
    from conftest import Recorder
    from dllab.ood.evaluate import build_detectors
    from dllab.ood.settings import AutoencoderConfig, OdinSetting

    reporter = Recorder()
    ae = AutoencoderConfig(epochs=2, lr=0.01, batch_size=4, hidden=3)
    dets = build_detectors(["odin", "msp", "autoencoder", "msp"], 16, OdinSetting(temperature=2.0, epsilon=0.01),
                           ae, seed=7, tag="m", reporter=reporter)
    assert list(dets) == ["odin", "msp", "autoencoder"] and all(d.batch_size == 16 for d in dets.values())
    assert (dets["odin"].T, dets["odin"].eps) == (2.0, 0.01)
    a = dets["autoencoder"]
    assert (a.epochs, a.lr, a.fit_batch_size, a.hidden, a.seed) == (2, 0.01, 4, 3, 7)
    assert [d.label for d in dets.values()] == ["ODIN (T=2, eps=0.01)", "MSP", "autoencoder MSE"]
    a.progress(1, 0.5)
    assert reporter.logs == ["[m] decoder epoch 1/2 reconstruction MSE 0.50000"]
    with pytest.raises(DllabError, match="unknown detector 'gram'; known: ash, autoencoder, energy"):
        build_detectors(["msp", "gram"], 16, OdinSetting(), ae)


def test_evaluate_ood_fits_on_a_balanced_subset_and_scores_every_image():
    """No run folder: evaluate_ood returns the scores (and says nothing, QUIET); score_arrays holds them all."""
    from dllab.ood.evaluate import build_detectors, evaluate_ood, ood_evaluation, score_arrays
    from dllab.ood.settings import AutoencoderConfig, OdinSetting

    data, ood_sets = _id_data_and_ood_sets()
    torch.manual_seed(0)
    model = TinyCNN().eval()
    dets = build_detectors(["msp", "energy", "autoencoder"], 4, OdinSetting(), AutoencoderConfig(epochs=1))
    scores, metrics = evaluate_ood(model, dets, data, ood_sets, batch_size=4, fit_limit=6, seed=0, tag="std")
    assert dets["autoencoder"].n_train == 6                              # fit_limit images, 2 per class
    assert set(metrics) == {"dark", "bright"} and set(metrics["dark"]) == {"msp", "energy", "autoencoder"}
    again, _ = ood_evaluation(model, data.test.x, {s.name: s.x for s in ood_sets}, dets, batch_size=4)
    z = score_arrays(scores, data.classes, data.test.y, list(dets))
    assert z["ood_sets"].tolist() == ["dark", "bright"] and z["id.labels"].tolist() == data.test.y.tolist()
    for g in ("id", "dark", "bright"):
        for k in ("logits", "msp", "energy", "autoencoder"):
            np.testing.assert_array_equal(z[f"{g}.{k}"], again[g][k].numpy())
    # Logit detectors alone: the arrays name them.
    logit_only = build_detectors(["max_logit"], 4, OdinSetting(), AutoencoderConfig())
    scores, _ = evaluate_ood(model, logit_only, data, ood_sets[:1], batch_size=4)
    assert score_arrays(scores, data.classes, data.test.y, ["max_logit"])["detectors"].tolist() == ["max_logit"]


def test_detectors_are_fitted_on_id_training_images_with_their_labels():
    """As pytorch-ood's detectors: fit(model, x, y) sees the ID training data with its labels (the balanced
    subset of fit_limit images), so a detector such as Mahalanobis can learn per-class statistics."""
    from dllab.ood.evaluate import evaluate_ood

    class Seen(LogitDetector):
        def fit(self, model, x=None, y=None):
            self.seen = (x, y)
            return self

        def score_logits(self, logits):
            return -logits.amax(1)

    data, ood_sets = _id_data_and_ood_sets()
    det = Seen(batch_size=4)
    evaluate_ood(TinyCNN().eval(), {"seen": det}, data, ood_sets, batch_size=4, fit_limit=6, seed=0)
    x, y = det.seen
    assert len(x) == len(y) == 6 and sorted(y.tolist()) == [0, 0, 1, 1, 2, 2]
    rows = {bytes(xi.flatten().tolist()): int(yi) for xi, yi in zip(data.train.x, data.train.y)}
    assert all(rows[bytes(xi.flatten().tolist())] == int(yi) for xi, yi in zip(x, y))   # each image's own label


def test_evaluate_ood_reports_each_fit_note_after_its_fit_then_the_aurocs():
    """What a run's log shows, in this order: the decoder's epochs, its fit note, one AUROC line per OOD set."""
    from conftest import Recorder
    from dllab.ood.evaluate import build_detectors, evaluate_ood
    from dllab.ood.settings import AutoencoderConfig, OdinSetting

    data, ood_sets = _id_data_and_ood_sets()
    torch.manual_seed(0)
    model, reporter = TinyCNN().eval(), Recorder()
    dets = build_detectors(["autoencoder", "msp"], 4, OdinSetting(), AutoencoderConfig(epochs=2), tag="std",
                           reporter=reporter)
    _, metrics = evaluate_ood(model, dets, data, ood_sets, batch_size=4, tag="std", reporter=reporter)
    assert [line.split(" reconstruction")[0] for line in reporter.lines[:2]] == [
        "[std] decoder epoch 1/2", "[std] decoder epoch 2/2"]
    assert reporter.notes == [f"autoencoder detector (std): {dets['autoencoder'].fit_note()}"]
    assert reporter.lines[2] == f"note: {reporter.notes[0]}"
    assert reporter.lines[3:] == [f"std {o}: autoencoder AUROC {metrics[o]['autoencoder']['auroc']:.3f}, "
                                  f"msp AUROC {metrics[o]['msp']['auroc']:.3f}" for o in ("dark", "bright")]


def test_odin_search_sets_draws_the_masks_in_order_and_reports_each_set():
    from conftest import Recorder
    from dllab.ood.odin_search import odin_search, search_arrays, search_sets, split_mask
    from dllab.ood.settings import OdinGridConfig

    data, ood_sets = _id_data_and_ood_sets(n_test=12)
    torch.manual_seed(0)
    model, reporter = TinyCNN().eval(), Recorder()
    grid = OdinGridConfig(temperatures=[1.0, 10.0], epsilons=[0.0, 0.01], val_fraction=0.5)
    keys, results = search_sets(model, data.test.x, ood_sets, grid, batch_size=4, seed=3, reporter=reporter)
    g = torch.Generator().manual_seed(3)
    id_val = split_mask(12, 0.5, g)
    for s in ood_sets:                                   # the ID mask first, then one per set, in order
        res, got_id, got_ood = results[s.name]
        ood_val = split_mask(len(s), 0.5, g)
        assert torch.equal(got_id, id_val) and torch.equal(got_ood, ood_val)
        ref = odin_search(model, data.test.x, s.x, id_val, ood_val, grid.temperatures, grid.epsilons, 4)
        assert keys[f"{s.name}.odin.auroc"] == ref["best_test"]["auroc"]
        assert keys[f"{s.name}.odin.grid_auroc@T1_eps0"] == keys[f"{s.name}.msp.auroc"]
        z = search_arrays(res, got_id, got_ood)
        np.testing.assert_array_equal(z["scores_ood"], ref["grid_ood"])
    assert [line.split(":")[0] for line in reporter.logs] == ["dark", "bright"]      # the chosen cell, per set
    one, _ = search_sets(model, data.test.x, ood_sets[:1], grid, batch_size=4, seed=3)
    assert "odin.best_T" in one and not any(k.startswith("dark.") for k in one)    # one set: no prefix
    assert not reporter.notes                                # the (T=1, eps=0) cell is MSP exactly
