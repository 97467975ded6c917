"""UART link to the accelerator: bit-level receiver/transmitter and the framed bridge (docs/fpga.md).

The ULX3S talks to its host through the FT231X USB serial port: two wires, no
hardware flow control reaching the FPGA. This module carries the three
streams of ``hw.top.Accelerator`` (``cmd``, ``din``, ``dout``, docs/top.md)
over that byte pipe:

* ``UartRx`` / ``UartTx``: 8N1 at ``divisor`` clock cycles per bit. The
  receiver synchronises ``rx`` (2 flip-flops), samples mid-bit, and reports
  a *break* (the line held low for a whole frame: start, 8 zero data bits and
  a zero stop bit) instead of a byte; after any framing error it waits for
  the line to return high.
* ``UartBridge``: the framing. Host -> device bytes go into a receive FIFO
  of ``fifo_bytes`` bytes; a parser turns frames into ``cmd`` descriptors and
  ``din`` words. Device -> host frames carry ``dout`` words, credit returns,
  the identification frame and error reports. Flow control is by credit:
  the host never has more than ``fifo_bytes`` bytes unaccounted for, and the
  bridge returns one ``D_CREDIT`` byte per ``credit_unit`` bytes it has taken
  out of the FIFO, so the FIFO cannot overflow however long the accelerator
  holds ``cmd``/``din`` back (an interlocked WRITE, a full job queue).
  A break resets the bridge (FIFO, parser, transmitter) and the accelerator
  (``acc_rst``, a register: see ``UartBridge``): that is how a host recovers
  a link in any state (a program killed mid-frame). The host then discards
  what it has received, sends ``H_HELLO`` with a fresh nonce and waits for
  the ``D_HELLO`` echoing it (stale bytes still in flight cannot be mistaken
  for the answer).
* ``UartAccelerator``: ``UartBridge`` + ``hw.top.Accelerator`` (reset by the
  bridge's ``acc_rst`` register only), ports ``rx``/``tx``/``rst``: what the board top instantiates and
  what the simulation test drives bit by bit.
* ``UartSim``: ``UartAccelerator`` in the Amaranth simulator as a byte pipe
  (``write``/``read``/``send_break``), the same transport interface as
  ``firmware.uart_device.SerialLink``, so ``firmware.uart_device.UartDevice``
  and ``firmware.driver`` run unchanged against the simulated UART.

Frames (all multi-byte fields little-endian; ``B`` = ``cfg.bus_bytes``):

==========  =====  ============================================================
frame       type   body
==========  =====  ============================================================
host -> device
``H_CMD``   0x01   16 bytes: one 128-bit ``cmd`` descriptor
``H_DATA``  0x02   flags (1 byte: bit 0 = ``last`` on the burst's final word,
                   other bits ignored), ``n - 1`` (u16), then ``n * B`` bytes:
                   ``n`` ``din`` words (1 <= n <= 65536)
``H_HELLO`` 0x03   nonce (1 byte): the device answers ``D_HELLO``
device -> host
``D_WORD``  0x11   ``B`` bytes: one ``dout`` word with ``last`` = 0
``D_LAST``  0x12   ``B`` bytes: one ``dout`` word with ``last`` = 1
``D_CREDIT`` 0x13  none: the host may send ``credit_unit`` more bytes
``D_HELLO`` 0x14   "ANL", ``BRIDGE_VERSION``, the nonce, ``config_id(cfg)``
                   (u32), log2(``fifo_bytes``), log2(``credit_unit``)
``D_ERROR`` 0x15   the byte the parser found where a frame type was expected
                   (the byte is skipped)
==========  =====  ============================================================

Every byte the host sends (type bytes included) counts against its credit,
which is ``fifo_bytes`` after a break (the FIFO is empty).
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import deque

from amaranth import Cat, Const, Instance, Module, Mux, ResetInserter, Signal, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out, connect

from golden.config import ArrayConfig
from golden.isa import DESC_BITS

from .buffers import enable_copy, kept_copy, live_register
from .decoder import bus_layout
from .ecp5_mult import is_ecp5

__all__ = [
    "BRIDGE_VERSION", "H_CMD", "H_DATA", "H_HELLO", "D_WORD", "D_LAST", "D_CREDIT", "D_HELLO", "D_ERROR",
    "DATA_LAST", "MAX_BURST", "HELLO_MAGIC", "HELLO_BYTES", "DESC_BYTES", "FIFO_BYTES", "CREDIT_UNIT",
    "config_id", "hello_frame", "baud_divisor",
    "UartRx", "UartTx", "UartBridge", "UartAccelerator", "UartSim",
]

BRIDGE_VERSION = 1
H_CMD, H_DATA, H_HELLO = 0x01, 0x02, 0x03
D_WORD, D_LAST, D_CREDIT, D_HELLO, D_ERROR = 0x11, 0x12, 0x13, 0x14, 0x15
#: H_DATA flags bit: ``last`` = 1 on the burst's final word.
DATA_LAST = 0x01
#: Most words in one H_DATA burst (the count field is n - 1 in 16 bits).
MAX_BURST = 1 << 16
HELLO_MAGIC = b"ANL"
DESC_BYTES = DESC_BITS // 8
#: The received descriptor's and word's shift enables and the sent word's holding-register
#: enable are one flip-flop copy per this many bits of them.
WORD_CHUNK_BITS = 32
#: The transmit buffer's enable, data select and hello select are one flip-flop copy per this many
#: bits of it (a whole number of bytes: the buffer shifts by bytes).
TBUF_CHUNK_BITS = 32
#: Board defaults: one DP16KD (2048 x 9) of receive FIFO, a credit byte per 64 bytes consumed.
FIFO_BYTES = 2048
CREDIT_UNIT = 64
#: Largest tolerated baud-rate error of the integer divisor (sampling mid-bit over 10 bits).
MAX_BAUD_ERROR = 0.02


def config_id(cfg: ArrayConfig) -> int:
    """CRC-32 of every ``ArrayConfig`` field (name=value, declaration order): the board's
    D_HELLO carries it so a host refuses to drive a bitstream built for another config."""
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    text = ",".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
    return zlib.crc32(text.encode())


def _log2(v: int, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
        raise ValueError(f"{name} must be a power of two, got {v!r}")
    return v.bit_length() - 1


#: Bytes of a D_HELLO frame, type byte included.
HELLO_BYTES = 1 + len(HELLO_MAGIC) + 1 + 1 + 4 + 2


def hello_frame(cfg: ArrayConfig, nonce: int, fifo_bytes: int = FIFO_BYTES, credit_unit: int = CREDIT_UNIT) -> bytes:
    """The exact D_HELLO frame the bridge for ``cfg`` answers to ``H_HELLO nonce`` (type byte included)."""
    if isinstance(nonce, bool) or not isinstance(nonce, int) or not 0 <= nonce <= 255:
        raise ValueError(f"nonce must be an integer in [0, 255], got {nonce!r}")
    return (bytes([D_HELLO]) + HELLO_MAGIC + bytes([BRIDGE_VERSION, nonce]) + config_id(cfg).to_bytes(4, "little")
            + bytes([_log2(fifo_bytes, "fifo_bytes"), _log2(credit_unit, "credit_unit")]))


def baud_divisor(clk_hz: float, baud: int) -> int:
    """Clock cycles per bit for ``baud`` at ``clk_hz``; ValueError if the rounding error exceeds
    MAX_BAUD_ERROR or fewer than 4 cycles per bit remain (the receiver samples mid-bit)."""
    if not clk_hz > 0 or isinstance(baud, bool) or not isinstance(baud, int) or baud < 1:
        raise ValueError(f"clk_hz and baud must be positive, got clk_hz={clk_hz!r}, baud={baud!r}")
    div = round(clk_hz / baud)
    if div < 4:
        raise ValueError(f"baud must be <= clk_hz / 4 = {clk_hz / 4:.0f} (4 clock cycles per bit), got {baud}")
    err = abs(clk_hz / div - baud) / baud
    if err > MAX_BAUD_ERROR:
        raise ValueError(f"baud {baud} at {clk_hz / 1e6:g} MHz: divisor {div} gives {100 * err:.2f}% error, "
                         f"more than {100 * MAX_BAUD_ERROR:g}%; choose a clock that is a near multiple of the baud")
    return div


def _check_divisor(divisor) -> int:
    """The RTL samples mid-bit for any divisor >= 2 on a clean synchronous line (the simulation
    uses 2 or 3 to save cycles); a real line needs margin: ``baud_divisor`` asks for >= 4."""
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 2:
        raise ValueError(f"divisor must be an integer >= 2 (clock cycles per bit), got {divisor!r}")
    return divisor


def _chunked_load(m, platform, reg, value, load, name):
    """``reg <= value`` one cycle after ``load`` is 1, through one enable flip-flop per
    WORD_CHUNK_BITS of ``reg``: ``{name}{i}``, each a reset-less ``kept_copy`` of ``load``,
    returned in order for the shadow checks."""
    copies = []
    for lo in range(0, len(reg), WORD_CHUNK_BITS):
        hi = min(lo + WORD_CHUNK_BITS, len(reg))
        copies.append(kept_copy(m, platform, load, Const(1, 1), f"{name}{lo // WORD_CHUNK_BITS}"))
        with m.If(copies[-1]):
            m.d.sync += reg[lo:hi].eq(value[lo:hi])
    return copies


class UartRx(wiring.Component):
    """8N1 receiver. ``data``: a one-cycle ``valid`` pulse per byte (no backpressure: a UART
    cannot wait). ``brk``: one-cycle pulse when a break (all-zero frame, zero stop bit) ends."""

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__({"rx": In(1, init=1), "data": Out(stream.Signature(unsigned(8))), "brk": Out(1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        s1, line = Signal(init=1), Signal(init=1)
        m.d.sync += [s1.eq(self.rx), line.eq(s1)]          # 2-FF synchroniser
        cnt = Signal(range(d))
        # cnt == 0 as a flip-flop loaded with cnt (issue 6: the sample decisions, and with them the
        # byte's valid, its payload's enable and brk, read one flip-flop instead of a compare)
        tick = Signal(init=1)
        nbit = Signal(range(8))
        sh = Signal(8)
        m.d.sync += [self.data.valid.eq(0), self.brk.eq(0)]

        def count_down():
            m.d.sync += [cnt.eq(cnt - 1), tick.eq(cnt == 1)]

        def load(v):
            m.d.sync += [cnt.eq(v), tick.eq(int(v == 0))]
        with m.FSM():
            with m.State("IDLE"):
                with m.If(~line):
                    load(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):                          # mid start bit: still low?
                with m.If(~tick):
                    count_down()
                with m.Elif(line):
                    m.next = "IDLE"                         # a glitch, not a start bit
                with m.Else():
                    load(d - 1)
                    m.d.sync += nbit.eq(0)
                    m.next = "DATA"
            with m.State("DATA"):
                with m.If(~tick):
                    count_down()
                with m.Else():
                    load(d - 1)
                    m.d.sync += [sh.eq(Cat(sh[1:], line)), nbit.eq(nbit + 1)]
                    with m.If(nbit == 7):
                        m.next = "STOP"
            with m.State("STOP"):
                with m.If(~tick):
                    count_down()
                with m.Elif(line):
                    m.d.sync += [self.data.payload.eq(sh), self.data.valid.eq(1)]
                    m.next = "IDLE"
                with m.Else():                              # framing error; all zero: a break
                    m.d.sync += self.brk.eq(sh == 0)
                    m.next = "WAIT_HIGH"
            with m.State("WAIT_HIGH"):
                with m.If(line):
                    m.next = "IDLE"
        self.shadow_checks = [("tick", tick, cnt == 0)]   # asserted by tests/test_uart.py
        return m


class UartTx(wiring.Component):
    """8N1 transmitter: takes a byte from ``data`` whenever idle; ``tx`` idles high.

    ``data.ready`` (``idle``) and the end of a bit (``tick``: ``cnt == 0``) are flip-flops,
    updated with the counters they summarise, so the shift register's enable is one LUT of
    flip-flops (issue 6).

    ``ready_next`` (Out): the value ``data.ready`` takes at the next clock edge (this cycle's
    ``data.valid`` included): the bridge registers its transmit buffer's shift select from it
    in one copy per group of the buffer's bits (``_BridgeCore``)."""

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(divisor)
        super().__init__({"data": In(stream.Signature(unsigned(8))), "tx": Out(1, init=1),
                          "ready_next": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        d = self.divisor
        sh = Signal(10, init=0x3FF)                         # bit 0 drives the line
        left = Signal(range(11))
        cnt = Signal(range(d))
        idle = Signal(init=1)                               # == (left == 0)
        tick = Signal()                                     # == (cnt == 0) while sending
        m.d.comb += [self.tx.eq(sh[0]), self.data.ready.eq(idle),
                     # idle's next value (the branches below): 0 if a byte is taken, else 1 if idle or
                     # at the end of the last bit (the stop bit, left == 1)
                     self.ready_next.eq(~(self.data.valid & idle) & (idle | (tick & (left == 1))))]
        with m.If(self.data.valid & idle):
            m.d.sync += [sh.eq(Cat(Const(0, 1), self.data.payload, Const(1, 1))), left.eq(10), cnt.eq(d - 1),
                         idle.eq(0), tick.eq(0)]                        # d >= 2: d - 1 != 0
        with m.Elif(~idle):
            with m.If(~tick):
                m.d.sync += [cnt.eq(cnt - 1), tick.eq(cnt == 1)]
            with m.Else():
                m.d.sync += [sh.eq(Cat(sh[1:], Const(1, 1))), left.eq(left - 1), cnt.eq(d - 1), tick.eq(0),
                             idle.eq(left == 1)]
        return m


class _BridgeCore(wiring.Component):
    """Everything of the bridge that a break resets: receive FIFO, parser, credit counter, transmitter.

    Built for short register-to-register paths (issue 6) rather than speed: the UART brings a
    byte at most every 10 bit times (>= 20 cycles), so the parser may take one byte every 4
    cycles (read pipeline below) and every decision is made from flip-flops:

    * FIFO: a ``fifo_bytes`` memory (one DP16KD at 2048) with pointers one bit wider than its
      address; ``full``/``nonempty`` are registered from the pointers, one cycle late, which
      is safe because writes are >= 20 cycles apart and reads >= 4 cycles apart.
    * Read pipeline: ``issue`` (memory read of ``rp``) -> ``b0`` (the block RAM's output, registered
      with no logic in between) -> ``b`` + the frame-type compares, registered -> the parser.
    * ``cmd``/``din``/``dout`` handshakes: valids, payloads and ``din.last`` are registers;
      ``dout`` lands in a one-word holding register (``dout.ready`` = holding register empty),
      so the accelerator's ``dout.valid`` only reaches one flip-flop's D input.
    * Transmitter: the next frame (hello > error > credit > word, as before) is picked into
      one-hot registers in one cycle and loaded into the shift register the next.

    Datapath registers (bytes, descriptor, word, nonce, frame buffer) are reset-less: each is
    read only under a valid/request flag that is reset and set after the register is written.
    """

    def __init__(self, cfg: ArrayConfig, divisor: int, fifo_bytes: int, credit_unit: int):
        self.cfg, self.divisor, self.fifo_bytes, self.credit_unit = cfg, divisor, fifo_bytes, credit_unit
        super().__init__({
            "byte_in": In(stream.Signature(unsigned(8))),
            "tx": Out(1, init=1),
            "cmd": Out(stream.Signature(unsigned(DESC_BITS))),
            "din": Out(stream.Signature(bus_layout(cfg))),
            "dout": In(stream.Signature(bus_layout(cfg))),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        m = Module()
        bb = cfg.bus_bytes
        bus_bits = 8 * bb
        n = _log2(self.fifo_bytes, "fifo_bytes")

        # ---- receive FIFO (credit flow control keeps it from overflowing; overrun is sticky)
        # The read port is always enabled (no enable: yosys emulated the hold of a disabled read with
        # a register and a mux between the DP16KD and b0, issue 6): b0 is only used two cycles after
        # an ``issue`` (rd2), when it holds the entry read in that cycle. no_rw_check: a read that
        # meets the write of its entry returns garbage on the FPGA (yosys need not emulate the
        # old-data read), and only reads in ``issue`` cycles are used, which never meet a write
        # (``fifo_no_collision``: the addresses are equal only when the FIFO is empty or full; an
        # issue needs nonempty, which is a cycle late, but the issue before it blocks the next cycle
        # (rd1); a write needs ~full, a cycle late, and a write one cycle before it is impossible:
        # writes are >= 20 cycles apart).
        m.submodules.mem = mem = Memory(shape=8, depth=self.fifo_bytes, init=[], attrs={"no_rw_check": 1})
        wport = mem.write_port()
        rport = mem.read_port(domain="sync")
        wp, rp = Signal(n + 1), Signal(n + 1)
        full, nonempty = Signal(), Signal()
        m.d.sync += [full.eq((wp[n] != rp[n]) & (wp[:n] == rp[:n])), nonempty.eq(wp != rp)]
        w_en = self.byte_in.valid & ~full
        m.d.comb += [wport.addr.eq(wp[:n]), wport.data.eq(self.byte_in.payload), wport.en.eq(w_en)]
        with m.If(w_en):
            m.d.sync += wp.eq(wp + 1)
        with m.If(self.byte_in.valid & full):
            m.d.sync += self.overrun.eq(1)

        # ---- read pipeline: issue -> rd1 (b0 <= memory output) -> rd2 (b, type compares) -> bv
        issue, rd1, rd2, bv, take = Signal(), Signal(), Signal(), Signal(), Signal()
        b0 = Signal(8, reset_less=True)
        b = Signal(8, reset_less=True)
        is_cmd, is_data, is_hello = (Signal(reset_less=True) for _ in range(3))
        # issue is a flip-flop registered from the next values of the four it stands for (issue 6:
        # one LUT of them drove the read enable and rp's and the credit counter's enables, ~29
        # loads); the next values (nonempty: the pointers' compare; rd1: issue; bv: bv_next) below
        issue_ref = nonempty & ~rd1 & ~rd2 & ~bv
        m.d.comb += rport.addr.eq(rp[:n])
        with m.If(issue):
            m.d.sync += rp.eq(rp + 1)
        m.d.sync += [rd1.eq(issue), rd2.eq(rd1), b0.eq(rport.data)]
        is_other = Signal(reset_less=True)          # none of the three: an error byte in TYPE
        with m.If(rd2):
            m.d.sync += [b.eq(b0), is_cmd.eq(b0 == H_CMD), is_data.eq(b0 == H_DATA), is_hello.eq(b0 == H_HELLO),
                         is_other.eq(~Cat(b0 == H_CMD, b0 == H_DATA, b0 == H_HELLO).any()), bv.eq(1)]
        with m.Elif(take):
            m.d.sync += bv.eq(0)

        # ---- parser
        desc = Signal(DESC_BITS, reset_less=True)
        word = Signal(bus_bits, reset_less=True)
        hdr = Signal(16, reset_less=True)
        cnt = Signal(range(max(DESC_BYTES, bb, 3)), reset_less=True)
        cnt_is0 = Signal(init=1, reset_less=True)   # cnt == 0, loaded with cnt (issue 6: no compare in
        #                                             the last-byte decisions); cnt's init is 0
        left = Signal(16, reset_less=True)
        left_is0 = Signal(reset_less=True)      # left == 0, one cycle late (left is stable long before use)
        flag_last = Signal(reset_less=True)
        cmd_v, din_v = Signal(), Signal()
        din_last = Signal(reset_less=True)
        hello_req, err_req = Signal(), Signal()
        nonce = Signal(8, reset_less=True)
        err_byte = Signal(8, reset_less=True)
        hello_sent, err_sent = Signal(), Signal()
        hello_set, err_set = Signal(), Signal()     # hello_set: a flip-flop (after the FSM)
        # a request set in the cycle its frame is loaded stays set (a second frame follows), as before
        m.d.sync += [hello_req.eq((hello_req & ~hello_sent) | hello_set),
                     err_req.eq((err_req & ~err_sent) | err_set),
                     left_is0.eq(left == 0)]
        m.d.comb += [self.cmd.valid.eq(cmd_v), self.cmd.payload.eq(desc),
                     self.din.valid.eq(din_v), self.din.payload.data.eq(word), self.din.payload.last.eq(din_last)]
        # The descriptor (128 flip-flops) and word (bus_bits) shift registers' enables are
        # flip-flops (issue 6: no LUT in front of that fanout): sh_desc == bv & CMD_BYTES and
        # sh_word == bv & WORD_BYTES on every cycle (a byte is taken into desc / word), registered
        # from bv's and the state's next values (``shadow_checks``).
        # The word's enable is one copy per WORD_CHUNK_BITS of it (a 256-bit bus: one flip-flop
        # drove 256 clock enables, ~12 ns on the 30x4 top), the descriptor's likewise (sh_desc drove
        # its 128 clock enables, placed with the decoder, which reads the descriptor). The copies
        # sit with their chunks, spread over the die, so they are loaded from the central sh_desc /
        # sh_word flip-flops, not from their next values (issue 6: sh_*_next is a few LUTs of the
        # FSM state, bv, rd2, flag_last, left_is0 and cnt_is0, and its route to a far copy's D was
        # 8-9.5 ns in most seeds, e.g. flag_last -> ... -> sh_word_c6 9.48 ns, sh_word_c0 9.2 ns):
        # a two-level fanout tree of flip-flops, each chunk shifting one cycle after the byte's
        # take. It still shifts in that byte: ``b`` is only loaded in rd2 cycles, and a take never
        # meets rd2 (``b_held``, a shadow check): the read pipeline (issue, rd1, rd2) only runs
        # while bv is 0 (issue is registered from ~bv_next and blocks the next two cycles), so after
        # a take the next issue is >= 1 cycle and the next rd2 >= 3 cycles later. Whatever
        # reads desc / word waits one more cycle for the last byte's shift (CMD_OUT's first cycle,
        # WORD_LAND; ``cmd_whole`` / ``din_whole``: no shift while cmd_v / din_v): one cycle per
        # descriptor or word, against 10 * divisor per UART byte.
        # The copies are plain reset-less flip-flops (``kept_copy``; an ``enable_copy``'s reset AND
        # put a LUT in front of each 32-load net again: 13.4 ns): after a reset a copy may differ
        # from sh_desc / sh_word delayed for one cycle and shift one byte of garbage into ``desc`` /
        # ``word``, which is harmless because they are only read (cmd, din) after CMD_BYTES /
        # WORD_BYTES has shifted all of their bytes in again.
        sh_desc, sh_desc_next, sh_word, sh_word_next = Signal(), Signal(), Signal(), Signal()
        sh_desc_copies = _chunked_load(m, platform, desc, Cat(desc[8:], b), sh_desc, "sh_desc_c")
        sh_word_copies = _chunked_load(m, platform, word, Cat(word[8:], b), sh_word, "sh_word_c")
        with m.FSM() as fsm:
            with m.State("TYPE"):
                m.d.comb += take.eq(bv)
                with m.If(bv):
                    with m.If(is_cmd):
                        m.d.sync += [cnt.eq(DESC_BYTES - 1), cnt_is0.eq(int(DESC_BYTES == 1))]
                        m.next = "CMD_BYTES"
                    with m.Elif(is_data):
                        m.d.sync += [cnt.eq(2), cnt_is0.eq(0)]
                        m.next = "DATA_HDR"
                    with m.Elif(is_hello):
                        m.next = "HELLO_NONCE"
            with m.State("HELLO_NONCE"):       # the nonce is loaded on hello_set, a cycle later
                m.d.comb += take.eq(bv)
                with m.If(bv):
                    m.next = "TYPE"
            with m.State("CMD_BYTES"):
                m.d.comb += take.eq(bv)
                with m.If(bv):
                    m.d.sync += [cnt.eq(cnt - 1), cnt_is0.eq(cnt == 1)]     # desc shifts a cycle later
                    with m.If(cnt_is0):
                        m.next = "CMD_OUT"
            # CMD_OUT's first cycle (cmd_v = 0) is the last byte's shift into desc (the copies'
            # delay above); cmd_v rises after it and the descriptor waits for cmd.ready.
            with m.State("CMD_OUT"):
                with m.If(~cmd_v):
                    m.d.sync += cmd_v.eq(1)
                with m.Elif(self.cmd.ready):
                    m.d.sync += cmd_v.eq(0)
                    m.next = "TYPE"
            with m.State("DATA_HDR"):
                m.d.comb += take.eq(bv)
                with m.If(bv):
                    m.d.sync += [hdr.eq(Cat(hdr[8:], b)), cnt.eq(cnt - 1), cnt_is0.eq(cnt == 1)]
                    with m.If(cnt_is0):
                        # hdr holds flags and count low; b is count high
                        m.d.sync += [flag_last.eq(hdr[0]), left.eq(Cat(hdr[8:], b)),   # DATA_LAST = bit 0
                                     cnt.eq(bb - 1), cnt_is0.eq(int(bb == 1))]
                        m.next = "WORD_BYTES"
            with m.State("WORD_BYTES"):
                m.d.comb += take.eq(bv)
                with m.If(bv):
                    m.d.sync += [cnt.eq(cnt - 1), cnt_is0.eq(cnt == 1)]     # word shifts a cycle later
                    with m.If(cnt_is0):
                        m.d.sync += din_last.eq(flag_last & left_is0)
                        m.next = "WORD_LAND"
            # the last byte's shift into word (the copies' delay above); din_v rises after it
            with m.State("WORD_LAND"):
                m.d.sync += din_v.eq(1)
                m.next = "WORD_OUT"
            # The word's wait and the burst's count are one state, told apart by din_v (issue 6: the
            # state register's enable read din.ready, a LUT of the decoder's flip-flops, through two
            # LUTs; now only din_v reads it): while din_v, the word waits for din.ready; the cycle
            # after its transfer (din_v = 0: the former WORD_NEXT state) counts, from registers only.
            with m.State("WORD_OUT"):
                with m.If(din_v):
                    with m.If(self.din.ready):
                        m.d.sync += din_v.eq(0)
                with m.Else():
                    m.d.sync += [left.eq(left - 1), cnt.eq(bb - 1), cnt_is0.eq(int(bb == 1))]
                    with m.If(left_is0):
                        m.next = "TYPE"
                    with m.Else():
                        m.next = "WORD_BYTES"
        # The error byte's decision from flip-flops (issue 6: the state decode and the three type
        # compares were in front of err_req and err_byte's enable): type_r == "state is TYPE",
        # loaded from the next state (the transitions above); is_other registered with the byte.
        type_r = Signal(init=1)
        burst_count = fsm.ongoing("WORD_OUT") & ~din_v     # the burst's count (see WORD_OUT)
        type_next = ((fsm.ongoing("TYPE") & ~(bv & (is_cmd | is_data | is_hello))) | (fsm.ongoing("HELLO_NONCE") & bv)
                     | (fsm.ongoing("CMD_OUT") & cmd_v & self.cmd.ready) | (burst_count & left_is0))
        m.d.sync += type_r.eq(type_next)
        m.d.comb += err_set.eq(type_r & bv & is_other)
        with m.If(err_set):
            m.d.sync += err_byte.eq(b)
        # next values of bv and of "state is CMD_BYTES / WORD_BYTES" (the transitions above)
        bv_next = rd2 | (bv & ~take)
        last_byte = bv & cnt_is0
        cmdb_next = ((fsm.ongoing("TYPE") & bv & is_cmd) | (fsm.ongoing("CMD_BYTES") & ~last_byte))
        wordb_next = ((fsm.ongoing("DATA_HDR") & last_byte) | (burst_count & ~left_is0)
                      | (fsm.ongoing("WORD_BYTES") & ~last_byte))
        m.d.comb += sh_word_next.eq(bv_next & wordb_next)
        m.d.sync += issue.eq((wp != rp) & ~issue & ~rd1 & ~bv_next)
        live = live_register(m, platform)  # 0 on the first cycle after a reset (the checks' exemption)
        m.d.comb += sh_desc_next.eq(bv_next & cmdb_next)
        m.d.sync += [sh_desc.eq(sh_desc_next), sh_word.eq(sh_word_next)]
        # The nonce's enable is a flip-flop too, a cycle after the nonce byte's take (b holds it, as
        # for the copies above; issue 6: a LUT of the state and bv drove nonce's clock enables,
        # 8.15 ns). hello_req follows hello_set, so the hello frame (picked, then loaded: the only
        # reader of nonce) is loaded after the nonce.
        m.d.sync += hello_set.eq(fsm.ongoing("HELLO_NONCE") & bv)
        with m.If(hello_set):
            m.d.sync += nonce.eq(b)
        # sh_desc / sh_word one cycle late: what the copies stand for (test-only: synthesis removes them)
        sh_desc_d, sh_word_d = Signal(), Signal()
        m.d.sync += [sh_desc_d.eq(sh_desc), sh_word_d.eq(sh_word)]
        # The registered enables and the combinational forms they stand for (no hardware: read by
        # tests/test_uart.py, which asserts them equal on every cycle of bridge sessions).
        self.shadow_checks = [("sh_desc", sh_desc, bv & fsm.ongoing("CMD_BYTES")),
                              ("sh_word", sh_word, bv & fsm.ongoing("WORD_BYTES")),
                              *((f"sh_word_c{i}", Mux(live, c, sh_word_d), sh_word_d)
                                for i, c in enumerate(sh_word_copies)),
                              *((f"sh_desc_c{i}", Mux(live, c, sh_desc_d), sh_desc_d)
                                for i, c in enumerate(sh_desc_copies)),
                              # a taken byte is still in b the cycle after (the delayed shifts, nonce)
                              ("b_held", take & rd2, 0),
                              # desc / word are whole and stay put while offered
                              ("cmd_whole", cmd_v & sh_desc_d, 0), ("din_whole", din_v & sh_word_d, 0),
                              ("issue", issue, issue_ref),
                              # the read never meets the write (the memory's no_rw_check above)
                              ("fifo_no_collision", w_en & issue & (wp[:n] == rp[:n]), 0),
                              ("type_r", type_r, fsm.ongoing("TYPE")), ("cnt_is0", cnt_is0, cnt == 0),
                              ("err_set", err_set, fsm.ongoing("TYPE") & bv & ~is_cmd & ~is_data & ~is_hello)]

        # ---- credit: one D_CREDIT per credit_unit bytes taken out of the FIFO (power of two: wraps)
        ccnt = Signal(range(self.credit_unit))
        credits = Signal(range(self.fifo_bytes // self.credit_unit + 2))
        credit_sent = Signal()
        unit_done = Signal()
        with m.If(issue):
            m.d.sync += ccnt.eq(ccnt + 1)
        m.d.sync += [unit_done.eq(issue & (ccnt == self.credit_unit - 1)),
                     credits.eq(credits + unit_done - credit_sent)]

        # ---- dout holding register: dout.ready (= ~dv) is a flip-flop. The payload is sampled
        # into dcap on every cycle (no enable, no reset: only logic of the accelerator in front of
        # it) and copied into dh on the next cycle if it was taken (cap, a flip-flop): the
        # transmitter reads dh only when it loads a word frame, which is at least two cycles after
        # dv rose (picked into p_word, then loaded), so dh is always there in time.
        dv, cap = Signal(), Signal()
        dcap = Signal(bus_bits + 1, reset_less=True)
        dh = Signal(bus_bits, reset_less=True)
        dl = Signal(reset_less=True)
        word_sent = Signal()
        # dout.ready comes from a copy of dv of its own (a reset register, ``enable_copy``): the
        # accelerator's decoder reads it in its READ address increment, and dv itself sits with
        # the bridge's transmitter across the die (issue 6: the bridge -> that increment -> the out
        # buffer's read address copies was the ULX3S top's critical path in session 10, 8.6 ns).
        dv_next = Signal()
        m.d.comb += dv_next.eq(Mux(~dv, self.dout.valid, dv & ~word_sent))
        dv_out = enable_copy(m, platform, dv_next, "dv_out")
        m.d.comb += self.dout.ready.eq(~dv_out)
        m.d.sync += [dcap.eq(Cat(self.dout.payload.data, self.dout.payload.last)),
                     cap.eq(~dv & self.dout.valid)]
        # dh's enable: one copy of cap per WORD_CHUNK_BITS of it (issue 6: cap drove all 257 clock
        # enables, 7.6 ns on the 30 x 4 top); cap itself stays for dl.
        with m.If(cap):
            m.d.sync += dl.eq(dcap[bus_bits])
        cap_copies = _chunked_load(m, platform, dh, dcap[:bus_bits], ~dv & self.dout.valid, "cap_c")
        m.d.sync += dv.eq(dv_next)

        # ---- transmitter: pick the next frame (registered one-hot), load it, shift it out
        m.submodules.utx = utx = UartTx(self.divisor)
        m.d.comb += self.tx.eq(utx.tx)
        hello = hello_frame(cfg, 0, self.fifo_bytes, self.credit_unit)
        nmax = max(HELLO_BYTES, 1 + bb, 2)
        tbuf = Signal(8 * nmax, reset_less=True)
        tleft = Signal(range(nmax + 1))
        busy, loading = Signal(), Signal()
        p_hello, p_err, p_credit, p_word = (Signal() for _ in range(4))
        m.d.comb += [utx.data.payload.eq(tbuf[:8]), utx.data.valid.eq(busy)]
        # loading is only ever set while not busy and clears as busy sets (loading implies ~busy, a
        # shadow check): the frame-sent pulses are p_x & loading, one LUT of flip-flops (issue 6:
        # err_req's and the credit counter's next values read them).
        m.d.comb += [hello_sent.eq(p_hello & loading), err_sent.eq(p_err & loading),
                     credit_sent.eq(p_credit & loading), word_sent.eq(p_word & loading)]
        # busy, loading and tleft as next values (the shift, the load, the pick below), so that the
        # transmit buffer's selects can be registered from them
        shift = Signal()                                    # a byte of tbuf goes to utx
        busy_next, loading_next = Signal(), Signal()
        tleft_next = Signal.like(tleft)
        pick = ~busy & ~loading                             # the one-hot frame registers load
        has_credit = credits != 0
        frame_len = (Mux(p_hello, HELLO_BYTES, 0) | Mux(p_err, 2, 0) | Mux(p_credit, 1, 0)    # one-hot: an
                     | Mux(p_word, 1 + bb, 0))                                                  # OR of ANDs
        m.d.comb += [shift.eq(busy & utx.data.ready),
                     busy_next.eq(Mux(shift, tleft != 1, busy | loading)),
                     loading_next.eq(pick & (hello_req | err_req | has_credit | dv)),
                     tleft_next.eq(Mux(shift, tleft - 1, Mux(loading, frame_len, tleft)))]
        m.d.sync += [busy.eq(busy_next), loading.eq(loading_next), tleft.eq(tleft_next)]
        # shift's next value, busy_next & utx.ready_next, in fewer LUTs: when shifting, ready_next is 0
        # (utx takes the byte), otherwise busy_next is busy | loading
        shift_next = (busy | loading) & utx.ready_next
        with m.If(pick):
            m.d.sync += [p_hello.eq(hello_req), p_err.eq(~hello_req & err_req),
                         p_credit.eq(~hello_req & ~err_req & has_credit),
                         p_word.eq(~hello_req & ~err_req & ~has_credit & dv)]
        # The transmit buffer (8 * nmax flip-flops: 264 on the 32-byte bus) shifts down a byte when
        # one is taken (shift) and loads the picked frame when loading. Its enable (shift | loading),
        # its data select (shift) and, over the hello frame's bytes, p_hello are flip-flops in one
        # copy per TBUF_CHUNK_BITS, registered from the next values above (issue 6: one LUT of busy,
        # utx's ready and loading drove all 264 enables and data selects: 8-10 ns on the 30x4 top).
        # The copies are reset-less (``kept_copy``): after a reset a copy may differ for one cycle
        # and shift or load garbage into tbuf, which is harmless because tbuf is only read while
        # busy, after a load has rewritten all of it. Bytes of the buffer past the loaded frame's
        # length are never sent (tleft), so a byte that only the word frame uses takes dh's byte
        # whatever the frame, and one that only the hello frame uses takes the hello's constant:
        # one LUT of flip-flops per bit.
        hello_v = Const(int.from_bytes(hello, "little"), 8 * HELLO_BYTES) | (nonce << 40)
        word_v = Cat(Mux(dl, Const(D_LAST, 8), Const(D_WORD, 8)), dh)
        tb_shifted = Cat(tbuf[8:], Const(0, 8))
        tb_copies = []
        for lo in range(0, len(tbuf), TBUF_CHUNK_BITS):
            hi, g = min(lo + TBUF_CHUNK_BITS, len(tbuf)), lo // TBUF_CHUNK_BITS
            sh_c = kept_copy(m, platform, shift_next, Const(1, 1), f"tbuf_sh_c{g}")
            ce_c = kept_copy(m, platform, shift_next | loading_next, Const(1, 1), f"tbuf_ce_c{g}")
            hello_c = (kept_copy(m, platform, hello_req, pick, f"tbuf_hello_c{g}") if lo < 8 * HELLO_BYTES
                       else None)
            tb_copies.append((g, sh_c, ce_c, hello_c))
            load = []
            for j in range(lo // 8, -(-hi // 8)):
                if j == 0:                                  # the type byte: one-hot, an OR of ANDs
                    load.append(Mux(hello_c, D_HELLO, 0) | Mux(p_err, D_ERROR, 0) | Mux(p_credit, D_CREDIT, 0)
                                | Mux(p_word, word_v[:8], 0))
                    continue
                h = hello_v[8 * j:8 * j + 8] if j < HELLO_BYTES else None
                w = word_v[8 * j:8 * j + 8] if j < 1 + bb else None
                if j == 1:                                  # the error frame's byte too
                    w = Mux(p_err, err_byte, w)
                load.append(w if h is None else h if w is None else Mux(hello_c, h, w))
            with m.If(ce_c):
                m.d.sync += tbuf[lo:hi].eq(Mux(sh_c, tb_shifted[lo:hi], Cat(*load)[:hi - lo]))
        # the copies from the cycle after a reset on (live: the exemption, as for sh_word's copies)
        for g, sh_c, ce_c, hello_c in tb_copies:
            self.shadow_checks += [(f"tbuf_sh_c{g}", Mux(live, sh_c, shift), shift),
                                   (f"tbuf_ce_c{g}", Mux(live, ce_c, shift | loading), shift | loading)]
            if hello_c is not None:
                self.shadow_checks.append((f"tbuf_hello_c{g}", Mux(live, hello_c, p_hello), p_hello))
        self.shadow_checks.append(("loading_not_busy", loading & busy, 0))
        self.shadow_checks += [(f"cap_c{g}", Mux(live, c, cap), cap) for g, c in enumerate(cap_copies)]
        self.shadow_checks.append(("dv_out", dv_out, dv))
        return m


class UartBridge(wiring.Component):
    """The framed UART bridge (module docstring). Ports: ``rx``/``tx`` (the serial lines),
    ``cmd``/``din`` (Out: to the accelerator), ``dout`` (In: from it), ``rst`` (In: synchronous
    reset of the whole bridge and, through ``acc_rst``, of the accelerator: the board's PLL-lock
    reset), ``acc_rst`` (Out: the accelerator's reset, a flip-flop: 1 while ``rst`` was 1 in the
    previous cycle and for one cycle after a break; on an ECP5 platform that flip-flop through a
    DCCA, on a global network), ``overrun`` (sticky: a byte arrived with the FIFO full, i.e. the
    host broke the credit rule; cleared by a break).

    ``acc_rst`` also resets the bridge's own core (FIFO, parser, transmitter), so a break resets
    core and accelerator in the same cycle. It is a register, not ``rst | break`` in logic, because
    it drives the synchronous reset (LSR) of every accelerator flip-flop that has one (thousands):
    a LUT in front of that fanout made the reset a 12 ns path. The board therefore puts the bridge
    in a clock domain without a reset of its own and drives ``rst`` (hw/ulx3s.py); in a domain
    with a reset, that reset still resets everything (Amaranth ORs it in, as a LUT)."""

    def __init__(self, cfg: ArrayConfig, divisor: int, fifo_bytes: int = FIFO_BYTES,
                 credit_unit: int = CREDIT_UNIT):
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
        _check_divisor(divisor)
        _log2(fifo_bytes, "fifo_bytes")
        _log2(credit_unit, "credit_unit")
        if not 2 <= credit_unit <= fifo_bytes // 2:
            raise ValueError(f"credit_unit must be in [2, fifo_bytes / 2 = {fifo_bytes // 2}], got {credit_unit}")
        if not 16 <= fifo_bytes <= 1 << 16:
            raise ValueError(f"fifo_bytes must be in [16, 65536], got {fifo_bytes}")
        self.cfg, self.divisor, self.fifo_bytes, self.credit_unit = cfg, divisor, fifo_bytes, credit_unit
        super().__init__({
            "rx": In(1, init=1), "tx": Out(1, init=1),
            "cmd": Out(stream.Signature(unsigned(DESC_BITS))),
            "din": Out(stream.Signature(bus_layout(cfg))),
            "dout": In(stream.Signature(bus_layout(cfg))),
            "rst": In(1),
            "acc_rst": Out(1, init=1),
            "overrun": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        # the receiver is reset by rst only: a break must not reset the unit that detects it. Through
        # a register (issue 6: rst is a LUT of the PLL lock on the board, and that LUT drove the
        # receiver's ~60 set/reset pins): the receiver is reset one cycle later, like the core and
        # the accelerator (acc_rst); init 0, so nothing changes at the start of a simulation.
        urx_rst = Signal(reset_less=True)
        m.d.sync += urx_rst.eq(self.rst)
        urx = UartRx(self.divisor)
        m.submodules.urx = ResetInserter(urx_rst)(urx)
        core = _BridgeCore(self.cfg, self.divisor, self.fifo_bytes, self.credit_unit)
        # registered (urx.brk is a register too: no logic between flip-flops and the LSR pins);
        # reset-less with init 1: asserted from configuration until the first clock edge without rst
        acc_rst = Signal(init=1, reset_less=True)
        m.d.sync += acc_rst.eq(self.rst | urx.brk)
        rst_net = acc_rst
        if is_ecp5(platform):
            # The accelerator's reset drives ~4 800 set/reset pins over the whole chip: as a fabric
            # net from the acc_rst flip-flop it arrived at 13.3 ns on the 30x4 top (issue 6). A DCCA
            # puts it on one of the ECP5's global networks (nextpnr routes a DCCA's output on the
            # global tree, which also reaches fabric pins, and times CLKI -> CLKO like a wire). The
            # core is reset from the global net too (issue 6: the flip-flop, placed by the DCCA,
            # drove the core's ~80 set/reset pins as a fabric net, 7.9 ns), so the flip-flop drives
            # the DCCA only. Elsewhere (simulation, Verilator, other vendors) the flip-flop drives
            # the resets itself.
            rst_net = Signal(name="acc_rst_global")
            m.submodules.rst_global = Instance("DCCA", i_CLKI=acc_rst, i_CE=1, o_CLKO=rst_net)
        m.submodules.core = ResetInserter(rst_net)(core)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(core.tx), self.acc_rst.eq(rst_net), self.overrun.eq(core.overrun)]
        connect(m, urx.data, core.byte_in)
        connect(m, core.cmd, wiring.flipped(self.cmd))
        connect(m, core.din, wiring.flipped(self.din))
        connect(m, wiring.flipped(self.dout), core.dout)
        return m


class UartAccelerator(wiring.Component):
    """``hw.top.Accelerator(cfg)`` behind a ``UartBridge``; a break resets both.

    Ports: ``rx`` In(1), ``tx`` Out(1), ``rst`` In(1) (synchronous reset of bridge and
    accelerator: the board's PLL-lock reset; see ``UartBridge``), ``overrun`` Out(1) (the
    bridge's sticky flag), ``stalled`` Out(1) (the bridge holds a descriptor or word the
    accelerator is not taking: an LED shows a decoder waiting on an interlock).

    The accelerator's only reset is the bridge's ``acc_rst`` register (``rst`` or a break, one
    cycle later): placed in a domain without a reset (the board top), every accelerator
    flip-flop's LSR pin is driven by that one flip-flop (fanout: thousands; on ECP5 through the
    bridge's DCCA, a global network), with no ``rst | break`` LUT in between."""

    def __init__(self, cfg: ArrayConfig, divisor: int, fifo_bytes: int = FIFO_BYTES,
                 credit_unit: int = CREDIT_UNIT):
        self.bridge = UartBridge(cfg, divisor, fifo_bytes, credit_unit)
        self.cfg = cfg
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1), "rst": In(1), "overrun": Out(1),
                          "stalled": Out(1)})

    def elaborate(self, platform):
        from .top import Accelerator
        m = Module()
        m.submodules.bridge = br = self.bridge
        acc = Accelerator(self.cfg)
        # on ECP5 br.acc_rst is already on a global network (UartBridge)
        m.submodules.acc = ResetInserter(br.acc_rst)(acc)
        connect(m, br.cmd, acc.cmd)
        connect(m, br.din, acc.din)
        connect(m, acc.dout, br.dout)
        m.d.comb += [br.rx.eq(self.rx), br.rst.eq(self.rst), self.tx.eq(br.tx), self.overrun.eq(br.overrun),
                     self.stalled.eq((br.cmd.valid & ~br.cmd.ready) | (br.din.valid & ~br.din.ready))]
        return m


class UartSim:
    """``UartAccelerator(cfg, divisor, ...)`` in the Amaranth simulator, seen as a byte pipe.

    The same transport interface as ``firmware.uart_device.SerialLink``:
    ``write(data)`` queues bytes that a testbench drives onto ``rx`` bit by bit
    (8N1, ``divisor`` cycles per bit, back to back); ``read(n, timeout_s)``
    advances the simulation until a byte decoded from ``tx`` is there or
    ``timeout_s`` *simulated* seconds passed (one cycle = ``1 / clk_hz``) and
    returns the bytes received (at most ``n``); ``send_break()``
    holds ``rx`` low for ``break_bits`` bit times after the queued bytes and,
    like pyserial's, returns when the break is over; ``drain(settle_s)`` lets
    ``settle_s`` pass and discards everything received; ``cycles`` is the
    simulated cycle count. The ``tx`` decoder checks every stop bit (a
    framing error raises AssertionError: the test must fail).
    """

    def __init__(self, cfg: ArrayConfig, divisor: int = 4, fifo_bytes: int = 64, credit_unit: int = 8,
                 clk_hz: float = 1e6, break_bits: int = 24, vcd: str | None = None, dut=None):
        from amaranth.sim import Simulator
        self.divisor, self.clk_hz, self.break_bits = _check_divisor(divisor), float(clk_hz), break_bits
        # ``dut``: any component with ``rx``/``tx`` ports at this divisor (tests pass a bare
        # UartBridge and drive its streams with their own testbenches via ``self.sim``).
        self.dut = UartAccelerator(cfg, divisor, fifo_bytes, credit_unit) if dut is None else dut
        self.sim = Simulator(self.dut)
        self.sim.add_clock(1 / self.clk_hz)
        self._out: deque = deque()          # ('byte', value) | ('break', bit times)
        self._in = bytearray()
        self.cycles = 0
        self._vcd = None
        if vcd:
            self._vcd = self.sim.write_vcd(vcd)
            self._vcd.__enter__()
        self.sim.add_testbench(self._drive_rx, background=True)
        self.sim.add_testbench(self._watch_tx, background=True)

    # Both testbenches wait with ``ctx.delay`` on whole multiples of the clock period from time
    # 0 (mid-cycle: the clock's edges are at P/2 + kP), so a value set here is taken at the next
    # edge and a value read here is the one that edge registered; one wake-up per bit.
    async def _drive_rx(self, ctx):
        P = 1 / self.clk_hz
        bit_t = self.divisor * P
        rx = self.dut.rx
        ctx.set(rx, 1)
        while True:
            if not self._out:
                await ctx.delay(bit_t)
                continue
            kind, v = self._out[0]
            if kind == "break":
                ctx.set(rx, 0)
                await ctx.delay(v * bit_t)
                ctx.set(rx, 1)
                await ctx.delay(2 * bit_t)
            else:
                for bit in [0] + [(v >> i) & 1 for i in range(8)] + [1]:
                    ctx.set(rx, bit)
                    await ctx.delay(bit_t)
            self._out.popleft()

    async def _watch_tx(self, ctx):
        P = 1 / self.clk_hz
        d = self.divisor
        tx = self.dut.tx
        while True:
            if ctx.get(tx):
                await ctx.changed(tx)                  # the edge that started the start bit
            await ctx.delay((d // 2 + 0.5) * P)       # middle of the start bit, mid-cycle
            assert ctx.get(tx) == 0, "UartSim: tx start bit glitch"
            v = 0
            for i in range(8):
                await ctx.delay(d * P)
                v |= ctx.get(tx) << i
            await ctx.delay(d * P)
            assert ctx.get(tx) == 1, f"UartSim: tx framing error (stop bit 0) after byte {v:#04x}"
            self._in.append(v)                         # tx stays high >= 1 cycle after a stop bit

    # ---- transport interface
    def write(self, data: bytes) -> None:
        for b in bytes(data):
            self._out.append(("byte", b))

    def send_break(self) -> None:
        self._out.append(("break", self.break_bits))
        while self._out:
            self.run(self.divisor)

    def drain(self, settle_s: float) -> None:
        self.run(max(1, round(settle_s * self.clk_hz)))
        self._in.clear()

    def run(self, cycles: int) -> None:
        """Advance the simulation by ``cycles`` clock cycles."""
        self.cycles += int(cycles)
        self.sim.run_until(self.cycles / self.clk_hz)

    def read(self, n: int, timeout_s: float) -> bytes:
        """Wait (simulated time) up to ``timeout_s`` for the first byte; return what is there (<= n)."""
        deadline = self.cycles + round(timeout_s * self.clk_hz)
        while not self._in and self.cycles < deadline:
            self.run(min(deadline - self.cycles, 16 * self.divisor))
        out = bytes(self._in[:n])
        del self._in[:n]
        return out

    def in_waiting(self) -> int:
        return len(self._in)

    def pending_tx(self) -> int:
        """Bytes queued for ``rx`` that the simulated line has not started yet."""
        return sum(1 for k, _ in self._out if k == "byte")

    def close(self) -> None:
        if self._vcd is not None:
            self._vcd.__exit__(None, None, None)
            self._vcd = None
