"""golden.isa: descriptor layout, encode/decode and the hardware's checks, entry packing,
status responses, RUN timing vs golden.array_model, and the generated C header (compiled)."""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from golden import isa
from golden.array_model import ArrayModel, neutral_params, simulate
from golden.config import BANKS, ArrayConfig
from golden.isa import Flag, Op

CFGS = [ArrayConfig(), ArrayConfig(rows=2, cols=2, act_depth=24, wgt_depth=12, param_depth=3, out_depth=10,
                                   bus_bytes=4, max_k=9),
        ArrayConfig(rows=3, cols=1, packing="none", act_depth=100, wgt_depth=200, param_depth=1, out_depth=3,
                    bus_bytes=1)]


def _ref_errors(cfg, word):
    """Independent statement of the hardware checks (docs/top.md), straight from the spec text."""
    code = word & 0xFF
    if code not in [int(o) for o in Op]:
        return int(Flag.BAD_OPCODE)
    op = Op(code)
    lay = isa.layout(cfg)[op]
    used = 0xFF
    v = {}
    for f in lay:
        v[f.name] = (word >> f.offset) & ((1 << f.width) - 1)
        used |= ((1 << f.width) - 1) << f.offset
    flags = int(Flag.RESERVED) if word & ~used else 0
    depth = {Op.WRITE_ACT: cfg.act_depth, Op.WRITE_WGT: cfg.wgt_depth, Op.WRITE_PARAMS: cfg.param_depth,
             Op.WRITE_LUT: 256, Op.READ_OUT: cfg.out_depth}
    ok = True
    if op in depth:
        ok = v.get("bank", 0) < BANKS and v["length"] >= 1 and v["offset"] + v["length"] <= depth[op]
    elif op == Op.RUN:
        kmax = min(cfg.max_k, cfg.act_depth, cfg.wgt_depth)
        ok = (all(v[b] < BANKS for b in ("act_bank", "wgt_bank", "par_bank", "out_bank"))
              and 1 <= v["k"] <= kmax and v["wgt_offset"] + v["k"] <= cfg.wgt_depth and v["ntiles"] >= 1
              and v["act_offset"] + v["ntiles"] * v["k"] <= cfg.act_depth
              and v["out_offset"] + v["ntiles"] * cfg.rows <= cfg.out_depth
              and v["par_index"] < cfg.param_depth and v["rows_valid"] <= cfg.rows
              and v["lanes_valid"] <= cfg.out_lanes)
    return flags | (0 if ok else int(Flag.BAD_RANGE))


def _random_valid(cfg, op, rng):
    """Random legal field values for ``op``."""
    if op in isa.PAYLOAD_BUFFER:
        d = isa.buffer_depth(cfg, isa.PAYLOAD_BUFFER[op])
        off = int(rng.integers(0, d))
        f = {"offset": off, "length": int(rng.integers(1, d - off + 1))}
        if op != Op.WRITE_LUT:
            f["bank"] = int(rng.integers(0, BANKS))
        return f
    if op == Op.RUN:
        k = int(rng.integers(1, isa.k_max(cfg) + 1))
        nt = int(rng.integers(1, min(cfg.act_depth // k, cfg.out_depth // cfg.rows) + 1))
        return {"act_bank": int(rng.integers(0, BANKS)), "act_offset": int(rng.integers(0, cfg.act_depth - nt * k + 1)),
                "wgt_bank": int(rng.integers(0, BANKS)), "wgt_offset": int(rng.integers(0, cfg.wgt_depth - k + 1)),
                "par_bank": int(rng.integers(0, BANKS)), "par_index": int(rng.integers(0, cfg.param_depth)),
                "out_bank": int(rng.integers(0, BANKS)),
                "out_offset": int(rng.integers(0, cfg.out_depth - nt * cfg.rows + 1)),
                "k": k, "ntiles": nt, "rows_valid": int(rng.integers(0, cfg.rows + 1)),
                "lanes_valid": int(rng.integers(0, cfg.out_lanes + 1))}
    if op == Op.CLEAR_STATUS:
        return {"counters": int(rng.integers(0, 2))}
    return {}


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_layout_fields_disjoint_and_hold_one_past_max(ci):
    cfg = CFGS[ci]
    for op, fields in isa.layout(cfg).items():
        assert [f.name for f in fields] == list(isa.FIELDS[op])
        used = (1 << isa.OPCODE_BITS) - 1
        for f in fields:
            m = ((1 << f.width) - 1) << f.offset
            assert used & m == 0, (op, f)
            used |= m
            assert f.offset + f.width <= isa.DESC_BITS
            assert (1 << f.width) - 1 >= f.hi + 1 or f.name == "counters", (op, f)
        assert isa.reserved_mask(cfg, op) == ((1 << 128) - 1) & ~used


def test_layout_rejects_configs_that_do_not_fit():
    with pytest.raises(ValueError, match="RUN descriptor needs 132 bits"):
        isa.layout(ArrayConfig(act_depth=2**20, wgt_depth=2**20, out_depth=2**20, max_k=2**20))
    with pytest.raises(ValueError, match="out_depth must be >= rows"):
        isa.layout(ArrayConfig(rows=4, out_depth=3))


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_encode_decode_roundtrip(ci):
    cfg = CFGS[ci]
    rng = np.random.default_rng(ci)
    for op in Op:
        for _ in range(40):
            f = _random_valid(cfg, op, rng)
            w = isa.encode(cfg, op, **f)
            assert w & 0xFF == int(op)
            assert isa.decode(cfg, w) == (op, f)
            assert isa.descriptor_errors(cfg, w) == 0
    assert isa.encode(cfg, "SYNC") == int(Op.SYNC)


def test_encode_errors_name_field_and_range():
    cfg = CFGS[1]     # act 24, wgt 12, params 3, out 10, rows 2, out_lanes 4, k_max 9
    ok = _random_valid(cfg, Op.RUN, np.random.default_rng(0))
    cases = [({"act_bank": 2}, r"RUN.act_bank must be in \[0, 1\], got 2"),
             ({"k": 0}, r"RUN.k must be in \[1, 9\], got 0"),
             ({"k": 10}, r"RUN.k must be in \[1, 9\], got 10"),
             ({"k": 5, "wgt_offset": 8, "ntiles": 1, "act_offset": 0, "out_offset": 0}, r"wgt_offset \+ k"),
             ({"k": 5, "wgt_offset": 0, "ntiles": 4, "act_offset": 5, "out_offset": 0}, r"act_offset \+ ntiles\*k"),
             ({"k": 1, "wgt_offset": 0, "ntiles": 3, "act_offset": 0, "out_offset": 5}, r"out_offset \+ ntiles\*rows"),
             ({"ntiles": 0}, r"RUN.ntiles must be in \[1, 5\]"),
             ({"par_index": 3}, r"RUN.par_index must be in \[0, 2\]"),
             ({"rows_valid": 3}, r"RUN.rows_valid must be in \[0, 2\]"),
             ({"lanes_valid": 5}, r"RUN.lanes_valid must be in \[0, 4\]")]
    for bad, msg in cases:
        f = dict(ok, **bad)
        with pytest.raises(ValueError, match=msg):
            isa.encode(cfg, Op.RUN, **f)
        w = isa.encode(cfg, Op.RUN, check=False, **f)
        with pytest.raises(ValueError, match=msg):
            isa.decode(cfg, w)
        assert isa.descriptor_errors(cfg, w) == Flag.BAD_RANGE
    for op, d in ((Op.WRITE_ACT, 24), (Op.WRITE_WGT, 12), (Op.WRITE_PARAMS, 3), (Op.READ_OUT, 10)):
        with pytest.raises(ValueError, match=rf"offset \+ length must be <= \w+ depth {d}"):
            isa.encode(cfg, op, bank=0, offset=1, length=d)
        with pytest.raises(ValueError, match=rf"{op.name}.length must be in \[1, {d}\], got 0"):
            isa.encode(cfg, op, bank=1, offset=0, length=0)
    with pytest.raises(ValueError, match=r"WRITE_LUT.length must be in \[1, 256\]"):
        isa.encode(cfg, Op.WRITE_LUT, offset=0, length=257)
    with pytest.raises(ValueError, match=r"its 2-bit field"):
        isa.encode(cfg, Op.WRITE_ACT, check=False, bank=4, offset=0, length=1)
    with pytest.raises(ValueError, match="missing field"):
        isa.encode(cfg, Op.WRITE_ACT, bank=0, offset=0)
    with pytest.raises(ValueError, match="has no field"):
        isa.encode(cfg, Op.SYNC, bank=0)
    with pytest.raises(ValueError, match="op must be one of"):
        isa.encode(cfg, 0)
    with pytest.raises(ValueError, match="opcode must be one of"):
        isa.decode(cfg, 0)
    with pytest.raises(ValueError, match="reserved bits must be zero"):
        isa.decode(cfg, int(Op.SYNC) | 1 << 127)
    assert isa.descriptor_errors(cfg, 0) == Flag.BAD_OPCODE
    assert isa.descriptor_errors(cfg, 0xFF | 1 << 100) == Flag.BAD_OPCODE
    assert isa.descriptor_errors(cfg, int(Op.READ_STATUS) | 1 << 8) == Flag.RESERVED


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_descriptor_errors_fuzz_vs_reference(ci):
    """Random descriptors (valid ones mutated bit-wise, and raw random words) vs the spec-text reference."""
    cfg = CFGS[ci]
    rng = np.random.default_rng(100 + ci)
    seen = set()
    for i in range(3000):
        op = Op(int(rng.integers(1, len(Op) + 1)))
        w = isa.encode(cfg, op, **_random_valid(cfg, op, rng))
        if i % 3 == 1:
            w ^= 1 << int(rng.integers(0, 128))
        elif i % 3 == 2:
            w = (w & ~((1 << 128) - 1 - 0xFF)) | (int(rng.integers(0, 2**63)) << 8 & ((1 << 96) - 1))
        got = isa.descriptor_errors(cfg, w)
        assert got == _ref_errors(cfg, w), hex(w)
        seen.add(got)
        if got:
            with pytest.raises(ValueError):
                isa.decode(cfg, w)
        else:
            isa.decode(cfg, w)
    assert {0, Flag.BAD_OPCODE, Flag.BAD_RANGE, Flag.RESERVED} <= seen


def test_pack_entries_byte_order_and_roundtrip():
    e = np.array([[1, 2, 3], [-1, -128, 127]], np.int8)
    assert isa.pack_entries(e, 2) == [0x0201, 0x03, 0x80FF, 0x7F]
    assert isa.pack_entries(e, 4) == [0x030201, 0x7F80FF]
    assert isa.unpack_entries([0x0201, 0x03, 0x80FF, 0x7F], 3, 2).tolist() == [[1, 2, 3], [255, 128, 127]]
    rng = np.random.default_rng(1)
    for eb in (1, 3, 8, 16, 17, 40):
        for bb in (1, 2, 4, 16):
            a = rng.integers(0, 256, (5, eb)).astype(np.uint8)
            w = isa.pack_entries(a, bb)
            assert len(w) == 5 * isa.words_per_entry(eb, bb) == 5 * -(-eb // bb)
            assert all(0 <= x < 1 << (8 * bb) for x in w)
            np.testing.assert_array_equal(isa.unpack_entries(w, eb, bb), a)
    with pytest.raises(ValueError, match=r"entries values must lie in \[-128, 255\]"):
        isa.pack_entries(np.array([[256]]), 4)
    with pytest.raises(ValueError, match="whole entries"):
        isa.unpack_entries([1, 2], 5, 2)
    with pytest.raises(ValueError, match="bus_bytes must be"):
        isa.words_per_entry(3, 0)


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_params_entries_match_core_layout(ci):
    from hw.core import pack_payload, params_layout
    cfg = CFGS[ci]
    rng = np.random.default_rng(ci)
    p = neutral_params(cfg)
    p["bias"] = rng.integers(-2**20, 2**20, cfg.out_lanes)
    p["mult"] = rng.integers(0, 2**31, cfg.out_lanes)
    p["shift"] = rng.integers(-31, 16, cfg.out_lanes)
    p["lut_en"] = 1
    ent = isa.pack_params(cfg, [p, neutral_params(cfg)])
    assert ent.shape == (2, isa.entry_bytes(cfg, "params")) and ent.dtype == np.uint8
    assert isa.params_entry_bits(cfg) == params_layout(cfg).size
    back = isa.unpack_params(cfg, ent[0])
    assert back["lut_en"] == 1
    assert [ln["shift"] for ln in back["lane"]] == p["shift"].tolist()
    assert [ln["bias"] for ln in back["lane"]] == p["bias"].tolist()
    assert int.from_bytes(ent[0].tobytes(), "little") == pack_payload(params_layout(cfg), back)
    words = isa.pack_entries(ent, cfg.bus_bytes)
    np.testing.assert_array_equal(isa.unpack_entries(words, ent.shape[1], cfg.bus_bytes), ent)
    bad = dict(p, act_min=np.full(cfg.out_lanes, 5), act_max=np.full(cfg.out_lanes, 4))
    with pytest.raises(ValueError, match="act_min <= act_max"):
        isa.pack_params(cfg, [bad])


@pytest.mark.parametrize("ci", range(len(CFGS)))
def test_status_roundtrip(ci):
    cfg = CFGS[ci]
    slots = [isa.status_word(Flag.BAD_RANGE | Flag.LENGTH_MISMATCH, 2)] + [2**64 - 1 - i * 12345 for i in range(7)]
    w = isa.pack_status(cfg, slots)
    assert len(w) == isa.status_response_words(cfg) == -(-64 // cfg.bus_bytes)
    st = isa.parse_status(cfg, w)
    assert [st[s.name] for s in isa.Slot] == slots
    assert (st["flags"], st["busy"], st["jobs"]) == (int(Flag.BAD_RANGE | Flag.LENGTH_MISMATCH), 1, 2)
    assert isa.status_word(0, 0) == 0
    with pytest.raises(ValueError, match="jobs must be"):
        isa.status_word(0, 3)
    with pytest.raises(ValueError, match="flags must be"):
        isa.status_word(1 << 8, 0)


@pytest.mark.parametrize("cfg,k,ntiles", [
    (ArrayConfig(rows=2, cols=2), 1, 7), (ArrayConfig(rows=2, cols=2), 3, 4),
    (ArrayConfig(rows=4, cols=3, param_fifo_depth=1), 1, 6), (ArrayConfig(rows=4, cols=3, param_fifo_depth=1), 2, 5),
    (ArrayConfig(rows=8, cols=8), 1, 9), (ArrayConfig(rows=8, cols=8), 9, 3), (ArrayConfig(rows=8, cols=8), 8, 6),
    (ArrayConfig(rows=3, cols=5, param_fifo_depth=2, packing="none"), 2, 8), (ArrayConfig(rows=1, cols=1), 1, 5),
])
def test_run_timing_equals_array_model(cfg, k, ntiles):
    """run_timing's closed recurrence == golden.array_model.simulate with every source always valid."""
    rng = np.random.default_rng(k * 31 + ntiles)
    tiles = [(rng.integers(-128, 128, (cfg.rows, k)), rng.integers(-127, 128, (k, cfg.out_lanes)))
             for _ in range(ntiles)]
    m = ArrayModel(cfg)
    trace = []
    out = simulate(cfg, tiles, [neutral_params(cfg)] * ntiles, model=m, trace=trace)
    t = isa.run_timing(cfg, k, ntiles)
    assert [rec.accept_cycle for rec in m.tiles] == t["last_accept"]
    assert out[-1][0] == t["last_row"]
    assert [r["cycle"] for r in trace if r["params_fire"]] == t["param_push"]
    assert sum(r["drive"]["in_valid"] and not r["in_ready"] for r in trace) == t["in_stall_cycles"]
    assert t["busy_cycles"] == t["last_row"] + 2


def test_c_header_compiles_and_encodes_like_python(tmp_path):
    cfg = CFGS[1]
    h = isa.c_header(cfg)
    for name in ("ANL_OP_RUN 5", "ANL_FLAG_BAD_RANGE 0x2u", "ANL_SLOT_USEFUL_MACS 3", "ANL_RUN_K_SHIFT",
                 f"ANL_PARAMS_ENTRY_BYTES {isa.entry_bytes(cfg, 'params')}", "ANL_BUS_BYTES 4"):
        assert name in h
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("a C compiler (cc/gcc) is required to check the generated header")
    f = {"act_bank": 1, "act_offset": 3, "wgt_bank": 0, "wgt_offset": 2, "par_bank": 1, "par_index": 2,
         "out_bank": 1, "out_offset": 4, "k": 7, "ntiles": 3, "rows_valid": 2, "lanes_valid": 3}
    sets = "\n".join(f"    anl_desc_set(d, ANL_RUN_{n.upper()}_SHIFT, ANL_RUN_{n.upper()}_WIDTH, {v}u);"
                     for n, v in f.items())
    (tmp_path / "anl_isa.h").write_text(h)
    (tmp_path / "t.c").write_text(f"""#include <stdio.h>
#include "anl_isa.h"
int main(void) {{
    uint32_t d[ANL_DESC_WORDS32] = {{0}};
    anl_desc_set(d, 0, ANL_OPCODE_BITS, ANL_OP_RUN);
{sets}
    if (anl_desc_get(d, ANL_RUN_K_SHIFT, ANL_RUN_K_WIDTH) != 7u) return 3;
    if ((d[0] & ANL_RUN_RESERVED0) | (d[1] & ANL_RUN_RESERVED1) | (d[2] & ANL_RUN_RESERVED2)
        | (d[3] & ANL_RUN_RESERVED3)) return 4;
    printf("%08x %08x %08x %08x %d %d\\n", d[3], d[2], d[1], d[0], ANL_ACT_WORDS_PER_ENTRY, ANL_STATUS_RESPONSE_WORDS);
    return 0;
}}
""")
    exe = tmp_path / "t"
    subprocess.run([cc, "-std=c99", "-Wall", "-Werror", "-o", str(exe), str(tmp_path / "t.c")], check=True)
    out = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.split()
    assert int("".join(out[:4]), 16) == isa.encode(cfg, Op.RUN, **f)
    assert int(out[4]) == isa.words_per_entry(cfg.rows, cfg.bus_bytes)
    assert int(out[5]) == isa.status_response_words(cfg)
    with pytest.raises(ValueError, match="prefix"):
        isa.c_header(cfg, prefix="bad-name")
