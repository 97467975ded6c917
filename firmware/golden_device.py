"""``GoldenDevice``: the accelerator top's ISA (golden/isa.py, docs/top.md) in NumPy.

Functional behaviour is exact: the buffers (BANKS banks each, depths from
ArrayConfig), the decoder's checks and drop rules (``isa.descriptor_errors``:
BAD_OPCODE / RESERVED / BAD_RANGE, the command dropped and counted, a dropped
WRITE_* still consuming its payload up to ``last``), payload framing
(LENGTH_MISMATCH: ``last`` early -> the complete entries so far are written;
``last`` missing on the declared final word -> all entries written, the
following words discarded through the next ``last``), RUN through
``golden.array_model.tile_value`` tile by tile (weights shared by the RUN's
tiles, one params set per RUN), READ_OUT / READ_STATUS / SYNC / CLEAR_STATUS.

The device is synchronous: a command executes as soon as it (and its payload)
has arrived, in order, so the hardware's interlocks (a WRITE waits for the
jobs reading its bank, READ_OUT for the jobs writing it) are trivially
honoured. Memories start (and ``reset``) at zero; the LUT too.

Counters (READ_STATUS slots):

* USEFUL_MACS: sum over a RUN's k*ntiles beats of rows_valid * lanes_valid
  (exact, as the hardware counts);
* JOBS_DONE, CMDS_DROPPED (every command that set a flag, incl. LENGTH_MISMATCH);
* IN_STALL_CYCLES, BUSY_CYCLES and CYCLES: ``firmware.report.TopTimer``, the cycle model of
  the top (decoder states, interlocks, 2-job queue, back-to-back beat
  streaming; per-tile core timing of golden.array_model, == isa.run_timing
  for a RUN alone) under an ideal host (a descriptor offered whenever the
  decoder is IDLE, din words every cycle, dout always ready). CYCLES is the
  snapshot cycle of READ_STATUS (its WAIT cycle) counted from reset or from
  the cycle after the clearing CLEAR_STATUS's WAIT cycle. The RTL's values
  depend on its testbench's host timing; with an ideal host they should
  match.
* OUT_STALL_CYCLES: 0 (dout is always ready).

``hang_after`` (tests): after that many commands the device stops executing
anything (a hung device): ``receive`` then raises DeviceTimeout.
Data outside the array's contract (weights below cfg.weight_min, invalid
params fields in an entry a RUN uses) raise ValueError: the RTL result would
be undefined.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from golden import isa
from golden.array_model import check_params, tile_value
from golden.config import BANKS, ArrayConfig
from golden.isa import Flag, Op, Slot

from .device import Device, DeviceTimeout
from .report import TopTimer

__all__ = ["GoldenDevice"]

_WRITES = {Op.WRITE_ACT: "act", Op.WRITE_WGT: "wgt", Op.WRITE_PARAMS: "params", Op.WRITE_LUT: "lut"}


def _label(op, fields: dict) -> str:
    name = op.name if isinstance(op, Op) else f"opcode {op}"
    return " ".join([name] + [f"{k}={v}" for k, v in fields.items()])


class GoldenDevice(Device):
    """NumPy model of ``hw.top.Accelerator(cfg)`` behind the ``Device`` interface."""

    def __init__(self, cfg: ArrayConfig | None = None, *, hang_after: int | None = None):
        cfg = ArrayConfig() if cfg is None else cfg
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be an ArrayConfig, got {type(cfg).__name__}")
        isa.layout(cfg)                     # rejects configurations whose descriptors do not fit
        self.cfg = cfg
        self.hang_after = hang_after
        self._eb = {b: isa.entry_bytes(cfg, b) for b in isa.BUFFERS}
        self._wpe = {b: isa.words_per_entry(self._eb[b], cfg.bus_bytes) for b in isa.BUFFERS}
        self._lay = isa.layout(cfg)
        self.reset()

    # ---- Device interface ----
    def reset(self) -> None:
        cfg = self.cfg
        self.act = np.zeros((BANKS, cfg.act_depth, cfg.rows), np.int8)
        self.wgt = np.zeros((BANKS, cfg.wgt_depth, cfg.out_lanes), np.int8)
        self.params = np.zeros((BANKS, cfg.param_depth, self._eb["params"]), np.uint8)
        self.out = np.zeros((BANKS, cfg.out_depth, cfg.out_lanes), np.uint8)
        self.lut = np.zeros(isa.LUT_ENTRIES, np.int64)
        self.flags = 0
        self.counters = {s: 0 for s in Slot if s != Slot.STATUS}
        self._timer = TopTimer(cfg)
        self._origin = 0                                  # timer cycle from which CYCLES counts
        self._cmds: deque[tuple[int, dict]] = deque()     # (descriptor, answer record or None)
        self._din: deque[tuple[int, int]] = deque()       # (word, last)
        self._dout: deque[int] = deque()
        self._cur: dict | None = None                     # the WRITE whose payload is being received
        self._answers: list[dict] = []                    # response-producing commands, in order
        self._received = 0
        self._n_cmds = 0
        self._params_cache: dict[tuple[int, int], dict] = {}

    def send_command(self, desc: int) -> None:
        if isinstance(desc, bool) or not isinstance(desc, (int, np.integer)) or not 0 <= int(desc) < 2**isa.DESC_BITS:
            raise ValueError(f"desc must be an integer in [0, 2**{isa.DESC_BITS} - 1], got {desc!r}")
        desc = int(desc)
        rec = None
        code = desc & ((1 << isa.OPCODE_BITS) - 1)
        if code in (int(Op.READ_OUT), int(Op.READ_STATUS), int(Op.SYNC)):
            op = Op(code)
            f = self._fields(op, desc)
            n = {Op.READ_OUT: f.get("length", 0) * self._wpe["out"], Op.READ_STATUS: isa.status_response_words(self.cfg),
                 Op.SYNC: isa.sync_response_words(self.cfg)}[op]
            rec = {"label": _label(op, f), "expected": n, "produced": 0, "state": "queued", "flags": 0}
            self._answers.append(rec)
        self._cmds.append((desc, rec))
        self._pump()

    def send_data(self, words, last_on_final: bool = True) -> None:
        ws = [w for w in words]
        top = 1 << (8 * self.cfg.bus_bytes)
        for w in ws:
            if isinstance(w, bool) or not isinstance(w, (int, np.integer)) or not 0 <= int(w) < top:
                raise ValueError(f"words must be integers in [0, 2**{8 * self.cfg.bus_bytes} - 1] "
                                 f"(bus_bytes = {self.cfg.bus_bytes}), got {w!r}")
        for i, w in enumerate(ws):
            self._din.append((int(w), int(last_on_final and i == len(ws) - 1)))
        self._pump()

    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        if isinstance(n_words, bool) or not isinstance(n_words, (int, np.integer)) or n_words < 0:
            raise ValueError(f"n_words must be an integer >= 0, got {n_words!r}")
        if len(self._dout) < n_words:
            # Synchronous model: what has not arrived never will. Name the awaited command.
            raise self._timeout(n_words, timeout_s)
        out = [self._dout.popleft() for _ in range(n_words)]
        self._received += n_words
        return out

    # ---- internals ----
    def _timeout(self, n_words: int, timeout_s: float) -> DeviceTimeout:
        have = len(self._dout)
        for rec in self._answers:
            if rec["produced"] < rec["expected"]:
                if rec["state"] == "dropped":
                    names = "|".join(f.name for f in Flag if rec["flags"] & f)
                    detail = f"the device dropped it ({names}): it sends nothing"
                elif self._cur is not None:
                    detail = (f"it is still queued: the decoder waits for the payload of {self._cur['label']} "
                              f"({self._cur['got']} of {self._cur['need']} words received)")
                elif self.hang_after is not None and self._n_cmds >= self.hang_after:
                    detail = f"the device stopped executing after {self.hang_after} commands"
                else:
                    detail = "it is still queued"
                return DeviceTimeout(rec["label"], have, n_words, timeout_s, detail)
        return DeviceTimeout("(no pending command)", have, n_words, timeout_s,
                             "no command sent so far answers that many words")

    def _fields(self, op: Op, desc: int) -> dict:
        return {f.name: (desc >> f.offset) & ((1 << f.width) - 1) for f in self._lay[op]}

    def _pump(self) -> None:
        while self._cmds:
            if self.hang_after is not None and self._n_cmds >= self.hang_after:
                return
            desc, rec = self._cmds[0]
            if self._cur is None:
                errs = isa.descriptor_errors(self.cfg, desc)
                code = desc & ((1 << isa.OPCODE_BITS) - 1)
                if errs & Flag.BAD_OPCODE:
                    self._drop(errs, rec)
                    self._finish(None, {}, dropped=True)
                    continue
                op = Op(code)
                f = self._fields(op, desc)
                if errs:
                    self._drop(errs, rec)
                    if op in _WRITES:      # the payload is consumed up to last
                        self._cur = {"op": op, "fields": f, "label": _label(op, f), "drop": True,
                                     "words": [], "got": 0, "need": 0, "discard": True}
                    else:
                        self._finish(op, f, dropped=True)
                        continue
                elif op in _WRITES:
                    buf = _WRITES[op]
                    self._cur = {"op": op, "fields": f, "label": _label(op, f), "drop": False, "words": [],
                                 "got": 0, "need": f["length"] * self._wpe[buf], "discard": False}
                else:
                    self._execute(op, f, rec)
                    self._finish(op, f, dout_words=rec["produced"] if rec is not None else 0)
                    continue
            if not self._payload():
                return                      # waiting for din words

    def _drop(self, errs: int, rec) -> None:
        self.flags |= errs
        self.counters[Slot.CMDS_DROPPED] += 1
        if rec is not None:
            rec["state"], rec["flags"] = "dropped", errs

    def _finish(self, op, f, din_words: int = 0, dout_words: int = 0, dropped: bool = False) -> None:
        self._cmds.popleft()
        self._n_cmds += 1
        self._timer.step(op, f, din_words, dout_words, dropped=dropped)

    def _payload(self) -> bool:
        """Consume din for the current WRITE; True when the command is complete."""
        cur = self._cur
        while self._din:
            if cur["discard"]:
                _, last = self._din.popleft()
                cur["got"] += 1
                if last:
                    break
                continue
            w, last = self._din.popleft()
            cur["words"].append(w)
            cur["got"] += 1
            if len(cur["words"]) == cur["need"]:
                if last:
                    break
                self._write(cur, len(cur["words"]))           # all entries written ...
                cur["written"] = True
                self.flags |= Flag.LENGTH_MISMATCH            # ... the rest discarded through the next last
                self.counters[Slot.CMDS_DROPPED] += 1
                cur["discard"] = True
                continue
            if last:                                           # early last: complete entries only
                self.flags |= Flag.LENGTH_MISMATCH
                self.counters[Slot.CMDS_DROPPED] += 1
                break
        else:
            return False
        if not cur["drop"] and not cur.get("written"):
            self._write(cur, len(cur["words"]))
        self._cur = None
        self._finish(cur["op"], cur["fields"], din_words=cur["got"], dropped=cur["drop"])
        return True

    def _write(self, cur: dict, n_words: int) -> None:
        op, f = cur["op"], cur["fields"]
        buf = _WRITES[op]
        wpe = self._wpe[buf]
        n = n_words // wpe
        if n == 0:
            return
        ent = isa.unpack_entries(cur["words"][:n * wpe], self._eb[buf], self.cfg.bus_bytes)
        off = f["offset"]
        if buf == "act":
            self.act[f["bank"], off:off + n] = ent.view(np.int8)
        elif buf == "wgt":
            self.wgt[f["bank"], off:off + n] = ent.view(np.int8)
        elif buf == "params":
            self.params[f["bank"], off:off + n] = ent
            for i in range(off, off + n):
                self._params_cache.pop((f["bank"], i), None)
        else:
            self.lut[off:off + n] = ent[:, 0]

    def _params(self, bank: int, index: int) -> dict:
        key = (bank, index)
        if key not in self._params_cache:
            p = isa.unpack_params(self.cfg, self.params[bank, index])
            self._params_cache[key] = check_params(p, self.cfg.out_lanes, self.cfg.bias_width)
        return self._params_cache[key]

    def _execute(self, op: Op, f: dict, rec) -> None:
        cfg = self.cfg
        if op == Op.RUN:
            k, nt = f["k"], f["ntiles"]
            p = self._params(f["par_bank"], f["par_index"])
            w = self.wgt[f["wgt_bank"], f["wgt_offset"]:f["wgt_offset"] + k]
            for t in range(nt):
                a0 = f["act_offset"] + t * k
                a = self.act[f["act_bank"], a0:a0 + k].T                 # rows x k
                o0 = f["out_offset"] + t * cfg.rows
                self.out[f["out_bank"], o0:o0 + cfg.rows] = tile_value(cfg, a, w, p, self.lut)
            self.counters[Slot.USEFUL_MACS] += k * nt * f["rows_valid"] * f["lanes_valid"]
            self.counters[Slot.JOBS_DONE] += 1
        elif op == Op.READ_OUT:
            rows = self.out[f["bank"], f["offset"]:f["offset"] + f["length"]]
            self._respond(rec, isa.pack_entries(rows, cfg.bus_bytes))
        elif op == Op.READ_STATUS:
            self._respond(rec, isa.pack_status(cfg, self._slots()))
        elif op == Op.SYNC:
            st = isa.status_word(self.flags, 0)
            raw = np.frombuffer(st.to_bytes(isa.STATUS_BYTES, "little"), np.uint8)
            self._respond(rec, isa.pack_entries(raw[None, :], cfg.bus_bytes))
        elif op == Op.CLEAR_STATUS:
            self.flags = 0
            if f["counters"]:
                self.counters = {s: 0 for s in Slot if s != Slot.STATUS}
                self._timer = TopTimer(cfg)   # time 0 = this command's IDLE cycle; cleared in its WAIT
                # IDLE 0, CHECK 1, COMPARE 2, DECIDE 3, cleared in WAIT (DECODE_CYCLES): counting after it
                self._origin = isa.DECODE_CYCLES + 1

    def _slots(self) -> list[int]:
        c = dict(self.counters)
        # READ_STATUS is taken on timer cycle t and snapshots on t + DECODE_CYCLES (its WAIT cycle)
        c[Slot.CYCLES] = self._timer.t + isa.DECODE_CYCLES - self._origin
        c[Slot.BUSY_CYCLES] = self._timer.busy_cycles
        # Stalls of back-to-back jobs depend on their neighbours: take them from the
        # same top-level timeline as BUSY_CYCLES, not from each RUN alone.
        c[Slot.IN_STALL_CYCLES] = self._timer.stall
        mask = (1 << isa.COUNTER_BITS) - 1
        return [isa.status_word(self.flags, 0)] + [c[s] & mask for s in Slot if s != Slot.STATUS]

    def _respond(self, rec, words: list[int]) -> None:
        self._dout.extend(words)
        if rec is not None:
            rec["produced"] += len(words)
            rec["state"] = "done"
