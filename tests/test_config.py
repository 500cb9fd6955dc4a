"""Configs: profiles, --set overrides with type checking, YAML round trip."""
import pytest

from dllab import DllabError
from dllab.config import apply_overrides, dump_yaml, load_yaml, make_config
from dllab.registry import experiment_names, get_experiment


def cfg_of(name="lab1.mlp-depth", profile="quick", sets=()):
    exp = get_experiment(name)
    return make_config(exp.config_cls, exp.profiles, profile, list(sets))


def test_profiles_set_their_defaults():
    paper, quick = cfg_of(profile="paper"), cfg_of(profile="quick")
    assert paper.train.epochs == 50 and quick.train.epochs < paper.train.epochs
    assert paper.plain_depths == [10, 20, 30] and paper.residual_depths == [5, 10, 15]
    assert paper.profile == "paper" and paper.data.allow_fallback is False


def test_set_parses_types_nested_keys_and_lists():
    cfg = cfg_of(sets=["train.epochs=3", "optim.lr=5e-4", "train.grad_norms=false",
                       "plain_depths=[2,4]", "data.classes=[cat,3]", "data.name=cifar10"])
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.optim.lr == 5e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.grad_norms is False
    assert cfg.plain_depths == [2, 4]
    assert cfg.data.classes == ["cat", "3"]
    assert cfg.data.name == "cifar10"


@pytest.mark.parametrize("item, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("train.epochs=three", "expected int"),
    ("train.grad_norms=maybe", "expected true or false"),
    ("plain_depths=[1,x]", "expected int"),
    ("epochs", "expected key=value"),
    ("train=3", "is a section"),
    ("optim.lr.x=1", "has no sub-keys"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(DllabError) as e:
        cfg_of(sets=[item])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_profile():
    with pytest.raises(DllabError, match="unknown profile 'fast'"):
        cfg_of(profile="fast")


def test_yaml_round_trip_keeps_types():
    cfg = cfg_of(sets=["optim.lr=0.01", "data.classes=[1,2]"])
    back = load_yaml(type(cfg), dump_yaml(cfg))
    assert back == cfg


def test_profile_dicts_are_type_checked():
    cfg = cfg_of()
    with pytest.raises(DllabError, match="train.epochs: expected int, got 1.5"):
        apply_overrides(cfg, {"train.epochs": 1.5})


@pytest.mark.parametrize("profile, key, message", [
    ("quick", "ood.nmes", "unknown config key 'ood.nmes' (did you mean 'ood.names'?)"),
    ("smoke", "attack.epsilons", "unknown config key 'attack.epsilons'"),   # a section this config lacks
    ("fast", "ood.names", "unknown profile 'fast'"),
])
def test_a_profile_key_that_names_no_config_field_fails_at_registration(profile, key, message):
    from dllab.experiments.lab4 import OODExpConfig
    from dllab.registry import EXPERIMENTS, register_experiment

    with pytest.raises(DllabError) as e:
        register_experiment("test.bad-profile", "", OODExpConfig, profiles={profile: {key: ["heldout"]}})
    assert message in str(e.value) and "test.bad-profile" in str(e.value)
    assert "test.bad-profile" not in EXPERIMENTS


@pytest.mark.parametrize("profile", [{"finetune.lr.ful": 1e-4}, {"data": {"max_length": 32}}])
def test_text_profiles_take_flat_known_keys_only(profile):
    """One profile style: flat dotted keys; a nested section or a misspelt key fails at registration."""
    from dllab.experiments.lab2 import FinetuneConfig
    from dllab.registry import EXPERIMENTS, register_experiment

    with pytest.raises(DllabError, match="did you mean 'finetune.lr.full'|'data' is a section"):
        register_experiment("test.bad-text-profile", "", FinetuneConfig, profiles={"smoke": profile})
    assert "test.bad-text-profile" not in EXPERIMENTS


@pytest.mark.parametrize("name", experiment_names())
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_experiment_builds_every_profile(name, profile):
    cfg = cfg_of(name, profile)
    assert cfg.profile == profile
    assert load_yaml(type(cfg), dump_yaml(cfg)) == cfg   # the config.yaml a run writes reads back the same


def test_lab1_paper_profiles_are_the_specs_settings():
    mlp = cfg_of("lab1.mlp", "paper")
    assert (mlp.data.name, mlp.width, mlp.train.epochs) == ("mnist", 64, 50)
    assert (mlp.sgd.name, mlp.sgd.lr, mlp.adam.name, mlp.adam.lr) == ("sgd", 0.1, "adam", 1e-3)
    deep = cfg_of("lab1.mlp-depth", "paper")
    assert (deep.width, deep.optim.name, deep.optim.lr, deep.optim.schedule) == (64, "adam", 1e-3, "none")
    cnn = cfg_of("lab1.cnn-depth", "paper")
    assert (cnn.data.name, cnn.base_channels, cnn.train.epochs, cnn.optim.name, cnn.optim.lr) == \
        ("cifar10", 64, 100, "adam", 1e-3)
    assert cnn.plain_depths == cnn.residual_depths == [5, 10, 15]
    assert cnn.data.train_limit in (0, None) and cnn.train.precision == "auto"   # per machine, train/precision.py
