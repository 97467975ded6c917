"""COCO box mAP of the detector on the generated splits (pycocotools' COCOeval, bbox).

    python -m detector.evaluate [--split test] [--weights detector/weights/centernet_digits.npz]

Ground truth: every canvas is a COCO image (id = canvas index + 1, 96 x 96);
every digit an annotation with ``bbox = [x0, y0, x1 - x0, y1 - y0]`` (the exact
ink box, x1/y1 exclusive), ``area = w * h``, ``iscrowd = 0`` and
``category_id = digit + 1`` (COCO ids start at 1). Detections: all K = 100
decoded detections per canvas (CenterNet's output, no score threshold), boxes
unclipped. The headline number is ``mAP`` = AP@[.5:.95] (area "all",
maxDets 100), COCOeval's ``stats[0]``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import numpy as np

from . import dataset as D
from .decode import K, decode_float
from .model import WEIGHTS_FILE, forward, load_weights

__all__ = ["STAT_NAMES", "predict", "coco_ground_truth", "coco_map", "evaluate", "main"]

#: names of COCOeval.stats, in order
STAT_NAMES = ("mAP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large",
              "AR1", "AR10", "AR100", "AR_small", "AR_medium", "AR_large")


def predict(params: dict, images, k: int = K, batch: int = 64) -> dict:
    """Float NumPy inference + float decoding of uint8 canvases (N, 1, 96, 96): decode_float's dict."""
    out = forward(params, images, batch=batch)
    return decode_float(out["hm"], out["wh"], out["reg"], k)


def coco_ground_truth(canvases: D.Canvases):
    """A pycocotools ``COCO`` object of the canvases' exact boxes (built in memory)."""
    from pycocotools.coco import COCO

    images, anns = [], []
    for i, (b, c) in enumerate(zip(canvases.boxes, canvases.classes)):
        images.append({"id": i + 1, "width": D.CANVAS, "height": D.CANVAS})
        for box, cls in zip(np.asarray(b, np.float64), c):
            w, h = box[2] - box[0], box[3] - box[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                         "bbox": [float(box[0]), float(box[1]), float(w), float(h)], "area": float(w * h),
                         "iscrowd": 0})
    gt = COCO()
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": c + 1, "name": str(c)} for c in range(D.NUM_CLASSES)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def coco_map(canvases: D.Canvases, dets: dict, scores=None) -> dict:
    """COCOeval bbox statistics (``STAT_NAMES``) of ``dets`` (decode's dict for these canvases).

    ``scores``: real-valued scores to rank by (default ``dets["scores"]`` as float64;
    pass ``codes * SCORE_SCALE`` for the INT8 path -- only the order matters).
    """
    from pycocotools.cocoeval import COCOeval

    boxes = np.asarray(dets["boxes"], np.float64)
    n, k = boxes.shape[:2]
    if n != len(canvases):
        raise ValueError(f"dets hold {n} images but canvases hold {len(canvases)}")
    sc = np.asarray(dets["scores"] if scores is None else scores, np.float64)
    rows = np.column_stack([
        np.repeat(np.arange(1, n + 1), k).astype(np.float64),
        boxes[..., 0].ravel(), boxes[..., 1].ravel(),
        (boxes[..., 2] - boxes[..., 0]).ravel(), (boxes[..., 3] - boxes[..., 1]).ravel(),
        sc.ravel(), (np.asarray(dets["classes"]) + 1).ravel().astype(np.float64)])
    gt = coco_ground_truth(canvases)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(rows)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {name: float(v) for name, v in zip(STAT_NAMES, ev.stats)}


def evaluate(params: dict | None = None, split: str = "test", n: int | None = None, k: int = K) -> dict:
    """Float (FP32) COCO statistics of ``params`` (default: the shipped weights) on ``split``
    (its first ``n`` canvases; default all of val/test)."""
    if params is None:
        params = load_weights()
    if split == "train":
        raise ValueError("split must be 'val' or 'test' (train canvases are generated per epoch)")
    canvases = D.make_split(split, n)
    return coco_map(canvases, predict(params, canvases.images, k))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="FP32 COCO mAP of the digit CenterNet")
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--weights", type=Path, default=WEIGHTS_FILE)
    ap.add_argument("-n", type=int, default=None, help="first n canvases only")
    a = ap.parse_args(argv)
    res = evaluate(load_weights(a.weights), a.split, a.n)
    print(json.dumps({"split": a.split, **{k: round(v, 4) for k, v in res.items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
