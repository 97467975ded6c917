"""``python -m hw.build --target sim|verilog|ulx3s|xcup [--top accelerator|core] [--rows R --cols C ...] [--out PATH]``.

* ``verilog``: elaborate the chosen top for the given configuration and write
  its Verilog: ``--top accelerator`` (default) ``hw.top.Accelerator``, module
  ``accelerator`` (ports in ``hw.top``'s docstring, default path
  build/accelerator.v); ``--top core`` ``hw.core.ArrayCore``, module
  ``array_core`` (ports in ``hw.core``'s docstring, default path
  build/array_core.v). Buffer depths and the bus width (``--bus-bytes``,
  ``--act-depth``, ...) only shape the accelerator.
* ``sim`` (the default, the main job; ``hw.demo``, docs/demo.md): quantize the
  digit detector to INT8, elaborate ``hw.top.Accelerator`` for the configuration
  and build its Verilator model (cached), run the detector on the images
  (``--images test:0-1`` by default: bundled test canvases; or 96x96 grayscale
  .png/.npy files) through firmware/ on the simulated accelerator, check every
  layer bit-exact against the host reference, print the per-layer table
  (cycles, MACs, utilization) and the detections, and write a PNG per image and
  report.json to ``--out-dir`` (default build/demo/). Its own options:
  ``--images``, ``--out-dir``, ``--backend rtl|golden``, ``--k``, ``--score``,
  ``--layers N``, ``--progress auto|on|off``; ``--top`` must stay accelerator.
* ``ulx3s``, ``xcup``: the FPGA flows of ``hw.fpga`` (docs/fpga.md), with
  their own options (``python -m hw.fpga ulx3s --help``): ``ulx3s`` builds
  the ULX3S-85F bitstream (yosys, nextpnr-ecp5, ecppack from YoWASP) of the
  accelerator behind the UART bridge and reports Fmax, the critical path and
  LUT4/FF/MULT18X18D/DP16KD use; ``xcup`` is the synth_xilinx -family xcup
  resource estimate (no vendor place and route). Shape options default to
  ``hw.fpga.ULX3S_CFG`` / ``ArrayConfig()``. Exit code 1: a tool failed (its
  last lines are printed).

Exit codes: 0 done (``sim``: and every layer bit-exact), 1 an FPGA tool failed
or (``sim``) a layer differs from its reference / the simulated device or its
build failed, 2 bad arguments or input images (one line naming the offending
parameter or file, no traceback).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from golden.config import PACKING_MODES, ArrayConfig

TOPS = {"accelerator": "accelerator", "core": "array_core"}      # --top -> Verilog module name
DEFAULT_OUT = {top: os.path.join("build", f"{name}.v") for top, name in TOPS.items()}
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ArrayConfig)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["sim", "verilog", "ulx3s", "xcup"], default="sim")
    p.add_argument("--top", choices=list(TOPS), default="accelerator",
                   help="accelerator: hw.top.Accelerator (default); core: hw.core.ArrayCore")
    p.add_argument("--rows", type=int, default=_DEFAULTS["rows"], help="output pixels per tile")
    p.add_argument("--cols", type=int, default=_DEFAULTS["cols"], help="PE columns")
    p.add_argument("--packing", choices=PACKING_MODES, default=_DEFAULTS["packing"],
                   help="dual: two INT8 MACs per 27x18 multiplier (DSP48E2); none: one")
    p.add_argument("--weight-min", type=int, default=_DEFAULTS["weight_min"], help="-127 (chain 8) or -128 (chain 7)")
    p.add_argument("--max-k", type=int, default=_DEFAULTS["max_k"], help="longest reduction held exactly")
    p.add_argument("--param-fifo-depth", type=int, default=_DEFAULTS["param_fifo_depth"])
    for name, what in (("bus_bytes", "din/dout width in bytes"), ("act_depth", "activation beats per bank"),
                       ("wgt_depth", "weight beats per bank"), ("param_depth", "params sets per bank"),
                       ("out_depth", "output rows per bank")):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=_DEFAULTS[name], help=what)
    p.add_argument("--out", default=None,
                   help=f"Verilog output path (default {DEFAULT_OUT['accelerator']} or {DEFAULT_OUT['core']})")
    from .demo import add_arguments
    g = p.add_argument_group("--target sim (the main job, docs/demo.md)")
    add_arguments(g)
    return p


def write_verilog(cfg: ArrayConfig, path: str, top: str = "core") -> str:
    """Elaborate ``top`` ("core": ArrayCore, "accelerator": Accelerator) for ``cfg`` and write its
    Verilog to ``path``; returns the text. (The function's default stays "core" for existing callers.)"""
    from amaranth.back import verilog

    if top not in TOPS:
        raise ValueError(f"top must be one of {list(TOPS)}, got {top!r}")
    if top == "core":
        from .core import ArrayCore
        dut = ArrayCore(cfg)
    else:
        from golden.isa import layout

        from .top import Accelerator
        layout(cfg)                    # ValueError before any elaboratable exists
        dut = Accelerator(cfg)
    text = verilog.convert(dut, name=TOPS[top])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def _summary(cfg: ArrayConfig, path: str, top: str = "core") -> str:
    from .core import input_layout, lut_layout, output_layout, params_layout
    if top == "accelerator":
        from golden.config import BANKS
        from golden.isa import JOB_QUEUE_DEPTH
        return (f"wrote {path}: module accelerator, {cfg.rows}x{cfg.cols} PEs, packing={cfg.packing}, "
                f"{cfg.out_lanes} output lanes, {cfg.macs_per_cycle} MACs/cycle; cmd 128 bits, din/dout "
                f"{cfg.bus_bytes * 8} data bits + last; banks x depth: act {BANKS}x{cfg.act_depth}, wgt {BANKS}x{cfg.wgt_depth}, "
                f"params {BANKS}x{cfg.param_depth} ({params_layout(cfg).size} bits each), out {BANKS}x{cfg.out_depth}; "
                f"job queue {JOB_QUEUE_DEPTH}")
    return (f"wrote {path}: module array_core, {cfg.rows}x{cfg.cols} PEs, packing={cfg.packing} "
            f"(chain {cfg.chain}), {cfg.out_lanes} output lanes, {cfg.macs_per_cycle} MACs/cycle, "
            f"latency {cfg.latency} enabled cycles (array {cfg.array_latency}); payload bits: "
            f"inp {input_layout(cfg).size}, params {params_layout(cfg).size}, lut {lut_layout().size}, "
            f"out {output_layout(cfg).size}")


def main(argv=None) -> int:
    args, extra = _parser().parse_known_args(argv)
    if args.target in ("ulx3s", "xcup"):
        from .fpga import cli
        return cli(args.target, sys.argv[1:] if argv is None else list(argv))
    if extra:
        _parser().error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        cfg = ArrayConfig(rows=args.rows, cols=args.cols, packing=args.packing, weight_min=args.weight_min,
                          max_k=args.max_k, param_fifo_depth=args.param_fifo_depth, bus_bytes=args.bus_bytes,
                          act_depth=args.act_depth, wgt_depth=args.wgt_depth, param_depth=args.param_depth,
                          out_depth=args.out_depth)
        if args.target == "sim":
            from golden.isa import layout
            layout(cfg)                # ValueError (descriptors do not fit) before any work
            if args.top != "accelerator":
                raise ValueError("--target sim runs the accelerator top; --top core is for --target verilog")
            if args.out is not None:
                raise ValueError("--out is the Verilog path of --target verilog; --target sim writes to --out-dir")
        else:
            out = args.out or DEFAULT_OUT[args.top]
            write_verilog(cfg, out, top=args.top)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.target == "sim":
        from .demo import main as demo_main
        return demo_main(args, cfg)
    print(_summary(cfg, out, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
