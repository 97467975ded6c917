"""golden/layers.py in mode="ort" is bit exact with onnxruntime's QLinearConv and QLinearMatMul.

Random one-node ONNX models (built with onnx.helper, see bench/golden.py) run on
onnxruntime's CPU execution provider; zero outputs may differ. The cases
cover strides, asymmetric pads, dilations, groups (incl. depthwise and channel
multipliers), per-tensor and per-channel weight scales, zero points at both
ends of int8 and uint8, int8 and uint8 activations, power-of-two scales (exact
rounding ties), huge biases (accumulators past 2**24, where float32(acc)
rounds) and extreme data (products alone past 2**24).

uint8-activation sessions set ``session.x64quantprecision=1``: without it
onnxruntime's uint8 x int8 kernel on CPUs without VNNI (VPMADDUBSW) saturates
int16 pair sums for |w| > 64 and is not an exact convolution (see
bench/golden.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from bench.golden import (CONV_FLAVOURS, CONV_KINDS, MATMUL_TYPES, golden_conv, golden_matmul, ort_session,
                          qlinearconv_model, qlinearmatmul_model, random_conv_case, random_matmul_case)


def _run_conv(case):
    xdt = case["x"].dtype.name
    return ort_session(qlinearconv_model(case), xdt).run(None, {"x": case["x"]})[0]


def _run_matmul(case):
    return ort_session(qlinearmatmul_model(case), case["a"].dtype.name).run(None, {"a": case["a"]})[0]


@pytest.mark.parametrize("flavour", CONV_FLAVOURS)
@pytest.mark.parametrize("kind", CONV_KINDS)
@pytest.mark.parametrize("x_dtype", ["int8", "uint8"])
def test_qlinearconv_bit_exact(x_dtype, kind, flavour):
    seed = 1000 * ["int8", "uint8"].index(x_dtype) + 100 * CONV_KINDS.index(kind) + CONV_FLAVOURS.index(flavour)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        case = random_conv_case(rng, x_dtype, kind, flavour)
        y = _run_conv(case)
        g = golden_conv(case, "ort")
        assert g.dtype == y.dtype and g.shape == y.shape
        bad = np.flatnonzero(g != y)
        assert bad.size == 0, (f"{bad.size}/{y.size} outputs differ, e.g. golden {g.ravel()[bad[:5]]} "
                               f"vs onnxruntime {y.ravel()[bad[:5]]}")
        if flavour in ("bigbias", "extreme"):
            assert np.abs(case["acc"]).max() >= 2**24


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("types", MATMUL_TYPES, ids=["s8s8", "u8u8", "u8s8"])
def test_qlinearmatmul_bit_exact(types, seed):
    rng = np.random.default_rng(500 + 10 * seed + MATMUL_TYPES.index(types))
    for _ in range(3):
        case = random_matmul_case(rng, *types)
        y = _run_matmul(case)
        g = golden_matmul(case, "ort")
        assert g.dtype == y.dtype and g.shape == y.shape
        np.testing.assert_array_equal(g, y)


def test_per_channel_extreme_zero_points_and_large_accumulators():
    """Hand-made: per-channel scales spanning 2**-12..2**-3, zero points 0/255 and -128/127."""
    rng = np.random.default_rng(77)
    for xdt, zps in (("uint8", (0, 255)), ("int8", (-128, 127))):
        for x_zp in zps:
            for y_zp in zps:
                case = random_conv_case(rng, xdt, "dense", "random")
                case.update(x_zp=x_zp, y_zp=y_zp, bias=rng.integers(-(2**28), 2**28, case["w"].shape[0]))
                case["w_scale"] = (2.0 ** rng.uniform(-12, -3, case["w"].shape[0])).astype(np.float32)
                case["y_scale"] = np.float32(2.0**-3)
                np.testing.assert_array_equal(golden_conv(case, "ort"), _run_conv(case))


def test_tflite_differs_from_ort_by_exactly_one_lsb():
    """TFLite's fixed-point requantization vs onnxruntime: differences exist (ties round half away
    from zero vs half to even) and every one of them is exactly 1 LSB."""
    rng = np.random.default_rng(4242)
    diffs = total = 0
    for i in range(12):
        xdt = ("int8", "uint8")[i % 2]
        case = random_conv_case(rng, xdt, CONV_KINDS[i % 3], ("pow2", "random", "bigbias")[i % 3])
        if i % 3 == 0:  # power-of-two multipliers 2**-j with j small: many exact ties
            ws = np.atleast_1d(case["w_scale"])
            j = max(1, int(np.ceil(np.log2(float(case["acc"].std()) / 40 + 1))))
            case["y_scale"] = np.float32(float(case["x_scale"]) * float(ws.max()) * 2.0**j)
        y = _run_conv(case).astype(np.int64)
        t = golden_conv(case, "tflite").astype(np.int64)
        d = np.abs(t - y)
        assert d.max() <= 1
        diffs += int(np.count_nonzero(d))
        total += d.size
    for i in range(6):
        case = random_matmul_case(rng, *MATMUL_TYPES[i % 3])
        d = np.abs(golden_matmul(case, "tflite").astype(np.int64) - _run_matmul(case).astype(np.int64))
        assert d.max() <= 1
        diffs += int(np.count_nonzero(d))
        total += d.size
    assert 0 < diffs < total
