"""ONNX models on the RTL: bit-exact with onnxruntime (issue 7), in ONE simulation of the accelerator top.

Models built here with bench/onnx.py's builders (onnx.helper, float), quantized by onnxruntime's
``quantize_static`` (QDQ, per-channel int8 weights; int8 or uint8 activations) and imported
with ``firmware.onnx_import.import_qdq``:

* the project's detector (detector/model.py ARCH, CenterNet: 17 convs, 2 ConvTranspose, 5 Adds),
  exported for a 32x32 input instead of 96x96 (``detector_net(size=32)``; the network is fully
  convolutional, every layer and weight is the same, only the spatial size shrinks: 9x fewer
  simulated cycles);
* a residual network (``residual_net``: conv, MaxPool ceil mode, two residual blocks, a strided
  conv, 1x1 head);
* a classifier ending in Gemm after Transpose/Reshape (``classifier``, plus a Flatten/MatMul head).

Each runs on onnxruntime's reference session, on golden (``OnnxModel.reference``), on
``GoldenDevice`` and on the Verilator model of ``hw.top.Accelerator(ONNX_TOP)`` through
``firmware.rtl_device.make_host_device`` (one device for all models, several ``model.run``
calls): every output value identical to onnxruntime's (float32 bit patterns), and every array
layer's READ_STATUS counters on the RTL equal GoldenDevice's (the cycle model: CYCLES, BUSY,
MACs, stalls, jobs, dropped commands).

Configuration: ``sim.build_top.ONNX_TOP`` = ``SMALL_TOP`` with 1024-entry act/wgt buffers. The
models do not fit SMALL_TOP (K = 288..1024 > 256) and ``ArrayConfig()``'s model takes ~10 min to
build from cold; ONNX_TOP builds about as fast as SMALL_TOP (a 4x4 array) and is used only here.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

from bench import onnx as B
from firmware.golden_device import GoldenDevice
from firmware.onnx_import import import_qdq, ort_session
from firmware.rtl_device import make_host_device
from sim.build_top import ONNX_TOP

CFG = ONNX_TOP
SLOTS = ("CYCLES", "BUSY_CYCLES", "USEFUL_MACS", "IN_STALL_CYCLES", "OUT_STALL_CYCLES", "CMDS_DROPPED", "JOBS_DONE")
#: (model, activations, inputs): the detector at 32x32 with int8 activations, the others with uint8 and int8.
MODELS = (("detector32", "int8", 1), ("residual", "uint8", 1), ("classifier", "int8", 2))


def float_model(name: str):
    if name == "detector32":
        return B.detector_net(size=32)[0]
    return B.build(name)[0]


def test_onnx_models_bit_exact_with_onnxruntime_on_rtl():
    prepared = []
    for name, dt, n_in in MODELS:
        fm = float_model(name)
        qm = B.quantize_ort(fm, B.random_feeds(fm, 4, 100), dt)
        om = import_qdq(qm, name=name)
        om.check(CFG)                                        # every array layer fits ONNX_TOP
        prepared.append((name, dt, qm, om, B.random_feeds(fm, n_in, 7)))
    problems, stats = [], {}
    with make_host_device(CFG) as dev:
        for name, dt, qm, om, feeds in prepared:
            sess = ort_session(qm)
            names = [o.name for o in sess.get_outputs()]
            c0, t0 = dev.cycles, time.perf_counter()
            compared = 0
            for i, f in enumerate(feeds):
                ref = dict(zip(names, sess.run(names, f)))
                rtl, reps = om.run(dev, f)
                gold = om.reference(f)
                gdev, greps = om.run(GoldenDevice(CFG), f)
                for tag, out in (("rtl", rtl), ("golden", gold), ("golden device", gdev)):
                    assert set(out) == set(ref), (tag, sorted(out), sorted(ref))
                    shapes = {k: (np.asarray(out[k]).shape, np.asarray(out[k]).dtype) for k in ref}
                    assert shapes == {k: (r.shape, r.dtype) for k, r in ref.items()}, (tag, shapes)
                    bad = B.mismatches(ref, out)             # float32 bit patterns
                    if bad:
                        problems.append(f"{name}/{dt} input {i}: {bad} {tag} output values differ from onnxruntime")
                compared += sum(int(v.size) for v in ref.values())
                arr = [(r, g) for r, g in zip(reps, greps) if r.on_array]
                assert arr and all(r.name == g.name for r, g in arr)
                for r, g in arr:
                    if {s: r.measured[s] for s in SLOTS} != {s: g.measured[s] for s in SLOTS}:
                        problems.append(f"{name}/{dt} layer {r.name}: RTL counters {r.measured} != GoldenDevice "
                                        f"{g.measured}")
                    if r.measured["USEFUL_MACS"] <= 0:
                        problems.append(f"{name}/{dt} layer {r.name}: no MACs counted")
            stats[name] = {"array_layers": len(arr), "outputs": compared, "cycles": dev.cycles - c0,
                           "seconds": round(time.perf_counter() - t0, 1)}
        assert dev.framing_errors == []
    assert not problems, "\n".join(problems[:20]) + f"\n(device log: {dev.log_path})"
    # what ran: the detector's 17 convs and the other models' MAC layers were on the array
    assert stats["detector32"]["array_layers"] == 17 and stats["detector32"]["outputs"] == 14 * 8 * 8
    assert stats["residual"]["array_layers"] >= 6 and stats["classifier"]["array_layers"] >= 3
    assert stats["classifier"]["outputs"] == 2 * (2 * 10 + 2 * 5)
    print(stats)


def test_detector_export_size_is_checked():
    with pytest.raises(ValueError, match="size must be a multiple of 4"):
        B.detector_net(size=30)
    m, _ = B.detector_net(size=32)
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 1, 32, 32]
    assert all([d.dim_value for d in o.type.tensor_type.shape.dim][2:] == [8, 8] for o in m.graph.output)
