"""The accelerator top in RTL (Verilator via cocotb) behind the Device interface: the firmware runs unchanged.

Every test here drives ``hw.top.Accelerator`` through ``firmware.rtl_device.RtlDevice``
(sim/tb_top.py runs the programs in ONE simulation per configuration, built and cached by
sim/build_top.py) and compares with golden/ and with ``firmware.golden_device.GoldenDevice``
running the very same program:

1. whole layers of many shapes through ``firmware.driver.run_layer`` (conv with
   stride/padding/dilation, rectangular kernels, grouped and depthwise, 1x1 with K < rows, FC,
   transposed convs incl. phases without taps, uint8/int8, ReLU/ReLU6/clamp/PReLU/LUT,
   onnxruntime-mode requantization, every RUN order, many chunks): output bit-exact with the
   node's golden reference AND with GoldenDevice;
2. the performance counters of those layers (READ_STATUS) equal the cycle model: CYCLES,
   BUSY_CYCLES, USEFUL_MACS, JOBS_DONE, CMDS_DROPPED, OUT_STALL_CYCLES equal GoldenDevice's
   (whose CYCLES/BUSY come from firmware.report.TopTimer), IN_STALL_CYCLES / BUSY_CYCLES /
   USEFUL_MACS / JOBS_DONE equal the plan's TopTimer report; with random backpressure on dout
   and gaps on cmd/din the outputs stay exact, MACs/jobs are unchanged, and OUT_STALL_CYCLES
   equals the stalls the host saw;
3. a fuzz program: random malformed descriptors (bad opcode, reserved bits, every range rule)
   and payload framing errors (early / missing ``last``) interleaved with random valid jobs:
   every valid job's rows equal ``golden.array_model.tile_value`` of the data it wrote, every
   bad command is flagged exactly as ``golden.isa.descriptor_errors`` says (LENGTH_MISMATCH for
   framing) and counted, the device never hangs, and every received word equals GoldenDevice's;
4. timeouts: a dropped READ_OUT, a WRITE whose payload never comes and a link that loses din
   words mid-layer raise DeviceTimeout naming the awaited command (and the layer).

A failing check re-runs the failing tasks with tracing and names the waveform (FST) in the
message, as tests/test_rtl_core.py does.
"""
from __future__ import annotations

import fcntl
import os
import pickle
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from firmware.compiler import ORDERS, kmax
from firmware.device import DeviceTimeout
from firmware.driver import run_layer
from firmware.golden_device import GoldenDevice
from firmware.graph import Conv2d, ConvTranspose2d, FullyConnected, LutSpec, Q
from golden import isa, ops
from golden.array_model import params_from_layer, tile_value
from golden.config import ArrayConfig
from golden.isa import Flag, Op, Slot
from sim.build import BUILD_ROOT
from sim.build_top import SMALL_TOP, build_top, run_top

RUNS = BUILD_ROOT / "sim_runs"

#: A second, deliberately awkward configuration: odd rows, no packing (5 lanes), full-range weights,
#: a 4-byte bus so that wgt/out/params entries span several words, 2 params sets per bank.
NOPACK_TOP = ArrayConfig(rows=3, cols=5, packing="none", weight_min=-128, max_k=1024, param_fifo_depth=2,
                         bus_bytes=4, act_depth=256, wgt_depth=160, param_depth=2, out_depth=30)
CFGS = {"small": SMALL_TOP, "nopack": NOPACK_TOP}

#: Counters that depend only on the work done, not on the host's timing.
WORK_SLOTS = ("USEFUL_MACS", "JOBS_DONE", "CMDS_DROPPED")
#: Every counter: with an ideal host RTL and the cycle model agree on all of them.
ALL_SLOTS = ("CYCLES", "BUSY_CYCLES", "USEFUL_MACS", "IN_STALL_CYCLES", "OUT_STALL_CYCLES", "CMDS_DROPPED",
             "JOBS_DONE")
BACKPRESSURE = {"dout_ready_prob": 0.55, "din_valid_prob": 0.7, "cmd_valid_prob": 0.6}


# --------------------------------------------------------------------------- layer cases
def f32(v):
    """float32-representable scales (every implementation forms the same multiplier)."""
    return np.asarray(v, np.float32).astype(np.float64)


def rand_act(rng, shape, dtype):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(dtype)


def layer_case(name: str, cfg: ArrayConfig, rng):
    """(node, x) of one named layer case; weights use cfg.weight_min (full range on -128 configs)."""
    wlo = cfg.weight_min
    qu = Q(float(f32(0.019)), 127, "uint8")
    qi = Q(float(f32(0.015)), -5, "int8")
    qo8 = Q(float(f32(0.08)), 4, "int8")
    qou = Q(float(f32(0.06)), 118, "uint8")

    def wgt(shape):
        return rng.integers(wlo, 128, shape).astype(np.int8)

    def conv(cin, cout, k, dtype_in, out, *, groups=1, per_channel=True, mode="tflite", **kw):
        kh, kw_ = (k, k) if isinstance(k, int) else k
        b = rng.integers(-2500, 2500, cout).astype(np.int32)
        ws = f32(rng.uniform(0.002, 0.02, cout)) if per_channel else float(f32(0.007))
        return Conv2d(name, "x", qu if dtype_in == "uint8" else qi, wgt((cout, cin // groups, kh, kw_)), b, ws, out,
                      groups=groups, mode=mode, **kw)

    def convt(cin, cout, k, dtype_in, out, groups=1, **kw):
        b = rng.integers(-2000, 2000, cout).astype(np.int32)
        return ConvTranspose2d(name, "x", qu if dtype_in == "uint8" else qi, wgt((cin, cout // groups, k, k)), b,
                               f32(rng.uniform(0.002, 0.02, cout)), out, groups=groups, **kw)

    if name == "conv3x3_u8_relu_chunks":          # 126 px, K=54, 13 ch: several act chunks, partial tile/block
        return conv(6, 13, 3, "uint8", qo8, padding=1, act="relu"), rand_act(rng, (2, 6, 7, 9), "uint8")
    if name == "conv_s2_dil2_asym_relu6":
        return (conv(4, 7, 3, "int8", qou, stride=2, dilation=2, padding=(1, 0, 2, 1), act="relu6"),
                rand_act(rng, (1, 4, 11, 9), "int8"))
    if name == "conv_rect_per_tensor":
        return (conv(3, 6, (1, 3), "uint8", qou, stride=(1, 2), padding=(0, 1), per_channel=False),
                rand_act(rng, (1, 3, 5, 8), "uint8"))
    if name == "conv_groups3_clamp":
        return conv(6, 6, 3, "int8", qo8, groups=3, padding=1, act=(-20, 90)), rand_act(rng, (1, 6, 6, 5), "int8")
    if name == "depthwise_prelu":
        alpha = f32(rng.uniform(0.05, 0.4, 9))
        return conv(9, 9, 3, "int8", qo8, groups=9, padding=1, prelu=alpha), rand_act(rng, (1, 9, 6, 7), "int8")
    if name == "conv1x1_s2_sigmoid_lut":
        t = ops.make_lut(ops.sigmoid_f64, qi.scale, qi.zp, qi.dtype, 1 / 256, 0, "uint8", sigma=ops.SIGMOID_SIGMA)
        return (conv(6, 9, 1, "uint8", qi, stride=2, lut=LutSpec(t, Q(1 / 256, 0, "uint8"))),
                rand_act(rng, (2, 6, 7, 7), "uint8"))
    if name == "conv1x1_k_lt_rows":                # K = 2 < rows: tile-gap stalls, back to back jobs
        return conv(2, 5, 1, "int8", qo8, act="relu"), rand_act(rng, (1, 2, 6, 5), "int8")
    if name == "conv3x3_big_k_ort":                # K = 9 * C close to k_max, onnxruntime requantization
        c = kmax(cfg) // 9
        return conv(c, 10, 3, "uint8", qou, padding=1, mode="ort"), rand_act(rng, (1, c, 4, 5), "uint8")
    if name == "fc_leaky":
        return (FullyConnected(name, "x", qi, wgt((11, 50)), rng.integers(-5000, 5000, 11).astype(np.int32),
                               f32(rng.uniform(0.001, 0.01, 11)), qou, prelu=0.1), rand_act(rng, (3, 50), "int8"))
    if name == "fc_u8_relu":
        return (FullyConnected(name, "x", qu, wgt((7, 30)), None, float(f32(0.004)), qo8, act="relu"),
                rand_act(rng, (5, 30), "uint8"))
    if name == "convT_k4s2p1_relu":                # the CenterNet neck's upsampling
        return convt(5, 6, 4, "uint8", qo8, stride=2, padding=1, act="relu"), rand_act(rng, (1, 5, 4, 5), "uint8")
    if name == "convT_k3s2_outpad_groups":
        return (convt(4, 6, 3, "int8", qou, groups=2, stride=2, padding=1, output_padding=1),
                rand_act(rng, (2, 4, 3, 4), "int8"))
    if name == "convT_k2s3_empty_phase":
        return convt(3, 5, 2, "int8", qo8, stride=3), rand_act(rng, (1, 3, 3, 2), "int8")
    raise KeyError(name)


LAYER_CASES = ["conv3x3_u8_relu_chunks", "conv_s2_dil2_asym_relu6", "conv_rect_per_tensor", "conv_groups3_clamp",
               "depthwise_prelu", "conv1x1_s2_sigmoid_lut", "conv1x1_k_lt_rows", "conv3x3_big_k_ort", "fc_leaky",
               "fc_u8_relu", "convT_k4s2p1_relu", "convT_k3s2_outpad_groups", "convT_k2s3_empty_phase"]
#: cases also run under every explicit RUN order, and under backpressure
ORDER_CASE = "conv3x3_u8_relu_chunks"
BP_CASES = ("conv3x3_u8_relu_chunks", "convT_k4s2p1_relu", "conv1x1_k_lt_rows")


def _case(name: str, cfg_name: str):
    rng = np.random.default_rng(zlib.crc32(f"{name}/{cfg_name}".encode()))
    return layer_case(name, CFGS[cfg_name], rng)


def layer_tasks(cfg_name: str) -> list[dict]:
    tasks = []
    for name in LAYER_CASES:
        node, x = _case(name, cfg_name)
        tasks.append({"name": name, "kind": "layer", "node": node, "x": x})
    node, x = _case(ORDER_CASE, cfg_name)
    for order in ORDERS:
        tasks.append({"name": f"{ORDER_CASE}@{order[0]}:{order[1]}", "kind": "layer", "node": node, "x": x,
                      "order": order})
    for name in BP_CASES:
        node, x = _case(name, cfg_name)
        tasks.append({"name": f"{name}@backpressure", "kind": "layer", "node": node, "x": x, "host": BACKPRESSURE})
    return tasks


# --------------------------------------------------------------------------- fuzz program
def _params(cfg: ArrayConfig, rng) -> dict:
    """A random valid params set: tflite or ort lanes, random clamp, sometimes PReLU or the LUT."""
    lanes = cfg.out_lanes
    if rng.random() < 0.25:
        return params_from_layer(cfg, np.float32(rng.uniform(1e-4, 0.05, lanes)), bias=rng.integers(-5000, 5000, lanes),
                                 zp_out=int(rng.integers(-20, 20)), mode="ort")
    lo = int(rng.integers(-128, 0))
    return params_from_layer(cfg, rng.uniform(1e-4, 0.05, lanes), bias=rng.integers(-5000, 5000, lanes),
                             zp_out=int(rng.integers(-20, 20)), act_min=lo, act_max=int(rng.integers(lo + 1, 128)),
                             alpha=rng.uniform(0.05, 0.9, lanes) if rng.random() < 0.3 else None,
                             lut_en=bool(rng.random() < 0.3))


class FuzzProgram:
    """A seeded fuzz program: ``actions`` for tb_top/GoldenDevice and, per ``recv``, what it checks.

    ``recvs[i]`` is ("out", job) -- the rows of a valid job, expected ``tile_value`` of its data;
    ("status", flags, dropped, what) -- a READ_STATUS right after a malformed command (flags
    exactly ``flags``, CMDS_DROPPED == ``dropped`` so far); ("final", jobs, macs, dropped).
    """

    def __init__(self, cfg: ArrayConfig, seed: int, n_jobs: int = 14, p_bad: float = 0.45):
        self.cfg = cfg
        self.rng = rng = np.random.default_rng(seed)
        self.actions: list[tuple] = []
        self.recvs: list[tuple] = []
        self.jobs: list[dict] = []
        self.bad: list[str] = []
        self.kinds: dict[str, int] = {}
        self.wpe = {b: isa.words_per_entry(isa.entry_bytes(cfg, b), cfg.bus_bytes) for b in isa.BUFFERS}
        self.lut = rng.integers(0, 256, isa.LUT_ENTRIES).astype(np.int64)
        self._cmd(isa.encode(cfg, Op.WRITE_LUT, offset=0, length=isa.LUT_ENTRIES))
        self.actions.append(("data", isa.pack_entries(self.lut.reshape(-1, 1), cfg.bus_bytes)))
        self._cmd(isa.encode(cfg, Op.CLEAR_STATUS, counters=1))
        self.dropped = 0
        self.macs = 0
        for j in range(n_jobs):
            steps = self._job(j)
            for step in steps:
                while rng.random() < p_bad:
                    self._malformed(self.jobs[-1])
                step()
        self.actions.append(("cmd", isa.encode(cfg, Op.SYNC)))
        self.actions.append(("recv", isa.sync_response_words(cfg)))
        self.recvs.append(("sync",))
        self.actions.append(("cmd", isa.encode(cfg, Op.READ_STATUS)))
        self.actions.append(("recv", isa.status_response_words(cfg)))
        self.recvs.append(("final", len(self.jobs), self.macs, self.dropped))

    def _cmd(self, desc: int) -> None:
        self.actions.append(("cmd", int(desc)))

    def _write(self, op: Op, bank: int, offset: int, entries) -> None:
        self._cmd(isa.encode(self.cfg, op, bank=bank, offset=offset, length=len(entries)))
        self.actions.append(("data", isa.pack_entries(np.asarray(entries), self.cfg.bus_bytes)))

    # ---- one valid job: its writes, the RUN and the READ_OUT, as deferred steps ----
    def _job(self, j: int) -> list:
        cfg, rng = self.cfg, self.rng
        R, L = cfg.rows, cfg.out_lanes
        k = int(rng.choice([1, max(1, R - 1), int(rng.integers(1, 12)), int(rng.integers(12, 48))]))
        nt_max = min(isa.ntiles_max(cfg), cfg.act_depth // k, 6)
        nt = int(rng.integers(1, nt_max + 1))
        f = {"act_bank": int(rng.integers(2)), "wgt_bank": int(rng.integers(2)), "par_bank": int(rng.integers(2)),
             "out_bank": int(rng.integers(2)), "k": k, "ntiles": nt,
             "act_offset": int(rng.integers(0, cfg.act_depth - nt * k + 1)),
             "wgt_offset": int(rng.integers(0, cfg.wgt_depth - k + 1)),
             "par_index": int(rng.integers(cfg.param_depth)),
             "out_offset": int(rng.integers(0, cfg.out_depth - nt * R + 1)),
             "rows_valid": int(rng.integers(0, R + 1)), "lanes_valid": int(rng.integers(0, L + 1))}
        act = rng.integers(-128, 128, (nt * k, R)).astype(np.int8)
        wgt = rng.integers(cfg.weight_min, 128, (k, L)).astype(np.int8)
        p = _params(cfg, rng)
        job = {"fields": f, "act": act, "wgt": wgt, "params": p}
        self.jobs.append(job)
        split = int(rng.integers(1, nt * k)) if nt * k > 1 and rng.random() < 0.5 else nt * k

        def w_act():
            self._write(Op.WRITE_ACT, f["act_bank"], f["act_offset"], act[:split])
            if split < nt * k:
                self._write(Op.WRITE_ACT, f["act_bank"], f["act_offset"] + split, act[split:])

        def w_wgt():
            self._write(Op.WRITE_WGT, f["wgt_bank"], f["wgt_offset"], wgt)

        def w_par():
            self._cmd(isa.encode(cfg, Op.WRITE_PARAMS, bank=f["par_bank"], offset=f["par_index"], length=1))
            self.actions.append(("data", isa.pack_entries(isa.pack_params(cfg, [p]), cfg.bus_bytes)))

        def run():
            self._cmd(isa.encode(cfg, Op.RUN, **f))
            self.macs += k * nt * f["rows_valid"] * f["lanes_valid"]

        def read():
            self._cmd(isa.encode(cfg, Op.READ_OUT, bank=f["out_bank"], offset=f["out_offset"], length=nt * R))
            self.actions.append(("recv", nt * R * self.wpe["out"]))
            self.recvs.append(("out", j))

        writes = [w_act, w_wgt, w_par]
        rng.shuffle(writes)
        return [*writes, run, read]

    # ---- malformed commands ----
    def _check(self, flags: int, what: str) -> None:
        cfg = self.cfg
        self.dropped += 1
        self.bad.append(what)
        self.kinds[what.split(":")[0]] = self.kinds.get(what.split(":")[0], 0) + 1
        self.actions.append(("cmd", isa.encode(cfg, Op.READ_STATUS)))
        self.actions.append(("recv", isa.status_response_words(cfg)))
        self.recvs.append(("status", flags, self.dropped, what))
        self._cmd(isa.encode(cfg, Op.CLEAR_STATUS, counters=0))

    def _valid_fields(self, op: Op) -> dict:
        """Random in-range fields of ``op`` (a well-formed descriptor)."""
        cfg, rng = self.cfg, self.rng
        if op == Op.RUN:
            k = int(rng.integers(1, 9))
            nt = int(rng.integers(1, min(isa.ntiles_max(cfg), cfg.act_depth // k) + 1))
            return {"act_bank": 0, "wgt_bank": 1, "par_bank": 0, "out_bank": 1, "k": k, "ntiles": nt,
                    "act_offset": 0, "wgt_offset": 0, "par_index": 0, "out_offset": 0, "rows_valid": cfg.rows,
                    "lanes_valid": cfg.out_lanes}
        if op in isa.PAYLOAD_BUFFER:
            d = isa.buffer_depth(cfg, isa.PAYLOAD_BUFFER[op])
            n = int(rng.integers(1, min(d, 6) + 1))
            f = {"offset": int(rng.integers(0, d - n + 1)), "length": n}
            if op != Op.WRITE_LUT:
                f["bank"] = int(rng.integers(2))
            return f
        if op == Op.CLEAR_STATUS:
            return {"counters": 0}
        return {}

    def _bad_range(self, op: Op) -> dict:
        """Fields of ``op`` with one or two range rules broken (every value still fits its field)."""
        cfg, rng = self.cfg, self.rng
        lay = {fl.name: fl for fl in isa.layout(cfg)[op]}
        f = self._valid_fields(op)

        def top(name):
            return (1 << lay[name].width) - 1

        choices = []
        for name, fl in lay.items():
            if fl.hi < top(name):
                choices.append(lambda n=name: f.__setitem__(n, int(rng.integers(lay[n].hi + 1, top(n) + 1))))
            if fl.lo > 0:
                choices.append(lambda n=name: f.__setitem__(n, 0))
        if op in isa.PAYLOAD_BUFFER:
            d = isa.buffer_depth(cfg, isa.PAYLOAD_BUFFER[op])
            choices.append(lambda: f.update(offset=d - 1, length=int(rng.integers(2, min(d, top("length")) + 1))))
        if op == Op.RUN:
            choices.append(lambda: f.update(act_offset=cfg.act_depth - f["k"] * f["ntiles"] + 1))
            choices.append(lambda: f.update(wgt_offset=cfg.wgt_depth - f["k"] + 1))
            choices.append(lambda: f.update(out_offset=cfg.out_depth - f["ntiles"] * cfg.rows + 1))
        for _ in range(int(rng.integers(1, 3))):
            choices[int(rng.integers(len(choices)))]()
        # keep every value representable (a compound rule can push an offset past its field)
        for name in f:
            f[name] = min(max(f[name], 0), top(name))
        return f

    def _malformed(self, job: dict) -> None:
        cfg, rng = self.cfg, self.rng
        kind = rng.choice(["opcode", "reserved", "range", "range+reserved", "early_last", "missing_last"])
        if kind == "opcode":
            code = int(rng.choice([0, *range(len(Op) + 1, 256)]))
            desc = code | (int(rng.integers(0, 2**62)) << int(rng.integers(8, 66)) if rng.random() < 0.5 else code)
            desc &= (1 << isa.DESC_BITS) - 1
            flags = isa.descriptor_errors(cfg, desc)
            assert flags == Flag.BAD_OPCODE
            self._cmd(desc)                       # consumes no payload: none is sent
            return self._check(flags, f"opcode:{code}")
        if kind in ("early_last", "missing_last"):
            op = Op(int(rng.choice([Op.WRITE_ACT, Op.WRITE_WGT, Op.WRITE_PARAMS])))
            buf = isa.PAYLOAD_BUFFER[op]
            key = {"act": "act_bank", "wgt": "wgt_bank", "params": "par_bank"}[buf]
            bank = 1 - job["fields"][key]            # never the bank the current job reads
            d = isa.buffer_depth(cfg, buf)
            n = int(rng.integers(1, min(d, 5) + 1))
            off = int(rng.integers(0, d - n + 1))
            need = n * self.wpe[buf]
            words = [int(w) for w in rng.integers(0, 2**62, need)]    # raw payload words (any content)
            self._cmd(isa.encode(cfg, op, bank=bank, offset=off, length=n))
            if kind == "early_last":
                if need < 2:
                    n, need = n + 1, need + self.wpe[buf]
                    if off + n > d:
                        off -= 1
                    self.actions[-1] = ("cmd", isa.encode(cfg, op, bank=bank, offset=off, length=n))
                    words = [int(w) for w in rng.integers(0, 2**62, need)]
                cut = int(rng.integers(1, need))
                self.actions.append(("data", [w & ((1 << 8 * cfg.bus_bytes) - 1) for w in words[:cut]]))
            else:
                extra = [int(w) for w in rng.integers(0, 2**62, int(rng.integers(1, 4)))]
                self.actions.append(("data", [w & ((1 << 8 * cfg.bus_bytes) - 1) for w in words], False))
                self.actions.append(("data", [w & ((1 << 8 * cfg.bus_bytes) - 1) for w in extra]))
            return self._check(int(Flag.LENGTH_MISMATCH), f"{kind}:{op.name}")
        op = Op(int(rng.choice(list(Op))))
        if kind == "reserved":
            f = self._valid_fields(op)
        else:
            if op in (Op.READ_STATUS, Op.SYNC, Op.CLEAR_STATUS):
                op = Op.RUN                          # no field that can leave its range
            f = self._bad_range(op)
        desc = isa.encode(cfg, op, check=False, **f)
        if kind != "range":
            res = isa.reserved_mask(cfg, op)
            bits = [b for b in range(isa.DESC_BITS) if res >> b & 1]
            desc |= 1 << int(rng.choice(bits))
        flags = isa.descriptor_errors(cfg, desc)
        assert flags and not flags & Flag.BAD_OPCODE, (kind, op, f)
        self._cmd(desc)
        if op in (Op.WRITE_ACT, Op.WRITE_WGT, Op.WRITE_PARAMS, Op.WRITE_LUT):
            # a dropped WRITE consumes its payload through the first ``last``: send some words
            n = int(rng.integers(1, 5))
            self.actions.append(("data", [int(w) for w in rng.integers(0, 2**31, n)]))
        return self._check(flags, f"{kind}:{op.name}")

    def expected_rows(self, j: int) -> np.ndarray:
        """Output rows of valid job ``j`` from its own data: golden.array_model.tile_value per tile."""
        job, cfg = self.jobs[j], self.cfg
        k, nt = job["fields"]["k"], job["fields"]["ntiles"]
        tiles = [tile_value(cfg, job["act"][t * k:(t + 1) * k].T, job["wgt"], job["params"], self.lut)
                 for t in range(nt)]
        return np.concatenate(tiles)


def run_script_on(device, actions) -> tuple[list, Exception | None]:
    """The same script runner as sim/tb_top.py, on any Device (here: GoldenDevice)."""
    got = []
    try:
        for a in actions:
            if a[0] == "cmd":
                device.send_command(a[1])
            elif a[0] == "data":
                device.send_data(a[1], a[2] if len(a) > 2 else True)
            elif a[0] == "recv":
                got.append(device.receive(a[1], a[2] if len(a) > 2 else 30.0))
            elif a[0] == "reset":
                device.reset()
    except Exception as e:  # noqa: BLE001 - returned for comparison with the RTL's record
        return got, e
    return got, None


FUZZ_SEEDS = {"small": (101, 102), "nopack": (201,)}


def fuzz_tasks(cfg_name: str) -> tuple[list[dict], dict]:
    cfg = CFGS[cfg_name]
    tasks, progs = [], {}
    for i, seed in enumerate(FUZZ_SEEDS[cfg_name]):
        prog = FuzzProgram(cfg, seed)
        name = f"fuzz-{seed}"
        progs[name] = prog
        # the second program of a config runs under backpressure and valid gaps
        tasks.append({"name": name, "kind": "script", "reset": True, "actions": prog.actions,
                      "host": BACKPRESSURE if i % 2 else {}})
    return tasks, progs


# --------------------------------------------------------------------------- timeout scripts
def timeout_tasks(cfg_name: str) -> list[dict]:
    cfg = CFGS[cfg_name]
    enc = isa.encode
    st_words = isa.status_response_words(cfg)
    act_words = isa.words_per_entry(cfg.rows, cfg.bus_bytes)
    quick = {"timeout_cycles": 600}
    node, x = _case("conv3x3_u8_relu_chunks", cfg_name)
    return [
        {"name": "timeout-dropped-read", "kind": "script", "reset": True, "host": quick, "actions": [
            ("cmd", enc(cfg, Op.READ_OUT, check=False, bank=0, offset=cfg.out_depth - 1, length=2)),
            ("recv", 2 * isa.words_per_entry(cfg.out_lanes, cfg.bus_bytes))]},
        {"name": "timeout-missing-payload", "kind": "script", "reset": True, "host": quick, "actions": [
            ("cmd", enc(cfg, Op.WRITE_ACT, bank=1, offset=3, length=10)),
            ("data", [5] * (4 * act_words), False),
            ("cmd", enc(cfg, Op.READ_STATUS)),
            ("recv", st_words)]},
        {"name": "timeout-nothing-sent", "kind": "script", "reset": True, "host": quick, "actions": [
            ("recv", 1)]},
        # a link that loses din words in the middle of a layer: the driver's DeviceTimeout names the layer
        {"name": "timeout-layer-broken-link", "kind": "layer", "reset": True, "node": node, "x": x,
         "host": {"timeout_cycles": 3000, "drop_din_after": 40}},
        # fault injection proving the output comparison can fail: one received bit flipped
        {"name": "inject-flip", "kind": "layer", "reset": True, "node": node, "x": x,
         "host": {"flip_dout_word": 5}},
        # the device still works after those (the tasks reset it): a short valid script
        {"name": "after-timeouts", "kind": "script", "reset": True, "actions": [
            ("cmd", enc(cfg, Op.SYNC)), ("recv", isa.sync_response_words(cfg))]},
    ]


# --------------------------------------------------------------------------- one simulation per config
_LOCAL_RUN = f"{os.getpid()}-{time.time_ns()}"


def _session() -> str:
    """Identifies this pytest run across xdist workers (results are shared inside one run only)."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID", _LOCAL_RUN)


def build_spec(cfg_name: str) -> tuple[dict, dict]:
    tasks = layer_tasks(cfg_name)
    ftasks, progs = fuzz_tasks(cfg_name)
    tasks += ftasks
    if cfg_name == "small":
        tasks += timeout_tasks(cfg_name)
    return {"cfg": CFGS[cfg_name], "host": {"seed": 7}, "tasks": tasks}, progs


_RESULTS: dict[str, dict] = {}


def sim_result(cfg_name: str) -> tuple:
    """(model, spec, fuzz programs, result) of the one simulation of ``cfg_name`` in this test run.

    The first caller (any xdist worker) builds the model and runs the simulation under a file
    lock; the others wait and load its result.
    """
    spec, progs = build_spec(cfg_name)
    if cfg_name in _RESULTS:
        return _RESULTS[cfg_name]
    model = build_top(CFGS[cfg_name])
    run_dir = RUNS / f"top-{cfg_name}"
    run_dir.mkdir(parents=True, exist_ok=True)
    done = run_dir / "session.txt"
    with open(RUNS / f"top-{cfg_name}.lock", "w") as lk:
        fcntl.flock(lk, fcntl.LOCK_EX)
        try:
            mine = f"{_session()} {model.key}"
            if done.exists() and done.read_text() == mine and (run_dir / "result.pkl").exists():
                with open(run_dir / "result.pkl", "rb") as f:
                    res = pickle.load(f)
                res.update(log=str(run_dir / "sim.log"))
            else:
                if done.exists():
                    done.unlink()
                res = run_top(model, spec, run_dir)
                done.write_text(mine)
        finally:
            fcntl.flock(lk, fcntl.LOCK_UN)
    _RESULTS[cfg_name] = (model, spec, progs, res)
    return _RESULTS[cfg_name]


def task_results(res: dict) -> dict:
    assert res.get("error") is None, f"simulation failed: {res.get('error')}\nlog: {res.get('log')}"
    return {t["name"]: t for t in res["tasks"]}


def explain(model, spec: dict, names, cfg_name: str, problems: list[str], tag: str = "") -> str:
    """Re-run the failing tasks with tracing on; the message names the waveform and the log.

    ``tag`` (default: the current test's name) keeps concurrent failures in separate directories.
    """
    sub = {**spec, "tasks": [dict(t, reset=True) for t in spec["tasks"] if t["name"] in set(names)]}
    tag = tag or os.environ.get("PYTEST_CURRENT_TEST", "").split("::")[-1].split(" ")[0]
    run_dir = RUNS / f"top-{cfg_name}-waves-{''.join(c if c.isalnum() else '_' for c in tag)[:60]}"
    wres = run_top(model, sub, run_dir, waves=True)
    waves = Path(wres["waves"])
    where = (f"waveform: {waves}" if waves.exists() and waves.stat().st_size > 0
             else f"waveform NOT written (expected {waves}; see {wres['log']})")
    return (f"RTL top vs golden failed on {cfg_name} ({spec['cfg']}):\n  " + "\n  ".join(problems[:20])
            + f"\n{where} (tasks {sorted(set(names))} re-run alone)\nlog: {wres['log']}")


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("cfg_name", list(CFGS))
def test_layers_bit_exact_on_rtl_and_golden_device(cfg_name):
    model, spec, _, res = sim_result(cfg_name)
    got = task_results(res)
    cfg = CFGS[cfg_name]
    problems, bad = [], set()
    n_layers = 0
    for task in spec["tasks"]:
        if task["kind"] != "layer" or task["name"].startswith(("timeout", "inject")):
            continue
        n_layers += 1
        r = got[task["name"]]
        if r["error"] is not None:
            problems.append(f"{task['name']}: {r['error']['type']}: {r['error']['message']}")
            bad.add(task["name"])
            continue
        node, x = task["node"], task["x"]
        ref = node.reference([x])
        y_gold, _ = run_layer(GoldenDevice(cfg), node, x, order=task.get("order"))
        y = r["output"]
        if y.dtype != ref.dtype or y.shape != ref.shape or not np.array_equal(y, ref):
            n = np.count_nonzero(y != ref) if y.shape == ref.shape else "shape"
            problems.append(f"{task['name']}: RTL output differs from golden ({n} codes)")
            bad.add(task["name"])
        assert np.array_equal(y_gold, ref), f"GoldenDevice differs from golden on {task['name']}"
        if r["framing_errors"]:
            problems.append(f"{task['name']}: dout framing: {r['framing_errors'][:3]}")
            bad.add(task["name"])
        # a real check: the outputs are not all clamped to one code
        assert len(np.unique(ref)) >= min(8, ref.size // 4), task["name"]
    if problems:
        pytest.fail(explain(model, spec, bad, cfg_name, problems))
    assert n_layers == len(LAYER_CASES) + len(ORDERS) + len(BP_CASES)


@pytest.mark.parametrize("cfg_name", list(CFGS))
def test_layer_counters_equal_cycle_model(cfg_name):
    model, spec, _, res = sim_result(cfg_name)
    got = task_results(res)
    cfg = CFGS[cfg_name]
    problems, bad = [], set()
    stalled = 0
    for task in spec["tasks"]:
        if task["kind"] != "layer" or task["name"].startswith(("timeout", "inject")):
            continue
        r = got[task["name"]]
        assert r["error"] is None, f"{task['name']}: {r['error']}"
        m, rep = r["report"]["measured"], r["report"]
        _, grep_ = run_layer(GoldenDevice(cfg), task["node"], task["x"], order=task.get("order"))
        g = grep_.measured
        ideal = "host" not in task
        # the plan's cycle model (firmware.report.TopTimer over the program) ...
        model_vals = {"USEFUL_MACS": rep["lane_slot_macs"], "JOBS_DONE": rep["runs"], "CMDS_DROPPED": 0}
        if ideal:
            model_vals.update(BUSY_CYCLES=rep["busy_cycles"], IN_STALL_CYCLES=int(rep["losses"]["core_stall"]),
                              OUT_STALL_CYCLES=0)
            # ... and GoldenDevice's counters (TopTimer over the whole command stream incl. CLEAR/SYNC/STATUS)
            gold_vals = {s: g[s] for s in ALL_SLOTS}
        else:
            gold_vals = {s: g[s] for s in WORK_SLOTS}
            # the host saw every stall: all receives of the layer but the final READ_STATUS (its snapshot
            # is taken before its own words go out)
            host_stalls = sum(s for _, s, _ in r["receive_log"][:-1])
            model_vals["OUT_STALL_CYCLES"] = host_stalls
            stalled += host_stalls
            assert m["CYCLES"] > g["CYCLES"], f"{task['name']}: backpressure did not slow the layer down"
        for what, vals in (("cycle model", model_vals), ("GoldenDevice", gold_vals)):
            diff = {s: (m[s], v) for s, v in vals.items() if m[s] != v}
            if diff:
                problems.append(f"{task['name']}: RTL counters != {what} (rtl, expected): {diff}")
                bad.add(task["name"])
    if problems:
        pytest.fail(explain(model, spec, bad, cfg_name, problems))
    assert stalled > 0, "the backpressure runs never stalled dout"


@pytest.mark.parametrize("cfg_name", list(CFGS))
def test_fuzz_malformed_commands_interleaved_with_valid_jobs(cfg_name):
    model, spec, progs, res = sim_result(cfg_name)
    got = task_results(res)
    cfg = CFGS[cfg_name]
    problems, bad = [], set()
    for name, prog in progs.items():
        r = got[name]
        if r["error"] is not None:           # a hang or a short response
            problems.append(f"{name}: {r['error']['type']}: {r['error']['message']}")
            bad.add(name)
            continue
        ideal = not next(t for t in spec["tasks"] if t["name"] == name).get("host")
        recv = r["received"]
        assert len(recv) == len(prog.recvs)
        gold, gerr = run_script_on(GoldenDevice(cfg), prog.actions)
        assert gerr is None, f"GoldenDevice failed the fuzz program {name}: {gerr}"
        n_out = n_flag = 0
        for i, (words, meta) in enumerate(zip(recv, prog.recvs)):
            if meta[0] == "out":
                rows = isa.unpack_entries(words, cfg.out_lanes, cfg.bus_bytes)
                exp = prog.expected_rows(meta[1])
                if not np.array_equal(rows, exp):
                    problems.append(f"{name}: valid job {meta[1]} ({prog.jobs[meta[1]]['fields']}): "
                                    f"{np.count_nonzero(rows != exp)} output codes differ from tile_value")
                n_out += 1
            elif meta[0] in ("status", "final"):
                st = isa.parse_status(cfg, words)
                if meta[0] == "status":
                    _, flags, dropped, what = meta
                    if st["flags"] != flags or st["CMDS_DROPPED"] != dropped:
                        problems.append(f"{name}: after {what}: flags {st['flags']:#x} (expected {flags:#x}), "
                                        f"CMDS_DROPPED {st['CMDS_DROPPED']} (expected {dropped})")
                    n_flag += 1
                else:
                    _, jobs, macs, dropped = meta
                    exp = {"JOBS_DONE": jobs, "USEFUL_MACS": macs, "CMDS_DROPPED": dropped, "flags": 0}
                    if any(st[k] != v for k, v in exp.items()):
                        problems.append(f"{name}: final status {st} != {exp}")
            # the same as GoldenDevice: rows word for word; a READ_STATUS in the middle of a job: flags and
            # CMDS_DROPPED (GoldenDevice executes a RUN when it is queued, the RTL is still running it);
            # the final one after SYNC: every work counter, and with an ideal host CYCLES / BUSY_CYCLES
            # too (TopTimer through the drops, discards and framing errors)
            if meta[0] in ("status", "final"):
                a, b = isa.parse_status(cfg, words), isa.parse_status(cfg, gold[i])
                keys = ["flags", "CMDS_DROPPED"] if meta[0] == "status" else \
                    ["STATUS", *WORK_SLOTS] + (["CYCLES", "BUSY_CYCLES", "OUT_STALL_CYCLES"] if ideal else [])
                diff = {k: (a[k], b[k]) for k in keys if a[k] != b[k]}
                if diff:
                    problems.append(f"{name}: recv {i} ({meta[0]}): RTL != GoldenDevice {diff}")
            elif words != gold[i]:
                problems.append(f"{name}: recv {i} ({meta[0]}): RTL words != GoldenDevice's")
        if r["framing_errors"]:
            problems.append(f"{name}: dout framing: {r['framing_errors'][:3]}")
        if problems:
            bad.add(name)
        assert n_out == len(prog.jobs) >= 10 and n_flag == len(prog.bad) >= 10
    if problems:
        pytest.fail(explain(model, spec, bad, cfg_name, problems))
    # the programs covered every kind of malformation
    kinds = set().union(*(p.kinds for p in progs.values()))
    assert {"opcode", "reserved", "range", "range+reserved", "early_last", "missing_last"} <= kinds, kinds


def test_timeouts_name_the_awaited_command():
    model, spec, _, res = sim_result("small")
    got = task_results(res)
    cfg = SMALL_TOP

    def err(name):
        e = got[name]["error"]
        assert e is not None and e["type"] == "DeviceTimeout", f"{name}: expected DeviceTimeout, got {e}"
        return e["message"]

    tasks = {t["name"]: t for t in spec["tasks"]}
    # the dropped READ_OUT: named, and why nothing comes
    msg = err("timeout-dropped-read")
    assert "READ_OUT bank=0 offset=63" in msg and "BAD_RANGE" in msg and "drops it" in msg, msg
    assert "no cmd/din/dout transfer for 600 simulated cycles" in msg, msg
    # the WRITE_ACT waiting for the rest of its payload: READ_STATUS is named and stuck behind it
    msg = err("timeout-missing-payload")
    assert msg.startswith(f"device did not answer READ_STATUS: 0 of {isa.status_response_words(cfg)} response "
                          "words"), msg
    assert "the decoder is still executing WRITE_ACT bank=1 offset=3 length=10" in msg, msg
    assert "din words that were never sent" in msg and "din: 4 of 4 words taken" in msg, msg
    msg = err("timeout-nothing-sent")
    assert "(no pending command)" in msg, msg
    # GoldenDevice names the same commands
    for name in ("timeout-dropped-read", "timeout-missing-payload"):
        _, gerr = run_script_on(GoldenDevice(cfg), tasks[name]["actions"])
        assert isinstance(gerr, DeviceTimeout) and f"device did not answer {gerr.command}:" in err(name)
    # the driver names the layer and the compiler's command label
    msg = err("timeout-layer-broken-link")
    assert "(layer 'conv3x3_u8_relu_chunks':" in msg and "READ_OUT" in msg, msg
    # and the device answers again after a reset
    after = got["after-timeouts"]
    assert after["error"] is None and len(after["received"][0]) == isa.sync_response_words(cfg)
    assert after["received"][0][0] & isa.ERROR_MASK == 0


def test_fuzz_program_is_well_formed():
    """The generator itself: its malformed commands are malformed and its valid ones are valid
    (checked without the RTL, so a generator bug cannot hide behind a passing comparison)."""
    cfg = SMALL_TOP
    prog = FuzzProgram(cfg, 5)
    descs = [a[1] for a in prog.actions if a[0] == "cmd"]
    errs = [isa.descriptor_errors(cfg, d) for d in descs]
    expected_bad = sum(1 for m in prog.recvs if m[0] == "status" and m[1] != Flag.LENGTH_MISMATCH)
    assert sum(1 for e in errs if e) == expected_bad
    assert sum(1 for d in descs if d & 0xFF == Op.RUN and not isa.descriptor_errors(cfg, d)) == len(prog.jobs)
    dev = GoldenDevice(cfg)
    got, e = run_script_on(dev, prog.actions)
    assert e is None
    for words, meta in zip(got, prog.recvs):
        if meta[0] == "out":
            assert np.array_equal(isa.unpack_entries(words, cfg.out_lanes, cfg.bus_bytes), prog.expected_rows(meta[1]))
        elif meta[0] == "status":
            st = isa.parse_status(cfg, words)
            assert st["flags"] == meta[1] and st["CMDS_DROPPED"] == meta[2]
    assert isa.parse_status(cfg, got[-1])[Slot.JOBS_DONE.name] == len(prog.jobs)


def test_injected_fault_is_caught_and_explained_with_a_waveform():
    """A flipped bit on dout must show up as exactly one wrong output code (the checks above can fail),
    and the failure path re-runs the task with tracing and names a non-empty FST."""
    model, spec, _, res = sim_result("small")
    r = task_results(res)["inject-flip"]
    task = next(t for t in spec["tasks"] if t["name"] == "inject-flip")
    assert r["error"] is None
    ref = task["node"].reference([task["x"]])
    assert np.count_nonzero(r["output"] != ref) == 1
    msg = explain(model, spec, ["inject-flip"], "small", ["inject-flip: 1 code differs"], tag="inject")
    wave = RUNS / "top-small-waves-inject" / f"waves.{model.trace_format}"
    assert f"waveform: {wave}" in msg and wave.stat().st_size > 1000, msg
