"""``RegisteredMult``: p = a * b registered once (en-gated, reset-less), in an ECP5 DSP when targeting one.

Why (issue 6, docs/fpga.md "Timing"): yosys' ``synth_ecp5`` maps a ``$mul`` to a
combinational MULT18X18D (every register parameter "NONE") and nextpnr does not
pack fabric flip-flops into it, so a registered product was a fabric flip-flop
-> routing -> ~4 ns multiplier array -> routing -> fabric flip-flop (10-11 ns on
the 4x2 top: the PE product ``p``, the lane's "mul" partial products). With the
MULT18X18D's own output register the multiplier array ends in a register inside
the block: the path into it is routing plus the block's setup (nextpnr times it
with the ``MULT18X18D_REGS_OUTPUT`` class), the path out of it starts at its
clock-to-out.

The component is exactly the register the PE and the lane had: ``p`` changes on
the clock edge after a cycle with ``en`` = 1, to the product of that cycle's
``a`` and ``b``; no reset (datapath, consumed only under valid flags that are
reset). Latency and cycle behaviour do not depend on the platform.

``elaborate(platform)``:

* a Lattice ECP5 platform (``amaranth.vendor.LatticePlatform`` with ``family``
  "ecp5", e.g. ``amaranth_boards.ulx3s.ULX3S_85F_Platform``, which the ULX3S build
  passes down to every ``elaborate``): one ``MULT18X18D`` instance with the
  output register enabled (parameters below);
* anything else (``platform`` None: Amaranth simulation, Verilator via
  ``amaranth.back.verilog``, the synthesis-only and xcup flows; other vendors):
  the behavioural ``m.d.sync += p.eq(a * b)`` under ``en``.

Operand widths: signed operands up to 18 bits, unsigned up to 17 bits (so that a
zero-extended unsigned operand is also a non-negative 18-bit two's-complement
value, see ``_signed_pins``); anything wider is a ``ValueError``.
"""
from __future__ import annotations

from amaranth import Cat, ClockSignal, Instance, Module, Shape, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["RegisteredMult", "DSP_WIDTH", "is_ecp5", "product_shape"]

#: Operand width of the ECP5 sysDSP multiplier element (MULT18X18D: 18 x 18 -> 36).
DSP_WIDTH = 18
#: Width of the MULT18X18D product output P.
_P_WIDTH = 2 * DSP_WIDTH


def is_ecp5(platform) -> bool:
    """True for an Amaranth Lattice platform of the ECP5 family (by class and ``family``, not by name)."""
    try:
        from amaranth.vendor import LatticePlatform
    except ImportError:                                   # pragma: no cover - amaranth without vendor
        return False
    return isinstance(platform, LatticePlatform) and getattr(platform, "family", None) == "ecp5"


def product_shape(a_shape, b_shape) -> Shape:
    """Shape of Amaranth's ``a * b`` for operands of these shapes (the width of the exact product)."""
    return (Signal(Shape.cast(a_shape)) * Signal(Shape.cast(b_shape))).shape()


def _check_operand(name: str, shape) -> Shape:
    shape = Shape.cast(shape)
    limit = DSP_WIDTH if shape.signed else DSP_WIDTH - 1
    if not (1 <= shape.width <= limit):
        kind = "signed" if shape.signed else "unsigned"
        raise ValueError(f"operand {name} must be signed(1..{DSP_WIDTH}) or unsigned(1..{DSP_WIDTH - 1}) "
                         f"(one MULT18X18D), got {kind}({shape.width})")
    return shape


class RegisteredMult(wiring.Component):
    """p = a * b, registered once when ``en`` = 1 (module docstring); with ``input_registers`` the
    operands are registered first (two enabled cycles from operands to p).

    Ports:

    * ``a``  In(a_shape)     operand (signed <= 18 bits or unsigned <= 17 bits)
    * ``b``  In(b_shape)     operand (same limits)
    * ``en`` In(1)           every register loads on the next clock edge when 1: p <= a * b, or
                             with ``input_registers`` the operand registers <= a, b and
                             p <= their product (so p is the product of the operands of the
                             enabled cycle before the latest one)
    * ``p``  Out(product_shape(a_shape, b_shape))  the registered exact product (no reset)

    ``input_registers`` (timing, issue 6): on ECP5 the MULT18X18D's own input registers
    (REG_INPUTA/B_CLK), so no routed path ends behind the multiplier array: without them a
    fabric operand register -> routing -> the array's ~4 ns -> the output register was the 30 x 4
    top's critical path (10.7 ns, the lane's PReLU product). The PE gives its operand registers'
    inputs (the neighbours' registers: the DSP's registers are copies of its own and the
    product's timing does not change); the lane gives its operand registers (a stage more, so
    the operand logic is not routed straight into the DSP).
    """

    def __init__(self, a_shape, b_shape, *, input_registers: bool = False):
        try:
            a_shape = _check_operand("a", a_shape)
            b_shape = _check_operand("b", b_shape)
        except (ValueError, TypeError):
            self._MustUse__used = True                  # no "never used" warning on top of the error
            raise
        if not isinstance(input_registers, bool):
            self._MustUse__used = True
            raise ValueError(f"input_registers must be a bool, got {input_registers!r}")
        self.a_shape, self.b_shape = a_shape, b_shape
        self.input_registers = input_registers
        super().__init__({"a": In(a_shape), "b": In(b_shape), "en": In(1),
                          "p": Out(product_shape(a_shape, b_shape))})

    def _signed_pins(self) -> int:
        """SIGNEDA = SIGNEDB: 1 if either operand is signed, else 0.

        Never mixed signedness within one multiplier element: Lattice documents its
        earlier sysDSP (LatticeECP2) as "signed or unsigned but not mixed within a
        functional element", and a signed x unsigned product is exact either way here,
        because an unsigned operand is at most 17 bits wide: zero-extended to 18 bits
        it is the same non-negative value read as unsigned or as two's complement.
        """
        return int(self.a_shape.signed or self.b_shape.signed)

    def elaborate(self, platform):
        m = Module()
        if not is_ecp5(platform):
            a, b = self.a, self.b
            if self.input_registers:
                a = Signal(self.a_shape, name="a_reg", reset_less=True)
                b = Signal(self.b_shape, name="b_reg", reset_less=True)
                with m.If(self.en):
                    m.d.sync += [a.eq(self.a), b.eq(self.b)]
            p = Signal(self.p.shape(), reset_less=True)
            with m.If(self.en):
                m.d.sync += p.eq(a * b)
            m.d.comb += self.p.eq(p)
            return m

        def ext18(v, shape):
            # two's-complement operands sign-extended, unsigned ones zero-extended to the 18-bit port
            fill = v[-1] if shape.signed else 0
            return Cat(v, *([fill] * (DSP_WIDTH - shape.width)))[:DSP_WIDTH]

        a18 = Signal(DSP_WIDTH, name="a18")
        b18 = Signal(DSP_WIDTH, name="b18")
        p36 = Signal(_P_WIDTH, name="p36")
        m.d.comb += [a18.eq(ext18(self.a, self.a_shape)), b18.eq(ext18(self.b, self.b_shape))]
        sgn = self._signed_pins()
        ports = {}
        for i in range(DSP_WIDTH):
            ports[f"i_A{i}"] = a18[i]
            ports[f"i_B{i}"] = b18[i]
            ports[f"i_C{i}"] = 0                               # C (the ALU's third operand) unused
        for i in range(_P_WIDTH):
            ports[f"o_P{i}"] = p36[i]
        # MULT18X18D register parameters (Lattice ECP5 sysDSP, TN1267; yosys'
        # share/lattice/cells_bb_ecp5.v lists them with these defaults): REG_INPUTA/B/C_CLK
        # register the operands at the block's inputs, REG_PIPELINE_CLK the multiplier array's
        # output, REG_OUTPUT_CLK the product P; "NONE" bypasses a register, "CLKn" clocks it
        # from pin CLKn, and its REG_*_CE / REG_*_RST select which CEn / RSTn pin gates / resets
        # it. The output register is where the PE's `p` and the lane's "mul" registers were; with
        # input_registers the input registers A and B (same clock and enable) stand in for the
        # caller's operand registers (nextpnr then times the block as MULT18X18D_REGS_ALL: its
        # A/B pins are register inputs), else the operands come from fabric registers.
        # GSR = "DISABLED": the register is a reset-less datapath register (like the Amaranth
        # `reset_less` register of the other platforms): nothing reads it before an enabled
        # cycle wrote it, so it does not need the global set/reset either.
        # RESETMODE = "SYNC" (the default): RST0 is tied to 0, so the register never resets;
        # a synchronous mode keeps the constant pin out of asynchronous reset/recovery arcs.
        # SRIA/SRIB (shift-chain inputs, cascade only) are left unconnected: they have no
        # route from the fabric, so tying them to 0 makes nextpnr fail (nextpnr issue #208);
        # SOURCEA/SOURCEB = 0 select the A/B pins rather than the shift chain (as yosys'
        # own $__MUL18X18 mapping ties them).
        in_clk = "CLK0" if self.input_registers else "NONE"
        m.submodules.dsp = Instance(
            "MULT18X18D",
            p_REG_INPUTA_CLK=in_clk, p_REG_INPUTA_CE="CE0", p_REG_INPUTA_RST="RST0",
            p_REG_INPUTB_CLK=in_clk, p_REG_INPUTB_CE="CE0", p_REG_INPUTB_RST="RST0",
            p_REG_INPUTC_CLK="NONE", p_REG_INPUTC_CE="CE0", p_REG_INPUTC_RST="RST0",
            p_REG_PIPELINE_CLK="NONE", p_REG_PIPELINE_CE="CE0", p_REG_PIPELINE_RST="RST0",
            p_REG_OUTPUT_CLK="CLK0", p_REG_OUTPUT_CE="CE0", p_REG_OUTPUT_RST="RST0",
            p_CLK0_DIV="ENABLED", p_CLK1_DIV="ENABLED", p_CLK2_DIV="ENABLED", p_CLK3_DIV="ENABLED",
            p_HIGHSPEED_CLK="NONE", p_GSR="DISABLED", p_CAS_MATCH_REG="FALSE",
            p_SOURCEB_MODE="B_SHIFT", p_MULT_BYPASS="DISABLED", p_RESETMODE="SYNC",
            i_SIGNEDA=sgn, i_SIGNEDB=sgn, i_SOURCEA=0, i_SOURCEB=0,
            i_CLK0=ClockSignal("sync"), i_CE0=self.en, i_RST0=0,
            **ports)
        m.d.comb += self.p.eq(p36[:len(self.p)])
        return m
