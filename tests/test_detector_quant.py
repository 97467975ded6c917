"""The INT8 detector (detector/quantize.py) and the quantization study's machinery (bench/quant.py)."""
from __future__ import annotations

import numpy as np
import pytest

from detector import dataset as D
from detector import model as M
from detector import quantize as QZ
from detector.decode import SCORE_SCALE
from detector.evaluate import predict
from firmware.graph import Add, Conv2d, ConvTranspose2d

N_DEV = 2   # canvases run through the GoldenDevice (about 2 s each)


@pytest.fixture(scope="module")
def params():
    return M.load_weights()


@pytest.fixture(scope="module")
def graph(params):
    return QZ.build_int8_graph(params)


@pytest.fixture(scope="module")
def canvases():
    return D.make_split("test", 8)


@pytest.fixture(scope="module")
def small_acts(params):
    """Float activations of 8 calibration canvases (fast builds of other schemes)."""
    return QZ.calibration_activations(params, QZ.calibration_images(8))


def test_graph_structure(graph):
    assert list(graph.inputs) == ["image"]
    assert graph.inputs["image"] == ((1,) + M.INPUT_SHAPE, QZ.INPUT_Q)
    assert QZ.INPUT_Q.scale == 1 / 255 and QZ.INPUT_Q.zp == 0 and QZ.INPUT_Q.dtype == "uint8"
    assert graph.outputs == ["hm", "wh", "reg"]
    assert [n.name for n in graph.nodes] == [L.name for L in M.ARCH]
    sh = M.shapes()
    kinds = {"conv": Conv2d, "convT": ConvTranspose2d, "add": Add}
    for L in M.ARCH:
        n = graph.node(L.name)
        assert type(n) is kinds[L.op]
        assert graph.shape(L.name) == (1,) + sh[L.name]
        q = graph.q(L.name)
        assert q.dtype == QZ.DEFAULT_SCHEME.activations
        if L.relu:
            assert n.act_range[0] == max(q.qmin, q.zp)        # the fused ReLU clamp
        if L.has_weights:
            assert n.weight.dtype == np.int8 and n.weight.min() >= -127 and n.weight.max() <= 127
            assert n.bias.dtype == np.int32
            assert np.ndim(n.w_scale) == (1 if QZ.DEFAULT_SCHEME.weights == "per_channel" else 0)
    assert graph.macs() == sum(M.macs().values())


def test_quantized_weights_and_biases_dequantize_close(graph, params):
    """int8 weights * scale and int32 bias * s_in * s_w are within half a step of the float ones."""
    for L in M.ARCH:
        if not L.has_weights:
            continue
        n = graph.node(L.name)
        ws = np.asarray(n.w_scale, np.float64)
        shape = (-1, 1, 1, 1) if L.op == "conv" else (1, -1, 1, 1)
        ws_b = ws.reshape(shape) if ws.ndim else ws
        w = params[f"{L.name}.weight"].astype(np.float64)
        assert np.all(np.abs(n.weight * ws_b - w) <= ws_b * (0.5 + 1e-4))   # float32 division: ~1 ulp
        assert np.abs(n.weight).max() == 127            # the max-|w| channel uses the full range
        bs = np.float64(graph.q(L.inputs[0]).scale) * ws
        assert np.all(np.abs(n.bias * bs - params[f"{L.name}.bias"]) <= bs * (0.5 + 1e-4))


def test_golden_device_runs_the_graph_bit_exact(graph, canvases):
    """The accelerator path (compiler + GoldenDevice for array nodes, host ops) equals the reference, every node."""
    from firmware.driver import run_graph
    from firmware.golden_device import GoldenDevice
    from golden.config import ArrayConfig

    imgs = canvases.images[:N_DEV]
    ref = QZ.run_int8_reference(graph, imgs)
    for i in range(N_DEV):
        env, reports = run_graph(GoldenDevice(ArrayConfig()), graph, {"image": imgs[i:i + 1]})
        assert sum(r.on_array for r in reports) == sum(L.has_weights for L in M.ARCH)
        for n in graph.nodes:
            assert env[n.name].dtype == ref[n.name].dtype
            assert np.array_equal(env[n.name], ref[n.name][i:i + 1]), n.name


def test_reference_is_batch_independent(graph, canvases):
    imgs = canvases.images[:5]
    whole = QZ.run_int8_reference(graph, imgs)
    split = QZ.run_int8_reference(graph, imgs, batch=2)
    one = QZ.run_int8_reference(graph, imgs[3:4])
    for name in whole:
        assert np.array_equal(whole[name], split[name])
        assert np.array_equal(whole[name][3:4], one[name])


def _iou(a, b):
    x0, y0 = np.maximum(a[0], b[0]), np.maximum(a[1], b[1])
    x1, y1 = np.minimum(a[2], b[2]), np.minimum(a[3], b[3])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_int8_detections_overlap_fp32(graph, params, canvases):
    """Every confident FP32 detection (score >= 0.3) has an INT8 detection of the same class with
    IoU >= 0.8 and a score within 0.1, and vice versa (an INT8 plateau of merged scores may keep a
    neighbouring cell too, so cells are not compared); the heads dequantize close to float."""
    imgs = canvases.images
    f32 = predict(params, imgs)
    env = QZ.run_int8_reference(graph, imgs)
    i8 = QZ.decode_outputs(graph, env)
    assert set(i8) >= {"boxes", "scores", "classes", "peak"} and i8["boxes"].shape == (len(imgs), 100, 4)
    s8 = i8["scores"].astype(np.float64) * SCORE_SCALE
    n_checked = 0
    for a, b, sa, sb in ((f32, i8, f32["scores"], s8), (i8, f32, s8, f32["scores"])):
        for img in range(len(imgs)):
            for j in np.flatnonzero(sa[img] >= 0.3):
                ok = [m for m in range(100) if b["classes"][img, m] == a["classes"][img, j]
                      and abs(sa[img, j] - sb[img, m]) <= 0.1
                      and _iou(a["boxes"][img, j], b["boxes"][img, m]) >= 0.8]
                assert ok, (img, j)
                n_checked += 1
    assert n_checked >= 2 * sum(len(c) for c in canvases.classes) * 0.9
    # wh / reg at the confident FP32 detections' cells: within 4 quantization steps (measured <= 2.9)
    fo = M.forward(params, imgs)
    img, j = np.nonzero(f32["scores"] >= 0.3)
    ys, xs = f32["ys"][img, j], f32["xs"][img, j]
    for h in ("wh", "reg"):
        err = np.abs(QZ.dequantize_output(graph, env, h) - fo[h])[img, :, ys, xs]
        assert err.max() <= 4 * graph.q(h).scale
        assert np.median(err) <= 1.5 * graph.q(h).scale


def test_scheme_validation():
    s = QZ.Scheme("per_tensor", "kl", "int8", True)
    assert s.name == "per_tensor/kl/int8/pow2"
    assert QZ.Scheme("per_channel", "percentile", "uint8", percentile=99.9).name == "per_channel/percentile/uint8/p99.9"
    assert QZ.Scheme(max_layers=["reg", "hm", "wh"]).name == "per_channel/max/uint8/max:heads"
    s2 = QZ.Scheme(calib="kl", nonzero=True, max_layers=("s2_down", "stem1"))
    assert s2.max_layers == ("stem1", "s2_down") and s2.name == "per_channel/kl/uint8/nonzero/max:stem1+s2_down"
    for kw, field, allowed in ((dict(weights="per_row"), "weights", "per_channel"),
                               (dict(calib="minmax"), "calib", "mean_max"),
                               (dict(activations="int4"), "activations", "uint8")):
        with pytest.raises(ValueError, match=rf"Scheme\.{field} must be one of .*{allowed}"):
            QZ.Scheme(**kw)
    for field in ("pow2", "nonzero"):
        for bad in (1, "yes", None):
            with pytest.raises(ValueError, match=f"Scheme.{field} must be True or False"):
                QZ.Scheme(**{field: bad})
    with pytest.raises(ValueError, match=r"Scheme.max_layers must name layers from .*'stem1'.*unknown \['head'\]"):
        QZ.Scheme(max_layers=("hm", "head"))
    with pytest.raises(ValueError, match="Scheme.max_layers must be a tuple of layer names"):
        QZ.Scheme(max_layers="hm")
    for bad in (0, 100.5, float("nan"), "99"):
        with pytest.raises(ValueError, match=r"Scheme.percentile must be a number in \(0, 100\]"):
            QZ.Scheme(percentile=bad)
    with pytest.raises(ValueError, match="scheme must be a detector.quantize.Scheme"):
        QZ.build_int8_graph(scheme="per_channel/max/int8")
    with pytest.raises(Exception):
        s.calib = "max"                                   # frozen


def test_bad_images_rejected(graph):
    ok = np.zeros((1, 1, 96, 96), np.uint8)
    for bad, what in ((ok.astype(np.float32), "dtype float32"), (ok.astype(np.int16), "dtype int16"),
                      (ok[:, :, :95], r"got \(1, 1, 95, 96\)"), (ok[0], r"got \(1, 96, 96\)"),
                      (ok[:0], r"N >= 1")):
        with pytest.raises(ValueError, match=rf"images must .*{what}"):
            QZ.run_int8_reference(graph, bad)
    with pytest.raises(ValueError, match="calib must"):
        QZ.build_int8_graph(calib=ok.astype(np.int8))
    with pytest.raises(ValueError, match="graph must be a firmware.graph.Graph"):
        QZ.run_int8_reference("graph", ok)
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        QZ.run_int8_reference(graph, ok, batch=0)
    for n in (0, 301, 2.0, True):
        with pytest.raises(ValueError, match=r"n must be an integer in \[1, 300\]"):
            QZ.calibration_images(n)
    with pytest.raises(ValueError, match="env is missing the output tensor 'wh'"):
        QZ.decode_outputs(graph, {"hm": np.zeros((1, 10, 24, 24), np.uint8)})


def test_calibration_uses_only_the_val_split(monkeypatch, params):
    seen = []
    real = D.make_split

    def spy(split, *a, **kw):
        seen.append(split)
        return real(split, *a, **kw)

    monkeypatch.setattr(D, "make_split", spy)
    imgs = QZ.calibration_images(16)
    QZ.build_int8_graph(params, calib=None)
    assert seen and set(seen) == {"val"}
    assert np.array_equal(imgs, real("val", 16).images)
    assert np.array_equal(QZ.calibration_images(), real("val", 64).images)     # deterministic default
    test = real("test", 16).images
    assert not any(np.array_equal(a, b) for a in imgs for b in test)


def test_calibrators_follow_their_rules(small_acts):
    """max = the data range; percentile / KL clip inside it; max_layers and nonzero do what they say."""
    some = ("stem1", "s2_a", "s2_b", "up1", "hm_conv", "hm", "wh", "reg")      # KL is slow: a few tensors
    rng = {c: QZ.tensor_ranges(small_acts, QZ.Scheme(calib=c, activations="int8"), some) for c in QZ.CALIB_METHODS}
    for name, (lo, hi) in rng["max"].items():
        a = small_acts[name]
        assert (lo, hi) == (float(a.min()), float(a.max()))
        for c in ("percentile", "kl"):
            assert lo <= rng[c][name][0] <= rng[c][name][1] <= hi
        b = [small_acts[name][s:s + QZ.CALIB_BATCH] for s in range(0, 8, QZ.CALIB_BATCH)]
        assert rng["mean_max"][name][1] == pytest.approx(np.mean([x.max() for x in b]), rel=1e-12)
    # percentile / KL clip something somewhere (otherwise they would equal max)
    assert any(rng["kl"][n][1] < rng["max"][n][1] for n in rng["max"])
    assert any(rng["percentile"][n][1] < rng["max"][n][1] for n in rng["max"])
    heads_max = QZ.tensor_ranges(small_acts, QZ.Scheme(calib="percentile", activations="int8", max_layers=M.HEADS),
                                 some)
    for name in rng["max"]:
        assert heads_max[name] == (rng["max"][name] if name in M.HEADS else rng["percentile"][name])
    # nonzero: the KL histogram leaves out the exact zeros of a ReLU output (and then clips less)
    from golden.calib import EntropyObserver
    names = ("stem1", "s2_a", "up1", "hm_conv")
    nz = QZ.tensor_ranges(small_acts, QZ.Scheme(calib="kl", activations="int8", nonzero=True), names)
    for name in names:
        a = small_acts[name]
        o = EntropyObserver()
        o.observe(a[a != 0])
        assert nz[name] == tuple(float(v) for v in o.compute_range())
        assert np.mean(a == 0) > 0.2 and nz[name][1] > rng["kl"][name][1]
    with pytest.raises(ValueError, match="names must be layers from"):
        QZ.tensor_ranges(small_acts, QZ.Scheme(), ["image"])


def test_schemes_build_and_follow_their_rules(params, small_acts):
    """Every weight mode x activation type x pow2 builds; zero points and scales follow the scheme."""
    for w in QZ.WEIGHT_MODES:
        for act in QZ.ACTIVATION_TYPES:
            for pow2 in (False, True):
                g = QZ.build_int8_graph(params, QZ.Scheme(w, "max", act, pow2), small_acts)
                for L in M.ARCH:
                    q = g.q(L.name)
                    assert q.dtype == act
                    lo, hi = float(small_acts[L.name].min()), float(small_acts[L.name].max())
                    if act == "int8":
                        assert q.zp == 0 and q.scale * 127 >= max(-lo, hi) * (1 - 1e-6)
                    else:
                        # the rounded zero point may move the range by half a step (choose_qparams)
                        assert q.scale * (255.5 - q.zp) >= hi and q.scale * (-0.5 - q.zp) <= min(lo, 0)
                        if L.relu:
                            assert q.zp == 0              # asymmetric on [0, max]: zero point at qmin
                    if pow2:
                        assert np.log2(q.scale) == np.round(np.log2(q.scale))
                        if L.has_weights:
                            ws = np.asarray(g.node(L.name).w_scale)
                            assert np.all(np.log2(ws) == np.round(np.log2(ws)))
                    else:
                        assert q.scale == pytest.approx((max(-lo, hi) / 127) if act == "int8" else
                                                        (max(hi, 0) - min(lo, 0)) / 255, rel=1e-6)


def test_build_is_deterministic(params, small_acts, graph):
    a = QZ.build_int8_graph(params, QZ.Scheme(calib="percentile"), small_acts)
    b = QZ.build_int8_graph(params, QZ.Scheme(calib="percentile"), small_acts)
    c = QZ.build_int8_graph(params)
    for x, y in ((a, b), (c, graph)):
        for n, m in zip(x.nodes, y.nodes):
            assert n.out_q == m.out_q
            if hasattr(n, "weight"):
                assert np.array_equal(n.weight, m.weight) and np.array_equal(n.bias, m.bias)


# --------------------------------------------------------------------------- bench/quant.py machinery


def test_bench_table_machinery_on_a_subset(params, small_acts):
    """The study's rows on 12 test canvases equal direct evaluations; best/fold/noise helpers work."""
    from bench import quant as B
    from detector.evaluate import coco_map

    cv = D.make_split("test", 12)
    dets, scores = B.float_detections(params, cv, "fp32")
    fp32 = B.evaluate(cv, dets, scores)
    assert fp32["map"] == coco_map(cv, predict(params, cv.images))["mAP"]
    study = B.Study(params, cv, calib_n=8)
    study._acts[8] = small_acts                     # the fixture's 8 calibration canvases
    row = study.run(QZ.Scheme(), fp32=fp32["map"])
    g = QZ.build_int8_graph(params, QZ.Scheme(), QZ.calibration_images(8))
    d8 = QZ.decode_outputs(g, QZ.run_int8_reference(g, cv.images))
    direct = coco_map(cv, d8, d8["scores"] * SCORE_SCALE)
    assert row["map"] == direct["mAP"] and row["map50"] == direct["AP50"] and row["ar100"] == direct["AR100"]
    assert row["scheme"] == QZ.Scheme().name and row["calib_n"] == 8 and row["delta"] == row["map"] - fp32["map"]
    assert row["weights"] == "per_channel" and row["pow2"] is False and row["max_layers"] == []
    row2 = study.run(QZ.Scheme("per_tensor", "mean_max", "int8", True), calib_n=4)
    assert row2["scheme"] == "per_tensor/mean_max/int8/pow2/calib4" and row2["delta"] is None
    assert 0 <= row2["map"] <= 1 and set(study.dets) == {row["scheme"], row2["scheme"]}
    assert B.best_row(study.rows) is (row if row["map"] >= row2["map"] else row2)
    tie = [{"map": 0.5, "k": 0}, {"map": 0.7, "k": 1}, {"map": 0.7, "k": 2}]
    assert B.best_row(tie)["k"] == 1
    # fold mAPs: each fold is the mAP of those canvases alone
    f = B.fold_maps(cv, dets, scores, 3)
    sub = D.make_split("test", 4, start=4)
    assert f[1] == coco_map(sub, predict(params, sub.images))["mAP"]
    with pytest.raises(ValueError, match=r"folds must be in \[1, 12\]"):
        B.fold_maps(cv, dets, scores, 13)
    names = [s.name for s in B.grid_schemes()]
    assert len(names) == len(set(names)) == 16
    assert {n.split("/")[1] for n in names} == set(QZ.CALIB_METHODS)


def test_reduced_precision_forward(params):
    """fp16 / bf16 storage: every head output is representable in the format and close to fp32."""
    from bench import quant as B
    from golden.quant import to_bf16_bits

    imgs = D.make_split("test", 2).images
    ref = M.forward(params, imgs)
    for fmt, rel in (("fp16", 2e-2), ("bf16", 1e-1)):
        out = B.forward_rounded(params, imgs, fmt)
        for h in M.HEADS:
            y = out[h]
            assert y.dtype == np.float32
            if fmt == "fp16":
                assert np.array_equal(y.astype(np.float16).astype(np.float32), y)
            else:
                assert np.all((y.view(np.uint32) & 0xFFFF) == 0)
                assert np.array_equal(to_bf16_bits(y).astype(np.uint32) << 16, y.view(np.uint32))
            err = np.abs(y - ref[h])
            assert 0 < err.max() <= rel * max(1.0, np.abs(ref[h]).max())
    assert np.array_equal(B.round_to("fp32", ref["hm"]), ref["hm"])
    assert B.round_to("bf16", np.float32([1 + 2**-8]))[0] == 1.0           # tie -> even
    assert B.round_to("bf16", np.float32([1 + 3 * 2**-8]))[0] == 1 + 2**-6  # tie -> even (up)
    assert B.round_to("fp16", np.float32([1 + 2**-11]))[0] == 1.0
    with pytest.raises(ValueError, match=r"fmt must be one of \('fp32', 'fp16', 'bf16'\)"):
        B.round_to("fp8", ref["hm"])
