"""Transfer learning's variants of a trained model on a new dataset (spec Ex. 2.1): which parts each one
freezes, its optimiser, and what the report says it trains.

``head`` trains fc + ReLU + a new classifier, ``full_adam``/``full_sgd`` every layer, ``partial`` all but the
stem and the first ``freeze_blocks`` blocks; ``scratch`` is the source's architecture with random weights.

A user's model (``source.factory``) takes part through what timm's models have: ``reset_classifier(num_classes)``
for every fine-tuning variant (its ``head`` then trains that new classifier alone, everything the source had stays
frozen: a user's model has no spec'd fc layer), a ``stem`` and a sequence of ``blocks`` (or ``layers``, ``stages``)
for ``partial``, and ``features`` or ``forward_features`` for the classical classifiers (features.image).
``check_source_model`` names what one lacks before anything trains.
"""
from __future__ import annotations

import copy

from torch import nn

from dllab import ConfigError
from dllab.core.config import OptimConfig
from dllab.models.factory import check_model_has
from dllab.train.reuse import SavedCNN
from dllab.train.settings import VARIANTS
from dllab.train.variants import Variant

FINE_TUNED = ("head", "full_adam", "full_sgd", "partial")   # the variants that start from the source's weights
BLOCKS = ("blocks", "layers", "stages")   # a model's sequence of blocks: dllab's cnn and timm's names


def check_variants(names: list[str]) -> None:
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"variants: unknown '{unknown[0]}'; choose from {', '.join(VARIANTS)}")


def _needs(variants: list[str], classifiers: list[str]) -> list[tuple[tuple[str, ...], str]]:
    """What a user's source model must have besides ``forward`` for ``variants`` and ``classifiers``: (alternative
    attribute names, why)."""
    tuned = [v for v in dict.fromkeys(variants) if v in FINE_TUNED]
    out = []
    if classifiers:
        out.append((("features", "forward_features"), f"the classifiers {', '.join(classifiers)} are fitted on the "
                    "source's frozen features (or set classifiers=[])"))
    if tuned:
        out.append((("reset_classifier",), f"fine-tuning ({', '.join(tuned)}) calls reset_classifier(num_classes) "
                    "for a new classifier for the target's classes (or set variants=[scratch])"))
    if "partial" in variants:
        why = "partial freezes the stem and the first freeze_blocks blocks (or leave partial out of variants)"
        out += [(("stem",), why), (BLOCKS, why)]
    return out


def check_source_model(model: nn.Module, name: str, variants: list[str], classifiers: list[str],
                       freeze_blocks: int, num_classes: int) -> None:
    """One line before any training when the user's model ``name`` lacks what ``variants`` and ``classifiers`` call,
    its reset_classifier(``num_classes``) fails, or ``partial`` would freeze more blocks than it has."""
    for alternatives, why in _needs(variants, classifiers):
        check_model_has(model, [alternatives], name, why)
    if any(v in FINE_TUNED for v in variants):
        _kept_by_reset(model, name, num_classes)
    if "partial" in variants:
        _check_freeze_blocks(model, freeze_blocks)


def _blocks(model: nn.Module) -> tuple[str, int]:
    """(the name of ``model``'s sequence of blocks, how many it holds)."""
    attr = next(a for a in BLOCKS if getattr(model, a, None) is not None)
    blocks = getattr(model, attr)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise ConfigError(f"{type(model).__name__}.{attr} is a {type(blocks).__name__}, not a sequence of blocks "
                          "(nn.Sequential or nn.ModuleList) that partial can freeze the first freeze_blocks of")
    return attr, len(blocks)


def _check_freeze_blocks(model: nn.Module, freeze_blocks: int) -> None:
    depth = _blocks(model)[1]
    if not 0 <= freeze_blocks <= depth:
        raise ConfigError(f"freeze_blocks={freeze_blocks}: choose 0..{depth} (the source has {depth} blocks)")


def _kept_by_reset(model: nn.Module, name: str, num_classes: int) -> list[str]:
    """The names of the parameters of ``model`` that its ``reset_classifier`` keeps: all but its new classifier's,
    however the model names it (found on a copy: the source itself keeps its classifier)."""
    probe = copy.deepcopy(model)
    before = list(probe.parameters())   # held, so that no new parameter can take an old one's id
    try:
        probe.reset_classifier(num_classes)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ConfigError(f"model {name}: reset_classifier({num_classes}) failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); it must take the number of classes") from e
    old = {id(p) for p in before}
    kept = [n for n, p in probe.named_parameters() if id(p) in old]
    if len(kept) == len(list(probe.parameters())):
        raise ConfigError(f"model {name}: reset_classifier({num_classes}) made no new parameters; it must replace "
                          "the classifier with a new layer for the target's classes")
    return kept


def frozen_prefixes(variant: str, freeze_blocks: int) -> list[str]:
    """state_dict prefixes that ``variant`` of the cnn leaves untouched (weights and BatchNorm statistics)."""
    if variant == "head":
        return ["normalize.", "stem.", "blocks."]
    if variant == "partial":
        return ["normalize.", "stem."] + [f"blocks.{i}." for i in range(freeze_blocks)]
    return []


def _user_frozen(variant: str, source: nn.Module, factory: str, freeze_blocks: int, num_classes: int) -> list[str]:
    """What ``variant`` of a user's model keeps frozen: for head every parameter the source had (exact names), for
    partial its stem and first ``freeze_blocks`` blocks."""
    if variant == "head":
        return _kept_by_reset(source, factory, num_classes)
    if variant == "partial":
        return ["stem."] + [f"{_blocks(source)[0]}.{i}." for i in range(freeze_blocks)]
    return []


def fine_tune_variant(name: str, source: nn.Module, freeze_blocks: int = 0, factory: str = "cnn",
                      num_classes: int = 0) -> Variant:
    """``name`` (head, full_*, partial): a copy of ``source`` (built by ``factory``) with a new classifier for the
    target's ``num_classes`` classes, the variant's parts frozen. The spec's model defines ``fc = Linear(C, C)``
    that its forward never calls; here the cnn's ``head`` trains fc + ReLU + classifier and nothing else."""
    if name == "partial":
        _check_freeze_blocks(source, freeze_blocks)
    if factory != "cnn":
        return Variant(name, factory, start=source,
                       frozen=tuple(_user_frozen(name, source, factory, freeze_blocks, num_classes)))
    return Variant(name, "cnn", {"hidden": source.num_features if name == "head" else 0}, start=source,
                   frozen=tuple(frozen_prefixes(name, freeze_blocks)))


def _trains(source: SavedCNN, k: int, names: list[str]) -> dict[str, str]:
    """The report's "trains" column of head and partial (the other variants train all layers)."""
    if source.name != "cnn":
        trains = {"head": "the new classifier (reset_classifier); the rest frozen"}
        if "partial" in names:   # a user's model has blocks only when partial needs them
            attr, depth = _blocks(source.model)
            trains["partial"] = f"all but the stem and {attr} 1-{k} (of {depth})"
        return trains
    depth = len(source.model.blocks)
    return {"head": "fc + ReLU + classifier",
            "partial": f"blocks {k + 1}-{depth} + classifier (stem, blocks 1-{k} frozen)"}


def target_variants(names: list[str], source: SavedCNN, adam: OptimConfig, sgd: OptimConfig,
                    freeze_blocks: int, num_classes: int = 0) -> list[Variant]:
    """The variants ``names`` with their optimiser (``sgd`` for full_sgd, else ``adam``) and report columns; a
    user's model is given a new classifier for the target's ``num_classes`` classes."""
    trains = _trains(source, freeze_blocks, names)
    out = []
    for name in names:
        v = (Variant(name, source.name, source.arch) if name == "scratch"
             else fine_tune_variant(name, source.model, freeze_blocks, source.name, num_classes))
        o = v.optim = sgd if name == "full_sgd" else adam
        v.meta = {"init": "random" if name == "scratch" else "source", "trains": trains.get(name, "all layers"),
                  "optimizer": f"{o.name} lr {o.lr:g}" + (f" momentum {o.momentum:g}" if o.name == "sgd" else "")}
        out.append(v)
    return out
