"""cocotb test: firmware programs on the Verilator-simulated accelerator top through ``RtlDevice``.

Inputs (environment of the simulator process, set by ``sim.build_top.run_top``):

* ``ANCHORLESS_TOP_SPEC``    a pickle: ``{"cfg": ArrayConfig, "host": {...}, "tasks": [...]}``
* ``ANCHORLESS_TOP_RESULT``  where to write the result pickle (a JSON summary goes next to it)

``host`` holds ``firmware.rtl_device.RtlDevice`` keyword arguments (``dout_ready_prob``,
``din_valid_prob``, ``cmd_valid_prob``, ``seed``, ``timeout_cycles``, ``wall_timeout_s``). Tasks
run in order in ONE simulation (one model start-up for many layers); each is a dict with
``name``, ``kind``, optional ``reset`` (reset the device first) and optional ``host``
(overrides for this task only: the three probabilities, ``timeout_cycles``, and the fault
injections ``drop_din_after`` / ``flip_dout_word``, see ``RtlDevice``):

* ``kind = "layer"``: ``node``, ``x``, optional ``order`` and ``timeout_s`` ->
  ``firmware.driver.run_layer(device, node, x)``; records ``output`` and ``report``
  (``LayerReport.as_dict()``: the model's numbers and ``measured``, the READ_STATUS counters).
* ``kind = "script"``: ``actions``, a list of ``("cmd", descriptor)``, ``("data", words,
  last_on_final)``, ``("recv", n_words[, timeout_s])``, ``("reset",)``; records ``received``
  (one word list per ``recv``).

Every task records ``error`` (None, or ``{"type", "message", "action"}`` for an exception:
``DeviceTimeout``, ``DeviceError``, ...; the device is then reset so the next task starts
clean), ``framing_errors`` (dout ``last`` misplaced), ``receive_log`` (per receive: words,
host-seen dout stall cycles, simulated cycles), ``host_out_stall_cycles``, ``cycles`` and
``seconds``. The result also has the totals and ``cycles_per_second`` (simulated cycles per
wall second inside the simulation, including the firmware's own Python).

The program is ordinary blocking Python run in a ``cocotb.bridge`` thread; the device advances
the simulation only inside ``receive``/``reset`` (firmware/rtl_device.py).
"""
from __future__ import annotations

import json
import os
import pickle
import time
import traceback

import cocotb
from cocotb.task import bridge

from firmware.driver import run_layer
from firmware.rtl_device import RtlDevice

_HOST_KEYS = ("dout_ready_prob", "din_valid_prob", "cmd_valid_prob")


def _set_host(dev: RtlDevice, host: dict, default_timeout: int) -> None:
    """This task's host behaviour through ``RtlDevice.configure`` (checked there); unset -> defaults."""
    dev.configure(**{k: host.get(k, 1.0) for k in _HOST_KEYS},
                  timeout_cycles=host.get("timeout_cycles", default_timeout),
                  drop_din_after=host.get("drop_din_after"), flip_dout_word=host.get("flip_dout_word"))


def _run_task(dev: RtlDevice, task: dict, base_host: dict, default_timeout: int) -> dict:
    """One task in the bridge thread (blocking calls into the device)."""
    rec = {"name": task["name"], "kind": task["kind"], "error": None}
    if task.get("reset"):
        dev.reset()                            # (clears the host queues and the din fault counter)
    _set_host(dev, {**base_host, **task.get("host", {})}, default_timeout)
    c0, t0, s0 = dev.cycles, time.perf_counter(), dev.out_stall_cycles
    log0, fr0 = len(dev.receive_log), len(dev.framing_errors)
    action = None
    try:
        if task["kind"] == "layer":
            out, rep = run_layer(dev, task["node"], task["x"], order=task.get("order"),
                                 timeout_s=task.get("timeout_s", 60.0))
            rec["output"] = out
            rec["report"] = rep.as_dict()
        elif task["kind"] == "script":
            got = []
            rec["received"] = got
            for action, a in enumerate(task["actions"]):
                if a[0] == "cmd":
                    dev.send_command(a[1])
                elif a[0] == "data":
                    dev.send_data(a[1], a[2] if len(a) > 2 else True)
                elif a[0] == "recv":
                    got.append(dev.receive(a[1], a[2] if len(a) > 2 else 30.0))
                elif a[0] == "reset":
                    dev.reset()
                else:
                    raise ValueError(f"unknown script action {a[0]!r}")
        else:
            raise ValueError(f"unknown task kind {task['kind']!r}")
    except Exception as e:  # noqa: BLE001 - recorded for the test to judge, then the device is reset
        rec["error"] = {"type": type(e).__name__, "message": str(e), "action": action,
                        "traceback": traceback.format_exc()[-2000:]}
        dev.drop_din_after = dev.flip_dout_word = None
        dev.reset()
    rec["receive_log"] = dev.receive_log[log0:]
    rec["framing_errors"] = dev.framing_errors[fr0:]
    rec["host_out_stall_cycles"] = dev.out_stall_cycles - s0
    rec["cycles"] = dev.cycles - c0
    rec["seconds"] = round(time.perf_counter() - t0, 3)
    dev.drop_din_after = dev.flip_dout_word = None
    return rec


def _summary(res: dict) -> dict:
    """JSON-friendly copy (no arrays) for humans."""
    out = {k: v for k, v in res.items() if k != "tasks"}
    out["tasks"] = []
    for t in res["tasks"]:
        d = {k: v for k, v in t.items() if k not in ("output", "received", "receive_log")}
        if "report" in t:
            d["report"] = {k: t["report"][k] for k in ("busy_cycles", "cycles", "runs", "lane_slot_macs",
                                                        "measured")}
        out["tasks"].append(d)
    return out


@cocotb.test()
async def accelerator_programs(dut):
    """Run every task of the spec on the RTL through RtlDevice; write the results."""
    spec_path = os.environ["ANCHORLESS_TOP_SPEC"]
    result_path = os.environ["ANCHORLESS_TOP_RESULT"]
    with open(spec_path, "rb") as f:
        spec = pickle.load(f)
    host = dict(spec.get("host", {}))
    kw = {k: host[k] for k in ("seed", "timeout_cycles", "wall_timeout_s") if k in host}
    dev = RtlDevice(dut, spec["cfg"], wall_timeout_s=kw.pop("wall_timeout_s", 120.0), **kw)
    default_timeout = dev.timeout_cycles
    res = {"tasks": [], "error": None}
    t0 = time.perf_counter()
    try:
        await dev.start()

        @bridge
        def program():
            for task in spec["tasks"]:
                res["tasks"].append(_run_task(dev, task, host, default_timeout))

        await program()
    except Exception as e:  # noqa: BLE001
        res["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-3000:]}"
        raise
    finally:
        dt = time.perf_counter() - t0
        res.update(cycles=dev.cycles, seconds=round(dt, 3), sim_seconds=round(dev.sim_seconds, 3),
                   cycles_per_second=round(dev.cycles / dt, 1) if dt > 0 else 0.0)
        tmp = f"{result_path}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(res, f)
        os.replace(tmp, result_path)
        with open(os.path.splitext(result_path)[0] + ".json", "w") as f:
            json.dump(_summary(res), f, indent=1, default=str)
