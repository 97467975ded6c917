"""golden/requant.py against independent references written from ../shared/spec/arithmetic.md.

* tflite mode (§2): scalar pure-Python-int references of QuantizeMultiplier,
  SRDHM, RDBPOT and MultiplyByQuantizedMultiplier (C truncating division,
  arithmetic shifts), on random values and on the corners the spec names.
* ort mode (§3): the integer emulation (``requantize_ort``) and its fast path
  (``requantize_ort_fast``) against (a) the NumPy float32 statement
  ``requantize_ort_float`` on millions of random and corner values and (b) an
  exact-rational reference that rounds to float32 with pure Python integers.
"""
from __future__ import annotations

import math
import struct
from fractions import Fraction

import numpy as np
import pytest

from golden import requant as R

I32_MIN, I32_MAX = -(2**31), 2**31 - 1

# --------------------------------------------------------------------------
# tflite: scalar references from the spec text
# --------------------------------------------------------------------------


def ref_quantize_multiplier(m: float) -> tuple[int, int]:
    q, shift = math.frexp(m)                      # q in [0.5, 1)
    q_fixed = math.floor(q * 2**31 + 0.5)         # round half away from zero (q > 0)
    if q_fixed == 2**31:
        q_fixed //= 2
        shift += 1
    if shift < -31:
        shift, q_fixed = 0, 0
    return q_fixed, shift


def ref_srdhm(a: int, b: int) -> int:
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    nudge = 2**30 if ab >= 0 else 1 - 2**30
    num = ab + nudge
    q = abs(num) // 2**31                          # C division truncates toward zero
    return q if num >= 0 else -q


def ref_rdbpot(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask                                 # Python & on negatives = two's complement
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)  # Python >> is arithmetic


def ref_mbqm(x: int, q_fixed: int, shift: int) -> int:
    left, right = max(shift, 0), max(-shift, 0)
    xl = min(max(x * 2**left, I32_MIN), I32_MAX)   # this project saturates the left shift
    return ref_rdbpot(ref_srdhm(xl, q_fixed), right)


def _vec(f, *cols):
    return np.array([f(*map(int, args)) for args in zip(*cols)], np.int64)


SRDHM_CORNERS = [I32_MIN, I32_MIN + 1, -(2**30), -1, 0, 1, 2**30, I32_MAX - 1, I32_MAX]


def test_srdhm_corners_and_random():
    a, b = np.meshgrid(SRDHM_CORNERS, SRDHM_CORNERS)
    a, b = a.ravel(), b.ravel()
    rng = np.random.default_rng(1)
    ra, rb = rng.integers(I32_MIN, I32_MAX + 1, (2, 20000))
    # products whose remainder sits exactly on the nudge boundary (ties of the rounding)
    ta = rng.integers(-(2**15), 2**15, 2000) * 2**15 + 2**14
    tb = np.full(2000, 2**16)
    a = np.concatenate([a, ra, ta])
    b = np.concatenate([b, rb, tb])
    got = R.srdhm(a, b)
    want = _vec(ref_srdhm, a, b)
    np.testing.assert_array_equal(got, want)
    assert R.srdhm(I32_MIN, I32_MIN) == I32_MAX
    assert R.srdhm(I32_MIN, I32_MAX) == -I32_MAX  # -(2^31)(2^31-1)/2^31 rounds to -(2^31-1)


def test_rdbpot_all_shifts_ties_and_negatives():
    rng = np.random.default_rng(2)
    xs, es = [], []
    for e in range(0, 32):
        base = rng.integers(-(2**31) >> e, (2**31 - 1) >> e, 300)
        half = (1 << e) >> 1
        for off in (0, half - 1, half, half + 1, (1 << e) - 1):   # exact ties at +-half
            v = np.clip(base * (1 << e) + off, I32_MIN, I32_MAX)
            xs.append(v)
            xs.append(np.clip(-v, I32_MIN, I32_MAX))
            es += [e] * (2 * v.size)
        xs.append(np.array([I32_MIN, I32_MAX, 0, -1, 1]))
        es += [e] * 5
    x = np.concatenate(xs)
    e = np.array(es)
    np.testing.assert_array_equal(R.rdbpot(x, e), _vec(ref_rdbpot, x, e))
    # spot values: half away from zero
    assert R.rdbpot(5, 1) == 3 and R.rdbpot(-5, 1) == -3 and R.rdbpot(-6, 2) == -2 and R.rdbpot(6, 2) == 2


@pytest.mark.parametrize("m", [1 - 2.0**-33, 1 - 2.0**-40, 0.5, 0.75, 2.0**-31, 2.0**-32 * 1.5, 2.0**-32,
                               2.0**-33, 1e-12, 3.0, 2.0**14 * 1.999, 0.3333333333, 2.0**-31 * (1 - 2.0**-40)])
def test_quantize_multiplier_corners(m):
    q, s = R.quantize_multiplier(m)
    assert (int(q), int(s)) == ref_quantize_multiplier(m)


def test_quantize_multiplier_rollover_and_flush():
    q, s = R.quantize_multiplier(1 - 2.0**-33)      # q*2^31 rounds up to 2^31
    assert (int(q), int(s)) == (2**30, 1)
    q, s = R.quantize_multiplier(2.0**-33)          # shift -32 < -31: flushed to zero
    assert (int(q), int(s)) == (0, 0)
    q, s = R.quantize_multiplier(2.0**-32 * 1.5)    # frexp exponent -31: kept
    assert int(s) == -31 and int(q) == 3 * 2**29


def test_quantize_multiplier_random_vectorised():
    rng = np.random.default_rng(3)
    m = np.concatenate([2.0 ** rng.uniform(-40, 14.9, 5000), rng.uniform(1e-6, 1, 2000)])
    q, s = R.quantize_multiplier(m)
    want = [ref_quantize_multiplier(float(v)) for v in m]
    np.testing.assert_array_equal(q, [w[0] for w in want])
    np.testing.assert_array_equal(s, [w[1] for w in want])


def test_mbqm_and_requantize_tflite_random():
    rng = np.random.default_rng(4)
    n = 30000
    acc = np.concatenate([rng.integers(I32_MIN, I32_MAX + 1, n // 2), rng.integers(-(2**16), 2**16, n // 2),
                          np.array([I32_MIN, I32_MAX, 0, -1, 1])])
    m = 2.0 ** rng.uniform(-34, 14.5, acc.size)
    q, s = R.quantize_multiplier(m)
    got = R.multiply_by_quantized_multiplier(acc, q, s)
    np.testing.assert_array_equal(got, _vec(ref_mbqm, acc, q, s))
    # per-channel requantize along axis 1, int8 and uint8 ranges
    acc2 = rng.integers(-(2**20), 2**20, (7, 5, 11))
    m2 = 2.0 ** rng.uniform(-16, -6, 5)
    q2, s2 = R.quantize_multiplier(m2)
    for zp, lo, hi in ((-3, -128, 127), (200, 0, 255)):
        out = R.requantize_tflite(acc2, q2, s2, zp, lo, hi, axis=1)
        want = np.empty_like(acc2)
        for c in range(5):
            want[:, c] = np.clip(_vec(lambda v: ref_mbqm(v, int(q2[c]), int(s2[c])), acc2[:, c].ravel())
                                 .reshape(7, 11) + zp, lo, hi)
        np.testing.assert_array_equal(out, want)


def test_saturating_left_shift():
    x = np.array([1, -1, 2**20, -(2**20), 2**16, -(2**16) - 1])
    got = R.saturating_left_shift(x, 15)
    np.testing.assert_array_equal(got, [2**15, -(2**15), I32_MAX, I32_MIN, I32_MAX, I32_MIN])


@pytest.mark.parametrize("bad, match", [
    (lambda: R.quantize_multiplier(0.0), "multiplier"),
    (lambda: R.quantize_multiplier(-1.0), "multiplier"),
    (lambda: R.quantize_multiplier(float("nan")), "multiplier"),
    (lambda: R.quantize_multiplier(float("inf")), "multiplier"),
    (lambda: R.quantize_multiplier(2.0**15), "multiplier"),
    (lambda: R.requantize_tflite([2**31], 2**30, 0, 0, -128, 127), "acc"),
    (lambda: R.requantize_tflite([1.5], 2**30, 0, 0, -128, 127), "acc"),
    (lambda: R.requantize_tflite([1], 2**31, 0, 0, -128, 127), "q_fixed"),
    (lambda: R.requantize_tflite([1], 2**30, 16, 0, -128, 127), "shift"),
    (lambda: R.requantize_tflite([1], 2**30, -32, 0, -128, 127), "shift"),
    (lambda: R.requantize_tflite([1], 2**30, 0, 0, 5, 4), "qmin"),
    (lambda: R.requantize_tflite(np.zeros((2, 3), np.int64), [2**30] * 2, [0] * 2, 0, -128, 127, axis=1),
     "q_fixed"),
])
def test_tflite_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


# --------------------------------------------------------------------------
# ort: exact-rational float32 reference (pure Python integers)
# --------------------------------------------------------------------------


def f32_round(v: Fraction) -> Fraction:
    """Round a rational to the nearest float32 (ties to even), incl. subnormals and overflow (-> inf)."""
    if v == 0:
        return Fraction(0)
    sign = -1 if v < 0 else 1
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()     # 2**e <= a < 2**(e+2)
    while Fraction(2) ** e > a:
        e -= 1
    while Fraction(2) ** (e + 1) <= a:
        e += 1
    e = max(e, -126)                                               # subnormal spacing 2**-149
    ulp = Fraction(2) ** (e - 23)
    q, r = divmod(a, ulp)
    if r * 2 > ulp or (r * 2 == ulp and q % 2 == 1):
        q += 1
    res = q * ulp
    if res >= Fraction(2) ** 128:
        return Fraction(sign) * 10**60                             # stands for inf: clamps anyway
    return sign * res


def f32_of(x: float) -> Fraction:
    return Fraction(struct.unpack("<f", struct.pack("<f", x))[0])


def rne_int(v: Fraction) -> int:
    fl = math.floor(v)
    r = v - fl
    if r > Fraction(1, 2) or (r == Fraction(1, 2) and fl % 2 == 1):
        return fl + 1
    return fl


def ref_ort(acc: int, scale: Fraction, zp: int, qmin: int, qmax: int) -> int:
    f = f32_round(f32_round(Fraction(acc)) * scale)
    f = min(max(f, Fraction(qmin - zp)), Fraction(qmax - zp))
    return rne_int(f) + zp


def test_ort_scale_matches_exact_float32_rounding():
    rng = np.random.default_rng(5)
    for _ in range(400):
        xs, ys = (float(v) for v in 2.0 ** rng.uniform(-30, 10, 2))
        ws = 2.0 ** rng.uniform(-30, 10, 3)
        got = R.ort_scale(xs, ws, ys)
        assert got.dtype == np.float32
        for g, w in zip(got, ws):
            want = f32_round(f32_round(f32_of(xs) * f32_of(float(w))) / f32_of(ys))
            assert Fraction(float(g)) == want
    # the two roundings matter: float32(x*w)/y differs from float32 of the exact quotient here
    assert float(R.ort_scale(0.1, 0.3, 0.7)) == float(np.float32(np.float32(0.1) * np.float32(0.3)) / np.float32(0.7))


SCALES = [1e-9, 3.3e-5, 2.0**-7, 2.0**-20, 0.37, 1.0, 1.5, 2.5e-7, 1e-40, 1e-44, 2.0**-149, 3e38,
          2.0**23, 2.0**22 * 1.5, 2.0**23 - 0.5, 0.0078125 * 3, 1 / 255.0]


def _corner_accs(rng) -> np.ndarray:
    p2 = [2**k for k in range(32)]
    edges = [v + d for v in (2**24, 2**25, 2**26, 2**30, 2**31 - 1) for d in range(-9, 10)]
    vals = np.array([0, 1, -1, I32_MIN, I32_MAX, I32_MIN + 1, I32_MAX - 1] + p2[:31] + [-v for v in p2] + edges
                    + [-v for v in edges], np.int64)
    return np.clip(vals, I32_MIN, I32_MAX)


def test_ort_integer_vs_exact_rational_reference():
    rng = np.random.default_rng(6)
    accs = np.concatenate([_corner_accs(rng), rng.integers(I32_MIN, I32_MAX + 1, 100),
                           rng.integers(-(2**25), 2**25, 100)])
    for s in SCALES:
        s32 = np.float32(s)
        sf = Fraction(float(s32))
        for zp, lo, hi in ((0, -128, 127), (-128, -128, 127), (255, 0, 255)):
            got = R.requantize_ort(accs, s32, zp, lo, hi)
            fast = R.requantize_ort_fast(accs, s32, zp, lo, hi)
            want = np.array([ref_ort(int(a), sf, zp, lo, hi) for a in accs])
            np.testing.assert_array_equal(got, want, err_msg=f"scale {s}")
            np.testing.assert_array_equal(fast, want, err_msg=f"scale {s}")


def _tie_accs(s32: np.float32, rng, n: int) -> np.ndarray:
    """Accumulators whose float32 product lies at or within a few ulps of k + 1/2."""
    s = float(s32)
    k = rng.integers(-300, 300, n) + 0.5
    base = np.round(np.clip(k / s, I32_MIN, I32_MAX)).astype(np.int64)
    out = np.concatenate([base + d for d in (-2, -1, 0, 1, 2)])
    return np.clip(out, I32_MIN, I32_MAX)


@pytest.mark.parametrize("seed", range(4))
def test_ort_integer_equals_float32_millions(seed):
    rng = np.random.default_rng(100 + seed)
    n = 200_000
    scales = [np.float32(s) for s in SCALES] + [np.float32(v) for v in 2.0 ** rng.uniform(-40, 3, 12)]
    total = 0
    for s32 in scales:
        acc = np.concatenate([rng.integers(I32_MIN, I32_MAX + 1, n // 4),
                              rng.integers(-(2**24) - 64, 2**24 + 64, n // 4),
                              (rng.integers(-(2**12), 2**12, n // 4) << rng.integers(0, 20, n // 4)),
                              _tie_accs(s32, rng, n // 20), _corner_accs(rng)])
        acc = np.clip(acc, I32_MIN, I32_MAX)
        zp = int(rng.integers(-128, 128))
        want = R.requantize_ort_float(acc, s32, zp, -128, 127)
        np.testing.assert_array_equal(R.requantize_ort(acc, s32, zp, -128, 127), want)
        np.testing.assert_array_equal(R.requantize_ort_fast(acc, s32, zp, -128, 127), want)
        total += acc.size
    assert total > 2_000_000


@pytest.mark.parametrize("seed", range(3))
def test_ort_fast_path_is_taken_and_exact(seed):
    """White box: with bounded accumulators the cheap path handles almost everything, every
    exact tie and near-tie is sent to the bit-level emulation, and the results stay exact."""
    rng = np.random.default_rng(300 + seed)
    for _ in range(6):
        s = (2.0 ** rng.uniform(-20, -4, 8)).astype(np.float32)              # per channel
        s[::2] = 2.0 ** np.round(np.log2(s[::2]))                             # exact ties possible
        lim = (400 / s).astype(np.int64)                                      # |V| up to ~400
        acc = np.stack([rng.integers(-v, v + 1, 4096) for v in lim])
        ties = np.stack([_tie_accs(c, rng, 200) for c in s])[:, :1000]       # at/near k + 1/2
        acc = np.concatenate([acc, ties], axis=1)
        zp = int(rng.integers(-128, 128))
        mant, exp = R.f32_decompose(s)
        q, unsafe = R._ort_fast_split(acc, mant[:, None], exp[:, None], zp, -128 - zp, 127 - zp)
        want = R.requantize_ort_float(acc, s, zp, -128, 127, axis=0)
        np.testing.assert_array_equal(q, want)
        assert unsafe is not None and unsafe[:, :4096].mean() < 0.01
        exact_tie = (acc.astype(object) * np.array([[Fraction(float(c))] for c in s]) * 2 % 2) == 1
        assert unsafe[exact_tie].all() and exact_tie.sum() > 100


def test_ort_exact_ties_round_half_to_even():
    s = np.float32(2.0**-4)                      # acc/16: ties every 16 accumulator units
    acc = np.arange(-4000, 4000)
    got = R.requantize_ort(acc, s, 0, -(2**23), 2**23)
    np.testing.assert_array_equal(got, np.rint(acc / 16.0).astype(np.int64))
    assert R.requantize_ort(np.array([8, 24, -8, -24]), s, 0, -128, 127).tolist() == [0, 2, 0, -2]
    # float32(acc) rounding: 2**24 + 1 -> 2**24 (tie to even), 2**24 + 3 -> 2**24 + 4
    one = np.float32(1.0)
    assert R.requantize_ort(np.array([2**24 + 1, 2**24 + 3]), one, 0, -(2**23), 2**23).tolist() == [2**23] * 2
    assert R.requantize_ort(np.array([2**24 + 1, 2**24 + 3]), np.float32(2.0**-2), 0,
                            -(2**23), 2**23).tolist() == [2**22, 2**22 + 1]


def test_ort_per_channel_axis_and_bounds():
    rng = np.random.default_rng(8)
    acc = rng.integers(-(2**22), 2**22, (3, 6, 5))
    s = (2.0 ** rng.uniform(-18, -12, 6)).astype(np.float32)
    zp = rng.integers(0, 256, 6)
    got = R.requantize_ort(acc, s, zp, 0, 255, axis=1)
    fast = R.requantize_ort_fast(acc, s, zp, 0, 255, axis=1)
    for c in range(6):
        want = R.requantize_ort_float(acc[:, c], s[c], int(zp[c]), 0, 255)
        np.testing.assert_array_equal(got[:, c], want)
        np.testing.assert_array_equal(fast[:, c], want)
    assert got.min() >= 0 and got.max() <= 255


def test_f32_decompose_bits():
    vals = np.array([1.0, 0.75, 2.0**-126, 2.0**-149, 2.0**-130 * 3, 3.4e38, 0.1], np.float32)
    m, e = R.f32_decompose(vals)
    for v, mm, ee in zip(vals, m, e):
        assert Fraction(float(v)) == Fraction(int(mm)) * Fraction(2) ** int(ee)
    assert m[0] == 2**23 and e[0] == -23
    assert m[3] == 1 and e[3] == -149


def test_requantize_dispatcher():
    rng = np.random.default_rng(9)
    acc = rng.integers(-(2**20), 2**20, (4, 3))
    ws = np.array([0.01, 0.02, 0.005])
    got = R.requantize(acc, "ort", 0.05, ws, 0.3, 5, -128, 127, axis=1)
    np.testing.assert_array_equal(got, R.requantize_ort_float(acc, R.ort_scale(0.05, ws, 0.3), 5, -128, 127, axis=1))
    got_t = R.requantize(acc, "tflite", 0.05, ws, 0.3, 5, -128, 127, axis=1)
    m = np.float64(np.float32(0.05)) * ws.astype(np.float32).astype(np.float64) / np.float64(np.float32(0.3))
    q, s = R.quantize_multiplier(m)
    np.testing.assert_array_equal(got_t, R.requantize_tflite(acc, q, s, 5, -128, 127, axis=1))
    assert np.abs(got - got_t).max() <= 1


@pytest.mark.parametrize("bad, match", [
    (lambda: R.ort_scale(0.0, 1.0, 1.0), "x_scale"),
    (lambda: R.ort_scale(1.0, -1.0, 1.0), "w_scale"),
    (lambda: R.ort_scale(1.0, 1.0, float("inf")), "y_scale"),
    (lambda: R.ort_scale(1e-50, 1.0, 1.0), "x_scale"),             # rounds to 0 in float32
    (lambda: R.ort_scale(1e-30, 1e-30, 1.0), "x_scale \\* w_scale / y_scale"),   # underflows
    (lambda: R.ort_scale(1e30, 1e30, 1.0), "x_scale \\* w_scale / y_scale"),     # overflows
    (lambda: R.ort_scale([1.0, 2.0], 1.0, 1.0), "x_scale"),
    (lambda: R.ort_scale(1.0, np.ones((2, 2)), 1.0), "w_scale"),
    (lambda: R.requantize_ort([1], np.float32(0.0), 0, -128, 127), "scale32"),
    (lambda: R.requantize_ort([1], np.float32("nan"), 0, -128, 127), "scale32"),
    (lambda: R.requantize_ort([1], 1, 0, -128, 127), "scale32"),                  # not a float
    (lambda: R.requantize_ort([1], 0.1, 0, -128, 127), "scale32"),                # 0.1 is not a float32
    (lambda: R.requantize_ort([2**31], np.float32(1), 0, -128, 127), "acc"),
    (lambda: R.requantize_ort([-(2**31) - 1], np.float32(1), 0, -128, 127), "acc"),
    (lambda: R.requantize_ort([1], np.float32(1), 128, -128, 127), "zp_out"),
    (lambda: R.requantize_ort([1], np.float32(1), 0.5, -128, 127), "zp_out"),
    (lambda: R.requantize_ort([1], np.float32(1), 0, 10, 5), "qmin"),
    (lambda: R.requantize_ort([1], np.float32(1), 0, -(2**24), 5), "qmin"),
    (lambda: R.requantize_ort_fast([1], np.float32(1), 300, 0, 255), "zp_out"),
    (lambda: R.requantize_ort(np.zeros((2, 3), np.int64), np.ones(2, np.float32), 0, -128, 127, axis=1),
     "scale32"),
    (lambda: R.requantize(np.zeros(3, np.int64), "float", 1.0, 1.0, 1.0, 0, -128, 127), "mode"),
    (lambda: R.requantize(np.zeros(3, np.int64), "tflite", 1.0, 1.0, 1.0, 200, -128, 127), "zp_out"),
])
def test_ort_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()
