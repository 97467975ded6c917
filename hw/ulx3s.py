"""The ULX3S board top: ``hw.uart.UartAccelerator`` on the USB serial port, clocked by a PLL.

``ULX3STop(cfg, freq_hz, baud)`` for ``amaranth_boards.ulx3s.ULX3S_85F_Platform``
(LFE5U-85F-6BG381C):

* clock: the board's 25 MHz oscillator (``clk25``, pin G2) into one
  ``EHXPLLL``; CLKOP at ``ecp5_pll(25e6, freq_hz)`` (dividers chosen by
  ``ecp5_pll``: the closest frequency not above the request), fed back from
  CLKOP. The ``sync`` domain runs on CLKOP. Everything but the LEDs'
  counters is reset until the PLL locks (``lock_rst``: asserted
  asynchronously, released on the clock) but ``sync`` itself has no reset: ``lock_rst`` goes to the accelerator
  through the bridge's ``acc_rst`` register, so that one flip-flop drives
  the reset pins of the whole accelerator (a domain reset would be ORed with
  the break in a LUT in front of thousands of pins, ``hw.uart.UartBridge``).
  ``freq_hz`` = None: no PLL, ``sync`` on clk25 directly.
* serial: ``uart`` resource 0 (the FT231X: ``rx`` M1, ``tx`` L4) at ``baud``
  (``hw.uart.baud_divisor``: integer divisor, <= 2 % error).
* LEDs 0..7: heartbeat (~1 Hz), PLL lock, bridge overrun, bridge stalled
  (a command/word waiting on the accelerator), rx activity, tx activity, 0, 0.
* ESP32 GPIO0 driven high (the usual ULX3S practice: keeps the ESP32 from
  pulling the board into its boot mode).
"""
from __future__ import annotations

from amaranth import Cat, ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import AsyncFFSynchronizer, FFSynchronizer

from golden.config import ArrayConfig

from .uart import CREDIT_UNIT, FIFO_BYTES, UartAccelerator, baud_divisor

__all__ = ["ULX3STop", "ecp5_pll", "platform", "CLK_IN_HZ", "DEFAULT_BAUD"]

#: The ULX3S's oscillator.
CLK_IN_HZ = 25e6
#: FT231X's fastest standard rate (3 MHz / 1).
DEFAULT_BAUD = 3_000_000
#: Fabric registers between the rx pin's I/O-cell register and the receiver: rx is asynchronous
#: and sampled at mid-bit, so a few cycles of latency change nothing (10 x divisor cycles a byte).
RX_PIN_STAGES = 2

# EHXPLLL limits (Lattice TN1263 / Project Trellis' ecppll).
_PFD_MIN, _PFD_MAX = 3.125e6, 400e6
_VCO_MIN, _VCO_MAX = 400e6, 800e6
_OUT_MIN, _OUT_MAX = 3.125e6 * 1.0, 400e6


def ecp5_pll(fin_hz: float, fout_hz: float) -> dict:
    """EHXPLLL dividers for CLKOP <= ``fout_hz`` as close as possible, feedback from CLKOP.

    f_pfd = fin / CLKI_DIV in [3.125, 400] MHz, f_vco = f_pfd * CLKFB_DIV * CLKOP_DIV in
    [400, 800] MHz, f_out = f_pfd * CLKFB_DIV. Returns {clki_div, clkfb_div, clkop_div,
    freq_hz (achieved), vco_hz}; ValueError when nothing in [3.125, 400] MHz is <= fout_hz.
    """
    if not (_OUT_MIN <= fout_hz <= _OUT_MAX):
        raise ValueError(f"fout_hz must be in [{_OUT_MIN / 1e6:g}, {_OUT_MAX / 1e6:g}] MHz, got {fout_hz / 1e6:g} MHz")
    best = None
    for clki in range(1, 129):
        pfd = fin_hz / clki
        if pfd < _PFD_MIN:
            break
        if pfd > _PFD_MAX:
            continue
        for fb in range(1, 81):
            f = pfd * fb
            if f > fout_hz * (1 + 1e-12):
                break
            for op in range(1, 129):
                vco = f * op
                if vco > _VCO_MAX:
                    break
                if vco >= _VCO_MIN:
                    key = (f, -abs(vco - 600e6))           # highest output, VCO near mid-range
                    if best is None or key > best[0]:
                        best = (key, dict(clki_div=clki, clkfb_div=fb, clkop_div=op, freq_hz=f, vco_hz=vco))
    if best is None:
        raise ValueError(f"no EHXPLLL setting gives <= {fout_hz / 1e6:g} MHz from {fin_hz / 1e6:g} MHz")
    return best[1]


def platform():
    """The ULX3S-85F platform object (amaranth-boards)."""
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


class ULX3STop(Elaboratable):
    """Board top (module docstring). ``fifo_bytes``/``credit_unit``: the bridge's receive FIFO."""

    def __init__(self, cfg: ArrayConfig, freq_hz: float | None = 150e6, baud: int = DEFAULT_BAUD,
                 fifo_bytes: int = FIFO_BYTES, credit_unit: int = CREDIT_UNIT):
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.pll = None if freq_hz is None else ecp5_pll(CLK_IN_HZ, freq_hz)
        self.freq_hz = CLK_IN_HZ if self.pll is None else self.pll["freq_hz"]
        self.baud = baud
        self.divisor = baud_divisor(self.freq_hz, baud)
        self.fifo_bytes, self.credit_unit = fifo_bytes, credit_unit

    def elaborate(self, platform):
        m = Module()
        clk25 = platform.request("clk25", 0)
        # no domain reset (docstring): lock_rst reaches the bridge's receiver and acc_rst register
        # through UartAccelerator.rst (the LED counters below have none)
        m.domains.sync = cd = ClockDomain("sync", reset_less=True)
        locked = Signal()
        if self.pll is None:
            m.d.comb += [cd.clk.eq(clk25.i), locked.eq(1)]
        else:
            p = self.pll
            fin_mhz, fout_mhz = CLK_IN_HZ / 1e6, p["freq_hz"] / 1e6
            m.submodules.pll = Instance(
                "EHXPLLL",
                a_FREQUENCY_PIN_CLKI=f"{fin_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{fout_mhz:.6g}",
                a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
                p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
                p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
                p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
                p_CLKI_DIV=p["clki_div"], p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p["clkop_div"],
                p_CLKOP_CPHASE=p["clkop_div"] - 1, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP",
                p_CLKFB_DIV=p["clkfb_div"],
                i_RST=0, i_STDBY=0, i_CLKI=clk25.i, o_CLKOP=cd.clk, i_CLKFB=cd.clk,
                i_PHASESEL0=0, i_PHASESEL1=0, i_PHASEDIR=1, i_PHASESTEP=1, i_PHASELOADREG=1,
                i_PLLWAKESYNC=0, i_ENCLKOP=0, o_LOCK=locked)
            # no add_clock_constraint: nextpnr derives CLKOP's constraint from the PLL's dividers
            # and clk25's 25 MHz (the platform's), and the net name would not survive synthesis
        # what ResetSynchronizer(~locked) did for the domain reset, into a plain signal
        lock_rst = Signal()
        m.submodules.rst_sync = AsyncFFSynchronizer(~locked, lock_rst, o_domain="sync")

        m.submodules.acc = acc = UartAccelerator(self.cfg, self.divisor, self.fifo_bytes, self.credit_unit)
        uart = platform.request("uart", 0, dir="-")
        # rx through the input register of its I/O cell (issue 6: the receiver's first
        # synchroniser flip-flop was placed with the receiver, 147 tiles from the pin: 8.5 ns, the
        # ULX3S top's I/O path); one more cycle on an asynchronous line the receiver samples at
        # mid-bit
        m.submodules.rx_buf = rx_buf = io.FFBuffer("i", uart.rx)
        m.submodules.tx_buf = tx_buf = io.Buffer("o", uart.tx)
        # then RX_PIN_STAGES fabric registers on the way to the receiver (issue 6, session 13: the
        # I/O cell's register -> the receiver's synchroniser was one 8.4-9.1 ns route, the
        # critical path of one seed in four); the line idles high
        rx = rx_buf.i
        for k in range(RX_PIN_STAGES):
            q = Signal(init=1, name=f"rx_pin{k}")
            m.d.sync += q.eq(rx)
            rx = q
        m.d.comb += [acc.rx.eq(rx), tx_buf.o.eq(acc.tx), acc.rst.eq(lock_rst)]

        esp = platform.request("esp32", 0)
        m.d.comb += [esp.gpio0.o.eq(1), esp.gpio0.oe.eq(1)]

        # LEDs: heartbeat, lock, overrun, stalled, rx/tx activity (stretched ~20 ms). Their counters
        # have no reset: they start from their initial values at configuration, and a count
        # disturbed while the PLL locks only shifts a blink. (Timing, issue 6, session 9: lock_rst
        # on their ~40 reset pins as well was a 9.5-9.9 ns net from the LEDs to the bridge's
        # receiver; a synchroniser of their own is merged back into the bridge's by synthesis.)
        lm = Module()
        m.submodules.leds = lm
        leds = [platform.request("led", i).o for i in range(8)]
        hb = Signal(range(int(self.freq_hz) // 2 + 1))
        hb_led = Signal()
        with lm.If(hb == 0):
            lm.d.sync += [hb.eq(int(self.freq_hz) // 2), hb_led.eq(~hb_led)]
        with lm.Else():
            lm.d.sync += hb.eq(hb - 1)
        stretch = int(self.freq_hz) // 50
        acts = []
        # the rx pin is asynchronous: synchronised before the stretcher's logic (the bridge has its
        # own synchroniser); tx is the bridge's registered output
        rx_sync = Signal(init=1)
        m.submodules.led_rx_sync = FFSynchronizer(acc.rx, rx_sync, init=1)
        for line in (rx_sync, acc.tx):
            c = Signal(range(stretch + 1))
            with lm.If(~line):
                lm.d.sync += c.eq(stretch)
            with lm.Elif(c != 0):
                lm.d.sync += c.eq(c - 1)
            acts.append(c != 0)
        # Each LED from a flip-flop of its own (timing, issue 6: the stretchers' `c != 0` and the
        # bridge's flags reached the pads through LUTs and up to 9 ns of routing on the 30 x 4 top;
        # a cycle later is invisible to the eye).
        shown = [hb_led, locked, acc.overrun, acc.stalled, acts[0], acts[1]]
        led_r = Signal(len(shown))
        lm.d.sync += led_r.eq(Cat(*shown))
        lm.d.comb += [*(leds[i].eq(led_r[i]) for i in range(len(shown))), leds[6].eq(0), leds[7].eq(0)]
        return m
