"""The rows x cols output-stationary MACC array with its skew, drain and deskew.

Timing (enabled cycles; docs/array.md). A beat accepted on enabled cycle e is

* in PE(i, j)'s operand registers on e + INPUT_LATENCY + i + j: row i's
  activation is delayed i registers (input skew) before PE(i, 0) and then
  moves one PE per cycle to the right; column j's weights are delayed j
  registers before PE(0, j) and then move one PE per cycle down;
* for a tile's last beat, PE(i, j)'s result is valid PE_LATENCY later;
* the bottom row's result-valid pulse parallel-loads column j's drain chain
  with the PEs' exact results, which then shifts one row per enabled cycle
  towards row 0; row 0 goes through the column's saturating output register
  (DRAIN_LATENCY = 2: row 0 is on the drain output two enabled cycles after
  the pulse); the other rows' result registers still hold the tile because
  ``min_tile_cycles`` = rows keeps the next tile's results at least ``rows``
  cycles away;
* the deskew delays column j by cols - 1 - j registers, so row r of every
  column reaches the output ports on e + cfg.array_latency + r.
"""
from __future__ import annotations

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from golden.config import INPUT_LATENCY, PACK_SHIFT, ArrayConfig

from .pe import PackedPE, check_hw_config, check_flag, config_for, saturate, weight_word_width
from .pe import delay as pe_delay


#: Rows of a drain chain whose load select one copy of the load pulse drives (issue 6: the
#: select fans out to ~35 LUTs per row: a row's exact result and flags; with 2 rows per copy the
#: drain registers had 16-46 late endpoints per seed on the 30 x 4 top, session 11).
DRAIN_ROWS_PER_LOAD = 1


class MacArray(wiring.Component):
    """rows x cols PEs plus input skew, per-column drain chains and output deskew.

    Ports (R = rows, L = ``cfg.out_lanes``, A = ``cfg.acc_width``):

    * ``en``        In(1)   global enable: gates every register of the array
    * ``act``       In(ArrayLayout(signed(8), R))   A[:, k] of the accepted beat
    * ``wgt``       In(ArrayLayout(signed(8), L))   W[k, :] of the accepted beat
    * ``valid``     In(1)   a beat is accepted this cycle (else: a bubble, contributes nothing)
    * ``last``      In(1)   the accepted beat is its tile's last
    * ``acc``       Out(ArrayLayout(signed(A), L))  one output row's accumulators;
                    lane l = lanes_per_pe * j + s of PE column j
    * ``acc_valid`` Out(1)  ``acc`` holds a row (row r of a tile whose last beat was
                    accepted on enabled cycle e, on enabled cycle e + array_latency + r)
    * ``acc_last``  Out(1)  that row is the tile's row R - 1
    * ``acc_last_next`` Out(1)  the value ``acc_last`` takes after the next enabled cycle (a
                    register: lets the core register its params FIFO's read address, hw.core)

    ``inputs_registered=True``: ``act`` and ``wgt`` come through their first input register
    already (outside the array, loaded on every enabled cycle: the act/wgt buffers' output
    registers, ``hw.buffers.BankedBuffer(output_register=True)``), so on each enabled cycle they
    show the values of the previous one; ``valid`` and ``last`` stay as above. The array's
    registers and cycle behaviour are otherwise the same.

    ``k_bounded``: passed to every ``PackedPE`` (no tile longer than ``cfg.max_k`` beats).
    """

    def __init__(self, cfg: ArrayConfig, *, inputs_registered: bool = False, k_bounded: bool = False):
        self.cfg = config_for(self, cfg)
        self.inputs_registered = check_flag(self, "inputs_registered", inputs_registered)
        self.k_bounded = check_flag(self, "k_bounded", k_bounded)
        super().__init__({
            "en": In(1),
            "act": In(data.ArrayLayout(signed(8), cfg.rows)),
            "wgt": In(data.ArrayLayout(signed(8), cfg.out_lanes)),
            "valid": In(1),
            "last": In(1),
            "acc": Out(data.ArrayLayout(signed(cfg.acc_width), cfg.out_lanes)),
            "acc_valid": Out(1),
            "acc_last": Out(1),
            "acc_last_next": Out(1),
        })

    def elaborate(self, platform):
        cfg = check_hw_config(self.cfg)
        R, C, S = cfg.rows, cfg.cols, cfg.lanes_per_pe
        m = Module()

        def delay(value, n, name, reset_less=True):
            """``value`` through ``n`` en-gated registers (``hw.pe.delay``). Data delays are
            reset-less (consumed only under a delayed valid, which keeps its reset)."""
            return pe_delay(m, value, n, name, en=self.en, reset_less=reset_less)

        pes = [[PackedPE(cfg, k_bounded=self.k_bounded) for _ in range(C)] for _ in range(R)]
        for i in range(R):
            for j in range(C):
                m.submodules[f"pe_{i}_{j}"] = pe = pes[i][j]
                m.d.comb += pe.en.eq(self.en)

        # Input skew; `last` only counts on an accepted beat. "dual": bubbles enter as a = 0, so
        # no PE needs a valid mux in front of its multiplier (P accumulates every cycle). "none":
        # a bubble's product is never read (the PE adds it only under its valid flags), so the
        # activation goes in as it is: zeroing it was a set/reset of every skew register driven
        # by `valid` through a LUT (240 LSR pins on the 30 x 4 top, issue 6).
        # Every input goes through INPUT_LATENCY - 1 registers of its own before the skew (timing,
        # issue 6: on the 30 x 4 top the act buffer's DP16KD outputs were placed ~10 ns of routing
        # away from the skew registers beside the PE rows; a register per bit between them lets the
        # placer split the distance). Row i's skew adds i more, column j's j. With
        # inputs_registered the first of them is outside (`ext`) for act and wgt.
        pre = INPUT_LATENCY - 1
        ext = int(self.inputs_registered)
        assert pre >= ext, "the buffers' output registers stand for the first input register"
        last_in = self.valid & self.last
        for i in range(R):
            pe = pes[i][0]
            v = delay(self.valid, ext, f"skew_v{i}_in", reset_less=False)   # valid beside the act
            a = self.act[i]
            if cfg.packing == "dual":
                # bubbles enter as a = 0; the activation skew keeps its reset (P needs a = 0 on
                # bubbles, hw.pe), and the valid registered beside an outside register does too
                a = Mux(v, a, 0)
            m.d.comb += [
                pe.a.eq(delay(a, pre - ext + i, f"skew_a{i}", reset_less=cfg.packing == "none")),
                pe.valid.eq(delay(v, pre - ext + i, f"skew_v{i}", reset_less=False)),
                pe.last.eq(delay(last_in, pre + i, f"skew_l{i}", reset_less=False)),
            ]
            for j in range(1, C):
                left, pe = pes[i][j - 1], pes[i][j]
                m.d.comb += [pe.a.eq(left.a_out), pe.valid.eq(left.valid_out), pe.last.eq(left.last_out)]

        # Weight skew, then the packed word formed once per column at the top edge.
        for j in range(C):
            lanes = [delay(self.wgt[S * j + s], pre - ext + j, f"skew_w{j}_{s}") for s in range(S)]
            top = pes[0][j]
            if cfg.packing == "dual":
                # (w_hi << 18) + w_lo: the low 18 bits are sext(w_lo)'s, so only
                # the top bits (w_hi - (w_lo < 0)) need an adder; synthesis trims it.
                word = Signal(signed(weight_word_width(cfg)), name=f"wpack{j}")
                m.d.comb += word.eq((lanes[1].as_signed() << PACK_SHIFT) + lanes[0].as_signed())
                m.d.comb += top.w.eq(word)
            else:
                m.d.comb += top.w.eq(lanes[0])
            for i in range(1, R):
                m.d.comb += pes[i][j].w.eq(pes[i - 1][j].w_out)

        # Drain chains: parallel load on the bottom row's result pulse, then
        # shift towards row 0's register, one row per cycle, then one output register per column.
        # The load selects every row's mux, so each group of DRAIN_ROWS_PER_LOAD rows has its own
        # copy (issue 6: one select for all rows was ~840 LUTs on the 30 x 4 top, 10.5 ns from one
        # flip-flop). Every PE sees the same beat stream, PE(i, j) i + j enabled cycles late, so
        # the pulse of PE(i, j) delayed by R - 1 - i registers is the bottom row's pulse: group g's
        # copy is that for its own bottom row i (a chain beside the rows it loads: session 7 took
        # PE(R - 1 - g)'s pulse, up to 20 rows away, and the drain's load muxes were 8.4 ns on the
        # 30 x 4 top, issue 6). Each copy is distinct logic (another PE's flag), so synthesis
        # cannot merge them back into one. `shadow_checks`: every copy == the load.
        # The chains carry the PEs' exact results (hw.pe.exact_result_width: one bit more than
        # acc_width) and the saturation is applied once per column, between the chain's row 0
        # and the output register (DRAIN_LATENCY = 2): clamping in every PE put a LUT per bit in
        # front of every row's load mux (two LUT levels behind the load's fanout, the 30 x 4
        # top's drain paths at 9.9 ns, issue 6) and cost rows x cols x acc_width LUTs.
        drained = []
        self.shadow_checks = []
        n_loads = -(-R // DRAIN_ROWS_PER_LOAD)
        for j in range(C):
            load = pes[R - 1][j].result_valid
            bottoms = [min(R, (g + 1) * DRAIN_ROWS_PER_LOAD) - 1 for g in range(n_loads)]
            loads = [delay(pes[i][j].result_valid, R - 1 - i, f"drain{j}_load{g}", reset_less=False)
                     for g, i in enumerate(bottoms)]
            self.shadow_checks += [(f"drain{j}_load{g}", x, load) for g, x in enumerate(loads[:-1])]
            regs = [Signal(pes[i][j].result_exact.shape(), name=f"drain{j}_{i}", reset_less=True) for i in range(R)]
            vld = [Signal(name=f"drain{j}_{i}_valid") for i in range(R)]
            lst = [Signal(name=f"drain{j}_{i}_last") for i in range(R)]
            out = Signal(data.ArrayLayout(signed(cfg.acc_width), S), name=f"drain{j}_out", reset_less=True)
            out_vld = Signal(name=f"drain{j}_out_valid")
            out_lst = Signal(name=f"drain{j}_out_last")
            with m.If(self.en):
                for i in range(R):
                    with m.If(loads[i // DRAIN_ROWS_PER_LOAD]):
                        m.d.sync += [regs[i].eq(pes[i][j].result_exact), vld[i].eq(1), lst[i].eq(i == R - 1)]
                    with m.Else():
                        if i < R - 1:
                            m.d.sync += [regs[i].eq(regs[i + 1]), vld[i].eq(vld[i + 1]), lst[i].eq(lst[i + 1])]
                        else:
                            m.d.sync += [vld[i].eq(0), lst[i].eq(0)]
                m.d.sync += [out[s].eq(saturate(regs[0][s], cfg.acc_width)) for s in range(S)]
                m.d.sync += [out_vld.eq(vld[0]), out_lst.eq(lst[0])]
            # Deskew: column j reaches its drain output j cycles after column 0.
            out = delay(out, C - 1 - j, f"deskew{j}")
            for s in range(S):
                m.d.comb += self.acc[S * j + s].eq(out[s])
            # the output's last flag after the next enabled cycle is lst[0] (a register)
            drained.append((out_vld, out_lst, lst[0]))
        # The last column needs no deskew, so its flags are already aligned
        # (all columns carry identical flags; synthesis drops the others).
        m.d.comb += [self.acc_valid.eq(drained[C - 1][0]), self.acc_last.eq(drained[C - 1][1]),
                     self.acc_last_next.eq(drained[C - 1][2])]
        return m
