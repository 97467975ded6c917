"""Tests of detector/: dataset generation, NumPy float inference vs the training framework, decoding, COCO mAP.

References are independent of the code under test: scalar loops for bilinear
resizing, convolution, transposed convolution, the 3x3 peak test and CenterNet
decoding; Python's ``sorted`` for the top-K order; golden.ops.max_pool2d for the
peak test on codes; PyTorch's own outputs (saved by detector/train.py next to the
weights) for the float network. PyTorch is not needed to run these tests.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from detector import dataset as D
from detector import decode as dec
from detector import evaluate as E
from detector import model as M
from golden import ops

RNG = np.random.default_rng(1234)


@pytest.fixture(scope="module")
def test_canvases():
    return D.make_split("test")


@pytest.fixture(scope="module")
def ref():
    with np.load(M.REFERENCE_FILE) as z:
        out = {k: z[k] for k in z.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out


@pytest.fixture(scope="module")
def params():
    return M.load_weights()


# ----------------------------------------------------------------------------------- dataset


def test_splits_are_disjoint_and_cover_all_sources():
    idx = [D.source_indices(s) for s in D.SPLITS]
    assert [len(i) for i in idx] == [1078, 359, 360]
    allx = np.concatenate(idx)
    assert len(np.unique(allx)) == 1797 == len(allx)
    with pytest.raises(ValueError, match="split"):
        D.source_indices("dev")


def resize_loop(img, H, W):
    """Bilinear, half-pixel centres, edge clamp: one output pixel at a time."""
    h, w = img.shape
    out = np.zeros((H, W))
    for r in range(H):
        sy = min(max((r + 0.5) * h / H - 0.5, 0.0), h - 1)
        y0 = int(math.floor(sy)); y1 = min(y0 + 1, h - 1); fy = sy - y0
        for c in range(W):
            sx = min(max((c + 0.5) * w / W - 0.5, 0.0), w - 1)
            x0 = int(math.floor(sx)); x1 = min(x0 + 1, w - 1); fx = sx - x0
            out[r, c] = ((1 - fy) * ((1 - fx) * img[y0, x0] + fx * img[y0, x1])
                         + fy * ((1 - fx) * img[y1, x0] + fx * img[y1, x1]))
    return out


@pytest.mark.parametrize("H,W", [(16, 16), (23, 37), (40, 31), (8, 8), (5, 3)])
def test_resize_bilinear_matches_loop(H, W):
    img = RNG.random((8, 8))
    np.testing.assert_allclose(D.resize_bilinear(img, H, W), resize_loop(img, H, W), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="height"):
        D.resize_bilinear(img, 0, 4)


def test_make_split_is_deterministic_and_addressable():
    a = D.make_split("val", 4, start=10)
    b = D.make_split("val")
    assert np.array_equal(a.images, b.images[10:14])
    for k in range(4):
        assert np.array_equal(a.boxes[k], b.boxes[10 + k]) and np.array_equal(a.classes[k], b.classes[10 + k])
    t0, t1 = D.make_split("train", 3, epoch=0), D.make_split("train", 3, epoch=1)
    assert not np.array_equal(t0.images, t1.images)
    assert np.array_equal(t0.images, D.make_split("train", 3, epoch=0).images)
    for bad, match in [(dict(split="train"), "n must be given"), (dict(split="test", n=1, start=500), "start"),
                       (dict(split="val", n=1, epoch=1), "epoch"), (dict(split="test", n=0), "n must")]:
        with pytest.raises(ValueError, match=match):
            D.make_split(**bad)


def test_test_split_is_the_one_the_weights_were_evaluated_on(test_canvases, ref):
    n = len(ref["images"])
    assert np.array_equal(test_canvases.images[:n], ref["images"])
    assert ref["meta"]["test_digest"] == D.digest(test_canvases)


def test_canvas_boxes_are_exact_ink_boxes(test_canvases):
    """Boxes stay inside the canvas, sizes follow the sampling ranges, overlaps obey MAX_OVERLAP, and on
    single-digit canvases a threshold separates the box edges' ink from everything outside the box."""
    c = test_canvases
    assert c.images.dtype == np.uint8 and c.images.shape == (500, 1, 96, 96)
    counts = np.array([len(b) for b in c.boxes])
    assert counts.min() >= 1 and counts.max() <= D.MAX_DIGITS
    single = 0
    for img, boxes, cls in zip(c.images[:, 0], c.boxes, c.classes):
        assert boxes.dtype == np.float32 and np.all(boxes == np.round(boxes))
        assert np.all(boxes[:, :2] >= 0) and np.all(boxes[:, 2:] <= D.CANVAS)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert np.all(w >= 1) and np.all(h >= 1) and np.all(h <= D.SIZE_RANGE[1]) and np.all(w <= D.SIZE_RANGE[1])
        assert np.all((cls >= 0) & (cls < 10))
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
                ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
                assert iw * ih <= D.MAX_OVERLAP * min(w[i] * h[i], w[j] * h[j]) + 1e-9
        for x0, y0, x1, y1 in boxes.astype(int):  # every box touches ink on all four sides
            assert img[y0, x0:x1].max() > 0 and img[y1 - 1, x0:x1].max() > 0
            assert img[y0:y1, x0].max() > 0 and img[y0:y1, x1 - 1].max() > 0
        if len(boxes) == 1:
            single += 1
            x0, y0, x1, y1 = boxes[0].astype(int)
            edge_min = min(img[y0, x0:x1].max(), img[y1 - 1, x0:x1].max(), img[y0:y1, x0].max(), img[y0:y1, x1 - 1].max())
            outside = img.copy()
            outside[y0:y1, x0:x1] = 0
            # ink = value >= 0.25 * gain * 255 (gain >= 0.7) -> edges >= 44.6, outside below that threshold
            assert outside.max() < edge_min and edge_min >= math.floor(0.25 * 0.7 * 255)
    assert single > 50


def test_gaussian_radius_and_targets():
    # CenterNet's formula by hand for a 10 x 10 box, min_overlap 0.7: a3 = 2.8, b3 = -28, c3 = -30;
    # r = min(19.07, 36.73, 2.733)
    r3 = (-28 + math.sqrt(28 * 28 + 4 * 2.8 * 30)) / 2
    assert D.gaussian_radius(10, 10) == pytest.approx(r3, abs=1e-12)
    assert r3 == pytest.approx(2.7332, abs=1e-4)
    t = D.encode_targets(np.array([[10, 22, 31, 49]], np.float32), np.array([3]), max_objs=2)
    # centre (20.5, 35.5) px -> (5.125, 8.875) cells -> cell (5, 8); w, h = 5.25, 6.75 cells
    assert t["hm"][3, 8, 5] == 1.0 and np.count_nonzero(t["hm"] == 1.0) == 1
    assert np.count_nonzero(t["hm"][np.arange(10) != 3]) == 0
    np.testing.assert_allclose(t["wh"][0], [5.25, 6.75])
    np.testing.assert_allclose(t["reg"][0], [0.125, 0.875])
    assert t["ind"][0] == 8 * D.OUT + 5 and list(t["mask"]) == [1, 0]
    r = int(D.gaussian_radius(7, 6))
    sigma = (2 * r + 1) / 6
    assert t["hm"][3, 8, 5 + r] == pytest.approx(math.exp(-r * r / (2 * sigma * sigma)), rel=1e-6)
    assert t["hm"][3, 8, 5 + r + 1] == 0
    with pytest.raises(ValueError, match="max_objs"):
        D.encode_targets(np.zeros((3, 4)), np.zeros(3, int), max_objs=2)


# ----------------------------------------------------------------------------------- model


def conv_loop(x, w, b, stride, pad, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, ho, wo))
    og = o // groups
    for oc in range(o):
        g = oc // og
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, g * cg:(g + 1) * cg, i * stride:i * stride + kh, j * stride:j * stride + kw]
                y[:, oc, i, j] = (patch * w[oc]).sum(axis=(1, 2, 3)) + b[oc]
    return y


def convt_loop(x, w, b, stride, pad):
    n, ci, h, wd = x.shape
    _, co, kh, kw = w.shape
    ho, wo = (h - 1) * stride - 2 * pad + kh, (wd - 1) * stride - 2 * pad + kw
    y = np.zeros((n, co, ho, wo)) + b.reshape(1, -1, 1, 1)
    for i in range(h):
        for j in range(wd):
            for p in range(kh):
                for q in range(kw):
                    oy, ox = i * stride - pad + p, j * stride - pad + q
                    if 0 <= oy < ho and 0 <= ox < wo:
                        y[:, :, oy, ox] += x[:, :, i, j].astype(np.float64) @ w[:, :, p, q]
    return y


@pytest.mark.parametrize("stride,pad,groups,k", [(1, 1, 1, 3), (2, 1, 1, 3), (1, 0, 1, 1), (2, 1, 2, 3), (1, 1, 4, 3)])
def test_conv2d_matches_loop(stride, pad, groups, k):
    x = RNG.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = RNG.standard_normal((8, 4 // groups, k, k)).astype(np.float32)
    b = RNG.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(M.conv2d(x, w, b, stride, pad, groups), conv_loop(x, w, b, stride, pad, groups),
                               rtol=0, atol=1e-4)


def test_conv_transpose2d_matches_loop():
    x = RNG.standard_normal((2, 3, 5, 4)).astype(np.float32)
    w = RNG.standard_normal((3, 6, 4, 4)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    y = M.conv_transpose2d(x, w, b, 2, 1)
    assert y.shape == (2, 6, 10, 8)
    np.testing.assert_allclose(y, convt_loop(x, w, b, 2, 1), rtol=0, atol=1e-4)


@pytest.mark.parametrize("transposed", [False, True])
def test_fold_bn_equals_conv_then_bn(transposed):
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    co = 5
    w = RNG.standard_normal((4, co, 4, 4) if transposed else (co, 4, 3, 3)).astype(np.float32)
    gamma, beta = RNG.uniform(0.5, 2, co), RNG.standard_normal(co)
    mean, var, eps = RNG.standard_normal(co), RNG.uniform(0.1, 2, co), 1e-5
    zero = np.zeros(co, np.float32)
    raw = M.conv_transpose2d(x, w, zero) if transposed else M.conv2d(x, w, zero, 1, 1)
    want = (gamma.reshape(1, -1, 1, 1) * (raw - mean.reshape(1, -1, 1, 1)) / np.sqrt(var.reshape(1, -1, 1, 1) + eps)
            + beta.reshape(1, -1, 1, 1))
    wf, bf = M.fold_bn(w, None, gamma, beta, mean, var, eps, transposed)
    got = M.conv_transpose2d(x, wf, bf) if transposed else M.conv2d(x, wf, bf, 1, 1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_architecture_shapes_macs_and_accelerator_ops():
    sh, mc = M.shapes(), M.macs()
    assert sh["hm"] == (10, 24, 24) and sh["wh"] == (2, 24, 24) and sh["reg"] == (2, 24, 24)
    assert 40e6 < sum(mc.values()) < 100e6            # < 0.3 GMAC / frame
    for L in M.ARCH:
        assert L.op in ("conv", "convT", "add")
        if L.op == "convT":
            assert (L.k, L.stride, L.padding) == (4, 2, 1)
        if L.has_weights and L.name not in M.HEADS and L.name != "stem1":
            assert L.cin % 8 == 0 and L.cout % 8 == 0
    # the same network in the firmware graph IR (dummy int8 weights): same shapes, same MAC count per layer
    from firmware.graph import Graph, Q
    q = Q(0.05, 0, "int8")
    g = Graph()
    g.add_input("image", (1,) + M.INPUT_SHAPE, Q(1 / 255, -128, "int8"))
    for L in M.ARCH:
        act = "relu" if L.relu else None
        if L.op == "add":
            g.add_op(L.name, L.inputs[0], L.inputs[1], q, act=act)
            continue
        w = np.zeros(M._weight_shape(L), np.int8)
        if L.op == "conv":
            g.conv2d(L.name, L.inputs[0], w, None, 0.01, q, stride=L.stride, padding=L.padding, groups=L.groups, act=act)
        else:
            g.conv_transpose2d(L.name, L.inputs[0], w, None, 0.01, q, stride=L.stride, padding=L.padding, act=act)
        assert g.node(L.name).macs(g.in_shapes(g.node(L.name))) == mc[L.name]
    for name, shape in sh.items():
        assert g.shape(name) == (1,) + shape
    assert g.macs() == sum(mc.values())


def test_weights_are_small_and_checked(params):
    total = M.WEIGHTS_FILE.stat().st_size + M.REFERENCE_FILE.stat().st_size
    assert total < 2_000_000
    assert sum(v.size for v in params.values()) == M.param_count()
    bad = dict(params)
    bad["hm.bias"] = bad["hm.bias"][:3]
    with pytest.raises(ValueError, match="hm.bias"):
        M.check_weights(bad)
    del bad["hm.bias"]
    with pytest.raises(ValueError, match="missing"):
        M.check_weights(bad)
    with pytest.raises(ValueError, match="uint8"):
        M.forward(params, np.zeros((1, 1, 96, 96), np.float32))


def test_numpy_inference_matches_torch_reference(params, ref):
    """Float32 NumPy vs the eval-mode PyTorch model (BN unfolded) on the saved test canvases:
    |numpy - torch| <= 1e-4 * max(1, |torch|) element-wise."""
    out = M.forward(params, ref["images"])
    for h in M.HEADS:
        t = ref[h]
        assert out[h].shape == t.shape and out[h].dtype == np.float32
        err = np.abs(out[h] - t) / np.maximum(1.0, np.abs(t))
        assert err.max() <= 1e-4, (h, float(err.max()))


# ----------------------------------------------------------------------------------- decode


def peak_loop(a):
    n, c, h, w = a.shape
    keep = np.zeros(a.shape, bool)
    for i in np.ndindex(n, c):
        for y in range(h):
            for x in range(w):
                nb = a[i][max(0, y - 1):y + 2, max(0, x - 1):x + 2]
                keep[i][y, x] = a[i][y, x] == nb.max()
    return keep


@pytest.mark.parametrize("dtype", ["uint8", "int8", "float32"])
def test_peak_mask_keeps_plateaus(dtype):
    if dtype == "float32":
        a = RNG.integers(-2, 3, (2, 3, 9, 7)).astype(np.float32) * 0.25
    else:
        lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
        a = RNG.choice(np.array([lo, lo + 1, 0, hi - 1, hi]), (2, 3, 9, 7)).astype(dtype)
    keep = dec.peak_mask(a)
    assert np.array_equal(keep, peak_loop(a))
    if dtype != "float32":
        assert np.array_equal(keep, ops.max_pool2d(a, 3, 1, 1) == a)
    flat = np.full((1, 1, 4, 4), 7, dtype)          # a plateau: every cell is a peak
    assert dec.peak_mask(flat).all()


def test_topk_order_is_score_desc_then_index_asc():
    s = RNG.integers(0, 4, (3, 2, 5, 5)).astype(np.uint8)
    vals, ind = dec.topk(s, 20)
    for n in range(3):
        f = s[n].ravel()
        want = sorted(range(f.size), key=lambda i: (-int(f[i]), i))[:20]
        assert list(ind[n]) == want and np.array_equal(vals[n], f[want])
    with pytest.raises(ValueError, match="k must"):
        dec.topk(s, 51)


def decode_loop(heat, wh, reg, k, stride):
    """CenterNet decode, one image at a time, with the documented tie order."""
    n, c, H, W = heat.shape
    keep = peak_loop(heat)
    out = []
    for i in range(n):
        cand = []
        for cl in range(c):
            for y in range(H):
                for x in range(W):
                    s = heat[i, cl, y, x] if keep[i, cl, y, x] else 0
                    cand.append((-float(s), cl * H * W + y * W + x, cl, y, x))
        dets = []
        for negs, _, cl, y, x in sorted(cand)[:k]:
            cx, cy = x + float(reg[i, 0, y, x]), y + float(reg[i, 1, y, x])
            w, h = float(wh[i, 0, y, x]), float(wh[i, 1, y, x])
            dets.append((-negs, cl, [(cx - w / 2) * stride, (cy - h / 2) * stride,
                                     (cx + w / 2) * stride, (cy + h / 2) * stride]))
        out.append(dets)
    return out


def test_decode_matches_loop_reference():
    logits = RNG.standard_normal((2, 3, 6, 5)).astype(np.float32)
    logits[0, 1, 2:4, 2:4] = 9.5                      # a plateau
    wh = RNG.uniform(0, 8, (2, 2, 6, 5)).astype(np.float32)
    reg = RNG.uniform(0, 1, (2, 2, 6, 5)).astype(np.float32)
    d = dec.decode_float(logits, wh, reg, k=40)
    heat = dec.sigmoid_f32(logits)
    np.testing.assert_array_equal(heat, (1 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.float32))
    ref = decode_loop(heat, wh, reg, 40, 4)
    for i in range(2):
        assert [float(s) for s in d["scores"][i]] == [s for s, _, _ in ref[i]]
        assert list(d["classes"][i]) == [c for _, c, _ in ref[i]]
        np.testing.assert_allclose(d["boxes"][i], [b for _, _, b in ref[i]], rtol=0, atol=1e-9)
    assert np.array_equal(d["peak"], d["scores"] > 0)
    # all four plateau cells are kept, in (y, x) order
    top = [(int(y), int(x)) for c_, y, x in zip(d["classes"][0][:4], d["ys"][0][:4], d["xs"][0][:4]) if c_ == 1]
    assert top == [(2, 2), (2, 3), (3, 2), (3, 3)]
    with pytest.raises(ValueError, match="heat must be >= 0"):
        dec.decode(logits, wh, reg)
    with pytest.raises(ValueError, match="wh must have shape"):
        dec.decode(heat, wh[:1], reg)


def test_decode_int8_lut_and_merged_ties():
    scale, zp = 0.1, -3
    lut = dec.sigmoid_lut(scale, zp)
    codes = np.arange(-128, 128)
    want = np.clip(np.rint(256 / (1 + np.exp(-scale * (codes - zp)))), 0, 255).astype(np.uint8)
    assert np.array_equal(lut, want)
    # two different logit codes that the table merges: both are peaks (score-domain rule), index order
    q = np.full((1, 2, 4, 4), -128, np.int8)
    hi = np.flatnonzero(lut == 255)
    a, b = int(hi[0]) - 128, int(hi[1]) - 128
    assert a != b
    q[0, 0, 1, 1], q[0, 0, 1, 2] = b, a               # b > a, one LUT code
    wh = np.ones((1, 2, 4, 4), np.float32)
    reg = np.zeros((1, 2, 4, 4), np.float32)
    d = dec.decode_int8(q, scale, zp, wh, reg, k=5)
    assert d["scores"].dtype == np.uint8 and list(d["scores"][0][:2]) == [255, 255]
    assert [(int(y), int(x)) for y, x in zip(d["ys"][0][:2], d["xs"][0][:2])] == [(1, 1), (1, 2)]
    assert list(d["peak"][0][:2]) == [True, True]
    assert not dec.peak_mask(q)[0, 0, 1, 2]            # the logit-domain test would drop the smaller one
    np.testing.assert_allclose(d["boxes"][0][1], [6, 2, 10, 6])


def test_decoding_ground_truth_targets_gives_map_one(test_canvases):
    """Encode the exact boxes as CenterNet maps, decode them: every box comes back, mAP = 1;
    boxes shrunk to IoU 0.82 pass 7 of the 10 IoU thresholds: mAP = 0.7."""
    c = D.make_split("test", 120)
    n = len(c)
    heat = np.zeros((n, 10, 24, 24), np.float32)
    wh = np.zeros((n, 2, 24, 24), np.float32)
    reg = np.zeros((n, 2, 24, 24), np.float32)
    for i, (b, k) in enumerate(zip(c.boxes, c.classes)):
        t = D.encode_targets(b, k)
        heat[i] = t["hm"] * 0.9
        for j in range(len(b)):
            y, x = divmod(int(t["ind"][j]), 24)
            wh[i, :, y, x], reg[i, :, y, x] = t["wh"][j], t["reg"][j]
    d = dec.decode(heat, wh, reg)
    for i, b in enumerate(c.boxes):
        got = d["boxes"][i][: len(b)]
        order = np.lexsort((got[:, 0], got[:, 1]))
        want = b[np.lexsort((b[:, 0], b[:, 1]))]
        np.testing.assert_allclose(got[order], want, atol=1e-5)
    res = E.coco_map(c, d)
    assert res["mAP"] == pytest.approx(1.0) and res["AR100"] == pytest.approx(1.0)
    f = math.sqrt(0.82)
    shrunk = dict(d, boxes=np.concatenate([(d["boxes"][..., :2] + d["boxes"][..., 2:]) / 2 - f * (d["boxes"][..., 2:] - d["boxes"][..., :2]) / 2,
                                           (d["boxes"][..., :2] + d["boxes"][..., 2:]) / 2 + f * (d["boxes"][..., 2:] - d["boxes"][..., :2]) / 2], -1))
    assert E.coco_map(c, shrunk)["mAP"] == pytest.approx(0.7)


# ----------------------------------------------------------------------------------- trained model


def test_fp32_map_of_shipped_weights(params, ref):
    """FP32 COCO mAP@[.5:.95] on the first N_EVAL test canvases equals the value the training run recorded
    (NumPy inference, so it must agree to float rounding) and meets the 0.6 target; the recorded full-test
    mAP meets it too."""
    meta = ref["meta"]
    n = meta["test_subset"]["n"]
    res = E.evaluate(params, "test", n)
    assert res["mAP"] == pytest.approx(meta["test_subset"]["mAP"], abs=2e-3)
    assert res["mAP"] >= 0.6 and meta["test"]["mAP"] >= 0.6
