"""Tests of golden/ops.py.

References used here are independent of golden/requant.py: the TFLite integer
primitives are re-derived from the spec text (arithmetic.md §2) as plain
Python-int scalar loops; pooling is checked against onnxruntime and a slow
loop; directional maxima against the _cpools recurrence; requantizing ops also
against float bounds.
"""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from golden import ops

I32_MIN, I32_MAX = -(2**31), 2**31 - 1
QR = {"int8": (-128, 127), "uint8": (0, 255)}


# ----------------------------------------------------------------- spec scalars


def qm_spec(m: float) -> tuple[int, int]:
    """QuantizeMultiplier from the spec text, Python ints."""
    q, sh = math.frexp(m)
    qf = math.floor(q * 2.0**31 + 0.5)  # round half away, q > 0
    if qf == 2**31:
        qf //= 2
        sh += 1
    if sh < -31:
        return 0, 0
    return qf, sh


def srdhm_spec(a: int, b: int) -> int:
    if a == b == I32_MIN:
        return I32_MAX
    ab = a * b
    t = ab + ((1 << 30) if ab >= 0 else 1 - (1 << 30))
    return (abs(t) >> 31) * (1 if t >= 0 else -1)  # C truncating division


def rdbpot_spec(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    thr = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > thr else 0)


def mbqm_spec(x: int, q: int, s: int) -> int:
    left, right = max(s, 0), max(-s, 0)
    v = min(max(x * (1 << left), I32_MIN), I32_MAX)
    return rdbpot_spec(srdhm_spec(v, q), right)


def mbqm_err(shift: int) -> float:
    """Worst error (LSB) of MBQM vs the real product, multiplier error aside (double rounding):
    SRDHM rounds to nearest (0.5 at scale 2**-shift), then RDBPOT rounds again when shift < 0."""
    return 0.5 if shift >= 0 else 0.5 + 2.0 ** (shift - 1)


def f32(s: float) -> float:
    return float(np.float32(s))


def add_spec(a, sa, za, b, sb, zb, so, zo, lo, hi) -> int:
    """TFLite AddFunc + Prepare (add.cc), scalar."""
    sa, sb, so = f32(sa), f32(sb), f32(so)
    tm = 2 * max(sa, sb)
    qa, ea = qm_spec(sa / tm)
    qb, eb = qm_spec(sb / tm)
    qo, eo = qm_spec(tm / ((1 << 20) * so))
    assert ea <= 0 and eb <= 0 and eo <= 0
    ra = rdbpot_spec(srdhm_spec((a - za) * (1 << 20), qa), -ea)
    rb = rdbpot_spec(srdhm_spec((b - zb) * (1 << 20), qb), -eb)
    r = rdbpot_spec(srdhm_spec(ra + rb, qo), -eo) + zo
    return min(max(r, lo), hi)


def rng(seed=0):
    return np.random.default_rng(seed)


def rand_act(r, shape, dtype):
    lo, hi = QR[dtype]
    return r.integers(lo, hi + 1, size=shape).astype(dtype)


# ----------------------------------------------------------------- ORT helpers


def _ort_run(node, x: np.ndarray, extra_inits=()):
    et = TensorProto.INT8 if x.dtype == np.int8 else TensorProto.UINT8
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", et, list(x.shape))],
                          [helper.make_tensor_value_info("y", et, None)], initializer=list(extra_inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 22)])
    m.ir_version = 10
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def ort_maxpool(x, k, s, pads, ceil, dil):
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(k), strides=list(s), pads=list(pads),
                            ceil_mode=int(ceil), dilations=list(dil))
    return _ort_run(node, x)


def loop_maxpool(x, k, s, pads, ceil, dil):
    """Slow reference: every output cell, max over its in-bounds taps (padding = -inf)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (dh, dw) = k, s, dil
    pt, pl, pb, pr = pads

    def osize(n, k_, s_, p0, p1, d):
        span = n + p0 + p1 - (d * (k_ - 1) + 1)
        o = (math.ceil(span / s_) if ceil else span // s_) + 1
        if ceil and (o - 1) * s_ >= n + p0:
            o -= 1
        return o

    oh, ow = osize(H, kh, sh, pt, pb, dh), osize(W, kw, sw, pl, pr, dw)
    out = np.zeros((N, C, oh, ow), x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    best = None
                    for a in range(kh):
                        for b in range(kw):
                            y, z = i * sh - pt + a * dh, j * sw - pl + b * dw
                            if 0 <= y < H and 0 <= z < W:
                                v = int(x[n, c, y, z])
                                best = v if best is None else max(best, v)
                    assert best is not None
                    out[n, c, i, j] = best
    return out


# ----------------------------------------------------------------- upsample


def test_upsample_nearest_matches_index_formula_and_ort_resize():
    r = rng(1)
    for dtype in ("int8", "uint8"):
        x = rand_act(r, (2, 3, 4, 5), dtype)
        for sh, sw in ((2, 2), (1, 3), (4, 1)):
            y = ops.upsample_nearest(x, (sh, sw))
            assert y.dtype == x.dtype and y.shape == (2, 3, 4 * sh, 5 * sw)
            i = np.arange(4 * sh)[:, None] // sh
            j = np.arange(5 * sw)[None, :] // sw
            assert np.array_equal(y, x[:, :, i, j])
            scales = helper.make_tensor("sc", TensorProto.FLOAT, [4], [1.0, 1.0, float(sh), float(sw)])
            node = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="nearest",
                                    coordinate_transformation_mode="asymmetric", nearest_mode="floor")
            assert np.array_equal(y, _ort_run(node, x, [scales]))
    assert np.array_equal(ops.upsample_nearest(x, 2), ops.upsample_nearest(x, (2, 2)))


@pytest.mark.parametrize("args, match", [
    ((np.zeros((1, 1, 2, 2), np.int16), 2), "x must have dtype"),
    ((np.zeros((1, 2, 2), np.int8), 2), "x must have 4 dimensions"),
    ((np.zeros((1, 1, 2, 2), np.int8), 0), r"scale\[0\] must be"),
    ((np.zeros((1, 1, 2, 2), np.int8), (2, 1.5)), r"scale\[1\] must be"),
    ((np.zeros((1, 1, 2, 2), np.int8), (2, 2, 2)), "scale must be"),
])
def test_upsample_nearest_rejects(args, match):
    with pytest.raises(ValueError, match=match):
        ops.upsample_nearest(*args)


# ----------------------------------------------------------------- max pool


def _pool_configs():
    r = rng(2)
    cfgs = [  # hand-picked: CenterNet peak NMS, ceil drop rule, dilation, asymmetric pads
        ((3, 3), (1, 1), (1, 1, 1, 1), False, (1, 1), (7, 9)),
        ((2, 2), (2, 2), (1, 1, 1, 1), True, (1, 1), (5, 5)),   # ceil gives 4, last window dropped -> 3
        ((3, 3), (2, 2), (0, 0, 0, 0), True, (1, 1), (6, 8)),
        ((3, 2), (2, 3), (1, 0, 2, 1), True, (2, 1), (9, 10)),
        ((2, 2), (3, 3), (0, 0, 0, 0), True, (1, 1), (5, 7)),
        ((3, 3), (2, 2), (1, 1, 1, 1), True, (2, 2), (8, 8)),
    ]
    while len(cfgs) < 60:
        k = tuple(int(v) for v in r.integers(1, 5, 2))
        s = tuple(int(v) for v in r.integers(1, 4, 2))
        d = tuple(int(v) for v in r.integers(1, 3, 2))
        pads = tuple(int(r.integers(0, k[i % 2])) for i in range(4))  # ORT requires pad < kernel
        hw = tuple(int(v) for v in r.integers(3, 12, 2))
        cfgs.append((k, s, pads, bool(r.integers(0, 2)), d, hw))
    return cfgs


def test_max_pool2d_matches_onnxruntime_and_loop_reference():
    r = rng(3)
    tested = ceil_tested = rejected = 0
    for i, (k, s, pads, ceil, d, (H, W)) in enumerate(_pool_configs()):
        dtype = ("int8", "uint8")[i % 2]
        x = rand_act(r, (2, 3, H, W), dtype)
        if i % 5 == 0:  # windows made only of the minimum code next to padding
            x[:, :, : H // 2, :] = QR[dtype][0]
        try:
            y = ops.max_pool2d(x, k, s, pads, ceil_mode=ceil, dilation=d)
        except ValueError as e:
            assert "covers only padding" in str(e) or "kernel extent" in str(e)
            rejected += 1
            continue
        assert y.dtype == x.dtype
        ref = ort_maxpool(x, k, s, pads, ceil, d)
        assert y.shape == ref.shape, (k, s, pads, ceil, d, (H, W))
        assert int(np.count_nonzero(y != ref)) == 0
        assert np.array_equal(y, loop_maxpool(x, k, s, pads, ceil, d))
        tested += 1
        ceil_tested += ceil
    assert tested >= 45 and ceil_tested >= 15, (tested, ceil_tested, rejected)


def test_max_pool2d_ceil_mode_drops_window_starting_in_right_padding():
    x = np.arange(25, dtype=np.int8).reshape(1, 1, 5, 5)
    assert ops.max_pool2d(x, 2, 2, 1, ceil_mode=True).shape == (1, 1, 3, 3)
    assert ops.max_pool2d(x, 2, 2, 1, ceil_mode=False).shape == (1, 1, 3, 3)
    assert ops.max_pool2d(x, 2, 2, 0, ceil_mode=True).shape == (1, 1, 3, 3)   # last window starts inside
    assert ops.max_pool2d(x, 2, 2, 0, ceil_mode=False).shape == (1, 1, 2, 2)
    # padding never wins, even against the minimum code
    m = np.full((1, 1, 3, 3), -128, np.int8)
    assert np.all(ops.max_pool2d(m, 3, 1, 1) == -128)
    u = np.zeros((1, 1, 3, 3), np.uint8)
    assert np.all(ops.max_pool2d(u, 3, 1, 1) == 0)


@pytest.mark.parametrize("kw, match", [
    (dict(kernel=0), r"kernel\[0\] must be"),
    (dict(kernel=3, stride=(1, 0)), r"stride\[1\] must be"),
    (dict(kernel=3, padding=-1), r"padding\[0\] must be"),
    (dict(kernel=3, padding=(1, 1, 1)), "padding must be"),
    (dict(kernel=3, dilation=0), r"dilation\[0\] must be"),
    (dict(kernel=9), "kernel extent along H"),
    (dict(kernel=2, padding=(0, 0, 2, 0), stride=2, ceil_mode=False), "covers only padding"),
        # H=4, taps at start and start+5: the window starting at -1 hits rows -1 and 4
        (dict(kernel=(2, 1), dilation=(5, 1), padding=(3, 0, 3, 0), stride=1), "covers only padding"),
    (dict(kernel=3, ceil_mode=2), "ceil_mode must be"),
])
def test_max_pool2d_rejects(kw, match):
    x = np.zeros((1, 1, 4, 5), np.int8)
    with pytest.raises(ValueError, match=match):
        ops.max_pool2d(x, **kw)


def test_max_pool2d_rejects_bad_input():
    with pytest.raises(ValueError, match="x must have dtype"):
        ops.max_pool2d(np.zeros((1, 1, 4, 4), np.float32), 2)
    with pytest.raises(ValueError, match="x must have 4 dimensions"):
        ops.max_pool2d(np.zeros((4, 4), np.int8), 2)


# ----------------------------------------------------------------- directional max


def cpool_loop(x, direction):
    """The recurrence of Duankaiwen/CenterNet _cpools (seed the edge, then max with the neighbour)."""
    axis = 2 if direction in ("top", "bottom") else 3
    xs = np.moveaxis(x.astype(np.int64), axis, -1)
    out = np.zeros_like(xs)
    L = xs.shape[-1]
    if direction in ("top", "left"):
        out[..., L - 1] = xs[..., L - 1]
        for ind in range(1, L):
            out[..., L - ind - 1] = np.maximum(xs[..., L - ind - 1], out[..., L - ind])
    else:
        out[..., 0] = xs[..., 0]
        for ind in range(L - 1):
            out[..., ind + 1] = np.maximum(xs[..., ind + 1], out[..., ind])
    return np.moveaxis(out, -1, axis).astype(x.dtype)


def test_directional_max_matches_cpools_recurrence():
    r = rng(4)
    for dtype in ("int8", "uint8"):
        x = rand_act(r, (2, 3, 7, 6), dtype)
        for d in ("top", "bottom", "left", "right"):
            y = ops.directional_max(x, d)
            assert y.dtype == x.dtype
            assert np.array_equal(y, cpool_loop(x, d)), d


def test_directional_max_semantics_by_hand():
    col = np.array([1, 5, 2, 4], np.int8).reshape(1, 1, 4, 1)
    assert ops.directional_max(col, "top").ravel().tolist() == [5, 5, 4, 4]      # max(x[i:])
    assert ops.directional_max(col, "bottom").ravel().tolist() == [1, 5, 5, 5]   # max(x[:i+1])
    row = col.reshape(1, 1, 1, 4)
    assert ops.directional_max(row, "left").ravel().tolist() == [5, 5, 4, 4]
    assert ops.directional_max(row, "right").ravel().tolist() == [1, 5, 5, 5]


def test_directional_max_rejects():
    with pytest.raises(ValueError, match="direction must be one of"):
        ops.directional_max(np.zeros((1, 1, 2, 2), np.int8), "up")
    with pytest.raises(ValueError, match="x must have dtype"):
        ops.directional_max(np.zeros((1, 1, 2, 2), np.int32), "top")


def test_center_pool_is_column_max_plus_row_max():
    r = rng(5)
    a = rand_act(r, (1, 4, 6, 7), "int8")
    b = rand_act(r, (1, 4, 6, 7), "int8")
    y = ops.center_pool(a, 0.05, -3, b, 0.08, 10, 0.1, -5, "int8", act_min=-5)
    col = np.broadcast_to(a.max(axis=2, keepdims=True), a.shape)
    row = np.broadcast_to(b.max(axis=3, keepdims=True), b.shape)
    flat = [add_spec(int(p), 0.05, -3, int(q), 0.08, 10, 0.1, -5, -5, 127) for p, q in zip(col.ravel(), row.ravel())]
    assert np.array_equal(y.ravel(), np.array(flat))


# ----------------------------------------------------------------- add


ADD_CASES = [  # (a_dtype, sa, za, b_dtype, sb, zb, so, zo, out_dtype)
    ("int8", 0.05, -3, "int8", 0.08, 10, 0.1, -5, "int8"),
    ("int8", 0.02, 0, "int8", 0.02, 0, 0.04, 0, "int8"),
    ("uint8", 0.1, 128, "uint8", 0.003, 7, 0.1, 120, "uint8"),
    ("int8", 0.5, 127, "uint8", 0.25, 0, 0.01, -128, "int8"),   # out scale smaller than inputs
    ("int8", 1.0 / 3, -128, "int8", 1.0 / 7, 50, 2.0 / 9, 3, "int8"),
]


def _grid(da, db):
    la, ha = QR[da]
    lb, hb = QR[db]
    a, b = np.meshgrid(np.arange(la, ha + 1), np.arange(lb, hb + 1), indexing="ij")
    return a.astype(da), b.astype(db)


@pytest.mark.parametrize("case", ADD_CASES)
def test_add_requant_matches_tflite_spec_scalar_reference(case):
    da, sa, za, db, sb, zb, so, zo, do = case
    a, b = _grid(da, db)
    y = ops.add_requant(a, sa, za, b, sb, zb, so, zo, do)
    assert y.dtype == np.dtype(do) and y.shape == a.shape
    lo, hi = QR[do]
    r = rng(6)
    idx = r.choice(a.size, 4000, replace=False)
    idx = np.concatenate([idx, [0, a.size - 1, a.shape[1] - 1, a.size - a.shape[1]]])  # grid corners
    ref = [add_spec(int(a.flat[i]), sa, za, int(b.flat[i]), sb, zb, so, zo, lo, hi) for i in idx]
    assert y.ravel()[idx].tolist() == ref


@pytest.mark.parametrize("case", ADD_CASES)
def test_add_requant_within_one_lsb_of_real_result(case):
    da, sa, za, db, sb, zb, so, zo, do = case
    a, b = _grid(da, db)
    y = ops.add_requant(a, sa, za, b, sb, zb, so, zo, do).astype(np.int64)
    sa, sb, so = f32(sa), f32(sb), f32(so)
    real = (sa * (a.astype(np.float64) - za) + sb * (b.astype(np.float64) - zb)) / so + zo
    lo, hi = QR[do]
    ideal = np.clip(np.rint(real), lo, hi)
    err = np.abs(y - ideal)
    assert err.max() <= 1
    # the fixed-point result is nearest-rounded up to ~2**-12 LSB of internal error
    assert np.all(np.abs(y - np.clip(real, lo, hi)) <= 0.5 + 2.0**-10)


def test_add_requant_activation_clamp_broadcast_and_float32_scales():
    r = rng(7)
    a = rand_act(r, (2, 3, 4, 5), "int8")
    b = rand_act(r, (1, 3, 1, 5), "int8")
    full = ops.add_requant(a, 0.1, 0, b, 0.07, 3, 0.15, -10, "int8")
    clamped = ops.add_requant(a, 0.1, 0, b, 0.07, 3, 0.15, -10, "int8", act_min=-10, act_max=30)
    assert np.array_equal(clamped, np.clip(full, -10, 30))
    bb = np.broadcast_to(b, a.shape).copy()
    assert np.array_equal(full, ops.add_requant(a, 0.1, 0, bb, 0.07, 3, 0.15, -10, "int8"))
    # scales are taken as float32, like TFLite stores them
    y64 = ops.add_requant(a, 0.1, 0, b, 0.07, 3, 0.15, -10, "int8")
    y32 = ops.add_requant(a, np.float32(0.1), 0, b, np.float32(0.07), 3, np.float32(0.15), -10, "int8")
    assert np.array_equal(y64, y32)
    p = ops.add_requant_params(0.1, 0.07, 0.15)
    assert p["left_shift"] == 20 and p["a_shift"] <= 0 and p["b_shift"] <= 0 and p["out_shift"] <= 0
    assert (p["a_multiplier"], p["a_shift"]) == qm_spec(f32(0.1) / (2 * f32(0.1)))
    assert (p["out_multiplier"], p["out_shift"]) == qm_spec(2 * f32(0.1) / (2**20 * f32(0.15)))


@pytest.mark.parametrize("kw, match", [
    (dict(a=np.zeros(3, np.int16)), "a must have dtype"),
    (dict(b=np.zeros(4, np.int8)), "broadcast-compatible"),
    (dict(a_scale=0.0), "a_scale must be"),
    (dict(b_scale=float("nan")), "b_scale must be"),
    (dict(a_zp=200), r"a_zp values must lie in \[-128, 127\]"),
    (dict(out_zp=-1, out_dtype="uint8"), r"out_zp values must lie in \[0, 255\]"),
    (dict(out_dtype="int16"), "out_dtype must be"),
    (dict(out_scale=1e-7), "must be < 2\\*\\*19"),
    (dict(act_min=5, act_max=4), "act_min must be <= act_max"),
    (dict(act_max=300), r"act_max must be an integer in \[-128, 127\]"),
])
def test_add_requant_rejects(kw, match):
    args = dict(a=np.zeros(3, np.int8), a_scale=0.1, a_zp=0, b=np.zeros(3, np.int8), b_scale=0.1, b_zp=0,
                out_scale=0.1, out_zp=0, out_dtype="int8")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ops.add_requant(**args)


# ----------------------------------------------------------------- concat


def test_concat_requant_copies_matching_inputs_and_requantizes_others():
    r = rng(8)
    for dtype in ("int8", "uint8"):
        lo, hi = QR[dtype]
        zo = (lo + hi) // 2 + 3
        t0 = rand_act(r, (1, 2, 4, 8), dtype)
        t1 = np.arange(lo, hi + 1).astype(dtype).reshape(1, 8, 4, 8)  # every code
        t2 = rand_act(r, (1, 3, 4, 8), dtype)
        scales, zps = [0.1, 0.037, 0.1], [zo, lo + 5, zo - 7]
        y = ops.concat_requant([t0, t1, t2], scales, zps, 1, 0.1, zo, dtype)
        assert y.dtype == np.dtype(dtype) and y.shape == (1, 13, 4, 8)
        assert np.array_equal(y[:, :2], t0)  # copied exactly
        for t, s, z, sl in ((t1, 0.037, lo + 5, slice(2, 10)), (t2, 0.1, zo - 7, slice(10, 13))):
            q, e = qm_spec(f32(s) / f32(0.1))
            ref = [min(max(mbqm_spec(int(v) - z, q, e) + zo, lo), hi) for v in t.ravel()]
            assert y[:, sl].ravel().tolist() == ref
            real = f32(s) / f32(0.1) * (t.astype(np.float64) - z) + zo
            err = np.abs(y[:, sl].astype(np.int64) - np.clip(real, lo, hi))
            assert np.all(err <= mbqm_err(e) + 1e-6)
        # same scale, different zp: a pure offset
        assert np.array_equal(y[:, 10:], np.clip(t2.astype(np.int64) + 7, lo, hi))
        # the copy path is an optimisation only: requantizing with the identity
        # multiplier QuantizeMultiplier(1.0) = (2**30, 1) reproduces every code
        q1, e1 = qm_spec(1.0)
        assert (q1, e1) == (2**30, 1)
        assert [mbqm_spec(v, q1, e1) for v in range(-255, 256)] == list(range(-255, 256))


def test_concat_requant_vs_tflite_float_branch_measured():
    """TFLite's float branch (float32 scale/bias, round half away) is within 1 LSB; count measured."""
    diffs = total = 0
    codes = np.arange(-128, 128)
    for s_in, z_in in ((0.037, -5), (0.5, 0), (0.07, 100), (0.0123, -128), (0.3, 17)):
        y = ops.concat_requant([codes.astype(np.int8)], [s_in], [z_in], 0, 0.1, 3, "int8").astype(np.int64)
        scale = np.float32(np.float32(s_in) * (np.float32(1.0) / np.float32(0.1)))
        bias = np.float32(-z_in * scale)
        f = (codes.astype(np.float32) * scale + bias).astype(np.float32).astype(np.float64)
        flt = np.clip(np.sign(f) * np.floor(np.abs(f) + 0.5) + 3, -128, 127)
        d = np.abs(y - flt)
        assert d.max() <= 1
        diffs += int(np.count_nonzero(d))
        total += codes.size
    print(f"concat: fixed-point vs TFLite float branch differ on {diffs}/{total} codes (all by 1 LSB)")


@pytest.mark.parametrize("kw, match", [
    (dict(tensors=[]), "tensors must be a non-empty list"),
    (dict(scales=[0.1]), "scales must be a sequence of 2"),
    (dict(zps=[0, 0, 0]), "zps must be a sequence of 2"),
    (dict(tensors=[np.zeros((1, 2, 3, 3), np.int8), np.zeros((1, 2, 3, 3), np.uint8)]), r"tensors\[1\] must have dtype int8"),
    (dict(tensors=[np.zeros((1, 2, 3, 3), np.int8), np.zeros((1, 2, 4, 3), np.int8)]), r"tensors\[1\] shape"),
    (dict(axis=4), r"axis must be an integer in \[-4, 3\]"),
    (dict(scales=[0.1, -1.0]), r"scales\[1\] must be"),
    (dict(zps=[0, 128]), r"zps\[1\] values must lie in"),
    (dict(out_scale=1e-9), r"scales\[0\] / out_scale must be < 2\*\*15"),
])
def test_concat_requant_rejects(kw, match):
    args = dict(tensors=[np.zeros((1, 2, 3, 3), np.int8)] * 2, scales=[0.1, 0.1], zps=[0, 0], axis=1,
                out_scale=0.2, out_zp=0, out_dtype="int8")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ops.concat_requant(**args)


# ----------------------------------------------------------------- relu / relu6


def test_relu_and_relu6_are_clamps():
    for dtype in ("int8", "uint8"):
        lo, hi = QR[dtype]
        x = np.arange(lo, hi + 1).astype(dtype)
        for zp in (lo, lo + 20, (lo + hi) // 2, hi):
            assert np.array_equal(ops.relu(x, zp, dtype), np.clip(x, zp, hi))
            for scale in (6.0 / 255, 0.05, 0.1, 1.0):
                up = min(hi, zp + math.floor(6.0 / scale + 0.5))
                assert ops.relu6_range(scale, zp, dtype) == (zp, up)
                assert np.array_equal(ops.relu6(x, scale, zp, dtype), np.clip(x, zp, up))
    # std::round: half away from zero (6 / 12 = 0.5 -> 1; rint would give 0), 6 / 4 = 1.5 -> 2
    assert ops.relu6_range(12.0, 0, "int8") == (0, 1)
    assert ops.relu6_range(4.0, -3, "int8") == (-3, -1)
    assert ops.relu6_range(1e-30, 0, "int8") == (0, 127)


def test_relu_rejects():
    with pytest.raises(ValueError, match="x must have dtype uint8"):
        ops.relu(np.zeros(3, np.int8), 0, "uint8")
    with pytest.raises(ValueError, match=r"zp values must lie in \[-128, 127\]"):
        ops.relu(np.zeros(3, np.int8), 130, "int8")
    with pytest.raises(ValueError, match="scale must be"):
        ops.relu6(np.zeros(3, np.int8), 0.0, 0, "int8")
    with pytest.raises(ValueError, match="dtype must be"):
        ops.relu6(np.zeros(3, np.int8), 0.1, 0, "float32")


# ----------------------------------------------------------------- prelu


def alpha_spec(alpha: float) -> tuple[int, int]:
    a = f32(alpha)
    if a == 0:
        return 0, 0
    q, e = qm_spec(abs(a))
    return (-q if a < 0 else q), e


def prelu_lane_spec(v: int, aq: int, ash: int) -> int:
    if v >= 0:
        return v
    r = mbqm_spec(v, abs(aq), ash)
    return -r if aq < 0 else r


def test_prelu_requantized_matches_spec_scalar_reference():
    r = rng(9)
    v = np.concatenate([r.integers(-(2**20), 2**20, 3000), r.integers(I32_MIN, I32_MAX, 500, endpoint=True),
                        [I32_MIN, I32_MIN + 1, -1, 0, 1, I32_MAX, -2**30, -3 * 2**29]])
    for alpha in (0.25, 0.1, -0.5, 1.0, 0.0, 1e-12, -3.7, 1.5, 2.0**14):
        aq, ash = ops.quantize_alpha(alpha)
        assert (int(aq), int(ash)) == alpha_spec(alpha)
        y = ops.prelu_requantized(v, aq, ash, axis=None)
        assert y.tolist() == [prelu_lane_spec(int(t), int(aq), int(ash)) for t in v]
        assert y.min() >= I32_MIN and y.max() <= I32_MAX
    # per-channel along axis 1
    alphas = np.array([0.25, -0.75, 0.0])
    aq, ash = ops.quantize_alpha(alphas)
    vv = r.integers(-5000, 5000, (2, 3, 4, 4))
    y = ops.prelu_requantized(vv, aq, ash)
    for c in range(3):
        ref = [prelu_lane_spec(int(t), int(aq[c]), int(ash[c])) for t in vv[:, c].ravel()]
        assert y[:, c].ravel().tolist() == ref


def test_prelu_within_float_bound_and_spec():
    for dtype, out_dtype in (("int8", "int8"), ("uint8", "uint8"), ("int8", "uint8")):
        lo, hi = QR[dtype]
        olo, ohi = QR[out_dtype]
        x = np.tile(np.arange(lo, hi + 1).astype(dtype), (1, 6, 1)).reshape(1, 6, 16, 16)
        alphas = np.array([0.25, 0.1, -0.5, 1.0, 0.0, -1.9])
        for xs, xz, os_, oz in ((0.05, lo + 100, 0.05, olo + 100), (0.05, lo + 60, 0.08, olo + 130),
                                (0.2, lo + 128, 0.07, olo + 40)):
            y = ops.prelu(x, xs, xz, alphas, os_, oz, out_dtype)
            assert y.dtype == np.dtype(out_dtype) and y.shape == x.shape
            y = y.astype(np.int64)
            d = x.astype(np.float64) - xz
            al = alphas.astype(np.float32).astype(np.float64)[None, :, None, None]
            real = np.where(d >= 0, d, al * d) * f32(xs) / f32(os_) + oz
            # v = MBQM(x - zp) carries e1; the lane's MBQM by alpha adds its own rounding e2
            qi, ei = qm_spec(f32(xs) / f32(os_))
            e1 = 0.0 if f32(xs) == f32(os_) else mbqm_err(ei)
            e2 = np.array([0.0 if a == 0 else mbqm_err(alpha_spec(float(a))[1]) for a in alphas])[None, :, None, None]
            bound = np.where(d >= 0, e1, np.abs(al) * e1 + e2) + 1e-6
            assert np.all(np.abs(y - np.clip(real, olo, ohi)) <= bound)
            # the spec: identity multiplier, then the lane, then zero point and clamp
            for c in range(6):
                aq, ash = alpha_spec(float(alphas[c]))
                ref = [min(max(prelu_lane_spec(mbqm_spec(int(t) - xz, qi, ei), aq, ash) + oz, olo), ohi)
                       for t in x[0, c, :2].ravel()]
                assert y[0, c, :2].ravel().tolist() == ref
            if xs == os_ and oz - olo == xz - lo:  # identity multiplier is exact
                pos = d >= 0
                assert np.array_equal(y[pos], np.clip(d[pos] + oz, olo, ohi))
    # alpha = 1 with identical params is the identity; alpha = 0 is ReLU
    x8 = np.arange(-128, 128).astype(np.int8).reshape(1, 1, 16, 16)
    assert np.array_equal(ops.prelu(x8, 0.1, -7, 1.0, 0.1, -7, "int8"), x8)
    assert np.array_equal(ops.prelu(x8, 0.1, -7, 0.0, 0.1, -7, "int8"), ops.relu(x8, -7, "int8"))
    assert np.array_equal(ops.leaky_relu(x8, 0.1, -7, 0.1, 0.1, -7, "int8"),
                          ops.prelu(x8, 0.1, -7, np.array([0.1]), 0.1, -7, "int8"))


@pytest.mark.parametrize("kw, match", [
    (dict(alpha=np.array([0.1, 0.2])), r"alpha must have 1 or 3 values"),
    (dict(alpha=2.0**15), r"\|alpha\| < 2\*\*15"),
    (dict(alpha=float("nan")), "alpha must be finite"),
    (dict(x=np.zeros((1, 3, 2, 2), np.float32)), "x must have dtype"),
    (dict(x_zp=300), r"x_zp values must lie in \[-128, 127\]"),
    (dict(out_scale=1e-9), r"x_scale / out_scale must be < 2\*\*15"),
    (dict(axis=5), r"axis must be an integer in \[-4, 3\]"),
])
def test_prelu_rejects(kw, match):
    args = dict(x=np.zeros((1, 3, 2, 2), np.int8), x_scale=0.1, x_zp=0, alpha=np.array([0.1, 0.2, 0.3]),
                out_scale=0.1, out_zp=0, out_dtype="int8")
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        ops.prelu(**args)


def test_prelu_requantized_and_leaky_relu_reject():
    with pytest.raises(ValueError, match="alpha_q values must lie in"):
        ops.prelu_requantized(np.zeros(3, np.int64), -(2**31), 0, axis=None)
    with pytest.raises(ValueError, match=r"alpha_shift values must lie in \[-31, 15\]"):
        ops.prelu_requantized(np.zeros(3, np.int64), 1 << 30, 16, axis=None)
    with pytest.raises(ValueError, match="v values must lie in"):
        ops.prelu_requantized(np.array([2**31]), 1 << 30, 0, axis=None)
    with pytest.raises(ValueError, match="alpha must be a scalar"):
        ops.leaky_relu(np.zeros((1, 2), np.int8), 0.1, 0, [0.1, 0.2], 0.1, 0, "int8")


# ----------------------------------------------------------------- LUT


def _sig(x):
    return ops.sigmoid_f64(x)


@pytest.mark.parametrize("fn, sigma", [(_sig, None), (_sig, ops.SIGMOID_SIGMA), (np.tanh, None), (np.tanh, ops.TANH_SIGMA)])
def test_make_lut_equals_per_code_float_evaluation(fn, sigma):
    for in_dtype, in_scale, in_zp, out_dtype, out_scale, out_zp in (
            ("int8", 0.08, -3, "int8", 1 / 256, -128), ("uint8", 0.05, 128, "uint8", 1 / 256, 0),
            ("int8", 0.1, 0, "int8", 1 / 128, 0), ("uint8", 0.031, 90, "int8", 0.0079, 5)):
        lut = ops.make_lut(fn, in_scale, in_zp, in_dtype, out_scale, out_zp, out_dtype, sigma=sigma)
        assert lut.shape == (256,) and lut.dtype == np.dtype(out_dtype)
        lo, hi = QR[in_dtype]
        olo, ohi = QR[out_dtype]
        for q in range(lo, hi + 1):
            xv = in_scale * (q - in_zp)
            if sigma is not None:
                xv = min(max(xv, -sigma), sigma)
            yv = float(fn(np.float64(xv)))
            ref = min(max(round(yv / out_scale) + out_zp, olo), ohi)  # Python round: half to even
            assert int(lut[q - lo]) == ref, (q, xv)


def test_make_lut_rounds_half_to_even():
    ident = lambda x: x  # noqa: E731
    lut = ops.make_lut(ident, 0.5, 0, "int8", 1.0, 0, "int8")
    x = np.arange(-128, 128) * 0.5
    assert np.array_equal(lut, np.clip(np.rint(x), -128, 127))
    assert lut[1 + 128] == 0 and lut[3 + 128] == 2 and lut[-1 + 128] == 0 and lut[-3 + 128] == -2


def test_sigma_trick_error_measured_and_bounded():
    """Max |LUT(sigma) - LUT(exact)| over many quantizations: <= 1 LSB, reached only for |x| > sigma."""
    worst = {}
    for name, fn, sigma, outs in (
            ("sigmoid", _sig, ops.SIGMOID_SIGMA, (("int8", 1 / 256, -128), ("uint8", 1 / 256, 0), ("uint8", 1 / 255, 0))),
            ("tanh", np.tanh, ops.TANH_SIGMA, (("int8", 1 / 128, 0), ("uint8", 1 / 128, 128)))):
        for out_dtype, out_scale, out_zp in outs:
            m = 0
            for in_scale in np.geomspace(0.02, 0.5, 40):
                for in_dtype, in_zp in (("int8", 0), ("int8", -40), ("uint8", 128)):
                    a = ops.make_lut(fn, in_scale, in_zp, in_dtype, out_scale, out_zp, out_dtype, sigma=sigma)
                    b = ops.make_lut(fn, in_scale, in_zp, in_dtype, out_scale, out_zp, out_dtype)
                    d = np.abs(a.astype(np.int64) - b.astype(np.int64))
                    lo = QR[in_dtype][0]
                    xr = in_scale * (np.arange(256) + lo - in_zp)
                    assert np.all(d[np.abs(xr) <= sigma] == 0)
                    m = max(m, int(d.max()))
            worst[(name, out_dtype, round(out_scale, 6))] = m
    assert max(worst.values()) <= 1, worst
    # the trick is not free: with scale 1/255 the clipped sigmoid tops out at 254, not 255
    assert worst[("sigmoid", "uint8", round(1 / 255, 6))] == 1
    print("sigma-trick worst-case LSB differences:", worst)


def test_apply_lut():
    r = rng(11)
    for in_dtype in ("int8", "uint8"):
        lut = r.integers(0, 256, 256).astype(np.uint8)
        x = rand_act(r, (2, 3, 4, 5), in_dtype)
        y = ops.apply_lut(x, lut, in_dtype)
        lo = QR[in_dtype][0]
        assert y.dtype == np.uint8
        assert [int(v) for v in y.ravel()] == [int(lut[int(q) - lo]) for q in x.ravel()]
    with pytest.raises(ValueError, match="x must have dtype int8"):
        ops.apply_lut(np.zeros(3, np.uint8), lut, "int8")
    with pytest.raises(ValueError, match=r"lut must have shape \(256,\)"):
        ops.apply_lut(np.zeros(3, np.int8), lut[:255], "int8")
    with pytest.raises(ValueError, match="lut must have dtype"):
        ops.apply_lut(np.zeros(3, np.int8), lut.astype(np.int16), "int8")


@pytest.mark.parametrize("kw, match", [
    (dict(fn=3), "fn must be callable"),
    (dict(in_scale=0.0), "in_scale must be"),
    (dict(out_zp=256, out_dtype="uint8"), r"out_zp values must lie in \[0, 255\]"),
    (dict(sigma=-1.0), "sigma must be None or a finite number"),
    (dict(sigma="6"), "sigma must be None or a finite number"),
    (dict(fn=lambda x: x[:3]), "fn must return an array of shape"),
    (dict(fn=lambda x: x / 0.0), "fn must return finite values"),
    (dict(in_dtype="int4"), "in_dtype must be"),
])
def test_make_lut_rejects(kw, match):
    args = dict(fn=np.tanh, in_scale=0.1, in_zp=0, in_dtype="int8", out_scale=1 / 128, out_zp=0, out_dtype="int8")
    args.update(kw)
    with pytest.raises(ValueError, match=match), np.errstate(divide="ignore", invalid="ignore"):
        ops.make_lut(**args)
