"""hw.requant_lane.RequantLane against golden, bit for bit, in both requantization modes, and its latency.

tflite mode (mode = 0): thousands of random vectors plus the corners that break
naive implementations: the SRDHM extremes (INT32_MIN input, mult = INT32_MAX),
exact RDBPOT ties for every right shift, every representable shift
(signed(6): -32..31), saturation of the bias add and of the left shift, PReLU
on negative values, clamps, and the LUT (including a table rewrite while rows
are in flight).

ort mode (mode = 1, docs/array.md "ort mode"; reference
``golden.requant._requantize_ort_int``, the integer core of ``requantize_ort``
that golden.array_model.postprocess uses): random realistic and random-bit
scales, and constructed corners: int32 -> float32 conversion ties at every
rounding position (with the tie resolved into a final half-integer), product
rounding ties, final round-half-to-even ties at every shift, acc = +-2**k +-1,
+-(2**24 +- 1), +-(2**31 - 1), INT32_MIN, tiny/subnormal/huge/invalid scales and
results that clamp at the widest representable bounds. The corner set is
shown to detect every single-rounding mutation of the algorithm (each rounding
step done half-up, truncated or skipped).

Both modes are interleaved row by row on the same lane, all under random
enable stalls with junk on the inputs of disabled cycles; the latency is
REQUANT_LATENCY in both modes.
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth import Shape, signed
from amaranth.sim import Simulator

from golden._check import INT32_MAX, INT32_MIN
from golden.array_model import MODE_ORT, check_params, lane_field_shapes, postprocess
from golden.config import REQUANT_LATENCY, REQUANT_STAGES, ArrayConfig
from golden.requant import (_requantize_ort_int, _rne_shift, f32_decompose, multiply_by_quantized_multiplier,
                            rdbpot, saturating_left_shift, srdhm)
from hw.requant_lane import LUT_WRITE_DELAY, SHIFT_WIDTH, RequantLane, lane_params_layout

CFG = ArrayConfig(rows=1, cols=1)
#: Enabled cycles from a row entering the lane to its table read (stage lut_rd).
LUT_READ = REQUANT_STAGES.index("lut_rd")
FIELDS = tuple(name for name, _ in lane_params_layout(CFG))
#: Every row of a stimulus carries these (params fields plus the lane inputs).
COLUMNS = ("acc",) + FIELDS + ("lut_en",)


# ---------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------

def scale_decompose(bits) -> tuple[np.ndarray, np.ndarray]:
    """(mant, exp) of any 32-bit pattern as the lane reads it: value = mant * 2**exp.

    Equal to golden.requant.f32_decompose on positive finite float32 values
    (checked below); outside them (check_params rejects such scales in ort mode)
    the sign bit is ignored, +0 gives mant = 0 and the exponent field 255
    (inf/NaN) acts as a finite exponent 255 - 150.
    """
    b = np.asarray(bits, np.int64) & 0x7FFFFFFF
    ef = b >> 23
    return (b & 0x7FFFFF) | ((ef > 0).astype(np.int64) << 23), np.maximum(ef, 1) - 150


def ort_reference(t, bits, zp, act_min, act_max) -> np.ndarray:
    """docs/array.md ort mode: clamp(rne(f32(f32(t) * scale)), act_min - zp, act_max - zp) + zp."""
    t = np.asarray(t, np.int64)
    mant, exp = scale_decompose(bits)
    return _requantize_ort_int(np.abs(t), t < 0, mant, exp, act_min - zp, act_max - zp) + zp


def lane_reference(v: dict, lut: np.ndarray) -> np.ndarray:
    """docs/array.md lane semantics with golden.requant primitives (vectorised over rows)."""
    t = np.clip(v["acc"] + v["bias"], INT32_MIN, INT32_MAX)
    x = multiply_by_quantized_multiplier(t, v["mult"], v["shift"])
    alt = multiply_by_quantized_multiplier(x, v["alpha_mult"], v["alpha_shift"])
    x = np.where((v["prelu"] == 1) & (x < 0), alt, x)
    q = np.clip(x + v["zp"], v["act_min"], v["act_max"])   # np.clip order, also for min > max
    q = np.where(v["mode"] == MODE_ORT, ort_reference(t, v["scale_f32"], v["zp"], v["act_min"], v["act_max"]), q)
    code = q & 0xFF
    return np.where(v["lut_en"] == 1, lut[code], code)


def _bitlen64(v) -> np.ndarray:
    """Bit length of non-negative int64 values (exact; no float conversion)."""
    v = np.asarray(v, np.int64)
    n = np.zeros(v.shape, np.int64)
    for b in range(63):
        n += v >= (np.int64(1) << b)
    return n


def _round(v, s, how: str) -> np.ndarray:
    """v / 2**s for 0 <= v < 2**61: 'rne' (golden), 'up' (half up) or 'trunc'."""
    s = np.asarray(s, np.int64)
    if how == "rne":
        return _rne_shift(v, s)
    if how == "up":
        return (v + ((np.int64(1) << s) >> 1)) >> s
    assert how == "trunc"
    return v >> s


def ort_model(t, bits, zp, act_min, act_max, conv="rne", prod="rne", final="rne") -> np.ndarray:
    """The ort algorithm with each rounding step selectable, to build mutants of it.

    ``conv``: int32 -> float32 rounding of |t|; ``prod``: the product rounded
    to 24 bits; ``final``: to an integer. 'exact' skips the step (conv, prod).
    With every step 'rne' this is golden's algorithm (tested below).
    """
    t = np.asarray(t, np.int64)
    a = np.abs(t)
    mant, exp = scale_decompose(bits)
    if conv == "exact":
        ma, n = a, np.zeros_like(a)
    else:
        n = np.maximum(_bitlen64(a) - 24, 0)
        ma = _round(a, n, conv)
    p = ma * mant                                              # < 2**56
    if prod == "exact":
        pm, k = p, np.zeros_like(p)
    else:
        k = np.maximum(_bitlen64(p) - 24, 0)
        pm = _round(p, k, prod)
    e = n + k + exp
    up = np.minimum(pm, 1 << 24) << np.clip(e, 0, 25)         # >= 2**24 clamps like any larger value
    mag = np.where(e >= 0, up, _round(pm, np.clip(-e, 0, 60), final))
    return np.minimum(np.maximum(np.where(t < 0, -mag, mag), act_min - zp), act_max - zp) + zp


#: Single-rounding mutations of the ort algorithm the corner set must detect.
MUTANTS = [dict(conv="up"), dict(conv="trunc"), dict(conv="exact"), dict(prod="up"), dict(prod="trunc"),
           dict(prod="exact"), dict(final="up"), dict(final="trunc")]


def _f32_bits(x) -> np.ndarray:
    return np.asarray(x, np.float32).view(np.uint32).astype(np.int64)


# ---------------------------------------------------------------------------
# Stimuli
# ---------------------------------------------------------------------------

def _ort_scales(rng, n) -> np.ndarray:
    """Raw scale bits: mostly realistic onnxruntime scales, plus the whole float32 range and junk."""
    kind = rng.integers(0, 8, n)
    ef = rng.integers(1, 255, n)
    odd = rng.integers(0, 64, n) * 2 + 1
    few = (ef << 23) | ((odd << rng.integers(0, 17, n)) & 0x7FFFFF)      # short significands: exact ties
    return np.select(
        [kind <= 2, kind == 3, kind == 4, kind == 5, kind == 6],
        [_f32_bits(10.0 ** rng.uniform(-7, 0.7, n)),                    # realistic
         rng.integers(1, 0x7F800000, n),                                # any positive finite
         np.where(rng.random(n) < 0.5, rng.integers(1, 0x800000, n),    # subnormal
                  rng.integers(0x800000, 0x1000000, n)),                # smallest normals
         few,
         (rng.integers(95, 160, n) << 23)],                             # powers of two
        rng.integers(0, 2**32, n))                                      # junk: sign, 0, inf, NaN


def _vectors(cfg, rng, n):
    """n random rows (dict of int64 arrays), a third of them steered to corners; modes mixed row by row."""
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
        "mode": rng.integers(0, 2, n),
        "scale_f32": _ort_scales(rng, n),
    }
    # Mostly the shifts a real layer uses (outputs land inside the code range).
    real = rng.random(n) < 0.5
    v["shift"] = np.where(real, rng.integers(-20, 1, n), v["shift"])
    v["mult"] = np.where(real, rng.integers(2**30, 2**31, n), v["mult"])
    v["acc"] = np.where(real, rng.integers(-2**20, 2**20, n), v["acc"])
    v["alpha_shift"] = np.where(real, rng.integers(-8, 1, n), v["alpha_shift"])
    # ort rows: mostly an accumulator whose product with the scale lands near the code range.
    aim = (v["mode"] == MODE_ORT) & (rng.random(n) < 0.6)
    mant, exp = scale_decompose(v["scale_f32"])
    scale = mant.astype(np.float64) * np.exp2(exp.astype(np.float64))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        want = rng.uniform(-600, 600, n) / np.where(scale > 0, scale, 1.0)
    bias = rng.integers(-1000, 1001, n)
    v["bias"] = np.where(aim, bias, v["bias"])
    v["acc"] = np.where(aim, np.clip(np.nan_to_num(np.round(want)), -amax - 1, amax).astype(np.int64)
                        - bias, v["acc"]).clip(-amax - 1, amax)
    lo = rng.integers(-128, 256, n)
    hi = np.minimum(lo + rng.integers(0, 256, n), 255)
    inverted = rng.random(n) < 0.03              # act_min > act_max: np.clip gives act_max
    v["act_min"] = np.where(inverted, hi + 1, lo).clip(-128, 255)
    v["act_max"] = hi
    for k in v:
        v[k] = v[k].astype(np.int64)
    return v


def _corners(cfg):
    """Hand-made tflite rows: SRDHM extremes, RDBPOT ties at every right shift, saturations."""
    rows = []
    base = dict(bias=0, mult=2**31 - 1, shift=0, zp=0, act_min=-128, act_max=127,
                alpha_mult=2**31 - 1, alpha_shift=0, prelu=0, lut_en=0, mode=0, scale_f32=0x3F800000)
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
    return {k: np.array([r[k] for r in rows], np.int64) for k in COLUMNS}


#: (zp, act_min, act_max) cycled through the ort corners: int8, uint8, ReLU at and above
#: the zero point, and the widest representable bounds (|act_x - zp| up to 511).
_ORT_BOUNDS = [(0, -128, 127), (5, -128, 127), (-128, -128, 127), (0, 0, 255), (128, 0, 255), (-1, -1, 127),
               (20, 30, 100), (-256, -256, 255), (255, -256, 255), (-3, -128, 127)]


def _ort_corners(rng):
    """Constructed ort rows (see the module docstring); tflite-only fields hold junk."""
    t_list, s_list = [], []

    def add(t, bits):
        t_list.extend(np.atleast_1d(np.asarray(t, np.int64)).tolist())
        s_list.extend(np.broadcast_to(np.asarray(bits, np.int64), np.shape(np.atleast_1d(t))).tolist())

    # 1. Special accumulators x special scales.
    ts = [0, 1, -1, 2, -2, 3, -3, INT32_MAX, -INT32_MAX, INT32_MIN]
    for k in (8, 16, 23, 24, 25, 30):
        ts += [sg * ((1 << k) + d) for sg in (1, -1) for d in (-1, 0, 1)]
    ts += [sg * (2**24 + d) for sg in (1, -1) for d in (2, 3)]
    ts += [sg * (2**31 - d) for sg in (1, -1) for d in (64, 65, 192)]
    ss = _f32_bits([1.0, 0.5, 0.75, 1.5, 3.0, 255.0, 2.0**-8, 2.0**-16, 2.0**-23, 2.0**-24, 2.0**-25, 2.0**-31,
                    2.0**-32, 1 / 3, 1 / 255, 1e-3, 4.656613e-10, 2.0**23, 2.0**24,
                    np.nextafter(np.float32(1), np.float32(0)), np.nextafter(np.float32(1), np.float32(2))]).tolist()
    ss += [1, 2, 0x7FFFFF, 0x800000, 0x800001, 0x400000, 0x7F7FFFFF]               # subnormal .. largest
    ss += [0, 0x80000000, 0xBF800000, 0x7F800000, 0x7FC00001, 0xFFFFFFFF, 0xBE800000]   # junk bits
    for t in ts:
        add(np.full(len(ss), t), ss)
    # 2. int32 -> float32 ties at every rounding position n (1..7 dropped bits), with a
    #    power-of-two scale that turns the correctly rounded value into a half-integer o/2:
    #    t = (2**23 + j) * 2**n + 2**(n-1), j in {J, J-1}, J = 2**(s-1) * o - 2**23.
    for n in range(1, 8):
        for s in range(15, 25):
            lo_o = 1 << (24 - s)
            for o in rng.choice(np.arange(lo_o | 1, 2 * lo_o, 2), min(2, max(lo_o // 2, 1)), replace=False):
                big_j = (1 << (s - 1)) * int(o) - (1 << 23)
                for j in (big_j, big_j - 1):
                    if j >= 0:
                        t = ((1 << 23) + j) * (1 << n) + (1 << (n - 1))
                        add([t, -t, t + 1, -t + 1], (127 - n - s) << 23)
    # 3. Product ties: P = c * 2**w +- 1 with 25 significant bits (the 24-bit rounding is a
    #    tie), and P = c * 2**w + 3 or - 1 with 26 bits (dropped bits 11: just above a tie),
    #    factored as P = a * b; t = +-a * 2**i, scale significand b; the rounded product is
    #    about c/2, a final tie.
    for c in range(3, 256, 2):
        for bits, delta in ((25, 1), (25, -1), (26, 3), (26, -1)):
            w = bits - c.bit_length()
            big_p = c * (1 << w) + delta
            f = next((d for d in range(3, 4096, 2) if big_p % d == 0), None)
            if f is None or big_p.bit_length() != bits:
                continue
            a, b = (f, big_p // f) if rng.random() < 0.5 else (big_p // f, f)
            if a.bit_length() > 24 or b.bit_length() > 24:
                continue
            i = int(rng.integers(0, 31 - a.bit_length() + 1))
            mant = b << (24 - b.bit_length())
            ef = 125 - w - i + b.bit_length()
            if 1 <= ef <= 254:
                add([a << i, -(a << i)], (ef << 23) | (mant & 0x7FFFFF))
    # 4. Final round-half-to-even ties at every right shift: t = o * 2**(x-1), scale = m * 2**-x.
    for x in range(1, 32):
        for m in (1, 3, 5, 7, 9, 255):
            hi_o = min(1023 // m, (1 << (32 - x)) - 1)
            o = int(rng.integers(0, (hi_o + 1) // 2)) * 2 + 1
            mant = m << (24 - m.bit_length())
            add([o << (x - 1), -(o << (x - 1)), (o << (x - 1)) + 1], ((126 - x + m.bit_length()) << 23)
                | (mant & 0x7FFFFF))
    # 5. Results around the saturation / clamp boundaries, realistic scales.
    sc = (10.0 ** rng.uniform(-6, -1, 120)).astype(np.float32)
    y = rng.choice([510.5, 511.0, 511.49, 511.5, 511.51, 512.0, 512.5, 1023.5, 1024.0, 1024.5, 2047.0, 2049.0,
                    0.25, 0.5, 0.75, 1.5], 120)
    y = y * rng.choice([1, -1], 120)
    add(np.round(y / sc.astype(np.float64)).astype(np.int64), _f32_bits(sc))
    # 6. Near ties: scale = f32((k + 1/2) / t), so f(t) lies within a few float32 ulps of a
    #    half-integer and every rounding step (also the int32 -> float32 one, for |t| >= 2**24)
    #    decides the result.
    nn = 1000
    tt = np.where(rng.random(nn) < 0.8, rng.integers(2**24, 2**31, nn), rng.integers(1, 2**24, nn))
    k = rng.integers(0, 300, nn) + 0.5
    with np.errstate(under="ignore"):
        sc = (k / tt).astype(np.float32)
    add(tt * rng.choice([1, -1], nn), _f32_bits(sc))

    n = len(t_list)
    t = np.array(t_list, np.int64)
    assert t.min() >= INT32_MIN and t.max() <= INT32_MAX
    b = np.array([_ORT_BOUNDS[i % len(_ORT_BOUNDS)] for i in range(n)], np.int64)
    v = {"acc": t, "bias": np.zeros(n, np.int64), "scale_f32": np.array(s_list, np.int64),
         "mode": np.ones(n, np.int64), "zp": b[:, 0], "act_min": b[:, 1], "act_max": b[:, 2],
         "mult": rng.integers(0, 2**31, n), "shift": rng.integers(-32, 32, n),
         "alpha_mult": rng.integers(0, 2**31, n), "alpha_shift": rng.integers(-32, 32, n),
         "prelu": rng.integers(0, 2, n), "lut_en": np.zeros(n, np.int64)}
    # t = sat32(acc + bias) saturating into the corners.
    bmax = (1 << (CFG.bias_width - 1)) - 1
    sat = {"acc": [INT32_MAX, INT32_MIN, INT32_MAX, INT32_MIN], "bias": [bmax, -bmax - 1, 5, -5]}
    for k in v:
        extra = sat[k] if k in sat else [v[k][0]] * 4
        v[k] = np.concatenate([v[k], np.array(extra, np.int64)])
    v["scale_f32"][-4:] = _f32_bits([2.0**-31, 2.0**-31, 2.0**-24, 1.0])
    return v


def _interleave(a: dict, b: dict) -> dict:
    """Rows of a and b alternating (the longer one's tail at the end)."""
    na, nb = len(a["acc"]), len(b["acc"])
    order = np.argsort(np.concatenate([np.arange(na) * 2, np.arange(nb) * 2 + 1]), kind="stable")
    return {k: np.concatenate([a[k], b[k]])[order] for k in COLUMNS}


def _run_lane(cfg, v, lut_init, seed, p_bubble=0.15, p_stall=0.2, lut_rewrite_at=None, ort=True,
              reference=lane_reference):
    rng = np.random.default_rng(seed)
    dut = RequantLane(cfg, ort=ort)
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

    versions = [lut_init.copy()]           # LUT contents; a write on cycle t is read from t + 1 + LUT_WRITE_DELAY
    pending = {}                           # cycle -> (addr, data) of a write entering the table then
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
            wt = pending.pop(cyc, None)
            if wt is not None:
                t = versions[-1].copy()
                t[wt[0]] = wt[1]
                versions.append(t)
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
                ctx.set(dut.params.mode, int(rng.integers(0, 2)))
                ctx.set(dut.params.scale_f32, int(rng.integers(0, 2**32)))
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
                pending[cyc + 1 + LUT_WRITE_DELAY] = w
            cyc += 1

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()

    # Row entering on enabled cycle c: on the output on enabled cycle c + REQUANT_LATENCY;
    # its LUT read happened on enabled cycle c + LUT_READ (stage lut_rd).
    expect = {}
    idx = np.array(sorted(row_at.values()))
    enter = np.array([c for c in sorted(row_at)])
    for ver in set(version_at_enabled[c + LUT_READ] for c in enter):
        sel = np.array([version_at_enabled[c + LUT_READ] == ver for c in enter])
        codes = reference({k: a[idx[sel]] for k, a in v.items()}, versions[ver])
        for c, i, code in zip(enter[sel], idx[sel], codes):
            expect[int(c) + REQUANT_LATENCY] = (1, int(i % 3 == 0), int(code))
    assert len(expect) == n_rows
    bad = [(c, seen.get(c), e) for c, e in expect.items() if seen.get(c) != e]
    assert not bad, f"{len(bad)} mismatches (enabled cycle, rtl, expected), first: {bad[:5]}"
    assert set(seen) == set(expect), "output beats at unexpected cycles"


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

def test_params_layout_is_the_shared_definition():
    # Single source: golden.array_model.lane_field_shapes (order and shapes), incl. mode and scale_f32.
    for cfg in (CFG, ArrayConfig(rows=2, cols=3, max_k=1024, packing="none")):
        lay = lane_params_layout(cfg)
        want = lane_field_shapes(cfg.bias_width)
        assert [name for name, _ in lay] == list(want)
        for name, fld in lay:
            sh = Shape.cast(fld.shape)
            assert (sh.signed, sh.width) == want[name], name
        assert lane_params_layout(cfg)["mode"].offset < lay["scale_f32"].offset
    assert FIELDS[-2:] == ("mode", "scale_f32")
    with pytest.raises(ValueError, match="ort must be a bool"):
        RequantLane(CFG, ort=1)


def test_reference_primitives_sanity():
    # The corners above only matter if golden really treats them specially.
    assert int(srdhm(INT32_MIN, INT32_MIN)) == INT32_MAX
    assert int(srdhm(-1, 2**30)) == 0 and int(srdhm(1, 2**30)) == 1   # nudge, truncation (not floor)
    assert int(rdbpot(-3, 1)) == -2 and int(rdbpot(3, 1)) == 2        # ties away from zero
    assert REQUANT_LATENCY == len(REQUANT_STAGES) == 36


def test_ort_reference_is_golden_and_float32():
    """The test's ort reference equals golden (postprocess, f32_decompose) and IEEE float32 arithmetic."""
    rng = np.random.default_rng(5)
    v = _interleave(_ort_corners(rng), _vectors(CFG, rng, 3000))
    ort = v["mode"] == MODE_ORT
    t = np.clip(v["acc"] + v["bias"], INT32_MIN, INT32_MAX)
    ref = ort_reference(t, v["scale_f32"], v["zp"], v["act_min"], v["act_max"])
    # The mutation model with every rounding RNE is golden's algorithm.
    assert np.array_equal(ort_model(t, v["scale_f32"], v["zp"], v["act_min"], v["act_max"]), ref)
    bits = v["scale_f32"]
    valid = (bits > 0) & (bits < 0x7F800000)
    assert valid.sum() > 2000 and (~valid & ort).sum() > 200
    mant, exp = scale_decompose(bits[valid])
    gm, ge = f32_decompose(bits[valid].astype(np.uint32).view(np.float32))
    assert np.array_equal(mant, gm) and np.array_equal(exp, ge)
    # IEEE float32: f32(f32(t) * s), clamped in float32, rint (half to even), + zp.
    s = bits[valid].astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        f = t[valid].astype(np.float32) * s
    lo = (v["act_min"] - v["zp"])[valid]
    hi = (v["act_max"] - v["zp"])[valid]
    ok = lo <= hi
    f = np.minimum(np.maximum(f, lo.astype(np.float32)), hi.astype(np.float32))
    assert np.array_equal((np.rint(f).astype(np.int64) + v["zp"][valid])[ok], ref[valid][ok])
    # golden.array_model.postprocess on the rows whose params pass check_params (all as lanes of one beat).
    keep = (ort & valid & (v["act_min"] >= -128) & (v["act_min"] <= v["act_max"])
            & (v["act_max"] - v["act_min"] <= 255) & (v["prelu"] == 0))
    assert keep.sum() > 300
    params = {f: v[f][keep] for f in FIELDS}
    for f in ("shift", "alpha_shift"):           # ignored in ort mode; junk outside the host's range
        params[f] = np.clip(params[f], -31, 15)
    check_params(params, int(keep.sum()), CFG.bias_width)
    got = postprocess(v["acc"][keep], params)
    assert np.array_equal(got, ref[keep] & 0xFF)


def test_ort_corners_detect_every_rounding_mutant():
    # Each single-rounding mutation changes the output of many corner rows: the corner set
    # really contains the ties it is built for (conversion, product and final roundings).
    v = _ort_corners(np.random.default_rng(6))
    t = np.clip(v["acc"] + v["bias"], INT32_MIN, INT32_MAX)
    args = (t, v["scale_f32"], v["zp"], v["act_min"], v["act_max"])
    ref = ort_model(*args)
    for mut in MUTANTS:
        killed = int(np.count_nonzero(ort_model(*args, **mut) != ref))
        assert killed >= 25, f"mutant {mut} changes only {killed} corner rows"


@pytest.mark.parametrize("seed", [1, 2])
def test_lane_random_bit_exact(seed):
    # Both modes mixed row by row on the same lane.
    rng = np.random.default_rng(seed)
    v = _vectors(CFG, rng, 2500)
    assert 1000 < np.count_nonzero(v["mode"] == MODE_ORT) < 1500
    lut = rng.integers(0, 256, 256)
    _run_lane(CFG, v, lut, seed=seed + 10)


def test_lane_corners_bit_exact():
    v = _corners(CFG)
    v["lut_en"] = np.zeros(len(v["acc"]), np.int64)
    assert len(v["acc"]) > 500
    _run_lane(CFG, v, np.arange(256), seed=3)
    # The same corners with the output through a permutation table.
    v["lut_en"][:] = 1
    _run_lane(CFG, v, np.random.default_rng(4).permutation(256), seed=4, p_stall=0.0, p_bubble=0.0)


def test_lane_ort_corners_bit_exact():
    # The ort corners alternating row by row with the tflite corners, under stalls.
    rng = np.random.default_rng(7)
    o = _ort_corners(rng)
    assert len(o["acc"]) > 3000
    v = _interleave(o, _corners(CFG))
    v["lut_en"] = (np.arange(len(v["acc"])) % 5 == 0).astype(np.int64)
    _run_lane(CFG, v, rng.permutation(256), seed=8, p_bubble=0.05, p_stall=0.1)


def test_lane_lut_rewrite_in_flight_and_latency():
    # Every row uses the table; it is rewritten entry by entry while rows flow,
    # so each output checks "a write on cycle t is read from t + 1 + LUT_WRITE_DELAY".
    cfg = ArrayConfig(rows=1, cols=1, packing="none")
    rng = np.random.default_rng(9)
    v = _vectors(cfg, rng, 600)
    v["lut_en"][:] = 1
    _run_lane(cfg, v, rng.integers(0, 256, 256), seed=9, lut_rewrite_at=40)


def test_lane_without_ort_is_tflite_only():
    # The cost-measurement elaboration (ort=False) ignores mode and scale_f32.
    rng = np.random.default_rng(11)
    v = _vectors(CFG, rng, 300)
    assert np.any(v["mode"] == MODE_ORT)

    def tflite_only(rows, lut):
        return lane_reference(dict(rows, mode=np.zeros_like(rows["mode"])), lut)

    _run_lane(CFG, v, rng.integers(0, 256, 256), seed=12, ort=False, reference=tflite_only)


def _set_halving_params(ctx, dut, mode=0, scale_f32=0):
    """Params of an isolated test row: tflite multiplies by 2**30 / 2**31 (halves), no PReLU, full range."""
    for f, val in dict(bias=0, mult=2**30, shift=0, zp=0, act_min=-128, act_max=127, alpha_mult=0,
                       alpha_shift=0, prelu=0, mode=mode, scale_f32=scale_f32).items():
        ctx.set(dut.params[f], val)


def _simulate(dut, tb):
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize("mode", [0, 1])
def test_lane_latency_is_requant_latency(mode):
    # One isolated row, no stalls: it appears exactly REQUANT_LATENCY cycles later, in either mode.
    dut = RequantLane(CFG)
    hits = []

    async def tb(ctx):
        _set_halving_params(ctx, dut, mode, int(_f32_bits(0.25)[()]))
        ctx.set(dut.en, 1)
        for cyc in range(3 * REQUANT_LATENCY):
            ctx.set(dut.valid, cyc == 2)
            ctx.set(dut.acc, 84 if cyc == 2 else 0)
            if ctx.get(dut.out_valid):
                hits.append((cyc, ctx.get(dut.out_data)))
            await ctx.tick()

    _simulate(dut, tb)
    assert hits == [(2 + REQUANT_LATENCY, 42 if mode == 0 else 21)]


@pytest.mark.parametrize("dist", [LUT_WRITE_DELAY, LUT_WRITE_DELAY + 1, LUT_WRITE_DELAY + 2])
def test_lane_lut_write_to_read_distance(dist):
    # The registered LUT write (issue 6): a write on cycle w is read from w + 1 + LUT_WRITE_DELAY
    # (LUT_WRITE_DELAY = 1: from w + 2). An isolated lut_en row's table read happens in stage lut_rd,
    # two cycles before it reaches out (entry + LUT_READ); the write lands ``dist`` cycles before that read.
    # dist = LUT_WRITE_DELAY + 1 is the tightest case that must (and does) see the new entry:
    # the core's contract keeps every write >= cfg.array_latency + LUT_READ cycles
    # ahead of the read of a tile accepted with or after it (a LUT written immediately before
    # a RUN), and dist = LUT_WRITE_DELAY pins the delay (that read still sees the old entry).
    dut = RequantLane(CFG)
    enter, old, new = 40, 7, 200
    read_at = enter + LUT_READ
    hits = []

    async def tb(ctx):
        ctx.set(dut.en, 1)
        ctx.set(dut.lut.valid, 1)                  # the table: entry k = old for code 42, else 255 - k
        for a in range(256):
            ctx.set(dut.lut.payload.addr, a)
            ctx.set(dut.lut.payload.data, old if a == 42 else 255 - a)
            await ctx.tick()
        ctx.set(dut.lut.valid, 0)
        _set_halving_params(ctx, dut)
        ctx.set(dut.lut_en, 1)
        for cyc in range(enter + 2 * REQUANT_LATENCY):
            ctx.set(dut.valid, cyc == enter)
            ctx.set(dut.acc, 84 if cyc == enter else 0)  # code 42
            ctx.set(dut.lut.valid, cyc == read_at - dist)
            ctx.set(dut.lut.payload.addr, 42)
            ctx.set(dut.lut.payload.data, new)
            if ctx.get(dut.out_valid):
                hits.append((cyc, ctx.get(dut.out_data)))
            await ctx.tick()

    _simulate(dut, tb)
    assert hits == [(enter + REQUANT_LATENCY, new if dist >= 1 + LUT_WRITE_DELAY else old)]


def _comb_cases(inputs, outputs, cases):
    """Evaluate a combinational Module: ``inputs`` / ``outputs`` are dicts of Signals, ``cases`` a list
    of input dicts; returns the output dicts."""
    from amaranth import Module
    m, got = Module(), []
    m.d.comb += [sig.eq(val) for sig, val in outputs.values()]

    async def tb(ctx):
        for case in cases:
            for k, v in case.items():
                ctx.set(inputs[k], v)
            got.append({k: ctx.get(sig) for k, (sig, _) in outputs.items()})

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    return got


def test_split_shift_and_rounding_stages_exact():
    # The stage splits of issue 6 (hw.requant_lane): the saturating left shift (coarse shift and
    # split compares, then fine shift and flags, then select) and RoundingDivideByPOT's rounding
    # terms (half bit split like the shift, sticky OR as partial ORs), chained combinationally
    # here, equal golden on the boundary cases of every split: x at the bounds +-1, the rounding
    # half with its only sticky bit in each partial OR, both signs, every shift amount.
    from amaranth import Signal as S
    from hw import requant_lane as rl
    x34, x32, sh = S(signed(34)), S(signed(32)), S(signed(SHIFT_WIDTH))

    def regs(d):
        return {k: v for k, (_, v) in d.items()}

    lim = rl._shl_limits(sh)
    shl = rl._satshl_sel(regs(rl._satshl_fine(regs(rl._satshl_cmp(x34, lim)))))
    pr = rl._rdbpot_prep(sh)
    fine = regs(rl._rdbpot_fine(regs(rl._rdbpot_shift(x32, pr))))
    rnd = (fine["q"] + fine["inc"])[:32].as_signed()
    outs = {"shl": (S(signed(32)), shl), "rnd": (S(signed(32)), rnd)}
    rng = np.random.default_rng(11)
    cases = []
    for left in range(0, 32):
        lo = INT32_MIN >> left
        for x in (lo, lo - 1, lo + 1, ~lo, ~lo + 1, ~lo - 1, 2**33 - 1, -2**33, 0, -1,
                  lo - (1 << 16), ~lo + (1 << 16), *rng.integers(-2**33, 2**33, 4)):
            cases.append({"x34": int(x), "x32": 0, "sh": left})
    for e in range(1, 33):
        for sign in (0, 1):
            for k in [None, *range(e - 1)]:          # bit e - 1 (the half) and at most one bit below
                bits = (1 << (e - 1)) | (0 if k is None else 1 << k)
                bits = (bits | (1 << 31)) if sign else (bits & ~(1 << 31))
                cases.append({"x34": 0, "x32": bits - (1 << 32) if bits >> 31 else bits, "sh": -e})
            for x in rng.integers(INT32_MIN, INT32_MAX + 1, 6):
                cases.append({"x34": 0, "x32": int(x), "sh": -e})
    got = _comb_cases({"x34": x34, "x32": x32, "sh": sh}, outs, cases)
    for case, g in zip(cases, got):
        s = case["sh"]
        if s >= 0:
            want = int(saturating_left_shift(np.clip(case["x34"], INT32_MIN, INT32_MAX), s))
            assert g["shl"] == want, (case, g)
        else:
            assert g["rnd"] == int(rdbpot(case["x32"], -s)), (case, g)


def test_split_compare_exact():
    # ``_split_cmp`` / ``_split_flags`` (the clamp's compares, and the left shifts' through
    # ``_split_lt_gt``) equal x < c_lt and x > c_gt for a 32-bit x against narrow signed bounds
    # (the clamp: signed(10)), around both halves' boundaries and the bounds themselves.
    from amaranth import Signal as S
    from hw import requant_lane as rl
    x, clo, chi = S(signed(32)), S(signed(10)), S(signed(10))
    lt, gt = rl._split_flags({k: v for k, (_, v) in rl._split_lt_gt(x, clo, chi).items()})
    rng = np.random.default_rng(5)
    cases = []
    for c in (-512, -300, -129, -1, 0, 1, 255, 511):
        for v in (c - 1, c, c + 1, -1 << 16, (-1 << 16) - 1, (1 << 16) - 1, 1 << 16, INT32_MIN, INT32_MAX,
                  *rng.integers(-2**17, 2**17, 3), *rng.integers(INT32_MIN, INT32_MAX + 1, 2)):
            cases.append({"x": int(v), "clo": c, "chi": int(rng.integers(-512, 512))})
            cases.append({"x": int(v), "clo": int(rng.integers(-512, 512)), "chi": c})
    got = _comb_cases({"x": x, "clo": clo, "chi": chi}, {"lt": (S(), lt), "gt": (S(), gt)}, cases)
    for case, g in zip(cases, got):
        assert g == {"lt": int(case["x"] < case["clo"]), "gt": int(case["x"] > case["chi"])}, (case, g)


def test_split_product_sum_exact():
    # Issue 6: the 32 x 31 product's sums in <= 18-bit chains with registered carries
    # (``_product_sum`` -> ``_product_low`` -> ``_product_high``, chained combinationally here) give
    # the nudged product's bits [22, 63) exactly, on every carry: operands at the split boundaries,
    # the extremes, and the nudge both on and off.
    from amaranth import Signal as S
    from amaranth import unsigned
    from hw import requant_lane as rl
    a, b, nudge = S(signed(32)), S(unsigned(31)), S()
    sp = rl._SPLIT
    pp = {"ll": a[:sp] * b[:sp], "lh": a[:sp] * b[sp:], "hl": a[sp:].as_signed() * b[:sp],
          "hh": a[sp:].as_signed() * b[sp:]}

    def regs(d):
        return {k: v for k, (_, v) in d.items()}

    prod = rl._product_high(regs(rl._product_low(regs(rl._product_sum(pp, nudge)))))
    rng = np.random.default_rng(17)
    edges_a = [0, 1, -1, INT32_MIN, INT32_MAX, (1 << sp) - 1, 1 << sp, -(1 << sp), 2**30, -2**30]
    edges_b = [0, 1, 2**31 - 1, (1 << sp) - 1, 1 << sp, 2**30, 2**30 + (1 << sp) - 1]
    pairs = [(x, y) for x in edges_a for y in edges_b]
    pairs += [(int(x), int(y)) for x, y in zip(rng.integers(INT32_MIN, INT32_MAX + 1, 300),
                                               rng.integers(0, 2**31, 300))]
    cases = [{"a": x, "b": y, "n": n} for x, y in pairs for n in (0, 1)]
    got = _comb_cases({"a": a, "b": b, "n": nudge}, {"p": (S(unsigned(41)), prod)}, cases)
    for case, g in zip(cases, got):
        want = ((case["a"] * case["b"] + case["n"] * 2**30) >> rl._PROD_LO) & ((1 << 41) - 1)
        assert g["p"] == want, (case, g)


def test_split_normalise_exact():
    # Issue 6: ort's normalisation over lsat / ort_msb / ort_norm (``_msb_bytes`` -> ``_norm_coarse``
    # -> ``_norm_fine``, chained combinationally here) equals hw.ort_requant's one-stage blocks
    # (leading_one, normalise) for every msb position, with rounding ties and sticky bits.
    from amaranth import Module
    from amaranth import Signal as S
    from amaranth import unsigned
    from hw import ort_requant as ort_dp
    from hw import requant_lane as rl
    a, ef = S(unsigned(32)), S(unsigned(8))

    def regs(d):
        return {k: v for k, (_, v) in d.items()}

    mb = rl._msb_bytes(a)
    co = regs(rl._norm_coarse(a, mb["byte_g"], mb["byte_f"]))
    fine = regs(rl._norm_fine({**co, "efield": ef}))
    m = Module()
    ref = ort_dp.normalise(m, a, ort_dp.leading_one(m, a, "r"), ef, "r")
    outs = {k: (S(v.shape()), v) for k, v in {"t": fine["trunc"], "i": fine["inc"], "e": fine["epart"],
                                              "rt": ref["trunc"], "ri": ref["inc"], "re": ref["epart"]}.items()}
    rng = np.random.default_rng(19)
    vals = [0, 1, 2**32 - 1, 2**31]
    for msb in range(32):
        top = 1 << msb
        vals += [top, top | (top >> 1), top | 1, top | (top >> 25), (top << 1) - 1, top | (1 << max(msb - 24, 0))]
        vals += [int(v) | top for v in rng.integers(0, top, 2)]
    cases = [{"a": v & (2**32 - 1), "ef": int(e)} for v in vals for e in (0, 127)]
    from amaranth.sim import Simulator
    m.d.comb += [sig.eq(val) for sig, val in outs.values()]
    got = []

    async def tb(ctx):
        for case in cases:
            ctx.set(a, case["a"])
            ctx.set(ef, case["ef"])
            got.append({k: ctx.get(sig) for k, (sig, _) in outs.items()})

    sim = Simulator(m)
    sim.add_testbench(tb)
    sim.run()
    for case, g in zip(cases, got):
        assert (g["t"], g["i"], g["e"]) == (g["rt"], g["ri"], g["re"]), (case, g)
