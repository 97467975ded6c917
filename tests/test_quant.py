"""Tests for golden/quant.py: affine quantization schemes, fp16 and bfloat16 emulation.

References used here, all independent of the code under test:
* onnxruntime ``QuantizeLinear`` / ``DequantizeLinear`` (run on tiny ONNX graphs),
* onnxruntime ``quant_utils.compute_scale_zp`` (asymmetric scale / zero point),
* ml_dtypes.bfloat16 (Eigen's RNE conversion),
* "float reasoning": the nearest representable neighbour computed in float64.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.quant_utils import compute_scale_zp

from golden.quant import (
    F32_TINY, QParams, bf16_bits_to_f32, choose_qparams, dequantize, quantize, quantize_weights, to_bf16,
    to_bf16_bits, to_fp16,
)


# --------------------------------------------------------------------------- helpers
def _ort_run(op: str, x: np.ndarray, qp: QParams) -> np.ndarray:
    """Run one ONNX QuantizeLinear/DequantizeLinear node in onnxruntime (opset 19)."""
    ttype = TensorProto.INT8 if qp.dtype == "int8" else TensorProto.UINT8
    inits = [numpy_helper.from_array(qp.scale, "s"), numpy_helper.from_array(qp.zero_point.astype(qp.dtype), "z")]
    if op == "QuantizeLinear":
        vin = helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)
        vout = helper.make_tensor_value_info("y", ttype, x.shape)
    else:
        vin = helper.make_tensor_value_info("x", ttype, x.shape)
        vout = helper.make_tensor_value_info("y", TensorProto.FLOAT, x.shape)
    attrs = {} if qp.axis is None else {"axis": qp.axis}
    graph = helper.make_graph([helper.make_node(op, ["x", "s", "z"], ["y"], **attrs)], "g", [vin], [vout], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _f32(u) -> np.ndarray:
    return np.asarray(u, np.uint32).view(np.float32)


# --------------------------------------------------------------------------- QParams
def test_qparams_normalises_and_freezes():
    qp = QParams(0.5, 3, "uint8", None, 0, 255)
    assert qp.scale.dtype == np.float32 and qp.scale.shape == () and qp.zero_point.dtype == np.int64
    assert not qp.per_channel
    with pytest.raises(ValueError):  # read-only arrays
        qp.scale[...] = 2.0
    with pytest.raises(AttributeError):
        qp.dtype = "int8"
    pc = QParams(np.array([0.5, 0.25]), 0, "int8", 1, -127, 127)
    assert pc.per_channel and pc.zero_point.tolist() == [0, 0]
    assert pc == QParams(np.array([0.5, 0.25], np.float32), np.array([0, 0]), "int8", 1, -127, 127)
    assert pc != QParams(np.array([0.5, 0.125]), 0, "int8", 1, -127, 127)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=0.0), "scale"),
    (dict(scale=-1.0), "scale"),
    (dict(scale=np.inf), "scale"),
    (dict(scale=np.nan), "scale"),
    (dict(scale=1e-50), "float32"),           # underflows to 0 when stored as float32
    (dict(scale=1e300), "float32"),            # overflows
    (dict(zero_point=128), r"\[-128, 127\]"),
    (dict(zero_point=1.5), "integer"),
    (dict(zero_point=-128, qmin=-127), r"\[qmin, qmax\]"),
    (dict(dtype="int16"), "dtype"),
    (dict(qmin=-129), "qmin"),
    (dict(qmin=5, qmax=5), "qmin"),
    (dict(qmax=True), "qmax"),
    (dict(axis=True), "axis"),
    (dict(scale=np.array([1.0, 2.0])), "per-tensor"),
    (dict(axis=0, scale=np.ones((2, 2))), "1-D"),
    (dict(axis=0, scale=np.ones(3), zero_point=np.zeros(2, np.int64)), "zero_point"),
    (dict(scale="a"), "scale"),
])
def test_qparams_rejects_bad_fields(kwargs, match):
    base = dict(scale=1.0, zero_point=0, dtype="int8", axis=None, qmin=-128, qmax=127)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        QParams(**base)


# --------------------------------------------------------------------------- choose_qparams
def test_symmetric_int8_and_uint8():
    qp = choose_qparams(-3.0, 1.0, "int8", symmetric=True)
    assert qp.zero_point == 0 and qp.scale == np.float32(3.0 / 127) and (qp.qmin, qp.qmax) == (-128, 127)
    qp = choose_qparams(-3.0, 1.0, "uint8", symmetric=True)
    assert qp.zero_point == 128 and qp.scale == np.float32(3.0 / 127)
    qp = choose_qparams(-3.0, 1.0, "int8", symmetric=True, narrow_range=True)
    assert (qp.qmin, qp.qmax) == (-127, 127) and qp.scale == np.float32(3.0 / 127)
    qp = choose_qparams(-3.0, 1.0, "uint8", symmetric=True, narrow_range=True)
    assert (qp.qmin, qp.qmax, int(qp.zero_point)) == (1, 255, 128)
    # both ends representable without clipping: +-amax -> +-127 steps from the zero point
    x = np.array([-3.0, 3.0], np.float32)
    for dt in ("int8", "uint8"):
        qp = choose_qparams(-3.0, 3.0, dt, symmetric=True)
        assert (quantize(x, qp).astype(np.int64) - qp.zero_point).tolist() == [-127, 127]


def test_asymmetric_matches_onnxruntime_compute_scale_zp():
    rng = np.random.default_rng(11)
    rmin = (-rng.exponential(2.0, 400)).astype(np.float32)
    rmax = rng.exponential(2.0, 400).astype(np.float32)
    rmin[:50] = 0.0  # one-sided ranges: zero point at qmin
    for dt, lo, hi in (("int8", -128, 127), ("uint8", 0, 255)):
        qp = choose_qparams(rmin, rmax, dt, axis=0)
        for c in range(rmin.size):
            zp, s = compute_scale_zp(rmin[c], rmax[c], np.array(lo, dt), np.array(hi, dt))
            assert qp.scale[c] == s and s.dtype == np.float32
            assert qp.zero_point[c] == int(zp), (dt, c)
        assert np.all(qp.zero_point[:50] == lo)


def test_range_is_widened_to_include_zero():
    assert choose_qparams(1.0, 3.0, "uint8") == choose_qparams(0.0, 3.0, "uint8")
    assert choose_qparams(-3.0, -1.0, "int8") == choose_qparams(-3.0, 0.0, "int8")
    qp = choose_qparams(-3.0, -1.0, "int8")
    assert qp.zero_point == 127  # rmax widened to 0 -> zero point at qmax


def test_zero_is_exact_and_rounding_half_even():
    qp = choose_qparams(-1.0, 3.0, "uint8")
    assert quantize(np.zeros(3, np.float32), qp).tolist() == [int(qp.zero_point)] * 3
    assert dequantize(quantize(np.zeros(1, np.float32), qp), qp)[0] == 0.0
    qp = QParams(0.25, 0, "int8", None, -128, 127)  # power-of-two scale: x / s exact, exact ties
    x = np.array([0.125, 0.375, -0.125, -0.375, 0.625, 31.875, -32.125], np.float32)
    assert quantize(x, qp).tolist() == [0, 2, 0, -2, 2, 127, -128]


@pytest.mark.parametrize("dt", ["int8", "uint8"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("narrow", [False, True])
def test_degenerate_and_tiny_ranges(dt, symmetric, narrow):
    qp = choose_qparams(np.array([0.0, -1e-40, 0.0, -1.0]), np.array([0.0, 0.0, 1e-40, 1.0]), dt,
                        symmetric=symmetric, axis=0, narrow_range=narrow)
    assert qp.scale[:3].tolist() == [1.0, 1.0, 1.0] and qp.scale[3] != 1.0
    if symmetric:
        want = 0 if dt == "int8" else 128
    else:
        want = max(0, qp.qmin)
    assert qp.zero_point[:3].tolist() == [want] * 3
    assert qp.scale.min() >= F32_TINY


def test_power_of_two_never_clips():
    rng = np.random.default_rng(3)
    n = 20000
    mag = 2.0 ** rng.uniform(-20, 20, n)
    rmin = -mag * rng.uniform(0, 1, n)
    rmax = mag * rng.uniform(0, 1, n)
    # adversarial: spans that are exact multiples of 255 * 2**k (the scale lands exactly on a power of two)
    k = rng.integers(-10, 10, 2000)
    f = rng.integers(0, 256, 2000)
    rmin[:2000] = -f * 2.0 ** k
    rmax[:2000] = (255 - f) * 2.0 ** k
    rmin[2000:2100] = -(2.0 ** -60)   # rmax - rmin rounds down onto 255 * 2**k: scale must double
    rmax[2000:2100] = 255.0 * 2.0 ** rng.integers(-5, 5, 100)
    for dt in ("int8", "uint8"):
        for narrow in (False, True):
            for sym in (False, True):
                plain = choose_qparams(rmin, rmax, dt, symmetric=sym, axis=0, narrow_range=narrow)
                qp = choose_qparams(rmin, rmax, dt, symmetric=sym, axis=0, power_of_two=True, narrow_range=narrow)
                s = qp.scale.astype(np.float64)
                m, _ = np.frexp(s)
                assert np.all(m == 0.5), "scale must be a power of two"
                assert np.all(s >= plain.scale.astype(np.float64) * (1 - 2**-23))
                z = qp.zero_point
                # exact in float64: power-of-two scale times a small integer
                assert np.all(s * (qp.qmin - z) <= np.minimum(rmin, 0)), (dt, narrow, sym)
                assert np.all(s * (qp.qmax - z) >= np.maximum(rmax, 0)), (dt, narrow, sym)
                if not sym and not narrow:  # span (qmax - qmin) = 255 steps
                    assert np.all(s[:2000] == 2.0 ** k)  # no needless doubling on exact spans
                    assert np.all(s[2000:2100] == 2 * rmax[2000:2100] / 255)


def test_power_of_two_examples():
    qp = choose_qparams(-1.0, 3.0, "int8", power_of_two=True)
    assert qp.scale == 2.0**-5 and qp.zero_point == -96  # [-1, 6.97] covers [-1, 3]
    qp = choose_qparams(-1.0, 1.0, "int8", symmetric=True, power_of_two=True)
    assert qp.scale == 2.0**-6 and qp.zero_point == 0  # 1/127 -> 1/64


@pytest.mark.parametrize("kwargs, match", [
    (dict(rmin=1.0, rmax=0.5), "rmin must be <= rmax"),
    (dict(rmin=np.nan), "rmin must be finite"),
    (dict(rmax=np.inf), "rmax must be finite"),
    (dict(rmin=np.array([0.0, -1.0])), "single value"),
    (dict(rmin=np.array([-1.0, -1.0]), rmax=np.array([1.0, 1.0, 1.0]), axis=0), "same shape"),
    (dict(rmin=np.array([[-1.0]]), rmax=np.array([[1.0]]), axis=0), "1-D"),
    (dict(dtype="int4"), "dtype"),
    (dict(symmetric=1), "symmetric"),
    (dict(power_of_two="yes"), "power_of_two"),
    (dict(narrow_range=None), "narrow_range"),
    (dict(axis=1.0), "axis"),
    (dict(rmin=-1e300, rmax=1e300), "float32"),
    (dict(rmin="a"), "rmin"),
])
def test_choose_qparams_rejects_bad_input(kwargs, match):
    base = dict(rmin=-1.0, rmax=1.0)
    base.update(kwargs)
    with pytest.raises(ValueError, match=match):
        choose_qparams(**base)


# --------------------------------------------------------------------------- quantize / dequantize vs onnxruntime
@pytest.mark.parametrize("dt", ["int8", "uint8"])
def test_quantize_dequantize_per_tensor_match_onnxruntime(dt):
    rng = np.random.default_rng(7)
    for qp in (choose_qparams(-1.3, 2.7, dt), choose_qparams(-2.0, 2.0, dt, symmetric=True),
               choose_qparams(-1.0, 3.0, dt, power_of_two=True)):
        k = rng.integers(-300, 300, 20000)
        near_ties = ((k + 0.5) * qp.scale).astype(np.float32)  # exact ties for the power-of-two scale
        x = np.concatenate([near_ties, (rng.standard_normal(20000) * 3).astype(np.float32),
                            np.array([np.inf, -np.inf, 3e38, -3e38, 0.0, -0.0], np.float32)])
        q = quantize(x, qp)
        assert q.dtype == np.dtype(dt)
        np.testing.assert_array_equal(q, _ort_run("QuantizeLinear", x, qp))
        d = dequantize(q, qp)
        assert d.dtype == np.float32
        np.testing.assert_array_equal(d, _ort_run("DequantizeLinear", q, qp))


def test_quantize_dequantize_per_channel_match_onnxruntime():
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((3, 6, 4, 5)) * rng.uniform(0.1, 5, (1, 6, 1, 1))).astype(np.float32)
    for dt, sym in (("int8", True), ("uint8", False), ("int8", False)):
        qp = choose_qparams(x.min(axis=(0, 2, 3)), x.max(axis=(0, 2, 3)), dt, symmetric=sym, axis=1)
        q = quantize(x, qp)
        np.testing.assert_array_equal(q, _ort_run("QuantizeLinear", x, qp))
        np.testing.assert_array_equal(dequantize(q, qp), _ort_run("DequantizeLinear", q, qp))
        # negative axis means the same channel axis
        qn = QParams(qp.scale, qp.zero_point, dt, -3, qp.qmin, qp.qmax)
        np.testing.assert_array_equal(quantize(x, qn), q)


def test_quantize_error_bound_and_saturation():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1.0, 3.0, 50000).astype(np.float32)
    qp = choose_qparams(-1.0, 3.0, "uint8")
    err = np.abs(dequantize(quantize(x, qp), qp).astype(np.float64) - x)
    assert err.max() <= 0.5 * float(qp.scale) * (1 + 1e-6)
    big = np.array([10.0, -10.0], np.float32)
    assert quantize(big, qp).tolist() == [255, 0]
    qp64 = choose_qparams(-1.0, 3.0, "int8")
    x64 = rng.uniform(-1, 3, 1000)
    # float64 input: divided in float64 by the float32 scale
    want = np.clip(np.rint(x64 / np.float64(qp64.scale)) + int(qp64.zero_point), -128, 127)
    np.testing.assert_array_equal(quantize(x64, qp64), want.astype(np.int8))
    x16 = x.astype(np.float16)
    np.testing.assert_array_equal(quantize(x16, qp), quantize(x16.astype(np.float32), qp))


def test_quantize_dequantize_reject_bad_input():
    qp = choose_qparams(-1.0, 1.0)
    pc = choose_qparams(np.array([-1.0, -2.0]), np.array([1.0, 2.0]), axis=1)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.array([0.0, np.nan], np.float32), qp)
    with pytest.raises(ValueError, match="dtype"):
        quantize(np.array([1, 2]), qp)
    with pytest.raises(ValueError, match="qp must be a QParams"):
        quantize(np.zeros(2, np.float32), (1.0, 0))
    with pytest.raises(ValueError, match="axis"):
        quantize(np.zeros(2, np.float32), pc)                 # 1-D tensor, axis 1
    with pytest.raises(ValueError, match="channels"):
        quantize(np.zeros((2, 3), np.float32), pc)            # 3 channels, 2 scales
    with pytest.raises(ValueError, match="scalar"):
        quantize(np.float32(1.0), pc)
    with pytest.raises(ValueError, match="integer dtype"):
        dequantize(np.zeros(2, np.float32), qp)
    with pytest.raises(ValueError, match=r"\[-127, 127\]"):
        dequantize(np.array([-128], np.int8), choose_qparams(-1.0, 1.0, narrow_range=True, symmetric=True))
    with pytest.raises(ValueError, match="channels"):
        dequantize(np.zeros((3, 3), np.int8), pc)


# --------------------------------------------------------------------------- weights
def test_quantize_weights_tflite_rule():
    rng = np.random.default_rng(10)
    w = (rng.standard_normal((8, 3, 3, 3)) * rng.uniform(0.01, 2, (8, 1, 1, 1))).astype(np.float32)
    w[5] = 0.0  # a dead channel
    q, qp = quantize_weights(w, axis=0)
    assert q.dtype == np.int8 and q.min() >= -127 and q.max() <= 127
    assert (qp.qmin, qp.qmax, qp.axis) == (-127, 127, 0) and np.all(qp.zero_point == 0)
    amax = np.abs(w.astype(np.float64)).reshape(8, -1).max(axis=1)
    want = (amax / 127).astype(np.float32)
    want[5] = 1.0
    np.testing.assert_array_equal(qp.scale, want)
    live = np.arange(8) != 5
    assert np.all(np.abs(q.reshape(8, -1)).max(axis=1)[live] == 127) and np.all(q[5] == 0)
    err = np.abs(dequantize(q, qp).astype(np.float64) - w) / qp.scale.reshape(8, 1, 1, 1)
    assert err.max() <= 0.5 + 1e-6
    # per-tensor and power-of-two variants, channel-last axis
    qt, qpt = quantize_weights(w, axis=None)
    assert qpt.axis is None and qpt.scale == np.float32(amax.max() / 127)
    ql, qpl = quantize_weights(np.moveaxis(w, 0, -1), axis=-1, power_of_two=True)
    assert np.all(np.frexp(qpl.scale.astype(np.float64))[0] == 0.5) and np.abs(ql).max() <= 127
    with pytest.raises(ValueError, match="finite"):
        quantize_weights(np.array([np.inf], np.float32))
    with pytest.raises(ValueError, match="axis"):
        quantize_weights(w, axis=4)
    with pytest.raises(ValueError, match="empty"):
        quantize_weights(np.zeros((0,), np.float32))


# --------------------------------------------------------------------------- float16
def _grid_f32():
    """All 2**16 upper halves x selected lower halves of float32 bit patterns."""
    upper = np.arange(1 << 16, dtype=np.uint32) << 16
    lows = np.array([0x0000, 0x0001, 0x0FFF, 0x1000, 0x1001, 0x7FFF, 0x8000, 0x8001, 0xEFFF, 0xF000, 0xFFFF,
                     0x2A5B, 0xC3D1], np.uint32)
    return (upper[:, None] | lows[None, :]).ravel()


def test_fp16_is_nearest_even_float_reasoning():
    u = _grid_f32()
    x = u.view(np.float32)
    x = x[np.isfinite(x)]
    r = to_fp16(x)
    assert r.dtype == np.float16
    xd, rd = x.astype(np.float64), r.astype(np.float64)
    inf = np.isinf(rd)
    assert np.all(np.abs(xd[inf]) >= 65520.0)                 # overflow only from the rounding boundary
    fin = ~inf
    xd, rd, r = xd[fin], rd[fin], r[fin]
    with np.errstate(over="ignore"):
        dn = np.nextafter(r, np.float16(-np.inf)).astype(np.float64)
        up = np.nextafter(r, np.float16(np.inf)).astype(np.float64)
    up = np.where(np.isinf(up), 65536.0, up)                  # the virtual next value past 65504
    dn = np.where(np.isinf(dn), -65536.0, dn)
    d0, d1, d2 = np.abs(xd - rd), np.abs(xd - dn), np.abs(xd - up)
    assert np.all(d0 <= d1) and np.all(d0 <= d2)
    tie = (d0 == d1) | (d0 == d2)
    assert np.all((r[tie].view(np.uint16) & 1) == 0)           # ties go to the even mantissa
    assert tie.sum() > 1000


def test_fp16_edges():
    x = np.array([65504.0, 65519.99, 65520.0, -65520.0, 2.0**-24, 2.0**-25, 1.5 * 2.0**-25, 2.0**-14,
                  2.0**-14 - 2.0**-25, np.nan, -np.inf], np.float32)
    r = to_fp16(x)
    assert r[:3].tolist() == [65504.0, 65504.0, np.inf] and r[3] == -np.inf
    assert r[4] == 2.0**-24 and r[5] == 0.0 and r[6] == 2.0**-24          # subnormals, ties to even
    assert r[7] == 2.0**-14 and r[8] == 2.0**-14                           # subnormal/normal boundary
    assert np.isnan(r[9]) and r[10] == -np.inf
    # float64 input: one correctly rounded conversion (not via float32)
    x64 = np.array([1.0 + 2.0**-11 + 2.0**-40, 1.0 + 2.0**-11])
    assert to_fp16(x64).tolist() == [1.0 + 2.0**-10, 1.0]
    with pytest.raises(ValueError, match="dtype"):
        to_fp16(np.array([1, 2]))


# --------------------------------------------------------------------------- bfloat16
def test_bf16_rne_matches_ml_dtypes_exhaustively():
    u = _grid_f32()
    x = u.view(np.float32)
    got = to_bf16_bits(x, "rne")
    with np.errstate(invalid="ignore", over="ignore"):
        ref = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    np.testing.assert_array_equal(got, ref)


def test_bf16_rne_float_reasoning():
    u = _grid_f32()
    x = u.view(np.float32)
    keep = np.isfinite(x)
    u, x = u[keep], x[keep]
    got = to_bf16_bits(x, "rne").astype(np.uint32)
    hi16 = u >> 16
    lo_val = _f32(hi16 << 16).astype(np.float64)               # truncation (toward zero)
    mag = hi16 & 0x7FFF
    nxt = _f32(((hi16 + 1) << 16) & 0xFFFFFFFF).astype(np.float64)
    sign = np.where(hi16 & 0x8000, -1.0, 1.0)
    nxt = np.where(mag == 0x7F7F, sign * 2.0**128, nxt)         # past the largest bf16: Inf sits at 2**128
    xd = x.astype(np.float64)
    d_lo, d_hi = np.abs(xd - lo_val), np.abs(nxt - xd)
    want = np.where(d_lo < d_hi, hi16, hi16 + 1)
    tie = d_lo == d_hi
    want = np.where(tie, np.where(hi16 & 1, hi16 + 1, hi16), want)
    np.testing.assert_array_equal(got, want)
    assert tie.sum() >= 65000 and np.all(got[mag == 0x7F7F][d_lo[mag == 0x7F7F] >= d_hi[mag == 0x7F7F]] & 0x7FFF
                                         == 0x7F80)


def test_bf16_truncate_and_nan():
    u = _grid_f32()
    x = u.view(np.float32)
    got = to_bf16_bits(x, "truncate")
    nan = np.isnan(x)
    np.testing.assert_array_equal(got[~nan], (u[~nan] >> 16).astype(np.uint16))
    sign = (u[nan] >> 16) & 0x8000
    np.testing.assert_array_equal(got[nan], (0x7FC0 | sign).astype(np.uint16))
    np.testing.assert_array_equal(to_bf16_bits(x, "rne")[nan], (0x7FC0 | sign).astype(np.uint16))
    # the case the NaN check exists for: payload only in the low half
    edge = _f32([0x7F800001, 0xFF800001, 0x7F80FFFF, 0x7F7F8000, 0x7F7F7FFF, 0x7F800000, 0x00018000,
                 0x80008001])
    assert to_bf16_bits(edge, "truncate").tolist() == [0x7FC0, 0xFFC0, 0x7FC0, 0x7F7F, 0x7F7F, 0x7F80, 0x0001,
                                                       0x8000]
    assert to_bf16_bits(edge, "rne").tolist() == [0x7FC0, 0xFFC0, 0x7FC0, 0x7F80, 0x7F7F, 0x7F80, 0x0002,
                                                  0x8001]


def test_bf16_bits_round_trip_and_to_bf16():
    b = np.arange(1 << 16, dtype=np.uint16)
    f = bf16_bits_to_f32(b)
    assert f.dtype == np.float32
    np.testing.assert_array_equal(f.view(np.uint32), b.astype(np.uint32) << 16)
    nan = np.isnan(f)
    np.testing.assert_array_equal(to_bf16_bits(f)[~nan], b[~nan])
    np.testing.assert_array_equal(to_bf16_bits(f, "truncate")[~nan], b[~nan])
    x = np.random.default_rng(4).standard_normal(1000).astype(np.float32)
    np.testing.assert_array_equal(to_bf16(x), x.astype(ml_dtypes.bfloat16).astype(np.float32))
    np.testing.assert_array_equal(to_bf16(x.astype(np.float16)), to_bf16(x.astype(np.float16).astype(np.float32)))


def test_bf16_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        to_bf16_bits(np.array([1.0]))                  # float64 would round twice
    with pytest.raises(ValueError, match="rounding"):
        to_bf16_bits(np.array([1.0], np.float32), "nearest")
    with pytest.raises(ValueError, match=r"\[0, 65535\]"):
        bf16_bits_to_f32(np.array([70000]))
    with pytest.raises(ValueError, match="integer"):
        bf16_bits_to_f32(np.array([1.0]))
