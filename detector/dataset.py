"""Synthetic detection data from real handwritten digits, generated offline and deterministically.

Source: ``sklearn.datasets.load_digits`` -- 1797 real handwritten digits, 8x8,
intensities 0..16, bundled inside scikit-learn (no download ever happens).

Splits are disjoint **by source digit image**: the 1797 image indices are
permuted once with a fixed seed (``SPLIT_SEED``) and cut 60/20/20 into
train/val/test (:func:`source_indices`). A canvas of a split only ever uses
digit images of that split.

One canvas (:func:`render_canvas`), ``CANVAS`` x ``CANVAS`` (96 x 96) grey
pixels, uint8, black background:

* 1..5 digits (uniform); each digit draws a source image of the split, a
  height ``ph`` uniform in [16, 40] px and a width ``pw = round(ph * a)`` with
  aspect jitter ``a`` uniform in [0.8, 1.2] (clipped to [16, 40]), and an
  intensity gain uniform in [0.7, 1.0];
* the 8x8 image (divided by 16) is upscaled to ``ph x pw`` by separable
  bilinear interpolation with half-pixel centres and edge clamping
  (:func:`resize_bilinear`, the ``align_corners=False`` convention);
* **exact box** = the tight bounding box of the digit's ink in its own upscaled
  patch: pixels with interpolated value ``>= INK_THRESHOLD`` (0.25, i.e. an
  original intensity of 4/16), as ``[x0, y0, x1, y1]`` in canvas pixels with
  ``x1``/``y1`` exclusive (pixel ``j`` covers ``[j, j+1)``), so the box width is
  the number of ink columns;
* the patch goes to a uniform integer position that keeps it inside the canvas,
  retried (<= 100 times) until its ink box overlaps no earlier box by more than
  ``MAX_OVERLAP`` (0.15) of the smaller box's area; a digit that finds no place
  is dropped (so a canvas holds >= 1 digit: the first always fits);
* digits composite by per-pixel maximum of ``gain * patch``; the canvas is
  ``round(255 * value)`` as uint8.

Randomness: canvas ``i`` of split ``s`` (and training epoch ``e``) uses its own
``numpy.random.default_rng([BASE_SEED, split_id, e, i])`` (PCG64), so any
subset of any split can be regenerated on its own, bit-identically.

Targets (:func:`encode_targets`) follow CenterNet ("objects as points",
Zhou et al. 2019) at output stride 4: a Gaussian splat per object on its
class heatmap, size (w, h) and sub-cell offset at the object's integer center.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "CANVAS", "STRIDE", "OUT", "NUM_CLASSES", "SPLITS", "SPLIT_SIZES", "BASE_SEED", "SPLIT_SEED",
    "INK_THRESHOLD", "MAX_OVERLAP", "SIZE_RANGE", "Canvases", "digest", "load_source", "source_indices",
    "resize_bilinear", "render_canvas", "make_split", "gaussian_radius", "draw_gaussian", "encode_targets",
]

CANVAS = 96            #: canvas side, pixels
STRIDE = 4             #: output stride of the detector
OUT = CANVAS // STRIDE  #: output map side (24)
NUM_CLASSES = 10
SPLITS = ("train", "val", "test")
#: canvases in the fixed val/test splits (train canvases are generated per epoch).
SPLIT_SIZES = {"val": 300, "test": 500}
BASE_SEED = 20240601
SPLIT_SEED = 7
INK_THRESHOLD = 0.25
MAX_OVERLAP = 0.15
SIZE_RANGE = (16, 40)
ASPECT_RANGE = (0.8, 1.2)
GAIN_RANGE = (0.7, 1.0)
MAX_DIGITS = 5
MAX_TRIES = 100
#: fractions of source images in train / val (test takes the rest).
SPLIT_FRACTIONS = (0.6, 0.2)


@lru_cache(maxsize=1)
def load_source() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 scikit-learn digits: images (1797, 8, 8) float64 in [0, 1] (= value/16), labels int64."""
    from sklearn.datasets import load_digits  # bundled data, no download

    d = load_digits()
    imgs = np.asarray(d.images, np.float64) / 16.0
    imgs.setflags(write=False)
    labels = np.asarray(d.target, np.int64)
    labels.setflags(write=False)
    return imgs, labels


def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return SPLITS.index(split)


def source_indices(split: str) -> np.ndarray:
    """Indices into :func:`load_source` owned by ``split`` (sorted); the three sets are disjoint."""
    sid = _split_id(split)
    n = len(load_source()[1])
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    n_tr = int(round(SPLIT_FRACTIONS[0] * n))
    n_va = int(round(SPLIT_FRACTIONS[1] * n))
    cuts = (0, n_tr, n_tr + n_va, n)
    return np.sort(perm[cuts[sid]:cuts[sid + 1]])


@lru_cache(maxsize=256)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear weights, half-pixel centres, edge clamp (align_corners=False); read-only, cached."""
    src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    r = np.arange(n_out)
    np.add.at(m, (r, i0), 1.0 - f)
    np.add.at(m, (r, i1), f)
    m.setflags(write=False)
    return m


def resize_bilinear(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Separable bilinear resize of a 2-D float image to (height, width), float64."""
    img = np.asarray(img, np.float64)
    if img.ndim != 2:
        raise ValueError(f"img must be 2-D, got shape {img.shape}")
    for name, v in (("height", height), ("width", width)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
    return _interp_matrix(int(height), img.shape[0]) @ img @ _interp_matrix(int(width), img.shape[1]).T


def _overlap_ok(box: np.ndarray, boxes: list[np.ndarray]) -> bool:
    """``box`` overlaps each earlier box by at most MAX_OVERLAP of the smaller area."""
    for b in boxes:
        iw = min(box[2], b[2]) - max(box[0], b[0])
        ih = min(box[3], b[3]) - max(box[1], b[1])
        if iw > 0 and ih > 0:
            small = min((box[2] - box[0]) * (box[3] - box[1]), (b[2] - b[0]) * (b[3] - b[1]))
            if iw * ih > MAX_OVERLAP * small:
                return False
    return True


def render_canvas(rng: np.random.Generator, pool: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One canvas from source indices ``pool``: (image uint8 (CANVAS, CANVAS), boxes float32 (n, 4), classes int64 (n,)).

    See the module docstring for the generative process; ``rng`` is consumed in a fixed order.
    """
    imgs, labels = load_source()
    canvas = np.zeros((CANVAS, CANVAS), np.float64)
    boxes: list[np.ndarray] = []
    classes: list[int] = []
    n_digits = int(rng.integers(1, MAX_DIGITS + 1))
    for _ in range(n_digits):
        src = int(pool[rng.integers(len(pool))])
        ph = int(rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1))
        pw = int(np.clip(round(ph * rng.uniform(*ASPECT_RANGE)), *SIZE_RANGE))
        gain = rng.uniform(*GAIN_RANGE)
        patch = resize_bilinear(imgs[src], ph, pw)
        ink = patch >= INK_THRESHOLD
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        if rows.size == 0:  # cannot happen for load_digits (every image reaches 16/16), kept for safety
            continue
        rel = np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float64)
        for _try in range(MAX_TRIES):
            y = int(rng.integers(0, CANVAS - ph + 1))
            x = int(rng.integers(0, CANVAS - pw + 1))
            box = rel + np.array([x, y, x, y], np.float64)
            if _overlap_ok(box, boxes):
                region = canvas[y:y + ph, x:x + pw]
                np.maximum(region, gain * patch, out=region)
                boxes.append(box)
                classes.append(int(labels[src]))
                break
    image = np.clip(np.rint(canvas * 255.0), 0, 255).astype(np.uint8)
    return image, np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64)


@dataclass(frozen=True)
class Canvases:
    """A batch of canvases: ``images`` uint8 (N, 1, CANVAS, CANVAS); per-canvas ``boxes`` (n_i, 4)
    float32 [x0, y0, x1, y1] in pixels and ``classes`` (n_i,) int64."""

    images: np.ndarray
    boxes: list
    classes: list

    def __len__(self) -> int:
        return len(self.images)


def digest(canvases: Canvases) -> str:
    """SHA-256 (hex) of the images, boxes and classes: identifies a generated split exactly."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(canvases.images).tobytes())
    for b, c in zip(canvases.boxes, canvases.classes):
        h.update(np.ascontiguousarray(b, np.float32).tobytes())
        h.update(np.ascontiguousarray(c, np.int64).tobytes())
    return h.hexdigest()


def make_split(split: str, n: int | None = None, start: int = 0, epoch: int = 0) -> Canvases:
    """Canvases ``start .. start + n - 1`` of ``split`` (for train: of training epoch ``epoch``).

    ``n`` defaults to the whole fixed split (``SPLIT_SIZES``) for val/test; it is
    required for train, whose stream is unbounded (a new set per epoch).
    """
    sid = _split_id(split)
    if n is None:
        if split == "train":
            raise ValueError("n must be given for split='train' (an integer >= 1)")
        n = SPLIT_SIZES[split] - start
    for name, v, lo in (("n", n, 1), ("start", start, 0), ("epoch", epoch, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if split != "train":
        if epoch != 0:
            raise ValueError(f"epoch must be 0 for the fixed split {split!r}, got {epoch}")
        if start + n > SPLIT_SIZES[split]:
            raise ValueError(f"start + n must be <= {SPLIT_SIZES[split]} for split {split!r}, got {start + n}")
    pool = source_indices(split)
    images = np.empty((n, 1, CANVAS, CANVAS), np.uint8)
    boxes, classes = [], []
    for k in range(n):
        rng = np.random.default_rng([BASE_SEED, sid, int(epoch), int(start + k)])
        images[k, 0], b, c = render_canvas(rng, pool)
        boxes.append(b)
        classes.append(c)
    return Canvases(images, boxes, classes)


# --------------------------------------------------------------------------- CenterNet targets


def gaussian_radius(height: float, width: float, min_overlap: float = 0.7) -> float:
    """CenterNet's Gaussian radius for a box of (height, width) output cells.

    The smallest of the three corner-displacement radii of CornerNet (Law & Deng
    2018) such that a box whose corners move by that radius still has IoU >=
    ``min_overlap`` with the original. Reproduced with CenterNet's published
    arithmetic (``r = (b + sqrt(b^2 - 4ac)) / 2`` for each of the three
    quadratics, i.e. without dividing by ``a``), because that is the target
    the original models were trained with.
    """
    h, w, o = float(height), float(width), float(min_overlap)
    b1, c1 = h + w, w * h * (1 - o) / (1 + o)
    r1 = (b1 + math.sqrt(b1 * b1 - 4 * c1)) / 2
    a2, b2, c2 = 4.0, 2 * (h + w), (1 - o) * w * h
    r2 = (b2 + math.sqrt(b2 * b2 - 4 * a2 * c2)) / 2
    a3, b3, c3 = 4 * o, -2 * o * (h + w), (o - 1) * w * h
    r3 = (b3 + math.sqrt(b3 * b3 - 4 * a3 * c3)) / 2
    return min(r1, r2, r3)


def draw_gaussian(heat: np.ndarray, cx: int, cy: int, radius: int) -> None:
    """Splat ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, sigma = (2r + 1) / 6, onto ``heat`` (H, W) by
    element-wise maximum, centred on integer cell (cx, cy) and cut at the map border (in place)."""
    r = int(radius)
    sigma = (2 * r + 1) / 6.0
    d = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma * sigma))
    g[g < np.finfo(np.float64).eps * g.max()] = 0
    H, W = heat.shape
    y0, y1 = max(0, cy - r), min(H, cy + r + 1)
    x0, x1 = max(0, cx - r), min(W, cx + r + 1)
    region = heat[y0:y1, x0:x1]
    np.maximum(region, g[y0 - cy + r:y1 - cy + r, x0 - cx + r:x1 - cx + r].astype(heat.dtype), out=region)


def encode_targets(boxes: np.ndarray, classes: np.ndarray, max_objs: int = 8) -> dict:
    """CenterNet training targets for one canvas at stride ``STRIDE``.

    For each object (box in pixels / STRIDE -> output units): center
    ``c = ((x0 + x1) / 2, (y0 + y1) / 2)``, integer cell ``ci = floor(c)``; a
    Gaussian of radius ``max(0, int(gaussian_radius(ceil(h), ceil(w))))`` is splatted
    on ``hm[class]`` at ``ci``; ``wh = (w, h)`` and ``reg = c - ci`` are stored at
    slot k with ``ind = ci_y * OUT + ci_x`` and ``mask = 1``.

    Returns ``hm`` (NUM_CLASSES, OUT, OUT) float32, ``wh``/``reg`` (max_objs, 2)
    float32, ``ind`` (max_objs,) int64, ``mask`` (max_objs,) float32.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes, np.int64).reshape(-1)
    if len(boxes) != len(classes):
        raise ValueError(f"boxes and classes must have equal length, got {len(boxes)} and {len(classes)}")
    if len(boxes) > max_objs:
        raise ValueError(f"at most max_objs={max_objs} objects per canvas, got {len(boxes)}")
    hm = np.zeros((NUM_CLASSES, OUT, OUT), np.float32)
    wh = np.zeros((max_objs, 2), np.float32)
    reg = np.zeros((max_objs, 2), np.float32)
    ind = np.zeros(max_objs, np.int64)
    mask = np.zeros(max_objs, np.float32)
    for k, (b, c) in enumerate(zip(boxes / STRIDE, classes)):
        w, h = b[2] - b[0], b[3] - b[1]
        ct = np.array([(b[0] + b[2]) / 2, (b[1] + b[3]) / 2])
        ci = np.floor(ct).astype(np.int64)
        r = max(0, int(gaussian_radius(math.ceil(h), math.ceil(w))))
        draw_gaussian(hm[c], int(ci[0]), int(ci[1]), r)
        wh[k] = (w, h)
        reg[k] = ct - ci
        ind[k] = ci[1] * OUT + ci[0]
        mask[k] = 1
    return {"hm": hm, "wh": wh, "reg": reg, "ind": ind, "mask": mask}
