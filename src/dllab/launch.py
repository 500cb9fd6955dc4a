"""``dllab run --nproc N ...``: torchrun's single-machine form, ``torchrun --standalone --nproc-per-node N -m
dllab run ...``, started through torchrun's own ``run`` (no launcher of dllab's own), so that a process that
dies is one line naming it and the command that continues the run, not torchrun's multi-line report."""
from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
from pathlib import Path

from . import DllabError, cpus, distributed

# Where rank 0 names its run folder for the launcher (so the line about a dead process can say what to resume).
RUN_FOLDER_FILE = "DLLAB_LAUNCH_RUN_FOLDER_FILE"


def under_launcher() -> bool:
    """This process was started by ``launch`` (which speaks for it when another process dies)."""
    return bool(os.environ.get(RUN_FOLDER_FILE))


class FolderNote(list):
    """The cli's list of the started run folder, on rank 0 under ``launch``: appending also names the folder
    in the launcher's file."""

    def append(self, path) -> None:
        super().append(path)
        with open(os.environ[RUN_FOLDER_FILE], "w") as f:
            f.write(f"{path}\n")


def without_nproc(argv: list[str]) -> list[str]:
    """``argv`` less its ``--nproc N`` (or ``--nproc=N``, or an abbreviation argparse accepted, ``--np 2``)."""
    rest = list(argv)
    i = next(i for i, a in enumerate(rest) if len(a.split("=")[0]) > 3 and "--nproc".startswith(a.split("=")[0]))
    del rest[i:i + (1 if "=" in rest[i] else 2)]
    return rest


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``dllab <argv>`` (``argv`` holding ``--nproc``) in ``nproc`` processes; returns the exit code. A
    process's own one-line error was printed by that process; a process that died (killed, crashed) is
    named here."""
    if nproc < 1:
        raise DllabError(f"--nproc {nproc}: give the number of processes, 1 or more")
    if distributed.launched():
        raise DllabError("--nproc starts torchrun itself; under torchrun, leave --nproc out")
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    if "OMP_NUM_THREADS" not in os.environ:   # the cores split between the processes (torchrun would say 1)
        os.environ["OMP_NUM_THREADS"] = str(max(1, cpus.usable() // nproc))
    # torchrun's agent logs its rendezvous, signals and a multi-line report per failure; the processes and
    # the line below say what matters.
    for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed.elastic")]:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="dllab-launch-") as tmp:
        folder_file = Path(tmp) / "run_folder"
        os.environ[RUN_FOLDER_FILE] = str(folder_file)
        args = get_args_parser().parse_args(["--standalone", f"--nproc-per-node={nproc}", "-m", "dllab",
                                             *without_nproc(argv)])
        try:
            run(args)
            return 0
        except SignalException:     # Ctrl-C: the processes got it too, and rank 0 said how to continue
            return 130
        except ChildFailedError as e:
            said = [f.exitcode for f in e.failures.values() if f.exitcode in (2, 130)]
            if said:
                return said[0]      # that process said why in one line already
            # the root cause: not a process torchrun stopped (SIGTERM) once another had failed, nor one that
            # aborted (SIGABRT) because its peer vanished in the middle of a collective
            r, f = min(e.failures.items(), key=lambda rf: (rf[1].exitcode in (-signal.SIGTERM, -signal.SIGABRT),
                                                           rf[1].timestamp))
            how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
            folder = folder_file.read_text().strip() if folder_file.exists() else ""
            hint = (f"; continue with `dllab run --nproc {nproc} --resume {folder}`" if folder
                    else "; no run folder was created yet")
            print(f"dllab: error: process {r} of {nproc} {how}{hint}", file=sys.stderr)
            return 1
        finally:
            os.environ.pop(RUN_FOLDER_FILE, None)
