"""``RtlDevice``: the Verilator-simulated ``hw.top.Accelerator`` behind ``firmware.device.Device``.

cocotb owns the simulation and the clock; a firmware program (``firmware.driver.run_layer``,
a fuzz script, ...) is ordinary blocking Python. The two meet through cocotb's bridge
(``cocotb.task.bridge`` runs the program in a thread, ``cocotb.task.resume`` lets that thread run a
coroutine in the simulator and block until it returns). cocotb never advances simulated time
while a bridge thread is running Python, so:

* ``send_command`` / ``send_data`` only append to host-side queues (no simulated time passes);
* ``receive(n)`` runs the host side of the three streams cycle by cycle (``_host``) until ``n``
  words have arrived on ``dout``: a descriptor is offered on ``cmd`` whenever one is queued, a
  payload word on ``din`` whenever one is queued (``last`` in the top bit of the payload), and
  ``dout.ready`` is 1 (or a seeded random pattern, ``dout_ready_prob`` < 1).

With the default probabilities (1.0) this is exactly the *ideal host* of
``firmware.report.TopTimer`` (a descriptor whenever the decoder is IDLE, din words every
cycle, dout always ready): everything the program sends before it waits for a response is
already queued when the simulation resumes, and the next command after a response is offered
on the cycle after its final word (when the decoder is back in IDLE). That is why the RTL's
READ_STATUS counters can be compared with the cycle model exactly.

Per-cycle cost is kept low (``_host``): one Python step per cycle, at the falling clock edge
(the top's ready/valid outputs depend on registered state only, so what they show there is what
the next rising edge samples); the clock is cocotb's GPI (C++) clock; signals are read and
written through the simulator handles directly, whole payloads as single integers, and only
when they change; and when no transfer can happen (dout idle, nothing to offer or the offered
beat refused) the simulation runs without Python until dout.valid or the refused beat's ready
rises, or the timeout budget is spent -- one trigger instead of a step per cycle. Streaming din
(one word per cycle) is what costs Python time; on this 2-core machine the 8x8 ``ArrayConfig()``
top runs the detector at ~45k simulated cycles per CPU second (docs/onnx.md).

From a plain Python process (no cocotb): ``make_host_device(cfg)`` runs the simulation in a
child process (sim/tb_server.py) and returns ``HostRtlDevice``, a ``Device`` forwarding the calls
over a socket (bottom of this file).

Timeout (``receive``): ``DeviceTimeout`` when no stream transfer (cmd, din or dout) happened for
``timeout_cycles`` simulated cycles, or when the call has taken more than the wall-clock limit
(``timeout_s``, or ``wall_timeout_s`` when set). The exception names the command whose response
was awaited (predicted from the commands sent: READ_OUT / READ_STATUS / SYNC, with
``golden.isa.descriptor_errors`` telling which the decoder will drop) and why nothing comes:
dropped, still queued behind a command waiting for ``din`` words, commands not yet taken.

Checks done on the fly (``framing_errors``): ``last`` must be set exactly on the final word of
each response. ``out_stall_cycles`` counts the cycles with ``dout.valid & ~dout.ready`` as the
host saw them; ``receive_log`` holds (words, out-stall cycles, simulated cycles) per receive.

Use (inside a cocotb test)::

    dev = RtlDevice(dut, cfg)
    await dev.start()                       # clock + reset
    @cocotb.task.bridge
    def program():
        return firmware.driver.run_layer(dev, node, x)
    y, report = await program()
"""
from __future__ import annotations

import math
import numbers
import random
import threading
import time
from collections import deque
from pathlib import Path

import numpy as np

from golden import isa
from golden.config import ArrayConfig
from golden.isa import Flag, Op

from .device import Device, DeviceError, DeviceTimeout

__all__ = ["RtlDevice", "HostRtlDevice", "make_host_device", "default_timeout_cycles", "OPTIONS"]


def default_timeout_cycles(cfg: ArrayConfig) -> int:
    """Cycles without any stream transfer after which ``receive`` gives up.

    A RUN takes at most ~max(act_depth, ntiles_max * rows) beats plus the pipeline latency, and
    the decoder may wait for JOB_QUEUE_DEPTH of them (READ_OUT / SYNC interlock) without any
    port activity; four times that is a generous bound that still ends a hang quickly (the idle
    wait costs one simulator trigger, not a Python step per cycle).
    """
    per_run = max(cfg.act_depth, isa.ntiles_max(cfg) * cfg.rows) + cfg.latency + 4 * cfg.rows + 64
    return 4 * isa.JOB_QUEUE_DEPTH * per_run + 1000


def check_descriptor(desc) -> int:
    """``desc`` as an int after checking it is one 128-bit descriptor (ValueError otherwise)."""
    if isinstance(desc, bool) or not isinstance(desc, (int, np.integer)) or not 0 <= int(desc) < 2**isa.DESC_BITS:
        raise ValueError(f"desc must be an integer in [0, 2**{isa.DESC_BITS} - 1], got {desc!r}")
    return int(desc)


def check_words(cfg: ArrayConfig, words) -> list[int]:
    """``words`` as a list of ints after checking each fits the bus (``8 * cfg.bus_bytes`` bits)."""
    ws = list(words)
    bits = 8 * cfg.bus_bytes
    top = 1 << bits
    for w in ws:
        if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= int(w) < top:
            raise ValueError(f"words must be integers in [0, 2**{bits} - 1] (bus_bytes = {cfg.bus_bytes}), "
                             f"got {w!r}")
    return [int(w) for w in ws]


def check_n_words(n_words) -> int:
    """``n_words`` of ``receive`` as an int >= 0 (ValueError otherwise)."""
    if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 0:
        raise ValueError(f"n_words must be an integer >= 0, got {n_words!r}")
    return int(n_words)


def _label(cfg: ArrayConfig, desc: int) -> str:
    code = desc & ((1 << isa.OPCODE_BITS) - 1)
    try:
        op = Op(code)
    except ValueError:
        return f"opcode {code} (descriptor {desc:#x})"
    f = {fl.name: (desc >> fl.offset) & ((1 << fl.width) - 1) for fl in isa.layout(cfg)[op]}
    return " ".join([op.name] + [f"{k}={v}" for k, v in f.items()])


def _check_option(name: str, v):
    """Validate one host-behaviour option of ``RtlDevice`` (constructor / ``configure``); returns it."""
    if name in ("dout_ready_prob", "din_valid_prob", "cmd_valid_prob"):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not 0.0 < float(v) <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {v!r}")
        return float(v)
    if name == "timeout_cycles":
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"timeout_cycles must be an integer >= 1, got {v!r}")
        return int(v)
    if name == "wall_timeout_s":
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0):
            raise ValueError(f"wall_timeout_s must be None or a number > 0, got {v!r}")
        return None if v is None else float(v)
    if name in ("drop_din_after", "flip_dout_word"):
        if v is not None and (isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0):
            raise ValueError(f"{name} must be None or an integer >= 0, got {v!r}")
        return None if v is None else int(v)
    raise ValueError(f"unknown RtlDevice option {name!r}; options: {', '.join(OPTIONS)}")


#: Host-behaviour options ``RtlDevice.configure`` (and ``HostRtlDevice.configure``) may change between calls.
OPTIONS = ("dout_ready_prob", "din_valid_prob", "cmd_valid_prob", "timeout_cycles", "wall_timeout_s",
           "drop_din_after", "flip_dout_word")


def _writer(handle):
    """A fast ``handle.value = v`` for ints: deposited into the simulator at once (no range checks).

    cocotb (without COCOTB_TRUST_INERTIAL_WRITES) queues every write for its next ReadWrite phase,
    a scheduler round trip per cycle; RtlDevice writes only just after a rising edge, when writing
    at once is what that phase would do. Widths above 32 bits go through the binary string API.
    """
    from cocotb.handle import _GPISetAction
    deposit = _GPISetAction.DEPOSIT.value
    raw = handle._handle
    width = len(handle)
    if width <= 32:
        put_int = raw.set_signal_val_int
        return lambda v: put_int(deposit, v)
    put_str = raw.set_signal_val_binstr
    fmt = f"0{width}b"
    return lambda v: put_str(deposit, format(v, fmt))


class RtlDevice(Device):
    """``hw.top.Accelerator(cfg)`` under cocotb (module docstring).

    dut              the cocotb handle of the Verilog top ``accelerator``
    cfg              the ArrayConfig the model was built for (port widths are checked)
    period_ns        clock period of the cocotb clock ``start`` creates
    timeout_cycles   no-progress limit of ``receive`` in simulated cycles (default
                     ``default_timeout_cycles(cfg)``)
    wall_timeout_s   wall-clock limit of one ``receive`` overriding its ``timeout_s`` (None: use it)
    dout_ready_prob  probability that the host is ready on dout in a cycle (1.0: always)
    din_valid_prob   probability that a queued din word is offered in a cycle (1.0: ideal host)
    cmd_valid_prob   same for a queued descriptor
    seed             seed of those patterns
    """

    def __init__(self, dut, cfg: ArrayConfig, *, period_ns: int = 10, timeout_cycles: int | None = None,
                 wall_timeout_s: float | None = None, dout_ready_prob: float = 1.0, din_valid_prob: float = 1.0,
                 cmd_valid_prob: float = 1.0, seed: int = 0):
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be an ArrayConfig, got {type(cfg).__name__}")
        isa.layout(cfg)
        for n, p in (("dout_ready_prob", dout_ready_prob), ("din_valid_prob", din_valid_prob),
                     ("cmd_valid_prob", cmd_valid_prob)):
            _check_option(n, p)
        if timeout_cycles is not None:
            _check_option("timeout_cycles", timeout_cycles)
        self.cfg = cfg
        self.dut = dut
        if isinstance(period_ns, bool) or not isinstance(period_ns, numbers.Integral) or period_ns < 2 or period_ns % 2:
            raise ValueError(f"period_ns must be an even integer >= 2, got {period_ns!r}")
        self.period_ns = int(period_ns)
        self.timeout_cycles = timeout_cycles if timeout_cycles is not None else default_timeout_cycles(cfg)
        self.wall_timeout_s = wall_timeout_s
        self.p_ready, self.p_din, self.p_cmd = float(dout_ready_prob), float(din_valid_prob), float(cmd_valid_prob)
        self._rng = random.Random(seed)
        self._bus_bits = 8 * cfg.bus_bytes
        self._wpe_out = isa.words_per_entry(cfg.out_lanes, cfg.bus_bytes)
        h = dut
        self._h = {n: getattr(h, n) for n in ("clk", "rst", "cmd__valid", "cmd__ready", "cmd__payload",
                                             "din__valid", "din__ready", "din__payload", "dout__valid",
                                             "dout__ready", "dout__payload")}
        widths = {"cmd__payload": isa.DESC_BITS, "din__payload": self._bus_bits + 1,
                  "dout__payload": self._bus_bits + 1}
        for n, w in widths.items():
            if len(self._h[n]) != w:
                raise ValueError(f"{n} is {len(self._h[n])} bits, cfg {cfg} needs {w}: model built for another "
                                 "configuration")
        self.cycles = 0                 # simulated cycles run by this device since start()
        self.out_stall_cycles = 0
        self.framing_errors: list[str] = []
        self.receive_log: list[tuple[int, int, int]] = []
        self.sim_seconds = 0.0          # wall time spent inside the simulation (receive/reset)
        #: Fault injection for tests (a broken link): din words beyond this many since reset are lost.
        self.drop_din_after: int | None = None
        #: Fault injection for tests (proves the comparisons can fail): bit 0 of the data of the dout
        #: word with this index (since reset) is flipped as it is received.
        self.flip_dout_word: int | None = None
        self._started = False
        self._started_reset = False
        self._clear_host()

    def configure(self, **opts) -> None:
        """Change host-behaviour options (``OPTIONS``) between calls; every value is checked first.

        ``dout_ready_prob`` / ``din_valid_prob`` / ``cmd_valid_prob``, ``timeout_cycles``,
        ``wall_timeout_s`` and the fault injections ``drop_din_after`` / ``flip_dout_word`` (None: off).
        """
        checked = {k: _check_option(k, v) for k, v in opts.items()}
        attr = {"dout_ready_prob": "p_ready", "din_valid_prob": "p_din", "cmd_valid_prob": "p_cmd"}
        for k, v in checked.items():
            setattr(self, attr.get(k, k), v)

    # ------------------------------------------------------------------ host state
    def _clear_host(self) -> None:
        self._cmdq: deque[int] = deque()
        self._dinq: deque[int] = deque()
        self._words: deque[int] = deque()
        self._sent: list[str] = []             # labels of every command sent (since reset)
        self._answers: list[dict] = []         # response-producing commands: label, start, n, cmd index
        self._expected_total = 0               # words all answers so far will produce
        self._taken = 0                        # cmd transfers
        self._din_sent = 0
        self._din_taken = 0
        self._dout_total = 0                   # dout transfers since reset
        self._ans_i = 0                        # answer the next dout word belongs to
        self._cmd_hold = self._din_hold = False
        self._drv = {"cmd__valid": 0, "din__valid": 0, "dout__ready": 0}
        self._idle = 0                         # cycles since the last transfer

    # ------------------------------------------------------------------ simulator side
    async def start(self, reset_cycles: int = 2) -> None:
        """Start the clock and reset the top (await this in the cocotb test before the program)."""
        import cocotb
        from cocotb.clock import Clock
        if not self._started:
            Clock(self._h["clk"], self.period_ns, unit="ns", period_high=self.period_ns // 2, impl="gpi").start()
            self._started = True
        await self._reset(reset_cycles)

    async def _reset(self, reset_cycles: int = 2) -> None:
        from cocotb.triggers import FallingEdge, RisingEdge
        h = self._h
        t0 = time.perf_counter()
        if self._started_reset:
            await RisingEdge(h["clk"])         # the edge that takes the beats a receive left offered
            self.cycles += 1
        self._started_reset = True
        for n in ("cmd__valid", "din__valid", "dout__ready"):
            h[n].value = 0
        h["cmd__payload"].value = 0
        h["din__payload"].value = 0
        h["rst"].value = 1
        for _ in range(reset_cycles):
            await RisingEdge(h["clk"])
            self.cycles += 1
        h["rst"].value = 0
        await FallingEdge(h["clk"])            # same phase as the end of a receive (see _host)
        self._clear_host()
        self.sim_seconds += time.perf_counter() - t0

    async def _host(self, n: int, wall_s: float):
        """Drive the streams cycle by cycle until ``n`` words are buffered; returns None or a reason.

        One Python step per cycle, at the falling clock edge between rising edges e and e+1:
        the top's ready/valid outputs and dout's payload are read (their values after edge e:
        in hw/decoder.py they are functions of registered state only -- cmd.ready = IDLE,
        din.ready = WRITE | DISCARD, dout.valid = the held row / RESP -- so they are the values
        edge e+1 samples), the inputs for edge e+1 are written (hold an offered beat until it is
        taken, offer the next queued one), and the transfers of edge e+1 are known at once:
        offered & ready. tests/test_rtl_top.py checks the result against the cycle model, cycle
        for cycle. A receive returns at that falling edge (inputs for e+1 in place); the next
        one continues from there.

        When no transfer can happen at the next edge -- dout idle, and on cmd and din either
        nothing to offer or the offered beat refused -- the simulator runs without Python until
        dout.valid rises, a refused beat's ready rises, or the no-progress budget is spent (one
        trigger instead of a step per cycle); those signals change just after a rising edge, and
        the loop resumes at the falling edge of that cycle, as the per-cycle loop would. (With
        ``dout_ready_prob`` < 1 the per-cycle random draws must happen, so only the fully idle
        case -- nothing offered at all -- skips cycles.)

        Signal access goes through the simulator handles directly (``_writer``; reads as ints).
        """
        from cocotb.simtime import get_sim_time
        from cocotb.triggers import FallingEdge, First, RisingEdge, Timer
        h = self._h
        clk = h["clk"]
        cr, dr, ov = h["cmd__ready"], h["din__ready"], h["dout__valid"]
        put_cv, put_cp = _writer(h["cmd__valid"]), _writer(h["cmd__payload"])
        put_dv, put_dp = _writer(h["din__valid"]), _writer(h["din__payload"])
        put_or = _writer(h["dout__ready"])
        get_cr, get_dr = cr._handle.get_signal_val_long, dr._handle.get_signal_val_long
        get_ov = ov._handle.get_signal_val_long
        get_op = h["dout__payload"]._handle.get_signal_val_binstr
        fe = FallingEdge(clk)
        ov_rise, cr_rise, dr_rise = RisingEdge(ov), RisingEdge(cr), RisingEdge(dr)
        drv = self._drv
        cmdq, dinq, words = self._cmdq, self._dinq, self._words
        rng = self._rng
        p_ready, p_din, p_cmd = self.p_ready, self.p_din, self.p_cmd
        ideal_ready = p_ready >= 1.0
        mask = (1 << self._bus_bits) - 1
        limit = self.timeout_cycles
        period, high = self.period_ns, self.period_ns // 2
        deadline = time.perf_counter() + wall_s
        steps = 0
        need_edge = True
        while len(words) < n:
            if need_edge:
                await fe
                self.cycles += 1
            need_edge = True
            # ---- read: the outputs after the last rising edge (what the next edge samples) ----
            c_rdy, d_rdy, valid = get_cr(), get_dr(), get_ov()
            # ---- drive: hold offered beats until taken, offer queued ones ----
            if not self._cmd_hold and cmdq and (p_cmd >= 1.0 or rng.random() < p_cmd):
                put_cp(cmdq.popleft())
                self._cmd_hold = True
            if self._cmd_hold != drv["cmd__valid"]:
                drv["cmd__valid"] = int(self._cmd_hold)
                put_cv(drv["cmd__valid"])
            if not self._din_hold and dinq and (p_din >= 1.0 or rng.random() < p_din):
                put_dp(dinq.popleft())
                self._din_hold = True
            if self._din_hold != drv["din__valid"]:
                drv["din__valid"] = int(self._din_hold)
                put_dv(drv["din__valid"])
            rdy = 1 if ideal_ready else int(rng.random() < p_ready)
            if rdy != drv["dout__ready"]:
                drv["dout__ready"] = rdy
                put_or(rdy)
            # ---- the transfers of the next edge ----
            act = False
            if self._cmd_hold and c_rdy:
                self._cmd_hold = False
                self._taken += 1
                act = True
            if self._din_hold and d_rdy:
                self._din_hold = False
                self._din_taken += 1
                act = True
            if valid:
                if rdy:
                    self._got_word(int(get_op(), 2), mask)
                    act = True
                else:
                    self.out_stall_cycles += 1
            self._idle = 0 if act else self._idle + 1
            if self._idle >= limit:
                return f"no cmd/din/dout transfer for {self._idle} simulated cycles"
            steps += 1
            if not (steps & 1023) and time.perf_counter() > deadline:
                return f"wall-clock limit of {wall_s:g} s reached"
            if valid or len(words) >= n:
                continue
            # ---- nothing can move at the edge after next? then wait without Python (docstring) ----
            # A beat taken at the next edge still has its valid asserted: the next step must lower it
            # first (or the decoder would take it again), so that cycle is stepped.
            cmd_idle = not (self._cmd_hold or cmdq or drv["cmd__valid"])
            din_idle = not (self._din_hold or dinq or drv["din__valid"])
            cmd_refused, din_refused = ideal_ready and self._cmd_hold, ideal_ready and self._din_hold
            if (cmd_idle or cmd_refused) and (din_idle or din_refused):
                # the budget as a Timer to rising edge e+(limit-idle) (ClockCycles would step Python per cycle)
                trig = [ov_rise, Timer((limit - self._idle) * period - high, "ns")]
                if cmd_refused:
                    trig.append(cr_rise)
                if din_refused:
                    trig.append(dr_rise)
                t_before = get_sim_time("ns")
                await First(*trig)                   # just after rising edge e+k (k >= 1)
                edges = math.ceil((get_sim_time("ns") - t_before) / period - 1e-9)
                await fe                             # the falling edge of that cycle
                self.cycles += edges
                self._idle += edges - 1              # cycles skipped; the current one is counted below
                need_edge = False                    # this falling edge is the next step's
                if time.perf_counter() > deadline:
                    return f"wall-clock limit of {wall_s:g} s reached"
        return None

    def _got_word(self, payload: int, mask: int) -> None:
        data, last = payload & mask, payload >> self._bus_bits
        i = self._dout_total
        if i == self.flip_dout_word:
            data ^= 1
        self._dout_total += 1
        self._words.append(data)
        ans = self._answers
        while self._ans_i < len(ans) and i >= ans[self._ans_i]["start"] + ans[self._ans_i]["n"]:
            self._ans_i += 1
        if self._ans_i < len(ans):
            a = ans[self._ans_i]
            final = i == a["start"] + a["n"] - 1
            if bool(last) != final and len(self.framing_errors) < 20:
                self.framing_errors.append(f"dout word {i - a['start']} of {a['n']} answering {a['label']}: "
                                           f"last={last}, expected {int(final)}")
        elif len(self.framing_errors) < 20:
            self.framing_errors.append(f"dout word {i} (last={last}) answers no command sent")

    # ------------------------------------------------------------------ Device interface (bridge thread)
    def _call(self, coro_fn, *args):
        from cocotb.task import resume
        if threading.current_thread() is threading.main_thread():
            raise RuntimeError("RtlDevice methods that advance the simulation must run in a cocotb.bridge thread "
                               "(the firmware program), not in the simulator's thread")
        return resume(coro_fn)(*args)

    def send_command(self, desc: int) -> None:
        desc = check_descriptor(desc)
        label = _label(self.cfg, desc)
        code = desc & ((1 << isa.OPCODE_BITS) - 1)
        if code in (int(Op.READ_OUT), int(Op.READ_STATUS), int(Op.SYNC)):
            errs = isa.descriptor_errors(self.cfg, desc)
            if errs:
                n = 0
            elif code == int(Op.READ_OUT):
                ln = next(fl for fl in isa.layout(self.cfg)[Op.READ_OUT] if fl.name == "length")
                n = ((desc >> ln.offset) & ((1 << ln.width) - 1)) * self._wpe_out
            elif code == int(Op.READ_STATUS):
                n = isa.status_response_words(self.cfg)
            else:
                n = isa.sync_response_words(self.cfg)
            self._answers.append({"label": label, "start": self._expected_total, "n": n, "cmd": len(self._sent),
                                  "flags": errs})
            self._expected_total += n
        self._sent.append(label)
        self._cmdq.append(desc)

    def send_data(self, words, last_on_final: bool = True) -> None:
        ws = check_words(self.cfg, words)
        last_bit = 1 << self._bus_bits
        n = len(ws)
        beats = [int(w) | (last_bit if (last_on_final and i == n - 1) else 0) for i, w in enumerate(ws)]
        if self.drop_din_after is not None:
            beats = beats[:max(self.drop_din_after - self._din_sent, 0)]
        self._dinq.extend(beats)
        self._din_sent += len(beats)

    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        return self._call(self.areceive, n_words, timeout_s)

    def reset(self) -> None:
        self._call(self._reset)

    # ------------------------------------------------------------------ the same, awaited in the simulator's thread
    async def areceive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        """``receive`` for a coroutine of the simulation (sim/tb_server.py: no bridge thread needed)."""
        n_words = check_n_words(n_words)
        wall = float(self.wall_timeout_s if self.wall_timeout_s is not None else timeout_s)
        stalls0, cyc0, t0 = self.out_stall_cycles, self.cycles, time.perf_counter()
        reason = None
        if len(self._words) < n_words:
            reason = await self._host(n_words, wall)
        self.sim_seconds += time.perf_counter() - t0
        if reason is not None:
            raise self._timeout(n_words, timeout_s, reason)
        self.receive_log.append((n_words, self.out_stall_cycles - stalls0, self.cycles - cyc0))
        return [self._words.popleft() for _ in range(n_words)]

    async def areset(self) -> None:
        """``reset`` for a coroutine of the simulation."""
        await self._reset()

    # ------------------------------------------------------------------ diagnostics
    def _timeout(self, n_words: int, timeout_s: float, reason: str) -> DeviceTimeout:
        have = len(self._words)
        produced = self._dout_total
        awaited = None
        for a in self._answers:
            if a["start"] + a["n"] > produced:
                awaited = a
                break
        state = (f"{reason}; the decoder took {self._taken} of {len(self._sent)} commands"
                 + (f" (next: {self._sent[self._taken]})" if self._taken < len(self._sent) else "")
                 + f", din: {self._din_taken} of {self._din_sent} words taken, dout: {produced} words so far")
        if awaited is None:
            dropped = [a for a in self._answers if a["flags"]]
            why = "no command sent so far answers that many words"
            if dropped:
                names = "|".join(f.name for f in Flag if dropped[-1]["flags"] & f)
                why += f" ({dropped[-1]['label']} is malformed ({names}): the device drops it and sends nothing)"
            return DeviceTimeout(dropped[-1]["label"] if dropped else "(no pending command)", have, n_words,
                                 timeout_s, f"{why}; {state}")
        if awaited["cmd"] >= self._taken:
            busy = self._sent[self._taken - 1] if self._taken else None
            why = "it was not taken yet" + (f": the decoder is still executing {busy}" if busy else "")
            if awaited["cmd"] > self._taken:
                why += f" ({awaited['cmd'] - self._taken} more command(s) queued before it)"
            if self._din_taken == self._din_sent and busy is not None and busy.startswith("WRITE"):
                why += ", probably waiting for din words that were never sent"
        else:
            why = "the decoder took it but the response stopped"
        return DeviceTimeout(awaited["label"], have, n_words, timeout_s, f"{why}; {state}")


# ====================================================================== the RTL from a plain Python process
#
# ``RtlDevice`` lives inside a cocotb simulation. ``make_host_device`` puts one behind a socket: the
# simulator runs in a child process (sim/tb_server.py) whose cocotb test creates the RtlDevice and
# serves batches of Device calls sent by ``HostRtlDevice`` over ``multiprocessing.connection``.

#: Exception types of the simulation re-raised on the host with the same type and message; any other
#: exception becomes a DeviceError naming its type.
_REMOTE_ERRORS = {"DeviceTimeout": DeviceTimeout, "DeviceError": DeviceError, "ValueError": ValueError,
                  "TypeError": TypeError, "RuntimeError": RuntimeError}


def encode_error(e: BaseException) -> dict:
    """An exception raised in the simulation as a picklable dict (``decode_error`` rebuilds it)."""
    d = {"type": type(e).__name__, "message": str(e)}
    if isinstance(e, DeviceTimeout):
        d["args"] = (e.command, e.got, e.expected, e.timeout_s, e.detail)
    return d


def decode_error(d: dict) -> Exception:
    """The host-side exception for ``encode_error``'s dict: same type (``_REMOTE_ERRORS``) and message."""
    if d["type"] == "DeviceTimeout" and "args" in d:
        return DeviceTimeout(*d["args"])
    cls = _REMOTE_ERRORS.get(d["type"])
    if cls is not None:
        return cls(d["message"])
    return DeviceError(f"{d['type']} in the simulation: {d['message']}")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "(no log)"


class HostRtlDevice(Device):
    """The Verilator top behind ``Device`` for an ordinary (non-cocotb) program; see ``make_host_device``.

    The simulation runs in a child process (its own session: ``close`` or a failure ends the whole
    process group); the calls travel over a Unix socket in a private temporary directory,
    authenticated with a random key. ``send_command`` / ``send_data`` are checked here (ValueError at
    once, like ``RtlDevice``) and queued; ``receive``, ``reset``, ``configure`` and ``close`` ship the
    queue and the call as ONE message (one round trip per response). Since the simulated host only
    drives the streams inside ``receive``/``reset`` anyway, this computes exactly what ``RtlDevice``
    would in-process. Exceptions raised in the simulation (``DeviceTimeout``, ``DeviceError``,
    ``ValueError``, ...) are re-raised here with the same type and message.

    State mirrored after every call: ``cycles`` (simulated cycles since start), ``sim_seconds`` (wall
    time spent simulating), ``sim_cpu_seconds`` (CPU time of the simulator process, start-up
    included: a load-independent speed measure), ``out_stall_cycles``, ``framing_errors``, ``receive_log`` (as in
    ``RtlDevice``: words, host-seen dout stall cycles, simulated cycles per receive); ``round_trips``
    counts messages. ``run_dir`` holds the logs (``sim.log`` of the simulator, ``launcher.log``) and, with
    ``waves``, the trace. A simulator that dies, never connects or stops answering raises DeviceError
    with the log tail (never a hang); the device is unusable afterwards.
    """

    def __init__(self, cfg: ArrayConfig, model, *, run_dir: Path, device_opts: dict, connect_timeout_s: float,
                 reply_slack_s: float, waves: bool, progress=None):
        import os
        import pickle
        import secrets
        import subprocess
        import sys
        import tempfile
        from multiprocessing.connection import Listener
        self.cfg = cfg
        self.model = model
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.run_dir / "sim.log"
        self.waves_path = self.run_dir / f"waves.{model.trace_format}" if waves else None
        self.reply_slack_s = float(reply_slack_s)
        self.wall_timeout_s = device_opts.get("wall_timeout_s")
        self.cycles = 0
        self.sim_seconds = 0.0
        self.sim_cpu_seconds = 0.0               # CPU time of the simulator process so far
        self.out_stall_cycles = 0
        self.framing_errors: list[str] = []
        self.receive_log: list[tuple[int, int, int]] = []
        self.round_trips = 0
        self.start_seconds = 0.0                 # wall time from launch to the device being ready
        self._ops: list[tuple] = []
        self._closed = False
        self._failed: str | None = None
        self._conn = None
        self._progress = progress or (lambda msg: None)
        t0 = time.perf_counter()
        self._sockdir = tempfile.mkdtemp(prefix="anchorless-rtl-")       # short path (AF_UNIX limit), 0700
        address = os.path.join(self._sockdir, "device.sock")
        key = secrets.token_bytes(32)
        self._listener = Listener(address, family="AF_UNIX", authkey=key)
        spec_path = self.run_dir / "server_spec.pkl"
        with open(spec_path, "wb") as f:
            pickle.dump({"cfg": cfg, "model": model, "address": address, "device": device_opts,
                         "log": str(self.log_path), "waves": None if self.waves_path is None else str(self.waves_path)},
                        f)
        env = dict(os.environ, ANCHORLESS_SERVER_KEY=key.hex())
        repo = Path(__file__).resolve().parents[1]
        self._launcher_log = self.run_dir / "launcher.log"
        with open(self._launcher_log, "wb") as lf:
            self._proc = subprocess.Popen([sys.executable, "-m", "sim.tb_server", str(spec_path)], cwd=repo, env=env,
                                          stdin=subprocess.DEVNULL, stdout=lf, stderr=subprocess.STDOUT,
                                          start_new_session=True)
        import weakref
        self._finalizer = weakref.finalize(self, HostRtlDevice._kill_group, self._proc, self._sockdir)
        self._progress(f"simulator started (pid {self._proc.pid}, log {self.log_path})")
        try:
            self._conn = self._accept(address, key, float(connect_timeout_s))
            reply = self._wait(float(connect_timeout_s), "starting the simulation")
            self._absorb(reply)
            if reply[0] == "err":
                raise decode_error(reply[1])
        except BaseException:
            self._shutdown(kill=True)
            raise
        self.start_seconds = time.perf_counter() - t0
        self._progress(f"RTL device ready in {self.start_seconds:.1f} s")

    # ------------------------------------------------------------------ process management
    @staticmethod
    def _kill_group(proc, sockdir: str | None = None) -> None:
        """SIGTERM, then SIGKILL, to the simulator's process group (the launcher and the simulator)."""
        import os
        import shutil
        import signal
        import subprocess
        if proc.poll() is None:
            for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(proc.pid, sig)
                except (ProcessLookupError, PermissionError):
                    break
                try:
                    proc.wait(timeout=wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if sockdir:
            shutil.rmtree(sockdir, ignore_errors=True)

    def _log_tail(self) -> str:
        return (f"simulator log {self.log_path}:\n{_tail(self.log_path)}\n"
                f"launcher log {self._launcher_log}:\n{_tail(self._launcher_log, 1500)}")

    def _dead(self, why: str) -> DeviceError:
        self._shutdown(kill=True)
        self._failed = why
        return DeviceError(f"RTL simulation failed: {why}\n{self._log_tail()}")

    def _accept(self, address: str, key: bytes, timeout_s: float):
        """The simulator's connection, or DeviceError when it exits or does not connect in time."""
        import threading as _th
        from multiprocessing.connection import Client
        box: dict = {}

        def accept():
            try:
                box["conn"] = self._listener.accept()
            except BaseException as e:          # noqa: BLE001 - reported by the waiting thread
                box["error"] = e

        t = _th.Thread(target=accept, name="rtl-accept", daemon=True)
        t.start()
        deadline = time.monotonic() + timeout_s
        while t.is_alive():
            t.join(0.1)
            if not t.is_alive():
                break
            if self._proc.poll() is not None or time.monotonic() > deadline:
                why = (f"the simulator exited with status {self._proc.returncode} before connecting"
                       if self._proc.poll() is not None else
                       f"the simulator did not connect within {timeout_s:g} s")
                try:                                    # unblock accept(): connect to ourselves
                    Client(address, family="AF_UNIX", authkey=key).close()
                except Exception:                       # noqa: BLE001
                    pass
                t.join(5.0)
                if "conn" in box:
                    box["conn"].close()
                raise self._dead(why)
        if "error" in box:
            raise self._dead(f"accepting the simulator's connection failed: {box['error']!r}")
        return box["conn"]

    def _wait(self, limit_s: float, what: str):
        """The simulation's next message; DeviceError if it dies or says nothing for ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while True:
            try:
                if self._conn.poll(0.2):
                    return self._conn.recv()
            except (EOFError, OSError) as e:
                self._proc.poll()
                raise self._dead(f"the connection closed while {what} ({type(e).__name__}; simulator status "
                                 f"{self._proc.returncode})") from None
            if self._proc.poll() is not None:
                if self._conn.poll(0):
                    continue
                raise self._dead(f"the simulator exited with status {self._proc.returncode} while {what}")
            if time.monotonic() > deadline:
                raise self._dead(f"no answer within {limit_s:g} s while {what} (simulation killed)")

    def _absorb(self, reply) -> None:
        st = reply[-1]
        self.cycles, self.sim_seconds, self.out_stall_cycles = st["cycles"], st["sim_seconds"], st["out_stall_cycles"]
        self.framing_errors.extend(st["framing_errors"])
        self.receive_log.extend(st["receive_log"])
        self.sim_cpu_seconds = st["cpu_seconds"]

    def _call(self, op: tuple, what: str, limit_s: float) -> list:
        """Ship the queued sends and ``op`` in one message; the results of the receives in it."""
        if self._closed:
            raise DeviceError("the RTL device is closed")
        if self._failed is not None:
            raise DeviceError(f"the RTL device is unusable: {self._failed}")
        ops, self._ops = self._ops + [op], []
        try:
            self._conn.send(ops)
        except OSError as e:
            raise self._dead(f"sending to the simulation failed while {what} ({e!r})") from None
        self.round_trips += 1
        reply = self._wait(limit_s, what)
        self._absorb(reply)
        if reply[0] == "err":
            raise decode_error(reply[1])
        return reply[1]

    # ------------------------------------------------------------------ Device interface
    def send_command(self, desc: int) -> None:
        if self._closed:
            raise DeviceError("the RTL device is closed")
        self._ops.append(("c", check_descriptor(desc)))

    def send_data(self, words, last_on_final: bool = True) -> None:
        if self._closed:
            raise DeviceError("the RTL device is closed")
        self._ops.append(("d", check_words(self.cfg, words), bool(last_on_final)))

    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        n_words = check_n_words(n_words)
        wall = float(self.wall_timeout_s if self.wall_timeout_s is not None else timeout_s)
        return self._call(("r", n_words, float(timeout_s)), f"receiving {n_words} words",
                          wall + self.reply_slack_s)[0]

    def reset(self) -> None:
        self._call(("reset",), "resetting", self.reply_slack_s)

    def configure(self, **opts) -> None:
        """``RtlDevice.configure`` in the simulation (checked there: ValueError for a bad option)."""
        self._call(("config", opts), "configuring", self.reply_slack_s)
        if "wall_timeout_s" in opts:
            self.wall_timeout_s = opts["wall_timeout_s"]

    def close(self) -> None:
        """End the simulation cleanly (its test returns, the simulator exits) and wait for it. Idempotent."""
        if self._closed:
            return
        clean = self._failed is None and self._conn is not None
        if clean:
            self._ops = []                               # never driven, as in RtlDevice
            try:
                self._call(("close",), "closing", self.reply_slack_s)
            except DeviceError:
                clean = False
        self._shutdown(kill=not clean)

    def _shutdown(self, kill: bool) -> None:
        import subprocess
        self._closed = True
        if self._conn is not None:
            self._conn.close()
        self._listener.close()
        if not kill:
            try:
                self._proc.wait(timeout=max(self.reply_slack_s, 30.0))
            except subprocess.TimeoutExpired:
                pass
        self._finalizer()                                # kills the group if still alive, removes the socket

    @property
    def pid(self) -> int:
        """Process id of the launcher, the leader of the simulation's process group."""
        return self._proc.pid

    @property
    def returncode(self):
        """The launcher's exit status (None while the simulation runs)."""
        return self._proc.poll()


#: Default run directories (build/rtl_host/<pid>-*) kept; older ones of finished processes are deleted.
RUN_DIRS_KEPT = 20


def _prune_run_dirs(root: Path, keep: int = RUN_DIRS_KEPT) -> None:
    """Delete all but the ``keep`` newest run directories whose creating process has exited."""
    import os
    import shutil
    dirs = sorted((d for d in root.iterdir() if d.is_dir()), key=lambda d: d.stat().st_mtime, reverse=True)
    for d in dirs[keep:]:
        pid = d.name.split("-", 1)[0]
        if pid.isdigit():
            try:
                os.kill(int(pid), 0)
                continue                                  # its process still runs: maybe in use
            except ProcessLookupError:
                pass
            except PermissionError:
                continue
        shutil.rmtree(d, ignore_errors=True)


def make_host_device(cfg: ArrayConfig | None = None, *, opt: str | None = None, run_dir=None, progress=None,
                     waves: bool = False, connect_timeout_s: float = 300.0, reply_slack_s: float = 60.0,
                     wall_timeout_s: float | None = 600.0, **device_opts) -> HostRtlDevice:
    """The RTL of ``hw.top.Accelerator(cfg)`` as a ``Device`` for a plain (non-cocotb) Python program.

    Builds or loads the cached Verilator model (``sim.build_top.build_top(cfg, opt=opt)``: minutes
    the first time per configuration, seconds afterwards), starts the simulation in a child process
    (sim/tb_server.py) and connects to it; see ``HostRtlDevice``.

    cfg                ArrayConfig (default ``ArrayConfig()``)
    opt                C++ optimisation of the model (default ``sim.build_top.DEFAULT_OPT``)
    run_dir            where the logs (and waves) go (default a fresh directory in build/rtl_host/)
    progress           callable(str) told about the build and start-up (e.g. ``print``), or None
    waves              write a trace of the whole simulation to ``run_dir`` (slow)
    connect_timeout_s  limit for the simulator to start and connect
    reply_slack_s      how much longer than a call's own limit the host waits for an answer before
                       declaring the simulation dead (the simulation enforces the limits itself)
    wall_timeout_s     wall-clock limit of every ``receive`` in the simulation, replacing the
                       caller's ``timeout_s`` (timeouts written for hardware are too short for a
                       simulator; hangs are caught by ``timeout_cycles`` of simulated time). None:
                       honour ``timeout_s``.
    device_opts        ``RtlDevice`` options: ``timeout_cycles``, ``dout_ready_prob``,
                       ``din_valid_prob``, ``cmd_valid_prob``, ``seed``, ``period_ns``
    """
    import os
    import tempfile

    from sim.build import BUILD_ROOT
    from sim.build_top import DEFAULT_OPT, build_top
    cfg = ArrayConfig() if cfg is None else cfg
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be an ArrayConfig, got {type(cfg).__name__}")
    allowed = {"timeout_cycles", "dout_ready_prob", "din_valid_prob", "cmd_valid_prob", "seed", "period_ns"}
    bad = sorted(set(device_opts) - allowed)
    if bad:
        raise ValueError(f"unknown RTL device option(s) {bad}; allowed: {sorted(allowed)}")
    for k, v in device_opts.items():
        if k in OPTIONS:
            _check_option(k, v)
    _check_option("wall_timeout_s", wall_timeout_s)
    for n, v in (("connect_timeout_s", connect_timeout_s), ("reply_slack_s", reply_slack_s)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real) or not v > 0:
            raise ValueError(f"{n} must be a number > 0, got {v!r}")
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    say(f"Verilator model of the accelerator top for {cfg}: loading or building (a first build takes minutes)")
    model = build_top(cfg, opt=opt or DEFAULT_OPT)
    say(f"model {model.key} {'built' if model.fresh else 'cached'} ({time.perf_counter() - t0:.1f} s)")
    if run_dir is None:
        root = BUILD_ROOT / "rtl_host"
        root.mkdir(parents=True, exist_ok=True)
        _prune_run_dirs(root)
        run_dir = tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=root)
    return HostRtlDevice(cfg, model, run_dir=Path(run_dir), device_opts={**device_opts, "wall_timeout_s": wall_timeout_s},
                         connect_timeout_s=connect_timeout_s, reply_slack_s=reply_slack_s, waves=waves,
                         progress=progress)
