"""Experiments: one package per lab. Its ``config`` module declares each experiment, torch-free (configs,
profiles, the spec's numbers, ``@register("experiment", ..., run="module:function")`` on the config class),
so the registry's static index finds it and the CLI checks a whole config before torch loads; its ``run``
module wires the layers below together and is imported when the experiment runs (``Experiment.run``).
``common`` holds the wiring the labs share."""
