"""hw.ort_requant's blocks, chained combinationally, against IEEE float32 arithmetic (NumPy) step by step.

The lane test (test_hw_requant_lane.py) checks the final codes against golden;
here every intermediate of the ort datapath is checked on its own, including
the values the clamp later hides:

* ``normalise_abs``: ma * 2**(msb - 23) == float32(|t|) (the int32 -> float32
  conversion, round half to even), ``neg``/``tzero``;
* ``round_product``: pm * 2**e == float32(float32(t) * scale) whenever the
  scale and the float32 product are normal numbers;
* ``to_integer``: mag == min(rint(|f|), MAG_SAT) (half to even), for every
  positive finite scale, also when float32 overflows (inf) or underflows;
* ``apply_sign``: v = +-mag.

Stimuli: powers of two and their neighbours, int32 -> float32 ties at every
dropped-bit count, INT32_MIN/MAX, 0, random int32; scales over the whole
positive finite float32 range (subnormals included), realistic scales and
scales that put the product within a few ulps of a half-integer.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth import Elaboratable, Module, Signal, signed, unsigned
from amaranth.sim import Simulator

from golden._check import INT32_MAX, INT32_MIN
from hw import ort_requant as O


class OrtChain(Elaboratable):
    """Every ort block of the lane, without the pipeline registers (the multiplier in between)."""

    def __init__(self):
        self.t = Signal(signed(32))
        self.scale = Signal(unsigned(32))
        self.ma = Signal(unsigned(O.SIG_WIDTH))
        self.epart = Signal(signed(O.E_WIDTH))
        self.neg = Signal()
        self.tzero = Signal()
        self.pm = Signal(unsigned(O.SIG_WIDTH))
        self.e = Signal(signed(O.E_WIDTH))
        self.mag = Signal(unsigned(O.MAG_WIDTH))
        self.v = Signal(signed(O.V_WIDTH))

    def elaborate(self, platform):
        m = Module()
        mant, efield = O.scale_fields(self.scale)
        n = O.normalise_abs(m, self.t, efield, "n")
        p = Signal(unsigned(O.PROD_WIDTH))
        m.d.comb += p.eq(n["ma"] * mant)
        r = O.round_product(m, p, n["epart"], "r")
        mag = O.to_integer(m, r["pm"], r["e"], n["tzero"], "i")
        m.d.comb += [self.ma.eq(n["ma"]), self.epart.eq(n["epart"]), self.neg.eq(n["neg"]),
                     self.tzero.eq(n["tzero"]), self.pm.eq(r["pm"]), self.e.eq(r["e"]), self.mag.eq(mag),
                     self.v.eq(O.apply_sign(self.mag, self.neg))]
        return m


def _simulate(t: np.ndarray, scale: np.ndarray) -> dict:
    dut = OrtChain()
    names = ("ma", "epart", "neg", "tzero", "pm", "e", "mag", "v")
    out = {k: np.zeros(len(t), np.int64) for k in names}

    async def tb(ctx):
        for i in range(len(t)):
            ctx.set(dut.t, int(t[i]))
            ctx.set(dut.scale, int(scale[i]))
            for k in names:
                out[k][i] = ctx.get(getattr(dut, k))

    sim = Simulator(dut)
    sim.add_testbench(tb)
    sim.run()
    return out


def _f32(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32).astype(np.int64)


def _stimuli(rng, n):
    """(t, scale bits): the structured accumulators and scales of the module docstring."""
    ts = [0, 1, -1, INT32_MAX, INT32_MIN, -INT32_MAX]
    for k in range(1, 31):
        ts += [s * ((1 << k) + d) for s in (1, -1) for d in (-1, 0, 1)]
    for nd in range(1, 8):                   # conversion ties with nd dropped bits, both parities
        for j in (0, 1, 2, 3, (1 << 23) - 2, (1 << 23) - 1, int(rng.integers(0, 1 << 23))):
            tie = ((1 << 23) + j) * (1 << nd) + (1 << (nd - 1))
            ts += [tie, -tie, tie - 1, -tie - 1]
    ts = np.array(ts, np.int64)
    t = np.concatenate([ts, rng.integers(INT32_MIN, INT32_MAX + 1, n - len(ts))])
    t = np.where(rng.random(n) < 0.3, rng.integers(-2**16, 2**16, n), t)
    kind = rng.integers(0, 9, n)
    with np.errstate(divide="ignore", under="ignore", over="ignore"):
        near = ((rng.integers(0, 1100, n) + 0.5) / np.where(t == 0, 1, np.abs(t))).astype(np.float32)
    scale = np.select([kind <= 1, kind <= 3, kind <= 6, kind == 7],
                      [rng.integers(1, 0x7F800000, n),                       # any positive finite
                       _f32(10.0 ** rng.uniform(-9, 1, n)),                  # realistic
                       _f32(near),                                           # near a half-integer
                       rng.integers(95, 160, n) << 23],                      # powers of two
                      rng.integers(1, 0x800000, n))                          # subnormal
    scale = np.where(scale == 0, 1, scale)
    return t, scale


@pytest.mark.parametrize("seed", [1, 2])
def test_ort_blocks_match_ieee_float32(seed):
    rng = np.random.default_rng(seed)
    t, scale = _stimuli(rng, 4000)
    got = _simulate(t, scale)
    a = np.abs(t)
    nz = t != 0
    assert np.array_equal(got["neg"], (t < 0).astype(np.int64))
    assert np.array_equal(got["tzero"], (~nz).astype(np.int64))

    # Conversion: normalised significand, exactly float32(|t|).
    ma = got["ma"][nz]
    assert np.all((ma >= 2**23) & (ma <= 2**24))
    efield = scale >> 23
    msb = got["epart"] - efield + O.F32_EXP_OFFSET
    assert np.array_equal(msb[nz], np.floor(np.log2(a[nz].astype(np.float64))).astype(np.int64))
    conv = ma.astype(np.float64) * np.exp2((msb[nz] - 23).astype(np.float64))
    assert np.array_equal(conv, a[nz].astype(np.float32).astype(np.float64))
    assert np.count_nonzero(ma == 2**24) > 0                   # rounding carried into a new binade

    # Product: pm * 2**e is the float32 product wherever that is a normal number (and the scale
    # is: a subnormal scale is read with the hidden bit set, its result is 0 either way, below).
    s32 = scale.astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        f = np.abs(t).astype(np.float32) * s32                 # |float32(t)| * scale in float32
    f64 = f.astype(np.float64)
    normal = nz & (efield > 0) & np.isfinite(f64) & (f64 >= 2.0**-126)
    assert normal.sum() > 0.8 * len(t)
    pm, e = got["pm"][normal], got["e"][normal]
    assert np.all((pm >= 2**23) & (pm <= 2**24))
    assert np.array_equal(pm.astype(np.float64) * np.exp2(e.astype(np.float64)), f64[normal])

    # Integer: round half to even, saturated at MAG_SAT (inf saturates, underflow gives 0).
    with np.errstate(over="ignore"):
        want = np.minimum(np.rint(f64), O.MAG_SAT).astype(np.int64)
    assert np.array_equal(got["mag"], want)
    assert np.array_equal(got["v"], np.where(t < 0, -want, want))
    # The stimuli reach every regime: saturation, zero, and half-integer ties that round down.
    assert np.count_nonzero(want == O.MAG_SAT) > 100 and np.count_nonzero(nz & (want == 0)) > 100
    assert np.count_nonzero(nz & (efield == 0)) > 50                 # subnormal scales: 0
    fin = np.where(np.isfinite(f64), f64, 0.0)
    ties = fin - np.floor(fin) == 0.5
    assert np.count_nonzero(ties & (want < fin)) > 20 and np.count_nonzero(ties & (want > fin)) > 20


def test_ort_blocks_outside_the_valid_scales():
    # Sign bit ignored, +0 gives 0, exponent field 255 (inf/NaN) acts as a huge finite scale.
    rng = np.random.default_rng(3)
    t = np.array([0, 1, -1, 5, -77, INT32_MIN, INT32_MAX, 3, 123456, -2**20], np.int64)
    pos = rng.integers(1, 0x7F800000, len(t))
    got_pos = _simulate(t, pos)
    got_neg = _simulate(t, pos | 0x80000000)
    assert np.array_equal(got_pos["v"], got_neg["v"])
    zero = _simulate(t, np.zeros(len(t), np.int64))
    assert not np.any(zero["v"])
    inf = _simulate(t, np.full(len(t), 0x7F800000) | rng.integers(0, 2, len(t)))
    assert np.array_equal(inf["v"], np.sign(t) * O.MAG_SAT)


def test_cost_cli_rejects_unknown_targets(tmp_path, capsys):
    with pytest.raises(SystemExit):
        O.main(["--synth", str(tmp_path), "--targets", "xcup,asic"])
    assert "--targets must name some of" in capsys.readouterr().err


def test_cost_table_reports_the_delta():
    groups = list(O.COST_GROUPS["xcup"])
    base = {g: 10 for g in groups}
    ort = dict(base, LUT=15, DSP=10)
    text = O.cost_table({"xcup": {"tflite": base, "tflite+ort": ort}})
    row = [ln for ln in text.splitlines() if "ort delta" in ln][0]
    assert "+5 (+50%)" in row and "+0 (+0%)" in row
