"""Reports: one Markdown file and one self-contained HTML file (plots inlined as base64) per set of runs.

A report is built from what a run folder holds (env.json, metrics.json, report_state.json, PNGs), so
``dllab report`` can gather any finished runs later, and a run's own ``report.md`` is the same report for
one run. Each summary number sits beside the spec's reference value, when the spec gives one.
"""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
import os
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

from dllab import DllabError, RunFolderError
from dllab.core import untrusted
from dllab.core.untrusted import md_cell, md_text
from dllab.core.files import atomic_write_text
from dllab.core.registry import get_experiment
from dllab.report import ood_table
from dllab.store.folder import read_env
from dllab.store.records import read_metrics, read_report_state
from dllab.train.settings import METRICS_RULE

RunInfo = dict[str, Any]


@dataclass(frozen=True)
class Bold:
    """A table cell shown in bold (``**x**`` in Markdown, ``<b>x</b>`` in HTML): the best of its column."""
    text: str


def read_run(path: Path) -> RunInfo:
    path = Path(path).resolve()
    if path.is_dir():
        untrusted.check_tree(path)   # a link inside could copy another file of the user's into the report
    if not (path / "env.json").is_file() or not (path / "metrics.json").is_file():
        raise RunFolderError(f"{path} is not a finished run folder (env.json and metrics.json are needed)")
    env = read_env(path / "env.json")
    summary = read_metrics(path / "metrics.json")["summary"]
    state_file = path / "report_state.json"
    notes, tables, figures = read_report_state(state_file) if state_file.exists() else ([], [], [])
    return {"path": path, "env": env, "summary": summary, "notes": notes, "tables": tables, "figures": figures}


def _fmt(v: Any) -> str:
    """A value as reports print it: 4 decimals (1 from 1000 on); a number too large or too small for that
    in scientific form (1e+308, not 309 digits; 1.5e-07, not 0.0000)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, int):   # str() of a huge int is hundreds of digits (and refused past 4,300)
        return str(v) if abs(v) < 10**15 else format(Decimal(v), ".4g")
    if v != v:
        return "nan"
    if v != 0 and not 1e-4 <= abs(v) < 1e6:
        return f"{v:.4g}"
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


def with_std(numbers: dict, key: str) -> str:
    """``numbers[key]`` with `` ± <key>.std`` (the std over seeds) when there is one; — when it is missing."""
    if key not in numbers:
        return "—"
    std = numbers.get(f"{key}.std")
    return _fmt(numbers[key]) + (f" ± {_fmt(std)}" if std is not None else "")


def md_code(text: str) -> str:
    """``text`` as a Markdown code span (a command line), or as escaped text (``md_text``) when it holds a
    backtick (which would end the span early) or a ``<`` (which a span would show as ``&lt;``)."""
    return md_text(text) if "`" in text or "<" in text else f"`{md_text(text)}`"


def _md_cell(cell: str | Bold) -> str:
    return f"**{md_cell(cell.text)}**" if isinstance(cell, Bold) else md_cell(cell)


def _html_cell(cell: str | Bold) -> str:
    return f"<b>{html.escape(cell.text)}</b>" if isinstance(cell, Bold) else html.escape(cell)


def summary_rows(summary: dict[str, float], reference: dict[str, Any]) -> list[list[str]]:
    """key | this run (± std over seeds) | spec — one row per summary key, then spec-only keys."""
    rows = []
    for k, v in summary.items():
        if k.endswith(".std"):
            continue
        rows.append([k, with_std(summary, k), _fmt(reference[k]) if k in reference else ""])
    rows += [[k, "—", _fmt(v)] for k, v in reference.items() if k not in summary]
    return rows


def _experiment(name: str):
    """The registered experiment of a run folder, or None (a run of an experiment this version lacks)."""
    try:
        return get_experiment(name)
    except DllabError:
        return None


def console_summary(path: Path) -> str:
    """The finished run's headline numbers (with the spec's, where it gives them) as aligned text lines."""
    info = read_run(path)
    exp = _experiment(info["env"]["experiment"])
    rows = [r for r in summary_rows(info["summary"], _reference(info["env"], exp)) if r[1] != "—"]
    if not rows:
        return ""
    width = max(len(r[0]) for r in rows)
    lines = [f"  {k:<{width}}  {v}" + (f"   (spec {ref})" if ref else "") for k, v, ref in rows]
    seconds = info["env"].get("seconds")
    return "\n".join([f"summary ({seconds} s; report: {Path(path) / 'report.md'}):" if seconds is not None
                      else "summary:", *lines])


class Doc:
    """Just enough structure to write the same report as Markdown and as HTML."""

    def __init__(self, root: Path):
        self.root = root
        self.md: list[str] = []
        self.html: list[str] = []

    # Text from a run folder (a command line, a config value, a note) is escaped as it is written: md_text /
    # md_cell for the Markdown (a newline must not start a line of its own, nor a | a column, nor <script> be
    # HTML), html.escape for the HTML page.
    def heading(self, text: str, level: int = 2):
        text = untrusted.printable(text)
        self.md.append(f"{'#' * level} {md_text(text)}\n")
        self.html.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def para(self, text: str):
        text = untrusted.printable(text)
        self.md.append(md_text(text) + "\n")
        self.html.append(f"<p>{html.escape(text)}</p>")

    def bullets(self, items: list[str]):
        items = [untrusted.printable(i) for i in items]
        if items:
            self.md.append("\n".join(f"- {md_text(i)}" for i in items) + "\n")
            self.html.append("<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>")

    def table(self, header: list[str], rows: list[list[Any]]):
        cells = [[c if isinstance(c, Bold) else _fmt(c) for c in r] for r in rows]
        self.md.append("| " + " | ".join(map(md_cell, header)) + " |\n|" + "---|" * len(header) + "\n"
                       + "".join("| " + " | ".join(map(_md_cell, r)) + " |\n" for r in cells))
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{_html_cell(c)}</td>" for c in r) + "</tr>" for r in cells)
        self.html.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def image(self, file: Path, caption: str):
        # Percent-encoded: a space, parenthesis or newline in a folder name would end the link early.
        rel = quote(Path(os.path.relpath(file, self.root)).as_posix(), safe="/=@+,")
        self.md.append(f"![{md_text(caption)}]({rel})\n\n*{md_text(caption)}*\n")
        if file.exists():
            data = base64.b64encode(untrusted.read_bytes(file, 64 * untrusted.MiB)).decode()
            self.html.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
                             f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def markdown(self) -> str:
        return "\n".join(self.md)

    def to_html(self, title: str) -> str:
        style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
                 "font-size:14px;text-align:left}th{background:#f3f3f3}img{max-width:100%}"
                 "figcaption{font-style:italic;font-size:13px;color:#555}code{background:#f3f3f3}")
        title = html.escape(untrusted.printable(title))
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                f"<style>{style}</style></head><body>{''.join(self.html)}</body></html>\n")


def results_tables(doc: Doc, rows: list[list[str]]) -> None:
    """The summary beside the spec's numbers where the spec gives one, and the other results in a table of their
    own: most experiments' specs give a few numbers, and a spec column empty in most rows hides them."""
    beside = [r for r in rows if r[2]]
    alone = [r[:2] for r in rows if not r[2]]
    if beside:
        doc.heading("Results beside the spec", 3)
        doc.table(["metric", "this run", "spec"], beside)
    if alone:
        doc.heading("Results with no spec number" if beside else "Results (the spec gives no number for them)", 3)
        doc.table(["metric", "this run"], alone)
    if any(r[0].endswith(".test_acc_last") for r in rows):   # a run of trained variants: say which weights
        doc.para(f"Which weights: {METRICS_RULE}.")


def _benchmark_cell(cell: ood_table.Cell | None, best: set) -> str | Bold:
    if cell is None:
        return "—"
    text = _fmt(cell.mean) + (f" ± {_fmt(cell.std)}" if cell.std is not None else "")
    return Bold(text) if cell in best else text


def benchmark_table(doc: Doc, summary: dict[str, float]) -> bool:
    """The near/far OOD benchmark of ``summary`` (``report.ood_table``), with the sets each group used;
    False (nothing written) when the run has none."""
    cells = ood_table.benchmark_cells(summary)
    if not cells:
        return False
    header, rows = ood_table.table_rows(cells)
    best = ood_table.best_cells(cells)
    doc.heading(ood_table.TITLE, 3)
    doc.para("; ".join(f"{g}-OOD: {', '.join(sets)}" for g, sets in ood_table.groups_used(cells).items() if sets)
             + f" (the numbers are also in {ood_table.CSV_FILE} and metrics.json)")
    doc.table(header, [[d, *(_benchmark_cell(c, best) for c in r)] for d, r in rows])
    return True


def _part(env: dict, key: str) -> str | None:
    """The run's ``dataset`` or ``model`` name as env.json records it (None: an older run, a text experiment)."""
    return env[key] if isinstance(env.get(key), str) else None


def title_of(env: dict) -> str:
    """A run's title: its experiment, and the dataset when it is the user's (not the one the spec is about)."""
    own = env.get("spec_data") is False and _part(env, "dataset")
    return f"{env['experiment']} on {env['dataset']}" if own else env["experiment"]


def page_title(*parts: str, dates: list[str] = ()) -> str:
    """An HTML page's ``<title>``: what the page is about (``parts``) and when, "lab1.mlp · quick · 2026-12-07";
    ``dates`` (ISO timestamps, as env.json's ``started``) give the date or span, else today's date."""
    days = sorted({d[:10] for d in dates if isinstance(d, str) and d})
    when = (days[0] if len(days) == 1 else f"{days[0]} to {days[-1]}") if days else time.strftime("%Y-%m-%d")
    return " · ".join([*(p for p in parts if p), when])


def runs_title(runs: list[RunInfo]) -> str:
    """The page title of a report of ``runs``: each run's experiment and profile (once each), and their dates."""
    what = dict.fromkeys(f"{title_of(r['env'])} · {r['env'].get('profile')}" for r in runs)
    return page_title(*what, dates=[r["env"].get("started") for r in runs])


def _spec_text(env: dict, exp) -> tuple[dict, str, str]:
    """(reference numbers, claims, description) of the spec for this run. For a run on another dataset than the
    experiment's own, the spec's prose (which names its dataset) gives way to one sentence naming what the run
    used; the spec's numbers stay in their column (experiments say in their notes how far they compare)."""
    if exp is None:
        return {}, "", ""
    reference = _reference(env, exp)
    if env.get("spec_data") is False and _part(env, "dataset"):
        model = f" with the model {env['model']}" if _part(env, "model") else ""
        return reference, "", (f"{exp.name} run on the dataset {env['dataset']}{model}. The spec's description "
                               "and claims are about its own dataset, so they are left out here; its numbers, "
                               "where it gives any, are in the spec column for reference only.")
    return reference, exp.notes, exp.description


def _reference(env: dict, exp) -> dict[str, Any]:
    """The spec's numbers that describe this run: the experiment's, less those env.json's ``spec_off`` names."""
    return exp.reference_without(spec_off(env)) if exp is not None else {}


def spec_off(env: dict) -> dict[str, str]:
    """The spec's numbers that the run says do not describe it (env.json ``spec_off``: key -> why; e.g. a model
    trained with other settings than the spec's): left out of the spec column, the reasons stated once."""
    off = env.get("spec_off")
    return {k: v for k, v in off.items() if isinstance(v, str)} if isinstance(off, dict) else {}


def _parts_line(env: dict) -> list[str]:
    """The report's bullet naming the run's dataset and model, when env.json records them."""
    named = [f"{k}: {env[k]}" for k in ("dataset", "model") if _part(env, k)]
    return [", ".join(named)] if named else []


def render(runs: list[RunInfo], root: Path) -> Doc:
    doc = Doc(root)
    title = title_of(runs[0]["env"]) if len(runs) == 1 else "dllab report"
    doc.heading(title, 1)
    for info in runs:
        env = info["env"]
        name = env["experiment"]
        reference, claims, description = _spec_text(env, _experiment(name))
        if len(runs) > 1:
            doc.heading(f"{title_of(env)} — {info['path'].name}", 2)
        if description:
            doc.para(description)
        doc.bullets([f"command: {md_code(str(env.get('command', '')))}",
                     f"profile: {env.get('profile')}, seed(s): {env.get('seeds', env.get('seed'))}, "
                     f"device: {env.get('device')}, precision: {env.get('precision', 'see config')}",
                     *_parts_line(env),
                     f"data: {env.get('data', '—')}",
                     f"git commit: {env.get('git_commit')}, torch {_versions(env).get('torch')}",
                     f"wall time: {env.get('seconds', '—')} s"])
        # The benchmark's numbers are shown once, in their table, not again as rows of the results tables.
        shown = benchmark_table(doc, info["summary"])
        rest = {k: v for k, v in info["summary"].items() if not (shown and ood_table.is_benchmark_key(k))}
        results_tables(doc, summary_rows(rest, reference))
        if off := spec_off(env):
            doc.para("Not beside the spec's numbers: " + "; ".join(dict.fromkeys(off.values())) + ".")
        if claims:
            doc.para("The spec says: " + claims)
        for t_title, header, rows in info["tables"]:
            doc.heading(t_title, 3)
            doc.table(header, rows)
        if info["figures"]:
            doc.heading("Plots", 3)
            for caption, file in info["figures"]:
                # Only the run's own PNGs: a report of a downloaded run folder must not inline other files.
                figure = (info["path"] / file).resolve()
                if figure.suffix == ".png" and figure.is_relative_to(info["path"]):
                    doc.image(figure, caption)
        if info["notes"]:
            doc.heading("Notes", 3)
            doc.bullets(info["notes"])
    return doc


def _versions(env: dict) -> dict:
    return env["versions"] if isinstance(env.get("versions"), dict) else {}


def write_report(run_dirs: list[Path], out: Path) -> tuple[Path, Path]:
    """Write ``out`` (.md) and its .html twin for the given run folders."""
    runs = [read_run(Path(p)) for p in run_dirs]
    out = Path(out)
    md_path = out if out.suffix == ".md" else out.with_suffix(".md")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    doc = render(runs, md_path.parent.resolve())  # image links are relative to the report's folder
    atomic_write_text(md_path, doc.markdown())
    html_path = md_path.with_suffix(".html")
    atomic_write_text(html_path, doc.to_html(runs_title(runs)))
    return md_path, html_path
