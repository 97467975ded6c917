"""ONNX models on onnxruntime, golden and the device: outputs compared bit for bit.

``python -m bench onnx [--backend golden|rtl] [--inputs N] [--models a,b] [--json PATH]``

Models are built here with ``onnx.helper`` (float), quantized two ways --
``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights,
int8 and uint8 activations, random calibration inputs) and golden/'s own
toolkit (``firmware.onnx_import.quantize_float_model``, MinMax observers) --
imported with ``firmware.onnx_import.import_qdq`` and run three ways:

* onnxruntime, the reference session (``firmware.onnx_import.ort_session``);
* golden: ``OnnxModel.reference`` (golden/ alone, no device);
* the backend device (``--backend``): ``golden`` = firmware.GoldenDevice
  (array layers through the ISA, host layers on the host), ``rtl`` = the RTL
  device through the hook ``firmware.__main__.make_device`` (the factory
  ``firmware.rtl_device.make_host_device(cfg)``); until the hook is wired the
  result is ``{"available": False, "error": ...}`` -- no numbers are invented.

Result keys: ``models`` (number of model variants), ``outputs_compared``
(output elements compared against onnxruntime, both paths), ``mismatches_vs_onnxruntime``
(must be 0), ``per_model`` (per variant: ONNX nodes, array/host layers (after
fusion), MACs of the array layers, modelled array cycles of one inference
(firmware.report, GoldenDevice's cycle model), mismatches golden / device, seconds).

Model builders (``residual_net``, ``classifier``, ``mixed_net``,
``detector_net``) are shared with tests/test_onnx_import.py.
"""
from __future__ import annotations

import os
import tempfile
import time

import numpy as np

#: Models of the benchmark: name -> (builder, input shape builder). ``detector`` is the project's
#: CenterNet (detector/model.py ARCH) exported to ONNX.
MODEL_NAMES = ("residual", "classifier", "mixed", "detector")


def add_arguments(p) -> None:
    p.add_argument("--backend", default="golden", choices=("golden", "rtl"),
                   help="device for the array layers (default golden)")
    p.add_argument("--inputs", type=int, default=2, help="random inputs per model variant (default 2)")
    p.add_argument("--models", default=",".join(MODEL_NAMES), help=f"comma list of {MODEL_NAMES}")
    p.add_argument("--seed", type=int, default=0)


# --------------------------------------------------------------------------- model builders


def _helpers():
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    return onnx, TensorProto, helper, numpy_helper


def _init(nh, name, a):
    return nh.from_array(np.asarray(a, np.float32), name)


def _w(rng, o, i, k, gain=2.0):
    return (rng.standard_normal((o, i, k, k)) * np.sqrt(gain / (i * k * k))).astype(np.float32)


def _model(nodes, inputs, outputs, inits, opset=17):
    onnx, TP, helper, _ = _helpers()
    g = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in inputs],
                          [helper.make_tensor_value_info(n, TP.FLOAT, s) for n, s in outputs], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 9
    onnx.checker.check_model(m, full_check=True)
    return m


def residual_net(seed: int = 0):
    """Residual CNN, 1x3x32x32: conv+ReLU, MaxPool 3x3/2 ceil mode, two residual blocks (Add + ReLU),
    a strided conv between them, 1x1 conv head (8 channels)."""
    _, _, helper, nh = _helpers()
    rng = np.random.default_rng(seed)
    N, I = [], []

    def conv(name, x, ci, co, k=3, s=1, relu=True):
        I.extend([_init(nh, f"{name}.w", _w(rng, co, ci, k)), _init(nh, f"{name}.b", rng.standard_normal(co) * 0.1)])
        out = f"{name}.out" if relu else name
        N.append(helper.make_node("Conv", [x, f"{name}.w", f"{name}.b"], [out], name=name, kernel_shape=[k, k],
                                  pads=[k // 2] * 4, strides=[s, s]))
        if relu:
            N.append(helper.make_node("Relu", [out], [name], name=f"{name}.relu"))
        return name

    def block(name, x, c):
        a = conv(f"{name}a", x, c, c)
        b = conv(f"{name}b", a, c, c, relu=False)
        N.append(helper.make_node("Add", [x, b], [f"{name}.sum"], name=f"{name}.add"))
        N.append(helper.make_node("Relu", [f"{name}.sum"], [name], name=f"{name}.relu"))
        return name

    y = conv("stem", "x", 3, 16)
    N.append(helper.make_node("MaxPool", [y], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1], ceil_mode=1))
    y = block("block1", "pool", 16)
    y = conv("down", y, 16, 32, s=2)
    y = block("block2", y, 32)
    conv("head", y, 32, 8, k=1, relu=False)
    return _model(N, [("x", [1, 3, 32, 32])], [("head", [1, 8, 9, 9])], I)


def classifier(seed: int = 0):
    """Classifier, 2x3x16x16: conv + LeakyReLU (a table fused into the conv's lanes), conv + ReLU,
    Transpose to NHWC, Reshape, Gemm logits (transB = 1); a second head Flatten -> MatMul."""
    _, _, helper, nh = _helpers()
    rng = np.random.default_rng(seed + 1)
    I = [_init(nh, "c1.w", _w(rng, 8, 3, 3)), _init(nh, "c1.b", rng.standard_normal(8) * 0.1),
         _init(nh, "c2.w", _w(rng, 16, 8, 3)), _init(nh, "c2.b", rng.standard_normal(16) * 0.1),
         _init(nh, "fc.w", rng.standard_normal((10, 1024)) * np.sqrt(1 / 1024)),
         _init(nh, "fc.b", rng.standard_normal(10) * 0.1),
         _init(nh, "mm.w", rng.standard_normal((1024, 5)) * np.sqrt(1 / 1024)),
         nh.from_array(np.array([2, -1], np.int64), "shape")]
    N = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["c1"], name="c1", kernel_shape=[3, 3], pads=[1] * 4),
         helper.make_node("LeakyRelu", ["c1"], ["r1"], name="r1", alpha=0.2),
         helper.make_node("Conv", ["r1", "c2.w", "c2.b"], ["c2"], name="c2", kernel_shape=[3, 3], pads=[1] * 4,
                          strides=[2, 2]),
         helper.make_node("Relu", ["c2"], ["r2"], name="r2"),
         helper.make_node("Transpose", ["r2"], ["nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
         helper.make_node("Reshape", ["nhwc", "shape"], ["flat"], name="reshape"),
         helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1),
         helper.make_node("Flatten", ["r2"], ["flat2"], name="flatten", axis=1),
         helper.make_node("MatMul", ["flat2", "mm.w"], ["proj"], name="proj")]
    return _model(N, [("x", [2, 3, 16, 16])], [("logits", [2, 10]), ("proj", [2, 5])], I)


def mixed_net(seed: int = 0):
    """Small conv net, 1x3x16x16, with the other supported ops: MaxPool ceil, Add, Sigmoid, LeakyRelu,
    Tanh (float on onnxruntime), Concat of differently quantized inputs, Resize nearest 2x,
    ConvTranspose k4 s2 p1, Clip (a graph output), PRelu per channel, Transpose/Reshape, Gemm, and
    a 1x1 conv + Sigmoid (the table fused into the conv's lanes)."""
    _, _, helper, nh = _helpers()
    rng = np.random.default_rng(seed + 2)
    I = [_init(nh, "w1", _w(rng, 8, 3, 3)), _init(nh, "b1", rng.standard_normal(8) * 0.1),
         _init(nh, "w2", _w(rng, 8, 8, 3)), _init(nh, "b2", rng.standard_normal(8) * 0.1),
         _init(nh, "sc", np.array([1, 1, 2, 2])),
         _init(nh, "wt", rng.standard_normal((24, 4, 4, 4)) * 0.1), _init(nh, "bt", rng.standard_normal(4) * 0.1),
         _init(nh, "mn", np.array(0.0)), _init(nh, "mx", np.array(6.0)),
         _init(nh, "slope", rng.uniform(0.05, 0.3, (4, 1, 1))),
         nh.from_array(np.array([1, -1], np.int64), "shp"),
         _init(nh, "wg", rng.standard_normal((10, 4 * 32 * 32)) * 0.02), _init(nh, "bg", rng.standard_normal(10) * 0.1),
         _init(nh, "w3", _w(rng, 4, 8, 1)), _init(nh, "b3", rng.standard_normal(4) * 0.1)]
    N = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4, name="conv1"),
         helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
         helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="pool1"),
         helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], pads=[1] * 4, name="conv2"),
         helper.make_node("Add", ["c2", "p1"], ["a1"], name="add1"),
         helper.make_node("Sigmoid", ["a1"], ["s1"], name="sig1"),
         helper.make_node("LeakyRelu", ["a1"], ["l1"], alpha=0.1, name="leaky1"),
         helper.make_node("Tanh", ["a1"], ["t1"], name="tanh1"),
         helper.make_node("Concat", ["s1", "l1", "t1"], ["cat"], axis=1, name="cat1"),
         helper.make_node("Resize", ["cat", "", "sc"], ["up"], mode="nearest", name="up1"),
         helper.make_node("ConvTranspose", ["up", "wt", "bt"], ["ct"], strides=[2, 2], pads=[1] * 4, name="convt"),
         helper.make_node("Clip", ["ct", "mn", "mx"], ["cl"], name="clip1"),
         helper.make_node("PRelu", ["ct", "slope"], ["pr"], name="prelu1"),
         helper.make_node("Transpose", ["pr"], ["tr"], perm=[0, 2, 3, 1], name="tr1"),
         helper.make_node("Reshape", ["tr", "shp"], ["fl"], name="rs1"),
         helper.make_node("Gemm", ["fl", "wg", "bg"], ["y"], transB=1, name="fc"),
         helper.make_node("Conv", ["a1", "w3", "b3"], ["c3"], name="conv3"),
         helper.make_node("Sigmoid", ["c3"], ["s3"], name="sig3")]
    return _model(N, [("x", [1, 3, 16, 16])], [("y", [1, 10]), ("cl", [1, 4, 32, 32]), ("s3", [1, 4, 8, 8])], I)


def detector_net(seed: int = 0):
    """The project's detector (detector/model.py ``ARCH``: CenterNet, 1x1x96x96 -> hm/wh/reg 24x24) as ONNX.

    BN-folded weights from ``detector/weights`` when they exist, else seeded random weights of the
    same shapes (He init, the heatmap bias at CenterNet's -2.19). Returns (model, weights_source).
    """
    from detector import model as D
    _, _, helper, nh = _helpers()
    rng = np.random.default_rng(seed + 3)
    if D.WEIGHTS_FILE.exists():
        params, src = D.load_weights(), "detector/weights"
    else:
        params, src = {}, "random (detector/weights absent)"
        for L in D.ARCH:
            if not L.has_weights:
                continue
            if L.op == "conv":
                w = _w(rng, L.cout, L.cin // L.groups, L.k)
            else:
                w = (rng.standard_normal((L.cin, L.cout, L.k, L.k)) * np.sqrt(2.0 / (L.cin * 4))).astype(np.float32)
            b = (rng.standard_normal(L.cout) * 0.1).astype(np.float32)
            if L.name == "hm":
                b[:] = D.HM_BIAS_INIT
            params[f"{L.name}.weight"], params[f"{L.name}.bias"] = w, b
    N, I = [], []
    for L in D.ARCH:
        out = f"{L.name}.pre" if L.relu else L.name
        x = list(L.inputs)
        if L.op == "add":
            N.append(helper.make_node("Add", x, [out], name=L.name))
        else:
            I += [_init(nh, f"{L.name}.weight", params[f"{L.name}.weight"]),
                  _init(nh, f"{L.name}.bias", params[f"{L.name}.bias"])]
            op = "Conv" if L.op == "conv" else "ConvTranspose"
            kw = dict(kernel_shape=[L.k, L.k], pads=[L.padding] * 4, strides=[L.stride, L.stride])
            if L.op == "conv":
                kw["group"] = L.groups
            N.append(helper.make_node(op, x + [f"{L.name}.weight", f"{L.name}.bias"], [out], name=L.name, **kw))
        if L.relu:
            N.append(helper.make_node("Relu", [out], [L.name], name=f"{L.name}.relu"))
    hw = D.OUT if hasattr(D, "OUT") else 24
    outs = [(h, [1, c, hw, hw]) for h, c in D.HEAD_CHANNELS.items()]
    return _model(N, [("image", [1, *D.INPUT_SHAPE])], outs, I), src


def build(name: str, seed: int = 0):
    """(float model, note) of a benchmark model."""
    if name == "residual":
        return residual_net(seed), ""
    if name == "classifier":
        return classifier(seed), ""
    if name == "mixed":
        return mixed_net(seed), ""
    if name == "detector":
        m, src = detector_net(seed)
        return m, f"weights: {src}"
    raise ValueError(f"unknown model {name!r}; choose from {MODEL_NAMES}")


def random_feeds(model, n: int, seed: int) -> list[dict]:
    """``n`` feed dicts of float32 inputs for ``model`` (detector: digit canvases / 255 when the data
    set is available, uniform [0, 1) otherwise; other models: standard normal x 1.5)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        f = {}
        for vi in model.graph.input:
            shape = [d.dim_value for d in vi.type.tensor_type.shape.dim]
            if vi.name == "image":
                f[vi.name] = rng.uniform(0, 1, shape).astype(np.float32)
            else:
                f[vi.name] = (rng.standard_normal(shape) * 1.5).astype(np.float32)
        feeds.append(f)
    if model.graph.input[0].name == "image":
        try:
            from detector import dataset as DS
            c = DS.make_split("test", n=n, start=seed % 100)
            feeds = [{"image": (c.images[i:i + 1].astype(np.float32) / np.float32(255.0))} for i in range(n)]
        except Exception:                                 # data set unavailable: keep the uniform inputs
            pass
    return feeds


def quantize_ort(model, calib: list[dict], activation_dtype: str):
    """``onnxruntime.quantization.quantize_static`` (QDQ, per-channel int8 weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            return next(self.it, None)

    import logging
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)          # quantize_static's "consider pre-processing" advice
    try:
        with tempfile.TemporaryDirectory() as d:
            src, dst = os.path.join(d, "f.onnx"), os.path.join(d, "q.onnx")
            onnx.save(model, src)
            quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if activation_dtype == "int8" else QuantType.QUInt8,
                            weight_type=QuantType.QInt8)
            return onnx.load(dst)
    finally:
        root.setLevel(level)


def compare(qmodel, feeds, device=None, name: str = "model") -> dict:
    """Run ``qmodel`` on onnxruntime, golden (reference) and ``device``; count differing outputs."""
    from firmware.onnx_import import import_qdq, ort_session
    t0 = time.perf_counter()
    om = import_qdq(qmodel, name=name)
    sess = ort_session(qmodel)
    names = [o.name for o in sess.get_outputs()]
    g = om.graph.fuse()
    res = {"nodes": len(qmodel.graph.node), "array_layers": sum(n.on_array for n in g.nodes),
           "host_layers": sum(not n.on_array for n in g.nodes), "array_macs": g.macs(),
           "host_kinds": sorted({type(n).__name__ for n in g.nodes if not n.on_array}),
           "outputs_compared": 0, "mismatches_golden": 0, "mismatches_device": 0, "array_cycles": 0}
    for f in feeds:
        ref = dict(zip(names, sess.run(names, f)))
        gold = om.reference(f)
        runs = [("golden", gold)]
        if device is not None:
            dev_out, reports = om.run(device, f)
            runs.append(("device", dev_out))
            res["array_cycles"] = sum(r.cycles for r in reports if r.on_array)
        for k in names:
            for tag, out in runs:
                res["outputs_compared"] += int(ref[k].size)
                res[f"mismatches_{tag}"] += int(np.count_nonzero(
                    ref[k].view(np.uint32) != np.asarray(out[k], ref[k].dtype).view(np.uint32)))
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def run(args) -> dict:
    from firmware.__main__ import make_device
    from golden.config import ArrayConfig
    names = [s for s in str(getattr(args, "models", ",".join(MODEL_NAMES))).split(",") if s]
    n_in = int(getattr(args, "inputs", 2))
    seed = int(getattr(args, "seed", 0))
    backend = getattr(args, "backend", "golden")
    cfg = ArrayConfig()
    try:
        device = make_device(backend, cfg)
    except RuntimeError as e:                 # the rtl hook is not wired: report it, measure nothing
        return {"backend": backend, "available": False, "error": str(e), "models": 0, "outputs_compared": 0}
    per = []
    t0 = time.perf_counter()
    for name in names:
        fm, note = build(name, seed)
        calib = random_feeds(fm, 4, seed + 100)
        feeds = random_feeds(fm, n_in, seed + 200)
        variants = [("ort", "int8"), ("ort", "uint8"), ("golden", "int8")]
        for quantizer, dt in variants:
            if quantizer == "ort":
                qm = quantize_ort(fm, calib, dt)
            else:
                from firmware.onnx_import import quantize_float_model
                qm = quantize_float_model(fm, calib, activation_dtype=dt)
            r = compare(qm, feeds, device, f"{name}/{quantizer}-{dt}")
            r.update(model=name, quantizer=quantizer, activations=dt, note=note)
            per.append(r)
    compared = sum(r["outputs_compared"] for r in per)
    mism = sum(r["mismatches_golden"] + r["mismatches_device"] for r in per)
    return {"backend": backend, "models": len(per), "model_names": names, "inputs_per_model": n_in,
            "outputs_compared": compared, "mismatches_vs_onnxruntime": mism,
            "onnxruntime_session": "CPU, 1 thread, session.qdqisint8allowed=1, "
                                   "session.x64quantprecision=1 with uint8 activations",
            "per_model": per, "seconds": round(time.perf_counter() - t0, 2)}
