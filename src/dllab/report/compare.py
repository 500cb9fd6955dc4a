"""``dllab compare RUN_DIR...``: runs side by side, in one Markdown + HTML report.

Three parts: the config keys whose values differ (what was changed between the runs), every summary number
per run (± std over seeds), and the training curves of every run and variant overlaid, one panel per
history column. A run with several seeds shows its first seed's curves, as its own report does.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from dllab import ConfigError, RunFolderError
from dllab.store.records import read_history as read_history_csv
from dllab.core import untrusted
from dllab.core.config import flat_yaml
from dllab.core.files import save_png
from dllab.core.files import atomic_write_text
from dllab.report.render import Doc, md_code, page_title, read_run, with_std
from dllab.report import plots

CURVES = ("train_loss", "val_loss", "train_acc", "val_acc")


def read_config(path: Path) -> dict[str, Any]:
    if not (path / "config.yaml").exists():
        raise RunFolderError(f"{path / 'config.yaml'} is missing; pass a run folder made by `dllab run`")
    return flat_yaml(untrusted.read_text(path / "config.yaml"), str(path / "config.yaml"))


def read_history(path: Path, env: dict) -> list[dict]:
    seeds = env.get("seeds")
    hist = path / "history.csv"
    if not hist.exists() and isinstance(seeds, list) and seeds:
        if not all(type(s) is int and s >= 0 for s in seeds):   # a path made of it must stay in the folder
            raise RunFolderError(f"{path / 'env.json'} is damaged: 'seeds' is not a list of seed numbers")
        hist = path / f"seed{seeds[0]}" / "history.csv"
    return read_history_csv(hist)


def labels(paths: list[Path]) -> list[str]:
    """The shortest path tails that tell the runs apart (their folder names, if those differ)."""
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys = list(dict.fromkeys(k for c in configs for k in c))
    return [k for k in keys if len({repr(c.get(k, "—")) for c in configs}) > 1]


def curves_figure(histories: dict[str, list[dict]]):
    """One panel per history column, a line per run and variant."""
    panels: dict[str, dict[str, tuple[list, list]]] = {}
    for col in CURVES:
        lines = {}
        for label, rows in histories.items():
            for variant in dict.fromkeys(r.get("variant", "") for r in rows):
                pts = [(r["epoch"], r[col]) for r in rows if r.get("variant", "") == variant and col in r and "epoch" in r]
                if pts:
                    lines[f"{label} {variant}".strip()] = ([p[0] for p in pts], [p[1] for p in pts])
        if lines:
            panels[col] = lines
    if not panels:
        return None
    fig = plots.line_panels(panels, "", title="training curves (x: epoch)")
    for ax in fig.axes:
        plots.epoch_axis(ax)
    return fig


def compare(run_dirs: list[str], out: str, force: bool = False) -> tuple[Path, Path]:
    if len(run_dirs) < 2:
        raise ConfigError("dllab compare needs at least two run folders")
    if not out.strip():
        raise ConfigError("--out is empty; give a file name such as --out compare.md")
    md = Path(out) if Path(out).suffix == ".md" else Path(out).with_suffix(".md")
    if not force:
        for f in (md, md.with_suffix(".html"), md.with_suffix(".png")):
            if f.exists():
                raise ConfigError(f"{f} already exists; choose another --out, or add --force to replace it")
    runs = [read_run(Path(p)) for p in run_dirs]
    names = labels([r["path"] for r in runs])
    configs = [read_config(r["path"]) for r in runs]
    diff = differing_keys(configs)

    doc = Doc(md.parent.resolve())
    doc.heading("dllab compare", 1)
    doc.bullets([f"{n}: {r['env']['experiment']} ({r['env'].get('profile')}), {md_code(str(r['path']))}"
                 for n, r in zip(names, runs)])
    doc.heading("Config keys that differ", 2)
    if diff:
        doc.table(["key", *names], [[k, *(c.get(k, "—") for c in configs)] for k in diff])
    else:
        doc.para("none: the runs have the same config")
    doc.heading("Summary", 2)
    keys = list(dict.fromkeys(k for r in runs for k in r["summary"] if not k.endswith(".std")))
    doc.table(["metric", *names], [[k, *(with_std(r["summary"], k) for r in runs)] for k in keys])
    fig = curves_figure({n: read_history(r["path"], r["env"]) for n, r in zip(names, runs)})
    if fig is not None:
        png = save_png(fig, md.with_suffix(".png"))
        doc.heading("Training curves", 2)
        doc.image(png.resolve(), "every run's history overlaid (first seed of a multi-seed run)")
    atomic_write_text(md, doc.markdown())
    atomic_write_text(md.with_suffix(".html"), doc.to_html(page_title("compare " + ", ".join(names))))
    return md, md.with_suffix(".html")

