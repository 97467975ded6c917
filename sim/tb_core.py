"""cocotb testbench: ``hw.core.ArrayCore`` (Verilator) against ``golden.array_model.ArrayModel``, cycle by cycle.

Inputs (environment of the simulator process, set by ``sim.build.run_cocotb``):

* ``ANCHORLESS_STIM``    path of a ``sim.stimulus.Stimulus`` ``.npz``
* ``ANCHORLESS_RESULT``  path of the JSON result file this test writes
* ``ANCHORLESS_MAX_MISMATCH`` (default 20) stop after this many mismatching cycles
* ``ANCHORLESS_PROFILE``  optional: write a cProfile of the run there
* ``ANCHORLESS_INJECT``   optional fault injection proving the checks can fail:
  ``payload:N`` flips bit 0 of the RTL's ``out.payload`` as read on its N-th
  output transfer; ``ready:N`` on the first cycle >= N with ``out.valid`` drives
  the RTL's ``out.ready`` inverted while the model gets the pattern's value

Every clock cycle the testbench

1. drives ``inp``, ``params``, ``lut`` (valid + packed payload) and
   ``out.ready`` from the stimulus' seeded per-cycle patterns (a source whose
   pattern bit is 1 offers its next beat and holds it until accepted; while
   ``inp`` has nothing to offer its payload still shows the next beat, so
   ``inp.ready``'s dependence on ``last`` is exercised with valid = 0);
2. waits for the combinational outputs to settle (``ReadOnly``), reads
   ``inp.ready``, ``params.ready``, ``out.valid`` (and ``out.payload`` once, as
   one integer, when valid);
3. steps the golden ``ArrayModel`` with exactly the same inputs and compares:
   ``out.valid``, ``inp.ready`` and ``params.ready`` must be equal every cycle
   (a *cycle mismatch* otherwise) and, when both are valid, the payloads (a
   *value mismatch* otherwise);
4. on every RTL output transfer, checks the beat against the independent
   functional reference (``sim.stimulus.reference_outputs``) in order: the
   count of output beats must end at ``rows * tiles``, nothing lost, nothing
   duplicated, nothing extra during a quiet tail after the last beat.

LUT tables are loaded at the start of each phase that has one, after the core
has drained (the contract forbids changing the table under LUT rows in
flight). The result also counts what held beats back (``gap_stalls``: a last
beat refused by the tile gap rule; ``credit_stalls``: by the params credit;
``out_stalls``; ``params_full_stalls``) so tests can insist every rule was
exercised. ``macs_checked`` adds ``K * out_lanes`` for every output row compared
with the reference. The result JSON has the counters, the first mismatches and
the simulation speed (``cycles_per_second``, cocotb-driven wall clock, and
``cycles_per_cpu_second``, the same per CPU second of the simulator process,
which does not depend on how loaded the machine is).
"""
from __future__ import annotations

import json
import os
import time
import traceback

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from golden.array_model import ArrayModel
from hw.core import input_layout, lut_layout, output_layout, pack_payload, params_layout
from sim.stimulus import LANE_FIELDS, Stimulus, active_table, reference_outputs


def _out_packer(cfg):
    """Fast packer of an output beat (data codes, last) -> int, verified against ``pack_payload``."""
    lay = output_layout(cfg)
    L = cfg.out_lanes
    fields = dict(iter(lay))
    fast = (fields["data"].offset == 0 and fields["last"].offset == 8 * L and lay.size == 8 * L + 1)
    if fast:
        def pack(data, last):
            return int.from_bytes(bytes(data), "little") | (int(last) << (8 * L))
    else:  # pragma: no cover - layout changed; still exact, just slower
        def pack(data, last):
            return pack_payload(lay, {"data": [int(v) for v in data], "last": int(last)})
    probe = [(7 * i + 3) & 0xFF for i in range(L)]
    assert pack(probe, 1) == pack_payload(lay, {"data": probe, "last": 1})
    return pack


class _Result:
    def __init__(self, path, stim: Stimulus):
        self.path = path
        self.d = {"cfg": {"rows": stim.cfg.rows, "cols": stim.cfg.cols, "packing": stim.cfg.packing,
                          "weight_min": stim.cfg.weight_min, "chain": stim.cfg.chain,
                          "param_fifo_depth": stim.cfg.param_fifo_depth},
                  "seed": stim.seed, "tiles": stim.n_tiles, "beats": stim.n_beats,
                  "expected_out_beats": stim.n_tiles * stim.cfg.rows, "out_beats": 0,
                  "macs_checked": 0, "value_mismatches": 0, "cycle_mismatches": 0, "ref_mismatches": 0,
                  "model_ref_mismatches": 0, "extra_out_beats": 0, "cycles": 0, "seconds": 0.0,
                  "cycles_per_second": 0.0, "cpu_seconds": 0.0, "cycles_per_cpu_second": 0.0,
                  "gap_stalls": 0, "credit_stalls": 0, "out_stalls": 0,
                  "params_full_stalls": 0, "lut_writes": 0, "timeout": False, "error": None, "mismatches": [], "passed": False}

    def note(self, msg: str):
        if len(self.d["mismatches"]) < 40:
            self.d["mismatches"].append(msg)

    def write(self):
        d = self.d
        d["passed"] = (d["value_mismatches"] == 0 and d["cycle_mismatches"] == 0 and d["ref_mismatches"] == 0
                       and d["model_ref_mismatches"] == 0 and d["extra_out_beats"] == 0 and not d["timeout"]
                       and d["error"] is None and d["out_beats"] == d["expected_out_beats"])
        if self.path:
            tmp = f"{self.path}.tmp"
            with open(tmp, "w") as f:
                json.dump(d, f, indent=1)
            os.replace(tmp, self.path)


@cocotb.test()
async def array_core_vs_model(dut):
    """Drive the stimulus into the RTL and the golden cycle model in lock-step; compare every cycle."""
    stim = Stimulus.load(os.environ["ANCHORLESS_STIM"])
    res = _Result(os.environ.get("ANCHORLESS_RESULT"), stim)
    try:
        prof_path = os.environ.get("ANCHORLESS_PROFILE")
        if prof_path:                       # cProfile of the Python side (testbench + model)
            import cProfile
            prof = cProfile.Profile()
            prof.enable()
        await _run(dut, stim, res, int(os.environ.get("ANCHORLESS_MAX_MISMATCH", "20")),
                   _parse_inject(os.environ.get("ANCHORLESS_INJECT", "")))
        if prof_path:
            prof.disable()
            prof.dump_stats(prof_path)
    except Exception as e:  # noqa: BLE001 - recorded in the result file, then re-raised
        res.d["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        raise
    finally:
        res.write()
    d = res.d
    assert d["passed"], (f"RTL vs golden: {d['cycle_mismatches']} cycle / {d['value_mismatches']} value / "
                         f"{d['ref_mismatches']} reference mismatches, {d['out_beats']} of "
                         f"{d['expected_out_beats']} beats, timeout={d['timeout']}; first: {d['mismatches'][:5]}")


def _parse_inject(spec: str):
    if not spec:
        return None
    kind, _, n = spec.partition(":")
    if kind not in ("payload", "ready") or not n.isdigit():
        raise ValueError(f"ANCHORLESS_INJECT must be 'payload:N' or 'ready:N', got {spec!r}")
    return kind, int(n)


async def _run(dut, stim: Stimulus, res: _Result, max_mismatch: int, inject=None):
    cfg = stim.cfg
    R, L = cfg.rows, cfg.out_lanes
    T = stim.n_tiles
    d = res.d

    # ---- port width check: the model was built for this cfg ----
    for name, lay in (("inp__payload", input_layout(cfg)), ("params__payload", params_layout(cfg)),
                      ("lut__payload", lut_layout()), ("out__payload", output_layout(cfg))):
        width = len(getattr(dut, name))
        if width != data_size(lay):
            raise ValueError(f"{name} is {width} bits but the stimulus' cfg needs {data_size(lay)}: "
                             "model built for another configuration")

    lane_fields = {name for name, _ in data_layout(params_layout(cfg))["lane"].shape.elem_shape}
    missing = [f for f in LANE_FIELDS if f not in lane_fields and np.any(stim.params[f] != 0)]
    if missing:
        raise ValueError(f"the RTL's params layout has no field(s) {missing} but the stimulus uses them "
                         "(hw/ predates the ort lane mode?)")

    # ---- pre-pack every beat once (the per-cycle loop only moves Python ints) ----
    last = stim.beat_last()
    in_lay, par_lay, lut_lay = input_layout(cfg), params_layout(cfg), lut_layout()
    in_cols = {("act", i): stim.act[i] for i in range(R)}
    in_cols.update({("wgt", lane): stim.wgt[:, lane] for lane in range(L)})
    in_cols[("last",)] = last
    beat_bits = pack_columns(in_lay, in_cols, stim.n_beats)
    par_cols = {("lane", lane, f): stim.params[f][:, lane] for lane in range(L) for f in LANE_FIELDS
                if f in lane_fields}
    par_cols[("lut_en",)] = stim.lut_en
    par_bits = pack_columns(par_lay, par_cols, T)
    for b in {0, stim.n_beats - 1}:       # the fast packer agrees with the shared definition
        assert beat_bits[b] == pack_payload(in_lay, {"act": stim.act[:, b].tolist(), "wgt": stim.wgt[b].tolist(),
                                                     "last": int(last[b])})
    for t in {0, T - 1}:
        assert par_bits[t] == pack_payload(par_lay, {"lane": [{f: int(stim.params[f][t][lane]) for f in LANE_FIELDS}
                                                              for lane in range(L)], "lut_en": int(stim.lut_en[t])})
    beat_model = [{"act": stim.act[:, b], "wgt": stim.wgt[b], "last": int(last[b])} for b in range(stim.n_beats)]
    par_model = [{**{f: stim.params[f][t] for f in LANE_FIELDS}, "lut_en": int(stim.lut_en[t])} for t in range(T)]
    pack_out = _out_packer(cfg)
    ref = reference_outputs(stim)
    ref_bits = [pack_out(ref[t, r].tolist(), r == R - 1) for t in range(T) for r in range(R)]
    tile_of_beat = np.repeat(np.arange(T), stim.k)
    first_beat = np.concatenate([[0], np.cumsum(stim.k)[:-1]])
    # phase barriers: beat index -> phase whose LUT must be loaded (after a drain) before it is offered
    barrier = {}
    for p in range(stim.lut_load.size):
        if stim.lut_load[p]:
            tiles_p = np.flatnonzero(stim.phase == p)
            if tiles_p.size:
                barrier[int(first_beat[tiles_p[0]])] = (p, int(tiles_p[0]))
    tables = stim.lut_tables

    pin, ppar, plut, pout = (np.asarray(x).tolist() for x in (stim.inp_valid, stim.par_valid, stim.lut_valid,
                                                             stim.out_ready))
    n_pat = len(pin)
    max_cycles = n_pat + 64 * (cfg.latency + R) + 4096
    tail = cfg.latency + 2 * R + 16

    # ---- handles, triggers ----
    clk, rst = dut.clk, dut.rst
    h_iv, h_ip, h_ir = dut.inp__valid, dut.inp__payload, dut.inp__ready
    h_pv, h_pp, h_pr = dut.params__valid, dut.params__payload, dut.params__ready
    h_lv, h_lp = dut.lut__valid, dut.lut__payload
    h_ov, h_op, h_or = dut.out__valid, dut.out__payload, dut.out__ready
    re, ro = RisingEdge(clk), ReadOnly()

    cocotb.start_soon(Clock(clk, 10, unit="ns").start())
    for h in (h_iv, h_pv, h_lv, h_or):
        h.value = 0
    h_ip.value = 0
    h_pp.value = 0
    h_lp.value = 0
    rst.value = 1
    await re
    await re
    rst.value = 0

    model = ArrayModel(cfg)
    bi = pi = 0                     # next input beat / params beat
    hold_in = hold_par = False
    lut_phase = None                # (phase, first tile) while loading a table; lut_addr = next entry
    lut_addr = 0
    loaded = set()
    out_count = 0
    out_transfers = 0
    bad_cycles = 0
    done_at = None
    cur = {"iv": 0, "ip": 0, "pv": 0, "pp": 0, "lv": 0, "lp": 0, "or": 0}   # last written values
    t0, cpu0 = time.perf_counter(), time.process_time()
    c = 0
    while True:
        if c:
            await re
        pat = c < n_pat
        # ---- LUT phase barrier: drain, then write the table ----
        if lut_phase is None and not hold_in and bi in barrier and barrier[bi][0] not in loaded:
            p, t_first = barrier[bi]
            if out_count == t_first * R and model.idle():
                lut_phase, lut_addr = barrier[bi], 0
        lut_valid = 0
        lut_payload = None
        if lut_phase is not None and (not pat or plut[c]):
            lut_valid = 1
            tab = tables[lut_phase[0]]
            lut_payload = {"addr": lut_addr, "data": int(tab[lut_addr])}
        blocked = lut_phase is not None or (bi in barrier and barrier[bi][0] not in loaded)
        # ---- sources ----
        if not hold_in and bi < stim.n_beats and not blocked and (not pat or pin[c]):
            hold_in = True
        if not hold_par and pi < T and (not pat or ppar[c]):
            hold_par = True
        o_rdy = pout[c] if pat else 1
        rtl_rdy = o_rdy
        if inject is not None and inject[0] == "ready" and c >= inject[1] \
                and model.outputs(o_rdy, int(last[bi]) if bi < stim.n_beats else 0)["out_valid"]:
            rtl_rdy, inject = 1 - o_rdy, None
            res.note(f"cycle {c}: injected fault: RTL out.ready={rtl_rdy}, model out_ready={o_rdy}")
        ip = beat_bits[bi] if bi < stim.n_beats else 0
        in_model = beat_model[bi] if bi < stim.n_beats else None
        pp = par_bits[pi] if pi < T else 0
        lp = pack_payload(lut_lay, lut_payload) if lut_valid else cur["lp"]
        new = {"iv": int(hold_in), "ip": ip, "pv": int(hold_par), "pp": pp, "lv": lut_valid, "lp": lp,
               "or": rtl_rdy}
        for key, h in (("iv", h_iv), ("ip", h_ip), ("pv", h_pv), ("pp", h_pp), ("lv", h_lv), ("lp", h_lp),
                       ("or", h_or)):
            if new[key] != cur[key]:
                h.value = new[key]
        cur = new
        await ro
        # ---- sample the RTL ----
        r_ir = int(h_ir.value)
        r_pr = int(h_pr.value)
        r_ov = int(h_ov.value)
        r_op = int(h_op.value) if r_ov else None
        if r_ov and rtl_rdy:
            if inject is not None and inject[0] == "payload" and out_transfers == inject[1]:
                r_op ^= 1
                inject = None
                res.note(f"cycle {c}: injected fault: out.payload bit 0 flipped")
            out_transfers += 1
        # ---- the model, same inputs ----
        m = model.step(in_valid=int(hold_in), in_payload=in_model, params_valid=int(hold_par),
                       params_payload=par_model[pi] if hold_par else None, lut_valid=lut_valid,
                       lut_payload=lut_payload, out_ready=o_rdy)
        bad = False
        if (r_ir, r_pr, r_ov) != (m["in_ready"], m["params_ready"], m["out_valid"]):
            d["cycle_mismatches"] += 1
            bad = True
            res.note(f"cycle {c}: RTL inp.ready={r_ir} params.ready={r_pr} out.valid={r_ov}, model "
                     f"{m['in_ready']}/{m['params_ready']}/{m['out_valid']} (beat {bi}, tile "
                     f"{int(tile_of_beat[min(bi, stim.n_beats - 1)])}, out beats {out_count})")
        m_op = None
        if m["out_valid"]:
            m_op = pack_out(m["out_payload"]["data"], m["out_payload"]["last"])
        if r_ov and m["out_valid"] and r_op != m_op:
            d["value_mismatches"] += 1
            bad = True
            res.note(f"cycle {c}: out.payload RTL {r_op:#x} model {m_op:#x} (tile {m['out_tile']} row "
                     f"{m['out_row']})")
        # ---- transfers (the RTL's handshake decides what the sources see) ----
        if r_ov and rtl_rdy:
            if out_count < T * R:
                t, r = divmod(out_count, R)
                if r_op != ref_bits[out_count]:
                    d["ref_mismatches"] += 1
                    bad = True
                    res.note(f"cycle {c}: out beat {out_count} (tile {t} '{stim.kinds[t]}' row {r}) RTL "
                             f"{r_op:#x} reference {ref_bits[out_count]:#x}")
                d["macs_checked"] += int(stim.k[t]) * L
            else:
                d["extra_out_beats"] += 1
                bad = True
                res.note(f"cycle {c}: extra out beat {out_count} (only {T * R} expected): {r_op:#x}")
            out_count += 1
        if m["out_fire"]:
            mi = len(model.transfers) - 1
            if mi < T * R and m_op != ref_bits[mi]:
                d["model_ref_mismatches"] += 1
                res.note(f"cycle {c}: MODEL out beat {mi} {m_op:#x} differs from the functional reference "
                         f"{ref_bits[mi]:#x} (golden model bug?)")
        # handshake coverage (what held a beat back), from the model's view of the same cycle
        if hold_in and last[bi] and m["en"] and not r_ir:
            if not m["tile_gap_ok"]:
                d["gap_stalls"] += 1
            elif not m["param_credit"]:
                d["credit_stalls"] += 1
        if r_ov and not rtl_rdy:
            d["out_stalls"] += 1
        if hold_par and not r_pr:
            d["params_full_stalls"] += 1
        d["lut_writes"] += lut_valid
        if hold_in and r_ir:
            bi += 1
            hold_in = False
        if hold_par and r_pr:
            pi += 1
            hold_par = False
        if lut_valid:                       # lut is always ready
            lut_addr += 1
            if lut_addr == 256:
                loaded.add(lut_phase[0])
                lut_phase = None
        c += 1
        if bad:
            bad_cycles += 1
            if bad_cycles >= max_mismatch:
                res.note(f"stopped after {bad_cycles} mismatching cycles")
                break
        if done_at is None and bi == stim.n_beats and pi == T and out_count >= T * R and model.idle():
            done_at = c
        if done_at is not None and c >= done_at + tail:
            break
        if c >= max_cycles:
            d["timeout"] = True
            res.note(f"timeout after {c} cycles: beats {bi}/{stim.n_beats}, params {pi}/{T}, "
                     f"out beats {out_count}/{T * R}")
            break
    dt, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    d["out_beats"] = min(out_count, T * R)
    d["cycles"] = c
    d["seconds"] = round(dt, 3)
    d["cycles_per_second"] = round(c / dt, 1) if dt > 0 else 0.0
    # the simulator process runs Verilator and Python on one thread: CPU time is the load-independent cost
    d["cpu_seconds"] = round(cpu, 3)
    d["cycles_per_cpu_second"] = round(c / cpu, 1) if cpu > 0 else 0.0


def layout_leaves(layout, base: int = 0, path: tuple = ()):
    """Yield ``(path, offset, width, signed)`` of every scalar field of a (nested) payload layout."""
    from amaranth import Shape
    from amaranth.lib import data
    for key, f in data.Layout.cast(layout):
        if isinstance(f.shape, data.Layout):
            yield from layout_leaves(f.shape, base + f.offset, path + (key,))
        else:
            sh = Shape.cast(f.shape)
            yield path + (key,), base + f.offset, sh.width, sh.signed


def pack_columns(layout, columns: dict, n: int) -> list[int]:
    """Pack ``n`` payloads at once: ``columns[path]`` is the (n,) int array of that leaf's values.

    Every leaf of ``layout`` must have a column (ValueError otherwise); values must fit their
    field (two's complement for signed fields). Equivalent to ``hw.core.pack_payload`` per beat,
    one vectorised pass per leaf instead of a recursion per beat.
    """
    out = [0] * n
    for path, off, width, signed in layout_leaves(layout):
        if path not in columns:
            raise ValueError(f"no values for payload field {'.'.join(map(str, path))}")
        v = np.asarray(columns[path], np.int64)
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        if v.shape != (n,) or (n and (v.min() < lo or v.max() > hi)):
            raise ValueError(f"payload field {'.'.join(map(str, path))}: need {n} values in [{lo}, {hi}]")
        v = (v & ((1 << width) - 1)).tolist() if width < 63 else [int(x) & ((1 << width) - 1) for x in v.tolist()]
        if any(v):
            out = [a | (x << off) for a, x in zip(out, v)]
    return out


def data_layout(layout):
    from amaranth.lib import data
    return dict(iter(data.Layout.cast(layout)))


def data_size(layout) -> int:
    """Bit width of a payload layout."""
    from amaranth.lib import data
    return data.Layout.cast(layout).size
