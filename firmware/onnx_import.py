"""Import ONNX models into a firmware.graph.Graph that runs bit-exact with onnxruntime.

Two entry points (docs/onnx.md):

* ``import_qdq(model)``: a QDQ model as ``onnxruntime.quantization.quantize_static``
  writes it (per-channel int8 weights, int8 or uint8 activations, int32
  biases, every activation between QuantizeLinear/DequantizeLinear).
* ``quantize_float_model(model, calibration_inputs)``: a float model quantized
  with golden/'s own toolkit (golden.calib observers, golden.quant schemes)
  into the same QDQ form; import the result with ``import_qdq``.

What "bit-exact with onnxruntime" means. onnxruntime (CPU provider, graph
optimizations on) does not execute a QDQ model as written: its QDQ
transformer fuses ``DequantizeLinear -> op -> QuantizeLinear`` groups into
integer kernels where it has one and runs everything else in float. The
importer recognises the same groups and gives each the semantics
onnxruntime gives it:

=========================  ==========================  ===========================================
ONNX group                 onnxruntime runs            graph node (where)
=========================  ==========================  ===========================================
DQ Conv Q                  QLinearConv                 Conv2d(mode="ort") (array)
DQ Gemm Q / DQ MatMul Q    QGemm / QLinearMatMul       FullyConnected(mode="ort") (array)
DQ ConvTranspose Q         float ConvTranspose         OrtConvTranspose (host, float emulation);
                                                       ``convtranspose="array"``: ConvTranspose2d
                                                       (mode="ort") on the array, not bit-exact
DQ DQ Add Q                QLinearAdd (float, per      AddTable (host): 256x256 table of the codes
                           element)
DQ.. Concat Q              QLinearConcat (tables)      Concat(tables=...) (host)
DQ MaxPool Q, DQ Resize Q  the op on codes             MaxPool / Resize (host, + requant table if
                                                       the two quantizations differ)
Q Transpose/Reshape/...    the op on codes             Transpose / Reshape (host)
DQ unary.. Q               QLinearSigmoid/LeakyRelu    Lut (fused into the array layer's LUT stage
                           tables or float ops         when it follows one), ChannelLut (per-channel
                                                       constants: PRelu), Clamp (a pure clamp)
=========================  ==========================  ===========================================

Tables of elementwise groups (unary ops, PRelu, Add) are computed by running
the group itself in onnxruntime on every input code (every code pair for
Add): they are onnxruntime's own results, whatever its kernels do inside.
The reference configuration (``ort_session``): one intra-op thread,
``session.qdqisint8allowed = 1`` (x86 CPUs without VNNI otherwise leave int8
QDQ groups in float) and, with uint8 activations,
``session.x64quantprecision = 1`` (otherwise onnxruntime's u8s8 kernel
saturates int16 pair sums and is not an exact convolution).

Everything is validated before anything runs: unsupported nodes are
collected and reported in one ``UnsupportedModelError`` listing every
node's name and op type with the reason; a malformed file raises
``OnnxImportError`` naming the file and the problem; ``OnnxModel.check(cfg)``
names a layer the array's buffers cannot hold and the limit.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from golden import quant
from golden.config import ArrayConfig

from .graph import (AddTable, ChannelLut, Clamp, Concat, Conv2d, ConvTranspose2d, FullyConnected, Graph, Lut,
                    LutSpec, MaxPool, OrtConvTranspose, Q, Reshape, Resize, Transpose)

__all__ = ["OnnxImportError", "UnsupportedModelError", "OnnxModel", "InputSpec", "OutputSpec", "load_model",
           "import_qdq", "quantize_float_model", "ort_session", "ort_run", "ELEMENTWISE_OPS", "MOVEMENT_OPS"]

#: Elementwise ops accepted between a DequantizeLinear and a QuantizeLinear (as a table). Operands
#: other than the data input must be constants that vary at most along the channel axis (1).
ELEMENTWISE_OPS = frozenset({
    "Relu", "Clip", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu",
    "Softplus", "Softsign", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Erf", "Gelu", "Mish", "Sin", "Cos",
    "Tan", "Atan", "Floor", "Ceil", "Round", "Sign", "ThresholdedRelu", "Add", "Sub", "Mul", "Div", "Pow", "Max",
    "Min"})
#: Pure data movement (on codes, or between DQ and Q).
MOVEMENT_OPS = frozenset({"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"})
_GEMM_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_ONNX_INT = {2: "uint8", 3: "int8", 6: "int32"}


class OnnxImportError(ValueError):
    """A model that cannot be read or imported (the message names the file/node and the problem)."""


class UnsupportedModelError(OnnxImportError):
    """Every node the importer cannot map, as ``nodes = [(name, op_type, reason), ...]``."""

    def __init__(self, nodes: list[tuple[str, str, str]], source: str = "model"):
        self.nodes = list(nodes)
        lines = "\n".join(f"  {n!r} ({op}): {why}" for n, op, why in self.nodes)
        super().__init__(f"{source}: {len(self.nodes)} unsupported node(s):\n{lines}")


# --------------------------------------------------------------------------- loading


def load_model(model, name: str | None = None):
    """An ``onnx.ModelProto`` from a path, bytes or a ModelProto, checked by ``onnx.checker``.

    Raises OnnxImportError naming the file and the problem (missing file,
    not a protobuf, fails the checker, no graph).
    """
    import onnx
    from google.protobuf.message import DecodeError
    src = name or (str(model) if isinstance(model, (str, os.PathLike)) else "model")
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise OnnxImportError(f"{src}: no such file")
        try:
            with open(model, "rb") as f:
                data = f.read()
        except OSError as e:
            raise OnnxImportError(f"{src}: cannot read: {e}") from None
    elif isinstance(model, (bytes, bytearray)):
        data = bytes(model)
    elif isinstance(model, onnx.ModelProto):
        data = None
        m = model
    else:
        raise OnnxImportError(f"model must be a path, bytes or onnx.ModelProto, got {type(model).__name__}")
    if data is not None:
        if not data:
            raise OnnxImportError(f"{src}: empty file, not an ONNX model")
        try:
            m = onnx.load_model(io.BytesIO(data))
        except (DecodeError, ValueError, RuntimeError) as e:
            raise OnnxImportError(f"{src}: not an ONNX model (protobuf parse failed: {e})") from None
    if not m.HasField("graph") or len(m.graph.node) == 0:
        raise OnnxImportError(f"{src}: malformed ONNX model: no graph or no nodes")
    try:
        onnx.checker.check_model(m)
    except Exception as e:          # onnx.checker.ValidationError and friends
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxImportError(f"{src}: malformed ONNX model ({msg})") from None
    return m


# --------------------------------------------------------------------------- onnxruntime reference


def _act_dtypes(model) -> set[str]:
    out = set()
    for n in model.graph.node:
        if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2]:
            for i in model.graph.initializer:
                if i.name == n.input[2]:
                    out.add(_ONNX_INT.get(i.data_type, "?"))
    return out


def ort_session(model, uint8: bool | None = None):
    """The reference onnxruntime session (CPU provider, all graph optimizations, one thread).

    ``session.qdqisint8allowed = 1`` always; ``session.x64quantprecision = 1``
    when the model has uint8 activations (``uint8`` None: detected from the
    QuantizeLinear zero points). See the module docstring for why.
    """
    import onnx
    import onnxruntime as ort
    m = model if isinstance(model, onnx.ModelProto) else load_model(model)
    if uint8 is None:
        uint8 = "uint8" in _act_dtypes(m)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.qdqisint8allowed", "1")
    if uint8:
        so.add_session_config_entry("session.x64quantprecision", "1")
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def ort_run(model, feeds: dict) -> dict:
    """Run ``model`` in the reference session; ``{output name: array}``."""
    s = ort_session(model)
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, feeds)))


# --------------------------------------------------------------------------- the imported model


@dataclass
class InputSpec:
    """A model input: ONNX name, graph tensor holding its codes, shape, and its QuantizeLinear params.

    ``quantized``: the ONNX input is already int8/uint8 codes (fed unchanged).
    """

    name: str
    tensor: str
    shape: tuple
    q: Q
    quantized: bool = False


@dataclass
class OutputSpec:
    """A model output: ``kind`` "dequant" (float32 = DequantizeLinear of ``tensor``), "codes" (the
    int8/uint8 codes) or "table" (float32 = ``table[c, code - qmin]``: an elementwise float op
    chain after the last DequantizeLinear, evaluated by onnxruntime on every code)."""

    name: str
    tensor: str
    kind: str
    q: Q
    table: np.ndarray | None = None


@dataclass
class OnnxModel:
    """An imported model: ``graph`` (unfused; drivers fuse), its inputs/outputs, and where each graph
    node came from (``origin[tensor] = [(onnx node name, op_type), ...]``)."""

    graph: Graph
    inputs: list[InputSpec]
    outputs: list[OutputSpec]
    origin: dict = field(default_factory=dict)
    source: str = "model"

    # ---- feeds and outputs ----
    def quantize_feeds(self, feeds) -> dict:
        """Graph feeds (codes) from ONNX feeds: float inputs through their QuantizeLinear
        (golden.quant.quantize, bit-exact with onnxruntime), quantized inputs unchanged.
        ``feeds``: ``{onnx input name: array}``, or one array for a single-input model."""
        if isinstance(feeds, np.ndarray):
            if len(self.inputs) != 1:
                raise ValueError(f"the model has {len(self.inputs)} inputs: pass a dict {{name: array}}")
            feeds = {self.inputs[0].name: feeds}
        if not isinstance(feeds, dict):
            raise ValueError(f"feeds must be a dict {{input name: array}} or an array, got {type(feeds).__name__}")
        extra = set(feeds) - {i.name for i in self.inputs}
        if extra:
            raise ValueError(f"unknown input(s) {sorted(extra)}; the model's inputs are {[i.name for i in self.inputs]}")
        out = {}
        for spec in self.inputs:
            if spec.name not in feeds:
                raise ValueError(f"feeds is missing input {spec.name!r} of shape {spec.shape}")
            a = np.asarray(feeds[spec.name])
            if tuple(a.shape) != spec.shape:
                raise ValueError(f"input {spec.name!r} must have shape {spec.shape}, got {a.shape}")
            if spec.quantized:
                if a.dtype.name != spec.q.dtype:
                    raise ValueError(f"input {spec.name!r} must be {spec.q.dtype} codes, got {a.dtype}")
                out[spec.tensor] = a
            else:
                if a.dtype != np.float32:
                    raise ValueError(f"input {spec.name!r} must be float32 (the model's input type), got {a.dtype}")
                out[spec.tensor] = quant.quantize(a, _qparams(spec.q))
        return out

    def outputs_from(self, env: dict) -> dict:
        """``{onnx output name: array}`` from graph tensors (float32 as onnxruntime returns them)."""
        res = {}
        for o in self.outputs:
            codes = env[o.tensor]
            if o.kind == "codes":
                res[o.name] = codes
            elif o.kind == "dequant":
                res[o.name] = quant.dequantize(codes, _qparams(o.q))
            else:
                idx = codes.astype(np.int64) - o.q.qmin
                if o.table.shape[0] == 1:
                    res[o.name] = o.table[0][idx]
                else:
                    ch = np.arange(codes.shape[1]).reshape([-1 if d == 1 else 1 for d in range(codes.ndim)])
                    res[o.name] = o.table[ch, idx]
        return res

    # ---- execution ----
    def reference(self, feeds, *, fuse: bool = True) -> dict:
        """Outputs from golden/ alone (``Graph.reference``, fused like the drivers run it)."""
        g = self.graph.fuse() if fuse else self.graph
        return self.outputs_from(g.reference(self.quantize_feeds(feeds)))

    def run(self, device, feeds, cfg: ArrayConfig | None = None, *, timeout_s: float = 30.0):
        """Run on a firmware ``Device`` (array layers there, host layers here); returns
        ``(outputs, reports)`` with one firmware.report.LayerReport per fused node."""
        from .driver import run_graph
        cfg = device.cfg if cfg is None else cfg
        self.check(cfg)
        env, reports = run_graph(device, self.graph, self.quantize_feeds(feeds), cfg, timeout_s=timeout_s)
        return self.outputs_from(env), reports

    def check(self, cfg: ArrayConfig) -> None:
        """Refuse, before anything runs, every array layer ``cfg`` cannot run: reduction K beyond
        the buffers (the compiler's error names the layer and the limit), weights below
        ``cfg.weight_min``, a requantization mode the hardware params layout lacks."""
        from .compiler import check_mode_supported, plan_layer
        g = self.graph.fuse()
        errs = []
        for n in g.nodes:
            if not n.on_array:
                continue
            try:
                check_mode_supported(n, cfg)
                wmin = int(n.weight.min(initial=0))
                if wmin < cfg.weight_min:
                    raise ValueError(f"layer {n.name!r}: weight {wmin} is below the array's weight_min = "
                                     f"{cfg.weight_min}")
                plan_layer(n, g.in_shapes(n)[0], cfg, order=("acts_outer", 1))
            except ValueError as e:
                errs.append(str(e))
        if errs:
            raise OnnxImportError(f"{self.source}: {len(errs)} layer(s) cannot run on this array:\n  "
                                  + "\n  ".join(errs))

    def layer_names(self, tensor: str) -> str:
        """'conv1 (Conv) + sig1 (Sigmoid) + ...' for a graph tensor, or for a node of the fused graph
        (the ONNX nodes of every graph node folded into it)."""
        if not hasattr(self, "_fused_parts"):
            self._fused_parts = {n.name: getattr(n, "fused", (n.name,)) for n in self.graph.fuse().nodes}
        parts = [p for t in self._fused_parts.get(tensor, (tensor,)) for p in self.origin.get(t, [])
                 if p[1] not in ("QuantizeLinear", "DequantizeLinear")]
        return " + ".join(f"{n} ({op})" for n, op in parts) if parts else tensor


def _qparams(q: Q) -> quant.QParams:
    lo, hi = q.qmin, q.qmax
    return quant.QParams(np.float32(q.scale), q.zp, q.dtype, None, lo, hi)


# --------------------------------------------------------------------------- the importer


class _Importer:
    """One pass over the nodes in topological order; see ``import_qdq``."""

    def __init__(self, model, source, input_shapes, convtranspose):
        import onnx
        from onnx import numpy_helper
        self.onnx, self.nh = onnx, numpy_helper
        self.m = model
        self.src = source
        self.convtranspose = convtranspose
        self.g = Graph()
        self.bad: list[tuple[str, str, str]] = []
        self.bad_nodes: set[int] = set()
        self.claimed: set[int] = set()
        self.origin: dict[str, list] = {}
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.nodes = list(model.graph.node)
        self.idx = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer: dict[str, object] = {}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for o in n.output:
                if o:
                    self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = [o.name for o in model.graph.output]
        for o in self.graph_outputs:
            self.consumers.setdefault(o, [])
        self.codes: dict[str, str] = {}          # onnx tensor -> graph tensor holding codes
        self.deq: dict[str, str] = {}            # DQ output -> onnx code tensor it dequantizes
        self.const_dq: dict[str, tuple] = {}     # DQ of a constant -> (ints, scale, zp, axis, node)
        self.chain: dict[str, tuple] = {}        # float tensor -> (code tensor, [nodes]) elementwise from a DQ
        self.inputs: list[InputSpec] = []
        self.input_shapes = dict(input_shapes or {})
        self.float_inputs = {}
        init_names = set(self.consts)
        for vi in model.graph.input:
            if vi.name in init_names:
                continue
            self.float_inputs[vi.name] = vi
        self.opsets = list(model.opset_import)

    # ---- helpers ----
    def fail(self, node, reason: str) -> None:
        i = self.idx[id(node)]
        if i not in self.bad_nodes:
            self.bad_nodes.add(i)
            self.bad.append((node.name or f"#{i}", node.op_type, reason))

    def claim(self, *nodes) -> None:
        for n in nodes:
            self.claimed.add(self.idx[id(n)])

    def attrs(self, node) -> dict:
        return {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}

    def const(self, name: str):
        """A constant input (initializer or Constant node output), or None."""
        if not name:
            return None
        return self.consts.get(name)

    def shape(self, onnx_name: str) -> tuple:
        return self.g.shape(self.codes[onnx_name])

    def q_of(self, onnx_name: str) -> Q:
        return self.g.q(self.codes[onnx_name])

    def qparams_node(self, node, what: str):
        """(scale float32, zp int, dtype) of a per-tensor Q/DQ node with constant params."""
        s = self.const(node.input[1])
        z = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if s is None or (len(node.input) > 2 and node.input[2] and z is None):
            raise _Skip(f"{what}: scale/zero point are not constants")
        if s.size != 1 or (z is not None and z.size != 1):
            raise _Skip(f"{what}: per-axis activation quantization is not supported (one scale per tensor)")
        if s.dtype != np.float32:
            raise _Skip(f"{what}: scale must be float32, got {s.dtype}")
        dtype = "uint8" if z is None else z.dtype.name
        if dtype not in ("int8", "uint8"):
            raise _Skip(f"{what}: only int8/uint8 activations are supported, got {dtype}")
        zp = 0 if z is None else int(z.reshape(()))
        return np.float32(s.reshape(())), zp, dtype

    def add(self, node_obj, onnx_nodes, onnx_tensor: str | None = None) -> str:
        name = self.g.add(node_obj)
        self.origin[name] = [(n.name or n.output[0], n.op_type) for n in onnx_nodes]
        if onnx_tensor is not None:
            self.codes[onnx_tensor] = name
        return name

    def only_consumer(self, tensor: str, node) -> bool:
        cs = self.consumers.get(tensor, [])
        return len(cs) == 1 and cs[0] is node and tensor not in self.graph_outputs

    # ---- the pass ----
    def run(self) -> OnnxModel:
        for n in self.nodes:
            try:
                self.visit(n)
            except _Skip as e:
                self.fail(n, str(e))
        self.finish_outputs()
        for i, n in enumerate(self.nodes):
            if i not in self.claimed and i not in self.bad_nodes:
                self.fail(n, self.why_unclaimed(n))
        if self.bad:
            raise UnsupportedModelError(self.bad, self.src)
        self.g.outputs = [o.tensor for o in self.outputs]
        return OnnxModel(self.g, self.inputs, self.outputs, self.origin, self.src)

    def why_unclaimed(self, n) -> str:
        if n.domain not in ("", "ai.onnx"):
            return f"operator of domain {n.domain!r} is not supported"
        if n.op_type in _GEMM_OPS + ("Add", "Concat", "MaxPool", "Resize"):
            return ("not a supported DequantizeLinear -> op -> QuantizeLinear group (inputs must be "
                    "DequantizeLinear outputs, constant weights int8 per channel with zero point 0, and the "
                    "output consumed only by one QuantizeLinear)")
        if n.op_type in ELEMENTWISE_OPS:
            return "elementwise op not between a DequantizeLinear and a QuantizeLinear or a graph output"
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            return "quantization node outside a supported group"
        return "operator not supported"

    def visit(self, n) -> None:
        op = n.op_type
        if n.domain not in ("", "ai.onnx"):
            return self.fail(n, f"operator of domain {n.domain!r} is not supported")
        if op == "Constant":
            a = self.attrs(n)
            if "value" not in a:
                raise _Skip("only Constant with a 'value' tensor is supported")
            self.consts[n.output[0]] = self.nh.to_array(a["value"])
            return self.claim(n)
        if op == "DequantizeLinear":
            return self.visit_dq(n)
        if op == "QuantizeLinear":
            return self.visit_q(n)
        if op in MOVEMENT_OPS and n.input[0] in self.codes:
            return self.movement_on_codes(n)
        if op == "MaxPool" and n.input[0] in self.codes:
            return self.maxpool(n, n.input[0], None, [n])
        if (op in ELEMENTWISE_OPS or op in MOVEMENT_OPS) and self.elementwise_src(n) is not None:
            src, chain = self.elementwise_src(n)
            self.chain[n.output[0]] = (src, chain + [n])
            return
        # everything else is claimed (or not) by the QuantizeLinear that consumes it

    # ---- DequantizeLinear ----
    def visit_dq(self, n) -> None:
        x = n.input[0]
        a = self.attrs(n)
        if self.const(x) is not None:
            ints = self.const(x)
            s = self.const(n.input[1])
            z = self.const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if s is None:
                raise _Skip("scale of a constant DequantizeLinear is not a constant")
            self.const_dq[n.output[0]] = (ints, s.astype(np.float32), z, a.get("axis", 1), n)
            return                                   # claimed by the group that uses it
        if x not in self.codes:
            if x in self.float_inputs and self.float_inputs[x].type.tensor_type.elem_type in (2, 3):
                self.graph_input(x, n, quantized=True)
            else:
                raise _Skip(f"input {x!r} is not a quantized tensor this importer tracks")
        s, zp, dtype = self.qparams_node(n, "DequantizeLinear")
        q = self.q_of(x)
        if (np.float32(q.scale), q.zp, q.dtype) != (s, zp, dtype):
            raise _Skip(f"dequantizes {x!r} with scale/zero point {s}/{zp} other than its QuantizeLinear's "
                        f"{q.scale}/{q.zp}")
        self.deq[n.output[0]] = x
        self.chain[n.output[0]] = (x, [n])

    def graph_input(self, name, consumer, quantized=False) -> None:
        vi = self.float_inputs[name]
        shape = self.input_shapes.get(name)
        if shape is None:
            dims = vi.type.tensor_type.shape.dim
            if any(not d.HasField("dim_value") for d in dims):
                raise _Skip(f"input {name!r} has a dynamic shape: pass input_shapes={{{name!r}: (...)}}")
            shape = tuple(int(d.dim_value) for d in dims)
        shape = tuple(int(v) for v in shape)
        if quantized:
            s, zp, dtype = self.qparams_node(consumer, "DequantizeLinear")
        else:
            s, zp, dtype = self.qparams_node(consumer, "QuantizeLinear")
        q = Q(float(s), zp, dtype)
        t = self.g.add_input(name if quantized else consumer.output[0], shape, q)
        self.origin[t] = [(consumer.name or t, consumer.op_type)] if not quantized else []
        self.codes[name if quantized else consumer.output[0]] = t
        self.inputs.append(InputSpec(name, t, shape, q, quantized))

    # ---- QuantizeLinear: what produces its input decides the group ----
    def visit_q(self, n) -> None:
        f = n.input[0]
        if f in self.float_inputs:
            if any(c is not n for c in self.consumers.get(f, [])):
                others = [c.name or c.op_type for c in self.consumers[f] if c is not n]
                raise _Skip(f"graph input {f!r} is also used in float by {others}")
            self.graph_input(f, n)
            return self.claim(n)
        s, zp, dtype = self.qparams_node(n, "QuantizeLinear")
        out = Q(float(s), zp, dtype)
        p = self.producer.get(f)
        if f in self.chain:
            src, chain = self.chain[f]
            return self.table_group(n, src, chain, out)
        if p is None:
            raise _Skip(f"input {f!r} is neither a graph input nor produced by a node")
        if not self.only_consumer(f, n):
            raise _Skip(f"{p.op_type} output {f!r} is also used in float elsewhere (onnxruntime would not fuse it)")
        op = p.op_type
        handler = {"Conv": self.conv, "ConvTranspose": self.conv_transpose, "Gemm": self.gemm,
                   "MatMul": self.matmul, "Add": self.add_op, "Concat": self.concat, "MaxPool": self.maxpool_dq,
                   "Resize": self.resize}.get(op)
        if handler is None:
            self.fail(p, "operator not supported" if op not in ELEMENTWISE_OPS else
                      "elementwise op whose input is not (a chain from) one DequantizeLinear")
            raise _Skip(f"its input comes from an unsupported {op} node")
        try:
            handler(p, n, out)
        except _Skip as e:
            self.fail(p, str(e))
            raise _Skip(f"consumes the output of unsupported {op} node {p.name!r}") from None

    def dq_input(self, name: str, what: str) -> str:
        """The code tensor a DequantizeLinear output dequantizes."""
        if name not in self.deq:
            raise _Skip(f"{what} must be a DequantizeLinear of a quantized activation")
        return self.deq[name]

    def claim_dq(self, name: str) -> None:
        p = self.producer.get(name)
        if p is not None and p.op_type == "DequantizeLinear":
            self.claim(p)

    def weight(self, name: str, axis_expected: int, n_ch: int, what: str):
        """(int8 weights, per-channel float32 scales of length n_ch) of a DQ'd constant."""
        if name not in self.const_dq:
            raise _Skip(f"{what} must be a DequantizeLinear of a constant int8 tensor")
        ints, s, z, axis, dqn = self.const_dq[name]
        if ints.dtype != np.int8:
            raise _Skip(f"{what} must be int8, got {ints.dtype}")
        if z is not None and np.any(z != 0):
            raise _Skip(f"{what} must have zero point 0 (symmetric), got {np.unique(z)[:4].tolist()}")
        if s.size == 1:
            sc = np.full(n_ch, s.reshape(()), np.float32)
        else:
            if axis % ints.ndim != axis_expected % ints.ndim or s.size != ints.shape[axis_expected]:
                raise _Skip(f"{what} per-channel scales must lie along axis {axis_expected}, got axis {axis} "
                            f"with {s.size} scales")
            sc = s.reshape(-1)
        self.claim(dqn)
        return ints, sc

    def bias(self, name: str, n_out: int, what: str):
        """(int32 bias, float32 scales) of a DQ'd int32 constant, or (None, None)."""
        if not name:
            return None, None
        if name not in self.const_dq:
            raise _Skip(f"{what} must be a DequantizeLinear of a constant int32 tensor")
        ints, s, z, axis, dqn = self.const_dq[name]
        if ints.dtype != np.int32 or ints.size != n_out:
            raise _Skip(f"{what} must be {n_out} int32 values, got {ints.dtype} {ints.shape}")
        if z is not None and np.any(z != 0):
            raise _Skip(f"{what} must have zero point 0")
        self.claim(dqn)
        return ints.reshape(-1), np.broadcast_to(s.reshape(-1), (n_out,)).astype(np.float32)

    # ---- array groups ----
    def conv(self, p, qn, out: Q) -> None:
        a = self.attrs(p)
        x = self.dq_input(p.input[0], "Conv input")
        shp = self.shape(x)
        if len(shp) != 4:
            raise _Skip(f"only 2-D convolutions (NCHW input) are supported, got input shape {shp}")
        w_dq = p.input[1]
        if w_dq not in self.const_dq:
            raise _Skip("Conv weight must be a DequantizeLinear of a constant int8 tensor")
        o = self.const_dq[w_dq][0].shape[0]
        w, ws = self.weight(w_dq, 0, o, "Conv weight")
        b, _ = self.bias(p.input[2] if len(p.input) > 2 else "", o, "Conv bias")
        kh, kw = w.shape[2:]
        pads = self.conv_pads(a, shp[2:], (kh, kw), a.get("strides", [1, 1]), a.get("dilations", [1, 1]), p)
        node = Conv2d(qn.output[0], self.codes[x], self.q_of(x), w, b, ws, out,
                      stride=tuple(a.get("strides", [1, 1])), padding=pads, dilation=tuple(a.get("dilations", [1, 1])),
                      groups=int(a.get("group", 1)), mode="ort")
        self.add(node, [p], qn.output[0])
        self.claim_dq(p.input[0])
        self.claim(p, qn)

    def conv_pads(self, a, hw, k, s, d, p):
        ap = a.get("auto_pad", b"NOTSET")
        ap = ap.decode() if isinstance(ap, bytes) else ap
        if ap in ("NOTSET", ""):
            pads = list(a.get("pads", [0, 0, 0, 0]))
            if len(pads) != 4:
                raise _Skip(f"pads must have 4 values for a 2-D {p.op_type}, got {pads}")
            return (pads[0], pads[1], pads[2], pads[3])
        if ap == "VALID":
            return (0, 0, 0, 0)
        if ap in ("SAME_UPPER", "SAME_LOWER"):
            out = []
            for n_in, kk, ss, dd in zip(hw, k, s, d):
                o = -(-n_in // ss)
                tot = max(0, (o - 1) * ss + (kk - 1) * dd + 1 - n_in)
                lo = tot // 2 if ap == "SAME_UPPER" else tot - tot // 2
                out.append((lo, tot - lo))
            return (out[0][0], out[1][0], out[0][1], out[1][1])
        raise _Skip(f"auto_pad {ap!r} is not supported")

    def conv_transpose(self, p, qn, out: Q) -> None:
        a = self.attrs(p)
        x = self.dq_input(p.input[0], "ConvTranspose input")
        shp = self.shape(x)
        if len(shp) != 4:
            raise _Skip(f"only 2-D transposed convolutions are supported, got input shape {shp}")
        if "output_shape" in a:
            raise _Skip("the output_shape attribute is not supported (give pads/output_padding)")
        ap = a.get("auto_pad", b"NOTSET")
        if (ap.decode() if isinstance(ap, bytes) else ap) not in ("NOTSET", ""):
            raise _Skip("auto_pad is not supported for ConvTranspose (give pads)")
        w_dq = p.input[1]
        if w_dq not in self.const_dq:
            raise _Skip("ConvTranspose weight must be a DequantizeLinear of a constant int8 tensor")
        groups = int(a.get("group", 1))
        og = self.const_dq[w_dq][0].shape[1]
        w, ws = self.weight(w_dq, 1, og, "ConvTranspose weight")
        ws = np.tile(ws, groups)                       # axis-1 scales repeat over the groups
        b, bs = self.bias(p.input[2] if len(p.input) > 2 else "", og * groups, "ConvTranspose bias")
        pads = tuple(a.get("pads", [0, 0, 0, 0]))
        geom = dict(stride=tuple(a.get("strides", [1, 1])), padding=pads,
                    output_padding=tuple(a.get("output_padding", [0, 0])),
                    dilation=tuple(a.get("dilations", [1, 1])), groups=groups)
        if self.convtranspose == "array":
            node = ConvTranspose2d(qn.output[0], self.codes[x], self.q_of(x), w, b, ws, out, mode="ort", **geom)
        else:
            node = OrtConvTranspose(qn.output[0], self.codes[x], self.q_of(x), w, ws, b, bs, out, **geom)
        try:
            self.add(node, [p], qn.output[0])
        except ValueError as e:
            raise _Skip(str(e)) from None
        self.claim_dq(p.input[0])
        self.claim(p, qn)

    def gemm(self, p, qn, out: Q) -> None:
        a = self.attrs(p)
        if a.get("transA", 0) or float(a.get("alpha", 1.0)) != 1.0 or float(a.get("beta", 1.0)) != 1.0:
            raise _Skip("only Gemm with transA = 0, alpha = 1, beta = 1 is supported (onnxruntime's QGemm)")
        x = self.dq_input(p.input[0], "Gemm input A")
        if len(self.shape(x)) != 2:
            raise _Skip(f"Gemm input must be 2-D, got {self.shape(x)}")
        tb = int(a.get("transB", 0))
        if p.input[1] not in self.const_dq:
            raise _Skip("Gemm B must be a DequantizeLinear of a constant int8 tensor")
        bshape = self.const_dq[p.input[1]][0].shape
        o = bshape[0] if tb else bshape[1]
        w, ws = self.weight(p.input[1], 0 if tb else 1, o, "Gemm B")
        w = w if tb else np.ascontiguousarray(w.T)
        b, _ = self.bias(p.input[2] if len(p.input) > 2 else "", o, "Gemm C")
        node = FullyConnected(qn.output[0], self.codes[x], self.q_of(x), w, b, ws, out, mode="ort")
        self.add(node, [p], qn.output[0])
        self.claim_dq(p.input[0])
        self.claim(p, qn)

    def matmul(self, p, qn, out: Q) -> None:
        x = self.dq_input(p.input[0], "MatMul input A")
        if len(self.shape(x)) != 2:
            raise _Skip(f"only 2-D MatMul (N, K) x (K, O) is supported, got A {self.shape(x)}")
        if p.input[1] not in self.const_dq:
            raise _Skip("MatMul B must be a DequantizeLinear of a constant int8 tensor")
        bshape = self.const_dq[p.input[1]][0].shape
        if len(bshape) != 2:
            raise _Skip(f"MatMul B must be 2-D, got {bshape}")
        w, ws = self.weight(p.input[1], 1, bshape[1], "MatMul B")
        node = FullyConnected(qn.output[0], self.codes[x], self.q_of(x), np.ascontiguousarray(w.T), None, ws, out,
                              mode="ort")
        self.add(node, [p], qn.output[0])
        self.claim_dq(p.input[0])
        self.claim(p, qn)

    # ---- host groups ----
    def add_op(self, p, qn, out: Q) -> None:
        ins = list(p.input)
        if all(i in self.deq for i in ins):
            a, b = (self.deq[i] for i in ins)
            qa, qb = self.q_of(a), self.q_of(b)
            table = self.probe_add(p, qn, qa, qb)
            node = AddTable(qn.output[0], self.codes[a], self.codes[b], (qa, qb), out, table)
            self.add(node, [p], qn.output[0])
            for i in ins:
                self.claim_dq(i)
            return self.claim(p, qn)
        raise _Skip("Add needs two DequantizeLinear activations (or one and a constant: an elementwise table)")

    def concat(self, p, qn, out: Q) -> None:
        a = self.attrs(p)
        srcs = [self.dq_input(i, "every Concat input") for i in p.input]
        qs = [self.q_of(s) for s in srcs]
        if any(q.dtype != out.dtype for q in qs):
            raise _Skip("QLinearConcat needs every input in the output's type")
        rank = len(self.shape(srcs[0]))
        axis = int(a.get("axis", 1)) % rank
        tables = [None if (np.float32(q.scale), q.zp) == (np.float32(out.scale), out.zp) else _requant_table(q, out)
                  for q in qs]
        node = Concat(qn.output[0], [self.codes[s] for s in srcs], qs, out, axis=axis, tables=tables)
        self.add(node, [p], qn.output[0])
        for i in p.input:
            self.claim_dq(i)
        self.claim(p, qn)

    def maxpool_dq(self, p, qn, out: Q) -> None:
        x = self.dq_input(p.input[0], "MaxPool input")
        self.maxpool(p, x, (qn, out), [p])
        self.claim_dq(p.input[0])

    def maxpool(self, p, x, qgroup, onnx_nodes) -> None:
        a = self.attrs(p)
        if len([o for o in p.output if o]) != 1:
            raise _Skip("MaxPool with an Indices output is not supported")
        shp = self.shape(x)
        if len(shp) != 4:
            raise _Skip(f"only 2-D MaxPool is supported, got input shape {shp}")
        k = tuple(a["kernel_shape"])
        s = tuple(a.get("strides", [1, 1]))
        d = tuple(a.get("dilations", [1, 1]))
        pads = self.conv_pads(a, shp[2:], k, s, d, p)
        if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET", b"", "", b"VALID", "VALID"):
            raise _Skip("MaxPool auto_pad SAME_* is not supported")
        out_name = qgroup[0].output[0] if qgroup else p.output[0]
        mid = out_name if qgroup is None or self._same_q(self.q_of(x), qgroup[1]) else p.output[0] + "/codes"
        node = MaxPool(mid, self.codes[x], self.q_of(x), k, stride=s, padding=pads,
                       ceil_mode=bool(a.get("ceil_mode", 0)), dilation=d)
        try:
            self.add(node, onnx_nodes, None if mid != out_name else out_name)
        except ValueError as e:
            raise _Skip(str(e)) from None
        self.finish_requant(mid, out_name, qgroup, onnx_nodes)
        self.claim(p)

    def finish_requant(self, mid: str, out_name: str, qgroup, onnx_nodes) -> None:
        """After a code-preserving op: map codes to the QuantizeLinear's params if they differ."""
        if qgroup is None:
            self.codes[out_name] = mid
            return
        qn, out = qgroup
        if mid != out_name:
            qin = self.g.q(mid)
            self.add(Lut(out_name, mid, qin, LutSpec(_requant_table(qin, out), out)), onnx_nodes + [qn], out_name)
        else:
            self.origin[out_name] = [(n.name or n.output[0], n.op_type) for n in onnx_nodes + [qn]]
        self.claim(qn)

    @staticmethod
    def _same_q(a: Q, b: Q) -> bool:
        return (np.float32(a.scale), a.zp, a.dtype) == (np.float32(b.scale), b.zp, b.dtype)

    def resize(self, p, qn, out: Q) -> None:
        a = self.attrs(p)
        x = self.dq_input(p.input[0], "Resize input")
        mode = a.get("mode", b"nearest")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode != "nearest":
            raise _Skip(f"only Resize mode 'nearest' is supported, got {mode!r}")
        if int(a.get("antialias", 0)):
            raise _Skip("Resize antialias is not supported")
        shp = self.shape(x)
        if len(shp) != 4:
            raise _Skip(f"only 4-D (NCHW) Resize is supported, got {shp}")
        if "axes" in a:
            raise _Skip("Resize axes attribute is not supported")
        scales = self.const(p.input[2]) if len(p.input) > 2 and p.input[2] else None
        sizes = self.const(p.input[3]) if len(p.input) > 3 and p.input[3] else None
        if (scales is None or scales.size == 0) and sizes is None:
            raise _Skip("Resize scales/sizes must be constants")
        ctm = a.get("coordinate_transformation_mode", b"half_pixel")
        ctm = ctm.decode() if isinstance(ctm, bytes) else ctm
        nm = a.get("nearest_mode", b"round_prefer_floor")
        nm = nm.decode() if isinstance(nm, bytes) else nm
        kar = a.get("keep_aspect_ratio_policy", b"stretch")
        if (kar.decode() if isinstance(kar, bytes) else kar) != "stretch":
            raise _Skip("Resize keep_aspect_ratio_policy other than 'stretch' is not supported")
        if sizes is not None and sizes.size:
            osz = [int(v) for v in sizes.reshape(-1)]
            sc = [np.float32(o) / np.float32(i) for o, i in zip(osz, shp)]
        else:
            sc = [np.float32(v) for v in scales.reshape(-1)]
            osz = [int(np.floor(np.float32(i) * s)) for i, s in zip(shp, sc)]
        if osz[:2] != list(shp[:2]):
            raise _Skip("Resize may only change H and W")
        rows = _nearest_index(shp[2], osz[2], sc[2], ctm, nm)
        cols = _nearest_index(shp[3], osz[3], sc[3], ctm, nm)
        out_name = qn.output[0]
        same = self._same_q(self.q_of(x), out)
        mid = out_name if same else p.output[0] + "/codes"
        self.add(Resize(mid, self.codes[x], self.q_of(x), rows, cols), [p], out_name if same else None)
        self.finish_requant(mid, out_name, (qn, out), [p])
        self.claim_dq(p.input[0])
        self.claim(p)

    # ---- data movement ----
    def move_node(self, p, x: str, name: str):
        a = self.attrs(p)
        shp = self.shape(x)
        op = p.op_type
        q = self.q_of(x)
        if op == "Transpose":
            perm = a.get("perm", list(range(len(shp)))[::-1])
            return Transpose(name, self.codes[x], q, perm)
        if op == "Identity":
            return Reshape(name, self.codes[x], q, shp)
        if op == "Flatten":
            ax = int(a.get("axis", 1)) % (len(shp) + 1) if len(shp) else 0
            return Reshape(name, self.codes[x], q, (int(np.prod(shp[:ax])), int(np.prod(shp[ax:]))))
        if op == "Reshape":
            s = self.const(p.input[1])
            if s is None:
                raise _Skip("Reshape shape must be a constant")
            if int(a.get("allowzero", 0)):
                raise _Skip("Reshape allowzero = 1 is not supported")
            s = [int(v) for v in s.reshape(-1)]
            s = [shp[i] if v == 0 else v for i, v in enumerate(s)]
            if s.count(-1) > 1:
                raise _Skip(f"Reshape shape {s} has more than one -1")
            if -1 in s:
                known = int(np.prod([v for v in s if v != -1]))
                s[s.index(-1)] = int(np.prod(shp)) // max(known, 1)
            return Reshape(name, self.codes[x], q, s)
        if op in ("Squeeze", "Unsqueeze"):
            axes = a.get("axes")
            if axes is None and len(p.input) > 1 and p.input[1]:
                c = self.const(p.input[1])
                if c is None:
                    raise _Skip(f"{op} axes must be constant")
                axes = [int(v) for v in c.reshape(-1)]
            s = list(shp)
            if op == "Squeeze":
                axes = [i for i, v in enumerate(s) if v == 1] if axes is None else [int(v) % len(s) for v in axes]
                s = [v for i, v in enumerate(s) if i not in axes]
            else:
                r = len(s) + len(axes)
                for ax in sorted(int(v) % r for v in axes):
                    s.insert(ax, 1)
            return Reshape(name, self.codes[x], q, s)
        raise _Skip(f"{op} is not a supported movement op")

    def movement_on_codes(self, n) -> None:
        node = self.move_node(n, n.input[0], n.output[0])
        try:
            self.add(node, [n], n.output[0])
        except ValueError as e:
            raise _Skip(str(e)) from None
        self.claim(n)

    # ---- elementwise chains -> tables ----
    def elementwise_src(self, n):
        """(code tensor, chain) if ``n`` is elementwise on one chain from a DQ, its other inputs constant."""
        data = [i for i in n.input if i and self.const(i) is None and i not in self.const_dq]
        if len(data) != 1 or data[0] not in self.chain:
            return None
        if n.input[0] != data[0] and n.op_type not in ("Add", "Mul", "Max", "Min"):
            return None                                  # e.g. Sub/Div/Pow with the constant first
        return self.chain[data[0]]

    def check_constants(self, chain, rank: int, n_ch: int) -> None:
        moved = False
        for nd in chain[1:]:
            if nd.op_type in MOVEMENT_OPS:
                moved = True
                continue
            for i in nd.input:
                if not i or i in self.chain:
                    continue
                c = self.const(i) if self.const(i) is not None else self.const_dq.get(i, (None,))[0]
                if c is None:
                    raise _Skip(f"operand {i!r} of {nd.op_type} is not a constant")
                if moved and c.size != 1:
                    raise _Skip(f"{nd.op_type} {nd.name!r} with a per-channel constant after a data movement op: "
                                "not supported")
                sh = (1,) * (rank - c.ndim) + tuple(c.shape) if c.ndim <= rank else None
                if sh is None or any(v != 1 and not (d == 1 and v == n_ch) for d, v in enumerate(sh)):
                    raise _Skip(f"constant operand {i!r} of {nd.op_type} (shape {c.shape}) varies along an axis "
                                "other than the channel axis 1: not an elementwise table")

    def table_group(self, qn, src: str, chain: list, out: Q) -> None:
        """DQ -> elementwise ops (-> data movement) -> Q: a table on the codes, then the movement on codes.

        Quantization is elementwise, so it commutes with data movement: Q(move(f(DQ(x)))) =
        move(Q(f(DQ(x)))); an elementwise op after a movement must have scalar constants (it commutes too).
        """
        qin = self.q_of(src)
        shp = self.shape(src)
        n_ch = shp[1] if len(shp) >= 2 else 1
        self.check_constants(chain, len(shp), n_ch)
        for nd in chain[:-1]:
            if nd.op_type == "DequantizeLinear":
                continue
            if not self.only_consumer(nd.output[0], self.consumers[nd.output[0]][0]):
                raise _Skip(f"intermediate float tensor of {nd.op_type} {nd.name!r} is used elsewhere")
        elem = [chain[0]] + [nd for nd in chain[1:] if nd.op_type not in MOVEMENT_OPS]
        moves = [nd for nd in chain[1:] if nd.op_type in MOVEMENT_OPS]
        if len(elem) == 1:                                  # DQ -> Q: a plain requantization
            tables = _requant_table(qin, out)[None]
        else:
            tables = self.probe_chain(src, elem, qin, shp, n_ch, qn)
        final = qn.output[0]
        name = final if not moves else final + "/table"
        nodes = elem[1:] + ([qn] if not moves else [])
        if len(elem) == 1 and moves and self._same_q(qin, out):
            cur = src                                       # pure movement between DQ and Q
        else:
            cur = self._table_node(name, src, qin, out, tables, nodes)
        for k, mv in enumerate(moves):
            last = k == len(moves) - 1
            nm = final if last else f"{mv.output[0]}/codes"
            node = self.move_node(mv, cur, nm)
            try:
                self.add(node, [mv] + ([qn] if last else []), nm)
            except ValueError as e:
                raise _Skip(str(e)) from None
            cur = nm
        self.claim(*chain, qn)

    def _table_node(self, name, src, qin, out, tables, nodes) -> str:
        if np.all(tables == tables[:1]):
            t = tables[0]
            lo_hi = _as_clamp(t, qin, out)
            if lo_hi is not None:
                self.add(Clamp(name, self.codes[src], qin, *lo_hi), nodes, name)
            else:
                self.add(Lut(name, self.codes[src], qin, LutSpec(t, out)), nodes, name)
        else:
            self.add(ChannelLut(name, self.codes[src], qin, tables, out), nodes, name)
        return name

    def probe_chain(self, src, chain, qin: Q, shp, n_ch, qn=None):
        """Run DQ -> chain [-> Q] in onnxruntime on every code (per channel): (C, 256) tables."""
        from onnx import helper
        rank = len(shp)
        codes = np.arange(qin.qmin, qin.qmax + 1).astype(qin.dtype)
        pshape = [256, n_ch] + [1] * (rank - 2) if rank >= 2 else [256]
        x = np.broadcast_to(codes.reshape([256] + [1] * (len(pshape) - 1)), pshape).copy()
        nodes, inits, seen = [], [], set()

        def need_const(name):
            if not name or name in seen or name in (src,) or name in self.chain:
                return
            seen.add(name)
            if name in self.const_dq:
                dqn = self.const_dq[name][4]
                for i in dqn.input:
                    need_const(i)
                nodes.append(dqn)
            elif self.producer.get(name) is not None and self.producer[name].op_type == "Constant":
                nodes.append(self.producer[name])
            else:
                for ini in self.m.graph.initializer:
                    if ini.name == name:
                        inits.append(ini)
                        return
                raise _Skip(f"operand {name!r} is not a constant")
        for nd in chain:
            for i in nd.input:
                if i != src and i not in {c.output[0] for c in chain}:
                    need_const(i)
        body = [nd for nd in nodes] + list(chain)
        outs = [qn.output[0]] if qn is not None else [chain[-1].output[0]]
        if qn is not None:
            for i in qn.input[1:]:
                need_const(i)
            q2 = helper.make_node("QuantizeLinear", [chain[-1].output[0]] + list(qn.input[1:]), [qn.output[0]],
                                  name=qn.name)
            q2.attribute.extend(qn.attribute)
            body = nodes + list(chain) + [q2]
        elem = {"int8": 3, "uint8": 2}[qin.dtype]
        out_elem = 1 if qn is None else {"int8": 3, "uint8": 2}[self.qparams_node(qn, "QuantizeLinear")[2]]
        g = helper.make_graph(body, "probe", [helper.make_tensor_value_info(src, elem, pshape)],
                              [helper.make_tensor_value_info(outs[0], out_elem, None)], inits)
        pm = helper.make_model(g, opset_imports=self.opsets, ir_version=self.m.ir_version)
        self.claim(*nodes)
        try:
            y = ort_session(pm, uint8=qin.dtype == "uint8" or (qn is not None and self.qparams_node(qn, "Q")[2] == "uint8")
                            ).run(None, {src: x})[0]
        except Exception as e:                      # onnxruntime refused the group
            raise _Skip(f"onnxruntime cannot evaluate the group: {str(e).splitlines()[0]}") from None
        y = np.asarray(y).reshape(256, -1)
        if y.shape[1] != n_ch and y.shape[1] != 1:
            raise _Skip("the group's output does not keep the input's shape (not elementwise)")
        return np.ascontiguousarray(np.broadcast_to(y, (256, n_ch)).T)

    def probe_add(self, p, qn, qa: Q, qb: Q) -> np.ndarray:
        """QLinearAdd on all 65536 code pairs (onnxruntime), as the (256, 256) table [a - qmin, b - qmin]."""
        from onnx import helper
        a_dq, b_dq = (self.producer[i] for i in p.input)
        ca = np.arange(qa.qmin, qa.qmax + 1).astype(qa.dtype)
        cb = np.arange(qb.qmin, qb.qmax + 1).astype(qb.dtype)
        xa = np.broadcast_to(ca[:, None], (256, 256)).reshape(1, 1, 256, 256).copy()
        xb = np.broadcast_to(cb[None, :], (256, 256)).reshape(1, 1, 256, 256).copy()
        names = {"a": a_dq.input[0], "b": b_dq.input[0]}
        if names["a"] == names["b"]:                       # x + x: one input, both DQs read it
            raise _Skip("Add of a tensor with itself is not supported")
        inits = [i for i in self.m.graph.initializer if i.name in set(a_dq.input[1:]) | set(b_dq.input[1:])
                 | set(qn.input[1:])]
        consts = [self.producer[i] for i in set(a_dq.input[1:]) | set(b_dq.input[1:]) | set(qn.input[1:])
                  if i in self.producer and self.producer[i].op_type == "Constant"]
        g = helper.make_graph(consts + [a_dq, b_dq, p, qn], "probe",
                              [helper.make_tensor_value_info(names["a"], {"int8": 3, "uint8": 2}[qa.dtype], None),
                               helper.make_tensor_value_info(names["b"], {"int8": 3, "uint8": 2}[qb.dtype], None)],
                              [helper.make_tensor_value_info(
                                  qn.output[0], {"int8": 3, "uint8": 2}[self.qparams_node(qn, "QuantizeLinear")[2]],
                                  None)], inits)
        pm = helper.make_model(g, opset_imports=self.opsets, ir_version=self.m.ir_version)
        try:
            y = ort_session(pm, uint8="uint8" in (qa.dtype, qb.dtype)).run(None, {names["a"]: xa, names["b"]: xb})[0]
        except Exception as e:
            raise _Skip(f"onnxruntime cannot evaluate the Add group: {str(e).splitlines()[0]}") from None
        return np.ascontiguousarray(np.asarray(y).reshape(256, 256))

    # ---- graph outputs ----
    def finish_outputs(self) -> None:
        self.outputs: list[OutputSpec] = []
        for o in self.graph_outputs:
            if o in self.codes:
                t = self.codes[o]
                self.outputs.append(OutputSpec(o, t, "codes", self.g.q(t)))
            elif o in self.chain:
                src, chain = self.chain[o]
                t = self.codes[src]
                q = self.g.q(t)
                if len(chain) == 1:
                    self.outputs.append(OutputSpec(o, t, "dequant", q))
                    self.claim(chain[0])
                else:
                    try:
                        shp = self.shape(src)
                        n_ch = shp[1] if len(shp) >= 2 else 1
                        self.check_constants(chain, len(shp), n_ch)
                        tab = self.probe_chain(src, chain, q, shp, n_ch).astype(np.float32)
                    except _Skip as e:
                        for nd in chain[1:]:
                            self.fail(nd, str(e))
                        continue
                    if np.all(tab == tab[:1]):
                        tab = tab[:1]
                    self.outputs.append(OutputSpec(o, t, "table", q, tab))
                    self.claim(*chain)
            else:
                p = self.producer.get(o)
                if p is not None:
                    self.fail(p, f"graph output {o!r} is neither quantized codes, a DequantizeLinear of them, "
                                 "nor an elementwise float op on one")


class _Skip(Exception):
    """Internal: this node (group) is not supported, with the reason."""


def _requant_table(qin: Q, out: Q) -> np.ndarray:
    """QuantizeLinear(DequantizeLinear(code)) for every input code (golden.quant, as onnxruntime)."""
    codes = np.arange(qin.qmin, qin.qmax + 1).astype(qin.dtype)
    return quant.quantize(quant.dequantize(codes, _qparams(qin)), _qparams(out))


def _as_clamp(table: np.ndarray, qin: Q, out: Q):
    """(lo, hi) if ``table`` is a plain clamp of the codes and in/out quantizations are equal, else None."""
    if (np.float32(qin.scale), qin.zp, qin.dtype) != (np.float32(out.scale), out.zp, out.dtype):
        return None
    codes = np.arange(qin.qmin, qin.qmax + 1)
    lo, hi = int(table.astype(np.int64).min()), int(table.astype(np.int64).max())
    if np.array_equal(np.clip(codes, lo, hi), table.astype(np.int64)):
        return lo, hi
    return None


def _nearest_index(n_in: int, n_out: int, scale, ctm: str, nearest_mode: str) -> np.ndarray:
    """Source index of every output position of a nearest Resize (onnxruntime's float32 rules)."""
    x = np.arange(n_out, dtype=np.float32)
    s = np.float32(scale)
    f32 = np.float32
    if ctm == "half_pixel":
        o = (x + f32(0.5)) / s - f32(0.5)
    elif ctm == "pytorch_half_pixel":
        o = (x + f32(0.5)) / s - f32(0.5) if n_out > 1 else np.zeros_like(x)
    elif ctm == "asymmetric":
        o = x / s
    elif ctm == "align_corners":
        o = np.zeros_like(x) if n_out == 1 else x * f32(n_in - 1) / f32(n_out - 1)
    elif ctm == "tf_half_pixel_for_nn":
        o = (x + f32(0.5)) / s
    else:
        raise _Skip(f"Resize coordinate_transformation_mode {ctm!r} is not supported")
    if nearest_mode == "round_prefer_floor":
        idx = np.where(o == np.floor(o) + f32(0.5), np.floor(o), np.round(o))
    elif nearest_mode == "round_prefer_ceil":
        idx = np.where(o == np.floor(o) + f32(0.5), np.ceil(o), np.round(o))
    elif nearest_mode == "floor":
        idx = np.floor(o)
    elif nearest_mode == "ceil":
        idx = np.ceil(o)
    else:
        raise _Skip(f"Resize nearest_mode {nearest_mode!r} is not supported")
    return np.clip(idx, 0, n_in - 1).astype(np.int64)


def import_qdq(model, *, input_shapes: dict | None = None, convtranspose: str = "float",
               name: str | None = None) -> OnnxModel:
    """Import a QDQ ONNX model (path, bytes or ModelProto) into an ``OnnxModel``.

    ``input_shapes``: ``{input name: shape}`` for inputs with dynamic dims.
    ``convtranspose``: "float" (default: onnxruntime's float path emulated on
    the host, bit-exact) or "array" (integer on the array with the ort
    requantization; differs from onnxruntime on rare near-tie outputs).
    Raises OnnxImportError (malformed model) or UnsupportedModelError (every
    unsupported node at once) before anything runs.
    """
    if convtranspose not in ("float", "array"):
        raise ValueError(f"convtranspose must be 'float' or 'array', got {convtranspose!r}")
    src = name or (str(model) if isinstance(model, (str, os.PathLike)) else "model")
    m = load_model(model, src)
    if not any(n.op_type == "QuantizeLinear" for n in m.graph.node):
        raise OnnxImportError(f"{src}: no QuantizeLinear node: a float model; quantize it first "
                              "(firmware.onnx_import.quantize_float_model, or onnxruntime.quantization."
                              "quantize_static with QuantFormat.QDQ)")
    return _Importer(m, src, input_shapes, convtranspose).run()


# --------------------------------------------------------------------------- quantizing float models


#: Ops whose output keeps the input's quantization (quantize_static's "direct 8-bit" ops).
_SAME_Q_OPS = ("MaxPool", "Resize", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity")
#: Activations folded into the producer's output range (quantize_static's removable activations).
_FOLDABLE = ("Relu", "Clip")


def quantize_float_model(model, calibration_inputs: Sequence[dict] | dict, *, activation_dtype: str = "int8",
                         per_channel: bool = True, observer: str = "minmax", symmetric_activations: bool = False,
                         name: str | None = None):
    """Quantize a float ONNX model with golden/'s toolkit into QDQ form (returns an onnx.ModelProto).

    Same placement as ``quantize_static(..., QuantFormat.QDQ)``: every float
    activation gets QuantizeLinear -> DequantizeLinear after its producer;
    Conv/ConvTranspose/Gemm/MatMul weights become DequantizeLinear of int8
    (``golden.quant.quantize_weights``: symmetric [-127, 127], per output
    channel if ``per_channel``: axis 0, ConvTranspose/MatMul/Gemm(transB=0)
    axis 1) and biases DequantizeLinear of int32 (scale = x_scale * w_scale,
    round half to even); a Relu/Clip whose input has no other consumer is
    removed and its output range quantizes the producer's output; data
    movement (MaxPool, Resize, Reshape, Transpose, ...) keeps its input's
    quantization. Activation ranges come from ``golden.calib`` observers
    ("minmax", "entropy", "percentile") over ``calibration_inputs`` (dicts
    ``{input name: float32 array}``, or one dict) run through the float model
    in onnxruntime; ``golden.quant.choose_qparams`` (asymmetric unless
    ``symmetric_activations``) turns them into scale and zero point.
    ``import_qdq`` then gives the graph; onnxruntime runs the same QDQ model
    as the reference.
    """
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    from golden import calib
    if activation_dtype not in ("int8", "uint8"):
        raise ValueError(f"activation_dtype must be 'int8' or 'uint8', got {activation_dtype!r}")
    obs_cls = {"minmax": calib.MinMaxObserver, "entropy": calib.EntropyObserver,
               "percentile": calib.PercentileObserver}.get(observer)
    if obs_cls is None:
        raise ValueError(f"observer must be 'minmax', 'entropy' or 'percentile', got {observer!r}")
    src = name or (str(model) if isinstance(model, (str, os.PathLike)) else "model")
    m = onnx.ModelProto()
    m.CopyFrom(load_model(model, src))
    if isinstance(calibration_inputs, dict):
        calibration_inputs = [calibration_inputs]
    calibration_inputs = list(calibration_inputs)
    if not calibration_inputs:
        raise ValueError("calibration_inputs must hold at least one feed dict")
    opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        m = onnx.version_converter.convert_version(m, 13)
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = dict(inits)
    for n in g.node:
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    # 1. activation tensors: float graph inputs and node outputs that are not constants or shapes
    act = [vi.name for vi in g.input if vi.name not in inits and vi.type.tensor_type.elem_type == 1]
    for n in g.node:
        if n.op_type in ("Constant", "Shape"):
            continue
        act += [o for o in n.output if o]
    # folded activations: producer output -> the activation's output (whose range quantizes it)
    fold = {}
    for n in g.node:
        if n.op_type in _FOLDABLE and n.input[0] in act and n.input[0] not in outputs:
            prod = next((p for p in g.node if n.input[0] in p.output), None)
            if prod is not None and prod.op_type in _GEMM_OPS + ("Add",) and len(consumers.get(n.input[0], [])) == 1:
                fold[n.input[0]] = n
    # 2. calibration: run the float model exposing every activation
    probe = onnx.ModelProto()
    probe.CopyFrom(m)
    known = {o.name for o in probe.graph.output}
    for t in act:
        if t not in known and t not in {vi.name for vi in g.input}:
            probe.graph.output.append(helper.make_tensor_value_info(t, 1, None))
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    obs = {t: obs_cls() for t in act}
    for feed in calibration_inputs:
        vals = dict(zip(names, sess.run(names, feed)))
        vals.update(feed)
        for t in act:
            if t in vals and np.asarray(vals[t]).dtype == np.float32:
                obs[t].observe(np.asarray(vals[t]))
    qp: dict[str, quant.QParams] = {}

    def qparams_for(t):
        if t in qp:
            return qp[t]
        r = fold[t].output[0] if t in fold else t
        prod = next((p for p in g.node if t in p.output), None)
        if prod is not None and prod.op_type in _SAME_Q_OPS and prod.input[0] in obs:
            qp[t] = qparams_for(prod.input[0])
        elif obs[r].num_batches:
            qp[t] = obs[r].qparams(activation_dtype, symmetric=symmetric_activations)
        else:
            raise OnnxImportError(f"{src}: no calibration data reached tensor {t!r}")
        return qp[t]

    # 3. rebuild the graph with Q/DQ pairs. A graph output t keeps its name on the DequantizeLinear
    #    (the float producer's output becomes t + "__float"), as quantize_static does.
    new_nodes, new_inits = [], list(g.initializer)

    def fname(t):
        return t + "__float" if t in outputs else t

    def qdq(t, dq_name):
        p = qparams_for(t)
        s_name, z_name = f"{t}_scale", f"{t}_zero_point"
        new_inits.append(numpy_helper.from_array(np.asarray(p.scale, np.float32), s_name))
        new_inits.append(numpy_helper.from_array(np.asarray(p.zero_point, activation_dtype), z_name))
        new_nodes.append(helper.make_node("QuantizeLinear", [fname(t), s_name, z_name], [f"{t}_quantized"],
                                          name=f"{t}_QuantizeLinear"))
        new_nodes.append(helper.make_node("DequantizeLinear", [f"{t}_quantized", s_name, z_name], [dq_name],
                                          name=f"{t}_DequantizeLinear"))
        return dq_name

    def weight_dq(wname, axis):
        w = consts[wname].astype(np.float32)
        wq, wqp = quant.quantize_weights(w, axis=axis if per_channel else None)
        s_name, z_name, q_name = f"{wname}_scale", f"{wname}_zero_point", f"{wname}_quantized"
        new_inits.append(numpy_helper.from_array(wq, q_name))
        new_inits.append(numpy_helper.from_array(np.asarray(wqp.scale, np.float32), s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(np.shape(wqp.scale), np.int8), z_name))
        attrs = {"axis": axis} if per_channel else {}
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [f"{wname}_dq"],
                                          name=f"{wname}_DequantizeLinear", **attrs))
        return f"{wname}_dq", wqp.scale

    def bias_dq(bname, x_scale, w_scale):
        b = consts[bname].astype(np.float32).reshape(-1)
        bs = (np.float32(x_scale) * np.asarray(w_scale, np.float32)).astype(np.float32)
        bs = np.broadcast_to(bs, b.shape).astype(np.float32)
        bq = np.clip(np.rint(b.astype(np.float64) / bs.astype(np.float64)), -(2**31), 2**31 - 1).astype(np.int32)
        s_name, z_name, q_name = f"{bname}_scale", f"{bname}_zero_point", f"{bname}_quantized"
        new_inits.append(numpy_helper.from_array(bq, q_name))
        new_inits.append(numpy_helper.from_array(bs, s_name))
        new_inits.append(numpy_helper.from_array(np.zeros(b.shape, np.int32), z_name))
        new_nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [f"{bname}_dq"],
                                          name=f"{bname}_DequantizeLinear", axis=0))
        return f"{bname}_dq"

    dq_of = {}
    for vi in g.input:
        if vi.name in act:
            dq_of[vi.name] = qdq(vi.name, f"{vi.name}_dq")
    folded_by = {n.output[0]: t for t, n in fold.items()}
    for n in g.node:
        if n.op_type in _FOLDABLE and n.output[0] in folded_by:
            continue                                        # removed: its range quantizes the producer
        ins = list(n.input)
        if n.op_type in _GEMM_OPS and len(ins) >= 2 and ins[1] in consts:
            x_dq = dq_of.get(ins[0], ins[0])
            if n.op_type == "Conv":
                axis = 0
            elif n.op_type == "Gemm":
                axis = 0 if next((a.i for a in n.attribute if a.name == "transB"), 0) else 1
            else:
                axis = 1
            w_dq, ws = weight_dq(ins[1], axis)
            ins[0], ins[1] = x_dq, w_dq
            if len(ins) > 2 and ins[2] in consts:
                ins[2] = bias_dq(ins[2], qparams_for(n.input[0]).scale, ws)
        else:
            ins = [dq_of.get(i, i) for i in ins]
        nn = helper.make_node(n.op_type, ins, [fname(o) for o in n.output], name=n.name, domain=n.domain)
        nn.attribute.extend(n.attribute)
        new_nodes.append(nn)
        for o in n.output:
            if o in fold:                                   # quantized with the folded activation's range
                r = fold[o].output[0]
                dq_of[o] = dq_of[r] = qdq(o, r if r in outputs else f"{o}_dq")
            elif o in act:
                dq_of[o] = qdq(o, o if o in outputs else f"{o}_dq")
    graph = helper.make_graph(new_nodes, g.name or "quantized", list(g.input), list(g.output), new_inits)
    qm = helper.make_model(graph, opset_imports=list(m.opset_import), ir_version=m.ir_version)
    onnx.checker.check_model(qm)
    return qm
