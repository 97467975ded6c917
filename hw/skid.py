"""``SkidBuffer``: a stream register slice whose every output is a flip-flop, ``i.ready`` included.

A stream whose ready travels far (issue 6: the UART bridge's ``dout.ready`` reached the decoder's
READ address increment over ~3 ns of routing on the ULX3S top, and from there the out buffer's
read-address copies) is cut here in both directions: ``o.valid``/``o.payload`` are the main
register, ``i.ready`` is "the skid register is empty". A word offered while ``o`` is stalled
lands in the skid register, so ``i`` can be accepted on the cycle ``o`` stalls without looking at
``o.ready`` in that cycle. Full throughput (one word per cycle), one cycle of latency, words in
order, none dropped or repeated.
"""
from __future__ import annotations

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer"]

#: Cycles from a word accepted on ``i`` to it on ``o`` (``o`` not stalled).
SKID_LATENCY = 1


class SkidBuffer(wiring.Component):
    """Ports (P = ``shape``):

    * ``i`` In(stream.Signature(P))   ``i.ready`` is a flip-flop (the skid register is empty)
    * ``o`` Out(stream.Signature(P))  ``o.valid`` and ``o.payload`` are flip-flops
    """

    def __init__(self, shape):
        self.shape = shape
        super().__init__({"i": In(stream.Signature(shape)), "o": Out(stream.Signature(shape))})

    def elaborate(self, platform):
        m = Module()
        # Data registers are reset-less: each is read only under its valid flag, which is reset.
        main = Signal(self.shape, reset_less=True)
        skid = Signal(self.shape, reset_less=True)
        main_v = Signal()
        skid_v = Signal()
        m.d.comb += [self.o.valid.eq(main_v), self.o.payload.eq(main), self.i.ready.eq(~skid_v)]
        take_in = self.i.valid & ~skid_v
        with m.If(self.o.ready | ~main_v):
            # the main register is free (or being taken): refill it, from the skid register first
            with m.If(skid_v):
                m.d.sync += [main.eq(skid), main_v.eq(1), skid_v.eq(0)]
            with m.Else():
                m.d.sync += [main.eq(self.i.payload), main_v.eq(self.i.valid)]
        with m.Elif(take_in):
            # o is stalled: the word offered now waits in the skid register
            m.d.sync += [skid.eq(self.i.payload), skid_v.eq(1)]
        return m
