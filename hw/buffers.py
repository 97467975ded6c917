"""``BankedBuffer``: one on-chip buffer of the accelerator top, ``BANKS`` banks of
``depth`` entries (docs/top.md, "Buffers").

The banks are one ``amaranth.lib.memory.Memory`` (a power-of-two depth: the
bank index as the top address bits) or one per bank (other depths), with one
write port and one synchronous read port (a simple dual-port RAM: BRAM/URAM
on the FPGA), so the decoder can fill one bank while the sequencer reads the
other.

Port interfaces (``write_signature`` / ``read_signature``, seen from the
user, i.e. the decoder or the sequencer):

* write: ``en``, ``bank``, ``addr``, ``data``: entry ``addr`` of ``bank`` is
  written at the clock edge when ``en`` = 1 (readable from the next cycle).
* read: ``en``, ``bank``, ``addr`` out, ``data`` in: when ``en`` = 1,
  ``data`` shows entry ``addr`` of ``bank`` from the next cycle and HOLDS it
  (through any writes to the memory) until the next read with ``en`` = 1. The
  hold is what lets the sequencer keep a beat on the core's input while the
  core is not ready, without a separate skid register.

``output_register=True`` (hw.top: every buffer): ``data`` is registered
once more, in the block RAMs' own output registers on the ECP5 (``hw.ecp5_bram``), enabled by the
extra input ``oce``: it shows, from the cycle after a cycle with ``oce`` = 1, what ``data`` of the
plain buffer showed on that cycle. The user's first register behind the buffer moves into it (the
array's input registers, ``hw.core.ArrayCore(inputs_registered=True)``; the decoder's READ stage,
``golden.isa.OUT_READ_CYCLES``; issue 6: a DP16KD without its output register has a 5.83 ns
clock-to-out). On the ECP5 it needs ``collision_free`` (the DP16KD is instantiated without
read-during-write emulation). In LUT-RAM mode the register is one per slice behind its bank
select: the params buffer's output register is the core's first params register (its LUT-RAM
read and the core's params FIFO were placed far apart, issue 6).

``collision_free=True``: the user guarantees that no read (``en`` = 1) addresses an entry on the
cycle a write to it reaches the memory (the accelerator top: its decoder/sequencer interlock,
asserted by tests/test_hw_top_amaranth.py ``_SpacedAccelerator``); what such a read returns is
then undefined on the FPGA (synthesis may map the memory without read-first emulation).

Sliced block-RAM mode (``bram_slice_bits``, registered write, power-of-two depth: the act and wgt
buffers): the memory is split into slices of that many bits, each written through its own copy
of the registered write enable and address; reads are unchanged, except that with
``read_enable_copies`` each slice takes its read enable from its own bit of the extra input
``r_en_copies`` (copies of ``r.en`` that the user makes, e.g. hw.sequencer's per-slice issue).

LUT-RAM mode (``lut_ram_slice_bits``, the params buffer on the FPGA): each bank is split
into slices of that many bits (one memory each, read asynchronously), and the read bank
select is registered inside the buffer in one copy per slice, the read and write addresses
in one copy per bank and slice, so every address copy drives at most
``lut_ram_slice_bits / 4`` LUT-RAM cells (TRELLIS_DPR16X4: 4 bits x 16 entries) straight from
flip-flops; the write enables are one reset register per bank and slice (``enable_copy``,
so a write presented in a reset cycle still never lands). Read
semantics differ in one point only: the data shows the CURRENT contents of the addressed
entry (a write landing while it is shown becomes visible), where the synchronous port shows
the contents at the read. Callers use it only where the shown entry cannot be written (the
sequencer's params reads: the offered job's bank is not written while the job is valid and
not pushed, see hw.sequencer), so the two are indistinguishable there. ``read_stages=2`` (LUT-RAM
mode only; hw.top's params buffer) registers the read address and bank once more per slice: the
data (and its hold) follow each read one cycle later than described above; ``output_stages=2``
(LUT-RAM mode with ``output_register``; hw.top's params buffer) registers the output once more
(both registers on ``oce``): ``data`` shows what the single output register would show, one
``oce`` cycle later; ``write_stages=2``
(likewise) registers the write port once more per slice: a write lands one cycle later (and a reset
also drops the write presented on the cycle before it).
"""
from __future__ import annotations

from amaranth import C, Array, Cat, ClockSignal, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS
from golden.isa import DECODE_CYCLES

from .ecp5_bram import PipelinedReadRam
from .ecp5_mult import is_ecp5

__all__ = ["BankedBuffer", "write_signature", "read_signature", "bank_shape", "WRITE_TO_READ_MIN_CYCLES", "kept_copy",
           "BRAM_SLICE_BITS",
           "LUT_RAM_CELLS_PER_COPY", "lut_ram_slice_bits", "live_register", "enable_copy"]

#: Fewest cycles from the transfer of a WRITE_ACT/WGT/PARAMS's final payload word (cycle t) to the
#: first read of its last entry by the sequencer: the decoder returns to IDLE on t + 1, where the
#: next command (a RUN) transfers at the earliest; its first WAIT cycle, t + 1 + DECODE_CYCLES
#: (golden.isa: CHECK, COMPARE, DECIDE first), hands the job over (job transfer), and the
#: sequencer's readers start on the next cycle, t + 2 + DECODE_CYCLES (module docstring of
#: hw.sequencer). Jobs already queued cannot read the written bank: the decoder waits for the
#: bank's busy flag to drop before writing it, and a job that arrives later is again that far
#: behind the write. The decoder assembles the word a cycle after its transfer and registers its
#: write (the entry reaches its write port on t + 2), hw.top registers it once more per buffer and
#: the buffer once more (memory written at the end of t + 4, readable from t + 5): this needs >= 5.
#: The params buffer (LUT-RAM, ``write_stages=2``) is written a cycle later still (readable from
#: t + 6), and its reads (``read_stages=2``) sample the memory two cycles after they are presented.
#: Covered at the top by tests/test_hw_buffers.py::test_top_write_then_run_tightest.
WRITE_TO_READ_MIN_CYCLES = DECODE_CYCLES + 2

#: LUT-RAM mode: most LUT-RAM cells (TRELLIS_DPR16X4, 4 bits x 16 entries) of one slice, all
#: banks together (one read bank select copy; each bank's part has its own read and write
#: address copies; issue 6: a net with fanout > ~30-60 must come straight from its own
#: flip-flop). 16 was tried in session 9: twice the write address copies put the decoder's
#: shared write address register at fanout 53 and the 30 x 4 top's Fmax did not rise (105.21 and
#: 98.53 MHz against 111.25 and 105.15, docs/fpga.md).
LUT_RAM_CELLS_PER_COPY = 32
#: LUT-RAM mode: bits of a slice per copy of the registered read bank select (the select of the
#: bank mux in front of each output bit).
READ_SELECT_BITS = 16


#: Block-RAM mode with ``bram_slice_bits``: bits per slice of the act/wgt buffers, i.e. per copy of
#: the registered write enable and address: 4 DP16KD in 2048x9 mode (2 in 1024x18).
BRAM_SLICE_BITS = 36


def lut_ram_slice_bits(depth: int) -> int:
    """Slice width for a ``depth``-entry LUT-RAM buffer: a slice of all ``BANKS`` banks is at most
    LUT_RAM_CELLS_PER_COPY cells (never narrower than one cell, 4 bits)."""
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    return 4 * max(1, LUT_RAM_CELLS_PER_COPY // (BANKS * -(-depth // 16)))


def bank_shape():
    """Shape of a bank index inside the hardware (the descriptor field is one bit wider)."""
    return range(BANKS)


def write_signature(width: int, depth: int) -> wiring.Signature:
    """Write side of a buffer, as driven by its user (``Out`` members)."""
    return wiring.Signature({"en": Out(1), "bank": Out(bank_shape()), "addr": Out(range(depth)),
                             "data": Out(unsigned(width))})


def read_signature(width: int, depth: int) -> wiring.Signature:
    """Read side of a buffer, as driven by its user (``data`` flows back in)."""
    return wiring.Signature({"en": Out(1), "bank": Out(bank_shape()), "addr": Out(range(depth)),
                             "data": In(unsigned(width))})


class BankedBuffer(wiring.Component):
    """``BANKS`` memories of ``depth`` x ``width`` bits; ports ``w`` and ``r`` (flipped signatures)."""

    def __init__(self, width: int, depth: int, *, registered_write: bool = False,
                 lut_ram_slice_bits: int | None = None, bram_slice_bits: int | None = None,
                 collision_free: bool = False, output_register: bool = False,
                 read_enable_copies: bool = False, read_stages: int = 1, write_stages: int = 1,
                 output_stages: int = 1):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        if not isinstance(registered_write, bool):
            raise ValueError(f"registered_write must be a bool, got {registered_write!r}")
        if lut_ram_slice_bits is not None:
            if isinstance(lut_ram_slice_bits, bool) or not isinstance(lut_ram_slice_bits, int) \
                    or lut_ram_slice_bits < 1:
                raise ValueError(f"lut_ram_slice_bits must be None or an int >= 1, got {lut_ram_slice_bits!r}")
            if not registered_write:
                raise ValueError("lut_ram_slice_bits needs registered_write=True (its write registers are per bank)")
        if bram_slice_bits is not None:
            if isinstance(bram_slice_bits, bool) or not isinstance(bram_slice_bits, int) or bram_slice_bits < 1:
                raise ValueError(f"bram_slice_bits must be None or an int >= 1, got {bram_slice_bits!r}")
            if not registered_write or lut_ram_slice_bits is not None or depth & (depth - 1):
                raise ValueError("bram_slice_bits needs registered_write=True, no lut_ram_slice_bits and a "
                                 f"power-of-two depth (its copies are of the registered write port), got "
                                 f"depth={depth}")
        if not isinstance(collision_free, bool):
            raise ValueError(f"collision_free must be a bool, got {collision_free!r}")
        if not isinstance(output_register, bool):
            raise ValueError(f"output_register must be a bool, got {output_register!r}")
        self.output_register = output_register
        if not isinstance(read_enable_copies, bool):
            raise ValueError(f"read_enable_copies must be a bool, got {read_enable_copies!r}")
        if read_enable_copies and bram_slice_bits is None:
            raise ValueError("read_enable_copies needs bram_slice_bits (one read enable copy per slice)")
        self.read_enable_copies = read_enable_copies
        for kind, stages in (("read", read_stages), ("write", write_stages)):
            if isinstance(stages, bool) or not isinstance(stages, int) or stages not in (1, 2):
                raise ValueError(f"{kind}_stages must be 1 or 2, got {stages!r}")
            if stages != 1 and lut_ram_slice_bits is None:
                raise ValueError(f"{kind}_stages=2 needs lut_ram_slice_bits (its extra stage is the per-slice "
                                 f"{kind} register of LUT-RAM mode)")
        self.read_stages, self.write_stages = read_stages, write_stages
        if isinstance(output_stages, bool) or not isinstance(output_stages, int) or output_stages not in (1, 2):
            raise ValueError(f"output_stages must be 1 or 2, got {output_stages!r}")
        if output_stages != 1 and (lut_ram_slice_bits is None or not output_register):
            raise ValueError("output_stages=2 needs lut_ram_slice_bits and output_register=True (its extra stage "
                             "is a second per-slice output register of LUT-RAM mode)")
        self.output_stages = output_stages
        self.bram_slice_bits = bram_slice_bits
        self.collision_free = collision_free
        self.width, self.depth = width, depth
        self.registered_write = registered_write
        self.lut_ram_slice_bits = lut_ram_slice_bits
        n_copies = len(self.slices(bram_slice_bits)) if read_enable_copies else 0
        super().__init__({"w": In(write_signature(width, depth)), "r": In(read_signature(width, depth)),
                          **({"oce": In(1)} if output_register else {}),
                          **({"r_en_copies": In(n_copies)} if read_enable_copies else {})})

    def elaborate(self, platform):
        # (name, copy, reference): every replicated register and the one it copies (tests assert
        # them equal on every cycle, tests/shadow_checks.py)
        self.shadow_checks = []
        if self.lut_ram_slice_bits is not None:
            return self._elaborate_lut_ram(platform)
        m = Module()
        w_en, w_bank, w_addr, w_data = self.w.en, self.w.bank, self.w.addr, self.w.data
        if self.registered_write:
            # Registered write port: the memories see last cycle's write (module docstring).
            # en keeps its reset (no stale write may land after a reset); the rest is datapath.
            r_en = Signal(name="w_reg_en")
            r_bank = Signal(bank_shape(), name="w_reg_bank", reset_less=True)
            r_addr = Signal(range(self.depth), name="w_reg_addr", reset_less=True)
            r_data = Signal(unsigned(self.width), name="w_reg_data", reset_less=True)
            m.d.sync += [r_en.eq(w_en), r_bank.eq(w_bank), r_addr.eq(w_addr), r_data.eq(w_data)]
            w_en, w_bank, w_addr, w_data = r_en, r_bank, r_addr, r_data
        if self.depth & (self.depth - 1) == 0:
            # A power-of-two depth: all banks in one memory, the bank index as the top address
            # bits (a concatenation, nothing wasted), so the read data comes straight from the RAM:
            # no bank multiplexer behind a BRAM's 4.3 ns clock-to-out (issue 6: on the 30x4 top
            # the act buffer's bank mux, a PFUMX, sat in front of every skew register).
            # With bram_slice_bits the memory is split into slices of that many bits, each written
            # through its own copy of the registered write enable and address (issue 6: one
            # register drove the write address / enable pins of all 27 act DP16KD across the die,
            # 11.8 ns on the 30x4 top); the read port is shared (its address and enable are the
            # sequencer's registers).
            slices = [(0, self.width)] if self.bram_slice_bits is None else self.slices(self.bram_slice_bits)
            rdata = []
            for g, (lo, hi) in enumerate(slices):
                wp, rp = self._memory(m, "banks" if self.bram_slice_bits is None else f"banks_s{g}",
                                      hi - lo, BANKS << len(self.r.addr))
                en_g, addr_g = w_en, Cat(w_addr, w_bank)
                if self.bram_slice_bits is not None:
                    en_g = enable_copy(m, platform, self.w.en, f"w_en_s{g}")
                    addr_g = kept_copy(m, platform, Cat(self.w.addr, self.w.bank), C(1, 1), f"w_addr_s{g}")
                    self.shadow_checks += [(f"w_en_s{g}", en_g, w_en), (f"w_addr_s{g}", addr_g, Cat(w_addr, w_bank))]
                r_en = self.r.en
                if self.read_enable_copies:
                    r_en = self.r_en_copies[g]
                    self.shadow_checks.append((f"r_en_s{g}", r_en, self.r.en))
                m.d.comb += [
                    wp.en.eq(en_g), wp.addr.eq(addr_g), wp.data.eq(w_data[lo:hi]),
                    rp.en.eq(r_en), rp.addr.eq(Cat(self.r.addr, self.r.bank)),
                ]
                rdata.append(rp.data)
            m.d.comb += self.r.data.eq(Cat(*rdata))
            return m
        # Any other depth: one memory per bank (a shared one would waste the padding to a power
        # of two, e.g. 4608 -> 8192 entries per bank) and the bank of the last read selects which
        # memory's (held) data is shown (with output_register: the bank travels with the data
        # into the output register's stage, and the select follows those registers).
        rdata = []
        for b in range(BANKS):
            wp, rp = self._memory(m, f"bank{b}", self.width, self.depth)
            m.d.comb += [
                wp.en.eq(w_en & (w_bank == b)), wp.addr.eq(w_addr), wp.data.eq(w_data),
                rp.en.eq(self.r.en), rp.addr.eq(self.r.addr),
            ]
            rdata.append(rp.data)
        sel = Signal(bank_shape(), reset_less=True)     # datapath: travels with the read data
        with m.If(self.r.en):
            m.d.sync += sel.eq(self.r.bank)
        if self.output_register:
            sel_q = Signal(bank_shape(), name="sel_q", reset_less=True)
            with m.If(self.oce):
                m.d.sync += sel_q.eq(sel)
            sel = sel_q
        m.d.comb += self.r.data.eq(Array(rdata)[sel])
        return m

    def _memory(self, m, name, width, depth):
        """One memory of the buffer as (write port, read port): an ``amaranth.lib.memory`` memory,
        or with ``output_register`` a ``PipelinedReadRam`` (ports named alike, ``oce`` wired)."""
        if self.output_register:
            ram = PipelinedReadRam(width, depth, collision_free=self.collision_free)
            m.submodules[name] = ram
            m.d.comb += ram.r_oce.eq(self.oce)
            return (_Port(en=ram.w_en, addr=ram.w_addr, data=ram.w_data),
                    _Port(en=ram.r_en, addr=ram.r_addr, data=ram.r_data))
        mem = memory.Memory(shape=unsigned(width), depth=depth, init=[], attrs=self._mem_attrs())
        m.submodules[name] = mem
        return mem.write_port(), mem.read_port(transparent_for=())

    def _mem_attrs(self) -> dict:
        # collision_free: yosys' `no_rw_check` lets it map the memory as a plain BRAM. Without it,
        # the non-transparent read must return the old data even when the write to the same entry
        # lands on the read's cycle, which the ECP5 DP16KD does not guarantee across its ports:
        # yosys emulates it (the write delayed by a register, a bypass register per output bit
        # enabled by the read enable, an address compare and a mux behind the BRAM's output). On
        # the 30 x 4 top that was 243 flip-flops on the act/wgt read enable (fanout 333) and a mux
        # between the DP16KD and the skew registers (issue 6).
        return {"no_rw_check": 1} if self.collision_free else {}

    def slices(self, sb: int | None = None) -> list[tuple[int, int]]:
        """The [lo, hi) bit ranges of the slices of ``sb`` bits (default ``lut_ram_slice_bits``; the
        last narrower)."""
        sb = self.lut_ram_slice_bits if sb is None else sb
        return [(lo, min(lo + sb, self.width)) for lo in range(0, self.width, sb)]

    def _elaborate_lut_ram(self, platform):
        """LUT-RAM mode (module docstring): per-slice registered read bank select,
        per-bank-and-slice registered read and write addresses and write enables."""
        m = Module()
        # Timing (issue 6): the 30x4 top's params buffer is ~680 TRELLIS_DPR16X4; one read
        # address register (or a mux in front of a synchronous read) drove all of their read
        # address pins and one decode LUT all their write enables. Each copy below drives one
        # slice. The copies are the same register; `kept_copy` keeps them apart in synthesis.
        # Write side: the enable must keep its reset (no write presented in a reset cycle may
        # land): one `enable_copy` per bank and slice.
        self.shadow_checks = []
        w_data_in, w_en_ref, w_bank_ref = self.w.data, self.w.en, self.w.bank
        if self.write_stages == 2:
            w_data_in = Signal(unsigned(self.width), name="w_stage1_data", reset_less=True)
            m.d.sync += w_data_in.eq(self.w.data)
            # the references of the slices' first write stage (no hardware: shadow checks)
            w_ref_en = Signal(name="w_stage1_en")
            w_ref = Signal(len(self.w.addr) + len(self.w.bank), name="w_stage1", reset_less=True)
            m.d.sync += [w_ref_en.eq(self.w.en), w_ref.eq(Cat(self.w.addr, self.w.bank))]
            w_en_ref, w_bank_ref = w_ref_en, w_ref[len(self.w.addr):]
        w_data = Signal(unsigned(self.width), name="w_reg_data", reset_less=True)
        m.d.sync += w_data.eq(w_data_in)
        # `shadow_checks` (tests): (name, copy, reference) with the per-bank reset register the
        # enables replace (read by nothing else: synthesis removes it).
        ref = []
        for b in range(BANKS):
            en_b = Signal(name=f"w_reg_en{b}")
            m.d.sync += en_b.eq(w_en_ref & (w_bank_ref == b))
            ref.append(en_b)
        out = []
        # The read address has a copy per bank and slice (issue 6: one copy per slice, shared by
        # both banks' cells, put its flip-flop beside one bank: 8.2 ns of routing to the other's
        # read address pins, the 30 x 4 top's critical path in session 9).
        if self.read_stages == 2:
            # The reference of the slices' first read-address stage (no hardware: shadow checks).
            r_ref = Signal(len(self.r.addr) + len(self.r.bank), name="r_stage1", reset_less=True)
            with m.If(self.r.en):
                m.d.sync += r_ref.eq(Cat(self.r.addr, self.r.bank))
        for g, (lo, hi) in enumerate(self.slices()):
            r_addr_in, r_bank_in, r_en = self.r.addr, self.r.bank, self.r.en
            if self.read_stages == 2:
                # read_stages=2: one more register per slice in front of the address and bank select
                # copies, loaded on r.en; the copies then load it on every cycle (issue 6: the copies
                # sit by their LUT-RAM, the user's address logic by the user; on the 30 x 4 top the
                # sequencer's address mux -> a far slice's copy -> LUT-RAM -> output register was
                # 8.0-9.65 ns in three of five seeds in session 11). Data shows one cycle later.
                r_pre = kept_copy(m, platform, Cat(self.r.addr, self.r.bank), self.r.en, f"r_stage1_s{g}")
                self.shadow_checks.append((f"r_stage1_s{g}", r_pre, r_ref))
                r_addr_in, r_bank_in, r_en = r_pre[:len(self.r.addr)], r_pre[len(self.r.addr):], C(1, 1)
            # the bank select once per READ_SELECT_BITS of the slice (issue 6: one copy per 64-bit
            # slice selected 64 bank muxes in front of the output register, 31-83 late endpoints)
            r_sels = [kept_copy(m, platform, r_bank_in, r_en, f"r_bank_s{g}_{j}")
                      for j in range(-(-(hi - lo) // READ_SELECT_BITS))]
            w_en_in, w_addr_in, w_bank_in = self.w.en, self.w.addr, self.w.bank
            if self.write_stages == 2:
                # write_stages=2: one more write register per slice (the enable with its reset) in
                # front of the per-bank copies (issue 6: the top's single write-enable register ->
                # a far slice's enable copy was a 13.5 ns route in one seed of session 11's final
                # netlist). Writes land one cycle later.
                w_en_in = enable_copy(m, platform, self.w.en, f"w_stage1_en_s{g}")
                w_pre = kept_copy(m, platform, Cat(self.w.addr, self.w.bank), C(1, 1), f"w_stage1_s{g}")
                self.shadow_checks += [(f"w_stage1_en_s{g}", w_en_in, w_ref_en), (f"w_stage1_s{g}", w_pre, w_ref)]
                w_addr_in, w_bank_in = w_pre[:len(self.w.addr)], w_pre[len(self.w.addr):]
            rdata = []
            for b in range(BANKS):
                r_addr = kept_copy(m, platform, r_addr_in, r_en, f"r_addr_b{b}_s{g}")
                w_addr = kept_copy(m, platform, w_addr_in, C(1, 1), f"w_addr_b{b}_s{g}")
                w_en_bg = enable_copy(m, platform, w_en_in & (w_bank_in == b), f"w_en_b{b}_s{g}")
                self.shadow_checks.append((f"w_en_b{b}_s{g}", w_en_bg, ref[b]))
                mem = memory.Memory(shape=unsigned(hi - lo), depth=self.depth, init=[])
                m.submodules[f"bank{b}_s{g}"] = mem
                wp = mem.write_port()
                rp = mem.read_port(domain="comb")
                m.d.comb += [wp.en.eq(w_en_bg), wp.addr.eq(w_addr), wp.data.eq(w_data[lo:hi]),
                             rp.addr.eq(r_addr)]
                rdata.append(rp.data)
            sel = Cat(*(Array(d[j * READ_SELECT_BITS:(j + 1) * READ_SELECT_BITS] for d in rdata)[r_sel]
                        for j, r_sel in enumerate(r_sels)))
            if self.output_register:
                # output_stages=2: a second register per slice, so the first can sit by its LUT-RAM
                # (issue 6, session 13: LUT-RAM read -> bank select -> the output register beside the
                # core was 8.0-9.0 ns, 23-55 late endpoints in every seed of the 30 x 4 top)
                for k in range(self.output_stages):
                    q = Signal(hi - lo, name=f"out_reg_s{g}" + (f"_{k}" if k else ""), reset_less=True)
                    with m.If(self.oce):
                        m.d.sync += q.eq(sel)
                    sel = q
            out.append(sel)
        m.d.comb += self.r.data.eq(Cat(*out))
        return m


class _Port:
    """A memory port's ``en`` / ``addr`` / ``data`` signals (a ``PipelinedReadRam``'s, named like an
    ``amaranth.lib.memory`` port's)."""

    def __init__(self, en, addr, data):
        self.en, self.addr, self.data = en, addr, data


def kept_copy(m, platform, d, en, name):
    """One copy of a replicated, reset-less register ``q <= d`` when ``en``: on an ECP5 platform
    TRELLIS_FF instances with ``keep`` (yosys' opt_merge would fold identical Amaranth registers
    into one and with it the fanout this copy exists to split), elsewhere a plain register."""
    q = Signal(d.shape(), name=name, reset_less=True)
    if is_ecp5(platform):
        for i in range(len(q)):
            m.submodules[f"{name}_ff{i}"] = Instance(
                "TRELLIS_FF", p_GSR="DISABLED", p_CEMUX="CE", p_CLKMUX="CLK", p_LSRMUX="LSR",
                p_REGSET="RESET", p_SRMODE="LSR_OVER_CE", i_CLK=ClockSignal(), i_LSR=C(0, 1),
                i_CE=en, i_DI=d[i], o_Q=q[i], a_keep=1)
    else:
        with m.If(en):
            m.d.sync += q.eq(d)
    return q


def live_register(m, platform, name="w_live"):
    """A reset register (init 0) loaded with 1: ``live(t+1) = ~rst(t)``, and 0 on the first cycle.

    Every live register of a design is the same register (reset 0, D = 1), so yosys' opt_merge
    folds them all into one flip-flop, whose fanout then crosses the die (issue 6: the 30 x 4
    top's critical path in session 7 started at the merged ``w_live``). On an ECP5 platform each
    call therefore loads its own kept constant-1 flip-flop (``kept_copy`` of 1: 0 only before the
    first clock edge after configuration, while the board holds the accelerator in reset anyway,
    hw/ulx3s.py), which makes its D input distinct."""
    live = Signal(name=name)
    m.d.sync += live.eq(_own_one(m, platform, name))
    return live


def _own_one(m, platform, name):
    """1, from a flip-flop of its own on an ECP5 platform (see ``live_register``)."""
    return kept_copy(m, platform, C(1, 1), C(1, 1), f"{name}_one") if is_ecp5(platform) else C(1, 1)


def enable_copy(m, platform, d, name, *, en=None, init: int = 0):
    """One copy of the reset register ``q <= d`` (reset to ``init``; loaded only when ``en`` is 1 if
    given) for one group of its loads.

    A replicated enable must keep its reset (no write presented in a reset cycle may land), so
    the copy is an ordinary reset register (``ResetInserter`` reaches it, unlike the reset-less
    ``kept_copy`` instances). Identical copies would be merged by yosys, so on ECP5 each loads
    ``d & one`` with a kept constant-1 flip-flop of its own (``_own_one``): the same value from
    the first clock edge on, and a distinct D input per copy. The copy's output drives its group
    straight from the flip-flop (session 7 ANDed a reset-less copy with a ``live`` register: a
    LUT behind every copy, and yosys merged all the live registers into one)."""
    q = Signal(name=name, init=init)
    if en is None:
        m.d.sync += q.eq(d & _own_one(m, platform, name))
    else:
        with m.If(en):
            m.d.sync += q.eq(d & _own_one(m, platform, name))
    return q
