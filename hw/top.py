"""``Accelerator``: the accelerator top of docs/top.md.

Blocks (one per file):

* ``hw.decoder.Decoder``   commands, payload framing, checks, interlocks, responses
* ``hw.sequencer.Sequencer`` job queue, beat streamer, params pusher, output writer
* ``hw.buffers.BankedBuffer`` x 4: act, wgt, params, out (``BANKS`` banks each)
* ``hw.core.ArrayCore``    the MACC array and its lanes (its LUT is the 5th "buffer")
* the performance counters (here): ``COUNTER_BITS`` = 64 bits each, order
  ``golden.isa.Slot``

Ports (``wiring`` signature; the command format is golden/isa.py):

* ``cmd``  In(stream.Signature(unsigned(128)))        command descriptors
* ``din``  In(stream.Signature(bus_layout(cfg)))      ``data`` (bus_bytes*8), ``last``
* ``dout`` Out(stream.Signature(bus_layout(cfg)))     ``data`` (bus_bytes*8), ``last``

Verilog (``python -m hw.build --target verilog --top accelerator``, module
``accelerator``) keeps Amaranth's default flattening:

====================  ======  =============================================
port                  dir     width
====================  ======  =============================================
``clk``, ``rst``      in      1 (sync domain; ``rst`` synchronous, active high)
``cmd__valid``        in      1
``cmd__ready``        out     1
``cmd__payload``      in      128 (descriptor, opcode in bits [0, 8))
``din__valid``        in      1
``din__ready``        out     1
``din__payload``      in      bus_bytes*8 + 1: ``data`` = bits [0, bus_bytes*8),
                              ``last`` = bit bus_bytes*8
``dout__valid``       out     1
``dout__ready``       in      1
``dout__payload``     out     bus_bytes*8 + 1 (same packing as ``din``)
====================  ======  =============================================
"""
from __future__ import annotations

from amaranth import C, Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from golden.config import ArrayConfig
from golden.isa import COUNTER_BITS, DESC_BITS, SNAPSHOT_CYCLES, STATUS_SLOTS, Slot, layout

from .buffers import BRAM_SLICE_BITS, BankedBuffer, enable_copy, kept_copy, lut_ram_slice_bits
from .core import ArrayCore, params_layout
from .decoder import Decoder, bus_layout
from .pe import check_hw_config, config_for, delay
from .sequencer import Sequencer

__all__ = ["Accelerator", "bus_layout", "COUNTER_SPLIT"]

#: Bits of the low half of the split add of each performance counter's P = c + 1 (``_plus_one_counter``).
COUNTER_SPLIT = 32


class Accelerator(wiring.Component):
    """The accelerator top (module docstring); ``cfg`` must fit the ISA (``golden.isa.layout``)."""

    def __init__(self, cfg: ArrayConfig):
        self.cfg = config_for(self, cfg)
        layout(cfg)
        super().__init__({
            "cmd": In(stream.Signature(unsigned(DESC_BITS))),
            "din": In(stream.Signature(bus_layout(cfg))),
            "dout": Out(stream.Signature(bus_layout(cfg))),
        })

    def elaborate(self, platform):
        cfg = check_hw_config(self.cfg)
        m = Module()
        par_bits = params_layout(cfg).size
        # The act/wgt buffers' output registers (block-RAM output registers on the ECP5) are the
        # array's first input registers (hw.buffers output_register; issue 6: a DP16KD's
        # clock-to-out without it is 5.83 ns), the params buffer's extra read-address stage and
        # two output registers are the core's first three params FIFO write registers
        # (params_delay=3),
        # and the out buffer's are READ's second stage.
        # k_bounded: the decoder rejects a RUN with k > golden.isa.k_max(cfg) <= cfg.max_k
        # params_delay=3: the params buffer below reads through two address registers per slice
        # and two output registers, so the pushed set reaches the core three cycles after the push.
        # input_qualified: the sequencer offers a beat only when the core's ready rule holds (its own
        # copy of the core's acceptance state, hw.sequencer).
        m.submodules.core = core = ArrayCore(cfg, inputs_registered=True, k_bounded=True, params_delay=3,
                                             input_qualified=True)
        m.submodules.dec = dec = Decoder(cfg, par_bits)
        # The decoder-written buffers register their write port once more (per-bank enables
        # straight from flip-flops: the params bank's enable drives every LUT-RAM slice of it);
        # nothing reads a written entry sooner (hw.buffers.WRITE_TO_READ_MIN_CYCLES). The out
        # buffer, written by the sequencer and read back by READ_OUT right after the job, is not.
        # Power-of-two depths (one memory for both banks): the write port's register in one copy
        # per BRAM_SLICE_BITS of the width (hw.buffers).
        def slicing(depth):
            return BRAM_SLICE_BITS if depth & (depth - 1) == 0 else None
        # collision_free: a write never lands on a bank in the cycle a job's read of it (the
        # decoder's busy interlock, WRITE_TO_READ_MIN_CYCLES; asserted by tests/test_hw_top_amaranth).
        # The act buffer's slices take their read enables from the sequencer's per-slice copies.
        act_slicing = slicing(cfg.act_depth)
        m.submodules.act = act = BankedBuffer(cfg.rows * 8, cfg.act_depth, registered_write=True,
                                              bram_slice_bits=act_slicing, collision_free=True,
                                              output_register=True, read_enable_copies=act_slicing is not None)
        n_act_copies = len(act.slices(act_slicing)) if act_slicing is not None else 0
        m.submodules.seq = seq = Sequencer(cfg, act_read_copies=n_act_copies)
        if n_act_copies:
            m.d.comb += act.r_en_copies.eq(seq.act_r_en_copies)
        m.submodules.wgt = wgt = BankedBuffer(cfg.out_lanes * 8, cfg.wgt_depth, registered_write=True,
                                              bram_slice_bits=slicing(cfg.wgt_depth), collision_free=True,
                                              output_register=True)
        # The params buffer (LUT-RAM, read every cycle) registers its read address in one copy per
        # slice (hw.buffers, LUT-RAM mode): its ~680 read ports on the 30x4 top hung off one
        # address mux. Its read shows the entry's current contents, which equals the synchronous
        # read here: a valid, not yet pushed job's params bank is not written (par_busy).
        # read_stages=2 (issue 6): each slice registers the sequencer's read address once more before
        # its LUT-RAM address copies (the core takes that cycle from its FIFO write pipeline);
        # write_stages=2: and the write port once more (a params write is readable one cycle later
        # than the act/wgt buffers', and its reads happen two cycles after they are presented);
        # output_stages=2: and the read data once more, so the first output register can sit by
        # its LUT-RAM (the core takes that cycle from its FIFO write pipeline too).
        m.submodules.par = par = BankedBuffer(par_bits, cfg.param_depth, registered_write=True,
                                              lut_ram_slice_bits=lut_ram_slice_bits(cfg.param_depth),
                                              output_register=True, read_stages=2, write_stages=2,
                                              output_stages=2)
        # collision_free: READ_OUT of a bank waits until every job writing it has retired, and the
        # decoder takes no RUN while it reads (asserted by tests/test_hw_top_amaranth).
        m.submodules.out = out = BankedBuffer(cfg.out_lanes * 8, cfg.out_depth, collision_free=True,
                                              output_register=True)

        connect(m, wiring.flipped(self.cmd), dec.cmd)
        connect(m, wiring.flipped(self.din), dec.din)
        connect(m, dec.dout, wiring.flipped(self.dout))
        connect(m, dec.job, seq.job)
        # The decoder's writes reach each buffer through a register of that buffer's own (issue 6:
        # the decoder and the buffers are placed far apart, 60 tiles to the params LUT-RAM in
        # session 11's a2: the decoder's write enable register -> a slice's write enable copy was
        # 9.5 ns; one write address register shared by all buffers had ~50 loads across the die).
        # Distinct registers per buffer (``kept_copy``, ``enable_copy``: yosys would merge the
        # identical ones). A write lands one cycle later (written at the end of t + 4, readable
        # from t + 5: still inside WRITE_TO_READ_MIN_CYCLES).
        for tag, src, dst in (("act", dec.act_w, act.w), ("wgt", dec.wgt_w, wgt.w), ("par", dec.par_w, par.w)):
            m.d.comb += dst.en.eq(enable_copy(m, platform, src.en, f"{tag}_w_en"))
            for n in ("bank", "addr", "data"):
                m.d.comb += getattr(dst, n).eq(kept_copy(m, platform, getattr(src, n), C(1, 1), f"{tag}_w_{n}"))
        connect(m, dec.out_r, out.r)
        # par's output register is the core's second params FIFO write register (loaded every cycle)
        m.d.comb += [act.oce.eq(core.array_en), wgt.oce.eq(core.array_en), par.oce.eq(1), out.oce.eq(dec.out_oce)]
        connect(m, dec.lut, core.lut)
        connect(m, seq.act_r, act.r)
        connect(m, seq.wgt_r, wgt.r)
        connect(m, seq.par_r, par.r)
        connect(m, seq.out_w, out.w)
        connect(m, seq.core_inp, core.inp)
        connect(m, seq.core_params, core.params)
        connect(m, core.out, seq.core_out)
        m.d.comb += [dec.act_busy.eq(seq.act_busy), dec.wgt_busy.eq(seq.wgt_busy),
                     dec.par_busy.eq(seq.par_busy), dec.out_busy.eq(seq.out_busy), dec.jobs.eq(seq.jobs)]

        # ---- performance counters (slots 1 .. STATUS_SLOTS - 1 of READ_STATUS)
        inc = {
            Slot.CYCLES: 1,
            Slot.BUSY_CYCLES: seq.jobs != 0,
            Slot.USEFUL_MACS: seq.macs_inc,
            Slot.IN_STALL_CYCLES: seq.in_stall,
            Slot.OUT_STALL_CYCLES: self.dout.valid & ~self.dout.ready,
            Slot.CMDS_DROPPED: dec.dropped,
            Slot.JOBS_DONE: seq.job_done,
        }
        assert set(inc) == set(Slot) - {Slot.STATUS} and STATUS_SLOTS == len(Slot)
        # Timing: the increments and the clear come from the decoder's and sequencer's command
        # logic, so they are registered first, and the counter register c holds the count up to
        # the previous cycle: c(t+1) = cleared(t) ? 0 : c(t) + d_r(t), with d_r(t) = d(t-1) and
        # cleared(t) = clear(t-1) the registered increment and clear, so c(t+1) is the count of an
        # immediate counter at cycle t (its recurrence V(t+1) = clear(t) ? 0 : V(t) + d(t), V(0) = 0).
        # The decoder reads c through more pipeline registers (see below; golden.isa:
        # its response register is SNAPSHOT_CYCLES cycles across the die, issue 6; session 9 fed
        # it the immediate value, c + d_r, in one cycle: the 30 x 4 top's critical path).
        #
        # c's next value has no 64-bit carry chain (``_plus_one_counter``): a 1-bit increment selects
        # c or P = c + 1, P kept as a counter of its own (P(t+1) = c(t+1) + 1, the same recurrence
        # with its own clear value 1); its carry chains end in its own registers. USEFUL_MACS (a
        # multi-bit increment) adds it to a low part of its width (a short chain) whose carry out
        # is the 1-bit increment of the high part, a plus-one counter (``_counter``), one cycle
        # later: each group's carry out passes a register of its own, and the high part's clear
        # copies one register more (issue 6, session 13: lo -> the carry out -> the high part's
        # selects and enables, 80+ endpoints at 8.0-8.3 ns on the 30 x 4 top). That counter is
        # then one cycle late as a whole (lo too passes a register) and is read through one
        # register fewer. The clear is a plain mux to a constant (the registers' synchronous reset
        # on the FPGA) from one copy per group of <= _CTR_GROUP loads, and so is each registered
        # increment (hw.buffers.enable_copy: copies keep the reset).
        # `shadow_checks`: every copy == its register, P == c + 1, hi1 == hi + 1, and c == a plain
        # counter of d_r and the registered clear (tests; USEFUL_MACS's c == it one cycle late).
        #
        # The events and the clear pass one register (``ev_*``, ``ctr_clear_ev``) before that (issue
        # 6, session 11: the counters are placed apart from the decoder and the sequencer, and the
        # event logic -> a registered increment's copy was one hop across the die, 7.6-8.5 ns), so
        # c counts one cycle later. Each copy of the registered increment / clear is itself loaded
        # from a copy of its own (``_COPY_STAGES``: a two-register chain per group, so the placer
        # can put the first between the two ends, which it does in some placements only,
        # docs/fpga.md "Session 12"; session 11: the ev register -> a far group's copy was 8.47
        # ns in a3), so c counts _COPY_STAGES (+ its lag: USEFUL_MACS 1) cycles later than the
        # event and the decoder reads it through SNAPSHOT_CYCLES - 1 - _COPY_STAGES - lag
        # registers: its last SNAP cycle still shows the WAIT cycle's counts.
        self.shadow_checks = []
        clear_ev = Signal(name="ctr_clear_ev")
        cleared_ref = delay(m, clear_ev, _COPY_STAGES, "ctr_cleared_ref", reset_less=False)
        m.d.sync += clear_ev.eq(dec.clear_counters)
        for s, d in inc.items():
            name, d = s.name.lower(), Value.cast(d)
            ev = Signal(d.shape(), name=f"ev_{name}")
            m.d.sync += ev.eq(d)
            d_ref = delay(m, ev, _COPY_STAGES, f"inc_{name}", reset_less=False)     # the registered increment
            c, lag = _counter(m, platform, f"ctr_{name}", ev, clear_ev, self.shadow_checks, d_ref, cleared_ref)
            ref = Signal(COUNTER_BITS, name=f"ctr_{name}_ref")   # no hardware: read by the checks only
            m.d.sync += ref.eq(Mux(cleared_ref, 0, ref + d_ref))
            self.shadow_checks.append((f"ctr_{name}_c", c, delay(m, ref, lag, f"ctr_{name}_ref", reset_less=False)))
            read_regs = SNAPSHOT_CYCLES - 1 - _COPY_STAGES - lag
            assert read_regs >= 0, "the events' register, the counters' copy chains and their lag"
            # reset-less: read in SNAP only
            m.d.comb += dec.counters[int(s) - 1].eq(delay(m, c, read_regs, f"ctr_{name}"))
        return m


#: Registers in each copy's chain from the events' register to a counter group (see above).
_COPY_STAGES = 2
#: Most loads of one copy of a counter's clear or registered increment (a 32-bit group of
#: registers; issue 6: a net with fanout > ~30-60 must come from its own copy).
_CTR_GROUP = 32


def _groups(width):
    """``[lo, hi)`` bit ranges of at most ``_CTR_GROUP`` bits covering ``width`` bits."""
    return [(lo, min(lo + _CTR_GROUP, width)) for lo in range(0, width, _CTR_GROUP)]


def _counter(m, platform, name, d, clear, checks, d_ref, cleared_ref):
    """A ``COUNTER_BITS`` counter of the increments ``d`` (registered) and ``clear`` (registered):
    returns (c, lag), c the count up to ``lag`` + 1 cycles before (a register).

    Every copy of the registered clear / increment (``enable_copy``, appended to ``checks`` with
    its reference ``cleared_ref`` / ``d_ref``) serves one group of loads. A 1-bit increment drives
    ``_plus_one_counter`` directly (lag 0); a wider one is added to a low part of its own width
    (lo + d_r carries at most once, into the high part, a plus-one counter with that carry as
    increment), in one adder per load group (its own copy of d_r, so synthesis cannot merge them:
    each carry out drives one group). Each group's carry passes a register (``enable_copy``) before
    the high part uses it (issue 6, session 13: lo -> the carry out -> the high part's <= 32
    selects and enables was 8.0-8.3 ns on the 30 x 4 top), so the high part counts the carries one
    cycle late, and its clear copies pass one register more than lo's: hi(t+1) = cleared(t-1) ? 0
    : hi(t) + carry(t-1) is the high part of the count up to t - 1, and a carry out of the cycle
    of a clear (of the pre-clear lo) is dropped with it. c = (lo one register later, hi): lag 1."""
    def copy(x, ref, tag, stages=_COPY_STAGES):
        bits = []
        for i in range(len(x)):
            q = x[i]
            for k in range(stages):
                q = enable_copy(m, platform, q, f"{name}_{tag}" + (f"_{i}" if len(x) > 1 else "")
                                + (f"_s{k}" if k < stages - 1 else ""))
            bits.append(q)
        checks.append((f"{name}_{tag}", Cat(*bits), ref))
        return Cat(*bits)

    def cleared(tag):
        return copy(clear, cleared_ref, f"cleared_{tag}")

    width = len(d_ref)
    if width == 1:
        return _plus_one_counter(m, name, COUNTER_BITS, lambda tag: copy(d, d_ref, f"inc_{tag}"), cleared, checks), 0
    lw = width                                            # lo + d_r < 2 ** (lw + 1): one carry at most
    lo = Signal(lw, name=f"{name}_lo")
    carry_ref = Signal(name=f"{name}_carry_ref")          # no hardware: read by the checks only
    cleared_hi_ref = delay(m, cleared_ref, 1, f"{name}_cleared_h_ref", reset_less=False)
    m.d.sync += carry_ref.eq((lo + d_ref)[lw])

    def add(tag):
        """lo + (a copy of d_r), lw + 1 bits (the top bit: the carry into the high part)."""
        s = Signal(lw + 1, name=f"{name}_sum_{tag}")
        m.d.comb += s.eq(lo + copy(d, d_ref, f"inc_{tag}"))
        return s

    def carry(tag):
        q = enable_copy(m, platform, add(tag)[lw], f"{name}_carry_{tag}")
        checks.append((f"{name}_carry_{tag}", q, carry_ref))
        return q

    def cleared_hi(tag):
        return copy(clear, cleared_hi_ref, f"cleared_{tag}", _COPY_STAGES + 1)

    m.d.sync += lo.eq(Mux(cleared("lo"), 0, add("lo")[:lw]))
    c_hi = _plus_one_counter(m, f"{name}_h", COUNTER_BITS - lw, carry, cleared_hi, checks)
    # a reset register: c is then 0 right after a reset, as its reference one cycle late
    lo_r = delay(m, lo, 1, f"{name}_lo_r", reset_less=False)
    return Cat(lo_r, c_hi), 1


def _plus_one_counter(m, name, width, inc, cleared, checks):
    """A ``width``-bit counter of a 1-bit increment: returns c, the count up to the previous cycle
    (a register); ``inc(tag)`` / ``cleared(tag)`` give a copy of the increment (valid in the
    cycle: c(t+1) = cleared ? 0 : c + inc) / of the clear for one group of loads named ``tag``.

    c's next value is cleared ? 0 : (inc ? P : c): one LUT of flip-flops per bit, where P = c + 1
    is a register of its own: P(t+1) = c(t+1) + 1 = cleared ? 1 : P + inc, the counter's
    recurrence with the clear value 1, so P's carry chains end in P's registers. P's add is split
    at ``COUNTER_SPLIT`` (a 64-bit chain in front of a register was too slow): P = (p_hi, p_lo),
    p_lo's next value p_lo + 1 from its own flip-flops, selected by inc at the end (issue 6: with
    inc as the chain's carry in, USEFUL_MACS's carry out of lo + d_r ran through p_lo's whole
    32-bit chain, 8.85 ns on the 30 x 4 top); p_lo carries out when inc meets p_lo all ones, and
    that carry (a copy of inc ANDed with ``p_full``, a flip-flop equal to "p_lo is all ones", one
    copy each for p_hi and p_hi1: no carry chain and one LUT in front of their <= 32 selects,
    issue 6: p_lo's carry out with fanout 50-56 was a 9.0-9.4 ns path) is the enable of p_hi and
    of p_hi1 = p_hi + 1 (a register of its own, from its own incrementer in parallel): p_hi takes
    p_hi1. p_full's next value: cleared ? (1 == all ones) : inc ? p_lo == all ones - 1 : p_full."""
    split = min(COUNTER_SPLIT, width - 1)
    hb = width - split
    c = Signal(width, name=f"{name}_c")
    p_lo = Signal(split, name=f"{name}_p_lo", init=1)
    p_hi = Signal(hb, name=f"{name}_p_hi")
    p_hi1 = Signal(hb, name=f"{name}_p_hi1", init=1)
    ones = (1 << split) - 1
    p_full = Signal(name=f"{name}_p_full", init=int(split == 1))      # p_lo == ones (init p_lo = 1)
    m.d.sync += [p_lo.eq(Mux(cleared("p_lo"), 1, Mux(inc("p"), (p_lo + 1)[:split], p_lo))),
                 p_full.eq(Mux(cleared("p_full"), int(ones == 1), Mux(inc("p_full"), p_lo == ones - 1, p_full))),
                 p_hi.eq(Mux(cleared("p_hi"), 0, Mux(inc("p_hi") & p_full, p_hi1, p_hi))),
                 p_hi1.eq(Mux(cleared("p_hi1"), 1, Mux(inc("p_hi1") & p_full, p_hi1 + 1, p_hi1)))]
    p = Cat(p_lo, p_hi)
    for g, (lo, hi) in enumerate(_groups(width)):
        # the clear as data (an AND, not a mux to 0 that yosys would fold into the reset): c keeps
        # the board's reset net alone (tests/test_uart.py), its next value one LUT of flip-flops
        cl = cleared(f"c{g}")
        m.d.sync += c[lo:hi].eq(Mux(inc(f"c{g}"), p[lo:hi], c[lo:hi]) & ~cl.replicate(hi - lo))
    checks += [(f"{name}_p", p, (c + 1)[:width]), (f"{name}_p_hi1", p_hi1, (p_hi + 1)[:hb]),
               (f"{name}_p_full", p_full, p_lo == ones)]
    return c
