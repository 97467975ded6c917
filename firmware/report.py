"""Per-layer performance reports: modelled cycles, MACs, utilization and the roofline bound.

Timing comes from ``TopTimer``, a cycle model of the accelerator top as
hw/decoder.py and hw/sequencer.py document it (decoder states and
interlocks, the 2-entry job queue, beats and params streamed back to back
across jobs) with the core's per-tile timing from golden.array_model: for a
RUN alone it equals ``golden.isa.run_timing`` (tested), for RUNs queued back
to back it equals ``golden.array_model.simulate`` on the concatenated tiles
(tested). The host is ideal (a descriptor whenever the decoder is IDLE, din
words every cycle, dout always ready). ``timeline(commands, cfg)`` runs a
whole program through it; the compiler uses it to pick a RUN order and
bench/network.py to time CenterNet. (RTL validation of the model:
``bench.network.rtl_validation``.)

Roofline of a layer (both lower bounds on its cycles):

* compute: MACs / (rows * out_lanes) -- every PE lane busy every cycle;
* stream: max(din words, dout words) -- one bus word per cycle each way.

``bound`` names the larger; ``utilization`` = MACs / (cycles * rows * out_lanes).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from golden import isa
from golden.config import PARAM_CREDIT_CYCLES, ArrayConfig
from golden.isa import Op

__all__ = ["run_cycles", "TopTimer", "timeline", "LayerReport", "report_from_plan", "summarize"]


@lru_cache(maxsize=65536)
def _run_timing(cfg: ArrayConfig, k: int, ntiles: int) -> tuple[int, int]:
    t = isa.run_timing(cfg, k, ntiles)
    return t["busy_cycles"], t["in_stall_cycles"]


def run_cycles(cfg: ArrayConfig, k: int, ntiles: int) -> int:
    """BUSY_CYCLES of one RUN executed alone (golden.isa.run_timing, cached)."""
    return _run_timing(cfg, k, ntiles)[0]


class TopTimer:
    """Cycle model of the accelerator top (hw/decoder.py, hw/sequencer.py) fed by an ideal host.

    Feed commands in order with ``step(op, fields, din_words, dout_words)``;
    read ``cycles``, ``busy_cycles`` or ``result()``. The host offers the next
    descriptor on the cycle the decoder returns to IDLE, payload words every
    cycle, and dout is always ready. Cycle by cycle this follows the RTL's
    documented behaviour:

    * decoder, per command taken on cycle c: CHECK on c+1, COMPARE on c+2,
      DECIDE on c+3 (the checks split over three registered cycles, issue 6),
      WAIT from c+D (D = ``isa.DECODE_CYCLES`` = 4) until
      its interlock clears on cycle w, then RUN: the job enters the queue on
      w (IDLE on w+1); WRITE_*: words on w+1 .. w+n (IDLE on w+n+1);
      READ_OUT: words on w+1+R .. w+n+R (R = ``isa.OUT_READ_CYCLES``; IDLE on
      w+n+R+1); READ_STATUS/SYNC:
      SNAP on w+1 .. w+S (S = ``isa.SNAPSHOT_CYCLES``), words on w+S+1 ..
      w+S+n, showing the counters of cycle w; CLEAR_STATUS: IDLE on w+1; a dropped command goes
      back to IDLE after DECIDE (a dropped WRITE first discards its payload).
    * interlocks: WRITE_ACT/WGT wait until every queued job reading that bank
      has issued its final beat (``streamed``); WRITE_PARAMS until their final
      params push; READ_OUT until the jobs writing that out bank retired;
      WRITE_LUT and SYNC until no job is queued; RUN until the queue
      (JOB_QUEUE_DEPTH entries, an entry freed when its job retires) has room.
    * sequencer + core: the beat streamer and the params pusher run
      back-to-back across jobs; a job entering the queue on q has its first
      beat and params set on the core's inputs from q+2. Per tile t (global
      order, k = its job's k, R = rows, D = param_fifo_depth, al =
      array_latency): first beat F_t = L_{t-1} + 1 (first tile of a job:
      max(L_{t-1} + 1, q + 2)); params push P_t = P_{t-1} + 1 (first tile of a
      job: max(P_{t-1} + 1, q + 2)), and >= L_{t-D} + al + R (FIFO room);
      last beat accepted L_t = max(F_t + k - 1, L_{t-1} + R, P_t + C) (C =
      ``golden.config.PARAM_CREDIT_CYCLES``: a push is a credit C cycles later); the
      job's final beat is issued on F + k - 2 of its last tile; its last row
      is written on T = L_last + latency + R - 1 and it retires (entry free)
      from T + 1. For a job alone this is exactly ``golden.isa.run_timing``.
    * counters: BUSY_CYCLES = cycles with a job queued ([q+1, T] per job,
      union); IN_STALL_CYCLES = sum of L_t - (F_t + k - 1); CYCLES from the
      first command.
    """

    _BUF = {Op.WRITE_ACT: "act", Op.WRITE_WGT: "wgt", Op.WRITE_PARAMS: "params"}

    def __init__(self, cfg: ArrayConfig, log_tiles: bool = False):
        self.cfg = cfg
        self.tile_log: list[int] | None = [] if log_tiles else None   # L_t of every tile (tests)
        self.t = 0                       # cycle on which the decoder (IDLE) takes the next descriptor
        self.jobs: list[dict] = []       # q, T, banks, streamed (act/wgt free from), pushed (params free from)
        self._L: list[int] = []          # last-beat accept cycles of the most recent D tiles
        self._last_L = None
        self._last_P = None
        self.array = self.stall = self.din = self.dout = self.beats = 0
        self.first_beat: int | None = None
        self._busy = 0
        self._iv: list[int] | None = None
        self.run_log: list[dict] = []    # per RUN: q, first beat, T

    # ---- the sequencer/core recurrence for one job entering the queue on q ----
    def _job(self, q: int, f: dict) -> dict:
        cfg = self.cfg
        k, nt, R = f["k"], f["ntiles"], cfg.rows
        D, al = cfg.param_fifo_depth, cfg.array_latency
        first_beat = None
        for i in range(nt):
            F = q + 2 if self._last_L is None else (self._last_L + 1 if i else max(self._last_L + 1, q + 2))
            P = q + 2 if self._last_P is None else (self._last_P + 1 if i else max(self._last_P + 1, q + 2))
            if len(self._L) >= D:
                P = max(P, self._L[-D] + al + R)
            offer = F + k - 1
            L = offer
            if self._last_L is not None:
                L = max(L, self._last_L + R)
            L = max(L, P + PARAM_CREDIT_CYCLES)
            self.stall += L - offer
            if first_beat is None:
                first_beat = F
                if self.first_beat is None:
                    self.first_beat = F
            self._L.append(L)
            if len(self._L) > D:
                del self._L[0]
            self._last_L, self._last_P = L, P
            if self.tile_log is not None:
                self.tile_log.append(L)
        T = self._last_L + cfg.latency + R - 1
        return {"q": q, "T": T, "streamed": offer, "pushed": self._last_P + 1, "first_beat": first_beat,
                "act": f["act_bank"], "wgt": f["wgt_bank"], "params": f["par_bank"], "out": f["out_bank"],
                "k": k, "ntiles": nt}

    def _release(self, key: str, bank: int, when: str) -> int:
        r = 0
        for j in self.jobs[-isa.JOB_QUEUE_DEPTH - 1:]:
            if j[key] == bank:
                r = max(r, j[when])
        return r

    def step(self, op, fields: dict, din_words: int = 0, dout_words: int = 0, dropped: bool = False) -> None:
        c = self.t
        f = fields
        if dropped or op is None:
            self.t = c + isa.DECODE_CYCLES + din_words     # the checks, then DISCARD of a dropped WRITE's payload
            return
        w = c + isa.DECODE_CYCLES                # first WAIT cycle (after CHECK, COMPARE, DECIDE)
        if op in self._BUF:
            buf = self._BUF[op]
            w = max(w, self._release(buf, f["bank"], "pushed" if buf == "params" else "streamed"))
            self.t = w + din_words + 1
            self.din += din_words
        elif op == Op.WRITE_LUT:
            w = max(w, self.jobs[-1]["T"] + 1 if self.jobs else 0)
            self.t = w + din_words + 1
            self.din += din_words
        elif op == Op.RUN:
            depth = isa.JOB_QUEUE_DEPTH
            if len(self.jobs) >= depth:
                w = max(w, self.jobs[-depth]["T"] + 1)
            j = self._job(w, f)
            self.jobs.append(j)
            if len(self.jobs) > 8:
                del self.jobs[0]
            self.array += run_cycles(self.cfg, f["k"], f["ntiles"])
            self.beats += f["k"] * f["ntiles"]
            self.run_log.append({"q": w, "first_beat": j["first_beat"], "T": j["T"]})
            s, e = w + 1, j["T"] + 1
            if self._iv is None or s > self._iv[1]:
                if self._iv is not None:
                    self._busy += self._iv[1] - self._iv[0]
                self._iv = [s, e]
            else:
                self._iv[1] = max(self._iv[1], e)
            self.t = w + 1
        elif op == Op.READ_OUT:
            w = max(w, self._release("out", f["bank"], "T") + 1 if self.jobs else w)
            self.t = w + 1 + isa.OUT_READ_CYCLES + dout_words
            self.dout += dout_words
        elif op in (Op.READ_STATUS, Op.SYNC):
            if op == Op.SYNC and self.jobs:
                w = max(w, self.jobs[-1]["T"] + 1)
            self.t = w + isa.SNAPSHOT_CYCLES + dout_words + 1
        else:                                    # CLEAR_STATUS
            self.t = w + 1

    @property
    def busy_cycles(self) -> int:
        return self._busy + (self._iv[1] - self._iv[0] if self._iv is not None else 0)

    @property
    def cycles(self) -> int:
        return max(self.t, self.jobs[-1]["T"] + 1 if self.jobs else 0)

    def result(self) -> dict:
        return {"cycles": self.cycles, "busy_cycles": self.busy_cycles, "array_cycles": self.array,
                "din_words": self.din, "dout_words": self.dout, "runs": len(self.run_log),
                "in_stall_cycles": self.stall, "beats": self.beats,
                "first_beat": self.first_beat if self.first_beat is not None else 0,
                "last_accept": self._last_L if self._last_L is not None else 0}


def timeline(commands, cfg: ArrayConfig) -> dict:
    """Model a command list on an idle top with an ideal host (see the module docstring).

    ``commands``: firmware.compiler.Command objects (``op``, ``fields``,
    ``din_words``, ``dout_words``). Returns ``cycles`` (until the decoder, the
    last job and dout are all done), ``busy_cycles`` (cycles with a job queued
    or running), ``array_cycles`` (sum of the RUNs' own busy cycles),
    ``din_words``, ``dout_words``, ``runs``, ``in_stall_cycles``.
    """
    tt = TopTimer(cfg)
    for c in commands:
        tt.step(c.op, c.fields, c.din_words, c.dout_words)
    return tt.result()


@dataclass
class LayerReport:
    """Performance of one layer. Array layers: modelled from the plan; ``measured`` holds the
    device counters (READ_STATUS slots) when it ran on a device. Host layers: on_array False,
    zeros."""

    name: str
    kind: str
    on_array: bool
    macs: int = 0
    cycles: int = 0                  # modelled wall-clock cycles of the layer (timeline)
    array_cycles: int = 0            # sum of the RUNs' busy cycles (run_timing)
    busy_cycles: int = 0             # modelled BUSY_CYCLES (job queue not empty)
    din_words: int = 0
    dout_words: int = 0
    runs: int = 0
    order: str = ""
    compute_bound: int = 0
    stream_bound: int = 0
    bound: str = ""
    utilization: float = 0.0
    lane_slot_macs: int = 0          # sum over beats of rows_valid * lanes_valid (the USEFUL_MACS counter)
    losses: dict = field(default_factory=dict)
    measured: dict | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def report_from_plan(plan, measured: dict | None = None) -> LayerReport:
    """LayerReport of a firmware.compiler.LayerPlan (plus optional device counters).

    ``losses`` splits the gap between ``cycles`` and the compute bound, in
    cycles: ``edge`` (tile slots of rows beyond P or lanes beyond the
    channels), ``packing`` (zero-weight lanes of packed groups), ``core_stall``
    (last beats held by the tile gap, K < rows, or by parameter credit),
    ``startup`` (before the first beat: the first chunks stream in),
    ``drain`` (after the last beat: pipeline latency and the last READ_OUT),
    ``starved`` (the core had no beat in between: decoder/stream bound).
    """
    cfg = plan.cfg
    peak = cfg.rows * cfg.out_lanes
    tl = timeline(plan.commands, cfg)
    macs = plan.macs
    slots = lane = 0
    for c in plan.runs:
        r = c.run
        k, nt = r["k"], r["ntiles"]
        slots += k * nt * peak
        lane += k * nt * r["rows_valid"] * r["lanes_valid"]
    comp = -(-macs // peak)
    stream = max(tl["din_words"], tl["dout_words"])
    startup = tl["first_beat"]
    drain = tl["cycles"] - tl["last_accept"] - 1
    losses = {"edge": (slots - lane) / peak, "packing": (lane - macs) / peak,
              "core_stall": float(tl["in_stall_cycles"]), "startup": float(startup), "drain": float(drain),
              "starved": float(tl["cycles"] - tl["beats"] - tl["in_stall_cycles"] - startup - drain)}
    return LayerReport(
        name=plan.node.name, kind=type(plan.node).__name__, on_array=True, macs=macs, cycles=tl["cycles"],
        array_cycles=tl["array_cycles"], busy_cycles=tl["busy_cycles"], din_words=tl["din_words"],
        dout_words=tl["dout_words"], runs=tl["runs"], order=f"{plan.order[0]} m={plan.order[1]}",
        compute_bound=comp, stream_bound=stream, bound="compute" if comp >= stream else "stream",
        utilization=macs / (tl["cycles"] * peak) if tl["cycles"] else 0.0, lane_slot_macs=lane,
        losses=losses, measured=measured)


def summarize(reports: list[LayerReport], cfg: ArrayConfig, clock_hz: float = 100e6) -> dict:
    """Totals over array layers: MACs, cycles, MAC-weighted and overall utilization, frames/s."""
    arr = [r for r in reports if r.on_array]
    macs = sum(r.macs for r in arr)
    cycles = sum(r.cycles for r in arr)
    peak = cfg.rows * cfg.out_lanes
    return {
        "total_macs": macs, "total_cycles": cycles,
        "utilization_mac_weighted": sum(r.macs * r.utilization for r in arr) / macs if macs else 0.0,
        "utilization_overall": macs / (cycles * peak) if cycles else 0.0,
        "fps": clock_hz / cycles if cycles else 0.0,
    }
