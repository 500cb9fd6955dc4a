"""Experiments: each module's ``@register("experiment", ...)`` run functions, found by the registry's static
index and imported when one of them is asked for (``registry.get_experiment``)."""
