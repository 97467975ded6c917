"""Requantization of int32 accumulators to int8/uint8, exact to the bit.

Two modes (../shared/spec/arithmetic.md):

* ``tflite`` (§2): QuantizeMultiplier + SaturatingRoundingDoublingHighMul
  (SRDHM) + RoundingDivideByPOT (RDBPOT), TFLite's default double-rounding
  build. This is what the hardware's ``RequantUnit`` implements.
* ``ort`` (§3): onnxruntime's float32 scale with round-half-to-even, emulated
  with integer arithmetic only (see ``requantize_ort``).

All functions are vectorised over NumPy int64 arrays holding int32 values.
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
