"""House rules checked on the source itself (issue #21, "Errors and imports"): no function over 50 lines, no
error that hides its cause, every environment variable read through core/environ.py, and importing a module
changes nothing in the process."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "dllab"
MAX_FUNCTION_LINES = 50


def _sources() -> dict[str, ast.Module]:
    return {str(p.relative_to(SRC.parent)): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(SRC.rglob("*.py"))}


def test_no_function_is_over_50_lines():
    """From the ``def`` line to the last line of the body (the ast's lineno..end_lineno), decorators aside."""
    offenders = [f"{path}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                 for path, tree in _sources().items() for node in ast.walk(tree)
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not offenders, "split these by meaning:\n" + "\n".join(offenders)


def test_no_raise_hides_its_cause():
    """``raise ... from e``, not ``from None``: DLLAB_DEBUG=1 then shows what failed underneath the one line."""
    offenders = [f"{path}:{node.lineno}" for path, tree in _sources().items() for node in ast.walk(tree)
                 if isinstance(node, ast.Raise) and isinstance(node.cause, ast.Constant) and node.cause.value is None]
    assert not offenders, "chain the cause (raise ... from e):\n" + "\n".join(offenders)


def _reads_environ(node: ast.AST, parent: ast.AST) -> bool:
    """Whether ``node`` reads a variable's value from the environment: ``os.getenv(...)``,
    ``os.environ.get(...)``, ``os.environ[...]``, ``... in os.environ``, or a ``pop``/``setdefault`` whose
    value is used. Setting, removing and copying the whole environment for a child process are not reads."""
    def is_environ(n: ast.AST) -> bool:
        return isinstance(n, ast.Attribute) and n.attr == "environ" and isinstance(n.value, ast.Name) \
            and n.value.id == "os"

    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        f = node.func
        if isinstance(f.value, ast.Name) and f.value.id == "os" and f.attr == "getenv":
            return True
        if is_environ(f.value):
            return f.attr == "get" or (f.attr in ("pop", "setdefault") and not isinstance(parent, ast.Expr))
    if isinstance(node, ast.Subscript) and is_environ(node.value):
        return isinstance(node.ctx, ast.Load)
    if isinstance(node, ast.Compare):
        return any(isinstance(op, (ast.In, ast.NotIn)) and is_environ(c) for op, c in zip(node.ops, node.comparators))
    return False


def test_only_core_environ_reads_environment_variables():
    """One reading of each variable: everything else asks core/environ.py (which checks the value)."""
    offenders = []
    for path, tree in _sources().items():
        if path == os.path.join("dllab", "core", "environ.py"):
            continue
        for parent in ast.walk(tree):
            for node in ast.iter_child_nodes(parent):
                if _reads_environ(node, parent):
                    offenders.append(f"{path}:{node.lineno} {ast.unparse(node)[:80]}")
    assert not offenders, "read these through dllab.core.environ:\n" + "\n".join(offenders)


# Imports the third-party modules dllab imports, takes a snapshot of the process's state, imports every dllab
# module (those whose optional library is missing aside), and prints what changed.
_SIDE_EFFECTS = r"""
import ast, importlib, logging, os, pkgutil, signal, sys, warnings
from pathlib import Path
import dllab

def external_modules():
    names = set()
    for path in Path(dllab.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return sorted(n for n in names if n.split(".")[0] != "dllab")

def state():
    import matplotlib
    mask = os.umask(0)
    os.umask(mask)
    torch = sys.modules.get("torch")
    return {"environ": dict(os.environ), "umask": mask, "cwd": os.getcwd(), "sys.path": list(sys.path),
            "signals": {str(s): repr(signal.getsignal(s)) for s in signal.valid_signals()},
            "logging": (logging.root.level, repr(logging.root.handlers)), "warnings": repr(warnings.filters),
            "matplotlib backend": repr(dict.__getitem__(matplotlib.rcParams, "backend")),
            "recursion limit": sys.getrecursionlimit(),
            "torch threads": torch.get_num_threads() if torch else None}

for name in external_modules():
    try:
        importlib.import_module(name)
    except Exception:   # a name imported from a module (not a module itself), or an optional library
        pass
before = state()
imported = 0
for info in pkgutil.walk_packages(dllab.__path__, "dllab."):
    if info.name.endswith("__main__"):      # `python -m dllab` itself: runs the command line
        continue
    try:
        importlib.import_module(info.name)
        imported += 1
    except ImportError as e:                # a tracking sink whose optional library is not installed
        print("skipped", info.name, e, file=sys.stderr)
after = state()
print("IMPORTED", imported)
for key in before:
    if before[key] != after[key]:
        changed = ({k: (before[key].get(k), after[key].get(k)) for k in set(before[key]) | set(after[key])
                    if before[key].get(k) != after[key].get(k)} if isinstance(before[key], dict) else
                   (before[key], after[key]))
        print("CHANGED", key, changed)
"""


@pytest.mark.slow   # imports every module and library dllab has: about 10 s
def test_importing_dllab_changes_no_process_state():
    """No module changes the process when imported (environment, umask, signal handlers, sys.path, logging,
    warnings filters, matplotlib's backend, torch's threads): such changes belong where they are needed."""
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}   # (conftest sets it; a user may not)
    res = subprocess.run([sys.executable, "-c", _SIDE_EFFECTS], capture_output=True, text=True, env=env,
                         timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert int(lines[0].split()[1]) > 50, lines[0]      # every module was imported, not just a few
    assert lines[1:] == [], "\n".join(lines[1:])
