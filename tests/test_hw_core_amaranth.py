"""hw.mac_array.MacArray and hw.core.ArrayCore in the Amaranth simulator.

Small arrays (2x2 and 2x3 dual, 2x2 none, 1x1 with a one-entry params FIFO)
against a straightforward expected computation (NumPy matmul + golden.requant),
with random input bubbles, late params, random output backpressure. Checked
cycle by cycle against docs/array.md:

* values: every output beat, exactly;
* latency: row r of a tile whose last beat was accepted on enabled cycle e is
  on ``out`` on enabled cycle e + cfg.latency + r (and at the MacArray output
  on e + cfg.array_latency + r); nothing else ever appears;
* ``inp.ready`` and ``params.ready`` equal the documented rules on every cycle
  (tile_gap_ok, param_credit from an independent level/claimed model, pops on
  the enabled cycle the tile's last row enters the lanes);
* ``out`` stays frozen while stalled; ``lut.ready`` is always 1;
* internal: the params FIFO's registered read address and the drain chains' load copies
  equal the forms they stand for (``ArrayCore.shadow_checks``, ``MacArray.shadow_checks``)
  and the array's ``acc_last_next`` is the next enabled cycle's ``acc_last``, on every cycle.
"""
from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth import Module, Signal, Value
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect
from amaranth.sim import Simulator

from golden._check import INT32_MAX, INT32_MIN
from golden.config import PARAM_CREDIT_CYCLES, ArrayConfig
from golden.array_model import LANE_FIELDS
from golden.requant import multiply_by_quantized_multiplier
from hw.core import (PARAM_FIFO_GROUP_BITS, PARAMS_PUSH_TO_HEAD_CYCLES, ArrayCore, input_layout, lut_layout, output_layout, pack_payload, params_layout,
                     unpack_payload)
from hw.mac_array import MacArray
from shadow_checks import checked

FIELDS = LANE_FIELDS  # the shared lane params definition (golden.array_model)


def _tile(rng, cfg, k):
    act = rng.integers(-128, 128, (cfg.rows, k))
    wgt = rng.integers(cfg.weight_min, 128, (k, cfg.out_lanes))
    if rng.random() < 0.2:      # extreme operands: packed chain worst case
        act[:] = -128
        wgt[:] = rng.choice([cfg.weight_min, 127])
    return act.astype(np.int64), wgt.astype(np.int64)


def _params(rng, cfg):
    L = cfg.out_lanes
    lo = rng.integers(-128, 128, L)
    p = {
        "bias": np.where(rng.random(L) < 0.9, rng.integers(-2**14, 2**14, L),
                         rng.choice([INT32_MIN, INT32_MAX, -(2**(cfg.bias_width - 1))], L)),
        "mult": rng.integers(2**30, 2**31, L),
        "shift": rng.integers(-11, -3, L),
        "zp": rng.integers(-20, 21, L),
        "act_min": lo,
        "act_max": np.minimum(lo + rng.integers(0, 256, L), 255),
        "alpha_mult": rng.integers(2**30, 2**31, L),
        "alpha_shift": rng.integers(-4, 1, L),
        "prelu": rng.integers(0, 2, L),
        # This file checks the core's plumbing in tflite mode; ort lanes are covered by
        # tests/test_hw_requant_lane.py and the Verilator regression.
        "mode": np.zeros(L, np.int64),
        "scale_f32": np.zeros(L, np.int64),
    }
    return {k: v.astype(np.int64) for k, v in p.items()}, int(rng.integers(0, 2))


def _expected_codes(act, wgt, p, lut_en, lut):
    """docs/array.md: acc = A @ W exactly, then the lane semantics per channel."""
    acc = act @ wgt                                           # (rows, out_lanes), exact int64
    t = np.clip(acc + p["bias"], INT32_MIN, INT32_MAX)
    v = multiply_by_quantized_multiplier(t, p["mult"], p["shift"])
    alt = multiply_by_quantized_multiplier(v, p["alpha_mult"], p["alpha_shift"])
    v = np.where((p["prelu"] == 1) & (v < 0), alt, v)
    code = np.clip(v + p["zp"], p["act_min"], p["act_max"]) & 0xFF
    return lut[code] if lut_en else code


def _random_ks(rng, n):
    """Reductions: many 1-beat tiles (they stress tile_gap_ok) and some longer ones."""
    return [int(rng.choice([1, 1, 2, 3, 8, 9, 17, int(rng.integers(1, 30))])) for _ in range(n)]


# ---------------------------------------------------------------- MacArray

_CheckedArray = checked(MacArray, "array")


def _run_array(cfg, seed, n_tiles=12, p_bubble=0.3, p_stall=0.25):
    rng = np.random.default_rng(seed)
    dut = _CheckedArray(cfg)
    tiles = [_tile(rng, cfg, k) for k in _random_ks(rng, n_tiles)]
    # Schedule (enabled cycles); last beats respect min_tile_cycles.
    sched, expect, prev_last = [], {}, None
    for act, wgt in tiles:
        for k in range(act.shape[1]):
            is_last = k == act.shape[1] - 1
            while rng.random() < p_bubble or (is_last and prev_last is not None
                                              and len(sched) - prev_last < cfg.min_tile_cycles):
                sched.append(None)
            sched.append((act[:, k], wgt[k], is_last))
        prev_last = len(sched) - 1
        acc = act @ wgt
        for r in range(cfg.rows):
            expect[prev_last + cfg.array_latency + r] = (acc[r].tolist(), int(r == cfg.rows - 1))
    sched += [None] * (cfg.array_latency + cfg.rows + 3)
    seen = {}

    async def tb(ctx):
        n, prev = 0, None
        while n < len(sched):
            en = rng.random() >= p_stall
            beat = sched[n] if en else None
            ctx.set(dut.en, en)
            ctx.set(dut.valid, beat is not None if en else int(rng.integers(0, 2)))
            ctx.set(dut.last, beat[2] if beat is not None else int(rng.integers(0, 2)))
            act = beat[0] if beat is not None else rng.integers(-128, 128, cfg.rows)
            wgt = beat[1] if beat is not None else rng.integers(-128, 128, cfg.out_lanes)
            for i in range(cfg.rows):
                ctx.set(dut.act[i], int(act[i]))
            for lane in range(cfg.out_lanes):
                ctx.set(dut.wgt[lane], int(wgt[lane]))
            obs = (ctx.get(dut.acc_valid), ctx.get(dut.acc_last),
                   [ctx.get(dut.acc[lane]) for lane in range(cfg.out_lanes)])
            if prev is not None and prev[0] == n:
                assert obs == prev[1], "MacArray output changed during a stall"
            if prev is not None and prev[0] == n - 1:
                assert obs[1] == prev[2], f"acc_last_next at enabled cycle {n - 1}"
            if prev is None or prev[0] != n:
                prev = (n, obs, ctx.get(dut.acc_last_next))
            if en:
                if obs[0]:
                    seen[n] = (obs[2], obs[1])
                n += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(expect) == n_tiles * cfg.rows
    assert seen == expect


@pytest.mark.parametrize("cfg", [
    ArrayConfig(rows=2, cols=2), ArrayConfig(rows=2, cols=3), ArrayConfig(rows=3, cols=2, weight_min=-128),
    ArrayConfig(rows=2, cols=2, packing="none"), ArrayConfig(rows=1, cols=1),
    ArrayConfig(rows=9, cols=2, packing="none"),
], ids=["2x2", "2x3", "3x2_fullrange", "2x2_none", "1x1", "9x2_none_3loads"])
def test_mac_array_values_and_array_latency(cfg):
    _run_array(cfg, seed=cfg.rows * 10 + cfg.cols)


# ---------------------------------------------------------------- ArrayCore

_CheckedCore = checked(ArrayCore, "core")


class _CoreWithOutsideInputRegisters(wiring.Component):
    """``ArrayCore(inputs_registered=True, params_delay=params_delay)`` behind the registers it
    expects outside (act/wgt loaded when ``array_en``, the params payload through ``params_delay``
    registers loaded on every cycle, as hw.top's buffer output registers and params read): the
    ports of ``ArrayCore(cfg)``."""

    def __init__(self, cfg, params_delay=1):
        self.cfg = cfg
        self.params_delay = params_delay
        super().__init__({"inp": In(stream.Signature(input_layout(cfg))),
                          "params": In(stream.Signature(params_layout(cfg))),
                          "lut": In(stream.Signature(lut_layout())),
                          "out": Out(stream.Signature(output_layout(cfg)))})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = _CheckedCore(self.cfg, inputs_registered=True, params_delay=self.params_delay)
        m.d.comb += [core.params.valid.eq(self.params.valid), self.params.ready.eq(core.params.ready)]
        par = Value.cast(self.params.payload)
        for i in range(self.params_delay):
            q = Signal.like(par, name=f"params_outside{i}", reset_less=True)
            m.d.sync += q.eq(par)
            par = q
        m.d.comb += Value.cast(core.params.payload).eq(par)
        connect(m, wiring.flipped(self.lut), core.lut)
        connect(m, core.out, wiring.flipped(self.out))
        m.d.comb += [core.inp.valid.eq(self.inp.valid), self.inp.ready.eq(core.inp.ready),
                     core.inp.payload.last.eq(self.inp.payload.last)]
        for f in ("act", "wgt"):
            q = Signal.like(Value.cast(getattr(self.inp.payload, f)), name=f"{f}_outside", reset_less=True)
            with m.If(core.array_en):
                m.d.sync += q.eq(getattr(self.inp.payload, f))
            m.d.comb += Value.cast(getattr(core.inp.payload, f)).eq(q)
        return m


def _run_core(cfg, seed, n_tiles=10, p_in=0.8, p_par=0.5, p_out=0.7, preload_lut=True, ks=None,
              check_coverage=True, inputs_registered=False, params_delay=1, input_qualified=False):
    """Drive and check one random run; ``preload_lut=False``: no table, no lut_en, and
    the first tile is a single beat offered on the very first cycle after reset; ``ks``:
    the tiles' reduction lengths (default random); ``check_coverage``: the run must have
    stalled the output and held a last beat; ``inputs_registered``: the core with its first
    act/wgt input registers outside (the same ports and cycle behaviour); ``input_qualified``: the
    core with that flag, its source offering a beat only when the ready rule holds (as hw.sequencer
    does), so inp.ready must be en."""
    rng = np.random.default_rng(seed)
    assert not (inputs_registered and input_qualified)
    dut = (_CoreWithOutsideInputRegisters(cfg, params_delay) if inputs_registered
           else _CheckedCore(cfg, input_qualified=input_qualified))
    lay_in, lay_par, lay_out = input_layout(cfg), params_layout(cfg), output_layout(cfg)
    lut = rng.integers(0, 256, 256) if preload_lut else np.zeros(256, np.int64)
    ks = _random_ks(rng, n_tiles) if ks is None else list(ks)
    if not preload_lut:
        ks[0] = 1
        p_in = 1.0
    tiles = [_tile(rng, cfg, k) for k in ks]
    pars = [_params(rng, cfg) for _ in range(n_tiles)]
    if not preload_lut:
        pars = [(p, 0) for p, _ in pars]
    codes = [_expected_codes(a, w, p, le, lut) for (a, w), (p, le) in zip(tiles, pars)]
    beats = [(pack_payload(lay_in, {"act": a[:, k].tolist(), "wgt": w[k].tolist(),
                                    "last": int(k == a.shape[1] - 1)}), int(k == a.shape[1] - 1))
             for a, w in tiles for k in range(a.shape[1])]
    par_bits = [pack_payload(lay_par, {"lane": [{f: int(p[f][lane]) for f in FIELDS}
                                                for lane in range(cfg.out_lanes)], "lut_en": le})
                for p, le in pars]
    depth = cfg.param_fifo_depth
    inp_payload, par_payload = Value.cast(dut.inp.payload), Value.cast(dut.params.payload)
    out_payload = Value.cast(dut.out.payload)
    log = {"out": [], "stalled_out": 0, "held_last": 0, "params_full": 0, "push_to_last": []}

    async def tb(ctx):
        # The table first (lut is independent of en and always ready).
        for a in range(256 if preload_lut else 0):
            ctx.set(dut.lut.valid, 1)
            ctx.set(Value.cast(dut.lut.payload), pack_payload(lut_layout(), {"addr": a, "data": int(lut[a])}))
            assert ctx.get(dut.lut.ready) == 1
            await ctx.tick()
        ctx.set(dut.lut.valid, 0)
        n = 256 if preload_lut else 0         # the table cycles were enabled (out idle)
        bi = pi = 0
        level = claimed = 0
        prev_last = None
        push_cycle = []                       # cycle of each tile's params push
        pop_at = set()
        expect = deque()
        held = None                           # out payload while stalled
        idle = 0
        in_valid = par_valid = False
        for cycle in range(200_000):
            # Sources keep valid up until the transfer (stream rule); payload is the next item.
            if not in_valid:
                in_valid = bi < len(beats) and rng.random() < p_in
            if not par_valid:
                par_valid = pi < len(par_bits) and rng.random() < p_par
            in_bits, in_last = beats[bi] if bi < len(beats) else (0, 0)
            out_ready = rng.random() < p_out
            ctx.set(dut.inp.valid, in_valid)
            ctx.set(inp_payload, in_bits)
            ctx.set(dut.params.valid, par_valid)
            ctx.set(par_payload, par_bits[pi] if pi < len(par_bits) else 0)
            ctx.set(dut.out.ready, out_ready)

            ov = ctx.get(dut.out.valid)
            en = (not ov) or out_ready
            gap_ok = prev_last is None or n - prev_last >= cfg.min_tile_cycles
            # a push counts for the credit from PARAM_CREDIT_CYCLES after its cycle
            recent = sum(1 for c in push_cycle if c > cycle - PARAM_CREDIT_CYCLES)
            exp_in_ready = en and (not in_last or (gap_ok and level - claimed - recent > 0))
            if input_qualified:
                ctx.set(dut.inp.valid, in_valid and exp_in_ready)        # the source applies the rule
                assert ctx.get(dut.inp.ready) == en, f"inp.ready at cycle {cycle}"
            else:
                assert ctx.get(dut.inp.ready) == exp_in_ready, f"inp.ready at cycle {cycle}"
            assert ctx.get(dut.params.ready) == (level < depth), f"params.ready at cycle {cycle}"
            log["held_last"] += en and in_valid and in_last and not exp_in_ready
            log["params_full"] += par_valid and level >= depth

            if ov:
                bits = ctx.get(out_payload)
                if held is not None:
                    assert bits == held, "out payload changed while stalled"
                if en:                       # transfer (valid & ready)
                    assert expect, f"unexpected output beat at enabled cycle {n}"
                    n_exp, t, r = expect.popleft()
                    assert n == n_exp, f"tile {t} row {r} on out at enabled cycle {n}, expected {n_exp}"
                    got = unpack_payload(lay_out, bits)
                    assert got == {"data": codes[t][r].tolist(), "last": int(r == cfg.rows - 1)}, \
                        f"tile {t} row {r}"
                    log["out"].append((t, r))
                    held = None
                else:
                    held = bits
                    log["stalled_out"] += 1

            take = in_valid and exp_in_ready
            push = par_valid and level < depth
            pop = en and n in pop_at
            if take:
                if in_last:
                    log.setdefault("first_last_cycle", cycle)
                    t = sum(b[1] for b in beats[:bi])
                    log["push_to_last"].append(cycle - push_cycle[t])
                    prev_last = n
                    claimed += 1
                    pop_at.add(n + cfg.array_latency + cfg.rows - 1)
                    expect.extend((n + cfg.latency + r, t, r) for r in range(cfg.rows))
                bi += 1
                in_valid = False
            if push:
                push_cycle.append(cycle)
                pi += 1
                level += 1
                par_valid = False
            if pop:
                level -= 1
                claimed -= 1
                assert level >= 0 and claimed >= 0
            if en:
                n += 1
            await ctx.tick()
            if bi == len(beats) and not expect:
                idle += 1
                if idle > cfg.latency + cfg.rows + 4:   # nothing else may come out
                    break
        assert not expect and len(log["out"]) == n_tiles * cfg.rows
        assert level == claimed == 0

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    # The run must have exercised the interesting paths.
    if check_coverage:
        assert log["stalled_out"] > 0 and log["held_last"] > 0
    return log


@pytest.mark.parametrize("cfg,inputs_registered,params_delay", [
    (ArrayConfig(rows=2, cols=2), False, 0),
    (ArrayConfig(rows=2, cols=3), False, 0),
    (ArrayConfig(rows=2, cols=2, packing="none"), False, 0),
    (ArrayConfig(rows=1, cols=1, param_fifo_depth=1, weight_min=-128), False, 0),
    (ArrayConfig(rows=2, cols=3), True, 2),
    (ArrayConfig(rows=3, cols=2, packing="none"), True, 1),
    (ArrayConfig(rows=1, cols=1, param_fifo_depth=1, weight_min=-128), True, 2),
    (ArrayConfig(rows=2, cols=2), True, 3),
    (ArrayConfig(rows=1, cols=1, param_fifo_depth=2, weight_min=-128), True, 3),
], ids=["2x2_dual", "2x3_dual", "2x2_none", "1x1_fifo1", "2x3_dual_regd2", "3x2_none_regd1", "1x1_fifo1_regd2",
        "2x2_dual_regd3", "1x1_fifo2_regd3"])
def test_core_values_latency_ready_rules(cfg, inputs_registered, params_delay):
    """Values and exact output cycles; ``_regd<d>``: the act/wgt input registers and ``d`` params
    registers outside the core (hw.top with the buffers' output registers and the params buffer's
    read, ``params_delay``), the same results on the same cycles."""
    log = _run_core(cfg, seed=cfg.rows * 7 + cfg.cols + cfg.param_fifo_depth, inputs_registered=inputs_registered,
                    params_delay=params_delay)
    assert log["out"] == [(t, r) for t in range(10) for r in range(cfg.rows)]


@pytest.mark.parametrize("cfg", [ArrayConfig(rows=2, cols=2), ArrayConfig(rows=3, cols=2, packing="none"),
                                 ArrayConfig(rows=1, cols=1, param_fifo_depth=1, weight_min=-128)],
                         ids=["2x2_dual", "3x2_none", "1x1_fifo1"])
def test_core_input_qualified(cfg):
    """``input_qualified`` (hw.top): a source that offers a beat only when the ready rule holds gets
    the same results on the same cycles; inp.ready is en, and the shadow check (valid implies the
    rule) holds on every cycle."""
    log = _run_core(cfg, seed=cfg.rows * 5 + cfg.param_fifo_depth, input_qualified=True)
    assert log["held_last"] > 0 and log["stalled_out"] > 0


def test_core_input_qualified_violation_is_caught():
    """A beat offered against the rule (a last beat before any params credit) trips the
    ``input_qualified`` shadow check."""
    cfg = ArrayConfig(rows=2, cols=2)
    dut = _CheckedCore(cfg, input_qualified=True)

    async def tb(ctx):
        ctx.set(dut.out.ready, 1)
        ctx.set(dut.inp.valid, 1)
        ctx.set(dut.inp.payload.last, 1)
        assert ctx.get(dut.inp.ready) == 1          # en: the core takes whatever is offered
        await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    with pytest.raises(AssertionError, match="input_qualified"):
        sim.run()
    with pytest.raises(ValueError, match="input_qualified"):
        ArrayCore(cfg, input_qualified=1)


def test_core_first_tile_not_held_after_reset():
    # tile_gap_ok is true for the first tile: a one-beat tile offered together
    # with its params right after reset is accepted as soon as the params are in.
    cfg = ArrayConfig(rows=3, cols=2)
    log = _run_core(cfg, seed=8, p_par=1.0, preload_lut=False)
    # params pushed on cycle 0, a credit from cycle PARAM_CREDIT_CYCLES
    assert log["first_last_cycle"] == PARAM_CREDIT_CYCLES


@pytest.mark.parametrize("cfg", [
    ArrayConfig(rows=1, cols=1, param_fifo_depth=1, weight_min=-128),
    ArrayConfig(rows=1, cols=1, param_fifo_depth=2, weight_min=-128),
    ArrayConfig(rows=2, cols=2, param_fifo_depth=2),
], ids=["1x1_fifo1", "1x1_fifo2", "2x2_fifo2"])
def test_core_params_pushed_as_late_as_allowed(cfg):
    # The tightest push -> use distance of the params head (PARAMS_PUSH_TO_HEAD_CYCLES: the
    # registered FIFO write and the registered head): one-beat tiles always offered, params
    # late, out always ready, so a tile's last beat is accepted PARAM_CREDIT_CYCLES (2) after its
    # params push and its row 0 enters the lanes exactly 2 + array_latency cycles after the push
    # (2 + 9 in the 1x1 array, the smallest latency). Every tile's values are checked.
    assert PARAM_CREDIT_CYCLES + cfg.array_latency > PARAMS_PUSH_TO_HEAD_CYCLES
    log = _run_core(cfg, seed=11, n_tiles=24, p_in=1.0, p_par=0.35, p_out=1.0, preload_lut=False,
                    ks=[1] * 24, check_coverage=False)
    assert len(log["out"]) == 24 * cfg.rows
    assert min(log["push_to_last"]) == PARAM_CREDIT_CYCLES
    assert sum(d == PARAM_CREDIT_CYCLES for d in log["push_to_last"]) >= 12     # most tiles are the tightest case


def test_core_params_fifo_fills():
    # Params offered eagerly, inputs slow: the FIFO fills and params.ready drops.
    log = _run_core(ArrayConfig(rows=2, cols=2, param_fifo_depth=2), seed=5, p_in=0.3, p_par=1.0)
    assert log["params_full"] > 0


def test_core_params_fifo_read_address_copies():
    # The params FIFO is split into memories of <= PARAM_FIFO_GROUP_BITS (12 LUT-RAM cells), each
    # read at its own copy of ra; the simulated runs above assert every copy == ra on every cycle
    # (shadow_checks). The 30 x 4 ULX3S top: 4 lanes' params + lut_en = 169 cells -> 15 copies.
    from hw.fpga import ULX3S_CFG
    assert -(-params_layout(ULX3S_CFG).size // PARAM_FIFO_GROUP_BITS) == 15
    for cfg in (ArrayConfig(rows=2, cols=3), ULX3S_CFG):
        n = -(-params_layout(cfg).size // PARAM_FIFO_GROUP_BITS)
        core = ArrayCore(cfg)
        Fragment.get(core, None)
        copies = [name for name, _, _ in core.shadow_checks if name.startswith("ra_g")]
        assert copies == [f"ra_g{g}" for g in range(n)]
    # On ECP5 each copy is its own set of kept TRELLIS_FF instances (hw.buffers.kept_copy: yosys
    # would merge identical registers back into one).
    import re
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    cfg = ArrayConfig(rows=2, cols=3)
    n = -(-params_layout(cfg).size // PARAM_FIFO_GROUP_BITS)
    text = rtlil.convert(ArrayCore(cfg), name="core", platform=ULX3S_85F_Platform())
    cells = re.findall(r"attribute \\keep 1\n(?:  attribute [^\n]*\n)*  cell \\TRELLIS_FF \\(ra_g\S+)", text)
    abits = (cfg.param_fifo_depth - 1).bit_length()
    assert sorted(cells) == sorted(f"ra_g{g}_ff{i}" for g in range(n) for i in range(abits))


def test_core_ports_and_layouts():
    cfg = ArrayConfig(rows=2, cols=3)
    text = verilog.convert(ArrayCore(cfg), name="array_core")
    for port, width in (("inp__payload", input_layout(cfg).size), ("params__payload", params_layout(cfg).size),
                        ("lut__payload", 16), ("out__payload", output_layout(cfg).size)):
        assert f"[{width - 1}:0] {port};" in text, port
    for port in ("clk", "rst", "inp__valid", "inp__ready", "params__valid", "params__ready",
                 "lut__valid", "lut__ready", "out__valid", "out__ready"):
        assert f" {port};" in text, port
    # pack/unpack are inverses and check ranges, naming the field.
    lay = params_layout(cfg)
    value = {"lane": [{"bias": -5, "mult": 2**31 - 1, "shift": -31, "zp": -256, "act_min": -128, "act_max": 255,
                       "alpha_mult": 0, "alpha_shift": 15, "prelu": 1, "mode": 1,
                       "scale_f32": 0x3F800000}] * cfg.out_lanes, "lut_en": 1}
    assert unpack_payload(lay, pack_payload(lay, value)) == value
    with pytest.raises(ValueError, match=r"payload\.lane\[0\]\.shift"):
        pack_payload(lay, {"lane": [dict(value["lane"][0], shift=32)] * cfg.out_lanes, "lut_en": 0})
    with pytest.raises(ValueError, match="missing field 'last'"):
        pack_payload(input_layout(cfg), {"act": [0, 0], "wgt": [0] * 6})
    # params_delay: how many of the params write registers are outside (named, with its range)
    for kw in ({"params_delay": 4}, {"params_delay": True}, {"params_delay": -1},
               {"params_delay": 0, "inputs_registered": True}):
        with pytest.raises(ValueError, match=r"params_delay must be 0, 1, 2 or 3 \(>= 1 with inputs_registered\)"):
            ArrayCore(cfg, **kw)
