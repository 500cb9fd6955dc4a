"""``--config FILE`` of ``dllab run`` and ``dllab sweep``, and ``dllab run --print-config``. Torch-free: the file is
read and checked whole before torch loads, any folder exists or any data is read.

The file is a run's config.yaml (sections nested, or flat dotted keys as ``--set`` takes them) with optional
top-level ``experiment:`` and ``profile:`` keys; ``--print-config`` writes a complete one, and a run's own
config.yaml can be fed back (naming the experiment on the command line). Layers, lowest first: the class's
defaults, the profile, the file, ``--set`` (and a sweep's ``--grid``), then ``--seed``/``--device``.
"""
from __future__ import annotations

import argparse

from dllab import ConfigError, ResumeError
from dllab.core.config import ConfigFile, RunConfig, config_file_text, read_config_file, with_command_line


def config_option(args: argparse.Namespace) -> ConfigFile | None:
    """The file ``--config`` names, read and checked as data; the experiment and profile it names fill in those
    the command line leaves out (``args`` is updated). Also kept in ``args.config_file`` for the run."""
    args.config_file = None
    if getattr(args, "print_config", False) and args.resume:
        raise ConfigError("--print-config prints the config of a new run; a run's own is its config.yaml")
    if not args.config:
        return None
    if args.resume:
        raise ResumeError(f"--resume continues a run exactly as it started; drop --config {args.config}")
    file = read_config_file(args.config)
    args.experiment, args.profile = with_command_line(file, args.experiment, args.profile)
    args.config_file = file
    return file


def print_config(experiment: str, cfg: RunConfig) -> int:
    """``--print-config``: ``cfg`` as a complete config file (every key, resolved) on stdout; nothing runs."""
    print(config_file_text(experiment, cfg), end="")
    return 0

