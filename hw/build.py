"""``python -m hw.build --target sim|verilog|ulx3s|xcup [--rows R --cols C --packing dual|none --out PATH]``.

* ``verilog``: elaborate ``hw.core.ArrayCore`` for the given shape and write
  its Verilog (module ``array_core``; port names in ``hw.core``'s docstring).
* ``sim``: for now the same elaboration and Verilog, and an honest note: the
  INT8 detector demo on the simulated accelerator does not exist yet. The
  cycle-exact RTL-vs-golden regression runs under pytest (sim/, cocotb).
* ``ulx3s``, ``xcup``: board/FPGA builds are not implemented yet (exit code 2).

Exit codes: 0 done, 2 not implemented or bad arguments (the ValueError's
message names the offending parameter).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from golden.config import PACKING_MODES, ArrayConfig

DEFAULT_OUT = os.path.join("build", "array_core.v")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ArrayConfig)}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hw.build", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", choices=["sim", "verilog", "ulx3s", "xcup"], default="sim")
    p.add_argument("--rows", type=int, default=_DEFAULTS["rows"], help="output pixels per tile")
    p.add_argument("--cols", type=int, default=_DEFAULTS["cols"], help="PE columns")
    p.add_argument("--packing", choices=PACKING_MODES, default=_DEFAULTS["packing"],
                   help="dual: two INT8 MACs per 27x18 multiplier (DSP48E2); none: one")
    p.add_argument("--weight-min", type=int, default=_DEFAULTS["weight_min"], help="-127 (chain 8) or -128 (chain 7)")
    p.add_argument("--max-k", type=int, default=_DEFAULTS["max_k"], help="longest reduction held exactly")
    p.add_argument("--param-fifo-depth", type=int, default=_DEFAULTS["param_fifo_depth"])
    p.add_argument("--out", default=DEFAULT_OUT, help=f"Verilog output path (default {DEFAULT_OUT})")
    return p


def write_verilog(cfg: ArrayConfig, path: str) -> str:
    """Elaborate ArrayCore(cfg) and write its Verilog to ``path``; returns the text."""
    from amaranth.back import verilog

    from .core import ArrayCore
    text = verilog.convert(ArrayCore(cfg), name="array_core")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def _summary(cfg: ArrayConfig, path: str) -> str:
    from .core import input_layout, lut_layout, output_layout, params_layout
    return (f"wrote {path}: module array_core, {cfg.rows}x{cfg.cols} PEs, packing={cfg.packing} "
            f"(chain {cfg.chain}), {cfg.out_lanes} output lanes, {cfg.macs_per_cycle} MACs/cycle, "
            f"latency {cfg.latency} enabled cycles (array {cfg.array_latency}); payload bits: "
            f"inp {input_layout(cfg).size}, params {params_layout(cfg).size}, lut {lut_layout().size}, "
            f"out {output_layout(cfg).size}")


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.target in ("ulx3s", "xcup"):
        print(f"target {args.target}: not implemented yet (no board/FPGA build exists; "
              "`--target verilog` writes the core's Verilog).", file=sys.stderr)
        return 2
    try:
        cfg = ArrayConfig(rows=args.rows, cols=args.cols, packing=args.packing, weight_min=args.weight_min,
                          max_k=args.max_k, param_fifo_depth=args.param_fifo_depth)
        write_verilog(cfg, args.out)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(_summary(cfg, args.out))
    if args.target == "sim":
        print("target sim: the INT8 detector demo on the simulated accelerator is not there yet; this run "
              "only elaborated ArrayCore and wrote its Verilog. The cycle-exact RTL-vs-golden checks run "
              "under pytest (tests/test_hw_*.py and the cocotb regression in sim/).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
