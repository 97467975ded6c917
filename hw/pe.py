"""The processing element of the output-stationary MACC array (docs/array.md).

One ``PackedPE`` class covers both packing modes of ``golden.config.ArrayConfig``:

* ``packing="dual"``: the PE receives the *packed* weight word
  ``(w_hi << PACK_SHIFT) + w_lo`` (formed once per column at the array's top
  edge, see ``hw.mac_array``), so its datapath is a single 27x18 signed
  multiply feeding an accumulate register ``P``: exactly one DSP48E2
  (A = packed word, B = activation, P with feedback) and no pre-adder.
  ``P`` holds the exact packed sum of up to ``cfg.chain`` products
  (arithmetic.md §4); every ``chain`` valid products, or at the tile's last
  beat, it is unpacked into two saturating ``acc_width`` accumulators and
  restarts.
* ``packing="none"``: one signed 8x8 product per PE (one output lane), no
  packed chain: the product register is unpacked (trivially) every valid beat.

Pipeline (every register updates only when ``en`` = 1, the array's global
enable):

* operand registers ``a_out/w_out/valid_out/last_out`` (also forwarded to the
  right / downwards neighbour: one register per hop, no fan-out);
* stage 1: ``P`` (packed accumulate; "none": the product, on ECP5 a MULT18X18D
  output register) and the flags ``flush``/``flush_last``;
* stage 2: the unpacked fields of P (the product) in fabric registers, twice
  (one register near the multiplier, one near the adder), with the flags
  ``f2``/``ld2``;
* stage 3: the wide accumulators (no reset: a tile restarts them by selecting
  its first chain, flag ``first``);
* stage 4: after the tile's last chain, the result register takes the
  accumulator; its ``result_valid`` pulse is ``PE_LATENCY`` = 5 enabled cycles
  after the beat was in the operand registers.

This module also holds the small helpers the other ``hw`` blocks share
(configuration check, exact signed widths, register delay chains).
"""
from __future__ import annotations

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden._check import INT8_MAX, INT8_MIN
from golden.config import PACK_SHIFT, PACKING_MODES, ArrayConfig, packed_chain_bound

from .buffers import enable_copy
from .ecp5_mult import RegisteredMult, product_shape

#: Operand bits one copy of a PE's ``first`` flag selects (issue 6: ``first`` selected every bit
#: of the accumulators' operands, 33 LUTs on the 30 x 4 top, and its route started the 4 x 2
#: top's critical path, 2.55 of its 7.79 ns).
FIRST_COPY_BITS = 8

#: Width of the DSP48E2 P register: the packed chain must accumulate inside it.
DSP48E2_P_WIDTH = 48


def signed_width(lo: int, hi: int) -> int:
    """Fewest bits of a two's-complement signal that holds every integer in [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def check_hw_config(cfg) -> ArrayConfig:
    """Validate ``cfg`` for elaboration; raise ``ValueError`` naming the parameter.

    ``ArrayConfig.__post_init__`` already validates its fields, but a config
    can reach the hardware without passing through it (a duck-typed object, or
    a frozen dataclass modified with ``object.__setattr__``), and a wrong chain
    length would silently corrupt the packed low field. So the hardware
    re-checks every field it relies on, plus the hardware-only bound that the
    packed chain fits the DSP48E2 P register.
    """
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    for name in ("rows", "cols"):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= 256):
            raise ValueError(f"{name} must be an integer in [1, 256], got {v!r}")
    if cfg.packing not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {cfg.packing!r}")
    if cfg.weight_min not in (-127, -128):
        raise ValueError(f"weight_min must be -127 or -128, got {cfg.weight_min!r}")
    if cfg.packing == "dual":
        bound = packed_chain_bound(cfg.weight_min)
        if isinstance(cfg.chain, bool) or not isinstance(cfg.chain, int) or not (1 <= cfg.chain <= bound):
            raise ValueError(f"chain must be an integer in [1, {bound}] for packing='dual' with "
                             f"weight_min={cfg.weight_min}, got {cfg.chain!r}")
        pw = packed_acc_width(cfg)
        if pw > DSP48E2_P_WIDTH:
            raise ValueError(f"chain={cfg.chain} needs a {pw}-bit packed accumulator, more than the "
                             f"DSP48E2's {DSP48E2_P_WIDTH}-bit P register")
    elif cfg.chain is not None:
        raise ValueError(f"chain only applies to packing='dual', got chain={cfg.chain!r}")
    for name, lo, hi in (("max_k", 1, 2**20), ("param_fifo_depth", 1, 64)):
        v = getattr(cfg, name)
        if isinstance(v, bool) or not isinstance(v, int) or not (lo <= v <= hi):
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {v!r}")
    return cfg


def config_for(component, cfg) -> ArrayConfig:
    """``check_hw_config`` for a component's constructor.

    A rejected component is marked used, so Amaranth does not add an
    "elaboratable created but never used" warning to the ValueError.
    """
    try:
        return check_hw_config(cfg)
    except ValueError:
        component._MustUse__used = True
        raise


def check_flag(component, name: str, value) -> bool:
    """A bool option ``name`` of a component's constructor: ``value``, else ``ValueError`` naming it
    (the component marked used, as ``config_for``)."""
    if not isinstance(value, bool):
        component._MustUse__used = True
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _packed_word_range(cfg) -> tuple[int, int]:
    """Range of the packed weight word (w_hi << PACK_SHIFT) + w_lo."""
    return (cfg.weight_min << PACK_SHIFT) + cfg.weight_min, (INT8_MAX << PACK_SHIFT) + INT8_MAX


def weight_word_width(cfg) -> int:
    """Signed width of the weight word a PE receives: the packed word (27 = DSP A) or one int8."""
    if cfg.packing == "dual":
        return signed_width(*_packed_word_range(cfg))
    return signed_width(INT8_MIN, INT8_MAX)


def packed_acc_width(cfg) -> int:
    """Signed width of P: the sum of ``chain`` packed products (word * int8 activation)."""
    wlo, whi = _packed_word_range(cfg)
    prods = (wlo * INT8_MIN, wlo * INT8_MAX, whi * INT8_MIN, whi * INT8_MAX)
    return signed_width(cfg.chain * min(prods), cfg.chain * max(prods))


def pack_weights(w_lo: int, w_hi: int) -> int:
    """The packed weight word as an integer (test/reference helper; hw forms it in MacArray)."""
    return (int(w_hi) << PACK_SHIFT) + int(w_lo)


def field_width(cfg) -> int:
    """Signed width of the widest field a PE adds to an accumulator: the int8 x int8 product
    ("none"), or the low / high field unpacked from P ("dual": sext of PACK_SHIFT bits, and
    (P >> PACK_SHIFT) + P[PACK_SHIFT - 1])."""
    if cfg.packing == "dual":
        return max(PACK_SHIFT, packed_acc_width(cfg) - PACK_SHIFT + 1)
    return product_shape(signed(8), signed(weight_word_width(cfg))).width


def exact_result_width(cfg) -> int:
    """Signed width of an accumulator or result as the PE keeps it (saturation applied one step
    late): the exact sum of a clamped accumulator and one field, one bit wider than the wider of
    the two. Its value is ``saturate(raw, cfg.acc_width)``."""
    return max(cfg.acc_width, field_width(cfg)) + 1


def delay(m, value, n: int, name: str, *, en=None, reset_less: bool = True):
    """``value`` through ``n`` registers ``{name}_d0`` .. (n = 0: the value itself), each loaded when
    ``en`` is 1 (None: on every cycle). Data delays are reset-less by default (consumed only under
    a flag that keeps its reset)."""
    for k in range(n):
        reg = Signal(value.shape(), name=f"{name}_d{k}", reset_less=reset_less)
        if en is None:
            m.d.sync += reg.eq(value)
        else:
            with m.If(en):
                m.d.sync += reg.eq(value)
        value = reg
    return value


def saturate(value, width: int):
    """Amaranth expression: the signed ``value`` clamped to signed(``width``) (result is signed(width)).

    In range iff the bits from ``width - 1`` up are all equal (a few LUTs, no
    comparison carry chains behind the adder that usually produces ``value``);
    otherwise the bound of the value's sign.
    """
    if not value.shape().signed:
        raise ValueError(f"saturate needs a signed value, got {value.shape()}")
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    if len(value) <= width:                 # always in range: sign-extend
        return Cat(value, value[-1].replicate(width - len(value))).as_signed()
    top = value[width - 1:]
    in_range = top.all() | ~top.any()
    return Mux(in_range, value[:width], Mux(value[-1], lo, hi))[:width].as_signed()


class PackedPE(wiring.Component):
    """One PE of the array (both packing modes).

    Ports (W = ``weight_word_width(cfg)``: 27 for "dual", 8 for "none";
    A = ``cfg.acc_width``; S = ``cfg.lanes_per_pe``):

    * ``en``           In(1)          global enable: every register updates only when 1
    * ``a``            In(signed(8))  activation ("dual": 0 on bubbles, the array zeroes it;
                                      "none": anything on bubbles)
    * ``w``            In(signed(W))  weight word: packed (w_hi << 18) + w_lo, or one int8
    * ``valid``        In(1)          the beat is a real (accepted) input beat
    * ``last``         In(1)          final reduction beat of the tile (only with ``valid``)
    * ``a_out``        Out(signed(8)) operand register: forwarded to the right neighbour
    * ``w_out``        Out(signed(W)) operand register: forwarded to the neighbour below
    * ``valid_out``    Out(1)         operand register, forwarded right
    * ``last_out``     Out(1)         operand register, forwarded right
    * ``result``       Out(ArrayLayout(signed(A), S))  the tile's sums; [0] = w_lo
                       field, [1] = w_hi field; held until the next tile's result
    * ``result_exact`` Out(ArrayLayout(signed(exact_result_width(cfg)), S))  the result registers
                       themselves (exact sums): ``result`` is their clamp (``saturate``). The
                       array's drain chains carry these and clamp once per column, at the drain output.
    * ``result_valid`` Out(1)         one enabled-cycle pulse, PE_LATENCY after the
                       last beat was in the operand registers

    ``k_bounded=True``: the user guarantees that no tile has more than ``cfg.max_k`` beats
    ("dual": fields of ``cfg.max_k`` products in all), as ``hw.top`` does (the decoder rejects a
    RUN with k > ``golden.isa.k_max``); the accumulators then never saturate (``acc_width`` holds
    ``max_k`` products exactly) and the accumulate loop leaves the clamp out. Same results and
    cycles for every such input; a shadow check asserts that the clamp would not have acted.
    """

    def __init__(self, cfg: ArrayConfig, *, k_bounded: bool = False):
        self.cfg = config_for(self, cfg)
        self.k_bounded = check_flag(self, "k_bounded", k_bounded)
        w = weight_word_width(cfg)
        super().__init__({
            "en": In(1),
            "a": In(signed(8)),
            "w": In(signed(w)),
            "valid": In(1),
            "last": In(1),
            "a_out": Out(signed(8)),
            "w_out": Out(signed(w)),
            "valid_out": Out(1),
            "last_out": Out(1),
            "result": Out(data.ArrayLayout(signed(cfg.acc_width), cfg.lanes_per_pe)),
            "result_exact": Out(data.ArrayLayout(signed(exact_result_width(cfg)), cfg.lanes_per_pe)),
            "result_valid": Out(1),
        })

    def elaborate(self, platform):
        cfg = check_hw_config(self.cfg)
        m = Module()
        aw = cfg.acc_width
        # Datapath registers are reset-less (no set/reset pin, no reset-net fanout into the
        # array): each is only consumed under a flag that is reset (valid_out, flush,
        # result_valid), and so are the accumulators (a tile restarts them through `first`,
        # which is reset: a break mid-tile leaves no partial sum). For "dual", P keeps its reset
        # (it accumulates on every enabled cycle) and so does the activation (P relies on
        # bubbles carrying a = 0, also right after a reset).
        a_out = Signal(signed(8), reset_less=cfg.packing == "none")
        w_out = Signal(self.w.shape(), reset_less=True)
        m.d.comb += [self.a_out.eq(a_out), self.w_out.eq(w_out)]
        with m.If(self.en):
            # Operand registers double as the systolic forwarding registers.
            m.d.sync += [
                a_out.eq(self.a),
                w_out.eq(self.w),
                self.valid_out.eq(self.valid),
                self.last_out.eq(self.valid & self.last),
            ]

        # Stage 1. `flush` = P holds a completed chain (consumed by stage 2 in
        # the next enabled cycle, when P restarts from the new product).
        flush = Signal()
        flush_last = Signal()
        if cfg.packing == "dual":
            p = Signal(signed(packed_acc_width(cfg)))
            cnt = Signal(range(cfg.chain))
            with m.If(self.en):
                # Bubbles carry a = 0, so the product needs no valid mux: the
                # DSP sees P <= (flush ? 0 : P) + A*B, its own accumulate loop.
                m.d.sync += p.eq(Mux(flush, 0, p) + self.a_out * self.w_out)
                with m.If(self.valid_out):
                    done = self.last_out | (cnt == cfg.chain - 1)
                    m.d.sync += [
                        flush.eq(done),
                        flush_last.eq(self.last_out),
                        cnt.eq(Mux(done, 0, cnt + 1)),
                    ]
                with m.Else():
                    m.d.sync += [flush.eq(0), flush_last.eq(0)]
            # Exact unpack (arithmetic.md §4): the arithmetic shift borrows 1
            # from the high field when the low field is negative; add it back.
            lo = p[:PACK_SHIFT].as_signed()
            hi = p.shift_right(PACK_SHIFT) + p[PACK_SHIFT - 1]
            fields = [lo, hi]
        else:
            # One product per beat: the registered product `p` (reset-less, read only under
            # `flush`). On ECP5 it is a MULT18X18D's output register (issue 6: a multiplier between
            # two fabric flip-flops was a 10-11 ns path), elsewhere a plain register.
            # The multiplier's own input registers are copies of a_out / w_out (same inputs, same
            # enable: the product's timing is unchanged), so on ECP5 the path into the multiplier
            # array starts inside the MULT18X18D (issue 6, hw.ecp5_mult input_registers).
            m.submodules.mul = mul = RegisteredMult(a_out.shape(), w_out.shape(), input_registers=True)
            m.d.comb += [mul.a.eq(self.a), mul.b.eq(self.w), mul.en.eq(self.en)]
            with m.If(self.en):
                m.d.sync += [
                    flush.eq(self.valid_out),
                    flush_last.eq(self.last_out),
                ]
            fields = [mul.p]

        # Stage 2 (issue 6): the fields registered in the fabric, beside the accumulators. On ECP5
        # the product is a MULT18X18D output register in the DSP rows; the adder straight behind
        # it paid the DSP -> fabric route (several ns on the 30 x 4 top) and the carry chain in one
        # cycle. The flags move along: `f1` = the registered fields complete a chain, `ld1` = the
        # tile's last one (stage 3 loads the result register). flush_last implies flush (both
        # registered from the same valid beat), so f1 = flush and ld1 = flush & flush_last; they
        # are written with flush_last, which differs from PE to PE (last_out is an AND per hop),
        # because `flush` itself is the same register along an anti-diagonal of the array and
        # synthesis would merge those copies into one flip-flop driving the clock enables of
        # every PE on it (up to 4 x 27 on the 30 x 4 top, 9 ns). `shadow_checks` holds the
        # equalities (tests/test_hw_pe.py asserts them on every cycle).
        fq1 = [Signal(f.shape(), name=f"field{s}", reset_less=True) for s, f in enumerate(fields)]
        f1 = Signal()
        ld1 = Signal()
        with m.If(self.en):
            m.d.sync += [q.eq(f) for q, f in zip(fq1, fields)]
            m.d.sync += [f1.eq(flush | flush_last), ld1.eq(flush_last)]
        self.shadow_checks = [
            ("f1", flush | flush_last, flush),
            ("ld1", flush_last, flush & flush_last),
        ]
        # Stage 2b: the fields once more, with their flags (timing, issue 6: the DSP's output and
        # the accumulator's carry chain are in different places, the DSP rows and the fabric
        # beside them; with one register between them, its place split one long route, and the
        # MULT18X18D -> field route was still up to 8.9 ns on the 30 x 4 top). Now the first
        # register can sit by the DSP and the second by the adder.
        fq = [Signal(f.shape(), name=f"field{s}_b", reset_less=True) for s, f in enumerate(fields)]
        f2 = Signal()
        ld2 = Signal()
        with m.If(self.en):
            m.d.sync += [q.eq(f) for q, f in zip(fq, fq1)]
            m.d.sync += [f2.eq(f1), ld2.eq(ld1)]

        # Stage 3: saturating wide accumulators, restarted by selecting the field instead of
        # clearing them: `first` = the next chain starts a tile. So the accumulators need neither a
        # reset nor a clear (no set/reset pins: on the 30 x 4 top the accumulators' reset was
        # ~3 800 late LSR pins of the global reset net), and a reset mid-tile still leaves no
        # partial sum behind (`first` is reset). After the tile's last chain the result register
        # takes the accumulators (stage 4, below).
        #
        # The saturation is applied one step late (timing, issue 6: clamping behind the adder put
        # the carry chain, an in-range test fanning out to every bit and the select into one
        # cycle, the 4 x 2 top's critical path). Each accumulator is kept as the exact sum `raw`
        # of a clamped accumulator and a field (``exact_result_width``: one bit wider than the
        # wider of the two). The saturating accumulator it stands for is clamp(raw) (``saturate``:
        # the bound when raw's bits from A - 1 up are not all equal, else raw's low bits), and the
        # next step adds the field to that value: raw' = (first ? 0 : clamp(raw)) + f. With
        # fields no wider than A, raw has A + 1 bits and bit i of the operand is one LUT4 of
        # flip-flops (first, raw_i and raw's top two bits) in front of the carry chain, and the
        # carry chain's sum goes straight to the register (session 6 registered two range flags
        # behind the chain: a LUT after it, the 30 x 4 top's worst PE paths). By induction
        # clamp(raw) after every step is exactly the per-step saturating sum,
        # min(max(acc + f, min), max) (tests/test_hw_pe.py, and `shadow_checks` against that
        # accumulator on every cycle). The result register holds raw the same way
        # (``result_exact``); ``result`` is its clamp, which the array applies once per column.
        first = Signal(init=1)
        first_copies, ld3_copies = [], []
        ld3 = Signal()
        with m.If(self.en):
            m.d.sync += ld3.eq(ld2)
        results = []
        for s, f in enumerate(fq):
            rw = len(self.result_exact[s])
            assert len(f) < rw
            raw = Signal(signed(rw), name=f"acc{s}_raw", reset_less=True)
            res_raw = Signal(signed(rw), name=f"result{s}_raw", reset_less=True)
            clamped = Signal(signed(aw), name=f"acc{s}")
            m.d.comb += clamped.eq(saturate(raw, aw))
            # k_bounded: no tile has more than cfg.max_k beats (hw.top: the decoder rejects a larger
            # RUN k), and acc_width holds max_k products exactly, so the clamp never acts and the
            # loop adds raw's own low bits (issue 6: the in-range test of raw's top bits reached
            # every operand bit, fanout 2 x acc_width, in the accumulate loop).
            held = raw[:aw].as_signed() if self.k_bounded else clamped
            if self.k_bounded:
                self.shadow_checks.append((f"acc{s}_unclamped", held, clamped))
            operand = Signal(signed(aw), name=f"operand{s}")
            for lo in range(0, aw, FIRST_COPY_BITS):
                hi = min(aw, lo + FIRST_COPY_BITS)
                # A reset copy of `first` (init 1, same load): yosys would merge identical ones.
                fc = enable_copy(m, platform, ld2, f"first{s}_{lo}", en=self.en & f2, init=1)
                first_copies.append(fc)
                m.d.comb += operand[lo:hi].eq(Mux(fc, 0, held[lo:hi]))
            total = Signal(signed(rw), name=f"total{s}")
            m.d.comb += total.eq(operand + f)
            with m.If(self.en):
                with m.If(f2):
                    m.d.sync += raw.eq(total)
                # The result register takes the accumulator one step later (``ld3``), not the
                # sum itself: with two registers on the carry chain's output, nextpnr packs only
                # one into the chain's slice, and it took the result's (its enable differs), so
                # every step of the accumulate loop paid a route from the chain to the
                # accumulator (issue 6: 91-324 late accumulator bits per seed on the 30 x 4 top,
                # about 1.2 ns each on the 4 x 2 top). On the ld3 cycle the accumulator may load
                # the next tile's first sum: the result still takes the value before that edge.
                # ld3 once per FIRST_COPY_BITS of the result register, as `first` (issue 6,
                # session 11: one ld3 drove 28 clock enables and the placer spread them towards the
                # drain, 21 late endpoints of one PE at 7.64 ns in a6)
                for lo in range(0, rw, FIRST_COPY_BITS):
                    hi = min(rw, lo + FIRST_COPY_BITS)
                    lc = enable_copy(m, platform, ld2, f"ld3_{s}_{lo}", en=self.en)
                    ld3_copies.append(lc)
                    with m.If(lc):
                        m.d.sync += res_raw[lo:hi].eq(raw[lo:hi])
            results.append(saturate(res_raw, aw))
            m.d.comb += self.result_exact[s].eq(res_raw)
            # The per-step saturating accumulator and result register this stands for (read only by
            # the shadow checks: no hardware).
            ref = Signal(signed(aw), name=f"ref_acc{s}", reset_less=True)
            ref_res = Signal(signed(aw), name=f"ref_result{s}", reset_less=True)
            ref_total = Mux(first, saturate(f, aw), saturate(ref + f, aw))
            with m.If(self.en & f2):
                m.d.sync += ref.eq(ref_total)
            with m.If(self.en & ld3):
                m.d.sync += ref_res.eq(ref)
            self.shadow_checks += [(f"acc{s}", clamped, ref), (f"result{s}", results[-1], ref_res)]
        self.shadow_checks += [(f"first_copy{k}", fc, first) for k, fc in enumerate(first_copies)]
        self.shadow_checks += [(f"ld3_copy{k}", lc, ld3) for k, lc in enumerate(ld3_copies)]
        m.d.comb += self.result.eq(Cat(*results))
        with m.If(self.en):
            m.d.sync += self.result_valid.eq(ld3)
            with m.If(f2):
                m.d.sync += first.eq(ld2)
        return m
