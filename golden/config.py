"""The one configuration object shared by hw/, golden/ and firmware/.

Everything that shapes the array — its size, the packing of two INT8 products
per multiplier, the packed chain length, accumulator widths, FIFO depths and
every block's latency — is derived here once. hw/ elaborates from it, the
golden cycle model times from it, firmware/ tiles for it.

Block latencies (in enabled clock cycles; see docs/array.md for the timing
contract they add up to):

* ``INPUT_LATENCY``  accepted input beat -> PE(0, 0) operand registers
* ``PE_LATENCY``     PE operand registers -> PE result register valid
                     (product/packed accumulate, then unpack into the wide
                     accumulators)
* ``DRAIN_LATENCY``  bottom-row result valid -> first row on the column's
                     drain output (parallel load of the drain chain, then the
                     column's saturating output register)
* ``REQUANT_LATENCY`` the post-processing lane, input -> ``out`` register,
                     per stage in ``REQUANT_STAGES``
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ._check import INT32_MAX

INPUT_LATENCY = 2
PE_LATENCY = 5
DRAIN_LATENCY = 2
#: A params transfer on cycle t counts for ``param_credit`` (docs/array.md) from cycle t + this:
#: the core counts pushes one register late, so the sequencer can keep its own copy of the core's
#: acceptance state from its own registered pushes and decide the next beat without the core's
#: ready crossing the die (issue 6).
PARAM_CREDIT_CYCLES = 2
#: Post-processing lane stages, in order; each is one register stage. Every stage is at
#: most about one carry chain, one barrel shifter or one 18x18 multiplier deep (the ECP5
#: timing target, docs/fpga.md); hw/requant_lane.py has the per-stage detail of both modes.
REQUANT_STAGES = (
    "params",        # the row and its parameters from the params FIFO's head (issue 6)
    "bias",          # acc + bias_eff (exact); left-shift limits
    "lshift",        # sat32 + left shift: coarse shift, overflow tests as partial ORs (tflite); |t| (ort)
    "lsat",          # tflite: fine shift, overflow flags; ort: msb byte of |t|, msb in each byte
    "ort_msb",       # tflite: the saturating select; ort: msb of |t|, shift by its byte
    "ort_norm",      # ort: 24 bits from the msb (fine shift), rounding increment
    "operand",       # the multiplier operand (ort: the rounded significand)
    "mul_fwd",       # SRDHM: the operands once more, towards the multipliers (issue 6)
    "mul_in",        # SRDHM: the multipliers' input registers (MULT18X18D, issue 6)
    "mul",           # SRDHM: four 18x18 partial products
    "mul_out",       # SRDHM: the products in fabric registers (DSP output -> sums' chains, issue 6)
    "mul_back",      # SRDHM: the products once more, back to the lane (issue 6)
    "psum",          # SRDHM: middle sum in 17-bit halves, nudge (carries registered)
    "plo",           # SRDHM: product bits [17, 34); high parts + carries
    "phi",           # SRDHM: product bits [34, 63); RDBPOT masks
    "rshift",        # RoundingDivideByPOT: coarse shift, rounding-bit terms (ort: product rounding)
    "rfine",         # RoundingDivideByPOT: fine shift (by e mod 4), rounding bit
    "rround",        # RoundingDivideByPOT: increment
    "prelu_shl",     # negative values: alpha's left shift: coarse shift, overflow tests as partial ORs
    "prelu_lsat",    # alpha's left shift: fine shift, overflow flags
    "prelu_sat",     # the saturating select (the alpha multiplier's operand)
    "prelu_mul_fwd", # alpha SRDHM: the operands once more
    "prelu_mul_in",  # alpha SRDHM: the multipliers' input registers
    "prelu_mul",     # alpha SRDHM: partial products
    "prelu_mul_out", # alpha SRDHM: the products in fabric registers
    "prelu_mul_back",  # alpha SRDHM: the products once more
    "prelu_psum",    # alpha SRDHM: middle sum, nudge
    "prelu_plo",     # alpha SRDHM: low bits
    "prelu_phi",     # alpha SRDHM: high bits
    "prelu_rshift",  # alpha RDBPOT: coarse shift, rounding-bit terms
    "prelu_rfine",   # alpha RDBPOT: fine shift, rounding bit; clamp bounds - zero point
    "prelu_rround",  # alpha RDBPOT: increment; value select
    "clamp",         # compares (in 16-bit halves) against act_min/act_max - zero point; + zero point
    "clip",          # the clamp's select: the 8-bit code
    "lut_rd",        # optional 256-entry table: LUT-RAM row read, 4 of its 16 words
    "lut",           # the table entry (or the code)
)
REQUANT_LATENCY = len(REQUANT_STAGES)

#: Largest product magnitude of two int8 values, (-128) * (-128).
_MAX_PRODUCT = 128 * 128
#: Low field of the packed product: signed 18 bits (arithmetic.md §4).
PACK_SHIFT = 18
PACKING_MODES = ("dual", "none")
#: Banks per on-chip buffer (double buffering).
BANKS = 2


def packed_chain_bound(weight_min: int) -> int:
    """Longest accumulation chain of packed products whose low field stays exact.

    The low field holds the true sum of ``w_lo * x`` in signed 18 bits,
    [-2**17, 2**17 - 1]; x is full-range int8. Products lie in
    [min(weight_min*127, 127*-128), weight_min*-128] (arithmetic.md §4).
    """
    hi = weight_min * -128            # most positive product
    lo = min(weight_min * 127, 127 * -128)
    k = 0
    while (k + 1) * hi <= 2**17 - 1 and (k + 1) * lo >= -(2**17):
        k += 1
    return k


@dataclass(frozen=True)
class ArrayConfig:
    """Shape and widths of the MACC array and its post-processing lanes.

    rows         output pixels computed in parallel (activation lanes)
    cols         PE columns; each PE owns ``lanes_per_pe`` output channels
    packing      "dual": one 27x18 multiplier computes two INT8 products that
                 share the activation (DSP48E2, WP486); "none": one product per
                 multiplier (ECP5's 18x18 blocks)
    weight_min   -127 (TFLite weights, packed chain 8) or -128 (full range, chain 7)
    chain        packed accumulation chain length; defaults to the proven bound
    max_k        longest reduction (beats per tile) the accumulators hold exactly
    param_fifo_depth  per-tile parameter sets buffered ahead of the lanes

    Accelerator top (docs/top.md); every buffer has ``BANKS`` banks so that
    loading job n+1 and draining job n-1 overlap computing job n:

    bus_bytes    width of the data streams ``din``/``dout`` in bytes
    act_depth    activation beats (``rows`` bytes each) per bank
    wgt_depth    weight beats (``out_lanes`` bytes each) per bank
    param_depth  per-tile parameter sets per bank
    out_depth    output rows (``out_lanes`` bytes each) per bank
    """

    rows: int = 8
    cols: int = 8
    packing: str = "dual"
    weight_min: int = -127
    chain: int | None = None
    max_k: int = 65536
    param_fifo_depth: int = 4
    bus_bytes: int = 16
    act_depth: int = 8192
    wgt_depth: int = 4608
    param_depth: int = 16
    out_depth: int = 1024

    def __post_init__(self):
        for name in ("rows", "cols"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= 256):
                raise ValueError(f"{name} must be an integer in [1, 256], got {v!r}")
        if self.packing not in PACKING_MODES:
            raise ValueError(f"packing must be one of {PACKING_MODES}, got {self.packing!r}")
        if self.weight_min not in (-127, -128):
            raise ValueError(f"weight_min must be -127 or -128, got {self.weight_min!r}")
        if self.packing == "dual":
            bound = packed_chain_bound(self.weight_min)
            if self.chain is None:
                object.__setattr__(self, "chain", bound)
            elif isinstance(self.chain, bool) or not isinstance(self.chain, int) or not (1 <= self.chain <= bound):
                raise ValueError(
                    f"chain must be an integer in [1, {bound}] for packing='dual' with weight_min={self.weight_min} "
                    f"(longer chains overflow the packed low field), got {self.chain!r}")
        elif self.chain is not None:
            raise ValueError(f"chain only applies to packing='dual', got chain={self.chain!r}")
        if isinstance(self.max_k, bool) or not isinstance(self.max_k, int) or not (1 <= self.max_k <= 2**20):
            raise ValueError(f"max_k must be an integer in [1, 2**20], got {self.max_k!r}")
        if isinstance(self.param_fifo_depth, bool) or not isinstance(self.param_fifo_depth, int) \
                or not (1 <= self.param_fifo_depth <= 64):
            raise ValueError(f"param_fifo_depth must be an integer in [1, 64], got {self.param_fifo_depth!r}")

        for name, hi in (("bus_bytes", 256), ("act_depth", 2**20), ("wgt_depth", 2**20),
                         ("param_depth", 4096), ("out_depth", 2**20)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not (1 <= v <= hi):
                raise ValueError(f"{name} must be an integer in [1, {hi}], got {v!r}")

    # ---- derived quantities: the single place they are computed ----
    @property
    def lanes_per_pe(self) -> int:
        return 2 if self.packing == "dual" else 1

    @property
    def out_lanes(self) -> int:
        """Output channels per tile (width of the weight and output beats)."""
        return self.cols * self.lanes_per_pe

    @property
    def acc_width(self) -> int:
        """Signed width of the wide accumulators: holds max_k products exactly."""
        return 1 + math.ceil(math.log2(_MAX_PRODUCT * self.max_k + 1))

    @property
    def bias_width(self) -> int:
        """Signed width of the effective bias, bias - zp_in * sum(w) (zp folded, |zp| <= 128)."""
        return 1 + math.ceil(math.log2(INT32_MAX + 1 + 128 * 128 * self.max_k))

    @property
    def min_tile_cycles(self) -> int:
        """Fewest enabled cycles between two accepted ``last`` beats (the drain of a tile takes ``rows``)."""
        return self.rows

    @property
    def array_latency(self) -> int:
        """Enabled cycles from accepting a tile's last beat to its row 0 at the post-processing input."""
        return INPUT_LATENCY + PE_LATENCY + (self.rows - 1) + (self.cols - 1) + DRAIN_LATENCY

    @property
    def latency(self) -> int:
        """Enabled cycles from accepting a tile's last beat to its row 0 on ``out``."""
        return self.array_latency + REQUANT_LATENCY

    @property
    def macs_per_cycle(self) -> int:
        return self.rows * self.out_lanes
