"""golden/layers.py against slow, obviously-correct int64 loop references.

Accumulators must equal ``saturate_int32(exact sum + bias)`` (one saturation of
the exact total) for every attribute combination; the quantized wrappers must
equal the requant functions applied to those accumulators; bad input raises
ValueError naming the parameter.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from golden import layers as L
from golden import requant as R

I32_MIN, I32_MAX = -(2**31), 2**31 - 1


def sat(v: int) -> int:
    return min(max(v, I32_MIN), I32_MAX)


# --------------------------------------------------------------------------
# loop references (Python ints)
# --------------------------------------------------------------------------


def ref_conv(x, w, bias, zp, stride, pads, dil, groups):
    n_, c_, h_, w_ = x.shape
    o_, cg, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dil
    pt, pl, pb, pr = pads
    og = o_ // groups
    ho = (h_ + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (w_ + pl + pr - dw * (kw - 1) - 1) // sw + 1
    xi = x.astype(np.int64).tolist()
    wi = w.astype(np.int64).tolist()
    out = np.zeros((n_, o_, ho, wo), np.int64)
    for n in range(n_):
        for o in range(o_):
            g = o // og
            for y in range(ho):
                for xx in range(wo):
                    s = 0
                    for c in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                r, q = y * sh + i * dh - pt, xx * sw + j * dw - pl
                                v = xi[n][g * cg + c][r][q] if 0 <= r < h_ and 0 <= q < w_ else zp
                                s += (v - zp) * wi[o][c][i][j]
                    out[n, o, y, xx] = sat(s + (0 if bias is None else int(bias[o])))
    return out


def ref_convt(x, w, bias, zp, stride, pads, out_pad, dil, groups):
    n_, c_, h_, w_ = x.shape
    _, og, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dil
    pt, pl, pb, pr = pads
    cg = c_ // groups
    hf = (h_ - 1) * sh + dh * (kh - 1) + 1 + out_pad[0]
    wf = (w_ - 1) * sw + dw * (kw - 1) + 1 + out_pad[1]
    full = [[[[0] * wf for _ in range(hf)] for _ in range(og * groups)] for _ in range(n_)]
    xi = x.astype(np.int64).tolist()
    wi = w.astype(np.int64).tolist()
    for n in range(n_):
        for c in range(c_):
            g = c // cg
            for h in range(h_):
                for q in range(w_):
                    v = xi[n][c][h][q] - zp
                    for o in range(og):
                        for i in range(kh):
                            for j in range(kw):
                                full[n][g * og + o][h * sh + i * dh][q * sw + j * dw] += v * wi[c][o][i][j]
    out = np.array(full, np.int64)[:, :, pt:hf - pb, pl:wf - pr]
    if bias is not None:
        out = out + np.asarray(bias, np.int64)[None, :, None, None]
    return np.clip(out, I32_MIN, I32_MAX)


def ref_matmul(a, b, azp, bzp):
    a = a.astype(np.int64) - azp
    b = b.astype(np.int64) - np.asarray(bzp, np.int64)
    k = a.shape[-1]
    a_b, b_b = np.broadcast_arrays(a[..., :, :, None], b[..., None, :, :])  # (..., M, K, N)
    out = np.zeros(a_b.shape[:-3] + (a.shape[-2], b.shape[-1]), np.int64)
    for kk in range(k):  # int64 products, summed term by term
        out += a_b[..., :, kk, :] * b_b[..., :, kk, :]
    return np.clip(out, I32_MIN, I32_MAX)


def _rand_act(rng, dtype, shape):
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    return rng.integers(lo, hi + 1, shape).astype(dtype), lo, hi


# --------------------------------------------------------------------------
# conv2d_acc
# --------------------------------------------------------------------------

CONV_CASES = list(itertools.product(["int8", "uint8"], [1, 2, "dw"], [(1, 1), (2, 3)], [(1, 1), (2, 1)],
                                    ["int", "pair", "quad"]))


@pytest.mark.parametrize("dtype, groups, stride, dil, padform", CONV_CASES)
def test_conv2d_acc_matches_loops(dtype, groups, stride, dil, padform):
    rng = np.random.default_rng(hash((dtype, str(groups), stride, dil, padform)) % 2**32)
    if groups == "dw":
        g, cg, og = 3, 1, 2
    else:
        g, cg, og = groups, 2, 3
    kh, kw = 3, 2
    x, lo, hi = _rand_act(rng, dtype, (2, g * cg, 7, 8))
    w = rng.integers(-128, 128, (g * og, cg, kh, kw)).astype(np.int8)
    w.flat[0] = -128
    bias = rng.integers(-(2**20), 2**20, g * og)
    zp = int(rng.choice([lo, hi]))
    pads = {"int": 1, "pair": (2, 0), "quad": (0, 1, 2, 3)}[padform]
    quad = {"int": (1, 1, 1, 1), "pair": (2, 0, 2, 0), "quad": (0, 1, 2, 3)}[padform]
    got = L.conv2d_acc(x, w, bias, zp, stride, pads, dil, g)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, ref_conv(x, w, bias, zp, stride, quad, dil, g))


def test_conv2d_acc_no_bias_and_1x1():
    rng = np.random.default_rng(11)
    x, _, _ = _rand_act(rng, "uint8", (1, 5, 4, 4))
    w = rng.integers(-128, 128, (3, 5, 1, 1)).astype(np.int8)
    np.testing.assert_array_equal(L.conv2d_acc(x, w, None, 17), ref_conv(x, w, None, 17, (1, 1), (0,) * 4, (1, 1), 1))


def _int64_conv(x, w, zp, pad):
    """Vectorised int64 reference (exact integer tensordot) for larger shapes, stride 1."""
    xp = np.pad(x.astype(np.int64) - zp, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, w.shape[2:], axis=(2, 3))  # N C Ho Wo kh kw
    return np.einsum("nchwij,ocij->nohw", win, w.astype(np.int64))


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_conv2d_acc_chunked_gemm_is_exact(dtype):
    """K = 300*9 = 2700 products of up to 128*128 (well past the 2**24 float32 limit per GEMM)."""
    rng = np.random.default_rng(12)
    lo, hi = (-128, 127) if dtype == "int8" else (0, 255)
    zp = hi if dtype == "uint8" else 127
    x = np.full((1, 300, 6, 6), lo, dtype)             # |x - zp| = 255 everywhere inside
    x[0, ::7] = rng.integers(lo, hi + 1, x[0, ::7].shape)
    w = np.where(rng.random((4, 300, 3, 3)) < 0.9, -128, 127).astype(np.int8)
    got = L.conv2d_acc(x, w, None, zp, padding=1)
    want = _int64_conv(x, w, zp, 1)
    assert np.abs(want).max() > 2**26
    np.testing.assert_array_equal(got, np.clip(want, I32_MIN, I32_MAX))


def test_conv2d_acc_single_saturation_of_exact_total():
    # K = 9 * 9000 = 81000 terms of (-128 - 127) * 127 = -32385: exact sum ~ -2.6e9 < INT32_MIN
    c = 9000
    x = np.full((1, c, 3, 3), -128, np.int8)
    w = np.full((2, c, 3, 3), 127, np.int8)
    s = c * 9 * (-255) * 127
    assert s < I32_MIN
    bias = np.array([I32_MAX, 0])
    got = L.conv2d_acc(x, w, bias, 127)
    # channel 0: the exact total fits (no intermediate saturation); channel 1 saturates once
    assert got[0, 0, 0, 0] == s + I32_MAX
    assert got[0, 1, 0, 0] == I32_MIN
    got_pos = L.conv2d_acc(x, -w, np.array([I32_MAX, I32_MIN]), 127)
    assert got_pos[0, 0, 0, 0] == I32_MAX and got_pos[0, 1, 0, 0] == -s + I32_MIN


# --------------------------------------------------------------------------
# fully connected / matmul
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
def test_fully_connected_acc(dtype):
    rng = np.random.default_rng(13)
    x, lo, hi = _rand_act(rng, dtype, (5, 37))
    w = rng.integers(-128, 128, (6, 37)).astype(np.int8)
    bias = rng.integers(-(2**31), 2**31, 6)
    for zp in (lo, hi, (lo + hi) // 2):
        want = np.clip((x.astype(np.int64) - zp) @ w.astype(np.int64).T + bias, I32_MIN, I32_MAX)
        want_loop = np.array([[sat(sum((int(x[n, k]) - zp) * int(w[o, k]) for k in range(37)) + int(bias[o]))
                               for o in range(6)] for n in range(5)])
        got = L.fully_connected_acc(x, w, bias, zp)
        np.testing.assert_array_equal(got, want_loop)
        np.testing.assert_array_equal(got, want)


def test_fully_connected_single_saturation_and_big_k():
    k = 70000  # (-255) * (-128) * 70000 = 2.28e9 > INT32_MAX: exact total saturates once
    x = np.full((1, k), 0, np.uint8)
    w = np.full((2, k), -128, np.int8)
    got = L.fully_connected_acc(x, w, np.array([I32_MIN, 0]), 255)
    s = 255 * 128 * k
    assert got.tolist() == [[s + I32_MIN, I32_MAX]]


@pytest.mark.parametrize("adt, bdt", [("int8", "int8"), ("uint8", "uint8"), ("uint8", "int8"), ("int8", "uint8")])
def test_matmul_acc(adt, bdt):
    rng = np.random.default_rng(14)
    a, alo, ahi = _rand_act(rng, adt, (3, 4, 50))
    b, blo, bhi = _rand_act(rng, bdt, (50, 7))
    for azp, bzp in ((alo, bhi), (ahi, blo), (int(rng.integers(alo, ahi + 1)), rng.integers(blo, bhi + 1, 7))):
        got = L.matmul_acc(a, b, azp, bzp)
        np.testing.assert_array_equal(got, ref_matmul(a, b, azp, bzp))
    b3, _, _ = _rand_act(rng, bdt, (3, 50, 2))
    np.testing.assert_array_equal(L.matmul_acc(a, b3, alo, blo), ref_matmul(a, b3, alo, blo))


# --------------------------------------------------------------------------
# conv_transpose2d_acc
# --------------------------------------------------------------------------

CONVT_CASES = [
    # stride, padding (quad), output_padding, dilation, groups, kernel
    ((2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 1, (4, 4)),     # CenterNet neck: k4 s2 p1 (2x upsample)
    ((2, 2), (1, 1, 1, 1), (1, 1), (1, 1), 1, (3, 3)),
    ((3, 2), (0, 1, 2, 0), (2, 1), (1, 1), 2, (3, 2)),
    ((1, 1), (0, 0, 0, 0), (0, 0), (2, 2), 1, (3, 3)),
    ((2, 1), (1, 0, 0, 1), (1, 0), (2, 1), 3, (2, 3)),
    ((2, 2), (0, 0, 0, 0), (0, 1), (1, 1), 4, (1, 2)),     # depthwise-style: one input channel per group
]


@pytest.mark.parametrize("dtype", ["int8", "uint8"])
@pytest.mark.parametrize("stride, pads, out_pad, dil, groups, k", CONVT_CASES)
def test_conv_transpose2d_acc_matches_loops(dtype, stride, pads, out_pad, dil, groups, k):
    rng = np.random.default_rng(hash((dtype, stride, pads, out_pad, dil, groups, k)) % 2**32)
    cg = 1 if groups == 4 else 2
    x, lo, hi = _rand_act(rng, dtype, (2, groups * cg, 4, 5))
    w = rng.integers(-128, 128, (groups * cg, 2, *k)).astype(np.int8)
    bias = rng.integers(-1000, 1000, 2 * groups)
    zp = int(rng.choice([lo, hi]))
    got = L.conv_transpose2d_acc(x, w, bias, zp, stride, pads, out_pad, dil, groups)
    np.testing.assert_array_equal(got, ref_convt(x, w, bias, zp, stride, pads, out_pad, dil, groups))


def test_conv_transpose_centernet_neck_shape_and_saturation():
    x = np.full((1, 2, 5, 5), 127, np.int8)
    w = np.full((2, 3, 4, 4), 127, np.int8)
    got = L.conv_transpose2d_acc(x, w, np.array([I32_MAX, 0, I32_MIN]), -128, stride=2, padding=1)
    assert got.shape == (1, 3, 10, 10)
    want = ref_convt(x, w, np.array([I32_MAX, 0, I32_MIN]), -128, (2, 2), (1, 1, 1, 1), (0, 0), (1, 1), 1)
    np.testing.assert_array_equal(got, want)
    assert got[0, 0].min() == I32_MAX


# --------------------------------------------------------------------------
# quantized wrappers = requant functions applied to the accumulators
# --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["tflite", "ort"])
@pytest.mark.parametrize("act", [None, "relu", "relu6", (-20, 40)])
def test_conv2d_is_requant_of_acc(mode, act):
    rng = np.random.default_rng(15)
    x, _, _ = _rand_act(rng, "int8", (2, 4, 6, 6))
    w = rng.integers(-128, 128, (6, 2, 3, 3)).astype(np.int8)
    bias = rng.integers(-5000, 5000, 6)
    ws = rng.uniform(0.002, 0.01, 6).astype(np.float32)
    xs, ys, yzp = 0.05, 0.08, -7
    acc = L.conv2d_acc(x, w, bias, 3, 2, 1, 1, 2)
    lo, hi = L.activation_range(act, ys, yzp, "int8")
    if mode == "ort":
        want = R.requantize_ort(acc, R.ort_scale(xs, ws, ys), yzp, lo, hi, axis=1)
    else:
        q, s = R.quantize_multiplier(R.tflite_multiplier(xs, ws, ys))
        want = R.requantize_tflite(acc, q, s, yzp, lo, hi, axis=1)
    got = L.conv2d(x, w, bias, 3, xs, ws, ys, yzp, stride=2, padding=1, groups=2, mode=mode, act=act)
    assert got.dtype == np.int8
    np.testing.assert_array_equal(got, want)
    # per-tensor scale too
    got1 = L.conv2d(x, w, bias, 3, xs, 0.004, ys, yzp, stride=2, padding=1, groups=2, mode=mode, act=act)
    want1 = R.requantize(acc, mode, xs, 0.004, ys, yzp, lo, hi)
    np.testing.assert_array_equal(got1, want1)


@pytest.mark.parametrize("shape", [(1, 8, 40, 52, 6), (2, 24, 4, 4, 40), (1, 3, 9, 130, 5)])
def test_execution_strategies_agree(shape, monkeypatch):
    """The BLAS-parallel path, the fused per-block GEMM path (single-threaded BLAS, worker
    threads) and the sequential path give identical accumulators and codes."""
    n, c, h, w_, o = shape
    rng = np.random.default_rng(sum(shape))
    x, _, _ = _rand_act(rng, "uint8", (n, c, h, w_))
    w = rng.integers(-128, 128, (o, c, 3, 3)).astype(np.int8)
    bias = rng.integers(-(2**16), 2**16, o)
    ws = rng.uniform(0.001, 0.01, o).astype(np.float32)
    results = []
    for env in ({"OPENBLAS_NUM_THREADS": "4", "GOLDEN_NUM_THREADS": "2"},
                {"OPENBLAS_NUM_THREADS": "1", "GOLDEN_NUM_THREADS": "2"},
                {"OPENBLAS_NUM_THREADS": "1", "GOLDEN_NUM_THREADS": "3"},
                {"OPENBLAS_NUM_THREADS": "1", "GOLDEN_NUM_THREADS": "1"}):
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        results.append((L.conv2d_acc(x, w, bias, 7, 1, 1),
                        L.conv2d(x, w, bias, 7, 0.03, ws, 0.2, 128, padding=1, mode="ort"),
                        L.conv2d(x, w, bias, 7, 0.03, ws, 0.2, 128, padding=1, mode="tflite")))
    np.testing.assert_array_equal(results[0][0], _int64_conv(x, w, 7, 1) + bias[None, :, None, None])
    for r in results[1:]:
        for a, b in zip(results[0], r):
            np.testing.assert_array_equal(a, b)


def test_activation_ranges():
    assert L.activation_range(None, 0.1, 5, "int8") == (-128, 127)
    assert L.activation_range("relu", 0.1, 5, "int8") == (5, 127)
    assert L.activation_range("relu", 0.1, -128, "int8") == (-128, 127)
    assert L.activation_range("relu6", 0.05, -100, "int8") == (-100, 20)        # 6 / 0.05 = 120
    assert L.activation_range("relu6", 12.0, 10, "uint8") == (10, 11)           # 0.5 rounds away to 1
    assert L.activation_range("relu6", 0.01, 200, "uint8") == (200, 255)
    assert L.activation_range((1, 2), 0.1, 0, "uint8") == (1, 2)


def test_fc_matmul_convt_wrappers():
    rng = np.random.default_rng(16)
    x, _, _ = _rand_act(rng, "uint8", (4, 30))
    w = rng.integers(-128, 128, (5, 30)).astype(np.int8)
    ws = rng.uniform(0.001, 0.01, 5).astype(np.float32)
    acc = L.fully_connected_acc(x, w, None, 100)
    got = L.fully_connected(x, w, None, 100, 0.02, ws, 0.1, 128, mode="ort", act="relu")
    np.testing.assert_array_equal(got, R.requantize_ort(acc, R.ort_scale(0.02, ws, 0.1), 128, 128, 255, axis=1))
    b, _, _ = _rand_act(rng, "int8", (30, 5))
    y = L.qlinear_matmul(x, 0.02, 100, b, ws, 0, 0.1, 128)
    np.testing.assert_array_equal(y, R.requantize_ort(L.matmul_acc(x, b, 100, 0), R.ort_scale(0.02, ws, 0.1),
                                                      128, 0, 255, axis=1))
    assert y.dtype == np.uint8
    xt, _, _ = _rand_act(rng, "int8", (1, 3, 4, 4))
    wt = rng.integers(-128, 128, (3, 2, 4, 4)).astype(np.int8)
    acc_t = L.conv_transpose2d_acc(xt, wt, None, -5, stride=2, padding=1)
    got_t = L.conv_transpose2d(xt, wt, None, -5, 0.1, [0.01, 0.02], 0.2, 3, stride=2, padding=1, mode="tflite")
    q, s = R.quantize_multiplier(R.tflite_multiplier(0.1, [0.01, 0.02], 0.2))
    np.testing.assert_array_equal(got_t, R.requantize_tflite(acc_t, q, s, 3, -128, 127, axis=1))


def test_uint8_out_dtype_override():
    x = np.zeros((1, 1, 3, 3), np.int8)
    w = np.ones((2, 1, 1, 1), np.int8)
    y = L.conv2d(x, w, np.array([100, -100]), 0, 1.0, 1.0, 1.0, 128, out_dtype="uint8", mode="ort")
    assert y.dtype == np.uint8 and y[0, 0, 0, 0] == 228 and y[0, 1, 0, 0] == 28


# --------------------------------------------------------------------------
# bad input
# --------------------------------------------------------------------------

X = np.zeros((1, 4, 5, 5), np.int8)
W = np.zeros((6, 2, 3, 3), np.int8)
Q = (0.1, 0.1, 0.1, 0)


@pytest.mark.parametrize("call, match", [
    (lambda: L.conv2d_acc(X.astype(np.float32), W), "x must have dtype"),
    (lambda: L.conv2d_acc(X.astype(np.int16), W), "x must have dtype"),
    (lambda: L.conv2d_acc(X, W.astype(np.uint8), groups=2), "w must have dtype"),
    (lambda: L.conv2d_acc(X[0], W, groups=2), "x must have 4 dimensions"),
    (lambda: L.conv2d_acc(X, W[0], groups=2), "w must have 4 dimensions"),
    (lambda: L.conv2d_acc(X, W), "w must have C_in/groups"),
    (lambda: L.conv2d_acc(X, W, groups=3), "groups must divide"),
    (lambda: L.conv2d_acc(X, W, groups=0), "groups"),
    (lambda: L.conv2d_acc(X, W, groups=2, stride=0), "stride"),
    (lambda: L.conv2d_acc(X, W, groups=2, stride=(1, -1)), "stride"),
    (lambda: L.conv2d_acc(X, W, groups=2, stride=1.5), "stride"),
    (lambda: L.conv2d_acc(X, W, groups=2, dilation=0), "dilation"),
    (lambda: L.conv2d_acc(X, W, groups=2, padding=-1), "padding"),
    (lambda: L.conv2d_acc(X, W, groups=2, padding=(1, 2, 3)), "padding"),
    (lambda: L.conv2d_acc(X, W, groups=2, dilation=3), "kernel"),
    (lambda: L.conv2d_acc(X, W, groups=2, x_zp=128), "x_zp"),
    (lambda: L.conv2d_acc(X.astype(np.uint8), W, groups=2, x_zp=-1), "x_zp"),
    (lambda: L.conv2d_acc(X, W, groups=2, x_zp=[0, 1]), "x_zp"),
    (lambda: L.conv2d_acc(X, W, bias=np.zeros(5, np.int64), groups=2), "bias"),
    (lambda: L.conv2d_acc(X, W, bias=np.zeros(6, np.float32), groups=2), "bias"),
    (lambda: L.conv2d_acc(X, W, bias=np.full(6, 2**31), groups=2), "bias"),
    (lambda: L.conv2d(X, W, None, 0, *Q, groups=2, mode="float"), "mode"),
    (lambda: L.conv2d(X, W, None, 0, *Q, groups=2, act="gelu"), "act"),
    (lambda: L.conv2d(X, W, None, 0, *Q, groups=2, act=(5, 1)), "act"),
    (lambda: L.conv2d(X, W, None, 0, *Q, groups=2, act=(0, 300)), "act"),
    (lambda: L.conv2d(X, W, None, 0, 0.1, [0.1] * 5, 0.1, 0, groups=2), "w_scale"),
    (lambda: L.conv2d(X, W, None, 0, 0.1, 0.1, 0.0, 0, groups=2), "y_scale"),
    (lambda: L.conv2d(X, W, None, 0, -0.1, 0.1, 0.1, 0, groups=2, mode="ort"), "x_scale"),
    (lambda: L.conv2d(X, W, None, 0, 0.1, 0.1, 0.1, 200, groups=2), "y_zp"),
    (lambda: L.conv2d(X, W, None, 0, 0.1, 0.1, 0.1, 0, groups=2, out_dtype="int16"), "out_dtype"),
    (lambda: L.fully_connected_acc(np.zeros((2, 3), np.int8), np.zeros((4, 5), np.int8)), "K = 3"),
    (lambda: L.fully_connected_acc(np.zeros((2, 3), np.int8), np.zeros((4, 3), np.int16)), "w must have dtype"),
    (lambda: L.fully_connected_acc(np.zeros(3, np.int8), np.zeros((4, 3), np.int8)), "x must have 2"),
    (lambda: L.matmul_acc(np.zeros((2, 3), np.int8), np.zeros((4, 5), np.int8)), "last dimension"),
    (lambda: L.matmul_acc(np.zeros((2, 2, 3), np.int8), np.zeros((3, 3, 5), np.int8)), "batch"),
    (lambda: L.matmul_acc(np.zeros(3, np.int8), np.zeros((3, 5), np.int8)), "at least 2"),
    (lambda: L.matmul_acc(np.zeros((2, 3), np.int8), np.zeros((3, 5), np.int8), b_zp=[0, 1]), "b_zp"),
    (lambda: L.matmul_acc(np.zeros((2, 3), np.int8), np.zeros((3, 5), np.uint8), b_zp=-1), "b_zp"),
    (lambda: L.matmul_acc(np.zeros((2, 3), np.float64), np.zeros((3, 5), np.int8)), "a must have dtype"),
    (lambda: L.conv_transpose2d_acc(X, np.zeros((3, 2, 3, 3), np.int8)), "C_in = 4"),
    (lambda: L.conv_transpose2d_acc(X, np.zeros((4, 2, 3, 3), np.int8), groups=3), "groups must divide"),
    (lambda: L.conv_transpose2d_acc(X, np.zeros((4, 2, 3, 3), np.int8), stride=2, output_padding=2),
     "output_padding"),
    (lambda: L.conv_transpose2d_acc(X, np.zeros((4, 2, 3, 3), np.int8), padding=4), "empty output"),
    (lambda: L.conv_transpose2d_acc(X, np.zeros((4, 2, 3, 3), np.int8), stride=0), "stride"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
