"""``python -m bench fpga [--json PATH]``: the FPGA numbers (docs/fpga.md).

Runs ``hw.fpga.build_ulx3s`` (yosys + nextpnr-ecp5 + ecppack for the
ULX3S-85F, ``hw.fpga.ULX3S_CFG`` unless ``--rows``/``--cols``/``--packing``
say otherwise) and ``hw.fpga.estimate_xcup`` (synth_xilinx -family xcup of
the full default ArrayConfig), and returns::

    fmax_mhz           Fmax of the ULX3S top (best place-and-route pass), per nextpnr
    fmax_target_mhz    the target (150)
    ecp5               {LUT4, FF, MULT18X18D, DP16KD: {used, available}}, bitstream pass
    ecp5_passes        per pass: PLL clock, Fmax, met, tool times, the nextpnr seed kept (``--seeds N``:
                       every routed seed's Fmax) and the seeds given up
    ecp5_critical_path nextpnr's worst clock-to-clock path (delay, blocks it crosses)
    ecp5_endpoints     every clocked endpoint: count, late (> period), arrival p50/p90/max
    ecp5_timing_by_block  the 12 worst blocks: endpoints, late ones by kind, worst arrival and net
    bitstream_bytes    size of ulx3s.bit (ecppack --compress)
    xcup               {DSP48E2, LUT, FF, BRAM36, ...} (yosys mapping; no vendor P&R here)
    macs_per_dsp48e2   INT8 MACs per cycle per DSP48E2 of the PE array
    ...                configs, per-pass details, tool run times

The flows take a long time (tens of minutes on two cores); every tool runs
with a timeout (``--yosys-timeout``, ``--nextpnr-timeout``), and a failing
tool ends the benchmark with its own last lines (``hw.fpga.ToolError``).
The build directories are ``build/ulx3s`` and ``build/xcup`` (those of
``python -m hw.build``): a place-and-route pass or synthesis whose RTLIL,
constraints and options did not change is reused, not rerun. ``--reuse DIR``
only reads the reports in DIR/ulx3s and DIR/xcup: the ULX3S report must be of
``ULX3S_CFG`` with the ``--rows``/``--cols``/``--packing`` given, else it may be
of any configuration (e.g. a smaller top whose place and route finishes in
reasonable time: docs/fpga.md "Timing"); ``ecp5_cfg`` says which.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def add_arguments(p) -> None:
    p.add_argument("--out-dir", default="build",
                   help="parent of the ulx3s/ and xcup/ build directories (shared with python -m hw.build, whose "
                        "unchanged passes are reused)")
    p.add_argument("--rows", type=int, default=None)
    p.add_argument("--cols", type=int, default=None)
    p.add_argument("--packing", choices=["dual", "none"], default=None)
    p.add_argument("--freq", type=float, default=None, help="ULX3S target MHz (default hw.fpga.TARGET_MHZ)")
    p.add_argument("--skip-xcup", action="store_true")
    p.add_argument("--skip-ulx3s", action="store_true")
    p.add_argument("--no-compare", action="store_true", help="skip the ECP5 packing comparison synthesis")
    p.add_argument("--reuse", default=None, help="read DIR/ulx3s/report.json and DIR/xcup/report.json")
    p.add_argument("--seeds", type=int, default=1, help="nextpnr placements per pass, the fastest kept (hw.fpga)")
    p.add_argument("--jobs", type=int, default=1, help="nextpnr runs at once")
    p.add_argument("--yosys-timeout", type=float, default=3600)
    p.add_argument("--nextpnr-timeout", type=float, default=10800)


def _load(path: Path, cfg, free=()) -> dict:
    """A report whose configuration is ``cfg`` except for the fields in ``free``."""
    rep = json.loads(path.read_text())
    want = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in free}
    got = {k: v for k, v in rep["cfg"].items() if k not in free}
    if got != want:
        raise ValueError(f"{path} was built for {rep['cfg']}, not {dataclasses.asdict(cfg)}"
                         + (f" (any {', '.join(free)})" if free else ""))
    return rep


def run(args) -> dict:
    from golden.config import ArrayConfig
    from hw import fpga

    given = {k: v for k, v in (("rows", args.rows), ("cols", args.cols), ("packing", args.packing)) if v is not None}
    if "packing" in given:
        given["chain"] = None
    cfg = dataclasses.replace(fpga.ULX3S_CFG, **given)
    xcfg = ArrayConfig()
    target = fpga.TARGET_MHZ if args.freq is None else args.freq
    out = Path(args.out_dir)
    result = {"fmax_target_mhz": target}
    if not args.skip_ulx3s:
        if args.reuse:
            # Without an explicit shape, the report of whatever top was built there is accepted
            # (ecp5_cfg says which), e.g. a small top built for a quick timing iteration.
            free = () if given else tuple(dataclasses.asdict(cfg))
            u = _load(Path(args.reuse) / "ulx3s" / "report.json", cfg, free)
        else:
            u = fpga.build_ulx3s(cfg, out / "ulx3s", target_mhz=target, compare_packing=not args.no_compare,
                                 timeouts={"yosys": args.yosys_timeout, "nextpnr": args.nextpnr_timeout},
                                 seeds=args.seeds, jobs=args.jobs)
        result.update({
            "fmax_mhz": u["fmax_mhz"], "fmax_target_met": u["target_met"],
            "ecp5": {k: v for k, v in u["resources"].items()},
            "ecp5_device": u["device"], "ecp5_cfg": u["cfg"], "ecp5_macs_per_cycle": u["macs_per_cycle"],
            "ecp5_critical_path": {k: v for k, v in (u["critical_path"] or {}).items() if k != "cells"},
            "bitstream_bytes": u["bitstream_bytes"], "bitstream_clock_mhz": u["bitstream_clock_mhz"],
            "bitstream_timing_met": u["bitstream_timing_met"],
            # per pass: the kept nextpnr seed, and every routed seed's Fmax when several were placed
            "ecp5_passes": [{k: p[k] for k in ("clock_mhz", "fmax_mhz", "met", "synth_seconds", "pnr_seconds", "seed",
                                               "seed_fmax_mhz", "stalled_seeds") if k in p}
                            for p in u["passes"]],
            # every clocked endpoint of the best pass: how many miss the period, and where (per block)
            "ecp5_endpoints": max(u["passes"], key=lambda p: p["fmax_mhz"]).get("endpoints"),
            "ecp5_timing_by_block": max(u["passes"], key=lambda p: p["fmax_mhz"]).get("timing_by_block", [])[:12],
            "ecp5_packing_comparison": {k: ({"macs_per_cycle": v["macs_per_cycle"], "synth_cells": v["synth_cells"]}
                                            if isinstance(v, dict) and "synth_cells" in v else v)
                                        for k, v in (u.get("packing_comparison") or {}).items()},
        })
    if not args.skip_xcup:
        if args.reuse:
            x = _load(Path(args.reuse) / "xcup" / "report.json", xcfg)
        else:
            x = fpga.estimate_xcup(xcfg, out / "xcup", timeout_s=args.yosys_timeout)
        result.update({"xcup": x["resources"], "xcup_note": x["note"], "xcup_cfg": x["cfg"],
                       "xcup_macs_per_cycle": x["macs_per_cycle"], "macs_per_dsp48e2": x["macs_per_dsp48e2"],
                       "macs_per_dsp48e2_whole_design": x["macs_per_dsp48e2_whole_design"],
                       "xcup_pe_dsp48e2": x["pe_dsp48e2"]})
    return result
