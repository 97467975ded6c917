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

from amaranth import Cat, Module, Mux, Signal, Value, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out, connect

from golden.config import ArrayConfig
from golden.isa import COUNTER_BITS, DESC_BITS, STATUS_SLOTS, Slot, layout

from .buffers import BRAM_SLICE_BITS, BankedBuffer, enable_copy, live_register, lut_ram_slice_bits
from .core import ArrayCore, params_layout
from .decoder import Decoder, bus_layout
from .pe import check_hw_config, config_for
from .sequencer import Sequencer

__all__ = ["Accelerator", "bus_layout", "COUNTER_SPLIT"]

#: Bits of the low half of each performance counter's split add (see the counters in elaborate).
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
        m.submodules.core = core = ArrayCore(cfg)
        m.submodules.seq = seq = Sequencer(cfg)
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
        m.submodules.act = act = BankedBuffer(cfg.rows * 8, cfg.act_depth, registered_write=True,
                                              bram_slice_bits=slicing(cfg.act_depth), collision_free=True)
        m.submodules.wgt = wgt = BankedBuffer(cfg.out_lanes * 8, cfg.wgt_depth, registered_write=True,
                                              bram_slice_bits=slicing(cfg.wgt_depth), collision_free=True)
        # The params buffer (LUT-RAM, read every cycle) registers its read address in one copy per
        # slice (hw.buffers, LUT-RAM mode): its ~680 read ports on the 30x4 top hung off one
        # address mux. Its read shows the entry's current contents, which equals the synchronous
        # read here: a valid, not yet pushed job's params bank is not written (par_busy).
        m.submodules.par = par = BankedBuffer(par_bits, cfg.param_depth, registered_write=True,
                                              lut_ram_slice_bits=lut_ram_slice_bits(cfg.param_depth))
        m.submodules.out = out = BankedBuffer(cfg.out_lanes * 8, cfg.out_depth)

        connect(m, wiring.flipped(self.cmd), dec.cmd)
        connect(m, wiring.flipped(self.din), dec.din)
        connect(m, dec.dout, wiring.flipped(self.dout))
        connect(m, dec.job, seq.job)
        connect(m, dec.act_w, act.w)
        connect(m, dec.wgt_w, wgt.w)
        connect(m, dec.par_w, par.w)
        connect(m, dec.out_r, out.r)
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
            Slot.IN_STALL_CYCLES: core.inp.valid & ~core.inp.ready,
            Slot.OUT_STALL_CYCLES: self.dout.valid & ~self.dout.ready,
            Slot.CMDS_DROPPED: dec.dropped,
            Slot.JOBS_DONE: seq.job_done,
        }
        assert set(inc) == set(Slot) - {Slot.STATUS} and STATUS_SLOTS == len(Slot)
        # Timing: the increments and the clear come from the decoder's and sequencer's command
        # logic, so they are registered first and the counter register holds the value of the
        # previous cycle; the visible value is that plus the registered increment (or 0 after a
        # registered clear). Exact: with V(t) = cleared(t) ? 0 : c(t) + d_r(t) and c(t+1) = V(t),
        # V(t+1) = clear(t) ? 0 : V(t) + d(t), the immediate counter's recurrence, and V(0) = 0.
        #
        # The 64-bit add is split at COUNTER_SPLIT bits (timing, issue 6: a 64-bit carry chain, the
        # clear mux and, for the status snapshot, the decoder's load were one path, 9.3-9.6 ns on the
        # 30 x 4 top): c = (hi, lo), with hi1 = hi + 1 kept as a register of its own. The low half is
        # a carry chain, lo + d_r, and its carry out selects hi or hi1 (one LUT per bit, no second
        # chain in series); hi1 advances with hi, from its own incrementer in parallel. The value is
        # unchanged: V = cleared ? 0 : (co ? hi1 : hi, lo + d_r mod 2**split) = c + d_r.
        # `shadow_checks`: hi1 == hi + 1 (mod 2**(64 - split)) and each value == c + d_r (tests).
        # `cleared` in one copy per counter (hw.buffers.enable_copy: it keeps the reset): yosys makes
        # the clear the synchronous reset of the counter registers, and one net for all of them was a
        # 224-wide set/reset net besides the board's reset (tests/test_uart.py).
        self.shadow_checks = []
        cleared_ref = Signal()
        m.d.sync += cleared_ref.eq(dec.clear_counters)
        live = live_register(m, "ctr_live")
        hb = COUNTER_BITS - COUNTER_SPLIT
        for s, d in inc.items():
            name = s.name.lower()
            cleared = enable_copy(m, platform, dec.clear_counters, live, f"ctr_{name}_cleared")
            self.shadow_checks.append((f"ctr_{name}_cleared", cleared, cleared_ref))
            lo = Signal(COUNTER_SPLIT, name=f"ctr_{name}_lo")
            hi = Signal(hb, name=f"ctr_{name}_hi")
            hi1 = Signal(hb, name=f"ctr_{name}_hi1", init=1)
            d_r = Signal(Value.cast(d).shape(), name=f"inc_{name}")
            assert len(d_r) <= COUNTER_SPLIT          # lo + d_r carries at most once
            lo_sum = Signal(COUNTER_SPLIT + 1, name=f"ctr_{name}_lo_sum")
            m.d.comb += lo_sum.eq(lo + d_r)
            co = lo_sum[-1]
            value = Signal(COUNTER_BITS, name=f"ctr_{name}_value")
            m.d.comb += [value.eq(Mux(cleared, 0, Cat(lo_sum[:COUNTER_SPLIT], Mux(co, hi1, hi)))),
                         dec.counters[int(s) - 1].eq(value)]
            m.d.sync += [d_r.eq(d), lo.eq(value[:COUNTER_SPLIT]), hi.eq(value[COUNTER_SPLIT:]),
                         hi1.eq(Mux(cleared, 1, Mux(co, hi1 + 1, hi1)))]
            self.shadow_checks += [(f"ctr_{name}_hi1", hi1, (hi + 1)[:hb]),
                                   (f"ctr_{name}_value", value, Mux(cleared, 0, (Cat(lo, hi) + d_r)[:COUNTER_BITS]))]
        return m
