"""``BankedBuffer``: one on-chip buffer of the accelerator top, ``BANKS`` banks of
``depth`` entries (docs/top.md, "Buffers").

Each bank is one ``amaranth.lib.memory.Memory`` with one write port and one
synchronous read port (a simple dual-port RAM: BRAM/URAM on the FPGA), so the
decoder can fill one bank while the sequencer reads the other.

Port interfaces (``write_signature`` / ``read_signature``, seen from the
user, i.e. the decoder or the sequencer):

* write: ``en``, ``bank``, ``addr``, ``data``: entry ``addr`` of ``bank`` is
  written at the clock edge when ``en`` = 1 (readable from the next cycle).
* read: ``en``, ``bank``, ``addr`` out, ``data`` in: when ``en`` = 1,
  ``data`` shows entry ``addr`` of ``bank`` from the next cycle and HOLDS it
  (through any writes to the memory) until the next read with ``en`` = 1. The
  hold is what lets the sequencer keep a beat on the core's input while the
  core is not ready, without a separate skid register.
"""
from __future__ import annotations

from amaranth import Array, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS

__all__ = ["BankedBuffer", "write_signature", "read_signature", "bank_shape", "WRITE_TO_READ_MIN_CYCLES"]

#: Fewest cycles from the decoder presenting the final entry of a WRITE_ACT/WGT/PARAMS on a
#: buffer's write port (cycle t) to the first read of that entry by the sequencer: the
#: decoder returns to IDLE on t + 1, where the next command (a RUN) transfers at the
#: earliest; CHECK on t + 2, DECIDE on t + 3, WAIT on t + 4 hands the job over (job
#: transfer), and the sequencer's readers start on the next cycle, t + 5 (module docstring
#: of hw.sequencer). Jobs already queued cannot read the written bank: the decoder waits
#: for the bank's busy flag to drop before writing it, and a job that arrives later is
#: again >= 5 cycles behind the write. The decoder registers its writes (the entry reaches the
#: write port on t + 1) and hw.top registers them once more in the buffer (memory written at the
#: end of t + 2, readable from t + 3): this needs >= 3.
#: Covered at the top by tests/test_hw_buffers.py::test_top_write_then_run_tightest.
WRITE_TO_READ_MIN_CYCLES = 5


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

    def __init__(self, width: int, depth: int, *, registered_write: bool = False):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        if not isinstance(registered_write, bool):
            raise ValueError(f"registered_write must be a bool, got {registered_write!r}")
        self.width, self.depth = width, depth
        self.registered_write = registered_write
        super().__init__({"w": In(write_signature(width, depth)), "r": In(read_signature(width, depth))})

    def elaborate(self, platform):
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
        rdata = []
        for b in range(BANKS):
            mem = memory.Memory(shape=unsigned(self.width), depth=self.depth, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=())
            m.d.comb += [
                wp.en.eq(w_en & (w_bank == b)), wp.addr.eq(w_addr), wp.data.eq(w_data),
                rp.en.eq(self.r.en), rp.addr.eq(self.r.addr),
            ]
            rdata.append(rp.data)
        # The bank of the last read selects which memory's (held) data is shown.
        sel = Signal(bank_shape(), reset_less=True)     # datapath: travels with the read data
        with m.If(self.r.en):
            m.d.sync += sel.eq(self.r.bank)
        m.d.comb += self.r.data.eq(Array(rdata)[sel])
        return m
