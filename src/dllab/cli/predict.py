"""``dllab predict RUN [--variant V] INPUT...``: a run's saved model (``dllab.predict``) over image files or folders
(image runs) or sentences and text files of them (text runs), one row per input as a table, or JSON with
``--json``. Torch-free to import: the API loads torch when it runs."""
from __future__ import annotations

import argparse
import json

from dllab import api
from dllab.core.untrusted import printable


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a finished run folder (one seed's folder of a multi-seed run)")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="image runs: image files, or folders of them; text runs: sentences (quoted), or text files "
                        "of sentences, one per line (an INPUT that names an existing file is read as one)")
    p.add_argument("--file", action="store_true",
                   help="text runs: every INPUT is a text file of sentences (a missing file is then an error, not "
                        "a sentence)")
    p.add_argument("--variant", default=None, help="which of the run's models (default: its only one)")
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per input")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--batch-size", type=int, default=256, help="inputs per forward pass (default 256)")
    p.add_argument("--detector", default=None, metavar="NAME",
                   help="Lab 4 runs: the saved OOD detector whose score and decision to show (default: energy "
                        "when it was fitted, else the first saved)")


def command(args: argparse.Namespace, call=None) -> None:
    """The subcommand (``call``: the CLI's Invocation, unused)."""
    inputs, files = ([], args.inputs) if args.file else (args.inputs, [])
    rows = api.predict(args.run, inputs, args.variant, device=args.device, batch_size=args.batch_size, files=files,
                       detector=args.detector)
    print(json.dumps(rows, indent=2) if args.json else table(rows))


def table(rows: list[dict]) -> str:
    """Aligned columns: input, class, probability ("-" for a classifier without one: LinearSVC), and a Lab 4
    model's OOD score (with its detector) and decision; file names, sentences and class names printed with control
    characters escaped."""
    ood = bool(rows) and "decision" in rows[0]
    head = ("input", "class", "probability") + ((f"{rows[0]['detector']} score", "ood/id") if ood else ())
    cells = [head] + [(printable(r["input"]), printable(r["class"]),
                       "-" if r["probability"] is None else f"{r['probability']:.4f}")
                      + ((f"{r['ood_score']:.4g}", r["decision"]) if ood else ()) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    return "\n".join("  ".join(f"{v:>{w}}" if i in (2, 3) else f"{v:<{w}}" for i, (v, w) in
                                enumerate(zip(c, widths))).rstrip() for c in cells)
