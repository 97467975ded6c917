"""The detector's architecture (one description shared by training and inference) and float NumPy inference.

A small CenterNet ("objects as points") network for 1 x 96 x 96 grey canvases
with outputs at stride 4 (24 x 24): a residual backbone down to stride 16, an
upsampling neck of two transposed convolutions (k4 s2 p1, CenterNet's
ResNet neck) with additive skips from stride 8 and stride 4, and the three
CenterNet heads (3x3 conv + ReLU + 1x1 conv each): ``hm`` (10 class logits;
sigmoid in decoding), ``wh`` (box width/height in output cells) and ``reg``
(sub-cell center offset).

``ARCH`` lists the layers in execution order; each entry is a ``Layer``:

* ``conv``: ``torch.nn.Conv2d(cin, cout, k, stride, padding=k//2, groups)``;
* ``convT``: ``torch.nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1)``;
* ``add``: element-wise sum of two tensors;

each optionally followed by BatchNorm (``bn``, training only: folded into the
weights on export, :func:`fold_bn`) and ReLU (``relu``). Only layers the
accelerator runs are used (Conv2d, ConvTranspose2d, ReLU, residual Add), so
the INT8 detector maps one ``Layer`` to one ``firmware.graph`` node.

The input is the uint8 canvas scaled to [0, 1] (``x = u8 / 255``, no mean
subtraction: the first BatchNorm absorbs it), i.e. INT8 input quantization
``scale = 1/255, zero_point = 0`` (uint8) is exact.

Weights are stored BN-folded (``<layer>.weight``, ``<layer>.bias`` float32 in
an .npz, :func:`load_weights`); :func:`forward` runs them in float32 with the
same layouts and semantics as PyTorch (Conv2d weight (O, C/g, kh, kw),
ConvTranspose2d weight (C_in, C_out, kh, kw)).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import CANVAS, NUM_CLASSES, OUT

__all__ = ["Layer", "ARCH", "HEADS", "HEAD_CHANNELS", "INPUT_SHAPE", "HM_BIAS_INIT", "WEIGHTS_DIR",
           "WEIGHTS_FILE", "REFERENCE_FILE", "shapes", "macs", "param_count", "fold_bn", "load_weights",
           "check_weights", "forward", "preprocess", "conv2d", "conv_transpose2d"]

INPUT_SHAPE = (1, CANVAS, CANVAS)  #: (C, H, W) of one input canvas
HM_BIAS_INIT = -2.19              #: CenterNet's heatmap-logit bias init: sigmoid(-2.19) ~= 0.1
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FILE = WEIGHTS_DIR / "centernet_digits.npz"
REFERENCE_FILE = WEIGHTS_DIR / "reference_outputs.npz"


@dataclass(frozen=True)
class Layer:
    """One layer. ``inputs``: tensor names ("image" is the network input); ``name`` names the output."""

    name: str
    op: str                 # "conv" | "convT" | "add"
    inputs: tuple
    cin: int = 0
    cout: int = 0
    k: int = 1
    stride: int = 1
    groups: int = 1
    bn: bool = False
    relu: bool = False

    @property
    def padding(self) -> int:
        return 1 if self.op == "convT" else self.k // 2

    @property
    def has_weights(self) -> bool:
        return self.op in ("conv", "convT")


def _conv(name, x, cin, cout, k=3, stride=1, bn=True, relu=True, groups=1):
    return Layer(name, "conv", (x,), cin, cout, k, stride, groups, bn, relu)


def _block(prefix, x, c):
    """Basic residual block: relu(x + bn(conv(relu(bn(conv(x))))))."""
    return [_conv(f"{prefix}_a", x, c, c), _conv(f"{prefix}_b", f"{prefix}_a", c, c, relu=False),
            Layer(f"{prefix}_out", "add", (x, f"{prefix}_b"), relu=True)]


HEAD_CHANNELS = {"hm": NUM_CLASSES, "wh": 2, "reg": 2}
HEADS = tuple(HEAD_CHANNELS)
_HC = 32  # head hidden width

ARCH: tuple[Layer, ...] = tuple(
    [_conv("stem1", "image", 1, 16, stride=2),            # 48x48
     _conv("s2_down", "stem1", 16, 32, stride=2)]         # 24x24, stride 4
    + _block("s2", "s2_down", 32)
    + [_conv("s3_down", "s2_out", 32, 64, stride=2)]      # 12x12, stride 8
    + _block("s3", "s3_down", 64)
    + [_conv("s4_down", "s3_out", 64, 64, stride=2)]      # 6x6, stride 16
    + _block("s4", "s4_down", 64)
    + [Layer("up1", "convT", ("s4_out",), 64, 64, 4, 2, 1, True, True),        # 12x12
       Layer("up1_sum", "add", ("up1", "s3_out")),
       _conv("up1_fuse", "up1_sum", 64, 32),
       Layer("up2", "convT", ("up1_fuse",), 32, 32, 4, 2, 1, True, True),      # 24x24
       Layer("up2_sum", "add", ("up2", "s2_out"))]
    + [lay for h, c in HEAD_CHANNELS.items()
       for lay in (Layer(f"{h}_conv", "conv", ("up2_sum",), 32, _HC, 3, 1, 1, False, True),
                   Layer(h, "conv", (f"{h}_conv",), _HC, c, 1, 1, 1, False, False))]
)


def shapes(arch=ARCH, input_shape=INPUT_SHAPE) -> dict:
    """Output shape (C, H, W) of every tensor (``"image"`` included)."""
    sh = {"image": tuple(input_shape)}
    for L in arch:
        if L.op == "add":
            a, b = (sh[t] for t in L.inputs)
            if a != b:
                raise ValueError(f"{L.name}: add of shapes {a} and {b}")
            sh[L.name] = a
            continue
        c, h, w = sh[L.inputs[0]]
        if c != L.cin:
            raise ValueError(f"{L.name}: input has {c} channels, layer expects {L.cin}")
        if L.op == "conv":
            p = L.padding
            sh[L.name] = (L.cout, (h + 2 * p - L.k) // L.stride + 1, (w + 2 * p - L.k) // L.stride + 1)
        else:
            sh[L.name] = (L.cout, (h - 1) * L.stride - 2 * L.padding + L.k, (w - 1) * L.stride - 2 * L.padding + L.k)
    return sh


def macs(arch=ARCH, input_shape=INPUT_SHAPE) -> dict:
    """Multiply-accumulates per frame of each weighted layer.

    Conv: ``H_out * W_out * C_out * (C_in / groups) * k * k``. ConvTranspose2d
    (k4 s2 p1): the products landing in the output, ``H_out * W_out * C_out *
    C_in * (k / s)^2`` -- each output pixel receives 2 x 2 taps per input
    channel (the sub-pixel lowering firmware/compiler.py runs); equal to the
    usual ``H_in * W_in * C_in * C_out * k * k`` count.
    """
    sh = shapes(arch, input_shape)
    out = {}
    for L in arch:
        if not L.has_weights:
            continue
        co, ho, wo = sh[L.name]
        taps = L.k * L.k if L.op == "conv" else (L.k // L.stride) ** 2
        out[L.name] = ho * wo * co * (L.cin // L.groups) * taps
    return out


def param_count(arch=ARCH) -> int:
    """Number of (BN-folded) parameters: weights + biases."""
    n = 0
    for L in arch:
        if L.has_weights:
            n += L.cout * (L.cin // L.groups) * L.k * L.k + L.cout
    return n


def fold_bn(weight, bias, gamma, beta, mean, var, eps: float, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fold inference BatchNorm into the preceding (transposed) convolution, float64 math -> float32.

    ``y = gamma * (conv(x) + b - mean) / sqrt(var + eps) + beta`` equals a conv
    with weights scaled per output channel by ``s = gamma / sqrt(var + eps)`` and
    bias ``beta + (b - mean) * s``. Output channels are axis 0 of a Conv2d
    weight and axis 1 of a ConvTranspose2d weight (groups = 1).
    """
    w = np.asarray(weight, np.float64)
    co = w.shape[1] if transposed else w.shape[0]
    b = np.zeros(co) if bias is None else np.asarray(bias, np.float64)
    s = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shape = (1, co, 1, 1) if transposed else (co, 1, 1, 1)
    return (w * s.reshape(shape)).astype(np.float32), (np.asarray(beta, np.float64) + (b - mean) * s).astype(np.float32)


def _weight_shape(L: Layer) -> tuple:
    if L.op == "conv":
        return (L.cout, L.cin // L.groups, L.k, L.k)
    return (L.cin, L.cout // L.groups, L.k, L.k)


def check_weights(params: dict, arch=ARCH) -> dict:
    """Every weighted layer must have float32 ``<name>.weight``/``<name>.bias`` of the right shapes."""
    out = {}
    for L in arch:
        if not L.has_weights:
            continue
        for key, shape in ((f"{L.name}.weight", _weight_shape(L)), (f"{L.name}.bias", (L.cout,))):
            if key not in params:
                raise ValueError(f"params is missing {key!r}")
            a = np.asarray(params[key])
            if a.shape != shape or a.dtype != np.float32:
                raise ValueError(f"params[{key!r}] must be float32 of shape {shape}, got {a.dtype} {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"params[{key!r}] must be finite")
            out[key] = a
    return out


def load_weights(path=WEIGHTS_FILE) -> dict:
    """The BN-folded float32 weights shipped in ``detector/weights`` (or another .npz of the same layout)."""
    with np.load(path) as z:
        return check_weights({k: z[k] for k in z.files})


# --------------------------------------------------------------------------- float32 NumPy layers


def conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 1, padding: int = 0, groups: int = 1) -> np.ndarray:
    """``torch.nn.functional.conv2d`` in float32 (NCHW; im2col + one matmul per group)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    ho, wo = (h + 2 * padding - kh) // stride + 1, (wd + 2 * padding - kw) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding))) if padding else x
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride][:, :, :ho, :wo]
    og = o // groups
    outs = []
    for g in range(groups):
        cols = win[:, g * cg:(g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, cg * kh * kw)
        outs.append(cols @ w[g * og:(g + 1) * og].reshape(og, -1).T)
    y = np.concatenate(outs, axis=1) if groups > 1 else outs[0]
    y = y.reshape(n, ho, wo, o).transpose(0, 3, 1, 2) + b.reshape(1, o, 1, 1)
    return np.ascontiguousarray(y, dtype=np.float32)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int = 2, padding: int = 1) -> np.ndarray:
    """``torch.nn.functional.conv_transpose2d`` in float32 (groups = 1): one matmul, then col2im.

    Input pixel (i, j) adds ``x[:, i, j] @ w[:, :, p, q]`` to output
    ``(i * stride - padding + p, j * stride - padding + q)``; taps outside the output are dropped.
    """
    n, ci, h, wd = x.shape
    _, co, kh, kw = w.shape
    ho, wo = (h - 1) * stride - 2 * padding + kh, (wd - 1) * stride - 2 * padding + kw
    cols = x.transpose(0, 2, 3, 1).reshape(-1, ci) @ w.reshape(ci, -1)       # (n*h*w, co*kh*kw)
    cols = cols.reshape(n, h, wd, co, kh, kw)
    full = np.zeros((n, co, (h - 1) * stride + kh, (wd - 1) * stride + kw), np.float32)
    for p in range(kh):
        for q in range(kw):
            full[:, :, p:p + (h - 1) * stride + 1:stride, q:q + (wd - 1) * stride + 1:stride] += \
                cols[:, :, :, :, p, q].transpose(0, 3, 1, 2)
    y = full[:, :, padding:padding + ho, padding:padding + wo] + b.reshape(1, co, 1, 1)
    return np.ascontiguousarray(y, dtype=np.float32)


def preprocess(images) -> np.ndarray:
    """uint8 canvases (N, 1, 96, 96) -> float32 network input ``u8 / 255``."""
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {a.dtype}")
    if a.ndim != 4 or a.shape[1:] != INPUT_SHAPE:
        raise ValueError(f"images must have shape (N, {', '.join(map(str, INPUT_SHAPE))}), got {a.shape}")
    return a.astype(np.float32) / np.float32(255.0)


def forward(params: dict, images, arch=ARCH, return_all: bool = False, batch: int = 64, store=None) -> dict:
    """Float32 inference: uint8 canvases (N, 1, 96, 96) -> ``{"hm", "wh", "reg"}`` raw head outputs
    (N, C, 24, 24) float32 (hm are logits). ``return_all``: every tensor of ``arch`` instead.
    Runs ``batch`` canvases at a time (bounded im2col memory). ``store``: a function applied to
    the preprocessed input and to every layer's output before anything reads it (how a narrower
    storage format, e.g. fp16/bf16 rounding, is modelled; bench/quant.py); None keeps float32."""
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise ValueError(f"batch must be an integer >= 1, got {batch!r}")
    params = check_weights(params, arch)
    x_all = preprocess(images)
    chunks = []
    for s in range(0, len(x_all), batch):
        env = {"image": x_all[s:s + batch] if store is None else store(x_all[s:s + batch])}
        for L in arch:
            if L.op == "add":
                y = env[L.inputs[0]] + env[L.inputs[1]]
            else:
                w, b = params[f"{L.name}.weight"], params[f"{L.name}.bias"]
                x = env[L.inputs[0]]
                if L.op == "conv":
                    y = conv2d(x, w, b, L.stride, L.padding, L.groups)
                else:
                    y = conv_transpose2d(x, w, b, L.stride, L.padding)
            if L.relu:
                y = np.maximum(y, np.float32(0))
            env[L.name] = y if store is None else store(y)
        chunks.append(env if return_all else {h: env[h] for h in HEADS})
    if not chunks:
        raise ValueError("images must hold at least one canvas")
    return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}


assert shapes()["hm"] == (NUM_CLASSES, OUT, OUT)
