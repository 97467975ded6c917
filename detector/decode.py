"""CenterNet "objects as points" decoding (../shared/spec/arithmetic.md §7) with a defined tie order.

    heat = sigmoid(hm)                                   # float32, or an 8-bit LUT (INT8 path)
    keep = maxpool3x3(heat, stride 1, pad 1) == heat     # plateaus: every tied maximum is kept
    s    = heat * keep                                   # non-peaks score 0 and still compete
    top-K (K = 100) of s over (class, y, x)
    box  = [x + reg_x -+ w/2, y + reg_y -+ h/2] * stride # input pixels

**Top-K order (this project's definition; torch.topk leaves ties undefined).**
``s`` is flattened per image in (class, y, x) row-major order, ``ind = cls *
H * W + y * W + x``, and the K entries are taken by **score descending, ties
by ``ind`` ascending** (i.e. class, then row, then column ascending): a stable
sort of the negated scores. Exactly K detections are returned per image, as in
CenterNet; when fewer than K peaks exist the tail is non-peak entries with
score 0 (their ``peak`` flag is False). A real peak whose score is 0 (possible
with 8-bit scores) ties with those and is ordered by ``ind`` like any tie.

**Peak test.** The 3x3 max pool treats the padding as -inf (it never wins);
``keep`` is exact equality, so every cell of a plateau of equal maxima is a
peak (CenterNet's semantics: ``hmax == heat``).

**Float path** (:func:`decode_float`): ``heat`` is the logistic function of the
float32 logits computed in float64 and rounded to float32 (what
``torch.sigmoid`` returns up to its last-ulp rounding); peaks and ranking use
that float32 heat, so logits so large that their float32 sigmoids are equal
(e.g. both 1.0) form a plateau.

**INT8 path** (:func:`decode_int8`): the heatmap head's int8 logit codes go
through a 256-entry sigmoid table (:func:`sigmoid_lut`, ``golden.ops.make_lut``
of the exact logistic, no sigma saturation) to uint8 scores with
``SCORE_SCALE`` = 1/256, zero point 0 (score = code / 256). The table may map
several distinct logit codes to one score code (it saturates at 0 and 255 and
is flat where the sigmoid's slope is below 1/256 per logit step). **The peak
test and the ranking both run on the uint8 scores**, not on the logits: logit
codes merged by the table are ties, a plateau of them keeps every cell, and
their order is the index order above. (Testing peaks on the int8 logits would
keep fewer cells -- a strictly smaller logit next to the peak would not tie --
and is what :func:`peak_mask` gives if called on the logit codes; this project
defines the score-domain rule because it is CenterNet's ``hmax == heat`` on the
heat the accelerator produces.) The pool is ``golden.ops.max_pool2d``, the
same node the firmware graph runs.

``wh`` and ``reg`` are real values (dequantized on the INT8 path) in output
cells; boxes are in input pixels (``* STRIDE``), float64.
"""
from __future__ import annotations

import numpy as np

from golden import ops

from .dataset import STRIDE

__all__ = ["K", "SCORE_SCALE", "SCORE_ZP", "sigmoid_f32", "peak_mask", "topk", "decode", "decode_float",
           "sigmoid_lut", "decode_int8"]

K = 100                   #: detections per image
SCORE_SCALE = 1.0 / 256   #: uint8 score code q means q / 256
SCORE_ZP = 0


def _maps(a, name: str, channels: int | None = None) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != 4:
        raise ValueError(f"{name} must be (N, C, H, W), got shape {a.shape}")
    if channels is not None and a.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels, got {a.shape[1]}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {a.shape}")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real or integer array, got {a.dtype}")
    return a


def sigmoid_f32(logits) -> np.ndarray:
    """float32 logistic of float logits (float64 evaluation, one rounding to float32)."""
    a = _maps(logits, "logits")
    if a.dtype.kind != "f":
        raise ValueError(f"logits must be a float array, got {a.dtype}")
    return ops.sigmoid_f64(a).astype(np.float32)


def peak_mask(heat) -> np.ndarray:
    """``maxpool3x3(heat, stride 1, pad 1) == heat`` for (N, C, H, W) float or integer maps; bool.

    Padding acts as -inf (float) / the dtype's minimum (integers: it can only tie
    with the window's real maximum, never exceed it), so border cells are tested
    against their real neighbours only.
    """
    a = _maps(heat, "heat")
    pad = -np.inf if a.dtype.kind == "f" else np.iinfo(a.dtype).min
    p = np.pad(a, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=pad)
    H, W = a.shape[2:]
    m = a.copy()
    for dy in range(3):
        for dx in range(3):
            np.maximum(m, p[:, :, dy:dy + H, dx:dx + W], out=m)
    return m == a


def topk(scores, k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Per-image top-``k`` of (N, C, H, W) scores: (values (N, k), flat indices (N, k) int64).

    Order: score descending, ties by flat (class, y, x) index ascending (stable sort).
    """
    a = _maps(scores, "scores")
    n = a.shape[0]
    flat = a.reshape(n, -1)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= flat.shape[1]:
        raise ValueError(f"k must be an integer in [1, {flat.shape[1]}] (C*H*W), got {k!r}")
    key = -(flat.astype(np.int64) if flat.dtype.kind in "iu" else flat)
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(flat, order, axis=1), order.astype(np.int64)


def decode(heat, wh, reg, k: int = K, stride: int = STRIDE) -> dict:
    """Decode non-negative heat (N, C, H, W) and real ``wh``/``reg`` (N, 2, H, W) into K detections per image.

    Returns ``boxes`` (N, k, 4) float64 [x0, y0, x1, y1] in input pixels,
    ``scores`` (N, k) (heat's dtype), ``classes`` (N, k) int64, ``peak`` (N, k)
    bool, and the cells ``ys``/``xs`` (N, k) int64. See the module docstring for
    the peak rule and the tie order.
    """
    h = _maps(heat, "heat")
    return _decode(h, peak_mask(h), wh, reg, k, stride)


def _decode(h: np.ndarray, keep: np.ndarray, wh, reg, k, stride) -> dict:
    n, c, H, W = h.shape
    if np.min(h) < 0:
        raise ValueError("heat must be >= 0 (probabilities or unsigned score codes), got a negative value")
    wh = _maps(wh, "wh", 2)
    reg = _maps(reg, "reg", 2)
    for name, a in (("wh", wh), ("reg", reg)):
        if a.shape != (n, 2, H, W):
            raise ValueError(f"{name} must have shape {(n, 2, H, W)}, got {a.shape}")
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be an integer >= 1, got {stride!r}")
    s = np.where(keep, h, np.zeros((), h.dtype))
    vals, ind = topk(s, k)
    cls, pix = ind // (H * W), ind % (H * W)
    ys, xs = pix // W, pix % W
    rows = np.arange(n)[:, None]
    w_, h_ = wh[rows, 0, ys, xs].astype(np.float64), wh[rows, 1, ys, xs].astype(np.float64)
    cx = xs + reg[rows, 0, ys, xs].astype(np.float64)
    cy = ys + reg[rows, 1, ys, xs].astype(np.float64)
    boxes = np.stack([cx - w_ / 2, cy - h_ / 2, cx + w_ / 2, cy + h_ / 2], axis=-1) * stride
    peak = np.take_along_axis(keep.reshape(n, -1), ind, axis=1)
    return {"boxes": boxes, "scores": vals, "classes": cls, "peak": peak, "ys": ys, "xs": xs}


def decode_float(hm_logits, wh, reg, k: int = K, stride: int = STRIDE) -> dict:
    """Float path: ``decode(sigmoid_f32(hm_logits), wh, reg)``; scores float32 in (0, 1]."""
    return decode(sigmoid_f32(hm_logits), wh, reg, k, stride)


def sigmoid_lut(in_scale, in_zp, in_dtype: str = "int8") -> np.ndarray:
    """(256,) uint8 table: entry ``q - qmin`` = ``clamp(rint(sigmoid(in_scale * (q - in_zp)) * 256), 0, 255)``."""
    return ops.make_lut(ops.sigmoid_f64, in_scale, in_zp, in_dtype, SCORE_SCALE, SCORE_ZP, "uint8")


def decode_int8(hm_codes, hm_scale, hm_zp, wh, reg, k: int = K, stride: int = STRIDE, in_dtype: str = "int8") -> dict:
    """INT8 path: heat = uint8 scores ``sigmoid_lut(hm_scale, hm_zp)[hm_codes]`` (``golden.ops.apply_lut``),
    peaks = ``golden.ops.max_pool2d(heat, 3, 1, 1) == heat`` (the firmware graph's MaxPool node), then
    the same top-K and box rule as :func:`decode`. ``scores`` are uint8 codes (score = code * SCORE_SCALE)."""
    codes = _maps(hm_codes, "hm_codes")
    heat = ops.apply_lut(codes, sigmoid_lut(hm_scale, hm_zp, in_dtype), in_dtype)
    return _decode(heat, ops.max_pool2d(heat, 3, 1, 1) == heat, wh, reg, k, stride)
