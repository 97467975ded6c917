"""hw.sequencer.Sequencer's registered job-queue state (issue 6): the per-entry flags
(free/savail/pavail), the precomputed per-entry values (k == 1, k == 2, ntiles == 1,
ntiles == 2, ntiles - 1), the engines' down-counters and end flags (j_rem/t_rem/j_end/t_end and
their next flags, p_rem/p_last/p_rem1, w_trem/w_tend), the engines' copies of free[ptr], the
next entry's registered fields (sn_job/wn_job), the current job's fields (s_cur), the params
read addresses (cur/nxt) and the read address's pv_last copy, the streamer's per-group copies
of s_avail/s_free/v/s_fin/fl with their read and clock enables, and the
availability registers equal their combinational forms on every
cycle (``Sequencer.shadow_checks``, asserted in simulation) of top-level sessions that keep the
two-entry queue full: back-to-back RUNs with k = 1, ntiles = 1 and 2 (every end flag set on a
load), queue-full stalls, random stream gaps and backpressure, malformed commands; every
response is exact against the sequential reference device.
"""
from __future__ import annotations

import numpy as np
import pytest

from golden import isa
from golden.config import BANKS
from golden.isa import JOB_QUEUE_DEPTH, Op
from test_hw_buffers import CFG_ROW1, checked_sequencer  # noqa: F401  (fixture)
from test_hw_top_amaranth import (CFG, CFG_NARROW, CFG_POW2, _random_session, check_session, load_all, rand_run_fields,
                                  run_cmd, simple)


def _queue_session(cfg, rng, n):
    """``n`` RUNs with no command in between (the queue fills and the decoder waits on
    job.ready), k and ntiles drawn mostly from {1, 2} (end flags loaded set), then READ_OUTs."""
    cmds = load_all(cfg, rng, lut=False)
    kmax = isa.k_max(cfg)
    for i in range(n):
        k = int(rng.choice([1, 1, 2, min(3, kmax), int(rng.integers(1, kmax + 1))]))
        nt_max = min(cfg.act_depth // k, cfg.out_depth // cfg.rows)
        nt = int(rng.choice([1, 1, 2, min(3, nt_max), int(rng.integers(1, nt_max + 1))]))
        cmds.append(run_cmd(cfg, **rand_run_fields(cfg, rng, k, nt, out_bank=i % BANKS)))
    cmds += [simple(cfg, Op.SYNC), simple(cfg, Op.READ_STATUS)]
    cmds += [simple(cfg, Op.READ_OUT, bank=b, offset=0, length=cfg.out_depth) for b in range(BANKS)]
    return cmds


@pytest.mark.parametrize("cfg,seed,p", [(CFG, 1, 1.0), (CFG_NARROW, 2, 1.0), (CFG_ROW1, 3, 1.0),
                                        (CFG, 4, 0.7), (CFG_ROW1, 5, 0.6), (CFG_POW2, 6, 0.7)],
                         ids=["2x2", "3x1", "1x1", "2x2_gaps", "1x1_gaps", "5x1_pow2_gaps"])
def test_queue_full_sessions_shadows_and_exact(cfg, seed, p, checked_sequencer):  # noqa: F811
    """Back-to-back RUNs (queue full, all end flags set on loads), without and with stream
    gaps/backpressure: every registered value equals its combinational form each cycle, and
    every response equals the reference. ``5x1_pow2``: sliced act buffer, so the top gives the
    sequencer per-slice act read enable copies (2 slices)."""
    rng = np.random.default_rng(seed)
    n = 12
    got, _, _ = check_session(cfg, _queue_session(cfg, rng, n), seed=seed, p_cmd=p, p_din=p, p_dout=p)
    st = isa.parse_status(cfg, got[1])
    assert st["JOBS_DONE"] == n and st["flags"] == 0


def test_fuzz_session_shadows(checked_sequencer):  # noqa: F811
    """A fuzz session (valid and malformed commands, gaps, backpressure) with the shadow checks on."""
    cfg = CFG
    rng = np.random.default_rng(31)
    check_session(cfg, _random_session(cfg, rng, 50), seed=31, p_cmd=0.9, p_din=0.85, p_dout=0.75)


def test_shadow_checks_cover_the_registered_state():
    """Every registered decision of the queue has a shadow check (a new one must add its own)."""
    from hw.sequencer import Sequencer
    from amaranth.hdl import Fragment
    seq = Sequencer(CFG)
    Fragment.get(seq, None)
    names = {n for n, _, _ in seq.shadow_checks}
    want = {"job_ready", "s_avail", "p_avail", "n_avail", "w_lastrow", "j_rem", "t_rem", "j_end", "t_end",
            "a_addr", "g_addr", "a_bank", "g_bank", "p_rem", "p_last", "p_rem1", "w_trem", "w_tend", "o_addr",
            "o_bank", "s_free", "sn_free", "s_fin", "j_rem1", "t_rem1", "pv_last", "pc_free", "pn_free",
            "cur_par", "nxt_par", "w_free", "wn_free", "w_fin", "w_trem1", "w_prerow"}
    want |= {f"{f}_{g}" for f in ("s_avail", "s_free", "v", "issue", "ce_s", "s_fin", "fl") for g in ("act", "wgt")}
    want |= {f"{f}_{g}" for f in ("s_free", "v", "ce_s", "s_fin", "fl") for g in ("cnt", "cur")}
    want |= {"fl", "s_cur", "j_end_wgt", "pv_last_rd", "w_fl"}
    # the sequencer's copy of the core's acceptance state, checked against the core's inp.ready
    want |= {"core_take", "k_last_ok", "k_last_ok_n", "k_gap_soon", "k_nz", "k_ge2"} | {f"{f}_{g}" for f in ("v_last", "k_last_ok") for g in ("act", "wgt", "cnt", "cur")}
    if JOB_QUEUE_DEPTH == 2:
        want |= {"sn_job", "wn_job"}
    want |= {f"{f}{i}" for f in ("free", "savail", "pavail", "entry") for i in range(JOB_QUEUE_DEPTH)}
    assert want <= names
    seq = Sequencer(CFG, act_read_copies=3)                # the act buffer's per-slice read enables
    Fragment.get(seq, None)
    names = {n for n, _, _ in seq.shadow_checks}
    assert want | {f"{f}_act_s{g}" for f in ("s_avail", "v", "issue", "v_last", "k_last_ok") for g in range(3)} <= names
    for bad in (-1, True, 1.5):
        with pytest.raises(ValueError, match="act_read_copies must be an int >= 0"):
            Sequencer(CFG, act_read_copies=bad)
