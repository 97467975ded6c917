"""Per-layer performance reports: modelled cycles, MACs, utilization and the roofline bound.

Two timing sources:

* ``golden.isa.run_timing`` -- the cycle-exact duration of one RUN (derived
  from, and tested against, ``golden.array_model``): BUSY_CYCLES of a RUN
  executed alone is ``T + 2``.
* ``timeline`` -- this module's command-level model of the accelerator top
  (docs/top.md) driven by an ideal host, used to pick a schedule and to
  estimate a layer's wall-clock cycles including stream stalls. Its rules:
  the decoder takes one command per cycle (the descriptor beat) and finishes
  a WRITE_* when its payload has streamed at 1 ``din`` word per cycle and a
  READ_OUT when its rows have streamed at 1 ``dout`` word per cycle; a WRITE
  into a bank waits until every earlier RUN reading that bank has finished
  (WRITE_LUT: every earlier RUN); a READ_OUT waits until every earlier RUN
  writing that bank has finished; a RUN waits while JOB_QUEUE_DEPTH jobs are
  queued or running; jobs execute one after another, each for its
  ``run_timing`` busy cycles. (The RTL may start a job's beats while the
  previous one drains; then the model is conservative by up to ~latency + rows
  cycles per RUN. The RTL run fills ``bench.network.rtl_validation``.)

Roofline of a layer (both lower bounds on its cycles):

* compute: MACs / (rows * out_lanes) -- every PE lane busy every cycle;
* stream: max(din words, dout words) -- one bus word per cycle each way.

``bound`` names the larger; ``utilization`` = MACs / (cycles * rows * out_lanes).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import lru_cache

from golden import isa
from golden.config import ArrayConfig
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
    """Incremental form of ``timeline``: feed commands one by one with ``step``; ``result()``.

    Used by ``timeline`` (whole programs) and by GoldenDevice (its CYCLES and
    BUSY_CYCLES counters under the ideal-host assumption).
    """

    _BUF = {Op.WRITE_ACT: "act", Op.WRITE_WGT: "wgt", Op.WRITE_PARAMS: "params"}

    def __init__(self, cfg: ArrayConfig):
        self.cfg = cfg
        self.t = 0                      # decoder time: the next descriptor is taken at t
        self.din_free = self.dout_free = 0
        self.run_ends: list[int] = []
        self.release = {(b, k): 0 for b in ("act", "wgt", "params") for k in range(2)}
        self.out_release = {0: 0, 1: 0}
        self.array = self.stall = self.din = self.dout = 0
        self._busy = 0                  # closed busy intervals
        self._iv: list[int] | None = None   # open busy interval [start, end)

    def step(self, op: Op, fields: dict, din_words: int = 0, dout_words: int = 0) -> None:
        f = fields
        self.t += 1                                  # descriptor beat
        if op in self._BUF:
            start = max(self.t, self.din_free, self.release[(self._BUF[op], f["bank"])])
            self.t = self.din_free = start + din_words
            self.din += din_words
        elif op == Op.WRITE_LUT:
            start = max(self.t, self.din_free, self.run_ends[-1] if self.run_ends else 0)
            self.t = self.din_free = start + din_words
            self.din += din_words
        elif op == Op.RUN:
            depth = isa.JOB_QUEUE_DEPTH
            if len(self.run_ends) >= depth:
                self.t = max(self.t, self.run_ends[-depth])     # a queue slot frees when that job ends
            busy, st = _run_timing(self.cfg, f["k"], f["ntiles"])
            start = max(self.t, self.run_ends[-1] if self.run_ends else 0)
            end = start + busy
            self.run_ends.append(end)
            self.array += busy
            self.stall += st
            for buf, key in (("act", "act_bank"), ("wgt", "wgt_bank"), ("params", "par_bank")):
                self.release[(buf, f[key])] = end
            self.out_release[f["out_bank"]] = end
            # busy: union of [enqueue, end) intervals
            if self._iv is None or self.t > self._iv[1]:
                if self._iv is not None:
                    self._busy += self._iv[1] - self._iv[0]
                self._iv = [self.t, end]
            else:
                self._iv[1] = max(self._iv[1], end)
        elif op == Op.READ_OUT:
            start = max(self.t, self.dout_free, self.out_release[f["bank"]])
            self.t = self.dout_free = start + dout_words
            self.dout += dout_words
        elif op == Op.SYNC:
            self.t = max(self.t, self.run_ends[-1] if self.run_ends else 0) + dout_words
        else:                                        # READ_STATUS, CLEAR_STATUS, dropped commands
            self.t += dout_words

    @property
    def busy_cycles(self) -> int:
        return self._busy + (self._iv[1] - self._iv[0] if self._iv is not None else 0)

    @property
    def cycles(self) -> int:
        return max(self.t, self.run_ends[-1] if self.run_ends else 0, self.dout_free)

    def result(self) -> dict:
        return {"cycles": self.cycles, "busy_cycles": self.busy_cycles, "array_cycles": self.array,
                "din_words": self.din, "dout_words": self.dout, "runs": len(self.run_ends),
                "in_stall_cycles": self.stall}


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
    channels), ``packing`` (zero-weight lanes of packed groups), ``tile_gap``
    (K < rows: the core holds each tile for rows cycles), ``fill_drain`` (per
    RUN pipeline latency, parameter credit), ``stream`` (cycles the array
    waits for the decoder/din/dout).
    """
    cfg = plan.cfg
    peak = cfg.rows * cfg.out_lanes
    tl = timeline(plan.commands, cfg)
    macs = plan.macs
    slots = lane = beats_gap = 0
    for c in plan.runs:
        r = c.run
        k, nt = r["k"], r["ntiles"]
        slots += k * nt * peak
        lane += k * nt * r["rows_valid"] * r["lanes_valid"]
        beats_gap += (nt - 1) * max(0, cfg.rows - k) if nt > 1 else 0
    comp = -(-macs // peak)
    stream = max(tl["din_words"], tl["dout_words"])
    kbeats = slots // peak
    losses = {"edge": (slots - lane) / peak, "packing": (lane - macs) / peak, "tile_gap": float(beats_gap),
              "fill_drain": float(tl["array_cycles"] - kbeats - beats_gap),
              "stream": float(tl["cycles"] - tl["array_cycles"])}
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
