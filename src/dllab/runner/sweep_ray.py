"""``dllab sweep --ray ADDRESS``: the sweep's points as Ray tasks (the optional extra ``dllab[ray]``).

Each task runs the same `dllab run` child process as ``--jobs`` does (the sweep's ``run_point``), reserving as many
Ray CPUs as the point gets threads, so both paths give the same numbers. ADDRESS is passed to ``ray.init``
(``auto``: the cluster this machine belongs to; ``ray://host:10001``; ``local``: a Ray instance started here
with this machine's cores). On a cluster every node needs dllab, the data, and the sweep folder on a shared
file system: the tasks write their run folders at the sweep folder's path.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

from dllab import DllabError
from dllab.core import cpus


def _ray():
    try:
        import ray   # the optional extra dllab[ray]: only a sweep with --ray needs it
    except ImportError as e:
        raise DllabError("--ray needs Ray: pip install 'dllab[ray]'") from e
    return ray


@contextmanager
def connected(address: str):
    """Ray, connected for ``address`` for the ``with`` block (the sweep makes its folder inside it, so a
    failed connection leaves nothing behind), then shut down. A Ray instance already initialised in this
    process (a test's ``ray.init(num_cpus=2)``) is used as is, and left running."""
    ray = _ray()
    started = not ray.is_initialized()
    if started:
        try:
            if address == "local":
                ray.init(num_cpus=cpus.usable(), include_dashboard=False, log_to_driver=False)
            else:
                ray.init(address=address, log_to_driver=False)
        except (ConnectionError, ValueError, RuntimeError) as e:
            raise DllabError(f"--ray {address}: cannot connect ({str(e).splitlines()[0]})") from e
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def run_on_ray(todo: list, threads: int, done: Callable, run_point: Callable, extra_env: dict | None = None) -> None:
    """Every (point, args) of ``todo`` as a Ray task on the Ray ``connected`` reached, each running
    ``run_point(args, threads, extra_env)`` (the sweep's `dllab run` child; ``extra_env``: how it joins the
    sweep's tracking); ``done(point, code, last error line)`` as each ends."""
    ray = _ray()
    task = ray.remote(num_cpus=threads, max_retries=0)(run_point)
    pending = {task.remote(args, threads, extra_env): point for point, args in todo}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(pending.pop(ref), *ray.get(ref))
    except BaseException:   # Ctrl-C: the points not finished stop too (rerun the command to continue)
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
