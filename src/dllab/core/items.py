"""What the report functions return: tables, figures and notes, built from numbers alone.

The report functions (report.variants, .transfer, .robustness, .text) need no run folder: each returns the
items it built, as a list in the order the report shows them (empty when there is nothing to show), and the
experiment puts them into its run with ``run.add(*items)``, which saves the figures, writes the report state
and sends the figures to the tracking sinks. Torch- and matplotlib-free.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Table:
    """A table of the report: ``rows`` of cells under ``header``; a later table with the same title replaces
    it (a resumed run redraws its tables)."""
    title: str
    header: list[str]
    rows: list[list[Any]]


@dataclass(frozen=True)
class Figure:
    """A matplotlib figure to save as ``file`` (a PNG in the run folder), shown in the report with its
    caption; ``run.add`` saves and closes it."""
    fig: Any
    file: str
    caption: str


@dataclass(frozen=True)
class Note:
    """A line under the report's "Notes": a fallback, a skipped part, a caveat."""
    text: str


Item = Union[Table, Figure, Note]
