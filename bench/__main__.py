"""Benchmark dispatcher: ``python -m bench NAME [--json PATH] [options]``.

``NAME`` selects the module ``bench/NAME.py``, which must define
``run(args) -> dict`` and may define ``add_arguments(parser)`` for its own
options. The dict is printed as JSON and, with ``--json PATH``, written to
PATH (parent directories are created).

BLAS/OpenMP thread counts are fixed here, before any module imports NumPy
(they cannot be changed afterwards): ``--threads N`` (default 2) sets
OPENBLAS_NUM_THREADS, OMP_NUM_THREADS and MKL_NUM_THREADS unless they are
already set in the environment. Benchmarks report what they ran with.
"""
from __future__ import annotations

import argparse
import importlib
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
    for var in THREAD_VARS:  # must happen before NumPy is imported
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
