"""Post-training INT8 quantization of the digit CenterNet into a ``firmware.graph.Graph``.

    g = build_int8_graph()                         # shipped weights, DEFAULT_SCHEME, 64 val canvases
    env = run_int8_reference(g, images)            # every tensor, bit-exact golden reference, batched
    dets = decode_outputs(g, env)                  # decode_int8 on hm, dequantized wh / reg

The graph is what the accelerator runs: one node per ``detector.model.ARCH``
layer (``Conv2d`` / ``ConvTranspose2d`` on the array with the ReLU fused as the
lane clamp, ``Add`` -- TFLite's requantizing add, ReLU clamp fused -- on the
host), ``mode="tflite"`` requantization (../shared/spec/arithmetic.md §2).

* Input ``"image"``: uint8 (1, 1, 96, 96), ``Q(1/255, 0, "uint8")``: the codes
  are the canvas pixels and ``x = u8 / 255`` is exactly the float model's
  input (never calibrated, never clipped). Batches of any size N run through
  :func:`run_int8_reference` (the nodes are batch-agnostic).
* Outputs (``graph.outputs``): ``"hm"`` (10 heatmap logit maps), ``"wh"`` and
  ``"reg"`` (2 maps each), (N, C, 24, 24) codes of the activation type, each
  with its own per-tensor ``Q`` (``graph.q(name)``).
* Weights (``Scheme.weights``): symmetric int8 in [-127, 127], zero point 0
  (``golden.quant.quantize_weights``, the TFLite rule), one scale per output
  channel (axis 0 of a Conv2d weight, axis 1 of a ConvTranspose2d weight) or
  one per tensor. Biases: int32 ``rint(b / (s_in * s_w[c]))`` (float64 of the
  float32 scales; zero point 0).
* Activations (``Scheme.activations``): ``"int8"`` = symmetric int8 (zero point
  0, ``scale = max|r| / 127``), ``"uint8"`` = asymmetric uint8 (``scale =
  (rmax - rmin) / 255``, rounded zero point), per tensor, from
  ``golden.quant.choose_qparams`` on the calibrated range ``(rmin, rmax)`` of
  the float activation (after its ReLU, if any). A fused ReLU is the clamp
  ``[max(qmin, zp), qmax]``.
* Calibration (``Scheme.calib``), on the float32 activations of
  :func:`calibration_images` (val split) through ``golden.calib``:

  - ``"max"``: ``MinMaxObserver``, the union of the ranges;
  - ``"mean_max"``: ``MeanMinMaxObserver`` over batches of ``CALIB_BATCH``
    canvases (mean of the per-batch minima / maxima);
  - ``"percentile"``: ``PercentileObserver(Scheme.percentile)`` (2048 bins;
    one-sided on |x| for symmetric int8, two-sided for asymmetric uint8);
  - ``"kl"``: ``EntropyObserver`` (TensorRT minimum KL, 2048 bins, 128 levels;
    |x|, the clip range intersected with the data range).

  Histogram observers see all calibration activations of a tensor as one
  batch, so the histogram is exactly over [0, max|x|] (no re-binning).
* ``Scheme.pow2``: every weight and activation scale is rounded up to a power
  of two (``power_of_two=True``, "fractional length"); the image keeps its
  exact 1/255, so only the stem's lane multiplier is not a pure shift.

Practitioner knobs of :class:`Scheme` (defaults = the plain recipe):

* ``percentile``: the percentile of ``calib="percentile"`` (default 99.99).
* ``nonzero``: the histogram calibrators (percentile, KL) ignore exact zeros.
  Half of a ReLU output is exactly 0 -- representable without error at any
  scale -- yet that spike dominates a histogram of |x|: KL then "optimises"
  the resolution of the zero bin and clips the informative tail.
* ``max_layers``: names of tensors kept at their full observed range (max
  calibration) whatever ``calib`` says, e.g. the heads (``wh``/``reg`` are
  read as real values, ``hm`` feeds the sigmoid table) or the stem (whose
  input is mostly the constant black background: its histogram is a spike
  plus the strokes' tail, which KL clips).

The study in docs/detector.md measures all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from firmware.graph import Graph, Q
from golden import calib as C
from golden.quant import choose_qparams, quantize_weights

from . import dataset as D
from .decode import K, decode_int8
from .model import ARCH, HEADS, INPUT_SHAPE, check_weights, forward, load_weights

__all__ = ["WEIGHT_MODES", "CALIB_METHODS", "ACTIVATION_TYPES", "LAYER_NAMES", "CALIB_BATCH", "CALIB_SPLIT",
           "INPUT_Q", "OUTPUTS", "Scheme", "DEFAULT_SCHEME", "calibration_images", "calibration_activations",
           "tensor_ranges", "build_int8_graph", "run_int8_reference", "dequantize_output", "decode_outputs",
           "check_images"]

WEIGHT_MODES = ("per_channel", "per_tensor")
CALIB_METHODS = ("max", "mean_max", "percentile", "kl")
ACTIVATION_TYPES = ("int8", "uint8")
LAYER_NAMES = tuple(L.name for L in ARCH)   #: tensors a scheme calibrates (``max_layers`` names)
CALIB_BATCH = 8           #: canvases per batch for the mean-max observer
CALIB_SPLIT = "val"       #: calibration never touches the test split
INPUT_Q = Q(1.0 / 255.0, 0, "uint8")  #: the image input: codes = canvas pixels, exact
OUTPUTS = HEADS           #: ("hm", "wh", "reg"): the graph's output node names


@dataclass(frozen=True)
class Scheme:
    """One post-training quantization recipe (see the module docstring for each field).

    ``weights``: ``"per_channel"`` | ``"per_tensor"``; ``calib``: ``"max"`` |
    ``"mean_max"`` | ``"percentile"`` | ``"kl"``; ``activations``: ``"int8"``
    (symmetric) | ``"uint8"`` (asymmetric); ``pow2``: power-of-two scales;
    ``percentile``: the percentile of ``calib="percentile"`` in (0, 100];
    ``nonzero``: histogram calibrators ignore exact zeros; ``max_layers``:
    tensors kept at max calibration (names from ``LAYER_NAMES``, stored
    sorted in ARCH order). Invalid values raise ``ValueError`` naming the
    field and the allowed values.
    """

    weights: str = "per_channel"
    calib: str = "max"
    activations: str = "uint8"
    pow2: bool = False
    percentile: float = 99.99
    nonzero: bool = False
    max_layers: tuple = ()

    def __post_init__(self):
        for name, allowed in (("weights", WEIGHT_MODES), ("calib", CALIB_METHODS),
                              ("activations", ACTIVATION_TYPES)):
            v = getattr(self, name)
            if not isinstance(v, str) or v not in allowed:
                raise ValueError(f"Scheme.{name} must be one of {allowed}, got {v!r}")
        for name in ("pow2", "nonzero"):
            v = getattr(self, name)
            if not isinstance(v, (bool, np.bool_)):
                raise ValueError(f"Scheme.{name} must be True or False, got {v!r}")
            object.__setattr__(self, name, bool(v))
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
                or not np.isfinite(p) or not 0 < p <= 100:
            raise ValueError(f"Scheme.percentile must be a number in (0, 100], got {p!r}")
        object.__setattr__(self, "percentile", float(p))
        ml = self.max_layers
        if isinstance(ml, str) or not isinstance(ml, (tuple, list, frozenset, set)):
            raise ValueError(f"Scheme.max_layers must be a tuple of layer names from {LAYER_NAMES}, got {ml!r}")
        bad = [m for m in ml if m not in LAYER_NAMES]
        if bad:
            raise ValueError(f"Scheme.max_layers must name layers from {LAYER_NAMES}, got unknown {bad}")
        object.__setattr__(self, "max_layers", tuple(n for n in LAYER_NAMES if n in set(ml)))

    @property
    def name(self) -> str:
        """``weights/calib/activations`` (e.g. ``"per_channel/kl/int8"``), then ``/pow2``,
        ``/p<percentile>`` (percentile calibration other than 99.99), ``/nonzero`` and
        ``/max:<layer>+<layer>...`` (``/max:heads`` for exactly hm, wh, reg) when set."""
        s = f"{self.weights}/{self.calib}/{self.activations}"
        if self.pow2:
            s += "/pow2"
        if self.calib == "percentile" and self.percentile != 99.99:
            s += f"/p{self.percentile:g}"
        if self.nonzero:
            s += "/nonzero"
        if self.max_layers:
            s += "/max:" + ("heads" if self.max_layers == HEADS else "+".join(self.max_layers))
        return s


#: The best scheme of the study (``python -m bench quant``; docs/detector.md "Quantization study"):
#: per-channel weights, mean-of-batch-maxima ranges, asymmetric uint8 activations -- test mAP 0.8110
#: (FP32 0.8100).
DEFAULT_SCHEME = Scheme("per_channel", "mean_max", "uint8", False)


# --------------------------------------------------------------------------- inputs


def check_images(images, name: str = "images") -> np.ndarray:
    """uint8 canvases (N >= 1, 1, 96, 96) or ``ValueError`` naming ``name`` and what is allowed."""
    a = np.asarray(images)
    shape = "(N, " + ", ".join(map(str, INPUT_SHAPE)) + ")"
    if a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 canvas pixels in [0, 255] of shape {shape}, got dtype {a.dtype}")
    if a.ndim != 4 or a.shape[1:] != INPUT_SHAPE or a.shape[0] < 1:
        raise ValueError(f"{name} must have shape {shape} with N >= 1, got {a.shape}")
    return a


def _check_scheme(scheme) -> Scheme:
    if not isinstance(scheme, Scheme):
        raise ValueError(f"scheme must be a detector.quantize.Scheme, got {type(scheme).__name__}")
    return scheme


def calibration_images(n: int = 64) -> np.ndarray:
    """The first ``n`` canvases of the **val** split (deterministic; never the test split), uint8 (n, 1, 96, 96)."""
    hi = D.SPLIT_SIZES[CALIB_SPLIT]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= hi:
        raise ValueError(f"n must be an integer in [1, {hi}] (the {CALIB_SPLIT} split's size), got {n!r}")
    return D.make_split(CALIB_SPLIT, int(n)).images


# --------------------------------------------------------------------------- calibration


def calibration_activations(params: dict, calib) -> dict:
    """Float32 activations of every ARCH tensor (after its ReLU) on the calibration canvases."""
    return forward(params, check_images(calib, "calib"), return_all=True)


def _observe(scheme: Scheme, x: np.ndarray, method: str) -> tuple[float, float]:
    """Calibrated (rmin, rmax) of one float tensor (N, C, H, W) with ``method``."""
    if method == "max":
        obs = C.MinMaxObserver()
        obs.observe(x)
    elif method == "mean_max":
        obs = C.MeanMinMaxObserver()
        for s in range(0, len(x), CALIB_BATCH):
            obs.observe(x[s:s + CALIB_BATCH])
    else:
        v = x
        if scheme.nonzero:
            v = x[x != 0]
            if v.size == 0:                      # an all-zero tensor: nothing to clip
                return 0.0, 0.0
        if method == "percentile":
            obs = C.PercentileObserver(scheme.percentile, two_sided=scheme.activations == "uint8")
        else:
            obs = C.EntropyObserver()
        obs.observe(v)          # (choose_qparams widens every range to include 0 anyway)
    lo, hi = obs.compute_range()
    return float(lo), float(hi)


def tensor_ranges(acts: dict, scheme: Scheme = DEFAULT_SCHEME, names=None) -> dict:
    """{tensor: (rmin, rmax)} calibrated by ``scheme`` for every ARCH layer output (or just ``names``)."""
    scheme = _check_scheme(scheme)
    names = LAYER_NAMES if names is None else tuple(names)
    bad = [n for n in names if n not in LAYER_NAMES]
    if bad:
        raise ValueError(f"names must be layers from {LAYER_NAMES}, got unknown {bad}")
    return {n: _observe(scheme, acts[n], "max" if n in scheme.max_layers else scheme.calib) for n in names}


def _act_q(rmin: float, rmax: float, scheme: Scheme) -> Q:
    sym = scheme.activations == "int8"
    qp = choose_qparams(rmin, rmax, scheme.activations, symmetric=sym, power_of_two=scheme.pow2)
    return Q(float(qp.scale), int(qp.zero_point), scheme.activations)


def _bias_codes(b: np.ndarray, s_in: float, s_w: np.ndarray, name: str) -> np.ndarray:
    """int32 ``rint(b / (s_in * s_w))`` (float64 of the float32 scales), ValueError if it overflows."""
    bs = np.float64(np.float32(s_in)) * np.asarray(s_w, np.float32).astype(np.float64)
    q = np.rint(b.astype(np.float64) / bs)
    if np.any(np.abs(q) > 2**31 - 1):
        raise ValueError(f"{name}: quantized bias exceeds int32 (scale {bs.min():.3g})")
    return np.broadcast_to(q, b.shape).astype(np.int32)


# --------------------------------------------------------------------------- the graph


def build_int8_graph(params: dict | None = None, scheme: Scheme = DEFAULT_SCHEME, calib=None) -> Graph:
    """The INT8 detector as a ``firmware.graph.Graph`` (see the module docstring).

    ``params``: BN-folded float32 weights (default ``detector.model.load_weights()``);
    ``calib``: uint8 calibration canvases (default :func:`calibration_images`), or an
    already computed dict of float activations (:func:`calibration_activations`,
    so a study can share one float pass between schemes). Deterministic. The
    graph also carries the scheme it was built with as ``graph.scheme``.
    """
    scheme = _check_scheme(scheme)
    params = load_weights() if params is None else check_weights(params)
    if isinstance(calib, dict):
        acts = calib
        missing = [L.name for L in ARCH if L.name not in acts]
        if missing:
            raise ValueError(f"calib activations are missing tensors {missing[:4]}")
    else:
        acts = calibration_activations(params, calibration_images() if calib is None else calib)
    ranges = tensor_ranges(acts, scheme)
    g = Graph()
    g.add_input("image", (1,) + INPUT_SHAPE, INPUT_Q)
    axis_pc = scheme.weights == "per_channel"
    for L in ARCH:
        out = _act_q(*ranges[L.name], scheme)
        act = "relu" if L.relu else None
        if L.op == "add":
            g.add_op(L.name, L.inputs[0], L.inputs[1], out, act=act)
            continue
        w = params[f"{L.name}.weight"]
        b = params[f"{L.name}.bias"]
        ch_axis = 0 if L.op == "conv" else 1
        wq, wqp = quantize_weights(w, axis=ch_axis if axis_pc else None, power_of_two=scheme.pow2)
        s_in = g.q(L.inputs[0]).scale
        bias = _bias_codes(b, s_in, wqp.scale, L.name)
        ws = wqp.scale if axis_pc else float(wqp.scale)
        if L.op == "conv":
            g.conv2d(L.name, L.inputs[0], wq, bias, ws, out, stride=L.stride, padding=L.padding,
                     groups=L.groups, act=act)
        else:
            g.conv_transpose2d(L.name, L.inputs[0], wq, bias, ws, out, stride=L.stride, padding=L.padding,
                               act=act)
    g.outputs = list(OUTPUTS)
    g.scheme = scheme
    return g


def _check_graph(graph) -> Graph:
    if not isinstance(graph, Graph):
        raise ValueError(f"graph must be a firmware.graph.Graph, got {type(graph).__name__}")
    if list(graph.inputs) != ["image"]:
        raise ValueError(f"graph must have the single input 'image', got {list(graph.inputs)}")
    for h in OUTPUTS:
        try:
            graph.node(h)
        except KeyError:
            raise ValueError(f"graph has no output node {h!r} (needs {OUTPUTS})") from None
    return graph


def run_int8_reference(graph: Graph, images, batch: int = 50) -> dict:
    """Every tensor of ``graph`` on uint8 canvases (N, 1, 96, 96): ``{name: (N, ...) codes}``.

    The golden reference ``node.reference`` of each node in order (what
    ``firmware.driver.run_graph`` must reproduce on the accelerator), run on
    ``batch`` canvases at a time (bounded memory) and concatenated.
    """
    graph = _check_graph(graph)
    images = check_images(images)
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    chunks = []
    for s in range(0, len(images), batch):
        env = {"image": images[s:s + batch]}
        for n in graph.nodes:
            env[n.name] = n.reference([env[t] for t in n.inputs])
        chunks.append(env)
    if len(chunks) == 1:
        return chunks[0]
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


def dequantize_output(graph: Graph, env: dict, name: str) -> np.ndarray:
    """Real float32 values ``float32(code - zp) * scale`` of tensor ``name`` of ``env``."""
    q = graph.q(name)
    a = np.asarray(env[name])
    if a.dtype.name != q.dtype:
        raise ValueError(f"env[{name!r}] must have dtype {q.dtype}, got {a.dtype}")
    return (a.astype(np.int32) - q.zp).astype(np.float32) * np.float32(q.scale)


def decode_outputs(graph: Graph, env: dict, k: int = K) -> dict:
    """Detections of an INT8 run: ``detector.decode.decode_int8`` on the hm codes (sigmoid table to
    uint8 scores, peaks and ranking on those scores) with the dequantized ``wh``/``reg``.
    Same dict as the float path (``scores`` are uint8 codes, score = code / 256)."""
    graph = _check_graph(graph)
    for h in OUTPUTS:
        if h not in env:
            raise ValueError(f"env is missing the output tensor {h!r}")
    qh = graph.q("hm")
    return decode_int8(env["hm"], qh.scale, qh.zp, dequantize_output(graph, env, "wh"),
                       dequantize_output(graph, env, "reg"), k, in_dtype=qh.dtype)

