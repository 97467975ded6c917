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
shares its bias adder, its first multiplier, the clamp and the LUT:

==========  ====================================  ======================================
stage       tflite                                ort (mode = 1)
==========  ====================================  ======================================
bias        t = sat32(acc + bias)                 same t; scale significand muxed into
                                                  the ``mult`` register, exponent field
lshift      satshl32(t, max(shift, 0))            |t| normalised to 24 bits, RNE (the
                                                  int32 -> float32 conversion), muxed
                                                  into the same multiplier operand
srdhm       a * mult + 2**30, high word           the same multiplier: exact 24 x 24
                                                  product (no nudge), kept whole
rdbpot      rounding right shift                  product rounded to 24 bits (RNE),
                                                  exponent
prelu_mul   alpha SRDHM (prelu, v < 0)            to an integer (RNE), saturated at 2**10
prelu_div   alpha RDBPOT                          sign; the mode selects the value
clamp       + zp, clamp to [act_min, act_max]     shared
lut         optional table                        shared
==========  ====================================  ======================================

Every representable parameter is handled exactly, not only the documented
ranges: left shifts up to 31 (``shift`` is signed(6)), right shifts up to 32;
in ort mode any act_min/act_max/zp of their signed(9) fields and any 32-bit
``scale_f32`` (sign ignored; see ``hw.ort_requant`` for the non-finite bits).
"""
from __future__ import annotations

from amaranth import Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden._check import INT8_MIN, INT32_MAX, INT32_MIN, UINT8_MAX, UINT8_MIN
from golden.array_model import MODE_ORT, lane_field_shapes
from golden.config import REQUANT_STAGES, ArrayConfig
from golden.requant import MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT

from . import ort_requant as ort_dp
from .pe import check_hw_config, config_for, saturate, signed_width

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

def _left_amount(shift):
    """max(shift, 0) as an unsigned amount."""
    return Mux(shift[-1], 0, shift[:len(shift) - 1])


def _right_amount(shift):
    """max(-shift, 0) as an unsigned amount (up to 2**(len-1), one bit wider)."""
    return Mux(shift[-1], -shift, 0)[:len(shift)]


def _satshl32(m, x, left, name):
    """golden.requant.saturating_left_shift: x * 2**left clamped to int32."""
    wide = Signal(signed(_W32 + (1 << len(left)) - 1), name=f"{name}_wide")
    m.d.comb += wide.eq(x << left)
    return saturate(wide, _W32)


#: SRDHM rounding nudge, 2**30: see ``_srdhm``.
_NUDGE = 1 << (_W32 - 2)


def _product(m, a, b, nudge, name):
    """a * b + nudge as a signed(64) signal (a int32, b unsigned(31), nudge 0 or _NUDGE)."""
    prod = Signal(signed(2 * _W32), name=f"{name}_prod")
    m.d.comb += prod.eq(a * b + nudge)
    return prod


def _high_word(prod):
    """The SRDHM result in a nudged product: bits [31, 63) as int32."""
    return prod[_W32 - 1:2 * _W32 - 1].as_signed()


def _srdhm(m, a, b, name):
    """SaturatingRoundingDoublingHighMul(a, b) for int32 a and b in [0, INT32_MAX].

    gemmlowp: trunc((a*b + nudge) / 2**31) with nudge = 2**30 if ab >= 0 else
    1 - 2**30. For ab < 0, trunc(x / 2**31) = floor((x + 2**31 - 1) / 2**31)
    and x + 2**31 - 1 = ab + 2**30, so both signs reduce to one floor
    (arithmetic shift): floor((ab + 2**30) / 2**31). That identity is the
    reason no sign-dependent nudge or truncation logic appears here.
    Saturation: the only overflowing case is a = b = INT32_MIN, and b is an
    unsigned(31) port (<= INT32_MAX), so it cannot occur; the result range is
    [INT32_MIN + 1, INT32_MAX - 1].
    """
    return _high_word(_product(m, a, b, _NUDGE, name))


def _rdbpot(m, x, e, name):
    """RoundingDivideByPOT(x, e): x / 2**e rounded half away from zero, e in [0, 32].

    mask = 2**e - 1, rem = x & mask, threshold = mask >> 1 (+1 if x < 0);
    result = (x >> e) + (rem > threshold). Widths are one bit over 32 so e = 32
    (shift = -32 is representable) is exact too.
    """
    wide = _W32 + 1
    mask = Signal(unsigned(wide), name=f"{name}_mask")
    xs = Signal(signed(wide), name=f"{name}_x")
    m.d.comb += [mask.eq((Const(1, 1) << e) - 1), xs.eq(x)]
    rem = xs.as_unsigned() & mask
    threshold = (mask >> 1) + x[-1]
    return ((x >> e) + (rem > threshold))[:_W32].as_signed()


def _stage_regs(m, en, name, fields):
    """One pipeline register stage; ``fields`` maps a name to (shape, next value)."""
    regs = {}
    for key, (shape, value) in fields.items():
        reg = Signal(shape, name=f"{name}_{key}")
        with m.If(en):
            m.d.sync += reg.eq(value)
        regs[key] = reg
    return regs


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
                    ready, not gated by ``en``; a write on cycle t is read from t + 1
    * ``out_data``  Out(8)         the output code (value & 0xFF, or its LUT entry)
    * ``out_valid`` Out(1)         ``valid`` delayed by REQUANT_LATENCY enabled cycles
    * ``out_last``  Out(1)         ``last`` delayed likewise

    ``ort=False`` elaborates the tflite-only lane (``mode`` and ``scale_f32``
    ignored): it exists to measure the cost of the ort path
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

        def carry(prev, *keys):
            """Forward parameters a later stage still needs."""
            return {k: (prev[k].shape(), prev[k]) for k in keys}

        stages = {}
        s = {"valid": self.valid, "last": self.last, "shift": p.shift, "mult": p.mult,
             "zp": p.zp, "act_min": p.act_min, "act_max": p.act_max, "alpha_mult": p.alpha_mult,
             "alpha_shift": p.alpha_shift, "prelu": p.prelu, "lut_en": self.lut_en}
        late = ("zp", "act_min", "act_max", "lut_en")
        alpha = ("prelu", "alpha_mult", "alpha_shift")
        flags = ("valid", "last") + (("mode",) if ort else ())
        ort_in = {}
        if ort:
            # ort: the scale's significand takes the place of `mult` (they share the
            # srdhm multiplier); its exponent field rides along for stage lshift.
            mant, efield = ort_dp.scale_fields(p.scale_f32)
            s["mode"] = p.mode
            s["mult"] = Mux(p.mode == MODE_ORT, mant, p.mult)
            ort_in = {"efield": (efield.shape(), efield)}

        # bias: the exact sum (acc_width + bias_width fit in one more bit), saturated once.
        s = stages["bias"] = _stage_regs(m, en, "bias", {
            "v": (i32, saturate(self.acc + p.bias, _W32)),
            "mult": (unsigned(MULT_WIDTH), s["mult"]),
            **carry(s, *flags, "shift", *alpha, *late), **ort_in})
        # lshift: tflite: saturating left shift by max(shift, 0). ort: |t| normalised to
        # a 24-bit significand (RNE), the multiplier operand in place of the shifted t.
        v = _satshl32(m, s["v"], _left_amount(s["shift"]), "lshift")
        ort_regs = {}
        if ort:
            o = ort_dp.normalise_abs(m, s["v"], s["efield"], "ort_lshift")
            v = Mux(s["mode"] == MODE_ORT, o["ma"], v)
            ort_regs = {"neg": (u1, o["neg"]), "zero": (u1, o["tzero"]),
                        "epart": (o["epart"].shape(), o["epart"])}
        s = stages["lshift"] = _stage_regs(m, en, "lshift", {
            "v": (i32, v), **carry(s, *flags, "shift", "mult", *alpha, *late), **ort_regs})
        # srdhm: 64-bit product with the nudge, high word. ort: the same multiplier gives
        # the exact product of the significands (no nudge); the register keeps it whole.
        if ort:
            prod = _product(m, s["v"], s["mult"], Mux(s["mode"] == MODE_ORT, 0, _NUDGE), "srdhm")
            first = {"prod": (prod.shape(), prod)}
            ort_regs = carry(s, "neg", "zero", "epart")
        else:
            first = {"v": (i32, _srdhm(m, s["v"], s["mult"], "srdhm"))}
        s = stages["srdhm"] = _stage_regs(m, en, "srdhm", {
            **first, **carry(s, *flags, "shift", *alpha, *late), **ort_regs})
        # rdbpot: rounding right shift by max(-shift, 0). ort: the product rounded to
        # 24 significant bits (RNE) and its exponent.
        v = s["v"] if not ort else _high_word(s["prod"])
        if ort:
            o = ort_dp.round_product(m, s["prod"][:ort_dp.PROD_WIDTH], s["epart"], "ort_rdbpot")
            ort_regs = {"pm": (o["pm"].shape(), o["pm"]), "e": (o["e"].shape(), o["e"]), **carry(s, "neg", "zero")}
        s = stages["rdbpot"] = _stage_regs(m, en, "rdbpot", {
            "v": (i32, _rdbpot(m, v, _right_amount(s["shift"]), "rdbpot")),
            **carry(s, *flags, *alpha, *late), **ort_regs})
        # prelu_mul: negative values with prelu: SRDHM(satshl32(v, alpha left), alpha_mult).
        # ort: |f| rounded half to even to an integer, saturated.
        if ort:
            mag = ort_dp.to_integer(m, s["pm"], s["e"], s["zero"], "ort_prelu_mul")
            ort_regs = {"mag": (mag.shape(), mag), **carry(s, "neg")}
        neg = s["prelu"] & s["v"][-1]
        alpha_v = _srdhm(m, _satshl32(m, s["v"], _left_amount(s["alpha_shift"]), "prelu_shl"),
                         s["alpha_mult"], "prelu_srdhm")
        s = stages["prelu_mul"] = _stage_regs(m, en, "prelu_mul", {
            "v": (i32, Mux(neg, alpha_v, s["v"])),
            "neg_alpha": (u1, neg),
            **carry(s, *flags, "alpha_shift", *late), **ort_regs})
        # prelu_div: the rounding right shift of the alpha multiplication.
        # ort: the signed result replaces the tflite value (the mode select).
        alpha_d = _rdbpot(m, s["v"], _right_amount(s["alpha_shift"]), "prelu_div")
        v = Mux(s["neg_alpha"], alpha_d, s["v"])
        if ort:
            v = Mux(s["mode"] == MODE_ORT, ort_dp.apply_sign(s["mag"], s["neg"]), v)
        s = stages["prelu_div"] = _stage_regs(m, en, "prelu_div", {
            "v": (i32, v), **carry(s, "valid", "last", *late)})
        # clamp: + zero point, then np.clip order (max with act_min, then min with
        # act_max); the register keeps only the 8-bit code. Shared by both modes:
        # clamp(v, act_min - zp, act_max - zp) + zp = clamp(v + zp, act_min, act_max).
        z = Signal(signed(_W32 + 1), name="clamp_z")
        zl = Signal(signed(_W32 + 1), name="clamp_zl")
        m.d.comb += [z.eq(s["v"] + s["zp"]), zl.eq(Mux(z < s["act_min"], s["act_min"], z))]
        q = Mux(zl > s["act_max"], s["act_max"], zl)
        s = stages["clamp"] = _stage_regs(m, en, "clamp", {
            "v": (u8, q[:CODE_WIDTH]), **carry(s, "valid", "last", "lut_en")})

        # lut: the table is written by the `lut` stream regardless of `en`
        # (a write on cycle t is read from t + 1: asynchronous read port).
        m.submodules.lut_mem = mem = memory.Memory(shape=u8, depth=LUT_DEPTH, init=[])
        wp = mem.write_port()
        rp = mem.read_port(domain="comb")
        m.d.comb += [
            self.lut.ready.eq(1),
            wp.addr.eq(self.lut.payload.addr), wp.data.eq(self.lut.payload.data), wp.en.eq(self.lut.valid),
            rp.addr.eq(s["v"]),
        ]
        s = stages["lut"] = _stage_regs(m, en, "lut", {
            "v": (u8, Mux(s["lut_en"], rp.data, s["v"])), **carry(s, "valid", "last")})

        # Implemented stages, in order, must be exactly the configured ones:
        # a change to REQUANT_STAGES (and so REQUANT_LATENCY) must change this code.
        if tuple(stages) != REQUANT_STAGES:
            raise ValueError(f"RequantLane implements stages {tuple(stages)}, but golden.config."
                             f"REQUANT_STAGES is {REQUANT_STAGES}")
        m.d.comb += [self.out_data.eq(s["v"]), self.out_valid.eq(s["valid"]), self.out_last.eq(s["last"])]
        return m
