"""What a sweep asks for: the typed, bounded ``SweepSpec`` (sweep.json), the ``--grid`` parser, and the points.

sweep.json is input like any file dllab reads: a sweep folder is shared and edited by hand. It is read as a
regular file only, never through a symbolic link, at most MAX_FILE_BYTES, and checked against SweepSpec's
schema (pydantic, strict: a string is never taken for a list or a number, an unknown field is refused), with
limits on the grid (keys, values, the length of a value) and on the points it expands to. A spec typed on the
command line is held to the same schema. Every problem is one line naming the file (or the option); nothing
runs for minutes first. Torch-free.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import random
import re
from dataclasses import field
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from dllab import ConfigError, DllabError, ResumeError, RunFolderError
from dllab.core import untrusted
from dllab.core.config import PROFILES

SPEC_FILE = "sweep.json"
MAX_FILE_BYTES = 4 * 2**20   # sweep.json: room for MAX_VALUES values of MAX_VALUE_CHARS, escaped
MAX_KEYS = 20                # grid keys
MAX_VALUES = 1_000           # values in the whole grid: each is checked as `dllab run --set` checks it
MAX_VALUE_CHARS = 1_000      # a grid or --set value, a grid key (a long data path fits)
MAX_POINTS = 10_000          # points one sweep runs: the whole grid, or the --sample K drawn from it
MAX_GRID = 10**15            # the grid --sample draws from (its points are never listed, only the K drawn)
MAX_SEEDS = 1_000
MAX_SETS = 100
MAX_NAME = 200               # a point's folder name: the file system allows 255, the run's temp folder adds 14

MAX_CONFIG_KEYS = 1_000      # keys of a --config file (a complete one has about 30-80)

Text = Annotated[str, Field(min_length=1, max_length=MAX_VALUE_CHARS)]
# A --config file's value as YAML typed it (checked against the experiment's config by check_spec)
Scalar = Annotated[str, Field(max_length=MAX_VALUE_CHARS)] | bool | int | float | None
ConfigValue = Scalar | Annotated[list[Scalar], Field(max_length=MAX_VALUES)]


@dataclass(config=ConfigDict(strict=True, extra="forbid"))
class SweepSpec:
    """What a sweep computes; equal specs mean the same sweep (a rerun continues it)."""
    experiment: Annotated[str, Field(min_length=1, max_length=200)]
    profile: Literal[PROFILES]
    # key -> the values as typed, in the order given
    grid: Annotated[dict[Text, Annotated[list[Text], Field(min_length=1, max_length=MAX_VALUES)]],
                    Field(min_length=1, max_length=MAX_KEYS)]
    seeds: Annotated[list[int], Field(max_length=MAX_SEEDS)] | None = None
    sets: Annotated[list[Text], Field(max_length=MAX_SETS)] = field(default_factory=list)
    sample: Annotated[int, Field(ge=0)] = 0   # 0 = the whole Cartesian product; K = K points drawn with seed 0
    device: Literal["auto", "cpu", "cuda", "mps"] | None = None
    # a --config file's keys, flat and dotted: under --set and the grid, over the profile
    config: Annotated[dict[Text, ConfigValue], Field(max_length=MAX_CONFIG_KEYS)] = field(default_factory=dict)


_SCHEMA = TypeAdapter(SweepSpec)
# The command-line option behind each field, to name it in an error about a spec typed there.
_OPTIONS = {"experiment": "the experiment name", "profile": "--profile", "grid": "--grid", "seeds": "--seeds",
            "sets": "--set", "sample": "--sample", "device": "--device", "config": "--config"}


@dataclasses.dataclass
class Point:
    name: str
    values: dict[str, str]


def _problem(error: ValidationError, options: dict[str, str] | None = None) -> str:
    """The first problem pydantic found, as 'where: what' (``options`` renames the top-level field)."""
    first = error.errors(include_url=False)[0]
    loc = [f", value {part + 1}" if isinstance(part, int) else f" {part}" for part in first["loc"]]
    if loc and options:
        loc[0] = " " + options.get(first["loc"][0], str(first["loc"][0]))
    what = first["msg"].removeprefix("Value error, ")
    return f"{''.join(loc).strip()}: {what}" if loc else what


def new_spec(**fields) -> SweepSpec:
    """A SweepSpec from the command line's values; a value outside the schema is one line naming its option."""
    try:
        return SweepSpec(**fields)
    except ValidationError as e:
        raise ConfigError(_problem(e, _OPTIONS)) from e


def read_spec(folder: str) -> SweepSpec:
    """The SweepSpec of sweep folder ``folder`` (``--resume``); a missing, oversized, linked or malformed
    sweep.json is one line naming it."""
    path = Path(folder) / SPEC_FILE
    if not Path(folder).is_dir() or not (path.exists() or path.is_symlink()):
        raise ResumeError(f"--resume {folder}: not a sweep folder (no {SPEC_FILE})")
    return load_spec(path)


def load_spec(path: Path) -> SweepSpec:
    """sweep.json at ``path``, read bounded and checked against the schema and the size limits."""
    data = untrusted.read_bytes(path, MAX_FILE_BYTES)   # its errors name the file already
    try:
        spec = _SCHEMA.validate_json(data, strict=True)
        check_size(spec)
    except ValidationError as e:
        raise RunFolderError(f"{path} is not a valid sweep file: {_problem(e)}; fix it or start a new sweep") from e
    except DllabError as e:
        raise RunFolderError(f"{path} is not a valid sweep file: {e}") from e
    return spec


def check_size(spec: SweepSpec) -> int:
    """Refuse a grid too large to check or run (see the limits above); returns its number of points."""
    values = sum(len(v) for v in spec.grid.values())
    if values > MAX_VALUES:
        raise ConfigError(f"--grid: {values} values in all; a sweep takes at most {MAX_VALUES}")
    total = math.prod(len(v) for v in spec.grid.values())
    if spec.sample:
        if spec.sample > total:
            raise ConfigError(f"--sample {spec.sample}: the grid has only {total} points")
        if spec.sample > MAX_POINTS or total > MAX_GRID:
            raise ConfigError(f"--sample {spec.sample} of {total} points: a sweep runs at most {MAX_POINTS:,} "
                              f"points, drawn from at most {MAX_GRID:,}")
    elif total > MAX_POINTS:
        raise ConfigError(f"--grid: {total:,} points; a sweep runs at most {MAX_POINTS:,} (use --sample K to "
                          "draw K of them)")
    return total


def split_values(text: str) -> list[str]:
    """``1e-3,3e-3`` -> two values; commas inside brackets stay (``[0,1],[2,3]`` -> two lists)."""
    values, depth, cur = [], 0, ""
    for ch in text:
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            values.append(cur.strip())
            cur = ""
        else:
            cur += ch
    values.append(cur.strip())
    return [v for v in values if v]


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``--grid KEY=V1,V2`` options -> {key: [values]}; malformed, empty or repeated ones are one-line errors."""
    if not items:
        raise ConfigError("dllab sweep needs at least one --grid KEY=V1,V2 (e.g. --grid adam.lr=1e-3,3e-3)")
    grid: dict[str, list[str]] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item}: expected KEY=V1,V2,..., e.g. --grid adam.lr=1e-3,3e-3")
        key, text = (s.strip() for s in item.split("=", 1))
        values = split_values(text)
        if not values:
            raise ConfigError(f"--grid {item}: lists no value; give one or more comma-separated values")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one --grid")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise ConfigError(f"--grid {key} lists {dup[0]} twice")
        grid[key] = values
    return grid


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.=+-]+", "-", text).strip("-")


def point_name(index: int, width: int, values: dict[str, str]) -> str:
    """p<index>_key=value_...; past MAX_NAME characters, cut and ended with a digest of the whole name (the
    index keeps it unique). Names that fit are as they always were, so an older sweep continues."""
    name = f"p{index:0{width}d}_" + "_".join(_safe(f"{k}={v}") for k, v in values.items())
    if len(name) <= MAX_NAME:
        return name
    return name[:MAX_NAME - 11] + "-" + hashlib.sha256(name.encode()).hexdigest()[:10]


def expand(spec: SweepSpec) -> list[Point]:
    """The Cartesian product of the grid in the order given (or ``sample`` of its points, always the same
    ones for the same grid). Names are p<index in the full grid>_key=value_...: unique and sortable. The grid
    is never listed whole: a point's values are decoded from its index (the last key varies fastest, as in
    itertools.product)."""
    total = check_size(spec)
    index = range(total)
    if spec.sample:
        index = sorted(random.Random(0).sample(index, spec.sample))
    width = len(str(total - 1))
    points = []
    for i in index:
        values = _values_at(spec.grid, i)
        points.append(Point(point_name(i, width, values), values))
    return points


def _values_at(grid: dict[str, list[str]], index: int) -> dict[str, str]:
    """The values of the grid's point number ``index``."""
    values = {}
    for key in reversed(list(grid)):
        index, digit = divmod(index, len(grid[key]))
        values[key] = grid[key][digit]
    return dict(reversed(values.items()))
