"""Quantization schemes and reduced-precision float emulation (golden model).

Affine quantization (../shared/spec/arithmetic.md §1, Jacob et al. 2018, TFLite
quantization spec, ONNX ``QuantizeLinear``)::

    real = scale * (q - zero_point)

* :class:`QParams` holds one scheme: per-tensor (``axis is None``) or
  per-channel along ``axis``; ``scale`` is stored as float32 (the type ONNX and
  TFLite store), ``zero_point`` as int64 (so ``q - zero_point`` never wraps).
* :func:`choose_qparams` turns a real range into QParams (symmetric or
  asymmetric, optional power-of-two "fractional length" scales, optional
  narrow range).
* :func:`quantize` / :func:`dequantize` are bit-exact with onnxruntime's
  ``QuantizeLinear`` / ``DequantizeLinear`` for float32 inputs (float32 division,
  round half to even, saturate; dequantize is ``float32(q - zp) * scale``).
* :func:`quantize_weights`: the TFLite weight rule, symmetric per-channel int8
  in [-127, 127] with zero point 0.

Reduced-precision floats (spec §5): :func:`to_fp16` (IEEE binary16, round to
nearest even), :func:`to_bf16_bits` / :func:`bf16_bits_to_f32` /
:func:`to_bf16` (bfloat16 = upper 16 bits of float32, RNE or truncation).

Every public function validates its arguments first and raises ``ValueError``
naming the parameter and the allowed range; nothing is silently wrapped.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._check import check_scale, check_zero_point, qrange

FLOAT_DTYPES = ("float16", "float32", "float64")

#: Smallest normal float32; a scale below it is treated as a degenerate range.
F32_TINY = float(np.finfo(np.float32).tiny)


# --------------------------------------------------------------------------- QParams
@dataclass(frozen=True, eq=False)
class QParams:
    """One affine quantization scheme, ``real = scale * (q - zero_point)``.

    * ``scale``: float32 ndarray, finite and > 0. A float64 input is rounded to
      the nearest float32 (the value ONNX/TFLite would store) and must still be
      finite and > 0 afterwards.
    * ``zero_point``: int64 ndarray, each in [qmin, qmax].
    * ``dtype``: storage type, ``'int8'`` or ``'uint8'``.
    * ``axis``: ``None`` for per-tensor (scale and zero_point are 0-d), else
      the channel axis of the tensors it quantizes (scale is 1-D, one value
      per channel; zero_point 1-D of the same length, a single value is
      broadcast). Negative axes count from the end; the range is checked
      against the tensor in :func:`quantize`.
    * ``qmin``/``qmax``: the quantized range, inside the storage type's range
      (e.g. [-127, 127] for narrow-range int8 weights).

    Arrays are stored read-only; ``==`` compares all fields exactly.
    """

    scale: np.ndarray
    zero_point: np.ndarray
    dtype: str
    axis: int | None
    qmin: int
    qmax: int

    def __post_init__(self):
        dlo, dhi = qrange(self.dtype, "dtype")
        for name in ("qmin", "qmax"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{name} must be an integer in [{dlo}, {dhi}], got {v!r}")
        if not (dlo <= self.qmin < self.qmax <= dhi):
            raise ValueError(
                f"qmin/qmax must satisfy {dlo} <= qmin < qmax <= {dhi} for {self.dtype}, "
                f"got [{self.qmin}, {self.qmax}]")
        if self.axis is not None and (isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer))):
            raise ValueError(f"axis must be None or an integer, got {self.axis!r}")
        s_in = np.asarray(self.scale)
        if s_in.dtype.kind not in "iuf":
            raise ValueError(f"scale must be a real number array, got dtype {s_in.dtype}")
        check_scale(s_in, "scale")
        with np.errstate(over="ignore"):
            s32 = s_in.astype(np.float32)
        check_scale(s32, "scale (rounded to float32)")
        z_in = np.asarray(self.zero_point)
        if z_in.size == 0:
            raise ValueError("zero_point must not be empty")
        z = check_zero_point(z_in, "zero_point", self.dtype)
        if z.size and (z.min() < self.qmin or z.max() > self.qmax):
            raise ValueError(
                f"zero_point must lie in [qmin, qmax] = [{self.qmin}, {self.qmax}], got {z.ravel()[:4].tolist()}")
        if self.axis is None:
            if s32.size != 1 or z.size != 1:
                raise ValueError(
                    f"per-tensor (axis=None) scale and zero_point must each hold 1 value, "
                    f"got shapes {s32.shape} and {z.shape}")
            s32, z = s32.reshape(()), z.reshape(())
        else:
            if s32.ndim != 1:
                raise ValueError(f"per-channel scale must be 1-D (one value per channel), got shape {s32.shape}")
            if z.size == 1:
                z = np.full(s32.shape, z.reshape(()), np.int64)
            elif z.shape != s32.shape:
                raise ValueError(
                    f"per-channel zero_point must have 1 or {s32.size} values (shape {s32.shape}), got shape {z.shape}")
        s32 = np.array(s32, np.float32)
        z = np.array(z, np.int64)
        s32.setflags(write=False)
        z.setflags(write=False)
        object.__setattr__(self, "scale", s32)
        object.__setattr__(self, "zero_point", z)
        object.__setattr__(self, "qmin", int(self.qmin))
        object.__setattr__(self, "qmax", int(self.qmax))
        if self.axis is not None:
            object.__setattr__(self, "axis", int(self.axis))

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    def __eq__(self, other):
        if not isinstance(other, QParams):
            return NotImplemented
        return (self.dtype == other.dtype and self.axis == other.axis and self.qmin == other.qmin
                and self.qmax == other.qmax and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    __hash__ = None


# --------------------------------------------------------------------------- helpers
def _check_bool(v, name: str) -> bool:
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {v!r}")
    return bool(v)


def _check_float_array(x, name: str, *, allow_inf: bool = False, allow_nan: bool = False) -> np.ndarray:
    """``x`` must be a float16/32/64 ndarray (NaN/Inf rejected unless allowed)."""
    a = np.asarray(x)
    if a.dtype.name not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have dtype in {FLOAT_DTYPES}, got {a.dtype}")
    if not allow_nan and np.isnan(a).any():
        raise ValueError(f"{name} must not contain NaN")
    if not allow_inf and np.isinf(a).any():
        raise ValueError(f"{name} must be finite (allowed range: finite {a.dtype} values), got Inf")
    return a


def _normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"{name} must be None or an integer in [{-ndim}, {ndim - 1}], got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be in [{-ndim}, {ndim - 1}] for a {ndim}-D tensor, got {axis}")
    return int(axis) % ndim


def _along(v: np.ndarray, ndim: int, axis: int | None) -> np.ndarray:
    """Reshape a per-channel vector so it broadcasts along ``axis`` of an ndim tensor."""
    if axis is None:
        return v.reshape(())
    shape = [1] * ndim
    shape[axis] = v.size
    return v.reshape(shape)


def _check_range(r, name: str, axis) -> np.ndarray:
    a = np.asarray(r)
    if a.dtype.kind not in "iuf":
        raise ValueError(f"{name} must be a real number (array), got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got {a[~np.isfinite(a)][:4].tolist()}")
    if axis is None:
        if a.size != 1:
            raise ValueError(f"{name} must be a single value when axis is None, got shape {a.shape}")
        return a.reshape(())
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"{name} must be 1-D with one value per channel when axis is given, got shape {a.shape}")
    return a


def _pow2_ceil(s: np.ndarray) -> np.ndarray:
    """Smallest power of two >= s (s > 0, float64), exact."""
    m, e = np.frexp(s)  # s = m * 2**e, m in [0.5, 1)
    e = np.where(m == 0.5, e - 1, e)
    return np.ldexp(1.0, e)


# --------------------------------------------------------------------------- choose_qparams
def choose_qparams(rmin, rmax, dtype: str = "int8", symmetric: bool = False, axis: int | None = None,
                   power_of_two: bool = False, narrow_range: bool = False) -> QParams:
    """QParams for real range(s) [rmin, rmax] (scalars, or 1-D per channel when ``axis`` is given).

    * The range is first widened to include 0 (so 0 is exactly representable).
    * ``narrow_range``: qmin is raised by one ([-127, 127] for int8, [1, 255]
      for uint8), the TFLite weight convention.
    * ``symmetric``: zero point 0 for int8, 128 for uint8 (ONNX convention
      ``round((qmin + qmax) / 2)`` of the full range); ``scale = max|r| / 127``
      (127 = qmax - zero_point) so that both +max|r| and -max|r| are
      representable without clipping (-128, when allowed, is simply unused).
    * asymmetric: ``scale = (rmax - rmin) / (qmax - qmin)``,
      ``zero_point = round_half_even(qmin - rmin / scale)`` clamped to
      [qmin, qmax] (onnxruntime uses ``np.round``; the float32 scale that is
      stored is the one used here). The rounding of the zero point can move
      the representable range by up to half a step, like TFLite/ORT.
    * ``power_of_two`` ("fractional length"): the scale is rounded UP to the
      next power of two 2**-fl, so the representable range only grows; the
      zero point is then chosen inside the interval that keeps both rmin and
      rmax representable, so nothing clips (checked exactly).
    * Degenerate ranges (rmin == rmax == 0 after widening), and ranges so
      small that the scale would fall below the smallest normal float32
      (2**-126, the onnxruntime rule), get scale 1; the zero point is the
      symmetric one (0 / 128) when ``symmetric``, else 0 clamped into
      [qmin, qmax] (0, or 1 for narrow uint8), as onnxruntime's
      ``compute_scale_zp`` (which also uses 0). Every value of such a range
      quantizes to the zero point.

    Raises ``ValueError`` for a non-finite range, rmin > rmax, a bad dtype or
    flag, or a scale too large for float32.
    """
    lo_d, hi_d = qrange(dtype, "dtype")
    symmetric = _check_bool(symmetric, "symmetric")
    power_of_two = _check_bool(power_of_two, "power_of_two")
    narrow_range = _check_bool(narrow_range, "narrow_range")
    if axis is not None and (isinstance(axis, bool) or not isinstance(axis, (int, np.integer))):
        raise ValueError(f"axis must be None or an integer, got {axis!r}")
    rmin = _check_range(rmin, "rmin", axis)
    rmax = _check_range(rmax, "rmax", axis)
    if rmin.shape != rmax.shape:
        raise ValueError(f"rmin and rmax must have the same shape, got {rmin.shape} and {rmax.shape}")
    if np.any(rmin > rmax):
        bad = np.flatnonzero(np.atleast_1d(rmin > rmax))[:4].tolist()
        raise ValueError(f"rmin must be <= rmax (channels {bad} violate it)")
    qmin = lo_d + (1 if narrow_range else 0)
    qmax = hi_d
    rmin = np.minimum(rmin, 0.0)
    rmax = np.maximum(rmax, 0.0)

    if symmetric:
        zp_sym = (lo_d + hi_d + 1) // 2  # 0 for int8, 128 for uint8
        amax = np.maximum(-rmin, rmax)
        steps = qmax - zp_sym  # 127
        s64 = amax / steps
        if power_of_two:
            s64 = _pow2_ceil(np.where(s64 > 0, s64, 1.0))
            # Exact guard that 127 * s >= amax (true for correctly rounded division; s * 127 is exact).
            s64 = np.where(s64 * steps < amax, s64 * 2, s64)
        degenerate = (amax == 0) | (s64 < F32_TINY)
        s64 = np.where(degenerate, 1.0, s64)
        zp = np.full(s64.shape, zp_sym, np.int64)
    else:
        span = rmax - rmin
        s64 = span / (qmax - qmin)
        if power_of_two:
            s64 = np.where(s64 > 0, _pow2_ceil(np.where(s64 > 0, s64, 1.0)), 0.0)
        degenerate = (span == 0) | (s64 < F32_TINY)
        s64 = np.where(degenerate, 1.0, s64)
        if power_of_two:
            zp = _pow2_zero_point(rmin, rmax, s64, qmin, qmax)
            s64 = np.where(zp[1], s64 * 2, s64)
            if np.any(zp[1]):
                zp = _pow2_zero_point(rmin, rmax, s64, qmin, qmax)
            zp = zp[0]
        else:
            with np.errstate(over="ignore"):  # an overflowing scale is rejected below
                s_used = s64.astype(np.float32).astype(np.float64)
            zp = np.clip(np.round(qmin - rmin / s_used), qmin, qmax).astype(np.int64)
        zp = np.where(degenerate, min(max(0, qmin), qmax), zp)

    with np.errstate(over="ignore"):
        s32 = s64.astype(np.float32)
    if not np.all(np.isfinite(s32)):
        raise ValueError("rmax - rmin is too large: the scale must be a finite float32 (< 3.4e38)")
    return QParams(s32, zp, dtype, axis, qmin, qmax)


def _pow2_zero_point(rmin, rmax, s, qmin, qmax):
    """Zero point for a power-of-two scale such that s*(qmin-Z) <= rmin and s*(qmax-Z) >= rmax.

    Returns (Z, infeasible) where ``infeasible`` marks channels whose scale must
    double. The predicates are evaluated exactly: ``s * integer`` is exact in
    float64 for a power-of-two ``s``.
    """
    def ok_lo(z):  # rmin representable
        return s * (qmin - z) <= rmin

    def ok_hi(z):  # rmax representable
        return s * (qmax - z) >= rmax

    lo = np.ceil(qmin - rmin / s)
    lo = np.where(ok_lo(lo - 1), lo - 1, lo)
    lo = np.where(ok_lo(lo), lo, lo + 1)
    hi = np.floor(qmax - rmax / s)
    hi = np.where(ok_hi(hi + 1), hi + 1, hi)
    hi = np.where(ok_hi(hi), hi, hi - 1)
    lo = np.maximum(lo, qmin)
    hi = np.minimum(hi, qmax)
    infeasible = lo > hi
    z = np.clip(np.round(qmin - rmin / s), lo, np.maximum(lo, hi)).astype(np.int64)
    return z, infeasible


# --------------------------------------------------------------------------- quantize / dequantize
def _check_qparams(qp) -> QParams:
    if not isinstance(qp, QParams):
        raise ValueError(f"qp must be a QParams, got {type(qp).__name__}")
    return qp


def _channel_axis(qp: QParams, shape: tuple, name: str) -> int | None:
    if qp.axis is None:
        return None
    if len(shape) == 0:
        raise ValueError(f"{name} must have at least 1 dimension for per-channel qp (axis={qp.axis}), got a scalar")
    ax = _normalize_axis(qp.axis, len(shape), "qp.axis")
    if shape[ax] != qp.scale.size:
        raise ValueError(
            f"{name} has {shape[ax]} channels on axis {qp.axis} but qp has {qp.scale.size} scales")
    return ax


def quantize(x_float, qp: QParams) -> np.ndarray:
    """``saturate(round_half_even(x / scale) + zero_point)`` as an ndarray of ``qp.dtype``.

    Bit-exact with ONNX/onnxruntime ``QuantizeLinear`` for float32 ``x``: the
    division is done in float32 (float16 inputs are widened to float32
    exactly; float64 inputs are divided in float64 by the float32 scale),
    rounded half to even, then saturated to [qp.qmin, qp.qmax]. +-Inf
    saturates to qmax/qmin; NaN raises ``ValueError``.
    """
    qp = _check_qparams(qp)
    x = _check_float_array(x_float, "x_float", allow_inf=True)
    ax = _channel_axis(qp, x.shape, "x_float")
    ct = np.float64 if x.dtype == np.float64 else np.float32
    s = _along(qp.scale.astype(ct), x.ndim, ax)
    zp = _along(qp.zero_point, x.ndim, ax)
    with np.errstate(over="ignore"):
        r = np.rint(x.astype(ct) / s)
    r = np.clip(r, qp.qmin - zp, qp.qmax - zp)
    return (r.astype(np.int64) + zp).astype(qp.dtype)


def dequantize(q, qp: QParams) -> np.ndarray:
    """``float32(q - zero_point) * scale`` (float32, as onnxruntime ``DequantizeLinear``).

    ``q`` must be an integer array with values in [qp.qmin, qp.qmax].
    """
    qp = _check_qparams(qp)
    a = np.asarray(q)
    if a.dtype.kind not in "iu":
        raise ValueError(f"q must have an integer dtype, got {a.dtype}")
    if a.size and (a.min() < qp.qmin or a.max() > qp.qmax):
        raise ValueError(f"q values must lie in [{qp.qmin}, {qp.qmax}], got [{int(a.min())}, {int(a.max())}]")
    ax = _channel_axis(qp, a.shape, "q")
    zp = _along(qp.zero_point, a.ndim, ax)
    s = _along(qp.scale, a.ndim, ax)
    return (a.astype(np.int64) - zp).astype(np.float32) * s


def quantize_weights(w, axis: int | None = 0, power_of_two: bool = False) -> tuple[np.ndarray, QParams]:
    """TFLite weight rule: symmetric int8 in [-127, 127], zero point 0, one scale per channel.

    ``axis`` is the output-channel axis (``None`` for a single per-tensor
    scale). ``scale[c] = max|w[c]| / 127`` (rounded up to a power of two if
    ``power_of_two``); all-zero channels get scale 1. Returns ``(q int8, qp)``.
    """
    a = _check_float_array(w, "w")
    if a.size == 0:
        raise ValueError("w must not be empty")
    if axis is None:
        amax = np.abs(a.astype(np.float64)).max()
    else:
        if a.ndim == 0:
            raise ValueError(f"w must have at least 1 dimension for per-channel axis={axis}, got a scalar")
        ax = _normalize_axis(axis, a.ndim)
        others = tuple(i for i in range(a.ndim) if i != ax)
        amax = np.abs(a.astype(np.float64)).max(axis=others) if others else np.abs(a.astype(np.float64))
    qp = choose_qparams(-amax, amax, "int8", symmetric=True, axis=axis, power_of_two=power_of_two,
                        narrow_range=True)
    return quantize(a, qp), qp


# --------------------------------------------------------------------------- fp16 / bf16
def to_fp16(x) -> np.ndarray:
    """IEEE binary16 value(s) of float16/32/64 ``x``, round to nearest even.

    NumPy's cast is a single correctly rounded conversion (also from float64):
    magnitudes >= 65520 (65504 + half an ulp, the tie going to the even
    "65536") become +-Inf, values below 2**-24 round into the subnormal range
    (2**-25 ties to 0, anything above it to 2**-24), NaN stays NaN.
    """
    a = _check_float_array(x, "x", allow_inf=True, allow_nan=True)
    with np.errstate(over="ignore"):
        return a.astype(np.float16)


_ROUNDINGS = ("rne", "truncate")


def to_bf16_bits(x, rounding: str = "rne") -> np.ndarray:
    """bfloat16 bit patterns (uint16) of float32 ``x`` (spec §5).

    * ``'rne'``: ``(u + 0x7FFF + ((u >> 16) & 1)) >> 16`` on the float32 bits
      ``u``: round to nearest, ties to even. Magnitudes from 0x7F7F8000
      (the largest bf16 plus half an ulp) round to +-Inf; subnormals round
      like any other value.
    * ``'truncate'``: ``u >> 16`` (round toward zero; never produces Inf from
      a finite value).
    * NaN (either mode): the quiet NaN ``0x7FC0`` with the input's sign bit
      kept (``0xFFC0`` for a negative NaN); the payload is dropped. This is
      what Eigen/ml_dtypes/TensorFlow produce, and it keeps a NaN a NaN also
      under truncation (plain ``u >> 16`` would turn a NaN whose payload
      sits only in the low 16 bits, e.g. 0x7F800001, into Inf).

    Only float32 (and float16, which widens exactly) is accepted: converting
    float64 via float32 would round twice.
    """
    a = np.asarray(x)
    if a.dtype.name not in ("float16", "float32"):
        raise ValueError(f"x must have dtype float32 or float16 (float64 would round twice), got {a.dtype}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    if rounding == "rne":
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    else:
        r = u >> 16
    nan = np.isnan(a)
    r = np.where(nan, 0x7FC0 | ((u >> 16) & 0x8000), r)
    return r.astype(np.uint16)


def bf16_bits_to_f32(bits) -> np.ndarray:
    """float32 value(s) of bfloat16 bit patterns (exact: the bits become the upper half)."""
    a = np.asarray(bits)
    if a.dtype.kind not in "iu":
        raise ValueError(f"bits must have an integer dtype (uint16 patterns), got {a.dtype}")
    if a.size and (a.min() < 0 or a.max() > 0xFFFF):
        raise ValueError(f"bits must lie in [0, 65535], got [{int(a.min())}, {int(a.max())}]")
    return (a.astype(np.uint32) << 16).view(np.float32)


def to_bf16(x, rounding: str = "rne") -> np.ndarray:
    """float32 ``x`` rounded to bfloat16 precision, returned as float32 values."""
    return bf16_bits_to_f32(to_bf16_bits(x, rounding))


__all__ = [
    "QParams", "choose_qparams", "quantize", "dequantize", "quantize_weights",
    "to_fp16", "to_bf16_bits", "bf16_bits_to_f32", "to_bf16", "F32_TINY",
]
