"""Models, built by name through ``dllab.registry.build_model``."""
from . import cnn, decoder, mlp  # noqa: F401  (registers the models)
from .common import Normalize  # noqa: F401
