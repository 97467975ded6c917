"""Benchmark dispatcher: ``python -m bench NAME [--json PATH] [options]``.

``NAME`` selects the module ``bench/NAME.py``, which must define
``run(args) -> dict`` and may define ``add_arguments(parser)`` for its own
options. The dict is printed as JSON and, with ``--json PATH``, written to
PATH (parent directories are created).

BLAS/OpenMP thread counts are fixed here, before any module imports NumPy
(they cannot be changed afterwards): ``--threads N`` (default 2) sets
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS unless they are
already set in the environment. A benchmark module may ask for other values
with a top-level literal ``ENV = {"VAR": "value", ...}`` (``{threads}`` in a
value is replaced by N); it is read from the source, without importing the
module, and applied first (again only where the environment does not set the
variable). Benchmarks report what they ran with.
"""
from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import json
import os
import pkgutil
import sys
from pathlib import Path

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def available() -> list[str]:
    """Benchmark names: the modules of this package other than __main__/private ones."""
    here = Path(__file__).resolve().parent
    return sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))


def module_env(name: str, threads: int) -> dict[str, str]:
    """The literal ``ENV`` dict of bench/<name>.py, formatted with ``threads`` ({} if absent)."""
    spec = importlib.util.find_spec(f"bench.{name}")
    if spec is None or not spec.origin:
        return {}
    tree = ast.parse(Path(spec.origin).read_text(), spec.origin)
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "ENV" for t in node.targets):
            env = ast.literal_eval(node.value)
            if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
                raise ValueError(f"bench.{name}.ENV must be a literal dict of str to str")
            return {k: v.format(threads=threads) for k, v in env.items()}
    return {}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    names = available()
    pre = argparse.ArgumentParser(prog="python -m bench", add_help=False)
    pre.add_argument("name", nargs="?")
    pre.add_argument("--threads", type=int, default=2)
    known, _ = pre.parse_known_args(argv)
    if known.name is None or known.name not in names:
        msg = f"usage: python -m bench NAME [--json PATH] [--threads N] ...\navailable: {', '.join(names)}"
        if known.name is not None and known.name not in ("-h", "--help"):
            print(f"unknown benchmark {known.name!r}\n{msg}", file=sys.stderr)
            return 2
        print(msg)
        return 0 if known.name is None or known.name in ("-h", "--help") else 2
    if known.threads < 1:
        print(f"--threads must be >= 1, got {known.threads}", file=sys.stderr)
        return 2
    # must happen before NumPy is imported
    for var, value in module_env(known.name, known.threads).items():
        os.environ.setdefault(var, value)
    for var in THREAD_VARS:
        os.environ.setdefault(var, str(known.threads))

    mod = importlib.import_module(f"bench.{known.name}")
    if not callable(getattr(mod, "run", None)):
        print(f"bench.{known.name} has no run(args) function", file=sys.stderr)
        return 2
    ap = argparse.ArgumentParser(prog=f"python -m bench {known.name}",
                                 description=(mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else None)
    ap.add_argument("name")
    ap.add_argument("--json", metavar="PATH", help="also write the result to PATH")
    ap.add_argument("--threads", type=int, default=2, help="BLAS/OpenMP threads (default 2)")
    if callable(getattr(mod, "add_arguments", None)):
        mod.add_arguments(ap)
    args = ap.parse_args(argv)
    result = mod.run(args)
    if not isinstance(result, dict):
        print(f"bench.{known.name}.run returned {type(result).__name__}, not dict", file=sys.stderr)
        return 2
    text = json.dumps(result, indent=2, sort_keys=True)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
