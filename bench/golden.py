"""golden/ vs onnxruntime: bit exactness of the "ort" mode, tflite-vs-ort LSB statistics, conv speed.

``python -m bench golden --json out/golden.json`` reports

* ``ort_mode_outputs_compared`` / ``ort_mode_mismatches``: random QLinearConv
  and QLinearMatMul models (strides, asymmetric pads, dilations, groups incl.
  depthwise, per-tensor and per-channel scales, zero points at both ends of
  int8/uint8, power-of-two scales that create rounding ties, accumulators
  past 2**24) run in onnxruntime's CPU provider and compared with
  ``golden.layers`` in ``mode="ort"``; every output must be equal.
* ``tflite_vs_ort_lsb_diff_rate`` / ``tflite_vs_ort_max_abs_diff``: on the
  same models, how often the TFLite fixed-point requantization differs from
  onnxruntime (every difference must be exactly 1 LSB).
* ``conv_speed_vs_onnxruntime``: golden ``conv2d`` (accumulate + requantize,
  ``mode="ort"``) throughput over onnxruntime ``QLinearConv`` throughput on
  CenterNet-ResNet18 3x3 layer shapes at reduced spatial size, int8
  activations and int8 weights (the project's format), both with 2 threads
  (onnxruntime intra_op_num_threads=2; golden: 2 worker threads running
  single-threaded BLAS, see ``ENV``), measured in alternating rounds in one
  process, median of ``--reps`` runs. The same
  ratio against onnxruntime's uint8 x int8 kernel (its fastest path on AVX2,
  which is not exact for |w| > 64, see below) is reported separately as
  ``conv_speed_vs_onnxruntime_u8s8``.

onnxruntime facts this relies on (checked by tests/test_ort_exact.py):
onnxruntime's CPU QLinearConv/QLinearMatMul accept (x, w) = (uint8, uint8),
(uint8, int8), (int8, int8). On x86 CPUs without VNNI its uint8 x int8 GEMM
uses VPMADDUBSW, whose int16 pair sums saturate when |w| > 64 and x is large,
so those results are not the exact convolution. The session option
``session.x64quantprecision=1`` (graph optimizations on, constant weights)
makes onnxruntime convert such weights to uint8 and compute exactly; it is
used for every uint8-activation model here (it breaks int8-activation models,
so it is not set for them).
"""
from __future__ import annotations

import os
import platform
import time

import numpy as np

from golden import layers

#: Read by ``python -m bench`` before NumPy is imported (see bench/__main__.py). The golden
#: model gets its 2 threads (``--threads``) as 2 worker threads that each run single-threaded
#: BLAS GEMMs on their own block of the layer and requantize it in cache
#: (golden.layers._conv_blocks). Measured on the loaded 2-core VM this was written on,
#: OpenBLAS's own 2-thread GEMM was up to 10x slower than single-threaded when other
#: processes competed for the cores, and its spinning threads also slowed onnxruntime.
ENV = {"OPENBLAS_NUM_THREADS": "1", "GOLDEN_NUM_THREADS": "{threads}", "OMP_NUM_THREADS": "{threads}"}

# --------------------------------------------------------------------------
# ONNX model builders (also used by tests/test_ort_exact.py)
# --------------------------------------------------------------------------

RANGES = {"int8": (-128, 127), "uint8": (0, 255)}


def _onnx():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    return onnx, TensorProto, helper, numpy_helper


def _tp(dtype: str):
    _, TensorProto, _, _ = _onnx()
    return {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}[dtype]


def _model_bytes(node, inputs, out_dtype, inits) -> bytes:
    _, _, helper, _ = _onnx()
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", _tp(out_dtype), None)],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


def qlinearconv_model(case: dict) -> bytes:
    """A one-node QLinearConv model; weights, scales, zero points and bias are initializers."""
    _, _, helper, nph = _onnx()
    xdt = case["x"].dtype.name
    w = case["w"]
    ws = np.asarray(case["w_scale"], np.float32)
    inits = [nph.from_array(np.array(case["x_scale"], np.float32), "xs"),
             nph.from_array(np.array(case["x_zp"], xdt), "xz"),
             nph.from_array(w, "w"),
             nph.from_array(ws, "ws"),
             nph.from_array(np.zeros(ws.shape, w.dtype), "wz"),
             nph.from_array(np.array(case["y_scale"], np.float32), "ys"),
             nph.from_array(np.array(case["y_zp"], xdt), "yz")]
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if case["bias"] is not None:
        inits.append(nph.from_array(np.asarray(case["bias"], np.int32), "b"))
        names.append("b")
    pt, pl, pb, pr = case["pads"]
    node = helper.make_node("QLinearConv", names, ["y"], kernel_shape=list(w.shape[2:]),
                            strides=list(case["stride"]), dilations=list(case["dilation"]),
                            pads=[pt, pl, pb, pr], group=case["groups"])
    return _model_bytes(node, [helper.make_tensor_value_info("x", _tp(xdt), None)], xdt, inits)


def qlinearmatmul_model(case: dict) -> bytes:
    """A one-node QLinearMatMul model with ``b`` a constant initializer."""
    _, _, helper, nph = _onnx()
    adt, bdt = case["a"].dtype.name, case["b"].dtype.name
    inits = [nph.from_array(np.array(case["a_scale"], np.float32), "as"),
             nph.from_array(np.array(case["a_zp"], adt), "az"),
             nph.from_array(case["b"], "b"),
             nph.from_array(np.asarray(case["b_scale"], np.float32), "bs"),
             nph.from_array(np.asarray(case["b_zp"], bdt), "bz"),
             nph.from_array(np.array(case["y_scale"], np.float32), "ys"),
             nph.from_array(np.array(case["y_zp"], adt), "yz")]
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    return _model_bytes(node, [helper.make_tensor_value_info("a", _tp(adt), None)], adt, inits)


def ort_session(model: bytes, act_dtype: str, threads: int = 1):
    """CPU-provider session; uint8 activations get ``session.x64quantprecision=1`` (see module doc)."""
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if act_dtype == "uint8":
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------
# random cases
# --------------------------------------------------------------------------


def _scales(rng, n_out: int, per_channel: bool, pow2: bool, acc_spread: float):
    """x/w/y scales putting ~acc_spread accumulator units on ~40 output steps (ties if pow2)."""
    if pow2:
        xs = 2.0 ** int(rng.integers(-8, -2))
        ws = 2.0 ** rng.integers(-9, -5, n_out if per_channel else 1)
        ys = 2.0 ** np.round(np.log2(xs * float(np.median(ws)) * acc_spread / 40.0))
    else:
        xs = float(rng.uniform(0.002, 0.05))
        ws = rng.uniform(0.5, 2.0, n_out if per_channel else 1) * float(rng.uniform(0.001, 0.02))
        ys = xs * float(np.median(ws)) * acc_spread / float(rng.uniform(20.0, 60.0))
    ws = ws.astype(np.float32)
    return np.float32(xs), (ws if per_channel else ws[0]), np.float32(ys)


def _zp(rng, dtype: str) -> int:
    lo, hi = RANGES[dtype]
    return int(rng.choice([lo, hi, int(rng.integers(lo, hi + 1))]))


def random_conv_case(rng: np.random.Generator, x_dtype: str, kind: str, flavour: str = "random") -> dict:
    """A random QLinearConv case.

    ``kind``: "dense" (groups 1), "grouped" (2-4 groups) or "depthwise" (one
    input channel per group, channel multiplier 1 or 2). ``flavour``:
    "random" (random data, scales), "pow2" (power-of-two scales: exact
    rounding ties), "bigbias" (|bias| up to 2**30: float32(acc) rounds) or
    "extreme" (x at the far end from its zero point, same-sign weights:
    |acc| past 2**24 from the products themselves).
    """
    lo, hi = RANGES[x_dtype]
    if kind == "dense":
        g, cg, og = 1, int(rng.integers(1, 24)), int(rng.integers(1, 24))
    elif kind == "grouped":
        g, cg, og = int(rng.integers(2, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 9))
    else:
        g, cg, og = int(rng.integers(2, 24)), 1, int(rng.integers(1, 3))
    kh, kw = int(rng.integers(1, 6)), int(rng.integers(1, 6))
    if flavour == "extreme":
        g, cg, og, kh, kw = 1, int(rng.integers(130, 200)), int(rng.integers(2, 6)), 3, 3
    dh, dw = int(rng.integers(1, 3)), int(rng.integers(1, 3))
    sh, sw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    pads = tuple(int(v) for v in rng.integers(0, 3, 4))
    h = int(rng.integers(dh * (kh - 1) + 1, dh * (kh - 1) + 14))
    wd = int(rng.integers(dw * (kw - 1) + 1, dw * (kw - 1) + 14))
    n = int(rng.integers(1, 3))
    c, o = g * cg, g * og
    x_zp = _zp(rng, x_dtype)
    if flavour == "extreme":
        far = lo if x_zp - lo > hi - x_zp else hi
        x = np.full((n, c, h, wd), far, x_dtype)
        x.flat[rng.integers(0, x.size, x.size // 10)] = rng.integers(lo, hi + 1, x.size // 10)
        sign = rng.choice([-1, 1], o)[:, None, None, None]
        w = (sign * rng.integers(100, 128, (o, cg, kh, kw))).clip(-128, 127).astype(np.int8)
    else:
        x = rng.integers(lo, hi + 1, (n, c, h, wd)).astype(x_dtype)
        w = rng.integers(-128, 128, (o, cg, kh, kw)).astype(np.int8)
    r = rng.random()
    if flavour == "bigbias":
        bias = rng.integers(-(2**30), 2**30, o)
    elif r < 0.2:
        bias = None
    else:
        bias = rng.integers(-30000, 30000, o)
    case = dict(x=x, w=w, bias=bias, x_zp=x_zp, stride=(sh, sw), dilation=(dh, dw), pads=pads, groups=g)
    acc = layers.conv2d_acc(x, w, bias, x_zp, case["stride"], pads, case["dilation"], g)
    spread = float(np.abs(acc).max()) if flavour in ("bigbias", "extreme") else float(acc.std()) * 3 + 1
    xs, ws, ys = _scales(rng, o, bool(rng.random() < 0.6), flavour == "pow2", max(spread, 1.0) / 3)
    case.update(x_scale=xs, w_scale=ws, y_scale=ys, y_zp=_zp(rng, x_dtype), acc=acc)
    return case


def golden_conv(case: dict, mode: str) -> np.ndarray:
    return layers.conv2d(case["x"], case["w"], case["bias"], case["x_zp"], case["x_scale"], case["w_scale"],
                         case["y_scale"], case["y_zp"], stride=case["stride"], padding=case["pads"],
                         dilation=case["dilation"], groups=case["groups"], mode=mode)


def random_matmul_case(rng: np.random.Generator, a_dtype: str, b_dtype: str) -> dict:
    """A random QLinearMatMul case (2-D or batched a, constant 2-D b, per-column b scale/zp)."""
    alo, ahi = RANGES[a_dtype]
    blo, bhi = RANGES[b_dtype]
    m, k, n = int(rng.integers(1, 20)), int(rng.integers(1, 700)), int(rng.integers(1, 20))
    batch = (int(rng.integers(1, 4)),) if rng.random() < 0.5 else ()
    a = rng.integers(alo, ahi + 1, batch + (m, k)).astype(a_dtype)
    b = rng.integers(blo, bhi + 1, (k, n)).astype(b_dtype)
    per_col = bool(rng.random() < 0.5)
    b_zp = (rng.integers(blo, bhi + 1, n) if per_col and rng.random() < 0.5 else np.array(_zp(rng, b_dtype)))
    case = dict(a=a, b=b, a_zp=_zp(rng, a_dtype), b_zp=b_zp.astype(b_dtype))
    acc = layers.matmul_acc(a, b, case["a_zp"], b_zp)
    xs, ws, ys = _scales(rng, n, per_col, bool(rng.random() < 0.3), float(acc.std()) + 1)
    case.update(a_scale=xs, b_scale=ws, y_scale=ys, y_zp=_zp(rng, a_dtype))
    return case


def golden_matmul(case: dict, mode: str) -> np.ndarray:
    return layers.qlinear_matmul(case["a"], case["a_scale"], case["a_zp"], case["b"], case["b_scale"],
                                 case["b_zp"], case["y_scale"], case["y_zp"], mode=mode)


CONV_KINDS = ("dense", "grouped", "depthwise")
CONV_FLAVOURS = ("random", "pow2", "bigbias", "extreme")
MATMUL_TYPES = (("int8", "int8"), ("uint8", "uint8"), ("uint8", "int8"))


def compare_cases(seed: int, n_conv: int, n_matmul: int, min_outputs: int = 0) -> dict:
    """Run random cases through onnxruntime and golden (ort and tflite modes).

    ``n_matmul`` QLinearMatMul cases, then QLinearConv cases: at least
    ``n_conv``, and more until ``min_outputs`` outputs have been compared.
    """
    rng = np.random.default_rng(seed)
    st = dict(compared=0, mismatches=0, lsb_diff=0, max_diff=0, acc_past_2_24=0, conv_cases=0,
              matmul_cases=n_matmul)

    def tally(y, g, t):
        d = np.abs(t.astype(np.int64) - y.astype(np.int64))
        st["compared"] += y.size
        st["mismatches"] += int(np.count_nonzero(g != y))
        st["lsb_diff"] += int(np.count_nonzero(d))
        st["max_diff"] = max(st["max_diff"], int(d.max(initial=0)))

    for i in range(n_matmul):
        adt, bdt = MATMUL_TYPES[i % 3]
        case = random_matmul_case(rng, adt, bdt)
        y = ort_session(qlinearmatmul_model(case), adt).run(None, {"a": case["a"]})[0]
        tally(y, golden_matmul(case, "ort"), golden_matmul(case, "tflite"))
    i = 0
    while i < n_conv or st["compared"] < min_outputs:
        xdt = ("int8", "uint8")[i % 2]
        case = random_conv_case(rng, xdt, CONV_KINDS[(i // 2) % 3], CONV_FLAVOURS[(i // 6) % 4])
        y = ort_session(qlinearconv_model(case), xdt).run(None, {"x": case["x"]})[0]
        tally(y, golden_conv(case, "ort"), golden_conv(case, "tflite"))
        st["acc_past_2_24"] += int(np.count_nonzero(np.abs(case["acc"]) >= 2**24))
        i += 1
    st["conv_cases"] = i
    return st


# --------------------------------------------------------------------------
# speed
# --------------------------------------------------------------------------

#: CenterNet-ResNet18 3x3 convolutions (C_in, C_out, H=W of the input, stride) at 1/2 the
#: 512x512 model's spatial size (layer1 at 64x64 instead of 128x128), plus the 64-channel
#: head convolution.
SPEED_SHAPES = (
    (64, 64, 64, 1),     # layer1
    (64, 128, 64, 2),    # layer2 downsample
    (128, 128, 32, 1),   # layer2
    (128, 256, 32, 2),   # layer3 downsample
    (256, 256, 16, 1),   # layer3
    (256, 512, 16, 2),   # layer4 downsample
    (512, 512, 8, 1),    # layer4
    (64, 64, 64, 1),     # head 3x3 (head_conv = 64) at the layer1 resolution
)


def _speed_case(rng, cin, cout, hw, stride, x_dtype):
    lo, hi = RANGES[x_dtype]
    x = rng.integers(lo, hi + 1, (1, cin, hw, hw)).astype(x_dtype)
    w = rng.integers(-127, 128, (cout, cin, 3, 3)).astype(np.int8)
    bias = rng.integers(-20000, 20000, cout)
    ws = rng.uniform(0.002, 0.01, cout).astype(np.float32)
    zp = 0 if x_dtype == "int8" else 128
    return dict(x=x, w=w, bias=bias, x_zp=zp, stride=(stride, stride), dilation=(1, 1), pads=(1, 1, 1, 1),
                groups=1, x_scale=np.float32(0.02), w_scale=ws, y_scale=np.float32(0.6), y_zp=zp)


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


#: onnxruntime configurations timed against golden: (tag, activation dtype, exact uint8 mode)
#: s8s8: int8 x int8 (the project's format); u8s8: uint8 x int8, onnxruntime's default (fastest,
#: VPMADDUBSW, not exact for |w| > 64 without VNNI); u8exact: uint8 activations with
#: session.x64quantprecision=1 (weights converted to uint8, exact).
ORT_CONFIGS = (("s8s8", "int8", False), ("u8s8", "uint8", False), ("u8exact", "uint8", True))


def speed(reps: int, threads: int, seed: int = 0) -> dict:
    """Golden conv2d vs onnxruntime QLinearConv per shape and configuration, median of ``reps``."""
    import onnxruntime as ort
    rng = np.random.default_rng(seed)
    rows = []
    for cin, cout, hw, s in SPEED_SHAPES:
        row = dict(shape=f"{cin}->{cout} 3x3 s{s} @{hw}x{hw}", macs=cout * cin * 9 * ((hw - 1) // s + 1) ** 2)
        cases = {dt: _speed_case(rng, cin, cout, hw, s, dt) for dt in ("int8", "uint8")}
        for tag, xdt, exact_u8 in ORT_CONFIGS:
            case = cases[xdt]
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            if exact_u8:
                so.add_session_config_entry("session.x64quantprecision", "1")
            sess = ort.InferenceSession(qlinearconv_model(case), so, providers=["CPUExecutionProvider"])
            feed = {"x": case["x"]}
            g = golden_conv(case, "ort")
            y = sess.run(None, feed)[0]
            row[f"equal_{tag}"] = bool(np.array_equal(g, y))
            if tag != "u8s8" and not row[f"equal_{tag}"]:
                raise AssertionError(f"golden and onnxruntime ({tag}) differ on the speed case {row['shape']}")
            t_g, t_o = [], []
            # Alternate golden and onnxruntime in rounds (so slow load drifts hit both alike), each
            # round starting with an untimed warm-up: onnxruntime's pool threads spin for a while after
            # a run (and OpenBLAS's after a GEMM), which would otherwise be charged to the other side.
            per_round = max(1, reps // 3)
            for _ in range(max(1, -(-reps // per_round))):
                golden_conv(case, "ort")
                t_g += [_time(lambda: golden_conv(case, "ort")) for _ in range(per_round)]
                sess.run(None, feed)
                t_o += [_time(lambda: sess.run(None, feed)) for _ in range(per_round)]
            row[f"golden_{tag}_ms"] = round(float(np.median(t_g)) * 1e3, 3)
            row[f"ort_{tag}_ms"] = round(float(np.median(t_o)) * 1e3, 3)
            row[f"speed_vs_ort_{tag}"] = round(float(np.median(t_o) / np.median(t_g)), 3)
        rows.append(row)
    tags = [c[0] for c in ORT_CONFIGS]
    tot = {f"{who}_{t}_ms": round(sum(r[f"{who}_{t}_ms"] for r in rows), 3) for t in tags for who in ("golden", "ort")}
    return dict(rows=rows, totals_ms=tot,
                ratio={t: tot[f"ort_{t}_ms"] / tot[f"golden_{t}_ms"] for t in tags})


# --------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------


def add_arguments(ap) -> None:
    ap.add_argument("--conv-cases", type=int, default=240, help="random QLinearConv models (default 240)")
    ap.add_argument("--min-outputs", type=int, default=200_000,
                    help="keep adding QLinearConv models until this many outputs are compared (default 200000)")
    ap.add_argument("--matmul-cases", type=int, default=60, help="random QLinearMatMul models (default 60)")
    ap.add_argument("--reps", type=int, default=9, help="timing repetitions per shape (default 9)")
    ap.add_argument("--seed", type=int, default=2024)


def run(args) -> dict:
    import onnxruntime as ort
    threads = int(getattr(args, "threads", 2))
    cmp = compare_cases(int(getattr(args, "seed", 2024)), int(getattr(args, "conv_cases", 240)),
                        int(getattr(args, "matmul_cases", 60)), int(getattr(args, "min_outputs", 200_000)))
    if cmp["max_diff"] > 1:
        raise AssertionError(f"tflite and onnxruntime differ by {cmp['max_diff']} LSB (must be <= 1)")
    load_before = os.getloadavg()[0]
    sp = speed(int(getattr(args, "reps", 9)), threads)
    return {
        "ort_mode_outputs_compared": cmp["compared"],
        "ort_mode_mismatches": cmp["mismatches"],
        "ort_mode_accumulators_past_2_24": cmp["acc_past_2_24"],
        "ort_mode_models": {"QLinearConv": cmp["conv_cases"], "QLinearMatMul": cmp["matmul_cases"]},
        "tflite_vs_ort_lsb_diff_rate": cmp["lsb_diff"] / cmp["compared"],
        "tflite_vs_ort_lsb_diffs": cmp["lsb_diff"],
        "tflite_vs_ort_max_abs_diff": cmp["max_diff"],
        "conv_speed_vs_onnxruntime": round(sp["ratio"]["s8s8"], 3),
        "conv_speed_vs_onnxruntime_u8s8": round(sp["ratio"]["u8s8"], 3),
        "conv_speed_vs_onnxruntime_u8exact": round(sp["ratio"]["u8exact"], 3),
        "conv_speed_totals_ms": sp["totals_ms"],
        "conv_speed_per_shape": sp["rows"],
        "conv_speed_note": ("ratio = onnxruntime time / golden time summed over all shapes (golden conv2d "
                            "mode='ort', accumulate + requantize, vs QLinearConv). s8s8 = int8 activations "
                            "and weights (the project's format; outputs checked equal); u8s8 = uint8 "
                            "activations with onnxruntime's default VPMADDUBSW kernel (its fastest path, not "
                            "exact for |w| > 64 on CPUs without VNNI; equal_u8s8 per shape says whether it "
                            "matched); u8exact = uint8 activations with session.x64quantprecision=1 (exact, "
                            "checked equal). Wall-clock medians; see loadavg for the machine's load."),
        "threads": {"onnxruntime_intra_op": threads,
                    **{v: os.environ.get(v) for v in ("GOLDEN_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                      "OMP_NUM_THREADS")}},
        "loadavg_1min_before_after_speed": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "versions": {"numpy": np.__version__, "onnxruntime": ort.__version__, "python": platform.python_version()},
        "cpu": platform.processor() or platform.machine(),
    }
