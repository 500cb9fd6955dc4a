"""``dllab list | run | sweep | report | compare | predict | export | doctor``. Errors a user can fix print one line
and exit with code 2."""
from __future__ import annotations

import argparse
import errno
import importlib.metadata
import os
import platform
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from dllab import ConfigError, DllabError, __version__  # torch-free, as everything imported here: torch loads in main
from dllab import api
from dllab.cli import export, predict
from dllab.cli.configfile import config_option, print_config
from dllab.core import cpus, environ, ranks, registry, untrusted
from dllab.core.config import PROFILES
from dllab.runner.launch import die_with_parent, interrupted, resume_command, under_launcher


def choose_omp_wait_policy() -> None:
    """Set OMP_WAIT_POLICY=PASSIVE when the CPU is already busy; leave OpenMP's default when it is idle.

    Must run before torch (and its OpenMP runtime) loads. OpenMP's worker threads spin while they wait:
    faster on an idle machine (for small MLP steps 2.5-3.5x), but beside another busy process the spinning
    threads fight it for the cores (measured with benchmarks/omp_wait_policy.py; figures in the README).
    "Busy" = other processes using at least half a CPU right now (``cpus.others_busy``, 0.1 s of /proc/stat);
    where that cannot be read, a 1-minute load average of at least one core's worth. Not the load average
    first: it lingers for minutes after a run ends, and the next run would wait passively on an idle machine.
    An OMP_WAIT_POLICY set by the user wins, written as libgomp reads it (ACTIVE/PASSIVE): one it would
    reject is one warning line and removed, so that libgomp does not complain in turn and env.json records
    the policy OpenMP really uses. The run records the policy in env.json. ``main`` calls it for the
    commands that train or time (run, sweep, whose runs inherit it, doctor), not at import: the 0.1 s sample
    would slow `dllab list` and every other command for nothing.
    """
    policy, problem = environ.omp_wait_policy()
    if problem:
        environ.warn(problem)
    if policy:
        os.environ["OMP_WAIT_POLICY"] = policy
        return
    os.environ.pop("OMP_WAIT_POLICY", None)    # (empty or rejected: OpenMP's default, unless busy below)
    now = cpus.others_busy()
    busy = now >= 0.5 if now is not None else (cpus.load() or 0.0) >= 1.0   # no load average: idle
    if busy:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + message
        raise ConfigError(f"{message} (see `{self.prog} --help`)")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--seeds {text}: expected comma-separated integers, e.g. 0,1,2") from e


def version() -> str:
    """``dllab --version``: dllab's, and the torch it runs on (from the package metadata: nothing is imported)."""
    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = "not installed"
    return f"dllab {__version__} (torch {torch}, Python {platform.python_version()})"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dllab", description="Run, reproduce and report deep-learning lab experiments.")
    p.add_argument("--version", action="version", version=version())
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    sub.add_parser("list", help="every experiment with its description, then every other plug-in by kind")
    _add_run(sub.add_parser("run", help="run an experiment"))
    _add_report(sub.add_parser("report", help="gather runs into one Markdown + one HTML report"))
    _add_sweep(sub.add_parser("sweep", help="run an experiment over a grid of config values (and seeds)"))
    _add_compare(sub.add_parser("compare", help="runs side by side: differing config keys, summaries, curves"))
    predict.add_arguments(sub.add_parser("predict", help="a run's saved model over images or sentences: class and "
                                                        "probability (and, for Lab 4, OOD or not)"))
    export.add_arguments(sub.add_parser("export", help="a run's saved model as ONNX or TorchScript, checked "
                                                      "against PyTorch on real inputs"))
    _add_doctor(sub.add_parser("doctor", help="devices, precision, threads, data and models found, time estimates"))
    sub.add_parser("completion", help="print the shell completion script (see the README to install it)"
                   ).add_argument("shell", choices=["bash", "zsh"])
    return p


def _add_run(r: argparse.ArgumentParser) -> None:
    r.add_argument("experiment", nargs="?", help="experiment name (see `dllab list`)")
    r.add_argument("--profile", default=None, choices=PROFILES,
                   help="smoke = seconds (tests), quick (default) = minutes on 2 CPU cores, paper = the spec's "
                        "settings")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set train.epochs=5 --set data.classes=[0,1]")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--seeds", type=_seeds, default=None, help="repeat for several seeds: 0,1,2 (mean ± std)")
    r.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    r.add_argument("--out", default=None, help="run folder (must not exist); default runs/<exp>/<time>-<profile>")
    r.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    r.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    r.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="data-parallel over N processes on this machine (one per GPU, or CPU processes): "
                        "shorthand for `torchrun --standalone --nproc-per-node N -m dllab run ...`")
    r.add_argument("--config", default=None, metavar="FILE",
                   help="a YAML config file (a run's config.yaml, or --print-config's output; may name the "
                        "experiment and profile): under --set")
    r.add_argument("--print-config", action="store_true",
                   help="print the complete config file of this command line and exit without running")


def _add_report(rep: argparse.ArgumentParser) -> None:
    rep.add_argument("runs", nargs="+", metavar="RUN_DIR")
    rep.add_argument("--out", default=None, help="report file (.md; the .html goes beside it)")
    rep.add_argument("--force", action="store_true", help="replace report files that already exist")


def _add_sweep(sw: argparse.ArgumentParser) -> None:
    sw.add_argument("experiment", nargs="?", help="experiment name (see `dllab list`)")
    sw.add_argument("--profile", default=None, choices=PROFILES, help="the profile (default quick)")
    sw.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                    help="a config key and its values (repeat for more keys; the Cartesian product runs)")
    sw.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a fixed override for every point")
    sw.add_argument("--seeds", type=_seeds, default=None, help="every point over these seeds: 0,1,2 (mean ± std)")
    sw.add_argument("--sample", type=int, default=None, metavar="K",
                    help="K >= 1 random points of the grid instead of all")
    sw.add_argument("--jobs", type=int, default=1, metavar="N", help="points at a time here (threads split)")
    sw.add_argument("--ray", default=None, metavar="ADDRESS",
                    help="run the points as Ray tasks: auto, ray://host:port, or local (needs dllab[ray])")
    sw.add_argument("--metric", default=None, help="summary key the report ranks by (default: the first)")
    sw.add_argument("--goal", default="max", choices=["max", "min"])
    sw.add_argument("--device", default=None, choices=["auto", "cpu", "cuda", "mps"])
    sw.add_argument("--out", default=None, help="sweep folder; default sweeps/<exp>/<time> (the same command "
                                                 "continues its latest sweep)")
    sw.add_argument("--resume", default=None, metavar="SWEEP_DIR", help="continue a sweep folder")
    sw.add_argument("--config", default=None, metavar="FILE",
                    help="a YAML config file for every point (as `dllab run --config`), under --set and --grid")
    sw.add_argument("--quiet", action="store_true")


def _add_compare(cmp: argparse.ArgumentParser) -> None:
    cmp.add_argument("runs", nargs="+", metavar="RUN_DIR")
    cmp.add_argument("--out", default="compare.md", help="report file (.md; the .html goes beside it)")
    cmp.add_argument("--force", action="store_true", help="replace report files that already exist")


def _add_doctor(doc: argparse.ArgumentParser) -> None:
    doc.add_argument("--profile", default=None, choices=PROFILES, help="also check what this profile needs")
    doc.add_argument("--data-root", default="", help="data folder (default: $DLLAB_DATA or ./data)")


@dataclass
class Invocation:
    """One command line being carried out: its arguments, the run folder once it exists (the Ctrl-C and
    disk-error messages name it) and ``DLLAB_DEBUG`` (a traceback before the one-line error)."""
    argv: list[str]
    started: list = field(default_factory=list)
    debug: bool = False


def cmd_list(args: argparse.Namespace, call: Invocation) -> None:
    """The experiments (name and description), then each other kind's names; a plug-in from another package
    is marked with its package. Read from the registry's static index: nothing is imported."""
    experiments = registry.entries("experiment")
    width = max((len(e.name) for e in experiments), default=0)
    print(f"experiments (profiles: {', '.join(PROFILES)}):")
    for e in experiments:
        print(f"  {e.name:<{width}}  {e.description}{_from_plugin(e)}")
    for kind, label in registry.KINDS.items():
        if kind != "experiment":
            plural = "strategies" if kind == "strategy" else f"{label}s"
            print(f"{plural}: " + ", ".join(e.name + _from_plugin(e) for e in registry.entries(kind)))


def _from_plugin(entry: registry.Entry) -> str:
    return f" [plug-in: {entry.origin}]" if entry.plugin else ""


def cmd_run(args: argparse.Namespace, call: Invocation) -> int:
    config_option(args)   # --config: read and checked now; it may name the experiment and profile
    if args.print_config:   # the whole config, checked and printed; nothing runs and torch does not load
        cfg = api.config(args.experiment, args.profile, args.sets, seed=args.seed, seeds=args.seeds,
                         device=args.device, config_file=args.config_file)
        return print_config(args.experiment, cfg)
    from dllab.cli.run import run_command   # (torch loads in dllab.api.run, once the config has passed)

    return run_command(args, call.argv, call.started)


def cmd_sweep(args: argparse.Namespace, call: Invocation) -> None:
    config_option(args)   # --config: read and checked now; it may name the experiment and profile
    result = api.sweep(args.experiment, args.grid, profile=args.profile, overrides=args.sets, seeds=args.seeds,
                       sample=args.sample, jobs=args.jobs, device=args.device, out=args.out, metric=args.metric,
                       goal=args.goal, ray=args.ray, quiet=args.quiet, resume=args.resume,
                       config_file=args.config_file)
    print(result.path)


def cmd_compare(args: argparse.Namespace, call: Invocation) -> None:
    md = api.compare(args.runs, args.out, args.force)
    print(md)
    print(md.with_suffix(".html"))


def cmd_doctor(args: argparse.Namespace, call: Invocation) -> int:
    from dllab.cli.doctor import main as doctor

    return doctor(args.profile, args.data_root)


def cmd_report(args: argparse.Namespace, call: Invocation) -> None:
    from dllab.runner.experiment import report

    md, html = report(args.runs, args.out, args.force)
    print(md)
    print(html)


def cmd_completion(args: argparse.Namespace, call: Invocation) -> None:
    from dllab.cli.completion import script

    print(script(args.shell, build_parser()), end="")


# Each subcommand's function: it prints its answer on stdout and returns the exit code (None: 0).
COMMANDS: dict[str, Callable[[argparse.Namespace, Invocation], int | None]] = {
    "list": cmd_list, "run": cmd_run, "sweep": cmd_sweep, "compare": cmd_compare, "doctor": cmd_doctor,
    "report": cmd_report, "completion": cmd_completion, "predict": predict.command,
    "export": export.command,
}
COMPUTING = ("run", "sweep", "doctor")   # the commands that train or time: environment checked, OpenMP set


def main(argv: list[str] | None = None) -> int:
    """The ``dllab`` command; returns its exit code (2: an error the user can fix, said in one line)."""
    call = Invocation(sys.argv[1:] if argv is None else argv)
    die_with_parent()    # a process the launcher or a sweep started ends with it (first: before any work)
    try:
        call.debug = environ.debug()
        code = _dispatch(call)
        sys.stdout.flush()   # now, not at exit: a reader that has gone is noticed below, not by the interpreter
        return code
    except BrokenPipeError as e:
        return _reader_gone(e)
    except DllabError as e:
        return _failed(e, untrusted.printable(e), call)
    except OSError as e:   # disk full, permission denied...: the system's reason and the file, on one line
        return _failed(e, _system_message(e, call.started), call)
    except (MemoryError, RuntimeError, ImportError, SystemError) as e:   # torch's allocators raise RuntimeErrors
        if _out_of_memory(e):
            return _failed(e, _memory_message(e, call.started), call)
        if not getattr(e, "peer_lost", False):   # (marked by the run command, which has torch.distributed)
            raise
        return _peer_lost(e, call)
    except Exception as e:
        if not getattr(e, "peer_lost", False):
            raise
        return _peer_lost(e, call)
    except KeyboardInterrupt:
        return _interrupted(call.started)


def _dispatch(call: Invocation) -> int:
    """Parse the command line, check what the command reads from the environment, run the command."""
    args = build_parser().parse_args(call.argv)
    if args.command in COMPUTING:
        environ.check(distributed=args.command in ("run", "sweep"))   # one line before any folder exists
        if "torch" not in sys.modules:
            choose_omp_wait_policy()   # before torch loads (once it has, the policy no longer applies here)
    return COMMANDS[args.command](args, call) or 0


def _failed(error: BaseException, message: str, call: Invocation) -> int:
    """One line ``dllab: error: <message>`` (exit code 2), by the process that speaks for the job; under
    DLLAB_DEBUG the whole traceback before it, with the causes it was raised from."""
    if _speaks(error):
        if call.debug:
            _print_traceback(error)
        print(f"dllab: error: {_process()}{message}", file=sys.stderr)
    return 2


def _print_traceback(error: BaseException) -> None:
    """``error``'s traceback and chained causes on stderr, each line escaped as the one-line messages are
    (a file name from a crafted run folder cannot move the cursor or forge a line)."""
    for line in "".join(traceback.format_exception(error)).splitlines():
        print(untrusted.printable(line), file=sys.stderr)


def _system_message(error: OSError, started: list) -> str:
    """The system's reason, the file, and the run to continue once that is fixed."""
    where = f" ({error.filename})" if error.filename else ""
    hint = f"; fix that, then continue with {_resume(started[0])}" if started else ""
    return untrusted.printable(f"{error.strerror or error}{where}{hint}")


def _reader_gone(error: BrokenPipeError) -> int:
    """stdout's reader has gone (``dllab list | head -3``): not the user's error, so no message; the exit code
    is EPIPE's number, as Python's own command-line tools (``python -m json.tool``) end. stdout now points to
    /dev/null, since Python flushes it once more at exit and that would fail again (the Python docs' note on
    SIGPIPE)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):   # no file descriptor behind stdout (an embedding program's stream)
        pass
    return error.errno or errno.EPIPE


def _interrupted(started: list) -> int:
    if not ranks.is_main():     # Ctrl-C reaches every process; rank 0 names the folder
        return 130
    print(interrupted(started[0] if started else None, ranks.world_size()), file=sys.stderr)
    return 130


def _out_of_memory(error: BaseException) -> bool:
    """A MemoryError, torch's allocators failing (a RuntimeError, CUDA's OutOfMemoryError), or PyTorch's
    libraries failing to load under an address-space limit (``ulimit -v``): the loader's "failed to map
    segment", or a SystemError from an extension whose allocation failed."""
    if isinstance(error, MemoryError):
        return True
    if isinstance(error, RuntimeError):
        return "out of memory" in str(error) or "can't allocate memory" in str(error)
    if environ.memory_limit() is None or isinstance(error, ModuleNotFoundError):
        return False
    return isinstance(error, SystemError) or "failed to map segment" in str(error)


def _memory_message(error: BaseException, started: list) -> str:
    """'out of memory ...': the limit that was hit when one is set, and what to do next."""
    limit = environ.memory_limit()
    what = (f"out of memory ({type(error).__name__}); free memory, or lower train.batch_size or the data limits"
            if limit is None else
            f"out of memory under the virtual memory limit of {limit / 2**30:.1f} GiB (ulimit -v {limit // 1024}); "
            f"PyTorch alone maps a few GiB: raise the limit (e.g. `ulimit -v unlimited`)")
    return what + (f"; then continue with {_resume(started[0])}" if started else "")


def _peer_lost(e: BaseException, call: Invocation) -> int:
    """Another process died: its launcher (torchrun) ends the job; under `dllab run --nproc` the launcher says
    which process and what to resume, so this one keeps quiet."""
    if not under_launcher():
        if call.debug:
            _print_traceback(e)
        resume = f"; continue with {_resume(call.started[0])}" if call.started else ""
        print(f"dllab: error: {_process() or 'process 0: '}another process of the job stopped "
              f"({type(e).__name__}){resume}", file=sys.stderr)
    return 1


def _resume(path) -> str:
    """The command that continues the run in ``path`` (with as many processes as this one has), quoted."""
    return resume_command(path, ranks.world_size())


def _speaks(error: BaseException) -> bool:
    """Under torchrun, whether this process prints ``error``: rank 0 does; another rank only if it is the
    first of its machine and the error is its own (not rank 0's, handed over by ``distributed.on_main``):
    the processes of one machine mostly fail alike (one line for them), another machine's may not (its data)."""
    return ranks.is_main() or (ranks.local_rank() == 0 and not getattr(error, "from_main", False))


def _process() -> str:
    """Under torchrun, which process an error comes from (rank 0's lines go unmarked)."""
    return f"process {ranks.rank()} of {ranks.world_size()}: " if not ranks.is_main() else ""


if __name__ == "__main__":
    sys.exit(main())
