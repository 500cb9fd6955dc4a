"""Models: the spec's shapes and parameter counts, residual wiring, the features/classifier contract."""
import pytest
import torch
from torch import nn

from dllab.core.registry import build_model


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def linear(i, o):
    return i * o + o


def test_basic_mlp_matches_spec():
    m = build_model("basic_mlp")
    assert n_params(m) == linear(784, 64) + linear(64, 64) + linear(64, 10) == 55_050
    assert m(torch.rand(5, 1, 28, 28)).shape == (5, 10)


@pytest.mark.parametrize("depth, residual", [(10, False), (30, False), (5, True), (15, True)])
def test_mlp_parameter_count(depth, residual):
    m = build_model("mlp", depth=depth, residual=residual, width=64)
    per_block = (2 if residual else 1) * linear(64, 64)
    assert n_params(m) == linear(784, 64) + depth * per_block + linear(64, 10)
    assert m(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("depth, residual", [(5, False), (15, True)])
def test_cnn_parameter_count_and_shapes(depth, residual):
    c = 64
    m = build_model("cnn", depth=depth, residual=residual, base_channels=c)
    conv, bn = 9 * c * c, 2 * c
    expected = 9 * 3 * c + bn + depth * (2 * conv + 2 * bn) + linear(c, 10)
    assert n_params(m) == expected
    x = torch.rand(2, 3, 32, 32)
    assert m(x).shape == (2, 10)
    assert m.feature_maps(x).shape == (2, c, 32, 32)
    assert m.features(x).shape == (2, c)


@pytest.mark.parametrize("name, kwargs, shape", [
    ("basic_mlp", {}, (4, 1, 28, 28)),
    ("mlp", {"depth": 3, "residual": True}, (4, 1, 28, 28)),
    ("cnn", {"depth": 2, "base_channels": 8}, (4, 3, 32, 32)),
])
def test_forward_is_classifier_of_features(name, kwargs, shape):
    m = build_model(name, **kwargs).eval()
    x = torch.rand(*shape)
    assert isinstance(m.classifier, nn.Linear)
    assert torch.allclose(m(x), m.classifier(m.features(x)))


def _zero_block_weights(m):
    with torch.no_grad():
        for b in m.blocks:
            for mod in b.modules():
                if isinstance(mod, (nn.Linear, nn.Conv2d)):
                    mod.weight.zero_()
                    if mod.bias is not None:
                        mod.bias.zero_()


@pytest.mark.parametrize("name, kwargs, shape", [
    ("mlp", {"depth": 4, "width": 16}, (3, 1, 28, 28)),
    ("cnn", {"depth": 3, "base_channels": 8}, (3, 3, 32, 32)),
])
def test_residual_blocks_pass_the_input_through(name, kwargs, shape):
    """With every block's weights at zero, a residual block is the identity (after ReLU of a ReLU output)
    and a plain block outputs zeros: that is the skip connection, and only it."""
    torch.manual_seed(0)
    x = torch.rand(*shape)
    res = build_model(name, residual=True, **kwargs).eval()
    plain = build_model(name, residual=False, **kwargs).eval()
    _zero_block_weights(res)
    _zero_block_weights(plain)
    h = res.stem(res.normalize(x))
    assert torch.allclose(res.blocks(h), h, atol=1e-6)
    assert torch.count_nonzero(plain.blocks(plain.stem(plain.normalize(x)))) == 0


def test_inputs_are_normalised_inside_the_model():
    m = build_model("cnn", depth=1, base_channels=4)
    x = torch.full((1, 3, 32, 32), 0.5)
    expected = (0.5 - m.normalize.mean) / m.normalize.std
    assert torch.allclose(m.normalize(x), expected.expand_as(x))


def test_unknown_model_name_suggests():
    from dllab import DllabError
    with pytest.raises(DllabError, match="did you mean 'cnn'"):
        build_model("cnnn")


def test_reset_classifier_updates_the_spec_so_the_saved_model_rebuilds(tmp_path):
    from dllab.train.checkpoint import load_model, save_model

    m = build_model("cnn", num_classes=10, depth=2, base_channels=8)
    trunk = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("classifier.")}
    m.reset_classifier(7, hidden=8)                      # fc (8 -> 8) + ReLU + classifier (8 -> 7)
    assert m.eval()(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert m.dllab_spec["kwargs"]["num_classes"] == 7 and m.dllab_spec["kwargs"]["head_hidden"] == 8
    assert all(torch.equal(m.state_dict()[k], v) for k, v in trunk.items())   # only the head is new
    save_model(tmp_path / "m.pt", m, [str(i) for i in range(7)])
    back, _ = load_model(tmp_path / "m.pt")
    assert back.state_dict().keys() == m.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in m.state_dict().items())
    m.reset_classifier(3)
    assert isinstance(m.classifier, nn.Linear) and m.dllab_spec["kwargs"]["head_hidden"] == 0


def test_freeze_stops_exactly_the_named_parameters():
    m = build_model("cnn", depth=3, base_channels=4)
    m.freeze(("stem.", "blocks.0."))
    frozen = {n for n, p in m.named_parameters() if not p.requires_grad}
    assert {"stem.0.weight", "blocks.0.conv1.weight", "blocks.0.bn2.bias"} <= frozen
    assert all(n.startswith(("stem.", "blocks.0.")) for n in frozen)
    assert m.blocks[1].conv1.weight.requires_grad and m.classifier.weight.requires_grad
    m.freeze()                                           # nothing named: everything trains again
    assert all(p.requires_grad for p in m.parameters())
