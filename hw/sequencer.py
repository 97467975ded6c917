"""``Sequencer``: the RUN job queue and the three engines that execute jobs on ``ArrayCore``.

A job (``job_layout``) is one decoded RUN descriptor (golden/isa.py). The
queue holds ``JOB_QUEUE_DEPTH`` jobs (entries in a ring, per-entry flags
``valid``/``streamed``/``pushed``; the hardware keeps them as registers ``free`` =
~valid, ``savail`` = valid & ~streamed, ``pavail`` = valid & ~pushed, and stores
with each job its k == 1, k == 2, k - 1, ntiles == 1, ntiles == 2, ntiles - 1, so the
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

from amaranth import Array, C, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS, ArrayConfig
from golden.isa import JOB_QUEUE_DEPTH, k_max, layout, ntiles_max

from .buffers import bank_shape, kept_copy, live_register, read_signature, write_signature
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
        # tests and counter loads then start from flip-flops): k == 1, k == 2, k - 1, ntiles == 1,
        # ntiles == 2, ntiles - 1.
        k1 = Array(Signal(name=f"k1_{i}", reset_less=True) for i in range(J))
        k2 = Array(Signal(name=f"k2_{i}", reset_less=True) for i in range(J))
        km1 = Array(Signal(kr, name=f"km1_{i}", reset_less=True) for i in range(J))
        nt1 = Array(Signal(name=f"nt1_{i}", reset_less=True) for i in range(J))
        nt2 = Array(Signal(name=f"nt2_{i}", reset_less=True) for i in range(J))
        ntm1 = Array(Signal(tr, name=f"ntm1_{i}", reset_less=True) for i in range(J))
        pl_k1, pl_k2, pl_nt1, pl_nt2 = Signal(), Signal(), Signal(), Signal()
        pl_km1, pl_ntm1 = Signal(kr), Signal(tr)
        m.d.comb += [pl_k1.eq(pl.k == 1), pl_k2.eq(pl.k == 2), pl_km1.eq(pl.k - 1), pl_nt1.eq(pl.ntiles == 1),
                     pl_nt2.eq(pl.ntiles == 2), pl_ntm1.eq(pl.ntiles - 1)]
        # Entry state, registered per entry from next-state logic (section "entry flags" below):
        # free == ~valid, savail == valid & ~streamed, pavail == valid & ~pushed.
        free = Array(Signal(init=1, name=f"free{i}") for i in range(J))
        savail = Array(Signal(name=f"savail{i}") for i in range(J))
        pavail = Array(Signal(name=f"pavail{i}") for i in range(J))
        # free[i] on the next cycle (assigned in "entry flags" below): the engines' registered
        # copies of free[ptr] load it at their next pointer.
        free_n = Array(Signal(name=f"free_n{i}") for i in range(J))
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
                m.d.sync += [jobs[i].eq(pl), k1[i].eq(pl_k1), k2[i].eq(pl_k2), km1[i].eq(pl_km1), nt1[i].eq(pl_nt1),
                             nt2[i].eq(pl_nt2), ntm1[i].eq(pl_ntm1)]

        def enq_at(ptr):
            return enq & (tail == ptr)

        # An engine that moves to (or waits at) a free entry loads its state from the payload
        # on every cycle until the entry is valid: the load on the enqueue cycle is the one that
        # counts, and the choice is a registered copy of free[ptr] (s_free, sn_free, pc_free,
        # pn_free, w_free, wn_free), not enq (the decoder's job.valid).

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
        j_rem1 = Signal()                                # == j_rem == 1 (j_end's next on a beat)
        t_rem1 = Signal()                                # == t_rem == 1 (t_end's next on a tile)
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
        s_free = Signal(init=1)                          # == free[sptr]
        # Next values of s_avail, s_free and v (assigned below) for their copies.
        s_avail_n, s_free_n, v_n = Signal(), Signal(init=1), Signal()
        ready = self.core_inp.ready
        live = live_register(m, "s_live")
        copy_checks = []

        def streamer_copy(tag):
            """The read enable (issue) and the streamer's clock enable (ce_s, below) for one group
            of loads, from its own copies of s_avail, s_free and v: one LUT of inp.ready and
            flip-flops each (timing, issue 6: `issue` drove both buffers' read enables, ~40
            DP16KD, and ce_s ~35 flip-flops). The copies are reset-less (`kept_copy`); `live`
            stands in for their reset (as hw.buffers.enable_copy): in the cycle after a reset
            cycle s_avail and v are 0 and s_free is 1."""
            sa = kept_copy(m, platform, s_avail_n, C(1, 1), f"s_avail_{tag}")
            sf = kept_copy(m, platform, s_free_n, C(1, 1), f"s_free_{tag}")
            vc = kept_copy(m, platform, v_n, C(1, 1), f"v_{tag}")
            en, ce = Signal(name=f"issue_{tag}"), Signal(name=f"ce_s_{tag}")
            m.d.comb += [en.eq(live & sa & (~vc | ready)), ce.eq(~live | sf | ~vc | ready)]
            copy_checks.extend([(f"s_avail_{tag}", sa & live, s_avail), (f"s_free_{tag}", sf | ~live, s_free),
                                (f"v_{tag}", vc & live, v), (f"issue_{tag}", en, issue),
                                (f"ce_s_{tag}", ce, s_free | ~v | ready)])
            return en, ce

        issue_act, ce_act = streamer_copy("act")
        issue_wgt, ce_wgt = streamer_copy("wgt")
        m.d.comb += [
            self.act_r.en.eq(issue_act), self.act_r.bank.eq(a_bank), self.act_r.addr.eq(a_addr),
            self.wgt_r.en.eq(issue_wgt), self.wgt_r.bank.eq(g_bank), self.wgt_r.addr.eq(g_addr),
            self.core_inp.valid.eq(v),
            self.core_inp.payload.act.eq(self.act_r.data),
            self.core_inp.payload.wgt.eq(self.wgt_r.data),
            self.core_inp.payload.last.eq(v_last),
            self.macs_inc.eq(Mux(take, v_macs, 0)),
        ]
        sn_free = Signal(init=1)                         # == free[snext]
        if J == 2:
            # Timing (issue 6): the next entry's fields, registered: sn_job/sn_ent == jobs[snext]
            # and its precomputed values whenever that entry is valid and not streamed (not a mux
            # on sptr in front of every load of the next job). They load the payload while the
            # entry is free, as the entry does; an entry at snext that is valid and not streamed
            # was enqueued there (a final issue moves snext onto the entry just streamed), so
            # it is never loaded from elsewhere. Unused fields are removed by synthesis.
            sn_job = Signal(jl, name="sn_job", reset_less=True)
            sn_ent = {n: Signal(like, name=f"sn_{n}", reset_less=True)
                      for n, like in (("k1", 1), ("k2", 1), ("km1", kr), ("nt1", 1), ("nt2", 1), ("ntm1", tr),
                                      ("fin1", 1))}
            pl_ent = dict(k1=pl_k1, k2=pl_k2, km1=pl_km1, nt1=pl_nt1, nt2=pl_nt2, ntm1=pl_ntm1, fin1=pl_k1 & pl_nt1)
            with m.If(sn_free):
                m.d.sync += [sn_job.eq(pl), *(sn_ent[n].eq(pl_ent[n]) for n in sn_ent)]
            sn, sne = sn_job, sn_ent
        else:
            sn, sne = jobs[snext], dict(k1=k1[snext], k2=k2[snext], km1=km1[snext], nt1=nt1[snext], nt2=nt2[snext],
                                        ntm1=ntm1[snext], fin1=k1[snext] & nt1[snext])
        # Timing (issue 6): the core's inp.ready arrives late, so the streamer's registers see it
        # only in their clock enable, one LUT of flip-flops and inp.ready: ce_s = s_free | ~v |
        # inp.ready (the t_* registers: ce_s & (s_free | j_end)); their data inputs are
        # functions of flip-flops alone (on s_free: track the payload, else: the next state
        # of an issue). s_free == free[sptr] and s_fin == j_end & t_end are registers
        # (next-state logic below). With s_avail, ce_s == issue | s_free (issue needs s_avail,
        # so never with s_free); without s_avail and s_free the entry at sptr is streamed
        # (valid, its final beat issued), the registers load values nothing looks at (no read
        # is issued, every check is under s_avail), and the entry is free, so they track the
        # payload, before it is enqueued again. sptr alone moves on the final issue itself.
        # (Was: issue through 2-3 more LUT levels to j_rem/t_rem/a_addr/the banks' enables.)
        # The act and wgt registers take ce_s from their group's copies (streamer_copy).
        s_fin = Signal()                                 # == j_end & t_end
        s_final = Signal()                               # the job's final beat is issued
        m.d.comb += s_final.eq(issue & s_fin)
        snext2 = _wrap_inc(snext, J)
        m.d.comb += s_free_n.eq(Mux(s_final, free_n[snext], free_n[sptr]))
        m.d.sync += [s_free.eq(s_free_n), sn_free.eq(Mux(s_final, free_n[snext2], free_n[snext]))]
        ce_s = Signal()
        m.d.comb += ce_s.eq(s_free | ~v | ready)
        # use_pl: the registers load the payload (tracking, or the final issue onto a free next
        # entry, which may be enqueued now); it selects last, so the payload's compares
        # (pl_k1 etc., 2 LUT levels) meet one LUT. Without use_pl and s_free, s_fin implies
        # ~sn_free: the next entry's values are sn/sne.
        use_pl = Signal()
        m.d.comb += use_pl.eq(s_free | (s_fin & sn_free))
        d_j_rem, d_j_end = Signal.like(j_rem), Signal()
        d_t_rem, d_t_end, d_fin = Signal.like(t_rem), Signal(), Signal()
        d_j_rem1, d_t_rem1 = Signal(), Signal()
        m.d.comb += [
            d_j_rem.eq(Mux(use_pl, pl_km1, Mux(j_end, Mux(t_end, sne["km1"], km1[sptr]), j_rem - 1))),
            d_j_rem1.eq(Mux(use_pl, pl_k2, Mux(j_end, Mux(t_end, sne["k2"], k2[sptr]), j_rem == 2))),
            d_j_end.eq(Mux(use_pl, pl_k1, Mux(j_end, Mux(t_end, sne["k1"], k1[sptr]), j_rem1))),
            d_t_rem.eq(Mux(use_pl, pl_ntm1, Mux(j_end, Mux(t_end, sne["ntm1"], t_rem - 1), t_rem))),
            d_t_rem1.eq(Mux(use_pl, pl_nt2, Mux(j_end, Mux(t_end, sne["nt2"], t_rem == 2), t_rem1))),
            d_t_end.eq(Mux(use_pl, pl_nt1, Mux(j_end, Mux(t_end, sne["nt1"], t_rem1), t_end))),
            d_fin.eq(Mux(use_pl, pl_k1 & pl_nt1,
                         Mux(j_end, Mux(t_end, sne["fin1"], k1[sptr] & t_rem1), j_rem1 & t_end))),
        ]
        with m.If(ce_s):
            m.d.sync += [
                j_rem.eq(d_j_rem), j_rem1.eq(d_j_rem1), j_end.eq(d_j_end),
                t_rem.eq(d_t_rem), t_rem1.eq(d_t_rem1), t_end.eq(d_t_end), s_fin.eq(d_fin),
            ]
        # (sj.*_bank == the bank register on an issue: not a hold, so no second enable)
        with m.If(ce_act):
            m.d.sync += [a_addr.eq(Mux(use_pl, pl.act_offset, Mux(s_fin, sn.act_offset, a_addr + 1))),
                         a_bank.eq(Mux(use_pl, pl.act_bank, Mux(s_fin, sn.act_bank, sj.act_bank)))]
        with m.If(ce_wgt):
            m.d.sync += [g_addr.eq(Mux(use_pl, pl.wgt_offset,
                                       Mux(j_end, Mux(t_end, sn.wgt_offset, sj.wgt_offset), g_addr + 1))),
                         g_bank.eq(Mux(use_pl, pl.wgt_bank, Mux(s_fin, sn.wgt_bank, sj.wgt_bank)))]
        with m.If(s_final):
            m.d.sync += sptr.eq(snext)
        m.d.comb += v_n.eq(Mux(issue, 1, Mux(take, 0, v)))
        m.d.sync += v.eq(v_n)
        with m.If(issue):
            m.d.sync += [v_last.eq(j_end), v_macs.eq(sj.macs)]
        # The reference up-counters (no hardware).
        with m.If(issue):
            with m.If(j_end):
                m.d.sync += s_j.eq(0)
                with m.If(t_end):
                    m.d.sync += s_t.eq(0)
                with m.Else():
                    m.d.sync += s_t.eq(s_t + 1)
            with m.Else():
                m.d.sync += s_j.eq(s_j + 1)

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
        # Timing (issue 6): pv & p_last, free[pptr] and free[pnext] are registers too, so the
        # read address is one LUT of flip-flops (pv_last, params.ready, nxt_*, cur_*) and
        # cur_*/nxt_* load from it, the payload or themselves (was: the entries' payloads
        # through pptr_n, a mux on pfinal: 2.5 LUT levels, 10.6 ns on the 30x4 top).
        pv_last = Signal()                                      # == pv & p_last
        pc_free = Signal(init=1)                                # == free[pptr]
        pn_free = Signal(init=1)                                # == free[pnext]
        pfire = pv & self.core_params.ready
        pfinal = Signal()
        rd_par = Signal(len(cur_index) + len(cur_bank))         # Cat(index, bank) read now
        m.d.comb += [pfinal.eq(pv_last & self.core_params.ready),
                     rd_par.eq(Mux(pfinal, Cat(nxt_index, nxt_bank), Cat(cur_index, cur_bank))),
                     self.core_params.valid.eq(pv), self.core_params.payload.eq(self.par_r.data),
                     self.par_r.en.eq(1),
                     Cat(self.par_r.addr, self.par_r.bank).eq(rd_par)]
        pnext2 = _wrap_inc(pnext, J)
        # cur_*/nxt_* == jobs[pptr]/jobs[pnext] (par_index, par_bank) on every cycle: the entry at
        # the next cycle's pointer is the one read now (rd_par) or, when the entry is free, the
        # payload it may load now. After a final push the entry after pnext is pptr
        # itself when J == 2.
        pl_par = Cat(pl.par_index, pl.par_bank)
        if J == 2:
            after_free, after_par = pc_free, Cat(cur_index, cur_bank)
        else:
            after_free, after_par = free[pnext2], Cat(jobs[pnext2].par_index, jobs[pnext2].par_bank)
        m.d.sync += [
            Cat(cur_index, cur_bank).eq(Mux(Mux(pfinal, pn_free, pc_free), pl_par, rd_par)),
            Cat(nxt_index, nxt_bank).eq(Mux(pfinal, Mux(after_free, pl_par, after_par),
                                            Mux(pn_free, pl_par, Cat(nxt_index, nxt_bank)))),
            pc_free.eq(Mux(pfinal, free_n[pnext], free_n[pptr])),
            pn_free.eq(Mux(pfinal, free_n[pnext2], free_n[pnext])),
        ]
        pv_n, p_last_n = Signal(), Signal()
        m.d.comb += [pv_n.eq(Mux(pv, Mux(pfinal, n_avail, pv), p_avail)),
                     p_last_n.eq(Mux(pv, Mux(pfire, Mux(p_last, nt1[pnext], p_rem1), p_last), nt1[pptr]))]
        m.d.sync += pv_last.eq(pv_n & p_last_n)
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
        # Timing (issue 6), as the streamer: w_free == free[wptr], wn_free == free[wnext] and
        # w_fin == w_lastrow & w_tend are registers; the writer's registers load on ce_w =
        # core_out.valid | w_free (a row arrives only for the valid head job, so never with
        # w_free) from data inputs that select the payload last (w_use_pl: tracking, or the
        # retire onto a free next entry). For J == 2 the next entry's fields are registers
        # (wn_job == jobs[wnext] whenever that entry is valid: it was enqueued there, as sn_job).
        w_free = Signal(init=1)                                  # == free[wptr]
        wn_free = Signal(init=1)                                 # == free[wnext]
        w_fin = Signal(init=0)                                   # == w_lastrow & w_tend
        if J == 2:
            wn_job = Signal(jl, name="wn_job", reset_less=True)
            wn_ntm1 = Signal(tr, name="wn_ntm1", reset_less=True)
            wn_nt1 = Signal(name="wn_nt1", reset_less=True)
            wn_nt2 = Signal(name="wn_nt2", reset_less=True)
            with m.If(wn_free):
                m.d.sync += [wn_job.eq(pl), wn_ntm1.eq(pl_ntm1), wn_nt1.eq(pl_nt1), wn_nt2.eq(pl_nt2)]
            wn, wne = wn_job, dict(ntm1=wn_ntm1, nt1=wn_nt1, nt2=wn_nt2)
        else:
            wn, wne = jobs[wnext], dict(ntm1=ntm1[wnext], nt1=nt1[wnext], nt2=nt2[wnext])
        w_trem1 = Signal()                                       # == w_trem == 1 (w_tend's next)
        w_lastrow = Signal(init=int(cfg.rows == 1))                  # == w_r == rows - 1
        w_prerow = Signal(init=int(cfg.rows == 2))                   # == w_r == rows - 2 (w_lastrow's next)
        retire = Signal()
        m.d.comb += retire.eq(self.core_out.valid & w_fin)
        wnext2 = _wrap_inc(wnext, J)
        m.d.sync += [w_free.eq(Mux(retire, free_n[wnext], free_n[wptr])),
                     wn_free.eq(Mux(retire, free_n[wnext2], free_n[wnext]))]
        w_use_pl = Signal()
        m.d.comb += w_use_pl.eq(w_free | (w_fin & wn_free))
        d_w_tend, d_lastrow = Signal(), Signal()
        m.d.comb += [
            d_w_tend.eq(Mux(w_use_pl, pl_nt1, Mux(w_lastrow, Mux(w_tend, wne["nt1"], w_trem1), w_tend))),
            d_lastrow.eq(Mux(w_lastrow, cfg.rows == 1, w_prerow)),
        ]
        with m.If(self.core_out.valid | w_free):
            m.d.sync += [
                w_trem.eq(Mux(w_use_pl, pl_ntm1, Mux(w_lastrow, Mux(w_tend, wne["ntm1"], w_trem - 1), w_trem))),
                w_tend.eq(d_w_tend),
                w_trem1.eq(Mux(w_use_pl, pl_nt2, Mux(w_lastrow, Mux(w_tend, wne["nt2"], w_trem == 2), w_trem1))),
                w_fin.eq(Mux(w_free, w_lastrow, d_lastrow) & d_w_tend),
                o_addr.eq(Mux(w_use_pl, pl.out_offset, Mux(w_fin, wn.out_offset, o_addr + 1))),
                # (wj.out_bank == o_bank on a row: not a hold, so no second enable)
                o_bank.eq(Mux(w_use_pl, pl.out_bank, Mux(w_fin, wn.out_bank, wj.out_bank))),
            ]
        with m.If(self.core_out.valid):
            m.d.sync += [w_lastrow.eq(d_lastrow),
                         w_prerow.eq(Mux(w_lastrow, cfg.rows == 2, (w_r + 1 == cfg.rows - 2) if cfg.rows > 2 else 0))]
            with m.If(w_lastrow):
                m.d.sync += w_r.eq(0)
                with m.If(w_tend):
                    m.d.sync += [w_t.eq(0), wptr.eq(wnext)]
                    m.d.comb += self.job_done.eq(1)
                with m.Else():
                    m.d.sync += w_t.eq(w_t + 1)
            with m.Else():
                m.d.sync += w_r.eq(w_r + 1)

        # ---- entry flags, registered from next-state logic. Timing (issue 6): s_avail gates
        # `issue`, the act/wgt read enable and the streamer's state updates; p_avail/n_avail
        # feed pv; job_ready the decoder; the per-entry flags the bank-busy outputs. Each
        # register equals the combinational form it replaces on every cycle (same value,
        # loaded a cycle earlier), so no port moves. The next-state forms use the queue's
        # order: an enqueue needs the entry free; a job is streamed and pushed before it
        # retires (its last row follows its last beat and its last params set), so a retire
        # never changes savail/pavail, and a final issue/push moves that engine's pointer on.
        for i in range(J):
            m.d.comb += free_n[i].eq(~enq_at(i) & (free[i] | (retire & (wptr == i))))
            m.d.sync += [
                free[i].eq(free_n[i]),
                savail[i].eq(enq_at(i) | (savail[i] & ~(s_final & (sptr == i)))),
                pavail[i].eq(enq_at(i) | (pavail[i] & ~(pfinal & (pptr == i)))),
            ]
        tnext = _wrap_inc(tail, J)
        # After a final push the entry after pnext is pptr itself when J == 2 (pushed now).
        n_after_final = 0 if J == 2 else enq_at(pnext2) | pavail[pnext2]
        m.d.comb += s_avail_n.eq(Mux(s_final, enq_at(snext) | savail[snext], enq_at(sptr) | s_avail))
        m.d.sync += [
            job_ready.eq(Mux(enq, free[tnext] | (retire & (wptr == tnext)),
                             job_ready | (retire & (wptr == tail)))),
            s_avail.eq(s_avail_n),
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
            ("s_free", s_free, free[sptr]),
            ("sn_free", sn_free, free[snext]),
            ("s_fin", s_fin, j_end & t_end),
            ("j_rem1", *when(s_on, j_rem1, j_rem == 1)),
            ("t_rem1", *when(s_on, t_rem1, t_rem == 1)),
            ("pv_last", pv_last, pv & p_last),
            ("pc_free", pc_free, free[pptr]),
            ("pn_free", pn_free, free[pnext]),
            ("cur_par", Cat(cur_index, cur_bank), Cat(pj.par_index, pj.par_bank)),
            ("nxt_par", Cat(nxt_index, nxt_bank), Cat(jobs[pnext].par_index, jobs[pnext].par_bank)),
            *copy_checks,
            ("w_free", w_free, free[wptr]),
            ("wn_free", wn_free, free[wnext]),
            ("w_fin", w_fin, w_lastrow & w_tend),
            ("w_prerow", w_prerow, w_r == cfg.rows - 2),
            ("w_trem1", *when(wj_on, w_trem1, w_trem == 1)),
        ]
        if J == 2:
            e = jobs[wnext]
            self.shadow_checks.append(("wn_job", *when(valid[wnext], Cat(wn_job.out_offset, wn_job.out_bank, wn_ntm1, wn_nt1, wn_nt2),
                                                       Cat(e.out_offset, e.out_bank, ntm1[wnext], nt1[wnext],
                                                           nt2[wnext]))))
        if J == 2:
            e = jobs[snext]
            self.shadow_checks.append(
                ("sn_job", *when(savail[snext],
                                 Cat(sn_job.act_offset, sn_job.wgt_offset, sn_job.act_bank, sn_job.wgt_bank,
                                     *(sn_ent[n] for n in ("k1", "k2", "km1", "nt1", "nt2", "ntm1", "fin1"))),
                                 Cat(e.act_offset, e.wgt_offset, e.act_bank, e.wgt_bank, k1[snext], k2[snext],
                                     km1[snext], nt1[snext], nt2[snext], ntm1[snext], k1[snext] & nt1[snext]))))
        for i in range(J):
            e = jobs[i]
            self.shadow_checks += [
                (f"free{i}", free[i], ~valid[i]),
                (f"savail{i}", savail[i], valid[i] & ~streamed[i]),
                (f"pavail{i}", pavail[i], valid[i] & ~pushed[i]),
                (f"entry{i}", *when(valid[i], Cat(k1[i], k2[i], km1[i], nt1[i], nt2[i], ntm1[i]),
                                    Cat(e.k == 1, e.k == 2, (e.k - 1)[:len(km1[i])], e.ntiles == 1, e.ntiles == 2,
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
