"""The RTL top behind ``Device`` in a plain Python process: ``firmware.rtl_device.make_host_device``.

The Verilator model of ``hw.top.Accelerator(SMALL_TOP)`` (the build tests/test_rtl_top.py uses,
cached in build/verilator) runs in a child process (sim/tb_server.py); the test talks to it like
to any device:

1. a small graph (conv 3x3 + ReLU, conv 1x1, residual Add (host) + ReLU, ConvTranspose 4x4/2)
   through ``firmware.driver.run_graph``: every tensor bit-exact with ``GoldenDevice`` running the
   same program and with golden's reference, the READ_STATUS counters of every layer equal
   (CYCLES, BUSY, MACs, stalls, jobs, dropped commands: the ideal host of RtlDevice is the cycle
   model's), no framing errors, and one round trip per response (sends are batched);
2. the same layer under random backpressure (``configure``): output still exact, MACs/jobs
   unchanged, OUT_STALL_CYCLES equals the stalls the host saw;
3. errors cross the process boundary with their type and message: DeviceTimeout naming the
   dropped READ_OUT (same command as GoldenDevice names), the driver's DeviceTimeout naming the
   layer on a link that loses din words, ValueError from a bad option checked in the simulation;
   the device works again after ``reset``;
4. lifecycle: ``close`` twice is safe and ends the simulator with status 0, calls after it raise
   DeviceError; a simulator that does not connect in time or dies mid-call gives DeviceError with
   its log, never a hang; bad options are rejected before anything starts.
"""
from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from firmware.device import DeviceError, DeviceTimeout
from firmware.driver import read_status, run_graph, run_layer
from firmware.golden_device import GoldenDevice
from firmware.graph import Graph, Q
from firmware.rtl_device import HostRtlDevice, decode_error, encode_error, make_host_device
from golden import isa
from golden.isa import Op
from sim.build_top import SMALL_TOP

CFG = SMALL_TOP
SLOTS = ("CYCLES", "BUSY_CYCLES", "USEFUL_MACS", "IN_STALL_CYCLES", "OUT_STALL_CYCLES", "CMDS_DROPPED", "JOBS_DONE")


def f32(v):
    return np.asarray(v, np.float32).astype(np.float64)


def small_graph(seed: int = 5) -> tuple[Graph, dict]:
    """conv3x3+ReLU and conv1x1 of the input, Add+ReLU (host), ConvTranspose 4x4/2 (+ReLU): 3 array layers."""
    rng = np.random.default_rng(seed)
    g = Graph()
    qu = Q(float(f32(1 / 64)), 128, "uint8")
    q1, q2, q3 = Q(float(f32(0.05)), -3, "int8"), Q(float(f32(0.04)), 2, "int8"), Q(float(f32(0.06)), 118, "uint8")
    x = g.add_input("img", (1, 5, 7, 6), qu)

    def w(*s):
        return rng.integers(-127, 128, s).astype(np.int8)

    def ws(n):
        return f32(rng.uniform(0.003, 0.02, n))

    a = g.conv2d("c3", x, w(8, 5, 3, 3), rng.integers(-900, 900, 8).astype(np.int32), ws(8), q1, padding=1,
                 act="relu")
    b = g.conv2d("c1", x, w(8, 5, 1, 1), None, ws(8), q2)
    s = g.add_op("res", a, b, q1, act="relu")
    g.conv_transpose2d("up", s, w(8, 6, 4, 4), rng.integers(-500, 500, 6).astype(np.int32), ws(6), q3, stride=2,
                       padding=1, act="relu")
    feeds = {"img": rng.integers(0, 256, (1, 5, 7, 6)).astype(np.uint8)}
    return g, feeds


class CountingGolden(GoldenDevice):
    """GoldenDevice counting ``receive`` calls (what the host device should need as round trips)."""

    receives = 0

    def receive(self, n_words, timeout_s=5.0):
        self.receives += 1
        return super().receive(n_words, timeout_s)


@pytest.fixture(scope="module")
def dev():
    with make_host_device(CFG) as d:
        yield d


def test_graph_bit_exact_and_counters_equal_golden_device(dev):
    g, feeds = small_graph()
    dev.reset()
    rt0, c0 = dev.round_trips, dev.cycles
    got, reps = run_graph(dev, g, feeds)
    gold_dev = CountingGolden(CFG)
    ref, gold_reps = run_graph(gold_dev, g, feeds)
    expect = g.fuse().reference(feeds)
    assert set(got) == set(ref) == set(expect)
    for k in ref:
        assert got[k].dtype == ref[k].dtype and got[k].shape == ref[k].shape, k
        assert np.array_equal(got[k], ref[k]), f"{k}: {np.count_nonzero(got[k] != ref[k])} values differ"
        assert np.array_equal(got[k], expect[k]), k
    on_array = [r for r in reps if r.on_array]
    assert [r.name for r in on_array] == ["c3", "c1", "up"]
    for r, gr in zip(reps, gold_reps):
        assert r.on_array == gr.on_array
        if r.on_array:
            assert {s: r.measured[s] for s in SLOTS} == {s: gr.measured[s] for s in SLOTS}, r.name
            assert r.measured["USEFUL_MACS"] > 0 and r.measured["CMDS_DROPPED"] == 0
    assert dev.framing_errors == []
    assert dev.round_trips - rt0 == gold_dev.receives          # one message per response, sends batched
    assert dev.cycles - c0 >= sum(r.measured["CYCLES"] for r in on_array)


def test_backpressure_keeps_outputs_and_counts_stalls(dev):
    g, feeds = small_graph(seed=9)
    node = g.node("c3")
    dev.reset()
    dev.configure(dout_ready_prob=0.5, din_valid_prob=0.7, cmd_valid_prob=0.6)
    try:
        log0 = len(dev.receive_log)
        y, rep = run_layer(dev, node, feeds["img"])
        # stalls the host saw in every receive of the layer but the final READ_STATUS (its snapshot is
        # taken before its own words go out)
        seen = sum(s for _, s, _ in dev.receive_log[log0:-1])
    finally:
        dev.configure(dout_ready_prob=1.0, din_valid_prob=1.0, cmd_valid_prob=1.0)
    y_gold, rep_gold = run_layer(GoldenDevice(CFG), node, feeds["img"])
    assert np.array_equal(y, y_gold)
    for s in ("USEFUL_MACS", "JOBS_DONE", "CMDS_DROPPED"):
        assert rep.measured[s] == rep_gold.measured[s], s
    assert rep.measured["OUT_STALL_CYCLES"] == seen > 0
    assert rep.measured["CYCLES"] > rep_gold.measured["CYCLES"]


def test_errors_cross_the_process_boundary_with_type_and_message(dev):
    cfg = CFG
    dev.reset()
    dev.configure(timeout_cycles=600)
    bad_read = isa.encode(cfg, Op.READ_OUT, check=False, bank=0, offset=cfg.out_depth - 1, length=2)
    n = 2 * isa.words_per_entry(cfg.out_lanes, cfg.bus_bytes)
    dev.send_command(bad_read)
    with pytest.raises(DeviceTimeout) as ei:
        dev.receive(n, timeout_s=30.0)
    e = ei.value
    assert e.command == f"READ_OUT bank=0 offset={cfg.out_depth - 1} length=2" and (e.got, e.expected) == (0, n)
    assert "BAD_RANGE" in str(e) and "drops it" in str(e) and "no cmd/din/dout transfer for 600" in str(e)
    gd = GoldenDevice(cfg)
    gd.send_command(bad_read)
    with pytest.raises(DeviceTimeout) as gi:
        gd.receive(n, timeout_s=1.0)
    assert gi.value.command == e.command
    # the flag is sticky until reset, exactly as on GoldenDevice
    st, gst = read_status(dev, 30.0), read_status(gd)
    assert st["flags"] == gst["flags"] and st["flags"] & isa.Flag.BAD_RANGE and st["CMDS_DROPPED"] == 1

    # a link that loses din words mid-layer: the driver's DeviceTimeout names the layer and the command
    g, feeds = small_graph()
    dev.reset()
    dev.configure(timeout_cycles=3000, drop_din_after=40)
    try:
        with pytest.raises(DeviceTimeout) as li:
            run_layer(dev, g.node("c3"), feeds["img"], timeout_s=30.0)
    finally:
        dev.configure(drop_din_after=None)
    assert "(layer 'c3':" in str(li.value) and "READ_OUT" in li.value.command, str(li.value)

    # options are checked in the simulation: ValueError with RtlDevice's message
    with pytest.raises(ValueError, match=r"dout_ready_prob must be in \(0, 1\], got 2"):
        dev.configure(dout_ready_prob=2)
    with pytest.raises(ValueError, match="unknown RtlDevice option 'bogus'"):
        dev.configure(bogus=1)
    # sends are checked at once, before anything is queued
    with pytest.raises(ValueError, match="desc must be an integer"):
        dev.send_command(-1)
    with pytest.raises(ValueError, match="words must be integers"):
        dev.send_data([1 << 64])
    # and the device answers correctly again after a reset
    dev.reset()
    dev.configure(timeout_cycles=20000)
    y, _ = run_layer(dev, g.node("c1"), feeds["img"])
    assert np.array_equal(y, run_layer(GoldenDevice(cfg), g.node("c1"), feeds["img"])[0])


def test_error_encoding_round_trip():
    cases = [DeviceTimeout("SYNC", 0, 1, 2.5, "why"), DeviceError("flags BAD_RANGE"), ValueError("n_words must"),
             KeyError("x")]
    for e in cases:
        back = decode_error(encode_error(e))
        if isinstance(e, KeyError):
            assert type(back) is DeviceError and "KeyError" in str(back) and "'x'" in str(back)
        else:
            assert type(back) is type(e) and str(back) == str(e)
    t = decode_error(encode_error(cases[0]))
    assert (t.command, t.got, t.expected, t.timeout_s, t.detail) == ("SYNC", 0, 1, 2.5, "why")


def test_close_is_idempotent_and_final():
    d = make_host_device(CFG)
    d.send_command(isa.encode(CFG, Op.SYNC))
    words = d.receive(isa.sync_response_words(CFG))
    assert len(words) == isa.sync_response_words(CFG) and words[0] & isa.ERROR_MASK == 0 and d.cycles > 0
    d.close()
    d.close()
    assert d.returncode == 0
    with pytest.raises(DeviceError, match="closed"):
        d.receive(1)
    with pytest.raises(DeviceError, match="closed"):
        d.send_command(0)


def test_simulator_that_dies_or_never_connects_gives_device_error():
    t0 = time.monotonic()
    with pytest.raises(DeviceError, match="did not connect within 0.05 s"):
        make_host_device(CFG, connect_timeout_s=0.05)
    d = make_host_device(CFG)
    os.killpg(d.pid, signal.SIGKILL)              # the simulator this test started dies
    d.send_command(isa.encode(CFG, Op.SYNC))
    with pytest.raises(DeviceError, match="RTL simulation failed") as ei:
        d.receive(isa.sync_response_words(CFG))
    assert "simulator log" in str(ei.value)
    with pytest.raises(DeviceError, match="unusable|closed"):
        d.reset()
    d.close()
    d.close()
    assert time.monotonic() - t0 < 60


def test_bad_options_rejected_before_starting():
    with pytest.raises(ValueError, match="unknown RTL device option"):
        make_host_device(CFG, bogus=1)
    with pytest.raises(ValueError, match="din_valid_prob must be in"):
        make_host_device(CFG, din_valid_prob=0)
    with pytest.raises(ValueError, match="connect_timeout_s must be"):
        make_host_device(CFG, connect_timeout_s=0)
    with pytest.raises(ValueError, match="cfg must be an ArrayConfig"):
        make_host_device("small")
    assert issubclass(HostRtlDevice, __import__("firmware.device", fromlist=["Device"]).Device)


def tiny_onnx(seed: int = 0):
    """Float ONNX model fitting SMALL_TOP: Conv 3x3 + Relu, Conv 1x1 (1x3x8x8 -> 1x6x8x8)."""
    from onnx import helper
    from onnx import numpy_helper as nh

    from bench import onnx as B
    rng = np.random.default_rng(seed)
    inits = [nh.from_array(B._w(rng, 8, 3, 3), "w1"), nh.from_array(rng.standard_normal(8).astype(np.float32) * .1, "b1"),
             nh.from_array(B._w(rng, 6, 8, 1), "w2"), nh.from_array(rng.standard_normal(6).astype(np.float32) * .1, "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[3, 3], pads=[1] * 4, name="c1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="r1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], kernel_shape=[1, 1], name="c2")]
    return B._model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 6, 8, 8])], inits)


def test_cli_runs_an_onnx_model_on_the_rtl(tmp_path, capsys):
    import onnx

    from bench import onnx as B
    from firmware import __main__ as cli
    from firmware.onnx_import import ort_run
    fm = tiny_onnx()
    qm = B.quantize_ort(fm, B.random_feeds(fm, 3, 1), "uint8")
    onnx.save(qm, tmp_path / "m.onnx")
    x = B.random_feeds(fm, 1, 2)[0]["x"]
    np.save(tmp_path / "x.npy", x)
    rc = cli.main(["run", str(tmp_path / "m.onnx"), "--input", str(tmp_path / "x.npy"), "--backend", "rtl",
                   "--config", "small", "--out", str(tmp_path / "y.npz"), "--compare-ort"])
    cap = capsys.readouterr()
    assert rc == 0, cap.out + cap.err
    assert "onnxruntime: 0 of 384 output values differ" in cap.out, cap.out
    assert "rtl: " in cap.out and "simulated cycles" in cap.out and "RTL device ready" in cap.err
    ref = ort_run(qm, {"x": x})
    with np.load(tmp_path / "y.npz") as z:
        assert np.array_equal(z["y"].view(np.uint32), ref["y"].view(np.uint32))
    # the per-layer table shows the RTL's CYCLES counter (= GoldenDevice's cycle model with an ideal host)
    from firmware.golden_device import GoldenDevice
    from firmware.onnx_import import import_qdq
    _, reps = import_qdq(qm).run(GoldenDevice(CFG), {"x": x})
    for r in reps:
        if r.on_array:
            assert f" {r.measured['CYCLES']} " in cap.out, (r.name, cap.out)
