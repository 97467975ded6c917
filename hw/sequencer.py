"""``Sequencer``: the RUN job queue and the three engines that execute jobs on ``ArrayCore``.

A job (``job_layout``) is one decoded RUN descriptor (golden/isa.py). The
queue holds ``JOB_QUEUE_DEPTH`` jobs (entries in a ring, per-entry flags
``valid``/``streamed``/``pushed``; the hardware keeps them as registers ``free`` =
~valid, ``savail`` = valid & ~streamed, ``pavail`` = valid & ~pushed, and stores
with each job its k == 1, k - 1, ntiles == 1, ntiles == 2, ntiles - 1, so the
engines' decisions start from flip-flops). Three engines walk the ring in order,
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

from amaranth import Array, Cat, Module, Mux, Signal
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
        assert J >= 2                    # the availability next-state forms below use snext != sptr
        m = Module()
        jl = job_layout(cfg)
        kr, tr = range(k_max(cfg)), range(ntiles_max(cfg))     # k - 1, ntiles - 1
        pl = self.job.payload
        # Job payloads are datapath (reset-less): every use is qualified by the entry's flags,
        # which are reset.
        jobs = Array(Signal(jl, name=f"job{i}", reset_less=True) for i in range(J))
        # Per-entry values precomputed from the payload and stored with it (the engines' end
        # tests and counter loads then start from flip-flops): k == 1, k - 1, ntiles == 1,
        # ntiles == 2, ntiles - 1.
        k1 = Array(Signal(name=f"k1_{i}", reset_less=True) for i in range(J))
        km1 = Array(Signal(kr, name=f"km1_{i}", reset_less=True) for i in range(J))
        nt1 = Array(Signal(name=f"nt1_{i}", reset_less=True) for i in range(J))
        nt2 = Array(Signal(name=f"nt2_{i}", reset_less=True) for i in range(J))
        ntm1 = Array(Signal(tr, name=f"ntm1_{i}", reset_less=True) for i in range(J))
        pl_k1, pl_nt1, pl_nt2 = Signal(), Signal(), Signal()
        pl_km1, pl_ntm1 = Signal(kr), Signal(tr)
        m.d.comb += [pl_k1.eq(pl.k == 1), pl_km1.eq(pl.k - 1), pl_nt1.eq(pl.ntiles == 1),
                     pl_nt2.eq(pl.ntiles == 2), pl_ntm1.eq(pl.ntiles - 1)]
        # Entry state, registered per entry from next-state logic (section "entry flags" below):
        # free == ~valid, savail == valid & ~streamed, pavail == valid & ~pushed.
        free = Array(Signal(init=1, name=f"free{i}") for i in range(J))
        savail = Array(Signal(name=f"savail{i}") for i in range(J))
        pavail = Array(Signal(name=f"pavail{i}") for i in range(J))
        tail = Signal(range(J))
        sptr = Signal(range(J))
        pptr = Signal(range(J))
        wptr = Signal(range(J))

        # ---- enqueue. job.ready (== ~valid[tail]) is a register loaded from next-state logic
        # (the same value, a cycle earlier): the decoder's issue decision starts from a flip-flop.
        # An entry loads the payload on every cycle it is free (its clock enable is the free[i]
        # flip-flop, not enq & tail == i through a LUT: ~60 enables per entry); the load on the
        # enqueue cycle is the one that stays, an invalid entry's contents are never looked at.
        enq = Signal()
        job_ready = Signal(init=1)                       # == ~valid[tail]
        tail_n = Signal.like(tail)
        m.d.comb += [self.job.ready.eq(job_ready), enq.eq(self.job.valid & job_ready),
                     tail_n.eq(Mux(enq, _wrap_inc(tail, J), tail))]
        m.d.sync += tail.eq(tail_n)
        for i in range(J):
            with m.If(free[i]):
                m.d.sync += [jobs[i].eq(pl), k1[i].eq(pl_k1), km1[i].eq(pl_km1), nt1[i].eq(pl_nt1),
                             nt2[i].eq(pl_nt2), ntm1[i].eq(pl_ntm1)]

        def enq_at(ptr):
            return enq & (tail == ptr)

        # An engine that moves to (or waits at) a free entry loads its state from the payload
        # on every cycle until the entry is valid: the load on the enqueue cycle is the one that
        # counts, and the choice is the free[ptr] flip-flop, not enq (the decoder's job.valid).
        def job_next(ptr, name):
            """jobs[ptr] as it will be on the next cycle if the entry is valid then (a free entry
            may be loaded with the payload now)."""
            nxt = Signal(jl, name=name)
            m.d.comb += nxt.eq(Mux(free[ptr], pl, jobs[ptr]))
            return nxt

        def next_entry(ptr):
            """The precomputed values of jobs[ptr] as they will be on the next cycle (as job_next)."""
            b = free[ptr]
            return dict(k1=Mux(b, pl_k1, k1[ptr]), km1=Mux(b, pl_km1, km1[ptr]),
                        nt1=Mux(b, pl_nt1, nt1[ptr]), ntm1=Mux(b, pl_ntm1, ntm1[ptr]))

        # Timing (issue 6): the engines' buffer addresses and end-of-tile/job tests are
        # registers loaded from next-state logic (the value the combinational form would have
        # on the next cycle), so the read/write addresses, the read enables and the flags
        # they set are one or two LUT levels from flip-flops. The counters count down (the
        # work left in the tile/job), so an end test is a register and the next one a compare
        # of a register with a constant. Exactness argument for the shadows: an entry's
        # payload only changes while the entry is free (invalid); an engine's state is
        # reloaded when its pointer moves on, counts only while the entry is valid, and is
        # reloaded from the payload on every cycle its entry is free, so the load on the
        # enqueue cycle is the entry's. The up-counters s_j/s_t/p_cnt/w_t and the valid/
        # streamed/pushed flags are kept for the shadow checks only (nothing in hardware reads
        # them: synthesis removes them).

        # ---- beat streamer
        sj = jobs[sptr]
        snext = _wrap_inc(sptr, J)
        s_avail = Signal()                               # == valid[sptr] & ~streamed[sptr]
        s_j = Signal(kr)                                 # reference: beat within the tile
        s_t = Signal(tr)                                 # reference: tile
        j_rem = Signal(kr)                               # == sj.k - 1 - s_j
        t_rem = Signal(tr)                               # == sj.ntiles - 1 - s_t
        j_end = Signal()                                 # == j_rem == 0
        t_end = Signal()                                 # == t_rem == 0
        a_addr = Signal(range(cfg.act_depth), reset_less=True)   # == sj.act_offset + s_t*k + s_j
        g_addr = Signal(range(cfg.wgt_depth), reset_less=True)   # == sj.wgt_offset + s_j
        # The banks are registers too: a buffer of power-of-two depth takes the bank as its
        # top address bit (hw.buffers), so jobs[sptr].act_bank (a mux on the job pointer) went
        # straight to the address pins of every act DP16KD (17.3 ns on the 30x4 top).
        a_bank = Signal(bank_shape(), reset_less=True)           # == sj.act_bank
        g_bank = Signal(bank_shape(), reset_less=True)           # == sj.wgt_bank
        v = Signal()
        v_last = Signal()
        v_macs = Signal.like(self.macs_inc, reset_less=True)     # used only with v
        take = v & self.core_inp.ready
        issue = s_avail & (~v | take)
        m.d.comb += [
            self.act_r.en.eq(issue), self.act_r.bank.eq(a_bank), self.act_r.addr.eq(a_addr),
            self.wgt_r.en.eq(issue), self.wgt_r.bank.eq(g_bank), self.wgt_r.addr.eq(g_addr),
            self.core_inp.valid.eq(v),
            self.core_inp.payload.act.eq(self.act_r.data),
            self.core_inp.payload.wgt.eq(self.wgt_r.data),
            self.core_inp.payload.last.eq(v_last),
            self.macs_inc.eq(Mux(take, v_macs, 0)),
        ]
        sn = job_next(snext, "s_next_job")
        sne = next_entry(snext)
        with m.If(issue):
            m.d.sync += [v.eq(1), v_last.eq(j_end), v_macs.eq(sj.macs)]
            with m.If(j_end):
                m.d.sync += s_j.eq(0)
                with m.If(t_end):
                    m.d.sync += [s_t.eq(0), sptr.eq(snext),
                                 j_rem.eq(sne["km1"]), j_end.eq(sne["k1"]),
                                 t_rem.eq(sne["ntm1"]), t_end.eq(sne["nt1"]),
                                 a_addr.eq(sn.act_offset), g_addr.eq(sn.wgt_offset),
                                 a_bank.eq(sn.act_bank), g_bank.eq(sn.wgt_bank)]
                with m.Else():
                    m.d.sync += [s_t.eq(s_t + 1), t_rem.eq(t_rem - 1), t_end.eq(t_rem == 1),
                                 j_rem.eq(km1[sptr]), j_end.eq(k1[sptr]),
                                 a_addr.eq(a_addr + 1), g_addr.eq(sj.wgt_offset)]
            with m.Else():
                m.d.sync += [s_j.eq(s_j + 1), j_rem.eq(j_rem - 1), j_end.eq(j_rem == 1),
                             a_addr.eq(a_addr + 1), g_addr.eq(g_addr + 1)]
        with m.Else():
            with m.If(take):
                m.d.sync += v.eq(0)
            with m.If(free[sptr]):                      # idle at a free entry: track the payload
                m.d.sync += [j_rem.eq(pl_km1), j_end.eq(pl_k1), t_rem.eq(pl_ntm1), t_end.eq(pl_nt1),
                             a_addr.eq(pl.act_offset), g_addr.eq(pl.wgt_offset),
                             a_bank.eq(pl.act_bank), g_bank.eq(pl.wgt_bank)]

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
        p_cnt = Signal(tr)                                      # reference: pushes done
        # While pv: p_rem == jobs[pptr].ntiles - 1 - p_cnt, p_last == p_rem == 0, p_rem1 ==
        # p_rem == 1. While nothing is on offer they track the entry at pptr (pv rises on the
        # cycle after p_avail, a register, so the entry's precomputed values are in place).
        p_rem = Signal(tr)
        p_last = Signal()
        p_rem1 = Signal()
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
        with m.If(~pv):
            m.d.sync += [p_rem.eq(ntm1[pptr]), p_last.eq(nt1[pptr]), p_rem1.eq(nt2[pptr])]
            with m.If(p_avail):
                m.d.sync += pv.eq(1)
        with m.Elif(pfire):
            with m.If(p_last):
                m.d.sync += [pptr.eq(pnext), p_cnt.eq(0), pv.eq(n_avail),
                             p_rem.eq(ntm1[pnext]), p_last.eq(nt1[pnext]), p_rem1.eq(nt2[pnext])]
            with m.Else():
                m.d.sync += [p_cnt.eq(p_cnt + 1), p_rem.eq(p_rem - 1), p_last.eq(p_rem1),
                             p_rem1.eq(p_rem == 2)]

        # ---- output writer (the head entry); core_out is always accepted
        wj = jobs[wptr]
        wnext = _wrap_inc(wptr, J)
        w_r = Signal(range(cfg.rows))
        w_t = Signal(tr)                                         # reference: tile
        w_trem = Signal(tr)                                      # == wj.ntiles - 1 - w_t
        w_tend = Signal()                                        # == w_trem == 0
        o_addr = Signal(range(cfg.out_depth), reset_less=True)  # == wj.out_offset + w_t*rows + w_r
        o_bank = Signal(bank_shape(), reset_less=True)           # == wj.out_bank (as a_bank)
        m.d.comb += [
            self.core_out.ready.eq(1),
            self.out_w.en.eq(self.core_out.valid), self.out_w.bank.eq(o_bank),
            self.out_w.addr.eq(o_addr), self.out_w.data.eq(self.core_out.payload.data),
        ]
        wn = job_next(wnext, "w_next_job")
        wne = next_entry(wnext)
        w_lastrow = Signal(init=int(cfg.rows == 1))                  # == w_r == rows - 1
        retire = Signal()
        m.d.comb += retire.eq(self.core_out.valid & w_lastrow & w_tend)
        with m.If(self.core_out.valid):
            m.d.sync += w_lastrow.eq(Mux(w_lastrow, 0, w_r + 1) == cfg.rows - 1)
            with m.If(w_lastrow):
                m.d.sync += w_r.eq(0)
                with m.If(w_tend):
                    m.d.sync += [w_t.eq(0), wptr.eq(wnext), w_trem.eq(wne["ntm1"]), w_tend.eq(wne["nt1"]),
                                 o_addr.eq(wn.out_offset), o_bank.eq(wn.out_bank)]
                    m.d.comb += self.job_done.eq(1)
                with m.Else():
                    m.d.sync += [w_t.eq(w_t + 1), w_trem.eq(w_trem - 1), w_tend.eq(w_trem == 1),
                                 o_addr.eq(o_addr + 1)]
            with m.Else():
                m.d.sync += [w_r.eq(w_r + 1), o_addr.eq(o_addr + 1)]
        with m.Elif(free[wptr]):                                # idle at a free entry: track the payload
            m.d.sync += [w_trem.eq(pl_ntm1), w_tend.eq(pl_nt1), o_addr.eq(pl.out_offset), o_bank.eq(pl.out_bank)]

        # ---- entry flags, registered from next-state logic. Timing (issue 6): s_avail gates
        # `issue`, the act/wgt read enable and the streamer's state updates; p_avail/n_avail
        # feed pv; job_ready the decoder; the per-entry flags the bank-busy outputs. Each
        # register equals the combinational form it replaces on every cycle (same value,
        # loaded a cycle earlier), so no port moves. The next-state forms use the queue's
        # order: an enqueue needs the entry free; a job is streamed and pushed before it
        # retires (its last row follows its last beat and its last params set), so a retire
        # never changes savail/pavail, and a final issue/push moves that engine's pointer on.
        s_final = issue & j_end & t_end
        for i in range(J):
            m.d.sync += [
                free[i].eq(~enq_at(i) & (free[i] | (retire & (wptr == i)))),
                savail[i].eq(enq_at(i) | (savail[i] & ~(s_final & (sptr == i)))),
                pavail[i].eq(enq_at(i) | (pavail[i] & ~(pfinal & (pptr == i)))),
            ]
        tnext = _wrap_inc(tail, J)
        pnext2 = _wrap_inc(pnext, J)
        # After a final push the entry after pnext is pptr itself when J == 2 (pushed now).
        n_after_final = 0 if J == 2 else enq_at(pnext2) | pavail[pnext2]
        m.d.sync += [
            job_ready.eq(Mux(enq, free[tnext] | (retire & (wptr == tnext)),
                             job_ready | (retire & (wptr == tail)))),
            s_avail.eq(Mux(s_final, enq_at(snext) | savail[snext], enq_at(sptr) | s_avail)),
            p_avail.eq(Mux(pfinal, enq_at(pnext) | pavail[pnext], enq_at(pptr) | p_avail)),
            n_avail.eq(Mux(pfinal, n_after_final, enq_at(pnext) | n_avail)),
        ]

        # Reference entry flags (the original next-state logic; read only by shadow_checks, no
        # hardware).
        valid = Array(Signal(name=f"valid{i}") for i in range(J))
        streamed = Array(Signal(name=f"streamed{i}") for i in range(J))
        pushed = Array(Signal(name=f"pushed{i}") for i in range(J))
        for i in range(J):
            m.d.sync += [
                valid[i].eq(enq_at(i) | (valid[i] & ~(retire & (wptr == i)))),
                streamed[i].eq(~enq_at(i) & (streamed[i] | (s_final & (sptr == i)))),
                pushed[i].eq(~enq_at(i) & (pushed[i] | (pfinal & (pptr == i)))),
            ]

        # The registered values and the combinational forms they stand for (no hardware: read
        # by tests/test_hw_buffers.py, which asserts them equal on every cycle of top-level
        # sessions). Values that matter only under a condition are compared under it.
        def when(q, reg, comb):
            return Mux(q, reg, comb), comb

        s_on = valid[sptr] & ~streamed[sptr]
        wj_on = valid[wptr]
        pj = jobs[pptr]
        self.shadow_checks = [
            ("job_ready", job_ready, ~valid[tail]),
            ("s_avail", s_avail, s_on),
            ("p_avail", p_avail, valid[pptr] & ~pushed[pptr]),
            ("n_avail", n_avail, valid[pnext] & ~pushed[pnext]),
            ("w_lastrow", w_lastrow, w_r == cfg.rows - 1),
            ("j_rem", *when(s_on, j_rem + s_j + 1, sj.k)),
            ("t_rem", *when(s_on, t_rem + s_t + 1, sj.ntiles)),
            ("j_end", *when(s_on, j_end, j_rem == 0)),
            ("t_end", *when(s_on, t_end, t_rem == 0)),
            ("a_addr", *when(s_on, a_addr, (sj.act_offset + s_t * sj.k + s_j)[:len(a_addr)])),
            ("g_addr", *when(s_on, g_addr, (sj.wgt_offset + s_j)[:len(g_addr)])),
            ("a_bank", *when(s_on, a_bank, sj.act_bank)),
            ("g_bank", *when(s_on, g_bank, sj.wgt_bank)),
            ("p_rem", *when(pv, p_rem + p_cnt + 1, pj.ntiles)),
            ("p_last", *when(pv, p_last, p_rem == 0)),
            ("p_rem1", *when(pv, p_rem1, p_rem == 1)),
            ("w_trem", *when(wj_on, w_trem + w_t + 1, wj.ntiles)),
            ("w_tend", *when(wj_on, w_tend, w_trem == 0)),
            ("o_addr", *when(wj_on, o_addr, (wj.out_offset + w_t * cfg.rows + w_r)[:len(o_addr)])),
            ("o_bank", *when(wj_on, o_bank, wj.out_bank)),
        ]
        for i in range(J):
            e = jobs[i]
            self.shadow_checks += [
                (f"free{i}", free[i], ~valid[i]),
                (f"savail{i}", savail[i], valid[i] & ~streamed[i]),
                (f"pavail{i}", pavail[i], valid[i] & ~pushed[i]),
                (f"entry{i}", *when(valid[i], Cat(k1[i], km1[i], nt1[i], nt2[i], ntm1[i]),
                                    Cat(e.k == 1, (e.k - 1)[:len(km1[i])], e.ntiles == 1, e.ntiles == 2,
                                        (e.ntiles - 1)[:len(ntm1[i])]))),
            ]

        # ---- interlock views and the job count, from the per-entry flag registers
        for b in range(BANKS):
            m.d.comb += [
                self.act_busy[b].eq(_any(savail[i] & (jobs[i].act_bank == b) for i in range(J))),
                self.wgt_busy[b].eq(_any(savail[i] & (jobs[i].wgt_bank == b) for i in range(J))),
                self.par_busy[b].eq(_any(pavail[i] & (jobs[i].par_bank == b) for i in range(J))),
                self.out_busy[b].eq(_any(~free[i] & (jobs[i].out_bank == b) for i in range(J))),
            ]
        m.d.comb += self.jobs.eq(sum(~free[i] for i in range(J)))
        return m


def _any(terms):
    out = 0
    for t in terms:
        out = out | t
    return out
