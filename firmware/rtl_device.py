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

Per-cycle cost is kept low: whole payloads are written as single integers, handles are looked up
once, signals are only written when they change, and while the host has nothing to drive and
``dout`` is idle the simulation runs without Python until ``dout.valid`` rises (or the timeout
budget is spent) -- one trigger instead of a coroutine step per cycle.

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

import random
import threading
import time
from collections import deque

import numpy as np

from golden import isa
from golden.config import ArrayConfig
from golden.isa import Flag, Op

from .device import Device, DeviceTimeout

__all__ = ["RtlDevice", "default_timeout_cycles"]


def default_timeout_cycles(cfg: ArrayConfig) -> int:
    """Cycles without any stream transfer after which ``receive`` gives up.

    A RUN takes at most ~max(act_depth, ntiles_max * rows) beats plus the pipeline latency, and
    the decoder may wait for JOB_QUEUE_DEPTH of them (READ_OUT / SYNC interlock) without any
    port activity; four times that is a generous bound that still ends a hang quickly (the idle
    wait costs one simulator trigger, not a Python step per cycle).
    """
    per_run = max(cfg.act_depth, isa.ntiles_max(cfg) * cfg.rows) + cfg.latency + 4 * cfg.rows + 64
    return 4 * isa.JOB_QUEUE_DEPTH * per_run + 1000


def _label(cfg: ArrayConfig, desc: int) -> str:
    code = desc & ((1 << isa.OPCODE_BITS) - 1)
    try:
        op = Op(code)
    except ValueError:
        return f"opcode {code} (descriptor {desc:#x})"
    f = {fl.name: (desc >> fl.offset) & ((1 << fl.width) - 1) for fl in isa.layout(cfg)[op]}
    return " ".join([op.name] + [f"{k}={v}" for k, v in f.items()])


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
            if not 0.0 < float(p) <= 1.0:
                raise ValueError(f"{n} must be in (0, 1], got {p!r}")
        if timeout_cycles is not None and (isinstance(timeout_cycles, bool) or not isinstance(timeout_cycles, int)
                                           or timeout_cycles < 1):
            raise ValueError(f"timeout_cycles must be an integer >= 1, got {timeout_cycles!r}")
        self.cfg = cfg
        self.dut = dut
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
            cocotb.start_soon(Clock(self._h["clk"], self.period_ns, unit="ns").start())
            self._started = True
        await self._reset(reset_cycles)

    async def _reset(self, reset_cycles: int = 2) -> None:
        from cocotb.triggers import ReadOnly, RisingEdge
        h = self._h
        t0 = time.perf_counter()
        if self._started_reset:
            await RisingEdge(h["clk"])         # called after a receive (ReadOnly phase): writes need an edge
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
        await ReadOnly()                       # same phase as the end of a receive
        self._clear_host()
        self.sim_seconds += time.perf_counter() - t0

    async def _host(self, n: int, wall_s: float):
        """Drive the streams cycle by cycle until ``n`` words are buffered; returns None or a reason."""
        from cocotb.simtime import get_sim_time
        from cocotb.triggers import ClockCycles, First, ReadOnly, RisingEdge
        h = self._h
        clk = h["clk"]
        cv, cr, cp = h["cmd__valid"], h["cmd__ready"], h["cmd__payload"]
        dv, dr, dp = h["din__valid"], h["din__ready"], h["din__payload"]
        ov, orr, op = h["dout__valid"], h["dout__ready"], h["dout__payload"]
        re, ro = RisingEdge(clk), ReadOnly()
        drv = self._drv
        cmdq, dinq, words = self._cmdq, self._dinq, self._words
        rng = self._rng
        p_ready, p_din, p_cmd = self.p_ready, self.p_din, self.p_cmd
        mask = (1 << self._bus_bits) - 1
        limit = self.timeout_cycles
        deadline = time.perf_counter() + wall_s
        need_edge = True
        while len(words) < n:
            if need_edge:
                await re
                self.cycles += 1
            need_edge = True
            # ---- drive (post-edge): hold offered beats until taken, offer queued ones ----
            if not self._cmd_hold and cmdq and (p_cmd >= 1.0 or rng.random() < p_cmd):
                cp.value = cmdq.popleft()
                self._cmd_hold = True
            if self._cmd_hold != drv["cmd__valid"]:
                drv["cmd__valid"] = int(self._cmd_hold)
                cv.value = drv["cmd__valid"]
            if not self._din_hold and dinq and (p_din >= 1.0 or rng.random() < p_din):
                dp.value = dinq.popleft()
                self._din_hold = True
            if self._din_hold != drv["din__valid"]:
                drv["din__valid"] = int(self._din_hold)
                dv.value = drv["din__valid"]
            rdy = 1 if p_ready >= 1.0 else int(rng.random() < p_ready)
            if rdy != drv["dout__ready"]:
                drv["dout__ready"] = rdy
                orr.value = rdy
            await ro
            # ---- sample: transfers of this cycle ----
            act = False
            if self._cmd_hold and int(cr.value):
                self._cmd_hold = False
                self._taken += 1
                act = True
            if self._din_hold and int(dr.value):
                self._din_hold = False
                self._din_taken += 1
                act = True
            valid = int(ov.value)
            if valid:
                if rdy:
                    self._got_word(int(op.value), mask)
                    act = True
                else:
                    self.out_stall_cycles += 1
            self._idle = 0 if act else self._idle + 1
            if self._idle >= limit:
                return f"no cmd/din/dout transfer for {self._idle} simulated cycles"
            if not (self.cycles & 1023) and time.perf_counter() > deadline:
                return f"wall-clock limit of {wall_s:g} s reached"
            if not valid and len(words) < n and not (self._cmd_hold or self._din_hold or cmdq or dinq):
                # Nothing to drive and dout idle: let the simulator run until dout.valid rises (no Python
                # per cycle). Both triggers fire just after a rising edge: the loop continues there.
                t_before = get_sim_time("ns")
                await First(RisingEdge(ov), ClockCycles(clk, limit - self._idle))
                edges = int(round((get_sim_time("ns") - t_before) / self.period_ns))
                self.cycles += edges
                self._idle += max(edges - 1, 0)      # cycles skipped; the current one is counted below
                need_edge = False
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
        if isinstance(desc, bool) or not isinstance(desc, (int, np.integer)) or not 0 <= int(desc) < 2**isa.DESC_BITS:
            raise ValueError(f"desc must be an integer in [0, 2**{isa.DESC_BITS} - 1], got {desc!r}")
        desc = int(desc)
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
        ws = list(words)
        top = 1 << self._bus_bits
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= int(w) < top:
                raise ValueError(f"words must be integers in [0, 2**{self._bus_bits} - 1] "
                                 f"(bus_bytes = {self.cfg.bus_bytes}), got {w!r}")
        last_bit = 1 << self._bus_bits
        n = len(ws)
        beats = [int(w) | (last_bit if (last_on_final and i == n - 1) else 0) for i, w in enumerate(ws)]
        if self.drop_din_after is not None:
            beats = beats[:max(self.drop_din_after - self._din_sent, 0)]
        self._dinq.extend(beats)
        self._din_sent += len(beats)

    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 0:
            raise ValueError(f"n_words must be an integer >= 0, got {n_words!r}")
        n_words = int(n_words)
        wall = float(self.wall_timeout_s if self.wall_timeout_s is not None else timeout_s)
        stalls0, cyc0, t0 = self.out_stall_cycles, self.cycles, time.perf_counter()
        reason = None
        if len(self._words) < n_words:
            reason = self._call(self._host, n_words, wall)
        self.sim_seconds += time.perf_counter() - t0
        if reason is not None:
            raise self._timeout(n_words, timeout_s, reason)
        self.receive_log.append((n_words, self.out_stall_cycles - stalls0, self.cycles - cyc0))
        return [self._words.popleft() for _ in range(n_words)]

    def reset(self) -> None:
        t0 = time.perf_counter()
        self._call(self._reset)
        self.sim_seconds += time.perf_counter() - t0

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
