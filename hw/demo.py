"""The main job (``python -m hw.build --target sim``): the INT8 digit detector on the simulated accelerator.

Stages, in the order the data flows (docs/demo.md):

1. **inputs** -- ``--images`` is parsed and every image loaded and checked before any
   other work: bundled canvases ``test:0-3`` / ``val:7`` (``detector.dataset``, with their
   ground truth) or files (``.npy`` uint8 arrays, or any image Pillow reads) of exactly
   96 x 96 single-channel 8-bit pixels, white digits on black like the training canvases.
   Anything else is an ``InputError`` (one line naming the culprit, exit code 2); nothing is
   resized or converted silently.
2. **quantize** -- ``detector.quantize.build_int8_graph()`` (the shipped weights, the
   default scheme) gives the INT8 ``firmware.graph.Graph``; every accelerator layer is
   planned for the configuration (``firmware.compiler.plan_layer``), so a configuration the
   network does not fit (K above ``kmax``) is refused (exit 2) before the Verilator build.
3. **build** -- ``sim.build_top.build_top(cfg)``: elaborate ``hw.top.Accelerator(cfg)`` and
   compile its Verilator model, cached under build/verilator/ ("cached" when it was).
4. **run** -- per image: the host reference of every node
   (``detector.quantize.run_int8_reference``), then the fused graph layer by layer on the
   device exactly as ``firmware.driver.run_graph`` does (``run_layer`` per node, the
   loop spelled out here so that each layer can be timed and shown on the progress bar);
   every node's output is compared value by value with the reference (bit-exact: the
   number of differing values per layer; any difference -> exit code 1 and the report
   names the layer).
5. **decode** -- ``detector.quantize.decode_outputs`` (detections in
   ``detector.evaluate``'s format); printed with the ground truth, the image's COCO mAP and
   its hit count; drawn into a PNG (the canvas upscaled ``SCALE`` x, ground truth green,
   detections red with class and score).

Outputs (``--out-dir``, default build/demo/): ``<image>.png`` per image and
``report.json`` (configuration, per-layer table, bit-exactness, detections, timings).

Backends: ``rtl`` (default) drives the Verilator model through
``firmware.rtl_device.make_host_device``; ``golden`` drives
``firmware.golden_device.GoldenDevice`` (same Device interface; no build; seconds per
frame) for quick checks of everything but the RTL.

Exit codes: 0 done and bit-exact, 1 a layer differs from the reference or the device
failed (the report and the message name the layer) or the build / simulator start failed
(one ``error:`` message), 2 bad arguments or inputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from golden.config import ArrayConfig

__all__ = ["InputError", "DemoImage", "DEFAULT_IMAGES", "DEFAULT_OUT_DIR", "SCALE", "BACKENDS", "parse_images",
           "load_image_file", "check_fits", "render", "write_png", "hits", "format_layer_table",
           "format_detections", "add_arguments", "validate", "run_demo", "main"]

CANVAS = 96                      #: detector input side (detector.dataset.CANVAS)
SCALE = 4                        #: PNG upscaling of the 96 x 96 canvas
DEFAULT_IMAGES = ("test:0-1",)   #: two bundled test canvases
DEFAULT_OUT_DIR = os.path.join("build", "demo")
BACKENDS = ("rtl", "golden")
GT_COLOUR = (0, 220, 0)          #: ground-truth boxes in the PNG
DET_COLOUR = (255, 40, 40)       #: detection boxes in the PNG
FOOTER = 20                      #: caption strip below the canvas in the PNG, pixels
MAX_PRINTED = 20                 #: detections printed per image (all are in report.json)
IOU_HIT = 0.5                    #: a detection "hits" a ground-truth digit of its class at IoU >= this


class InputError(ValueError):
    """A bad argument or input image: ``main`` prints the one-line message and exits with code 2."""


@dataclass
class DemoImage:
    """One input: ``pixels`` uint8 (96, 96); ``boxes`` (n, 4) [x0, y0, x1, y1] and ``classes`` (n,)
    of the ground truth (bundled canvases only, else None)."""

    name: str
    source: str
    pixels: np.ndarray
    boxes: np.ndarray | None = None
    classes: np.ndarray | None = None


# --------------------------------------------------------------------------- inputs

_BUNDLED = re.compile(r"^(?P<split>[A-Za-z]+):(?P<a>\d+)(?:-(?P<b>\d+))?$")


def _bundled(spec: str) -> list[DemoImage]:
    from detector import dataset as D
    m = _BUNDLED.match(spec)
    split = m["split"]
    if split not in D.SPLIT_SIZES:
        raise InputError(f"--images {spec!r}: unknown split {split!r}; bundled canvases are "
                         + ", ".join(f"{s}:0-{n - 1}" for s, n in D.SPLIT_SIZES.items()))
    n_split = D.SPLIT_SIZES[split]
    a = int(m["a"])
    b = int(m["b"]) if m["b"] is not None else a
    if a > b:
        raise InputError(f"--images {spec!r}: empty range {a}-{b} (write FIRST-LAST with FIRST <= LAST)")
    if b >= n_split:
        raise InputError(f"--images {spec!r}: index {b} out of range; the {split} split has canvases 0..{n_split - 1}")
    c = D.make_split(split, b - a + 1, start=a)
    return [DemoImage(f"{split}_{a + i:04d}", f"{split}:{a + i}", c.images[i, 0], np.asarray(c.boxes[i], np.float64),
                      np.asarray(c.classes[i], np.int64)) for i in range(len(c))]


def _check_pixels(path: str, a: np.ndarray, what: str) -> np.ndarray:
    need = f"a {CANVAS}x{CANVAS} single-channel 8-bit image (white digits on black)"
    if a.ndim == 3 and (a.shape[-1] in (2, 3, 4) or a.shape[0] in (2, 3, 4)):
        ch = a.shape[-1] if a.shape[-1] in (2, 3, 4) else a.shape[0]
        raise InputError(f"{path}: {ch} channels ({what}, shape {a.shape}); the detector takes {need}; "
                         "convert it to grayscale first")
    sq = a.reshape(a.shape[-2:]) if a.ndim >= 2 and all(s == 1 for s in a.shape[:-2]) else None
    if sq is None:
        raise InputError(f"{path}: shape {a.shape} ({what}); the detector takes {need}")
    if sq.shape != (CANVAS, CANVAS):
        raise InputError(f"{path}: size {sq.shape[1]}x{sq.shape[0]} (width x height); the detector takes {need}; "
                         "resize or crop it first (nothing is resized here)")
    return np.ascontiguousarray(sq)


def load_image_file(path: str) -> np.ndarray:
    """uint8 (96, 96) pixels of ``path``: ``.npy`` (uint8, shape (96, 96), (1, 96, 96) or
    (1, 1, 96, 96)) or an image file Pillow reads (8-bit grayscale, mode "L"; bilevel mode "1"
    becomes 0/255). Anything else raises ``InputError`` naming the file and what is wrong."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"{path}: no such file")
    if p.is_dir():
        raise InputError(f"{path}: is a directory, not an image file")
    if not os.access(p, os.R_OK):
        raise InputError(f"{path}: not readable (permission denied)")
    if p.suffix.lower() == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise InputError(f"{path}: not a readable .npy array ({e})") from None
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8:
            raise InputError(f"{path}: dtype {getattr(a, 'dtype', type(a).__name__)}; the detector takes uint8 "
                             f"pixel codes 0..255 in a {CANVAS}x{CANVAS} array")
        return _check_pixels(path, a, ".npy array")
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(p) as im:
            im.load()
            mode = im.mode
            if mode == "1":
                im = im.convert("L")
            bands = im.getbands()
            if mode not in ("L", "1"):
                if len(bands) == 1:
                    raise InputError(f"{path}: mode {mode} (not 8-bit); the detector takes a {CANVAS}x{CANVAS} "
                                     "8-bit grayscale image (mode L)")
                raise InputError(f"{path}: {len(bands)} channels (mode {mode}); the detector takes a {CANVAS}x{CANVAS} "
                                 "single-channel 8-bit image (white digits on black); convert it to grayscale first")
            a = np.asarray(im, np.uint8)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (Pillow cannot identify it; .npy arrays need the .npy suffix)") from None
    except (OSError, SyntaxError, ValueError) as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    return _check_pixels(path, a, f"mode {mode}")


def parse_images(specs) -> list[DemoImage]:
    """The images of ``--images``: ``SPLIT:A`` or ``SPLIT:A-B`` (bundled canvases, inclusive range,
    split val or test) or file paths. Raises ``InputError`` for anything unusable."""
    if isinstance(specs, str):
        specs = [specs]
    if not specs:
        raise InputError("--images: give at least one image (e.g. test:0-1 or a 96x96 grayscale PNG)")
    out: list[DemoImage] = []
    for spec in specs:
        if _BUNDLED.match(spec) and not Path(spec).exists():
            out.extend(_bundled(spec))
        else:
            stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(spec).stem) or "image"
            out.append(DemoImage(stem, spec, load_image_file(spec)))
    seen: dict[str, int] = {}
    for im in out:                               # unique PNG names
        n = seen.get(im.name, 0)
        seen[im.name] = n + 1
        if n:
            im.name = f"{im.name}_{n}"
    return out


# --------------------------------------------------------------------------- graph and configuration


def check_fits(graph, cfg: ArrayConfig, layers: int | None = None) -> dict:
    """Plan every accelerator node of ``graph.fuse()`` (its first ``layers`` nodes) for ``cfg`` (no
    data); {node: LayerReport of the plan}. A node the configuration cannot run -> ``InputError``
    naming the node and the limits."""
    from firmware.compiler import check_mode_supported, plan_layer
    from firmware.report import report_from_plan
    g = graph.fuse()
    plans = {}
    for n in g.nodes[:layers]:
        if not n.on_array:
            continue
        try:
            check_mode_supported(n, cfg)
            plans[n.name] = report_from_plan(plan_layer(n, g.in_shapes(n)[0], cfg))
        except ValueError as e:
            raise InputError(f"the configuration (rows={cfg.rows}, cols={cfg.cols}, packing={cfg.packing}, "
                             f"max_k={cfg.max_k}, act_depth={cfg.act_depth}, wgt_depth={cfg.wgt_depth}) cannot run "
                             f"layer {n.name!r}: {e}") from None
    return plans


def _cfg_dict(cfg: ArrayConfig) -> dict:
    return {**dataclasses.asdict(cfg), "out_lanes": cfg.out_lanes, "macs_per_cycle": cfg.macs_per_cycle}


# --------------------------------------------------------------------------- detections


def _real_scores(scores) -> np.ndarray:
    """Scores as reals: integer score codes are ``code * detector.decode.SCORE_SCALE``."""
    from detector.decode import SCORE_SCALE
    s = np.asarray(scores)
    return s.astype(np.float64) * SCORE_SCALE if s.dtype.kind in "iu" else s.astype(np.float64)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of boxes a (n, 4) and b (m, 4), [x0, y0, x1, y1]."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def hits(det_boxes, det_classes, gt_boxes, gt_classes, iou: float = IOU_HIT) -> dict:
    """Greedy matching in the given (score) order: a detection hits the first unmatched ground-truth
    digit of its class with IoU >= ``iou``. Returns hits, misses, false_positives and per-detection
    ``matched`` (ground-truth index or -1)."""
    db, gb = np.asarray(det_boxes, np.float64).reshape(-1, 4), np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    ov = _iou(db, gb) if len(db) and len(gb) else np.zeros((len(db), len(gb)))
    used = np.zeros(len(gb), bool)
    matched = []
    for i, c in enumerate(np.asarray(det_classes)):
        cand = np.flatnonzero(~used & (np.asarray(gt_classes) == c) & (ov[i] >= iou))
        j = int(cand[np.argmax(ov[i, cand])]) if len(cand) else -1
        if j >= 0:
            used[j] = True
        matched.append(j)
    h = int(used.sum())
    return {"hits": h, "misses": len(gb) - h, "false_positives": len(db) - h, "matched": matched}


def _detections(dets: dict, i: int, threshold: float) -> list[dict]:
    """Image ``i``'s real peaks with score >= ``threshold``, in decode order (score descending)."""
    sc = _real_scores(dets["scores"][i])
    peak = np.asarray(dets.get("peak", np.ones_like(sc, bool))[i], bool)
    out = []
    for j in np.flatnonzero(peak & (sc >= threshold)):
        out.append({"class": int(dets["classes"][i][j]), "score": round(float(sc[j]), 6),
                    "box": [round(float(v), 3) for v in dets["boxes"][i][j]]})
    return out


def _image_map(im: DemoImage, dets: dict) -> float | None:
    """COCO mAP@[.5:.95] of one bundled canvas (all K detections, as detector.evaluate scores them)."""
    if im.boxes is None:
        return None
    from detector.dataset import Canvases
    from detector.evaluate import coco_map
    c = Canvases(im.pixels[None, None], [im.boxes.astype(np.float32)], [im.classes])
    one = {k: np.asarray(v)[:1] for k, v in dets.items() if k in ("boxes", "scores", "classes")}
    m = coco_map(c, one, scores=_real_scores(one["scores"]))["mAP"]
    return None if m < 0 else round(float(m), 4)        # -1: no ground truth


# --------------------------------------------------------------------------- PNG


def render(pixels, detections: list[dict], gt_boxes=None, scale: int = SCALE, caption: str | None = None) -> np.ndarray:
    """RGB uint8 image of the canvas upscaled ``scale`` x (nearest): ground truth in ``GT_COLOUR``
    (1 px), detections in ``DET_COLOUR`` (2 px) labelled "class score" (labels placed above the
    box, else inside it, else below, avoiding earlier labels), and with ``caption`` a footer strip
    of ``FOOTER`` pixels below the canvas (caption and colour legend).

    A box [x0, y0, x1, y1] (x1, y1 exclusive, canvas pixels) is drawn on the upscaled pixels
    round(x0*scale) .. round(x1*scale) - 1 (same for y), clipped to the canvas."""
    from PIL import Image, ImageDraw, ImageFont
    a = np.asarray(pixels, np.uint8)
    big = np.repeat(np.repeat(a, scale, 0), scale, 1)
    side = a.shape[0] * scale
    rgb = np.zeros((side + (FOOTER if caption is not None else 0), side, 3), np.uint8)
    rgb[:side] = big[..., None]
    im = Image.fromarray(rgb, "RGB")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=max(10, 3 * scale))

    def rect(box, colour, width):
        x0, y0, x1, y1 = (int(round(float(v) * scale)) for v in box)
        x0, y0 = max(0, min(x0, side - 1)), max(0, min(y0, side - 1))
        x1, y1 = max(x0, min(x1 - 1, side - 1)), max(y0, min(y1 - 1, side - 1))
        d.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        return x0, y0, x1, y1

    if gt_boxes is not None:
        for b in np.asarray(gt_boxes, np.float64).reshape(-1, 4):
            rect(b, GT_COLOUR, 1)
    placed: list[tuple[int, int, int, int]] = []
    for det in detections:
        x0, y0, x1, y1 = rect(det["box"], DET_COLOUR, 2)
        label = f"{det['class']} {det['score']:.2f}"
        l, t, r, btm = d.textbbox((0, 0), label, font=font)
        w, h = r - l + 2, btm - t + 2
        tx = max(0, min(x0, side - w))
        spots = [(tx, y0 - h), (tx, y0 + 2), (tx, y1 + 1)]
        spots = [(x, y) for x, y in spots if 0 <= y <= side - h] or [(tx, max(0, min(y0, side - h)))]
        free = [(x, y) for x, y in spots
                if all(x + w <= p[0] or p[2] <= x or y + h <= p[1] or p[3] <= y for p in placed)]
        x, y = (free or spots)[0]
        placed.append((x, y, x + w, y + h))
        d.rectangle([x, y, x + w - 1, y + h - 1], fill=DET_COLOUR)
        d.text((x + 1 - l, y + 1 - t), label, fill=(255, 255, 255), font=font)
    if caption is not None:
        fy = side + (FOOTER - (d.textbbox((0, 0), "Ag", font=font)[3])) // 2
        d.text((4, fy), caption, fill=(230, 230, 230), font=font)
        legend = [("ground truth", GT_COLOUR), ("detection", DET_COLOUR)]
        x = side - 4
        for text, colour in reversed(legend):
            x -= d.textlength(text, font=font)
            d.text((x, fy), text, fill=colour, font=font)
            x -= 10
    return np.asarray(im)


def write_png(path, rgb) -> Path:
    """Write an RGB uint8 (H, W, 3) array as a PNG (parent directories created)."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(path, format="PNG")
    return path


# --------------------------------------------------------------------------- printing


def format_layer_table(rows: list[dict], cfg: ArrayConfig) -> str:
    """The per-layer table: layer, kind, where, MACs, measured / modelled cycles, utilization
    (MACs / (measured cycles * rows * out_lanes)), differing values; a total line."""
    head = f"{'layer':<12} {'kind':<16} {'where':<5} {'MACs':>10} {'cycles':>9} {'model':>9} {'util':>6} {'diff':>6}"
    lines = [head, "-" * len(head)]
    for r in rows:
        meas = "" if r["cycles_measured"] is None else f"{r['cycles_measured']:,}"
        mod = "" if not r["cycles_model"] else f"{r['cycles_model']:,}"
        util = "" if r["utilization"] is None else f"{r['utilization']:.3f}"
        diff = "n/a" if r["mismatches"] is None else str(r["mismatches"])
        lines.append(f"{r['layer']:<12} {r['kind']:<16} {r['where']:<5} {r['macs']:>10,} {meas:>9} {mod:>9} "
                     f"{util:>6} {diff:>6}")
    arr = [r for r in rows if r["where"] == "array"]
    macs = sum(r["macs"] for r in arr)
    cyc = sum(r["cycles_measured"] or 0 for r in arr)
    mod = sum(r["cycles_model"] for r in arr)
    util = macs / (cyc * cfg.rows * cfg.out_lanes) if cyc else 0.0
    bad = sum(1 for r in rows if r["mismatches"])
    lines.append("-" * len(head))
    lines.append(f"{'total':<12} {f'{len(arr)} array layers':<22} {macs:>10,} {cyc:>9,} {mod:>9,} {util:>6.3f} "
                 f"{'ok' if not bad else f'{bad} bad':>6}")
    return "\n".join(lines)


def format_detections(res: dict, threshold: float) -> str:
    """Detections (class, score, box) of one image result, with its ground truth, hits and mAP."""
    fmt = lambda b: "[" + ", ".join(f"{v:5.1f}" for v in b) + "]"  # noqa: E731
    lines = [f"detections of {res['name']} (peaks with score >= {threshold:g}):"]
    for d in res["detections"][:MAX_PRINTED]:
        hit = d.get("gt")
        tag = "" if hit is None else ("  hit" if hit >= 0 else "  false positive")
        lines.append(f"  digit {d['class']}  score {d['score']:.3f}  box {fmt(d['box'])}{tag}")
    if len(res["detections"]) > MAX_PRINTED:
        lines.append(f"  ... and {len(res['detections']) - MAX_PRINTED} more (report.json has them all)")
    if not res["detections"]:
        lines.append("  (none)")
    if res["ground_truth"] is not None:
        lines.append("  ground truth: " + "; ".join(f"digit {g['class']} {fmt(g['box'])}" for g in res["ground_truth"]))
        h = res["hits"]
        lines.append(f"  found {h['hits']}/{h['hits'] + h['misses']} digits (IoU >= {IOU_HIT}, same class), "
                     f"{h['false_positives']} false positives; image mAP@[.5:.95] "
                     + ("n/a" if res["mAP"] is None else f"{res['mAP']:.3f}"))
    return "\n".join(lines)


# --------------------------------------------------------------------------- progress


def _bar(enabled: bool, **kw):
    from tqdm import tqdm
    return tqdm(disable=not enabled, file=sys.stderr, dynamic_ncols=True, leave=True, **kw)


@contextlib.contextmanager
def _ticker(desc: str, enabled: bool):
    """An elapsed-time bar for a stage with no measurable progress (the Verilator build)."""
    bar = _bar(enabled, desc=desc, total=None, bar_format="{desc}: {elapsed}")
    stop = threading.Event()

    def tick():
        while not stop.wait(1.0):
            bar.refresh()

    th = threading.Thread(target=tick, daemon=True)
    th.start()
    try:
        yield bar
    finally:
        stop.set()
        th.join()
        bar.close()


# --------------------------------------------------------------------------- the job


def add_arguments(p) -> None:
    """The main job's own options (the array configuration options belong to hw.build's parser)."""
    p.add_argument("--images", nargs="+", default=list(DEFAULT_IMAGES), metavar="IMG",
                   help="bundled canvases SPLIT:A[-B] (val 0..299, test 0..499, with ground truth) and/or "
                        f"files: .npy uint8 or 8-bit grayscale images of exactly {CANVAS}x{CANVAS} "
                        f"(default {' '.join(DEFAULT_IMAGES)})")
    p.add_argument("--out-dir", default=DEFAULT_OUT_DIR, help=f"PNGs and report.json (default {DEFAULT_OUT_DIR})")
    p.add_argument("--backend", choices=BACKENDS, default="rtl",
                   help="rtl: the Verilator model (default); golden: firmware.golden_device (no build, quick check)")
    p.add_argument("--k", type=int, default=100, help="detections decoded per image (CenterNet's K, default 100)")
    p.add_argument("--score", type=float, default=0.3, help="print and draw peaks with score >= this (default 0.3)")
    p.add_argument("--layers", type=int, default=None,
                   help="run only the first N layers of the fused graph (no detections then; for quick checks)")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bars on stderr: auto = when stderr is a terminal")


def validate(args) -> list[DemoImage]:
    """Check the main job's options and load every image; ``InputError`` on anything bad."""
    if args.backend not in BACKENDS:
        raise InputError(f"--backend must be one of {', '.join(BACKENDS)}, got {args.backend!r}")
    n_out = 10 * (CANVAS // 4) ** 2
    if isinstance(args.k, bool) or not isinstance(args.k, int) or not 1 <= args.k <= n_out:
        raise InputError(f"--k must be an integer in [1, {n_out}] (classes x 24 x 24 cells), got {args.k!r}")
    if not (isinstance(args.score, (int, float)) and 0.0 <= args.score <= 1.0):
        raise InputError(f"--score must be in [0, 1], got {args.score!r}")
    if args.layers is not None and args.layers < 1:
        raise InputError(f"--layers must be >= 1, got {args.layers}")
    images = parse_images(args.images)
    out = Path(args.out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out-dir {args.out_dir}: cannot create it ({e.strerror or e})") from None
    if not os.access(out, os.W_OK):
        raise InputError(f"--out-dir {args.out_dir}: not writable")
    return images


def _open_device(backend: str, cfg: ArrayConfig):
    """The backend's device: ``firmware.__main__.make_device`` (the ONNX CLI's, shared)."""
    from firmware.__main__ import make_device
    return make_device(backend, cfg)


def _compare(a: np.ndarray, b: np.ndarray) -> int:
    """Number of differing values (shape or dtype mismatch: every value differs)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return max(a.size, b.size)
    return int(np.count_nonzero(a != b))


def _run_image(dev, g, plans: dict, im: DemoImage, reference: dict, cfg: ArrayConfig, n_layers: int,
               progress: bool, timeout_s: float) -> tuple[dict, list[dict], str | None]:
    """The fused graph on the device, layer by layer (``firmware.driver.run_graph``'s loop).
    Returns (env, table rows, error message or None)."""
    from firmware.device import DeviceError
    from firmware.driver import run_layer
    peak = cfg.rows * cfg.out_lanes
    nodes = g.nodes[:n_layers]
    env = {"image": im.pixels[None, None]}
    rows: list[dict] = []
    total = sum(plans[n.name].cycles for n in nodes if n.on_array)
    error = None
    with _bar(progress, desc=f"{im.name}", total=total, unit="cyc", unit_scale=True) as bar:
        for n in nodes:
            bar.set_postfix_str(n.name)
            t0 = time.perf_counter()
            try:
                y, rep = run_layer(dev, n, [env[t] for t in n.inputs], cfg, timeout_s=timeout_s)
            except DeviceError as e:          # DeviceTimeout included; names the layer and the command
                error = f"{type(e).__name__} in layer {n.name!r}: {e}"
                break
            secs = time.perf_counter() - t0
            env[n.name] = y
            m = rep.measured
            meas = None if m is None else int(m["CYCLES"])
            rows.append({
                "layer": n.name, "kind": type(n).__name__, "where": "array" if n.on_array else "host",
                "fused": list(getattr(n, "fused", (n.name,))), "shape": list(y.shape), "macs": int(rep.macs),
                "cycles_measured": meas, "cycles_model": int(rep.cycles),
                "busy_cycles_measured": None if m is None else int(m["BUSY_CYCLES"]),
                "useful_macs_measured": None if m is None else int(m["USEFUL_MACS"]),
                "runs": int(rep.runs), "bound": rep.bound,
                "utilization": round(rep.macs / (meas * peak), 4) if meas else None,
                "utilization_model": round(rep.utilization, 4) if n.on_array else None,
                "values": int(y.size), "mismatches": _compare(y, reference[n.name]),
                "wall_seconds": round(secs, 3)})
            bar.update(plans[n.name].cycles if n.on_array else 0)
    return env, rows, error


def run_demo(cfg: ArrayConfig, images: list[DemoImage], *, backend: str = "rtl", out_dir=DEFAULT_OUT_DIR,
             k: int = 100, threshold: float = 0.3, layers: int | None = None, progress: bool = False,
             timeout_s: float = 300.0, log=print, graph=None, device=None) -> dict:
    """Run the main job on validated ``images``; returns the report (also written to
    ``out_dir/report.json``). ``log`` receives the human-readable lines (tables, detections).

    ``graph``: the INT8 graph (default ``detector.quantize.build_int8_graph()``); ``device``: a
    callable ``cfg -> Device`` replacing the backend's (tests: fault injection)."""
    from detector import quantize as Qz
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    report: dict = {"config": _cfg_dict(cfg), "backend": backend, "images": [], "timings": {}}

    # -- quantize + fit check
    log(f"[1/4] INT8 graph (detector.quantize, default scheme) for {cfg.rows}x{cfg.cols} {cfg.packing} "
        f"({cfg.out_lanes} lanes, {cfg.macs_per_cycle} MACs/cycle)")
    t0 = time.perf_counter()
    if graph is None:
        with _ticker("quantize", progress):
            graph = Qz.build_int8_graph()
    q_s = time.perf_counter() - t0
    g = graph.fuse()
    n_layers = len(g.nodes) if layers is None else min(layers, len(g.nodes))
    plans = check_fits(graph, cfg, n_layers)
    report["graph"] = {"nodes": len(g.nodes), "array_nodes": sum(n.on_array for n in g.nodes), "run_nodes": n_layers,
                       "macs": int(sum(n.macs(g.in_shapes(n)) for n in g.nodes)),
                       "model_cycles": int(sum(plans[n.name].cycles for n in g.nodes[:n_layers] if n.on_array)),
                       "outputs": list(graph.outputs), "quantize_seconds": round(q_s, 2)}
    log(f"      {len(g.nodes)} layers ({report['graph']['array_nodes']} on the array, {report['graph']['macs']:,} MACs), "
        f"{q_s:.1f} s" + (f"; running the first {n_layers} only" if n_layers < len(g.nodes) else ""))

    # -- build
    build_s = 0.0
    if backend == "rtl":
        from sim.build import CACHE_ROOT
        from sim.build_top import DEFAULT_OPT, build_top, top_cache_key
        log("[2/4] elaborate hw.top.Accelerator + Verilator build (cached under build/verilator/)")
        t0 = time.perf_counter()
        indexed = (CACHE_ROOT / "_top_index" / top_cache_key(cfg, DEFAULT_OPT)).exists()
        what = ("loading the cached model" if indexed else
                "elaborate, verilate, compile (cold: ~10 min for 8x8 on 2 cores, ~2 min for 4x4)")
        with _ticker(what, progress):
            model = build_top(cfg, opt=DEFAULT_OPT)
        build_s = time.perf_counter() - t0
        how = ("built" if model.fresh else "cached" if indexed
               else "cached (hw/ sources changed: elaborated again, same Verilog, no compile)")
        report["model"] = {"key": model.key, "cached": not model.fresh, "build_dir": str(model.build_dir),
                           "how": how}
        log(f"      {how}: {model.key}, {build_s:.1f} s")
    else:
        log("[2/4] backend golden: firmware.golden_device.GoldenDevice, no RTL build")
        report["model"] = None

    # -- run
    log(f"[3/4] {len(images)} image(s) on the {backend} device, every layer compared with the host reference")
    t0 = time.perf_counter()
    with _ticker("starting the simulator" if backend == "rtl" else "device", progress and backend == "rtl"):
        dev = (device or (lambda c: _open_device(backend, c)))(cfg)
    start_s = time.perf_counter() - t0
    complete = n_layers == len(g.nodes)
    first_table = None
    try:
        for im in images:
            t0 = time.perf_counter()
            reference = Qz.run_int8_reference(graph, im.pixels[None, None])
            ref_s = time.perf_counter() - t0
            cyc0, sim0 = getattr(dev, "cycles", None), getattr(dev, "sim_seconds", None)
            t0 = time.perf_counter()
            env, rows, error = _run_image(dev, g, plans, im, reference, cfg, n_layers, progress, timeout_s)
            frame_s = time.perf_counter() - t0
            cyc1, sim1 = getattr(dev, "cycles", None), getattr(dev, "sim_seconds", None)
            sim_s = round(sim1 - sim0, 3) if isinstance(sim0, float) and isinstance(sim1, float) else None
            sim_cycles = (cyc1 - cyc0) if isinstance(cyc0, int) and isinstance(cyc1, int) else \
                sum(r["cycles_measured"] or 0 for r in rows)
            bad = [r["layer"] for r in rows if r["mismatches"]]
            res = {"name": im.name, "source": im.source, "layers": rows, "error": error,
                   "bit_exact": not bad and error is None and len(rows) == n_layers,
                   "bit_exact_layers": sum(1 for r in rows if r["mismatches"] == 0), "run_layers": n_layers,
                   "mismatched_layers": bad, "first_mismatch": bad[0] if bad else None,
                   "frame_seconds": round(frame_s, 3), "simulator_seconds": sim_s,
                   "reference_seconds": round(ref_s, 3),
                   "simulated_cycles": int(sim_cycles),
                   "cycles_per_second": round(sim_cycles / frame_s, 1) if frame_s > 0 else None,
                   "detections": None, "ground_truth": None, "hits": None, "mAP": None, "png": None}
            table = format_layer_table(rows, cfg)
            log(f"\n{im.name} ({im.source}): {frame_s:.1f} s"
                + (f" ({sim_s:.1f} s in the simulator)" if sim_s is not None else "")
                + f", {sim_cycles:,} simulated cycles ({res['cycles_per_second'] or 0:,.0f} cycles/s); "
                f"host reference {ref_s:.1f} s")
            if table != first_table:                   # cycles are data-independent: usually printed once
                log(table)
            else:
                log(f"per-layer table as above: {res['bit_exact_layers']}/{n_layers} layers bit-exact, same cycles")
            first_table = first_table or table
            if error:
                log(f"DEVICE FAILURE: {error}")
            if bad:
                log(f"NOT BIT-EXACT: {len(bad)} layer(s) differ from the reference, first {bad[0]!r} "
                    f"({rows[[r['layer'] for r in rows].index(bad[0])]['mismatches']} values)")
            if complete and error is None:
                dets = Qz.decode_outputs(graph, env, k=k)
                shown = _detections(dets, 0, threshold)
                if im.boxes is not None:
                    h = hits([d["box"] for d in shown], [d["class"] for d in shown], im.boxes, im.classes)
                    for d, j in zip(shown, h.pop("matched")):
                        d["gt"] = j
                    res["hits"] = h
                    res["ground_truth"] = [{"class": int(c), "box": [float(v) for v in b]}
                                           for b, c in zip(im.boxes, im.classes)]
                    res["mAP"] = _image_map(im, dets)
                res["detections"] = shown
                cap = f"{im.name}  {backend} {cfg.rows}x{cfg.cols} {cfg.packing}" + (
                    f"  {res['hits']['hits']}/{len(im.boxes)} found" if res["hits"] is not None else "")
                png = write_png(out_dir / f"{im.name}.png", render(im.pixels, shown, im.boxes, caption=cap))
                res["png"] = str(png)
                log(format_detections(res, threshold))
                log(f"  -> {png}")
            report["images"].append(res)
            if error:
                break
    finally:
        dev.close()

    # -- summary
    imgs = report["images"]
    frames = [r["frame_seconds"] for r in imgs]
    cyc = sum(r["simulated_cycles"] for r in imgs)
    report["timings"] = {"build_seconds": round(build_s, 2), "quantize_seconds": round(q_s, 2),
                         "device_start_seconds": round(start_s, 2), "frame_seconds": frames,
                         "mean_frame_seconds": round(sum(frames) / len(frames), 3) if frames else None,
                         "simulated_cycles": int(cyc),
                         "cycles_per_second": round(cyc / sum(frames), 1) if sum(frames) > 0 else None,
                         "total_seconds": round(time.perf_counter() - t_start, 2)}
    report["bit_exact"] = bool(imgs) and all(r["bit_exact"] for r in imgs) and len(imgs) == len(images)
    report["bit_exact_layers"] = sum(r["bit_exact_layers"] for r in imgs)
    report["layers"] = sum(r["run_layers"] for r in imgs)
    gt = [r for r in imgs if r["hits"] is not None]
    if gt:
        report["hits"] = {k_: sum(r["hits"][k_] for r in gt) for k_ in ("hits", "misses", "false_positives")}
    out = out_dir / "report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1) + "\n")
    report["report"] = str(out)
    log(f"\n[4/4] report {out}: {'BIT-EXACT' if report['bit_exact'] else 'NOT BIT-EXACT'} "
        f"({report['bit_exact_layers']}/{report['layers']} layer outputs), build {build_s:.1f} s, "
        f"frames {', '.join(f'{f:.1f}' for f in frames)} s, {cyc:,} simulated cycles"
        + (f", found {report['hits']['hits']}/{report['hits']['hits'] + report['hits']['misses']} digits"
           if gt else ""))
    return report


def main(args, cfg: ArrayConfig) -> int:
    """hw.build's ``sim`` target: validate, run, exit code (0 bit-exact, 1 not / device failed, 2 bad input)."""
    try:
        images = validate(args)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = {"on": True, "off": False}.get(args.progress, sys.stderr.isatty())
    try:
        report = run_demo(cfg, images, backend=args.backend, out_dir=args.out_dir, k=args.k, threshold=args.score,
                          layers=args.layers, progress=progress)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, OSError) as e:        # Verilator build failed, simulator did not start, disk full ...
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0 if report["bit_exact"] else 1
