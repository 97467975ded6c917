"""``Decoder``: the command decoder of the accelerator top (docs/top.md, golden/isa.py).

One command at a time, in order. States:

* ``IDLE``: ``cmd.ready`` = 1; a transfer registers the 128-bit descriptor.
* ``CHECK`` (1 cycle): the first half of every check of
  ``golden.isa.descriptor_errors`` on the registered descriptor: the field
  extraction, each field's own range test, the reserved-bits test and the
  end sums (with the RUN's ``ntiles * k`` product) are registered.
* ``DECIDE`` (1 cycle): the registered sums are compared with the buffer
  depths and the decision taken (issue 6: the product, the 128-bit mask and
  the compare tree were one cycle with the FSM). A failing command sets its
  sticky flags, pulses ``dropped`` and goes to ``DISCARD`` (WRITE_* opcodes:
  the payload is consumed up to ``last``) or back to ``IDLE``.
* ``WAIT``: the interlock: WRITE_ACT/WGT/PARAMS wait while their bank is busy
  (``*_busy`` from the sequencer), READ_OUT while its out bank is busy,
  WRITE_LUT and SYNC until ``jobs`` = 0, RUN until the job queue takes it
  (``job.ready``). Then: RUN is handed over (``job`` transfer, back to IDLE),
  CLEAR_STATUS clears (flags, and the counters when ``counters`` = 1),
  WRITE_* go to ``WRITE``, READ_OUT to ``READ``, READ_STATUS / SYNC snapshot
  their response into a register and go to ``RESP``.
* ``WRITE``: ``din.ready`` = 1; words are assembled into entries
  (``words_per_entry``), each complete entry is written on the cycle of its
  final word (buffer write port, or the core's ``lut`` stream). ``last`` early:
  LENGTH_MISMATCH, back to IDLE; ``last`` missing on the final word:
  LENGTH_MISMATCH, ``DISCARD``.
* ``DISCARD``: ``din.ready`` = 1 until a word with ``last`` = 1 transfers.
* ``READ``: streams the out rows: an out-buffer read is issued whenever the
  held row is free or its final word is being taken, so with one word per
  row ``dout`` carries one word per cycle.
* ``RESP``: the snapshot's words on ``dout``, ``last`` on the final one.

Every wait ends: jobs always finish (the sequencer's sinks are on-chip) and
``dout`` backpressure only holds the decoder itself.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS, ArrayConfig
from golden.isa import (COUNTER_BITS, DESC_BITS, ERROR_MASK, JOB_QUEUE_DEPTH, LUT_ENTRIES, OPCODE_BITS,
                        PAYLOAD_BUFFER, STATUS_BUSY, STATUS_JOBS_SHIFT, STATUS_SLOTS, Flag, Op, buffer_depth,
                        entry_bytes, k_max, layout, ntiles_max, reserved_mask, status_response_words,
                        sync_response_words, words_per_entry)

from .buffers import read_signature, write_signature
from .requant_lane import lut_layout
from .sequencer import job_layout

__all__ = ["Decoder", "bus_layout"]


def bus_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Payload of ``din`` and ``dout``: ``data`` (bus_bytes * 8 bits) and ``last``."""
    return data.StructLayout({"data": unsigned(cfg.bus_bytes * 8), "last": unsigned(1)})


class Decoder(wiring.Component):
    """See the module docstring. ``counters`` are slots 1 .. STATUS_SLOTS - 1 of READ_STATUS."""

    def __init__(self, cfg: ArrayConfig, par_bits: int):
        self.lay = layout(cfg)
        self.cfg = cfg
        self.par_bits = par_bits
        super().__init__({
            "cmd": In(stream.Signature(unsigned(DESC_BITS))),
            "din": In(stream.Signature(bus_layout(cfg))),
            "dout": Out(stream.Signature(bus_layout(cfg))),
            "job": Out(stream.Signature(job_layout(cfg))),
            "act_w": Out(write_signature(cfg.rows * 8, cfg.act_depth)),
            "wgt_w": Out(write_signature(cfg.out_lanes * 8, cfg.wgt_depth)),
            "par_w": Out(write_signature(par_bits, cfg.param_depth)),
            "out_r": Out(read_signature(cfg.out_lanes * 8, cfg.out_depth)),
            "lut": Out(stream.Signature(lut_layout())),
            "act_busy": In(BANKS), "wgt_busy": In(BANKS), "par_busy": In(BANKS), "out_busy": In(BANKS),
            "jobs": In(range(JOB_QUEUE_DEPTH + 1)),
            "counters": In(data.ArrayLayout(unsigned(COUNTER_BITS), STATUS_SLOTS - 1)),
            "clear_counters": Out(1),
            "dropped": Out(1),
            "flags": Out(unsigned(ERROR_MASK.bit_length())),
        })

    # ---- the descriptor checks (golden.isa.descriptor_errors, as logic), over two cycles
    def _checks(self, m, desc, load):
        """Returns (opcode_ok, range_bad, reserved_bad): 1-bit values valid in ``DECIDE``.

        On a cycle with ``load`` = 1 (``CHECK``) everything that needs the
        descriptor's fields is computed and registered: the opcode's validity,
        the reserved-bits test, each field's own range test, and the end
        sums (``offset + length``; RUN: ``wgt_offset + k``, ``act_offset +
        ntiles * k`` with the product, ``out_offset + ntiles * rows``). The
        next cycle (``DECIDE``) compares the registered sums with the depths
        of the opcode's buffers, so the multiplier, the 128-bit mask and the
        depth compares are never in one cycle with the FSM and the flags.
        """
        cfg = self.cfg
        code = desc[:OPCODE_BITS]
        opcode_ok = Signal()
        reserved_bad = Signal()
        field_bad = Signal()
        pay_ops = list(PAYLOAD_BUFFER)

        def fields(op):
            return {fl.name: desc[fl.offset:fl.offset + fl.width] for fl in self.lay[op]}

        pay_end = Signal(max(len(fields(op)["offset"] + fields(op)["length"]) for op in pay_ops))
        rf = fields(Op.RUN)
        wgt_end = Signal(len(rf["wgt_offset"] + rf["k"]))
        act_end = Signal(len(rf["act_offset"] + rf["ntiles"] * rf["k"]))
        out_end = Signal(len(rf["out_offset"] + rf["ntiles"] * cfg.rows))
        with m.If(load):
            m.d.sync += [opcode_ok.eq(0), field_bad.eq(0), reserved_bad.eq(0)]
            with m.Switch(code):
                for op in Op:
                    with m.Case(int(op)):
                        f = fields(op)
                        bad = Const(0, 1)
                        for fl in self.lay[op]:          # each field alone
                            bad = bad | (f[fl.name] < fl.lo) | (f[fl.name] > fl.hi)
                        m.d.sync += [opcode_ok.eq(1), field_bad.eq(bad),
                                     reserved_bad.eq((desc & reserved_mask(cfg, op)) != 0)]
                        if op in PAYLOAD_BUFFER:
                            m.d.sync += pay_end.eq(f["offset"] + f["length"])
            m.d.sync += [wgt_end.eq(rf["wgt_offset"] + rf["k"]),
                         act_end.eq(rf["act_offset"] + rf["ntiles"] * rf["k"]),
                         out_end.eq(rf["out_offset"] + rf["ntiles"] * cfg.rows)]
        range_bad = Signal()
        with m.Switch(code):
            for op in pay_ops:
                with m.Case(int(op)):
                    m.d.comb += range_bad.eq(field_bad | (pay_end > buffer_depth(cfg, PAYLOAD_BUFFER[op])))
            with m.Case(int(Op.RUN)):
                m.d.comb += range_bad.eq(field_bad | (wgt_end > cfg.wgt_depth) | (act_end > cfg.act_depth)
                                         | (out_end > cfg.out_depth))
            with m.Default():
                m.d.comb += range_bad.eq(field_bad)
        return opcode_ok, range_bad, reserved_bad

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bus_bits = cfg.bus_bytes * 8
        desc = Signal(DESC_BITS)
        code = desc[:OPCODE_BITS]

        def fld(op, name):
            for fl in self.lay[op]:
                if fl.name == name:
                    return desc[fl.offset:fl.offset + fl.width]
            raise KeyError(name)

        # Payload-carrying ops share "offset"/"length" names but not bit positions: mux by opcode.
        pay_ops = list(PAYLOAD_BUFFER)
        bank_ops = [op for op in pay_ops if "bank" in {f.name for f in self.lay[op]}]
        off_w = max(buffer_depth(cfg, b) for b in PAYLOAD_BUFFER.values()).bit_length()
        offset = Signal(off_w)
        length = Signal(off_w + 1)
        bank = Signal(BANKS.bit_length())
        with m.Switch(code):
            for op in pay_ops:
                with m.Case(int(op)):
                    m.d.comb += [offset.eq(fld(op, "offset")), length.eq(fld(op, "length"))]
                    if op in bank_ops:
                        m.d.comb += bank.eq(fld(op, "bank"))

        # Words per entry of the current payload op (WRITE_* and READ_OUT).
        wpe_of = {op: words_per_entry(entry_bytes(cfg, PAYLOAD_BUFFER[op]), cfg.bus_bytes) for op in pay_ops}
        wpe_max = max(wpe_of.values())
        wpe = Signal(range(wpe_max + 1))
        with m.Switch(code):
            for op, n in wpe_of.items():
                with m.Case(int(op)):
                    m.d.comb += wpe.eq(n)

        flags = Signal(self.flags.shape())
        m.d.comb += self.flags.eq(flags)
        status = Signal(32)
        m.d.comb += status.eq(flags | Mux(self.jobs != 0, STATUS_BUSY, 0) | (self.jobs << STATUS_JOBS_SHIFT))

        load_checks = Signal()                  # 1 in CHECK: the check registers load (see _checks)
        opcode_ok, range_bad, reserved_bad = self._checks(m, desc, load_checks)
        errs = Mux(opcode_ok, Mux(range_bad, int(Flag.BAD_RANGE), 0) | Mux(reserved_bad, int(Flag.RESERVED), 0),
                   int(Flag.BAD_OPCODE))
        is_write = Signal()
        m.d.comb += is_write.eq(Cat(*[code == int(op) for op in pay_ops if op != Op.READ_OUT]).any())

        # Interlock: the current command's wait condition.
        blocked = Signal()
        with m.Switch(code):
            with m.Case(int(Op.WRITE_ACT)):
                m.d.comb += blocked.eq(self.act_busy.bit_select(bank, 1))
            with m.Case(int(Op.WRITE_WGT)):
                m.d.comb += blocked.eq(self.wgt_busy.bit_select(bank, 1))
            with m.Case(int(Op.WRITE_PARAMS)):
                m.d.comb += blocked.eq(self.par_busy.bit_select(bank, 1))
            with m.Case(int(Op.READ_OUT)):
                m.d.comb += blocked.eq(self.out_busy.bit_select(bank, 1))
            with m.Case(int(Op.WRITE_LUT), int(Op.SYNC)):
                m.d.comb += blocked.eq(self.jobs != 0)
            with m.Case(int(Op.RUN)):
                m.d.comb += blocked.eq(~self.job.ready)

        # The RUN job (valid in WAIT; the queue's ready is the wait condition).
        rf = {n: fld(Op.RUN, n) for n in (fl.name for fl in self.lay[Op.RUN])}
        jp = self.job.payload
        m.d.comb += [jp.act_bank.eq(rf["act_bank"]), jp.act_offset.eq(rf["act_offset"]),
                     jp.wgt_bank.eq(rf["wgt_bank"]), jp.wgt_offset.eq(rf["wgt_offset"]),
                     jp.par_bank.eq(rf["par_bank"]), jp.par_index.eq(rf["par_index"]),
                     jp.out_bank.eq(rf["out_bank"]), jp.out_offset.eq(rf["out_offset"]),
                     jp.k.eq(rf["k"]), jp.ntiles.eq(rf["ntiles"])]
        # rows_valid * lanes_valid, registered in CHECK (one small multiplier off the job path).
        macs = Signal.like(jp.macs)
        m.d.comb += jp.macs.eq(macs)

        # ---- payload assembly (WRITE) and row/word counters (WRITE, READ, RESP)
        asm = Signal(wpe_max * bus_bits)
        wi = Signal(range(max(wpe_max, status_response_words(cfg)) + 1))   # word within the entry / response
        ei = Signal(off_w + 1)                                             # entry index (written / sent)
        ri = Signal(off_w + 1)                                             # READ: entries whose read was issued
        words = [asm[p * bus_bits:(p + 1) * bus_bits] for p in range(wpe_max)]
        entry = Cat(*[Mux(wi == p, self.din.payload.data, words[p]) for p in range(wpe_max)])
        addr = offset + ei
        entry_end = wi == wpe - 1
        final = entry_end & (ei == length - 1)
        snap = Signal(STATUS_SLOTS * COUNTER_BITS)
        n_resp = Signal(range(status_response_words(cfg) + 1))
        rv = Signal()                                                      # READ: a row held in out_r.data

        m.d.comb += [
            self.act_w.bank.eq(bank), self.act_w.addr.eq(addr), self.act_w.data.eq(entry),
            self.wgt_w.bank.eq(bank), self.wgt_w.addr.eq(addr), self.wgt_w.data.eq(entry),
            self.par_w.bank.eq(bank), self.par_w.addr.eq(addr), self.par_w.data.eq(entry),
            self.lut.payload.addr.eq(addr), self.lut.payload.data.eq(entry),
            self.out_r.bank.eq(bank), self.out_r.addr.eq(offset + ri),
        ]

        def drop_and_flag(extra_flags):
            m.d.sync += flags.eq(flags | extra_flags)
            m.d.comb += self.dropped.eq(1)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    m.d.sync += desc.eq(self.cmd.payload)
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += load_checks.eq(1)
                m.d.sync += [macs.eq(rf["rows_valid"] * rf["lanes_valid"]), wi.eq(0), ei.eq(0), ri.eq(0),
                             rv.eq(0)]
                m.next = "DECIDE"
            with m.State("DECIDE"):
                with m.If(errs != 0):
                    drop_and_flag(errs)
                    m.next = "IDLE"
                    with m.If(opcode_ok & is_write):
                        m.next = "DISCARD"
                with m.Else():
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(~blocked):
                    with m.Switch(code):
                        with m.Case(int(Op.RUN)):
                            m.d.comb += self.job.valid.eq(1)
                            m.next = "IDLE"
                        with m.Case(int(Op.CLEAR_STATUS)):
                            m.d.sync += flags.eq(0)
                            m.d.comb += self.clear_counters.eq(fld(Op.CLEAR_STATUS, "counters"))
                            m.next = "IDLE"
                        with m.Case(int(Op.READ_OUT)):
                            m.next = "READ"
                        with m.Case(int(Op.READ_STATUS)):
                            m.d.sync += [snap.eq(Cat(status, Const(0, COUNTER_BITS - len(status)),
                                                     self.counters.as_value())),
                                         n_resp.eq(status_response_words(cfg))]
                            m.next = "RESP"
                        with m.Case(int(Op.SYNC)):
                            m.d.sync += [snap.eq(status), n_resp.eq(sync_response_words(cfg))]
                            m.next = "RESP"
                        with m.Default():                     # WRITE_*
                            m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += self.din.ready.eq(1)
                with m.If(self.din.valid):
                    for p in range(wpe_max):
                        with m.If(wi == p):
                            m.d.sync += words[p].eq(self.din.payload.data)
                    with m.If(entry_end):
                        m.d.sync += [wi.eq(0), ei.eq(ei + 1)]
                        with m.Switch(code):
                            with m.Case(int(Op.WRITE_ACT)):
                                m.d.comb += self.act_w.en.eq(1)
                            with m.Case(int(Op.WRITE_WGT)):
                                m.d.comb += self.wgt_w.en.eq(1)
                            with m.Case(int(Op.WRITE_PARAMS)):
                                m.d.comb += self.par_w.en.eq(1)
                            with m.Case(int(Op.WRITE_LUT)):
                                m.d.comb += self.lut.valid.eq(1)
                    with m.Else():
                        m.d.sync += wi.eq(wi + 1)
                    with m.If(final & self.din.payload.last):
                        m.next = "IDLE"
                    with m.Elif(final):                        # last missing on the final word
                        drop_and_flag(int(Flag.LENGTH_MISMATCH))
                        m.next = "DISCARD"
                    with m.Elif(self.din.payload.last):        # last early
                        drop_and_flag(int(Flag.LENGTH_MISMATCH))
                        m.next = "IDLE"
            with m.State("DISCARD"):
                m.d.comb += self.din.ready.eq(1)
                with m.If(self.din.valid & self.din.payload.last):
                    m.next = "IDLE"
            with m.State("READ"):
                row_words = [self.out_r.data[p * bus_bits:(p + 1) * bus_bits] for p in range(wpe_of[Op.READ_OUT])]
                n_out = wpe_of[Op.READ_OUT]
                send = Signal(bus_bits)
                with m.Switch(wi):
                    for p in range(n_out):
                        with m.Case(p):
                            m.d.comb += send.eq(row_words[p])
                row_end = wi == n_out - 1
                take = rv & self.dout.ready
                issue = (ri < length) & (~rv | (take & row_end))
                m.d.comb += [self.dout.valid.eq(rv), self.dout.payload.data.eq(send),
                             self.dout.payload.last.eq(row_end & (ei == length - 1)),
                             self.out_r.en.eq(issue)]
                with m.If(issue):
                    m.d.sync += [ri.eq(ri + 1), rv.eq(1)]
                with m.Elif(take & row_end):
                    m.d.sync += rv.eq(0)
                with m.If(take):
                    with m.If(row_end):
                        m.d.sync += [wi.eq(0), ei.eq(ei + 1)]
                        with m.If(ei == length - 1):
                            m.next = "IDLE"
                    with m.Else():
                        m.d.sync += wi.eq(wi + 1)
            with m.State("RESP"):
                n_w = status_response_words(cfg)
                send = Signal(bus_bits)
                padded = Cat(snap, Const(0, n_w * bus_bits - len(snap)))
                with m.Switch(wi):
                    for p in range(n_w):
                        with m.Case(p):
                            m.d.comb += send.eq(padded[p * bus_bits:(p + 1) * bus_bits])
                is_last = wi == n_resp - 1
                m.d.comb += [self.dout.valid.eq(1), self.dout.payload.data.eq(send),
                             self.dout.payload.last.eq(is_last)]
                with m.If(self.dout.ready):
                    m.d.sync += wi.eq(wi + 1)
                    with m.If(is_last):
                        m.next = "IDLE"
        return m
