"""The UART link (hw/uart.py, firmware/uart_device.py) and the FPGA flow helpers (hw/fpga.py, hw/ulx3s.py).

* Bit level: UartTx -> UartRx loopback in the Amaranth simulator (random
  bytes, odd and even divisors, back to back and with gaps), break
  detection, start-bit glitch rejection.
* The bridge alone (UartBridge, bit-level serial lines) under a fake
  accelerator that stalls cmd/din for thousands of cycles: every descriptor
  and word arrives intact and in order, `last` where the host put it, dout
  words come back with their `last`, and the credit flow control keeps the
  small receive FIFO from ever overflowing (the sticky overrun flag stays 0).
* End to end: firmware.driver.run_layer -> UartDevice -> bytes -> simulated
  UART (bit level) -> UartBridge -> hw.top.Accelerator -> back, for a small
  conv layer, bit-exact against the same layer on firmware.golden_device;
  counters (USEFUL_MACS, JOBS_DONE, CMDS_DROPPED) equal too. A host killed
  mid-frame is recovered by reset() (break), a bad frame type byte is
  reported, a board built for another ArrayConfig is refused.
* Pure helpers: EHXPLLL dividers within the datasheet limits, baud divisor
  errors, frame layout, yosys stat / nextpnr report parsing, and the tool
  runner's errors (nonzero exit, timeout) carrying the tool's last lines.
* Synthesis smoke check (yosys synth_ecp5, < 1 min): the bridge maps its
  2 KiB FIFO to one DP16KD and uses no multiplier.
"""
from __future__ import annotations

import dataclasses
import json
import re
import stat
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
from amaranth import Module
from amaranth.sim import Simulator

from firmware.device import DeviceError, DeviceTimeout
from firmware.driver import read_status, run_layer
from firmware.golden_device import GoldenDevice
from firmware.graph import Conv2d, Q
from firmware.uart_device import UartDevice, frame_command, frame_data
from golden import isa
from golden.config import ArrayConfig
from golden.isa import Op
from hw import fpga, uart
from hw.uart import UartBridge, UartRx, UartSim, UartTx
from hw.ulx3s import ecp5_pll
from shadow_checks import checked

# Small enough for the Python simulator: 2 rows x 1 dual PE (2 lanes), 2-byte bus.
CFG = ArrayConfig(rows=2, cols=1, weight_min=-128, act_depth=32, wgt_depth=16, param_depth=2, out_depth=16,
                  bus_bytes=2, max_k=16, param_fifo_depth=2)


async def ticks(ctx, n):
    """n clock edges (plain awaits: a background testbench left suspended at the end of a test
    must not sit inside one of Amaranth's async generators)."""
    for _ in range(n):
        await ctx.tick()


# --------------------------------------------------------------------------- bit level
_CheckedUartRx = checked(UartRx, "uart rx")


@pytest.mark.parametrize("divisor", [4, 5])
def test_tx_rx_loopback_break_and_glitch(divisor):
    rng = np.random.default_rng(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA] + [int(v) for v in rng.integers(0, 256, 40)]
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = _CheckedUartRx(divisor)     # its shadow checks on every cycle
    sel_tx = [True]            # testbench switch: line = tx, or driven directly
    line = {"v": 1}
    got, brks = [], []

    async def drive(ctx):
        for i, b in enumerate(data):
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
            if i % 7 == 3:
                await ctx.tick().repeat(int(rng.integers(1, 3 * divisor)))
        await ctx.tick().until(tx.data.ready)
        await ctx.tick().repeat(3 * divisor)
        sel_tx[0] = False
        # a 1-cycle low glitch: no byte, no break
        line["v"] = 0
        await ctx.tick()
        line["v"] = 1
        await ctx.tick().repeat(20 * divisor)
        # a break: low for 15 bit times
        line["v"] = 0
        await ctx.tick().repeat(15 * divisor)
        line["v"] = 1
        await ctx.tick().repeat(3 * divisor)
        # the receiver works again after the break
        sel_tx[0] = True
        ctx.set(tx.data.payload, 0x3C)
        ctx.set(tx.data.valid, 1)
        await ctx.tick().until(tx.data.ready)
        ctx.set(tx.data.valid, 0)
        await ctx.tick().repeat(12 * divisor)

    async def wire(ctx):
        while True:
            await ctx.tick()
            ctx.set(rx.rx, ctx.get(tx.tx) if sel_tx[0] else line["v"])
            if ctx.get(rx.data.valid):
                got.append(ctx.get(rx.data.payload))
            if ctx.get(rx.brk):
                brks.append(len(got))

    sim = Simulator(m)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(wire, background=True)
    sim.run()
    assert got == data + [0x3C]
    assert brks == [len(data)]


# --------------------------------------------------------------------------- bridge alone
_CheckedBridgeCore = checked(uart._BridgeCore, "bridge")


@pytest.fixture
def checked_bridge(monkeypatch):
    monkeypatch.setattr(uart, "_BridgeCore", _CheckedBridgeCore)
    monkeypatch.setattr(uart, "UartRx", _CheckedUartRx)


def test_bridge_framing_and_credit_flow_control(checked_bridge):
    """UartDevice -> bits -> UartBridge -> (fake accelerator with long stalls) -> bits -> UartDevice."""
    cfg = ArrayConfig(rows=2, cols=1, bus_bytes=3, act_depth=16, wgt_depth=16, param_depth=2, out_depth=16)
    fifo_bytes, unit = 32, 4
    dut = UartBridge(cfg, 3, fifo_bytes, unit)
    link = UartSim(cfg, divisor=3, dut=dut)
    rng = np.random.default_rng(7)
    seen_cmd, seen_din = [], []
    dout_words = [(int(rng.integers(0, 1 << 24)), int(i % 3 == 2)) for i in range(9)]
    state = {"overrun": 0}

    async def fake_accelerator(ctx):
        k = 0
        while True:
            stall = 2500 if k in (0, 3) else int(rng.integers(0, 40))      # long stalls: the FIFO fills
            await ticks(ctx, stall + 1)
            ctx.set(dut.cmd.ready, 1)
            ctx.set(dut.din.ready, 1)
            if ctx.get(dut.cmd.valid):                                      # transfers at the next edge
                seen_cmd.append(ctx.get(dut.cmd.payload))
            if ctx.get(dut.din.valid):
                seen_din.append((ctx.get(dut.din.payload.data), ctx.get(dut.din.payload.last)))
            await ctx.tick()
            ctx.set(dut.cmd.ready, 0)
            ctx.set(dut.din.ready, 0)
            state["overrun"] |= ctx.get(dut.overrun)
            k += 1

    async def fake_dout(ctx):
        await ticks(ctx, 4000)
        for w, last in dout_words:
            ctx.set(dut.dout.payload.data, w)
            ctx.set(dut.dout.payload.last, last)
            ctx.set(dut.dout.valid, 1)
            while not ctx.get(dut.dout.ready):
                await ctx.tick()
            await ctx.tick()
            ctx.set(dut.dout.valid, 0)

    link.sim.add_testbench(fake_accelerator, background=True)
    link.sim.add_testbench(fake_dout, background=True)
    dev = UartDevice(cfg, link, settle_s=1e-4, credit_timeout_s=0.5, hello_timeout_s=0.05)
    assert (dev.fifo_bytes, dev.credit_unit) == (fifo_bytes, unit)
    descs = [int(rng.integers(0, 1 << 62)) << 66 | int(rng.integers(0, 1 << 62)) for _ in range(3)]
    words = [[int(v) for v in rng.integers(0, 1 << 24, n)] for n in (1, 12, 5)]
    for d, ws, last in zip(descs, words, (True, False, True)):
        dev.send_command(d)
        dev.send_data(ws, last_on_final=last)
    got = dev.receive(len(dout_words), timeout_s=0.2)
    assert got == [w for w, _ in dout_words]
    link.run(4000)                                       # the fake accelerator's last stall
    assert seen_cmd == descs
    exp_din = []
    for ws, last in zip(words, (True, False, True)):
        exp_din += [(w, int(last and i == len(ws) - 1)) for i, w in enumerate(ws)]
    assert seen_din == exp_din
    assert state["overrun"] == 0
    # the host really was throttled: far more bytes went through than the FIFO holds
    sent = sum(len(frame_command(d)) for d in descs) + sum(len(frame_data(w, 3, la)) for w, la in
                                                            zip(words, (True, False, True)))
    assert sent > 2 * fifo_bytes


def test_bridge_overrun_flag_when_host_ignores_credit():
    """A host that ignores credit overflows the FIFO: the bridge flags it (no silent loss)."""
    cfg = ArrayConfig(rows=2, cols=1, bus_bytes=2, act_depth=16, wgt_depth=16, param_depth=2, out_depth=16)
    dut = UartBridge(cfg, 2, 16, 4)
    link = UartSim(cfg, divisor=2, dut=dut)
    seen = {"overrun": []}

    async def probe(ctx):
        while True:
            await ticks(ctx, 100)
            seen["overrun"].append(ctx.get(dut.overrun))

    link.sim.add_testbench(probe, background=True)
    link.write(frame_data(list(range(4)), 2))        # 12 bytes: fits the 16-byte FIFO
    link.run(12 * 10 * 2 + 100)
    assert set(seen["overrun"]) == {0}
    link.write(frame_data(list(range(30)), 2))       # 64 more bytes, din never ready
    link.run(64 * 10 * 2 + 100)
    assert seen["overrun"][-1] == 1


# --------------------------------------------------------------------------- end to end
def _conv(rng):
    w = rng.integers(-128, 128, (2, 1, 3, 3)).astype(np.int8)
    b = rng.integers(-3000, 3000, 2).astype(np.int32)
    ws = np.asarray(rng.uniform(0.002, 0.02, 2), np.float32).astype(np.float64)
    node = Conv2d("conv3x3", "x", Q(float(np.float32(0.021)), 131, "uint8"), w, b, ws,
                  Q(float(np.float32(0.09)), 5, "int8"), padding=1, act="relu")
    x = rng.integers(0, 256, (1, 1, 3, 3)).astype(np.uint8)
    return node, x


@pytest.fixture(scope="module")
def sim_link():
    with pytest.MonkeyPatch.context() as mp:       # the end-to-end sessions check the bridge's shadows too
        mp.setattr(uart, "_BridgeCore", _CheckedBridgeCore)
        mp.setattr(uart, "UartRx", _CheckedUartRx)
        link = UartSim(CFG, divisor=2, fifo_bytes=64, credit_unit=8)
    yield link
    link.close()


def test_run_layer_over_simulated_uart_is_bit_exact(sim_link):
    rng = np.random.default_rng(3)
    node, x = _conv(rng)
    ref, ref_rep = run_layer(GoldenDevice(CFG), node, x)
    dev = UartDevice(CFG, sim_link, settle_s=1e-4, hello_timeout_s=0.05)
    out, rep = run_layer(dev, node, x, timeout_s=0.1)
    assert out.dtype == ref.dtype and np.array_equal(out, ref)
    for k in ("USEFUL_MACS", "JOBS_DONE", "CMDS_DROPPED"):
        assert rep.measured[k] == ref_rep.measured[k], k
    assert rep.measured["JOBS_DONE"] >= 1 and rep.measured["CMDS_DROPPED"] == 0


def test_break_recovers_a_host_killed_mid_frame(sim_link):
    dev = UartDevice(CFG, sim_link, settle_s=1e-4, hello_timeout_s=0.05)
    # a WRITE_ACT whose payload frame stops after 3 of its bytes (the host "died")
    desc = isa.encode(CFG, Op.WRITE_ACT, bank=0, offset=0, length=4)
    sim_link.write(frame_command(desc) + frame_data([1, 2, 3, 4], CFG.bus_bytes)[:7])
    sim_link.run(400)
    dev.reset()
    st = read_status(dev, timeout_s=0.05)
    assert st["flags"] == 0 and st["CMDS_DROPPED"] == 0 and st["CYCLES"] < 2000     # a fresh accelerator
    # framing is intact again: the same WRITE_ACT, now whole, is accepted without any flag
    dev.send_command(desc)
    dev.send_data(isa.pack_entries(np.arange(8).reshape(4, 2), CFG.bus_bytes))
    dev.send_command(isa.encode(CFG, Op.SYNC))
    sync = dev.receive(isa.sync_response_words(CFG), timeout_s=0.05)
    word = int.from_bytes(b"".join(w.to_bytes(CFG.bus_bytes, "little") for w in sync), "little")
    assert word & isa.ERROR_MASK == 0


def _read_exactly(link, n, what, skip=None):
    """n bytes from a UartSim (``skip``: a one-byte frame type dropped wherever it comes, e.g.
    D_CREDIT between frames); AssertionError naming ``what`` if they do not come."""
    got = b""
    while len(got) < n:
        more = link.read(n - len(got), timeout_s=2e-3)
        assert more, f"no {what}: got {got.hex()}"
        got += more if skip is None else more.replace(bytes([skip]), b"")
    return got


def test_rst_port_resets_bridge_and_accelerator():
    """UartAccelerator.rst (the board's PLL-lock reset) resets the bridge mid-frame and, through the
    acc_rst register, the accelerator stuck in an interlocked WRITE_ACT waiting for its words."""
    link = UartSim(CFG, divisor=2, fifo_bytes=64, credit_unit=8)
    pulse = {"n": 0}

    async def reset_driver(ctx):
        while True:
            await ctx.tick()
            ctx.set(link.dut.rst, pulse["n"] > 0)
            pulse["n"] = max(0, pulse["n"] - 1)

    link.sim.add_testbench(reset_driver, background=True)
    desc = isa.encode(CFG, Op.WRITE_ACT, bank=0, offset=0, length=4)
    link.write(frame_command(desc) + frame_data([1, 2, 3, 4], CFG.bus_bytes)[:7])
    link.run(24 * 10 * 2 + 200)                      # the decoder now waits for WRITE_ACT's last words
    pulse["n"] = 3
    link.drain(1e-3)                                 # credit bytes sent before the reset
    link.write(bytes([uart.H_HELLO, 0x33]))          # parsed as a frame: the parser was reset too
    hello = uart.hello_frame(CFG, 0x33, 64, 8)
    assert _read_exactly(link, len(hello), "D_HELLO") == hello
    link.write(frame_command(isa.encode(CFG, Op.SYNC)))
    n = isa.sync_response_words(CFG)
    want = bytes([uart.D_WORD, 0, 0] * (n - 1) + [uart.D_LAST, 0, 0])            # idle, no flags
    got = _read_exactly(link, len(want), "SYNC response (the accelerator was not reset)",
                        skip=uart.D_CREDIT)
    assert got == want
    link.close()


def test_bad_frame_type_is_reported_and_reset_recovers(sim_link):
    dev = UartDevice(CFG, sim_link, settle_s=1e-4, hello_timeout_s=0.05)
    sim_link.write(bytes([0x7E]))
    with pytest.raises(DeviceError, match="0x7e"):
        dev.receive(1, timeout_s=0.01)
    dev.reset()
    dev.send_command(isa.encode(CFG, Op.SYNC))
    assert dev.receive(isa.sync_response_words(CFG), timeout_s=0.05) == [0, 0]      # idle, no flags


def test_receive_timeout_names_the_command(sim_link):
    dev = UartDevice(CFG, sim_link, settle_s=1e-4, hello_timeout_s=0.05)
    dev.send_command(isa.encode(CFG, Op.READ_OUT, bank=0, offset=0, length=3))
    with pytest.raises(DeviceTimeout, match="READ_OUT bank=0 offset=0 length=3"):
        dev.receive(4, timeout_s=0.002)        # 3 words come, the 4th never does


def test_board_for_another_config_is_refused(sim_link):
    other = ArrayConfig(rows=2, cols=1, weight_min=-128, act_depth=32, wgt_depth=16, param_depth=2, out_depth=16,
                        bus_bytes=2, max_k=16, param_fifo_depth=3)
    with pytest.raises(DeviceError, match="another ArrayConfig"):
        UartDevice(other, sim_link, settle_s=1e-4, hello_timeout_s=0.05)


# --------------------------------------------------------------------------- pure helpers
@pytest.mark.parametrize("mhz", [150, 125, 100, 83.3, 75, 60, 48, 33.3, 10])
def test_ecp5_pll_within_limits(mhz):
    p = ecp5_pll(25e6, mhz * 1e6)
    pfd = 25e6 / p["clki_div"]
    assert 1 <= p["clki_div"] <= 128 and 1 <= p["clkfb_div"] <= 80 and 1 <= p["clkop_div"] <= 128
    assert 3.125e6 <= pfd <= 400e6 and 400e6 <= p["vco_hz"] <= 800e6
    assert p["freq_hz"] == pytest.approx(pfd * p["clkfb_div"]) and p["vco_hz"] == pytest.approx(p["freq_hz"] * p["clkop_div"])
    assert p["freq_hz"] <= mhz * 1e6 * (1 + 1e-12)
    # nothing achievable lies between the choice and the request
    best = max(25e6 / r * f for r in range(1, 9) for f in range(1, 81)
               if 25e6 / r >= 3.125e6 and 25e6 / r * f <= mhz * 1e6 * (1 + 1e-12)
               and any(400e6 <= 25e6 / r * f * o <= 800e6 for o in range(1, 129)))
    assert p["freq_hz"] >= best * (1 - 1e-12)
    if mhz in (150, 100, 75):
        assert p["freq_hz"] == mhz * 1e6


def test_baud_divisor_and_frames():
    assert uart.baud_divisor(150e6, 3_000_000) == 50
    assert uart.baud_divisor(75e6, 115200) == 651
    with pytest.raises(ValueError, match="error"):
        uart.baud_divisor(40e6, 3_000_000)           # 13.33 -> 13: 3.077 Mbaud, 2.6 % fast
    with pytest.raises(ValueError, match="baud must be"):
        uart.baud_divisor(10e6, 3_000_000)
    d = (0x1234 << 100) | 0xAB
    f = frame_command(d)
    assert f[0] == uart.H_CMD and len(f) == 17 and int.from_bytes(f[1:], "little") == d
    f = frame_data([0x0102, 0xA0B0], 2)
    assert f == bytes([uart.H_DATA, uart.DATA_LAST, 1, 0, 0x02, 0x01, 0xB0, 0xA0])
    assert frame_data([5], 2, last_on_final=False)[1] == 0
    with pytest.raises(ValueError, match="words must be"):
        frame_data([1 << 16], 2)
    h = uart.hello_frame(CFG, 0x5A, 64, 8)
    assert len(h) == uart.HELLO_BYTES and h[:6] == bytes([uart.D_HELLO]) + b"ANL" + bytes([1, 0x5A])
    assert int.from_bytes(h[6:10], "little") == uart.config_id(CFG) and h[10:] == bytes([6, 3])
    assert uart.config_id(CFG) != uart.config_id(dataclasses.replace(CFG, out_depth=32))


def test_frame_data_splits_long_bursts(monkeypatch):
    import firmware.uart_device as ud
    monkeypatch.setattr(ud, "MAX_BURST", 4)
    f = ud.frame_data(list(range(10)), 1)
    # bursts of 4, 4, 2 words; only the final one carries last
    assert f == (bytes([uart.H_DATA, 0, 3, 0, 0, 1, 2, 3]) + bytes([uart.H_DATA, 0, 3, 0, 4, 5, 6, 7])
                 + bytes([uart.H_DATA, uart.DATA_LAST, 1, 0, 8, 9]))


STAT_TABLE = """
3. Printing statistics.

=== accelerator ===

        +----------Local Count, excluding submodules.
        |
    44230 wires
    48810 cells
     4821   CCU2C
       36   DP16KD
    22254   LUT4
      130   MULT18X18D
    19424   TRELLIS_FF
"""

STAT_HIER = """
=== accelerator.core.arr.pe_0_0 ===

   Number of cells:                 12
     DSP48E2                         1
     FDRE                           40
     LUT2                            3

=== accelerator.core.arr.pe_0_1 ===

   Number of cells:                 12
     DSP48E2                         1
     FDRE                           40

=== design hierarchy ===

   Number of cells:               1000
     DSP48E2                        34
     FDRE                          900
     LUT2                           30
     LUT6                           10
     RAMB36E2                        3
     RAMB18E2                        1
"""


def test_parse_yosys_stat_both_formats():
    c = fpga.parse_yosys_stat(STAT_TABLE)
    assert c == {"CCU2C": 4821, "DP16KD": 36, "LUT4": 22254, "MULT18X18D": 130, "TRELLIS_FF": 19424}
    h = fpga.parse_yosys_stat(STAT_HIER)
    assert h["DSP48E2"] == 34 and h["RAMB36E2"] == 3 and h["LUT6"] == 10
    mods = fpga.parse_yosys_stat_modules(STAT_HIER)
    assert mods["accelerator.core.arr.pe_0_1"] == {"DSP48E2": 1, "FDRE": 40}
    with pytest.raises(ValueError, match="stat"):
        fpga.parse_yosys_stat("nothing here")


def test_critical_path_summary():
    rep = {"critical_paths": [
        {"from": "clk", "to": "clk", "path": [
            {"type": "clk-to-q", "from": {"cell": "a"}, "to": {"cell": "a"}, "delay": 0.5},
            {"type": "routing", "from": {"cell": "a"}, "to": {"cell": "m"}, "delay": 1.5},
            {"type": "logic", "from": {"cell": "m"}, "to": {"cell": "m"}, "delay": 4.0},
            {"type": "routing", "from": {"cell": "m"}, "to": {"cell": "b"}, "delay": 1.0},
            {"type": "setup", "from": {"cell": "b"}, "to": {"cell": "b"}, "delay": 0.1}]},
        {"from": "clk", "to": "clk", "path": [{"type": "logic", "from": {"cell": "x"}, "to": {"cell": "y"},
                                                "delay": 1.0}]}]}
    cp = fpga._critical_path(rep)
    assert cp["delay_ns"] == 7.1 and cp["routing_ns"] == 2.5 and cp["logic_ns"] == 4.6
    assert cp["start"] == "a" and cp["end"] == "b" and cp["cells"] == ["a", "m", "b"]


def _fake_tool(tmp_path, monkeypatch, body):
    exe = tmp_path / "bin" / "fake-tool"
    exe.parent.mkdir()
    exe.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(fpga, "_BIN", exe.parent)
    return exe.name


def test_tool_failure_carries_its_last_lines(tmp_path, monkeypatch):
    name = _fake_tool(tmp_path, monkeypatch, """
        import sys
        open("tool.log", "w").write("\\n".join(f"step {i}" for i in range(50)) + "\\nERROR: no fit: 170 MULT18X18D > 156\\n")
        sys.exit(3)
    """)
    with pytest.raises(fpga.ToolError) as e:
        fpga.run_tool(name, [], tmp_path, 30, log="tool.log")
    msg = str(e.value)
    assert "exited with code 3" in msg and "ERROR: no fit: 170 MULT18X18D > 156" in msg and "step 49" in msg
    assert "step 10" not in msg and e.value.returncode == 3


def test_tool_timeout_is_killed_with_its_last_lines(tmp_path, monkeypatch):
    name = _fake_tool(tmp_path, monkeypatch, """
        import time
        print("placing...", flush=True)
        time.sleep(60)
    """)
    with pytest.raises(fpga.ToolError) as e:
        fpga.run_tool(name, [], tmp_path, 1.5)
    assert "did not finish within 2 s" in str(e.value) and "placing..." in str(e.value)
    assert e.value.returncode is None


# router2's overused-wire counts per iteration on the 30x4 top (docs/fpga.md, session 4 logs)
_CONVERGED = [49892, 31828, 20647, 13814, 9455, 6754, 5290, 3926, 2838, 2151, 1730, 1487, 1180, 859, 594, 427,
              331, 248, 194, 140, 115, 115, 106, 116, 91, 54, 54, 40, 43, 36, 29, 29, 14, 18, 14, 13, 11, 5, 4,
              4, 3, 4, 5, 1, 2, 0]
_OSCILLATING = [50463, 33799, 22682, 14755, 10203, 7348, 5708, 4653, 4052, 3417, 2696, 2338, 2076, 1958, 1636,
                1383, 1165, 940, 854, 781, 722, 678, 608, 615, 520, 479, 437, 358, 321, 281, 258, 267, 260, 246,
                225, 192, 216, 216, 211, 207, 182, 184, 193, 198, 194, 189, 194, 197, 195, 178, 159, 170, 172,
                181, 210, 200, 201, 199, 204, 222, 228, 224, 250, 255, 254, 282, 263, 288, 304, 293]


def _router_log(counts, start=1):
    return "Info: Running router2...\n" + "".join(
        f"Info:     iter={i} wires={760000 + i} overused={c} overuse={c + 3} archfail=NA\n"
        for i, c in enumerate(counts, start))


def test_router2_stall_spares_converging_runs_and_stops_oscillating_ones():
    for n in range(1, len(_CONVERGED) + 1):
        assert fpga.router2_stall(_router_log(_CONVERGED[:n])) is None
    first = next(n for n in range(1, len(_OSCILLATING) + 1) if fpga.router2_stall(_router_log(_OSCILLATING[:n])))
    assert first == 51 + fpga.ROUTER_PATIENCE          # best 159 at iteration 51
    why = fpga.router2_stall(_router_log(_OSCILLATING))
    assert "fewest overused wires 159 at iteration 51" in why and "no fewer in the 19 iterations" in why
    # a second router run in the same log starts the count over; a best of 0 is a converged run
    assert fpga.router2_stall(_router_log(_OSCILLATING) + _router_log([900, 800])) is None
    assert fpga.router2_stall(_router_log([5, 0] + [0] * 30)) is None


def test_watchdog_stops_a_running_tool(tmp_path, monkeypatch):
    monkeypatch.setattr(fpga, "WATCH_POLL_S", 0.2)
    name = _fake_tool(tmp_path, monkeypatch, """
        import time
        with open("tool.log", "w") as f:
            for i in range(1, 100000):
                f.write(f"Info:     iter={i} wires=1 overused={500 if i < 3 else 600} overuse=1 archfail=NA\\n")
                f.flush()
                time.sleep(0.01)
    """)
    t0 = time.monotonic()
    with pytest.raises(fpga.ToolStalled) as e:
        fpga.run_tool(name, [], tmp_path, 60, log="tool.log", watch=lambda text: fpga.router2_stall(text, 20))
    assert time.monotonic() - t0 < 30 and "fewest overused wires 500 at iteration 1" in str(e.value)
    assert "stopped: router2 did not converge" in str(e.value) and e.value.returncode is None
    size = (tmp_path / "tool.log").stat().st_size
    time.sleep(0.5)
    assert (tmp_path / "tool.log").stat().st_size == size      # the tool is gone


def _fake_nextpnr(monkeypatch, stall, fmax=None, fail=(), delay=0.0, hang=False):
    """run_tool stand-in for nextpnr: seeds in ``stall`` are given up by the real watchdog rule on an
    oscillating router2 log, seeds in ``fail`` fail (after ``delay``); with ``hang`` the others run
    until their watchdog stops them; else they route at ``fmax[seed]`` MHz (a report with one clock)."""
    seeds = []
    lock = threading.Lock()

    def fake_run_tool(name, args, cwd, timeout_s, log=None, watch=None):
        s = int(args[args.index("--seed") + 1])
        with lock:
            seeds.append(s)
        assert (cwd / "ulx3s.json").read_text() == "netlist" and cwd.name == f"seed{s}"
        time.sleep(delay * (s % 3))
        if s in fail:
            time.sleep(delay)
            raise fpga.ToolError(name, "killed by signal 9 (out of memory?)", [], None, -9)
        if hang:
            t0 = time.monotonic()
            while not (why := watch("")):
                assert time.monotonic() - t0 < 20, "never stopped"
                time.sleep(0.01)
            hung.append(why)
            raise fpga.ToolStalled(name, why, [], None)
        (cwd / "nextpnr.log").write_text(_router_log(_OSCILLATING))
        why = watch((cwd / "nextpnr.log").read_text())
        if s in stall:
            raise fpga.ToolStalled(name, why, [], str(cwd / "nextpnr.log"))
        (cwd / "nextpnr_report.json").write_text(json.dumps({"seed": s}))
        (cwd / "ulx3s.config").write_text(f"config of seed {s}")
        return 1.0

    def parse(rep):
        f = (fmax or {}).get(rep["seed"], 50.0)
        return {"fmax": {"clk": {"achieved_mhz": f, "constraint_mhz": 150.0}}}

    hung = []
    monkeypatch.setattr(fpga, "run_tool", fake_run_tool)
    monkeypatch.setattr(fpga, "parse_nextpnr_report", parse)
    return seeds, hung


def test_nextpnr_tries_the_next_seed_when_routing_stalls(tmp_path, monkeypatch):
    (tmp_path / "ulx3s.json").write_text("netlist")
    (tmp_path / "ulx3s.lpf").write_text("")
    seeds, _ = _fake_nextpnr(monkeypatch, stall={1, 2})
    said = []
    out = fpga._nextpnr(tmp_path, "ulx3s", 150.0, 100, seed=1, attempts=3, log=said.append)
    assert seeds == [1, 2, 3] and out["seed"] == 3 and [s["seed"] for s in out["stalled_seeds"]] == [1, 2]
    assert "159 at iteration 51" in out["stalled_seeds"][0]["why"] and "placing again with seed 2" in said[0]
    assert "router2 did not converge" in (tmp_path / "seed1" / "nextpnr.log").read_text() + said[0]
    assert (tmp_path / "ulx3s.config").read_text() == "config of seed 3"     # the routed seed's outputs
    seeds, _ = _fake_nextpnr(monkeypatch, stall={4, 5})
    with pytest.raises(fpga.ToolError, match=r"routing did not converge with seeds 4\.\.5 .*try --seed 6"):
        fpga._nextpnr(tmp_path, "ulx3s", 150.0, 100, seed=4, attempts=2, log=said.append)
    assert seeds == [4, 5] and "placing again with seed 5" in said[-2] and "placing again" not in said[-1]


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_nextpnr_seed_sweep_keeps_the_fastest_routed_placement(tmp_path, monkeypatch, jobs):
    """seeds=3: the first three seeds that route (a stalled one is replaced by the next seed, attempts - 1
    times at most) and the fastest is kept; the same seeds and the same choice for any number of jobs."""
    (tmp_path / "ulx3s.json").write_text("netlist")
    (tmp_path / "ulx3s.lpf").write_text("")
    seeds, _ = _fake_nextpnr(monkeypatch, stall={2}, fmax={1: 61.0, 3: 82.7, 4: 69.4, 5: 90.0}, delay=0.05)
    said = []
    out = fpga._nextpnr(tmp_path, "ulx3s", 150.0, 100, seed=1, attempts=3, log=said.append, seeds=3, jobs=jobs)
    assert sorted(seeds) == [1, 2, 3, 4] and out["seed"] == 3
    assert out["seed_fmax_mhz"] == {"1": 61.0, "3": 82.7, "4": 69.4} and [s["seed"] for s in out["stalled_seeds"]] == [2]
    assert (tmp_path / "ulx3s.config").read_text() == "config of seed 3" and "keeping seed 3" in said[-1]
    # attempts=1: a stalled seed is not replaced; fewer routed than asked for is still a result
    seeds, _ = _fake_nextpnr(monkeypatch, stall={2}, fmax={1: 61.0, 3: 82.7})
    out = fpga._nextpnr(tmp_path, "ulx3s", 150.0, 100, seed=1, attempts=1, log=said.append, seeds=3, jobs=jobs)
    assert sorted(seeds) == [1, 2, 3] and out["seed"] == 3 and list(out["seed_fmax_mhz"]) == ["1", "3"]


def test_nextpnr_seed_sweep_stops_every_run_when_one_fails(tmp_path, monkeypatch):
    """A tool error in one seed's run (not a stall: out of memory) ends the pass with that error; the
    runs still going are stopped through their watchdog."""
    (tmp_path / "ulx3s.json").write_text("netlist")
    (tmp_path / "ulx3s.lpf").write_text("")
    seeds, hung = _fake_nextpnr(monkeypatch, stall=set(), fail={1}, delay=0.2, hang=True)
    with pytest.raises(fpga.ToolError, match="out of memory"):
        fpga._nextpnr(tmp_path, "ulx3s", 150.0, 100, seed=1, attempts=3, log=lambda *a: None, seeds=4, jobs=2)
    assert sorted(seeds) == [1, 2] and len(hung) == 1 and "another seed's run failed" in hung[0]


# --------------------------------------------------------------------------- synthesis smoke
def test_bridge_synthesises_for_ecp5(tmp_path):
    """yosys synth_ecp5 of the bridge alone: the 2 KiB FIFO is one DP16KD, no multipliers."""
    from amaranth.back import rtlil
    cfg = ArrayConfig(rows=2, cols=1, bus_bytes=4, act_depth=16, wgt_depth=16, param_depth=2, out_depth=16)
    (tmp_path / "b.il").write_text(rtlil.convert(UartBridge(cfg, 50), name="bridge"))
    stat_text, _ = fpga._yosys(tmp_path, "read_rtlil b.il\nsynth_ecp5 -top bridge\ntee -q -o stat.txt stat\n", 300)
    cells = fpga.parse_yosys_stat(stat_text)
    assert cells.get("DP16KD") == 1 and cells.get("MULT18X18D", 0) == 0
    assert 50 < cells.get("TRELLIS_FF", 0) < 600


def test_board_accelerator_reset_is_driven_by_one_flip_flop(tmp_path):
    """ULX3STop: the accelerator's synchronous resets come from the bridge's acc_rst register (no
    `rst | break` LUT in front of thousands of LSR pins) through one DCCA, which puts the net on an
    ECP5 global network; yosys proc/flatten/opt."""
    import json
    cfg = ArrayConfig(rows=2, cols=1, bus_bytes=4, act_depth=16, wgt_depth=16, param_depth=2, out_depth=16)
    fpga._board_files(cfg, tmp_path, "top", 150e6, 3_000_000)
    fpga._yosys(tmp_path, "read_rtlil top.il\nhierarchy -top top\nproc\nflatten\nopt -fast\nopt_dff\nopt_clean\n"
                "write_json net.json\ntee -q -o stat.txt stat\n", 300)
    mod = json.loads((tmp_path / "net.json").read_text())["modules"]["top"]
    driver = {b: c["type"] for c in mod["cells"].values() for p, d in c.get("port_directions", {}).items()
              if d == "output" for b in c["connections"][p]}
    by_net = {}
    for c in mod["cells"].values():
        if c["type"].startswith("$sdff"):
            b = c["connections"]["SRST"][0]
            by_net[b] = by_net.get(b, 0) + len(c["connections"]["Q"])
    net, bits = max(by_net.items(), key=lambda kv: kv[1])
    # The datapath registers are reset-less, so the reset reaches the control state only; what is
    # left besides the flip-flop's own net are local clears that yosys merges with it (small fanout).
    dcca = [c for c in mod["cells"].values() if c["type"] == "DCCA"]
    assert len(dcca) == 1 and dcca[0]["connections"]["CLKO"] == [net], dcca
    src = dcca[0]["connections"]["CLKI"][0]
    # the flip-flop's own net resets only the bridge's own state (79 bits in this configuration),
    # the board's lock reset only the UART receiver (the LED counters have none)
    names = {b: [n for n, v in mod["netnames"].items() if b in v["bits"]] for b in by_net}
    lock = [b for b in by_net if any(n.endswith("bridge.rst") for n in names[b])]
    others = sorted((v for k, v in by_net.items() if k not in (net, src, *lock)), reverse=True)
    assert bits > 500 and by_net.get(src, 0) <= 128 and all(by_net[b] <= 128 for b in lock), \
        (bits, by_net.get(src), [by_net[b] for b in lock])
    assert not others or others[0] <= 64, others[:5]
    assert driver.get(src) == "$dff" and dcca[0]["connections"]["CE"] == ["1"]
    name = [n for n, v in mod["netnames"].items() if src in v["bits"]]
    assert any(n.endswith("acc_rst") for n in name), name


def test_fpga_cli_rejects_bad_configs_before_any_tool_runs(capsys):
    from hw import build
    assert fpga.cli("ulx3s", ["--rows", "0"]) == 2
    assert "rows must be an integer" in capsys.readouterr().err
    assert build.main(["--target", "xcup", "--act-depth", str(2**20), "--wgt-depth", str(2**20),
                       "--out-depth", str(2**20), "--max-k", str(2**20)]) == 2
    assert "128" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build.main(["--target", "verilog", "--freq", "100"])         # FPGA-only options stay FPGA-only


def test_summary_lines_of_reports():
    res = {k: {"used": 10, "available": v} for k, v in fpga.ECP5_AVAILABLE.items()}
    cfgd = dataclasses.asdict(fpga.ULX3S_CFG)
    p = {"clock_mhz": 150.0, "fmax": {"clk": {"achieved_mhz": 40.0, "constraint_mhz": 150.0}}, "met": False,
         "fmax_mhz": 40.0}
    rep = {"target": "ulx3s", "device": fpga.ECP5_DEVICE, "cfg": cfgd, "macs_per_cycle": 120, "passes": [p],
           "fmax_mhz": 40.0, "target_mhz": 150.0, "target_met": False, "resources": res,
           "critical_path": {"delay_ns": 25.0, "logic_ns": 12.0, "routing_ns": 13.0, "steps": 9, "start": "a",
                             "end": "b"},
           "bitstream": "x.bit", "bitstream_bytes": 123, "bitstream_clock_mhz": 37.5, "bitstream_timing_met": True,
           "baud": 3000000, "uart_divisor": 12}
    text = "\n".join(fpga.summary_lines(rep))
    assert "Fmax 40.00 MHz vs target 150 MHz: NOT met" in text and "MULT18X18D 10/156" in text
    assert "x.bit (123 bytes)" in text
    x = {"target": "xcup", "cfg": cfgd, "macs_per_cycle": 128, "note": fpga.XCUP_NOTE, "pe_count": 64,
         "pe_dsp48e2": 64, "macs_per_dsp48e2": 2.0, "macs_per_dsp48e2_whole_design": 0.6,
         "resources": {"DSP48E2": 200, "LUT": 1, "FF": 2, "BRAM36": 3.5, "RAMB36E2": 3, "RAMB18E2": 1, "URAM288": 0}}
    text = "\n".join(fpga.summary_lines(x))
    assert "2 INT8 MACs per DSP48E2" in text and "no vendor place and route" in text


def test_pass_is_reused_only_when_rtlil_constraints_and_options_are_unchanged(tmp_path, monkeypatch):
    calls = []
    il = {"text": "module A"}

    def board_files(cfg, workdir, name, freq_hz, baud):
        (workdir / f"{name}.il").write_text(il["text"])
        (workdir / f"{name}.lpf").write_text("LOCATE COMP x;")
        return {"clock_mhz": freq_hz / 1e6}

    def yosys(workdir, script, timeout_s):
        calls.append("yosys")
        return STAT_TABLE, 1.0

    def nextpnr(workdir, name, freq_mhz, timeout_s, seed, attempts, log, seeds=1, jobs=1):
        calls.append("nextpnr")
        (workdir / f"{name}.config").write_text("cfg")
        return {"fmax": {"clk": {"achieved_mhz": 40.0, "constraint_mhz": freq_mhz}}, "resources": {}}

    monkeypatch.setattr(fpga, "_board_files", board_files)
    monkeypatch.setattr(fpga, "_yosys", yosys)
    monkeypatch.setattr(fpga, "_nextpnr", nextpnr)
    t = {"yosys": 1, "nextpnr": 1}
    a = fpga._pass(CFG, tmp_path, 150e6, 3_000_000, t, 1)
    assert calls == ["yosys", "nextpnr"] and not a.get("reused") and a["fmax_mhz"] == 40.0 and not a["met"]
    b = fpga._pass(CFG, tmp_path, 150e6, 3_000_000, t, 1)
    assert calls == ["yosys", "nextpnr"] and b["reused"] and b["fmax_mhz"] == 40.0
    fpga._pass(CFG, tmp_path, 150e6, 3_000_000, t, 2)                 # another seed: run again
    il["text"] = '  attribute \\src "/x/hw/core.py:999"\nmodule A'
    assert fpga._pass(CFG, tmp_path, 150e6, 3_000_000, t, 2)["reused"]  # only a source location moved
    il["text"] = "module B"
    fpga._pass(CFG, tmp_path, 150e6, 3_000_000, t, 2)                 # other RTLIL: run again
    fpga._pass(CFG, tmp_path, 100e6, 3_000_000, t, 2)                 # other clock: run again
    assert calls == ["yosys", "nextpnr"] * 4
    fpga._pass(CFG, tmp_path, 100e6, 3_000_000, t, 2, seeds=3)        # a seed sweep: run again
    assert fpga._pass(CFG, tmp_path, 100e6, 3_000_000, t, 2, seeds=3, jobs=2)["reused"]   # jobs: same result
    assert calls == ["yosys", "nextpnr"] * 5


def test_board_rx_is_registered_in_its_io_cell(tmp_path):
    """The rx pin's first register is the input register of its I/O cell (IFS1P3DX), not a fabric
    flip-flop the placer may put far from the pin (issue 6: 147 tiles, 8.5 ns)."""
    fpga._board_files(CFG, tmp_path, "ulx3s", 50e6, 3_000_000)
    il = (tmp_path / "ulx3s.il").read_text()
    assert len(re.findall(r"cell \\IFS1P3DX ", il)) == 1
    # then RX_PIN_STAGES fabric registers on the way to the receiver (one 8.4-9.1 ns route otherwise)
    from hw.ulx3s import RX_PIN_STAGES
    assert RX_PIN_STAGES >= 1
    dffs = {q: d for d, q in re.findall(r"cell \$dff \S+\n(?:    parameter [^\n]*\n)*    connect \\D (\S+)[^\n]*\n"
                                          r"    connect \\CLK [^\n]*\n    connect \\Q (\S+)\n", il)}
    assert [dffs.get(f"\\rx_pin{k}") for k in range(RX_PIN_STAGES)] == \
        ["\\i"] + [f"\\rx_pin{k}" for k in range(RX_PIN_STAGES - 1)]
    assert f"connect \\rx \\rx_pin{RX_PIN_STAGES - 1} [0]" in il


def test_board_lpf_leaves_the_pll_clock_to_nextpnrs_freq(tmp_path):
    """The LPF keeps the pins but not the oscillator's FREQUENCY line: nextpnr would derive the PLL
    output's constraint from it (= the PLL frequency), and a rebuild at a lowered PLL frequency must
    still be placed and routed for the target (``--freq``)."""
    info = fpga._board_files(CFG, tmp_path, "ulx3s", 50e6, 3_000_000)
    lpf = (tmp_path / "ulx3s.lpf").read_text()
    assert info["clock_mhz"] == 50.0 and "FREQUENCY" not in lpf and 'LOCATE COMP "clk25_0__io" SITE "G2"' in lpf
    args = fpga._nextpnr_args("ulx3s", 150.0, 1)
    assert args[args.index("--freq") + 1] == "150"


def test_rebuilds_lower_the_pll_but_keep_the_target_until_a_pass_closes(tmp_path, monkeypatch):
    """Pass 1 at the target misses; every rebuild clocks the PLL <= 85 % of the previous pass's Fmax,
    is placed and routed for the target, and is met only when its Fmax reaches its own PLL clock;
    the bitstream is the last pass's."""
    fmax = iter([62.08, 44.0, 40.0])
    calls = []

    def fake_pass(cfg, workdir, freq_hz, baud, timeouts, seed, pnr_mhz=None, attempts=None, log=None, seeds=1,
                  jobs=1):
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "ulx3s.bit").write_bytes(workdir.name.encode())
        f = next(fmax)
        calls.append((workdir.name, freq_hz / 1e6, pnr_mhz))
        return {"clock_mhz": freq_hz / 1e6, "pnr_target_mhz": pnr_mhz, "fmax_mhz": f, "met": f >= freq_hz / 1e6,
                "fmax": {"clk": {"achieved_mhz": f, "constraint_mhz": pnr_mhz}}, "critical_path": None,
                "resources": {}, "uart_divisor": round(freq_hz / 3e6)}

    monkeypatch.setattr(fpga, "_pass", fake_pass)
    monkeypatch.setattr(fpga, "run_tool", lambda *a, **k: 0.0)
    rep = fpga.build_ulx3s(CFG, tmp_path, compare_packing=False, log=lambda *a: None)
    assert [c[0] for c in calls] == ["pass1", "pass2", "pass3"]
    assert calls[0][1:] == (150.0, 150.0) and all(c[2] == 150.0 for c in calls)
    assert calls[1][1] <= 62.08 * 0.85 and calls[2][1] <= 44.0 * 0.85
    assert [p["met"] for p in rep["passes"]] == [False, False, True]
    assert rep["bitstream_timing_met"] and rep["bitstream_clock_mhz"] == calls[2][1] and not rep["target_met"]
    assert (tmp_path / "ulx3s.bit").read_bytes() == b"pass3" and rep["fmax_mhz"] == 62.08
    fmax = iter([62.08, 44.0, 40.0])
    calls.clear()
    rep = fpga.build_ulx3s(CFG, tmp_path, compare_packing=False, max_passes=2, log=lambda *a: None)
    assert len(calls) == 2 and not rep["bitstream_timing_met"]
    with pytest.raises(ValueError, match=r"max_passes must be an integer in \[1, 10\]"):
        fpga.build_ulx3s(CFG, tmp_path, max_passes=0)
    # pll_mhz: pass 1 already clocks the bitstream lower, still placed and routed for the target
    fmax = iter([62.08])
    calls.clear()
    rep = fpga.build_ulx3s(CFG, tmp_path, compare_packing=False, pll_mhz=60.0, log=lambda *a: None)
    assert len(calls) == 1 and calls[0][1] <= 60.0 and calls[0][2] == 150.0 and rep["bitstream_timing_met"]
    with pytest.raises(ValueError, match=r"pll_mhz must be in \[10, target_mhz=150\] MHz"):
        fpga.build_ulx3s(CFG, tmp_path, pll_mhz=151.0)


def test_timing_by_block_from_detailed_nextpnr_report():
    """Per-endpoint arrivals of a --detailed-timing-report: blocks from the cell names (yosys/nextpnr
    suffixes stripped), late endpoints counted by pin kind against the constraint's period."""
    def net(name, driver, eps):
        return {"net": name, "driver": driver, "port": "Q",
                "endpoints": [{"cell": c, "port": p, "delay": [d * 0.9, d]} for c, p, d in eps]}
    rep = {
        "fmax": {"clk": {"achieved": 80.0, "constraint": 150.0}},
        "utilization": {},
        "detailed_net_timings": [
            net("acc.bridge.acc_rst", "acc.bridge.acc_rst_TRELLIS_FF_Q",
                [("acc.acc.core.lane0.valid_TRELLIS_FF_Q_3", "LSR", 7.5),
                 ("acc.acc.seq.v_TRELLIS_FF_Q", "LSR", 5.0)]),
            net("acc.acc.seq.x", "acc.acc.seq.x_TRELLIS_FF_Q",
                [("acc.acc.seq.p_last_TRELLIS_FF_Q", "M", 12.5), ("acc.acc.seq.job0_TRELLIS_FF_Q_2", "CE", 6.0)]),
            net("acc.acc.dec.w", "acc.acc.dec.w_TRELLIS_FF_Q",
                [("acc.acc.par.bank0.0.7$DPRAM_COMB3", "WRE", 9.0)]),
        ],
    }
    assert fpga.endpoint_block("acc.acc.core.lane0.lshift_x_TRELLIS_FF_Q_7") == "acc.acc.core.lane0"
    assert fpga.endpoint_block("acc.acc.par.bank0.0.7$DPRAM_COMB3") == "acc.acc.par.bank0"
    out = fpga.parse_nextpnr_report(rep)
    ep = out["endpoints"]
    assert ep["count"] == 5 and ep["late"] == 3 and ep["period_ns"] == round(1000 / 150, 3)
    assert ep["arrival_ns_p50_p90_max"][2] == 12.5
    blocks = {b["block"]: b for b in out["timing_by_block"]}
    assert [b["block"] for b in out["timing_by_block"]][0] == "acc.acc.seq"
    assert blocks["acc.acc.seq"]["late"] == 1 and blocks["acc.acc.seq"]["late_by_kind"] == {"data": 1}
    assert blocks["acc.acc.seq"]["endpoints"] == 3 and blocks["acc.acc.seq"]["worst_net"] == "acc.acc.seq.x"
    assert blocks["acc.acc.core.lane0"]["late_by_kind"] == {"reset": 1}
    assert blocks["acc.acc.par.bank0"]["late_by_kind"] == {"lutram": 1}
    # without the detailed section there is nothing per endpoint, and nothing is invented
    assert "endpoints" not in fpga.parse_nextpnr_report({k: v for k, v in rep.items() if k != "detailed_net_timings"})
