"""``ArrayCore``: the MACC array, its params FIFO and the post-processing lanes.

Implements docs/array.md exactly (ports, global enable, ready rules, params
FIFO, latency). Payload layouts are module-level functions so that every
consumer (this module, the Amaranth tests, the cocotb testbench in sim/,
firmware) packs and unpacks beats from the same definition:

* ``input_layout(cfg)``  ``act``: ArrayLayout(signed(8), rows),
  ``wgt``: ArrayLayout(signed(8), out_lanes), ``last``: 1
* ``params_layout(cfg)`` ``lane``: ArrayLayout(lane_params_layout(cfg), out_lanes)
  (each: ``bias``, ``mult``, ``shift``, ``zp``, ``act_min``, ``act_max``,
  ``alpha_mult``, ``alpha_shift``, ``prelu``, ``mode``, ``scale_f32`` — the shared
  ``golden.array_model.lane_field_shapes``), ``lut_en``: 1
* ``lut_layout()``       ``addr``: unsigned(8), ``data``: unsigned(8)
* ``output_layout(cfg)`` ``data``: ArrayLayout(unsigned(8), out_lanes), ``last``: 1

Fields are packed LSB first in the order listed (``lib.data.StructLayout``);
``pack_payload(layout, value)`` / ``unpack_payload(layout, bits)`` convert
between nested dicts/lists of Python ints and the flat integer.

Verilog (``python -m hw.build --target verilog``, module ``array_core``)
keeps Amaranth's default flattening of the ``wiring`` signature:

====================  ======  =============================================
port                  dir     width
====================  ======  =============================================
``clk``, ``rst``      in      1 (sync domain; ``rst`` synchronous, active high)
``inp__valid``        in      1
``inp__ready``        out     1
``inp__payload``      in      ``input_layout(cfg).size``
``params__valid``     in      1
``params__ready``     out     1
``params__payload``   in      ``params_layout(cfg).size``
``lut__valid``        in      1
``lut__ready``        out     1 (constant 1)
``lut__payload``      in      16
``out__valid``        out     1
``out__ready``        in      1
``out__payload``      out     ``output_layout(cfg).size``
====================  ======  =============================================
"""
from __future__ import annotations

from amaranth import C, Cat, Module, Mux, Shape, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from golden.config import PARAM_CREDIT_CYCLES, ArrayConfig

from .buffers import kept_copy, enable_copy
from .mac_array import MacArray
from .pe import check_hw_config, check_flag, config_for, delay
from .requant_lane import CODE_WIDTH, RequantLane, lane_params_layout, lut_layout

__all__ = ["ArrayCore", "PARAMS_PUSH_TO_HEAD_CYCLES", "acceptance_next", "input_layout", "params_layout", "lut_layout",
           "output_layout", "lane_params_layout", "pack_payload", "unpack_payload"]

# Cycles from a params push (accepted on t) to the lanes' params head showing it (t + 6):
# the FIFO write is registered four times (presented to the memory on t + 4) and the head is a
# register loaded from the LUT-RAM read at a registered address, the head's next entry
# (t + 5 -> t + 6, on enabled cycles). Slack: row 0 of its tile enters the lanes on
# >= t + PARAM_CREDIT_CYCLES + cfg.array_latency (ArrayCore.elaborate asserts the margin).
PARAMS_PUSH_TO_HEAD_CYCLES = 6
#: The params FIFO is split into memories of at most this many bits, each read at its own copy of
#: the read address and write enable: 12 TRELLIS_DPR16X4 cells (4 bits each) per copy (issue 6,
#: docs/fpga.md "Timing"; with 48 a write-enable copy had fanout 172 and arrived at ~10 ns; with
#: 24 the LUT-RAM read -> head register was still 8.3-9.0 ns on the 30 x 4 top, session 9).
_LUTRAM_BITS = 4
PARAM_FIFO_GROUP_BITS = 12 * _LUTRAM_BITS


def input_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Payload of ``inp``: one reduction beat (A[:, k], W[k, :], last)."""
    return data.StructLayout({
        # The array multiplies int8 by int8 only (uint8 activations are offset on the host).
        "act": data.ArrayLayout(signed(8), cfg.rows),
        "wgt": data.ArrayLayout(signed(8), cfg.out_lanes),
        "last": unsigned(1),
    })


def params_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Payload of ``params``: one beat per tile, per-lane requantization plus ``lut_en``."""
    return data.StructLayout({
        "lane": data.ArrayLayout(lane_params_layout(cfg), cfg.out_lanes),
        "lut_en": unsigned(1),
    })


def output_layout(cfg: ArrayConfig) -> data.StructLayout:
    """Payload of ``out``: one output row's 8-bit codes and the tile's last-row flag."""
    return data.StructLayout({
        "data": data.ArrayLayout(unsigned(CODE_WIDTH), cfg.out_lanes),
        "last": unsigned(1),
    })


def pack_payload(layout, value) -> int:
    """Flatten nested dicts (struct fields) / sequences (array elements) of ints into one integer.

    Every leaf must fit its field's shape exactly (ValueError names the field);
    signed fields are stored in two's complement.
    """
    return _pack(data.Layout.cast(layout), value, "payload")


def _pack(shape, value, path) -> int:
    if isinstance(shape, data.Layout):
        bits = 0
        for key, field in shape:
            try:
                v = value[key]
            except (KeyError, IndexError, TypeError):
                raise ValueError(f"{path} is missing field {key!r}") from None
            bits |= _pack(field.shape, v, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]") \
                << field.offset
        return bits
    s = Shape.cast(shape)
    v = int(value)
    lo, hi = (-(1 << (s.width - 1)), (1 << (s.width - 1)) - 1) if s.signed else (0, (1 << s.width) - 1)
    if not lo <= v <= hi:
        raise ValueError(f"{path} must be in [{lo}, {hi}], got {v}")
    return v & ((1 << s.width) - 1)


def unpack_payload(layout, bits: int):
    """Inverse of ``pack_payload``: dicts for struct layouts, lists for array layouts."""
    return _unpack(data.Layout.cast(layout), int(bits))


def _unpack(shape, bits):
    if isinstance(shape, data.ArrayLayout):
        return [_unpack(f.shape, bits >> f.offset) for _, f in shape]
    if isinstance(shape, data.Layout):
        return {k: _unpack(f.shape, bits >> f.offset) for k, f in shape}
    s = Shape.cast(shape)
    v = bits & ((1 << s.width) - 1)
    return v - (1 << s.width) if s.signed and v >> (s.width - 1) else v


def acceptance_next(gap, gap_ok, unclaimed, push_r, take_last, en=1):
    """Next values of the input acceptance state of docs/array.md: ``gap`` (enabled cycles since the
    previous accepted last beat, saturating: ``gap_ok`` == gap >= min_tile_cycles) and ``unclaimed``
    (pushed sets no accepted tile has claimed yet, each counted from ``push_r``, the push registered
    PARAM_CREDIT_CYCLES - 1 times). ArrayCore's registers and hw.sequencer's copy of them (en = 1)
    both step by this, so the copy cannot drift from the rule."""
    gap_n = Mux(take_last, 1, Mux(en & ~gap_ok, gap + 1, gap))
    return gap_n, unclaimed + push_r - take_last


def _wrap_inc(ptr, depth: int):
    """``(ptr + 1) % depth`` for a pointer in [0, depth) of any depth (not only powers of two)."""
    return Mux(ptr == depth - 1, 0, ptr + 1)[:len(ptr)]


class ArrayCore(wiring.Component):
    """The array core of docs/array.md.

    Ports (all ``amaranth.lib.stream`` interfaces; payload layouts above):

    * ``inp``    In(stream.Signature(input_layout(cfg)))   reduction beats;
      ``ready = en & (~last | (tile_gap_ok & param_credit))`` (the last term one register)
    * ``params`` In(stream.Signature(params_layout(cfg)))  one beat per tile,
      in tile order; ``ready = level < cfg.param_fifo_depth`` (independent of en)
    * ``lut``    In(stream.Signature(lut_layout()))        table writes, always ready
    * ``out``    Out(stream.Signature(output_layout(cfg))) one beat per output row

    Internal: ``en = ~out.valid | out.ready`` gates every datapath register.

    ``inputs_registered=True`` (hw.top: the buffers' output registers): ``inp.payload.act`` /
    ``wgt`` come through the array's first input register already (``hw.mac_array.MacArray``),
    so on a cycle they show the beat of the previous cycle; that register is outside, loaded
    when the extra output ``array_en`` (= en) is 1. Likewise ``params.payload`` comes through
    the params FIFO's first write register (``w_data_a``, loaded on every cycle) already. The
    handshakes, ``last`` and the cycle behaviour are unchanged.

    ``params_delay`` (0 .. 3; hw.top: 3): ``params.payload`` shows the pushed set that many
    cycles after the push (the first ``params_delay`` of the FIFO's write registers, ``w_data_a``,
    ``w_data_a2`` and ``w_data_b``, loaded on every cycle, are outside: hw.top's params buffer
    reads its LUT-RAM through two address registers and two output registers). With
    ``inputs_registered`` it must be
    >= 1 (that flag's params register). The cycle behaviour is unchanged.

    ``k_bounded=True`` (hw.top): no tile has more than ``cfg.max_k`` beats (``hw.pe.PackedPE``).

    ``input_qualified=True`` (hw.top): the source offers a beat (``inp.valid``) only on cycles
    whose ready rule above holds (hw.sequencer keeps its own copy of the acceptance state), so
    ``inp.ready = en`` and the tile-gap / param-credit registers are only the reference of the
    shadow check ``input_qualified`` (valid implies the rule's ready). The cycle behaviour at the
    ports is the same for such a source.
    """

    def __init__(self, cfg: ArrayConfig, *, inputs_registered: bool = False, k_bounded: bool = False,
                 params_delay: int | None = None, input_qualified: bool = False):
        self.cfg = config_for(self, cfg)
        self.inputs_registered = check_flag(self, "inputs_registered", inputs_registered)
        self.k_bounded = check_flag(self, "k_bounded", k_bounded)
        self.input_qualified = check_flag(self, "input_qualified", input_qualified)
        if params_delay is None:
            params_delay = int(inputs_registered)
        if isinstance(params_delay, bool) or params_delay not in (0, 1, 2, 3) or params_delay < int(inputs_registered):
            self._MustUse__used = True
            raise ValueError(f"params_delay must be 0, 1, 2 or 3 (>= 1 with inputs_registered), got {params_delay!r}")
        self.params_delay = params_delay
        super().__init__({
            "inp": In(stream.Signature(input_layout(cfg))),
            "params": In(stream.Signature(params_layout(cfg))),
            "lut": In(stream.Signature(lut_layout())),
            "out": Out(stream.Signature(output_layout(cfg))),
            **({"array_en": Out(1)} if inputs_registered else {}),
        })

    def elaborate(self, platform):
        cfg = check_hw_config(self.cfg)
        m = Module()
        depth = cfg.param_fifo_depth

        en = Signal()
        m.d.comb += en.eq(~self.out.valid | self.out.ready)

        m.submodules.array = arr = MacArray(cfg, inputs_registered=self.inputs_registered, k_bounded=self.k_bounded)
        if self.inputs_registered:
            m.d.comb += self.array_en.eq(en)
        lanes = []
        for lane in range(cfg.out_lanes):
            m.submodules[f"lane{lane}"] = ln = RequantLane(cfg)
            lanes.append(ln)

        # ---- params FIFO: registers level/claimed, a LUT-RAM whose head is a register.
        # Timing (issue 6):
        # * the write port is driven by registers, four deep (a push on cycle t is written at the
        #   end of t + 4), so the memory's write enable/data do not hang off the sequencer's params
        #   mux and this port's ready logic, and the params buffer's LUT-RAM read (the payload)
        #   has three registers of its own before it reaches the FIFO (the first one, the
        #   buffer's output register, can sit by the LUT-RAM: with two, the LUT-RAM read -> that
        #   register was still up to 7.7 ns on the 30 x 4 top, session 10; on the 30 x 4 top the params
        #   buffer and this FIFO were placed far apart: the read address copy -> LUT-RAM ->
        #   w_data path was 14.4 ns, the top's critical path; with one register between, the
        #   LUT-RAM -> bank mux -> first register hop was still 11.5 ns of routing, session 6;
        #   with params_delay the first registers are outside: in hw.top the params buffer's
        #   extra read-address stage and its output register, session 12, and its second output
        #   register, session 13);
        # * the head the lanes see (``head_q``) is a register loaded on every enabled cycle from
        #   the LUT-RAM read at ``ra``, so the lanes' first stages start from flip-flops, not
        #   from a LUT-RAM read + routing (their bias add chains);
        # * ``ra`` itself is a register: the entry the lanes need on the next enabled cycle,
        #   rptr + acc_last (the tile's last row is at the lanes now, so this enabled cycle pops),
        #   loaded from next-state values (rptr_n, the array's acc_last_next). The read address
        #   was rptr_n, a LUT of the pop (the array's drain flags and en) driving the read
        #   address of every LUT-RAM cell of the FIFO (~170 on the 30 x 4 top) before the read.
        # Together a push on t is in the lanes' head from t + PARAMS_PUSH_TO_HEAD_CYCLES (= 6:
        # written at the end of t + 4, read at ra during t + 5, registered at its end; later if
        # en = 0 then, but the array waits as well, see below).
        # Invisible at the ports: head_q(t + 1) = mem(t)[rptr(t + 1)] after every enabled cycle t
        # (ra(t) = rptr(t) + pop(t) = rptr(t + 1), as pop = en & acc_last), as when the head was
        # read at rptr_n; only its updates on disabled cycles are gone, and nothing reads head_q
        # there. The head entry pushed on t is first used when its tile's row 0 enters the
        # lanes, and that tile's last beat needs the credit of this push (counted from
        # t + PARAM_CREDIT_CYCLES = t + 2), so row 0 enters array_latency enabled cycles after
        # an enabled cycle >= t + 2: head_q was loaded on the enabled cycle before, >= t + 1 +
        # array_latency (array_latency >= INPUT_LATENCY + PE_LATENCY + DRAIN_LATENCY = 9, so
        # >= t + 10 > t + 5: five cycles of margin); the head stays right until the pop (the
        # entry is only rewritten after its pop, when rptr has moved past it).
        assert PARAM_CREDIT_CYCLES + cfg.array_latency > PARAMS_PUSH_TO_HEAD_CYCLES, \
            "the registered FIFO write and head need the array's latency as slack"
        level = Signal(range(depth + 1))
        claimed = Signal(range(depth + 1))
        wptr = Signal(range(depth))
        rptr = Signal(range(depth))
        rptr_n = Signal(range(depth))
        ra = Signal(range(depth))                         # == (rptr + arr.acc_last) % depth
        # The FIFO's bits are split into PARAM_FIFO_GROUP_BITS-wide memories, each read at its own
        # copy of ra (``kept_copy``: not merged by yosys): ra drove the read address of every LUT-RAM
        # cell (169 TRELLIS_DPR16X4 per bit on the 30 x 4 top, issue 6); a copy drives <= 24.
        width = params_layout(cfg).size
        n_groups = -(-width // PARAM_FIFO_GROUP_BITS)
        gbits = -(-width // n_groups)
        gbits += -gbits % _LUTRAM_BITS                    # whole 4-bit LUT-RAM cells per group
        groups = [(lo, min(lo + gbits, width)) for lo in range(0, width, gbits)]
        fifos = []
        for g, (lo, hi) in enumerate(groups):
            m.submodules[f"param_fifo{g}"] = f = memory.Memory(shape=unsigned(hi - lo), depth=depth, init=[])
            fifos.append((f.write_port(), f.read_port(domain="comb")))
        # Datapath (reset-less): before the first push the lanes see no valid row.
        head_q = Signal(params_layout(cfg), reset_less=True)
        w_en = Signal()                                   # control: reset
        w_addr = Signal(range(depth), reset_less=True)    # datapath: used only with w_en
        w_data = Signal(params_layout(cfg), reset_less=True)
        # the first three register stages of the write port (w_* above are the fourth)
        push_a = Signal()                                 # control: reset
        wptr_a = Signal(range(depth), reset_less=True)
        push_a2 = Signal()                                # control: reset
        wptr_a2 = Signal(range(depth), reset_less=True)
        # the data's first three stages (w_data_a, w_data_a2, w_data_b): the first params_delay of
        # them are outside (hw.top: the params buffer's read), the rest here
        w_data_b = delay(m, self.params.payload.as_value(), 3 - self.params_delay, "w_data_a")
        push_b = Signal()                                 # control: reset
        wptr_b = Signal(range(depth), reset_less=True)

        # ---- input acceptance. The ready terms are registers loaded from next-state logic
        # (the same values, a cycle earlier), so inp.ready / params.ready are one LUT from
        # flip-flops: they feed the sequencer's issue, push and buffer-address decisions.
        gap = Signal(range(cfg.min_tile_cycles + 1), init=cfg.min_tile_cycles)
        tile_gap_ok = Signal(init=1)                      # == gap >= min_tile_cycles
        param_credit = Signal()                           # == level > claimed
        # == tile_gap_ok & param_credit, one register (issue 6: inp.ready feeds the sequencer's
        # read enables and clock enables, each a LUT of it and flip-flops of its group; with one
        # flip-flop for the last beat's condition, ready and that LUT fit one LUT4)
        last_ok = Signal()
        par_ready = Signal(init=1)                        # == level < depth
        # The rule's ready. With input_qualified the source has applied it (the shadow check below)
        # and the port's ready is en alone: the core's last_ok -> the array's valid / last and this
        # state's own next values was 8.5-8.8 ns from the sequencer's valid flip-flop on the 30 x 4
        # top (issue 6, session 13), and these registers are left to the shadow check.
        rule_ready = en & (~self.inp.payload.last | last_ok)
        m.d.comb += self.inp.ready.eq(en if self.input_qualified else rule_ready)
        take = self.inp.valid & self.inp.ready          # implies en
        take_last = take & self.inp.payload.last
        # gap = enabled cycles since the previous accepted last beat (saturating); its next value
        # with unclaimed's below (acceptance_next)
        gap_n = Signal.like(gap)
        m.d.sync += [gap.eq(gap_n), tile_gap_ok.eq(gap_n >= cfg.min_tile_cycles)]

        m.d.comb += [
            arr.en.eq(en),
            arr.valid.eq(take),
            arr.last.eq(take_last),
            arr.act.eq(self.inp.payload.act),
            arr.wgt.eq(self.inp.payload.wgt),
        ]

        push = self.params.valid & self.params.ready
        pop = en & arr.acc_valid & arr.acc_last       # the tile's last row enters the lanes
        level_n = Signal.like(level)
        claimed_n = Signal.like(claimed)
        # level - claimed - push_a, the pushed sets no accepted tile has claimed yet, each counted
        # from PARAM_CREDIT_CYCLES (2) after its push: from the registered push_a, not the push,
        # so the sequencer's copy of this state (hw.sequencer) counts its own registered pushes
        # and needs nothing of the core in the cycle it decides (issue 6, session 13). A pop
        # leaves it as it is, so the credit (unclaimed > 0) does not wait for the array's drain
        # flags (issue 6, session 11: acc_last -> pop -> level_n > claimed_n -> last_ok, 8.7 ns).
        assert PARAM_CREDIT_CYCLES == 2, "the credit counts push_a, one register after the push"
        unclaimed = Signal(range(depth + 1))
        unclaimed_n = Signal.like(unclaimed)
        m.d.comb += [
            self.params.ready.eq(par_ready),
            level_n.eq(level + push - pop),
            claimed_n.eq(claimed + take_last - pop),
            *(x.eq(v) for x, v in zip((gap_n, unclaimed_n),
                                       acceptance_next(gap, tile_gap_ok, unclaimed, push_a, take_last, en))),
        ]
        # The write address and enable in one copy per group as well (w_addr and w_en drove every
        # LUT-RAM cell's write port, 10.9 ns on the 30 x 4 top): w_en keeps its reset through
        # enable_copy; w_addr and w_en stay as the references of the shadow checks.
        # Each group's copies load from a third-stage copy of the group's own (w_*_b_g below), not
        # from the shared push_b / wptr_b: a chain per group, so the placer can put the middle
        # register between the core and the group's LUT-RAM (issue 6, session 11: push_b -> a far
        # group's write-enable copy was 8.59-8.67 ns in two seeds; in session 12 it did so in two
        # seeds of four, docs/fpga.md "Session 12").
        w_copies = []
        for g, ((wp, _), (lo, hi)) in enumerate(zip(fifos, groups)):
            w_addr_b_g = kept_copy(m, platform, wptr_a2, C(1, 1), f"w_addr_b_g{g}")
            w_en_b_g = enable_copy(m, platform, push_a2, f"w_en_b_g{g}")
            w_addr_g = kept_copy(m, platform, w_addr_b_g, C(1, 1), f"w_addr_g{g}")
            w_en_g = enable_copy(m, platform, w_en_b_g, f"w_en_g{g}")
            w_copies += [(f"w_addr_b_g{g}", w_addr_b_g, wptr_b), (f"w_en_b_g{g}", w_en_b_g, push_b),
                         (f"w_addr_g{g}", w_addr_g, w_addr), (f"w_en_g{g}", w_en_g, w_en)]
            m.d.comb += [wp.addr.eq(w_addr_g), wp.data.eq(w_data.as_value()[lo:hi]), wp.en.eq(w_en_g)]
        m.d.sync += [
            level.eq(level_n), claimed.eq(claimed_n), unclaimed.eq(unclaimed_n),
            par_ready.eq(level_n < depth), param_credit.eq(unclaimed_n != 0),
            last_ok.eq((gap_n >= cfg.min_tile_cycles) & (unclaimed_n != 0)),
            push_a.eq(push), wptr_a.eq(wptr),
            push_a2.eq(push_a), wptr_a2.eq(wptr_a),
            push_b.eq(push_a2), wptr_b.eq(wptr_a2),
            w_en.eq(push_b), w_addr.eq(wptr_b), w_data.eq(w_data_b),
            rptr.eq(rptr_n),
        ]
        ra_n = Mux(arr.acc_last_next, _wrap_inc(rptr_n, depth), rptr_n)
        # Each group's copy of ra loads from its own copy of rptr (rptr_g, the same recurrence) and
        # the array's drain flags, so the only route into it is from the array's flip-flops (issue
        # 6, session 13: rptr's next value, one LUT by rptr, drove the 15 copies across the die,
        # 7.9-8.2 ns on the 30 x 4 top). rptr_g keeps rptr's reset (a bit per enable_copy).
        ra_copies, rptr_copies = [], []
        for g in range(len(groups)):
            rptr_g = Signal(range(depth), name=f"rptr_g{g}")
            rptr_g_n = Mux(pop, _wrap_inc(rptr_g, depth), rptr_g)
            m.d.comb += rptr_g.eq(Cat(*(enable_copy(m, platform, rptr_g_n[i], f"rptr_g{g}_{i}")
                                        for i in range(len(rptr_g)))))
            ra_copies.append(kept_copy(m, platform, Mux(arr.acc_last_next, _wrap_inc(rptr_g_n, depth), rptr_g_n),
                                       en, f"ra_g{g}"))
            rptr_copies.append((f"rptr_g{g}", rptr_g, rptr))
        for (_, rd), ra_g in zip(fifos, ra_copies):
            m.d.comb += rd.addr.eq(ra_g)
        with m.If(en):
            # rptr and acc_last only change on enabled cycles, so ra does too.
            m.d.sync += [ra.eq(ra_n), head_q.eq(Cat(*(rd.data for _, rd in fifos)))]
        # Pointers wrap explicitly: any depth, not only powers of two.
        with m.If(push):
            m.d.sync += wptr.eq(_wrap_inc(wptr, depth))
        m.d.comb += rptr_n.eq(Mux(pop, _wrap_inc(rptr, depth), rptr))
        # The registered read address and the combinational form it stands for (no hardware: read
        # by tests/test_hw_core_amaranth.py, which asserts them equal on every cycle).
        # Each copy of ra equals ra (the same next value and enable; the copies have no reset: after
        # a reset they are reloaded on the first enabled cycle, and no row reaches the lanes for
        # array_latency cycles, so the head they read meanwhile is never used).
        self.shadow_checks = [
            ("ra", ra, Mux(arr.acc_last, _wrap_inc(rptr, depth), rptr)),
            ("last_ok", last_ok, tile_gap_ok & param_credit),
            ("unclaimed", unclaimed, level - claimed - push_a),
            *([("input_qualified", ~self.inp.valid | rule_ready, 1)] if self.input_qualified else []),
            *((f"ra_g{g}", ra_g, ra) for g, ra_g in enumerate(ra_copies)),
            *rptr_copies,
            *w_copies,
        ]

        # ---- lanes: every row uses the FIFO head's params (head_q) as it enters.
        for lane, ln in enumerate(lanes):
            m.d.comb += [
                ln.en.eq(en),
                ln.acc.eq(arr.acc[lane]),
                ln.valid.eq(arr.acc_valid),
                ln.last.eq(arr.acc_last),
                ln.params.eq(head_q.lane[lane]),
                ln.lut_en.eq(head_q.lut_en),
                ln.lut.valid.eq(self.lut.valid),
                ln.lut.payload.eq(self.lut.payload),
                self.out.payload.data[lane].eq(ln.out_data),
            ]
        m.d.comb += [
            self.lut.ready.eq(1),
            # All lanes carry identical valid/last flags; lane 0's drive the port.
            self.out.valid.eq(lanes[0].out_valid),
            self.out.payload.last.eq(lanes[0].out_last),
        ]
        return m
