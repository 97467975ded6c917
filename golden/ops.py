"""Bit-exact golden models of the non-convolution operators of the accelerator.

Layout is NCHW everywhere; activations are int8 or uint8 NumPy arrays and every
operator returns an array of the output storage type (``np.int8``/``np.uint8``),
except ``prelu_requantized`` which works on int32 values (returned as int64).
Every public function validates all of its arguments before doing any work and
raises ``ValueError`` naming the parameter and its allowed range.

Conventions shared by the requantizing operators (``add_requant``,
``concat_requant``, ``relu6``, ``prelu``/``leaky_relu``):

* Scales (and PReLU alphas) are first rounded to float32, because TFLite (and
  ONNX) store them as float32; every derived real multiplier is then computed
  in float64 from those float32 values, as TFLite's ``Prepare`` functions do.
  Pass float32-representable scales and this rounding is a no-op.
* Real multipliers become (q_fixed, shift) with ``golden.requant.quantize_multiplier``
  and are applied with ``multiply_by_quantized_multiplier`` (TFLite double
  rounding, spec §2) -- the operation the hardware ``RequantUnit`` performs.

Sources (read, not copied): TFLite ``kernels/add.cc`` and
``internal/reference/integer_ops/add.h``; TFLite ``internal/reference/concatenation.h``
and ``reference/requantize.h``; TFLite ``kernels/kernel_util.cc``
(``CalculateActivationRangeQuantizedImpl``); ONNX MaxPool (opset >= 19 ceil
rule) / onnxruntime ``pool_attributes.h``; Duan et al., CenterNet keypoint
triplets, ``models/py_utils/_cpools/src/{top,bottom,left,right}_pool.cpp`` and
``models/CenterNet-52.py`` (``center_pool``).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from ._check import (
    INT32_MAX,
    INT32_MIN,
    check_dtype,
    check_int_array,
    check_positive_int,
    check_scale,
    check_zero_point,
    qrange,
)
from .requant import (
    MAX_LEFT_SHIFT,
    MAX_RIGHT_SHIFT,
    multiply_by_quantized_multiplier,
    quantize_multiplier,
)

_ACT_DTYPES = ("int8", "uint8")

#: Saturation points of the LUT "sigma trick": |x| beyond these is treated as
#: saturated (x is clipped to +-sigma before the function is evaluated).
SIGMOID_SIGMA = 6.0
TANH_SIGMA = 3.0

#: TFLite's left shift for the 8-bit Add path (``kernels/add.cc``).
ADD_LEFT_SHIFT = 20

#: Directions accepted by ``directional_max``: (axis, scan reversed?).
_DIRECTIONS = {"top": (2, True), "bottom": (2, False), "left": (3, True), "right": (3, False)}


# --------------------------------------------------------------------------- helpers


def _act(x, name: str, ndim: int | None = None) -> np.ndarray:
    """``x`` must be an int8/uint8 ndarray (optionally of a given rank)."""
    a = check_dtype(x, name, _ACT_DTYPES)
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions (NCHW), got shape {a.shape}")
    return a


def _dtype_name(dtype, name: str) -> str:
    """Normalise ``"int8"``/``np.int8``/``np.dtype('int8')`` to its name; validates."""
    try:
        n = np.dtype(dtype).name
    except TypeError:
        raise ValueError(f"{name} must be 'int8' or 'uint8', got {dtype!r}") from None
    qrange(n, name)
    return n


def _same_dtype(a: np.ndarray, dtype: str, aname: str, dname: str) -> None:
    if a.dtype.name != dtype:
        raise ValueError(f"{aname} must have dtype {dtype} (= {dname}), got {a.dtype}")


def _scale32(s, name: str) -> float:
    """A scalar scale, finite and > 0, rounded to float32 (returned as a Python float)."""
    a = check_scale(s, name)
    if a.size != 1:
        raise ValueError(f"{name} must be a scalar in (0, inf), got shape {a.shape}")
    with np.errstate(over="ignore", under="ignore"):
        v = float(np.float32(a.reshape(())))
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be in (0, 3.4e38] after rounding to float32, got {float(a.reshape(()))!r}")
    return v


def _scale64(s, name: str) -> float:
    """A scalar scale, finite and > 0, kept in float64."""
    a = check_scale(s, name)
    if a.size != 1:
        raise ValueError(f"{name} must be a scalar in (0, inf), got shape {a.shape}")
    return float(a.reshape(()))


def _zp(zp, name: str, dtype: str) -> int:
    a = check_zero_point(zp, name, dtype)
    if a.size != 1:
        lo, hi = qrange(dtype)
        raise ValueError(f"{name} must be a scalar integer in [{lo}, {hi}], got shape {a.shape}")
    return int(a.reshape(()))


def _axis(axis, ndim: int, name: str = "axis") -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)) or not (-ndim <= axis < ndim):
        raise ValueError(f"{name} must be an integer in [{-ndim}, {ndim - 1}], got {axis!r}")
    return int(axis) % ndim


def _pair(v, name: str, lo: int) -> tuple[int, int]:
    """int or 2-sequence of ints >= lo -> (h, w)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    if not isinstance(v, (tuple, list)) or len(v) != 2:
        raise ValueError(f"{name} must be an integer >= {lo} or a pair (h, w) of them, got {v!r}")
    return (check_positive_int(v[0], f"{name}[0]", lo), check_positive_int(v[1], f"{name}[1]", lo))


def _round_half_away(v: float) -> int:
    """C ``std::round`` (TfLiteRound): round half away from zero."""
    return int(math.copysign(math.floor(abs(v) + 0.5), v))


def _act_range(act_min, act_max, dtype: str) -> tuple[int, int]:
    qmin, qmax = qrange(dtype)
    lo = qmin if act_min is None else act_min
    hi = qmax if act_max is None else act_max
    for v, n in ((lo, "act_min"), (hi, "act_max")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not (qmin <= v <= qmax):
            raise ValueError(f"{n} must be an integer in [{qmin}, {qmax}], got {v!r}")
    if lo > hi:
        raise ValueError(f"act_min must be <= act_max, got [{lo}, {hi}]")
    return int(lo), int(hi)


# --------------------------------------------------------------------------- data movement


def upsample_nearest(x, scale) -> np.ndarray:
    """Nearest-neighbour upsampling by integer factors: ``out[n,c,i,j] = x[n,c,i//sh,j//sw]``.

    ``scale`` is an int or a pair (sh, sw), each >= 1. This equals PyTorch
    ``nn.Upsample(mode='nearest')`` and ONNX ``Resize`` (nearest, asymmetric,
    floor) for integer factors; values are copied, so it is exact in any
    quantized type.
    """
    a = _act(x, "x", ndim=4)
    sh, sw = _pair(scale, "scale", 1)
    return np.repeat(np.repeat(a, sh, axis=2), sw, axis=3)


# --------------------------------------------------------------------------- pooling


def _pads(padding) -> tuple[int, int, int, int]:
    """int | (ph, pw) | (top, left, bottom, right) [ONNX order] -> (top, left, bottom, right)."""
    if isinstance(padding, (int, np.integer)) and not isinstance(padding, bool):
        padding = (padding, padding)
    if not isinstance(padding, (tuple, list)) or len(padding) not in (2, 4):
        raise ValueError(
            "padding must be an integer >= 0, a pair (ph, pw) or ONNX pads (top, left, bottom, right), "
            f"got {padding!r}")
    p = [check_positive_int(v, f"padding[{i}]", 0) for i, v in enumerate(padding)]
    return (p[0], p[1], p[0], p[1]) if len(p) == 2 else tuple(p)


def _pool_out_size(n: int, k: int, s: int, p0: int, p1: int, d: int, ceil_mode: bool, axis: str) -> int:
    """Output length along one axis (ONNX MaxPool opset >= 19 / PyTorch).

    floor/ceil((n + p0 + p1 - dk) / s) + 1 with dk = d*(k-1)+1; in ceil mode the
    last window is dropped if it would start in the right padding, i.e. when
    (out-1)*s >= n + p0.
    """
    dk = d * (k - 1) + 1
    span = n + p0 + p1 - dk
    if span < 0:
        raise ValueError(
            f"kernel extent along {axis} ({dk} = dilation*(kernel-1)+1) must be <= padded input size {n + p0 + p1}")
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + p0:
        out -= 1
    # every window must hold at least one real (non-padding) tap, otherwise its
    # max would be -inf; this depends only on the geometry, so check it here.
    starts = np.arange(out) * s - p0
    taps = starts[:, None] + d * np.arange(k)[None, :]
    ok = ((taps >= 0) & (taps < n)).any(axis=1)
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise ValueError(
            f"padding along {axis} is too large for kernel {k}, dilation {d}: output window {bad} "
            f"covers only padding (allowed: every window must hold an input element)")
    return out


def max_pool2d(x, kernel, stride=None, padding=0, ceil_mode: bool = False, dilation=1) -> np.ndarray:
    """2-D max pooling, NCHW, exact (ONNX MaxPool / ``torch.nn.MaxPool2d`` semantics).

    * ``kernel``, ``stride`` (default = kernel), ``dilation``: int or (h, w), >= 1.
    * ``padding``: int, (ph, pw) (symmetric) or ONNX pads (top, left, bottom, right), >= 0.
      Padded cells behave as -inf: they never win. (Implementation: the padding
      is filled with the type's minimum code, which can only tie with a real
      element, and every window is checked to contain one.)
    * ``ceil_mode``: output size uses ceil instead of floor, but a last window
      that would start in the right/bottom padding is dropped (it must start in
      the input or in the left/top padding) -- PyTorch's rule, adopted by ONNX
      opset 19 and onnxruntime.
    """
    a = _act(x, "x", ndim=4)
    kh, kw = _pair(kernel, "kernel", 1)
    sh, sw = (kh, kw) if stride is None else _pair(stride, "stride", 1)
    dh, dw = _pair(dilation, "dilation", 1)
    pt, pl, pb, pr = _pads(padding)
    if not isinstance(ceil_mode, (bool, np.bool_)) and ceil_mode not in (0, 1):
        raise ValueError(f"ceil_mode must be a bool (or 0/1), got {ceil_mode!r}")
    ceil_mode = bool(ceil_mode)
    N, C, H, W = a.shape
    oh = _pool_out_size(H, kh, sh, pt, pb, dh, ceil_mode, "H")
    ow = _pool_out_size(W, kw, sw, pl, pr, dw, ceil_mode, "W")

    qmin = qrange(a.dtype.name)[0]
    need_h = (oh - 1) * sh + dh * (kh - 1) + 1  # padded length the windows reach
    need_w = (ow - 1) * sw + dw * (kw - 1) + 1
    xp = np.pad(a, ((0, 0), (0, 0), (pt, max(0, need_h - pt - H)), (pl, max(0, need_w - pl - W))),
                mode="constant", constant_values=qmin)
    out = np.full((N, C, oh, ow), qmin, dtype=a.dtype)
    for i in range(kh):
        r0 = i * dh
        rows = xp[:, :, r0:r0 + (oh - 1) * sh + 1:sh, :]
        for j in range(kw):
            c0 = j * dw
            np.maximum(out, rows[:, :, :, c0:c0 + (ow - 1) * sw + 1:sw], out=out)
    return out


def directional_max(x, direction: str) -> np.ndarray:
    """Corner/center pooling primitive of CenterNet (keypoint triplets) / CornerNet.

    Cumulative max along H or W, exactly as the ``_cpools`` extensions of
    Duankaiwen/CenterNet compute it (``out`` seeded with the edge row/column,
    then ``out[i] = max(x[i], out[i -/+ 1])``):

    * ``'top'``    (TopPool):    out[..., i, :] = max(x[..., i:, :])   scan bottom -> top
    * ``'bottom'`` (BottomPool): out[..., i, :] = max(x[..., :i+1, :]) scan top -> bottom
    * ``'left'``   (LeftPool):   out[..., j]    = max(x[..., j:])      scan right -> left
    * ``'right'``  (RightPool):  out[..., j]    = max(x[..., :j+1])    scan left -> right

    Max commutes with any increasing affine quantization, so this is exact on
    int8/uint8 codes (same scale and zero point in and out).
    """
    a = _act(x, "x", ndim=4)
    if direction not in _DIRECTIONS:
        raise ValueError(f"direction must be one of {sorted(_DIRECTIONS)}, got {direction!r}")
    axis, rev = _DIRECTIONS[direction]
    if rev:
        return np.flip(np.maximum.accumulate(np.flip(a, axis), axis=axis), axis).copy()
    return np.maximum.accumulate(a, axis=axis)


def center_pool(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, out_dtype,
                act_min=None, act_max=None) -> np.ndarray:
    """Center pooling of CenterNet keypoint triplets (``center_pool`` in CenterNet-52.py).

    There, branch 1 is BottomPool(TopPool(a)) -- the max of each whole column,
    broadcast down the column -- and branch 2 is RightPool(LeftPool(b)) -- the
    max of each whole row; the two are summed. Here the maxima are exact on
    codes and the sum is ``add_requant``. (Cascade corner pooling interleaves a
    3x3 conv between its directional maxima, so it is composed at graph level
    from ``directional_max``, conv and ``add_requant``.)
    """
    a = _act(a, "a", ndim=4)
    b = _act(b, "b", ndim=4)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    # validate the add's parameters before any work
    _add_params(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, out_dtype, act_min, act_max)
    col = directional_max(directional_max(a, "top"), "bottom")
    row = directional_max(directional_max(b, "left"), "right")
    return add_requant(col, a_scale, a_zp, row, b_scale, b_zp, out_scale, out_zp, out_dtype, act_min, act_max)


# --------------------------------------------------------------------------- add


def _add_params(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, out_dtype, act_min, act_max):
    """Validate and prepare the TFLite 8-bit Add parameters (``add.cc`` Prepare)."""
    sa, sb, so = _scale32(a_scale, "a_scale"), _scale32(b_scale, "b_scale"), _scale32(out_scale, "out_scale")
    za, zb = _zp(a_zp, "a_zp", a.dtype.name), _zp(b_zp, "b_zp", b.dtype.name)
    out_dtype = _dtype_name(out_dtype, "out_dtype")
    zo = _zp(out_zp, "out_zp", out_dtype)
    lo, hi = _act_range(act_min, act_max, out_dtype)
    try:
        shape = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise ValueError(f"a and b must have broadcast-compatible shapes, got {a.shape} and {b.shape}") from None
    twice_max = 2.0 * max(sa, sb)  # exact (float32 * 2)
    real_out = twice_max / ((1 << ADD_LEFT_SHIFT) * so)
    if not real_out < 1.0:
        raise ValueError(
            f"max(a_scale, b_scale) / out_scale must be < 2**{ADD_LEFT_SHIFT - 1} "
            f"(TFLite output multiplier < 1), got {max(sa, sb) / so!r}")
    (qa, qb, qo), (ea, eb, eo) = quantize_multiplier(np.array([sa / twice_max, sb / twice_max, real_out]))
    return dict(za=za, zb=zb, zo=zo, lo=lo, hi=hi, shape=shape, out_dtype=out_dtype,
                qa=int(qa), ea=int(ea), qb=int(qb), eb=int(eb), qo=int(qo), eo=int(eo))


def add_requant_params(a_scale, b_scale, out_scale) -> dict:
    """The integer parameters TFLite's Add ``Prepare`` derives (for firmware/hardware).

    Returns ``left_shift`` and (multiplier, shift) of input a, input b and the
    output, with ``shift <= 0`` (QuantizeMultiplierSmallerThanOneExp).
    """
    dummy = np.zeros(1, np.int8)
    p = _add_params(dummy, a_scale, 0, dummy, b_scale, 0, out_scale, 0, "int8", None, None)
    return {"left_shift": ADD_LEFT_SHIFT, "a_multiplier": p["qa"], "a_shift": p["ea"],
            "b_multiplier": p["qb"], "b_shift": p["eb"], "out_multiplier": p["qo"], "out_shift": p["eo"]}


def add_requant(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, out_dtype,
                act_min=None, act_max=None) -> np.ndarray:
    """Quantized residual add, bit-exact with TFLite's 8-bit reference Add.

    Prepare (``kernels/add.cc``): ``twice_max = 2*max(s_a, s_b)``;
    real multipliers ``s_a/twice_max``, ``s_b/twice_max`` (both <= 1/2) and
    ``twice_max / (2**20 * s_out)`` (must be < 1), each through QuantizeMultiplier
    (shift <= 0). Eval (``reference/integer_ops/add.h`` AddFunc)::

        sa = MBQM((a - zp_a) << 20, qa, ea);  sb = MBQM((b - zp_b) << 20, qb, eb)
        out = clamp(MBQM(sa + sb, qo, eo) + zp_out, act_min, act_max)

    (MultiplyByQuantizedMultiplierSmallerThanOneExp = MBQM with shift <= 0.)
    |a - zp_a| <= 255 so the shifted values stay below 2**28: nothing saturates.
    ``a`` and ``b`` broadcast (NumPy rules); each may be int8 or uint8 (TFLite
    requires one type -- the arithmetic is the same). ``act_min``/``act_max``
    default to the output type's range (pass the fused ReLU/ReLU6 clamp here).
    """
    a = _act(a, "a")
    b = _act(b, "b")
    p = _add_params(a, a_scale, a_zp, b, b_scale, b_zp, out_scale, out_zp, out_dtype, act_min, act_max)
    va = (a.astype(np.int64) - p["za"]) << ADD_LEFT_SHIFT
    vb = (b.astype(np.int64) - p["zb"]) << ADD_LEFT_SHIFT
    s = multiply_by_quantized_multiplier(va, p["qa"], p["ea"]) + multiply_by_quantized_multiplier(vb, p["qb"], p["eb"])
    out = multiply_by_quantized_multiplier(s, p["qo"], p["eo"]) + p["zo"]
    return np.clip(np.broadcast_to(out, p["shape"]), p["lo"], p["hi"]).astype(p["out_dtype"])


# --------------------------------------------------------------------------- concat


def requant_multiplier(in_scale, out_scale) -> tuple[int, int]:
    """(q_fixed, shift) of TFLite's Requantize: QuantizeMultiplier(double(s_in) / double(s_out))."""
    si, so = _scale32(in_scale, "in_scale"), _scale32(out_scale, "out_scale")
    m = si / so
    if not m < 2.0**MAX_LEFT_SHIFT:
        raise ValueError(f"in_scale / out_scale must be < 2**{MAX_LEFT_SHIFT}, got {m!r}")
    q, e = quantize_multiplier(m)
    return int(q), int(e)


def concat_requant(tensors: Sequence, scales: Sequence, zps: Sequence, axis: int,
                   out_scale, out_zp, out_dtype) -> np.ndarray:
    """Concatenation along ``axis`` with per-input requantization to the output params.

    Rule (TFLite ``reference/concatenation.h`` ConcatenationWithScaling, whose
    fixed-point branch is TFLite's ``reference/requantize.h`` Requantize):

    * an input whose float32 scale equals the output's and whose zero point
      equals the output's is copied unchanged;
    * any other input is requantized:
      ``clamp(MBQM(q - zp_in, QuantizeMultiplier(s_in / s_out)) + zp_out, qmin, qmax)``.

    The fixed-point branch is chosen (not TFLite's float branch,
    ``round(q*scale + bias)`` in float32) because it is what the hardware
    RequantUnit computes. It rounds twice (SRDHM, then RDBPOT), so against
    the real value ``s_in/s_out*(q-zp_in) + zp_out`` the error is at most
    0.5 LSB when shift >= 0 (ratio >= 0.5) and ``0.5 + 2**(shift-1)`` LSB
    (< 1) when shift < 0 -- e.g. MBQM(1, 0.37) = 1; it differs from the float
    branch by at most 1 LSB on some codes. All inputs must already be of type
    ``out_dtype`` (TFLite requires one type).
    """
    if not isinstance(tensors, (list, tuple)) or len(tensors) == 0:
        raise ValueError(f"tensors must be a non-empty list of arrays, got {type(tensors).__name__}")
    n = len(tensors)
    if not isinstance(scales, (list, tuple, np.ndarray)) or len(scales) != n:
        raise ValueError(f"scales must be a sequence of {n} scales (one per tensor)")
    if not isinstance(zps, (list, tuple, np.ndarray)) or len(zps) != n:
        raise ValueError(f"zps must be a sequence of {n} zero points (one per tensor)")
    out_dtype = _dtype_name(out_dtype, "out_dtype")
    so = _scale32(out_scale, "out_scale")
    zo = _zp(out_zp, "out_zp", out_dtype)
    arrs = []
    for i, t in enumerate(tensors):
        a = _act(t, f"tensors[{i}]")
        _same_dtype(a, out_dtype, f"tensors[{i}]", "out_dtype")
        arrs.append(a)
    ndim = arrs[0].ndim
    if ndim == 0:
        raise ValueError("tensors[0] must have at least 1 dimension")
    ax = _axis(axis, ndim)
    for i, a in enumerate(arrs):
        if a.ndim != ndim or any(a.shape[d] != arrs[0].shape[d] for d in range(ndim) if d != ax):
            raise ValueError(f"tensors[{i}] shape {a.shape} must match tensors[0] shape {arrs[0].shape} "
                             f"except along axis {ax}")
    plans = []
    for i in range(n):
        s = _scale32(scales[i], f"scales[{i}]")
        z = _zp(zps[i], f"zps[{i}]", out_dtype)
        if s == so and z == zo:
            plans.append(None)
        else:
            if not s / so < 2.0**MAX_LEFT_SHIFT:
                raise ValueError(f"scales[{i}] / out_scale must be < 2**{MAX_LEFT_SHIFT}, got {s / so!r}")
            q, e = quantize_multiplier(s / so)
            plans.append((z, int(q), int(e)))

    qmin, qmax = qrange(out_dtype)
    parts = []
    for a, plan in zip(arrs, plans):
        if plan is None:
            parts.append(a)
        else:
            z, q, e = plan
            v = multiply_by_quantized_multiplier(a.astype(np.int64) - z, q, e) + zo
            parts.append(np.clip(v, qmin, qmax).astype(out_dtype))
    return np.concatenate(parts, axis=ax)


# --------------------------------------------------------------------------- activations


def relu(x, zp, dtype) -> np.ndarray:
    """Quantized ReLU as a clamp (spec §2): ``clamp(x, max(qmin, zp), qmax)``.

    Input and output share scale and zero point (the fused-activation form;
    TFLite's quantize(0.0) = zp exactly). ``x`` must be of type ``dtype``.
    """
    a = _act(x, "x")
    dtype = _dtype_name(dtype, "dtype")
    _same_dtype(a, dtype, "x", "dtype")
    z = _zp(zp, "zp", dtype)
    qmin, qmax = qrange(dtype)
    return np.clip(a, max(qmin, z), qmax).astype(dtype)


def relu6_range(scale, zp, dtype) -> tuple[int, int]:
    """(act_min, act_max) of a fused ReLU6, as TFLite's CalculateActivationRangeQuantized.

    act_min = max(qmin, zp); act_max = min(qmax, zp + round(6.0f / scale)) with the
    division in float32 (``f / scale`` on float operands) and std::round
    (half away from zero).
    """
    dtype = _dtype_name(dtype, "dtype")
    s = _scale32(scale, "scale")
    z = _zp(zp, "zp", dtype)
    qmin, qmax = qrange(dtype)
    with np.errstate(over="ignore"):
        six = float(np.float32(6.0) / np.float32(s))
    hi = qmax if not math.isfinite(six) else min(qmax, z + _round_half_away(six))
    return max(qmin, z), hi


def relu6(x, scale, zp, dtype) -> np.ndarray:
    """Quantized ReLU6 as a clamp to ``relu6_range(scale, zp, dtype)`` (spec §2)."""
    a = _act(x, "x")
    lo, hi = relu6_range(scale, zp, dtype)
    _same_dtype(a, _dtype_name(dtype, "dtype"), "x", "dtype")
    return np.clip(a, lo, hi).astype(a.dtype)


def quantize_alpha(alpha) -> tuple[np.ndarray, np.ndarray]:
    """PReLU slope(s) -> signed Q31 (alpha_q, alpha_shift) for ``prelu_requantized``.

    ``alpha`` is rounded to float32, then |alpha| goes through QuantizeMultiplier
    and the sign is carried by ``alpha_q`` (sign-magnitude): alpha_q in
    [-(2**31-1), 2**31-1]. alpha = 0 (and |alpha| below TFLite's flush
    threshold 2**-32) gives (0, 0). Allowed: finite, |alpha| < 2**15.
    """
    a = np.asarray(alpha)
    if a.dtype.kind not in "iuf" or a.size == 0:
        raise ValueError(f"alpha must be a non-empty real number or array, got {a.dtype} shape {a.shape}")
    a = np.asarray(a, np.float64).astype(np.float32).astype(np.float64)
    if not np.all(np.isfinite(a)) or np.any(np.abs(a) >= 2.0**MAX_LEFT_SHIFT):
        raise ValueError(f"alpha must be finite with |alpha| < 2**{MAX_LEFT_SHIFT}, got {np.asarray(alpha).ravel()[:4].tolist()}")
    mag = np.abs(a)
    nz = mag > 0
    q = np.zeros(a.shape, np.int64)
    e = np.zeros(a.shape, np.int64)
    if nz.any():
        qq, ee = quantize_multiplier(mag[nz])
        q[nz] = np.where(a[nz] < 0, -qq, qq)
        e[nz] = ee
    return q, e


def _channel(v: np.ndarray, ref_ndim: int, ref_shape, axis: int | None, name: str) -> np.ndarray:
    v = np.asarray(v)
    if v.ndim == 0:
        return v
    if v.ndim != 1:
        raise ValueError(f"{name} must be a scalar or a 1-D per-channel vector, got shape {v.shape}")
    if axis is None:
        if v.size != 1:
            raise ValueError(f"{name} has {v.size} values but no channel axis was given")
        return v.reshape(())
    if v.size not in (1, ref_shape[axis]):
        raise ValueError(f"{name} must have 1 or {ref_shape[axis]} values (channels on axis {axis}), got {v.size}")
    shape = [1] * ref_ndim
    shape[axis] = v.size
    return v.reshape(shape)


def prelu_requantized(v, alpha_q, alpha_shift, axis: int | None = 1) -> np.ndarray:
    """The PReLU lane of the hardware, on requantized int32 values ``v`` (before the zero point).

    ``out = v`` where ``v >= 0``; elsewhere ``out = sign(alpha_q) * MBQM(v, |alpha_q|, alpha_shift)``.

    A negative slope is applied as the magnitude multiply followed by a
    negation (not MBQM(-v, ...)): MBQM's result is always > INT32_MIN, so the
    negation cannot overflow, whereas -v could. Because SRDHM rounds ties
    upward (not symmetrically), this choice is part of the definition.
    ``alpha_q``/``alpha_shift`` are scalars or per-channel vectors along ``axis``
    (default 1, NCHW); ``alpha_q`` in [-(2**31-1), 2**31-1], ``alpha_shift`` in
    [-31, 15]. Returns int64 holding int32 values.
    """
    vv = check_int_array(v, "v", INT32_MIN, INT32_MAX)
    aq = check_int_array(alpha_q, "alpha_q", -INT32_MAX, INT32_MAX)
    ash = check_int_array(alpha_shift, "alpha_shift", -MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT)
    ax = None if axis is None else _axis(axis, max(vv.ndim, 1))
    if ax is not None and vv.ndim == 0:
        ax = None
    aq = _channel(aq, vv.ndim, vv.shape, ax, "alpha_q")
    ash = _channel(ash, vv.ndim, vv.shape, ax, "alpha_shift")
    neg = multiply_by_quantized_multiplier(vv, np.abs(aq), ash)
    neg = np.where(aq < 0, -neg, neg)
    return np.where(vv >= 0, vv, neg)


def prelu(x, x_scale, x_zp, alpha, out_scale, out_zp, out_dtype, axis: int = 1) -> np.ndarray:
    """Quantized per-channel PReLU, defined as the accelerator computes it.

    1. ``v = MBQM(x - x_zp, QuantizeMultiplier(x_scale / out_scale))`` -- the
       identity/output multiplier (exact when x_scale == out_scale, since
       QuantizeMultiplier(1.0) = (2**30, 1) and MBQM(v, 2**30, 1) = v);
    2. ``w = prelu_requantized(v, *quantize_alpha(alpha))`` -- negatives times
       the per-channel slope (Q31, sign-magnitude, see there);
    3. ``out = clamp(w + out_zp, qmin, qmax)``.

    Error against the real result ``slope*x_scale*(x-x_zp)/out_scale + out_zp``
    (before the clamp): with e(shift) = 0.5 if shift >= 0 else 0.5 + 2**(shift-1)
    the worst error of one MBQM (TFLite double rounding), the positive side is
    within e1 = e(identity shift) (0 if x_scale == out_scale) and the negative
    side within ``|alpha|*e1 + e(alpha_shift)`` (<= 1.5 LSB for |alpha| <= 1),
    plus the multipliers' 2**-31 relative error. ``alpha``: a scalar or one
    value per channel along ``axis``; any sign, |alpha| < 2**15.
    """
    a = _act(x, "x")
    sx, so = _scale32(x_scale, "x_scale"), _scale32(out_scale, "out_scale")
    zx = _zp(x_zp, "x_zp", a.dtype.name)
    out_dtype = _dtype_name(out_dtype, "out_dtype")
    zo = _zp(out_zp, "out_zp", out_dtype)
    ax = _axis(axis, a.ndim) if a.ndim else None
    aq, ash = quantize_alpha(alpha)
    aq = _channel(aq, a.ndim, a.shape, ax, "alpha")
    ash = _channel(ash, a.ndim, a.shape, ax, "alpha")
    if not sx / so < 2.0**MAX_LEFT_SHIFT:
        raise ValueError(f"x_scale / out_scale must be < 2**{MAX_LEFT_SHIFT}, got {sx / so!r}")
    qi, ei = quantize_multiplier(sx / so)
    v = multiply_by_quantized_multiplier(a.astype(np.int64) - zx, int(qi), int(ei))
    neg = multiply_by_quantized_multiplier(v, np.abs(aq), ash)
    w = np.where(v >= 0, v, np.where(aq < 0, -neg, neg))
    qmin, qmax = qrange(out_dtype)
    return np.clip(w + zo, qmin, qmax).astype(out_dtype)


def leaky_relu(x, x_scale, x_zp, alpha, out_scale, out_zp, out_dtype) -> np.ndarray:
    """Quantized LeakyReLU: ``prelu`` with one scalar slope ``alpha`` (|alpha| < 2**15)."""
    al = np.asarray(alpha)
    if al.ndim != 0:
        raise ValueError(f"alpha must be a scalar for leaky_relu, got shape {al.shape}")
    return prelu(x, x_scale, x_zp, al, out_scale, out_zp, out_dtype, axis=-1 if np.ndim(x) else 0)


# --------------------------------------------------------------------------- look-up tables


def sigmoid_f64(x) -> np.ndarray:
    """Numerically stable logistic function in float64."""
    x = np.asarray(x, np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def make_lut(fn: Callable, in_scale, in_zp, in_dtype, out_scale, out_zp, out_dtype, sigma=None) -> np.ndarray:
    """256-entry table of a unary op in the quantized domain.

    Entry ``q - qmin_in`` (for every input code q in increasing order) is::

        x = in_scale * (q - in_zp)                   # float64
        x = clip(x, -sigma, sigma)                   # only if sigma is given
        clamp(rint(fn(x) / out_scale) + out_zp, qmin_out, qmax_out)

    ``rint`` is round-half-to-even on float64 (NumPy's rint). TFLite's LUT
    builders round half away from zero in float32, so a table from TFLite can
    differ on exact ties; this project defines the float64 / half-even table.
    Scales are used as given (float64). ``fn`` is called once on a float64
    array and must return finite values of the same shape.

    ``sigma``: the saturation trick -- inputs beyond +-sigma are evaluated at
    +-sigma (``SIGMOID_SIGMA`` = 6, ``TANH_SIGMA`` = 3), so a table (and the
    hardware's interpolation range) only has to resolve [-sigma, sigma]; the
    cost is at most 1 - sigmoid(6) = 2.47e-3 (1 - tanh(3) = 4.95e-3) in real
    terms, i.e. <= 1 LSB for output scales >= 1/256 (sigmoid) / >= 1/128 (tanh).
    """
    if not callable(fn):
        raise ValueError(f"fn must be callable, got {type(fn).__name__}")
    in_dtype = _dtype_name(in_dtype, "in_dtype")
    out_dtype = _dtype_name(out_dtype, "out_dtype")
    si, so = _scale64(in_scale, "in_scale"), _scale64(out_scale, "out_scale")
    zi = _zp(in_zp, "in_zp", in_dtype)
    zo = _zp(out_zp, "out_zp", out_dtype)
    if sigma is not None:
        sg = np.asarray(sigma, np.float64) if np.asarray(sigma).dtype.kind in "iuf" else None
        if sg is None or sg.ndim != 0 or not (np.isfinite(sg) and sg > 0):
            raise ValueError(f"sigma must be None or a finite number in (0, inf), got {sigma!r}")
        sigma = float(sg)
    qi_min, qi_max = qrange(in_dtype)
    qo_min, qo_max = qrange(out_dtype)
    codes = np.arange(qi_min, qi_max + 1, dtype=np.int64)
    xr = si * (codes - zi).astype(np.float64)
    if sigma is not None:
        xr = np.clip(xr, -sigma, sigma)
    y = np.asarray(fn(xr), dtype=np.float64)
    if y.shape != xr.shape:
        raise ValueError(f"fn must return an array of shape {xr.shape}, got {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError("fn must return finite values for every input code")
    q = np.rint(y / so) + zo
    return np.clip(q, qo_min, qo_max).astype(out_dtype)


def apply_lut(x, lut, in_dtype) -> np.ndarray:
    """Look up every code: ``out = lut[x - qmin(in_dtype)]``; output type = ``lut.dtype``."""
    in_dtype = _dtype_name(in_dtype, "in_dtype")
    a = _act(x, "x")
    _same_dtype(a, in_dtype, "x", "in_dtype")
    t = check_dtype(lut, "lut", _ACT_DTYPES)
    if t.shape != (256,):
        raise ValueError(f"lut must have shape (256,), got {t.shape}")
    return t[a.astype(np.int64) - qrange(in_dtype)[0]]
