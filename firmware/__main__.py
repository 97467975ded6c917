"""Command line: run ONNX models on the accelerator (docs/onnx.md).

    python -m firmware run MODEL.onnx --input FILE [--backend golden|rtl] [--config default|small|onnx]
                                      [--out OUT.npz] [--compare-ort]
    python -m firmware quantize FLOAT.onnx --calib FILE [--out QDQ.onnx] [--activations int8|uint8]

``run`` imports a QDQ model (firmware.onnx_import.import_qdq), checks that
every array layer fits the array (before anything runs), runs it on the
backend device, prints one line per layer (where it ran, MACs, cycles --
the device's CYCLES counter when it has one --, utilization;
firmware.report) and writes the outputs to ``--out`` (an .npz: each ONNX
output under its name, float32 as onnxruntime returns it). ``--input``: an
.npy (single-input models) or an .npz keyed by input name; float32 inputs
are quantized by the model's QuantizeLinear, int8/uint8 codes are taken as
they are for already-quantized inputs. ``--compare-ort`` also runs
onnxruntime's reference session and reports how many outputs differ (exit
status 1 if any).

``quantize`` turns a float model into the QDQ form with golden/'s toolkit
(``quantize_float_model``), calibrating on the inputs of ``--calib`` (an
.npy/.npz; the first axis of each array enumerates calibration samples).

Backends (``make_device``): ``golden`` = firmware.golden_device.GoldenDevice;
``rtl`` = ``firmware.rtl_device.make_host_device(cfg)``: the Verilator model
of ``hw.top.Accelerator(cfg)`` (built and cached in build/verilator on first
use -- minutes per configuration --, then loaded in seconds) simulated in a
child process that this program drives like the hardware; its progress goes
to stderr and the simulated cycles and wall time are printed after the
table. ``--config``: ``default`` = ``ArrayConfig()`` (the 8x8 array; its
RTL model takes ~10 min to build), ``small`` = ``sim.build_top.SMALL_TOP``
(4x4, 8-byte bus, K <= 256: a ~1-2 min build), ``onnx`` = ``ONNX_TOP``
(SMALL_TOP with 1024-entry act/wgt buffers: K <= 1024, enough for the
project's detector). Exit status 2 for bad input (malformed or
unsupported model, bad input file, a model that does not fit, unavailable
backend), 0 on success.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path

import numpy as np

from golden.config import ArrayConfig

BACKENDS = ("golden", "rtl")
CONFIGS = ("default", "small", "onnx")


#: The hook the RTL backend plugs into: a function of firmware/rtl_device.py returning a
#: firmware.device.Device usable from a plain Python process (``RtlDevice`` itself lives inside a
#: cocotb simulation: ``RtlDevice(dut, cfg)`` in sim.tb_top).
RTL_FACTORY = "make_host_device"


def make_device(backend: str, cfg: ArrayConfig, **rtl_opts):
    """A firmware.device.Device for ``backend`` ("golden" | "rtl").

    "golden": firmware.golden_device.GoldenDevice(cfg). "rtl": the factory
    ``firmware.rtl_device.make_host_device(cfg, **rtl_opts)`` (``RTL_FACTORY``):
    the RTL simulation behind a Device a host program can drive (close it when
    done). RuntimeError if that module or factory is missing.
    """
    if backend == "golden":
        from .golden_device import GoldenDevice
        return GoldenDevice(cfg)
    if backend == "rtl":
        if importlib.util.find_spec("firmware.rtl_device") is None:
            raise RuntimeError("backend 'rtl' is not available: firmware/rtl_device.py does not exist yet; "
                               "use --backend golden")
        mod = importlib.import_module("firmware.rtl_device")
        factory = getattr(mod, RTL_FACTORY, None)
        if factory is None:
            raise RuntimeError(f"backend 'rtl' is not wired yet: firmware.rtl_device has no {RTL_FACTORY}(cfg) "
                               "(RtlDevice(dut, cfg) runs inside a cocotb simulation, sim.tb_top, and cannot be "
                               "driven from this process); use --backend golden")
        return factory(cfg, **rtl_opts)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


def _load_arrays(path: str, what: str) -> dict | np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what} {path}: no such file")
    try:
        z = np.load(p, allow_pickle=False)
    except Exception as e:                                   # not an .npy/.npz
        raise ValueError(f"{what} {path}: not a NumPy .npy/.npz file ({e})") from None
    if isinstance(z, np.ndarray):
        return z
    with z:
        return {k: z[k] for k in z.files}


def _feeds(model, arr) -> dict:
    if isinstance(arr, np.ndarray):
        if len(model.inputs) != 1:
            raise ValueError(f"the model has {len(model.inputs)} inputs {[i.name for i in model.inputs]}: "
                             "give an .npz keyed by input name")
        return {model.inputs[0].name: arr}
    return arr


def _table(model, reports, cfg) -> str:
    from .report import summarize
    rows = [f"{'layer':<44} {'kind':<18} {'where':<5} {'MACs':>12} {'cycles':>10} {'util':>6}"]
    for r in reports:
        name = model.layer_names(r.name)
        name = name if len(name) <= 44 else name[:41] + "..."
        where = "array" if r.on_array else "host"
        util = f"{r.utilization:.3f}" if r.on_array else "-"
        cyc = str(r.measured.get("CYCLES", r.cycles)) if (r.on_array and r.measured) else (str(r.cycles) if r.on_array else "-")
        rows.append(f"{name:<44} {r.kind:<18} {where:<5} {r.macs:>12} {cyc:>10} {util:>6}")
    s = summarize(reports, cfg)
    rows.append(f"array layers: {sum(r.on_array for r in reports)}, host layers: "
                f"{sum(not r.on_array for r in reports)}; total {s['total_macs']} MACs, {s['total_cycles']} "
                f"modelled array cycles, utilization {s['utilization_overall']:.3f}")
    return "\n".join(rows)


def config(name: str) -> ArrayConfig:
    """The ArrayConfig of ``--config``: "default" (ArrayConfig()), "small" / "onnx" (sim.build_top's
    SMALL_TOP / ONNX_TOP)."""
    if name == "default":
        return ArrayConfig()
    if name == "small":
        from sim.build_top import SMALL_TOP
        return SMALL_TOP
    if name == "onnx":
        from sim.build_top import ONNX_TOP
        return ONNX_TOP
    raise ValueError(f"--config must be one of {CONFIGS}, got {name!r}")


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def cmd_run(args) -> int:
    import time

    from .onnx_import import import_qdq, ort_run
    cfg = config(args.config)
    model = import_qdq(args.model, convtranspose=args.convtranspose)
    model.check(cfg)
    feeds = _feeds(model, _load_arrays(args.input, "--input"))
    model.quantize_feeds(feeds)                              # validate before the device is opened
    device = make_device(args.backend, cfg, **({"progress": _stderr} if args.backend == "rtl" else {}))
    try:
        t0 = time.perf_counter()
        outs, reports = model.run(device, feeds, cfg)
        wall = time.perf_counter() - t0
    finally:
        device.close()
    print(_table(model, reports, cfg))
    if args.backend == "rtl":
        print(f"rtl: {device.cycles} simulated cycles in {wall:.1f} s ({device.cycles / max(wall, 1e-9):.0f} "
              f"cycles/s; {device.sim_seconds:.1f} s inside the simulator)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        np.savez(args.out, **outs)
        print(f"outputs {sorted(outs)} written to {args.out}")
    if args.compare_ort:
        ref = ort_run(args.model, feeds)
        bad = {k: int(np.count_nonzero(ref[k].view(np.uint8) != np.asarray(outs[k], ref[k].dtype).view(np.uint8)))
               for k in ref}
        total = sum(int(v.size) for v in ref.values())
        print(f"onnxruntime: {sum(bad.values())} of {total} output values differ {bad}")
        return 1 if any(bad.values()) else 0
    return 0


def cmd_quantize(args) -> int:
    import onnx

    from .onnx_import import load_model, quantize_float_model
    m = load_model(args.model)
    data = _load_arrays(args.calib, "--calib")
    if isinstance(data, np.ndarray):
        ins = [i.name for i in m.graph.input if i.name not in {t.name for t in m.graph.initializer}]
        if len(ins) != 1:
            raise ValueError(f"the model has inputs {ins}: give an .npz keyed by input name")
        data = {ins[0]: data}
    n = min(len(v) for v in data.values())
    calib = [{k: np.asarray(v[i:i + 1], np.float32) for k, v in data.items()} for i in range(n)]
    q = quantize_float_model(m, calib, activation_dtype=args.activations, observer=args.observer)
    out = args.out or str(Path(args.model).with_suffix("")) + ".qdq.onnx"
    onnx.save(q, out)
    print(f"quantized with {n} calibration samples ({args.observer}, {args.activations} activations) -> {out}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware", description="Run ONNX models on the accelerator.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a QDQ ONNX model, print per-layer cycles, write the outputs")
    r.add_argument("model", help="QDQ ONNX model (quantize_static or python -m firmware quantize)")
    r.add_argument("--input", required=True, help=".npy (one input) or .npz {input name: array}")
    r.add_argument("--backend", default="golden", choices=BACKENDS, help="device (default golden)")
    r.add_argument("--config", default="default", choices=CONFIGS,
                   help="array configuration: default = ArrayConfig() (8x8), small = sim.build_top.SMALL_TOP "
                        "(4x4; quick RTL build), onnx = sim.build_top.ONNX_TOP (SMALL_TOP with 1024-entry "
                        "act/wgt buffers: K <= 1024, e.g. the detector)")
    r.add_argument("--out", help="write the outputs to this .npz")
    r.add_argument("--compare-ort", action="store_true", help="also run onnxruntime and count differing outputs")
    r.add_argument("--convtranspose", default="float", choices=("float", "array"),
                   help="QDQ ConvTranspose: onnxruntime's float path on the host (bit-exact, default) or the "
                        "array (integer, ort requantization; may differ from onnxruntime by 1 LSB near ties)")
    q = sub.add_parser("quantize", help="quantize a float ONNX model with golden's calibration (QDQ)")
    q.add_argument("model")
    q.add_argument("--calib", required=True, help=".npy/.npz calibration inputs (first axis = samples)")
    q.add_argument("--out")
    q.add_argument("--activations", default="int8", choices=("int8", "uint8"))
    q.add_argument("--observer", default="minmax", choices=("minmax", "entropy", "percentile"))
    args = ap.parse_args(argv)
    from .onnx_import import OnnxImportError
    try:
        return cmd_run(args) if args.cmd == "run" else cmd_quantize(args)
    except (OnnxImportError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
