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
* params pusher: offers ``params[par_bank][par_index]`` on ``core_params``
  ``ntiles`` times (one push per tile, in tile order). The params read port
  reads on every cycle (no enable), from the offered job's entry, or on the
  cycle of the final push from the next job's, so pushes of consecutive jobs
  are back-to-back too; re-reading the offered entry shows the same set
  (its bank is not written while the job is not pushed). After the final
  push the entry is ``pushed`` (its params bank is released).
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
        # Job payloads are datapath (reset-less): every use is qualified by the entry's valid
        # bit, which is reset; the shadows below are likewise only used under a valid bit.
        jobs = Array(Signal(jl, name=f"job{i}", reset_less=True) for i in range(J))
        valid = Array(Signal(name=f"valid{i}") for i in range(J))
        streamed = Array(Signal(name=f"streamed{i}") for i in range(J))
        pushed = Array(Signal(name=f"pushed{i}") for i in range(J))
        tail = Signal(range(J))
        sptr = Signal(range(J))
        pptr = Signal(range(J))
        wptr = Signal(range(J))

        # ---- enqueue. job.ready (== ~valid[tail]) is a register loaded from next-state logic
        # (the same value, a cycle earlier): the decoder's issue decision starts from a flip-flop.
        enq = Signal()
        job_ready = Signal(init=1)                       # == ~valid[tail]
        tail_n = Signal.like(tail)
        m.d.comb += [self.job.ready.eq(job_ready), enq.eq(self.job.valid & job_ready),
                     tail_n.eq(Mux(enq, _wrap_inc(tail, J), tail))]
        m.d.sync += tail.eq(tail_n)
        with m.If(enq):
            m.d.sync += jobs[tail].eq(self.job.payload)

        def job_next(ptr, name):
            """jobs[ptr] as it will be on the next cycle (an enqueue into ``ptr`` replaces it)."""
            nxt = Signal(jl, name=name)
            m.d.comb += nxt.eq(Mux(enq & (tail == ptr), self.job.payload, jobs[ptr]))
            return nxt

        # Timing (issue 6): the engines' buffer addresses and end-of-tile/job tests are
        # registers loaded from next-state logic (the value the combinational form would have
        # on the next cycle), so the read/write addresses, the read enables and the flags
        # they set are one or two LUT levels from flip-flops. Exactness argument for the
        # shadows: an entry's payload only changes on an enqueue into it, which needs the
        # entry invalid; an engine's counters are 0 whenever its pointer's entry is invalid
        # (they return to 0 on the job's final step, when the pointer moves on, and only
        # count while the entry is valid), so an enqueue into the pointed entry loads the
        # shadow from the payload with counters 0.

        # ---- beat streamer
        sj = jobs[sptr]
        snext = _wrap_inc(sptr, J)
        s_avail = Signal()                               # == valid[sptr] & ~streamed[sptr]
        s_j = Signal(range(k_max(cfg)))                  # beat within the tile
        s_t = Signal(range(ntiles_max(cfg)))             # tile
        s_cnt = Signal(range(cfg.act_depth))             # beat within the job: t*k + j
        j_end = Signal()                                 # == s_j == sj.k - 1
        t_end = Signal()                                 # == s_t == sj.ntiles - 1
        a_addr = Signal(range(cfg.act_depth), reset_less=True)   # == sj.act_offset + s_cnt
        g_addr = Signal(range(cfg.wgt_depth), reset_less=True)   # == sj.wgt_offset + s_j
        v = Signal()
        v_last = Signal()
        v_macs = Signal.like(self.macs_inc, reset_less=True)     # used only with v
        take = v & self.core_inp.ready
        issue = s_avail & (~v | take)
        m.d.comb += [
            self.act_r.en.eq(issue), self.act_r.bank.eq(sj.act_bank), self.act_r.addr.eq(a_addr),
            self.wgt_r.en.eq(issue), self.wgt_r.bank.eq(sj.wgt_bank), self.wgt_r.addr.eq(g_addr),
            self.core_inp.valid.eq(v),
            self.core_inp.payload.act.eq(self.act_r.data),
            self.core_inp.payload.wgt.eq(self.wgt_r.data),
            self.core_inp.payload.last.eq(v_last),
            self.macs_inc.eq(Mux(take, v_macs, 0)),
        ]
        sn = job_next(snext, "s_next_job")
        with m.If(issue):
            m.d.sync += [v.eq(1), v_last.eq(j_end), v_macs.eq(sj.macs)]
            with m.If(j_end):
                m.d.sync += s_j.eq(0)
                with m.If(t_end):
                    m.d.sync += [s_t.eq(0), s_cnt.eq(0), sptr.eq(snext),
                                 j_end.eq(sn.k == 1), t_end.eq(sn.ntiles == 1),
                                 a_addr.eq(sn.act_offset), g_addr.eq(sn.wgt_offset)]
                with m.Else():
                    m.d.sync += [s_t.eq(s_t + 1), s_cnt.eq(s_cnt + 1),
                                 j_end.eq(sj.k == 1), t_end.eq(s_t + 1 == sj.ntiles - 1),
                                 a_addr.eq(a_addr + 1), g_addr.eq(sj.wgt_offset)]
            with m.Else():
                m.d.sync += [s_j.eq(s_j + 1), s_cnt.eq(s_cnt + 1), j_end.eq(s_j + 1 == sj.k - 1),
                             a_addr.eq(a_addr + 1), g_addr.eq(g_addr + 1)]
        with m.Else():
            with m.If(take):
                m.d.sync += v.eq(0)
            with m.If(enq & (tail == sptr)):            # counters are 0 (the entry was invalid)
                pl = self.job.payload
                m.d.sync += [j_end.eq(pl.k == 1), t_end.eq(pl.ntiles == 1),
                             a_addr.eq(pl.act_offset), g_addr.eq(pl.wgt_offset)]

        # ---- params pusher. The params read port reads every cycle (no enable: no 675-wide
        # clock enable) from registered addresses: the set of the job on offer (cur_*) or,
        # on the cycle of its final push, the next job's (nxt_*). Reading the offered job's
        # entry again on every cycle shows the same data because its params bank cannot be
        # written while the job is valid and not pushed (the decoder's par_busy interlock); when
        # nothing is on offer (pv = 0) the data is not looked at.
        pnext = _wrap_inc(pptr, J)
        p_avail = Signal()                                      # == valid[pptr] & ~pushed[pptr]
        n_avail = Signal()                                      # == valid[pnext] & ~pushed[pnext]
        pv = Signal()
        p_cnt = Signal(range(ntiles_max(cfg)))
        p_last = Signal()                                       # == p_cnt == jobs[pptr].ntiles - 1
        cur_bank = Signal(bank_shape(), reset_less=True)        # == jobs[pptr].par_bank
        cur_index = Signal(range(cfg.param_depth), reset_less=True)
        nxt_bank = Signal(bank_shape(), reset_less=True)        # == jobs[pnext].par_bank
        nxt_index = Signal(range(cfg.param_depth), reset_less=True)
        pfire = pv & self.core_params.ready
        pfinal = pfire & p_last
        m.d.comb += [self.core_params.valid.eq(pv), self.core_params.payload.eq(self.par_r.data),
                     self.par_r.en.eq(1),
                     self.par_r.bank.eq(Mux(pfinal, nxt_bank, cur_bank)),
                     self.par_r.addr.eq(Mux(pfinal, nxt_index, cur_index))]
        pptr_n = Mux(pfinal, pnext, pptr)
        pc_n = job_next(pptr_n, "p_cur_next")
        pn_n = job_next(_wrap_inc(pptr_n, J), "p_nxt_next")
        m.d.sync += [cur_bank.eq(pc_n.par_bank), cur_index.eq(pc_n.par_index),
                     nxt_bank.eq(pn_n.par_bank), nxt_index.eq(pn_n.par_index)]
        with m.If(pfinal):
            m.d.sync += [pptr.eq(pnext), p_cnt.eq(0), pv.eq(n_avail),
                         p_last.eq(pc_n.ntiles == 1)]
        with m.Else():
            with m.If(pfire):
                m.d.sync += [p_cnt.eq(p_cnt + 1), p_last.eq(p_cnt + 1 == pc_n.ntiles - 1)]
            with m.Else():
                m.d.sync += p_last.eq(p_cnt == pc_n.ntiles - 1)
            with m.If(~pv & p_avail):
                m.d.sync += pv.eq(1)

        # ---- output writer (the head entry); core_out is always accepted
        wj = jobs[wptr]
        wnext = _wrap_inc(wptr, J)
        w_r = Signal(range(cfg.rows))
        w_t = Signal(range(ntiles_max(cfg)))
        w_cnt = Signal(range(cfg.out_depth))
        w_tend = Signal()                                        # == w_t == wj.ntiles - 1
        o_addr = Signal(range(cfg.out_depth), reset_less=True)  # == wj.out_offset + w_cnt
        m.d.comb += [
            self.core_out.ready.eq(1),
            self.out_w.en.eq(self.core_out.valid), self.out_w.bank.eq(wj.out_bank),
            self.out_w.addr.eq(o_addr), self.out_w.data.eq(self.core_out.payload.data),
        ]
        wn = job_next(wnext, "w_next_job")
        w_lastrow = Signal(init=int(cfg.rows == 1))                  # == w_r == rows - 1
        retire = Signal()
        m.d.comb += retire.eq(self.core_out.valid & w_lastrow & w_tend)
        with m.If(self.core_out.valid):
            m.d.sync += w_lastrow.eq(Mux(w_lastrow, 0, w_r + 1) == cfg.rows - 1)
            with m.If(w_lastrow):
                m.d.sync += w_r.eq(0)
                with m.If(w_tend):
                    m.d.sync += [w_t.eq(0), w_cnt.eq(0), wptr.eq(wnext),
                                 w_tend.eq(wn.ntiles == 1), o_addr.eq(wn.out_offset)]
                    m.d.comb += self.job_done.eq(1)
                with m.Else():
                    m.d.sync += [w_t.eq(w_t + 1), w_cnt.eq(w_cnt + 1), w_tend.eq(w_t + 1 == wj.ntiles - 1),
                                 o_addr.eq(o_addr + 1)]
            with m.Else():
                m.d.sync += [w_r.eq(w_r + 1), w_cnt.eq(w_cnt + 1), o_addr.eq(o_addr + 1)]
        with m.Elif(enq & (tail == wptr)):                      # counters are 0 (the entry was invalid)
            m.d.sync += [w_tend.eq(self.job.payload.ntiles == 1), o_addr.eq(self.job.payload.out_offset)]

        # ---- entry flags from next-state logic, and the engines' availability flags as
        # registers loaded from it. Timing (issue 6): s_avail gates `issue`, the act/wgt read
        # enable (every bank's read-data clock enable) and the streamer's state updates;
        # p_avail/n_avail feed pv; a register per flag leaves those one or two LUT levels from
        # flip-flops. Each register equals the combinational form it replaces on every cycle
        # (same value, loaded a cycle earlier), so no port moves. The events are exclusive per
        # entry: an enqueue needs the entry invalid; a final issue/push/row needs it valid.
        enq_at = [enq & (tail == i) for i in range(J)]
        valid_n = Array(Signal(name=f"valid{i}_n") for i in range(J))
        streamed_n = Array(Signal(name=f"streamed{i}_n") for i in range(J))
        pushed_n = Array(Signal(name=f"pushed{i}_n") for i in range(J))
        s_final = issue & j_end & t_end
        for i in range(J):
            m.d.comb += [
                valid_n[i].eq(enq_at[i] | (valid[i] & ~(retire & (wptr == i)))),
                streamed_n[i].eq(~enq_at[i] & (streamed[i] | (s_final & (sptr == i)))),
                pushed_n[i].eq(~enq_at[i] & (pushed[i] | (pfinal & (pptr == i)))),
            ]
            m.d.sync += [valid[i].eq(valid_n[i]), streamed[i].eq(streamed_n[i]), pushed[i].eq(pushed_n[i])]

        def s_av_n(p):
            return valid_n[p] & ~streamed_n[p]

        def p_av_n(p):
            return valid_n[p] & ~pushed_n[p]

        m.d.sync += [
            job_ready.eq(~valid_n[tail_n]),
            s_avail.eq(Mux(s_final, s_av_n(snext), s_av_n(sptr))),
            p_avail.eq(Mux(pfinal, p_av_n(pnext), p_av_n(pptr))),
            n_avail.eq(Mux(pfinal, p_av_n(_wrap_inc(pnext, J)), p_av_n(pnext))),
        ]

        # The registered flags and the combinational forms they stand for (no hardware: read by
        # tests/test_hw_buffers.py, which asserts them equal on every cycle of top-level sessions).
        self.shadow_checks = [
            ("job_ready", job_ready, ~valid[tail]),
            ("s_avail", s_avail, valid[sptr] & ~streamed[sptr]),
            ("p_avail", p_avail, valid[pptr] & ~pushed[pptr]),
            ("n_avail", n_avail, valid[pnext] & ~pushed[pnext]),
            ("w_lastrow", w_lastrow, w_r == cfg.rows - 1),
        ]

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
