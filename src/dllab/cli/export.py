"""``dllab export RUN [--variant V] --format onnx|torchscript``: a run's saved model as ONNX or TorchScript
(``dllab.export``), written only once a batch of real inputs gives the same logits through PyTorch and through
the export (to 1e-4). Torch-free to import (``dllab list`` loads this module): the API loads torch when it runs."""
from __future__ import annotations

import argparse

from dllab import api

FORMATS = ("onnx", "torchscript")   # as dllab.train.export.FORMATS, which imports torch


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", metavar="RUN_DIR", help="a finished run folder (one seed's folder of a multi-seed run)")
    p.add_argument("--variant", default=None, help="which of the run's models (default: its only one)")
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx (checked with onnxruntime) or "
                                                                    "torchscript (checked with torch.jit.load)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="where to write it (default: models/<variant>/model.onnx or model.ts in the run folder)")
    p.add_argument("--force", action="store_true", help="replace the output file if it exists")
    p.add_argument("--inputs", nargs="+", default=None, metavar="INPUT",
                   help="what the check runs instead of the run's own test data (needed when those are not on "
                        "this machine): image files or folders (image models), text files with one sentence a line "
                        "(text models)")
    p.add_argument("--tolerance", type=float, default=1e-4,
                   help="largest absolute difference of the logits allowed (default 1e-4)")


def command(args: argparse.Namespace, call=None) -> None:
    """The subcommand (``call``: the CLI's Invocation, unused): the file written, and the difference measured."""
    done = api.export(args.run, args.variant, args.format, out=args.out, force=args.force, inputs=args.inputs,
                      tolerance=args.tolerance)
    print(done)
