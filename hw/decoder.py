"""``Decoder``: the command decoder of the accelerator top (docs/top.md, golden/isa.py).

One command at a time, in order. States:

* ``IDLE``: ``cmd.ready`` = 1; a transfer registers the 128-bit descriptor,
  its one-hot opcode and the first stage of the checks (``_checks``: field
  range tests, reserved-bit chunks, end sums, the RUN products (registered
  multipliers) and the room after the offsets, computed from ``cmd.payload``).
* ``CHECK`` (1 cycle): the second stage: the end values are compared with
  the buffer depths and the opcode's tests ORed (registered); the RUN
  products are copied into fabric registers; the bank is loaded.
* ``COMPARE`` (1 cycle): the products' copies are compared with the room
  (registered); the other check bits pass through one more register.
* ``DECIDE`` (1 cycle, ``golden.isa.DECODE_CYCLES`` - 1 after the transfer): the
  payload state (address, entry counters) is loaded
  (nothing reads it before WRITE / READ); the decision from the registered check bits. A
  failing command sets its sticky flags, pulses ``dropped`` and goes to
  ``DISCARD`` (WRITE_* opcodes: the payload is consumed up to ``last``) or
  back to ``IDLE``.
* ``WAIT``: the interlock: WRITE_ACT/WGT/PARAMS wait while their bank is busy
  (``*_busy`` from the sequencer), READ_OUT while its out bank is busy,
  WRITE_LUT and SYNC until ``jobs`` = 0, RUN until the job queue takes it
  (``job.ready``). Then: RUN is handed over (``job`` transfer, back to IDLE),
  CLEAR_STATUS clears (flags, and the counters when ``counters`` = 1),
  WRITE_* go to ``WRITE``, READ_OUT to ``READ``, READ_STATUS / SYNC go to
  ``SNAP``.
* ``SNAP`` (``golden.isa.SNAPSHOT_CYCLES`` cycles, states ``SNAP0`` ..): the
  counters arrive that many cycles late (``counters``), and the status word
  is delayed as much, so the response register (loaded on every cycle outside
  RESP) holds, on entering ``RESP``, the status and counters of the WAIT
  cycle that left for SNAP.
* ``WRITE``: ``din.ready`` = 1; words are assembled into entries
  (``words_per_entry``; a word lands in the assembly register on the cycle
  after its transfer), each complete entry is written two cycles after
  its final word (buffer write port, or the core's ``lut`` stream), straight
  from registers; nothing reads a buffer or the LUT that early (see the
  comment at ``asm``). ``last`` early: LENGTH_MISMATCH, back to IDLE;
  ``last`` missing on the final word: LENGTH_MISMATCH, ``DISCARD``.
* ``DISCARD``: ``din.ready`` = 1 until a word with ``last`` = 1 transfers.
* ``READ``: streams the out rows. The out buffer reads through two registers
  (``out_r.en`` loads its read register, ``out_oce`` its output register,
  ``out_r.data``; ``golden.isa.OUT_READ_CYCLES``): a read is issued whenever
  the read register is free or moves on, which it does when the held row is
  free or its final word is being taken, so with one word per row ``dout``
  carries one word per cycle, the first on the cycle OUT_READ_CYCLES after
  the first read.
* ``RESP``: the snapshot's words on ``dout``, ``last`` on the final one.

Every wait ends: jobs always finish (the sequencer's sinks are on-chip) and
``dout`` backpressure only holds the decoder itself.

Timing (issue 6, docs/fpga.md): every high-fanout enable comes from a
flip-flop (``idle_r``: descriptor load; copies of ``resp_r``: snapshot;
copies of ``wsel``, loaded from ``wsel``: payload words; the write enables; a copy of ``pa``: the
out buffer's read address), ``dropped`` (a counter increment), ``out_r.en`` and
``dout.valid`` come from registered check bits and state flags (``*_r``, loaded
from the next state), the job's ``macs`` from a registered product, the READ /
RESP word-index tests (``row_end``, ``is_last``) and the end-of-payload tests
(``wend``, ``elast``, ``rmore``) are registered flags instead of compares, DECIDE's loads
(``pre_off``, ``pre_off1``, ``pre_lenm1``, ``pre_len1``) are registered from the registered
descriptor in CHECK, pa's increment is a register of its own (``pa1``), the entry counters' decrement is one LUT of
registered flags (``ent_w``, ``ent_r``) and din.valid / dout.ready, the flags, the entry
counters and the readies read the shadow flags, the flags' and the counters' clears are
flip-flops (``clr_st``, ``clr_ctr``), RESP shifts the snapshot so dout's word needs no word mux, and
the datapath registers are reset-less (each is written before it is
read after a reset: IDLE, CHECK, COMPARE, DECIDE or the entry's words come first). The first
check stage is computed from ``cmd.payload`` on its way into ``desc``, so it
assumes ``cmd.payload`` comes from registers (on the board: the UART
bridge's descriptor shift register).
"""
from __future__ import annotations

from contextlib import contextmanager

from amaranth import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS, ArrayConfig
from golden.isa import (COUNTER_BITS, DECODE_CYCLES, DESC_BITS, ERROR_MASK, JOB_QUEUE_DEPTH, OPCODE_BITS, PAYLOAD_BUFFER,
                        SNAPSHOT_CYCLES, STATUS_BUSY, STATUS_JOBS_SHIFT, STATUS_SLOTS, Flag, Op, buffer_depth,
                        entry_bytes, layout, reserved_mask, status_response_words, sync_response_words,
                        words_per_entry)

from .buffers import kept_copy, read_signature, write_signature
from .ecp5_mult import RegisteredMult
from .pe import delay
from .requant_lane import lut_layout
from .sequencer import job_layout

__all__ = ["Decoder", "bus_layout"]

#: Loads per copy of a replicated enable (wsel for the assembly words): a net with fanout > ~30-60
#: must come straight from its own flip-flop (issue 6, docs/fpga.md).
_COPY_LOADS = 64

#: Snapshot bits per copy of resp_r (the snapshot's load / shift select and its enable LUT, whose
#: other input is dout.ready: one LUT output per 32 enables).
_SNAP_GROUP = 32


def bus_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Payload of ``din`` and ``dout``: ``data`` (bus_bytes * 8 bits) and ``last``."""
    return data.StructLayout({"data": unsigned(cfg.bus_bytes * 8), "last": unsigned(1)})


def _word_mux(words, index):
    """``words[index]`` as a binary mux tree on the low bits of ``index`` (an index past the end
    gives one of the words, never a constant: the caller reads it only for valid indices)."""
    n = (len(words) - 1).bit_length()
    words = list(words) + [words[-1]] * ((1 << n) - len(words))
    for b in range(n):
        words = [Mux(index[b], words[i + 1], words[i]) for i in range(0, len(words), 2)]
    return words[0]


class Decoder(wiring.Component):
    """See the module docstring. ``counters`` are slots 1 .. STATUS_SLOTS - 1 of READ_STATUS, as
    they were ``golden.isa.SNAPSHOT_CYCLES`` cycles before (hw/top.py: the counters' registers,
    then pipeline registers on the way across the die)."""

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
            "out_oce": Out(1),
            "lut": Out(stream.Signature(lut_layout())),
            "act_busy": In(BANKS), "wgt_busy": In(BANKS), "par_busy": In(BANKS), "out_busy": In(BANKS),
            "jobs": In(range(JOB_QUEUE_DEPTH + 1)),
            "counters": In(data.ArrayLayout(unsigned(COUNTER_BITS), STATUS_SLOTS - 1)),
            "clear_counters": Out(1),
            "dropped": Out(1),
            "flags": Out(unsigned(ERROR_MASK.bit_length())),
        })

    def _fields(self, value, op):
        """``{name: slice of value}`` of ``op``'s fields in a descriptor-wide ``value``."""
        return {fl.name: value[fl.offset:fl.offset + fl.width] for fl in self.lay[op]}

    # ---- the descriptor checks (golden.isa.descriptor_errors, as logic), a two-stage pipeline
    def _checks(self, m, op_r, ok_r):
        """Returns (end_bad, field_bad, reserved_bad, bad): registered 1-bit values valid in ``DECIDE``
        (``bad``: any error, ``~ok_r`` included: the drop decision).

        Stage A registers on every cycle, from ``cmd.payload`` (the bridge's
        descriptor shift register on the board): each field's own range test,
        the reserved bits OR-reduced in 64-bit chunks, the end sums
        (``offset + length``, ``wgt_offset + k``), the RUN products
        ``ntiles * k`` and ``ntiles * rows`` (``RegisteredMult``: the
        MULT18X18D's output register on the ECP5) and the room left after
        ``act_offset`` / ``out_offset``; in ``CHECK`` they hold the values of the
        accepted descriptor. Stage B (registered at the end of ``CHECK``)
        compares the end values with the depths (one carry chain each), ORed
        under the opcode (``op_r``: the registered one-hot opcode), and ORs the
        opcode's field tests and reserved chunks: registers in parallel (the
        field / reserved / opcode tests once more ORed for the decision), each
        delayed one more register to ``DECIDE``; it also copies the products and
        the room, which ``COMPARE`` compares (below). ``DECIDE`` thus reads registered bits only
        (the drop decision, ``dropped`` and the flags: <= 2 LUT levels, issue 6),
        and the products, the 128-bit mask and the compares are never in one
        cycle with the descriptor's arrival, the FSM or the flags; the command
        timeline is ``DECODE_CYCLES`` (golden.isa): three check cycles.

        The products' compare is a stage of its own (``COMPARE``, issue 6): the MULT18X18D sits
        wherever a free one is, so its output register is copied into a fabric register in
        CHECK (``*_need_f``, nothing else in front of it) and compared with the room (delayed
        alike) in COMPARE; the other stage-B bits are delayed one register to meet them in
        DECIDE (the 16 x 4 top's critical path was the product -> compare -> ``need_bad``, 9.65 ns).
        """
        cfg = self.cfg
        p = self.cmd.payload

        def reg(value, name):
            r = Signal(value.shape(), name=name, reset_less=True)   # datapath: read only in CHECK/DECIDE
            m.d.sync += r.eq(value)
            return r

        # -- stage A (from cmd.payload)
        field_bad = {}                            # op -> [registered bit per non-trivial field test]
        for op in Op:
            bits = []
            for fl in self.lay[op]:
                f = p[fl.offset:fl.offset + fl.width]
                test = Const(0, 1)
                if fl.lo > 0:
                    test = test | (f < fl.lo)
                if fl.hi < (1 << fl.width) - 1:
                    test = test | (f > fl.hi)
                if fl.lo > 0 or fl.hi < (1 << fl.width) - 1:
                    bits.append(reg(test, f"fbad_{op.name.lower()}_{fl.name}"))
            field_bad[op] = bits
        chunks = {}                               # (bit, mask) -> registered OR of those payload bits
        resv = {}
        for op in Op:
            mask, bits = reserved_mask(cfg, op), []
            for lo in range(0, DESC_BITS, 64):
                cm = (mask >> lo) & ((1 << 64) - 1)
                if cm:
                    if (lo, cm) not in chunks:
                        chunks[(lo, cm)] = reg((p[lo:lo + 64] & cm) != 0, f"resv_{lo}_{len(chunks)}")
                    bits.append(chunks[(lo, cm)])
            resv[op] = bits
        pend = {}
        for op in PAYLOAD_BUFFER:
            f = self._fields(p, op)
            pend[op] = reg(f["offset"] + f["length"], f"pay_end_{op.name.lower()}")
        rf = self._fields(p, Op.RUN)
        wgt_end = reg(rf["wgt_offset"] + rf["k"], "wgt_end")
        # The RUN products, multiplied from cmd.payload on every cycle into a registered product
        # (en = 1: in CHECK it holds the accepted descriptor's), the room after each offset
        # registered beside it; both copied in CHECK and compared in COMPARE (the product's bits
        # above the room's width are an OR beside the carry chain), each into a register of its
        # own (need_bad_act / _out: the two multipliers may be placed far apart, issue 6).
        over = []
        for name, b, depth, off in (("act_need", rf["k"], cfg.act_depth, rf["act_offset"]),
                                    ("out_need", Const(cfg.rows), cfg.out_depth, rf["out_offset"])):
            m.submodules[name] = mul = RegisteredMult(rf["ntiles"].shape(), b.shape())
            m.d.comb += [mul.a.eq(rf["ntiles"]), mul.b.eq(b), mul.en.eq(1)]
            w = depth.bit_length()
            # Room after the offset: only meaningful when the offset passes its own test
            # (< depth), otherwise the field test flags the command anyway: taken modulo.
            room = reg((depth - off)[:w], name.replace("need", "room"))
            p_f, room_f = reg(mul.p, f"{name}_f"), reg(room, name.replace("need", "room_f"))
            over.append(p_f[w:].any() | (p_f[:w] > room_f))

        # -- stage B (end of CHECK): compares, then the opcode's tests; registers in parallel
        end_bad = [op_r[op] & (pend[op] > buffer_depth(cfg, PAYLOAD_BUFFER[op])) for op in PAYLOAD_BUFFER]
        end_bad.append(op_r[Op.RUN] & (wgt_end > cfg.wgt_depth))
        fld_bad = Cat(*[op_r[op] & Cat(*bits).any() for op, bits in field_bad.items() if bits]).any()
        resv_bad = Cat(*[op_r[op] & Cat(*bits).any() for op, bits in resv.items() if bits]).any()
        end_bad_r = reg(reg(Cat(*end_bad).any(), "end_bad"), "end_bad_d")
        need_bad_r = Cat(*[reg(op_r[Op.RUN] & o, f"need_bad_{n}") for o, n in zip(over, ("act", "out"))]).any()
        lit_bad_r = reg(reg(fld_bad | resv_bad | ~ok_r, "lit_bad"), "lit_bad_d")
        return (end_bad_r | need_bad_r, reg(reg(fld_bad, "field_bad"), "field_bad_d"),
                reg(reg(resv_bad, "reserved_bad"), "reserved_bad_d"), lit_bad_r | end_bad_r | need_bad_r)

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bus_bits = cfg.bus_bytes * 8
        p = self.cmd.payload
        desc = Signal(DESC_BITS, reset_less=True)

        def fld(op, name):
            return self._fields(desc, op)[name]

        # ---- FSM shadow flags: registers equal to "state == S", loaded from the next state (``_d``:
        # this state's own name unless a goto follows, see ``state``), so the descriptor's load
        # enable (~140 FFs, idle_r), the snapshot's (~450 FFs, resp_r's copies) and the drop
        # decision (decide_r, write_r: ``dropped`` feeds a counter increment register) come from
        # flip-flops, not from the state decode. resp_r selects dout's data (see dout below).
        assert SNAPSHOT_CYCLES >= 1, "the counters reach the decoder through their own registers at least"
        snap_states = [f"SNAP{i}" for i in range(SNAPSHOT_CYCLES)]
        shadow = {s: (Signal(init=(s == "IDLE"), name=f"{s.lower()}_r"), Signal(name=f"{s.lower()}_d"))
                  for s in ("IDLE", "CHECK", "COMPARE", "DECIDE", "WAIT", "WRITE", "DISCARD", "READ", *snap_states,
                            "RESP")}
        idle_r, check_r, decide_r, wait_r, write_r, discard_r, read_r, resp_r = (
            shadow[s][0] for s in ("IDLE", "CHECK", "DECIDE", "WAIT", "WRITE", "DISCARD", "READ", "RESP"))
        wait_d, write_d, read_d, resp_d = (shadow[s][1] for s in ("WAIT", "WRITE", "READ", "RESP"))
        snap_last_r = shadow[snap_states[-1]][0]          # the cycle before RESP
        # The handshakes' readies straight from the shadow flags (issue 6: the bridge's cmd/din
        # valid and the decoder's state decode were two LUT levels in front of its registers).
        m.d.comb += [self.cmd.ready.eq(idle_r), self.din.ready.eq(write_r | discard_r)]
        m.d.sync += [r.eq(d) for r, d in shadow.values()]

        def goto(state):
            m.next = state
            m.d.comb += [d.eq(state == s) for s, (_, d) in shadow.items()]

        @contextmanager
        def state(name):
            """``m.State(name)`` whose next state is ``name`` unless a goto in it says otherwise."""
            with m.State(name):
                m.d.comb += [d.eq(name == s) for s, (_, d) in shadow.items()]
                yield

        # ---- the opcode, one-hot, registered with the descriptor (ok_r: a known opcode)
        op_r = {op: Signal(name=f"op_{op.name.lower()}", reset_less=True) for op in Op}
        ok_r = Signal(reset_less=True)
        with m.If(idle_r):
            m.d.sync += [desc.eq(p), ok_r.eq(Cat(*[p[:OPCODE_BITS] == int(op) for op in Op]).any())]
            m.d.sync += [op_r[op].eq(p[:OPCODE_BITS] == int(op)) for op in Op]

        def by_op(values, width, sel=op_r):
            """AND-OR of ``{op: value}`` by the registered one-hot opcode (0 for ops not listed)."""
            acc = Const(0, width)
            for op, v in values.items():
                acc = acc | Mux(sel[op], v, 0)
            return acc[:width]
        pay_ops = list(PAYLOAD_BUFFER)
        write_ops = [op for op in pay_ops if op != Op.READ_OUT]
        bank_ops = [op for op in pay_ops if "bank" in {f.name for f in self.lay[op]}]
        off_w = max(buffer_depth(cfg, b) for b in PAYLOAD_BUFFER.values()).bit_length()
        wpe_of = {op: words_per_entry(entry_bytes(cfg, PAYLOAD_BUFFER[op]), cfg.bus_bytes) for op in pay_ops}
        wpe_max = max(wpe_of.values())

        flags = Signal(self.flags.shape())
        m.d.comb += self.flags.eq(flags)
        status = Signal(32)
        m.d.comb += status.eq(flags | Mux(self.jobs != 0, STATUS_BUSY, 0) | (self.jobs << STATUS_JOBS_SHIFT))
        # The status word as it was SNAPSHOT_CYCLES cycles before, beside the counters of that cycle
        # (reset-less: read only in the last SNAP cycle).
        status_late = delay(m, status, SNAPSHOT_CYCLES, "status")

        end_bad, field_bad, reserved_bad, bad = self._checks(m, op_r, ok_r)
        errs = Cat(~ok_r, end_bad | field_bad, reserved_bad)            # bad = errs.any()
        assert (int(Flag.BAD_OPCODE), int(Flag.BAD_RANGE), int(Flag.RESERVED)) == (1, 2, 4)
        is_write = Cat(*[op_r[op] for op in write_ops]).any()

        # ---- payload state: the bank loaded in CHECK, the address and entry counters in DECIDE (pre_*)
        bank = Signal(BANKS.bit_length(), reset_less=True)     # the command's bank
        pa = Signal(off_w, reset_less=True)                    # WRITE: next entry written; READ: next read
        erem = Signal(off_w + 1, reset_less=True)              # entries after the current one
        elast = Signal(reset_less=True)                        # the current entry is the final one
        rrem = Signal(off_w + 1, reset_less=True)              # READ: reads to issue after the next
        rmore = Signal()                                       # READ: a read is left to issue
        wsel = Signal(wpe_max, reset_less=True)                # WRITE: one-hot word within the entry
        wsel_d = Signal(wpe_max)                               # its next value (CHECK sets it first)
        wend = Signal()                                        # WRITE: wsel is the entry's final word
        wend_d = Signal()                                      # its next value
        m.d.comb += wend_d.eq(wend)
        m.d.sync += wend.eq(wend_d)
        wlast = Signal(wpe_max, reset_less=True)               # WRITE: one-hot of the final word
        wi = Signal(range(max(wpe_max, status_response_words(cfg)) + 1))   # READ/RESP: word index
        nresp_m1 = Signal(range(status_response_words(cfg)), reset_less=True)
        wi_d, nresp_m1_d = Signal.like(wi), Signal.like(nresp_m1)          # their next values
        m.d.comb += [wi_d.eq(wi), nresp_m1_d.eq(nresp_m1)]
        m.d.sync += [wi.eq(wi_d), nresp_m1.eq(nresp_m1_d)]
        is_sync = Signal(reset_less=True)
        rv = Signal()                                          # READ: a row held in out_r.data
        rv_d = Signal()                                        # its next value (below)
        m.d.sync += rv.eq(rv_d)
        rs = Signal()                                          # READ: a row in the read register only
        lens = {op: self._fields(desc, op)["length"] for op in pay_ops}
        # The loads of pa / erem / rrem / elast happen in DECIDE (nothing reads them before WRITE /
        # READ), from registers computed on every cycle from the registered descriptor (held from
        # CHECK on, so in DECIDE they hold the accepted descriptor's values): DECIDE loads
        # flip-flops (no opcode AND-OR, no length - 1 carry chain in front of pa, its out_addr
        # copies and the entry counters), and their own inputs are the descriptor registers, not
        # cmd.payload (issue 6: the bridge's descriptor register and an opcode decode were in front
        # of them). pre_off1 = pre_off + 1: DECIDE's load of pa1 (pa + 1, below).
        offs = by_op({op: fld(op, "offset") for op in pay_ops}, off_w)
        pre_refs = [("pre_off", offs), ("pre_off1", (offs + 1)[:off_w]),
                    ("pre_lenm1", by_op({op: lens[op] - 1 for op in pay_ops}, off_w + 1)),
                    ("pre_len1", by_op({op: lens[op] == 1 for op in pay_ops}, 1))]
        pre_off, pre_off1, pre_lenm1, pre_len1 = pre_regs = [
            Signal(ref.shape(), name=name, reset_less=True, init=int(name == "pre_off1")) for name, ref in pre_refs]
        m.d.sync += [r.eq(ref) for r, (_, ref) in zip(pre_regs, pre_refs)]

        # The RUN job (valid in WAIT; the queue's ready is the wait condition).
        rf = {n: fld(Op.RUN, n) for n in (fl.name for fl in self.lay[Op.RUN])}
        jp = self.job.payload
        m.d.comb += [jp.act_bank.eq(rf["act_bank"]), jp.act_offset.eq(rf["act_offset"]),
                     jp.wgt_bank.eq(rf["wgt_bank"]), jp.wgt_offset.eq(rf["wgt_offset"]),
                     jp.par_bank.eq(rf["par_bank"]), jp.par_index.eq(rf["par_index"]),
                     jp.out_bank.eq(rf["out_bank"]), jp.out_offset.eq(rf["out_offset"]),
                     jp.k.eq(rf["k"]), jp.ntiles.eq(rf["ntiles"])]
        # The job's end-of-tile / end-of-job values as registers of the descriptor (loaded on every
        # cycle: the descriptor is held from CHECK on, the job is valid from DECIDE on).
        job_refs = {"k1": rf["k"] == 1, "k2": rf["k"] == 2, "nt1": rf["ntiles"] == 1, "nt2": rf["ntiles"] == 2,
                    "fin1": (rf["k"] == 1) & (rf["ntiles"] == 1), "ntm1": (rf["ntiles"] - 1)[:len(jp.ntm1)]}
        job_regs = {n: Signal(len(getattr(jp, n)), name=f"job_{n}", reset_less=True) for n in job_refs}
        m.d.sync += [job_regs[n].eq(ref) for n, ref in job_refs.items()]
        m.d.comb += [getattr(jp, n).eq(r) for n, r in job_regs.items()]
        # rows_valid * lanes_valid from the registered descriptor (held from CHECK on) into a
        # registered product (the MULT18X18D's output register on the ECP5, not a MULT output
        # straight into the job queue: issue 6); valid from DECIDE on, the job leaves in WAIT.
        m.submodules.macs = macs = RegisteredMult(rf["rows_valid"].shape(), rf["lanes_valid"].shape())
        m.d.comb += [macs.a.eq(rf["rows_valid"]), macs.b.eq(rf["lanes_valid"]), macs.en.eq(1),
                     jp.macs.eq(macs.p)]

        # Interlock: the current command's wait condition (busy inputs, one-hot opcode, bank register).
        # The (opcode, bank) pair as one-hot registered selects (loaded in CHECK with the bank), so
        # blocked is one AND-OR of busy bits (no bank mux, no opcode gating after it: it decides
        # the WAIT exits, i.e. the FSM's and the shadow flags' next state).
        busy_of = {Op.WRITE_ACT: self.act_busy, Op.WRITE_WGT: self.wgt_busy,
                   Op.WRITE_PARAMS: self.par_busy, Op.READ_OUT: self.out_busy}
        bank_sel = {(op, b): Signal(name=f"wait_{op.name.lower()}_{b}", reset_less=True)
                    for op in busy_of for b in range(BANKS)}
        blocked = Signal()
        m.d.comb += blocked.eq(Cat(*[sel & busy_of[op][b] for (op, b), sel in bank_sel.items()]).any()
                               | ((op_r[Op.WRITE_LUT] | op_r[Op.SYNC]) & (self.jobs != 0))
                               | (op_r[Op.RUN] & ~self.job.ready))

        # ---- payload assembly and the buffer writes, straight from registers. Word q of the
        # entry loads whenever wsel selected it on the cycle before (in any state: asm is only read
        # by a registered write, which follows the entry's final word), so asm's enables are
        # flip-flops loaded from flip-flops: a two-level fanout tree, wsel -> its copies
        # (``kept_copy``: kept apart by synthesis, one per <= _COPY_LOADS bits of a word, each
        # equal to wsel one cycle late) -> asm, and the data they load is din's word registered
        # as late (``din_r``, one register per chunk). Issue 6: with the copies loaded from wsel_d
        # (the FSM's next-state logic) the route from the central next-state LUT to a far copy's D
        # was 8.91 ns, and wsel0 (fanout 64) -> par_w's data CE 8.47 ns: asm feeds the buffers'
        # write data across the die (params ~675 bits), so the copies sit far from the FSM.
        # So a word lands in asm on the cycle AFTER its transfer, and an entry is written
        # (w_en, registered from w_pre, the FSM's final-word decision) two cycles after its final
        # word, with data = asm, addr = pa, bank = bank (pa increments after the write; pa is
        # loaded in DECIDE and bank in CHECK, at the earliest one / three cycles after it).
        # Invisible at the top's ports: the buffers and the LUT are read only by jobs, which a RUN
        # hands over at least DECODE_CYCLES + 1 cycles after the final word (IDLE, CHECK,
        # COMPARE, DECIDE, WAIT; hw.buffers.WRITE_TO_READ_MIN_CYCLES, hw/top.py registers the
        # buffers' writes once more), and a WRITE waits until no queued job reads its bank, a
        # WRITE_LUT until no job is queued at all.
        asm = Signal(wpe_max * bus_bits, reset_less=True)
        words = [asm[q * bus_bits:(q + 1) * bus_bits] for q in range(wpe_max)]
        m.d.sync += wsel.eq(wsel_d)
        m.d.comb += wsel_d.eq(wsel)
        wsel_ref = Signal(wpe_max, reset_less=True)   # wsel one cycle late, for the checks only
        m.d.sync += wsel_ref.eq(wsel)
        copies = []                                   # (name, copy, the register it copies)
        for lo in range(0, bus_bits, _COPY_LOADS):
            c = lo // _COPY_LOADS
            din_r = Signal(min(_COPY_LOADS, bus_bits - lo), name=f"din_r{c}", reset_less=True)
            m.d.sync += din_r.eq(self.din.payload.data[lo:lo + _COPY_LOADS])
            for q in range(wpe_max):
                en = kept_copy(m, platform, wsel[q], Const(1), f"wsel{q}_{c}")
                copies.append((f"wsel{q}_{c}", en, wsel_ref[q]))
                with m.If(en):
                    m.d.sync += words[q][lo:lo + _COPY_LOADS].eq(din_r)
        # w_pre: the FSM's write decision on the final word's transfer (cycle t); w_en one cycle
        # later (t + 1, asm loads the final word), the write on t + 2.
        w_pre = {op: Signal(name=f"w_pre_{op.name.lower()}") for op in write_ops}
        w_pre_any = Signal()
        m.d.sync += [e.eq(0) for e in w_pre.values()] + [w_pre_any.eq(0)]
        w_en = {op: Signal(name=f"w_en_{op.name.lower()}") for op in write_ops}
        w_any = Signal()                              # == any w_en: pa's increment reads one flip-flop
        m.d.sync += [w_en[op].eq(w_pre[op]) for op in write_ops] + [w_any.eq(w_pre_any)]
        copies.append(("w_pre_any", w_pre_any, Cat(*w_pre.values()).any()))
        # pa from its next value pa_d; the out buffer's read address (fanout ~44: every DP16KD
        # of the out banks) is a copy of it (``kept_copy``), so the write ports' address net is apart.
        pa_d = Signal.like(pa)
        m.d.sync += pa.eq(pa_d)
        out_addr = kept_copy(m, platform, pa_d, Const(1), "out_addr")
        copies.append(("out_addr", out_addr, pa))
        copies.append(("w_any", w_any, Cat(*w_en.values()).any()))
        m.d.comb += [
            self.act_w.en.eq(w_en[Op.WRITE_ACT]), self.wgt_w.en.eq(w_en[Op.WRITE_WGT]),
            self.par_w.en.eq(w_en[Op.WRITE_PARAMS]), self.lut.valid.eq(w_en[Op.WRITE_LUT]),
            self.act_w.bank.eq(bank), self.act_w.addr.eq(pa), self.act_w.data.eq(asm),
            self.wgt_w.bank.eq(bank), self.wgt_w.addr.eq(pa), self.wgt_w.data.eq(asm),
            self.par_w.bank.eq(bank), self.par_w.addr.eq(pa), self.par_w.data.eq(asm),
            self.lut.payload.addr.eq(pa), self.lut.payload.data.eq(asm),
            self.out_r.bank.eq(bank), self.out_r.addr.eq(out_addr),
        ]

        # ---- the response snapshot: loads on every cycle outside RESP (an enable straight from a
        # FF, not the interlock decision), so on entering RESP it holds the status and counters of
        # the WAIT cycle that left for SNAP (SYNC: status only): in the last SNAP cycle the
        # counters and status_late show that cycle's values (issue 6: with the counters' visible
        # values straight into the snapshot, one cycle across the die was the 30 x 4 top's
        # critical path, 9.26 ns). Its load / shift select is resp_r in
        # one reset-less copy per <= _SNAP_GROUP bits (issue 6: fanout ~450 on one FF): after a
        # reset a copy may differ from resp_r for one cycle (it loaded the pre-reset next state),
        # harmless: snap is read only in RESP, which is entered from SNAP, where every copy is 0.
        # The copies load resp_n, RESP's next state as one flat expression of flip-flops (the last
        # SNAP state's flag) and dout.ready (asserted equal to the FSM's).
        #
        # In RESP the snapshot shifts down by one word per word taken (issue 6), so the word on dout
        # is always snap's first word: no word mux on wi (fanout ~bus_bits) in front of the bridge's
        # capture register. Its enable per group is one LUT of flip-flops (a resp_r copy and
        # dout.ready, the bridge's register). SYNC's response shows only its first
        # sync_response_words words: their counter bits are masked by a copy of is_sync per group
        # (loaded in CHECK, like is_sync); the later words are never shown for a SYNC. snap_ref is
        # the unshifted, fully masked snapshot the checks compare with (no hardware: read by
        # nothing else, synthesis removes it).
        n_w = status_response_words(cfg)
        snap_bits = STATUS_SLOTS * COUNTER_BITS
        sync_bits = min(snap_bits, sync_response_words(cfg) * bus_bits)   # bits a SYNC response shows
        snap = Signal(n_w * bus_bits, reset_less=True)         # the snapshot, zero-padded to whole words
        snap_ref = Signal(snap_bits, reset_less=True)
        counters = self.counters.as_value()
        snap_raw = Cat(status_late, Const(0, COUNTER_BITS - len(status)), counters)
        with m.If(snap_last_r):
            m.d.sync += snap_ref.eq(Cat(status_late, Const(0, COUNTER_BITS - len(status)),
                                        counters & ~is_sync.replicate(len(counters))))
        snap_next = Cat(snap[bus_bits:], Const(0, bus_bits))
        resp_n = Signal(name="resp_n")                 # driven below, after is_last
        resp_copies = []                              # resp_r's copy per group: the snapshot's word select
        for lo in range(0, len(snap), _SNAP_GROUP):
            hi, g = min(lo + _SNAP_GROUP, len(snap)), lo // _SNAP_GROUP
            resp_c = kept_copy(m, platform, resp_n, Const(1), f"resp_r{g}")
            copies.append((f"resp_r{g}", resp_c, resp_r))
            resp_copies.append(resp_c)
            if lo < sync_bits and hi > COUNTER_BITS:
                sync_c = kept_copy(m, platform, op_r[Op.SYNC], check_r, f"is_sync{g}")
                copies.append((f"is_sync{g}", sync_c, is_sync))
            # counter bits shown by SYNC are masked in its snapshot; bits past the snapshot are 0
            d = Cat(*[Const(0, 1) if i >= snap_bits else
                      (snap_raw[i] & ~sync_c if COUNTER_BITS <= i < sync_bits else snap_raw[i])
                      for i in range(lo, hi)])
            with m.If(~resp_c):
                m.d.sync += snap[lo:hi].eq(d)
            with m.Elif(self.dout.ready):
                m.d.sync += snap[lo:hi].eq(snap_next[lo:hi])

        # flags from the shadow flags and registered bits (issue 6: the state decode and the interlock
        # decision were in front of their enables). WAIT never blocks CLEAR_STATUS (no bank, no job
        # test), so its clear is wait_r & the opcode, a flip-flop registered from the next state
        # (op_r is loaded only in IDLE, never the cycle before WAIT; the flags' synchronous reset
        # was a LUT). flags_ref: the FSM's own form, for the checks.
        flags_ref = Signal.like(flags)
        clear = Signal(name="clr_st")
        m.d.sync += clear.eq(wait_d & op_r[Op.CLEAR_STATUS])
        mismatch = write_r & self.din.valid & ((wend & elast) ^ self.din.payload.last)
        m.d.sync += flags.eq(Mux(clear, 0, flags | Mux(decide_r & bad, errs, 0)
                                 | Mux(mismatch, int(Flag.LENGTH_MISMATCH), 0)))
        # clear_counters from a flip-flop (wait_r & the opcode & its field, registered from the next
        # state, like clr_st): it drives every copy of the counters' registered clear (hw/top.py).
        clr_ctr = Signal(name="clr_ctr")
        m.d.sync += clr_ctr.eq(wait_d & op_r[Op.CLEAR_STATUS] & fld(Op.CLEAR_STATUS, "counters"))
        m.d.comb += [self.clear_counters.eq(clr_ctr),
                     self.job.valid.eq(wait_r & op_r[Op.RUN] & self.job.ready)]

        def drop_and_flag(extra_flags):
            m.d.sync += flags_ref.eq(flags_ref | extra_flags)

        # ``dropped`` (DECIDE's decision, WRITE's length mismatch) from the shadow flags and
        # registered bits only: it feeds the CMDS_DROPPED increment register (hw/top.py), <= 2 LUT
        # levels (issue 6). The same cases as the drop_and_flag calls below.
        final = wend & elast
        m.d.comb += self.dropped.eq((decide_r & bad)
                                    | (write_r & self.din.valid & (final ^ self.din.payload.last)))


        # ---- dout's payload: READ's row word or RESP's snapshot word, selected by resp_r (a
        # flip-flop), not gated by the state: only read with dout.valid, and with no constant-0 arm
        # the bridge's capture register gets no synchronous reset from the decoder's state (issue 6:
        # a 257-wide LSR net through two LUTs). Word wi of the row / of the snapshot.
        n_out = wpe_of[Op.READ_OUT]
        # The word-index tests as flags registered from the next values (the FSM's READ/RESP exits
        # and out_r.en read a flip-flop, not a compare).
        row_end = Signal(init=int(n_out == 1))              # wi == n_out - 1
        is_last = Signal(init=1)                            # wi == nresp_m1 (both 0 at start)
        row_end_d = wi_d == n_out - 1
        m.d.sync += [row_end.eq(row_end_d), is_last.eq(wi_d == nresp_m1_d)]
        m.d.comb += resp_n.eq(snap_last_r | (resp_r & ~(self.dout.ready & is_last)))
        row_send = _word_mux([self.out_r.data[q * bus_bits:(q + 1) * bus_bits] for q in range(n_out)], wi)
        padded = Cat(snap_ref, Const(0, n_w * bus_bits - len(snap_ref)))
        resp_ref = _word_mux([padded[q * bus_bits:(q + 1) * bus_bits] for q in range(n_w)], wi)
        resp_send = snap[:bus_bits]
        m.d.comb += [self.dout.payload.data.eq(Cat(*[Mux(resp_copies[lo // _SNAP_GROUP], resp_send[lo:hi], row_send[lo:hi])
                                                     for lo in range(0, bus_bits, _SNAP_GROUP)
                                                     for hi in [min(lo + _SNAP_GROUP, bus_bits)]])),
                     self.dout.payload.last.eq(Mux(resp_r, is_last, row_end & elast))]

        # READ's out-buffer read (issue) and dout.valid from the shadow flags, not the state decode
        # (out_r.en: ~22 DP16KD enables; dout.valid: the bridge and the OUT_STALL increment).
        # The out buffer reads through two registers (its block RAMs' read and output registers,
        # hw.buffers output_register, golden.isa.OUT_READ_CYCLES; issue 6: the DP16KD's clock-to-out
        # without the output register was the 4 x 2 top's critical path into the bridge's `dcap`):
        # a two-stage pipeline, rs = the read register holds a row, rv = the output register
        # (out_r.data) does. The output register loads (out_oce) when it is free or its row's final
        # word is taken, and a read is issued when the read register is free or moves on.
        take = rv & self.dout.ready
        adv = ~rv | (self.dout.ready & row_end)                 # out_r.data is free after this cycle
        issue = read_r & rmore & (~rs | adv)
        m.d.comb += [self.dout.valid.eq((read_r & rv) | resp_r), self.out_r.en.eq(issue),
                     self.out_oce.eq(adv)]
        # pa's next value from flip-flops and dout.ready only: DECIDE's load (pre_off), the
        # increment (a write's w_en, READ's issue) selecting pa1 = pa + 1, a register of its own
        # (issue 6: the incrementer's carry chain and the select were in front of pa, its out_addr
        # copy and the write ports; pa1's own chain ends in pa1). The increment is never in
        # DECIDE; ``pa_inc`` is ``w_any | issue``, split so that dout.ready enters at its last LUT.
        pa_inc = (w_any | (read_r & rmore & (~rs | ~rv))) | (read_r & rmore & row_end & self.dout.ready)
        pa1 = Signal(off_w, name="pa1", init=1, reset_less=True)
        m.d.comb += pa_d.eq(Mux(pa_inc, pa1, Mux(decide_r, pre_off, pa)))
        m.d.sync += pa1.eq(Mux(pa_inc, pa1 + 1, Mux(decide_r, pre_off1, pa1)))
        copies.append(("pa1", pa1, (pa + 1)[:off_w]))
        # The entry counters, READ's read counter, rs and rv, outside the FSM: their enables are the
        # shadow flags and registered bits (issue 6), the same cases as the FSM's states. Outside
        # READ rs = rv = 0 (READ ends on its final row's final word, with no read left).
        # An entry is complete (erem's decrement) on WRITE's final word of an entry or READ's final
        # word of a row taken: ``ent_w`` = write_r & wend and ``ent_r`` = read_r & rv & row_end are
        # flags registered from the next values, so erem's enable is one LUT of flip-flops and the
        # handshake's din.valid / dout.ready (issue 6: write_r, din.valid, wend, read_r, rv,
        # dout.ready, row_end and decide_r were two LUT levels in front of erem's CE, 7.29 ns,
        # 14 late endpoints).
        ent_w, ent_r = Signal(name="ent_w"), Signal(name="ent_r")
        m.d.sync += [ent_w.eq(write_d & wend_d), ent_r.eq(read_d & rv_d & row_end_d)]
        copies += [("ent_w", ent_w, write_r & wend), ("ent_r", ent_r, read_r & rv & row_end)]
        m.d.comb += rv_d.eq(Mux(decide_r, 0, Mux(adv, rs, rv)))
        with m.If(decide_r):
            m.d.sync += [rs.eq(0), erem.eq(pre_lenm1), elast.eq(pre_len1), rrem.eq(pre_lenm1),
                         rmore.eq(1)]
        with m.Else():
            with m.If((ent_w & self.din.valid) | (ent_r & self.dout.ready)):   # an entry is complete
                m.d.sync += [erem.eq(erem - 1), elast.eq(erem == 1)]
            with m.If(issue):
                m.d.sync += [rrem.eq(rrem - 1), rmore.eq(rrem != 0)]
            m.d.sync += rs.eq(issue | (rs & ~adv))

        job_valid_ref, clear_counters_ref = Signal(), Signal()     # the FSM's forms, for the checks
        assert DECODE_CYCLES == 4, "the FSM below takes IDLE -> CHECK -> COMPARE -> DECIDE -> WAIT"
        with m.FSM() as fsm:
            with state("IDLE"):
                with m.If(self.cmd.valid):
                    goto("CHECK")
            with state("CHECK"):
                bank_d = by_op({op: fld(op, "bank") for op in bank_ops}, len(bank))
                m.d.sync += [sel.eq(op_r[op] & (bank_d == b)) for (op, b), sel in bank_sel.items()]
                m.d.comb += wend_d.eq(Cat(*[op_r[op] for op in pay_ops if wpe_of[op] == 1]).any())
                m.d.sync += [
                    bank.eq(bank_d),
                    wlast.eq(by_op({op: 1 << (wpe_of[op] - 1) for op in pay_ops}, wpe_max)),
                    is_sync.eq(op_r[Op.SYNC]),
                ]
                m.d.comb += [wi_d.eq(0), nresp_m1_d.eq(Mux(op_r[Op.SYNC], sync_response_words(cfg) - 1,
                                                           status_response_words(cfg) - 1))]
                m.d.comb += wsel_d.eq(1)
                goto("COMPARE")
            with state("COMPARE"):
                goto("DECIDE")
            with state("DECIDE"):
                with m.If(bad):
                    drop_and_flag(errs)
                    with m.If(ok_r & is_write):
                        goto("DISCARD")
                    with m.Else():
                        goto("IDLE")
                with m.Else():
                    goto("WAIT")
            with state("WAIT"):
                with m.If(~blocked):
                    with m.If(op_r[Op.RUN]):
                        m.d.comb += job_valid_ref.eq(1)
                        goto("IDLE")
                    with m.Elif(op_r[Op.CLEAR_STATUS]):
                        m.d.sync += flags_ref.eq(0)
                        m.d.comb += clear_counters_ref.eq(fld(Op.CLEAR_STATUS, "counters"))
                        goto("IDLE")
                    with m.Elif(op_r[Op.READ_OUT]):
                        goto("READ")
                    with m.Elif(op_r[Op.READ_STATUS] | op_r[Op.SYNC]):
                        goto(snap_states[0])
                    with m.Else():                                    # WRITE_*
                        goto("WRITE")
            with state("WRITE"):
                with m.If(self.din.valid):
                    with m.If(wend):
                        m.d.comb += wsel_d.eq(1)
                        m.d.comb += wend_d.eq(wlast[0])
                        m.d.sync += [w_pre[op].eq(op_r[op]) for op in write_ops] + [w_pre_any.eq(is_write)]
                    with m.Else():
                        m.d.comb += wsel_d.eq(wsel << 1)
                        m.d.comb += wend_d.eq((wsel[:-1] & wlast[1:]).any())
                    with m.If(final & self.din.payload.last):
                        goto("IDLE")
                    with m.Elif(final):                        # last missing on the final word
                        drop_and_flag(int(Flag.LENGTH_MISMATCH))
                        goto("DISCARD")
                    with m.Elif(self.din.payload.last):        # last early
                        drop_and_flag(int(Flag.LENGTH_MISMATCH))
                        goto("IDLE")
            with state("DISCARD"):
                with m.If(self.din.valid & self.din.payload.last):
                    goto("IDLE")
            with state("READ"):
                with m.If(take):
                    with m.If(row_end):
                        m.d.comb += wi_d.eq(0)
                        with m.If(elast):
                            goto("IDLE")
                    with m.Else():
                        m.d.comb += wi_d.eq(wi + 1)
            for cur, nxt in zip(snap_states, [*snap_states[1:], "RESP"]):
                with state(cur):
                    goto(nxt)
            with state("RESP"):
                with m.If(self.dout.ready):
                    m.d.comb += wi_d.eq(wi + 1)
                    with m.If(is_last):
                        goto("IDLE")
        # The state flags kept as registers (goto) and the state tests they stand for, and each
        # replicated enable and its original (no hardware: read by tests/test_hw_decoder.py, which
        # asserts them equal on every cycle).
        self.shadow_checks = [(f"{name.lower()}_r", reg, fsm.ongoing(name)) for name, (reg, _) in shadow.items()]
        loading = fsm.ongoing("IDLE") | fsm.ongoing("CHECK")     # bank / op_r not yet both loaded
        self.shadow_checks += [(sel.name, sel, Mux(loading, sel, op_r[op] & (bank == b)))
                               for (op, b), sel in bank_sel.items()]
        self.shadow_checks += copies + [("row_end", row_end, wi == n_out - 1), ("is_last", is_last, wi == nresp_m1)]
        deciding = fsm.ongoing("DECIDE")               # the precomputed loads hold the descriptor's values
        self.shadow_checks += [(name, Mux(deciding, reg, ref), ref) for reg, (name, ref) in zip(pre_regs, pre_refs)]
        self.shadow_checks += [(f"job_{n}", Mux(self.job.valid, job_regs[n], ref), ref) for n, ref in job_refs.items()]
        self.shadow_checks += [("flags", flags, flags_ref), ("job_valid", self.job.valid, job_valid_ref),
                               ("clear_counters", self.clear_counters, clear_counters_ref),
                               ("resp_word", Mux(resp_r, resp_send, resp_ref), resp_ref), ("resp_n", resp_n, resp_d),
                               ("clr_st", clear, wait_r & op_r[Op.CLEAR_STATUS]),
                               ("cmd_ready", self.cmd.ready, fsm.ongoing("IDLE")),
                               ("pa_inc", pa_inc, w_any | issue), ("pa_inc_in_decide", pa_inc & decide_r, 0),
                               ("din_ready", self.din.ready, fsm.ongoing("WRITE") | fsm.ongoing("DISCARD"))]
        return m
