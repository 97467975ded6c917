"""A small quantized layer-graph IR over golden/ (the ground truth of every node).

Tensors are NCHW (fully-connected: (N, K)) int8/uint8 arrays named by strings;
each carries a quantization ``Q(scale, zp, dtype)``. A node names its input
tensors, stores the quantization it expects on each of them (``in_q``), its own
parameters and output quantization, and defines ``reference(inputs)`` by
calling golden.layers / golden.ops -- the bit-exact result the accelerator
(``firmware.driver``) must reproduce.

Accelerator nodes (``on_array = True``): ``Conv2d`` (stride, padding,
dilation, groups incl. depthwise, 1x1), ``FullyConnected``,
``ConvTranspose2d``. Their output stage is the array's post-processing lane
(docs/array.md), so it may carry:

* ``act``: None, "relu", "relu6" or an explicit (lo, hi) code clamp
  (``golden.layers.activation_range``);
* ``prelu``: per-channel (or one) slope(s) alpha in (0, 2**15), applied to the
  requantized value before the zero point (the lane's second Q31 multiply;
  LeakyReLU is one slope). The lane stores alpha as an unsigned Q31
  multiplier, so alpha <= 0 cannot be fused (ValueError);
* ``lut``: a ``LutSpec`` (256-entry table in ``golden.ops.make_lut`` order
  and its output quantization) applied to the clamped code.

The fused semantics are one requantization::

    v = MBQM(acc, M[c]);  v = MBQM(v, alpha[c]) if prelu and v < 0
    q = clamp(v + zp_out, act range);  out = lut[q] if lut

``mode`` selects the lanes' requantization (docs/array.md): "tflite" (above;
the default) or "ort", onnxruntime's QLinearConv/QGemm/QLinearMatMul rule
``q = clamp(rne(float32(float32(acc) * scale32[c])) + zp_out)`` with
``scale32 = golden.requant.ort_scale(s_in, s_w, s_out)`` (no PReLU), which
makes imported ONNX models bit-exact with onnxruntime (firmware.onnx_import).

Host nodes (``on_array = False``; memory-bound, no MACs -- see
firmware/compiler.py): ``MaxPool``, ``DirectionalMax``, ``Add`` (TFLite
requantizing add), ``Concat`` (requantizing; or per-input tables, onnxruntime's
QLinearConcat), ``Upsample`` (nearest), ``Relu`` (ReLU/ReLU6 clamp), ``PRelu``,
``LeakyRelu``, ``Lut``; for ONNX models (firmware.onnx_import): ``Clamp`` (a
code clamp, fused like Relu), ``ChannelLut`` (per-channel tables), ``AddTable``
(an add as a 256 x 256 table), ``Resize`` (nearest, explicit indices),
``Reshape``, ``Transpose`` and ``OrtConvTranspose`` (onnxruntime's float
ConvTranspose path, emulated bit for bit).

``Graph.fuse()`` folds a ``Relu``/``Clamp`` or ``Lut`` node into the accelerator node
producing its input when the result is bit-identical (a clamp after a clamp is
their intersection; a table after the clamp is the lane's LUT stage). A
standalone ``PRelu``/``LeakyRelu`` is NOT folded: it requantizes the already
requantized (and clamped) conv output a second time, and the lane's single
requantization gives different codes whenever the intermediate clamp binds;
a quantizer that wants the fused form emits ``prelu=`` on the conv node.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from golden import layers, ops
from golden._check import check_dtype, check_int_array, check_positive_int, check_scale, qrange
from golden.requant import (MAX_LEFT_SHIFT, REQUANT_MODES, multiply_by_quantized_multiplier, ort_scale,
                            quantize_multiplier, tflite_multiplier)

__all__ = ["Q", "LutSpec", "Node", "ArrayNode", "Conv2d", "FullyConnected", "ConvTranspose2d", "MaxPool",
           "DirectionalMax", "Add", "Concat", "Upsample", "Relu", "PRelu", "LeakyRelu", "Lut", "Clamp", "ChannelLut",
           "AddTable", "Resize", "Reshape", "Transpose", "OrtConvTranspose", "ort_float_conv_transpose", "fma_f32",
           "SGEMM_STRIDE_K", "Graph"]


# --------------------------------------------------------------------------- quantization of a tensor


@dataclass(frozen=True)
class Q:
    """Quantization of one tensor: real = scale * (code - zp), codes of ``dtype`` (int8/uint8)."""

    scale: float
    zp: int
    dtype: str = "int8"

    def __post_init__(self):
        dt = self.dtype if isinstance(self.dtype, str) else np.dtype(self.dtype).name
        qmin, qmax = qrange(dt, "Q.dtype")
        object.__setattr__(self, "dtype", dt)
        s = check_scale(self.scale, "Q.scale")
        if s.size != 1:
            raise ValueError(f"Q.scale must be a scalar in (0, inf), got shape {s.shape}")
        object.__setattr__(self, "scale", float(s.reshape(())))
        if isinstance(self.zp, bool) or not isinstance(self.zp, (int, np.integer)) or not qmin <= self.zp <= qmax:
            raise ValueError(f"Q.zp must be an integer in [{qmin}, {qmax}] for {dt}, got {self.zp!r}")
        object.__setattr__(self, "zp", int(self.zp))

    @property
    def qmin(self) -> int:
        return qrange(self.dtype)[0]

    @property
    def qmax(self) -> int:
        return qrange(self.dtype)[1]


def _q(v, name: str) -> Q:
    if not isinstance(v, Q):
        raise ValueError(f"{name} must be a firmware.graph.Q, got {type(v).__name__}")
    return v


@dataclass(frozen=True, eq=False)
class LutSpec:
    """A unary op as a table: ``out = table[code - qmin(in dtype)]`` (golden.ops.make_lut order).

    ``table``: (256,) array of ``out.dtype``; ``out``: quantization of the result.
    """

    table: np.ndarray
    out: Q

    def __post_init__(self):
        _q(self.out, "lut.out")
        t = check_dtype(self.table, "lut.table", ("int8", "uint8"))
        if t.shape != (256,):
            raise ValueError(f"lut.table must have shape (256,), got {t.shape}")
        if t.dtype.name != self.out.dtype:
            raise ValueError(f"lut.table dtype {t.dtype} must equal lut.out.dtype {self.out.dtype}")
        object.__setattr__(self, "table", np.array(t))


# --------------------------------------------------------------------------- nodes


class Node:
    """Base class. ``name`` is also the name of the output tensor; ``inputs`` the input tensor names;
    ``in_q`` their quantizations; ``out_q`` the output's."""

    on_array = False
    n_inputs = 1

    def __init__(self, name: str, inputs: Sequence[str], in_q: Sequence[Q]):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name must be a non-empty string, got {name!r}")
        self.name = name
        if isinstance(inputs, str):
            inputs = (inputs,)
        if isinstance(in_q, Q):
            in_q = (in_q,)
        inputs, in_q = tuple(inputs), tuple(in_q)
        if self.n_inputs is not None and len(inputs) != self.n_inputs:
            raise ValueError(f"{type(self).__name__} {name!r} needs {self.n_inputs} input(s), got {len(inputs)}")
        if len(inputs) < 1 or len(in_q) != len(inputs):
            raise ValueError(f"{name!r}: in_q must give one Q per input ({len(inputs)}), got {len(in_q)}")
        for i, (t, q) in enumerate(zip(inputs, in_q)):
            if not isinstance(t, str) or not t:
                raise ValueError(f"{name!r}: inputs[{i}] must be a tensor name, got {t!r}")
            _q(q, f"{name!r}.in_q[{i}]")
        self.inputs, self.in_q = inputs, in_q

    @property
    def out_q(self) -> Q:
        return self.in_q[0]

    def out_shape(self, in_shapes: Sequence[tuple]) -> tuple:
        return tuple(in_shapes[0])

    def macs(self, in_shapes: Sequence[tuple]) -> int:
        return 0

    def _check_inputs(self, inputs) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        if len(inputs) != len(self.inputs):
            raise ValueError(f"{self.name!r} takes {len(self.inputs)} input array(s), got {len(inputs)}")
        out = []
        for i, (a, q) in enumerate(zip(inputs, self.in_q)):
            a = np.asarray(a)
            if a.dtype.name != q.dtype:
                raise ValueError(f"{self.name!r}: input {i} ({self.inputs[i]}) must have dtype {q.dtype}, got {a.dtype}")
            out.append(a)
        return out

    def reference(self, inputs) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self):
        return f"{type(self).__name__}({self.name!r} <- {', '.join(self.inputs)})"


def _act_spec(act):
    if act is None or act in ("relu", "relu6"):
        return act
    if isinstance(act, (tuple, list)) and len(act) == 2:
        return (int(act[0]), int(act[1]))
    raise ValueError(f"act must be None, 'relu', 'relu6' or a (lo, hi) pair, got {act!r}")


class ArrayNode(Node):
    """A layer that runs on the MACC array: a quantized GEMM plus the lane post-processing.

    Subclasses define the accumulator (``_acc``) and the quantized reference
    (``_plain``, golden.layers with act clamp) and the weight layout.
    """

    on_array = True

    def __init__(self, name, inputs, in_q, weight, bias, w_scale, out: Q, *, act=None, prelu=None,
                 lut: LutSpec | None = None, n_out: int, mode: str = "tflite"):
        super().__init__(name, inputs, in_q)
        if mode not in REQUANT_MODES:
            raise ValueError(f"{name}.mode must be one of {REQUANT_MODES}, got {mode!r}")
        self.mode = mode
        self.weight = np.array(check_dtype(weight, f"{name}.weight", ("int8",)))
        self.n_out = n_out
        if bias is None:
            self.bias = np.zeros(n_out, np.int32)
        else:
            b = check_int_array(bias, f"{name}.bias", -(2**31), 2**31 - 1, ndim=1)
            if b.size != n_out:
                raise ValueError(f"{name}.bias must have {n_out} values (one per output channel), got {b.size}")
            self.bias = b.astype(np.int32)
        ws = check_scale(w_scale, f"{name}.w_scale")
        if ws.ndim > 1 or ws.size not in (1, n_out):
            raise ValueError(f"{name}.w_scale must be a scalar or have {n_out} per-channel values, got shape {ws.shape}")
        self.w_scale = ws.reshape(-1) if ws.size > 1 else ws.reshape(())
        self.out = _q(out, f"{name}.out")
        self.act = _act_spec(act)
        self.act_range = layers.activation_range(self.act, self.out.scale, self.out.zp, self.out.dtype)
        if prelu is not None:
            a = np.asarray(prelu, np.float64).astype(np.float32).astype(np.float64)  # float32, as stored
            if a.ndim > 1 or a.size not in (1, n_out):
                raise ValueError(f"{name}.prelu must be a scalar or have {n_out} per-channel slopes, got shape {a.shape}")
            if not np.all(np.isfinite(a)) or np.any(a <= 0) or np.any(a >= 2.0**MAX_LEFT_SHIFT):
                raise ValueError(f"{name}.prelu slopes must lie in (0, 2**{MAX_LEFT_SHIFT}) to be fused into the "
                                 f"lane (unsigned Q31 multiplier), got {a.ravel()[:4].tolist()}; run a "
                                 "non-positive slope as a host PRelu node")
            prelu = np.broadcast_to(a.reshape(-1), (n_out,)).copy()
            if mode == "ort":
                raise ValueError(f"{name}.prelu cannot be fused in mode 'ort' (onnxruntime applies PReLU in float "
                                 "after requantizing); run it as a host PRelu/ChannelLut node")
        self.prelu = prelu
        if lut is not None:
            if not isinstance(lut, LutSpec):
                raise ValueError(f"{name}.lut must be a LutSpec, got {type(lut).__name__}")
        self.lut = lut

    # ---- quantities the compiler needs ----
    @property
    def out_q(self) -> Q:
        return self.lut.out if self.lut is not None else self.out

    def multipliers(self) -> np.ndarray:
        """Per-channel real multiplier M[c] = s_in * s_w[c] / s_out (TFLite: float32 scales, float64 math)."""
        m = tflite_multiplier(self.in_q[0].scale, self.w_scale, self.out.scale)
        return np.broadcast_to(np.asarray(m, np.float64).reshape(-1), (self.n_out,)).copy()

    def ort_scales(self) -> np.ndarray:
        """Per-channel float32 scale of mode "ort": float32(float32(s_in * s_w[c]) / s_out) (QLinearConv)."""
        s = ort_scale(self.in_q[0].scale, self.w_scale, self.out.scale)
        return np.broadcast_to(s.reshape(-1), (self.n_out,)).copy()

    def lane_scales(self) -> np.ndarray:
        """What the lanes get per channel: ``multipliers()`` (tflite) or ``ort_scales()`` (ort)."""
        return self.ort_scales() if self.mode == "ort" else self.multipliers()

    # ---- reference ----
    def _requant_prelu(self, acc: np.ndarray, axis: int) -> np.ndarray:
        """The lane with PReLU, from golden primitives: MBQM, golden.ops.prelu_requantized, + zp, clamp."""
        q, s = quantize_multiplier(self.multipliers())
        shape = [1] * acc.ndim
        shape[axis] = -1
        v = multiply_by_quantized_multiplier(acc.astype(np.int64), q.reshape(shape), s.reshape(shape))
        aq, ash = ops.quantize_alpha(self.prelu)
        w = ops.prelu_requantized(v, aq, ash, axis=axis)
        lo, hi = self.act_range
        return np.clip(w + self.out.zp, lo, hi).astype(self.out.dtype)

    def reference(self, inputs) -> np.ndarray:
        """Bit-exact output from golden.layers in the node's mode (+ golden.ops for PReLU/LUT)."""
        (x,) = self._check_inputs(inputs)
        if self.prelu is None:
            y = self._plain(x)
        else:
            y = self._requant_prelu(self._acc(x), axis=1)
        if self.lut is not None:
            y = ops.apply_lut(y, self.lut.table, self.out.dtype)
        return y

    def _layer_kw(self) -> dict:
        return dict(x_zp=self.in_q[0].zp, x_scale=self.in_q[0].scale, w_scale=self.w_scale,
                    y_scale=self.out.scale, y_zp=self.out.zp, mode=self.mode, act=self.act_range,
                    out_dtype=self.out.dtype)


def _pair(v, name: str, lo: int) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return check_positive_int(v[0], name, lo), check_positive_int(v[1], name, lo)
    v = check_positive_int(v, name, lo)
    return v, v


def _pads(p, name: str) -> tuple[int, int, int, int]:
    """int | (ph, pw) | (top, left, bottom, right) -> (top, left, bottom, right)."""
    if isinstance(p, (tuple, list)) and len(p) == 4:
        return tuple(check_positive_int(v, name, 0) for v in p)
    ph, pw = _pair(p, name, 0)
    return ph, pw, ph, pw


class Conv2d(ArrayNode):
    """Quantized 2-D convolution (cross-correlation); weight (O, C/groups, kh, kw) int8.

    Reference: ``golden.layers.conv2d`` (tflite mode) / ``conv2d_acc`` + the PReLU lane.
    """

    def __init__(self, name, x: str, in_q: Q, weight, bias, w_scale, out: Q, *, stride=1, padding=0,
                 dilation=1, groups=1, act=None, prelu=None, lut=None, mode="tflite"):
        w = np.asarray(weight)
        if w.ndim != 4:
            raise ValueError(f"{name}.weight must be (O, C/groups, kh, kw), got shape {w.shape}")
        super().__init__(name, (x,), (in_q,), w, bias, w_scale, out, act=act, prelu=prelu, lut=lut,
                         n_out=w.shape[0], mode=mode)
        self.stride = _pair(stride, f"{name}.stride", 1)
        self.dilation = _pair(dilation, f"{name}.dilation", 1)
        self.padding = _pads(padding, f"{name}.padding")
        self.groups = check_positive_int(groups, f"{name}.groups")
        if w.shape[0] % self.groups:
            raise ValueError(f"{name}.groups={self.groups} must divide the output channels {w.shape[0]}")

    def out_shape(self, in_shapes):
        n, c, h, wd = in_shapes[0]
        o, cg, kh, kw = self.weight.shape
        if cg * self.groups != c:
            raise ValueError(f"{self.name}: input has {c} channels, weight expects C/groups = {cg} x {self.groups}")
        pt, pl, pb, pr = self.padding
        ho = (h + pt + pb - self.dilation[0] * (kh - 1) - 1) // self.stride[0] + 1
        wo = (wd + pl + pr - self.dilation[1] * (kw - 1) - 1) // self.stride[1] + 1
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: kernel does not fit the padded {h}x{wd} input")
        return (n, o, ho, wo)

    def macs(self, in_shapes):
        n, o, ho, wo = self.out_shape(in_shapes)
        _, cg, kh, kw = self.weight.shape
        return n * o * ho * wo * cg * kh * kw

    def _geom(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def _acc(self, x):
        return layers.conv2d_acc(x, self.weight, self.bias, self.in_q[0].zp, **self._geom())

    def _plain(self, x):
        kw = self._layer_kw()
        return layers.conv2d(x, self.weight, self.bias, kw.pop("x_zp"), kw.pop("x_scale"), kw.pop("w_scale"),
                             kw.pop("y_scale"), kw.pop("y_zp"), **kw, **self._geom())


class FullyConnected(ArrayNode):
    """Quantized fully-connected layer on (N, K) inputs; weight (O, K) int8 (TFLite layout).

    Reference: ``golden.layers.fully_connected`` / ``fully_connected_acc`` + the PReLU lane.
    """

    def __init__(self, name, x: str, in_q: Q, weight, bias, w_scale, out: Q, *, act=None, prelu=None, lut=None,
                 mode="tflite"):
        w = np.asarray(weight)
        if w.ndim != 2:
            raise ValueError(f"{name}.weight must be (O, K), got shape {w.shape}")
        super().__init__(name, (x,), (in_q,), w, bias, w_scale, out, act=act, prelu=prelu, lut=lut,
                         n_out=w.shape[0], mode=mode)

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        if len(s) != 2 or s[1] != self.weight.shape[1]:
            raise ValueError(f"{self.name}: input must be (N, {self.weight.shape[1]}), got {s}")
        return (s[0], self.weight.shape[0])

    def macs(self, in_shapes):
        n, o = self.out_shape(in_shapes)
        return n * o * self.weight.shape[1]

    def _acc(self, x):
        return layers.fully_connected_acc(x, self.weight, self.bias, self.in_q[0].zp)

    def _plain(self, x):
        kw = self._layer_kw()
        return layers.fully_connected(x, self.weight, self.bias, kw.pop("x_zp"), kw.pop("x_scale"),
                                      kw.pop("w_scale"), kw.pop("y_scale"), kw.pop("y_zp"), **kw)


class ConvTranspose2d(ArrayNode):
    """Quantized transposed convolution; weight (C_in, C_out/groups, kh, kw) int8 (CenterNet neck: k4 s2 p1).

    Reference: ``golden.layers.conv_transpose2d`` / ``conv_transpose2d_acc`` + the PReLU lane.
    """

    def __init__(self, name, x: str, in_q: Q, weight, bias, w_scale, out: Q, *, stride=1, padding=0,
                 output_padding=0, dilation=1, groups=1, act=None, prelu=None, lut=None, mode="tflite"):
        w = np.asarray(weight)
        if w.ndim != 4:
            raise ValueError(f"{name}.weight must be (C_in, C_out/groups, kh, kw), got shape {w.shape}")
        groups = check_positive_int(groups, f"{name}.groups")
        super().__init__(name, (x,), (in_q,), w, bias, w_scale, out, act=act, prelu=prelu, lut=lut,
                         n_out=w.shape[1] * groups, mode=mode)
        self.groups = groups
        self.stride = _pair(stride, f"{name}.stride", 1)
        self.dilation = _pair(dilation, f"{name}.dilation", 1)
        self.padding = _pads(padding, f"{name}.padding")
        self.output_padding = _pair(output_padding, f"{name}.output_padding", 0)
        if w.shape[0] % groups:
            raise ValueError(f"{name}.groups={groups} must divide C_in = {w.shape[0]}")

    def out_shape(self, in_shapes):
        n, c, h, wd = in_shapes[0]
        ci, og, kh, kw = self.weight.shape
        if ci != c:
            raise ValueError(f"{self.name}: input has {c} channels, weight expects {ci}")
        pt, pl, pb, pr = self.padding
        ho = (h - 1) * self.stride[0] + self.dilation[0] * (kh - 1) + 1 + self.output_padding[0] - pt - pb
        wo = (wd - 1) * self.stride[1] + self.dilation[1] * (kw - 1) + 1 + self.output_padding[1] - pl - pr
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: padding leaves an empty output")
        return (n, og * self.groups, ho, wo)

    def macs(self, in_shapes):
        """Products landing in the output (every output pixel times its taps, padded taps included
        as for a convolution): what the sub-pixel lowering computes. For k=4 s=2 p=1 this equals the
        usual N*C_in*H*W*C_out/groups*kh*kw count."""
        from .compiler import convt_phases   # geometry shared with the lowering
        n, o, ho, wo = self.out_shape(in_shapes)
        cg = self.weight.shape[0] // self.groups
        total = 0
        for ph in convt_phases(self, in_shapes[0]):
            total += n * ph["ho"] * ph["wo"] * o * cg * max(len(ph["taps_h"]) * len(ph["taps_w"]), 0)
        return total

    def _geom(self):
        return dict(stride=self.stride, padding=self.padding, output_padding=self.output_padding,
                    dilation=self.dilation, groups=self.groups)

    def _acc(self, x):
        return layers.conv_transpose2d_acc(x, self.weight, self.bias, self.in_q[0].zp, **self._geom())

    def _plain(self, x):
        kw = self._layer_kw()
        return layers.conv_transpose2d(x, self.weight, self.bias, kw.pop("x_zp"), kw.pop("x_scale"),
                                       kw.pop("w_scale"), kw.pop("y_scale"), kw.pop("y_zp"), **kw, **self._geom())


# --------------------------------------------------------------------------- host nodes


class MaxPool(Node):
    """``golden.ops.max_pool2d`` (exact on codes; output quantization = input's)."""

    def __init__(self, name, x, in_q: Q, kernel, stride=None, padding=0, ceil_mode=False, dilation=1):
        super().__init__(name, (x,), (in_q,))
        self.kw = dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode, dilation=dilation)

    def out_shape(self, in_shapes):
        n, c, h, w = in_shapes[0]
        oh, ow = ops.max_pool2d(np.zeros((1, 1, h, w), np.int8), **self.kw).shape[2:]
        return (n, c, oh, ow)

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return ops.max_pool2d(x, **self.kw)


class DirectionalMax(Node):
    """``golden.ops.directional_max`` (CornerNet/CenterNet corner/center pooling primitive)."""

    def __init__(self, name, x, in_q: Q, direction: str):
        super().__init__(name, (x,), (in_q,))
        if direction not in ("top", "bottom", "left", "right"):
            raise ValueError(f"{name}.direction must be top/bottom/left/right, got {direction!r}")
        self.direction = direction

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return ops.directional_max(x, self.direction)


class Add(Node):
    """Residual add with requantization: ``golden.ops.add_requant`` (TFLite 8-bit Add), optional fused clamp."""

    n_inputs = 2

    def __init__(self, name, a, b, in_q: Sequence[Q], out: Q, act=None):
        super().__init__(name, (a, b), in_q)
        self.out = _q(out, f"{name}.out")
        self.act = _act_spec(act)
        self.act_range = layers.activation_range(self.act, self.out.scale, self.out.zp, self.out.dtype)

    @property
    def out_q(self):
        return self.out

    def out_shape(self, in_shapes):
        return tuple(np.broadcast_shapes(tuple(in_shapes[0]), tuple(in_shapes[1])))

    def reference(self, inputs):
        a, b = self._check_inputs(inputs)
        qa, qb = self.in_q
        lo, hi = self.act_range
        return ops.add_requant(a, qa.scale, qa.zp, b, qb.scale, qb.zp, self.out.scale, self.out.zp,
                               self.out.dtype, lo, hi)


class Concat(Node):
    """Channel (or any axis) concatenation with per-input requantization.

    Default: ``golden.ops.concat_requant`` (TFLite fixed point). With ``tables``
    (one entry per input: None = copy the codes, or a 256-entry table of the
    output dtype in ``golden.ops.make_lut`` order) each input is mapped through
    its table first: onnxruntime's QLinearConcat, which copies inputs whose
    scale and zero point equal the output's and requantizes the others with a
    per-input lookup table built in float (firmware.onnx_import builds them).
    """

    n_inputs = None

    def __init__(self, name, xs: Sequence[str], in_q: Sequence[Q], out: Q, axis: int = 1, tables=None):
        super().__init__(name, tuple(xs), tuple(in_q))
        self.out = _q(out, f"{name}.out")
        self.axis = int(axis)
        if tables is not None:
            if len(tables) != len(self.inputs):
                raise ValueError(f"{name}.tables must have one entry per input ({len(self.inputs)}), got {len(tables)}")
            tabs = []
            for i, (t, q) in enumerate(zip(tables, self.in_q)):
                if t is None:
                    if q.dtype != self.out.dtype:
                        raise ValueError(f"{name}.tables[{i}] is None (copy) but input {i} is {q.dtype}, "
                                         f"the output {self.out.dtype}")
                    tabs.append(None)
                    continue
                tabs.append(LutSpec(t, self.out).table)
            tables = tabs
        self.tables = tables

    @property
    def out_q(self):
        return self.out

    def out_shape(self, in_shapes):
        s = list(in_shapes[0])
        s[self.axis] = sum(sh[self.axis] for sh in in_shapes)
        return tuple(s)

    def reference(self, inputs):
        xs = self._check_inputs(inputs)
        if self.tables is not None:
            parts = [x if t is None else ops.apply_lut(x, t, q.dtype) for x, t, q in zip(xs, self.tables, self.in_q)]
            return np.concatenate(parts, axis=self.axis)
        return ops.concat_requant(xs, [q.scale for q in self.in_q], [q.zp for q in self.in_q], self.axis,
                                  self.out.scale, self.out.zp, self.out.dtype)


class Upsample(Node):
    """Nearest-neighbour upsampling by integer factors: ``golden.ops.upsample_nearest``."""

    def __init__(self, name, x, in_q: Q, scale=2):
        super().__init__(name, (x,), (in_q,))
        self.scale = _pair(scale, f"{name}.scale", 1)

    def out_shape(self, in_shapes):
        n, c, h, w = in_shapes[0]
        return (n, c, h * self.scale[0], w * self.scale[1])

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return ops.upsample_nearest(x, self.scale)


class Relu(Node):
    """Standalone ReLU / ReLU6 (a clamp on codes, same quantization in and out): golden.ops.relu/relu6."""

    def __init__(self, name, x, in_q: Q, kind: str = "relu"):
        super().__init__(name, (x,), (in_q,))
        if kind not in ("relu", "relu6"):
            raise ValueError(f"{name}.kind must be 'relu' or 'relu6', got {kind!r}")
        self.kind = kind

    def clamp(self) -> tuple[int, int]:
        q = self.in_q[0]
        return layers.activation_range(self.kind, q.scale, q.zp, q.dtype)

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        q = self.in_q[0]
        if self.kind == "relu":
            return ops.relu(x, q.zp, q.dtype)
        return ops.relu6(x, q.scale, q.zp, q.dtype)


class PRelu(Node):
    """Standalone quantized PReLU (per-channel slopes, any sign): golden.ops.prelu."""

    def __init__(self, name, x, in_q: Q, alpha, out: Q):
        super().__init__(name, (x,), (in_q,))
        self.alpha = np.asarray(alpha, np.float64)
        self.out = _q(out, f"{name}.out")

    @property
    def out_q(self):
        return self.out

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        q = self.in_q[0]
        return ops.prelu(x, q.scale, q.zp, self.alpha, self.out.scale, self.out.zp, self.out.dtype, axis=1)


class LeakyRelu(Node):
    """Standalone quantized LeakyReLU (one slope): golden.ops.leaky_relu."""

    def __init__(self, name, x, in_q: Q, alpha: float, out: Q):
        super().__init__(name, (x,), (in_q,))
        self.alpha = float(alpha)
        self.out = _q(out, f"{name}.out")

    @property
    def out_q(self):
        return self.out

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        q = self.in_q[0]
        return ops.leaky_relu(x, q.scale, q.zp, self.alpha, self.out.scale, self.out.zp, self.out.dtype)


class Lut(Node):
    """Standalone unary op as a 256-entry table: golden.ops.apply_lut."""

    def __init__(self, name, x, in_q: Q, lut: LutSpec):
        super().__init__(name, (x,), (in_q,))
        if not isinstance(lut, LutSpec):
            raise ValueError(f"{name}.lut must be a LutSpec, got {type(lut).__name__}")
        self.lut = lut

    @property
    def out_q(self):
        return self.lut.out

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return ops.apply_lut(x, self.lut.table, self.in_q[0].dtype)


class Clamp(Node):
    """A clamp of codes to [lo, hi] (same quantization in and out): a fused ReLU/ReLU6/Clip range.

    ``Graph.fuse`` folds it into the array node feeding it like ``Relu``.
    """

    def __init__(self, name, x, in_q: Q, lo: int, hi: int):
        super().__init__(name, (x,), (in_q,))
        q = self.in_q[0]
        for nm, v in (("lo", lo), ("hi", hi)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not q.qmin <= v <= q.qmax:
                raise ValueError(f"{name}.{nm} must be an integer in [{q.qmin}, {q.qmax}], got {v!r}")
        if lo > hi:
            raise ValueError(f"{name}: lo must be <= hi, got ({lo}, {hi})")
        self.lo, self.hi = int(lo), int(hi)

    def clamp(self) -> tuple[int, int]:
        return self.lo, self.hi

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return np.clip(x, self.lo, self.hi).astype(x.dtype)


class ChannelLut(Node):
    """A per-channel unary op as tables: ``out[n, c, ...] = tables[c, x[n, c, ...] - qmin(in dtype)]``.

    ``tables``: (C, 256) of ``out.dtype`` (rows in golden.ops.make_lut order); the
    channel axis is ``axis`` (1 for NCHW). onnxruntime's float PRelu with
    per-channel slopes between DequantizeLinear and QuantizeLinear is exactly
    such a map (firmware.onnx_import builds the rows by running it on every code).
    """

    def __init__(self, name, x, in_q: Q, tables, out: Q, axis: int = 1):
        super().__init__(name, (x,), (in_q,))
        self.out = _q(out, f"{name}.out")
        t = check_dtype(tables, f"{name}.tables", ("int8", "uint8"))
        if t.ndim != 2 or t.shape[1] != 256:
            raise ValueError(f"{name}.tables must have shape (C, 256), got {t.shape}")
        if t.dtype.name != self.out.dtype:
            raise ValueError(f"{name}.tables dtype {t.dtype} must equal out.dtype {self.out.dtype}")
        self.tables = np.array(t)
        self.axis = int(axis)

    @property
    def out_q(self):
        return self.out

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        if len(s) <= self.axis or s[self.axis] != self.tables.shape[0]:
            raise ValueError(f"{self.name}: input shape {s} must have {self.tables.shape[0]} channels on axis {self.axis}")
        return s

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        idx = x.astype(np.int64) - self.in_q[0].qmin
        ch = np.arange(x.shape[self.axis]).reshape([-1 if d == self.axis else 1 for d in range(x.ndim)])
        return self.tables[ch, idx]


class AddTable(Node):
    """Elementwise add of two code tensors through a 256 x 256 table (NumPy broadcasting).

    ``out = table[a - qmin(a), b - qmin(b)]``. onnxruntime runs a QDQ Add as
    QLinearAdd, an elementwise float32 function of the two codes (MLAS), so
    the table holds it exactly for every code pair (firmware.onnx_import
    fills it by running onnxruntime on all 65536 pairs).
    """

    n_inputs = 2

    def __init__(self, name, a, b, in_q: Sequence[Q], out: Q, table):
        super().__init__(name, (a, b), in_q)
        self.out = _q(out, f"{name}.out")
        t = check_dtype(table, f"{name}.table", ("int8", "uint8"))
        if t.shape != (256, 256):
            raise ValueError(f"{name}.table must have shape (256, 256), got {t.shape}")
        if t.dtype.name != self.out.dtype:
            raise ValueError(f"{name}.table dtype {t.dtype} must equal out.dtype {self.out.dtype}")
        self.table = np.array(t)

    @property
    def out_q(self):
        return self.out

    def out_shape(self, in_shapes):
        return tuple(np.broadcast_shapes(tuple(in_shapes[0]), tuple(in_shapes[1])))

    def reference(self, inputs):
        a, b = self._check_inputs(inputs)
        qa, qb = self.in_q
        return self.table[a.astype(np.int64) - qa.qmin, b.astype(np.int64) - qb.qmin]


class Resize(Node):
    """Nearest-neighbour resize of NCHW codes by explicit source indices: ``x[:, :, rows][:, :, :, cols]``.

    ``rows``/``cols``: the input row/column each output row/column copies
    (firmware.onnx_import computes them with onnxruntime's coordinate rules).
    Pure data movement, exact in any quantized type.
    """

    def __init__(self, name, x, in_q: Q, rows, cols):
        super().__init__(name, (x,), (in_q,))
        self.rows = check_int_array(rows, f"{name}.rows", 0, 2**31, ndim=1).astype(np.int64)
        self.cols = check_int_array(cols, f"{name}.cols", 0, 2**31, ndim=1).astype(np.int64)
        if self.rows.size == 0 or self.cols.size == 0:
            raise ValueError(f"{name}: rows and cols must not be empty")

    def out_shape(self, in_shapes):
        n, c, h, w = in_shapes[0]
        if self.rows.max() >= h or self.cols.max() >= w:
            raise ValueError(f"{self.name}: source indices exceed the {h}x{w} input")
        return (n, c, self.rows.size, self.cols.size)

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return np.ascontiguousarray(x[:, :, self.rows][:, :, :, self.cols])


class Reshape(Node):
    """Reshape of codes to ``shape`` (all dims given; row-major, ONNX Reshape/Flatten/Squeeze)."""

    def __init__(self, name, x, in_q: Q, shape):
        super().__init__(name, (x,), (in_q,))
        self.shape = tuple(check_positive_int(int(v), f"{name}.shape", 1) for v in shape)

    def out_shape(self, in_shapes):
        if int(np.prod(in_shapes[0])) != int(np.prod(self.shape)):
            raise ValueError(f"{self.name}: cannot reshape {tuple(in_shapes[0])} to {self.shape}")
        return self.shape

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return x.reshape(self.shape)


class Transpose(Node):
    """Axis permutation of codes (ONNX Transpose): ``x.transpose(perm)``."""

    def __init__(self, name, x, in_q: Q, perm):
        super().__init__(name, (x,), (in_q,))
        self.perm = tuple(int(v) for v in perm)
        if sorted(self.perm) != list(range(len(self.perm))):
            raise ValueError(f"{name}.perm must be a permutation of 0..{len(self.perm) - 1}, got {self.perm}")

    def out_shape(self, in_shapes):
        s = tuple(in_shapes[0])
        if len(s) != len(self.perm):
            raise ValueError(f"{self.name}: perm {self.perm} does not match the rank of {s}")
        return tuple(s[p] for p in self.perm)

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return np.ascontiguousarray(x.transpose(self.perm))


# --------------------------------------------------------------------------- onnxruntime's float ConvTranspose

#: MLAS SGEMM's K block (MLAS_SGEMM_STRIDEK): partial sums over K restart every 128 terms and are added.
SGEMM_STRIDE_K = 128


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 fused multiply-add ``round_f32(a*b + c)`` with ONE rounding, vectorised.

    a*b of two float32 values is exact in float64; the float64 sum is turned
    into round-to-odd (TwoSum gives its exact error; an inexact even result is
    nudged one ulp toward the error), and rounding a round-to-odd value with
    53 >= 24 + 2 bits to float32 equals rounding the exact sum once.
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = c.astype(np.float64)
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    fix = (err != 0) & ((s.view(np.int64) & 1) == 0)
    if fix.any():
        s = np.where(fix, np.nextafter(s, np.where(err > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)


def ort_float_conv_transpose(x, x_q: Q, w, w_scale, bias, bias_scale, out: Q, *, stride, padding, output_padding,
                             dilation, groups) -> np.ndarray:
    """onnxruntime's CPU path for DequantizeLinear -> ConvTranspose (float) -> QuantizeLinear, bit for bit.

    onnxruntime has no integer kernel for a QDQ ConvTranspose: it dequantizes
    (``float32(q - zp) * scale``, per output channel for the weights), runs its
    float ConvTranspose and quantizes. Its float kernel, per image and group,
    is an MLAS SGEMM ``col = W^T X`` (one thread: each output an FMA chain over
    the input channels in ascending order, restarted every ``SGEMM_STRIDE_K``
    terms, the partial chains added in order), then col2im (the kh*kw taps of
    an output pixel added in tap order (i, j) into a zeroed buffer), then
    ``+ bias`` and QuantizeLinear (float32 division, round half to even,
    saturate). Each step is reproduced here in float32 (``fma_f32``). Valid
    for the single-threaded session (``intra_op_num_threads = 1``) on x86-64
    with FMA; inputs of one pixel (H*W = 1) take another MLAS kernel and are
    refused. ``w``: (C_in, C_out/groups, kh, kw) int8 (zero point 0);
    ``w_scale``: C_out float32 scales; ``bias``: C_out int32 or None with
    ``bias_scale`` (C_out float32).
    """
    n, ci, h, wd = x.shape
    cin, og, kh, kw = w.shape
    g = groups
    cg = ci // g
    sh, sw = stride
    dh, dw = dilation
    pt, pl, pb, pr = padding
    oph, opw = output_padding
    if h * wd == 1:
        raise ValueError("onnxruntime uses its M1 SGEMM kernel for a 1-pixel ConvTranspose input; not emulated")
    hf = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    wf_ = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    ho, wo = hf - pt - pb, wf_ - pl - pr
    xf = (x.astype(np.int32) - x_q.zp).astype(np.float32) * np.float32(x_q.scale)
    ws = np.asarray(w_scale, np.float32).reshape(g, og)
    y = np.empty((n, g * og, ho, wo), np.float32)
    for gi in range(g):
        wg = w[gi * cg:(gi + 1) * cg].astype(np.float32) * ws[gi][None, :, None, None]     # cg, og, kh, kw
        a = wg.reshape(cg, og * kh * kw)                                                  # K x M
        for ni in range(n):
            b = xf[ni, gi * cg:(gi + 1) * cg].reshape(cg, h * wd)                          # K x N
            col = None
            for k0 in range(0, cg, SGEMM_STRIDE_K):
                part = np.zeros((og * kh * kw, h * wd), np.float32)
                for k in range(k0, min(cg, k0 + SGEMM_STRIDE_K)):
                    part = fma_f32(a[k][:, None], b[k][None, :], part)
                col = part if col is None else col + part
            col = col.reshape(og, kh, kw, h, wd)
            full = np.zeros((og, hf, wf_), np.float32)
            for i in range(kh):
                for j in range(kw):
                    r0, c0 = i * dh, j * dw
                    full[:, r0:r0 + sh * (h - 1) + 1:sh, c0:c0 + sw * (wd - 1) + 1:sw] += col[:, i, j]
            y[ni, gi * og:(gi + 1) * og] = full[:, pt:pt + ho, pl:pl + wo]
    if bias is not None:
        bf = np.asarray(bias, np.int32).astype(np.float32) * np.asarray(bias_scale, np.float32)
        y = y + bf[None, :, None, None]
    with np.errstate(over="ignore", invalid="ignore"):
        r = np.rint(y / np.float32(out.scale))
    return (np.clip(r, out.qmin - out.zp, out.qmax - out.zp).astype(np.int64) + out.zp).astype(out.dtype)


class OrtConvTranspose(Node):
    """A QDQ ConvTranspose exactly as onnxruntime's CPU provider runs it: in float (host node).

    Reference: ``ort_float_conv_transpose``. The integer alternative is a
    ``ConvTranspose2d(mode="ort")`` on the array: the exact accumulator
    requantized with onnxruntime's scale, which differs from onnxruntime's
    float32 accumulation by 1 LSB on outputs within ~1e-5 LSB of a rounding
    tie (about 1 in 1e5 outputs on random data).
    """

    def __init__(self, name, x, in_q: Q, weight, w_scale, bias, bias_scale, out: Q, *, stride=1, padding=0,
                 output_padding=0, dilation=1, groups=1):
        super().__init__(name, (x,), (in_q,))
        self.weight = np.array(check_dtype(weight, f"{name}.weight", ("int8",)))
        if self.weight.ndim != 4:
            raise ValueError(f"{name}.weight must be (C_in, C_out/groups, kh, kw), got shape {self.weight.shape}")
        self.groups = check_positive_int(groups, f"{name}.groups")
        n_out = self.weight.shape[1] * self.groups
        ws = np.asarray(w_scale, np.float32).reshape(-1)
        if ws.size not in (1, n_out) or not np.all(np.isfinite(ws)) or np.any(ws <= 0):
            raise ValueError(f"{name}.w_scale must hold 1 or {n_out} positive float32 scales, got shape {ws.shape}")
        self.w_scale = np.broadcast_to(ws, (n_out,)).copy()
        if bias is None:
            self.bias = self.bias_scale = None
        else:
            self.bias = check_int_array(bias, f"{name}.bias", -(2**31), 2**31 - 1, ndim=1).astype(np.int32)
            bs = np.asarray(bias_scale, np.float32).reshape(-1)
            if self.bias.size != n_out or bs.size not in (1, n_out):
                raise ValueError(f"{name}: bias and bias_scale must have {n_out} values")
            self.bias_scale = np.broadcast_to(bs, (n_out,)).copy()
        self.out = _q(out, f"{name}.out")
        self.stride = _pair(stride, f"{name}.stride", 1)
        self.dilation = _pair(dilation, f"{name}.dilation", 1)
        self.padding = _pads(padding, f"{name}.padding")
        self.output_padding = _pair(output_padding, f"{name}.output_padding", 0)

    @property
    def out_q(self):
        return self.out

    def out_shape(self, in_shapes):
        n, c, h, wd = in_shapes[0]
        ci, og, kh, kw = self.weight.shape
        if ci != c or c % self.groups:
            raise ValueError(f"{self.name}: input has {c} channels, weight expects {ci} (groups {self.groups})")
        if h * wd == 1:
            raise ValueError(f"{self.name}: a 1x1 input takes onnxruntime's M1 SGEMM kernel, which is not emulated")
        pt, pl, pb, pr = self.padding
        ho = (h - 1) * self.stride[0] + self.dilation[0] * (kh - 1) + 1 + self.output_padding[0] - pt - pb
        wo = (wd - 1) * self.stride[1] + self.dilation[1] * (kw - 1) + 1 + self.output_padding[1] - pl - pr
        if ho < 1 or wo < 1:
            raise ValueError(f"{self.name}: padding leaves an empty output")
        return (n, og * self.groups, ho, wo)

    def reference(self, inputs):
        (x,) = self._check_inputs(inputs)
        return ort_float_conv_transpose(x, self.in_q[0], self.weight, self.w_scale, self.bias, self.bias_scale,
                                        self.out, stride=self.stride, padding=self.padding,
                                        output_padding=self.output_padding, dilation=self.dilation,
                                        groups=self.groups)


# --------------------------------------------------------------------------- the graph


class Graph:
    """A DAG of nodes in insertion (topological) order over named tensors.

    ``add_input(name, shape, q)`` declares a graph input; ``add(node)`` appends
    a node whose inputs already exist, checking that each producer's output
    quantization equals the node's ``in_q`` (so every node's reference is
    self-contained) and computing its output shape. Builder helpers
    (``conv2d``, ``add_op``, ...) fill ``in_q`` from the producers.
    """

    def __init__(self):
        self.inputs: dict[str, tuple[tuple, Q]] = {}
        self.nodes: list[Node] = []
        self._shape: dict[str, tuple] = {}
        self._q: dict[str, Q] = {}
        self.outputs: list[str] = []

    # ---- construction ----
    def add_input(self, name: str, shape, q: Q) -> str:
        if name in self._shape:
            raise ValueError(f"tensor {name!r} already exists")
        self.inputs[name] = (tuple(int(s) for s in shape), _q(q, f"input {name!r} q"))
        self._shape[name], self._q[name] = tuple(int(s) for s in shape), q
        return name

    def add(self, node: Node) -> str:
        if not isinstance(node, Node):
            raise ValueError(f"node must be a firmware.graph.Node, got {type(node).__name__}")
        if node.name in self._shape:
            raise ValueError(f"tensor {node.name!r} already exists")
        for t, q in zip(node.inputs, node.in_q):
            if t not in self._shape:
                raise ValueError(f"{node.name!r}: input tensor {t!r} does not exist (add its producer first)")
            if self._q[t] != q:
                raise ValueError(f"{node.name!r}: in_q {q} of input {t!r} differs from its producer's {self._q[t]}")
        self._shape[node.name] = tuple(int(s) for s in node.out_shape([self._shape[t] for t in node.inputs]))
        self._q[node.name] = node.out_q
        self.nodes.append(node)
        return node.name

    def shape(self, name: str) -> tuple:
        return self._shape[name]

    def q(self, name: str) -> Q:
        return self._q[name]

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def consumers(self, name: str) -> list[Node]:
        return [n for n in self.nodes if name in n.inputs]

    def in_shapes(self, node: Node) -> list[tuple]:
        return [self._shape[t] for t in node.inputs]

    def macs(self) -> int:
        return sum(n.macs(self.in_shapes(n)) for n in self.nodes)

    # builder helpers: in_q taken from the producers
    def conv2d(self, name, x, weight, bias, w_scale, out, **kw) -> str:
        return self.add(Conv2d(name, x, self._q[x], weight, bias, w_scale, out, **kw))

    def fully_connected(self, name, x, weight, bias, w_scale, out, **kw) -> str:
        return self.add(FullyConnected(name, x, self._q[x], weight, bias, w_scale, out, **kw))

    def conv_transpose2d(self, name, x, weight, bias, w_scale, out, **kw) -> str:
        return self.add(ConvTranspose2d(name, x, self._q[x], weight, bias, w_scale, out, **kw))

    def max_pool(self, name, x, kernel, **kw) -> str:
        return self.add(MaxPool(name, x, self._q[x], kernel, **kw))

    def directional_max(self, name, x, direction) -> str:
        return self.add(DirectionalMax(name, x, self._q[x], direction))

    def add_op(self, name, a, b, out, act=None) -> str:
        return self.add(Add(name, a, b, (self._q[a], self._q[b]), out, act))

    def concat(self, name, xs, out, axis=1) -> str:
        return self.add(Concat(name, xs, [self._q[x] for x in xs], out, axis))

    def upsample(self, name, x, scale=2) -> str:
        return self.add(Upsample(name, x, self._q[x], scale))

    def relu(self, name, x, kind="relu") -> str:
        return self.add(Relu(name, x, self._q[x], kind))

    def prelu(self, name, x, alpha, out) -> str:
        return self.add(PRelu(name, x, self._q[x], alpha, out))

    def leaky_relu(self, name, x, alpha, out) -> str:
        return self.add(LeakyRelu(name, x, self._q[x], alpha, out))

    def lut(self, name, x, lut: LutSpec) -> str:
        return self.add(Lut(name, x, self._q[x], lut))

    # ---- evaluation ----
    def reference(self, feeds: dict) -> dict:
        """Every tensor of the graph from golden/ (inputs included), as {name: array}."""
        env = {}
        for name, (shape, q) in self.inputs.items():
            if name not in feeds:
                raise ValueError(f"feeds is missing graph input {name!r}")
            a = np.asarray(feeds[name])
            if tuple(a.shape) != shape or a.dtype.name != q.dtype:
                raise ValueError(f"input {name!r} must be {q.dtype} of shape {shape}, got {a.dtype} {a.shape}")
            env[name] = a
        for n in self.nodes:
            env[n.name] = n.reference([env[t] for t in n.inputs])
        return env

    # ---- fusion ----
    def fuse(self) -> "Graph":
        """A new graph with Relu/Clamp/Lut nodes folded into the array node that feeds them (bit-identical).

        Folded when the producer is an ArrayNode with this node as its only
        consumer and is not a declared graph output, and: for ``Relu``/``Clamp``, the
        producer has no LUT (the clamp then intersects the lane clamp); for
        ``Lut``, the producer has no LUT yet. The fused node takes the
        consumer's name (its output tensor), so downstream names are unchanged.
        """
        import copy
        g = Graph()
        for name, (shape, q) in self.inputs.items():
            g.add_input(name, shape, q)
        pending: dict[str, ArrayNode] = {}
        produced: dict[str, Node] = {}
        nodes = list(self.nodes)
        out_nodes: list[Node] = []
        for n in nodes:
            src = produced.get(n.inputs[0]) if len(n.inputs) == 1 else None
            fusable = (isinstance(src, ArrayNode) and len(self.consumers(n.inputs[0])) == 1
                       and n.inputs[0] not in self.outputs)
            if fusable and isinstance(n, (Relu, Clamp)) and src.lut is None:
                lo1, hi1 = src.act_range
                lo2, hi2 = n.clamp()
                f = copy.copy(src)
                f.name = n.name
                # clip(clip(v, a, b), c, d) == clip(v, clip(a, c, d), clip(b, c, d)) for a <= b, c <= d
                f.act = (min(max(lo1, lo2), hi2), min(max(hi1, lo2), hi2))
                f.act_range = f.act
                f.fused = getattr(src, "fused", (src.name,)) + (n.name,)
            elif fusable and isinstance(n, Lut) and src.lut is None and n.in_q[0] == src.out_q:
                f = copy.copy(src)
                f.name = n.name
                f.lut = n.lut
                f.fused = getattr(src, "fused", (src.name,)) + (n.name,)
            else:
                produced[n.name] = n
                out_nodes.append(n)
                continue
            out_nodes[out_nodes.index(src)] = f
            del produced[src.name]
            produced[f.name] = f
        for n in out_nodes:
            g.add(n)
        g.outputs = list(self.outputs)
        return g
