"""firmware.golden_device.GoldenDevice: the ISA of golden/isa.py (docs/top.md) command by command.

Buffers and RUN (== golden.array_model.tile_value), the decoder's drop rules
and flags, payload framing, status/sync/clear, counters, and the timeout and
error paths of the driver (DeviceTimeout / DeviceError naming layer and command).
"""
from __future__ import annotations

import numpy as np
import pytest

from firmware.device import DeviceError, DeviceTimeout
from firmware.driver import read_status, run_layer
from firmware.golden_device import GoldenDevice
from firmware.graph import Conv2d, Q
from golden import isa
from golden.array_model import params_from_layer, tile_value
from golden.config import ArrayConfig
from golden.isa import Flag, Op

CFG = ArrayConfig(rows=4, cols=2, act_depth=40, wgt_depth=24, param_depth=3, out_depth=16, bus_bytes=8)


def enc(op, **f):
    return isa.encode(CFG, op, **f)


def write(dev, op, bank, offset, entries, buf):
    dev.send_command(enc(op, bank=bank, offset=offset, length=len(entries)))
    dev.send_data(isa.pack_entries(np.asarray(entries), CFG.bus_bytes))


def status(dev):
    return read_status(dev)


def run_fields(**kw):
    f = dict(act_bank=0, act_offset=0, wgt_bank=0, wgt_offset=0, par_bank=0, par_index=0, out_bank=0,
             out_offset=0, k=1, ntiles=1, rows_valid=CFG.rows, lanes_valid=CFG.out_lanes)
    f.update(kw)
    return f


def read_out(dev, bank, offset, length):
    dev.send_command(enc(Op.READ_OUT, bank=bank, offset=offset, length=length))
    return isa.unpack_entries(dev.receive(length * isa.words_per_entry(CFG.out_lanes, CFG.bus_bytes)),
                              CFG.out_lanes, CFG.bus_bytes)


def test_run_equals_tile_value_with_shared_weights_offsets_and_banks():
    rng = np.random.default_rng(1)
    dev = GoldenDevice(CFG)
    k, nt = 7, 3
    act = rng.integers(-128, 128, (nt * k, CFG.rows)).astype(np.int8)          # entries: A[:, j] per beat
    wgt = rng.integers(-127, 128, (k, CFG.out_lanes)).astype(np.int8)
    p = [params_from_layer(CFG, rng.uniform(0.001, 0.01, CFG.out_lanes), bias=rng.integers(-99, 99, CFG.out_lanes),
                           zp_out=3, act_min=-128, act_max=127) for _ in range(2)]
    write(dev, Op.WRITE_ACT, 1, 5, act, "act")
    write(dev, Op.WRITE_WGT, 1, 2, wgt, "wgt")
    dev.send_command(enc(Op.WRITE_PARAMS, bank=0, offset=1, length=2))
    dev.send_data(isa.pack_entries(isa.pack_params(CFG, p), CFG.bus_bytes))
    dev.send_command(enc(Op.RUN, **run_fields(act_bank=1, act_offset=5, wgt_bank=1, wgt_offset=2, par_index=2,
                                              out_bank=1, out_offset=3, k=k, ntiles=nt)))
    got = read_out(dev, 1, 3, nt * CFG.rows)
    for t in range(nt):
        exp = tile_value(CFG, act[t * k:(t + 1) * k].T, wgt, p[1])
        assert np.array_equal(got[t * CFG.rows:(t + 1) * CFG.rows], exp)
    st = status(dev)
    assert st["flags"] == 0 and st["JOBS_DONE"] == 1
    assert st["USEFUL_MACS"] == k * nt * CFG.rows * CFG.out_lanes
    assert st["BUSY_CYCLES"] == isa.run_timing(CFG, k, nt)["busy_cycles"]
    assert st["IN_STALL_CYCLES"] == isa.run_timing(CFG, k, nt)["in_stall_cycles"]


def test_lut_stage_and_counters_with_valid_rows_lanes():
    rng = np.random.default_rng(2)
    dev = GoldenDevice(CFG)
    table = rng.integers(0, 256, 256).astype(np.uint8)
    dev.send_command(enc(Op.WRITE_LUT, offset=0, length=256))
    dev.send_data(isa.pack_entries(table.reshape(-1, 1), CFG.bus_bytes))
    k = 2                                                       # k < rows: the tile gap stalls the core
    act = rng.integers(-128, 128, (2 * k, CFG.rows)).astype(np.int8)
    wgt = rng.integers(-127, 128, (k, CFG.out_lanes)).astype(np.int8)
    p = params_from_layer(CFG, 0.02, lut_en=True)
    write(dev, Op.WRITE_ACT, 0, 0, act, "act")
    write(dev, Op.WRITE_WGT, 0, 0, wgt, "wgt")
    dev.send_command(enc(Op.WRITE_PARAMS, bank=0, offset=0, length=1))
    dev.send_data(isa.pack_entries(isa.pack_params(CFG, [p]), CFG.bus_bytes))
    dev.send_command(enc(Op.CLEAR_STATUS, counters=1))
    dev.send_command(enc(Op.RUN, **run_fields(k=k, ntiles=2, rows_valid=3, lanes_valid=2)))
    got = read_out(dev, 0, 0, 2 * CFG.rows)
    for t in range(2):
        exp = tile_value(CFG, act[t * k:(t + 1) * k].T, wgt, p, table.astype(np.int64))
        assert np.array_equal(got[t * CFG.rows:(t + 1) * CFG.rows], exp)
    st = status(dev)
    assert st["USEFUL_MACS"] == k * 2 * 3 * 2
    assert st["IN_STALL_CYCLES"] == isa.run_timing(CFG, k, 2)["in_stall_cycles"] > 0


def test_bad_opcode_reserved_and_range_are_dropped_flagged_and_counted():
    dev = GoldenDevice(CFG)
    ent = np.arange(CFG.rows * 2, dtype=np.int8).reshape(2, CFG.rows)
    dev.send_command(0)                                             # opcode 0: BAD_OPCODE, no payload
    dev.send_command(enc(Op.WRITE_ACT, check=False, bank=0, offset=39, length=2))   # 39 + 2 > 40: BAD_RANGE
    dev.send_data(isa.pack_entries(ent, CFG.bus_bytes))            # consumed (up to last), not written
    write(dev, Op.WRITE_ACT, 0, 0, ent, "act")                     # still framed: works
    dev.send_command(enc(Op.CLEAR_STATUS, counters=0) | (1 << 100))  # RESERVED: dropped (flags stay)
    dev.send_command(enc(Op.RUN, check=False, **run_fields(k=25)))  # k > k_max = 24: no job
    st = status(dev)
    assert st["flags"] == Flag.BAD_OPCODE | Flag.BAD_RANGE | Flag.RESERVED
    assert st["CMDS_DROPPED"] == 4 and st["JOBS_DONE"] == 0
    assert np.array_equal(dev.act[0, :2], ent) and not dev.act[0, 39].any()
    dev.send_command(enc(Op.CLEAR_STATUS, counters=0))
    st = status(dev)
    assert st["flags"] == 0 and st["CMDS_DROPPED"] == 4           # counters kept
    dev.send_command(enc(Op.CLEAR_STATUS, counters=1))
    assert status(dev)["CMDS_DROPPED"] == 0


def test_payload_framing_early_and_missing_last():
    wpe = isa.words_per_entry(isa.entry_bytes(CFG, "params"), CFG.bus_bytes)
    assert wpe > 1
    rng = np.random.default_rng(3)
    p = [params_from_layer(CFG, 0.01 * (i + 1)) for i in range(3)]
    words = isa.pack_entries(isa.pack_params(CFG, p), CFG.bus_bytes)
    dev = GoldenDevice(CFG)
    # early last in the middle of entry 1: entry 0 written, entry 1 discarded
    dev.send_command(enc(Op.WRITE_PARAMS, bank=1, offset=0, length=3))
    dev.send_data(words[:wpe + 2])
    assert status(dev)["flags"] == Flag.LENGTH_MISMATCH
    assert np.array_equal(dev.params[1, 0], isa.pack_params(CFG, p[:1])[0]) and not dev.params[1, 1].any()
    # missing last on the final word: all entries written, following words discarded through the next last
    dev.send_command(enc(Op.CLEAR_STATUS, counters=1))
    ent = rng.integers(-128, 128, (3, CFG.rows)).astype(np.int8)
    dev.send_command(enc(Op.WRITE_ACT, bank=0, offset=0, length=3))
    dev.send_data(isa.pack_entries(ent, CFG.bus_bytes), last_on_final=False)
    dev.send_data([7, 8, 9])                                      # discarded, last on 9
    write(dev, Op.WRITE_ACT, 0, 10, ent[:1], "act")                # framing recovered
    st = status(dev)
    assert st["flags"] == Flag.LENGTH_MISMATCH and st["CMDS_DROPPED"] == 1
    assert np.array_equal(dev.act[0, :3], ent) and np.array_equal(dev.act[0, 10], ent[0])


def test_sync_and_status_words():
    dev = GoldenDevice(CFG)
    dev.send_command(enc(Op.SYNC))
    w = dev.receive(isa.sync_response_words(CFG))
    assert int.from_bytes(w[0].to_bytes(CFG.bus_bytes, "little")[:4], "little") == 0
    dev.send_command(0)
    dev.send_command(enc(Op.SYNC))
    w = dev.receive(isa.sync_response_words(CFG))
    assert int.from_bytes(w[0].to_bytes(CFG.bus_bytes, "little")[:4], "little") == Flag.BAD_OPCODE
    st = status(dev)
    assert st["busy"] == 0 and st["jobs"] == 0 and st["CYCLES"] > 0 and st["OUT_STALL_CYCLES"] == 0


def test_receive_timeout_names_the_awaited_command():
    dev = GoldenDevice(CFG)
    # a dropped READ_OUT sends nothing
    dev.send_command(enc(Op.READ_OUT, check=False, bank=0, offset=10, length=7))    # 10 + 7 > 16
    with pytest.raises(DeviceTimeout, match=r"READ_OUT bank=0 offset=10 length=7.*0 of 7.*dropped.*BAD_RANGE"):
        dev.receive(7, timeout_s=0.01)
    # a READ_OUT queued behind a WRITE whose payload never comes
    dev = GoldenDevice(CFG)
    dev.send_command(enc(Op.WRITE_ACT, bank=0, offset=0, length=4))
    dev.send_data([1, 2], last_on_final=False)
    dev.send_command(enc(Op.READ_OUT, bank=1, offset=0, length=2))
    with pytest.raises(DeviceTimeout, match=r"READ_OUT bank=1.*waits for the payload of WRITE_ACT.*2 of 4 words"):
        dev.receive(2, timeout_s=0.01)
    with pytest.raises(ValueError, match="desc"):
        dev.send_command(2**128)
    with pytest.raises(ValueError, match="words"):
        dev.send_data([2**64])


def _layer(rng):
    q = Q(0.05, 0, "int8")
    w = rng.integers(-127, 128, (6, 2, 3, 3)).astype(np.int8)       # K = 18 <= k_max = 24
    return (Conv2d("conv_a", "x", q, w, None, 0.01, q, padding=1),
            rng.integers(-128, 128, (1, 2, 5, 5)).astype(np.int8))


def test_driver_timeout_names_layer_and_command():
    rng = np.random.default_rng(4)
    node, x = _layer(rng)
    dev = GoldenDevice(CFG, hang_after=6)
    with pytest.raises(DeviceTimeout, match=r"READ_OUT.*layer 'conv_a': conv_a READ_OUT block 0 tiles.*stopped"):
        run_layer(dev, node, x, timeout_s=0.01)


class CorruptingDevice(GoldenDevice):
    """Sets a reserved bit in the n-th RUN descriptor (a broken link / driver)."""

    def __init__(self, cfg, nth):
        super().__init__(cfg)
        self.nth, self.runs = nth, 0

    def send_command(self, desc):
        if desc & 0xFF == Op.RUN:
            self.runs += 1
            if self.runs == self.nth:
                desc |= 1 << 127
        super().send_command(desc)


def test_driver_raises_on_device_error_flags():
    rng = np.random.default_rng(5)
    node, x = _layer(rng)
    with pytest.raises(DeviceError, match=r"layer 'conv_a': device error flags RESERVED \(CMDS_DROPPED = 1\)"):
        run_layer(CorruptingDevice(CFG, 2), node, x)
    y, _ = run_layer(GoldenDevice(CFG), node, x)
    assert np.array_equal(y, node.reference([x]))


def test_reset_restores_power_on_state():
    dev = GoldenDevice(CFG)
    write(dev, Op.WRITE_WGT, 0, 0, np.ones((2, CFG.out_lanes), np.int8), "wgt")
    dev.send_command(0)
    dev.reset()
    st = status(dev)
    assert st["flags"] == 0 and st["CMDS_DROPPED"] == 0 and not dev.wgt.any()
