"""``hw.decoder.Decoder`` alone: the descriptor checks against ``golden.isa.descriptor_errors``.

The RUN products (``ntiles * k`` against the room after ``act_offset``, ``ntiles * rows``
against the room after ``out_offset``) are registered in IDLE, copied in CHECK and compared in
COMPARE (issue 6);
these tests put ``offset + product`` on, just below and just above the depth, plus random
fields, and check on every command: the drop decision in DECIDE (``dropped`` exactly
``DECODE_CYCLES`` - 1 cycles after the command transfer), the flags it sets, the job handed over in WAIT otherwise;
a READ_STATUS at the end; and on every cycle that the decoder's registered state flags
equal their state tests (``Decoder.shadow_checks``).
"""
from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden import isa
from golden.config import ArrayConfig
from golden.isa import Op
from hw.core import params_layout
from hw.decoder import Decoder
from hw.fpga import ULX3S_CFG
from shadow_checks import checked

SMALL = ArrayConfig(rows=3, cols=2, bus_bytes=4, act_depth=32, wgt_depth=16, param_depth=2, out_depth=40)


_CheckedDecoder = checked(Decoder, "decoder")


def _run_words(cfg, rng, n):
    """RUN descriptors: products on the act / out boundary (offset + product = depth - 1, depth,
    depth + 1) and fully random fields (check=False: any value that fits its field)."""
    widths = {f.name: f.width for f in isa.layout(cfg)[Op.RUN]}
    kmax, ntmax = isa.k_max(cfg), isa.ntiles_max(cfg)
    words = []
    for i in range(n):
        f = {name: int(rng.integers(0, 1 << w)) for name, w in widths.items()}
        if i % 4 != 3:                                   # 3 of 4: every other field legal
            f.update(act_bank=i % 2, wgt_bank=1 - i % 2, par_bank=0, out_bank=i % 2, wgt_offset=0,
                     par_index=0, rows_valid=cfg.rows, lanes_valid=cfg.out_lanes)
            f["ntiles"] = int(rng.integers(1, ntmax + 1))
            f["k"] = int(rng.integers(1, kmax + 1))
            d = int(rng.integers(-1, 2))
            if i % 2:                                    # act boundary, out well inside
                f["ntiles"] = min(f["ntiles"], max(1, cfg.act_depth // f["k"]))
                f["act_offset"] = min(max(cfg.act_depth - f["ntiles"] * f["k"] + d, 0), cfg.act_depth - 1)
                f["out_offset"] = 0
            else:                                        # out boundary, act well inside
                f["k"] = 1
                f["ntiles"] = min(f["ntiles"], cfg.act_depth)
                f["act_offset"] = 0
                f["out_offset"] = min(max(cfg.out_depth - f["ntiles"] * cfg.rows + d, 0), cfg.out_depth - 1)
        words.append(isa.encode(cfg, Op.RUN, check=False, **f))
    return words


async def _send_cmd(ctx, dut, cmd, tick=None):
    """Present ``cmd`` on the decoder's command port until it is taken, then drop valid (``tick``:
    the clock step to await, ``ctx.tick`` unless given)."""
    tick = tick or ctx.tick
    ctx.set(dut.cmd.payload, cmd)
    ctx.set(dut.cmd.valid, 1)
    while not ctx.get(dut.cmd.ready):
        await tick()
    await tick()
    ctx.set(dut.cmd.valid, 0)


def _simulate(cfg, words):
    """Each word as a command, a CLEAR_STATUS after each dropped one; returns, per word, (dropped
    cycle - transfer cycle, flags after DECIDE) or (None, job payload) for a job handed over."""
    dut = _CheckedDecoder(cfg, params_layout(cfg).size)
    clear = isa.encode(cfg, Op.CLEAR_STATUS, counters=0)
    out = []

    async def tb(ctx):
        ctx.set(dut.job.ready, 1)
        for w in words:
            for cmd in (w, clear):
                await _send_cmd(ctx, dut, cmd)
                for dt in range(1, isa.DECODE_CYCLES + 3):   # CHECK 1, COMPARE 2, DECIDE 3, WAIT 4
                    if ctx.get(dut.dropped):
                        await ctx.tick()
                        if cmd == w:
                            out.append((dt, ctx.get(dut.flags)))
                        break
                    if ctx.get(dut.job.valid):
                        if cmd == w:
                            out.append((None, {n: ctx.get(getattr(dut.job.payload, n))
                                               for n in ("k", "ntiles", "act_offset", "out_offset")}, dt))
                        await ctx.tick()
                        break
                    if cmd == clear and ctx.get(dut.cmd.ready):
                        break
                    await ctx.tick()
                else:
                    raise AssertionError(f"command {cmd:#x}: neither dropped nor handed over")
                if cmd == w and out[-1][0] is None:
                    break                                # accepted: flags still clear, no CLEAR needed
        # a READ_STATUS (RESP state: resp_r's shadow check; dout's words, last on the final one)
        ctx.set(dut.cmd.payload, isa.encode(cfg, Op.READ_STATUS))
        ctx.set(dut.cmd.valid, 1)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        ctx.set(dut.dout.ready, 1)
        words_seen = []
        for _ in range(isa.DECODE_CYCLES + isa.SNAPSHOT_CYCLES + isa.status_response_words(cfg) + 1):
            if ctx.get(dut.dout.valid):
                words_seen.append(ctx.get(dut.dout.payload.last))
                if words_seen[-1]:
                    break
            await ctx.tick()
        out.append(words_seen)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


@pytest.mark.parametrize("cfg,seed,n", [(ULX3S_CFG, 1, 48), (SMALL, 2, 64)])
def test_run_product_checks_match_golden(cfg, seed, n):
    rng = np.random.default_rng(seed)
    words = _run_words(cfg, rng, n)
    got = _simulate(cfg, words)
    assert got.pop() == [0] * (isa.status_response_words(cfg) - 1) + [1]
    assert len(got) == len(words)
    n_ok = n_range = 0
    for w, g in zip(words, got):
        errs = isa.descriptor_errors(cfg, w)
        if errs:
            assert g == (isa.DECODE_CYCLES - 1, errs), (hex(w), g, errs)   # dropped in DECIDE, exactly errs
            n_range += bool(errs & isa.Flag.BAD_RANGE)
        else:
            op, f = isa.decode(cfg, w)
            assert op == Op.RUN and g[0] is None and g[2] == isa.DECODE_CYCLES, (hex(w), g)   # handed over in WAIT
            assert g[1] == {n_: f[n_] for n_ in g[1]}
            n_ok += 1
    assert n_ok >= n // 8 and n_range >= n // 8            # both outcomes well represented


def _simulate_writes(cfg, cmds):
    """``cmds``: (op, bank, offset, entries, mode) with mode ok | early (``last`` one word early) |
    missing (no ``last`` on the final word, two more words, ``last`` on the second); din.valid
    drops every third cycle. Returns, per command, the (bank, addr, data) writes of its buffer, the
    ``dropped`` pulses, the flags afterwards and, per write, the cycles from its entry's final
    word's transfer to the write; a CLEAR_STATUS follows each command."""
    dut = _CheckedDecoder(cfg, params_layout(cfg).size)
    ports = {Op.WRITE_ACT: dut.act_w, Op.WRITE_PARAMS: dut.par_w}
    clear = isa.encode(cfg, Op.CLEAR_STATUS, counters=0)
    out = []

    async def tb(ctx):
        cycle = 0
        now = [0]                                        # the cycle number

        async def tick():
            now[0] += 1
            await ctx.tick()

        for op, bank, offset, entries, mode in cmds:
            words = isa.pack_entries(entries, cfg.bus_bytes)
            wpe = isa.words_per_entry(isa.entry_bytes(cfg, isa.PAYLOAD_BUFFER[op]), cfg.bus_bytes)
            finals, at = [], []                          # final words' transfer cycles, write cycles
            if mode == "ok":
                pay = [(d, int(i == len(words) - 1)) for i, d in enumerate(words)]
            elif mode == "early":
                pay = [(d, int(i == len(words) - 2)) for i, d in enumerate(words[:-1])]
            else:
                pay = [(d, 0) for d in words] + [(0x5A, 0), (0xA5, 1)]
            writes, drops = [], 0
            for cmd in (isa.encode(cfg, op, bank=bank, offset=offset, length=len(entries)), clear):
                await _send_cmd(ctx, dut, cmd, tick)
                i = 0
                for _ in range(6 * len(pay) + 12):       # until back in IDLE (cmd.ready) with all words sent
                    if cmd == clear and ctx.get(dut.cmd.ready):
                        break
                    valid = int(i < len(pay) and cycle % 3 != 2)
                    ctx.set(dut.din.valid, valid)
                    if valid:
                        ctx.set(dut.din.payload.data, pay[i][0])
                        ctx.set(dut.din.payload.last, pay[i][1])
                    if ctx.get(ports[op].en):
                        writes.append((ctx.get(ports[op].bank), ctx.get(ports[op].addr), ctx.get(ports[op].data)))
                        at.append(now[0])
                    drops += ctx.get(dut.dropped)
                    if valid and ctx.get(dut.din.ready):
                        if cmd != clear and i < len(words) and i % wpe == wpe - 1:
                            finals.append(now[0])        # an entry's final word
                        i += 1
                    if cmd != clear and i == len(pay) and ctx.get(dut.cmd.ready):
                        break
                    cycle += 1
                    await tick()
                else:
                    raise AssertionError(f"{op.name} {mode}: did not finish")
                ctx.set(dut.din.valid, 0)
                if cmd != clear:
                    # the final entry's write: words land in the assembly register one cycle after
                    # their transfer, the write is registered once more (hw/decoder.py, asm)
                    for _ in range(2):
                        await tick()
                        if ctx.get(ports[op].en):
                            writes.append((ctx.get(ports[op].bank), ctx.get(ports[op].addr),
                                           ctx.get(ports[op].data)))
                            at.append(now[0])
                    out.append((writes, drops, ctx.get(dut.flags), [a - f for a, f in zip(at, finals)]))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return out


@pytest.mark.parametrize("cfg,seed", [(ULX3S_CFG, 3), (SMALL, 4)])
def test_writes_and_length_mismatch(cfg, seed):
    """WRITE_ACT / WRITE_PARAMS (multi-word entries; on ULX3S_CFG each assembly word's enable is
    split over several wsel copies): the entries written at offset + i with the entry's bytes,
    LENGTH_MISMATCH drops (one ``dropped`` pulse) for ``last`` early / missing; on every cycle the
    shadow flags equal their state tests and every replicated enable equals its original (the
    assembly word enables: wsel one cycle late). Each entry is written exactly two cycles after its
    final word's transfer (the word lands in the assembly register on the next cycle, the write is
    registered from there: hw.buffers.WRITE_TO_READ_MIN_CYCLES covers it at the top)."""
    rng = np.random.default_rng(seed)
    cmds = []
    for op, buf in ((Op.WRITE_ACT, "act"), (Op.WRITE_PARAMS, "params")):
        eb = isa.entry_bytes(cfg, buf)
        for mode in ("ok", "early", "missing", "ok"):
            depth = isa.buffer_depth(cfg, buf)
            offset = int(rng.integers(0, depth - 1))
            n = int(rng.integers(2, min(3, depth - offset) + 1))
            cmds.append((op, int(rng.integers(0, 2)), offset, rng.integers(0, 256, (n, eb)), mode))
    got = _simulate_writes(cfg, cmds)
    assert isa.words_per_entry(isa.entry_bytes(cfg, "params"), cfg.bus_bytes) > 1
    for (op, bank, offset, entries, mode), (writes, drops, flags, lat) in zip(cmds, got):
        assert lat == [2] * len(writes), (op, mode, lat)
        width = cfg.rows * 8 if op == Op.WRITE_ACT else params_layout(cfg).size
        want = [(bank, offset + i, int.from_bytes(bytes(e.astype(np.uint8)), "little") & ((1 << width) - 1))
                for i, e in enumerate(entries)]
        if mode == "ok":
            assert (writes, drops, flags) == (want, 0, 0), (op, mode)
        else:                                            # early: the final entry is never complete
            assert writes == (want[:-1] if mode == "early" else want), (op, mode)
            assert (drops, flags) == (1, int(isa.Flag.LENGTH_MISMATCH)), (op, mode)


WIDE = ArrayConfig(rows=2, cols=6, bus_bytes=4, act_depth=32, wgt_depth=16, param_depth=2, out_depth=40)


@pytest.mark.parametrize("cfg,seed", [(ULX3S_CFG, 5), (WIDE, 6)])   # WIDE: 3 words per out row
def test_read_out_stream(cfg, seed):
    """READ_OUT of n rows under random dout backpressure: one out-buffer read per row at offset + i
    (the row's address when issued), the rows' words in order with ``last`` on the final word only;
    on every cycle the registered word-index flags (``row_end``, ``is_last``) equal their compares.
    The out buffer is modelled as hw.top has it: a read register loaded on ``out_r.en``, then an
    output register loaded on ``out_oce`` (golden.isa.OUT_READ_CYCLES = 2)."""
    assert isa.OUT_READ_CYCLES == 2
    rng = np.random.default_rng(seed)
    dut = _CheckedDecoder(cfg, params_layout(cfg).size)
    bus_bits = cfg.bus_bytes * 8
    n_out = isa.words_per_entry(isa.entry_bytes(cfg, "out"), cfg.bus_bytes)
    reqs = [(int(rng.integers(0, 2)), int(rng.integers(0, cfg.out_depth - 4)), int(rng.integers(1, 5)))
            for _ in range(4)]
    got = []

    async def tb(ctx):
        for bank, offset, n in reqs:
            ctx.set(dut.cmd.payload, isa.encode(cfg, Op.READ_OUT, bank=bank, offset=offset, length=n))
            ctx.set(dut.cmd.valid, 1)
            assert ctx.get(dut.cmd.ready)               # the previous READ_OUT ended in IDLE
            await ctx.tick()
            ctx.set(dut.cmd.valid, 0)
            reads, words, row, held = [], [], None, None      # the read / output registers' rows
            for _ in range(40 * n):
                ready = int(rng.integers(0, 3) != 0)
                ctx.set(dut.dout.ready, ready)
                if ready and ctx.get(dut.dout.valid):
                    words.append((ctx.get(dut.dout.payload.data), ctx.get(dut.dout.payload.last)))
                    if words[-1][1]:
                        await ctx.tick()                # the final word's transfer
                        break
                oce, en = ctx.get(dut.out_oce), ctx.get(dut.out_r.en)
                if en:
                    reads.append((ctx.get(dut.out_r.bank), ctx.get(dut.out_r.addr)))
                nxt = ctx.get(dut.out_r.addr)
                await ctx.tick()
                held = row if oce else held
                row = nxt if en else row
                if held is not None:                    # the output register: the row it holds
                    ctx.set(dut.out_r.data, sum((held * n_out + q + 1) << (q * bus_bits) for q in range(n_out)))
            ctx.set(dut.dout.ready, 0)
            got.append((reads, words))
            for _ in range(3):
                await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    for (bank, offset, n), (reads, words) in zip(reqs, got):
        assert reads == [(bank, offset + i) for i in range(n)]
        want = [((offset + i) * n_out + q + 1) & ((1 << bus_bits) - 1) for i in range(n) for q in range(n_out)]
        assert words == [(w, int(j == len(want) - 1)) for j, w in enumerate(want)], (bank, offset, n)
