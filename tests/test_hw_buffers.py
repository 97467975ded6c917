"""hw.buffers.BankedBuffer semantics (plain, registered write port, LUT-RAM mode with its kept
per-slice register copies) and the top-level
sequences that depend on the buffers' timing: the tightest WRITE -> RUN distance and
back-to-back params pushes across two jobs (the sequencer's params read on the final push);
the sequencer's registered flags (job.ready, s_avail, p_avail, n_avail, w_lastrow) equal
their combinational forms on every cycle of those sessions.
"""
from __future__ import annotations

import gc
import re
import warnings

import numpy as np
import pytest
from amaranth import ResetInserter, Signal
from amaranth.sim import Simulator

import hw.top
from golden import isa
from golden.config import BANKS, ArrayConfig
from golden.isa import Op
from hw.buffers import (LUT_RAM_CELLS_PER_COPY, READ_SELECT_BITS, WRITE_TO_READ_MIN_CYCLES, BankedBuffer,
                        lut_ram_slice_bits)
from hw.core import ArrayCore
from hw.sequencer import Sequencer
from test_hw_top_amaranth import (check_session, load_all, rand_bytes, rand_params, run_cmd, simple,
                                  write_cmd)
from shadow_checks import checked


# --------------------------------------------------------------------------- the buffer alone
_CheckedBuffer = checked(BankedBuffer, "buffer")


@pytest.mark.parametrize("mode,depth,outreg,stages,wstages,ostages",
                         [(mode, depth, False, 1, 1, 1) for mode in ("plain", "registered", "lut_ram") for depth in (5, 8)]
                         + [("bram_sliced", 8, False, 1, 1, 1)]   # 8: one memory
                         + [("plain", 5, True, 1, 1, 1), ("registered", 8, True, 1, 1, 1), ("lut_ram", 5, True, 1, 1, 1),
                            ("bram_sliced", 8, True, 1, 1, 1), ("lut_ram", 8, False, 2, 1, 1),
                            ("lut_ram", 5, True, 2, 2, 1), ("lut_ram", 8, True, 1, 2, 1), ("lut_ram", 5, True, 2, 2, 2)])
def test_buffer_write_visibility_and_read_hold(mode, depth, outreg, stages, wstages, ostages):
    """Random writes and reads against a model: a write on cycle t is readable from t + 1
    (plain) or t + 2 (registered write, also in LUT-RAM mode); read data holds until the next
    read enable, through writes to the held entry (LUT-RAM mode: the held ADDRESS holds and the
    data follows writes to that entry); the bank of the last read selects the shown data. The
    LUT-RAM buffer has three slices (4 + 4 + 2 bits), each with its own address copies; so has the
    sliced block-RAM buffer, with its own write enable and address copies. ``outreg``
    (``output_register``): ``data`` shows, from the cycle after a random ``oce`` = 1, what the
    model showed on that cycle. ``stages`` (``read_stages``, LUT-RAM mode): a read takes effect
    ``stages`` cycles after it is presented (1: the data shows its entry from the next cycle);
    ``wstages`` (``write_stages``, LUT-RAM mode): a write is readable from t + 1 + wstages, and a
    reset drops the writes presented on its cycle and the wstages - 1 cycles before. ``ostages``
    (``output_stages``, LUT-RAM mode with ``outreg``): the output registers in a row, each loaded
    on ``oce``."""
    registered = mode != "plain"
    lut_ram = mode == "lut_ram"
    width = 10
    dut = _CheckedBuffer(width, depth, registered_write=registered, lut_ram_slice_bits=4 if lut_ram else None,
                         bram_slice_bits=4 if mode == "bram_sliced" else None, output_register=outreg,
                         read_stages=stages, write_stages=wstages, output_stages=ostages)
    if lut_ram or mode == "bram_sliced":
        assert dut.slices(4) == [(0, 4), (4, 8), (8, 10)]
    lag = 1 + wstages if registered else 1
    rng = np.random.default_rng(3 + registered + lut_ram)
    counts = {"raw_old": 0, "raw_new": 0, "held_through_write": 0, "dropped_by_reset": 0}
    rst = Signal()

    async def tb(ctx):
        mem = np.zeros((BANKS, depth), np.int64)
        pending = []                        # (cycle the write becomes visible, bank, addr, data)
        shown = None                        # the model's read data (None: nothing read yet)
        held = None                         # LUT-RAM mode: (bank, addr) of the last read
        last_w = None                       # (cycle, bank, addr) of the latest write
        q = [None] * ostages                # outreg: the output registers' values (None: never loaded)
        reads = []                          # (cycle the read takes effect, bank, addr)
        # (read_stages=2 replaces the held entry before a rewrite more often: longer, for coverage)
        for cyc in range(600 * stages * stages):
            for p in [p for p in pending if p[0] == cyc]:
                mem[p[1], p[2]] = p[3]
            pending = [p for p in pending if p[0] > cyc]
            for r in [r for r in reads if r[0] == cyc]:
                # the read samples the memory as it is on the cycle it takes effect
                shown = int(mem[r[1], r[2]])
                held = (r[1], r[2]) if lut_ram else None
            reads = [r for r in reads if r[0] > cyc]
            if held is not None:
                if shown is not None and shown != int(mem[held]):
                    counts["held_through_write"] += 1      # the held entry was rewritten
                shown = int(mem[held])
            if outreg:
                if q[-1] is not None:
                    assert ctx.get(dut.r.data) == q[-1], f"cycle {cyc}"
                oce = rng.random() < 0.6
                ctx.set(dut.oce, oce)
                if oce:
                    q = [shown] + q[:-1]            # loaded at this cycle's end: this cycle's data
            elif shown is not None:
                assert ctx.get(dut.r.data) == shown, f"cycle {cyc}"
            we = rng.random() < 0.5
            wb, wa, wd = int(rng.integers(0, BANKS)), int(rng.integers(0, depth)), int(rng.integers(0, 1 << width))
            re = rng.random() < 0.6
            # Bias the reads towards the entry written on the previous cycle (read-after-write).
            if last_w is not None and last_w[0] == cyc - 1 and rng.random() < 0.7:
                rb, ra = last_w[1], last_w[2]
            else:
                rb, ra = int(rng.integers(0, BANKS)), int(rng.integers(0, depth))
            ctx.set(dut.w.en, we)
            ctx.set(dut.w.bank, wb)
            ctx.set(dut.w.addr, wa)
            ctx.set(dut.w.data, wd)
            ctx.set(dut.r.en, re)
            ctx.set(dut.r.bank, rb)
            ctx.set(dut.r.addr, ra)
            # A reset (registered modes, cycles without a read: the read data is not reset) drops
            # the write presented on its cycle and nothing else (LUT-RAM mode: the reset-less
            # per-slice enable copies must agree with the reset register every cycle).
            reset = registered and not re and rng.random() < 0.1
            ctx.set(rst, reset)
            for name, copy, ref in getattr(dut, "shadow_checks", []):
                assert ctx.get(copy) == ctx.get(ref), f"cycle {cyc}: {name}"
            if re:
                if last_w is not None and last_w[0] == cyc - 1 and (rb, ra) == last_w[1:]:
                    counts["raw_new" if lag == 1 else "raw_old"] += 1
                if stages == 1:
                    shown = int(mem[rb, ra])    # the read samples the memory as it is on this cycle
                    held = (rb, ra) if lut_ram else None
                else:
                    reads.append((cyc + stages, rb, ra))
            elif shown is not None and we and not lut_ram:
                counts["held_through_write"] += 1
            if reset:
                # writes still in the extra write stage (wstages = 2) are dropped too
                pending = [p for p in pending if p[0] > cyc - 1 + lag or p[0] <= cyc + lag - wstages]
            if we and reset:
                counts["dropped_by_reset"] += 1
            elif we:
                pending.append((cyc + lag, wb, wa, wd))
                last_w = (cyc, wb, wa)
            await ctx.tick()

    sim = Simulator(ResetInserter(rst)(dut))
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert counts["held_through_write"] > 20
    assert counts["raw_new" if lag == 1 else "raw_old"] > 20
    assert counts["dropped_by_reset"] > 5 if registered else counts["dropped_by_reset"] == 0
    assert len(getattr(dut, "shadow_checks", [])) == \
        {"lut_ram": BANKS * 3 + (3 if stages == 2 else 0) + (2 * 3 if wstages == 2 else 0),
         "bram_sliced": 2 * 3}.get(mode, 0)


def test_lut_ram_slice_width_bounds_the_copy_fanout():
    """One read address copy drives LUT_RAM_CELLS_PER_COPY 16-entry LUT-RAM cells (4 bits
    each) over all banks."""
    assert lut_ram_slice_bits(16) == 4 * LUT_RAM_CELLS_PER_COPY // BANKS
    assert lut_ram_slice_bits(3) == 4 * LUT_RAM_CELLS_PER_COPY // BANKS
    assert lut_ram_slice_bits(64) == LUT_RAM_CELLS_PER_COPY // BANKS     # 4 cells deep per 4 bits
    assert lut_ram_slice_bits(16 * 1000) == 4                    # never below one cell wide


def test_lut_ram_copies_are_kept_flip_flops_on_ecp5():
    """On an ECP5 platform every slice's read bank select and every bank-slice's read and write
    address is its own set of TRELLIS_FF instances with ``keep`` (yosys would otherwise merge
    the identical registers back into one, with the fanout they exist to split), each loading
    from the read (write) port with the read enable (always) as clock enable."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    # slices of 36, 36 and 8 bits: the bank select has a copy per READ_SELECT_BITS of a slice
    width, depth = 80, 5
    dut = BankedBuffer(width, depth, registered_write=True, lut_ram_slice_bits=36)
    text = rtlil.convert(dut, name="buf", platform=ULX3S_85F_Platform())
    cells = re.findall(r"attribute \\keep 1\n(?:  attribute [^\n]*\n)*  cell \\TRELLIS_FF \\(\S+)", text)
    nslices, abits, bbits = 3, (depth - 1).bit_length(), (BANKS - 1).bit_length()
    sel_copies = [-(-36 // READ_SELECT_BITS)] * 2 + [1]
    assert sel_copies == [3, 3, 1]
    expect = {f"r_addr_b{b}_s{g}_ff{i}" for b in range(BANKS) for g in range(nslices) for i in range(abits)}
    expect |= {f"r_bank_s{g}_{j}_ff{i}" for g in range(nslices) for j in range(sel_copies[g]) for i in range(bbits)}
    expect |= {f"w_addr_b{b}_s{g}_ff{i}" for b in range(BANKS) for g in range(nslices) for i in range(abits)}
    # each write-enable copy is a reset register of its own: its D input ANDs a kept constant-1
    # flip-flop of the copy's own, so yosys cannot merge the copies (hw.buffers.enable_copy)
    expect |= {f"w_en_b{b}_s{g}_one_ff0" for b in range(BANKS) for g in range(nslices)}
    assert set(cells) == expect and len(cells) == len(expect)
    # the behavioural twin (no platform): no instance at all
    assert "TRELLIS_FF" not in rtlil.convert(BankedBuffer(width, depth, registered_write=True,
                                                          lut_ram_slice_bits=4), name="buf")


def test_bram_slice_copies_are_kept_flip_flops_on_ecp5():
    """Sliced block-RAM mode on an ECP5 platform: every slice's write address (with the bank bit)
    and write enable copy is its own set of TRELLIS_FF instances with ``keep``."""
    from amaranth.back import rtlil
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    width, depth = 10, 8
    text = rtlil.convert(BankedBuffer(width, depth, registered_write=True, bram_slice_bits=4), name="buf",
                         platform=ULX3S_85F_Platform())
    cells = re.findall(r"attribute \\keep 1\n(?:  attribute [^\n]*\n)*  cell \\TRELLIS_FF \\(\S+)", text)
    abits = (depth - 1).bit_length() + (BANKS - 1).bit_length()
    expect = {f"w_addr_s{g}_ff{i}" for g in range(3) for i in range(abits)} | {f"w_en_s{g}_one_ff0" for g in range(3)}
    assert set(cells) == expect and len(cells) == len(expect)


def test_enable_copies_and_live_registers_stay_apart_in_ecp5_synthesis(tmp_path):
    """yosys synth_ecp5 keeps every ``enable_copy`` and every ``live_register`` a flip-flop of its
    own (issue 6: opt_merge folded all the identical live registers of the top into one, whose
    fanout crossed the die)."""
    from amaranth import Module
    from amaranth.back import rtlil
    from amaranth.lib import wiring
    from amaranth.lib.wiring import In, Out
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    from hw import fpga
    from hw.buffers import enable_copy, live_register

    class Copies(wiring.Component):
        def __init__(self):
            super().__init__({"d": In(1), "q": Out(3), "live": Out(3)})

        def elaborate(self, platform):
            m = Module()
            for i in range(3):
                m.d.comb += [self.q[i].eq(enable_copy(m, platform, self.d, f"en{i}")),
                             self.live[i].eq(live_register(m, platform, f"live{i}"))]
            return m

    (tmp_path / "c.il").write_text(rtlil.convert(Copies(), name="c", platform=ULX3S_85F_Platform()))
    stat, _ = fpga._yosys(tmp_path, "read_rtlil c.il\nsynth_ecp5 -top c\ntee -q -o stat.txt stat\n", 600)
    # per copy and per live register: the register and its own constant-1 flip-flop
    assert fpga.parse_yosys_stat(stat)["TRELLIS_FF"] == 2 * (3 + 3)


def test_collision_free_buffer_maps_to_plain_dp16kd(tmp_path):
    """collision_free=True (the act/wgt buffers of the top): the flow marks its read ports COLLISION_X
    (hw.fpga.collision_x_for_no_rw_check) and yosys maps the memory to DP16KD alone. Without it,
    yosys emulates read-first across the DP16KD's ports: the write data delayed a cycle (36
    flip-flops), a bypass register per output bit behind the read enable (36) and a mux behind the
    BRAM output."""
    from amaranth.back import rtlil
    from hw import fpga
    cells = {}
    for free in (False, True):
        text, n = fpga.collision_x_for_no_rw_check(rtlil.convert(
            BankedBuffer(36, 1024, registered_write=True, bram_slice_bits=36, collision_free=free), name="buf"))
        assert n == int(free)
        d = tmp_path / str(free)
        d.mkdir()
        (d / "buf.il").write_text(text)
        stat, _ = fpga._yosys(d, "read_rtlil buf.il\nsynth_ecp5 -top buf\ntee -q -o stat.txt stat\n", 600)
        cells[free] = fpga.parse_yosys_stat(stat)
    assert cells[True]["DP16KD"] == cells[False]["DP16KD"] == 4            # 2048 x 9 each
    # the write port's registers: data 36, address + bank 11, enable copy and live: ~50
    assert cells[True]["TRELLIS_FF"] <= 36 + 11 + 4
    assert cells[False]["TRELLIS_FF"] >= cells[True]["TRELLIS_FF"] + 72
    assert cells[True].get("LUT4", 0) < 8 and cells[False]["LUT4"] > 40


def test_collision_x_marks_only_the_collision_free_buffers_of_the_top():
    """In the accelerator's RTLIL (one module per block) exactly the act/wgt/out buffers' read ports
    are marked: act 40 bits = 2 slices, wgt 1 slice, out 1 memory (READ_OUT of a bank waits for the
    jobs writing it, session 10); the params LUT-RAM and the core's memories keep Amaranth's
    COLLISION_X_MASK 0."""
    from amaranth.back import rtlil
    from hw import fpga
    from hw.top import Accelerator
    cfg = ArrayConfig(rows=5, cols=1, weight_min=-128, act_depth=32, wgt_depth=16, param_depth=2, out_depth=16,
                      bus_bytes=4, max_k=16, param_fifo_depth=2)
    text = rtlil.convert(Accelerator(cfg), name="acc")
    marked, n = fpga.collision_x_for_no_rw_check(text)
    assert n == 4 and marked.count("COLLISION_X_MASK 1'1") == 4
    assert marked.count("$memrd_v2") == text.count("$memrd_v2") > 4
    assert marked.count("COLLISION_X_MASK 1'0") == text.count("COLLISION_X_MASK 1'0") - 4
    assert fpga.collision_x_for_no_rw_check(rtlil.convert(BankedBuffer(8, 4), name="b"))[1] == 0


def test_buffer_rejects_bad_arguments():
    # The half-built components warn "created but never used" when collected: collect them here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="registered_write"):
            BankedBuffer(8, 4, registered_write=1)
        with pytest.raises(ValueError, match="width and depth"):
            BankedBuffer(0, 4)
        for bad in (0, True, 2.0):
            with pytest.raises(ValueError, match="lut_ram_slice_bits"):
                BankedBuffer(8, 4, registered_write=True, lut_ram_slice_bits=bad)
        with pytest.raises(ValueError, match="registered_write=True"):
            BankedBuffer(8, 4, lut_ram_slice_bits=4)
        with pytest.raises(ValueError, match="depth"):
            lut_ram_slice_bits(0)
        for bad in (0, True, 2.0):
            with pytest.raises(ValueError, match="bram_slice_bits"):
                BankedBuffer(8, 4, registered_write=True, bram_slice_bits=bad)
        for kw in ({"registered_write": False}, {"registered_write": True, "lut_ram_slice_bits": 4}):
            with pytest.raises(ValueError, match="bram_slice_bits needs registered_write=True"):
                BankedBuffer(8, 4, bram_slice_bits=4, **kw)
        with pytest.raises(ValueError, match="power-of-two depth .*depth=5"):
            BankedBuffer(8, 5, registered_write=True, bram_slice_bits=4)
        with pytest.raises(ValueError, match="collision_free must be a bool"):
            BankedBuffer(8, 4, collision_free=1)
        for kind in ("read", "write"):
            for bad in (0, 3, True, 2.0):
                with pytest.raises(ValueError, match=f"{kind}_stages must be 1 or 2"):
                    BankedBuffer(8, 4, registered_write=True, lut_ram_slice_bits=4, **{f"{kind}_stages": bad})
            with pytest.raises(ValueError, match=f"{kind}_stages=2 needs lut_ram_slice_bits"):
                BankedBuffer(8, 4, registered_write=True, **{f"{kind}_stages": 2})
        for bad in (0, 3, True, 1.5):
            with pytest.raises(ValueError, match="output_stages must be 1 or 2"):
                BankedBuffer(8, 4, registered_write=True, lut_ram_slice_bits=4, output_register=True,
                             output_stages=bad)
        for kw in ({"lut_ram_slice_bits": 4}, {"output_register": True}):
            with pytest.raises(ValueError, match="output_stages=2 needs lut_ram_slice_bits and output_register=True"):
                BankedBuffer(8, 4, registered_write=True, output_stages=2, **kw)
        gc.collect()


# --------------------------------------------------------------------------- through the top
CFG = ArrayConfig(rows=2, cols=2, weight_min=-128, act_depth=40, wgt_depth=20, param_depth=3, out_depth=16,
                  bus_bytes=4, max_k=16, param_fifo_depth=2)
# One row per tile and a params FIFO deeper than the array latency: tiles complete one per
# cycle, so the params FIFO drains as fast as it fills and the next job's first push follows
# the previous job's final push directly (with rows >= 2 or a shallow FIFO the FIFO is full
# after a final push and the next push comes later).
CFG_ROW1 = ArrayConfig(rows=1, cols=1, weight_min=-128, act_depth=48, wgt_depth=8, param_depth=4, out_depth=48,
                       bus_bytes=4, max_k=8, param_fifo_depth=8)


_CheckedSequencer = checked(Sequencer, "sequencer")
_CheckedCore = checked(ArrayCore, "core")


@pytest.fixture
def checked_sequencer(monkeypatch):
    """The top with the sequencer's and the core's shadow checks asserted (among them the core's
    ``input_qualified``: the sequencer's own copy of the core's acceptance state is exact)."""
    monkeypatch.setattr(hw.top, "Sequencer", _CheckedSequencer)
    monkeypatch.setattr(hw.top, "ArrayCore", _CheckedCore)


@pytest.mark.parametrize("op", [Op.WRITE_ACT, Op.WRITE_WGT, Op.WRITE_PARAMS])
def test_top_write_then_run_tightest(op, checked_sequencer):
    """A RUN that reads the final entry of the WRITE just before it, with no gaps anywhere:
    the RUN's command transfer is the cycle after the WRITE's final word (the tightest
    WRITE -> RUN distance, WRITE_TO_READ_MIN_CYCLES >= 5 is what the decoder's assembly and
    write registers, hw.top's write register and the buffer's registered write port rely on);
    the results must use the new entry."""
    cfg = CFG
    rng = np.random.default_rng(int(op))
    cmds = load_all(cfg, rng, lut=False)
    k, nt = 3, 2
    if op == Op.WRITE_ACT:
        entries, offset, run_f = rand_bytes(rng, nt * k, cfg.rows), 4, dict(act_bank=1, act_offset=4)
    elif op == Op.WRITE_WGT:
        entries, offset, run_f = rand_bytes(rng, k, cfg.out_lanes), 7, dict(wgt_bank=1, wgt_offset=7)
    else:
        entries = isa.pack_params(cfg, [rand_params(cfg, rng) for _ in range(2)])
        offset, run_f = 1, dict(par_bank=1, par_index=2)   # the final entry written
    write = write_cmd(cfg, op, entries, bank=1, offset=offset)
    n0 = len(cmds)
    cmds += [write, run_cmd(cfg, k=k, ntiles=nt, **run_f),
             simple(cfg, Op.READ_OUT, bank=0, offset=0, length=nt * cfg.rows), simple(cfg, Op.SYNC)]
    got, log, _ = check_session(cfg, cmds, seed=int(op), p_cmd=1.0, p_din=1.0, p_dout=1.0)
    acc = log["cmd_accept"]
    # WRITE transferred on a: CHECK a+1, COMPARE a+2, DECIDE a+3, WAIT a+D (D = DECODE_CYCLES),
    # payload words a+D+1 .. a+D+n (the final word transferred on t = a+D+n); the
    # RUN transfers on t+1 (IDLE), then CHECK, COMPARE, DECIDE, WAIT (job transfer) and the
    # sequencer's first reads on t+D+2.
    t_final = acc[n0] + isa.DECODE_CYCLES + len(write.payload)
    assert acc[n0 + 1] == t_final + 1
    # the final word in the decoder's assembly register (t + 1), the decoder's registered write
    # (t + 2), the buffer's own write register in hw.top (t + 3) and the buffer's write register
    # (t + 4) -> readable t + 5 (the params buffer: one more write stage, readable t + 6, and its
    # reads sample the LUT-RAM two cycles after they are presented)
    assert (acc[n0 + 1] + isa.DECODE_CYCLES + 1) - t_final == WRITE_TO_READ_MIN_CYCLES >= 5


def test_top_params_back_to_back_jobs(checked_sequencer):
    """Two queued jobs with one-row tiles: the second job's first params set is pushed on the
    cycle after the first job's final push (read on the final push from the next job's entry),
    with a different bank and index for each job; exact against the reference."""
    cfg = CFG_ROW1
    rng = np.random.default_rng(11)
    cmds = load_all(cfg, rng, lut=False)
    nt = 16
    for i in range(3):
        cmds.append(run_cmd(cfg, act_bank=i % BANKS, wgt_bank=1 - i % BANKS, par_bank=i % BANKS, par_index=i + 1,
                            out_bank=i % BANKS, out_offset=16 * (i // BANKS), k=1, ntiles=nt,
                            act_offset=int(rng.integers(0, cfg.act_depth - nt + 1)), wgt_offset=i))
    cmds += [simple(cfg, Op.READ_OUT, bank=b, offset=0, length=cfg.out_depth) for b in range(BANKS)]
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    got, _, _ = check_session(cfg, cmds, seed=12, p_cmd=1.0, p_din=1.0, p_dout=1.0)
    st = isa.parse_status(cfg, got[-1])
    assert st["JOBS_DONE"] == 3 and st["flags"] == 0
