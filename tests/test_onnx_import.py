"""firmware.onnx_import: ONNX models run bit-exact with onnxruntime on golden and on the GoldenDevice.

Models are built here (bench/onnx.py builders, onnx.helper, no torch): a
residual CNN, a classifier ending in Gemm after Transpose/Reshape (plus a
MatMul head), a small net with MaxPool ceil / Add / Sigmoid / LeakyReLU /
Tanh / Concat / Resize / ConvTranspose / Clip / PReLU, and the project's
detector (detector/model.py ARCH). Each is quantized by onnxruntime's
``quantize_static`` (QDQ, per-channel, int8 and uint8 activations) or by
golden's own toolkit (``quantize_float_model``), run in onnxruntime's
reference session, imported, and run on golden (``OnnxModel.reference``) and
on a GoldenDevice (array layers through the ISA): every output value must be
identical (compared as float32 bit patterns). Plus: onnxruntime's float
ConvTranspose emulation against onnxruntime on random layers, Resize
variants, the errors (every unsupported node listed at once, malformed
files, a layer the buffers cannot hold, a hardware layout without the ort
fields), the CLI and the quantizer's placement.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as TP
from onnx import helper
from onnx import numpy_helper as nh

from bench import onnx as B
from firmware import __main__ as cli
from firmware import compiler
from firmware.golden_device import GoldenDevice
from firmware.graph import Clamp, Conv2d, ConvTranspose2d, Graph, OrtConvTranspose, Q
from firmware.onnx_import import (OnnxImportError, UnsupportedModelError, import_qdq, load_model, ort_run,
                                  ort_session, quantize_float_model)
from golden import calib, layers
from golden.config import ArrayConfig

_CACHE: dict = {}


def _quantized(name: str, quantizer: str, dt: str):
    key = (name, quantizer, dt)
    if key not in _CACHE:
        fm, _ = B.build(name)
        calib_feeds = B.random_feeds(fm, 4, 100)
        qm = B.quantize_ort(fm, calib_feeds, dt) if quantizer == "ort" else \
            quantize_float_model(fm, calib_feeds, activation_dtype=dt)
        _CACHE[key] = (fm, qm)
    return _CACHE[key]


def _same(ref: dict, got: dict) -> dict:
    """Differing output values per output (float32 bit patterns; codes for integer outputs)."""
    assert set(ref) == set(got)
    out = {}
    for k, r in ref.items():
        g = np.asarray(got[k])
        assert g.shape == r.shape and g.dtype == r.dtype, (k, g.shape, g.dtype, r.shape, r.dtype)
        out[k] = int(np.count_nonzero(r.view(np.uint8) != g.view(np.uint8)))
    return out


def _check(qm, feeds, device=None) -> int:
    om = import_qdq(qm)
    sess = ort_session(qm)
    names = [o.name for o in sess.get_outputs()]
    n = 0
    for f in feeds:
        ref = dict(zip(names, sess.run(names, f)))
        assert not any(_same(ref, om.reference(f)).values()), _same(ref, om.reference(f))
        if device is not None:
            got, reports = om.run(device, f)
            assert not any(_same(ref, got).values()), _same(ref, got)
            assert any(r.on_array and r.measured["USEFUL_MACS"] > 0 for r in reports)
        n += sum(v.size for v in ref.values())
    return n


# --------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("dt", ["int8", "uint8"])
@pytest.mark.parametrize("name", ["residual", "classifier", "mixed"])
def test_quantize_static_models_bit_exact_on_golden_and_device(name, dt):
    fm, qm = _quantized(name, "ort", dt)
    feeds = B.random_feeds(fm, 2, 7)
    assert _check(qm, feeds, GoldenDevice()) > 0
    # what the importer made of it: the array runs the MAC layers in ort mode
    g = import_qdq(qm).graph.fuse()
    arr = [n for n in g.nodes if n.on_array]
    assert arr and all(n.mode == "ort" for n in arr)
    if name in ("classifier", "mixed"):        # LeakyReLU / Sigmoid tables fused into a conv's lanes
        assert any(n.lut is not None for n in arr)


@pytest.mark.parametrize("name,dt", [("residual", "int8"), ("classifier", "uint8"), ("mixed", "int8"),
                                     ("mixed", "uint8")])
def test_golden_calibrated_models_bit_exact(name, dt):
    fm, qm = _quantized(name, "golden", dt)
    assert _check(qm, B.random_feeds(fm, 2, 11), GoldenDevice()) > 0


def test_detector_bit_exact_on_golden_and_device():
    fm, qm = _quantized("detector", "ort", "int8")
    feeds = B.random_feeds(fm, 1, 3)
    assert _check(qm, feeds, GoldenDevice()) == 10 * 24 * 24 + 2 * 2 * 24 * 24
    g = import_qdq(qm).graph.fuse()
    assert sum(n.on_array for n in g.nodes) == 17                 # every conv of ARCH on the array
    assert sorted({type(n).__name__ for n in g.nodes if not n.on_array}) == ["AddTable", "OrtConvTranspose"]


def test_detector_uint8_golden_calibrated_on_golden():
    fm, qm = _quantized("detector", "golden", "uint8")
    assert _check(qm, B.random_feeds(fm, 1, 4)) > 0


# --------------------------------------------------------------------------- op coverage against onnxruntime


def _float_model(nodes, x_shape, outputs, inits):
    g = helper.make_graph(nodes, "t", [helper.make_tensor_value_info("x", TP.FLOAT, list(x_shape))],
                          [helper.make_tensor_value_info(o, TP.FLOAT, None) for o in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m


def _f(name, a):
    return nh.from_array(np.asarray(a, np.float32), name)


@pytest.mark.parametrize("dt", ["int8", "uint8"])
def test_resize_variants_and_movement(dt):
    """Resize nearest with scales/sizes, half_pixel/asymmetric/align_corners, round/floor/ceil, non-integer
    factors; Squeeze/Unsqueeze/Flatten; elementwise ops with scalar and per-channel constants."""
    rng = np.random.default_rng(1)
    inits = [_f("w", rng.standard_normal((6, 3, 3, 3)) * 0.3), _f("b", rng.standard_normal(6) * 0.1),
             _f("s2", [1, 1, 2, 2]), _f("s15", [1, 1, 1.5, 2.5]),
             nh.from_array(np.array([1, 6, 7, 5], np.int64), "sz"), _f("k", rng.uniform(0.5, 2, (6, 1, 1))),
             _f("c", 0.3), nh.from_array(np.array([0], np.int64), "ax")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c1"], pads=[1] * 4, name="conv"),
             helper.make_node("Resize", ["c1", "", "s2"], ["r1"], mode="nearest", name="r_default"),
             helper.make_node("Resize", ["c1", "", "s15"], ["r2"], mode="nearest", name="r_asym",
                              coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
             helper.make_node("Resize", ["c1", "", "", "sz"], ["r3"], mode="nearest", name="r_sizes",
                              coordinate_transformation_mode="align_corners", nearest_mode="round_prefer_ceil"),
             helper.make_node("Resize", ["c1", "", "s15"], ["r4"], mode="nearest", name="r_ceil",
                              coordinate_transformation_mode="pytorch_half_pixel", nearest_mode="ceil"),
             helper.make_node("Mul", ["c1", "k"], ["m1"], name="mul_per_channel"),
             helper.make_node("HardSigmoid", ["m1"], ["h1"], name="hsig"),
             helper.make_node("Add", ["c", "c1"], ["e1"], name="add_scalar"),
             helper.make_node("Elu", ["e1"], ["e2"], name="elu"),
             helper.make_node("Squeeze", ["c1", "ax"], ["sq"], name="squeeze"),
             helper.make_node("Unsqueeze", ["sq", "ax"], ["usq"], name="unsqueeze"),
             helper.make_node("Flatten", ["usq"], ["fl"], name="flatten", axis=2)]
    fm = _float_model(nodes, (1, 3, 5, 6), ["r1", "r2", "r3", "r4", "h1", "e2", "fl"], inits)
    feeds = [{"x": (rng.standard_normal((1, 3, 5, 6)) * 1.5).astype(np.float32)} for _ in range(4)]
    qm = B.quantize_ort(fm, feeds, dt)
    assert _check(qm, feeds[:2]) > 0


@pytest.mark.parametrize("dt", ["int8", "uint8"])
def test_conv_attributes(dt):
    """Conv attributes through import + GoldenDevice: auto_pad SAME_UPPER/SAME_LOWER/VALID with strides,
    dilations (explicit pads: onnxruntime refuses SAME with dilation), asymmetric pads, depthwise and
    grouped convs, no bias, 1x1 and 5x5 kernels."""
    rng = np.random.default_rng(3)
    # one initializer per conv: x64quantprecision (uint8 sessions) fails on a weight shared by two convs
    inits = [_f("w0", rng.standard_normal((6, 3, 3, 3)) * 0.3), _f("w1", rng.standard_normal((6, 1, 3, 3)) * 0.3),
             _f("w2", rng.standard_normal((4, 3, 5, 5)) * 0.1), _f("w3", rng.standard_normal((6, 6, 1, 1)) * 0.3),
             _f("w4", rng.standard_normal((4, 2, 2, 3)) * 0.3), _f("b", rng.standard_normal(6) * 0.1),
             _f("w1b", rng.standard_normal((6, 1, 3, 3)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "w0", "b"], ["a"], auto_pad="SAME_UPPER", strides=[2, 2], name="same_up"),
             helper.make_node("Conv", ["a", "w1"], ["d0"], auto_pad="SAME_LOWER", group=6, name="depthwise"),
             helper.make_node("Conv", ["d0", "w1b"], ["d"], pads=[2, 2, 2, 2], group=6, dilations=[2, 2],
                              name="depthwise_dilated"),
             helper.make_node("Conv", ["d", "w2"], ["g"], pads=[2, 0, 1, 3], group=2, strides=[1, 2],
                              name="grouped_5x5"),
             helper.make_node("Conv", ["a", "w3", "b"], ["p"], name="pointwise"),
             helper.make_node("Conv", ["g", "w4"], ["v"], auto_pad="VALID", group=2, name="valid_2x3")]
    fm = _float_model(nodes, (1, 3, 11, 13), ["g", "p", "v"], inits)
    feeds = [{"x": (rng.standard_normal((1, 3, 11, 13)) * 1.5).astype(np.float32)} for _ in range(3)]
    qm = B.quantize_ort(fm, feeds, dt)
    cfg = ArrayConfig(rows=4, cols=2, act_depth=160, wgt_depth=96, param_depth=3, out_depth=16, bus_bytes=8)
    assert _check(qm, feeds[:1], GoldenDevice(cfg)) > 0


@pytest.mark.parametrize("case", range(6))
def test_ort_float_conv_transpose_emulation(case):
    """OrtConvTranspose == onnxruntime's DQ -> ConvTranspose -> Q on random layers, incl. K > 128 (two
    SGEMM K blocks), groups, dilation, output_padding, asymmetric pads, both activation types."""
    rng = np.random.default_rng(40 + case)
    dt = ("int8", "uint8")[case % 2]
    ci, g = [(200, 1), (8, 2), (300, 1), (12, 3), (130, 2), (5, 1)][case]
    og = int(rng.integers(1, 6))
    k = int(rng.integers(1, 5))
    s = int(rng.integers(1, 4))
    d = int(rng.integers(1, 3))
    op = [int(rng.integers(0, s)), int(rng.integers(0, s))]       # onnxruntime: output_padding < stride
    h, w = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    while True:
        pads = [int(v) for v in rng.integers(0, k, 4)]
        ho = (h - 1) * s + d * (k - 1) + 1 + op[0] - pads[0] - pads[2]
        wo = (w - 1) * s + d * (k - 1) + 1 + op[1] - pads[1] - pads[3]
        if ho >= 1 and wo >= 1:
            break
    lo, hi = (-128, 127) if dt == "int8" else (0, 255)
    xs, xz = np.float32(rng.uniform(0.01, 0.1)), int(rng.integers(lo, hi + 1))
    wq = rng.integers(-127, 128, (ci, og, k, k)).astype(np.int8)
    ws = rng.uniform(0.001, 0.01, og).astype(np.float32)
    bq = rng.integers(-20000, 20000, og * g).astype(np.int32)
    bs = (xs * np.tile(ws, g)).astype(np.float32)
    ys, yz = np.float32(xs * ws.mean() * np.sqrt(ci / g * k * k) / 8), int(rng.integers(lo, hi + 1))
    T = TP.INT8 if dt == "int8" else TP.UINT8
    inits = [_f("xs", xs), nh.from_array(np.array(xz, dt), "xz"), nh.from_array(wq, "wq"), _f("ws", ws),
             nh.from_array(np.zeros(og, np.int8), "wz"), nh.from_array(bq, "bq"), _f("bs", bs),
             nh.from_array(np.zeros(og * g, np.int32), "bz"), _f("ys", ys), nh.from_array(np.array(yz, dt), "yz")]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xf"]),
             helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wf"], axis=1),
             helper.make_node("DequantizeLinear", ["bq", "bs", "bz"], ["bf"], axis=0),
             helper.make_node("ConvTranspose", ["xf", "wf", "bf"], ["yf"], strides=[s, s], pads=pads,
                              dilations=[d, d], output_padding=op, group=g, name="ct"),
             helper.make_node("QuantizeLinear", ["yf", "ys", "yz"], ["y"])]
    gr = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", T, [1, ci, h, w])],
                           [helper.make_tensor_value_info("y", T, [1, og * g, ho, wo])], inits)
    m = helper.make_model(gr, opset_imports=[helper.make_opsetid("", 19)])
    x = rng.integers(lo, hi + 1, (1, ci, h, w)).astype(dt)
    y = ort_run(m, {"x": x})["y"]
    om = import_qdq(m)
    node = om.graph.nodes[0]
    assert isinstance(node, OrtConvTranspose)
    assert np.array_equal(om.graph.reference({om.inputs[0].tensor: x})[node.name], y)
    # the integer alternative on the array: exact accumulators + ort requantization (onnxruntime's float
    # accumulation may differ from it by 1 LSB at near-ties; here it must equal golden.layers)
    arr = import_qdq(m, convtranspose="array").graph.nodes[0]
    assert isinstance(arr, ConvTranspose2d) and arr.mode == "ort"
    exp = layers.conv_transpose2d(x, wq, bq, xz, xs, np.tile(ws, g), ys, yz, stride=s, padding=pads,
                                  output_padding=op, dilation=d, groups=g, mode="ort")
    assert np.array_equal(arr.reference([x]), exp)


def test_ort_mode_layers_on_device_match_golden_layers():
    """Conv2d/ConvTranspose2d/FullyConnected in mode 'ort' through the ISA equal golden.layers (mode='ort')."""
    rng = np.random.default_rng(5)
    cfg = ArrayConfig(rows=4, cols=2, act_depth=96, wgt_depth=64, param_depth=3, out_depth=16, bus_bytes=8)
    qi, qu, qo = Q(float(np.float32(0.03)), -3, "int8"), Q(float(np.float32(0.02)), 140, "uint8"), \
        Q(float(np.float32(0.11)), 7, "int8")
    g = Graph()
    x = g.add_input("x", (1, 6, 5, 5), qu)
    ws = rng.uniform(0.002, 0.01, 12).astype(np.float32)
    c = g.conv2d("c", x, rng.integers(-127, 128, (12, 3, 3, 3)).astype(np.int8), rng.integers(-999, 999, 12),
                 ws, qi, padding=1, groups=2, mode="ort")
    t = g.conv_transpose2d("t", c, rng.integers(-127, 128, (12, 5, 4, 4)).astype(np.int8), None,
                           rng.uniform(0.002, 0.01, 5).astype(np.float32), qo, stride=2, padding=1, mode="ort")
    g.add(Clamp("t_relu", t, qo, 7, 127))
    g.outputs = ["t_relu"]
    feeds = {"x": rng.integers(0, 256, (1, 6, 5, 5)).astype(np.uint8)}
    from firmware.driver import run_graph
    env, _ = run_graph(GoldenDevice(cfg), g, feeds, cfg)
    ref = g.reference(feeds)
    assert np.array_equal(env["t_relu"], ref["t_relu"])
    assert np.array_equal(ref["c"], layers.conv2d(feeds["x"], g.node("c").weight, g.node("c").bias, 140, qu.scale,
                                                  ws, qi.scale, -3, padding=1, groups=2, mode="ort", out_dtype="int8"))
    fused = g.fuse()
    assert [n.name for n in fused.nodes] == ["c", "t_relu"] and fused.nodes[1].act_range == (7, 127)
    with pytest.raises(ValueError, match="ort"):
        Conv2d("p", "x", qi, np.zeros((2, 1, 1, 1), np.int8), None, 0.1, qo, prelu=0.1, mode="ort")


# --------------------------------------------------------------------------- errors


def test_unsupported_nodes_are_all_listed_before_anything_runs():
    rng = np.random.default_rng(2)
    inits = [_f("w", rng.standard_normal((4, 3, 3, 3)) * 0.3), _f("b", np.zeros(4)),
             _f("w1d", rng.standard_normal((2, 4, 3)) * 0.3)]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1] * 4, name="conv_ok"),
             helper.make_node("GlobalAveragePool", ["c"], ["gap"], name="my_gap"),
             helper.make_node("Softmax", ["c"], ["sm"], name="my_softmax", axis=1),
             helper.make_node("Mul", ["c", "c"], ["sq"], name="my_square"),
             helper.make_node("ReduceMean", ["c"], ["rm"], name="my_reduce", keepdims=1)]
    fm = _float_model(nodes, (1, 3, 6, 6), ["gap", "sm", "sq", "rm"], inits)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(2)]
    qm = B.quantize_ort(fm, feeds, "int8")
    with pytest.raises(UnsupportedModelError) as e:
        import_qdq(qm)
    bad = {(n, op) for n, op, _ in e.value.nodes}
    for n, op in (("my_gap", "GlobalAveragePool"), ("my_softmax", "Softmax"), ("my_square", "Mul"),
                  ("my_reduce", "ReduceMean")):
        assert (n, op) in bad and f"'{n}' ({op})" in str(e.value)
    assert not any(n == "conv_ok" for n, _ in bad)
    assert isinstance(e.value, OnnxImportError) and "unsupported node" in str(e.value)


def test_malformed_files(tmp_path):
    fm, qm = _quantized("classifier", "ort", "int8")
    good = qm.SerializeToString()
    cases = {"missing.onnx": None, "empty.onnx": b"", "garbage.onnx": b"\x08\x07this is not protobuf\xff\xfe",
             "truncated.onnx": good[:len(good) // 3]}
    broken = onnx.ModelProto()
    broken.CopyFrom(qm)
    broken.graph.node[3].input[0] = "no_such_tensor"
    cases["dangling.onnx"] = broken.SerializeToString()
    for name, data in cases.items():
        p = tmp_path / name
        if data is not None:
            p.write_bytes(data)
        with pytest.raises(OnnxImportError, match=name):
            import_qdq(str(p))
    with pytest.raises(OnnxImportError, match="float model"):
        import_qdq(fm)
    with pytest.raises(OnnxImportError, match="must be a path"):
        load_model(3.5)
    with pytest.raises(ValueError, match="convtranspose"):
        import_qdq(qm, convtranspose="gpu")


def test_layer_the_buffers_cannot_hold_is_named_before_running():
    fm, qm = _quantized("residual", "ort", "int8")
    om = import_qdq(qm)
    cfg = ArrayConfig(wgt_depth=128)                  # K = 3*3*16 = 144 > 128
    dev = GoldenDevice(cfg)
    with pytest.raises(OnnxImportError) as e:
        om.run(dev, B.random_feeds(fm, 1, 0)[0])
    msg = str(e.value)
    assert "block1a" in msg and "K = 144" in msg and "wgt_depth = 128" in msg
    assert dev._n_cmds == 0                           # nothing was sent


def test_hardware_layout_without_ort_fields_is_refused(monkeypatch):
    fm, qm = _quantized("classifier", "ort", "int8")
    om = import_qdq(qm)
    monkeypatch.setattr(compiler, "hw_lane_fields", lambda cfg: ("bias", "mult", "shift", "zp", "act_min",
                                                                 "act_max", "alpha_mult", "alpha_shift", "prelu"))
    with pytest.raises(OnnxImportError, match=r"mode 'ort' needs the lane params fields \['mode', 'scale_f32'\]"):
        om.check(ArrayConfig())


def test_feeds_are_checked():
    fm, qm = _quantized("classifier", "ort", "int8")
    om = import_qdq(qm)
    with pytest.raises(ValueError, match="shape"):
        om.quantize_feeds({"x": np.zeros((1, 3, 16, 16), np.float32)})
    with pytest.raises(ValueError, match="float32"):
        om.quantize_feeds({"x": np.zeros((2, 3, 16, 16), np.float64)})
    with pytest.raises(ValueError, match="unknown input"):
        om.quantize_feeds({"x": np.zeros((2, 3, 16, 16), np.float32), "y": 1})


# --------------------------------------------------------------------------- CLI


def test_cli_run_and_quantize(tmp_path, capsys):
    fm, qm = _quantized("mixed", "ort", "uint8")
    mp = tmp_path / "mixed.onnx"
    onnx.save(qm, mp)
    x = B.random_feeds(fm, 1, 9)[0]["x"]
    np.save(tmp_path / "x.npy", x)
    rc = cli.main(["run", str(mp), "--input", str(tmp_path / "x.npy"), "--backend", "golden",
                   "--out", str(tmp_path / "y.npz"), "--compare-ort"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "onnxruntime: 0 of" in out and "conv1 (Conv)" in out and "array" in out and "host" in out
    ref = ort_run(qm, {"x": x})
    with np.load(tmp_path / "y.npz") as z:
        assert not any(_same(ref, {k: z[k] for k in z.files}).values())
    # a float model: quantize with golden's calibration, then run
    fp = tmp_path / "float.onnx"
    onnx.save(fm, fp)
    np.save(tmp_path / "calib.npy", np.concatenate([f["x"] for f in B.random_feeds(fm, 3, 1)]))
    assert cli.main(["quantize", str(fp), "--calib", str(tmp_path / "calib.npy"), "--out",
                     str(tmp_path / "q.onnx")]) == 0
    assert cli.main(["run", str(tmp_path / "q.onnx"), "--input", str(tmp_path / "x.npy"), "--compare-ort"]) == 0
    # bad input -> exit status 2 and a message
    capsys.readouterr()
    assert cli.main(["run", str(fp), "--input", str(tmp_path / "x.npy")]) == 2
    assert "float model" in capsys.readouterr().err
    assert cli.main(["run", str(mp), "--input", str(tmp_path / "nope.npy")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_make_device_backends(monkeypatch):
    import sys
    import types
    assert isinstance(cli.make_device("golden", ArrayConfig()), GoldenDevice)
    with pytest.raises(ValueError, match="backend"):
        cli.make_device("fpga", ArrayConfig())
    # the rtl hook: a module without the factory, then one with it, then no module at all
    fake = types.ModuleType("firmware.rtl_device")
    monkeypatch.setitem(sys.modules, "firmware.rtl_device", fake)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: object())
    with pytest.raises(RuntimeError, match="make_host_device"):
        cli.make_device("rtl", ArrayConfig())
    fake.make_host_device = lambda cfg: GoldenDevice(cfg)
    assert isinstance(cli.make_device("rtl", ArrayConfig()), GoldenDevice)
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="rtl_device.py does not exist"):
        cli.make_device("rtl", ArrayConfig())


# --------------------------------------------------------------------------- the quantizer


def test_quantize_float_model_placement_and_golden_calibration():
    """quantize_float_model: input/activation scales are golden.calib MinMax qparams of the calibration data,
    weights golden.quant.quantize_weights per channel, biases int32 at x_scale * w_scale, Relu folded."""
    from golden import quant
    fm, qm = _quantized("residual", "golden", "int8")
    feeds = B.random_feeds(fm, 4, 100)
    obs = calib.MinMaxObserver()
    for f in feeds:
        obs.observe(f["x"])
    qp = obs.qparams("int8")
    ini = {i.name: nh.to_array(i) for i in qm.graph.initializer}
    assert ini["x_scale"] == qp.scale and ini["x_zero_point"] == qp.zero_point
    wq, wqp = quant.quantize_weights(nh.to_array(next(i for i in fm.graph.initializer if i.name == "stem.w")), axis=0)
    assert np.array_equal(ini["stem.w_quantized"], wq) and np.array_equal(ini["stem.w_scale"], wqp.scale)
    assert ini["stem.b_quantized"].dtype == np.int32
    assert np.array_equal(ini["stem.b_scale"], (np.float32(qp.scale) * wqp.scale).astype(np.float32))
    ops = [n.op_type for n in qm.graph.node]
    assert "Relu" not in ops and ops.count("Conv") == 7 and ops.count("Add") == 2
    with pytest.raises(ValueError, match="observer"):
        quantize_float_model(fm, feeds, observer="magic")
    with pytest.raises(ValueError, match="activation_dtype"):
        quantize_float_model(fm, feeds, activation_dtype="int16")


def test_fma_f32_is_one_rounding():
    """graph.fma_f32 == round_to_float32(a*b + c) computed exactly (fractions), incl. cases where rounding
    the float64 sum first would double-round (c tiny against a*b with a*b's low bits near half an ulp)."""
    from fractions import Fraction

    from firmware.graph import fma_f32
    rng = np.random.default_rng(8)
    a = (rng.standard_normal(3000) * 2.0 ** rng.integers(-20, 20, 3000)).astype(np.float32)
    b = (rng.standard_normal(3000) * 2.0 ** rng.integers(-20, 20, 3000)).astype(np.float32)
    c = (rng.standard_normal(3000) * 2.0 ** rng.integers(-40, 40, 3000)).astype(np.float32)
    # adversarial: a*b exactly between two float32 values (+/- a tiny c that decides the rounding)
    a[:500] = np.float32(1 + 2.0**-12)
    b[:500] = np.float32(1 + 2.0**-12)                        # a*b = 1 + 2**-11 + 2**-24: a tie in float32
    c[:500] = (rng.choice([-1.0, 1.0], 500) * 2.0 ** rng.integers(-80, -30, 500)).astype(np.float32)
    c[500:520] = 0
    got = fma_f32(a, b, c)

    def exact(x, y, z):
        v = Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z))
        f = np.float32(float(v))                               # float() of a Fraction is correctly rounded (f64)
        # step to the float32 neighbour nearest to v (ties to even), exactly
        cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
        best = min(cands, key=lambda t: (abs(Fraction(float(t)) - v), int(np.float32(t).view(np.uint32)) & 1))
        return best
    exp = np.array([exact(x, y, z) for x, y, z in zip(a, b, c)], np.float32)
    assert np.array_equal(got.view(np.uint32), exp.view(np.uint32))
    naive = (a.astype(np.float64) * b + c).astype(np.float32)   # double rounding
    assert np.count_nonzero(naive != exp) > 0                    # the cases do exercise it
