"""hw.ecp5_mult.RegisteredMult: the behavioural register (exact vs NumPy, en gating), the ECP5
mapping (one MULT18X18D with its output register, CE0 = en, operands extended to 18 bits, no $mul),
its use by the PE ("none") and the lane, a yosys synth_ecp5 check, and the operand-width checks."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from amaranth import Shape, signed, unsigned
from amaranth.back import rtlil
from amaranth.sim import Simulator

from golden.config import ArrayConfig
from hw.ecp5_mult import DSP_WIDTH, RegisteredMult, is_ecp5, product_shape


def _ulx3s():
    from amaranth_boards.ulx3s import ULX3S_85F_Platform
    return ULX3S_85F_Platform()


def _operands(rng, shape: Shape, n: int) -> np.ndarray:
    """n operands of ``shape``: every extreme (min, max, 0, +-1 where representable), then random."""
    lo = -(1 << (shape.width - 1)) if shape.signed else 0
    hi = (1 << (shape.width - 1)) - 1 if shape.signed else (1 << shape.width) - 1
    ext = sorted({v for v in (lo, hi, 0, 1, -1, lo + 1, hi - 1) if lo <= v <= hi})
    return np.concatenate([np.array(ext, np.int64), rng.integers(lo, hi + 1, n, dtype=np.int64)])


SHAPES = [(signed(8), signed(8)), (signed(18), signed(18)), (signed(15), unsigned(17)),
          (unsigned(17), signed(18)), (unsigned(17), unsigned(14)), (unsigned(17), unsigned(17)),
          (signed(1), unsigned(1))]


@pytest.mark.parametrize("input_registers", [False, True], ids=["out_reg", "in_out_regs"])
@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_behavioural_product_exact_and_en_gated(a_shape, b_shape, input_registers):
    """platform None: p = a * b of the last cycle with en = 1 (with input registers: of the enabled
    cycle before it), exactly (NumPy int64), held otherwise."""
    rng = np.random.default_rng(a_shape.width * 100 + b_shape.width + a_shape.signed * 7)
    dut = RegisteredMult(a_shape, b_shape, input_registers=input_registers)
    assert dut.p.shape() == product_shape(a_shape, b_shape)
    av = _operands(rng, a_shape, 150)
    bv = _operands(rng, b_shape, 150)
    # every extreme of a against every extreme of b, then random pairs
    n_ext_a, n_ext_b = len(av) - 150, len(bv) - 150
    pairs = [(x, y) for x in av[:n_ext_a] for y in bv[:n_ext_b]] + list(zip(av[n_ext_a:], bv[n_ext_b:]))
    a = np.array([p[0] for p in pairs], np.int64)
    b = np.array([p[1] for p in pairs], np.int64)
    en = rng.random(len(pairs)) < 0.7
    en[:2] = True
    expected = a * b                                          # exact: |a*b| < 2**36 fits int64
    seen = []

    async def tb(ctx):
        for i in range(len(pairs)):
            ctx.set(dut.a, int(a[i]))
            ctx.set(dut.b, int(b[i]))
            ctx.set(dut.en, int(en[i]))
            await ctx.tick()
            seen.append(ctx.get(dut.p))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    # after cycle i's edge p holds the product of the latest enabled cycle <= i, or with input
    # registers of the enabled cycle before that one (the operand registers are reset-less: the
    # first product is checked from the second enabled cycle on)
    idx = np.where(en, np.arange(len(pairs)), -1)
    last = np.maximum.accumulate(idx)
    if input_registers:
        enabled = np.flatnonzero(en)
        prev = np.full(len(pairs), -1)
        for k in range(1, len(enabled)):
            prev[enabled[k]:] = enabled[k - 1]
        ok = prev >= 0
        np.testing.assert_array_equal(np.array(seen, np.int64)[ok], expected[prev[ok]])
        last = prev
    else:
        np.testing.assert_array_equal(np.array(seen, np.int64), expected[last])
    assert (~en).any() and (expected[last] != expected).any()   # the gating was exercised


def _cells(text: str, cell_type: str) -> list[dict]:
    """The cells of ``cell_type`` in RTLIL ``text``: {"params": {name: value}, "conn": {port: value}}."""
    out = []
    for mtch in re.finditer(rf"(?m)^\s*cell \\{re.escape(cell_type)} (\S+)\n(.*?)^\s*end$", text, re.S):
        params, conn = {}, {}
        for line in mtch.group(2).splitlines():
            f = line.split(None, 2)
            if len(f) == 3 and f[0] == "parameter":
                params[f[1].lstrip("\\")] = f[2].strip('"')
            elif len(f) == 3 and f[0] == "connect":
                conn[f[1].lstrip("\\")] = f[2]
        out.append({"name": mtch.group(1), "params": params, "conn": conn})
    return out


@pytest.mark.parametrize("input_registers", [False, True], ids=["out_reg", "in_out_regs"])
@pytest.mark.parametrize("a_shape,b_shape", SHAPES)
def test_ecp5_platform_maps_to_one_mult18x18d_with_output_register(a_shape, b_shape, input_registers):
    text = rtlil.convert(RegisteredMult(a_shape, b_shape, input_registers=input_registers), name="top",
                         platform=_ulx3s())
    assert "$mul" not in text
    (cell,) = _cells(text, "MULT18X18D")
    prm, conn = cell["params"], cell["conn"]
    assert prm["REG_OUTPUT_CLK"] == "CLK0" and prm["REG_OUTPUT_CE"] == "CE0" and prm["REG_OUTPUT_RST"] == "RST0"
    for reg in ("INPUTA", "INPUTB"):
        assert prm[f"REG_{reg}_CLK"] == ("CLK0" if input_registers else "NONE"), reg
        assert prm[f"REG_{reg}_CE"] == "CE0" and prm[f"REG_{reg}_RST"] == "RST0"
    for reg in ("INPUTC", "PIPELINE"):
        assert prm[f"REG_{reg}_CLK"] == "NONE", reg
    assert prm["GSR"] == "DISABLED" and prm["RESETMODE"] == "SYNC" and prm["MULT_BYPASS"] == "DISABLED"
    assert conn["CLK0"] == "\\clk [0]" and conn["CE0"] == "\\en [0]" and conn["RST0"] == "1'0"
    sgn = "1'1" if (a_shape.signed or b_shape.signed) else "1'0"
    assert conn["SIGNEDA"] == sgn and conn["SIGNEDB"] == sgn
    assert conn["SOURCEA"] == "1'0" and conn["SOURCEB"] == "1'0"
    assert not any(k.startswith(("SRIA", "SRIB")) for k in conn)     # no fabric route (nextpnr #208)
    for port, shape in (("A", a_shape), ("B", b_shape)):
        src = port.lower()
        for i in range(DSP_WIDTH):
            if i < shape.width:
                want = f"\\{src} [{i}]" if shape.width > 1 else f"\\{src} [0]"
            else:                                                   # sign / zero extension
                want = f"\\{src} [{shape.width - 1}]" if shape.signed else "1'0"
            assert conn[f"{port}{i}"] == want, (port, i, conn[f"{port}{i}"])
    assert all(conn[f"C{i}"] == "1'0" for i in range(DSP_WIDTH))
    assert all(f"P{i}" in conn for i in range(2 * DSP_WIDTH))


def test_platform_detection():
    from amaranth_boards.machxo2_breakout import MachXO2_7000HE_BreakoutPlatform
    assert is_ecp5(_ulx3s())
    assert not is_ecp5(None) and not is_ecp5(MachXO2_7000HE_BreakoutPlatform()) and not is_ecp5(object())
    # another Lattice family, and no platform: the behavioural register ($mul), no DSP instance
    for plat in (None, MachXO2_7000HE_BreakoutPlatform()):
        text = rtlil.convert(RegisteredMult(signed(8), signed(8)), name="top", platform=plat)
        assert "$mul" in text and "MULT18X18D" not in text


@pytest.mark.parametrize("a_shape,b_shape,bad", [
    (signed(19), signed(8), "a"), (signed(8), signed(19), "b"), (unsigned(18), signed(8), "a"),
    (signed(18), unsigned(18), "b"), (unsigned(0), signed(8), "a"), (signed(8), unsigned(0), "b"),
])
def test_operand_width_limits(a_shape, b_shape, bad):
    with pytest.raises(ValueError, match=rf"operand {bad} must be signed\(1\.\.18\) or unsigned\(1\.\.17\)"):
        RegisteredMult(a_shape, b_shape)


def test_pe_none_and_lane_use_the_dsp_register_on_ecp5():
    """PackedPE("none"): its product register is one MULT18X18D; RequantLane: its two 32x31 products
    are 2 x 4 of them (stages "mul" and "prelu_mul"); no $mul left in either; every one with its
    input registers too (the operand registers' copies)."""
    from hw.pe import PackedPE
    from hw.requant_lane import RequantLane
    cfg = ArrayConfig(rows=2, cols=2, packing="none")
    text = rtlil.convert(PackedPE(cfg), name="pe", platform=_ulx3s())
    cells = _cells(text, "MULT18X18D")
    assert len(cells) == 1 and "$mul" not in text
    text = rtlil.convert(RequantLane(cfg), name="lane", platform=_ulx3s())
    cells += _cells(text, "MULT18X18D")
    assert len(cells) == 9 and "$mul" not in text
    assert all(c["params"][f"REG_{r}_CLK"] == "CLK0" for c in cells for r in ("OUTPUT", "INPUTA", "INPUTB"))
    # the "dual" PE (DSP48E2-style accumulate) is left to inference
    text = rtlil.convert(PackedPE(ArrayConfig(rows=2, cols=2)), name="pe", platform=_ulx3s())
    assert "MULT18X18D" not in text and "$mul" in text


@pytest.mark.parametrize("a_shape,b_shape", [(signed(8), signed(8)), (signed(15), unsigned(17))])
def test_synth_ecp5_keeps_the_output_register(tmp_path, a_shape, b_shape):
    """yosys synth_ecp5 of RegisteredMult elaborated for the ULX3S: one MULT18X18D with REG_OUTPUT_CLK
    CLK0 and no fabric flip-flop; without a platform the same product is a combinational MULT18X18D
    plus len(p) TRELLIS_FF (the 10-11 ns shape of issue 6). (The component alone, not the PE: the
    PE-alone RTLIL trips yosys' abc9 name-collision assert, YosysHQ/yosys#4349, on Amaranth's
    anonymous `$N` wires; the board top of the ULX3S flow does not.)"""
    from hw import fpga
    width = product_shape(a_shape, b_shape).width
    for label, plat in (("ecp5", _ulx3s()), ("none", None)):
        d = tmp_path / label
        d.mkdir()
        (d / "m.il").write_text(rtlil.convert(RegisteredMult(a_shape, b_shape), name="m", platform=plat))
        stat, _ = fpga._yosys(d, "read_rtlil m.il\nsynth_ecp5 -top m\ntee -q -o stat.txt stat\nwrite_json m.json\n", 300)
        cells = fpga.parse_yosys_stat(stat)
        mods = json.loads((d / "m.json").read_text())["modules"]
        dsps = [c for mod in mods.values() for c in mod["cells"].values() if c["type"] == "MULT18X18D"]
        assert len(dsps) == 1 and cells.get("MULT18X18D") == 1, cells
        reg = dsps[0]["parameters"].get("REG_OUTPUT_CLK", "NONE")
        assert reg == ("CLK0" if label == "ecp5" else "NONE"), reg
        assert cells.get("TRELLIS_FF", 0) == (0 if label == "ecp5" else width), cells
