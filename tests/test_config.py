"""Configs: typed sections (pydantic), profiles, --set overrides checked whole before any work, YAML round trip,
old config.yaml files."""
import hashlib
import json
import os
import subprocess
import sys

import pytest
from conftest import dllab_in_process, one_line_error

from dllab import DllabError
from dllab.core.config import apply_overrides, dump_yaml, load_yaml, make_config
from dllab.core.registry import experiment_names, get_experiment, register


def cfg_of(name="lab1.mlp-depth", profile="quick", sets=(), flags=None):
    exp = get_experiment(name)
    return make_config(exp.config_cls, exp.profiles, profile, list(sets), flags)


def refused(name: str, *sets: str) -> str:
    with pytest.raises(DllabError) as e:
        cfg_of(name, "smoke", sets)
    assert "\n" not in str(e.value)
    return str(e.value)


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


def test_strings_are_taken_raw():
    cfg = cfg_of("lab2.finetune", sets=["model.name=1e-3", "finetune.pretrained_model=", "data.root=[x"])
    assert (cfg.model.name, cfg.finetune.pretrained_model, cfg.data.root) == ("1e-3", "", "[x")


@pytest.mark.parametrize("item, message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    ("train.epochs=three", "--set train.epochs=three: expected int"),
    ("train.grad_norms=maybe", "expected true or false"),
    ("plain_depths=[1,x]", "value 2 (x): expected int"),
    ("plain_depths=[1,0]", "value 2 (0): must be >= 1"),
    ("epochs", "expected key=value"),
    ("train=3", "is a section"),
    ("optim.lr.x=1", "'optim.lr' has no sub-keys"),
    ("train.epochs=0", "--set train.epochs=0: must be >= 1"),
    ("optim.lr=-1", "must be > 0"),
    ("optim.lr=nan", "must be a finite number"),
    ("data.val_fraction=1", "must be < 1"),
    ("seed=-1", "must be >= 0"),
    ("data.root=a\tb", "control character"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(DllabError) as e:
        cfg_of(sets=[item])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, item, allowed", [
    ("lab1.mlp", "sgd.schedule=foo", "none, cosine, step, onecycle or warmup_cosine"),
    ("lab1.mlp", "sgd.name=foo", "sgd, adam or adamw"),
    ("lab1.mlp", "train.precision=foo", "auto, fp32, bf16-mixed or fp16-mixed"),
    ("lab1.mlp", "device=tpu", "auto, cpu, cuda or mps"),
    ("lab2.features", "features.pooling=max", "cls or mean"),
    ("lab2.finetune", "finetune.amp=fp32", "auto, bf16-mixed or fp16-mixed"),
    ("lab1.transfer", "variants=[head,fine]", "head, full_adam, full_sgd, partial or scratch"),
])
def test_a_fixed_choice_names_the_key_as_typed_and_its_values(name, item, allowed):
    msg = refused(name, item)
    assert msg.startswith(f"--set {item}:") and allowed in msg


@pytest.mark.parametrize("name, item, fragment", [
    ("lab1.mlp", "data.name=mnst", "unknown dataset 'mnst' (did you mean 'mnist'?); known: cifar10, cifar100, "
                                   "imagefolder, mnist"),
    ("lab1.mlp", "model=cnnn", "unknown model 'cnnn' (did you mean 'cnn'?); known: basic_mlp, cnn"),
    ("lab1.mlp", "log.sinks=[tensorboard,nosuch]", "unknown sink 'nosuch'; known: mlflow, tensorboard, wandb"),
    ("lab4.ood", "ood.names=[heldout,nois]", "unknown OOD set 'nois' (did you mean 'noise'?)"),
    ("lab4.ood", "ood.detectors=[msp,gram]", "unknown detector 'gram'; known: ash, autoencoder, energy"),
    ("lab4.fgsm", "attack.name=cw", "unknown attack 'cw'; known: apgd, fgsm, pgd"),
    ("lab2.finetune", "finetune.strategies=[full,fancy]", "unknown strategy 'fancy'"),
    ("lab2.features", "features.classifiers=[svm,tree]", "unknown classifier 'tree'; known: knn, logreg, svm"),
    ("lab1.transfer", "classifiers=[svm,tree]", "unknown classifier 'tree'"),
    ("lab1.transfer", "source.data.name=cifar", "unknown dataset 'cifar'"),
])
def test_a_plugin_name_is_checked_against_the_registry(name, item, fragment):
    msg = refused(name, item)
    assert msg.startswith(f"--set {item}:") and fragment in msg


@pytest.mark.parametrize("name, item, fragment", [
    ("lab1.mlp", "log.sinks=[tensorboard,tensorboard]", "lists 'tensorboard' twice"),
    ("lab4.ood", "ood.detectors=[]", "needs at least one value"),
    ("lab4.ood", "ood.names=[]", "needs at least one value"),
    ("lab2.finetune", "finetune.strategies=[]", "needs at least one value"),
    ("lab4.fgsm", "attack.epsilons=[]", "needs at least one value"),
    ("lab4.fgsm", "attack.epsilons=[0.1,-0.1]", "value 2 (-0.1): must be >= 0"),
    ("lab4.odin", "odin.temperatures=[1,0]", "value 2 (0): must be > 0"),
    ("lab4.odin", "odin.val_fraction=0", "must be > 0"),
    ("lab4.adv-train", "adv.alpha=1.5", "must be <= 1"),
])
def test_lists_and_bounds(name, item, fragment):
    assert fragment in refused(name, item)


def test_precision_aliases_are_accepted_and_stored_as_their_names():
    assert cfg_of("lab1.mlp", sets=["train.precision=bf16"]).train.precision == "bf16-mixed"
    assert cfg_of("lab1.mlp", sets=["train.precision=32"]).train.precision == "fp32"
    assert cfg_of("lab2.finetune", sets=["finetune.amp=fp16"]).finetune.amp == "fp16-mixed"


def test_an_unbalanced_bracket_is_refused_not_taken_as_a_class_name():
    assert "unbalanced brackets" in refused("lab1.mlp", "data.classes=[0,1")
    assert "unbalanced brackets" in refused("lab1.mlp", "data.classes=0,1]")


def test_flags_are_checked_with_the_config():
    assert cfg_of("lab1.mlp", flags={"seed": 7, "device": "cpu"}).seed == 7
    with pytest.raises(DllabError, match=r"^--seed 4294967296: must be <= 4294967295$"):
        cfg_of("lab1.mlp", flags={"seed": 2**32})


def test_code_that_sets_a_bad_value_gets_a_one_line_error():
    cfg = cfg_of("lab1.mlp")
    with pytest.raises(DllabError, match="schedule=cosin: choose one of none, cosine, step, onecycle or warmup_cosine"):
        cfg.sgd.schedule = "cosin"
    assert cfg.sgd.schedule == "none"


def test_unknown_profile():
    with pytest.raises(DllabError, match="unknown profile 'fast'"):
        cfg_of(profile="fast")


def test_yaml_round_trip_keeps_types():
    cfg = cfg_of(sets=["optim.lr=0.01", "data.classes=[1,2]"])
    back = load_yaml(type(cfg), dump_yaml(cfg))
    assert back == cfg


@pytest.mark.parametrize("value, message", [(1.5, "train.epochs=1.5: expected int"),
                                            (True, "train.epochs=True: expected a number")])
def test_profile_dicts_are_type_checked(value, message):
    cfg = cfg_of()
    with pytest.raises(DllabError, match=message):
        apply_overrides(cfg, {"train.epochs": value}, "profile 'quick'")


def _register(name, config_cls, profiles):
    register("experiment", name, run="dllab.experiments.lab1.run:run_mlp", description="",
             profiles=profiles)(config_cls)


@pytest.mark.parametrize("profiles, message", [
    ({"quick": {"ood.nmes": ["heldout"]}}, "unknown config key 'ood.nmes' (did you mean 'ood.names'?)"),
    ({"smoke": {"attack.epsilons": [0.1]}}, "unknown config key 'attack.epsilons'"),  # a section this config lacks
    ({"smoke": {"ood.detectors": ["msp", "nosuch"]}}, "unknown detector 'nosuch'"),
    ({"fast": {"ood.names": ["heldout"]}}, "unknown profile 'fast'"),
    ({"smoke": {}, "quick": {}}, "has no 'paper' profile"),
])
def test_a_profile_that_names_no_config_field_or_a_missing_profile_fails_at_registration(profiles, message):
    from dllab.experiments.lab4.config import OODExpConfig
    from dllab.core.registry import _loaded

    full = {"smoke": {}, "quick": {}, "paper": {}, **profiles} if len(profiles) == 1 else profiles
    with pytest.raises(DllabError) as e:
        _register("test.bad-profile", OODExpConfig, full)
    assert message in str(e.value) and "test.bad-profile" in str(e.value)
    assert "test.bad-profile" not in _loaded["experiment"]


@pytest.mark.parametrize("profile", [{"finetune.lr.ful": 1e-4}, {"data": {"max_length": 32}}])
def test_text_profiles_take_flat_known_keys_only(profile):
    """One profile style: flat dotted keys; a nested section or a misspelt key fails at registration."""
    from dllab.experiments.lab2.config import FinetuneConfig

    with pytest.raises(DllabError, match="did you mean 'finetune.lr.full'|'data' is a section"):
        _register("test.bad-text-profile", FinetuneConfig, {"smoke": profile, "quick": {}, "paper": {}})


@pytest.mark.parametrize("name", experiment_names())
@pytest.mark.parametrize("profile", ["smoke", "quick", "paper"])
def test_every_experiment_builds_every_profile(name, profile):
    cfg = cfg_of(name, profile)
    assert cfg.profile == profile
    assert load_yaml(type(cfg), dump_yaml(cfg)) == cfg   # the config.yaml a run writes reads back the same
    assert type(cfg).model_validate(cfg.model_dump()) == cfg   # every default valid too


def test_lab1_paper_profiles_are_the_specs_settings():
    mlp = cfg_of("lab1.mlp", "paper")
    assert (mlp.data.name, mlp.width, mlp.train.epochs, mlp.model) == ("mnist", 64, 50, "basic_mlp")
    assert (mlp.sgd.name, mlp.sgd.lr, mlp.adam.name, mlp.adam.lr) == ("sgd", 0.1, "adam", 1e-3)
    deep = cfg_of("lab1.mlp-depth", "paper")
    assert (deep.width, deep.optim.name, deep.optim.lr, deep.optim.schedule) == (64, "adam", 1e-3, "none")
    cnn = cfg_of("lab1.cnn-depth", "paper")
    assert (cnn.data.name, cnn.base_channels, cnn.train.epochs, cnn.optim.name, cnn.optim.lr) == \
        ("cifar10", 64, 100, "adam", 1e-3)
    assert cnn.plain_depths == cnn.residual_depths == [5, 10, 15]
    assert cnn.data.train_limit in (0, None) and cnn.train.precision == "auto"   # per machine, train/precision.py


def test_cpu_threads_come_from_each_experiments_key():
    assert cfg_of("lab1.mlp", sets=["train.threads=1"]).cpu_threads() == 1
    assert cfg_of("lab2.features", sets=["features.threads=2"]).cpu_threads() == 2
    assert cfg_of("lab2.finetune", sets=["finetune.threads=3"]).cpu_threads() == 3


# --- a config.yaml written before the typed configs (today's run folders) ----------------------------------

# lab1.mlp's config.yaml as the dataclass configs wrote it (no `model` key yet; a precision alias as typed).
OLD_CONFIG_YAML = """profile: smoke
seed: 0
device: auto
log:
  sinks:
  - tensorboard
  every_steps: 50
data:
  name: imagefolder
  root: {root}
  classes: []
  val_fraction: 0.1
  train_limit: 0
  test_limit: 0
  augment: false
  allow_fallback: true
train:
  epochs: 1
  batch_size: 128
  eval_batch_size: 1024
  precision: {precision}
  compile: false
  channels_last: true
  grad_norms: false
  deterministic: false
  threads: 0
  sync_bn: false
width: 8
sgd:
  name: sgd
  lr: 0.1
  momentum: 0.0
  weight_decay: 0.0
  schedule: none
  step_size: 30
  gamma: 0.1
adam:
  name: adam
  lr: 0.001
  momentum: 0.9
  weight_decay: 0.0
  schedule: none
  step_size: 30
  gamma: 0.1
"""


def test_an_old_config_yaml_reads_back_with_the_new_keys_defaulted():
    from dllab.experiments.lab1.config import MLPConfig

    cfg = load_yaml(MLPConfig, OLD_CONFIG_YAML.format(root="/data", precision="bf16"))
    assert (cfg.data.root, cfg.width, cfg.train.precision, cfg.model) == ("/data", 8, "bf16-mixed", "basic_mlp")


def _old_run(folder, root) -> None:
    text = OLD_CONFIG_YAML.format(root=root, precision="fp32")
    folder.mkdir()
    (folder / "config.yaml").write_text(text)
    env = {"experiment": "lab1.mlp", "profile": "smoke", "seed": 0, "world_size": 1,
           "config_sha256": hashlib.sha256(text.encode()).hexdigest()}
    (folder / "env.json").write_text(json.dumps(env))


def test_a_run_folder_from_before_the_typed_configs_resumes(tmp_path, imagefolder):
    run = tmp_path / "old"
    _old_run(run, imagefolder)
    res = dllab_in_process("run", "--resume", run, "--quiet", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert json.loads((run / "metrics.json").read_text())["summary"]["adam.test_acc"] >= 0


def test_a_bad_value_in_config_yaml_is_named_with_the_file(tmp_path, imagefolder):
    run = tmp_path / "old"
    _old_run(run, imagefolder)
    text = (run / "config.yaml").read_text().replace("schedule: none", "schedule: sometimes", 1)
    (run / "config.yaml").write_text(text)
    env = json.loads((run / "env.json").read_text())
    env["config_sha256"] = hashlib.sha256(text.encode()).hexdigest()
    (run / "env.json").write_text(json.dumps(env))
    one_line_error(dllab_in_process("run", "--resume", run, cwd=tmp_path), f"{run / 'config.yaml'}: sgd.schedule=sometimes: "
                                                                       "choose one of none, cosine, step, onecycle or "
                                                                       "warmup_cosine")


# --- checked whole before any work: exit 2, one line, the key as typed, no folder ---------------------------

@pytest.mark.parametrize("experiment, item, fragment", [
    ("lab1.mlp", "sgd.schedule=foo", "--set sgd.schedule=foo: choose one of none, cosine, step, onecycle or "
                                     "warmup_cosine"),
    ("lab1.mlp", "train.precision=foo", "--set train.precision=foo: choose one of auto, fp32, bf16-mixed or "
                                        "fp16-mixed"),
    ("lab1.mlp", "sgd.name=foo", "--set sgd.name=foo: choose one of sgd, adam or adamw"),
    ("lab1.mlp", "data.classes=[0,1", "--set data.classes=[0,1: unbalanced brackets"),
    ("lab1.mlp", "data.name=mnst", "--set data.name=mnst: unknown dataset 'mnst' (did you mean 'mnist'?); known: "),
    ("lab4.ood", "ood.detectors=[msp,gram]", "--set ood.detectors=[msp,gram]: unknown detector 'gram'; known: ash, "
                                             "autoencoder, energy, knn, mahalanobis, max_logit, msp, odin, react, vim"),
])
def test_a_bad_value_fails_before_any_data_loads_or_folder_exists(experiment, item, fragment, tmp_path):
    # data.root names no folder: a check made after the data loaded would fail there, with another message.
    # The CLI runs in-process and says whether torch was imported: the config is checked before the run
    # command's module (and torch with it) loads, so a bad value costs no torch import.
    code = "import sys; from dllab.cli.main import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); " \
           "sys.exit(rc)"
    res = subprocess.run([sys.executable, "-c", code, "run", experiment, "--profile", "smoke", "--set",
                          f"data.root={tmp_path / 'nodata'}", "--set", item, "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300, env=os.environ)
    one_line_error(res, fragment)
    assert res.stdout.split() == ["False"], res.stdout
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()
