"""Quantization study of the digit CenterNet: COCO mAP of FP32, FP16, BF16 and INT8 schemes on the test split.

``python -m bench quant --json out/quant.json`` evaluates on the whole test
split (500 canvases, ``--n`` for fewer) with ``detector.evaluate.coco_map``
(pycocotools, AP@[.5:.95], K = 100 detections per canvas):

* ``map_fp32``: the shipped BN-folded float32 weights (``detector.evaluate.predict``).
* ``map_fp16`` / ``map_bf16``: the same network with every weight, bias and
  activation rounded to IEEE binary16 (``golden.quant.to_fp16``) / bfloat16
  (``golden.quant.to_bf16``, round to nearest even), see :func:`forward_rounded`
  for the exact rule; float decoding.
* ``table``: INT8 schemes (``detector.quantize.Scheme``), each built by
  ``build_int8_graph`` (calibrated on the first ``--calib-n`` val canvases),
  run through ``run_int8_reference`` -- the bit-exact golden reference of the
  firmware graph, i.e. exactly the integers the accelerator produces -- and
  decoded by ``decode_outputs`` (``decode_int8``: sigmoid table, peaks and
  ranking on uint8 scores). The grid is {per-tensor, per-channel weights} x
  {max, mean-max, percentile 99.99, KL} calibration x {symmetric int8,
  asymmetric uint8}, then power-of-two scales (per-channel weights, the
  calibration that scored best in the per-channel grid, int8 and uint8), then
  the practitioner's follow-ups (:func:`extra_schemes`: other percentiles,
  histograms without the ReLU zeros, KL with the stem kept at max, the
  calibration set size; ``--no-extra`` skips them).
* ``map_int8_best`` / ``best_scheme``: the best row of the table (ties: the
  earlier row); ``target_met``: ``map_fp32 - map_int8_best <= 0.005``;
  ``default_scheme`` / ``default_is_best``: ``detector.quantize.DEFAULT_SCHEME``
  and whether it is that row's scheme.

Rows hold ``scheme`` (its name), the scheme fields, ``calib_n``, ``map``,
``map50``, ``map75``, ``ar100``, ``delta`` (map - map_fp32) and ``seconds``.

``noise``: mAP of FP32 and of the best scheme on 5 consecutive folds of the
canvases (100 each), the mean fold delta and its standard error: how large a
difference between two rows has to be before it means anything.
``seconds`` is wall time, ``cpu_seconds`` the process's CPU time (all threads):
on a shared machine the first grows with the load, the second does not.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import asdict

import numpy as np

#: golden.layers runs its requantization on 2 worker threads with single-threaded BLAS GEMMs
#: (see bench/golden.py for why; read by ``python -m bench`` before NumPy is imported).
ENV = {"OPENBLAS_NUM_THREADS": "1", "GOLDEN_NUM_THREADS": "{threads}", "OMP_NUM_THREADS": "{threads}"}

TARGET = 0.005                   #: best INT8 mAP within this of FP32 (0.5 mAP points)
FLOAT_FORMATS = ("fp16", "bf16")


# --------------------------------------------------------------------------- reduced-precision floats


def round_to(fmt: str, x: np.ndarray) -> np.ndarray:
    """float32 ``x`` rounded to ``fmt`` and returned as float32 (exact widening).

    ``"fp16"``: IEEE binary16, round to nearest even (``golden.quant.to_fp16``;
    overflow to +-Inf, gradual underflow); ``"bf16"``: the upper 16 bits of
    float32, round to nearest even (``golden.quant.to_bf16``, spec §5);
    ``"fp32"``: unchanged.
    """
    from golden.quant import to_bf16, to_fp16

    x = np.asarray(x, np.float32)
    if fmt == "fp32":
        return x
    if fmt == "fp16":
        return to_fp16(x).astype(np.float32)
    if fmt == "bf16":
        return to_bf16(x)
    raise ValueError(f"fmt must be one of ('fp32', 'fp16', 'bf16'), got {fmt!r}")


def forward_rounded(params: dict, images, fmt: str, batch: int = 100) -> dict:
    """The detector with ``fmt`` storage: float32 compute, every stored value rounded to ``fmt``.

    Rule: weights and biases are rounded once; the input ``u8 / 255`` is
    rounded; every layer (``detector.model.ARCH`` entry) computes in float32
    from its rounded inputs -- a conv's products and sums accumulate in float32
    (as fp16/bf16 hardware with float32 accumulators does), the bias is added
    and the ReLU applied in float32 -- and its output is rounded to ``fmt``
    (RNE) before anything reads it; an add is ``round(relu?(a + b))``. The
    heads' outputs are rounded too. Returns ``{"hm", "wh", "reg"}`` float32.
    """
    from detector.model import check_weights, forward

    params = {k: round_to(fmt, v) for k, v in check_weights(params).items()}
    return forward(params, images, batch=batch, store=lambda a: round_to(fmt, a))


# --------------------------------------------------------------------------- evaluation


def _stats(r: dict) -> dict:
    return {"map": r["mAP"], "map50": r["AP50"], "map75": r["AP75"], "ar100": r["AR100"]}


def float_detections(params: dict, canvases, fmt: str) -> tuple[dict, np.ndarray]:
    """(detections, real scores) of the float network in ``fmt`` ("fp32": ``detector.evaluate.predict``)."""
    from detector.decode import decode_float
    from detector.evaluate import predict

    if fmt == "fp32":
        dets = predict(params, canvases.images)
    else:
        o = forward_rounded(params, canvases.images, fmt)
        dets = decode_float(o["hm"], o["wh"], o["reg"])
    return dets, dets["scores"].astype(np.float64)


def int8_detections(params: dict, canvases, scheme, calib) -> tuple[dict, np.ndarray]:
    """(detections, real scores) of ``build_int8_graph(params, scheme, calib)`` run bit-exactly
    (``run_int8_reference``) on the canvases and decoded by ``decode_outputs``."""
    from detector import quantize as QZ
    from detector.decode import SCORE_SCALE

    g = QZ.build_int8_graph(params, scheme, calib)
    dets = QZ.decode_outputs(g, QZ.run_int8_reference(g, canvases.images))
    return dets, dets["scores"].astype(np.float64) * SCORE_SCALE


def evaluate(canvases, dets: dict, scores: np.ndarray) -> dict:
    """{map, map50, map75, ar100} of ``detector.evaluate.coco_map``."""
    from detector.evaluate import coco_map

    return _stats(coco_map(canvases, dets, scores))


def fold_maps(canvases, dets: dict, scores: np.ndarray, folds: int = 5) -> list[float]:
    """mAP on each of ``folds`` equal consecutive slices of the canvases (for a noise estimate)."""
    from detector.dataset import Canvases

    n = len(canvases)
    if not 1 <= folds <= n:
        raise ValueError(f"folds must be in [1, {n}] (the number of canvases), got {folds}")
    out = []
    for f in range(folds):
        sl = slice(f * n // folds, (f + 1) * n // folds)
        sub = Canvases(canvases.images[sl], canvases.boxes[sl], canvases.classes[sl])
        out.append(evaluate(sub, {k: v[sl] for k, v in dets.items()}, scores[sl])["map"])
    return out


def grid_schemes() -> list:
    """{per-tensor, per-channel} x {max, mean_max, percentile, kl} x {int8, uint8}, no pow2."""
    from detector.quantize import ACTIVATION_TYPES, CALIB_METHODS, Scheme

    return [Scheme(w, c, a) for w, c, a in itertools.product(("per_tensor", "per_channel"), CALIB_METHODS,
                                                              ACTIVATION_TYPES)]


def extra_schemes(best) -> list:
    """The follow-ups (scheme, calib_n) a practitioner tries after the grid (docs/detector.md):
    other percentiles, histograms without the ReLU zeros, KL with the stem kept at max, and the
    calibration set size of the best scheme so far (``best``)."""
    from detector.quantize import Scheme

    a = best.activations
    return [(Scheme("per_channel", "percentile", a, percentile=p), None) for p in (99.9, 99.999)] + [
        (Scheme("per_channel", "percentile", a, nonzero=True), None),
        (Scheme("per_channel", "kl", a, nonzero=True), None),
        (Scheme("per_channel", "kl", a, nonzero=True, max_layers=("stem1", "s2_down")), None),
        (best, 16), (best, 256)]


class Study:
    """Evaluates schemes on fixed test canvases, sharing float calibration passes (keyed by calib size)."""

    def __init__(self, params: dict, canvases, calib_n: int = 64, log=None):
        self.params, self.canvases, self.calib_n = params, canvases, calib_n
        self._acts: dict[int, dict] = {}
        self.rows: list[dict] = []
        self.dets: dict[str, tuple] = {}         # row name -> (detections, scores)
        self.log = log

    def acts(self, n: int) -> dict:
        from detector.quantize import calibration_activations, calibration_images

        if n not in self._acts:
            self._acts[n] = calibration_activations(self.params, calibration_images(n))
        return self._acts[n]

    def run(self, scheme, calib_n: int | None = None, fp32: float | None = None) -> dict:
        """Evaluate one scheme (calibrated on ``calib_n`` val canvases, default the study's); append its row."""
        n = self.calib_n if calib_n is None else calib_n
        t = time.time()
        dets, scores = int8_detections(self.params, self.canvases, scheme, self.acts(n))
        st = evaluate(self.canvases, dets, scores)
        name = scheme.name + ("" if n == self.calib_n else f"/calib{n}")
        row = {"scheme": name, **asdict(scheme), "calib_n": n, **st,
               "delta": None if fp32 is None else st["map"] - fp32, "seconds": round(time.time() - t, 2)}
        row["max_layers"] = list(row["max_layers"])
        self.rows.append(row)
        self.dets[name] = (dets, scores)
        if self.log:
            self.log(f"{name}: mAP {st['map']:.4f} ({row['seconds']} s)")
        return row


def best_row(rows: list) -> dict:
    """The row with the highest mAP (the first one on ties)."""
    if not rows:
        raise ValueError("rows must not be empty")
    return max(rows, key=lambda r: (r["map"], -rows.index(r)))


def add_arguments(ap) -> None:
    ap.add_argument("--n", type=int, default=None, help="first N test canvases (default: all 500)")
    ap.add_argument("--calib-n", type=int, default=64, help="val canvases for calibration (default 64)")
    ap.add_argument("--no-extra", action="store_true", help="skip the follow-up schemes (grid + pow2 only)")
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def run(args) -> dict:
    import sys

    from detector import dataset as D
    from detector.model import load_weights
    from detector.quantize import DEFAULT_SCHEME, Scheme

    t0, c0 = time.time(), time.process_time()
    log = None if getattr(args, "quiet", False) else (lambda m: print(m, file=sys.stderr, flush=True))
    params = load_weights()
    canvases = D.make_split("test", getattr(args, "n", None))
    fl, fdets = {}, {}
    for fmt in ("fp32",) + FLOAT_FORMATS:
        fdets[fmt] = float_detections(params, canvases, fmt)
        fl[fmt] = evaluate(canvases, *fdets[fmt])
    fp32 = fl["fp32"]["map"]
    if log:
        log("float: " + ", ".join(f"{k} {v['map']:.4f}" for k, v in fl.items()))
    study = Study(params, canvases, int(getattr(args, "calib_n", 64)), log)
    for s in grid_schemes():
        study.run(s, fp32=fp32)
    best_pc = best_row([r for r in study.rows if r["weights"] == "per_channel"])
    for a in ("int8", "uint8"):
        study.run(Scheme("per_channel", best_pc["calib"], a, True), fp32=fp32)
    if not getattr(args, "no_extra", False):
        b = best_row(study.rows)
        best_scheme = Scheme(**{k: b[k] for k in ("weights", "calib", "activations", "pow2", "percentile",
                                                   "nonzero", "max_layers")})
        for s, n in extra_schemes(best_scheme):
            study.run(s, n, fp32=fp32)
    best = best_row(study.rows)
    folds = min(5, len(canvases))
    f32_f = fold_maps(canvases, *fdets["fp32"], folds)
    best_f = fold_maps(canvases, *study.dets[best["scheme"]], folds)
    d = np.array(best_f) - np.array(f32_f)
    default_row = [r for r in study.rows if r["scheme"] == DEFAULT_SCHEME.name]
    return {
        "map_fp32": fp32,
        "map_fp16": fl["fp16"]["map"],
        "map_bf16": fl["bf16"]["map"],
        "float": fl,
        "map_int8_best": best["map"],
        "best_scheme": best["scheme"],
        "int8_loss": fp32 - best["map"],
        "target": TARGET,
        "target_met": fp32 - best["map"] <= TARGET,
        "default_scheme": DEFAULT_SCHEME.name,
        "default_is_best": bool(default_row) and default_row[0]["map"] == best["map"],
        "table": study.rows,
        "noise": {"folds": folds, "fp32_fold_maps": f32_f, "best_fold_maps": best_f,
                  "delta_mean": float(d.mean()),
                  "delta_sem": float(d.std(ddof=1) / np.sqrt(folds)) if folds > 1 else None},
        "n_test": len(canvases),
        "calib_n": study.calib_n,
        "calib_split": "val",
        "seconds": round(time.time() - t0, 1),
        "cpu_seconds": round(time.process_time() - c0, 1),
    }
