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

RTL validation hook: ``rtl_validation(args)`` returns the keys
``rtl_validated_layers`` / ``rtl_cycle_model_mismatches`` once the RTL
device (cocotb) runs layers of this network and compares its counters with
the cycle model; until then it returns {} and ``run`` reports neither key.
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


def rtl_validation(args) -> dict:
    """Hook for the RTL run: {'rtl_validated_layers': [...], 'rtl_cycle_model_mismatches': N}.

    To be implemented with the cocotb/Verilator device (firmware.device.Device)
    by the RTL helper: run layers of ``centernet_resnet18`` (scaled down) on
    the RTL and compare BUSY_CYCLES/USEFUL_MACS with firmware.report.TopTimer.
    Returns {} until then: no numbers are reported that were not measured.
    """
    return {}


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
