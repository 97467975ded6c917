"""Run layers and graphs on a ``Device``: compile, stream commands and payloads, reassemble outputs.

``run_layer`` sends, for one accelerator layer:

1. ``CLEAR_STATUS counters=1`` (so the counters read at the end are this layer's);
2. the compiled program (firmware.compiler): every descriptor, its payload
   words right after it, and for every READ_OUT the response, received
   immediately (the decoder serves commands in order, so waiting here costs
   nothing the device would not wait anyway);
3. ``SYNC`` (all jobs done) and ``READ_STATUS``: any sticky error flag ->
   ``DeviceError`` naming the layer and the flags.

A device that stops answering raises ``DeviceTimeout`` naming the layer and
the command (label from the compiler, e.g. "conv1 READ_OUT block 2 tiles
0..13") it was waiting for. Host nodes run ``node.reference`` on the host.
"""
from __future__ import annotations

import numpy as np

from golden import isa
from golden.config import ArrayConfig
from golden.isa import Flag, Op

from .compiler import compile_layer
from .device import Device, DeviceError, DeviceTimeout
from .graph import Graph, Node
from .report import LayerReport, report_from_plan

__all__ = ["run_layer", "run_graph", "read_status", "flag_names"]


def flag_names(flags: int) -> str:
    """'BAD_RANGE|LENGTH_MISMATCH' for a status word's error bits."""
    return "|".join(f.name for f in Flag if flags & f) or "none"


def _send(device: Device, cfg: ArrayConfig, op: Op, **fields) -> None:
    device.send_command(isa.encode(cfg, op, **fields))


def read_status(device: Device, timeout_s: float = 5.0) -> dict:
    """READ_STATUS -> {slot name: value, 'flags', 'busy', 'jobs'} (golden.isa.parse_status)."""
    cfg = device.cfg
    _send(device, cfg, Op.READ_STATUS)
    return isa.parse_status(cfg, device.receive(isa.status_response_words(cfg), timeout_s))


def _check_cfg(device: Device, cfg) -> ArrayConfig:
    if not isinstance(device, Device):
        raise ValueError(f"device must be a firmware.device.Device, got {type(device).__name__}")
    if cfg is None:
        return device.cfg
    if cfg != device.cfg:
        raise ValueError(f"cfg {cfg} differs from the device's {device.cfg}")
    return cfg


def run_layer(device: Device, node: Node, inputs, cfg: ArrayConfig | None = None, *, timeout_s: float = 5.0,
              order=None) -> tuple[np.ndarray, LayerReport]:
    """Run one node: on the device if it is an accelerator layer, else on the host.

    ``inputs``: the node's input array(s). Returns (output, LayerReport); the
    report's ``measured`` holds the device counters (READ_STATUS slots) of
    this layer. Raises DeviceError on error flags, DeviceTimeout when the
    device stops answering (both name the layer).
    """
    cfg = _check_cfg(device, cfg)
    if isinstance(inputs, np.ndarray):
        inputs = [inputs]
    if not node.on_array:
        return node.reference(list(inputs)), LayerReport(name=node.name, kind=type(node).__name__, on_array=False)
    (x,) = inputs
    prog = compile_layer(node, x, cfg, order)
    responses = []
    cmd = None
    try:
        _send(device, cfg, Op.CLEAR_STATUS, counters=1)
        for cmd in prog.commands:
            device.send_command(cmd.descriptor(cfg))
            if cmd.payload is not None:
                device.send_data(cmd.payload())
            if cmd.op == Op.READ_OUT:
                responses.append(device.receive(cmd.dout_words, timeout_s))
        cmd = None
        _send(device, cfg, Op.SYNC)
        sync = device.receive(isa.sync_response_words(cfg), timeout_s)
        st = read_status(device, timeout_s)
    except DeviceTimeout as e:
        where = cmd.label if cmd is not None else "SYNC/READ_STATUS"
        raise DeviceTimeout(f"{e.command} (layer {node.name!r}: {where})", e.got, e.expected, e.timeout_s,
                            e.detail) from e
    sync_word = int.from_bytes(b"".join(w.to_bytes(cfg.bus_bytes, "little") for w in sync)[:isa.STATUS_BYTES],
                               "little")
    flags = (sync_word | st["STATUS"]) & isa.ERROR_MASK
    if flags:
        raise DeviceError(f"layer {node.name!r}: device error flags {flag_names(flags)} "
                          f"(CMDS_DROPPED = {st['CMDS_DROPPED']}) after {len(prog.commands)} commands")
    out = prog.assemble(responses)
    measured = {k: st[k] for k in ("CYCLES", "BUSY_CYCLES", "USEFUL_MACS", "IN_STALL_CYCLES", "OUT_STALL_CYCLES",
                                   "CMDS_DROPPED", "JOBS_DONE")}
    return out, report_from_plan(prog.plan, measured)


def run_graph(device: Device, graph: Graph, feeds: dict, cfg: ArrayConfig | None = None, *, fuse: bool = True,
              timeout_s: float = 5.0) -> tuple[dict, list[LayerReport]]:
    """Run every node of ``graph`` (fused first if ``fuse``) in order; returns ({tensor: array}, reports)."""
    cfg = _check_cfg(device, cfg)
    g = graph.fuse() if fuse else graph
    env = {}
    for name, (shape, q) in g.inputs.items():
        if name not in feeds:
            raise ValueError(f"feeds is missing graph input {name!r}")
        a = np.asarray(feeds[name])
        if tuple(a.shape) != shape or a.dtype.name != q.dtype:
            raise ValueError(f"input {name!r} must be {q.dtype} of shape {shape}, got {a.dtype} {a.shape}")
        env[name] = a
    reports = []
    for n in g.nodes:
        y, r = run_layer(device, n, [env[t] for t in n.inputs], cfg, timeout_s=timeout_s)
        env[n.name] = y
        reports.append(r)
    return env, reports
