"""hw.top.Accelerator in the Amaranth simulator (small configs).

A session = a list of commands (descriptor + its din payload) driven through
``cmd``/``din`` with random gaps, responses collected from ``dout`` under
random backpressure. Expectations come from a small sequential reference
device written here from docs/top.md / golden/isa.py (values through
golden.array_model.tile_value, checks through golden.isa.descriptor_errors);
the hardware's interlocks must make its concurrent execution indistinguishable
from that sequential one. Timing facts (busy cycles, input stalls, cycle
counter, output stalls) are checked against golden.isa.run_timing (itself
tested against golden.array_model) and the testbench's own cycle counts.
"""
from __future__ import annotations

import sys

import numpy as np
import pytest
from amaranth import C, Mux, Signal
from amaranth.hdl import Assert
from amaranth.sim import Simulator

from golden import isa
from golden.array_model import check_params, neutral_params, tile_value
from golden.config import BANKS, ArrayConfig
from golden.isa import Flag, Op, Slot
import hw.top
from hw.pe import delay
from hw.top import Accelerator as _Accelerator
from shadow_checks import checked

# Every top in this module asserts its shadow checks (the split counters) on every cycle.
Accelerator = checked(_Accelerator, "top")

CFG = ArrayConfig(rows=2, cols=2, weight_min=-128, act_depth=40, wgt_depth=20, param_depth=3, out_depth=16,
                  bus_bytes=4, max_k=16, param_fifo_depth=2)
# Entries wider than the bus (act 3 bytes on 2, wgt/out 2 bytes on 2 but params many words), 1 param slot.
CFG_NARROW = ArrayConfig(rows=3, cols=1, weight_min=-128, act_depth=24, wgt_depth=9, param_depth=1, out_depth=12,
                         bus_bytes=2, max_k=9, param_fifo_depth=1)
# Power-of-two act/wgt depths: sliced block-RAM buffers (hw.buffers.BRAM_SLICE_BITS), act 40 bits = 2 slices.
CFG_POW2 = ArrayConfig(rows=5, cols=1, weight_min=-128, act_depth=32, wgt_depth=16, param_depth=2, out_depth=16,
                       bus_bytes=4, max_k=16, param_fifo_depth=2)


# --------------------------------------------------------------------------- commands
class Cmd:
    """One command: descriptor word, din payload [(data, last)], and what the test expects back."""

    def __init__(self, word, payload=()):
        self.word = word
        self.payload = list(payload)


def write_cmd(cfg, op, entries, bank=0, offset=0, mode="ok", extra=2):
    """WRITE_* with ``entries`` (n x entry_bytes); ``mode``: ok | early (last one word early) | missing
    (no last on the final word, ``extra`` further words, the last of them with last = 1)."""
    words = isa.pack_entries(entries, cfg.bus_bytes)
    f = dict(offset=offset, length=len(entries)) if op == Op.WRITE_LUT else dict(bank=bank, offset=offset,
                                                                                 length=len(entries))
    w = isa.encode(cfg, op, **f)
    if mode == "ok":
        pay = [(d, int(i == len(words) - 1)) for i, d in enumerate(words)]
    elif mode == "early":
        pay = [(d, int(i == len(words) - 2)) for i, d in enumerate(words[:-1])]
    else:
        pay = [(d, 0) for d in words] + [(0xA5 + i, int(i == extra - 1)) for i in range(extra)]
    return Cmd(w, pay)


def run_cmd(cfg, **f):
    base = dict(act_bank=0, act_offset=0, wgt_bank=0, wgt_offset=0, par_bank=0, par_index=0, out_bank=0,
                out_offset=0, rows_valid=cfg.rows, lanes_valid=cfg.out_lanes)
    base.update(f)
    return Cmd(isa.encode(cfg, Op.RUN, **base))


def simple(cfg, op, **f):
    return Cmd(isa.encode(cfg, op, **f))


# --------------------------------------------------------------------------- reference device
class RefDevice:
    """Sequential semantics of docs/top.md (what the hardware must be equivalent to)."""

    def __init__(self, cfg):
        self.cfg = cfg
        z = np.zeros
        self.buf = {"act": z((BANKS, cfg.act_depth, cfg.rows), np.uint8),
                    "wgt": z((BANKS, cfg.wgt_depth, cfg.out_lanes), np.uint8),
                    "params": z((BANKS, cfg.param_depth, isa.entry_bytes(cfg, "params")), np.uint8),
                    "out": z((BANKS, cfg.out_depth, cfg.out_lanes), np.uint8)}
        self.lut = np.full(256, -1, np.int64)
        self.flags = 0
        self.ctr = {"dropped": 0, "jobs": 0, "macs": 0}
        self.ctr_known = True          # False after clearing counters while jobs may have been running
        self.runs_since_sync = False
        self.total_dropped = 0         # never cleared: how much the checks were exercised

    def _entry_bytes(self, words, eb):
        return isa.unpack_entries(words, eb, self.cfg.bus_bytes)[0]

    def command(self, c: Cmd):
        """Execute; returns the list of expected response words or a dict for READ_STATUS."""
        cfg = self.cfg
        errs = isa.descriptor_errors(cfg, c.word)
        code = c.word & 0xFF
        if errs:
            self.flags |= errs
            self.ctr["dropped"] += 1
            self.total_dropped += 1
            if not errs & Flag.BAD_OPCODE and Op(code) in isa.PAYLOAD_BUFFER and Op(code) != Op.READ_OUT:
                assert c.payload and c.payload[-1][1] and not any(la for _, la in c.payload[:-1])
            else:
                assert not c.payload
            return None
        op, f = isa.decode(cfg, c.word)
        if op in (Op.WRITE_ACT, Op.WRITE_WGT, Op.WRITE_PARAMS, Op.WRITE_LUT):
            buf = isa.PAYLOAD_BUFFER[op]
            eb = isa.entry_bytes(cfg, buf)
            wpe = isa.words_per_entry(eb, cfg.bus_bytes)
            n = f["length"] * wpe
            for i, (d, last) in enumerate(c.payload):
                if i % wpe == wpe - 1 and i < n:
                    e = self._entry_bytes([x for x, _ in c.payload[i - wpe + 1:i + 1]], eb)
                    a = f["offset"] + i // wpe
                    if op == Op.WRITE_LUT:
                        self.lut[a] = e[0]
                    else:
                        self.buf[buf][f["bank"], a] = e
                if i == n - 1 and not last or i < n - 1 and last:
                    self.flags |= Flag.LENGTH_MISMATCH
                    self.ctr["dropped"] += 1
                    self.total_dropped += 1
                if last:
                    assert i == len(c.payload) - 1
            return None
        assert not c.payload
        if op == Op.RUN:
            k, rows = f["k"], cfg.rows
            w = self.buf["wgt"][f["wgt_bank"], f["wgt_offset"]:f["wgt_offset"] + k].view(np.int8).astype(np.int64)
            raw = isa.unpack_params(cfg, self.buf["params"][f["par_bank"], f["par_index"]])
            p = check_params(raw, cfg.out_lanes, cfg.bias_width)
            for t in range(f["ntiles"]):
                a0 = f["act_offset"] + t * k
                a = self.buf["act"][f["act_bank"], a0:a0 + k].view(np.int8).astype(np.int64).T
                o0 = f["out_offset"] + t * rows
                self.buf["out"][f["out_bank"], o0:o0 + rows] = tile_value(cfg, a, w, p,
                                                                          self.lut if p["lut_en"] else None)
            self.ctr["jobs"] += 1
            self.ctr["macs"] += f["ntiles"] * k * f["rows_valid"] * f["lanes_valid"]
            self.runs_since_sync = True
            return None
        if op == Op.READ_OUT:
            rows = self.buf["out"][f["bank"], f["offset"]:f["offset"] + f["length"]]
            return isa.pack_entries(rows, cfg.bus_bytes)
        if op == Op.CLEAR_STATUS:
            self.flags = 0
            if f["counters"]:
                self.ctr = {"dropped": 0, "jobs": 0, "macs": 0}
                self.ctr_known = not self.runs_since_sync
            return None
        if op == Op.SYNC:
            self.runs_since_sync = False
            st = isa.status_word(self.flags, 0)
            return isa.pack_entries(np.frombuffer(st.to_bytes(4, "little"), np.uint8)[None, :], cfg.bus_bytes)
        assert op == Op.READ_STATUS
        exp = {"flags": self.flags, Slot.CMDS_DROPPED.name: self.ctr["dropped"]}
        if not self.runs_since_sync and self.ctr_known:
            exp.update({Slot.JOBS_DONE.name: self.ctr["jobs"], Slot.USEFUL_MACS.name: self.ctr["macs"], "jobs": 0})
        return exp


# --------------------------------------------------------------------------- simulation harness
def simulate(cfg, cmds, *, seed=0, p_cmd=0.8, p_din=0.8, p_dout=0.7, max_cycles=40000):
    """Drive ``cmds``; returns (responses: list of word lists, log dict)."""
    rng = np.random.default_rng(seed)
    dut = Accelerator(cfg)
    din = [w for c in cmds for w in c.payload]
    log = {"cmd_accept": [], "dout": [], "stall_cycles": [], "cycles": 0}
    state = {"done_cmd": False, "n_resp": None}

    async def cmd_tb(ctx):
        cyc = 0
        for c in cmds:
            while rng.random() >= p_cmd:
                await ctx.tick()
                cyc += 1
            ctx.set(dut.cmd.valid, 1)
            ctx.set(dut.cmd.payload, c.word)
            while True:
                rdy = ctx.get(dut.cmd.ready)
                await ctx.tick()
                cyc += 1
                if rdy:
                    log["cmd_accept"].append(cyc - 1)
                    break
                assert cyc < max_cycles, f"cmd stuck at command {len(log['cmd_accept'])}"
            ctx.set(dut.cmd.valid, 0)
        state["done_cmd"] = True

    async def din_tb(ctx):
        i, cyc = 0, 0
        while i < len(din):
            v = rng.random() < p_din
            ctx.set(dut.din.valid, v)
            ctx.set(dut.din.payload.data, din[i][0])
            ctx.set(dut.din.payload.last, din[i][1])
            rdy = ctx.get(dut.din.ready)
            await ctx.tick()
            cyc += 1
            assert cyc < max_cycles, f"din stuck at word {i} of {len(din)}"
            if v and rdy:
                i += 1
        ctx.set(dut.din.valid, 0)

    async def dout_tb(ctx):
        cyc = 0
        cur = []
        resp = []
        while not (state["done_cmd"] and state["n_resp"] is not None and len(resp) == state["n_resp"]):
            r = rng.random() < p_dout
            ctx.set(dut.dout.ready, r)
            v = ctx.get(dut.dout.valid)
            d = ctx.get(dut.dout.payload.data)
            la = ctx.get(dut.dout.payload.last)
            await ctx.tick()
            cyc += 1
            assert cyc < max_cycles, f"dout: {len(resp)} responses after {cyc} cycles (hang?)"
            if v and not r:
                log["stall_cycles"].append(cyc - 1)
            if v and r:
                cur.append(d)
                if la:
                    resp.append(cur)
                    log["dout"].append(cyc - 1)
                    cur = []
        log["cycles"] = cyc
        log["responses"] = resp

    def n_resp():
        # responses expected: valid READ_OUT, READ_STATUS, SYNC
        n = 0
        for c in cmds:
            if isa.descriptor_errors(cfg, c.word) == 0 and Op(c.word & 0xFF) in (Op.READ_OUT, Op.READ_STATUS,
                                                                                  Op.SYNC):
                n += 1
        return n

    state["n_resp"] = n_resp()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(cmd_tb)
    sim.add_testbench(din_tb)
    sim.add_testbench(dout_tb)
    sim.run()
    return log["responses"], log


def check_session(cfg, cmds, **kw):
    """Run ``cmds`` on the hardware and the reference device; compare every response exactly."""
    ref = RefDevice(cfg)
    expected = [(c, ref.command(c)) for c in cmds]
    expected = [(c, e) for c, e in expected if e is not None]
    got, log = simulate(cfg, cmds, **kw)
    assert len(got) == len(expected)
    for i, ((c, e), g) in enumerate(zip(expected, got)):
        if isinstance(e, dict):
            st = isa.parse_status(cfg, g)
            for key, val in e.items():
                assert st[key] == val, (i, key, st)
        else:
            assert g == e, (i, Op(c.word & 0xFF).name)
    return got, log, ref


# --------------------------------------------------------------------------- data helpers
def rand_params(cfg, rng, lut_en=0):
    p = neutral_params(cfg)
    L = cfg.out_lanes
    p["bias"] = rng.integers(-3000, 3000, L)
    p["mult"] = rng.integers(2**30, 2**31, L)
    p["shift"] = rng.integers(-9, -4, L)
    p["zp"] = rng.integers(-10, 10, L)
    p["act_min"] = rng.integers(-128, -60, L)
    p["act_max"] = rng.integers(60, 128, L)
    p["alpha_mult"] = rng.integers(2**30, 2**31, L)
    p["alpha_shift"] = rng.integers(-3, 1, L)
    p["prelu"] = rng.integers(0, 2, L)
    p["lut_en"] = lut_en
    return p


def rand_bytes(rng, n, m):
    return rng.integers(0, 256, (n, m)).astype(np.uint8)


def load_all(cfg, rng, lut=True):
    """Commands filling both banks of act/wgt/params (and the LUT) with random data."""
    cmds = []
    if lut:
        cmds.append(write_cmd(cfg, Op.WRITE_LUT, rng.integers(0, 256, (256, 1)).astype(np.uint8)))
    for b in range(BANKS):
        cmds.append(write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, cfg.act_depth, cfg.rows), bank=b))
        cmds.append(write_cmd(cfg, Op.WRITE_WGT, rand_bytes(rng, cfg.wgt_depth, cfg.out_lanes), bank=b))
        ps = [rand_params(cfg, rng, lut_en=int(lut and i % 2)) for i in range(cfg.param_depth)]
        cmds.append(write_cmd(cfg, Op.WRITE_PARAMS, isa.pack_params(cfg, ps), bank=b))
    return cmds


# --------------------------------------------------------------------------- tests
@pytest.mark.parametrize("cfg", [CFG, CFG_NARROW, CFG_POW2], ids=["2x2_bus4", "3x1_bus2", "5x1_pow2"])
def test_runs_match_golden_tiles(cfg):
    """Load, several RUNs (multi-tile, both banks, weight reuse, LUT), READ_OUT; exact vs tile_value."""
    rng = np.random.default_rng(1)
    cmds = load_all(cfg, rng)
    kmax = isa.k_max(cfg)
    for i in range(6):
        k = int(rng.integers(1, kmax + 1)) if i else 1
        nt = int(rng.integers(1, min(cfg.act_depth // k, cfg.out_depth // cfg.rows) + 1))
        b = i % BANKS
        cmds.append(run_cmd(cfg, act_bank=b, wgt_bank=1 - b, par_bank=b, out_bank=b, k=k, ntiles=nt,
                            act_offset=int(rng.integers(0, cfg.act_depth - nt * k + 1)),
                            wgt_offset=int(rng.integers(0, cfg.wgt_depth - k + 1)),
                            par_index=int(rng.integers(0, cfg.param_depth)),
                            out_offset=int(rng.integers(0, cfg.out_depth - nt * cfg.rows + 1)),
                            rows_valid=int(rng.integers(0, cfg.rows + 1)),
                            lanes_valid=int(rng.integers(0, cfg.out_lanes + 1))))
        cmds.append(simple(cfg, Op.READ_OUT, bank=b, offset=0, length=cfg.out_depth))
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    got, log, ref = check_session(cfg, cmds, seed=2)
    st = isa.parse_status(cfg, got[-1])
    assert st["flags"] == 0 and st["JOBS_DONE"] == 6 and st["CMDS_DROPPED"] == 0
    # the last READ_STATUS snapshot happens DECODE_CYCLES after its cmd transfer (its first WAIT cycle)
    assert st["CYCLES"] == log["cmd_accept"][-1] + isa.DECODE_CYCLES
    assert st["OUT_STALL_CYCLES"] == sum(c < log["cmd_accept"][-1] + isa.DECODE_CYCLES for c in log["stall_cycles"])


@pytest.mark.parametrize("cfg,k,ntiles", [(CFG, 1, 8), (CFG, 5, 3), (CFG, 16, 2), (CFG_NARROW, 2, 4),
                                          (CFG_NARROW, 9, 2)])
def test_isolated_run_counters_equal_formula(cfg, k, ntiles):
    """BUSY_CYCLES, IN_STALL_CYCLES of a lone RUN == golden.isa.run_timing; USEFUL_MACS exact."""
    rng = np.random.default_rng(k)
    cmds = load_all(cfg, rng, lut=False)
    cmds.append(simple(cfg, Op.CLEAR_STATUS, counters=1))
    cmds.append(run_cmd(cfg, k=k, ntiles=ntiles, rows_valid=cfg.rows - 1, lanes_valid=cfg.out_lanes))
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS),
             simple(cfg, Op.READ_OUT, bank=0, offset=0, length=ntiles * cfg.rows)]
    got, log, _ = check_session(cfg, cmds, seed=k, p_cmd=1.0)
    st = isa.parse_status(cfg, got[1])
    t = isa.run_timing(cfg, k, ntiles)
    assert st["BUSY_CYCLES"] == t["busy_cycles"]
    assert st["IN_STALL_CYCLES"] == t["in_stall_cycles"]
    assert st["USEFUL_MACS"] == ntiles * k * (cfg.rows - 1) * cfg.out_lanes
    assert st["JOBS_DONE"] == 1
    # SYNC answers right after the job retires: RUN accepted on a, queued in its WAIT cycle
    # a + DECODE_CYCLES, busy for busy_cycles cycles from the next one, SYNC's WAIT sees jobs = 0
    # on the cycle after and answers after it.
    a_run = log["cmd_accept"][-4]
    assert log["dout"][0] >= a_run + isa.DECODE_CYCLES + 1 + t["busy_cycles"]


@pytest.mark.parametrize("cfg,k,ntiles", [(CFG, 5, 3), (CFG_NARROW, 2, 4)])
def test_counters_split_add_carries(monkeypatch, cfg, k, ntiles):
    """The counters' split add (hw.top.COUNTER_SPLIT) with a 4-bit low half, so the low half
    carries into the high half (and hi1) many times per session: the shadow checks (value ==
    c + increment, hi1 == hi + 1) hold on every cycle and the READ_STATUS values are exact."""
    monkeypatch.setattr(hw.top, "COUNTER_SPLIT", 4)
    test_isolated_run_counters_equal_formula(cfg, k, ntiles)


def test_overlap_and_interlock():
    """A WRITE into the other bank overlaps a running RUN; commands touching a bank that a queued or
    running job still uses wait for it (results uncorrupted): act of the running job, params of a job
    queued behind another (its set not read yet), out rows still being written."""
    cfg = CFG
    rng = np.random.default_rng(5)
    cmds = load_all(cfg, rng, lut=False)
    k, nt = 4, 8                       # 32 beats over act[0][0:32], 16 out rows in bank 1
    job_a = run_cmd(cfg, act_bank=0, k=k, ntiles=nt, out_bank=1)
    n0 = len(cmds)
    cmds += [job_a,
             write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, 4, cfg.rows), bank=1, offset=36),  # overlaps
             simple(cfg, Op.READ_STATUS),                                                   # -> busy
             write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, 4, cfg.rows), bank=0, offset=28),  # A's last tile: waits
             simple(cfg, Op.READ_OUT, bank=1, offset=nt * cfg.rows - 2, length=2),         # waits for A's rows
             simple(cfg, Op.READ_OUT, bank=1, offset=0, length=nt * cfg.rows),
             simple(cfg, Op.SYNC),
             # phase 2: B queued behind A; its params set is read only after A's last push
             job_a,
             run_cmd(cfg, act_bank=1, k=2, ntiles=2, par_bank=1, par_index=1, wgt_bank=1, out_bank=0,
                     out_offset=8),
             write_cmd(cfg, Op.WRITE_PARAMS, isa.pack_params(cfg, [rand_params(cfg, rng)]), bank=1, offset=1),
             write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, 4, cfg.rows), bank=1, offset=0),
             simple(cfg, Op.READ_OUT, bank=0, offset=8, length=4),
             simple(cfg, Op.READ_STATUS),
             simple(cfg, Op.READ_OUT, bank=1, offset=0, length=nt * cfg.rows),
             simple(cfg, Op.SYNC),
             # phase 3: the weights a running job reuses for every tile
             run_cmd(cfg, act_bank=1, wgt_bank=1, k=k, ntiles=nt, par_bank=1, out_bank=0),
             write_cmd(cfg, Op.WRITE_WGT, rand_bytes(rng, k, cfg.out_lanes), bank=0, offset=0),   # overlaps
             write_cmd(cfg, Op.WRITE_WGT, rand_bytes(rng, k, cfg.out_lanes), bank=1, offset=0),   # waits
             simple(cfg, Op.READ_OUT, bank=0, offset=0, length=nt * cfg.rows),
             simple(cfg, Op.SYNC)]
    got, log, _ = check_session(cfg, cmds, seed=6, p_cmd=1.0, p_din=1.0, p_dout=1.0)
    s1, s2 = isa.parse_status(cfg, got[0]), isa.parse_status(cfg, got[5])
    assert s1["busy"] == 1 and s1["jobs"] == 1          # the bank-1 write completed while A ran
    assert s2["jobs"] == 0                              # the READ_OUT before it waited for B to retire
    acc = log["cmd_accept"][n0:]
    t = isa.run_timing(cfg, k, nt)
    # the write into A's act bank waited until A's last beat had been read: >= 32 cycles after A queued
    assert acc[4] - (acc[0] + isa.DECODE_CYCLES) >= k * nt
    # the params write (accepted as acc[9]) waited for B's pushes, which follow A's last push (model
    # cycle param_push[-1] = hardware cycle queue + 1 + that): the next command comes after it
    assert acc[10] - (acc[7] + isa.DECODE_CYCLES) >= t["param_push"][-1] + 2


def _malformed_cases(cfg, rng):
    """(name, command, expected flags) for every malformed class."""
    eb_act = isa.entry_bytes(cfg, "act")
    good = dict(act_bank=0, act_offset=0, wgt_bank=0, wgt_offset=0, par_bank=0, par_index=0, out_bank=0,
                out_offset=0, k=2, ntiles=2, rows_valid=1, lanes_valid=1)

    def bad_run(**f):
        return Cmd(isa.encode(cfg, Op.RUN, check=False, **dict(good, **f)))

    def bad_write(op, n=3, **f):
        w = isa.encode(cfg, op, check=False, **f)
        words = isa.pack_entries(rand_bytes(rng, n, isa.entry_bytes(cfg, isa.PAYLOAD_BUFFER[op])), cfg.bus_bytes)
        return Cmd(w, [(d, int(i == len(words) - 1)) for i, d in enumerate(words)])

    kmax = isa.k_max(cfg)
    R = Flag.BAD_RANGE
    return [
        ("opcode0", Cmd(0), Flag.BAD_OPCODE),
        ("opcode_hi", Cmd(0xEE | 1 << 90), Flag.BAD_OPCODE),
        ("reserved", Cmd(int(Op.SYNC) | 1 << 127), Flag.RESERVED),
        ("reserved_write", Cmd(isa.encode(cfg, Op.WRITE_ACT, bank=0, offset=0, length=1) | 1 << 120,
                               [(7, 1)]), Flag.RESERVED),
        ("write_bank", bad_write(Op.WRITE_ACT, bank=2, offset=0, length=3), R),
        ("write_len0", bad_write(Op.WRITE_WGT, n=2, bank=0, offset=0, length=0), R),
        ("write_over", bad_write(Op.WRITE_PARAMS, n=1, bank=1, offset=cfg.param_depth - 1, length=2), R),
        ("write_offset", bad_write(Op.WRITE_ACT, bank=1, offset=cfg.act_depth, length=1), R),
        ("lut_over", bad_write(Op.WRITE_LUT, n=5, offset=255, length=2), R),
        ("read_over", Cmd(isa.encode(cfg, Op.READ_OUT, check=False, bank=0, offset=cfg.out_depth - 1,
                                     length=2)), R),
        ("read_bank", Cmd(isa.encode(cfg, Op.READ_OUT, check=False, bank=3, offset=0, length=1)), R),
        ("run_k0", bad_run(k=0), R),
        ("run_kmax", bad_run(k=kmax + 1, ntiles=1), R),
        ("run_ntiles0", bad_run(ntiles=0), R),
        ("run_act_over", bad_run(act_offset=cfg.act_depth - 3), R),
        ("run_wgt_over", bad_run(wgt_offset=cfg.wgt_depth - 1), R),
        ("run_out_over", bad_run(out_offset=cfg.out_depth - cfg.rows), R),
        ("run_par", bad_run(par_index=cfg.param_depth), R),
        ("run_bank", bad_run(out_bank=2), R),
        ("run_rows_valid", bad_run(rows_valid=cfg.rows + 1), R),
        ("run_lanes_valid", bad_run(lanes_valid=cfg.out_lanes + 1), R),
        ("run_both", Cmd(bad_run(par_bank=3).word | 1 << 126), R | Flag.RESERVED),
        ("len_early", write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, 3, eb_act), bank=0, offset=5, mode="early"),
         Flag.LENGTH_MISMATCH),
        ("len_missing", write_cmd(cfg, Op.WRITE_WGT, rand_bytes(rng, 2, cfg.out_lanes), bank=1, offset=3,
                                  mode="missing", extra=3), Flag.LENGTH_MISMATCH),
        ("len_missing1", write_cmd(cfg, Op.WRITE_LUT, rand_bytes(rng, 4, 1), offset=10, mode="missing", extra=1),
         Flag.LENGTH_MISMATCH),
    ]


@pytest.mark.parametrize("cfg", [CFG, CFG_NARROW], ids=["2x2_bus4", "3x1_bus2"])
def test_malformed_commands_flagged_dropped_payload_consumed(cfg):
    """Every malformed class sets exactly its flag, is dropped (counted), its payload consumed; the
    valid job after each one is exact (checked by READ_OUT of its outputs)."""
    rng = np.random.default_rng(9)
    cmds = load_all(cfg, rng)
    cases = _malformed_cases(cfg, rng)
    for i, (name, bad, flags) in enumerate(cases):
        cmds += [bad, simple(cfg, Op.READ_STATUS), simple(cfg, Op.CLEAR_STATUS, counters=0)]
        cmds += [run_cmd(cfg, k=1 + i % 3, ntiles=1, act_bank=i % 2, out_bank=i % 2, par_index=i % cfg.param_depth),
                 simple(cfg, Op.READ_OUT, bank=i % 2, offset=0, length=cfg.rows)]
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    got, log, ref = check_session(cfg, cmds, seed=3)
    k = 0
    statuses = [g for g in got if len(g) == isa.status_response_words(cfg)
                and isa.parse_status(cfg, g)["CYCLES"] > 0]
    for i, (name, bad, flags) in enumerate(cases):
        st = isa.parse_status(cfg, statuses[i])
        assert st["flags"] == flags, name
        assert st["CMDS_DROPPED"] == i + 1, name
        k += 1
    assert isa.parse_status(cfg, got[-1])["JOBS_DONE"] == len(cases)


def rand_run_fields(cfg, rng, k, nt, out_bank=None):
    """The fields of a valid RUN of ``k`` x ``nt`` tiles: random banks (``out_bank`` if given),
    offsets anywhere the tiles fit, random params index and valid rows/lanes."""
    return dict(act_bank=int(rng.integers(0, BANKS)), act_offset=int(rng.integers(0, cfg.act_depth - nt * k + 1)),
                wgt_bank=int(rng.integers(0, BANKS)), wgt_offset=int(rng.integers(0, cfg.wgt_depth - k + 1)),
                par_bank=int(rng.integers(0, BANKS)), par_index=int(rng.integers(0, cfg.param_depth)),
                out_bank=int(rng.integers(0, BANKS)) if out_bank is None else out_bank,
                out_offset=int(rng.integers(0, cfg.out_depth - nt * cfg.rows + 1)), k=k, ntiles=nt,
                rows_valid=int(rng.integers(0, cfg.rows + 1)), lanes_valid=int(rng.integers(0, cfg.out_lanes + 1)))


def _random_session(cfg, rng, n):
    """Valid commands mixed with bit-flipped / random descriptors, each with a consistent payload."""
    cmds = load_all(cfg, rng)
    for _ in range(n):
        op = Op(int(rng.choice([1, 2, 3, 4, 5, 5, 5, 6, 6, 7, 8, 9])))
        if op in (Op.WRITE_ACT, Op.WRITE_WGT, Op.WRITE_PARAMS, Op.WRITE_LUT):
            buf = isa.PAYLOAD_BUFFER[op]
            d = isa.buffer_depth(cfg, buf)
            n_e = int(rng.integers(1, min(d, 6) + 1))
            off = int(rng.integers(0, d - n_e + 1))
            if op == Op.WRITE_PARAMS:
                ent = isa.pack_params(cfg, [rand_params(cfg, rng, lut_en=int(rng.integers(0, 2)))
                                            for _ in range(n_e)])
            else:
                ent = rand_bytes(rng, n_e, isa.entry_bytes(cfg, buf))
            mode = str(rng.choice(["ok"] * 6 + ["early", "missing"])) if n_e > 1 else "ok"
            c = write_cmd(cfg, op, ent, bank=int(rng.integers(0, BANKS)), offset=off, mode=mode,
                          extra=int(rng.integers(1, 4)))
        else:
            fields = {}
            if op == Op.RUN:
                k = int(rng.integers(1, isa.k_max(cfg) + 1))
                nt = int(rng.integers(1, min(cfg.act_depth // k, cfg.out_depth // cfg.rows, 3) + 1))
                fields = rand_run_fields(cfg, rng, k, nt)
            elif op == Op.READ_OUT:
                ln = int(rng.integers(1, cfg.out_depth + 1))
                fields = dict(bank=int(rng.integers(0, 2)), offset=int(rng.integers(0, cfg.out_depth - ln + 1)),
                              length=ln)
            elif op == Op.CLEAR_STATUS:
                fields = dict(counters=int(rng.random() < 0.2))
            c = Cmd(isa.encode(cfg, op, **fields))
        if rng.random() < 0.25:                           # corrupt the descriptor
            w = c.word ^ (1 << int(rng.integers(0, 40 if rng.random() < 0.8 else 128)))
            if rng.random() < 0.1:
                w = int(rng.integers(0, 2**62)) << 66 | int(rng.integers(0, 2**62))
            code = w & 0xFF
            flags = isa.descriptor_errors(cfg, w)
            is_w = code in (1, 2, 3, 4)
            if is_w and not flags and not (code == (c.word & 0xFF)):
                continue                                  # became a different, valid WRITE: payload shape unknown
            if is_w and flags == 0:
                # still a valid write of the same op: lengths may have changed; rebuild a proper payload
                op2, f2 = isa.decode(cfg, w)
                buf = isa.PAYLOAD_BUFFER[op2]
                if op2 == Op.WRITE_PARAMS:
                    ent = isa.pack_params(cfg, [rand_params(cfg, rng) for _ in range(f2["length"])])
                else:
                    ent = rand_bytes(rng, f2["length"], isa.entry_bytes(cfg, buf))
                words = isa.pack_entries(ent, cfg.bus_bytes)
                c = Cmd(w, [(d, int(i == len(words) - 1)) for i, d in enumerate(words)])
            elif is_w and not flags & Flag.BAD_OPCODE:
                c = Cmd(w, c.payload or [(3, 1)])         # dropped write: any payload framed by last
                if not c.payload[-1][1] or any(la for _, la in c.payload[:-1]):
                    c = Cmd(w, [(d, 0) for d, _ in c.payload] + [(1, 1)])
            else:
                c = Cmd(w)
        cmds.append(c)
        if rng.random() < 0.15:
            cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    for b in range(BANKS):
        cmds.append(simple(cfg, Op.READ_OUT, bank=b, offset=0, length=cfg.out_depth))
    return cmds


@pytest.mark.parametrize("seed", [11, 12])
def test_fuzz_sessions_equal_reference(seed):
    """Random mixes of valid and malformed commands (random framing errors, random stream gaps and
    backpressure): every response equals the sequential reference device, nothing hangs."""
    cfg = CFG if seed % 2 else CFG_NARROW
    rng = np.random.default_rng(seed)
    cmds = _random_session(cfg, rng, 70)
    got, log, ref = check_session(cfg, cmds, seed=seed, p_cmd=0.9, p_din=0.85, p_dout=0.75)
    assert ref.total_dropped >= 8                        # the fuzz did exercise the checks


def test_descriptor_checks_exhaustive_fields_vs_isa():
    """Hardware flags for many random raw descriptors == golden.isa.descriptor_errors (one session;
    each descriptor is followed by SYNC, whose status word carries the flags, and CLEAR_STATUS)."""
    cfg = CFG
    rng = np.random.default_rng(21)
    cmds = []
    for i in range(120):
        op = int(rng.choice([5, 6, 7, 8, 9, 0, 10, 255]))       # no WRITE_*: no payload to frame
        w = op | (int(rng.integers(0, 2**60)) << 8 if rng.random() < 0.3 else
                  int(rng.integers(0, 2**30)) << 8 & ((1 << 100) - 1) if rng.random() < 0.5 else 0)
        if op == 5 and rng.random() < 0.6:                        # a RUN close to the boundaries
            f = {fl.name: int(rng.integers(max(fl.lo - 1, 0), fl.hi + 2)) for fl in isa.layout(cfg)[Op.RUN]}
            w = isa.encode(cfg, Op.RUN, check=False, **f)
        if op == 6 and rng.random() < 0.6:
            ln = int(rng.integers(0, 4))
            w = isa.encode(cfg, Op.READ_OUT, check=False, bank=int(rng.integers(0, 3)),
                           offset=int(rng.integers(cfg.out_depth - 4, cfg.out_depth + 1)), length=ln)
        if op == 8:
            w &= ~(1 << 8)                                        # never clear the counters here
        cmds += [Cmd(w), simple(cfg, Op.SYNC), simple(cfg, Op.CLEAR_STATUS, counters=0)]   # SYNC: the flags
    cmds.append(simple(cfg, Op.READ_STATUS))
    _, _, ref = check_session(cfg, cmds, seed=4, p_cmd=1.0, p_dout=1.0)
    assert ref.total_dropped >= 60


def test_build_verilog_accelerator_ports(tmp_path, capsys):
    """``python -m hw.build --target verilog --top accelerator`` writes module ``accelerator`` with the
    documented flattened port names and widths (what the Verilator/cocotb testbench binds to)."""
    import re

    from hw import build
    cfg = CFG
    out = tmp_path / "acc.v"
    rc = build.main(["--target", "verilog", "--top", "accelerator", "--rows", "2", "--cols", "2",
                     "--weight-min", "-128", "--act-depth", str(cfg.act_depth), "--wgt-depth", str(cfg.wgt_depth),
                     "--param-depth", str(cfg.param_depth), "--out-depth", str(cfg.out_depth),
                     "--bus-bytes", str(cfg.bus_bytes), "--max-k", str(cfg.max_k),
                     "--param-fifo-depth", str(cfg.param_fifo_depth), "--out", str(out)])
    assert rc == 0 and "module accelerator" in capsys.readouterr().out
    text = out.read_text()
    head = text[text.index("module accelerator("):]
    head = head[:head.index("endmodule")]
    ports = {n: int(w) + 1 if w else 1
             for w, n in re.findall(r"^\s*(?:input|output)\s+(?:\[(\d+):0\]\s+)?(\w+);", head, re.M)}
    bits = cfg.bus_bytes * 8 + 1
    assert ports == {"clk": 1, "rst": 1, "cmd__valid": 1, "cmd__ready": 1, "cmd__payload": 128,
                     "din__valid": 1, "din__ready": 1, "din__payload": bits,
                     "dout__valid": 1, "dout__ready": 1, "dout__payload": bits}
    bad = build.main(["--target", "verilog", "--act-depth", str(2**20), "--wgt-depth", str(2**20),
                      "--out-depth", str(2**20), "--max-k", str(2**20), "--out", str(tmp_path / "x.v")])
    assert bad == 2 and "more than 128" in capsys.readouterr().err


class _SpacedAccelerator(Accelerator):
    """``Accelerator`` plus simulation assertions on the decoder's registered buffer writes (issue 6:
    the write of an entry happens on the cycle after its final word): no act/wgt/params write and
    sequencer read of the same bank on the same or adjacent cycles (so the extra cycle cannot change
    what a read returns), no sequencer write of an out bank next to a READ_OUT read of it (the
    buffers are ``collision_free``), and no LUT write while or right after a job is queued."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        dec, seq = m.submodules.dec, m.submodules.seq
        for name, w, r in (("act", dec.act_w, seq.act_r), ("wgt", dec.wgt_w, seq.wgt_r),
                           ("params", dec.par_w, None), ("out", seq.out_w, dec.out_r)):
            for b in range(BANKS):
                # The params buffer is read on every cycle (hw.sequencer: the address of the job on
                # offer, known a cycle early); the reads that count are those while a queued job
                # still needs the bank (par_busy).
                wr = w.en & (w.bank == b)
                rd = seq.par_busy[b] if r is None else r.en & (r.bank == b)
                wr_p, rd_p = Signal(), Signal()
                m.d.sync += [wr_p.eq(wr), rd_p.eq(rd),
                             Assert(~(wr & (rd | rd_p)) & ~(wr_p & rd), f"{name} bank {b}: write next to a read")]
        lut_p = Signal()
        m.d.sync += [lut_p.eq(dec.lut.valid),
                     Assert(~(dec.lut.valid | lut_p) | (seq.jobs == 0), "LUT write next to a queued job")]
        return m


def test_registered_writes_never_next_to_a_read(monkeypatch):
    """Back-to-back sessions (no gaps): each WRITE_* right before or after the RUN that reads its bank
    (the interlock holds it), WRITE_LUT right after a RUN; results equal the reference and the
    write/read spacing assertions of ``_SpacedAccelerator`` hold on every cycle."""
    monkeypatch.setattr(sys.modules[__name__], "Accelerator", _SpacedAccelerator)
    cfg = CFG
    rng = np.random.default_rng(31)
    cmds = load_all(cfg, rng)
    k, nt = 3, 4
    for b in (0, 1, 0):
        cmds += [run_cmd(cfg, act_bank=b, wgt_bank=b, par_bank=b, out_bank=b, k=k, ntiles=nt),
                 write_cmd(cfg, Op.WRITE_ACT, rand_bytes(rng, k * nt, cfg.rows), bank=b),
                 write_cmd(cfg, Op.WRITE_WGT, rand_bytes(rng, k, cfg.out_lanes), bank=b),
                 write_cmd(cfg, Op.WRITE_PARAMS, isa.pack_params(cfg, [rand_params(cfg, rng, lut_en=1)]), bank=b),
                 write_cmd(cfg, Op.WRITE_LUT, rng.integers(0, 256, (256, 1)).astype(np.uint8)),
                 run_cmd(cfg, act_bank=b, wgt_bank=b, par_bank=b, out_bank=1 - b, k=k, ntiles=nt),
                 simple(cfg, Op.READ_OUT, bank=1 - b, offset=0, length=nt * cfg.rows)]
    cmds.append(simple(cfg, Op.SYNC))
    check_session(cfg, cmds, seed=8, p_cmd=1.0, p_din=1.0, p_dout=1.0)


class _CounterReadAccelerator(Accelerator):
    """``Accelerator`` plus a simulation assertion on the counters the decoder reads (hw.decoder:
    ``counters`` as they were golden.isa.SNAPSHOT_CYCLES cycles before): on every cycle, each one
    below equals a plain counter of its event and the decoder's clear, SNAPSHOT_CYCLES cycles late,
    whatever pipeline hw/top.py builds in between (issue 6: USEFUL_MACS's high part counts its
    carries a cycle after the low part, and the whole counter is read through a register fewer)."""

    def elaborate(self, platform):
        m = super().elaborate(platform)
        dec, seq = m.submodules.dec, m.submodules.seq
        for s, ev in ((Slot.CYCLES, C(1, 1)), (Slot.USEFUL_MACS, seq.macs_inc), (Slot.JOBS_DONE, seq.job_done),
                      (Slot.CMDS_DROPPED, dec.dropped)):
            plain = Signal(len(dec.counters[int(s) - 1]), name=f"plain_{s.name.lower()}")
            m.d.sync += plain.eq(Mux(dec.clear_counters, 0, plain + ev))
            late = delay(m, plain, isa.SNAPSHOT_CYCLES, f"plain_{s.name.lower()}", reset_less=False)
            m.d.sync += Assert(dec.counters[int(s) - 1] == late, f"{s.name}: the decoder's read != the plain count")
        return m


@pytest.mark.parametrize("split", [None, 4])
@pytest.mark.parametrize("cfg", [CFG, CFG_NARROW], ids=["2x2_bus4", "3x1_bus2"])
def test_counters_read_on_time_through_clears(monkeypatch, cfg, split):
    """Counter clears and READ_STATUS while jobs run (USEFUL_MACS's low part carrying into the high
    part on every few cycles, around each clear): the values the decoder reads equal the plain
    counts SNAPSHOT_CYCLES cycles before on every cycle (``_CounterReadAccelerator``), the shadow
    checks hold, and the responses equal the reference device's. ``split``: hw.top.COUNTER_SPLIT."""
    monkeypatch.setattr(sys.modules[__name__], "Accelerator", _CounterReadAccelerator)
    if split is not None:
        monkeypatch.setattr(hw.top, "COUNTER_SPLIT", split)
    rng = np.random.default_rng(13)
    cmds = load_all(cfg, rng, lut=False)
    k = 3
    nt = min(cfg.act_depth // k, cfg.out_depth // cfg.rows)
    for i in range(3):
        cmds += [run_cmd(cfg, k=k, ntiles=nt, act_bank=i % 2, rows_valid=int(rng.integers(1, cfg.rows + 1)),
                         lanes_valid=int(rng.integers(1, cfg.out_lanes + 1))),
                 simple(cfg, Op.READ_STATUS), simple(cfg, Op.CLEAR_STATUS, counters=1),
                 simple(cfg, Op.READ_STATUS), simple(cfg, Op.CLEAR_STATUS, counters=1)]
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    for seed, p_cmd in ((3, 1.0), (4, 0.5)):
        check_session(cfg, cmds, seed=seed, p_cmd=p_cmd)
