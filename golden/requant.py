"""Requantization of int32 accumulators to int8/uint8, exact to the bit.

Two modes (../shared/spec/arithmetic.md):

* ``tflite`` (§2): QuantizeMultiplier + SaturatingRoundingDoublingHighMul
  (SRDHM) + RoundingDivideByPOT (RDBPOT), TFLite's default double-rounding
  build. This is what the hardware's ``RequantUnit`` implements.
* ``ort`` (§3): onnxruntime's float32 scale with round-half-to-even, emulated
  with integer arithmetic only: ``ort_scale`` (the float32 combined scale),
  ``requantize_ort`` (the bit-level datapath: 24-bit significands, exact
  24 x 24 product, two round-to-nearest-even steps; the reference for RTL),
  ``requantize_ort_fast`` (same results, a proven shortcut away from ties; used
  by golden.layers) and ``requantize_ort_float`` (the plain float32 statement,
  for tests only).

``requantize(acc, mode, x_scale, w_scale, y_scale, ...)`` dispatches on the
mode from a layer's scales. All functions are vectorised over NumPy int64
arrays holding int32 values and check their arguments first (ValueError
naming the parameter and its range).
"""
from __future__ import annotations

import math

import numpy as np

from ._check import INT32_MAX, INT32_MIN, check_int_array, check_scale

#: Largest left shift the multiplier may ask for (real multiplier < 2**MAX_LEFT_SHIFT).
#: The hardware's barrel shifter is sized from this constant.
MAX_LEFT_SHIFT = 15
#: Largest right shift (TFLite flushes smaller multipliers to zero).
MAX_RIGHT_SHIFT = 31


def quantize_multiplier(m) -> tuple[np.ndarray, np.ndarray]:
    """TFLite ``QuantizeMultiplier``: real multiplier(s) -> (q_fixed int32, shift).

    ``m = q_fixed * 2**(shift - 31)`` with ``q_fixed`` in [2**30, 2**31 - 1].
    Allowed range: 0 < m < 2**MAX_LEFT_SHIFT, finite.
    """
    ma = check_scale(m, "multiplier")
    if np.any(ma >= 2.0**MAX_LEFT_SHIFT):
        raise ValueError(
            f"multiplier must lie in (0, 2**{MAX_LEFT_SHIFT}), got {ma[ma >= 2.0**MAX_LEFT_SHIFT][:4].tolist()}")
    flat = ma.ravel()
    q_out = np.empty(flat.shape, np.int64)
    s_out = np.empty(flat.shape, np.int64)
    for i, v in enumerate(flat):
        q, shift = math.frexp(float(v))
        qf = math.floor(abs(q) * 2.0**31 + 0.5)  # std::round: half away from zero (q > 0)
        if qf == 2**31:
            qf //= 2
            shift += 1
        if shift < -MAX_RIGHT_SHIFT:
            shift, qf = 0, 0
        q_out[i], s_out[i] = qf, shift
    return q_out.reshape(ma.shape), s_out.reshape(ma.shape)


def _trunc_div_pow2(v: np.ndarray, e: int) -> np.ndarray:
    """C-style division by 2**e (truncates toward zero); NumPy's >> floors."""
    return np.where(v >= 0, v >> e, -((-v) >> e))


def srdhm(a, b) -> np.ndarray:
    """SaturatingRoundingDoublingHighMul of int32 values (gemmlowp)."""
    a = np.asarray(a, np.int64)
    b = np.asarray(b, np.int64)
    ab = a * b
    nudge = np.where(ab >= 0, 1 << 30, 1 - (1 << 30))
    r = _trunc_div_pow2(ab + nudge, 31)
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, r)


def rdbpot(x, e) -> np.ndarray:
    """RoundingDivideByPOT: x / 2**e rounded half away from zero, e in [0, 31]."""
    x = np.asarray(x, np.int64)
    e = np.asarray(e, np.int64)
    mask = (np.int64(1) << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (x < 0)
    return (x >> e) + (rem > threshold)


def saturating_left_shift(x, left) -> np.ndarray:
    """``x * 2**left`` clamped to int32.

    TFLite leaves the overflow undefined (int32 multiply); this project
    saturates, in golden/ and in hardware alike.
    """
    v = np.asarray(x, np.int64) << np.asarray(left, np.int64)
    return np.clip(v, INT32_MIN, INT32_MAX)


def multiply_by_quantized_multiplier(x, q_fixed, shift) -> np.ndarray:
    """TFLite ``MultiplyByQuantizedMultiplier`` (double rounding)."""
    shift = np.asarray(shift, np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    return rdbpot(srdhm(saturating_left_shift(x, left), q_fixed), right)


def requantize_tflite(acc, q_fixed, shift, zp_out, qmin, qmax, axis: int | None = None) -> np.ndarray:
    """``clamp(MBQM(acc, q_fixed, shift) + zp_out, qmin, qmax)``.

    ``acc`` int32 values; ``q_fixed``/``shift`` scalars or per-channel vectors
    broadcast along ``axis`` of ``acc``. Returns int64 values in [qmin, qmax].
    """
    acc = check_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    q_fixed = check_int_array(q_fixed, "q_fixed", 0, INT32_MAX)
    shift = check_int_array(shift, "shift", -MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT)
    if not (INT32_MIN <= qmin <= qmax <= INT32_MAX):
        raise ValueError(f"qmin/qmax must satisfy qmin <= qmax, got [{qmin}, {qmax}]")
    q_fixed, shift = _along(q_fixed, acc, axis, "q_fixed"), _along(shift, acc, axis, "shift")
    zp = _along(np.asarray(zp_out, np.int64), acc, axis, "zp_out")
    return np.clip(multiply_by_quantized_multiplier(acc, q_fixed, shift) + zp, qmin, qmax)


def _along(v: np.ndarray, ref: np.ndarray, axis: int | None, name: str) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts along ``axis`` of ``ref``."""
    v = np.asarray(v)
    if v.ndim == 0 or axis is None:
        if v.ndim != 0 and v.size != 1:
            raise ValueError(f"{name} has {v.size} values but no channel axis was given")
        return v.reshape(())
    ax = axis % ref.ndim
    if v.size not in (1, ref.shape[ax]):
        raise ValueError(f"{name} must have 1 or {ref.shape[ax]} values (channels on axis {axis}), got {v.size}")
    shape = [1] * ref.ndim
    shape[ax] = v.size
    return v.reshape(shape)


# ---------------------------------------------------------------------------
# "ort" mode: onnxruntime's float32 requantization, emulated with integers.
# ---------------------------------------------------------------------------
#
# onnxruntime (QLinearConv / QLinearMatMul on the CPU provider) computes, in
# C++ float arithmetic,
#
#     scale32[c] = X_scale * W_scale[c] / Y_scale            (two float32 roundings)
#     f = float32(acc) * scale32[c]                          (two more roundings)
#     q = nearbyint(clamp(f, qmin - zp, qmax - zp)) + zp     (round half to even)
#
# (``ComputeOutputScale`` in ``core/providers/cpu/quantization/qlinearconv.cc``
# and ``quantize_linear_matmul.cc``; ``MlasRequantizeOutput`` in
# ``core/mlas/lib/quantize.cpp``; the AVX2 kernels do the same with
# cvtdq2ps / mulps / cvtps2dq). ``requantize_ort`` reproduces this bit for bit
# with integer operations only, in the form a hardware datapath can build.

#: float32 significand width (incl. the hidden bit).
F32_MANT_BITS = 24
#: |qmin|, |qmax| bound for the ort mode: keeps qmin - zp, qmax - zp exact in float32.
ORT_QBOUND = 2**23

# bit_length of 0..8191, the priority encoder behind the normalisation steps.
_BITLEN_LUT = np.zeros(8192, np.int64)
for _i in range(1, 8192):
    _BITLEN_LUT[_i] = _i.bit_length()
del _i


def _to_f32_scale(s, name: str) -> np.ndarray:
    """A scale as onnxruntime sees it: rounded to float32, then finite and > 0."""
    a = np.asarray(s)
    if a.dtype.kind not in "fiu" or a.dtype == np.bool_:
        raise ValueError(f"{name} must be a real number, got dtype {a.dtype}")
    check_scale(a, name)  # finite and > 0 before rounding
    with np.errstate(over="ignore", under="ignore"):
        f = a.astype(np.float32)
    check_scale(f, f"{name} (rounded to float32)")  # 1e-50 -> 0 and 1e39 -> inf are rejected
    return f


def ort_scale(x_scale, w_scale, y_scale) -> np.ndarray:
    """onnxruntime's combined requantization scale ``float32(float32(x*w)/y)``.

    All three scales are first rounded to float32 (that is how an ONNX model
    stores them); ``x_scale`` and ``y_scale`` must be single values, ``w_scale``
    a single value or one per output channel. The product and the quotient are
    each rounded to float32 (round to nearest even), exactly as the C++
    expression ``X_scale_value * W_scale_data[i] / Y_scale_value`` does on x86-64.
    Returns a float32 array shaped like ``w_scale``. A combined scale that
    underflows to 0 or overflows to inf in float32 raises ValueError.
    """
    xs = _to_f32_scale(x_scale, "x_scale")
    ys = _to_f32_scale(y_scale, "y_scale")
    ws = _to_f32_scale(w_scale, "w_scale")
    if xs.size != 1:
        raise ValueError(f"x_scale must be a single value, got shape {xs.shape}")
    if ys.size != 1:
        raise ValueError(f"y_scale must be a single value, got shape {ys.shape}")
    if ws.ndim > 1:
        raise ValueError(f"w_scale must be a scalar or a 1-D per-channel vector, got shape {ws.shape}")
    with np.errstate(over="ignore", under="ignore"):
        prod = (xs.reshape(()) * ws).astype(np.float32)  # float32 * float32 -> float32
        out = (prod / ys.reshape(())).astype(np.float32)
    if not np.all(np.isfinite(out)) or np.any(out <= 0):
        raise ValueError(
            "x_scale * w_scale / y_scale must be finite and > 0 in float32 "
            f"(range [2**-149, 3.4e38]), got {out[~(np.isfinite(out) & (out > 0))][:4].tolist()}")
    return out


def _check_scale32(scale32) -> np.ndarray:
    """``scale32`` must hold finite, positive values that are exact float32 numbers."""
    a = np.asarray(scale32)
    if a.dtype.kind != "f":
        raise ValueError(f"scale32 must be a float array (use ort_scale), got dtype {a.dtype}")
    check_scale(a, "scale32")
    f = a.astype(np.float32)
    if not np.array_equal(f.astype(a.dtype), a):
        raise ValueError("scale32 must hold exact float32 values (use ort_scale), "
                         f"got values not representable in float32: {a[f.astype(a.dtype) != a][:4].tolist()}")
    return f


def _check_out_range(zp_out, qmin, qmax, bound: int) -> np.ndarray:
    """qmin <= qmax inside [-bound, bound]; zero point(s) integers in [qmin, qmax]."""
    for nm, v in (("qmin", qmin), ("qmax", qmax)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{nm} must be an integer in [{-bound}, {bound}], got {v!r}")
        if not -bound <= v <= bound:
            raise ValueError(f"{nm} must lie in [{-bound}, {bound}], got {v}")
    if qmin > qmax:
        raise ValueError(f"qmin must be <= qmax, got qmin={qmin}, qmax={qmax}")
    zp = np.asarray(zp_out)
    if zp.dtype.kind == "f":
        if not np.all(np.isfinite(zp)) or np.any(zp != np.round(zp)):
            raise ValueError(f"zp_out must be an integer in [{qmin}, {qmax}], got {zp.ravel()[:4].tolist()}")
        zp = zp.astype(np.int64)
    return check_int_array(zp, "zp_out", int(qmin), int(qmax))


def _bitlen(v: np.ndarray) -> np.ndarray:
    """Bit length of non-negative int64 values below 2**26 (two-level priority encoder)."""
    hi = v >> 13
    return np.where(hi > 0, 13 + _BITLEN_LUT[hi & 8191], _BITLEN_LUT[v & 8191])


def _rne_shift(v: np.ndarray, s) -> np.ndarray:
    """``v / 2**s`` rounded half to even, for 0 <= v < 2**61 and 0 <= s <= 60.

    ``(2v + 2**s - 1 + lsb) >> (s + 1)`` with ``lsb = (v >> s) & 1``: the
    remainder r = v mod 2**s rounds up iff r > 2**(s-1), or r == 2**(s-1)
    and the truncated quotient is odd. s = 0 returns v unchanged.
    """
    s = np.asarray(s, np.int64)
    return ((v << 1) + (np.int64(1) << s) - 1 + ((v >> s) & 1)) >> (s + 1)


def f32_decompose(scale32) -> tuple[np.ndarray, np.ndarray]:
    """Split positive finite float32 values into ``(mant, exp)`` with ``value = mant * 2**exp``.

    Normal numbers: mant in [2**23, 2**24) (hidden bit restored), exp = E - 150.
    Subnormals: mant in [1, 2**23), exp = -149. Pure bit manipulation.
    """
    f = _check_scale32(scale32)
    u = f.view(np.uint32).astype(np.int64)
    e_field = (u >> 23) & 0xFF
    frac = u & 0x7FFFFF
    mant = np.where(e_field > 0, frac | (1 << 23), frac)
    exp = np.where(e_field > 0, e_field - 150, -149)
    return mant, exp


def _requantize_ort_int(a_abs, neg, mant, exp, lo, hi):
    """Core of ``requantize_ort`` on validated, broadcastable int64 arrays.

    ``a_abs = |acc|`` (<= 2**31), ``neg = acc < 0``, ``(mant, exp)`` the
    decomposed scale, ``lo = qmin - zp``, ``hi = qmax - zp``. Returns
    ``clamp(rne(float32(float32(acc) * scale)), lo, hi)`` (before + zp).
    """
    # 1. float32(acc): keep 24 significant bits of |acc|, round half to even.
    n = _BITLEN_LUT[a_abs >> F32_MANT_BITS]           # |acc| < 2**32 -> n in [0, 8]
    ma = _rne_shift(a_abs, n)                          # <= 2**24, value = ma * 2**n
    # 2. exact 24 x 24 -> 48-bit product.
    p = ma * mant                                      # < 2**48
    # 3. round the product to 24 significant bits (the float32 multiply).
    k = _bitlen(p >> F32_MANT_BITS)                    # p >> 24 < 2**24 -> k in [0, 24]
    pm = _rne_shift(p, k)                              # <= 2**24
    e = n + k + exp                                    # |f| = pm * 2**e
    # 4. to an integer, round half to even. Magnitudes >= 2**25 exceed every
    #    allowed bound (|lo|, |hi| <= 2**24), so shifts are capped: results
    #    that would overflow float32 (inf) clamp to the same bound.
    #    (Products below 2**-126 would be float32 subnormals; they are < 0.5
    #    either way and round to 0, so the 24-bit rounding used here agrees.)
    up = pm << np.minimum(np.maximum(e, 0), 25)
    down = _rne_shift(pm, np.minimum(np.maximum(-e, 0), 40))   # pm < 2**25: shifts >= 26 give 0
    mag = np.where(e >= 0, up, down)
    return np.minimum(np.maximum(np.where(neg, -mag, mag), lo), hi)


def requantize_ort(acc, scale32, zp_out, qmin, qmax, axis: int | None = None) -> np.ndarray:
    """onnxruntime requantization, integer arithmetic only (arithmetic.md §3).

    ``q = rne(clamp(float32(float32(acc) * scale32), qmin - zp_out, qmax - zp_out)) + zp_out``

    computed without floating point: the scale is split into a 24-bit
    significand and an exponent (``f32_decompose``), |acc| is rounded to 24
    significant bits (round half to even, = int32 -> float32 conversion), the
    24 x 24-bit product is formed exactly and rounded to 24 significant bits
    (= the float32 multiply), and the result is shifted to an integer with
    round half to even (= cvtps2dq / nearbyintf). Clamping the rounded integer
    equals rounding the clamped float because the bounds are integers.

    ``acc`` int32 values; ``scale32`` exact float32 values, scalar or one per
    channel along ``axis`` (see ``ort_scale``); ``zp_out`` integer(s) in
    [qmin, qmax]; |qmin|, |qmax| <= 2**23. Subnormal scales and products that
    overflow float32 are handled exactly (the latter saturate). Returns int64.
    """
    acc = check_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    zp = _check_out_range(zp_out, qmin, qmax, ORT_QBOUND)
    mant, exp = f32_decompose(scale32)
    mant, exp = _along(mant, acc, axis, "scale32"), _along(exp, acc, axis, "scale32")
    zp = _along(zp, acc, axis, "zp_out")
    out = _requantize_ort_int(np.abs(acc), acc < 0, mant, exp, qmin - zp, qmax - zp)
    return out + zp


def _normalise_f32(mant: np.ndarray, exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shift subnormal significands up to [2**23, 2**24) (same value, smaller exponent)."""
    bl = np.zeros(mant.shape, np.int64)
    for b in range(1, F32_MANT_BITS + 1):
        bl += mant >= (1 << (b - 1))
    sh = F32_MANT_BITS - bl
    return mant << sh, exp - sh


def _ort_fast_core(acc: np.ndarray, mant: np.ndarray, exp: np.ndarray, zp, lo, hi, *, offset=None,
                   amax=None) -> np.ndarray:
    """``requantize_ort`` with a cheap exact path for values far from a rounding tie.

    Requantizes ``acc + offset`` (``offset``: optional int64 per channel; the
    sums must be valid int32 values; ``acc`` int64). ``mant``/``exp``: the
    decomposed float32 scale, broadcastable against ``acc``; ``lo = qmin - zp``,
    ``hi = qmax - zp``; ``amax``: optional proven bound on |acc + offset| per
    channel (or scalar), computed from the data if omitted. Returns the final
    codes (int64, zero point added), equal to ``requantize_ort``.
    """
    return _ort_fast_split(acc, mant, exp, zp, lo, hi, offset=offset, amax=amax)[0]


class OrtFast:
    """Per-channel constants of the fast "ort" path (see ``_ort_fast_split`` for the proof).

    Built once per layer from the decomposed scale; every array is shaped to
    broadcast against the accumulators (``None`` fields: the fast path does
    not apply and ``slow`` must be used for everything). ``take(rows)``
    selects the constants of some channels (leading axis).
    """

    FIELDS = ("mant", "exp", "zp", "lo", "hi", "r", "mask", "const", "qlo", "qhi")

    def __init__(self, mant, exp, zp, lo, hi):
        mant, exp = np.asarray(mant, np.int64), np.asarray(exp, np.int64)
        if np.any(mant < (1 << (F32_MANT_BITS - 1))):   # subnormal scales only
            mant, exp = _normalise_f32(mant, exp)
        zp, lo, hi = (np.asarray(v, np.int64) for v in (zp, lo, hi))
        self.mant, self.exp, self.zp, self.lo, self.hi = mant, exp, zp, lo, hi
        self.ok = not np.any(exp > -1)
        if not self.ok:
            self.r = self.mask = self.const = self.qlo = self.qhi = None
            return
        r = np.minimum(-exp, 57)
        self.r = r
        self.mask = (np.int64(1) << r) - 1
        # + 1/2 and + zp folded into the shifted sum: zp * 2**R < 2**61 when R <= 52, |zp| < 2**9
        self.fold = bool(np.all(r <= 52)) and bool(np.all(np.abs(zp) < 2**9))
        self.const = (np.int64(1) << (r - 1)) + ((zp << r) if self.fold else 0)
        self.qlo, self.qhi = (lo + zp, hi + zp) if self.fold else (lo, hi)

    def take(self, rows) -> "OrtFast":
        new = object.__new__(OrtFast)
        new.__dict__.update(self.__dict__)
        for f in self.FIELDS:
            v = getattr(self, f)
            if v is not None and v.ndim and v.shape[0] > 1:
                setattr(new, f, v[rows])
        return new

    def kernel(self, acc: np.ndarray, offset=None, amax=None) -> tuple[np.ndarray, np.ndarray]:
        """Codes of ``acc + offset``, valid where the returned ``unsafe`` mask is False."""
        const = self.const if offset is None else self.const + offset * self.mant   # |offset*mant| < 2**55
        if amax is None:
            a = acc if offset is None else acc + offset
            shape = (1,) * (a.ndim - self.mant.ndim) + self.mant.shape
            axes = tuple(i for i in range(a.ndim) if shape[i] == 1 and a.shape[i] != 1)
            amax = np.maximum(a.max(axis=axes, keepdims=True), -a.min(axis=axes, keepdims=True))
        m = ((np.asarray(amax, np.int64) * self.mant) >> 22) + 1    # per channel, <= 2**33 + 1
        t = acc * self.mant                               # P (without the offset part)
        t += const
        q = t >> self.r                                   # floor(V + 1/2) (+ zp if folded)
        t += m
        t &= self.mask
        unsafe = t <= (m << 1)
        np.maximum(q, self.qlo, out=q)
        np.minimum(q, self.qhi, out=q)
        if not self.fold:
            q += self.zp
        return q, unsafe

    def slow(self, a: np.ndarray, idx=None, shape=None) -> np.ndarray:
        """Codes of the accumulators ``a`` by the bit-level emulation.

        ``a`` holds the accumulators at positions ``idx`` (an index tuple) of an
        array of ``shape`` the constants broadcast against; without ``idx``,
        ``a`` itself has that shape.
        """
        def pick(v):
            return v if idx is None else np.broadcast_to(v, shape)[idx]
        return _requantize_ort_int(np.abs(a), a < 0, pick(self.mant), pick(self.exp), pick(self.lo),
                                   pick(self.hi)) + pick(self.zp)


def _ort_fast_split(acc, mant, exp, zp, lo, hi, *, offset=None, amax=None):
    """``_ort_fast_core`` that also returns which elements took the slow path (None: all did).

    Why it is exact. With the significand normalised (mant in [2**23, 2**24))
    and R = -exp >= 1, the exact real product is V = a * scale = P / 2**R
    with a = acc + offset and P = a * mant (|P| < 2**55, exact in int64).
    onnxruntime computes f = fl(fl(a) * scale) = V (1 + d1)(1 + d2) with
    |d1|, |d2| <= 2**-24 (float rounding is sign-symmetric; no overflow is
    possible as |V| < 2**54; if the product underflows, |V| < 2**-125 and both
    results are 0), so |f - V| <= |V| (2**-23 + 2**-48) < |V| * 2**-22. If the
    distance from V to the nearest half-integer exceeds |V| * 2**-22, no
    half-integer lies between V and f and f is not one, so rne(f) = rne(V)
    = floor(V + 1/2) = (P + 2**(R-1)) >> R (an arithmetic shift floors for
    either sign). In units of 2**-R that distance is min(z, 2**R - z) with
    z = (P + 2**(R-1)) mod 2**R (``& mask`` on two's complement), and the
    test ``((P + 2**(R-1) + m) mod 2**R) > 2m`` is equivalent to
    min(z, 2**R - z) > m. m = ((amax * mant) >> 22) + 1 > |P| * 2**-22 for
    every element, amax >= |a| being one bound per channel. Elements failing
    the test (a fraction of about 2**-21 * max|V|) and channels with R < 1
    (scale >= 2**23) go through the bit-level emulation ``_requantize_ort_int``.
    R is capped at 57: then |V| < 2**-2, and both the fast path and
    onnxruntime give 0. Clamping after rounding equals rounding after
    clamping (integer bounds). Adding zp * 2**R (when it fits in int64) or
    offset * mant to P before the shift only moves the result by zp or makes
    P the product of the sum; the residue mod 2**R, hence the test, is unchanged.
    """
    prm = OrtFast(mant, exp, zp, lo, hi)
    if offset is not None:
        offset = np.asarray(offset, np.int64)
    if not prm.ok or acc.size == 0:
        return prm.slow(acc if offset is None else acc + offset), None
    q, unsafe = prm.kernel(acc, offset, amax)
    if unsafe.any():
        idx = np.unravel_index(np.flatnonzero(unsafe), unsafe.shape)
        a = acc[idx]
        if offset is not None:
            a = a + np.broadcast_to(offset, acc.shape)[idx]
        q[idx] = prm.slow(a, idx, acc.shape)
    return q, unsafe


def requantize_ort_fast(acc, scale32, zp_out, qmin, qmax, axis: int | None = None) -> np.ndarray:
    """Same results as ``requantize_ort`` (bit for bit), several times faster.

    Integer arithmetic only: a single exact 55-bit product and a rounding
    shift for values provably away from a tie, the full float32 emulation for
    the rest (see ``_ort_fast_core`` for the proof). Same arguments and checks
    as ``requantize_ort``; this is what the layers use.
    """
    acc = check_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    zp = _check_out_range(zp_out, qmin, qmax, ORT_QBOUND)
    mant, exp = f32_decompose(scale32)
    mant, exp = _along(mant, acc, axis, "scale32"), _along(exp, acc, axis, "scale32")
    zp = _along(zp, acc, axis, "zp_out")
    return _ort_fast_core(acc, mant, exp, zp, qmin - zp, qmax - zp)


def requantize_ort_float(acc, scale32, zp_out, qmin, qmax, axis: int | None = None) -> np.ndarray:
    """Plain NumPy float32 statement of the "ort" mode, the reference for tests.

    int32 -> float32 conversion and float32 multiply (IEEE round to nearest
    even), clamp to [qmin - zp, qmax - zp] in float32, ``np.rint`` (half to
    even), + zp. Not used by the layers: ``requantize_ort`` is the model.
    """
    acc = check_int_array(acc, "acc", INT32_MIN, INT32_MAX)
    zp = _check_out_range(zp_out, qmin, qmax, ORT_QBOUND)
    s = _along(_check_scale32(scale32), acc, axis, "scale32")
    zp = _along(zp, acc, axis, "zp_out")
    with np.errstate(over="ignore", under="ignore"):
        f = acc.astype(np.int32).astype(np.float32) * s
    f = np.clip(f, (qmin - zp).astype(np.float32), (qmax - zp).astype(np.float32))
    return np.rint(f).astype(np.int64) + zp


def tflite_multiplier(x_scale, w_scale, y_scale) -> np.ndarray:
    """TFLite's real multiplier ``M = double(s_x) * double(s_w) / double(s_y)``.

    The scales are float32 in a TFLite model, so they are rounded to float32
    first; the product and quotient are taken in float64 (arithmetic.md §2).
    """
    xs = _to_f32_scale(x_scale, "x_scale").astype(np.float64)
    ys = _to_f32_scale(y_scale, "y_scale").astype(np.float64)
    ws = _to_f32_scale(w_scale, "w_scale").astype(np.float64)
    if xs.size != 1:
        raise ValueError(f"x_scale must be a single value, got shape {xs.shape}")
    if ys.size != 1:
        raise ValueError(f"y_scale must be a single value, got shape {ys.shape}")
    if ws.ndim > 1:
        raise ValueError(f"w_scale must be a scalar or a 1-D per-channel vector, got shape {ws.shape}")
    return xs.reshape(()) * ws / ys.reshape(())


REQUANT_MODES = ("tflite", "ort")


def requantize(acc, mode: str, x_scale, w_scale, y_scale, zp_out, qmin, qmax,
               axis: int | None = None) -> np.ndarray:
    """Requantize int32 accumulators from the layer's scales in either mode.

    ``mode="tflite"``: ``quantize_multiplier(tflite_multiplier(...))`` then
    ``requantize_tflite``. ``mode="ort"``: ``ort_scale(...)`` then
    ``requantize_ort``. ``w_scale`` may be per channel (along ``axis``).
    ``zp_out`` must lie in [qmin, qmax]. Returns int64 values in [qmin, qmax].
    """
    if mode not in REQUANT_MODES:
        raise ValueError(f"mode must be one of {REQUANT_MODES}, got {mode!r}")
    if mode == "ort":
        return requantize_ort_fast(acc, ort_scale(x_scale, w_scale, y_scale), zp_out, qmin, qmax, axis)
    _check_out_range(zp_out, qmin, qmax, INT32_MAX)
    q_fixed, shift = quantize_multiplier(tflite_multiplier(x_scale, w_scale, y_scale))
    return requantize_tflite(acc, q_fixed, shift, zp_out, qmin, qmax, axis)
