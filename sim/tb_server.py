"""cocotb test: serve ``firmware.device.Device`` calls from another process on the simulated accelerator top.

This is the simulator side of ``firmware.rtl_device.make_host_device`` (the host side is
``HostRtlDevice``). Run as a program (``python -m sim.tb_server SPEC``) it is the launcher: it
reads the pickled spec written by ``HostRtlDevice`` and runs this module as the cocotb test of the
model (``sim.build.run_cocotb``; the simulator's output goes to ``spec["log"]``, a trace to
``spec["waves"]`` when set). Inside the simulation the test ``serve_device``:

1. connects to the host (``multiprocessing.connection.Client``, Unix socket ``spec["address"]``,
   authkey from ``ANCHORLESS_SERVER_KEY``);
2. creates ``RtlDevice(dut, spec["cfg"], **spec["device"])`` and starts it (clock, reset), then
   sends ``("ready", state)`` -- or ``("err", error, state)`` if that failed (e.g. ValueError for
   a bad option, the model built for another configuration);
3. serves messages until ``close`` (or the host goes away), in the simulator's own thread: it
   blocks on the socket between messages (the simulation must not advance then anyway) and
   awaits ``RtlDevice.areceive`` / ``areset`` directly -- no ``cocotb.task.bridge`` thread, whose
   bookkeeping would cost on every trigger.
   A message is a list of operations run in order: ``("c", desc)``, ``("d", words, last_on_final)``,
   ``("r", n_words, timeout_s)``, ``("reset",)``, ``("config", {option: value})``, ``("close",)``.
   The answer is ``("ok", [received word lists], state)`` or, at the first exception,
   ``("err", firmware.rtl_device.encode_error(e), state)`` (the rest of the message is skipped).

``state`` = ``cycles``, ``sim_seconds``, ``out_stall_cycles``, ``cpu_seconds`` (CPU time of the
simulator process: Verilator and the testbench's Python, independent of the machine's load) and
the ``framing_errors`` and ``receive_log`` entries added since the previous answer. The simulation does not advance while the server waits for the host, so
the host's think time costs no simulated cycles: the same program computes the same result,
cycle for cycle, as it would run in-process under sim/tb_top.py (where a bridge thread runs it).
"""
from __future__ import annotations

import os
import pickle
import sys
import time
import traceback

import cocotb

from firmware.rtl_device import RtlDevice, encode_error

KEY_ENV = "ANCHORLESS_SERVER_KEY"
SPEC_ENV = "ANCHORLESS_SERVER_SPEC"
#: Set to a path: the simulator thread's Python is profiled (cProfile) and the stats written there.
PROFILE_ENV = "ANCHORLESS_SERVER_PROFILE"


class _State:
    """What the host mirrors after every answer (framing errors incrementally)."""

    def __init__(self, dev: RtlDevice | None):
        self.dev = dev
        self.framing_sent = self.log_sent = 0

    def __call__(self) -> dict:
        dev = self.dev
        if dev is None:
            return {"cycles": 0, "sim_seconds": 0.0, "out_stall_cycles": 0, "framing_errors": [], "receive_log": [],
                    "cpu_seconds": time.process_time()}
        new, log = dev.framing_errors[self.framing_sent:], dev.receive_log[self.log_sent:]
        self.framing_sent, self.log_sent = len(dev.framing_errors), len(dev.receive_log)
        return {"cycles": dev.cycles, "sim_seconds": dev.sim_seconds, "out_stall_cycles": dev.out_stall_cycles,
                "framing_errors": list(new), "receive_log": list(log), "cpu_seconds": time.process_time()}


async def execute(dev: RtlDevice, ops: list) -> tuple[list, bool]:
    """Run one message's operations on ``dev``; (received word lists, close requested)."""
    got = []
    for op in ops:
        kind = op[0]
        if kind == "c":
            dev.send_command(op[1])
        elif kind == "d":
            dev.send_data(op[1], op[2])
        elif kind == "r":
            got.append(await dev.areceive(op[1], op[2]))
        elif kind == "reset":
            await dev.areset()
        elif kind == "config":
            dev.configure(**op[1])
        elif kind == "close":
            return got, True
        else:
            raise ValueError(f"unknown operation {kind!r}")
    return got, False


@cocotb.test()
async def serve_device(dut):
    """Create the RtlDevice and serve the host's calls until it closes the device (module docstring)."""
    from multiprocessing.connection import Client
    with open(os.environ[SPEC_ENV], "rb") as f:
        spec = pickle.load(f)
    conn = Client(spec["address"], family="AF_UNIX", authkey=bytes.fromhex(os.environ[KEY_ENV]))
    state = _State(None)
    try:
        dev = RtlDevice(dut, spec["cfg"], **spec["device"])
        state.dev = dev
        await dev.start()
    except Exception as e:  # noqa: BLE001 - reported to the host, which re-raises it
        conn.send(("err", encode_error(e), state()))
        conn.close()
        return
    conn.send(("ready", state()))

    async def serve():
        while True:
            try:
                ops = conn.recv()                       # blocks the simulator: no time passes meanwhile
            except (EOFError, OSError):
                return                                  # the host went away: end the simulation
            try:
                got, close = await execute(dev, ops)
            except Exception as e:  # noqa: BLE001 - re-raised on the host with the same type and message
                cocotb.log.debug("device call failed: %s", traceback.format_exc())
                conn.send(("err", encode_error(e), state()))
                continue
            conn.send(("ok", got, state()))
            if close:
                return

    prof = None
    if os.environ.get(PROFILE_ENV):                     # profile the simulator thread (coroutines, callbacks)
        import cProfile
        prof = cProfile.Profile()
        prof.enable()
    try:
        await serve()
    finally:
        conn.close()
        if prof is not None:
            prof.disable()
            prof.dump_stats(os.environ[PROFILE_ENV])


def main(argv=None) -> int:
    """Launcher: run this module as the cocotb test of the spec's model; the simulator's status."""
    from pathlib import Path

    from sim.build import run_cocotb
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sim.tb_server SPEC.pkl (started by firmware.rtl_device.make_host_device)",
              file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    env = {SPEC_ENV: str(spec_path), KEY_ENV: os.environ[KEY_ENV],
           **({PROFILE_ENV: os.environ[PROFILE_ENV]} if os.environ.get(PROFILE_ENV) else {})}
    status = run_cocotb(spec["model"], "sim.tb_server", run_dir=spec_path.parent, env=env,
                        waves_path=spec["waves"], log_path=Path(spec["log"]))
    print(f"simulator status {status}")
    return status


if __name__ == "__main__":
    sys.exit(main())
