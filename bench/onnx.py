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
import sys
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
    p.add_argument("--rtl-models", default=",".join(MODEL_NAMES),
                   help="models also run on the RTL (make_host_device, one simulation; every variant, "
                        "--rtl-inputs inputs each); empty: no RTL run")
    p.add_argument("--rtl-inputs", type=int, default=1, help="inputs per variant on the RTL (default 1)")
    p.add_argument("--rtl-config", default="default", choices=("default", "small", "onnx"),
                   help="array of the RTL run (python -m firmware run --config): default = ArrayConfig() (a first "
                        "build takes ~10 min), onnx = ONNX_TOP (4x4, K <= 1024; the mixed model does not fit), "
                        "small = SMALL_TOP (K <= 256)")


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


def detector_net(seed: int = 0, size: int | None = None):
    """The project's detector (detector/model.py ``ARCH``: CenterNet, 1x1x96x96 -> hm/wh/reg 24x24) as ONNX.

    BN-folded weights from ``detector/weights`` when they exist, else seeded random weights of the
    same shapes (He init, the heatmap bias at CenterNet's -2.19). Returns (model, weights_source).
    ``size``: export for a ``size`` x ``size`` input instead (the network is fully convolutional,
    stride 4: a multiple of 4, outputs ``size // 4``), e.g. 32 for quick RTL simulations.
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
    in_shape = list(D.INPUT_SHAPE)
    hw = D.OUT if hasattr(D, "OUT") else 24
    if size is not None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 8 or size % 4:
            raise ValueError(f"size must be a multiple of 4 >= 8, got {size!r}")
        in_shape[1:] = [size, size]
        hw = size // 4
    outs = [(h, [1, c, hw, hw]) for h, c in D.HEAD_CHANNELS.items()]
    return _model(N, [("image", [1, *in_shape])], outs, I), src


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
            h, w = feeds[0]["image"].shape[2:]
            top, left = (c.images.shape[2] - h) // 2, (c.images.shape[3] - w) // 2
            if top >= 0 and left >= 0:                   # the canvas, or its centre for a smaller export
                feeds = [{"image": (c.images[i:i + 1, :, top:top + h, left:left + w].astype(np.float32)
                                    / np.float32(255.0))} for i in range(n)]
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


def mismatches(ref: dict, out: dict) -> int:
    """Output values of ``out`` differing from onnxruntime's ``ref`` (float32 bit patterns)."""
    return sum(int(np.count_nonzero(r.view(np.uint32) != np.asarray(out[k], r.dtype).view(np.uint32)))
               for k, r in ref.items())


def _references(qmodel, feeds) -> list[dict]:
    from firmware.onnx_import import ort_session
    sess = ort_session(qmodel)
    names = [o.name for o in sess.get_outputs()]
    return [dict(zip(names, sess.run(names, f))) for f in feeds]


def compare(qmodel, feeds, device=None, name: str = "model") -> dict:
    """Run ``qmodel`` on onnxruntime, golden (reference) and ``device``; count differing outputs."""
    from firmware.onnx_import import import_qdq
    t0 = time.perf_counter()
    om = import_qdq(qmodel, name=name)
    g = om.graph.fuse()
    res = {"nodes": len(qmodel.graph.node), "array_layers": sum(n.on_array for n in g.nodes),
           "host_layers": sum(not n.on_array for n in g.nodes), "array_macs": g.macs(),
           "host_kinds": sorted({type(n).__name__ for n in g.nodes if not n.on_array}),
           "outputs_compared": 0, "mismatches_golden": 0, "mismatches_device": 0, "array_cycles": 0}
    for f, ref in zip(feeds, _references(qmodel, feeds)):
        runs = [("golden", om.reference(f))]
        if device is not None:
            dev_out, reports = om.run(device, f)
            runs.append(("device", dev_out))
            res["array_cycles"] = sum(r.cycles for r in reports if r.on_array)
        for tag, out in runs:
            res["outputs_compared"] += sum(int(r.size) for r in ref.values())
            res[f"mismatches_{tag}"] += mismatches(ref, out)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


def rtl_compare(device, variants, n_inputs: int) -> dict:
    """Every (label, QDQ model, feeds) of ``variants`` on the RTL ``device`` (one simulation) vs onnxruntime.

    Per variant: outputs compared, mismatches, simulated cycles, wall seconds (and inside the
    simulator), seconds per inference; a model that does not fit ``device.cfg`` is listed as skipped.
    Totals under the ``rtl_*`` keys of ``run``'s result.
    """
    from firmware.onnx_import import import_qdq
    per = []
    for label, qm, feeds in variants:
        om = import_qdq(qm, name=label)
        try:
            om.check(device.cfg)
        except ValueError as e:
            per.append({"model": label, "skipped": f"does not fit {device.cfg}: {str(e).splitlines()[0]}"})
            continue
        feeds = feeds[:n_inputs]
        refs = _references(qm, feeds)
        c0, s0, t0 = device.cycles, device.sim_seconds, time.perf_counter()
        r = {"model": label, "inputs": len(feeds), "outputs_compared": 0, "mismatches": 0}
        for f, ref in zip(feeds, refs):
            out, _ = om.run(device, f)
            r["outputs_compared"] += sum(int(v.size) for v in ref.values())
            r["mismatches"] += mismatches(ref, out)
        dt = time.perf_counter() - t0
        r.update(cycles=device.cycles - c0, seconds=round(dt, 2), sim_seconds=round(device.sim_seconds - s0, 2),
                 seconds_per_inference=round(dt / len(feeds), 2),
                 cycles_per_second=round((device.cycles - c0) / dt) if dt > 0 else 0)
        per.append(r)
    ran = [r for r in per if "skipped" not in r]
    secs = sum(r["seconds"] for r in ran)
    cyc = sum(r["cycles"] for r in ran)
    return {"rtl_models": len(ran), "rtl_skipped": len(per) - len(ran), "rtl_outputs_compared": sum(r["outputs_compared"] for r in ran),
            "rtl_mismatches_vs_onnxruntime": sum(r["mismatches"] for r in ran), "rtl_cycles": cyc,
            "rtl_seconds": round(secs, 2), "rtl_sim_seconds": round(sum(r["sim_seconds"] for r in ran), 2),
            "rtl_cycles_per_second": round(cyc / secs) if secs > 0 else 0, "rtl_per_model": per}


def run(args) -> dict:
    from firmware.__main__ import make_device
    from golden.config import ArrayConfig
    names = [s for s in str(getattr(args, "models", ",".join(MODEL_NAMES))).split(",") if s]
    n_in = int(getattr(args, "inputs", 2))
    seed = int(getattr(args, "seed", 0))
    backend = getattr(args, "backend", "golden")
    rtl_names = [s for s in str(getattr(args, "rtl_models", "")).split(",") if s]
    n_rtl = int(getattr(args, "rtl_inputs", 1))
    cfg = ArrayConfig()
    t0 = time.perf_counter()
    variants = []                         # (name, quantizer, activations, note, QDQ model, feeds)
    for name in sorted(set(names) | set(rtl_names), key=(list(names) + list(rtl_names)).index):
        fm, note = build(name, seed)
        calib = random_feeds(fm, 4, seed + 100)
        feeds = random_feeds(fm, max(n_in, n_rtl), seed + 200)
        for quantizer, dt in (("ort", "int8"), ("ort", "uint8"), ("golden", "int8")):
            if quantizer == "ort":
                qm = quantize_ort(fm, calib, dt)
            else:
                from firmware.onnx_import import quantize_float_model
                qm = quantize_float_model(fm, calib, activation_dtype=dt)
            variants.append((name, quantizer, dt, note, qm, feeds))
    try:
        device = make_device(backend, cfg, **({"progress": _stderr} if backend == "rtl" else {}))
    except RuntimeError as e:                 # the rtl backend is unavailable: report it, measure nothing
        return {"backend": backend, "available": False, "error": str(e), "models": 0, "outputs_compared": 0}
    per = []
    try:
        for name, quantizer, dt, note, qm, feeds in variants:
            if name not in names:
                continue
            r = compare(qm, feeds[:n_in], device, f"{name}/{quantizer}-{dt}")
            r.update(model=name, quantizer=quantizer, activations=dt, note=note)
            per.append(r)
    finally:
        device.close()
    compared = sum(r["outputs_compared"] for r in per)
    mism = sum(r["mismatches_golden"] + r["mismatches_device"] for r in per)
    res = {"backend": backend, "models": len(per), "model_names": names, "inputs_per_model": n_in,
           "outputs_compared": compared, "mismatches_vs_onnxruntime": mism,
           "onnxruntime_session": "CPU, 1 thread, session.qdqisint8allowed=1, "
                                  "session.x64quantprecision=1 with uint8 activations",
           "per_model": per, "seconds": round(time.perf_counter() - t0, 2)}
    if rtl_names:
        res.update(rtl_section(getattr(args, "rtl_config", "default"), n_rtl,
                               [(f"{n}/{q}-{dt}", qm, feeds) for n, q, dt, _, qm, feeds in variants
                                if n in rtl_names]))
    return res


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rtl_section(config_name: str, n_inputs: int, variants) -> dict:
    """The ``rtl_*`` keys: ``variants`` on one RTL simulation of ``config_name`` (firmware.__main__.config)."""
    from firmware.__main__ import config
    from firmware.rtl_device import make_host_device
    cfg = config(config_name)
    t0 = time.perf_counter()
    try:
        device = make_host_device(cfg, progress=_stderr)
    except Exception as e:                    # noqa: BLE001 - no simulator: say so, invent nothing
        return {"rtl_available": False, "rtl_error": f"{type(e).__name__}: {e}"[:3000], "rtl_models": 0}
    start = time.perf_counter() - t0
    try:
        res = rtl_compare(device, variants, n_inputs)
    finally:
        device.close()
    return {"rtl_available": True, "rtl_config": config_name, "rtl_array": f"{cfg.rows}x{cfg.cols} {cfg.packing}",
            "rtl_inputs_per_model": n_inputs, "rtl_model_key": device.model.key,
            "rtl_build_or_load_and_start_seconds": round(start, 2), **res}
