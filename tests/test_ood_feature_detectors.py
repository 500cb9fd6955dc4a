"""The feature-space OOD detectors (mahalanobis, knn, vim, react, ash) on synthetic Gaussian features where the
right answer is known, with a tiny model whose forward_features is a fixed linear map; the models'
forward_features/forward_head split; and one lab4.ood smoke run with all of them."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dllab import ConfigError, DllabError
from dllab.core import registry
from dllab.core.config import run_config
from dllab.data.images import ImageData, Split
from dllab.ood import knn as knn_module
from dllab.ood.ash import ASH, ash_s
from dllab.ood.base import FeatureDetector, features_of, head_logits
from dllab.ood.datasets import OODSet
from dllab.ood.energy import energy_scores
from dllab.ood.evaluate import build_detectors, evaluate_ood
from dllab.ood.knn import KNN, kth_neighbour_distance
from dllab.ood.mahalanobis import Mahalanobis
from dllab.ood.metrics import ood_metrics
from dllab.ood.react import ReAct
from dllab.ood.settings import AutoencoderConfig, OdinSetting
from dllab.ood.vim import ViM, paper_dim
from dllab.train.inference import logits_of

FEATURE_DETECTORS = ("mahalanobis", "knn", "vim", "react", "ash")
K, UNITS, EXTRA = 3, 4, 4           # classes, feature units per class, units no class reads
D = K * UNITS + EXTRA
SCALE = 10.0                        # features = SCALE * image: images in [0, 1] carry features in [0, 10]


class LinearFeatureModel(nn.Module):
    """Images (N, 1, 1, D) in [0, 1]; forward_features = SCALE * the flattened image (a fixed linear map);
    forward_head = a Linear that reads class c's logit from its UNITS units and ignores the EXTRA ones."""

    def __init__(self):
        super().__init__()
        self.classifier = nn.Linear(D, K)
        with torch.no_grad():
            self.classifier.weight.zero_()
            for c in range(K):
                self.classifier.weight[c, c * UNITS:(c + 1) * UNITS] = 1.0
            self.classifier.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))

    def forward_features(self, x):
        return SCALE * x.flatten(1)

    def forward_head(self, f):
        return self.classifier(f)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def gaussian_features(n_per_class: int, seed: int, ood: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU'd Gaussian features in [0, 10]: ID class c is 5 on its own units (noise 0.7), OOD is 5 on the
    EXTRA units that no class reads. Returns (features (N, D), labels (N,))."""
    g = torch.Generator().manual_seed(seed)
    means = torch.zeros(K, D)
    for c in range(K):
        if ood:
            means[c, K * UNITS:] = 5.0
        else:
            means[c, c * UNITS:(c + 1) * UNITS] = 5.0
    labels = torch.arange(K).repeat_interleave(n_per_class)
    f = means[labels] + 0.7 * torch.randn(len(labels), D, generator=g)
    return f.clamp(0, SCALE), labels


def as_images(features: torch.Tensor) -> torch.Tensor:
    return (features / SCALE).view(len(features), 1, 1, D)


@pytest.fixture(scope="module")
def easy():
    """(model, ID training features + labels, ID test features, OOD features)."""
    train, y = gaussian_features(100, seed=1)
    test, _ = gaussian_features(40, seed=2)
    ood, _ = gaussian_features(40, seed=3, ood=True)
    return LinearFeatureModel(), train, y, test, ood


# --- the models' split ------------------------------------------------------------------------------

@pytest.mark.parametrize("name, kwargs, shape", [("cnn", {"base_channels": 4, "depth": 1}, (2, 3, 8, 8)),
                                                 ("mlp", {"image_size": 4, "width": 5}, (2, 1, 4, 4)),
                                                 ("basic_mlp", {"image_size": 4, "width": 5}, (2, 1, 4, 4))])
def test_models_are_forward_head_of_forward_features(name, kwargs, shape):
    torch.manual_seed(0)
    model = registry.build_model(name, num_classes=3, **kwargs).eval()
    x = torch.rand(shape)
    f = model.forward_features(x)
    assert f.ndim == 2 and torch.equal(model(x), model.forward_head(f))
    assert torch.equal(model.features(x), f)            # the older name still works for its callers
    assert torch.equal(head_logits(model, features_of(model, x)), logits_of(model, x))


# --- each detector's known answer -------------------------------------------------------------------

def test_mahalanobis_is_the_min_tied_covariance_distance_and_separates_shifted_means():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 6, generator=g)
    noise = lambda n: torch.randn(n, 6, generator=g) @ a.T      # noqa: E731 - one shared covariance a a^T
    means = torch.tensor([[4.0, 0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0, 0]]) * 3
    y = torch.arange(2).repeat_interleave(200)
    train = means[y] + noise(400)
    test, shifted = means[y[:100]] + noise(100), means[y[:100]] + 15 + noise(100)
    det = Mahalanobis().fit_features(None, train, y)
    assert ood_metrics(det.score_features(None, test), det.score_features(None, shifted))["auroc"] > 0.99
    # by hand: class means, the pooled within-class covariance, its pseudo-inverse, min over classes
    f, lab = train.double().numpy(), y.numpy()
    mu = np.stack([f[lab == c].mean(0) for c in (0, 1)])
    centred = f - mu[lab]
    precision = np.linalg.pinv(centred.T @ centred / len(f))
    q = test.double().numpy()
    by_hand = np.min([np.einsum("nd,de,ne->n", q - m, precision, q - m) for m in mu], axis=0)
    np.testing.assert_allclose(det.score_features(None, test).numpy(), by_hand, rtol=1e-4)
    assert "2 class means" in det.fit_note()


def test_mahalanobis_fit_uses_the_labels():
    train, y = gaussian_features(30, seed=1)
    test, _ = gaussian_features(10, seed=2)
    with pytest.raises(DllabError, match="needs the ID training labels"):
        Mahalanobis().fit_features(None, train, None)
    det = Mahalanobis().fit_features(None, train, y)
    for c in range(K):                                     # one mean per class, of that class's images
        torch.testing.assert_close(det.means[c], train[y == c].double().mean(dim=0))
    shuffled = y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]
    wrong = Mahalanobis().fit_features(None, train, shuffled).score_features(None, test)
    assert not torch.allclose(det.score_features(None, test), wrong)


def test_knn_ranks_far_points_highest_and_is_the_kth_neighbour_distance(monkeypatch):
    g = torch.Generator().manual_seed(0)
    train = torch.tensor([5.0, 0, 0, 0]) + torch.randn(200, 4, generator=g)
    near = torch.tensor([5.0, 0, 0, 0]) + torch.randn(20, 4, generator=g)
    far = torch.tensor([0, 0, 0, 5.0]) + torch.randn(5, 4, generator=g)          # another direction
    det = KNN(k=10).fit_features(None, train)
    s = det.score_features(None, torch.cat([near, far]))
    assert set(s.argsort(descending=True)[:5].tolist()) == set(range(20, 25))
    # by hand: sort every distance between normalised features, take the k-th
    q, bank = F.normalize(torch.cat([near, far]), dim=1), F.normalize(train, dim=1)
    torch.testing.assert_close(s, torch.cdist(q, bank).sort(dim=1).values[:, 9], atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(knn_module, "CHUNK_ELEMENTS", 3 * len(bank))        # chunks of 3 rows: the same answer
    torch.testing.assert_close(kth_neighbour_distance(q, bank, 10), s)
    with pytest.raises(DllabError, match="k = 300 needs at least 300 ID training images, got 200"):
        KNN(k=300).fit_features(None, train)


def test_react_with_the_clip_at_infinity_is_energy(easy):
    model, train, y, test, _ = easy
    det = ReAct().fit_features(model, train)
    det.clip = math.inf
    x = as_images(test)
    torch.testing.assert_close(det.score(model, x), energy_scores(logits_of(model, x)))
    # at the 100th percentile the clip is the largest ID training activation: those images are unchanged
    top = ReAct(percentile=100).fit_features(model, train)
    assert top.clip == train.max().item()
    torch.testing.assert_close(top.score_features(model, train), energy_scores(head_logits(model, train)))
    # at the default 90th, large activations are clipped: the score moves
    assert det.fit(model, as_images(train)).clip == pytest.approx(np.percentile(train.numpy(), 90), rel=1e-5)
    assert not torch.allclose(det.score(model, x), energy_scores(logits_of(model, x)))


def test_vim_score_is_its_formula_by_hand(easy):
    model, train, _, test, ood = easy
    det = ViM(dim=5).fit_features(model, train)
    w, b = model.classifier.weight.detach().double().numpy(), model.classifier.bias.detach().double().numpy()
    f, q = train.double().numpy(), torch.cat([test, ood]).double().numpy()
    u = -np.linalg.pinv(w) @ b
    eigvals, eigvecs = np.linalg.eigh((f - u).T @ (f - u) / len(f))
    residual_basis = eigvecs[:, np.argsort(eigvals)[::-1][5:]]          # all but the 5 largest
    residual = lambda z: np.linalg.norm((z - u) @ residual_basis, axis=1)     # noqa: E731
    alpha = (f @ w.T + b).max(axis=1).mean() / residual(f).mean()
    logits = q @ w.T + b
    lse = np.log(np.exp(logits).sum(axis=1))
    np.testing.assert_allclose(det.score_features(model, torch.cat([test, ood])).numpy(),
                               alpha * residual(q) - lse, rtol=1e-4, atol=1e-4)
    assert det.fitted.alpha == pytest.approx(alpha)
    # the paper's ViM probability, exp(v) / (sum exp(l) + exp(v)), ranks the same: score = its logit
    v = alpha * residual(q)
    p = np.exp(v) / (np.exp(logits).sum(axis=1) + np.exp(v))
    inside = (p > 1e-12) & (p < 1 - 1e-12)                 # where float64 has not rounded p to 0 or 1
    assert inside.sum() > 10
    np.testing.assert_allclose((v - lse)[inside], np.log(p[inside] / (1 - p[inside])), rtol=1e-5, atol=1e-5)


def test_vim_dimension_follows_the_authors_rule_and_needs_a_linear_head(easy):
    model, train, *_ = easy
    assert [paper_dim(d) for d in (2048, 4096, 768, 1024, 513, 512, 16)] == [1000, 1000, 512, 512, 512, 256, 8]
    det = ViM().fit_features(model, train)
    assert det.fitted.residual_basis.shape == (D, D - D // 2)
    with pytest.raises(DllabError, match="dim = 16 must be below the feature dimension 16"):
        ViM(dim=D).fit_features(model, train)
    deep_head = LinearFeatureModel()
    deep_head.classifier = nn.Sequential(nn.Linear(D, 4), nn.ReLU(), nn.Linear(4, K))
    with pytest.raises(ConfigError, match="needs a model whose head is one nn.Linear"):
        ViM().fit_features(deep_head, train)


def test_ash_s_prunes_scales_and_at_percentile_0_is_the_energy_of_e_times_the_features(easy):
    f = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
    torch.testing.assert_close(ash_s(f, 50), torch.tensor([[0, 0, 3.0, 4.0], [0, 0, 0, 0]]) * torch.tensor(
        [[math.exp(10 / 7)], [1.0]]))                      # keep the top half; s1 / s2 = 10 / 7; zeros stay zero
    model, _, _, test, _ = easy
    torch.testing.assert_close(ASH(percentile=0).score_features(model, test),
                               energy_scores(head_logits(model, math.e * test)))
    assert ASH().fit(model, None) is not None                # learns nothing: no images needed


# --- all of them -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", FEATURE_DETECTORS)
def test_every_feature_detector_scores_ood_higher_on_an_easy_case(name, easy):
    model, train, y, test, ood = easy
    cls = registry.get("detector", name)
    assert issubclass(cls, FeatureDetector)
    det = cls.from_settings(batch_size=32)
    assert det.fit(model, as_images(train), y) is det
    s_id, s_ood = det.score(model, as_images(test)), det.score(model, as_images(ood))
    assert s_id.shape == (len(test),) and s_id.dtype == torch.float32 and s_id.device.type == "cpu"
    assert ood_metrics(s_id, s_ood)["auroc"] > 0.95, name
    doc = " ".join(cls.__doc__.split())
    assert "larger = more OOD" in doc and "https://arxiv.org/" in doc and det.label


def test_a_model_without_forward_features_gets_a_one_line_error(easy):
    _, train, y, *_ = easy
    with pytest.raises(ConfigError, match="need a model with forward_features"):
        KNN(k=5).fit(nn.Linear(D, K), as_images(train), y)


def test_settings_reach_the_detectors_through_ood_sections():
    cfg = run_config("lab4.ood", "smoke", ["ood.detectors=[msp,knn,vim,react,ash]", "ood.knn.k=7", "ood.vim.dim=3",
                                           "ood.react.percentile=80", "ood.ash.percentile=65"])
    dets = build_detectors(cfg.ood.detectors, 8, cfg.odin, cfg.autoencoder, ood=cfg.ood)
    assert (dets["knn"].k, dets["vim"].dim, dets["react"].percentile, dets["ash"].percentile) == (7, 3, 80, 65)
    assert dets["knn"].batch_size == 8
    assert build_detectors(["knn"], 8, OdinSetting(), AutoencoderConfig())["knn"].k == 50     # defaults
    with pytest.raises(ConfigError, match="ood.ash.percentile=100"):
        run_config("lab4.ood", "smoke", ["ood.ash.percentile=100"])


def test_evaluate_ood_fits_the_feature_detectors_on_the_id_training_split(easy):
    model, train, y, test, ood = easy
    data = ImageData("toy", ["a", "b", "c"], Split(as_images(train), y), None, Split(as_images(test), y[:len(test)]),
                     None, "generated")
    dets = build_detectors(["knn", "mahalanobis", "msp"], 64, OdinSetting(), AutoencoderConfig())
    _, metrics = evaluate_ood(model, dets, data, [OODSet("extra", as_images(ood), "generated")], 64, fit_limit=150)
    assert len(dets["knn"].bank) == 150                          # the balanced subset of the training images
    train_bank = F.normalize(features_of(model, as_images(train)), dim=1)
    assert all((train_bank == row).all(dim=1).any() for row in dets["knn"].bank)
    assert metrics["extra"]["knn"]["auroc"] > 0.95 and metrics["extra"]["mahalanobis"]["auroc"] > 0.95


# --- lab4.ood end to end -----------------------------------------------------------------------------

@pytest.mark.slow   # an end-to-end run; the fast loop covers its parts with unit tests
def test_lab4_ood_smoke_runs_the_feature_detectors(tmp_path):
    from conftest import make_imagefolder
    from dllab.runner.experiment import run_experiment

    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    images = make_imagefolder(tmp_path / "data", classes=classes, n_train=15, n_test=8, size=16)
    dets = ["msp", *FEATURE_DETECTORS]
    run = run_experiment("lab4.ood", "smoke", ["device=cpu", "data.name=imagefolder", f"data.root={images}",
                                               f"ood.detectors=[{','.join(dets)}]", "ood.knn.k=5"],
                         out=str(tmp_path / "run"), quiet=True)
    summary = json.loads((run.path / "metrics.json").read_text())["summary"]
    for ood in ("heldout", "mnist"):
        for det in dets:
            assert 0.0 <= summary[f"{ood}.{det}.auroc"] <= 1.0, f"{ood}.{det}"
    assert np.load(run.path / "scores.npz")["detectors"].tolist() == dets
    assert any(n.startswith("knn detector: k = 5 of") for n in run.notes)
