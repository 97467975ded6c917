"""Array utilization of CenterNet-ResNet18 (512x512, plain 3x3 convs for DCN) on the default array.

``python -m bench network --json out/network.json`` compiles every
accelerator layer of the network with firmware.compiler for ``ArrayConfig()``
(or ``--rows/--cols``) and times the programs with the cycle model
(firmware.report.TopTimer: the top's decoder/sequencer behaviour with the
core's per-tile timing from golden.array_model / golden.isa.run_timing,
ideal host). No data is computed: the compiler's plan is data independent.

Network (xingyizhou/CenterNet, ``resnet_dcn.py`` with DCN -> 3x3 conv):

* ResNet-18 backbone: conv1 7x7/2 (3 -> 64) + ReLU, maxpool 3x3/2 (host),
  4 stages of 2 BasicBlocks (64, 128, 256, 512 channels; the first block of
  stages 2-4 has stride 2 and a 1x1/2 downsample conv); residual adds (host,
  TFLite requantizing add with the ReLU clamp).
* neck: 3 x (3x3 conv to 256 / 128 / 64 channels + ReLU, ConvTranspose 4x4/2
  pad 1 + ReLU) -> 128x128x64.
* heads: hm (80 classes), wh (2), reg (2): each 3x3 conv 64 -> 64 + ReLU and a
  1x1 conv to the outputs.

Result keys: ``utilization_mac_weighted`` (sum of MACs_l * util_l / sum of
MACs, util_l = MACs_l / (cycles_l * rows * out_lanes)), ``utilization_overall``
(total MACs / (total cycles * peak)), ``layers`` (name, macs, cycles,
utilization, bound, order, din/dout words, losses), ``total_gmac``,
``total_cycles``, ``fps_at_100mhz`` (100e6 / total array cycles: layers run
one after another, each starting on an idle device; host ops are not
counted, see ``host_ops``), ``shortfalls`` (array layers below 0.95 and why).

RTL validation (``rtl_validation(args)``, skipped with ``--no-rtl``): layers of
this network at a reduced input size (``--rtl-size``, default 64: conv1 7x7/2,
layer1.0.conv1 3x3, layer2.0.downsample 1x1/2, neck2.up ConvTranspose 4x4/2,
hm.out 1x1; channels as in the network, random weights) run through
``firmware.driver.run_layer`` on the Verilator-simulated top
(``firmware.rtl_device.RtlDevice``, sim/tb_top.py; the model is built once and
cached by sim/build_top.py: ~100k lines of Verilog, minutes to compile the
first time) on the same ArrayConfig as above. Per layer its READ_STATUS
counters are compared with the
cycle model: CYCLES, BUSY_CYCLES, USEFUL_MACS, JOBS_DONE, OUT_STALL_CYCLES and
CMDS_DROPPED with TopTimer over the whole command stream (as GoldenDevice
reports them), IN_STALL_CYCLES / BUSY_CYCLES / USEFUL_MACS / JOBS_DONE with the
plan's report; the output must equal the golden reference. Keys:
``rtl_validated_layers`` (layers whose counters were compared),
``rtl_cycle_model_mismatches`` (layers with any counter differing),
``rtl_output_mismatches``, ``rtl_layers`` (per layer: shapes, measured and
model counters, simulated cycles, wall seconds), ``rtl_sim`` (config, model
build seconds, simulated cycles per second). If the simulation cannot run,
only ``rtl_error`` is reported (no numbers that were not measured).
"""
from __future__ import annotations

import time

import numpy as np

from firmware.compiler import plan_layer
from firmware.graph import Graph, Q
from firmware.report import report_from_plan, summarize
from golden.config import ArrayConfig


def add_arguments(p) -> None:
    p.add_argument("--size", type=int, default=512, help="input height = width (default 512)")
    p.add_argument("--rows", type=int, default=None, help="array rows (default ArrayConfig())")
    p.add_argument("--cols", type=int, default=None, help="array cols (default ArrayConfig())")
    p.add_argument("--rtl-size", type=int, default=64, help="input size of the RTL-validated layers (default 64)")
    p.add_argument("--no-rtl", action="store_true", help="skip the RTL validation (Verilator build + simulation)")


def centernet_resnet18(size: int = 512, classes: int = 80) -> Graph:
    """The quantized CenterNet-ResNet18 graph (zero weights: shapes and quantization only).

    DCN 3x3 of the neck replaced by plain 3x3 convs. Every tensor uses one
    int8 quantization (scale 1/16, zp 0) except the uint8 image input.
    """
    g = Graph()
    q = Q(1 / 16, 0, "int8")
    x = g.add_input("image", (1, 3, size, size), Q(1 / 64, 128, "uint8"))

    def conv(name, src, cin, cout, k, s=1, act="relu"):
        w = np.zeros((cout, cin, k, k), np.int8)
        return g.conv2d(name, src, w, None, 1 / 256, q, stride=s, padding=k // 2, act=act)

    y = conv("conv1", x, 3, 64, 7, 2)
    y = g.max_pool("maxpool", y, 3, stride=2, padding=1)
    cin = 64
    for si, cout in enumerate((64, 128, 256, 512), start=1):
        for bi in range(2):
            s = 2 if (si > 1 and bi == 0) else 1
            p = f"layer{si}.{bi}"
            a = conv(f"{p}.conv1", y, cin, cout, 3, s)
            b = conv(f"{p}.conv2", a, cout, cout, 3, 1, act=None)
            idn = conv(f"{p}.downsample", y, cin, cout, 1, s, act=None) if (s != 1 or cin != cout) else y
            y = g.add_op(f"{p}.add", b, idn, q, act="relu")
            cin = cout
    for i, cout in enumerate((256, 128, 64)):
        y = conv(f"neck{i}.conv", y, cin, cout, 3)
        w = np.zeros((cout, cout, 4, 4), np.int8)
        y = g.conv_transpose2d(f"neck{i}.up", y, w, None, 1 / 256, q, stride=2, padding=1, act="relu")
        cin = cout
    for head, n_out in (("hm", classes), ("wh", 2), ("reg", 2)):
        h = conv(f"{head}.conv", y, 64, 64, 3)
        conv(f"{head}.out", h, 64, n_out, 1, act=None)
    return g


#: Layers of ``centernet_resnet18`` validated on the RTL: a 7x7/2 conv on the uint8 image, a 3x3 conv,
#: a strided 1x1 conv, the transposed conv of the neck and a 1x1 head.
RTL_LAYERS = ("conv1", "layer1.0.conv1", "layer2.0.downsample", "neck2.up", "hm.out")
#: Counters compared with TopTimer over the whole command stream (GoldenDevice's values).
_STREAM_SLOTS = ("CYCLES", "BUSY_CYCLES", "USEFUL_MACS", "JOBS_DONE", "OUT_STALL_CYCLES", "CMDS_DROPPED")


def _rtl_node(node, in_shape, rng):
    """``node`` with random int8 weights and biases (same geometry and quantization), scaled so that
    the outputs spread over the int8 range, and a random input of ``in_shape``."""
    from firmware.graph import Conv2d, ConvTranspose2d
    w = rng.integers(-127, 128, node.weight.shape).astype(np.int8)
    if isinstance(node, ConvTranspose2d):        # taps per sub-pixel phase times input channels per group
        ci, _, kh, kw_ = node.weight.shape
        k = ci // node.groups * -(-kh // node.stride[0]) * -(-kw_ // node.stride[1])
    else:
        k = int(np.prod(node.weight.shape[1:]))
    qin, qout = node.in_q[0], node.out
    acc_std = np.sqrt(max(k, 1)) * 73.0 * 74.0
    w_scale = float(np.float32(40.0 / acc_std * qout.scale / qin.scale))
    bias = rng.integers(-2000, 2000, node.n_out).astype(np.int32)
    kw = dict(stride=node.stride, padding=node.padding, dilation=node.dilation, groups=node.groups, act=node.act)
    if isinstance(node, ConvTranspose2d):
        new = ConvTranspose2d(node.name, node.inputs[0], qin, w, bias, w_scale, qout,
                              output_padding=node.output_padding, **kw)
    else:
        new = Conv2d(node.name, node.inputs[0], qin, w, bias, w_scale, qout, **kw)
    lo, hi = (0, 256) if qin.dtype == "uint8" else (-128, 128)
    return new, rng.integers(lo, hi, in_shape).astype(qin.dtype)


def rtl_validation(args) -> dict:
    """Run ``RTL_LAYERS`` (reduced input size) on the Verilator RTL and compare counters with the model.

    See the module docstring for what is compared and the keys returned. Real measurements only:
    if the model cannot be built or the simulation fails, the result is ``{"rtl_error": ...}``.
    """
    if getattr(args, "no_rtl", False):
        return {}
    from firmware.driver import run_layer
    from firmware.golden_device import GoldenDevice
    from sim.build import BUILD_ROOT
    from sim.build_top import build_top, run_top

    size = getattr(args, "rtl_size", 64) or 64
    cfg = ArrayConfig(**{k: getattr(args, k) for k in ("rows", "cols") if getattr(args, k, None)})
    g = centernet_resnet18(size).fuse()
    nodes = {n.name: n for n in g.nodes}
    rng = np.random.default_rng(2024)
    tasks = []
    for name in RTL_LAYERS:
        node, x = _rtl_node(nodes[name], g.in_shapes(nodes[name])[0], rng)
        tasks.append({"name": name, "kind": "layer", "node": node, "x": x, "timeout_s": 600.0})
    t0 = time.perf_counter()
    try:
        model = build_top(cfg)
        build_s = time.perf_counter() - t0
        res = run_top(model, {"cfg": cfg, "host": {}, "tasks": tasks}, BUILD_ROOT / "sim_runs" / "bench-network")
    except Exception as e:  # noqa: BLE001 - reported instead of numbers
        return {"rtl_error": f"{type(e).__name__}: {e}"}
    if res.get("error") or len(res.get("tasks", [])) != len(tasks):
        return {"rtl_error": f"simulation failed: {res.get('error')} (log {res.get('log')})"}
    layers, mismatches, out_bad = [], 0, 0
    for task, r in zip(tasks, res["tasks"]):
        node, x = task["node"], task["x"]
        if r["error"] is not None:
            return {"rtl_error": f"layer {task['name']}: {r['error']['type']}: {r['error']['message']}"}
        m, rep = r["report"]["measured"], r["report"]
        _, grep_ = run_layer(GoldenDevice(cfg), node, x)
        expected = {s: grep_.measured[s] for s in _STREAM_SLOTS}
        expected["IN_STALL_CYCLES"] = int(rep["losses"]["core_stall"])
        plan = {"BUSY_CYCLES": rep["busy_cycles"], "USEFUL_MACS": rep["lane_slot_macs"], "JOBS_DONE": rep["runs"]}
        diff = {s: {"rtl": m[s], "model": v} for s, v in expected.items() if m[s] != v}
        diff.update({f"{s} (plan)": {"rtl": m[s], "model": v} for s, v in plan.items() if m[s] != v})
        exact = bool(np.array_equal(r["output"], node.reference([x])))
        mismatches += bool(diff)
        out_bad += not exact
        layers.append({"name": task["name"], "kind": type(node).__name__, "input_shape": list(x.shape),
                       "output_shape": list(r["output"].shape), "macs": rep["macs"], "runs": rep["runs"],
                       "measured": m, "model": {**expected, **{f"{s}_plan": v for s, v in plan.items()}},
                       "counters_equal": not diff, "differences": diff, "output_bit_exact": exact,
                       "utilization_rtl": round(rep["macs"] / (m["CYCLES"] * cfg.rows * cfg.out_lanes), 4),
                       "sim_cycles": r["cycles"], "wall_seconds": r["seconds"]})
    return {
        "rtl_validated_layers": len(layers),
        "rtl_cycle_model_mismatches": mismatches,
        "rtl_output_mismatches": out_bad,
        "rtl_layers": layers,
        "rtl_sim": {"config": {"rows": cfg.rows, "cols": cfg.cols, "out_lanes": cfg.out_lanes,
                               "bus_bytes": cfg.bus_bytes, "act_depth": cfg.act_depth, "wgt_depth": cfg.wgt_depth,
                               "param_depth": cfg.param_depth, "out_depth": cfg.out_depth},
                    "input_size": size, "model_key": model.key, "model_built_now": model.fresh,
                    "build_seconds": round(build_s, 1), "simulated_cycles": res["cycles"],
                    "sim_wall_seconds": res["seconds"], "cycles_per_second": res["cycles_per_second"],
                    "host": "ideal (cmd/din valid whenever queued, dout always ready)"},
    }


def _why(r) -> str:
    worst = max(r.losses.items(), key=lambda kv: kv[1])
    return f"largest loss: {worst[0]} ({worst[1]:.0f} cycles of {r.cycles})"


def run(args) -> dict:
    size = getattr(args, "size", 512) or 512
    kw = {}
    if getattr(args, "rows", None):
        kw["rows"] = args.rows
    if getattr(args, "cols", None):
        kw["cols"] = args.cols
    cfg = ArrayConfig(**kw)
    t0 = time.perf_counter()
    g = centernet_resnet18(size).fuse()
    reports, layers, host = [], [], []
    for n in g.nodes:
        if not n.on_array:
            host.append(n.name)
            continue
        plan = plan_layer(n, g.in_shapes(n)[0], cfg)
        r = report_from_plan(plan)
        reports.append(r)
        layers.append({"name": r.name, "kind": r.kind, "macs": r.macs, "cycles": r.cycles,
                       "utilization": round(r.utilization, 5), "bound": r.bound, "order": r.order,
                       "compute_bound_cycles": r.compute_bound, "stream_bound_words": r.stream_bound,
                       "din_words": r.din_words, "dout_words": r.dout_words, "runs": r.runs,
                       "losses": {k: round(v) for k, v in r.losses.items()}})
    s = summarize(reports, cfg, 100e6)
    out = {
        "config": {"rows": cfg.rows, "cols": cfg.cols, "out_lanes": cfg.out_lanes, "bus_bytes": cfg.bus_bytes,
                   "act_depth": cfg.act_depth, "wgt_depth": cfg.wgt_depth, "param_depth": cfg.param_depth,
                   "out_depth": cfg.out_depth, "macs_per_cycle": cfg.rows * cfg.out_lanes},
        "input_size": size,
        "total_gmac": round(s["total_macs"] / 1e9, 6),
        "total_macs": s["total_macs"],
        "graph_macs": g.macs(),
        "total_cycles": s["total_cycles"],
        "utilization_mac_weighted": round(s["utilization_mac_weighted"], 5),
        "utilization_overall": round(s["utilization_overall"], 5),
        "fps_at_100mhz": round(s["fps"], 3),
        "layers": layers,
        "shortfalls": [{"name": r.name, "utilization": round(r.utilization, 4), "macs": r.macs, "why": _why(r)}
                       for r in reports if r.utilization < 0.95],
        "host_ops": host,
        "timing_model": "firmware.report.TopTimer (ideal host; core timing golden.isa.run_timing / array_model)",
        "compile_seconds": round(time.perf_counter() - t0, 2),
    }
    out.update(rtl_validation(args))
    return out
