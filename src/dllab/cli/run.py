"""``dllab run``: the command line's arguments handed to ``dllab.api.run`` (one process, or one of torchrun's
processes: the API joins the others' process group), or ``--nproc N`` processes started through torchrun.
Torch-free to import: the API loads torch once the config has passed, so a bad value costs no torch import."""
from __future__ import annotations

import argparse
import functools
import sys

from dllab import api
from dllab.core import ranks
from dllab.report.render import console_summary
from dllab.runner.launch import tell_launcher


def run_command(args: argparse.Namespace, argv: list[str], started: list) -> int:
    """Run (or resume) what ``args`` asks; ``started`` receives the run folder as soon as it exists (the CLI's
    error lines name it). Prints the folder; returns the exit code. An error raised because another process
    of the job stopped carries ``peer_lost = True``, so that the CLI can say so without loading torch."""
    if args.nproc is not None:
        return _launch(args, argv)
    try:
        result = api.run(args.experiment, args.profile, args.sets, seeds=args.seeds, seed=args.seed,
                         device=args.device, out=args.out, quiet=args.quiet, resume=args.resume,
                         on_start=functools.partial(_on_start, started), command=argv,
                         config_file=args.config_file)
    except Exception as e:
        e.peer_lost = _peer_lost(e)
        raise
    if not ranks.is_main():
        return 0
    if not args.quiet:  # the numbers on the console; stdout stays just the run folder, for scripts
        print(console_summary(result.path), file=sys.stderr)
    print(result.path)
    return 0


def _launch(args: argparse.Namespace, argv: list[str]) -> int:
    """``--nproc N``: the config checked here, before torchrun starts the processes that run it."""
    if args.resume is None:
        api.config(args.experiment, args.profile, args.sets, seed=args.seed, seeds=args.seeds, device=args.device,
                   config_file=args.config_file)
    from dllab.runner.torchrun import launch

    return launch(args.nproc, argv)


def _peer_lost(error: BaseException) -> bool:
    if not ranks.launched():   # one process: no peer to lose (and torch.distributed need not load to say so)
        return False
    from dllab.core import distributed

    return distributed.peer_lost(error)


def _on_start(started: list, path) -> None:
    """The run folder ``path`` exists: the CLI's error lines may name it now, and under ``dllab run --nproc``
    rank 0 names it to the launcher (for its line about a process that died)."""
    started.append(path)
    if ranks.is_main():
        tell_launcher(path)
