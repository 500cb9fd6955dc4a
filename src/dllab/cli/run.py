"""``dllab run`` once its config has passed (``cli.main`` checks it before torch loads, and imports this module
only then): one process, ``--nproc N`` of them through torchrun, or one of torchrun's processes, which joins
the others' process group for the run and leaves it after."""
from __future__ import annotations

import argparse
import functools
import sys

from dllab.core import distributed, ranks
from dllab.report.render import console_summary
from dllab.runner import experiment
from dllab.runner.launch import tell_launcher
from dllab.runner.torchrun import launch


def run_command(args: argparse.Namespace, argv: list[str], started: list) -> int:
    """Run (or resume) what ``args`` asks; ``started`` receives the run folder as soon as it exists (the CLI's
    error lines name it). Prints the folder; returns the exit code. An error raised because another process
    of the job stopped carries ``peer_lost = True``, so that the CLI can say so without loading torch."""
    if args.nproc is not None:
        return launch(args.nproc, argv)
    try:
        distributed.init()
        run = experiment.run_experiment(args.experiment, args.profile, args.sets, args.seed, args.seeds, args.device,
                                        args.out, args.resume, args.quiet, argv,
                                        on_start=functools.partial(_on_start, started),
                                        config_file=args.config_file)
        if not ranks.is_main():
            return 0
        if not args.quiet:  # the numbers on the console; stdout stays just the run folder, for scripts
            print(console_summary(run.path), file=sys.stderr)
        print(run.path)
        return 0
    except Exception as e:
        e.peer_lost = distributed.peer_lost(e)
        raise
    finally:
        distributed.teardown()


def _on_start(started: list, path) -> None:
    """The run folder ``path`` exists: the CLI's error lines may name it now, and under ``dllab run --nproc``
    rank 0 names it to the launcher (for its line about a process that died)."""
    started.append(path)
    if ranks.is_main():
        tell_launcher(path)
