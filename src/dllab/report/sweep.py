"""A sweep's report: the table of points, the best one for ``--metric``, that metric against each swept key."""
from __future__ import annotations

from pathlib import Path

from dllab.core.files import save_png
from dllab.core.files import atomic_write_text
from dllab.report.render import Doc, md_text, page_title, with_std
from dllab.report import plots


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def metric_figure(rows: list[dict], keys: list[str], metric: str):
    """Per swept key: every point's metric (± std over seeds) at its value, one line per setting of the
    other keys, so an interaction shows as lines that cross."""
    panels, errors, xticks, logx = {}, {}, {}, []
    for key in keys:
        values = list(dict.fromkeys(r[key] for r in rows))
        numbers = [_number(v) for v in values]
        numeric = all(x is not None for x in numbers)
        position = dict(zip(values, numbers if numeric else range(len(values))))
        if not numeric:
            xticks[key] = values
        elif min(numbers) > 0 and max(numbers) / min(numbers) >= 10:
            logx.append(key)
        lines: dict[str, tuple[list, list]] = {}
        errs: dict[str, list] = {}
        for r in rows:
            others = ", ".join(f"{k}={r[k]}" for k in keys if k != key) or metric
            x, y = lines.setdefault(others, ([], []))
            x.append(position[r[key]])
            y.append(r[metric])
            errs.setdefault(others, []).append(r.get(f"{metric}.std", 0.0))
        panels[key], errors[key] = lines, errs
    return plots.line_panels(panels, metric, errors=errors, xticks=xticks, logx=tuple(logx))


def best_point(rows: list[dict], metric: str | None, goal: str) -> dict | None:
    """The row with the highest (goal max) or lowest (min) ``metric``; None when no row reports it."""
    ranked = [r for r in rows if isinstance(r.get(metric), (int, float))] if metric else []
    return (max if goal == "max" else min)(ranked, key=lambda r: r[metric]) if ranked else None


def write_sweep_report(folder: Path, spec, rows: list[dict], metric: str | None, goal: str) -> Path:
    """report.md + report.html in the sweep folder (and sweep_<metric>.png when a finished point reports
    ``metric``, the key the sweep checked before its points ran; None: nothing is ranked)."""
    keys = list(spec.grid)
    numbers = list(dict.fromkeys(k for r in rows for k in r if k not in ("point", *keys) and not k.endswith(".std")))
    doc = Doc(folder)
    doc.heading(f"sweep: {spec.experiment} ({spec.profile})", 1)
    doc.bullets([md_text("grid: " + "; ".join(f"{k} = {', '.join(v)}" for k, v in spec.grid.items())),
                 md_text(f"seeds: {spec.seeds or 'the profile default'}; --set: {', '.join(spec.sets) or 'none'}"),
                 f"{len(rows)} finished points; every point is a run folder here (dllab report / compare read them)"])
    ranked = [r for r in rows if isinstance(r.get(metric), (int, float))] if metric else []
    if ranked:
        best = best_point(ranked, metric, goal)
        doc.heading(f"Best point for {metric} ({goal})", 2)
        doc.para(f"{best['point']}: {metric} = {with_std(best, metric)} ("
                 + ", ".join(f"{k}={best[k]}" for k in keys) + ")")
    elif rows and metric:
        doc.para(f"No finished point reports {metric}, so none is ranked.")
    if rows:
        doc.heading("Points", 2)
        doc.table(["point", *keys, *numbers], [[r["point"], *(r[k] for k in keys), *(with_std(r, n) for n in numbers)]
                                               for r in rows])
    if ranked:
        png = save_png(metric_figure(ranked, keys, metric), folder / f"sweep_{metric}.png")
        doc.image(png, f"{metric} against each swept key (error bars: std over seeds)")
    md = folder / "report.md"
    atomic_write_text(md, doc.markdown())
    atomic_write_text(md.with_suffix(".html"), doc.to_html(page_title(f"sweep {spec.experiment}", spec.profile,
                                                                   "over " + ", ".join(keys))))
    return md

