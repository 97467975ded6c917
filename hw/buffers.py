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

__all__ = ["BankedBuffer", "write_signature", "read_signature", "bank_shape"]


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

    def __init__(self, width: int, depth: int):
        if width < 1 or depth < 1:
            raise ValueError(f"width and depth must be >= 1, got width={width}, depth={depth}")
        self.width, self.depth = width, depth
        super().__init__({"w": In(write_signature(width, depth)), "r": In(read_signature(width, depth))})

    def elaborate(self, platform):
        m = Module()
        rdata = []
        for b in range(BANKS):
            mem = memory.Memory(shape=unsigned(self.width), depth=self.depth, init=[])
            m.submodules[f"bank{b}"] = mem
            wp = mem.write_port()
            rp = mem.read_port(transparent_for=())
            m.d.comb += [
                wp.en.eq(self.w.en & (self.w.bank == b)), wp.addr.eq(self.w.addr), wp.data.eq(self.w.data),
                rp.en.eq(self.r.en), rp.addr.eq(self.r.addr),
            ]
            rdata.append(rp.data)
        # The bank of the last read selects which memory's (held) data is shown.
        sel = Signal(bank_shape())
        with m.If(self.r.en):
            m.d.sync += sel.eq(self.r.bank)
        m.d.comb += self.r.data.eq(Array(rdata)[sel])
        return m
