"""One frame of the INT8 digit detector on the RTL simulation: ``python -m bench demo [--json PATH]``.

The main job's code path (``hw.demo.run_demo``, what ``python -m hw.build --target sim``
runs) on ONE image: quantize (``detector.quantize``), build or load the cached Verilator
model of ``hw.top.Accelerator(cfg)``, then time the frame -- every layer of the fused graph
through ``firmware.driver.run_layer`` on ``firmware.rtl_device.make_host_device`` (the
simulator in a child process), each output compared with the host reference.

Keys: ``frame_seconds`` (wall time of the frame's simulation after the build and the
simulator start-up; target ``TARGET_FRAME_SECONDS``), ``bit_exact_layers`` / ``layers``
(layer outputs equal to the reference / layers run), ``build_seconds`` (elaboration +
Verilator build, or the cache lookup), ``model_cached``, ``device_start_seconds``
(simulator launch and reset), ``quantize_seconds``, ``reference_seconds``,
``simulator_seconds`` (the part of the frame spent inside the simulator; the rest is the
host's firmware: compiling, packing and unpacking), ``simulated_cycles`` and ``cycles_per_second`` (simulated cycles of the frame per wall
second), ``model_cycles`` (the cycle model's sum over the array layers), ``config``,
``image``, ``hits`` (ground-truth digits found at IoU >= 0.5 with score >= ``--score``)
and ``mAP`` of the image. Progress and tables go to stderr; the JSON to stdout.
"""
from __future__ import annotations

import argparse
import sys

from golden.config import PACKING_MODES, ArrayConfig

TARGET_FRAME_SECONDS = 30.0
_D = ArrayConfig()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=_D.rows, help=f"output pixels per tile (default {_D.rows})")
    p.add_argument("--cols", type=int, default=_D.cols, help=f"PE columns (default {_D.cols})")
    p.add_argument("--packing", choices=PACKING_MODES, default=_D.packing, help=f"default {_D.packing}")
    p.add_argument("--image", default="test:0", help="one image: a bundled canvas (test:N, val:N) or a "
                                                     "96x96 grayscale .png/.npy (default test:0)")
    p.add_argument("--backend", choices=("rtl", "golden"), default="rtl",
                   help="rtl (default); golden: GoldenDevice, to check the harness without the RTL")
    p.add_argument("--out-dir", default="build/bench_demo", help="PNG and report.json (default build/bench_demo)")
    p.add_argument("--score", type=float, default=0.3, help="score threshold for hits (default 0.3)")


def run(args) -> dict:
    from hw import demo

    try:
        cfg = ArrayConfig(rows=args.rows, cols=args.cols, packing=args.packing)
        ns = argparse.Namespace(images=[args.image], out_dir=args.out_dir, backend=args.backend, k=100,
                                score=args.score, layers=None)
        images = demo.validate(ns)
        if len(images) != 1:
            raise demo.InputError(f"--image {args.image!r}: give exactly one image (it names {len(images)})")
        report = demo.run_demo(cfg, images, backend=args.backend, out_dir=args.out_dir, threshold=args.score,
                               progress=sys.stderr.isatty(), log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:                      # InputError included: bad arguments, image or configuration
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    (im,) = report["images"]
    t = report["timings"]
    return {
        "frame_seconds": im["frame_seconds"],
        "target_frame_seconds": TARGET_FRAME_SECONDS,
        "meets_target": im["frame_seconds"] <= TARGET_FRAME_SECONDS,
        "bit_exact_layers": im["bit_exact_layers"],
        "layers": im["run_layers"],
        "bit_exact": report["bit_exact"],
        "first_mismatch": im["first_mismatch"],
        "device_error": im["error"],
        "build_seconds": t["build_seconds"],
        "model_cached": None if report["model"] is None else report["model"]["cached"],
        "simulator_seconds": im["simulator_seconds"],
        "device_start_seconds": t["device_start_seconds"],
        "quantize_seconds": t["quantize_seconds"],
        "reference_seconds": im["reference_seconds"],
        "simulated_cycles": im["simulated_cycles"],
        "cycles_per_second": im["cycles_per_second"],
        "model_cycles": report["graph"]["model_cycles"],
        "backend": report["backend"],
        "config": report["config"],
        "image": im["source"],
        "hits": im["hits"],
        "mAP": im["mAP"],
        "report": report["report"],
    }
