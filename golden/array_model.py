"""Cycle-exact golden twin of ``hw.core.ArrayCore`` (docs/array.md).

Independent of the RTL: tile values come from an int64 matrix product and the
lane semantics (``postprocess``, golden.requant primitives); timing comes
from the contract's formulas (``golden.config``), not from a register-level
replay. Nothing here models skew registers or PEs; only what the ports show.

Per clock cycle the model is driven with exactly what the testbench drives
into the RTL and returns what the RTL's outputs must be on that cycle::

    m = ArrayModel(cfg)
    for each clock cycle:
        r = m.step(in_valid, in_payload, params_valid, params_payload,
                   lut_valid, lut_payload, out_ready)
        # r["in_ready"], r["params_ready"], r["out_valid"], r["out_payload"]
        # are this cycle's RTL outputs (sampled before the clock edge);
        # the state then advances past the edge.

Timing rules implemented (docs/array.md):

* ``en = ~out.valid | out.ready``; n(t) = number of earlier cycles with en = 1.
* ``inp.ready = en & (~last | (tile_gap_ok & param_credit))``;
  ``tile_gap_ok``: n(t) - n(previous accepted last) >= cfg.min_tile_cycles;
  ``param_credit``: level - claimed - (pushes of the previous
  PARAM_CREDIT_CYCLES - 1 cycles) > 0: a push counts for it from
  t + PARAM_CREDIT_CYCLES (golden.config).
* ``params.ready = level < cfg.param_fifo_depth``; a push is in the FIFO
  from the next cycle.
* A tile whose last beat is accepted on enabled cycle e has row r at the
  lanes' input on enabled cycle e + cfg.array_latency + r, where it takes the
  FIFO head's params (row rows-1 pops the head: level and claimed - 1 from the
  next cycle); row r is on ``out`` while n(t) = e + cfg.latency + r (frozen
  through stalls) and transfers on the cycle that also has out.ready.
* LUT writes are visible from the next cycle. A write while rows of a
  lut_en tile are in flight -- on any cycle after the one accepting its last
  beat, up to and including the out transfer of its row rows-1 -- breaks the
  contract and raises ValueError (so does reading a table entry never
  written). Within that window the table is constant, so the model looks it up
  when a row enters the lanes.

Lanes run in either requantization mode, selected per lane by the ``mode``
bit (docs/array.md, "ort mode"): 0 = TFLite fixed point (``mult``/``shift``,
optional PReLU), 1 = onnxruntime's float32 scale (``scale_f32``, the raw
IEEE-754 bits of ``golden.requant.ort_scale``), emulated with integers only
(``golden.requant._requantize_ort_int``).

Bad stimulus (values out of range, K > cfg.max_k, weights below
cfg.weight_min, ...) raises ValueError naming the field and its range.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ._check import INT8_MAX, INT8_MIN, INT32_MAX, INT32_MIN, check_int_array, check_positive_int
from .config import PARAM_CREDIT_CYCLES, ArrayConfig
from .requant import (MAX_LEFT_SHIFT, MAX_RIGHT_SHIFT, _requantize_ort_int, f32_decompose,
                      multiply_by_quantized_multiplier, quantize_multiplier)

__all__ = ["LANE_FIELDS", "ORT_LANE_FIELDS", "lane_field_shapes", "lane_field_ranges", "check_params",
           "postprocess", "tile_value", "params_from_layer", "neutral_params", "f32_bits", "ArrayModel",
           "TileRecord", "simulate"]

#: Per-lane fields of a ``params`` beat, in docs/array.md order (plus the per-tile ``lut_en``).
LANE_FIELDS = ("bias", "mult", "shift", "zp", "act_min", "act_max", "alpha_mult", "alpha_shift", "prelu",
               "mode", "scale_f32")
#: The fields the ort requantization mode added (docs/array.md, "ort mode"). A params payload
#: without them (a hardware layout that predates ort mode) reads as mode = 0, scale_f32 = 0.
ORT_LANE_FIELDS = ("mode", "scale_f32")
#: Lane ``mode`` values.
MODE_TFLITE, MODE_ORT = 0, 1
_Q31_MAX = INT32_MAX                     # mult / alpha_mult: unsigned(31) q_fixed
_SHIFT_RANGE = (-MAX_RIGHT_SHIFT, MAX_LEFT_SHIFT)
_SIGNED9 = (-256, 255)
#: Output codes are 8 bits; act_min/act_max span at most one code range.
_CODE_MIN, _CODE_MAX = INT8_MIN, 255


def _bit(v, name: str) -> int:
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (int, np.integer)) and int(v) in (0, 1):
        return int(v)
    raise ValueError(f"{name} must be 0 or 1, got {v!r}")


def lane_field_shapes(bias_width: int) -> dict[str, tuple[bool, int]]:
    """The shared definition of the lane params port: ``{field: (signed, width)}`` in LANE_FIELDS order.

    docs/array.md "Ports" and "ort mode": bias signed(bias_width), mult unsigned(31),
    shift signed(6), zp/act_min/act_max signed(9), alpha_mult unsigned(31),
    alpha_shift signed(6), prelu 1 bit, mode 1 bit, scale_f32 unsigned(32). The
    RTL's ``hw.requant_lane.lane_params_layout`` must hold exactly these fields
    (golden.isa packs params entries by field name through that layout).
    """
    if isinstance(bias_width, bool) or not isinstance(bias_width, (int, np.integer)) or bias_width < 2:
        raise ValueError(f"bias_width must be an integer >= 2, got {bias_width!r}")
    return {"bias": (True, int(bias_width)), "mult": (False, 31), "shift": (True, 6), "zp": (True, 9),
            "act_min": (True, 9), "act_max": (True, 9), "alpha_mult": (False, 31), "alpha_shift": (True, 6),
            "prelu": (False, 1), "mode": (False, 1), "scale_f32": (False, 32)}


def f32_bits(scale) -> np.ndarray:
    """Raw IEEE-754 bits (int64 array) of float32 value(s): the lane's ``scale_f32`` encoding.

    ``scale`` must already be float32 values (a float32 array, or floats exactly
    representable in float32): a silent second rounding would break bit-exactness.
    """
    a = np.asarray(scale)
    if a.dtype != np.float32:
        f = np.asarray(a, np.float64)
        with np.errstate(over="ignore"):
            a = f.astype(np.float32)
        if not np.array_equal(a.astype(np.float64), f, equal_nan=True):
            raise ValueError("scale must hold float32 values (e.g. golden.requant.ort_scale output); got values "
                             "that float32 cannot represent exactly")
    return a.view(np.uint32).astype(np.int64)


def _f32_ok(bits: np.ndarray) -> np.ndarray:
    """True where ``bits`` encode a positive finite float32 (subnormals included, +0 excluded)."""
    return (bits > 0) & (bits < 0x7F800000)


def lane_field_ranges(bias_width: int | None = None) -> dict[str, tuple[int, int]]:
    """Allowed [lo, hi] of every lane field (docs/array.md port widths and value rules).

    ``bias_width``: signed width of ``bias`` (cfg.bias_width); None: any value
    whose sum with an accumulator stays far inside int64 (|bias| <= 2**62).
    """
    b = (-(2**62), 2**62) if bias_width is None else (-(2**(bias_width - 1)), 2**(bias_width - 1) - 1)
    return {"bias": b, "mult": (0, _Q31_MAX), "shift": _SHIFT_RANGE, "zp": _SIGNED9,
            "act_min": (_CODE_MIN, _CODE_MAX), "act_max": (_CODE_MIN, _CODE_MAX),
            "alpha_mult": (0, _Q31_MAX), "alpha_shift": _SHIFT_RANGE, "prelu": (0, 1),
            "mode": (0, 1), "scale_f32": (0, 2**32 - 1)}


def check_params(params, n_lanes: int | None = None, bias_width: int | None = None) -> dict:
    """Validate one params beat; return ``{field: int64 array (n_lanes,)}`` plus ``lut_en`` (int).

    Accepts either layout:

    * ``{"bias": [...], "mult": [...], ..., "prelu": [...], "lut_en": 0/1}``
      (one sequence of per-lane values per field; scalars broadcast), or
    * the RTL payload layout ``{"lane": [{"bias": .., ...}, ...], "lut_en": 0/1}``
      (``hw.core.params_layout``; what ``unpack_payload`` returns).

    ``lut_en`` defaults to 0 when absent; so do ``mode`` and ``scale_f32``
    (``ORT_LANE_FIELDS``: a payload from a layout without them is all tflite).
    Rules: every field in its range (``lane_field_ranges``), act_min <= act_max
    and act_max - act_min <= 255; lanes with mode = 1 need ``scale_f32`` to
    encode a positive finite float32 and prelu = 0.
    """
    if not isinstance(params, dict):
        raise ValueError(f"params must be a dict, got {type(params).__name__}")
    if "lane" in params:
        lanes = params["lane"]
        if not isinstance(lanes, (list, tuple)) or not all(isinstance(x, dict) for x in lanes):
            raise ValueError("params['lane'] must be a list of per-lane dicts")
        present = [f for f in LANE_FIELDS if f not in ORT_LANE_FIELDS or any(f in ln for ln in lanes)]
        try:
            src = {f: [ln[f] for ln in lanes] for f in present}
        except KeyError as e:
            raise ValueError(f"params['lane'][i] is missing field {e.args[0]!r}") from None
    else:
        missing = [f for f in LANE_FIELDS if f not in params and f not in ORT_LANE_FIELDS]
        if missing:
            raise ValueError(f"params is missing field(s) {missing}; needs {LANE_FIELDS} (+ optional lut_en)")
        src = params
    rng = lane_field_ranges(bias_width)
    out = {}
    for f in LANE_FIELDS:
        a = check_int_array(src[f] if f in src else 0, f"params.{f}", *rng[f])
        if a.ndim > 1:
            raise ValueError(f"params.{f} must be a scalar or a 1-D per-lane vector, got shape {a.shape}")
        if n_lanes is not None:
            if a.ndim == 1 and a.size != n_lanes:
                raise ValueError(f"params.{f} must have out_lanes = {n_lanes} values, got {a.size}")
            a = np.broadcast_to(a, (n_lanes,))
        out[f] = np.array(a, np.int64)
    lo, hi = np.broadcast_arrays(out["act_min"], out["act_max"])
    if np.any(lo > hi) or np.any(hi - lo > 255):
        bad = np.flatnonzero(np.atleast_1d((lo > hi) | (hi - lo > 255)))[:4].tolist()
        raise ValueError("params.act_min/act_max must satisfy act_min <= act_max and act_max - act_min <= 255 "
                         f"(an 8-bit code), violated in lane(s) {bad}")
    ort = out["mode"] == MODE_ORT
    if np.any(ort):
        sb, pr = np.broadcast_arrays(out["scale_f32"], out["prelu"])
        m = np.broadcast_to(ort, sb.shape)
        bad = np.flatnonzero(np.atleast_1d(m & ~_f32_ok(sb)))[:4].tolist()
        if bad:
            raise ValueError("params.scale_f32 must encode a positive finite float32 (bits in [1, 0x7F7FFFFF]) "
                             f"on lanes with mode = 1, violated in lane(s) {bad}")
        bad = np.flatnonzero(np.atleast_1d(m & (pr != 0)))[:4].tolist()
        if bad:
            raise ValueError(f"params.prelu must be 0 on lanes with mode = 1 (ort), violated in lane(s) {bad}")
    out["lut_en"] = _bit(params.get("lut_en", 0), "params.lut_en")
    return out


def _check_lut(lut) -> np.ndarray:
    t = check_int_array(lut, "lut", -1, 255)
    if t.shape != (256,):
        raise ValueError(f"lut must have 256 entries (shape (256,)), got shape {t.shape}")
    return t


def postprocess(acc, params: dict, lut=None) -> np.ndarray:
    """The post-processing lanes of docs/array.md on accumulators ``acc`` (..., out_lanes).

        t = sat32(acc + bias)
        v = MBQM(t, mult, shift)          # RDBPOT(SRDHM(satshl32(t, max(shift,0)), mult), max(-shift,0))
        v = MBQM(v, alpha_mult, alpha_shift) where prelu and v < 0
        q = clamp(v + zp, act_min, act_max)
        out = lut[q & 0xFF] if lut_en else q & 0xFF

    and on lanes with mode = 1 (ort; mult, shift, prelu ignored)::

        q = requantize_ort(t, scale_f32, zp=0, qmin=act_min - zp, qmax=act_max - zp) + zp

    ``params``: per-lane fields along the last axis of ``acc`` (see
    ``check_params``); ``lut``: the 256-entry table (values 0..255), required
    when ``params['lut_en']`` is 1 (an entry of -1 means "never written" and
    raises if looked up). Returns uint8 codes with ``acc``'s shape.
    """
    a = check_int_array(acc, "acc", -(2**62), 2**62)
    n_lanes = a.shape[-1] if a.ndim else None
    p = check_params(params, n_lanes)
    if p["lut_en"]:
        if lut is None:
            raise ValueError("lut is required when params['lut_en'] = 1")
        lut = _check_lut(lut)
    return _lanes(a, p, lut)


def _lanes(a: np.ndarray, p: dict, table) -> np.ndarray:
    """``postprocess`` on checked inputs (int64 acc, ``check_params`` output, checked table)."""
    t = np.clip(a + p["bias"], INT32_MIN, INT32_MAX)                      # sat32 of the exact sum
    ort = p["mode"] == MODE_ORT
    if np.all(ort):
        code = _ort_lanes(t, p)
    else:
        v = multiply_by_quantized_multiplier(t, p["mult"], p["shift"])
        neg = multiply_by_quantized_multiplier(v, p["alpha_mult"], p["alpha_shift"])
        v = np.where((p["prelu"] != 0) & (v < 0), neg, v)
        code = np.clip(v + p["zp"], p["act_min"], p["act_max"])
        if np.any(ort):
            code = np.where(ort, _ort_lanes(t, p), code)
    code = code & 0xFF
    if p["lut_en"]:
        unwritten = np.unique(code[table[code] < 0])
        if unwritten.size:
            raise ValueError(f"LUT entry(ies) {unwritten[:4].tolist()} are read but were never written")
        code = table[code]
    return code.astype(np.uint8)


def _ort_lanes(t: np.ndarray, p: dict) -> np.ndarray:
    """ort-mode codes of ``t = sat32(acc + bias)`` on every lane (lanes with mode 0 use a dummy scale).

    ``clamp(rne(float32(float32(t) * scale32)), act_min - zp, act_max - zp) + zp`` by the
    integer float32 emulation of golden.requant (the bounds are passed directly, so a
    clamp range that excludes zp itself -- a fused ReLU above the zero point -- is fine).
    """
    bits = np.where(p["mode"] == MODE_ORT, p["scale_f32"], 0x3F800000).astype(np.uint32)   # 1.0f elsewhere
    mant, exp = f32_decompose(bits.view(np.float32))
    v = _requantize_ort_int(np.abs(t), t < 0, mant, exp, p["act_min"] - p["zp"], p["act_max"] - p["zp"])
    return v + p["zp"]


def _check_tile(cfg: ArrayConfig, act, wgt) -> tuple[np.ndarray, np.ndarray]:
    a = check_int_array(act, "act", INT8_MIN, INT8_MAX, ndim=2)
    w = check_int_array(wgt, "wgt", cfg.weight_min, INT8_MAX, ndim=2)
    if a.shape[0] != cfg.rows:
        raise ValueError(f"act must have rows = {cfg.rows} rows, got shape {a.shape}")
    if w.shape[1] != cfg.out_lanes:
        raise ValueError(f"wgt must have out_lanes = {cfg.out_lanes} columns, got shape {w.shape}")
    if a.shape[1] != w.shape[0]:
        raise ValueError(f"act (rows x K) and wgt (K x out_lanes) disagree on K: {a.shape} vs {w.shape}")
    if not 1 <= a.shape[1] <= cfg.max_k:
        raise ValueError(f"tile K must be in [1, max_k = {cfg.max_k}], got K = {a.shape[1]}")
    return a, w


def tile_value(cfg: ArrayConfig, act, wgt, params: dict, lut=None) -> np.ndarray:
    """Output codes (rows x out_lanes, uint8) of one tile: ``postprocess(act @ wgt)``.

    ``act``: rows x K int8; ``wgt``: K x out_lanes in [cfg.weight_min, 127];
    K in [1, cfg.max_k] (the accumulators are exact there: |acc| <= 2**14 * K).
    """
    a, w = _check_tile(cfg, act, wgt)
    check_params(params, cfg.out_lanes, cfg.bias_width)
    return postprocess(a @ w, params, lut)


def neutral_params(cfg: ArrayConfig) -> dict:
    """A valid params beat that outputs code 0 on every lane (mode 0, mult = 0), lut_en = 0."""
    z = np.zeros(cfg.out_lanes, np.int64)
    return {"bias": z.copy(), "mult": z.copy(), "shift": z.copy(), "zp": z.copy(),
            "act_min": np.full(cfg.out_lanes, INT8_MIN, np.int64), "act_max": np.full(cfg.out_lanes, INT8_MAX, np.int64),
            "alpha_mult": z.copy(), "alpha_shift": z.copy(), "prelu": z.copy(), "mode": z.copy(),
            "scale_f32": z.copy(), "lut_en": 0}


def params_from_layer(cfg: ArrayConfig, multiplier, *, bias=0, zp_out=0, act_min=INT8_MIN, act_max=INT8_MAX,
                      zp_in=0, w_sum=0, alpha=None, lut_en: bool = False, mode: str = "tflite") -> dict:
    """Build one tile's params beat from per-channel layer quantities.

    ``mode="tflite"``: ``multiplier`` is the real M[c] = s_in * s_w[c] / s_out,
    one per channel (1 .. out_lanes channels; scalars broadcast), quantized with
    ``golden.requant.quantize_multiplier`` (ValueError outside (0, 2**15)).
    ``mode="ort"``: ``multiplier`` is onnxruntime's float32 scale per channel,
    ``golden.requant.ort_scale(x_scale, w_scale, y_scale)`` (float32 values,
    positive, finite), stored as its raw bits in ``scale_f32`` with mode = 1;
    ``alpha`` must be None (onnxruntime has no fused PReLU).
    ``bias``: int32 bias[c]; ``zp_in``: the input zero point in the array's
    int8 domain (uint8 inputs: zp - 128, the host flips the MSB of x);
    ``w_sum``: sum of channel c's weights; the lane bias is the folded
    ``bias - zp_in * w_sum`` (must fit cfg.bias_width). ``zp_out``,
    ``act_min``, ``act_max``: output zero point and clamp (ReLU/ReLU6 are
    clamps). ``alpha``: None, or per-channel PReLU slopes in (0, 2**15)
    (applied to negative requantized values as a second Q31 multiply).
    Lanes beyond the given channels get ``neutral_params`` (code 0).
    """
    if mode not in ("tflite", "ort"):
        raise ValueError(f"mode must be 'tflite' or 'ort', got {mode!r}")
    m = np.atleast_1d(np.asarray(multiplier, np.float32 if mode == "ort" and np.asarray(multiplier).dtype == np.float32
                                 else np.float64))
    if m.ndim != 1 or not 1 <= m.size <= cfg.out_lanes:
        raise ValueError(f"multiplier must have 1 .. out_lanes = {cfg.out_lanes} per-channel values, got shape {m.shape}")
    c = m.size
    if mode == "ort":
        if alpha is not None:
            raise ValueError("alpha (PReLU) cannot be fused in mode 'ort': onnxruntime applies PReLU after "
                             "requantization in float; run it as a host node")
        sb = f32_bits(m)
        if not np.all(_f32_ok(sb)):
            raise ValueError(f"multiplier (the ort float32 scale) must be positive and finite, got "
                             f"{m[~_f32_ok(sb)][:4].tolist()}")
        q = s = np.zeros(c, np.int64)
    else:
        q, s = quantize_multiplier(m)

    def per_ch(v, name, lo, hi):
        a = check_int_array(np.atleast_1d(v), name, lo, hi)
        if a.ndim != 1 or a.size not in (1, c):
            raise ValueError(f"{name} must be a scalar or have {c} per-channel values, got shape {a.shape}")
        return np.broadcast_to(a, (c,)).astype(np.int64)

    b = per_ch(bias, "bias", INT32_MIN, INT32_MAX)
    zi = per_ch(zp_in, "zp_in", INT8_MIN, INT8_MAX)
    ws = per_ch(w_sum, "w_sum", -128 * cfg.max_k, 128 * cfg.max_k)
    bias_eff = b - zi * ws
    p = neutral_params(cfg)
    p["bias"][:c] = bias_eff
    p["mult"][:c], p["shift"][:c] = q, s
    p["zp"][:c] = per_ch(zp_out, "zp_out", *_SIGNED9)
    p["act_min"][:c] = per_ch(act_min, "act_min", _CODE_MIN, _CODE_MAX)
    p["act_max"][:c] = per_ch(act_max, "act_max", _CODE_MIN, _CODE_MAX)
    if mode == "ort":
        p["mode"][:c], p["scale_f32"][:c] = MODE_ORT, sb
    if alpha is not None:
        am = np.atleast_1d(np.asarray(alpha, np.float64))
        if am.ndim != 1 or am.size not in (1, c):
            raise ValueError(f"alpha must be a scalar or have {c} per-channel values, got shape {am.shape}")
        aq, ash = quantize_multiplier(np.broadcast_to(am, (c,)))
        p["alpha_mult"][:c], p["alpha_shift"][:c], p["prelu"][:c] = aq, ash, 1
    p["lut_en"] = _bit(int(bool(lut_en)), "lut_en")
    return check_params(p, cfg.out_lanes, cfg.bias_width)


# ---------------------------------------------------------------------------
# The cycle model
# ---------------------------------------------------------------------------
@dataclass
class TileRecord:
    """What the model knows about one tile (index = order of its accepted last beat)."""

    index: int
    k: int                          # reduction beats accepted (incl. the last)
    accept_cycle: int               # cycle of the accepted last beat
    e: int                          # its enabled-cycle index n
    acc: np.ndarray                 # rows x out_lanes int64, exact
    params: dict                    # its params entry (the FIFO head when its rows enter the lanes)
    rows: list = field(default_factory=list)       # codes per row (filled at lane entry)
    out_cycles: list = field(default_factory=list)  # cycle of each row's out transfer


class ArrayModel:
    """Per-cycle model of ``hw.core.ArrayCore(cfg)``; see the module docstring.

    Attributes the tests/testbench may read (never write): ``cycle`` (cycles
    stepped), ``n`` (enabled cycles so far = n(cycle)), ``level``,
    ``claimed``, ``tiles`` (list of ``TileRecord``), ``transfers`` (list of
    ``(cycle, tile, row, data)`` for every out transfer), ``lut`` (table, -1 =
    never written).
    """

    def __init__(self, cfg: ArrayConfig):
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be an ArrayConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.cycle = 0
        self.n = 0
        self._fifo: deque[dict] = deque()
        self.claimed = 0
        self._recent_pushes: deque[int] = deque([0] * (PARAM_CREDIT_CYCLES - 1))   # params_fire of the last cycles
        self._prev_last_n: int | None = None
        self._beats_act: list[np.ndarray] = []
        self._beats_wgt: list[np.ndarray] = []
        self._entry: dict[int, tuple[int, int]] = {}     # n -> (tile, row) at the lanes' input
        self._out: dict[int, tuple[int, int]] = {}       # n -> (tile, row) on out
        self._lut_inflight: set[int] = set()            # lut_en tiles accepted, last row not yet transferred
        self.lut = np.full(256, -1, np.int64)
        self.tiles: list[TileRecord] = []
        self.transfers: list[tuple[int, int, int, list]] = []

    # ---- register views ----
    @property
    def level(self) -> int:
        """Entries in the params FIFO (register value of the current cycle)."""
        return len(self._fifo)

    @property
    def beats_pending(self) -> int:
        """Beats accepted for the tile in progress (its last beat not yet accepted)."""
        return len(self._beats_act)

    def idle(self) -> bool:
        """True when no tile is in progress or in flight and every accepted row has been transferred."""
        return not self._beats_act and not self._entry and not self._out

    # ---- combinational outputs of the current cycle ----
    def outputs(self, out_ready=1, in_last=0) -> dict:
        """This cycle's outputs without advancing: ``en``, ``in_ready``, ``params_ready``,
        ``lut_ready``, ``out_valid``, ``out_payload`` (``{"data": [out_lanes codes], "last": 0/1}``
        or None), ``out_tile``, ``out_row`` (None when not valid), ``cycle``, ``n``."""
        out_ready = _bit(out_ready, "out_ready")
        in_last = _bit(in_last, "in_last")
        cfg = self.cfg
        cur = self._out.get(self.n)
        out_valid = cur is not None
        en = (not out_valid) or bool(out_ready)
        gap_ok = self._prev_last_n is None or self.n - self._prev_last_n >= cfg.min_tile_cycles
        credit = self.level - self.claimed - sum(self._recent_pushes) > 0
        in_ready = en and (not in_last or (gap_ok and credit))
        payload = None
        if out_valid:
            t, r = cur
            payload = {"data": [int(v) for v in self.tiles[t].rows[r]], "last": int(r == cfg.rows - 1)}
        return {"cycle": self.cycle, "n": self.n, "en": int(en), "in_ready": int(in_ready),
                "params_ready": int(self.level < cfg.param_fifo_depth), "lut_ready": 1,
                "out_valid": int(out_valid), "out_payload": payload,
                "out_tile": cur[0] if cur else None, "out_row": cur[1] if cur else None,
                "tile_gap_ok": int(gap_ok), "param_credit": int(credit)}

    # ---- one clock cycle ----
    def step(self, in_valid=0, in_payload=None, params_valid=0, params_payload=None,
             lut_valid=0, lut_payload=None, out_ready=1) -> dict:
        """Drive one clock cycle; return its outputs (``outputs``) plus the transfers.

        ``in_payload``: ``{"act": rows ints in [-128, 127], "wgt": out_lanes ints in
        [cfg.weight_min, 127], "last": 0/1}`` (only ``last`` is read when
        ``in_valid`` = 0, because ``inp.ready`` depends on it; None = last 0).
        ``params_payload``: see ``check_params``. ``lut_payload``:
        ``{"addr": 0..255, "data": 0..255}``. Payloads are validated (ValueError)
        on the cycle they transfer; a LUT write while lut_en rows are in flight
        raises too.
        Signed fields are values, not bit patterns. Extra keys in the result:
        ``in_fire``, ``params_fire``, ``lut_fire``, ``out_fire`` (0/1), and
        ``accepted_tile`` (index of the tile whose last beat was accepted, or None).
        """
        cfg = self.cfg
        in_valid = _bit(in_valid, "in_valid")
        params_valid = _bit(params_valid, "params_valid")
        lut_valid = _bit(lut_valid, "lut_valid")
        in_last = 0
        if in_payload is not None or in_valid:
            if not isinstance(in_payload, dict):
                raise ValueError("in_payload must be a dict {'act', 'wgt', 'last'} when in_valid = 1")
            in_last = _bit(in_payload.get("last", 0), "in_payload.last")
        if lut_valid and not isinstance(lut_payload, dict):
            raise ValueError("lut_payload must be a dict {'addr', 'data'} when lut_valid = 1")
        ordy = _bit(out_ready, "out_ready")

        # Rows reaching the lanes' input in this enabled-cycle index take the FIFO head now
        # (the head cannot change before this index's enabled cycle: pops happen only then).
        self._bind_entry()
        res = self.outputs(ordy, in_last)
        en = res["en"]
        in_fire = in_valid & res["in_ready"]
        params_fire = params_valid & res["params_ready"]
        out_fire = res["out_valid"] & ordy
        accepted = None

        # Payloads are checked when they transfer (an offered beat that is not taken has no effect),
        # before any state of this cycle changes.
        if in_fire:
            act = check_int_array(in_payload.get("act"), "in_payload.act", INT8_MIN, INT8_MAX, ndim=1)
            wgt = check_int_array(in_payload.get("wgt"), "in_payload.wgt", cfg.weight_min, INT8_MAX, ndim=1)
            if act.size != cfg.rows or wgt.size != cfg.out_lanes:
                raise ValueError(f"in_payload.act must have rows = {cfg.rows} values and in_payload.wgt "
                                 f"out_lanes = {cfg.out_lanes} values, got {act.size} and {wgt.size}")
            if len(self._beats_act) >= cfg.max_k:
                raise ValueError(f"tile {len(self.tiles)} has more than max_k = {cfg.max_k} reduction beats "
                                 f"(the accumulators are exact only up to max_k): beat {cfg.max_k + 1} "
                                 f"accepted on cycle {self.cycle}")
        if params_fire:
            pp = check_params(params_payload, cfg.out_lanes, cfg.bias_width)
        if lut_valid:
            addr = check_positive_int(lut_payload.get("addr"), "lut_payload.addr", 0, 255)
            data = check_positive_int(lut_payload.get("data"), "lut_payload.data", 0, 255)
            if self._lut_inflight:
                raise ValueError(f"lut write on cycle {self.cycle} while rows of tile(s) "
                                 f"{sorted(self._lut_inflight)} (lut_en = 1) are in flight: "
                                 "the contract forbids changing the table")

        if out_fire:
            t, r = self._out[self.n]
            self.tiles[t].out_cycles.append(self.cycle)
            if r == cfg.rows - 1:
                self._lut_inflight.discard(t)
            self.transfers.append((self.cycle, t, r, res["out_payload"]["data"]))
        if en:
            ent = self._entry.pop(self.n, None)
            if ent is not None and ent[1] == cfg.rows - 1:
                self._fifo.popleft()                       # level - 1 from the next cycle
                self.claimed -= 1                          # claimed - 1 from the next cycle
            self._out.pop(self.n, None)
            if in_fire:
                self._beats_act.append(act)
                self._beats_wgt.append(wgt)
                if in_last:
                    accepted = self._accept_tile()
            self.n += 1
        if params_fire:
            self._fifo.append(pp)                          # visible from the next cycle
        if self._recent_pushes:
            self._recent_pushes.popleft()
            self._recent_pushes.append(params_fire)        # in the credit from PARAM_CREDIT_CYCLES on
        if lut_valid:
            self.lut[addr] = data                          # visible from the next cycle
        self.cycle += 1
        res.update(in_fire=int(in_fire), params_fire=int(params_fire), lut_fire=lut_valid,
                   out_fire=int(out_fire), accepted_tile=accepted)
        return res

    # ---- internals ----
    def _accept_tile(self) -> int:
        """The last beat was accepted on enabled cycle e = self.n: compute the tile and schedule its rows."""
        cfg = self.cfg
        e = self.n
        a = np.stack(self._beats_act, axis=1)              # rows x K
        w = np.stack(self._beats_wgt, axis=0)              # K x out_lanes
        acc = a @ w                                        # exact int64 (|acc| <= 2**14 * max_k)
        t = len(self.tiles)
        # its params: the first FIFO entry not claimed by an earlier tile (param_credit guaranteed one)
        p = self._fifo[self.claimed]
        self.tiles.append(TileRecord(index=t, k=a.shape[1], accept_cycle=self.cycle, e=e, acc=acc, params=p))
        if p["lut_en"]:
            self._lut_inflight.add(t)
        for r in range(cfg.rows):
            self._entry[e + cfg.array_latency + r] = (t, r)
        self.claimed += 1
        self._prev_last_n = e
        self._beats_act, self._beats_wgt = [], []
        return t

    def _bind_entry(self) -> None:
        ent = self._entry.get(self.n)
        if ent is None:
            return
        t, r = ent
        rec = self.tiles[t]
        if len(rec.rows) > r:
            return                                         # bound on an earlier (stalled) cycle of this index
        if not self._fifo:
            raise RuntimeError(f"model invariant broken: no params at the FIFO head for tile {t} row {r}")
        p = self._fifo[0]                                  # the row takes the FIFO head's params
        if p is not rec.params:
            raise RuntimeError(f"model invariant broken: tile {t} row {r} sees another FIFO head than its own entry")
        try:
            rec.rows.append(_lanes(rec.acc[r], p, self.lut))
        except ValueError as e:
            raise ValueError(f"tile {t} row {r} (lut_en = 1): {e}") from None
        self._out[self.n + self.cfg.latency - self.cfg.array_latency] = (t, r)


# ---------------------------------------------------------------------------
# A complete run with simple stream sources
# ---------------------------------------------------------------------------
def _pattern(p, name: str, rng: np.random.Generator) -> Callable[[int], int]:
    """0/1 per cycle: a probability in [0, 1], a callable(cycle), or a sequence (1 past its end)."""
    if callable(p):
        return lambda c: _bit(p(c), name)
    if isinstance(p, (float, int)) and not isinstance(p, bool):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"{name} probability must be in [0, 1], got {p}")
        return lambda c: int(p >= 1.0 or rng.random() < p)
    seq = [_bit(v, name) for v in np.asarray(p).ravel().tolist()]
    return lambda c: seq[c] if c < len(seq) else 1


def simulate(cfg: ArrayConfig, tiles: Sequence, params_list: Sequence, *, lut=None, seed: int = 0,
             in_valid=1.0, params_valid=1.0, out_ready=1.0, max_cycles: int | None = None,
             model: ArrayModel | None = None, trace: list | None = None) -> list[tuple[int, dict]]:
    """Stream ``tiles`` through an ``ArrayModel`` and return every out transfer as ``(cycle, payload)``.

    ``tiles``: sequence of ``(act rows x K, wgt K x out_lanes)``; ``params_list``:
    one params beat per tile (``check_params`` layouts). ``lut``: optional
    256-entry table written through the ``lut`` port on cycles 0..255 before
    any input beat is offered. ``in_valid``/``params_valid``/``out_ready``:
    per-cycle patterns (probability, callable(cycle) -> 0/1, or a 0/1
    sequence, 1 past its end), drawn from ``seed``. A source whose pattern is 1
    offers its next beat and holds it until accepted. Pass ``model`` (fresh,
    same cfg) to inspect its ``tiles``/``transfers`` afterwards. Pass a list as
    ``trace`` to get every cycle's ``step`` result, with what was driven under
    ``r["drive"]`` (``in_valid``, ``in_last``, ``params_valid``, ``lut_valid``, ``out_ready``).
    """
    if len(tiles) != len(params_list):
        raise ValueError(f"params_list must have one entry per tile: {len(tiles)} tiles, {len(params_list)} params")
    checked = [_check_tile(cfg, a, w) for a, w in tiles]
    plist = [check_params(p, cfg.out_lanes, cfg.bias_width) for p in params_list]
    table = None if lut is None else _check_lut(lut)
    if table is not None and np.any(table < 0):
        raise ValueError("lut values must lie in [0, 255]")
    m = ArrayModel(cfg) if model is None else model
    if m.cfg != cfg or m.cycle != 0:
        raise ValueError("model must be a fresh ArrayModel built with the same cfg")
    rng = np.random.default_rng(seed)
    pin, ppar, pout = (_pattern(p, n, rng) for p, n in ((in_valid, "in_valid"), (params_valid, "params_valid"),
                                                         (out_ready, "out_ready")))
    beats = [(a[:, k], w[k, :], int(k == a.shape[1] - 1)) for a, w in checked for k in range(a.shape[1])]
    n_rows = len(tiles) * cfg.rows
    start = 256 if table is not None else 0
    if max_cycles is None:
        max_cycles = start + 64 + 50 * (len(beats) + (cfg.rows + cfg.latency) * (len(tiles) + 1))
    out: list[tuple[int, dict]] = []
    bi = pi = 0
    hold_in = hold_par = False
    for c in range(max_cycles):
        if len(out) == n_rows:
            return out
        if not hold_in and bi < len(beats) and c >= start and pin(c):
            hold_in = True
        if not hold_par and pi < len(plist) and ppar(c):
            hold_par = True
        lv = int(table is not None and c < 256)
        inp = {"act": beats[bi][0], "wgt": beats[bi][1], "last": beats[bi][2]} if hold_in else None
        ordy = pout(c)
        r = m.step(in_valid=int(hold_in), in_payload=inp, params_valid=int(hold_par),
                   params_payload=plist[pi] if hold_par else None, lut_valid=lv,
                   lut_payload={"addr": c, "data": int(table[c])} if lv else None, out_ready=ordy)
        if trace is not None:
            r["drive"] = {"in_valid": int(hold_in), "in_last": inp["last"] if hold_in else 0,
                          "params_valid": int(hold_par), "lut_valid": lv, "out_ready": ordy}
            trace.append(r)
        if r["in_fire"]:
            bi, hold_in = bi + 1, False
        if r["params_fire"]:
            pi, hold_par = pi + 1, False
        if r["out_fire"]:
            out.append((c, r["out_payload"]))
    if len(out) == n_rows:
        return out
    raise RuntimeError(f"simulate: only {len(out)} of {n_rows} rows came out within max_cycles = {max_cycles} "
                       "(a pattern that never offers/accepts, or a model bug)")
