"""One output channel's post-processing lane: int32 requantization (tflite or ort mode), PReLU, clamp, LUT.

Bit-exact with ``golden.requant`` and the lane semantics at the bottom of
docs/array.md. tflite mode (``mode`` = 0; TFLite double-rounding
MultiplyByQuantizedMultiplier, arithmetic.md §2)::

    t = sat32(acc + bias)
    v = RDBPOT(SRDHM(satshl32(t, max(shift,0)), mult), max(-shift,0))
    if prelu and v < 0:
        v = RDBPOT(SRDHM(satshl32(v, max(alpha_shift,0)), alpha_mult), max(-alpha_shift,0))
    q = clamp(v + zp, act_min, act_max)
    out = lut[q & 0xFF] if lut_en else q & 0xFF

ort mode (``mode`` = 1, per row; onnxruntime's float32 requantization emulated
with integers, ``golden.requant._requantize_ort_int``; ``mult``, ``shift`` and
``prelu`` ignored)::

    v = clamp(rne(f32(f32(t) * scale_f32)), act_min - zp, act_max - zp);  q = v + zp

One register per stage of ``golden.config.REQUANT_STAGES``, so the latency is
``REQUANT_LATENCY`` in both modes; each stage carries forward only the
parameters the later stages still need (the params FIFO pops as soon as a
tile's last row has entered the lane, so later stages cannot read the FIFO
head). The ort datapath (``hw.ort_requant``) runs beside the tflite one and
shares its bias adder, its first multiplier, the clamp and the LUT.

Timing (issue 6, docs/fpga.md "Timing"): no stage is deeper than about one
carry chain plus a LUT level, a part of a barrel shifter, one 18x18 multiplier
(MULT18X18D) or a few LUT levels. Each 32 x 31 product is four registered
18x18 partial products (operands split at bit 17; on ECP5 each registered in its
MULT18X18D's output register, ``hw.ecp5_mult``) summed over three stages in
<= 18-bit chains behind the multipliers, then <= 30-bit chains with the registered
carries as carry-ins; the saturating left shifts register their overflow tests
(partial ORs of the value under a thermometer mask, no compare chain) beside a
coarse shift, combine them beside the fine shift a stage later and select a
stage after that; the rounding shifts are split
from their increments, their rounding bit's terms registered as parts; the clamp registers its compares and selects a stage
later; whatever depends on the parameters alone (shift limits, masks, clamp
bounds) is computed one stage ahead ("prep") and registered, as LUT logic
(thermometer codes) rather than shifters and decrements. Only ``valid`` and
``last`` have a reset (see ``_RESET_REGS``); the ``lut`` write is registered
once (``LUT_WRITE_DELAY``) before the table's write port; the table read is
split over two stages (``lut_rd``, ``lut``).

============  ======================================  ====================================
stage         tflite                                  ort (mode = 1)
============  ======================================  ====================================
bias          s = acc + bias (exact); prep: limits    same s; scale significand and
              of the left shift                       exponent field
lshift        sat32(s) << max(shift, 0): coarse       a = |sat32(s)|, sign, t = 0 as
              shift (by a multiple of 4) beside the   partial ORs; the significand
              two overflow tests as partial ORs       into ``mult``
lsat          fine shift (by shift mod 4), the        msb byte of a, msb within each
              overflow flags from the partial ORs     byte; t = 0
ort_msb       the saturating select                   msb index of a; a shifted by its
                                                      msb byte (coarse normalisation)
ort_norm      (delay)                                 24 bits of a from the msb (fine
                                                      shift), RNE increment, exponent
operand       multiplier operand                      rounded significand ma (24 bits)
mul           4 partial products (18x18 each)         same, ma x significand
psum          lh + hl in 17-bit halves; X's bits      same, no nudge
              [30, 34) + 2**30 (nudge); carries kept
plo           product bits [17, 34) + carry; high     + OR of bits [0, 17)
              parts + the psum carries
phi           product bits [34, 63); prep: RDBPOT     exact product bits [22, 48),
              masks of max(-shift, 0)                 sticky of bits [0, 22)
rshift        x >> (e & ~3), rounding bit terms       product rounded to 24 bits:
              (4 bits at (e-1) & ~3, 4 partial        kept bits, increment, exponent
              sticky ORs)
rfine         >> (e & 3), rounding bit                (delay)
rround        + rounding bit; prep: alpha limits      + increment; integer shift amount
prelu_shl     alpha left shift: coarse shift,         integer rounding: shift, guard,
              overflow tests as partial ORs           sticky as partial ORs
prelu_lsat    fine shift, overflow flags              increment
prelu_sat     the select (the alpha operand)          (delay)
prelu_mul     alpha partial products                  magnitude (saturated at 2**10)
prelu_psum    alpha sum, nudge                        sign
prelu_plo     alpha low bits                          (delay)
prelu_phi     alpha high bits; prep: masks            (delay)
prelu_rshift  alpha x >> (e & ~3), rounding terms      (delay)
prelu_rfine   >> (e & 3), rounding bit; prep:         (delay)
              bounds - zp
prelu_rround  + rounding bit; PReLU select (prelu     the mode selects the ort value
              and v < 0)
clamp         v < act_min - zp, v > act_max - zp,     shared
              v + zp (8 bits); the compares as
              their 16-bit halves' terms
clip          the flags, the select: the clipped      shared
              code
lut_rd        table row at code & 15 (LUT-RAM),       shared
              its 4 words at code bits [4, 6)
lut           the word at bits [6, 8), or the code    shared
============  ======================================  ====================================

Every representable parameter is handled exactly, not only the documented
ranges: left shifts up to 31 (``shift`` is signed(6)), right shifts up to 32;
in ort mode any act_min/act_max/zp of their signed(9) fields and any 32-bit
``scale_f32`` (sign ignored; see ``hw.ort_requant`` for the non-finite bits).
"""
from __future__ import annotations

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden._check import INT8_MIN, INT32_MAX, INT32_MIN, UINT8_MAX, UINT8_MIN
from golden.array_model import MODE_ORT, lane_field_shapes
from golden.config import REQUANT_STAGES, ArrayConfig
from golden.requant import MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT

from . import ort_requant as ort_dp
from .buffers import enable_copy, kept_copy
from .ecp5_mult import RegisteredMult
from .pe import check_hw_config, config_for, signed_width

#: Width of the int32 datapath of the lane.
_W32 = signed_width(INT32_MIN, INT32_MAX)
#: q_fixed multipliers are non-negative int32 values: [0, INT32_MAX].
MULT_WIDTH = INT32_MAX.bit_length()
#: Shifts span [-MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT] (arithmetic.md §2).
SHIFT_WIDTH = signed_width(-MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT)
#: Zero point and clamp bounds cover int8 and uint8 codes: [-128, 255].
CODE_BOUND_WIDTH = signed_width(INT8_MIN, UINT8_MAX)
#: Output code and LUT geometry: an 8-bit pattern indexes a 256-entry table.
CODE_WIDTH = UINT8_MAX.bit_length()
LUT_DEPTH = UINT8_MAX - UINT8_MIN + 1
#: ort mode: the raw IEEE-754 bits of the float32 scale.
SCALE_WIDTH = 32
#: Registers between the ``lut`` write port and the table memory: a write on cycle t is read
#: from cycle t + 1 + LUT_WRITE_DELAY (see the lut stage in ``RequantLane.elaborate``).
LUT_WRITE_DELAY = 1
#: The table's memory: _LUT_ROWS rows (one LUT-RAM depth) of _LUT_WORDS 8-bit entries; stage lut_rd
#: narrows a row to 2**(8 - 4 - _LUT_SEL_BITS) words by the code's bits [4, 4 + _LUT_SEL_BITS).
_LUT_ROWS = 16
_LUT_WORDS = LUT_DEPTH // _LUT_ROWS
_LUT_SEL_BITS = 2


def lane_params_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Per-lane fields of a ``params`` beat (docs/array.md, "Ports" and "ort mode").

    Derived from ``golden.array_model.lane_field_shapes`` (the single definition
    of the fields, their order and shapes, shared with golden.isa's packing);
    ``_check_lane_widths`` ties the lane's internal widths to it.
    """
    return data.StructLayout({f: (signed if sgn else unsigned)(w)
                              for f, (sgn, w) in lane_field_shapes(cfg.bias_width).items()})


def _check_lane_widths(cfg: ArrayConfig) -> None:
    """The datapath below is sized by module constants: they must match the shared field shapes."""
    want = {"mult": (False, MULT_WIDTH), "alpha_mult": (False, MULT_WIDTH), "shift": (True, SHIFT_WIDTH),
            "alpha_shift": (True, SHIFT_WIDTH), "zp": (True, CODE_BOUND_WIDTH),
            "act_min": (True, CODE_BOUND_WIDTH), "act_max": (True, CODE_BOUND_WIDTH),
            "prelu": (False, 1), "mode": (False, 1), "scale_f32": (False, SCALE_WIDTH)}
    got = lane_field_shapes(cfg.bias_width)
    bad = {f: got.get(f) for f, sh in want.items() if got.get(f) != sh}
    if bad:
        raise ValueError(f"golden.array_model.lane_field_shapes changed field(s) {bad}; hw.requant_lane "
                         f"is built for {want}")


def lut_layout() -> data.StructLayout:
    """Payload of the ``lut`` write stream: table address and 8-bit entry."""
    return data.StructLayout({"addr": unsigned(CODE_WIDTH), "data": unsigned(CODE_WIDTH)})


# ---- combinational building blocks (Amaranth expressions on int32 signals) ----
#
# Each block is at most about one carry chain, one barrel shifter, one 18x18
# multiplier or a few LUT levels deep, so that every lane stage closes at the
# ECP5 target clock (docs/fpga.md, "Timing"); whatever a block needs from the
# parameters alone (shift limits, masks, clamp bounds) is computed a stage
# earlier ("prep") and registered.

def _left_amount(shift):
    """max(shift, 0) as an unsigned amount."""
    return Mux(shift[-1], 0, shift[:len(shift) - 1])


def _right_amount(shift):
    """max(-shift, 0) as an unsigned amount (up to 2**(len-1), one bit wider)."""
    return Mux(shift[-1], -shift, 0)[:len(shift)]


def _shl_limits(shift, copies=()) -> dict:
    """Prep of ``_satshl_cmp`` from the signed ``shift`` alone: left = max(shift, 0) and the bound
    lo = INT32_MIN >> left (x * 2**left overflows int32 iff x > ~lo or x < lo).

    lo = INT32_MIN / 2**left exactly (a power of two) has bits [31 - left, 32) set, and
    INT32_MAX >> left = ~lo, so one register holds both bounds. Each bit of lo is the
    6-input function ``left > 30 - i`` of the shift (``ort_dp.gt_const``: a couple of LUT
    levels, no shifter or chain on the params port). "lo" holds bits [0, 31) only: bit 31 and
    up are always 1 and ``_satshl_cmp`` writes them as constants (issue 6: as a register, that
    bit was one flip-flop with a constant input, which yosys merged across every lane and both
    left shifts: 28 loads over the lanes, the start of the 30 x 4 top's critical path, session 11).
    ``copies``: registers equal to ``shift``; lo's bits are split evenly among them (each bit's
    LUTs read one copy).
    """
    srcs = list(copies) or [shift]

    def bit(i):
        sh = srcs[i * len(srcs) // (_W32 - 1)]
        return ~sh[-1] & ort_dp.gt_const(sh[:len(sh) - 1], _W32 - 2 - i)
    return {"left": _left_amount(shift), "lo": Cat(*(bit(i) for i in range(_W32 - 1)))}


#: The clamp's compares are split at this bit: two chains of <= ~18 bits side by side instead
#: of one of 32-34 (issue 6: ``clamp_gt`` 7.6 ns on a 4 x 2; the saturating left shifts used
#: them too until they were 9.2 ns on the 30 x 4, see ``_satshl_cmp``).
_CMP_SPLIT = 16


def _split_cmp(x, c) -> dict:
    """The terms of ``x > c`` and ``x < c`` (both signed) as four chains of <= ~18 bits:
    x > c = gt_h | (ge_h & gt_l), x < c = lt_h | (le_h & lt_l) (high parts signed, low parts
    unsigned bits [0, _CMP_SPLIT)); ``_split_flags`` combines them a stage later."""
    w = max(len(x), len(c), _CMP_SPLIT + 1)
    x, c = (Cat(v, v[-1].replicate(w - len(v))) for v in (x, c))   # both signed: sign-extend
    xh, ch = x[_CMP_SPLIT:].as_signed(), c[_CMP_SPLIT:].as_signed()
    xl, cl = x[:_CMP_SPLIT], c[:_CMP_SPLIT]
    u1 = unsigned(1)
    return {"gt_h": (u1, xh > ch), "ge_h": (u1, xh >= ch), "gt_l": (u1, xl > cl),
            "lt_h": (u1, xh < ch), "le_h": (u1, xh <= ch), "lt_l": (u1, xl < cl)}


#: The saturating left shift's overflow tests are registered as partial ORs of this many bits each.
_OVF_PART = 8


def _coarse_shift(x, amount, copies, left: bool):
    """``x`` shifted left (``left``) or right by ``amount`` * 2**_FINE_BITS, the 32 bits from bit 0:
    an 8:1 mux per bit. ``copies`` (registered copies of ``amount``, ``_kept_copies``) each select an
    equal slice of the bits (none: ``amount`` selects them all; issue 6: one register selecting all
    32 muxes was a late net by its fanout)."""
    copies = list(copies) or [amount]
    part = -(-_W32 // len(copies))
    return Cat(*((x << by if left else x >> by)[j * part:(j + 1) * part]
                 for j, by in enumerate(Cat(Const(0, _FINE_BITS), c) for c in copies)))[:_W32]


def _satshl_cmp(x, lim, coarse_copies=()) -> dict:
    """First third of sat32(x * 2**left) for a signed ``x`` of any width, ``lim`` from ``_shl_limits``
    (registered): the coarse part of the 32-bit barrel shift (by left rounded down to a multiple
    of 2**_FINE_BITS: an 8:1 mux per bit) beside the overflow tests against ~lo and lo as
    partial ORs; ``_satshl_fine`` finishes both, ``_satshl_sel`` selects.

    lo = -2**k with k = 31 - left, and its bits (sign-extended to x's width) are the mask
    m_i = (i >= k). So x > ~lo (x >= 2**k) iff x >= 0 and some bit of x at or above k is set,
    and x < lo (x < -2**k, i.e. x >> k <= -2) iff x < 0 and some bit of x at or above k is
    clear: ``gtp`` / ``ltp`` hold those ORs of x & m / ~x & m in _OVF_PART-bit parts (two
    LUT levels each from flip-flops, no carry chain; issue 6: the compares' chains plus the
    LUTs yosys derives the other compares with, ``lshift_gt_h_g`` 9.2 ns on the 30 x 4).

    golden.requant.saturating_left_shift of sat32(x): saturation is monotone, so
    saturating first and then shifting with saturation (a bound stays a bound)
    equals one saturation of the exact x * 2**left.

    ``coarse_copies``: registered copies of left[_FINE_BITS:] (``_kept_copies``), each selecting an
    equal slice of the coarse shift's bits (issue 6: one register selecting all 32 8:1 muxes,
    `lshift_xc` 9.0-11.0 ns in session 12's b1, seed 1).
    """
    left = lim["left"]
    xc = _coarse_shift(x[:_W32], left[_FINE_BITS:], coarse_copies, left=True).as_signed()
    lo = lim["lo"]
    mask = Cat(lo, Const(1, 1).replicate(max(len(x) - len(lo), 0)))[:len(x)]
    parts = range(0, len(x), _OVF_PART)
    gtp = Cat(*((x[i:i + _OVF_PART] & mask[i:i + _OVF_PART]).any() for i in parts))
    ltp = Cat(*((~x[i:i + _OVF_PART] & mask[i:i + _OVF_PART]).any() for i in parts))
    return {"xc": (signed(_W32), xc), "lf": (unsigned(_FINE_BITS), left[:_FINE_BITS]),
            "sgn": (unsigned(1), x[-1]), "gtp": (gtp.shape(), gtp), "ltp": (ltp.shape(), ltp)}


def _split_lt_gt(x, c_lt, c_gt) -> dict:
    """``_split_cmp`` terms of x < c_lt (suffix ``_l``) and x > c_gt (suffix ``_g``)."""
    return {**{f"{k}_l": v for k, v in _split_cmp(x, c_lt).items() if k.startswith("l")},
            **{f"{k}_g": v for k, v in _split_cmp(x, c_gt).items() if k.startswith("g")}}


def _split_flags(r):
    """(x < c_lt, x > c_gt) from the registered ``_split_lt_gt`` terms (one LUT each)."""
    return (r["lt_h_l"] | (r["le_h_l"] & r["lt_l_l"]), r["gt_h_g"] | (r["ge_h_g"] & r["gt_l_g"]))


def _satshl_fine(r) -> dict:
    """Second third: the rest of the shift (by left mod 2**_FINE_BITS: a 4:1 mux per bit) and
    the overflow flags from ``_satshl_cmp``'s partial ORs and sign (one LUT5 each), registered so the
    3-way select (``_satshl_sel``, fanout 32 per flag) starts from flip-flops."""
    u1 = unsigned(1)
    gt = ~r["sgn"] & r["gtp"].any()
    lt = r["sgn"] & r["ltp"].any()
    return {"xs": (signed(_W32), (r["xc"] << r["lf"])[:_W32].as_signed()), "gt": (u1, gt), "lt": (u1, lt)}


def _satshl_sel(r):
    """Last third of the saturating left shift: the select of ``_satshl_fine``'s registers (one LUT level)."""
    return Mux(r["gt"], INT32_MAX, Mux(r["lt"], INT32_MIN, r["xs"]))[:_W32].as_signed()


#: Operands of the 32 x 31 products are split at this bit: the low parts are unsigned
#: 17-bit, the high parts 15 (signed a) / 14 (unsigned b) bits, so each of the four
#: partial products is one 18x18 signed multiplier (MULT18X18D).
_SPLIT = 17
#: The SRDHM rounding nudge 2**30 sits at this bit of the product.
_NUDGE_BIT = _W32 - 2
#: Bit of the product where the high parts of the registered sums start: hh's weight, 2 * _SPLIT.
_HI_BIT = 2 * _SPLIT


def _partial_products(m, platform, en, name, a, b) -> dict:
    """Stages "fwd", "in" and "mul": a * b = ll + (lh + hl) * 2**17 + hh * 2**34, four registered
    18x18 products.

    ``a`` signed(32), ``b`` unsigned(<= 31): the operand stage's registers. Each product first
    registers its two operand halves in fabric registers of its own (stage ``{name}_fwd``,
    ``{name}_fwd_{k}_a`` / ``_b``, ``hw.buffers.kept_copy``: kept apart through yosys' opt_merge;
    issue 6: one register per half fed the two MULT18X18D using it, which the placer put apart,
    `prelu_mul_hl.b18` -> the ll multiplier 7.9-9.1 ns on the 30 x 4 top in session 11). Each
    product is a
    ``RegisteredMult`` with input registers (submodule ``{name}_{ll,lh,hl,hh}``): its operand
    registers are the stage ``{name}_in`` and its product register is the stage ``{name}``: on ECP5
    the MULT18X18D's own input and output registers (issue 6: the multiplier between two fabric
    flip-flops was a 10-11 ns path, and with only the output register a fabric operand register
    -> routing -> the multiplier array was still 10.7 ns), elsewhere plain reset-less registers;
    all load under ``en`` like every stage register. Returns {name: registered product} (the
    values of stage ``{name}``, two stages after the operands).
    """
    a_lo, a_hi = a[:_SPLIT], a[_SPLIT:].as_signed()
    b_lo, b_hi = b[:_SPLIT], b[_SPLIT:]
    regs = {}
    for k, (x, y) in {"ll": (a_lo, b_lo), "lh": (a_lo, b_hi), "hl": (a_hi, b_lo), "hh": (a_hi, b_hi)}.items():
        x = kept_copy(m, platform, x, en, f"{name}_fwd_{k}_a")     # (same shape, signedness kept)
        y = kept_copy(m, platform, y, en, f"{name}_fwd_{k}_b")
        m.submodules[f"{name}_{k}"] = mul = RegisteredMult(x.shape(), y.shape(), input_registers=True)
        m.d.comb += [mul.a.eq(x), mul.b.eq(y), mul.en.eq(en)]
        regs[k] = mul.p
    return regs


def _product_sum(pp, nudge) -> dict:
    """Stage "psum": the first adds of P = ll + (lh + hl) * 2**17 + hh * 2**34 + nudge * 2**30 as
    chains of <= 18 bits side by side, straight from the multipliers' output registers.

    The middle sum lh + hl is split at bit _SPLIT: ``midl`` = lh[:17] + hl[:17] (18 bits, its
    carry ``midl[17]`` weighs 2**34) and ``midh`` = lh[17:] + hl[17:] (signed, weight 2**34);
    X = ll + hh * 2**34 is a concatenation (ll < 2**34), and only ll's top bits take the nudge:
    ``xn`` = ll[30:34] + nudge (5 bits, its carry weighs 2**34); ``xl`` = ll[:30] and ``hh`` pass.
    So P = xl + xn[:4] * 2**30 + midl[:17] * 2**17 + (hh + midh + xn[4] + midl[17]) * 2**34.
    (issue 6: the 33/34-bit chains ``mid`` = lh + hl and X >> 30 + nudge behind the MULT18X18D
    outputs, ``psum_mid`` 9.2 ns on the 30 x 4.) ``nudge`` is 1 for SRDHM (the 2**30 rounding
    term) and 0 for the exact ort product.
    """
    ll, lh, hl = pp["ll"], pp["lh"], pp["hl"]
    vals = {"midl": lh[:_SPLIT] + hl[:_SPLIT], "midh": lh[_SPLIT:] + hl[_SPLIT:].as_signed(),
            "xl": ll[:_NUDGE_BIT], "xn": ll[_NUDGE_BIT:_HI_BIT] + nudge, "hh": pp["hh"]}
    return {k: (v.shape(), v) for k, v in vals.items()}


def _product_low(s) -> dict:
    """Stage "plo": the product's bits [17, 34) (``lo``, with the carry out as its bit 17):
    X'[17:34] + midl[:17]; beside it the high parts take the two carries of "psum" as their
    chains' carry-in: ``xhi`` = hh + xn[4], ``mhi`` = midh + midl[17] (all <= 30-bit chains)."""
    n = _HI_BIT - _SPLIT
    x_mid = Cat(s["xl"][_SPLIT:], s["xn"][:_HI_BIT - _NUDGE_BIT])
    vals = {"lo": x_mid + s["midl"][:n], "xhi": s["hh"] + s["xn"][_HI_BIT - _NUDGE_BIT],
            "mhi": s["midh"] + s["midl"][n]}
    return {k: (v.shape(), v) for k, v in vals.items()}


#: The product bits kept after stage "phi": [_PROD_LO, 63).
_PROD_LO = 22


def _product_high(s):
    """Stage "phi": the product's bits [22, 63) as unsigned(41): lo[5:17] and the high sum
    xhi + mhi + lo's carry (one chain, the carry as its carry-in). The SRDHM result (bits
    [31, 63), see ``_srdhm_word``) and the ort product's bits [22, 48) both lie in it."""
    n = _HI_BIT - _SPLIT
    high = s["xhi"] + s["mhi"] + s["lo"][n]
    return Cat(s["lo"][_PROD_LO - _SPLIT:n], high[:2 * _W32 - 1 - _HI_BIT])


def _srdhm_word(prod):
    """SaturatingRoundingDoublingHighMul(a, b) from the nudged product bits of ``_product_high``.

    gemmlowp: trunc((a*b + nudge) / 2**31) with nudge = 2**30 if ab >= 0 else
    1 - 2**30. For ab < 0, trunc(x / 2**31) = floor((x + 2**31 - 1) / 2**31)
    and x + 2**31 - 1 = ab + 2**30, so both signs reduce to one floor
    (arithmetic shift): floor((ab + 2**30) / 2**31), bits [31, 63) of the nudged
    product. That identity is the reason no sign-dependent nudge or truncation
    logic appears here. Saturation: the only overflowing case is a = b =
    INT32_MIN, and b is an unsigned(31) port (<= INT32_MAX), so it cannot occur;
    the result range is [INT32_MIN + 1, INT32_MAX - 1].
    """
    return prod[_W32 - 1 - _PROD_LO:].as_signed()


def _rdbpot_prep(shift) -> dict:
    """Prep of ``_rdbpot_shift`` from the signed ``shift`` alone (the amount is e = max(-shift, 0) in
    [0, 32]): the shifter's amount min(e, 31) (x >> 31 = x >> 32 for an int32: the sign), e != 0,
    e - 1 and the mask 2**(e-1) - 1.

    For shift < 0, e - 1 = -shift - 1 = ~shift (5 bits): no subtractor; the mask is a
    thermometer of it (``ort_dp.thermometer``, a couple of LUT levels per bit) instead of a
    shifter and a 31-bit decrement chain (issue 6: ``phi_mk`` 11.3 ns). For shift >= 0
    (e = 0) ``em1`` and ``mk`` are don't-cares: ``enz`` = 0 suppresses the rounding.
    """
    neg = shift[-1]
    em1 = (~shift)[:5]
    e = Mux(neg, (-shift)[:len(shift)], 0)[:len(shift)]                 # 6 bits, a 3-cell chain
    e5 = Mux(e[-1], (1 << 5) - 1, e[:5])
    return {"e": e5, "enz": neg, "em1": em1, "mk": ort_dp.thermometer(em1, _W32 - 1)}


#: The RDBPOT shift is split at this bit of its amount: stage "rshift" shifts by the
#: multiple of 2**_FINE_BITS, stage "rfine" by the rest (each a few LUT levels).
_FINE_BITS = 2


def _rdbpot_shift(x, pr, coarse_copies=()) -> dict:
    """Stage "rshift": RoundingDivideByPOT(x, e) = q + inc, x / 2**e rounded half away from zero.

    golden: (x >> e) + (rem > threshold) with rem = x mod 2**e, threshold =
    2**(e-1) - 1 + (x < 0). For e >= 1 that is: bit e-1 of x set, and for
    negative x also some bit below it (rem > 2**(e-1)); e = 0 never rounds. The
    same holds for e = 32 (bit 31 is the sign: x >= 0 stays, x < 0 gives -1 + 1
    = 0 unless x = INT32_MIN). Here: the coarse part of the shift (by e rounded
    down to a multiple of 2**_FINE_BITS) beside the bit select and the masked OR,
    whose terms are registered apart: the half bit x[e - 1] split like the shift (the
    2**_FINE_BITS bits of x from (e - 1) rounded down, an 8:1 mux each, and the rest of e - 1)
    and the masked OR as _STK_PARTS partial ORs (two LUT levels; issue 6: ``rshift_rnd``, a
    32:1 bit select, 10.5 ns on the 30 x 4). ``_rdbpot_fine`` finishes the shift and the
    rounding bit, the increment is the stage after. ``coarse_copies``: registered copies of
    e[_FINE_BITS:] (``_kept_copies``), each selecting an equal slice of the coarse shift's bits.
    """
    e, em1 = pr["e"], pr["em1"]
    qc = _coarse_shift(x, e[_FINE_BITS:], coarse_copies, left=False)
    hc = (x >> Cat(Const(0, _FINE_BITS), em1[_FINE_BITS:]))[:1 << _FINE_BITS]
    masked = x[:_W32 - 1] & pr["mk"]
    part = -(-len(masked) // _STK_PARTS)
    stk = Cat(*(masked[i:i + part].any() for i in range(0, len(masked), part)))
    return {"qc": (signed(_W32), qc.as_signed()), "ef": (unsigned(_FINE_BITS), e[:_FINE_BITS]),
            "hc": (unsigned(1 << _FINE_BITS), hc), "hf": (unsigned(_FINE_BITS), em1[:_FINE_BITS]),
            "enz": (unsigned(1), pr["enz"]), "pos": (unsigned(1), ~x[-1]), "stk": (stk.shape(), stk)}


#: The RDBPOT coarse shift's amount is registered in this many copies (``_kept_copies``).
_SHIFT_COPIES = 3
#: The RDBPOT sticky OR (31 masked bits) is registered as this many partial ORs.
_STK_PARTS = 4


def _rdbpot_fine(r) -> dict:
    """Stage "rfine": the rest of the shift (by e mod 2**_FINE_BITS: one 4:1 mux per bit) and the
    rounding bit from ``_rdbpot_shift``'s terms: q = x >> e, inc = (e != 0) & x[e - 1] &
    (x >= 0 | some masked bit below)."""
    half = r["hc"].bit_select(r["hf"], 1)
    return {"q": (signed(_W32), r["qc"] >> r["ef"]),
            "inc": (unsigned(1), r["enz"] & half & (r["pos"] | r["stk"].any()))}


def _regs_of(d: dict) -> dict:
    """{name: (shape, value)} of a dict of Amaranth values."""
    return {k: (v.shape(), v) for k, v in d.items()}


#: The ort partial ORs (``_zero_parts``, the integer rounding's sticky bit) cover this many bits each.
_OR_PART = 8


def _any_parts(x):
    """OR of each _OR_PART-bit part of ``x`` (two LUT levels each), one bit per part."""
    return Cat(*(x[i:i + _OR_PART].any() for i in range(0, len(x), _OR_PART)))


def _msb_bytes(a) -> dict:
    """Stage "lsat" (ort): the first half of ``ort_dp.leading_one`` of the unsigned(32) ``a``:
    ``byte_g`` the index of its most significant non-zero byte (0 if none) and ``byte_f`` the msb
    index within each byte (``ort_dp.msb_index``, 3 bits each), a few LUT levels each (issue 6:
    the 32-bit priority tree in one stage and the 32:1 normalising shift by its result in the
    next, ``ort_norm_trunc`` 9.0 ns on the 30 x 4)."""
    nz = Cat(*(a[i:i + 8].any() for i in range(0, len(a), 8)))
    return {"byte_g": ort_dp.msb_index(nz)[1],
            "byte_f": Cat(*(ort_dp.msb_index(a[i:i + 8])[1] for i in range(0, len(a), 8)))}


#: Bits of the coarsely normalised |t| that ``_norm_fine`` selects from: 24 + 7.
_NORM_Y_WIDTH = ort_dp.F32_SIG_BITS + 7


def _norm_coarse(a, g, f, g_copies=()) -> dict:
    """Stage "ort_msb" (ort): ``msb`` = 8 * g + f[g] (= ``ort_dp.leading_one(a)``), the coarse part of
    ``ort_dp.normalise``'s shift, ``y`` = (a * 2**23) >> 8g (a 4:1 mux per bit; ``g_copies``, registered
    copies of g, each select a slice of it), and ``alo`` = a[:9], all the rounding needs."""
    x = Cat(Const(0, ort_dp.F32_FRAC_BITS), a)
    copies = list(g_copies) or [g]
    part = -(-_NORM_Y_WIDTH // len(copies))
    y = Cat(*((x >> Cat(Const(0, 3), c))[j * part:(j + 1) * part] for j, c in enumerate(copies)))
    # f's 3-bit words through an Array mux (a variable word_select would be a $mul by 3)
    msb = Cat(Array(f.word_select(i, 3) for i in range(len(f) // 3))[g], g)
    return {"msb": (unsigned(ort_dp.MSB_WIDTH), msb), "y": (unsigned(_NORM_Y_WIDTH), y[:_NORM_Y_WIDTH]),
            "alo": (unsigned(9), a[:9])}


def _norm_fine(r, f_copies=()) -> dict:
    """Stage "ort_norm" (ort): ``ort_dp.normalise`` from ``_norm_coarse``'s registers: ``trunc`` = the
    24 bits of y from bit msb mod 8 (an 8:1 mux per bit), the RNE increment (only for msb >= 24, a
    right shift by msb - 23 in 1..8: guard a[msb - 24], sticky a[0 : msb - 24], lsb a[msb - 23]) and
    ``epart`` = msb + efield - 150. ``f_copies``: registered copies of msb mod 8, each selecting
    an equal slice of ``trunc``."""
    msb, low, alo = r["msb"], r["alo"][:8], r["alo"]
    f = msb[:3]
    big = msb[3] & msb[4]
    sticky = (low & ort_dp.thermometer(f, 8)).any()
    inc = big & low.bit_select(f, 1) & (sticky | alo[1:].bit_select(f, 1))
    epart = (msb + r["efield"] - ort_dp.F32_EXP_OFFSET)[:ort_dp.E_WIDTH].as_signed()
    sig = unsigned(ort_dp.F32_SIG_BITS)
    copies = list(f_copies) or [f]
    part = -(-ort_dp.F32_SIG_BITS // len(copies))
    trunc = Cat(*(r["y"].bit_select(c, ort_dp.F32_SIG_BITS)[j * part:(j + 1) * part] for j, c in enumerate(copies)))
    return {"trunc": (sig, trunc[:ort_dp.F32_SIG_BITS]), "inc": (unsigned(1), inc),
            "epart": (signed(ort_dp.E_WIDTH), epart)}


#: ``ort_dp.to_integer_shift``'s padded operand pm[13:] (4 zero bits above): its width.
_ORT_HI_WIDTH = ort_dp.SIG_WIDTH - (ort_dp._SHIFT_LO - 1) + 4


def _ort_int_shift(pm, d, dmask) -> dict:
    """Stage "prelu_shl" (ort): ``ort_dp.to_integer_shift`` with its increment's terms registered
    apart: ``mq`` = floor(pm / 2**(d + 14)), the guard bit ``mg`` and the sticky bit as partial
    ORs ``mstk``, from ``dmask`` = 2**d - 1 (registered a stage earlier, ``ort_dp.thermometer``);
    ``_ort_int_inc`` combines them a stage later (issue 6: ``prelu_shl_minc``, a bit select, a
    masked OR and the RNE combination in one stage, 8.2 ns on the 30 x 4)."""
    lo = ort_dp._SHIFT_LO
    hi = Cat(pm[lo - 1:], Const(0, 4))
    q = (hi[1:] >> d)[:ort_dp.MAG_WIDTH]
    stk = Cat(pm[:lo - 1].any(), _any_parts(hi & dmask))
    return {"mq": (unsigned(ort_dp.MAG_WIDTH), q), "mg": (unsigned(1), hi.bit_select(d, 1)),
            "mstk": (stk.shape(), stk)}


def _ort_int_inc(r):
    """Stage "prelu_lsat" (ort): the integer rounding's RNE increment from ``_ort_int_shift``'s registers."""
    return r["mg"] & (r["mstk"].any() | r["mq"][0])


#: The only lane registers with a reset: the pipeline's valid bit and the tile's last flag
#: travelling with it. Every other stage register is reset-less (issue 6: the accelerator's
#: reset fanned out to every lane flip-flop's LSR, ~2 300 late endpoints per lane); that is
#: safe because each holds data of the row in its stage and is read (by the next stage,
#: and at the ports as ``out_data``) only as that row's data, i.e. under a valid bit that
#: the reset clears; after a reset each is written before a valid row reaches it.
_RESET_REGS = ("valid", "last")


def _stage_regs(m, en, name, fields):
    """One pipeline register stage; ``fields`` maps a name to (shape, next value)."""
    regs = {}
    for key, (shape, value) in fields.items():
        reg = Signal(shape, name=f"{name}_{key}", reset_less=key not in _RESET_REGS)
        with m.If(en):
            m.d.sync += reg.eq(value)
        regs[key] = reg
    return regs


def _kept_copies(m, platform, en, name, d, n):
    """``n`` copies ``{name}{j}`` of the reset-less stage register ``d`` (``hw.buffers.kept_copy``:
    kept apart through yosys' opt_merge on the ECP5), each driving a share of its loads (issue 6:
    a register selecting 30+ mux bits was a late net by its fanout alone)."""
    return [kept_copy(m, platform, d, en, f"{name}{j}") for j in range(n)]


class RequantLane(wiring.Component):
    """The per-channel post-processing pipeline (``REQUANT_LATENCY`` register stages).

    Ports (A = ``cfg.acc_width``):

    * ``en``        In(1)          global enable: every pipeline register updates only when 1
    * ``acc``       In(signed(A))  the channel's accumulator at the lane input
    * ``valid``     In(1)          ``acc`` holds a row
    * ``last``      In(1)          that row is its tile's last (carried to ``out_last``)
    * ``params``    In(lane_params_layout(cfg))  bias, mult, shift, zp, act_min,
                    act_max, alpha_mult, alpha_shift, prelu, mode, scale_f32:
                    sampled with ``acc`` (``mode`` selects the requantization per row)
    * ``lut_en``    In(1)          sampled with ``acc``: output through the table
    * ``lut``       In(stream.Signature(lut_layout()))  table write port, always
                    ready, not gated by ``en``; a write on cycle t is read from
                    t + 1 + LUT_WRITE_DELAY (registered once; see the lut stage)
    * ``out_data``  Out(8)         the output code (value & 0xFF, or its LUT entry)
    * ``out_valid`` Out(1)         ``valid`` delayed by REQUANT_LATENCY enabled cycles
    * ``out_last``  Out(1)         ``last`` delayed likewise

    ``ort=False`` elaborates the tflite-only lane (``mode`` and ``scale_f32``
    ignored; the ort-only stages remain as plain delays, so the latency is the
    same): it exists to measure the cost of the ort path
    (``python -m hw.ort_requant --synth``); the array uses the default.
    """

    def __init__(self, cfg: ArrayConfig, *, ort: bool = True):
        self.cfg = config_for(self, cfg)
        if not isinstance(ort, bool):
            self._MustUse__used = True
            raise ValueError(f"ort must be a bool, got {ort!r}")
        self.ort = ort
        super().__init__({
            "en": In(1),
            "acc": In(signed(cfg.acc_width)),
            "valid": In(1),
            "last": In(1),
            "params": In(lane_params_layout(cfg)),
            "lut_en": In(1),
            "lut": In(stream.Signature(lut_layout())),
            "out_data": Out(CODE_WIDTH),
            "out_valid": Out(1),
            "out_last": Out(1),
        })

    def elaborate(self, platform):
        check_hw_config(self.cfg)
        _check_lane_widths(self.cfg)
        m = Module()
        en, p = self.en, self.params
        i32 = signed(_W32)
        u1 = unsigned(1)
        u8 = unsigned(CODE_WIDTH)
        ort = self.ort
        stages = {}
        # The values visible to the next stage: its inputs' registers (the lane ports for "bias").
        prev = {"valid": self.valid, "last": self.last, "shift": p.shift, "zp": p.zp, "act_min": p.act_min,
                "act_max": p.act_max, "alpha_mult": p.alpha_mult, "alpha_shift": p.alpha_shift,
                "prelu": p.prelu, "lut_en": self.lut_en}
        if ort:
            prev["mode"] = p.mode

        def stage(name, fields, keep=(), ort_fields=None, registered=None):
            """Register ``fields`` (and ``ort_fields`` in the ort lane) plus the ``keep`` values of the
            previous stage (flags and the parameters later stages still need: the params FIFO pops
            as soon as a tile's last row has entered the lane). ``registered``: values that already
            are this stage's registers (loaded under ``en``: ``_partial_products``)."""
            nonlocal prev
            regs = {k: (prev[k].shape(), prev[k]) for k in keep if k in prev}
            regs.update(fields)
            if ort and ort_fields:
                regs.update(ort_fields)
            prev = stages[name] = {**_stage_regs(m, en, name, regs), **(registered or {})}
            return prev

        flags = ("valid", "last", "mode")
        late = ("zp", "act_min", "act_max", "lut_en")
        alpha = ("prelu", "alpha_mult", "alpha_shift")

        def mode_ort(s):
            return (s["mode"] == MODE_ORT) if ort else Const(0, 1)

        # bias: the exact sum (acc_width + bias_width fit in one more bit), saturated later;
        # the left-shift limits from `shift`. ort: the scale's significand and exponent field
        # (the significand takes the place of `mult` one stage later: no mux on the params port).
        # params: the row and the parameters it uses, registered as they enter the lane (timing,
        # issue 6: the params FIFO's head is one register for every lane, and its routes to the
        # lanes plus the bias stage's carry chain and shift limits were 8.3-10.9 ns on the 30 x 4
        # top, `bias_lo`, `lshift_gtp`). The params FIFO still pops as the tile's last row enters
        # the lane: this stage takes the head together with that row.
        s = stage("params", {"acc": (self.acc.shape(), self.acc), "bias": (p.bias.shape(), p.bias),
                             "mult": (unsigned(MULT_WIDTH), p.mult)},
                  keep=(*flags, "shift", *alpha, *late),
                  ort_fields={"scale_f32": (p.scale_f32.shape(), p.scale_f32)})
        # the shift's register once more per third of the bias stage's bound (issue 6: with one
        # register driving its ~60 LUTs, `bias_lo` was 8.1-8.6 ns in three of five seeds of the
        # 30 x 4 top in session 11)
        lim_copies = _kept_copies(m, platform, en, "params_shift_c", p.shift, _SHIFT_COPIES)
        mant, efield = ort_dp.scale_fields(s["scale_f32"] if ort else p.scale_f32)
        total = s["acc"] + s["bias"]
        lim = _shl_limits(s["shift"], lim_copies)
        xc_copies = _kept_copies(m, platform, en, "bias_lc", lim["left"][_FINE_BITS:], _SHIFT_COPIES)
        s = stage("bias", {"s": (total.shape(), total), **_regs_of(lim),
                           "mult": (unsigned(MULT_WIDTH), s["mult"])},
                  keep=(*flags, "shift", *alpha, *late),
                  ort_fields={"mant": (mant.shape(), mant), "efield": (efield.shape(), efield)})
        # lshift: tflite: the two overflow tests of satshl32(sat32(s), max(shift, 0)) beside
        # its barrel shifter (sat32 folded in); the select is the next stage. ort: |sat32(s)|
        # (the float32 conversion's input) in its own register (no mode mux behind the chain);
        # t = 0 as partial ORs (issue 6: a 33-input NOR in one stage, `lshift_tzero` 8.3 ns).
        # Both: the first multiplier's second operand (ort: the scale's significand).
        ort_regs = {}
        mult = s["mult"]
        if ort:
            av = ort_dp.abs_value(m, s["s"], "ort_abs")
            ort_regs = {"a": (unsigned(ort_dp.ABS_WIDTH), av["a"]), "neg": (u1, av["neg"]),
                        "tzp": (unsigned(-(-len(s["s"]) // _OR_PART)), _any_parts(s["s"]))}
            mult = Mux(mode_ort(s), s["mant"], mult)
        s = stage("lshift", {**_satshl_cmp(s["s"], s, xc_copies), "mult": (unsigned(MULT_WIDTH), mult)},
                  keep=(*flags, "shift", "efield", *alpha, *late), ort_fields=ort_regs)
        # lsat: tflite: the rest of the shift, the overflow flags from the compare halves. ort: the
        # msb of |t| as its byte and the msb within each byte (``_msb_bytes``), t = 0.
        ort_regs, g_copies = {}, []
        if ort:
            mb = _msb_bytes(s["a"])
            ort_regs = {**_regs_of(mb), "tzero": (u1, ~s["tzp"].any())}
            g_copies = _kept_copies(m, platform, en, "lsat_byte_gc", mb["byte_g"], _SHIFT_COPIES)
        s = stage("lsat", _satshl_fine(s),
                  keep=(*flags, "a", "shift", "mult", "efield", "neg", *alpha, *late), ort_fields=ort_regs)
        # ort_msb: tflite: the saturating select. ort: the msb index of |t| and |t| shifted by its
        # byte (``_norm_coarse``).
        ort_regs, f_copies = {}, []
        if ort:
            ort_regs = _norm_coarse(s["a"], s["byte_g"], s["byte_f"], g_copies)
            f_copies = _kept_copies(m, platform, en, "ort_msb_fc", ort_regs["msb"][1][:3], 2)
        s = stage("ort_msb", {"x": (i32, _satshl_sel(s))},
                  keep=(*flags, "shift", "mult", "efield", "neg", "tzero", *alpha, *late), ort_fields=ort_regs)
        # ort_norm (ort only): the 24 bits from the msb down and their rounding increment, in their
        # own registers (tflite: x is delayed).
        ort_regs = _norm_fine(s, f_copies) if ort else {}
        s = stage("ort_norm", {}, keep=(*flags, "x", "shift", "mult", "neg", "tzero", *alpha, *late),
                  ort_fields=ort_regs)
        # operand: the first multiplier's operand. ort: the rounded significand ma.
        a = s["x"]
        if ort:
            a = Mux(mode_ort(s), ort_dp.round_significand(s["trunc"], s["inc"]), s["x"])
        s = stage("operand", {"a": (i32, a)},
                  keep=(*flags, "shift", "mult", "neg", "tzero", "epart", *alpha, *late))

        # mul .. phi: SRDHM's 64-bit nudged product (ort: the exact 48-bit product, no nudge).
        keep1 = (*flags, "shift", "neg", "tzero", "epart", *alpha, *late)
        # mul_in: the multipliers' own input registers, loaded from the operand stage's (timing,
        # issue 6: hw.ecp5_mult input_registers; with the operand logic straight into them the
        # route from the lane's fabric to its MULT18X18D was 7.4 ns, and from a fabric operand
        # register through the multiplier array 10.7 ns).
        # mul_fwd / mul_back: the operands once more on their way to the multipliers and the
        # products once more on their way back (issue 6: with 155 of 156 MULT18X18D in use a lane's
        # multipliers land wherever one is free, up to 80 tiles from the lane's fabric in session
        # 11: operand register -> multiplier input 7.9 ns, product -> fabric register 7.6 ns).
        products = _partial_products(m, platform, en, "mul", s["a"], s["mult"])
        s = stage("mul_fwd", {}, keep=keep1)
        s = stage("mul_in", {}, keep=keep1)
        s = stage("mul", {}, keep=keep1, registered=products)
        # mul_out: the products copied into fabric registers, so that the sums' carry chains start
        # from flip-flops placed beside them (issue 6: a MULT18X18D output -> routing -> the psum
        # chains was 8.4-9.5 ns on the 30 x 4 top, `psum_midh`; the copies take that route alone).
        s = stage("mul_out", _regs_of(products), keep=keep1)
        s = stage("mul_back", {}, keep=(*keep1, *products))
        s = stage("psum", _product_sum(s, ~mode_ort(s)), keep=keep1)
        s = stage("plo", _product_low(s), keep=keep1,
                  ort_fields={"s17": (u1, s["xl"][:_SPLIT].any())} if ort else None)
        prod = _product_high(s)
        ort_regs = {"s22": (u1, s["s17"] | s["lo"][:_PROD_LO - _SPLIT].any())} if ort else {}
        prep = _rdbpot_prep(s["shift"])
        s = stage("phi", {"prod": (prod.shape(), prod), **_regs_of(prep)},
                  keep=(*flags, "neg", "tzero", "epart", *alpha, *late), ort_fields=ort_regs)
        e_copies = _kept_copies(m, platform, en, "phi_ec", prep["e"][_FINE_BITS:], _SHIFT_COPIES)
        # rshift / rround: RoundingDivideByPOT by max(-shift, 0). ort: the product rounded to
        # 24 significant bits (RNE) and its exponent; then the integer rounding's amounts.
        ort_regs = {}
        if ort:
            rp = ort_dp.round_product_select(m, s["prod"][:ort_dp.PROD_HI_WIDTH], s["s22"], s["epart"], "ort_rp")
            ort_regs = {"pq": (rp["q"].shape(), rp["q"]), "pinc": (u1, rp["inc"]), "pe": (rp["e"].shape(), rp["e"])}
        s = stage("rshift", _rdbpot_shift(_srdhm_word(s["prod"]), s, e_copies),
                  keep=(*flags, "neg", "tzero", *alpha, *late),
                  ort_fields=ort_regs)
        s = stage("rfine", _rdbpot_fine(s), keep=(*flags, "neg", "tzero", *alpha, *late, "pq", "pinc", "pe"))
        ort_regs = {}
        if ort:
            pm = ort_dp.round_significand(s["pq"], s["pinc"])
            ip = ort_dp.to_integer_prep(m, s["pe"], "ort_ip")
            ort_regs = {"pm": (pm.shape(), pm), **_regs_of(ip),
                        "dmask": (unsigned(_ORT_HI_WIDTH), ort_dp.thermometer(ip["d"], _ORT_HI_WIDTH))}
        lim = _shl_limits(s["alpha_shift"])
        vc_copies = _kept_copies(m, platform, en, "rround_lc", lim["left"][_FINE_BITS:], _SHIFT_COPIES)
        s = stage("rround", {"v": (i32, (s["q"] + s["inc"])[:_W32].as_signed()), **_regs_of(lim)},
                  keep=(*flags, "neg", "tzero", *alpha, *late), ort_fields=ort_regs)
        # prelu_shl / prelu_sat: negative values with prelu: satshl32(v, max(alpha_shift, 0)) as the
        # second multiplier's operand (overflow tests beside the shifter, then the select). ort:
        # the shift of the integer rounding and its increment's terms, then the increment.
        ort_regs = {}
        if ort:
            ort_regs = {**_ort_int_shift(s["pm"], s["d"], s["dmask"]),
                        "ozero": (u1, s["tzero"] | s["far"]), "sat": (u1, s["sat"])}
        s = stage("prelu_shl", {**_satshl_cmp(s["v"], s, vc_copies), "mult": (unsigned(MULT_WIDTH), s["alpha_mult"]),
                                "neg_alpha": (u1, s["prelu"] & s["v"][-1])},
                  keep=(*flags, "v", "neg", "alpha_shift", *late), ort_fields=ort_regs)
        s = stage("prelu_lsat", _satshl_fine(s),
                  keep=(*flags, "v", "neg", "mult", "neg_alpha", "alpha_shift", *late, "mq", "ozero", "sat"),
                  ort_fields={"minc": (u1, _ort_int_inc(s))} if ort else None)
        s = stage("prelu_sat", {"a": (i32, _satshl_sel(s))},
                  keep=(*flags, "v", "neg", "mult", "neg_alpha", "alpha_shift", *late, "mq", "minc", "ozero", "sat"))
        # prelu_mul_fwd, prelu_mul_in: the operands once more (as mul_fwd), the alpha multipliers'
        # input registers (as mul_in)
        keep_in = (*flags, "v", "neg", "neg_alpha", "alpha_shift", *late, "mq", "minc", "ozero", "sat")
        products = _partial_products(m, platform, en, "prelu_mul", s["a"], s["mult"])
        s = stage("prelu_mul_fwd", {}, keep=keep_in)
        s = stage("prelu_mul_in", {}, keep=keep_in)
        # prelu_mul .. prelu_phi: the alpha SRDHM product. ort: |f| rounded to an integer
        # (saturated), then its sign.
        keep2 = (*flags, "v", "neg_alpha", "alpha_shift", "vo", *late)
        ort_regs = {}
        if ort:
            mag = ort_dp.to_integer_round(m, s["mq"], s["minc"], s["sat"], s["ozero"], "ort_ir")
            ort_regs = {"mag": (mag.shape(), mag)}
        s = stage("prelu_mul", {}, keep=(*keep2, "neg"), ort_fields=ort_regs,
                  registered=products)
        s = stage("prelu_mul_out", _regs_of(products), keep=(*keep2, "neg", "mag"))   # as mul_out
        s = stage("prelu_mul_back", {}, keep=(*keep2, "neg", "mag", *products))      # as mul_back
        ort_regs = {"vo": (signed(ort_dp.V_WIDTH), ort_dp.apply_sign(s["mag"], s["neg"]))} if ort else {}
        s = stage("prelu_psum", _product_sum(s, Const(1, 1)), keep=keep2, ort_fields=ort_regs)
        s = stage("prelu_plo", _product_low(s), keep=keep2)
        prod = _product_high(s)
        prep = _rdbpot_prep(s["alpha_shift"])
        s = stage("prelu_phi", {"prod": (prod.shape(), prod), **_regs_of(prep)}, keep=keep2)
        e_copies = _kept_copies(m, platform, en, "prelu_phi_ec", prep["e"][_FINE_BITS:], _SHIFT_COPIES)
        s = stage("prelu_rshift", _rdbpot_shift(_srdhm_word(s["prod"]), s, e_copies), keep=keep2)
        # prelu_rfine: the rest of the alpha shift; prep: the clamp bounds relative to the zero point.
        zp, lo, hi = s["zp"], s["act_min"], s["act_max"]
        bounds = {"lo": lo - zp, "hi": hi - zp, "qmin": Mux(lo < hi, lo, hi)[:CODE_WIDTH], "qhi": hi[:CODE_WIDTH],
                  "zp8": zp[:CODE_WIDTH]}
        s = stage("prelu_rfine", {**_rdbpot_fine(s), **_regs_of(bounds)},
                  keep=("valid", "last", "mode", "v", "neg_alpha", "vo", "lut_en"))
        # prelu_rround: the alpha RDBPOT's increment and the value select (ort: the mode
        # selects the ort value).
        alpha_d = (s["q"] + s["inc"])[:_W32].as_signed()
        v = Mux(s["neg_alpha"], alpha_d, s["v"])
        if ort:
            v = Mux(mode_ort(s), s["vo"], v)
        s = stage("prelu_rround", {"v": (i32, v)}, keep=("valid", "last", "lut_en", "lo", "hi", "qmin", "qhi", "zp8"))
        # clamp / clip: clamp(v + zp, act_min, act_max) in np.clip's order (max with act_min, then
        # min with act_max, also for act_min > act_max), as two comparisons of v against the
        # bounds minus zp beside an 8-bit add (registered), then the select of the 8-bit code.
        # Shared by both modes: clamp(v, act_min - zp, act_max - zp) + zp = clamp(v + zp, act_min, act_max).
        # The 32-bit compares are registered as their <= 16-bit halves (``_split_cmp``: issue 6,
        # `clamp_gt` 7.6 ns on a 4 x 2) and combined in the select.
        s = stage("clamp", {**_split_lt_gt(s["v"], s["lo"], s["hi"]),
                            "sum": (u8, (s["v"][:CODE_WIDTH] + s["zp8"])[:CODE_WIDTH])},
                  keep=("valid", "last", "lut_en", "qmin", "qhi"))
        below, above = _split_flags(s)
        clipped = Mux(below, s["qmin"], Mux(above, s["qhi"], s["sum"]))
        s = stage("clip", {"v": (u8, clipped)}, keep=("valid", "last", "lut_en"))
        nib = _LUT_ROWS.bit_length() - 1
        n_sel, n_grp = 1 << _LUT_SEL_BITS, 1 << (CODE_WIDTH - nib - _LUT_SEL_BITS)
        # One copy of the code's bits [0, 4 + _LUT_SEL_BITS) per table part below: its row address
        # and word select (issue 6: `clip_v` drove all 32 LUT-RAM cells' read addresses and the
        # 32 word muxes, `lut_rd_cand` 8.6 ns on the 30 x 4).
        rd_copies = _kept_copies(m, platform, en, "clip_ra", clipped[:nib + _LUT_SEL_BITS], n_grp)

        # lut_rd / lut: the table is one LUT-RAM row of _LUT_WORDS entries per low address nibble
        # (entry a is word a >> 4 of row a & 15, each word written alone: byte write enables),
        # stored as n_grp memories of n_sel words, each read at its own copy of the address.
        # lut_rd reads the row at the code's low nibble and registers the 4 words its bits
        # [4, 6) select (LUT-RAM read + a 4:1 mux); lut selects one by bits [6, 8) (issue 6: the
        # 256-entry read, a 16:1 mux and the lut_en select in one stage, `out__payload` 10.5 ns).
        # The table is written by the `lut` stream regardless of `en`, through one register
        # (issue 6: the write came combinationally from the decoder and drove the 32 LUT-RAM
        # cells' write enables, `lut_mem` WRE 12.0 ns). A write on cycle t is in the table from
        # t + 1 + LUT_WRITE_DELAY (asynchronous read port, read in lut_rd). Nothing can read it earlier:
        # the core's contract (docs/array.md, golden.array_model) forbids a write while a
        # lut_en tile is in flight, from the cycle after the one accepting its last beat; a
        # tile accepted on or after the write reaches lut_rd at least
        # cfg.array_latency + REQUANT_STAGES.index("lut_rd") >= 2 cycles later. In the accelerator the
        # decoder (hw/decoder.py) writes the table only in WRITE of WRITE_LUT, entered from
        # WAIT once the sequencer's `jobs` = 0 (a job retires after its last row left the
        # lanes, so the lanes are empty) and no RUN can be queued before the decoder is back
        # in IDLE and has taken the next command through CHECK and DECIDE, and a queued job's
        # rows reach lut_rd REQUANT_STAGES.index("lut_rd") cycles after entering the lane. The tightest
        # case (a write 1 + LUT_WRITE_DELAY cycles before the read) is
        # tests/test_hw_requant_lane.py::test_lane_lut_write_to_read_distance; the top tests
        # (tests/test_hw_top_amaranth.py, tests/test_rtl_top.py) run lut_en jobs after WRITE_LUT.
        addr = self.lut.payload.addr
        # Registered one-hot word enables (reset: no write after a reset): straight from flip-flops
        # to the LUT-RAM write enables. Every lane registers the same write, so on the ECP5 these
        # are copies yosys keeps apart (``enable_copy``, ``kept_copy``; issue 6: merged, one set of
        # write address and data registers, shared with the act buffer's write data register,
        # drove all four lanes' tables, fanout 68-128 across the die).
        we_d = Cat(*(self.lut.valid & (addr[nib:] == j) for j in range(_LUT_WORDS)))
        lut_we = Cat(*(enable_copy(m, platform, we_d[j], f"lut_we{j}") for j in range(_LUT_WORDS)))
        lut_wa = kept_copy(m, platform, addr[:nib], Const(1, 1), "lut_wa")
        lut_wd = kept_copy(m, platform, self.lut.payload.data, Const(1, 1), "lut_wd")
        m.d.comb += self.lut.ready.eq(1)
        # The table in n_grp parts (part g: words g * n_sel .. g * n_sel + n_sel - 1 of every row),
        # each read at its own address copy; word g * n_sel + sel of the row, for every g. The words
        # are indexed through Array muxes (a variable word_select would be a $mul by the word width).
        cand = []
        for g, ra in enumerate(rd_copies):
            m.submodules[f"lut_mem{g}"] = mem = memory.Memory(shape=unsigned(CODE_WIDTH * n_sel), depth=_LUT_ROWS,
                                                              init=[])
            wp = mem.write_port(granularity=CODE_WIDTH)
            rp = mem.read_port(domain="comb")
            m.d.comb += [wp.addr.eq(lut_wa), wp.data.eq(Cat(*([lut_wd] * n_sel))),
                         wp.en.eq(lut_we[g * n_sel:(g + 1) * n_sel]), rp.addr.eq(ra[:nib])]
            cand.append(Array(rp.data.word_select(i, CODE_WIDTH) for i in range(n_sel))[ra[nib:]])
        cand = Cat(*cand)
        s = stage("lut_rd", {"cand": (cand.shape(), cand), "hs": (unsigned(CODE_WIDTH - nib - _LUT_SEL_BITS),
                                                                  s["v"][nib + _LUT_SEL_BITS:])},
                  keep=("valid", "last", "lut_en", "v"))
        cand_words = Array(s["cand"].word_select(i, CODE_WIDTH) for i in range(len(s["cand"]) // CODE_WIDTH))
        s = stage("lut", {"v": (u8, Mux(s["lut_en"], cand_words[s["hs"]], s["v"]))},
                  keep=("valid", "last"))

        # Implemented stages, in order, must be exactly the configured ones:
        # a change to REQUANT_STAGES (and so REQUANT_LATENCY) must change this code.
        if tuple(stages) != REQUANT_STAGES:
            raise ValueError(f"RequantLane implements stages {tuple(stages)}, but golden.config."
                             f"REQUANT_STAGES is {REQUANT_STAGES}")
        m.d.comb += [self.out_data.eq(s["v"]), self.out_valid.eq(s["valid"]), self.out_last.eq(s["last"])]
        return m
