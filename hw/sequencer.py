"""``Sequencer``: the RUN job queue and the three engines that execute jobs on ``ArrayCore``.

A job (``job_layout``) is one decoded RUN descriptor (golden/isa.py). The
queue holds ``JOB_QUEUE_DEPTH`` jobs (entries in a ring, per-entry flags
``valid``/``streamed``/``pushed``; the hardware keeps them as registers ``free`` =
~valid, ``savail`` = valid & ~streamed, ``pavail`` = valid & ~pushed, and stores
with each job its k == 1, k == 2, ntiles == 1, ntiles == 2, ntiles - 1, so the
engines' decisions start from flip-flops). Three engines walk the ring in order,
each at its own pace:

* beat streamer: issues one act/wgt buffer read per cycle while it has a job
  and its output register is free or being taken (``issue = avail & (~v |
  take)``). ``take`` = v & the core's ready rule, which the streamer does not
  read from the core: it keeps its own copy of the core's acceptance state (tile gap, params
  credit; docs/array.md with en = 1, as core_out is always ready), exact
  because the core counts a push for the credit only PARAM_CREDIT_CYCLES
  later (shadow check ``core_take``), and offers a beat on ``core_inp`` (valid) only on the
  cycle the core takes it (``ArrayCore(input_qualified=True)``; ``in_stall`` = v & ~ready
  counts the cycles a beat waits). The buffers' read ports hold their data, so a beat's
  data stay on ``core_inp`` unchanged until the core accepts it and the core sees
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
of a beat the core accepts this cycle, else 0), ``in_stall``, ``job_done``.
"""
from __future__ import annotations

import itertools

from amaranth import Array, C, Cat, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import BANKS, PARAM_CREDIT_CYCLES, ArrayConfig
from golden.isa import JOB_QUEUE_DEPTH, k_max, layout, ntiles_max

from .buffers import bank_shape, enable_copy, kept_copy, live_register, read_signature, write_signature
from .core import acceptance_next, input_layout, output_layout, params_layout

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
        # k == 1, k == 2, ntiles == 1, ntiles == 2, both k and ntiles == 1, ntiles - 1: registers of
        # the decoder (the queue's and the engines' loads read them from its flip-flops).
        "k1": 1, "k2": 1, "nt1": 1, "nt2": 1, "fin1": 1, "ntm1": range(ntiles_max(cfg)),
    })


def _wrap_inc(p, n):
    """p + 1 modulo n for a ring pointer."""
    return Mux(p == n - 1, 0, p + 1)


class Sequencer(wiring.Component):
    """Job queue + beat streamer + params pusher + output writer (module docstring)."""

    def __init__(self, cfg: ArrayConfig, *, act_read_copies: int = 0):
        layout(cfg)                      # the ISA must fit this cfg
        if isinstance(act_read_copies, bool) or not isinstance(act_read_copies, int) or act_read_copies < 0:
            self._MustUse__used = True
            raise ValueError(f"act_read_copies must be an int >= 0, got {act_read_copies!r}")
        self.act_read_copies = act_read_copies
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
            "in_stall": Out(1),
            "job_done": Out(1),
            **({"act_r_en_copies": Out(act_read_copies)} if act_read_copies else {}),
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
        # Each entry stores with the job the values the engines' end tests and counter loads read
        # (k == 1, k == 2, ntiles == 1, ntiles == 2, both == 1, ntiles - 1: job_layout's k1 ..
        # ntm1), so those start from flip-flops. The decoder sends them precomputed (issue 6: the
        # compares of the decoder's descriptor register were two LUT levels in front of the
        # streamer's end flags, behind the route from the decoder, 8.7 ns on the 4 x 2 top in
        # session 11).
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
                m.d.sync += jobs[i].eq(pl)

        retire = Signal()                                # the head job's last row is written (writer)

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
        # The counters hold the beats/tiles left INCLUDING the current one, so they load k and
        # ntiles straight from the payload (no subtractor between the decoder's register and the
        # counter: the j_rem load was pl.k - 1, a carry chain, then two muxes).
        j_rem = Signal(range(k_max(cfg) + 1))            # == sj.k - s_j
        j_end = Signal()                                 # == j_rem == 1
        j_rem1 = Signal()                                # == j_rem == 2 (j_end's next on a beat)
        # t_rem == sj.ntiles - s_t, t_rem1 == t_rem == 2 (t_end's next on a tile) and t_end ==
        # t_rem == 1 are kept flip-flops (below) loaded from these.
        d_t_rem = Signal(range(ntiles_max(cfg) + 1), name="d_t_rem")
        d_t_rem1, d_t_end = Signal(name="d_t_rem1"), Signal(name="d_t_end")
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
        # The core's acceptance state, kept here (issue 6, session 13): the core's inp.ready (docs/
        # array.md) with en = 1 (core_out is always ready) is ~last | last_ok, and last_ok is a
        # function of the accepted last beats (the tile gap) and of the params pushes, which the
        # core counts one register late (PARAM_CREDIT_CYCLES): both are decided here, so this copy
        # follows them from its own registers and the streamer's decisions need nothing of the
        # core in the cycle they are made. The core's inp.ready crossed the die to the act slices'
        # read enables in one cycle (8.3-9.3 ns, both seeds of session 12's 30 x 4 top); now only
        # the shadow check "core_take" reads it. k_* are the core's gap, tile_gap_ok, unclaimed,
        # push_a and last_ok.
        k_gap = Signal(range(cfg.min_tile_cycles + 1), init=cfg.min_tile_cycles)
        k_gap_ok = Signal(init=1)
        k_unclaimed = Signal(range(cfg.param_fifo_depth + 1))
        k_push_r = Signal()
        k_last_ok = Signal()
        k_last_ok_n = Signal()
        v_last_n = Signal()
        ready = Signal()                                 # the core's ready rule (its inp.ready without input_qualified)
        m.d.comb += ready.eq(~v_last | k_last_ok)
        take = v & ready
        issue = s_avail & (~v | take)
        s_free = Signal(init=1)                          # == free[sptr]
        s_fin = Signal()                                 # == j_end & t_end
        fl = Signal(init=1)                              # == s_free | sn_free (reference for its copies)
        # Next values of s_avail, s_free, v and fl (assigned below) for their copies; d_fin and
        # d_j_end: s_fin's and j_end's data inputs (loaded on ce_s).
        s_avail_n, s_free_n, v_n, fl_n = Signal(), Signal(init=1), Signal(), Signal(init=1)
        d_fin, d_j_end = Signal(name="d_fin"), Signal(name="d_j_end")
        live = live_register(m, platform, "s_live")
        copy_checks = []

        def streamer_copy(tag, with_issue=True):
            """For one group of loads: the streamer's clock enable (ce_s, below) and, with_issue, the
            read enable (issue), from the group's own copies of s_avail, s_free and v: one LUT of
            inp.ready and flip-flops each (timing, issue 6: `issue` drove both buffers' read
            enables, ~40 DP16KD, and ce_s ~35 flip-flops); and the group's copies of s_free, s_fin
            and fl (== s_free | sn_free), the selects of its registers' data inputs (below: one
            LUT and two muxes of flip-flops next to the register, not use_pl, a LUT of fanout 66,
            and a job-pointer mux). The copies of s_free, v and s_avail, which the enables read,
            are reset registers (`enable_copy`): each read enable is a function of four
            flip-flops, its copies of s_avail and v and the two inp.ready reads (the payload's
            last and the core's last_ok), one LUT4 (issue 6, session 11: with reset-less copies
            a `live` register stood in for their reset, a sixth input). The copies of s_fin and
            fl are reset-less (`kept_copy`); `live` stands in for
            their reset in the checks: in the cycle after a reset cycle s_fin is 0 and fl is 1.
            The data selects need no `live`: in that cycle no entry is valid (a job is handed over
            >= 3 cycles after a command), and the next cycle (s_free, so ce) loads again."""
            # the group's own live register too (one shared was a flip-flop beside neither group)
            live = live_register(m, platform, f"s_live_{tag}")
            sf = enable_copy(m, platform, s_free_n, f"s_free_{tag}", init=1)
            vc = enable_copy(m, platform, v_n, f"v_{tag}")
            rdy = ready_copy(tag)
            ce = Signal(name=f"ce_s_{tag}")
            m.d.comb += ce.eq(sf | ~vc | rdy)
            fin = kept_copy(m, platform, d_fin, ce, f"s_fin_{tag}")
            flc = kept_copy(m, platform, fl_n, C(1, 1), f"fl_{tag}")
            copy_checks.extend([(f"s_free_{tag}", sf, s_free), (f"v_{tag}", vc, v),
                                (f"ce_s_{tag}", ce, s_free | ~v | ready),
                                (f"s_fin_{tag}", fin & live, s_fin), (f"fl_{tag}", flc | ~live, fl)])
            return (issue_copy(tag, vc, rdy) if with_issue else None), ce, sf, fin, flc

        def ready_copy(tag):
            """The core's ready for one group of loads, ~v_last | k_last_ok from the group's own reset
            copies of v_last and k_last_ok: the enables below are one LUT4 of the group's flip-flops."""
            vl = enable_copy(m, platform, v_last_n, f"v_last_{tag}")
            lo = enable_copy(m, platform, k_last_ok_n, f"k_last_ok_{tag}")
            rdy = Signal(name=f"ready_{tag}")
            m.d.comb += rdy.eq(~vl | lo)
            copy_checks.extend([(f"v_last_{tag}", vl, v_last), (f"k_last_ok_{tag}", lo, k_last_ok)])
            return rdy

        def issue_copy(tag, vc=None, rdy=None):
            """The read enable (issue) for one group of loads, from the group's own reset copies of
            s_avail and v (``vc``; None: a copy of v that follows v's recurrence from this copy of
            s_avail, below) and of the core's ready (``rdy``; None: ``ready_copy``)."""
            sa = enable_copy(m, platform, s_avail_n, f"s_avail_{tag}")
            if rdy is None:
                rdy = ready_copy(tag)
            en = Signal(name=f"issue_{tag}")
            if vc is None:
                # v' = issue ? 1 : take ? 0 : v, with take = v & ready
                vc = Signal(name=f"v_{tag}")
                m.d.sync += vc.eq(en | (vc & ~rdy))
                copy_checks.append((f"v_{tag}", vc, v))
            m.d.comb += en.eq(sa & (~vc | rdy))
            copy_checks.extend([(f"s_avail_{tag}", sa, s_avail), (f"issue_{tag}", en, issue)])
            return en

        issue_act, ce_act, sf_act, fin_act, fl_act = streamer_copy("act")
        # The act buffer's read enable once more per slice of its block RAMs (issue 6: issue_act
        # drove the read enables of all 27 DP16KD of the 30 x 4 top, core.inp.ready -> 2 LUTs ->
        # across the die, session 10's critical path): each copy is one LUT of inp.ready and
        # flip-flops of its own, which the placer can put beside its slice.
        # A slice's copy of v follows v's recurrence from the slice's own copies of v and s_avail
        # and inp.ready (v' = issue ? 1 : take ? 0 : v, issue = s_avail & (~v | ready), take = v &
        # ready): one LUT beside the copy, so inp.ready's flip-flops reach it in one route (issue 6,
        # session 11: as a copy of v's next value, v_n's LUTs by the sequencer, the core's last_ok
        # -> v_n -> a far slice's copy was 8.6-9.9 ns). Distinct by its own feedback: not merged.
        en_copies = [issue_copy(f"act_s{g}") for g in range(self.act_read_copies)]
        if en_copies:
            m.d.comb += self.act_r_en_copies.eq(Cat(*en_copies))
        issue_wgt, ce_wgt, sf_wgt, fin_wgt, fl_wgt = streamer_copy("wgt")
        # The counters' group (j_*/t_*) and the current job's fields (s_cur, below): their own
        # clock enables and selects (one group was ~80 loads per select copy).
        _, ce_cnt, sf_cnt, fin_cnt, fl_cnt = streamer_copy("cnt", with_issue=False)
        _, ce_cur, sf_cur, fin_cur, fl_cur = streamer_copy("cur", with_issue=False)
        m.d.comb += [
            self.act_r.en.eq(issue_act), self.act_r.bank.eq(a_bank), self.act_r.addr.eq(a_addr),
            self.wgt_r.en.eq(issue_wgt), self.wgt_r.bank.eq(g_bank), self.wgt_r.addr.eq(g_addr),
            # offered only when the core takes it (hw.core input_qualified): the core's own
            # acceptance logic is then off its input path
            self.core_inp.valid.eq(take), self.in_stall.eq(v & ~ready),
            self.core_inp.payload.act.eq(self.act_r.data),
            self.core_inp.payload.wgt.eq(self.wgt_r.data),
            self.core_inp.payload.last.eq(v_last),
            self.macs_inc.eq(Mux(take, v_macs, 0)),
        ]
        sn_free = Signal(init=1)                         # == free[snext]
        if J == 2:
            # Timing (issue 6): the next entry's fields, registered: sn_job == jobs[snext]
            # whenever that entry is valid and not streamed (not a mux
            # on sptr in front of every load of the next job). They load the payload while the
            # entry is free, as the entry does; an entry at snext that is valid and not streamed
            # was enqueued there (a final issue moves snext onto the entry just streamed), so
            # it is never loaded from elsewhere. Unused fields are removed by synthesis.
            sn_job = Signal(jl, name="sn_job", reset_less=True)
            with m.If(sn_free):
                m.d.sync += sn_job.eq(pl)
            sn = sn_job
        else:
            sn = jobs[snext]
        # Timing (issue 6): the core's inp.ready arrives late, so the streamer's registers see it
        # only in their clock enable, one LUT of flip-flops and inp.ready: ce_s = s_free | ~v |
        # inp.ready; their data inputs are functions of flip-flops alone (on s_free: track the
        # payload, else: the next state of an issue). s_free == free[sptr] and s_fin == j_end &
        # t_end are registers (next-state logic below). With s_avail, ce_s == issue | s_free
        # (issue needs s_avail, so never with s_free); without s_avail and s_free the entry at
        # sptr is streamed (valid, its final beat issued), the registers load values nothing
        # looks at (no read is issued, every check is under s_avail), and the entry is free, so
        # they track the payload, before it is enqueued again. sptr alone moves on the final
        # issue itself. The act, wgt and counter registers take ce_s and their selects from
        # their group's copies (streamer_copy).
        s_final = Signal()                               # the job's final beat is issued
        m.d.comb += s_final.eq(issue & s_fin)
        snext2 = _wrap_inc(snext, J)
        sn_free_n = Signal(init=1, name="sn_free_n")
        # free[ptr] next, written with the two late inputs last (the decoder's job.valid through
        # enq, the core's inp.ready through s_final): the rest is one LUT of flip-flops.
        fr_s = [free[i] | (retire & (wptr == i)) for i in (snext, sptr)]
        m.d.comb += [s_free_n.eq(Mux(enq, Mux(s_final, fr_s[0] & (tail != snext), fr_s[1] & (tail != sptr)),
                                     Mux(s_final, fr_s[0], fr_s[1]))),
                     sn_free_n.eq(Mux(s_final, free_n[snext2], free_n[snext]))]
        if J == 2:
            # snext2 == sptr: s_free | sn_free is "some entry is free" whether or not the pointer
            # moves. Written from the flip-flops with the enqueue last (not through free_n, which
            # synthesis then shares with the other free[ptr] copies, a LUT level deeper): an
            # enqueue fills entry `tail` (free), the other one is free next unless it is valid and
            # not retiring; without one, an entry is free next if one is free now or retires.
            fr = [free[i] | (retire & (wptr == i)) for i in range(J)]
            m.d.comb += fl_n.eq(Mux(enq, Mux(tail, fr[0], fr[1]), free[0] | free[1] | retire))
        else:
            m.d.comb += fl_n.eq(s_free_n | sn_free_n)
        m.d.sync += [s_free.eq(s_free_n), sn_free.eq(sn_free_n), fl.eq(fl_n)]
        ce_s = Signal()
        m.d.comb += ce_s.eq(s_free | ~v | ready)
        # The data inputs select the payload (tracking, or the final issue onto a free next entry,
        # which may be enqueued now), the next entry's values (the final issue onto a valid one)
        # or the job's own next state. Was Mux(use_pl, payload, ...) with use_pl = s_free | (s_fin
        # & sn_free); with s_fin that is fl, without it s_free, so the same choice is
        # Mux(s_fin, Mux(fl, payload, next entry), Mux(s_free, payload, own)): one LUT and two
        # muxes of the group's flip-flop copies.
        def ld(g, pl_v, sn_v, own):
            sf, fin, flc = g
            return Mux(fin, Mux(flc, pl_v, sn_v), Mux(sf, pl_v, own))

        g_act, g_wgt, g_cnt = (sf_act, fin_act, fl_act), (sf_wgt, fin_wgt, fl_wgt), (sf_cnt, fin_cnt, fl_cnt)
        g_cur = (sf_cur, fin_cur, fl_cur)
        # The current job's fields the counters and buffer registers restart from (a tile's first
        # beat, the banks), registered (were jobs[sptr].*, a mux on the job pointer): s_cur ==
        # (act_bank, wgt_bank, wgt_offset, k, k == 1, k == 2) of jobs[sptr] while s_avail. They hold
        # during a job: kept flip-flops keep that hold in the data input, so the clock enable is
        # ce_cur itself (as Amaranth registers: ce & (s_free | s_fin), a LUT behind a LUT).
        cur_pl = [pl.act_bank, pl.wgt_bank, pl.wgt_offset, pl.k, pl.k1, pl.k2]
        cur_sn = [sn.act_bank, sn.wgt_bank, sn.wgt_offset, sn.k, sn.k1, sn.k2]
        d_s_cur = Signal(len(Cat(*cur_pl)), name="d_s_cur")
        s_cur = kept_copy(m, platform, d_s_cur, ce_cur, "s_cur")
        c_abank, c_gbank, c_goff, c_k, c_k1, c_k2 = (
            s_cur[lo:lo + len(f)] for lo, f in zip(itertools.accumulate(len(f) for f in [C(0, 0)] + cur_pl), cur_pl))
        m.d.comb += d_s_cur.eq(ld(g_cur, Cat(*cur_pl), Cat(*cur_sn), s_cur))
        # t_rem/t_rem1/t_end hold within a tile: as Amaranth registers that hold became a clock
        # enable ce_s & (s_free | j_end), a LUT behind a LUT (t_rem CE 9.0 ns on the 30x4 top);
        # as kept flip-flops the hold stays in the data input and the enable is ce_cnt.
        t_rem = kept_copy(m, platform, d_t_rem, ce_cnt, "t_rem")
        t_rem1 = kept_copy(m, platform, d_t_rem1, ce_cnt, "t_rem1")
        t_end = kept_copy(m, platform, d_t_end, ce_cnt, "t_end")
        d_j_rem, d_j_rem1 = Signal.like(j_rem, name="d_j_rem"), Signal(name="d_j_rem1")
        m.d.comb += [
            d_j_rem.eq(ld(g_cnt, pl.k, sn.k, Mux(j_end, c_k, j_rem - 1))),
            d_j_rem1.eq(ld(g_cnt, pl.k2, sn.k2, Mux(j_end, c_k2, j_rem == 3))),
            d_j_end.eq(ld(g_cnt, pl.k1, sn.k1, Mux(j_end, c_k1, j_rem1))),
            d_t_rem.eq(ld(g_cnt, pl.ntiles, sn.ntiles, Mux(j_end, t_rem - 1, t_rem))),
            d_t_rem1.eq(ld(g_cnt, pl.nt2, sn.nt2, Mux(j_end, t_rem == 3, t_rem1))),
            d_t_end.eq(ld(g_cnt, pl.nt1, sn.nt1, Mux(j_end, t_rem1, t_end))),
            d_fin.eq(ld(g_cnt, pl.fin1, sn.fin1, Mux(j_end, c_k1 & t_rem1, j_rem1 & t_end))),
        ]
        with m.If(ce_cnt):
            m.d.sync += [j_rem.eq(d_j_rem), j_rem1.eq(d_j_rem1), j_end.eq(d_j_end)]
        with m.If(ce_s):
            m.d.sync += s_fin.eq(d_fin)
        # (the bank registers load c_*, not themselves: a hold would become a clock-enable LUT)
        with m.If(ce_act):
            m.d.sync += [a_addr.eq(ld(g_act, pl.act_offset, sn.act_offset, a_addr + 1)),
                         a_bank.eq(ld(g_act, pl.act_bank, sn.act_bank, c_abank))]
        j_end_wgt = kept_copy(m, platform, d_j_end, ce_wgt, "j_end_wgt")     # j_end for the wgt group
        copy_checks.append(("j_end_wgt", j_end_wgt & live, j_end))
        with m.If(ce_wgt):
            m.d.sync += [g_addr.eq(ld(g_wgt, pl.wgt_offset, sn.wgt_offset, Mux(j_end_wgt, c_goff, g_addr + 1))),
                         g_bank.eq(ld(g_wgt, pl.wgt_bank, sn.wgt_bank, c_gbank))]
        with m.If(s_final):
            m.d.sync += sptr.eq(snext)
        m.d.comb += [v_n.eq(Mux(issue, 1, Mux(take, 0, v))), v_last_n.eq(Mux(issue, j_end, v_last))]
        m.d.sync += [v.eq(v_n), v_last.eq(v_last_n)]
        with m.If(issue):
            m.d.sync += v_macs.eq(sj.macs)
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
        # The read address's own copy of pv_last (reset-less, `live` for its reset as the
        # streamer's copies): rd_par drives the params buffer's ~11 read-address copies across the
        # die, and through the shared pv_last & params.ready (fanout 20) it was two LUT levels
        # (par r_addr 8.6 ns on the 30x4 top); with a copy used by nothing else each bit is one
        # LUT4 of flip-flops and params.ready. In the cycle after a reset it may select nxt_*:
        # nothing is offered then (pv = 0 on the next cycle) and cur_* load the payload (pc_free).
        pv_last_n = Signal(name="pv_last_n")
        pv_last_rd = kept_copy(m, platform, pv_last_n, C(1, 1), "pv_last_rd")
        copy_checks.append(("pv_last_rd", pv_last_rd & live, pv_last))
        pc_free = Signal(init=1)                                # == free[pptr]
        pn_free = Signal(init=1)                                # == free[pnext]
        pfire = pv & self.core_params.ready
        pfinal = Signal()
        rd_par = Signal(len(cur_index) + len(cur_bank))         # Cat(index, bank) read now
        m.d.comb += [pfinal.eq(pv_last & self.core_params.ready),
                     rd_par.eq(Mux(pv_last_rd & self.core_params.ready, Cat(nxt_index, nxt_bank),
                                   Cat(cur_index, cur_bank))),
                     self.core_params.valid.eq(pv), self.core_params.payload.eq(self.par_r.data),
                     self.par_r.en.eq(1),
                     Cat(self.par_r.addr, self.par_r.bank).eq(rd_par)]
        # The core's acceptance state (k_*, above), as ArrayCore computes it with en = 1.
        # k_last_ok's next value feeds a copy per group of loads, across the die, so it is one
        # mux of flip-flops: with k_gap_soon == (gap >= min - 1) (no accepted last beat: the gap's
        # next value reaches min_tile_cycles), k_nz == (unclaimed != 0) and k_ge2 == (unclaimed >= 2)
        # registered, not the gap's increment and compare and unclaimed's add and zero test
        # (session 13: k_last_ok_n -> a far act slice's copy 8.0-8.4 ns).
        mt = cfg.min_tile_cycles
        take_last = take & v_last
        k_gap_n, k_unclaimed_n = Signal.like(k_gap), Signal.like(k_unclaimed)
        k_gap_soon, k_nz, k_ge2 = Signal(init=int(mt >= 1)), Signal(), Signal()
        m.d.comb += [*(x.eq(v) for x, v in zip((k_gap_n, k_unclaimed_n),
                                               acceptance_next(k_gap, k_gap_ok, k_unclaimed, k_push_r, take_last))),
                     k_last_ok_n.eq(Mux(take_last, int(mt <= 1) & Mux(k_push_r, k_nz, k_ge2),
                                        k_gap_soon & (k_push_r | k_nz)))]
        m.d.sync += [k_gap.eq(k_gap_n), k_gap_ok.eq(k_gap_n >= mt), k_unclaimed.eq(k_unclaimed_n),
                     k_push_r.eq(pfire), k_last_ok.eq(k_last_ok_n), k_gap_soon.eq(k_gap_n >= mt - 1),
                     k_nz.eq(k_unclaimed_n != 0), k_ge2.eq(k_unclaimed_n >= 2)]
        assert PARAM_CREDIT_CYCLES == 2, "k_unclaimed counts k_push_r, one register after the push"
        copy_checks += [("core_take", take, self.core_inp.valid & self.core_inp.ready),
                        ("k_last_ok", k_last_ok, k_gap_ok & (k_unclaimed != 0)),
                        ("k_last_ok_n", k_last_ok_n, (k_gap_n >= mt) & (k_unclaimed_n != 0)),
                        ("k_gap_soon", k_gap_soon, k_gap >= mt - 1), ("k_nz", k_nz, k_unclaimed != 0),
                        ("k_ge2", k_ge2, k_unclaimed >= 2)]
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
        # pv & p_last on the next cycle, written with params.ready (from the core) last: a final
        # push moves to the next job (its ntiles == 1 if it is on offer next), another push to
        # p_rem1; without a push pv & p_last holds, or the entry at pptr comes on offer.
        m.d.comb += pv_last_n.eq(Mux(pv & self.core_params.ready, Mux(p_last, n_avail & jobs[pnext].nt1, p_rem1),
                                     Mux(pv, p_last, p_avail & jobs[pptr].nt1)))
        m.d.sync += pv_last.eq(pv_last_n)
        with m.If(~pv):
            m.d.sync += [p_rem.eq(jobs[pptr].ntm1), p_last.eq(jobs[pptr].nt1), p_rem1.eq(jobs[pptr].nt2)]
            with m.If(p_avail):
                m.d.sync += pv.eq(1)
        with m.Elif(pfire):
            with m.If(p_last):
                m.d.sync += [pptr.eq(pnext), p_cnt.eq(0), pv.eq(n_avail),
                             p_rem.eq(jobs[pnext].ntm1), p_last.eq(jobs[pnext].nt1), p_rem1.eq(jobs[pnext].nt2)]
            with m.Else():
                m.d.sync += [p_cnt.eq(p_cnt + 1), p_rem.eq(p_rem - 1), p_last.eq(p_rem1),
                             p_rem1.eq(p_rem == 2)]

        # ---- output writer (the head entry); core_out is always accepted
        wj = jobs[wptr]
        wnext = _wrap_inc(wptr, J)
        w_r = Signal(range(cfg.rows))
        w_t = Signal(tr)                                         # reference: tile
        # w_trem == wj.ntiles - w_t (the tiles left including the current one, loaded from ntiles
        # itself: no subtractor behind the decoder's register) and w_trem1 == w_trem == 2
        # (w_tend's next) are kept flip-flops (below) loaded from these.
        d_w_trem = Signal(range(ntiles_max(cfg) + 1), name="d_w_trem")
        d_w_trem1 = Signal(name="d_w_trem1")
        w_tend = Signal()                                        # == w_trem == 1
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
        # w_free) from data inputs that select the payload (tracking, or the retire onto a free
        # next entry), the next entry's fields (the retire onto a valid one) or their own next
        # state, as the streamer's: Mux(w_fin, Mux(w_fl, payload, next entry), Mux(w_free,
        # payload, own)) with w_fl == w_free | wn_free a register (was Mux(w_use_pl, ...) with
        # w_use_pl = w_free | (w_fin & wn_free), a LUT of fanout 38). For J == 2 the next entry's
        # fields are registers (wn_job == jobs[wnext] whenever that entry is valid: it was
        # enqueued there, as sn_job).
        w_free = Signal(init=1)                                  # == free[wptr]
        wn_free = Signal(init=1)                                 # == free[wnext]
        w_fin = Signal(init=0)                                   # == w_lastrow & w_tend
        if J == 2:
            wn_job = Signal(jl, name="wn_job", reset_less=True)
            with m.If(wn_free):
                m.d.sync += wn_job.eq(pl)
            wn = wn_job
        else:
            wn = jobs[wnext]
        w_lastrow = Signal(init=int(cfg.rows == 1))                  # == w_r == rows - 1
        w_prerow = Signal(init=int(cfg.rows == 2))                   # == w_r == rows - 2 (w_lastrow's next)
        m.d.comb += retire.eq(self.core_out.valid & w_fin)
        wnext2 = _wrap_inc(wnext, J)
        w_free_n, wn_free_n = Signal(init=1, name="w_free_n"), Signal(init=1, name="wn_free_n")
        m.d.comb += [w_free_n.eq(Mux(retire, free_n[wnext], free_n[wptr])),
                     wn_free_n.eq(Mux(retire, free_n[wnext2], free_n[wnext]))]
        m.d.sync += [w_free.eq(w_free_n), wn_free.eq(wn_free_n)]
        # w_fl: for J == 2 "some entry is free", the streamer's fl_n; reset-less with `live` (the
        # streamer's copies' argument: in the cycle after a reset no row arrives and w_free is 1).
        w_fl = kept_copy(m, platform, fl_n if J == 2 else w_free_n | wn_free_n, C(1, 1), "w_fl")
        copy_checks.append(("w_fl", w_fl | ~live, w_free | wn_free))

        def w_ld(pl_v, wn_v, own):
            return ld((w_free, w_fin, w_fl), pl_v, wn_v, own)      # the streamer's select

        ce_w = Signal()
        m.d.comb += ce_w.eq(self.core_out.valid | w_free)
        # w_trem/w_trem1 hold within a tile: kept flip-flops keep that hold in the data input
        # (as Amaranth registers it became a clock enable, a LUT behind ce_w: w_trem CE 8.5 ns).
        w_trem = kept_copy(m, platform, d_w_trem, ce_w, "w_trem")
        w_trem1 = kept_copy(m, platform, d_w_trem1, ce_w, "w_trem1")
        d_w_tend, d_lastrow = Signal(), Signal()
        m.d.comb += [
            d_w_trem.eq(w_ld(pl.ntiles, wn.ntiles, Mux(w_lastrow, w_trem - 1, w_trem))),
            d_w_trem1.eq(w_ld(pl.nt2, wn.nt2, Mux(w_lastrow, w_trem == 3, w_trem1))),
            d_w_tend.eq(w_ld(pl.nt1, wn.nt1, Mux(w_lastrow, w_trem1, w_tend))),
            d_lastrow.eq(Mux(w_lastrow, cfg.rows == 1, w_prerow)),
        ]
        with m.If(ce_w):
            m.d.sync += [
                w_tend.eq(d_w_tend),
                w_fin.eq(Mux(w_free, w_lastrow, d_lastrow) & d_w_tend),
                o_addr.eq(w_ld(pl.out_offset, wn.out_offset, o_addr + 1)),
                # (wj.out_bank == o_bank on a row: not a hold, so no second enable)
                o_bank.eq(w_ld(pl.out_bank, wn.out_bank, wj.out_bank)),
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
        m.d.comb += s_avail_n.eq(Mux(enq, Mux(s_final, (tail == snext) | savail[snext], (tail == sptr) | s_avail),
                                     Mux(s_final, savail[snext], s_avail)))
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
            ("j_rem", *when(s_on, j_rem + s_j, sj.k)),
            ("t_rem", *when(s_on, t_rem + s_t, sj.ntiles)),
            ("j_end", *when(s_on, j_end, j_rem == 1)),
            ("t_end", *when(s_on, t_end, t_rem == 1)),
            ("a_addr", *when(s_on, a_addr, (sj.act_offset + s_t * sj.k + s_j)[:len(a_addr)])),
            ("g_addr", *when(s_on, g_addr, (sj.wgt_offset + s_j)[:len(g_addr)])),
            ("a_bank", *when(s_on, a_bank, sj.act_bank)),
            ("g_bank", *when(s_on, g_bank, sj.wgt_bank)),
            ("p_rem", *when(pv, p_rem + p_cnt + 1, pj.ntiles)),
            ("p_last", *when(pv, p_last, p_rem == 0)),
            ("p_rem1", *when(pv, p_rem1, p_rem == 1)),
            ("w_trem", *when(wj_on, w_trem + w_t, wj.ntiles)),
            ("w_tend", *when(wj_on, w_tend, w_trem == 1)),
            ("o_addr", *when(wj_on, o_addr, (wj.out_offset + w_t * cfg.rows + w_r)[:len(o_addr)])),
            ("o_bank", *when(wj_on, o_bank, wj.out_bank)),
            ("s_free", s_free, free[sptr]),
            ("sn_free", sn_free, free[snext]),
            ("s_fin", s_fin, j_end & t_end),
            ("j_rem1", *when(s_on, j_rem1, j_rem == 2)),
            ("t_rem1", *when(s_on, t_rem1, t_rem == 2)),
            ("fl", fl, s_free | sn_free),
            ("s_cur", *when(s_on, s_cur, Cat(sj.act_bank, sj.wgt_bank, sj.wgt_offset, sj.k, sj.k1, sj.k2))),
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
            ("w_trem1", *when(wj_on, w_trem1, w_trem == 2)),
        ]
        if J == 2:
            e = jobs[wnext]
            self.shadow_checks.append(
                ("wn_job", *when(valid[wnext], Cat(wn_job.out_offset, wn_job.out_bank, wn_job.ntiles, wn_job.nt1,
                                                   wn_job.nt2),
                                 Cat(e.out_offset, e.out_bank, e.ntiles, e.nt1, e.nt2))))
        if J == 2:
            e = jobs[snext]
            self.shadow_checks.append(
                ("sn_job", *when(savail[snext],
                                 Cat(sn_job.act_offset, sn_job.wgt_offset, sn_job.act_bank, sn_job.wgt_bank,
                                     sn_job.k, sn_job.ntiles, sn_job.k1, sn_job.k2, sn_job.nt1, sn_job.nt2,
                                     sn_job.fin1),
                                 Cat(e.act_offset, e.wgt_offset, e.act_bank, e.wgt_bank, e.k, e.ntiles, e.k1,
                                     e.k2, e.nt1, e.nt2, e.fin1))))
        for i in range(J):
            e = jobs[i]
            self.shadow_checks += [
                (f"free{i}", free[i], ~valid[i]),
                (f"savail{i}", savail[i], valid[i] & ~streamed[i]),
                (f"pavail{i}", pavail[i], valid[i] & ~pushed[i]),
                (f"entry{i}", *when(valid[i], Cat(e.k1, e.k2, e.nt1, e.nt2, e.fin1, e.ntm1),
                                    Cat(e.k == 1, e.k == 2, e.ntiles == 1, e.ntiles == 2,
                                        (e.k == 1) & (e.ntiles == 1), (e.ntiles - 1)[:len(e.ntm1)]))),
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
