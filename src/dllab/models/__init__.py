"""Models, each registered by name (``@register("model", ...)``) and built through ``dllab.core.registry.build_model``."""
