"""hw.requant_lane.RequantLane against golden.requant, bit for bit, and its latency.

Thousands of random vectors plus the corners that break naive implementations:
the SRDHM extremes (INT32_MIN input, mult = INT32_MAX), exact RDBPOT ties for
every right shift, every representable shift (signed(6): -32..31), saturation
of the bias add and of the left shift, PReLU on negative values, clamps, and
the LUT (including a table rewrite while rows are in flight), all under random
enable stalls with junk on the inputs of disabled cycles.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth import Shape, signed
from amaranth.sim import Simulator

from golden._check import INT32_MAX, INT32_MIN
from golden.config import REQUANT_LATENCY, REQUANT_STAGES, ArrayConfig
from golden.requant import multiply_by_quantized_multiplier, rdbpot, srdhm
from hw.requant_lane import SHIFT_WIDTH, RequantLane, lane_params_layout

FIELDS = ("bias", "mult", "shift", "zp", "act_min", "act_max", "alpha_mult", "alpha_shift", "prelu")


def lane_reference(v: dict, lut: np.ndarray) -> np.ndarray:
    """docs/array.md lane semantics with golden.requant primitives (vectorised over rows)."""
    t = np.clip(v["acc"] + v["bias"], INT32_MIN, INT32_MAX)
    x = multiply_by_quantized_multiplier(t, v["mult"], v["shift"])
    alt = multiply_by_quantized_multiplier(x, v["alpha_mult"], v["alpha_shift"])
    x = np.where((v["prelu"] == 1) & (x < 0), alt, x)
    q = np.clip(x + v["zp"], v["act_min"], v["act_max"])   # np.clip order, also for min > max
    code = q & 0xFF
    return np.where(v["lut_en"] == 1, lut[code], code)


def _vectors(cfg, rng, n):
    """n random rows (dict of int64 arrays), a third of them steered to corners."""
    smin, smax = -(1 << (SHIFT_WIDTH - 1)), (1 << (SHIFT_WIDTH - 1)) - 1
    amax = (1 << (cfg.acc_width - 1)) - 1
    bmax = (1 << (cfg.bias_width - 1)) - 1
    pick = rng.integers(0, 4, n)
    v = {
        "acc": np.select([pick == 0, pick == 1], [rng.integers(-amax - 1, amax + 1, n),
                                                  rng.integers(-2**16, 2**16, n)],
                         rng.choice([-amax - 1, amax, 0, 1, -1, INT32_MIN, INT32_MAX], n)),
        "bias": np.select([pick == 0, pick == 1], [rng.integers(-bmax - 1, bmax + 1, n),
                                                   rng.integers(-2**12, 2**12, n)],
                          rng.choice([0, -bmax - 1, bmax, INT32_MIN, INT32_MAX, -1], n)),
        "mult": np.where(rng.random(n) < 0.7, rng.integers(0, 2**31, n),
                         rng.choice([0, 1, 2**30, 2**31 - 1, 2**30 + 1], n)),
        "shift": rng.integers(smin, smax + 1, n),
        "zp": rng.integers(-256, 256, n),
        "alpha_mult": np.where(rng.random(n) < 0.8, rng.integers(0, 2**31, n), 2**31 - 1),
        "alpha_shift": rng.integers(smin, smax + 1, n),
        "prelu": rng.integers(0, 2, n),
        "lut_en": rng.integers(0, 2, n),
    }
    # Mostly the shifts a real layer uses (outputs land inside the code range).
    real = rng.random(n) < 0.5
    v["shift"] = np.where(real, rng.integers(-20, 1, n), v["shift"])
    v["mult"] = np.where(real, rng.integers(2**30, 2**31, n), v["mult"])
    v["acc"] = np.where(real, rng.integers(-2**20, 2**20, n), v["acc"])
    v["alpha_shift"] = np.where(real, rng.integers(-8, 1, n), v["alpha_shift"])
    lo = rng.integers(-128, 256, n)
    hi = np.minimum(lo + rng.integers(0, 256, n), 255)
    inverted = rng.random(n) < 0.03              # act_min > act_max: np.clip gives act_max
    v["act_min"] = np.where(inverted, hi + 1, lo).clip(-128, 255)
    v["act_max"] = hi
    for k in v:
        v[k] = v[k].astype(np.int64)
    return v


def _corners(cfg):
    """Hand-made rows: SRDHM extremes, RDBPOT ties at every right shift, saturations."""
    rows = []
    base = dict(bias=0, mult=2**31 - 1, shift=0, zp=0, act_min=-128, act_max=127,
                alpha_mult=2**31 - 1, alpha_shift=0, prelu=0, lut_en=0)
    # SRDHM with a = INT32_MIN (from the bias add, from the left shift) and the largest b.
    rows.append(dict(base, acc=INT32_MIN))
    rows.append(dict(base, acc=-(2**31 - 5), bias=-100))           # sat32 to INT32_MIN
    rows.append(dict(base, acc=-2**20, shift=15))                   # satshl to INT32_MIN
    rows.append(dict(base, acc=2**20, shift=15))                    # satshl to INT32_MAX
    rows.append(dict(base, acc=INT32_MAX, bias=(1 << (cfg.bias_width - 1)) - 1))  # sat32 to INT32_MAX
    rows.append(dict(base, acc=INT32_MIN, prelu=1, alpha_shift=31))  # PReLU satshl of INT32_MIN
    rows.append(dict(base, acc=-1, shift=31, prelu=1, alpha_shift=31, alpha_mult=2**31 - 1))
    # The SRDHM nudge boundaries: a*b = +-2**30 (+-1) with b = 2**30.
    for acc in (1, -1, 2, -2, 3, -3):
        rows.append(dict(base, acc=acc, mult=2**30, shift=0, act_min=-128, act_max=255))
    # Exact RDBPOT ties x = (2k+1) * 2**(e-1), with SRDHM(x*2, 2**30) = x, for every e.
    for e in range(1, 33):
        for k in (0, 1, -1, -2, 5, -6):
            x = (2 * k + 1) << (e - 1)
            if INT32_MIN <= 2 * x <= INT32_MAX:
                for prelu in (0, 1):
                    rows.append(dict(base, acc=2 * x, mult=2**30, shift=-e, zp=3, act_min=-128, act_max=127,
                                     prelu=prelu, alpha_mult=2**30, alpha_shift=-min(e, 32)))
    # Every representable shift with a few magnitudes.
    for s in range(-(1 << (SHIFT_WIDTH - 1)), 1 << (SHIFT_WIDTH - 1)):
        for acc in (INT32_MIN, -12345, -1, 0, 1, 77777, INT32_MAX):
            rows.append(dict(base, acc=acc, shift=s, mult=1518500250, act_min=-128, act_max=127,
                             prelu=1, alpha_mult=858993459, alpha_shift=-s // 2))
    return {k: np.array([r[k] for r in rows], np.int64) for k in rows[0]}


def test_reference_primitives_sanity():
    # The corners above only matter if golden really treats them specially.
    assert int(srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(srdhm(-1, 2**30)) == 0 and int(srdhm(1, 2**30)) == 1   # nudge, truncation (not floor)
    assert int(rdbpot(-3, 1)) == -2 and int(rdbpot(3, 1)) == 2        # ties away from zero
    assert REQUANT_LATENCY == len(REQUANT_STAGES) == 8


def _run_lane(cfg, v, lut_init, seed, p_bubble=0.15, p_stall=0.2, lut_rewrite_at=None):
    rng = np.random.default_rng(seed)
    dut = RequantLane(cfg)
    n_rows = len(v["acc"])
    # Stimuli must fit the ports (the simulator would silently wrap them).
    shapes = {f: Shape.cast(lane_params_layout(cfg)[f].shape) for f in FIELDS}
    shapes["acc"] = Shape.cast(signed(cfg.acc_width))
    for f, sh in shapes.items():
        lo, hi = (-(1 << (sh.width - 1)), (1 << (sh.width - 1)) - 1) if sh.signed else (0, (1 << sh.width) - 1)
        assert lo <= v[f].min() and v[f].max() <= hi, f"stimulus {f} outside {sh}"
    # Schedule in enabled cycles: row index or None (bubble).
    sched = []
    for i in range(n_rows):
        while rng.random() < p_bubble:
            sched.append(None)
        sched.append(i)
    sched += [None] * (REQUANT_LATENCY + 2)
    row_at = {n: i for n, i in enumerate(sched) if i is not None}

    versions = [lut_init.copy()]           # LUT contents; a write on cycle t is read from t + 1
    version_at_enabled = []                # LUT version seen during enabled cycle n
    seen = {}
    rewrite = {} if lut_rewrite_at is None else {lut_rewrite_at + k: (k, int(rng.integers(0, 256)))
                                                 for k in range(256)}

    async def tb(ctx):
        # Load the initial table through the write stream, with the pipeline stalled.
        ctx.set(dut.en, 0)
        for a in range(256):
            ctx.set(dut.lut.valid, 1)
            ctx.set(dut.lut.payload.addr, a)
            ctx.set(dut.lut.payload.data, int(lut_init[a]))
            await ctx.tick()
        n, cyc = 0, 0
        prev = None
        while n < len(sched):
            en = rng.random() >= p_stall
            i = sched[n] if en else None
            ctx.set(dut.en, en)
            if i is not None:
                ctx.set(dut.valid, 1)
                ctx.set(dut.last, i % 3 == 0)
                ctx.set(dut.acc, int(v["acc"][i]))
                ctx.set(dut.lut_en, int(v["lut_en"][i]))
                for f in FIELDS:
                    ctx.set(dut.params[f], int(v[f][i]))
            else:      # bubbles and disabled cycles: junk everywhere except valid on bubbles
                ctx.set(dut.valid, 0 if en else int(rng.integers(0, 2)))
                ctx.set(dut.last, int(rng.integers(0, 2)))
                ctx.set(dut.acc, int(rng.integers(-2**31, 2**31)))
                ctx.set(dut.lut_en, int(rng.integers(0, 2)))
                ctx.set(dut.params.mult, int(rng.integers(0, 2**31)))
                ctx.set(dut.params.shift, int(rng.integers(-32, 32)))
            # LUT writes are independent of en.
            w = rewrite.get(cyc)
            ctx.set(dut.lut.valid, w is not None)
            if w is not None:
                ctx.set(dut.lut.payload.addr, w[0])
                ctx.set(dut.lut.payload.data, w[1])
            assert ctx.get(dut.lut.ready) == 1
            obs = (ctx.get(dut.out_valid), ctx.get(dut.out_last), ctx.get(dut.out_data))
            if prev is not None and prev[0] == n:
                assert obs == prev[1], f"lane output changed during a stall (enabled index {n})"
            prev = (n, obs)
            if en:
                version_at_enabled.append(len(versions) - 1)
                if obs[0]:
                    seen[n] = obs
                n += 1
            await ctx.tick()
            if w is not None:
                t = versions[-1].copy()
                t[w[0]] = w[1]
                versions.append(t)
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()

    # Row entering on enabled cycle c: on the output on enabled cycle c + REQUANT_LATENCY;
    # its LUT read happened on enabled cycle c + REQUANT_LATENCY - 1.
    expect = {}
    idx = np.array(sorted(row_at.values()))
    enter = np.array([c for c in sorted(row_at)])
    for ver in set(version_at_enabled[c + REQUANT_LATENCY - 1] for c in enter):
        sel = np.array([version_at_enabled[c + REQUANT_LATENCY - 1] == ver for c in enter])
        codes = lane_reference({k: a[idx[sel]] for k, a in v.items()}, versions[ver])
        for c, i, code in zip(enter[sel], idx[sel], codes):
            expect[int(c) + REQUANT_LATENCY] = (1, int(i % 3 == 0), int(code))
    assert len(expect) == n_rows
    bad = [(c, seen.get(c), e) for c, e in expect.items() if seen.get(c) != e]
    assert not bad, f"{len(bad)} mismatches (enabled cycle, rtl, expected), first: {bad[:5]}"
    assert set(seen) == set(expect), "output beats at unexpected cycles"


@pytest.mark.parametrize("seed", [1, 2])
def test_lane_random_bit_exact(seed):
    cfg = ArrayConfig(rows=1, cols=1)
    rng = np.random.default_rng(seed)
    v = _vectors(cfg, rng, 2500)
    lut = rng.integers(0, 256, 256)
    _run_lane(cfg, v, lut, seed=seed + 10)


def test_lane_corners_bit_exact():
    cfg = ArrayConfig(rows=1, cols=1)
    v = _corners(cfg)
    v["lut_en"] = np.zeros(len(v["acc"]), np.int64)
    assert len(v["acc"]) > 500
    _run_lane(cfg, v, np.arange(256), seed=3)
    # The same corners with the output through a permutation table.
    v["lut_en"][:] = 1
    _run_lane(cfg, v, np.random.default_rng(4).permutation(256), seed=4, p_stall=0.0, p_bubble=0.0)


def test_lane_lut_rewrite_in_flight_and_latency():
    # Every row uses the table; it is rewritten entry by entry while rows flow,
    # so each output checks "a write on cycle t is read from t + 1".
    cfg = ArrayConfig(rows=1, cols=1, packing="none")
    rng = np.random.default_rng(9)
    v = _vectors(cfg, rng, 600)
    v["lut_en"][:] = 1
    _run_lane(cfg, v, rng.integers(0, 256, 256), seed=9, lut_rewrite_at=40)


def test_lane_latency_is_requant_latency():
    # One isolated row, no stalls: it appears exactly REQUANT_LATENCY cycles later.
    cfg = ArrayConfig(rows=1, cols=1)
    dut = RequantLane(cfg)
    hits = []

    async def tb(ctx):
        for f, val in dict(bias=0, mult=2**30, shift=0, zp=0, act_min=-128, act_max=127,
                           alpha_mult=0, alpha_shift=0, prelu=0).items():
            ctx.set(dut.params[f], val)
        ctx.set(dut.en, 1)
        for cyc in range(3 * REQUANT_LATENCY):
            ctx.set(dut.valid, cyc == 2)
            ctx.set(dut.acc, 84 if cyc == 2 else 0)
            if ctx.get(dut.out_valid):
                hits.append((cyc, ctx.get(dut.out_data)))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert hits == [(2 + REQUANT_LATENCY, 42)]
