"""Transfer learning's variants of a trained CNN on a new dataset (spec Ex. 2.1): which parts each one
freezes, its optimiser, and what the report says it trains.

``head`` trains fc + ReLU + a new classifier, ``full_adam``/``full_sgd`` every layer, ``partial`` all but the
stem and the first ``freeze_blocks`` blocks; ``scratch`` is the source's architecture with random weights.
"""
from __future__ import annotations

from dllab import ConfigError
from dllab.core.config import OptimConfig
from dllab.train.reuse import SavedCNN
from dllab.train.settings import VARIANTS
from dllab.train.variants import Variant


def check_variants(names: list[str]) -> None:
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise ConfigError(f"variants: unknown '{unknown[0]}'; choose from {', '.join(VARIANTS)}")


def frozen_prefixes(variant: str, freeze_blocks: int) -> list[str]:
    """state_dict prefixes that ``variant`` leaves untouched (weights and BatchNorm statistics)."""
    if variant == "head":
        return ["normalize.", "stem.", "blocks."]
    if variant == "partial":
        return ["normalize.", "stem."] + [f"blocks.{i}." for i in range(freeze_blocks)]
    return []


def fine_tune_variant(name: str, source, freeze_blocks: int = 0) -> Variant:
    """``name`` (head, full_*, partial): a copy of the cnn ``source`` with a new classifier for the target's
    classes, the variant's parts frozen. The spec's model defines ``fc = Linear(C, C)`` that its forward never
    calls; here ``head`` trains fc + ReLU + classifier and nothing else."""
    depth = len(source.blocks)
    if name == "partial" and not 0 <= freeze_blocks <= depth:
        raise ConfigError(f"freeze_blocks={freeze_blocks}: choose 0..{depth} (the source has {depth} blocks)")
    return Variant(name, "cnn", {"hidden": source.num_features if name == "head" else 0}, start=source,
                   frozen=tuple(frozen_prefixes(name, freeze_blocks)))


def target_variants(names: list[str], source: SavedCNN, adam: OptimConfig, sgd: OptimConfig,
                    freeze_blocks: int) -> list[Variant]:
    """The variants ``names`` with their optimiser (``sgd`` for full_sgd, else ``adam``) and report columns."""
    k, depth = freeze_blocks, len(source.model.blocks)
    trains = {"head": "fc + ReLU + classifier",
              "partial": f"blocks {k + 1}-{depth} + classifier (stem, blocks 1-{k} frozen)"}
    out = []
    for name in names:
        v = Variant(name, "cnn", source.arch) if name == "scratch" else fine_tune_variant(name, source.model, k)
        o = v.optim = sgd if name == "full_sgd" else adam
        v.meta = {"init": "random" if name == "scratch" else "source", "trains": trains.get(name, "all layers"),
                  "optimizer": f"{o.name} lr {o.lr:g}" + (f" momentum {o.momentum:g}" if o.name == "sgd" else "")}
        out.append(v)
    return out
