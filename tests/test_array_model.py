"""golden/array_model.py: values against obviously-correct computations, timing against docs/array.md.

Values: int64 matmul + golden.requant.requantize_tflite per channel (plus
golden.ops.prelu_requantized for PReLU lanes), a scalar pure-Python rendering
of the lane formulas, and golden.packing's packed-DSP dot products.
Timing: the contract's formulas evaluated independently in the test on the
cycle trace (en, n(t), ready rules, FIFO level/claimed, out rows).
"""
from __future__ import annotations

import numpy as np
import pytest

from golden._check import INT32_MAX, INT32_MIN
from golden.array_model import (LANE_FIELDS, ORT_LANE_FIELDS, ArrayModel, check_params, neutral_params, params_from_layer,
                                postprocess, simulate, tile_value)
from golden.config import PARAM_CREDIT_CYCLES, REQUANT_LATENCY, ArrayConfig
from golden.ops import prelu_requantized
from golden.packing import packed_dot
from golden.requant import ort_scale, requantize_tflite

CFGS = [ArrayConfig(), ArrayConfig(rows=3, cols=2), ArrayConfig(rows=1, cols=1, weight_min=-128),
        ArrayConfig(rows=4, cols=3, packing="none", param_fifo_depth=1), ArrayConfig(rows=5, cols=1, param_fifo_depth=2)]


# ---------------------------------------------------------------- references

def ref_codes(acc, p, lut=None):
    """Per-channel reference: requantize_tflite (or requantize_ort_float on mode-1 lanes) on sat32(acc + bias),
    PReLU from golden.ops, then & 0xFF / LUT."""
    acc = np.asarray(acc, np.int64)
    out = np.zeros(acc.shape, np.int64)
    for lane in range(acc.shape[-1]):
        t = np.clip(acc[..., lane] + p["bias"][lane], INT32_MIN, INT32_MAX)
        if "mode" in p and p["mode"][lane]:
            s32 = np.array([p["scale_f32"][lane]], np.uint32).view(np.float32)
            zp, lo, hi = int(p["zp"][lane]), int(p["act_min"][lane]), int(p["act_max"][lane])
            with np.errstate(over="ignore", under="ignore"):      # the float32 statement, vectorised
                f = t.astype(np.int32).astype(np.float32) * s32[0]
            q = np.rint(np.clip(f, np.float32(lo - zp), np.float32(hi - zp))).astype(np.int64) + zp
        elif p["prelu"][lane]:
            v = requantize_tflite(t, p["mult"][lane], p["shift"][lane], 0, INT32_MIN, INT32_MAX)
            v = prelu_requantized(v, p["alpha_mult"][lane], p["alpha_shift"][lane], axis=None)
            q = np.clip(v + p["zp"][lane], p["act_min"][lane], p["act_max"][lane])
        else:
            q = requantize_tflite(t, p["mult"][lane], p["shift"][lane], p["zp"][lane],
                                  p["act_min"][lane], p["act_max"][lane])
        out[..., lane] = q & 0xFF
    if p.get("lut_en"):
        out = np.asarray(lut)[out]
    return out


def _srdhm_py(a: int, b: int) -> int:
    if a == b == INT32_MIN:
        return INT32_MAX
    ab = a * b
    num = ab + (2**30 if ab >= 0 else 1 - 2**30)
    q = abs(num) >> 31
    return q if num >= 0 else -q                    # C division truncates toward zero


def _rdbpot_py(x: int, e: int) -> int:
    mask = (1 << e) - 1
    rem = x & mask
    threshold = (mask >> 1) + (1 if x < 0 else 0)
    return (x >> e) + (1 if rem > threshold else 0)


def _mbqm_py(x: int, m: int, s: int) -> int:
    shl = max(min(x * 2 ** max(s, 0), INT32_MAX), INT32_MIN)
    return _rdbpot_py(_srdhm_py(shl, m), max(-s, 0))


def _ort_py(t: int, bits: int, lo: int, hi: int) -> int:
    """ort mode on one value as plain float32 arithmetic (NumPy scalars, IEEE RNE): the statement of docs/array.md."""
    scale = np.array([bits], np.uint32).view(np.float32)[0]
    with np.errstate(over="ignore", under="ignore"):
        f = np.float32(np.float32(t) * scale)
    f = min(max(f, np.float32(lo)), np.float32(hi))
    return int(np.rint(f))


def lane_py(acc: int, p: dict, lane: int, lut=None) -> int:
    """docs/array.md lane semantics, one value, Python integers (float32 scalars for ort mode)."""
    g = {f: int(p[f][lane]) if f in p else 0 for f in LANE_FIELDS}
    t = max(min(acc + g["bias"], INT32_MAX), INT32_MIN)
    if g["mode"]:
        q = _ort_py(t, g["scale_f32"], g["act_min"] - g["zp"], g["act_max"] - g["zp"]) + g["zp"]
    else:
        v = _mbqm_py(t, g["mult"], g["shift"])
        if g["prelu"] and v < 0:
            v = _mbqm_py(v, g["alpha_mult"], g["alpha_shift"])
        q = max(min(v + g["zp"], g["act_max"]), g["act_min"])
    return int(lut[q & 0xFF]) if p.get("lut_en") else q & 0xFF


def rand_params(rng, cfg, acc=None, lut_en=0, corner=False, ort=False):
    """Per-lane params; 'typical' scales map acc + bias onto ~8 bits, 'corner' hits saturations/edges.
    ``ort``: about half the lanes in ort mode (mode = 1, a float32 scale, prelu 0)."""
    L = cfg.out_lanes
    bl = 2**(cfg.bias_width - 1)
    zp, lo, hi = np.zeros(L, np.int64), np.zeros(L, np.int64), np.zeros(L, np.int64)
    for i in range(L):
        qmin, qmax = ((-128, 127), (0, 255))[int(rng.integers(0, 2))]
        z = int(rng.integers(qmin, qmax + 1))
        a = int(rng.choice([qmin, max(qmin, z), int(rng.integers(qmin, qmax + 1))]))
        b = int(rng.choice([qmax, int(rng.integers(a, qmax + 1))]))
        zp[i], lo[i], hi[i] = z, a, b
    p = {"bias": rng.integers(-2**20, 2**20, L), "zp": zp, "act_min": lo, "act_max": hi,
         "alpha_mult": rng.integers(2**30, 2**31, L), "alpha_shift": rng.integers(-8, 1, L),
         "prelu": rng.integers(0, 2, L), "mult": rng.integers(2**30, 2**31, L), "lut_en": lut_en}
    if acc is not None:
        mag = np.abs(np.asarray(acc) + p["bias"]).max(axis=tuple(range(np.ndim(acc) - 1))) + 1
        p["shift"] = np.clip(8 - np.ceil(np.log2(mag)).astype(np.int64) + rng.integers(-2, 3, L), -31, 15)
    else:
        p["shift"] = rng.integers(-31, 16, L)
    if corner:
        p["bias"] = rng.choice(np.array([-bl, bl - 1, INT32_MIN, INT32_MAX, 0, -bl + 1]), L)
        p["mult"] = rng.choice(np.array([0, 1, 2**30, 2**31 - 1]), L)
        p["shift"] = rng.choice(np.array([-31, -30, -1, 0, 1, 14, 15]), L)
        p["alpha_mult"] = rng.choice(np.array([0, 1, 2**30, 2**31 - 1]), L)
        p["alpha_shift"] = rng.choice(np.array([-31, 0, 15]), L)
    p["mode"] = rng.integers(0, 2, L) if ort else np.zeros(L, np.int64)
    # float32 scale ~ 2**(shift - 8) (the typical magnitude), rounding ties included (power-of-two scales)
    sc = (2.0 ** (p["shift"] - 8.0) * rng.choice([1.0, rng.uniform(0.5, 2.0)], L)).astype(np.float32)
    if corner:
        sc = rng.choice(np.array([1, 0x7F7FFFFF, 0x3F800000, 0x00800000, 0x2B800000, 0x4B000000],
                                 np.uint32).view(np.float32), L)
    p["scale_f32"] = sc.view(np.uint32).astype(np.int64)
    p["prelu"] = np.where(p["mode"] == 1, 0, p["prelu"])
    return p


def rand_tile(rng, cfg, k, kind="random"):
    if kind == "max":
        return np.full((cfg.rows, k), -128), np.full((k, cfg.out_lanes), cfg.weight_min)
    if kind == "min":
        return np.full((cfg.rows, k), -128), np.full((k, cfg.out_lanes), 127)
    return rng.integers(-128, 128, (cfg.rows, k)), rng.integers(cfg.weight_min, 128, (k, cfg.out_lanes))


# ---------------------------------------------------------------- lane values

def test_postprocess_equals_requantize_tflite_and_scalar_reference():
    rng = np.random.default_rng(11)
    cfg = ArrayConfig(rows=8, cols=8)
    lut = rng.integers(0, 256, 256)
    for trial in range(60):
        acc = rng.integers(-2**34, 2**34, (16, cfg.out_lanes)) >> int(rng.integers(0, 34))
        p = rand_params(rng, cfg, acc, lut_en=trial % 3 == 0, corner=trial % 4 == 1, ort=trial % 2 == 1)
        got = postprocess(acc, p, lut)
        assert got.dtype == np.uint8
        assert np.array_equal(got, ref_codes(acc, p, lut))
        for i, lane in zip(rng.integers(0, 16, 20), rng.integers(0, cfg.out_lanes, 20)):
            assert int(got[i, lane]) == lane_py(int(acc[i, lane]), p, lane, lut)


def test_postprocess_edge_values():
    """INT32 extremes through every stage: sat32, the left shift saturation, mult = 2**31 - 1, PReLU."""
    L = 8
    edges = np.array([INT32_MIN, INT32_MIN + 1, -1, 0, 1, INT32_MAX - 1, INT32_MAX, 2**33, -(2**33)])
    acc = np.repeat(edges[:, None], L, axis=1)
    p = {"bias": np.array([0, -1, 1, 0, 0, 0, 0, 0]), "mult": np.array([2**31 - 1, 2**30, 1, 0, 2**31 - 1, 2**30, 2**30, 2**31 - 1]),
         "shift": np.array([0, 1, 15, 0, 15, -31, -1, 0]), "zp": np.array([0, 5, -256, 255, 0, 0, -128, 127]),
         "act_min": np.array([-128, -128, -128, 0, 0, -128, -128, 0]), "act_max": np.array([127, 127, 127, 255, 255, 127, 127, 255]),
         "alpha_mult": np.array([2**31 - 1, 2**30, 1, 0, 2**31 - 1, 2**30, 0, 2**30]),
         "alpha_shift": np.array([15, 0, -31, 0, 15, 1, 0, -3]), "prelu": np.array([1, 1, 1, 1, 0, 1, 1, 1])}
    got = postprocess(acc, p)
    exp = np.array([[lane_py(int(a), p, lane) for lane in range(L)] for a in edges])
    assert np.array_equal(got, exp)
    assert np.array_equal(got, ref_codes(acc, p))


def test_postprocess_int8_and_uint8_codes_are_bit_patterns():
    p = neutral_params(ArrayConfig(rows=1, cols=1))
    p.update(mult=np.array([2**30, 2**30]), shift=np.array([1, 1]), act_min=np.array([-128, 0]),
             act_max=np.array([127, 255]))                       # MBQM(x, 2**30, 1) = x
    acc = np.array([[-128, 255], [-1, 128], [127, 0], [-200, 300]])
    assert postprocess(acc, p).tolist() == [[0x80, 255], [0xFF, 128], [127, 0], [0x80, 255]]


def test_params_layouts_agree_and_are_checked():
    cfg = ArrayConfig(rows=2, cols=2)
    p = rand_params(np.random.default_rng(0), cfg)
    lanes = {"lane": [{f: int(p[f][i]) for f in LANE_FIELDS} for i in range(cfg.out_lanes)], "lut_en": 1}
    a, b = check_params(dict(p, lut_en=1), cfg.out_lanes, cfg.bias_width), check_params(lanes, cfg.out_lanes, cfg.bias_width)
    assert all(np.array_equal(a[f], b[f]) for f in LANE_FIELDS) and a["lut_en"] == b["lut_en"] == 1
    bad = [("shift", 16, "shift"), ("shift", -32, "shift"), ("mult", 2**31, "mult"), ("mult", -1, "mult"),
           ("zp", 256, "zp"), ("act_min", -129, "act_min"), ("act_max", 256, "act_max"),
           ("alpha_shift", 16, "alpha_shift"), ("prelu", 2, "prelu"),
           ("bias", 2**(cfg.bias_width - 1), "bias")]
    for f, v, msg in bad:
        q = dict(p)
        q[f] = np.full(cfg.out_lanes, v)
        with pytest.raises(ValueError, match=msg):
            check_params(q, cfg.out_lanes, cfg.bias_width)
    with pytest.raises(ValueError, match="act_min <= act_max"):
        check_params(dict(p, act_min=np.full(4, 10), act_max=np.full(4, 9)), 4)
    with pytest.raises(ValueError, match="255"):
        check_params(dict(p, act_min=np.full(4, -128), act_max=np.full(4, 128)), 4)
    with pytest.raises(ValueError, match="out_lanes = 4"):
        check_params(dict(p, bias=np.zeros(3, np.int64)), 4)
    with pytest.raises(ValueError, match="missing"):
        check_params({"bias": p["bias"]}, 4)
    with pytest.raises(ValueError, match="lut_en"):
        check_params(dict(p, lut_en=2), 4)


def test_ort_mode_fields_checked_and_optional():
    """mode/scale_f32: ranges, a positive finite float32 on mode-1 lanes, prelu 0 there; a payload without
    the two fields (a layout predating ort mode) reads as mode 0 in both layouts."""
    cfg = ArrayConfig(rows=2, cols=2)
    p = rand_params(np.random.default_rng(3), cfg, ort=True)
    p["mode"] = np.array([1, 0, 1, 0])
    p["prelu"] = np.array([0, 1, 0, 1])
    for bits, msg in ((0, "positive finite"), (0x7F800000, "positive finite"), (0x7FC00000, "positive finite"),
                      (0x80000001, "positive finite"), (2**32, "scale_f32")):
        with pytest.raises(ValueError, match=msg):
            check_params(dict(p, scale_f32=np.full(4, bits)), 4)
    with pytest.raises(ValueError, match="prelu must be 0"):
        check_params(dict(p, prelu=np.array([1, 1, 0, 0])), 4)
    with pytest.raises(ValueError, match="mode"):
        check_params(dict(p, mode=np.full(4, 2)), 4)
    ok = check_params(dict(p, scale_f32=np.array([1, 0, 0x7F7FFFFF, 0])), 4)      # mode-0 lanes: any bits
    assert ok["mode"].tolist() == [1, 0, 1, 0]
    old = {f: p[f] for f in LANE_FIELDS if f not in ORT_LANE_FIELDS}
    for q in (old, {"lane": [{f: int(old[f][i]) for f in old} for i in range(4)]}):
        c = check_params(q, 4)
        assert c["mode"].tolist() == [0] * 4 and c["scale_f32"].tolist() == [0] * 4
    with pytest.raises(ValueError, match="missing field 'mode'"):          # some lanes with, some without
        check_params({"lane": [dict({f: int(p[f][i]) for f in LANE_FIELDS}) if i else
                               {f: int(old[f][i]) for f in old} for i in range(4)]}, 4)


def test_ort_mode_lane_equals_requantize_ort():
    """A mode-1 lane is golden.requant.requantize_ort of sat32(acc + bias) for any clamp (also one that
    excludes the zero point), on every accumulator range incl. float32 rounding of |t| >= 2**24 and ties."""
    from golden.requant import requantize_ort
    cfg = ArrayConfig(rows=4, cols=4)
    rng = np.random.default_rng(21)
    for trial in range(40):
        acc = rng.integers(-2**33, 2**33, (64, cfg.out_lanes)) >> int(rng.integers(0, 33))
        scale = (2.0 ** rng.integers(-30, -2, cfg.out_lanes) * rng.choice([1.0, 1.5, rng.uniform(1, 2)],
                                                                           cfg.out_lanes)).astype(np.float32)
        zp = rng.integers(-128, 128, cfg.out_lanes)
        lo = np.minimum(rng.integers(-128, 128, cfg.out_lanes), zp + rng.integers(-5, 40, cfg.out_lanes)).clip(-128, 127)
        hi = np.maximum(lo, rng.integers(-128, 128, cfg.out_lanes))
        bias = rng.integers(-2**30, 2**30, cfg.out_lanes)
        p = params_from_layer(cfg, scale, bias=bias, zp_out=zp, act_min=lo, act_max=hi, mode="ort")
        assert p["mode"].tolist() == [1] * cfg.out_lanes and p["mult"].tolist() == [0] * cfg.out_lanes
        got = postprocess(acc, p).astype(np.int64)
        t = np.clip(acc + bias, INT32_MIN, INT32_MAX)
        for lane in range(cfg.out_lanes):
            c = min(max(int(zp[lane]), int(lo[lane])), int(hi[lane]))
            # requantize_ort needs zp in [qmin, qmax]: clamping after the rounding commutes with it
            exp = np.clip(requantize_ort(t[:, lane], scale[lane], c, -2**23, 2**23) - c + zp[lane], lo[lane], hi[lane])
            assert np.array_equal(got[:, lane], exp & 0xFF), (trial, lane)
        for i, lane in zip(rng.integers(0, 64, 10), rng.integers(0, cfg.out_lanes, 10)):
            assert int(got[i, lane]) == lane_py(int(acc[i, lane]), p, lane)
    # mixed lanes: tflite and ort side by side, and ort refuses PReLU / non-float32 scales
    p = params_from_layer(cfg, np.float32(0.25), mode="ort")
    assert p["mode"].tolist() == [1] + [0] * 7 and p["scale_f32"][0] == 0x3E800000
    for bad in ({"multiplier": 0.1, "mode": "ort"}, {"multiplier": np.float32(-1), "mode": "ort"},
                {"multiplier": np.float32(0.5), "mode": "ort", "alpha": 0.1}, {"multiplier": 0.5, "mode": "x"}):
        m = bad.pop("multiplier")
        with pytest.raises(ValueError):
            params_from_layer(cfg, m, **bad)


# ---------------------------------------------------------------- tile values

@pytest.mark.parametrize("cfg", CFGS[:3], ids=lambda c: f"{c.rows}x{c.cols}{c.packing}{c.weight_min}")
def test_tile_value_equals_matmul_and_packed_dsp(cfg):
    rng = np.random.default_rng(cfg.rows * 31 + cfg.cols)
    for k, kind in [(1, "random"), (cfg.chain, "max"), (cfg.chain + 1, "max"), (3 * cfg.chain + 2, "min"),
                    (577, "random"), (577, "max")]:
        act, wgt = rand_tile(rng, cfg, k, kind)
        acc = act @ wgt
        # the accumulator the packed PE builds (chains of cfg.chain, unpacked, summed) is the same
        # PE(i, j): w_hi = lane 2j+1, w_lo = lane 2j, x = pixel i; shapes (rows, cols, K)
        hi, lo = packed_dot(wgt[:, 1::2].T[None], wgt[:, 0::2].T[None], act[:, None, :],
                            weight_min=cfg.weight_min, chain=cfg.chain)
        assert np.array_equal(lo, acc[:, 0::2]) and np.array_equal(hi, acc[:, 1::2])
        p = rand_params(rng, cfg, acc)
        assert np.array_equal(tile_value(cfg, act, wgt, p), ref_codes(acc, p))


def test_params_from_layer_folds_zero_point_exactly():
    """uint8 activations with zero point zp: the host feeds x - 128 and zp_in = zp - 128;
    the lanes must equal requantize_tflite(sum((x - zp) * w) + bias)."""
    cfg = ArrayConfig(rows=4, cols=4)
    rng = np.random.default_rng(5)
    for _ in range(20):
        K = int(rng.integers(1, 300))
        x_u8 = rng.integers(0, 256, (cfg.rows, K))
        zp_u8 = int(rng.integers(0, 256))
        w = rng.integers(-127, 128, (K, cfg.out_lanes))
        bias = rng.integers(-2**16, 2**16, cfg.out_lanes)
        mult = np.exp(rng.uniform(np.log(1e-5), np.log(2.0), cfg.out_lanes))
        zp_out = int(rng.integers(0, 256))
        p = params_from_layer(cfg, mult, bias=bias, zp_out=zp_out, act_min=0, act_max=255,
                              zp_in=zp_u8 - 128, w_sum=w.sum(axis=0))
        got = tile_value(cfg, x_u8 - 128, w, p)
        acc_true = (x_u8 - zp_u8) @ w + bias
        from golden.requant import quantize_multiplier
        q, s = quantize_multiplier(mult)
        exp = requantize_tflite(acc_true, q, s, zp_out, 0, 255, axis=-1)
        assert np.array_equal(got, exp)
    # PReLU slopes and partial tiles (fewer channels than lanes: the rest are neutral, code 0)
    p = params_from_layer(cfg, [0.5, 0.25], alpha=[0.125, 0.5])
    assert p["prelu"].tolist() == [1, 1] + [0] * (cfg.out_lanes - 2) and p["mult"][2:].tolist() == [0] * 6
    acc = np.array([[-64, -64] + [5] * 6])
    assert postprocess(acc, p).tolist() == [[(-4) & 0xFF, (-8) & 0xFF] + [0] * 6]
    for bad in ({"multiplier": 2.0**15}, {"multiplier": 0.0}, {"multiplier": [0.5] * 9},
                {"multiplier": 0.5, "alpha": -0.1}, {"multiplier": 0.5, "bias": 2**31},
                {"multiplier": 0.5, "zp_in": 128}):
        m = bad.pop("multiplier")
        with pytest.raises(ValueError):
            params_from_layer(cfg, m, **bad)


# ---------------------------------------------------------------- timing helpers

def check_trace(cfg, trace, model):
    """Evaluate docs/array.md on the cycle trace, independently of the model's internals."""
    AL, LAT, R = cfg.array_latency, cfg.latency, cfg.rows
    assert LAT == AL + REQUANT_LATENCY
    n = 0
    acc_last = []          # (cycle, n) of accepted last beats
    pushes = []            # cycles of params transfers
    expected_out = {}      # n -> (tile, row)
    for tile_i, rec in enumerate(model.tiles):
        for r in range(R):
            expected_out[rec.e + LAT + r] = (tile_i, r)
    pop_n = {rec.e + AL + R - 1 for rec in model.tiles}
    pops = []              # cycles of pops
    prev_payload, prev_n = None, None
    for c, s in enumerate(trace):
        d = s["drive"]
        assert s["cycle"] == c and s["n"] == n
        # global enable and frozen output
        assert s["en"] == int(not s["out_valid"] or d["out_ready"])
        exp = expected_out.get(n)
        assert s["out_valid"] == int(exp is not None)
        if exp is not None:
            assert (s["out_tile"], s["out_row"]) == exp
            assert s["out_payload"]["last"] == int(exp[1] == R - 1)
            if prev_n == n:
                assert s["out_payload"] == prev_payload       # frozen through the stall
        # FIFO registers from the event history
        level = sum(1 for p in pushes if p < c) - sum(1 for p in pops if p < c)
        claimed = sum(1 for a in acc_last if a[0] < c) - sum(1 for p in pops if p < c)
        assert s["params_ready"] == int(level < cfg.param_fifo_depth)
        gap_ok = not acc_last or n - acc_last[-1][1] >= R
        # a push counts for the credit from PARAM_CREDIT_CYCLES after its cycle
        credit = level - claimed - sum(1 for p in pushes if p > c - PARAM_CREDIT_CYCLES) > 0
        assert s["in_ready"] == int(s["en"] and (not d["in_last"] or (gap_ok and credit)))
        if s["in_fire"] and d["in_last"]:
            acc_last.append((c, n))
        if s["params_fire"]:
            pushes.append(c)
        if s["en"] and n in pop_n:
            pops.append(c)
        prev_payload, prev_n = s["out_payload"], n
        n += s["en"]
    assert [a[1] for a in acc_last] == [rec.e for rec in model.tiles]
    assert [a[0] for a in acc_last] == [rec.accept_cycle for rec in model.tiles]
    return acc_last


def run_random(cfg, seed, n_tiles, p_in, p_par, p_out, lut=None, kmax=None):
    rng = np.random.default_rng(seed)
    kmax = kmax or 3 * cfg.rows
    tiles, plist = [], []
    for t in range(n_tiles):
        k = int(rng.choice([1, 2, cfg.rows - 1 if cfg.rows > 1 else 1, cfg.rows, int(rng.integers(1, kmax + 1))]))
        act, wgt = rand_tile(rng, cfg, k, ("random", "max", "min")[t % 3])
        tiles.append((act, wgt))
        plist.append(rand_params(rng, cfg, act @ wgt, lut_en=int(lut is not None and t % 2 == 0), corner=t % 5 == 4,
                                 ort=t % 3 == 1))
    model, trace = ArrayModel(cfg), []
    out = simulate(cfg, tiles, plist, lut=lut, seed=seed, in_valid=p_in, params_valid=p_par, out_ready=p_out,
                   model=model, trace=trace)
    return tiles, plist, out, model, trace


# ---------------------------------------------------------------- timing

@pytest.mark.parametrize("cfg", CFGS, ids=lambda c: f"{c.rows}x{c.cols}{c.packing}d{c.param_fifo_depth}")
def test_random_backpressure_all_rows_once_in_order(cfg):
    for seed, (p_in, p_par, p_out) in enumerate([(1.0, 1.0, 1.0), (0.7, 0.5, 0.6), (1.0, 0.2, 0.3),
                                                  (0.3, 1.0, 0.9), (1.0, 1.0, 0.1)]):
        lut = np.random.default_rng(seed).integers(0, 256, 256) if seed % 2 else None
        tiles, plist, out, model, trace = run_random(cfg, 100 * cfg.rows + seed, 14, p_in, p_par, p_out, lut)
        # every row of every tile exactly once, in order, with the reference value
        assert len(out) == len(tiles) * cfg.rows
        for t, (act, wgt) in enumerate(tiles):
            exp = ref_codes(act @ wgt, check_params(plist[t], cfg.out_lanes), lut)
            for r in range(cfg.rows):
                c, payload = out[t * cfg.rows + r]
                assert payload["data"] == exp[r].tolist()
                assert payload["last"] == int(r == cfg.rows - 1)
        assert [tr[1:3] for tr in model.transfers] == [(t, r) for t in range(len(tiles)) for r in range(cfg.rows)]
        acc_last = check_trace(cfg, trace, model)
        # row r transfers on the enabled cycle e + latency + r (n of that cycle)
        for rec in model.tiles:
            for r, c in enumerate(rec.out_cycles):
                assert trace[c]["n"] == rec.e + cfg.latency + r and trace[c]["out_fire"]
        # minimum tile gap in enabled cycles
        assert all(b[1] - a[1] >= cfg.rows for a, b in zip(acc_last, acc_last[1:]))
        assert model.idle()


def _expected_accepts(cfg, ks, start):
    """Full-rate input, params all present, no backpressure: the last beat of tile j is offered on
    cycle s_j (right after the tile's other beats) and accepted on max(s_j, a_{j-1} + rows)."""
    acc, c = [], start
    for k in ks:
        s = c + k - 1
        a = s if not acc else max(s, acc[-1] + cfg.rows)
        acc.append(a)
        c = a + 1
    return acc


@pytest.mark.parametrize("cfg", [ArrayConfig(rows=4, cols=3, param_fifo_depth=16), ArrayConfig(param_fifo_depth=16),
                                 ArrayConfig(rows=1, cols=2, param_fifo_depth=16)], ids=str)
def test_no_backpressure_latency_and_min_gap(cfg):
    rng = np.random.default_rng(3)
    ks = [1, 1, 2, cfg.rows, cfg.rows + 1, 1, max(cfg.rows - 1, 1), 3 * cfg.rows, 1, 1, 2, 5]
    tiles = [rand_tile(rng, cfg, k) for k in ks]
    plist = [rand_params(rng, cfg, a @ w) for a, w in tiles]
    start = 16                                            # params fill the FIFO on cycles 0..11 first
    model, trace = ArrayModel(cfg), []
    simulate(cfg, tiles, plist, in_valid=[0] * start, model=model, trace=trace)
    accepts = _expected_accepts(cfg, ks, start)
    assert [rec.accept_cycle for rec in model.tiles] == accepts
    assert [rec.e for rec in model.tiles] == accepts       # no stall: n(t) = t
    for rec in model.tiles:
        assert rec.out_cycles == [rec.accept_cycle + cfg.latency + r for r in range(cfg.rows)]
    # short tiles are held exactly until the gap allows them
    gaps = np.diff(accepts)
    assert gaps.min() == cfg.rows
    check_trace(cfg, trace, model)


def test_param_credit_blocks_last_beat_until_params_arrive():
    cfg = ArrayConfig(rows=2, cols=2)
    m = ArrayModel(cfg)
    rng = np.random.default_rng(0)
    act, wgt = rand_tile(rng, cfg, 3)
    p = rand_params(rng, cfg, act @ wgt)
    beat = lambda k: {"act": act[:, k], "wgt": wgt[k], "last": int(k == 2)}
    assert m.step(in_valid=1, in_payload=beat(0))["in_fire"] == 1
    assert m.step(in_valid=1, in_payload=beat(1))["in_fire"] == 1
    for _ in range(20):                                  # no params in the FIFO: the last beat waits
        r = m.step(in_valid=1, in_payload=beat(2))
        assert (r["in_ready"], r["param_credit"], r["tile_gap_ok"], r["en"]) == (0, 0, 1, 1)
    r = m.step(in_valid=1, in_payload=beat(2), params_valid=1, params_payload=p)
    assert r["params_fire"] == 1 and r["in_ready"] == 0  # the push is in the FIFO from the next cycle,
    assert PARAM_CREDIT_CYCLES == 2                      # but in the credit only from the one after
    r = m.step(in_valid=1, in_payload=beat(2))
    assert r["in_fire"] == 0 and r["param_credit"] == 0 and m.level == 1 and m.claimed == 0
    r = m.step(in_valid=1, in_payload=beat(2))
    assert r["in_fire"] == 1 and r["accepted_tile"] == 0 and m.claimed == 1 and m.level == 1
    # a second tile: level = 1 but the entry is claimed, so no credit
    m.step(in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 1})
    assert m.level == 1 and m.claimed == 1
    for _ in range(cfg.array_latency + cfg.rows - 3):   # up to enabled cycle e + AL + rows - 2
        r = m.step(in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 1})
        assert r["in_ready"] == 0 and r["param_credit"] == 0
    assert m.level == 1
    m.step()                                             # row rows-1 of tile 0 enters the lanes: pop
    assert m.level == 0 and m.claimed == 0


def test_params_ready_depth_and_independent_of_enable():
    cfg = ArrayConfig(rows=2, cols=1, param_fifo_depth=3)
    rng = np.random.default_rng(1)
    p = rand_params(rng, cfg)
    m = ArrayModel(cfg)
    for i in range(3):
        r = m.step(params_valid=1, params_payload=p)
        assert r["params_ready"] == 1 and r["params_fire"] == 1 and m.level == i + 1
    r = m.step(params_valid=1, params_payload=p)
    assert r["params_ready"] == 0 and r["params_fire"] == 0 and m.level == 3
    # one tile, then stall the output forever: params.ready must come back when the head pops
    act, wgt = rand_tile(rng, cfg, 1)
    e = m.n
    r = m.step(in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 1})
    assert r["in_fire"] == 1
    while True:
        r = m.step(out_ready=0, params_valid=1, params_payload=p)
        if r["params_fire"]:
            break
        assert r["params_ready"] == 0
    # popped on enabled cycle e + AL + rows - 1, so ready (and the push) on the next one
    assert m.level == 3 and m.n == e + cfg.array_latency + cfg.rows + 1
    r = m.step(out_ready=0)
    assert r["en"] == 1 and r["out_valid"] == 0
    while not r["out_valid"]:
        r = m.step(out_ready=0)
    # stalled now: everything frozen, inputs refused, params still accepted up to depth
    n0, payload = m.n, r["out_payload"]
    for _ in range(10):
        r = m.step(out_ready=0, in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 0})
        assert (r["en"], r["in_ready"], r["out_valid"], r["in_fire"]) == (0, 0, 1, 0)
        assert r["out_payload"] == payload and m.n == n0
    r = m.step(out_ready=1)
    assert r["out_fire"] == 1 and m.n == n0 + 1


def test_lut_visibility_and_contract_violation():
    cfg = ArrayConfig(rows=2, cols=1)
    AL, LAT, R = cfg.array_latency, cfg.latency, cfg.rows
    rng = np.random.default_rng(2)
    act, wgt = rand_tile(rng, cfg, 1)
    p = rand_params(rng, cfg, act @ wgt, lut_en=1)
    q = ref_codes(act @ wgt, dict(check_params(p, cfg.out_lanes), lut_en=0))   # codes before the table
    table = rng.integers(0, 256, 256)
    a0 = int(q[0, 0])

    def start(skip=()):
        m = ArrayModel(cfg)
        for a in range(256):
            if a not in skip:
                m.step(lut_valid=1, lut_payload={"addr": a, "data": int(table[a])})
        m.step(params_valid=1, params_payload=p)
        for _ in range(PARAM_CREDIT_CYCLES - 1):                          # until the push is a credit
            m.step()
        r = m.step(in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 1})
        assert r["in_fire"]
        return m, m.n - 1                                                  # e (no stalls: n = cycle)

    def step_until(m, n, rows):
        while m.n < n:
            r = m.step()
            if r["out_fire"]:
                rows.append(r["out_payload"]["data"])

    m, e = start()
    rows = []
    step_until(m, e + LAT + R, rows)
    assert rows == table[q].tolist()
    new = (int(table[a0]) + 1) % 256
    t2 = table.copy()
    t2[a0] = new
    assert t2[q].tolist() != table[q].tolist()
    # writes while the tile's rows are in flight (after the cycle accepting its last beat, up to the
    # out transfer of its last row, stalls included) break the contract
    for n_write in (e + 1, e + AL, e + LAT - 1, e + LAT + R - 1):
        m, e = start()
        step_until(m, n_write, [])
        if n_write == e + LAT + R - 1:
            r = m.step(out_ready=0)                      # last row on out, stalled
            assert r["out_valid"] and r["out_payload"]["last"] == 1
        with pytest.raises(ValueError, match="in flight"):
            m.step(lut_valid=1, lut_payload={"addr": 0, "data": 0}, out_ready=0)
    # on the cycle after the last row's transfer the table may change
    m, e = start()
    rows = []
    step_until(m, e + LAT + R, rows)
    assert rows == table[q].tolist()
    m.step(lut_valid=1, lut_payload={"addr": a0, "data": new})
    # ... and on the very cycle accepting the last beat (visible before any row enters the lanes)
    m = ArrayModel(cfg)
    for a in range(256):
        m.step(lut_valid=1, lut_payload={"addr": a, "data": int(table[a])})
    m.step(params_valid=1, params_payload=p)
    for _ in range(PARAM_CREDIT_CYCLES - 1):
        m.step()
    r = m.step(in_valid=1, in_payload={"act": act[:, 0], "wgt": wgt[0], "last": 1},
               lut_valid=1, lut_payload={"addr": a0, "data": new})
    assert r["in_fire"]
    rows = []
    step_until(m, m.n - 1 + LAT + R, rows)
    assert rows == t2[q].tolist()
    # a lut_en row reading an entry never written is refused
    m, e = start(skip={a0})
    with pytest.raises(ValueError, match="never written"):
        step_until(m, e + AL + 1, [])


def test_refuses_bad_input():
    cfg = ArrayConfig(rows=2, cols=1, max_k=4)
    rng = np.random.default_rng(4)
    p = rand_params(rng, cfg)
    ok = {"act": [1, 2], "wgt": [3, 4], "last": 0}
    # K > max_k
    m = ArrayModel(cfg)
    for _ in range(4):
        assert m.step(in_valid=1, in_payload=ok)["in_fire"]
    with pytest.raises(ValueError, match="max_k = 4"):
        m.step(in_valid=1, in_payload=ok)
    with pytest.raises(ValueError, match="max_k = 4"):
        simulate(cfg, [rand_tile(rng, cfg, 5)], [p])
    with pytest.raises(ValueError, match="max_k = 4"):
        tile_value(cfg, *rand_tile(rng, cfg, 5), p)
    # K = max_k is fine
    act, wgt = rand_tile(rng, cfg, 4, "max")
    out = simulate(cfg, [(act, wgt)], [p])
    assert [o[1]["data"] for o in out] == ref_codes(act @ wgt, check_params(p, 2)).tolist()
    m = ArrayModel(cfg)
    for payload, msg in [({"act": [128, 0], "wgt": [0, 0], "last": 0}, "act"),
                         ({"act": [0, 0], "wgt": [-128, 0], "last": 0}, r"wgt values must lie in \[-127, 127\]"),
                         ({"act": [0, 0, 0], "wgt": [0, 0], "last": 0}, "rows = 2"),
                         ({"act": [0, 0], "wgt": [0], "last": 0}, "out_lanes = 2"),
                         ({"act": [0, 0], "wgt": [0, 0], "last": 2}, "last"),
                         ({"act": [0.5, 0], "wgt": [0, 0], "last": 0}, "integer")]:
        with pytest.raises(ValueError, match=msg):
            m.step(in_valid=1, in_payload=payload)
    with pytest.raises(ValueError, match="in_payload"):
        m.step(in_valid=1)
    with pytest.raises(ValueError, match="in_valid"):
        m.step(in_valid=2, in_payload=ok)
    with pytest.raises(ValueError, match="out_ready"):
        m.step(out_ready=None)
    with pytest.raises(ValueError, match="shift"):
        m.step(params_valid=1, params_payload=dict(p, shift=np.full(2, 99)))
    with pytest.raises(ValueError, match="addr"):
        m.step(lut_valid=1, lut_payload={"addr": 256, "data": 0})
    with pytest.raises(ValueError, match="data"):
        m.step(lut_valid=1, lut_payload={"addr": 0, "data": -1})
    with pytest.raises(ValueError, match="cfg"):
        ArrayModel("8x8")
    assert m.cycle == 0 and m.n == 0                    # refused before any state change
    with pytest.raises(ValueError, match="params_list"):
        simulate(cfg, [rand_tile(rng, cfg, 1)], [])
    with pytest.raises(ValueError, match="disagree on K"):
        tile_value(cfg, np.zeros((2, 3), np.int64), np.zeros((2, 2), np.int64), p)
    with pytest.raises(ValueError, match="lut is required"):
        postprocess(np.zeros((1, 2), np.int64), dict(p, lut_en=1))


@pytest.mark.parametrize("mode", ["tflite", "ort"])
def test_conv_layer_through_the_array_equals_golden_layers(mode):
    """A uint8 3x3 conv (per-channel scales, ReLU) tiled onto the array (im2col, host-side MSB flip,
    zero point folded into the bias) equals golden.layers.conv2d in either mode, code for code
    (ort: the lanes get scale_f32 = ort_scale(x, w, y), the QLinearConv float32 scale)."""
    from golden.layers import conv2d            # written by another helper; imported here only
    cfg = ArrayConfig(rows=4, cols=3)           # 6 lanes: 20 channels -> 4 channel tiles (last partial)
    rng = np.random.default_rng(12)
    C, H, W, O = 5, 6, 7, 20
    x = rng.integers(0, 256, (1, C, H, W)).astype(np.uint8)
    zp_x, y_zp = 131, 9
    w = rng.integers(-127, 128, (O, C, 3, 3)).astype(np.int8)
    bias = rng.integers(-3000, 3000, O).astype(np.int32)
    # float32-exact scales, so every implementation forms the same float64 multiplier
    x_scale, y_scale = float(np.float32(0.0187)), float(np.float32(0.0731))
    w_scale = rng.uniform(0.001, 0.02, O).astype(np.float32).astype(np.float64)
    exp = conv2d(x, w, bias, zp_x, x_scale, w_scale, y_scale, y_zp, padding=1, act="relu", mode=mode)

    xp = np.pad(x[0].astype(np.int64), ((0, 0), (1, 1), (1, 1)), constant_values=zp_x)
    patches = np.stack([xp[:, i:i + H, j:j + W] for i in range(3) for j in range(3)], axis=1)  # C, 9, H, W
    patches = patches.reshape(C * 9, H * W).T - 128                      # pixels x K, int8 domain
    wk = w.reshape(O, -1).astype(np.int64)                               # O x K, (c, i, j) order
    mult = x_scale * w_scale / y_scale if mode == "tflite" else ort_scale(x_scale, w_scale, y_scale)
    tiles, plist, where = [], [], []
    for p0 in range(0, H * W, cfg.rows):
        act = np.full((cfg.rows, wk.shape[1]), zp_x - 128, np.int64)
        blk = patches[p0:p0 + cfg.rows]
        act[:len(blk)] = blk
        for c0 in range(0, O, cfg.out_lanes):
            ch = slice(c0, min(c0 + cfg.out_lanes, O))
            wgt = np.zeros((wk.shape[1], cfg.out_lanes), np.int64)
            wgt[:, :ch.stop - c0] = wk[ch].T
            tiles.append((act, wgt))
            plist.append(params_from_layer(cfg, mult[ch], bias=bias[ch], zp_out=y_zp, act_min=max(0, y_zp),
                                           act_max=255, zp_in=zp_x - 128, w_sum=wk[ch].sum(axis=1), mode=mode))
            where.append((p0, len(blk), c0, ch.stop - c0))
    out = simulate(cfg, tiles, plist, seed=3, in_valid=0.8, params_valid=0.5, out_ready=0.7)
    got = np.zeros((H * W, O), np.int64)
    for t, (p0, npix, c0, nch) in enumerate(where):
        rows = np.array([out[t * cfg.rows + r][1]["data"] for r in range(cfg.rows)])
        got[p0:p0 + npix, c0:c0 + nch] = rows[:npix, :nch]
    assert np.array_equal(got.T.reshape(1, O, H, W), exp.astype(np.int64))
    assert len(np.unique(exp)) > 50 and (exp == max(0, y_zp)).any()        # not all clamped: a real check
