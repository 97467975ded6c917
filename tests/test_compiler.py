"""firmware.compiler + GoldenDevice + driver: whole layers bit-exact with golden.layers / golden.ops.

Every accelerator layer kind (conv with stride/padding/dilation/groups/
depthwise/1x1, fully connected, transposed conv incl. phases without taps),
int8/uint8 in and out, per-tensor/per-channel scales, fused ReLU/ReLU6/clamp/
PReLU/LeakyReLU/LUT, on three array configurations (small buffers force many
chunks, both banks and partial tiles/blocks), under every RUN order. Plus the
schedule's invariants, the K limit, graph fusion and whole graphs, and the
cycle model (firmware.report.TopTimer) against golden.array_model.simulate.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from firmware.compiler import ORDERS, compile_layer, convt_phases, kmax, lower, plan_layer
from firmware.driver import run_graph, run_layer
from firmware.golden_device import GoldenDevice
from firmware.graph import (Conv2d, ConvTranspose2d, FullyConnected, Graph, LutSpec, Q)
from firmware.report import TopTimer, report_from_plan, timeline
from golden import isa, ops
from golden.array_model import ArrayModel, params_from_layer, simulate
from golden.config import ArrayConfig
from golden.isa import Op

SMALL = ArrayConfig(rows=4, cols=2, act_depth=96, wgt_depth=64, param_depth=3, out_depth=16, bus_bytes=8)
NOPACK = ArrayConfig(rows=3, cols=5, packing="none", act_depth=200, wgt_depth=150, param_depth=2, out_depth=12,
                     bus_bytes=4)
DEFAULT = ArrayConfig()
CFGS = {"small": SMALL, "nopack": NOPACK, "default": DEFAULT}


def f32(v):
    """float32-representable scales: every implementation forms the same float64 multiplier."""
    return np.asarray(v, np.float32).astype(np.float64)


def rand_act(rng, shape, dtype):
    lo, hi = (0, 256) if dtype == "uint8" else (-128, 128)
    return rng.integers(lo, hi, shape).astype(dtype)


def sigmoid_lut(q_in: Q, q_out: Q) -> LutSpec:
    t = ops.make_lut(ops.sigmoid_f64, q_in.scale, q_in.zp, q_in.dtype, q_out.scale, q_out.zp, q_out.dtype,
                     sigma=ops.SIGMOID_SIGMA)
    return LutSpec(t, q_out)


def make_case(name: str, rng):
    """(node, x) for one named layer case."""
    qu = Q(float(f32(0.021)), 131, "uint8")
    qi = Q(float(f32(0.017)), -7, "int8")
    qo8 = Q(float(f32(0.09)), 5, "int8")
    qou = Q(float(f32(0.07)), 120, "uint8")

    def conv(cin, cout, k, dtype_in, out, *, groups=1, per_channel=True, **kw):
        w = rng.integers(-127, 128, (cout, cin // groups, k if isinstance(k, int) else k[0],
                                     k if isinstance(k, int) else k[1])).astype(np.int8)
        b = rng.integers(-3000, 3000, cout).astype(np.int32)
        ws = f32(rng.uniform(0.002, 0.02, cout)) if per_channel else float(f32(0.006))
        qin = qu if dtype_in == "uint8" else qi
        return Conv2d(name, "x", qin, w, b, ws, out, groups=groups, **kw)

    if name == "conv3x3_u8_relu":
        return conv(5, 11, 3, "uint8", qo8, padding=1, act="relu"), rand_act(rng, (2, 5, 7, 6), "uint8")
    if name == "conv_s2_dil2_asym_relu6":
        return (conv(4, 7, 3, "int8", qou, stride=2, dilation=2, padding=(1, 0, 2, 1), act="relu6"),
                rand_act(rng, (1, 4, 11, 9), "int8"))
    if name == "conv_rect_kernel_per_tensor":
        return (conv(3, 6, (1, 3), "uint8", qou, stride=(1, 2), padding=(0, 1), per_channel=False),
                rand_act(rng, (1, 3, 5, 8), "uint8"))
    if name == "conv_groups3_og2":
        return conv(6, 6, 3, "int8", qo8, groups=3, padding=1, act=(-20, 90)), rand_act(rng, (1, 6, 6, 5), "int8")
    if name == "conv_groups2_og6":
        return conv(4, 12, 3, "uint8", qo8, groups=2, padding=1), rand_act(rng, (1, 4, 5, 5), "uint8")
    if name == "depthwise_prelu":
        alpha = f32(rng.uniform(0.05, 0.4, 10))
        return (conv(10, 10, 3, "int8", qo8, groups=10, padding=1, prelu=alpha),
                rand_act(rng, (1, 10, 6, 7), "int8"))
    if name == "conv1x1_s2_lut":
        return (conv(6, 9, 1, "uint8", qi, stride=2, lut=sigmoid_lut(qi, Q(1 / 256, 0, "uint8"))),
                rand_act(rng, (2, 6, 7, 7), "uint8"))
    if name == "conv1x1_k_lt_rows":
        return conv(2, 5, 1, "int8", qo8, act="relu"), rand_act(rng, (1, 2, 6, 5), "int8")
    if name == "fc_leaky":
        w = rng.integers(-127, 128, (13, 50)).astype(np.int8)
        return (FullyConnected(name, "x", qi, w, rng.integers(-5000, 5000, 13).astype(np.int32),
                               f32(rng.uniform(0.001, 0.01, 13)), qou, prelu=0.1),
                rand_act(rng, (3, 50), "int8"))
    if name == "fc_u8_relu":
        w = rng.integers(-127, 128, (7, 30)).astype(np.int8)
        return (FullyConnected(name, "x", qu, w, None, float(f32(0.004)), qo8, act="relu"),
                rand_act(rng, (5, 30), "uint8"))

    def convt(cin, cout, k, dtype_in, out, groups=1, **kw):
        w = rng.integers(-127, 128, (cin, cout // groups, k, k)).astype(np.int8)
        b = rng.integers(-2000, 2000, cout).astype(np.int32)
        qin = qu if dtype_in == "uint8" else qi
        return ConvTranspose2d(name, "x", qin, w, b, f32(rng.uniform(0.002, 0.02, cout)), out, groups=groups, **kw)

    if name == "convT_k4s2p1_relu":
        return convt(5, 6, 4, "uint8", qo8, stride=2, padding=1, act="relu"), rand_act(rng, (1, 5, 4, 5), "uint8")
    if name == "convT_k3s2_outpad_groups":
        return (convt(4, 6, 3, "int8", qou, groups=2, stride=2, padding=1, output_padding=1),
                rand_act(rng, (2, 4, 3, 4), "int8"))
    if name == "convT_k2s3_empty_phase":
        return convt(3, 5, 2, "int8", qo8, stride=3, dilation=1), rand_act(rng, (1, 3, 3, 2), "int8")
    if name == "convT_dilated_prelu":
        return (convt(3, 4, 3, "uint8", qo8, stride=2, dilation=2, padding=(1, 2, 0, 1), prelu=0.3),
                rand_act(rng, (1, 3, 4, 3), "uint8"))
    raise KeyError(name)


CASES = ["conv3x3_u8_relu", "conv_s2_dil2_asym_relu6", "conv_rect_kernel_per_tensor", "conv_groups3_og2",
         "conv_groups2_og6", "depthwise_prelu", "conv1x1_s2_lut", "conv1x1_k_lt_rows", "fc_leaky", "fc_u8_relu",
         "convT_k4s2p1_relu", "convT_k3s2_outpad_groups", "convT_k2s3_empty_phase", "convT_dilated_prelu"]


@pytest.mark.parametrize("cfg_name", list(CFGS))
@pytest.mark.parametrize("case", CASES)
def test_layer_on_golden_device_is_bit_exact(case, cfg_name):
    cfg = CFGS[cfg_name]
    rng = np.random.default_rng(zlib.crc32(f"{case}/{cfg_name}".encode()))
    node, x = make_case(case, rng)
    ref = node.reference([x])
    dev = GoldenDevice(cfg)
    y, rep = run_layer(dev, node, x)
    assert y.dtype == ref.dtype and y.shape == ref.shape
    assert np.array_equal(y, ref), f"{case} on {cfg_name}: {np.count_nonzero(y != ref)} codes differ"
    # a real check: the outputs are not all clamped
    assert len(np.unique(ref)) >= min(8, ref.size // 4)
    # the device's counters are the plan's: useful MACs exactly, one job per RUN, busy cycles of the model
    m = rep.measured
    assert m["USEFUL_MACS"] == rep.lane_slot_macs
    assert m["JOBS_DONE"] == rep.runs
    assert m["BUSY_CYCLES"] == rep.busy_cycles
    assert m["CMDS_DROPPED"] == 0
    if not (isinstance(node, Conv2d) and node.groups > 1):
        assert rep.lane_slot_macs == rep.macs or rep.losses["edge"] > 0


@pytest.mark.parametrize("order", ORDERS)
def test_every_run_order_gives_the_same_exact_output(order):
    rng = np.random.default_rng(7)
    qi, qo = Q(float(f32(0.02)), 3, "int8"), Q(float(f32(0.05)), -2, "int8")
    # K = 27, Pb = 2*9*8/4 = 36 tiles, 14 channels -> 4 blocks: several act and weight chunks on SMALL
    w = rng.integers(-127, 128, (14, 3, 3, 3)).astype(np.int8)
    node = Conv2d("c", "x", qi, w, rng.integers(-900, 900, 14).astype(np.int32), f32(rng.uniform(0.004, 0.02, 14)),
                  qo, padding=1, act="relu")
    x = rand_act(rng, (2, 3, 9, 8), "int8")
    plan = plan_layer(node, x.shape, SMALL, order)
    assert len({c.fields["bank"] for c in plan.commands if c.op == Op.WRITE_ACT}) == 2     # double buffering
    assert len({c.fields["bank"] for c in plan.commands if c.op == Op.WRITE_WGT}) == 2
    y, _ = run_layer(GoldenDevice(SMALL), node, x, order=order)
    assert np.array_equal(y, node.reference([x]))


def _coverage(plan, cfg):
    seen = {}
    for c in plan.runs:
        r = c.run
        for t in range(r["tile0"], r["tile0"] + r["ntiles"]):
            key = (r["job"], t, r["block"])
            seen[key] = seen.get(key, 0) + 1
    return seen


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("cfg_name", ["small", "default"])
def test_schedule_computes_every_tile_block_once_and_descriptors_are_legal(order, cfg_name):
    cfg = CFGS[cfg_name]
    q = Q(0.05, 0, "int8")
    for co, ci, k, hw in ((40, 7, 3, 13), (9, 3, 1, 10), (20, 5, 2, 6)):
        node = Conv2d("c", "x", q, np.zeros((co, ci, k, k), np.int8), None, 0.01, q, padding=k // 2)
        plan = plan_layer(node, (1, ci, hw, hw), cfg, order)
        seen = _coverage(plan, cfg)
        want = {(ji, t, b) for ji, j in enumerate(plan.jobs) for t in range(j.tiles(cfg)) for b in range(j.blocks(cfg))}
        assert set(seen) == want and set(seen.values()) == {1}
        for c in plan.commands:
            isa.decode(cfg, c.descriptor(cfg))       # raises on anything the hardware would flag
        # the partial last tile is its own RUN: rows_valid counts exactly
        for c in plan.runs:
            r = c.run
            j = plan.jobs[r["job"]]
            full = (r["tile0"] + r["ntiles"]) * cfg.rows <= j.P
            assert r["rows_valid"] == (cfg.rows if full else j.P - r["tile0"] * cfg.rows)
            assert r["lanes_valid"] == min(cfg.out_lanes, j.L - r["block"] * cfg.out_lanes)


def test_plan_without_data_equals_compiled_program():
    rng = np.random.default_rng(3)
    node, x = make_case("convT_k4s2p1_relu", rng)
    plan = plan_layer(node, x.shape, SMALL)
    prog = compile_layer(node, x, SMALL)
    assert plan.order == prog.plan.order
    assert [c.descriptor(SMALL) for c in plan.commands] == [c.descriptor(SMALL) for c in prog.commands]
    assert [c.din_words for c in plan.commands] == [len(c.payload()) if c.payload else 0 for c in prog.commands]


def test_k_too_big_names_layer_and_limit():
    q = Q(0.05, 0, "int8")
    node = Conv2d("big_conv", "x", q, np.zeros((4, 8, 3, 3), np.int8), None, 0.01, q, padding=1)
    with pytest.raises(ValueError, match=r"big_conv.*K = 72.*K <= 64.*wgt_depth = 64"):
        plan_layer(node, (1, 8, 4, 4), SMALL)
    fc = FullyConnected("wide_fc", "x", q, np.zeros((3, 97), np.int8), None, 0.01, q)
    with pytest.raises(ValueError, match=r"wide_fc.*K = 97.*K <= 64"):
        plan_layer(fc, (2, 97), SMALL)
    # transposed conv: the limit applies to one sub-pixel phase (C_in * taps), 17 * 4 = 68 > 64
    ct = ConvTranspose2d("up", "x", q, np.zeros((17, 2, 4, 4), np.int8), None, 0.01, q, stride=2, padding=1)
    with pytest.raises(ValueError, match=r"'up'.*K = 68.*phase"):
        plan_layer(ct, (1, 17, 3, 3), SMALL)
    assert kmax(SMALL) == 64 and kmax(DEFAULT) == 4608
    # 16 * 4 = 64 fits exactly
    ct = ConvTranspose2d("up", "x", q, np.zeros((16, 2, 4, 4), np.int8), None, 0.01, q, stride=2, padding=1)
    assert max(j.K for j in plan_layer(ct, (1, 16, 3, 3), SMALL).jobs) == 64


def test_weight_below_weight_min_is_refused():
    q = Q(0.05, 0, "int8")
    w = np.zeros((2, 1, 1, 1), np.int8)
    w[1, 0, 0, 0] = -128
    node = Conv2d("neg", "x", q, w, None, 0.01, q)
    with pytest.raises(ValueError, match=r"'neg'.*-128.*weight_min = -127"):
        compile_layer(node, np.zeros((1, 1, 2, 2), np.int8), DEFAULT)


def test_group_packing_and_convt_phases():
    q = Q(0.05, 0, "int8")
    dw = Conv2d("dw", "x", q, np.zeros((64, 1, 3, 3), np.int8), None, 0.01, q, padding=1, groups=64)
    jobs = lower(dw, (1, 64, 8, 8), DEFAULT)
    assert len(jobs) == 4 and {j.K for j in jobs} == {16 * 9} and {j.L for j in jobs} == {16}
    assert sum(j.macs for j in jobs) == dw.macs([(1, 64, 8, 8)])
    g2 = Conv2d("g2", "x", q, np.zeros((64, 16, 3, 3), np.int8), None, 0.01, q, padding=1, groups=2)
    assert [j.L for j in lower(g2, (1, 32, 8, 8), DEFAULT)] == [32, 32]          # og >= out_lanes: per group
    up = ConvTranspose2d("up", "x", q, np.zeros((8, 8, 4, 4), np.int8), None, 0.01, q, stride=2, padding=1)
    ph = convt_phases(up, (1, 8, 5, 5))
    assert len(ph) == 4 and all(len(p["taps_h"]) == 2 and len(p["taps_w"]) == 2 for p in ph)
    assert {j.K for j in lower(up, (1, 8, 5, 5), DEFAULT)} == {32}            # 4 taps * C_in, not 16 * C_in
    assert up.macs([(1, 8, 5, 5)]) == 1 * 8 * 5 * 5 * 8 * 16                   # = N*Cin*H*W*Cout*kh*kw


# --------------------------------------------------------------------------- graphs


def _small_graph(rng) -> tuple[Graph, dict]:
    g = Graph()
    qu = Q(float(f32(1 / 64)), 128, "uint8")
    q1 = Q(float(f32(0.05)), -3, "int8")
    q2 = Q(float(f32(0.04)), 2, "int8")
    x = g.add_input("img", (1, 3, 12, 10), qu)

    def w(*s):
        return rng.integers(-127, 128, s).astype(np.int8)

    def ws(n):
        return f32(rng.uniform(0.003, 0.02, n))

    a = g.conv2d("stem", x, w(8, 3, 3, 3), None, ws(8), q1, stride=2, padding=1)
    a = g.relu("stem_relu", a)                                   # fused: clamp
    p = g.max_pool("pool", a, 3, stride=1, padding=1)
    b = g.conv2d("b1", p, w(8, 8, 3, 3), rng.integers(-500, 500, 8).astype(np.int32), ws(8), q1, padding=1,
                 act="relu6")
    b = g.relu("b1_relu", b)                                     # fused into a relu6 clamp
    d = g.conv2d("dw", b, w(8, 1, 3, 3), None, ws(8), q2, padding=1, groups=8)
    s = g.add_op("res", d, p, q1, act="relu")
    t = g.directional_max("tmax", s, "top")
    u = g.conv_transpose2d("up", t, w(8, 4, 4, 4), None, ws(4), q2, stride=2, padding=1)
    v = g.upsample("ups", s, 2)
    c = g.concat("cat", [u, v], q2)
    h = g.conv2d("head", c, w(5, 12, 1, 1), None, ws(5), q1)
    pr = g.prelu("head_prelu", h, f32(rng.uniform(-0.3, 0.3, 5)), q1)     # host: any-sign slopes
    lq = Q(1 / 256, 0, "uint8")
    g.lut("sig", pr, sigmoid_lut(q1, lq))                                  # host: producer is not an array node
    f = g.conv2d("f", c, w(6, 12, 1, 1), None, ws(6), q1)
    g.lut("f_sig", f, sigmoid_lut(q1, lq))                                 # fused into f's lanes
    g.outputs = ["sig", "f_sig"]
    feeds = {"img": rand_act(rng, (1, 3, 12, 10), "uint8")}
    return g, feeds


def test_fusion_is_bit_identical_and_graph_runs_exactly_on_the_device():
    rng = np.random.default_rng(11)
    g, feeds = _small_graph(rng)
    fused = g.fuse()
    names = [n.name for n in fused.nodes]
    assert "stem" not in names and "stem_relu" in names and "b1" not in names and "f" not in names
    assert "head_prelu" in names and "sig" in names and "f_sig" in names
    assert fused.node("f_sig").on_array and not fused.node("sig").on_array
    assert fused.node("b1_relu").act == fused.node("b1_relu").act_range
    ref = g.reference(feeds)
    ref_f = fused.reference(feeds)
    for n in fused.nodes:
        assert np.array_equal(ref_f[n.name], ref[n.name]), n.name
    cfg = ArrayConfig(rows=4, cols=2, act_depth=256, wgt_depth=128, param_depth=3, out_depth=16, bus_bytes=8)
    env, reports = run_graph(GoldenDevice(cfg), g, feeds)
    for name in ("sig", "f_sig", "up", "res", "head_prelu"):
        assert np.array_equal(env[name], ref[name]), name
    assert sum(r.on_array for r in reports) == 6 and all(r.measured for r in reports if r.on_array)
    assert len(np.unique(ref["f_sig"])) > 10


def test_fused_relu_intersects_clamps_exactly():
    """clip(clip(v, a, b), c, d) == clip(v, clip(a, c, d), clip(b, c, d)), including disjoint ranges."""
    rng = np.random.default_rng(5)
    for act in ("relu", "relu6", (-100, -60), (60, 100), None):
        g = Graph()
        q = Q(float(f32(0.05)), 40, "int8")
        x = g.add_input("x", (1, 2, 4, 4), q)
        y = g.conv2d("c", x, rng.integers(-127, 128, (3, 2, 1, 1)).astype(np.int8), None, 0.02, q, act=act)
        g.relu("r", y, "relu6")
        feeds = {"x": rand_act(rng, (1, 2, 4, 4), "int8")}
        f = g.fuse()
        assert [n.name for n in f.nodes] == ["r"]
        assert np.array_equal(f.reference(feeds)["r"], g.reference(feeds)["r"])


# --------------------------------------------------------------------------- the cycle model


def test_top_timer_single_run_is_run_timing():
    for cfg in (DEFAULT, SMALL, NOPACK):
        for k, nt in ((1, 1), (1, 9), (3, 5), (cfg.rows, 7), (kmax(cfg), 1), (kmax(cfg) // 2, 2)):
            tt = TopTimer(cfg)
            tt.step(Op.RUN, {"act_bank": 0, "wgt_bank": 0, "par_bank": 0, "out_bank": 0, "k": k, "ntiles": nt})
            assert tt.busy_cycles == isa.run_timing(cfg, k, nt)["busy_cycles"]
            assert tt.stall == isa.run_timing(cfg, k, nt)["in_stall_cycles"]


@pytest.mark.parametrize("jobs", [[(30, 3), (20, 4), (45, 2), (26, 3)], [(3, 12), (1, 40), (9, 8), (2, 30)],
                                  [(8, 6), (8, 8), (5, 9)]])
def test_back_to_back_runs_match_array_model_simulate(jobs):
    """RUNs queued back to back stream their tiles without gaps: the TopTimer's per-tile accept
    cycles and last-row cycle equal golden.array_model.simulate on the concatenated tiles.

    The job queue holds two jobs and a job retires with its last row, cfg.latency after its last
    beat, so each job's stream must outlast the retirement of the one before it (the precondition
    below): at latency 49, (8, 8) after (8, 6) does (issue 6's session 11; (8, 7) ran dry by 2), as
    (9, 8) after (1, 40) did at latency 47 (session 8; (9, 6) ran dry by 2)."""
    cfg = ArrayConfig(rows=8, cols=2)
    tt = TopTimer(cfg, log_tiles=True)
    for k, nt in jobs:
        tt.step(Op.RUN, {"act_bank": 0, "wgt_bank": 0, "par_bank": 0, "out_bank": 0, "k": k, "ntiles": nt})
    q0 = tt.run_log[0]["q"]
    # precondition: the queue never ran dry (every job's first beat follows the previous tile's last)
    ends = np.cumsum([nt for _, nt in jobs])
    for i in range(1, len(jobs)):
        assert tt.run_log[i]["first_beat"] == tt.tile_log[ends[i - 1] - 1] + 1
    rng = np.random.default_rng(0)
    tiles, plist = [], []
    for k, nt in jobs:
        w = rng.integers(-127, 128, (k, cfg.out_lanes))
        p = params_from_layer(cfg, 0.01)
        for _ in range(nt):
            tiles.append((rng.integers(-128, 128, (cfg.rows, k)), w))
            plist.append(p)
    m = ArrayModel(cfg)
    out = simulate(cfg, tiles, plist, model=m)
    accepts = [t.accept_cycle + q0 + 2 for t in m.tiles]      # the model's cycle 0 is q0 + 2
    assert tt.tile_log == accepts
    assert tt.run_log[-1]["T"] == out[-1][0] + q0 + 2
    assert tt.stall == sum(a - o for a, o in zip(accepts, _offers(jobs, accepts, q0 + 2)))


def _offers(jobs, accepts, c0):
    """Cycle each tile's last beat is first offered when beats stream without gaps from c0."""
    out, prev = [], None
    ks = [k for k, nt in jobs for _ in range(nt)]
    for k, a in zip(ks, accepts):
        start = c0 if prev is None else prev + 1
        out.append(start + k - 1)
        prev = a
    return out


def test_report_roofline_and_losses_add_up():
    q = Q(0.05, 0, "int8")
    node = Conv2d("c", "x", q, np.zeros((20, 6, 3, 3), np.int8), None, 0.01, q, padding=1)
    plan = plan_layer(node, (1, 6, 9, 7), DEFAULT)
    r = report_from_plan(plan)
    peak = DEFAULT.rows * DEFAULT.out_lanes
    assert r.compute_bound == -(-r.macs // peak)
    assert r.stream_bound == max(r.din_words, r.dout_words)
    assert r.bound == ("compute" if r.compute_bound >= r.stream_bound else "stream")
    assert abs(r.macs / peak + sum(r.losses.values()) - r.cycles) < 1e-6
    assert r.losses["edge"] > 0                  # 63 pixels, 20 channels: partial tiles and blocks
    assert r.utilization == pytest.approx(r.macs / (r.cycles * peak))
    assert timeline(plan.commands, DEFAULT)["cycles"] == r.cycles
