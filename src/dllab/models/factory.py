"""A user's own model in an image experiment: a registered model name or a factory's import path, checked before
any work, and what an experiment needs the built model to have.

``--set model.factory=mypkg.nets:resnet18_cifar`` (lab1.cnn-depth, lab4.*; ``--set model=...`` in lab1.mlp) names
a callable that builds an ``nn.Module`` taking images in [0, 1] (``registry.build_model`` calls it with the keyword
arguments of the experiment that it accepts: ``num_classes``, ``in_channels``, ``image_size``, ``stats`` and the
experiment's own, e.g. ``depth``/``residual``/``base_channels``). A model registered in a plug-in package (entry
point group ``dllab.plugins``) is named by its registered name instead. The name is checked as the config is set
(the module imported, the attribute callable, ``num_classes`` accepted), so a typo is one line before any data
loads. Torch-free (importing the user's module may load torch; checking a registered name does not).
"""
from __future__ import annotations

import functools
from typing import Annotated, Any

from pydantic import AfterValidator

from dllab import ConfigError, DllabError
from dllab.core import registry


def check_model_name(name: str, allow_empty: bool = False) -> str:
    """``name`` if it is a registered model or the import path of a callable that takes ``num_classes`` (or
    ``**kwargs``); else a ValueError the config turns into its one-line error naming the key."""
    if not name and allow_empty:
        return name
    if not registry.is_import_path(name):
        if name not in registry.names("model"):
            raise ValueError(f"{registry.unknown('model', name)}; or give a factory as package.module:function")
        return name
    try:
        factory = registry.load_callable(name)
    except DllabError as e:
        raise ValueError(str(e)) from e
    if "num_classes" not in registry.accepted_kwargs(factory, {"num_classes": 0}):
        raise ValueError(f"{name} takes no num_classes argument; dllab builds the model for the data's classes, so "
                         "the factory must accept num_classes (and may accept in_channels, image_size, ...)")
    return name


# A model: a registered name or a factory's import path (lab1.mlp's `model`).
ModelName = Annotated[str, AfterValidator(check_model_name)]
# The same, or "" for the experiment's own model (`model.factory` of lab1.cnn-depth and lab4.*).
ModelFactory = Annotated[str, AfterValidator(functools.partial(check_model_name, allow_empty=True))]


def check_model_has(model: Any, needs: list[tuple[str, ...]], name: str, why: str) -> None:
    """One line when ``model`` (built from ``name``) lacks one of ``needs``: each a tuple of alternative
    attribute names (a method or a submodule), the first one the error names; ``why`` says what needs it."""
    for alternatives in needs:
        if not any(getattr(model, a, None) is not None for a in alternatives):
            names = " or ".join(f"'{a}'" for a in alternatives)
            raise ConfigError(f"model {name} ({type(model).__name__}) has no {names}; {why} (add it to the model, "
                              "or choose another model)")

