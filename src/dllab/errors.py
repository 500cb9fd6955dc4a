"""dllab's errors: one tree, so that a Python caller can catch what it can act on.

Every error a user can fix is a ``DllabError`` whose message is one line saying what is wrong and how to fix
it; the CLI prints it as ``dllab: error: <message>`` and exits with code 2. The subclasses say what kind of
input was wrong (README, "Python API"):

    DllabError
      ConfigError      a config key or value, an option or argument (seeds, grid, --out), an environment variable
      DataError        a dataset or a pretrained model that is missing, unreadable or damaged
      RunFolderError   a run or sweep folder that is damaged, untrusted (links, oversized or crafted files) or
                       locked by the process that writes it
      ResumeError      a run that cannot continue as asked (config.yaml edited since, other data, another number
                       of processes, settings given with a resume)
      PluginError      an unknown plug-in name (an experiment, model, detector...) or a plug-in that is broken

A few errors are none of these (a sweep whose points failed, too low an open-file limit) and are plain
``DllabError``s. Torch-free and import-free: every layer imports it.
"""
from __future__ import annotations


class DllabError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with code 2."""


class ConfigError(DllabError):
    """A bad setting: an unknown config key or a value outside its type, range or choices (from a profile,
    ``overrides``/``--set``, a grid, a saved config.yaml), an option or argument (seeds, ``out``), or an
    environment variable dllab reads."""


class DataError(DllabError):
    """A dataset or pretrained model that is missing, unreadable or damaged (the message names the file)."""


class RunFolderError(DllabError):
    """A run or sweep folder that cannot be used: damaged or missing files, links or other untrusted content,
    or locked by another process that is writing it."""


class ResumeError(DllabError):
    """A run that cannot continue as asked: its config.yaml was edited, its data or number of processes
    changed, or settings were given with the resume."""


class PluginError(DllabError):
    """An unknown plug-in name (experiment, model, dataset, detector, ...) or a plug-in that fails to load or
    register."""
