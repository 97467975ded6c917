"""``Sequencer``: the RUN job queue and the three engines that execute jobs on ``ArrayCore``.

A job (``job_layout``) is one decoded RUN descriptor (golden/isa.py). The
queue holds ``JOB_QUEUE_DEPTH`` jobs (entries in a ring, per-entry flags
``valid``/``streamed``/``pushed``). Three engines walk the ring in order,
each at its own pace:

* beat streamer: issues one act/wgt buffer read per cycle while it has a job
  and its output register is free or being taken (``issue = avail & (~v |
  take)``); the buffers' read ports hold their data, so a beat stays on
  ``core_inp`` unchanged until the core accepts it and the core sees
  back-to-back beats (one per cycle), also across consecutive jobs. Tile t,
  beat j reads ``act[act_offset + t*k + j]`` and ``wgt[wgt_offset + j]``;
  ``last`` on j = k - 1. When the job's final beat is issued the entry is
  ``streamed`` (its act/wgt banks are released: the read data is already
  held in the ports).
* params pusher: reads ``params[par_bank][par_index]`` once and offers it
  on ``core_params`` ``ntiles`` times (one push per tile, in tile order).
  The next job's set is read on the cycle of the final push, so pushes of
  consecutive jobs are back-to-back too. After the final push the entry is
  ``pushed`` (its params bank is released).
* output writer: ``core_out`` is always ready (the out buffer accepts one row
  per cycle); row r of tile t goes to ``out[out_bank][out_offset + t*rows +
  r]``. After the job's last row the entry is retired (``valid`` = 0, out
  bank released, ``job_done`` pulses).

A job entering the queue on cycle q (``job`` transfer) starts both readers
on cycle q + 1, so the core has the first beat and the params set on its
inputs from cycle q + 2 (= cycle 0 of golden.isa.run_timing).

Bank-busy outputs (interlocks, one bit per bank): ``act_busy``/``wgt_busy``
= some valid, not yet streamed job reads that bank; ``par_busy``: some valid,
not yet pushed job; ``out_busy``: some valid job writes it. ``jobs`` = valid
entries. Counter events: ``macs_inc`` (rows_valid * lanes_valid of the job
of a beat the core accepts this cycle, else 0), ``job_done``.
"""
from __future__ import annotations

from amaranth import Array, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS, ArrayConfig
from golden.isa import JOB_QUEUE_DEPTH, k_max, layout, ntiles_max

from .buffers import bank_shape, read_signature, write_signature
from .core import input_layout, output_layout, params_layout

__all__ = ["Sequencer", "job_layout"]


def job_layout(cfg: ArrayConfig) -> data.StructLayout:
    """One queued RUN: its descriptor fields (banks/offsets/k/ntiles) and ``macs`` = rows_valid * lanes_valid."""
    return data.StructLayout({
        "act_bank": bank_shape(), "act_offset": range(cfg.act_depth),
        "wgt_bank": bank_shape(), "wgt_offset": range(cfg.wgt_depth),
        "par_bank": bank_shape(), "par_index": range(cfg.param_depth),
        "out_bank": bank_shape(), "out_offset": range(cfg.out_depth),
        "k": range(k_max(cfg) + 1), "ntiles": range(ntiles_max(cfg) + 1),
        "macs": range(cfg.rows * cfg.out_lanes + 1),
    })


def _wrap_inc(p, n):
    """p + 1 modulo n for a ring pointer."""
    return Mux(p == n - 1, 0, p + 1)


class Sequencer(wiring.Component):
    """Job queue + beat streamer + params pusher + output writer (module docstring)."""

    def __init__(self, cfg: ArrayConfig):
        layout(cfg)                      # the ISA must fit this cfg
        self.cfg = cfg
        self.par_bits = params_layout(cfg).size
        super().__init__({
            "job": In(stream.Signature(job_layout(cfg))),
            "act_r": Out(read_signature(cfg.rows * 8, cfg.act_depth)),
            "wgt_r": Out(read_signature(cfg.out_lanes * 8, cfg.wgt_depth)),
            "par_r": Out(read_signature(self.par_bits, cfg.param_depth)),
            "out_w": Out(write_signature(cfg.out_lanes * 8, cfg.out_depth)),
            "core_inp": Out(stream.Signature(input_layout(cfg))),
            "core_params": Out(stream.Signature(params_layout(cfg))),
            "core_out": In(stream.Signature(output_layout(cfg))),
            "act_busy": Out(BANKS), "wgt_busy": Out(BANKS), "par_busy": Out(BANKS), "out_busy": Out(BANKS),
            "jobs": Out(range(JOB_QUEUE_DEPTH + 1)),
            "macs_inc": Out(range(cfg.rows * cfg.out_lanes + 1)),
            "job_done": Out(1),
        })

    def elaborate(self, platform):
        cfg = self.cfg
        J = JOB_QUEUE_DEPTH
        m = Module()
        jl = job_layout(cfg)
        jobs = Array(Signal(jl, name=f"job{i}") for i in range(J))
        valid = Array(Signal(name=f"valid{i}") for i in range(J))
        streamed = Array(Signal(name=f"streamed{i}") for i in range(J))
        pushed = Array(Signal(name=f"pushed{i}") for i in range(J))
        tail = Signal(range(J))
        sptr = Signal(range(J))
        pptr = Signal(range(J))
        wptr = Signal(range(J))

        # ---- enqueue
        m.d.comb += self.job.ready.eq(~valid[tail])
        with m.If(self.job.valid & self.job.ready):
            m.d.sync += [jobs[tail].eq(self.job.payload), valid[tail].eq(1), streamed[tail].eq(0),
                         pushed[tail].eq(0), tail.eq(_wrap_inc(tail, J))]

        # ---- beat streamer
        sj = jobs[sptr]
        s_avail = valid[sptr] & ~streamed[sptr]
        s_j = Signal(range(k_max(cfg)))                  # beat within the tile
        s_t = Signal(range(ntiles_max(cfg)))             # tile
        s_cnt = Signal(range(cfg.act_depth))             # beat within the job: t*k + j
        v = Signal()
        v_last = Signal()
        v_macs = Signal.like(self.macs_inc)
        take = v & self.core_inp.ready
        issue = s_avail & (~v | take)
        m.d.comb += [
            self.act_r.en.eq(issue), self.act_r.bank.eq(sj.act_bank), self.act_r.addr.eq(sj.act_offset + s_cnt),
            self.wgt_r.en.eq(issue), self.wgt_r.bank.eq(sj.wgt_bank), self.wgt_r.addr.eq(sj.wgt_offset + s_j),
            self.core_inp.valid.eq(v),
            self.core_inp.payload.act.eq(self.act_r.data),
            self.core_inp.payload.wgt.eq(self.wgt_r.data),
            self.core_inp.payload.last.eq(v_last),
            self.macs_inc.eq(Mux(take, v_macs, 0)),
        ]
        j_end = s_j == sj.k - 1
        with m.If(issue):
            m.d.sync += [v.eq(1), v_last.eq(j_end), v_macs.eq(sj.macs)]
            with m.If(j_end):
                m.d.sync += s_j.eq(0)
                with m.If(s_t == sj.ntiles - 1):
                    m.d.sync += [s_t.eq(0), s_cnt.eq(0), streamed[sptr].eq(1), sptr.eq(_wrap_inc(sptr, J))]
                with m.Else():
                    m.d.sync += [s_t.eq(s_t + 1), s_cnt.eq(s_cnt + 1)]
            with m.Else():
                m.d.sync += [s_j.eq(s_j + 1), s_cnt.eq(s_cnt + 1)]
        with m.Elif(take):
            m.d.sync += v.eq(0)

        # ---- params pusher
        pj = jobs[pptr]
        pnext = _wrap_inc(pptr, J)
        p_avail = valid[pptr] & ~pushed[pptr]
        n_avail = valid[pnext] & ~pushed[pnext]
        pv = Signal()
        p_cnt = Signal(range(ntiles_max(cfg)))
        pfire = pv & self.core_params.ready
        pfinal = pfire & (p_cnt == pj.ntiles - 1)
        m.d.comb += [self.core_params.valid.eq(pv), self.core_params.payload.eq(self.par_r.data)]
        with m.If(pfinal):
            m.d.sync += [pushed[pptr].eq(1), pptr.eq(pnext), p_cnt.eq(0), pv.eq(n_avail)]
            m.d.comb += [self.par_r.en.eq(n_avail), self.par_r.bank.eq(jobs[pnext].par_bank),
                         self.par_r.addr.eq(jobs[pnext].par_index)]
        with m.Else():
            with m.If(pfire):
                m.d.sync += p_cnt.eq(p_cnt + 1)
            with m.If(~pv & p_avail):
                m.d.sync += pv.eq(1)
            m.d.comb += [self.par_r.en.eq(~pv & p_avail), self.par_r.bank.eq(pj.par_bank),
                         self.par_r.addr.eq(pj.par_index)]

        # ---- output writer (the head entry); core_out is always accepted
        wj = jobs[wptr]
        w_r = Signal(range(cfg.rows))
        w_t = Signal(range(ntiles_max(cfg)))
        w_cnt = Signal(range(cfg.out_depth))
        m.d.comb += [
            self.core_out.ready.eq(1),
            self.out_w.en.eq(self.core_out.valid), self.out_w.bank.eq(wj.out_bank),
            self.out_w.addr.eq(wj.out_offset + w_cnt), self.out_w.data.eq(self.core_out.payload.data),
        ]
        with m.If(self.core_out.valid):
            with m.If(w_r == cfg.rows - 1):
                m.d.sync += w_r.eq(0)
                with m.If(w_t == wj.ntiles - 1):
                    m.d.sync += [w_t.eq(0), w_cnt.eq(0), valid[wptr].eq(0), wptr.eq(_wrap_inc(wptr, J))]
                    m.d.comb += self.job_done.eq(1)
                with m.Else():
                    m.d.sync += [w_t.eq(w_t + 1), w_cnt.eq(w_cnt + 1)]
            with m.Else():
                m.d.sync += [w_r.eq(w_r + 1), w_cnt.eq(w_cnt + 1)]

        # ---- interlock views and the job count
        for b in range(BANKS):
            m.d.comb += [
                self.act_busy[b].eq(_any(valid[i] & ~streamed[i] & (jobs[i].act_bank == b) for i in range(J))),
                self.wgt_busy[b].eq(_any(valid[i] & ~streamed[i] & (jobs[i].wgt_bank == b) for i in range(J))),
                self.par_busy[b].eq(_any(valid[i] & ~pushed[i] & (jobs[i].par_bank == b) for i in range(J))),
                self.out_busy[b].eq(_any(valid[i] & (jobs[i].out_bank == b) for i in range(J))),
            ]
        m.d.comb += self.jobs.eq(sum(valid[i] for i in range(J)))
        return m


def _any(terms):
    out = 0
    for t in terms:
        out = out | t
    return out
