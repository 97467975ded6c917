"""Seeded stimulus for the ArrayCore testbench (``sim/tb_core.py``), and its functional reference.

A :class:`Stimulus` is everything one RTL run consumes, as plain NumPy arrays
so it round-trips through an ``.npz`` file (the testbench runs in the
simulator's process and receives the file's path in ``ANCHORLESS_STIM``):

* tiles: the reduction length ``k[t]``, activations ``act`` (rows x sum(k))
  and weights ``wgt`` (sum(k) x out_lanes), beat ``b`` carrying column ``b``;
* per-tile post-processing parameters (one value per output lane, plus
  ``lut_en`` per tile) in the port's units (docs/array.md "params");
* phases: tiles are grouped in phases; a phase may start by loading the
  256-entry LUT (the testbench drains the core first, the contract forbids
  changing the table while LUT rows are in flight);
* handshake patterns: per-cycle 0/1 arrays for ``inp.valid``, ``params.valid``,
  ``lut.valid`` and ``out.ready`` (bursty: segments with different
  probabilities, including long stalls and full-rate stretches). A source
  whose pattern bit is 1 offers its next beat and holds it until accepted.

:func:`reference_outputs` computes what the core must emit for each tile
(``tiles x rows x out_lanes`` codes, ``value & 0xFF``) from the lane
semantics of docs/array.md with ``golden.requant`` primitives (tflite lanes)
and plain NumPy float32 arithmetic (ort lanes, ``ort_float_requant``: the
floating-point statement the RTL and the golden model emulate in integers),
independently of the cycle model, so the testbench checks the order and count
of output beats (nothing lost, nothing duplicated) as well as their values.

:func:`make_stimulus` mixes random tiles with the corner cases the RTL must get
right: K = 1 and K < rows (the tile gap rule), long K (many packed chains),
chains of -128 x weight_min, zero points at both ends folded into the bias
(int8 and uint8 ranges), accumulators saturated by huge biases, the
INT32_MIN x (2**31 - 1) SRDHM, the left-shift saturation, PReLU on/off,
the LUT on/off with a loaded table, and ort-mode lanes (mixed with tflite
lanes in one tile; exact float32 ties, subnormal / largest-finite scales,
saturating products; ignored fields filled with random bits).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from golden._check import INT32_MAX, INT32_MIN
from golden.config import ArrayConfig
from golden.requant import multiply_by_quantized_multiplier

#: Per-lane parameter fields of a ``params`` beat, in docs/array.md order.
LANE_FIELDS = ("bias", "mult", "shift", "zp", "act_min", "act_max", "alpha_mult", "alpha_shift", "prelu",
               "mode", "scale_f32")
#: Lane ``mode`` values (docs/array.md "ort mode").
MODE_TFLITE, MODE_ORT = 0, 1
#: Allowed range of each lane field (the port widths of docs/array.md; bias depends on cfg).
MULT_MAX = 2**31 - 1
SHIFT_RANGE = (-31, 15)

_CFG_FIELDS = ("rows", "cols", "packing", "weight_min", "chain", "max_k", "param_fifo_depth")


@dataclass
class Stimulus:
    """One RTL run's input (see the module docstring). All arrays are int64 unless noted."""

    cfg: ArrayConfig
    seed: int
    k: np.ndarray                 # (T,)  beats per tile
    act: np.ndarray               # (rows, sum k)
    wgt: np.ndarray               # (sum k, out_lanes)
    params: dict                  # name -> (T, out_lanes) for LANE_FIELDS
    lut_en: np.ndarray            # (T,)
    phase: np.ndarray             # (T,)  non-decreasing phase index of each tile
    lut_tables: np.ndarray        # (P, 256) table loaded at the start of each phase (if lut_load)
    lut_load: np.ndarray          # (P,)  0/1
    inp_valid: np.ndarray         # (L,)  uint8 per-cycle patterns
    par_valid: np.ndarray
    lut_valid: np.ndarray
    out_ready: np.ndarray
    kinds: list = field(default_factory=list)   # (T,) description of each tile, for messages

    # ---- derived ----
    @property
    def n_tiles(self) -> int:
        return int(self.k.size)

    @property
    def n_beats(self) -> int:
        return int(self.k.sum())

    @property
    def macs(self) -> int:
        """MACs the run performs: sum over tiles of rows * out_lanes * K."""
        return int(self.k.sum()) * self.cfg.rows * self.cfg.out_lanes

    def beat_last(self) -> np.ndarray:
        """(sum k,) 1 on the final beat of each tile."""
        last = np.zeros(self.n_beats, np.int64)
        last[np.cumsum(self.k) - 1] = 1
        return last

    # ---- persistence ----
    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"p_{n}": v for n, v in self.params.items()}
        cfgd = dataclasses.asdict(self.cfg)
        cfg_arr = np.array([str(cfgd[n]) for n in _CFG_FIELDS])
        np.savez_compressed(path, cfg=cfg_arr, seed=self.seed, k=self.k, act=self.act.astype(np.int8),
                            wgt=self.wgt.astype(np.int8), lut_en=self.lut_en, phase=self.phase,
                            lut_tables=self.lut_tables, lut_load=self.lut_load, inp_valid=self.inp_valid,
                            par_valid=self.par_valid, lut_valid=self.lut_valid, out_ready=self.out_ready,
                            kinds=np.array(self.kinds if self.kinds else [""] * self.n_tiles), **arrays)
        return path

    @classmethod
    def load(cls, path) -> "Stimulus":
        z = np.load(path, allow_pickle=False)
        raw = dict(zip(_CFG_FIELDS, (str(s) for s in z["cfg"])))
        cfg = ArrayConfig(rows=int(raw["rows"]), cols=int(raw["cols"]), packing=raw["packing"],
                          weight_min=int(raw["weight_min"]),
                          chain=None if raw["chain"] == "None" else int(raw["chain"]),
                          max_k=int(raw["max_k"]), param_fifo_depth=int(raw["param_fifo_depth"]))
        params = {n: z[f"p_{n}"].astype(np.int64) for n in LANE_FIELDS}
        return cls(cfg=cfg, seed=int(z["seed"]), k=z["k"].astype(np.int64), act=z["act"].astype(np.int64),
                   wgt=z["wgt"].astype(np.int64), params=params, lut_en=z["lut_en"].astype(np.int64),
                   phase=z["phase"].astype(np.int64), lut_tables=z["lut_tables"].astype(np.int64),
                   lut_load=z["lut_load"].astype(np.int64), inp_valid=z["inp_valid"].astype(np.uint8),
                   par_valid=z["par_valid"].astype(np.uint8), lut_valid=z["lut_valid"].astype(np.uint8),
                   out_ready=z["out_ready"].astype(np.uint8), kinds=[str(s) for s in z["kinds"]])


# ---------------------------------------------------------------------------
# Functional reference
# ---------------------------------------------------------------------------
def tile_accumulators(stim: Stimulus) -> list[np.ndarray]:
    """Exact acc[i, l] = sum_k act[i, k] * wgt[k, l] of every tile (int64; K <= max_k keeps it exact)."""
    out, b = [], 0
    for kk in stim.k.tolist():
        out.append(stim.act[:, b:b + kk] @ stim.wgt[b:b + kk, :])
        b += kk
    return out


def ort_float_requant(t, scale_f32, zp, act_min, act_max) -> np.ndarray:
    """ort-mode lanes in plain NumPy float32: ``rint(clamp(float32(t) * scale, act_min - zp, act_max - zp)) + zp``.

    The hardware and the golden model emulate this with integers; this is the
    floating-point statement itself (IEEE float32 multiply, round half to
    even), an independent reference. ``scale_f32`` holds the float32 bits.
    """
    t = np.asarray(t, np.int64)
    s = np.asarray(scale_f32, np.int64).astype(np.uint32).view(np.float32)
    lo = (np.asarray(act_min) - zp).astype(np.float32)
    hi = (np.asarray(act_max) - zp).astype(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        f = t.astype(np.int32).astype(np.float32) * s
    return np.rint(np.clip(f, lo, hi)).astype(np.int64) + zp


def lane_postprocess(acc, bias, mult, shift, zp, act_min, act_max, alpha_mult, alpha_shift, prelu,
                     mode=MODE_TFLITE, scale_f32=0x3F800000):
    """docs/array.md lane semantics up to the clamp: returns q (int64), before the LUT and the & 0xFF.

    Every argument broadcasts (acc is rows x out_lanes, the rest per lane).
    Lanes with mode = 1 (ort) use ``ort_float_requant`` and ignore mult,
    shift and the PReLU fields.
    """
    t = np.clip(np.asarray(acc, np.int64) + bias, INT32_MIN, INT32_MAX)
    v = multiply_by_quantized_multiplier(t, mult, shift)
    va = multiply_by_quantized_multiplier(v, alpha_mult, alpha_shift)
    v = np.where((np.asarray(prelu) != 0) & (v < 0), va, v)
    q = np.clip(v + zp, act_min, act_max)
    ort = np.asarray(mode) == MODE_ORT
    if np.any(ort):
        q = np.where(ort, ort_float_requant(t, np.where(ort, scale_f32, 0x3F800000), zp, act_min, act_max), q)
    return q


def active_table(stim: Stimulus, phase: int) -> int:
    """Index of the LUT table in force during ``phase``: the last phase <= ``phase`` that loaded one."""
    loads = [p for p in range(phase + 1) if stim.lut_load[p]]
    if not loads:
        raise ValueError(f"no LUT table is loaded by phase {phase}")
    return loads[-1]


def reference_outputs(stim: Stimulus) -> np.ndarray:
    """(T, rows, out_lanes) output codes the core must emit, in order (value & 0xFF, LUT applied)."""
    res = np.zeros((stim.n_tiles, stim.cfg.rows, stim.cfg.out_lanes), np.int64)
    for t, acc in enumerate(tile_accumulators(stim)):
        p = {n: stim.params[n][t][None, :] for n in LANE_FIELDS}
        q = lane_postprocess(acc, **p)
        code = q & 0xFF
        if stim.lut_en[t]:
            code = stim.lut_tables[active_table(stim, int(stim.phase[t]))][code]
        res[t] = code
    return res


# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------
def _bitlen(v: int) -> int:
    return int(abs(int(v))).bit_length()


class _Gen:
    def __init__(self, cfg: ArrayConfig, rng: np.random.Generator):
        self.cfg, self.rng = cfg, rng
        self.R, self.L = cfg.rows, cfg.out_lanes
        self.bias_lim = 2 ** (cfg.bias_width - 1)
        self.tiles: list[tuple[np.ndarray, np.ndarray, dict, int, str]] = []

    # --- operands ---
    def operands(self, kind: str, K: int):
        r, R, L, wmin = self.rng, self.R, self.L, self.cfg.weight_min
        if kind == "random":
            return r.integers(-128, 128, (R, K)), r.integers(wmin, 128, (K, L))
        if kind == "chain_max":       # largest positive products: -128 * weight_min
            return np.full((R, K), -128), np.full((K, L), wmin)
        if kind == "chain_min":       # most negative products: -128 * 127
            return np.full((R, K), -128), np.full((K, L), 127)
        if kind == "chain_mix":       # lanes alternate between the two extremes (hi/lo fields of one DSP)
            w = np.where(np.arange(L) % 2 == 0, 127, wmin)
            return np.full((R, K), -128), np.broadcast_to(w, (K, L)).copy()
        if kind == "extremes":
            vals = np.array([-128, -127, -1, 0, 1, 126, 127])
            w = vals[r.integers(0, vals.size, (K, L))]
            return vals[r.integers(0, vals.size, (R, K))], np.where(w < wmin, wmin, w)
        if kind == "zero":
            return np.zeros((R, K), np.int64), r.integers(wmin, 128, (K, L))
        raise ValueError(f"unknown operand kind {kind!r}")

    # --- parameters ---
    def clamp(self, n: int):
        """(zp, act_min, act_max) per lane: int8/uint8 ranges, ReLU-style, narrow, zero points at both ends."""
        r = self.rng
        zp, lo, hi = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
        for i in range(n):
            qmin, qmax = ((-128, 127), (0, 255))[int(r.integers(0, 2))]
            mode = int(r.integers(0, 5))
            z = int(r.choice([qmin, qmax, int(r.integers(qmin, qmax + 1))]))
            if mode <= 1:
                a, b = qmin, qmax
            elif mode == 2:      # ReLU
                a, b = max(qmin, z), qmax
            elif mode == 3:      # ReLU6-like
                a, b = max(qmin, z), min(qmax, z + int(r.integers(0, 60)))
            else:                # narrow arbitrary range
                a = int(r.integers(qmin, qmax + 1))
                b = int(r.integers(a, qmax + 1))
            zp[i], lo[i], hi[i] = z, a, b
        return zp, lo, hi

    def scale_for(self, t_abs: np.ndarray):
        """(mult, shift) per lane that map |t| ~ t_abs onto roughly the 8-bit range, with jitter."""
        r = self.rng
        n = t_abs.size
        mult = r.integers(2**30, 2**31, n)
        bl = np.array([_bitlen(v) for v in t_abs])
        shift = np.clip(7 - bl + r.integers(-2, 3, n), *SHIFT_RANGE)
        return mult, shift

    def ort_scales(self, t_abs: np.ndarray, edge: bool) -> np.ndarray:
        """float32 bits per lane: a scale mapping |t| ~ t_abs onto ~8 bits, or (edge) extreme/tie scales."""
        r = self.rng
        n = t_abs.size
        bl = np.array([_bitlen(v) for v in t_abs])
        f = (1.0 + r.random(n)) * np.exp2(6.0 - bl + r.integers(-2, 3, n))
        bits = f.astype(np.float32).view(np.uint32).astype(np.int64)
        if edge:
            # exact ties (x.5 products: round half to even), 1.0, the smallest subnormal, a subnormal,
            # the largest finite float32 (saturates), a huge and a tiny normal scale
            special = np.array([0x3F000000, 0x3E800000, 0x3FC00000, 0x3F800000, 0x00000001, 0x00345678,
                                0x7F7FFFFF, 0x5F000000, 0x20000000], np.int64)
            bits = np.where(r.random(n) < 0.8, special[r.integers(0, special.size, n)], bits)
        return bits

    def params(self, mode: str, acc: np.ndarray) -> dict:
        r, L = self.rng, self.L
        col_sum_w = None  # filled by caller for folding
        zp, lo, hi = self.clamp(L)
        bias = r.integers(-2**20, 2**20, L)
        p = {"bias": bias, "zp": zp, "act_min": lo, "act_max": hi,
             "alpha_mult": r.integers(2**30, 2**31, L), "alpha_shift": r.integers(-8, 1, L),
             "prelu": r.integers(0, 2, L), "mode": np.zeros(L, np.int64),
             # ignored on tflite lanes: any 32-bit pattern (the RTL must not look at it)
             "scale_f32": r.integers(0, 2**32, L)}
        if mode == "typical":
            t_abs = np.abs(acc + bias).max(axis=0)
            p["mult"], p["shift"] = self.scale_for(t_abs)
        elif mode in ("sat_pos", "sat_neg"):
            big = self.bias_lim - 1 if mode == "sat_pos" else -self.bias_lim
            p["bias"] = np.full(L, big)
            p["mult"] = r.choice(np.array([MULT_MAX, 2**30, int(r.integers(0, 2**31))]), L)
            p["shift"] = r.choice(np.array([0, 15, -31, -24, int(r.integers(-31, 16))]), L)
        elif mode == "int32_min":
            # t saturates to / lands exactly on INT32_MIN; SRDHM(INT32_MIN, 2**31 - 1); PReLU re-saturates.
            exact = INT32_MIN - acc.min(axis=0)
            p["bias"] = np.where(r.random(L) < 0.5, exact, -self.bias_lim + int(r.integers(0, 1000)))
            p["mult"] = np.full(L, MULT_MAX)
            p["shift"] = r.choice(np.array([0, 0, 1, 15, -1]), L)
            p["prelu"] = np.ones(L, np.int64)
            p["alpha_mult"] = r.choice(np.array([MULT_MAX, 2**30, 0, 1]), L)
            p["alpha_shift"] = r.choice(np.array([15, 0, -31, 3]), L)
        elif mode == "mult_edge":
            p["mult"] = r.choice(np.array([0, 1, 2**30, MULT_MAX]), L)
            p["shift"] = r.choice(np.array([-31, -30, 0, 14, 15]), L)
            p["alpha_mult"] = r.choice(np.array([0, 1, 2**30, MULT_MAX]), L)
            p["alpha_shift"] = r.choice(np.array([-31, 0, 15]), L)
        elif mode in ("ort", "ort_edge"):
            # ort lanes (a random subset, at least one): mult/shift/alpha ignored (random), prelu = 0
            ort = r.random(L) < 0.7
            ort[int(r.integers(0, L))] = True
            p["mult"], p["shift"] = r.integers(0, 2**31, L), r.integers(SHIFT_RANGE[0], SHIFT_RANGE[1] + 1, L)
            p["mode"] = ort.astype(np.int64)
            p["prelu"] = np.where(ort, 0, p["prelu"])
            p["scale_f32"] = np.where(ort, self.ort_scales(np.abs(acc + bias).max(axis=0), mode == "ort_edge"),
                                      p["scale_f32"])
        else:
            raise ValueError(f"unknown params mode {mode!r}")
        p = {k: np.asarray(v, np.int64) for k, v in p.items()}
        p["bias"] = np.clip(p["bias"], -self.bias_lim, self.bias_lim - 1)
        return p

    def fold_zero_point(self, act: np.ndarray, wgt: np.ndarray, p: dict) -> np.ndarray:
        """Host-side zero-point folding: uint8/int8 input with zp at either end, bias -= zp' * sum(w)."""
        r = self.rng
        dtype = ("int8", "uint8")[int(r.integers(0, 2))]
        zp_in = int(r.choice([-128, 127, 0])) if dtype == "int8" else int(r.choice([0, 255, 128]))
        zp_dev = zp_in - 128 if dtype == "uint8" else zp_in      # MSB flip for uint8: x - 128, zp - 128
        p["bias"] = np.clip(p["bias"] - zp_dev * wgt.sum(axis=0), -self.bias_lim, self.bias_lim - 1)
        return p

    def add(self, kind: str, K: int, pmode: str, *, fold: bool = False, lut_en: int = 0):
        act, wgt = self.operands(kind, K)
        acc = act @ wgt
        p = self.params(pmode, acc)
        if fold:
            p = self.fold_zero_point(act, wgt, p)
            if pmode == "typical":
                p["mult"], p["shift"] = self.scale_for(np.abs(acc + p["bias"]).max(axis=0))
            elif pmode == "ort":
                ort = p["mode"] == MODE_ORT
                p["scale_f32"] = np.where(ort, self.ort_scales(np.abs(acc + p["bias"]).max(axis=0), False),
                                          p["scale_f32"])
        self.tiles.append((act, wgt, p, lut_en, f"{kind}/K={K}/{pmode}{'/fold' if fold else ''}"
                                                  f"{'/lut' if lut_en else ''}"))


def _pattern(rng: np.random.Generator, n: int, probs) -> np.ndarray:
    """Bursty 0/1 pattern: segments of 8..256 cycles, each with a probability drawn from ``probs``."""
    out = np.empty(n, np.uint8)
    i = 0
    while i < n:
        seg = int(rng.integers(8, 257))
        p = float(rng.choice(probs))
        out[i:i + seg] = rng.random(min(seg, n - i)) < p
        i += seg
    return out


def make_stimulus(cfg: ArrayConfig, seed: int, *, n_random: int = 24, long_k: int = 300,
                  backpressure: bool = True) -> Stimulus:
    """A mixed run: three phases (no LUT, LUT table A, LUT table B) of random and corner tiles.

    n_random   random tiles per phase (K drawn from {1, rows-1, rows, rows+1, 2..4*rows, 1..64})
    long_k     K of the long tiles (many packed chains; saturating chain values)
    backpressure  False: every pattern is all ones (full-rate, for throughput runs)
    """
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    if isinstance(n_random, bool) or not isinstance(n_random, int) or n_random < 0:
        raise ValueError(f"n_random must be an integer >= 0, got {n_random!r}")
    if isinstance(long_k, bool) or not isinstance(long_k, int) or not (1 <= long_k <= cfg.max_k):
        raise ValueError(f"long_k must be an integer in [1, {cfg.max_k}], got {long_k!r}")
    rng = np.random.default_rng(seed)
    g = _Gen(cfg, rng)
    R = cfg.rows
    chain = cfg.chain or 1
    k_choices = sorted({1, max(1, R - 1), R, R + 1, 2, chain, chain + 1, 2 * chain + 1})
    phase_of: list[int] = []

    def random_tiles(n: int, lut: bool):
        for _ in range(n):
            c = int(rng.integers(0, 4))
            K = (int(rng.choice(k_choices)) if c == 0 else int(rng.integers(2, 4 * R + 2)) if c == 1
                 else int(rng.integers(1, 65)))
            kind = str(rng.choice(["random", "random", "random", "extremes", "zero"]))
            pmode = str(rng.choice(["typical", "typical", "typical", "mult_edge", "ort", "ort", "ort_edge"]))
            g.add(kind, K, pmode, fold=bool(rng.random() < 0.4), lut_en=int(lut and rng.random() < 0.5))

    # phase 0: corners without the LUT
    g.add("random", 1, "typical")
    g.add("random", 1, "typical")                  # back-to-back K=1: gap rule holds the second last beat
    g.add("chain_max", long_k, "typical")
    g.add("chain_min", long_k, "typical")
    g.add("chain_max", chain * 3 + 1, "sat_pos")
    g.add("chain_min", max(1, R - 1), "sat_neg")
    g.add("chain_mix", long_k // 3 + 2, "typical")
    g.add("extremes", long_k // 2 + 1, "int32_min")
    g.add("random", max(1, R // 2), "int32_min")
    g.add("random", R + 3, "mult_edge")
    g.add("zero", 3, "sat_pos", fold=True)
    g.add("random", long_k, "typical", fold=True)
    g.add("random", R + 2, "ort")
    g.add("extremes", 2 * R + 1, "ort_edge")
    g.add("chain_max", long_k // 2 + 3, "ort_edge")
    g.add("random", 1, "ort", fold=True)
    random_tiles(n_random, lut=False)
    phase_of += [0] * len(g.tiles)
    # phase 1 and 2: LUT loaded, tiles with and without lut_en
    for ph in (1, 2):
        n0 = len(g.tiles)
        g.add("random", 5, "typical", lut_en=1)
        g.add("extremes", R + 1, "sat_neg", lut_en=1)
        g.add("random", 1, "mult_edge", lut_en=1)
        g.add("random", R, "ort", lut_en=1)
        random_tiles(n_random // 2 + 1, lut=True)
        phase_of += [ph] * (len(g.tiles) - n0)

    tables = np.stack([np.zeros(256, np.int64), rng.integers(0, 256, 256), rng.permutation(256)])
    lut_load = np.array([0, 1, 1], np.int64)
    act = np.concatenate([t[0] for t in g.tiles], axis=1).astype(np.int64)
    wgt = np.concatenate([t[1] for t in g.tiles], axis=0).astype(np.int64)
    k = np.array([t[0].shape[1] for t in g.tiles], np.int64)
    params = {n: np.stack([t[2][n] for t in g.tiles]).astype(np.int64) for n in LANE_FIELDS}
    lut_en = np.array([t[3] for t in g.tiles], np.int64)
    kinds = [t[4] for t in g.tiles]

    # Patterns long enough for the whole run at the slowest segment mix; the testbench treats the
    # end of a pattern as "all ones" and has its own deadlock limit.
    n = int(4 * (k.sum() + len(k) * R) + 3 * 256 + 20 * (cfg.latency + R) + 1000)
    if backpressure:
        inp_valid = _pattern(rng, n, [1.0, 1.0, 0.9, 0.5, 0.15])
        par_valid = _pattern(rng, n, [1.0, 0.7, 0.3, 0.05])
        lut_valid = _pattern(rng, n, [1.0, 0.6])
        out_ready = _pattern(rng, n, [1.0, 1.0, 0.9, 0.5, 0.1, 0.0])
    else:
        inp_valid = par_valid = lut_valid = out_ready = np.ones(n, np.uint8)
    stim = Stimulus(cfg=cfg, seed=seed, k=k, act=act, wgt=wgt, params=params, lut_en=lut_en,
                    phase=np.array(phase_of, np.int64), lut_tables=tables, lut_load=lut_load,
                    inp_valid=inp_valid, par_valid=par_valid, lut_valid=lut_valid, out_ready=out_ready,
                    kinds=kinds)
    check_stimulus(stim)
    return stim


def make_throughput_stimulus(cfg: ArrayConfig, seed: int, n_tiles: int, k: int) -> Stimulus:
    """Random full-rate tiles of one K (no backpressure, no LUT; tflite and ort lanes): the bench's workload."""
    rng = np.random.default_rng(seed)
    g = _Gen(cfg, rng)
    for _ in range(n_tiles):
        g.add("random", k, "typical" if rng.random() < 0.6 else "ort", fold=bool(rng.random() < 0.3))
    act = np.concatenate([t[0] for t in g.tiles], axis=1).astype(np.int64)
    wgt = np.concatenate([t[1] for t in g.tiles], axis=0).astype(np.int64)
    ks = np.full(n_tiles, k, np.int64)
    params = {n: np.stack([t[2][n] for t in g.tiles]).astype(np.int64) for n in LANE_FIELDS}
    n = int(2 * (ks.sum() + n_tiles * cfg.rows) + 20 * (cfg.latency + cfg.rows) + 1000)
    ones = np.ones(n, np.uint8)
    stim = Stimulus(cfg=cfg, seed=seed, k=ks, act=act, wgt=wgt, params=params,
                    lut_en=np.zeros(n_tiles, np.int64), phase=np.zeros(n_tiles, np.int64),
                    lut_tables=np.zeros((1, 256), np.int64), lut_load=np.zeros(1, np.int64),
                    inp_valid=ones, par_valid=ones, lut_valid=ones, out_ready=ones,
                    kinds=[t[4] for t in g.tiles])
    check_stimulus(stim)
    return stim


def check_stimulus(stim: Stimulus) -> None:
    """Raise ValueError if any value is outside what the ports / contract allow."""
    cfg = stim.cfg
    T, L, R = stim.n_tiles, cfg.out_lanes, cfg.rows

    def rng_check(name, a, lo, hi):
        a = np.asarray(a)
        if a.size and (a.min() < lo or a.max() > hi):
            raise ValueError(f"{name} values must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}]")

    if stim.k.shape != (T,) or T == 0:
        raise ValueError(f"k must be a non-empty 1-D array, got shape {stim.k.shape}")
    rng_check("k", stim.k, 1, cfg.max_k)
    if stim.act.shape != (R, stim.n_beats) or stim.wgt.shape != (stim.n_beats, L):
        raise ValueError(f"act/wgt shapes {stim.act.shape}/{stim.wgt.shape} do not match rows={R}, "
                         f"out_lanes={L}, sum(k)={stim.n_beats}")
    rng_check("act", stim.act, -128, 127)
    rng_check("wgt", stim.wgt, cfg.weight_min, 127)
    lim = 2 ** (cfg.bias_width - 1)
    ranges = {"bias": (-lim, lim - 1), "mult": (0, MULT_MAX), "shift": SHIFT_RANGE, "zp": (-256, 255),
              "act_min": (-128, 255), "act_max": (-128, 255), "alpha_mult": (0, MULT_MAX),
              "alpha_shift": SHIFT_RANGE, "prelu": (0, 1), "mode": (0, 1), "scale_f32": (0, 2**32 - 1)}
    for n in LANE_FIELDS:
        if stim.params[n].shape != (T, L):
            raise ValueError(f"params[{n!r}] must have shape {(T, L)}, got {stim.params[n].shape}")
        rng_check(f"params[{n!r}]", stim.params[n], *ranges[n])
    lo, hi = stim.params["act_min"], stim.params["act_max"]
    if np.any(lo > hi) or np.any(hi - lo > 255):
        raise ValueError("params act_min/act_max must satisfy act_min <= act_max <= act_min + 255")
    ort = stim.params["mode"] == MODE_ORT
    sf = stim.params["scale_f32"]
    if np.any(ort & ((sf < 1) | (sf > 0x7F7FFFFF))):
        raise ValueError("params['scale_f32'] must encode a positive finite float32 on ort lanes (mode = 1)")
    if np.any(ort & (stim.params["prelu"] != 0)):
        raise ValueError("params['prelu'] must be 0 on ort lanes (mode = 1)")
    rng_check("lut_en", stim.lut_en, 0, 1)
    if np.any(np.diff(stim.phase) < 0):
        raise ValueError("phase must be non-decreasing")
    rng_check("phase", stim.phase, 0, stim.lut_tables.shape[0] - 1)
    rng_check("lut_tables", stim.lut_tables, 0, 255)
    for t in np.nonzero(stim.lut_en)[0]:
        if not any(stim.lut_load[p] for p in range(stim.phase[t] + 1)):
            raise ValueError(f"tile {t} has lut_en=1 before any LUT load")


def coverage(stim: Stimulus) -> dict:
    """Counts of the corner cases a stimulus exercises (so tests can insist none silently vanished).

    Keys: tiles with K = 1, 1 < K < rows, K > 4 * chain (many packed chains); lanes x rows whose
    exact ``acc + bias`` lies outside int32 below / above (saturated to INT32_MIN / MAX) or lands on
    INT32_MIN exactly; the saturating left shift clipping; PReLU applied (prelu = 1 and v < 0) and
    bypassed; results clamped at act_min / act_max; uint8 output ranges (act_max > 127); tiles with
    lut_en; chains of the extreme products (-128 * weight_min); zero-point ends (zp = -128 / 255);
    ort lanes (mode = 1): lane-rows, exact float32 ties (x.5 products, round half to even), products
    clamped, subnormal scales.
    """
    cfg = stim.cfg
    R = cfg.rows
    chain = cfg.chain or 1
    cov = {"k1": int(np.sum(stim.k == 1)), "k_lt_rows": int(np.sum((stim.k > 1) & (stim.k < R))),
           "k_long": int(np.sum(stim.k > 4 * chain)), "lut_tiles": int(stim.lut_en.sum()),
           "sat_low": 0, "sat_high": 0, "int32_min_exact": 0, "lshift_sat": 0, "prelu_applied": 0,
           "prelu_bypassed": 0, "clamp_low": 0, "clamp_high": 0, "uint8_range": 0, "extreme_chain": 0,
           "zp_ends": 0, "ort_lanes": 0, "ort_ties": 0, "ort_clamped": 0, "ort_subnormal_scale": 0}
    b = 0
    for t, acc in enumerate(tile_accumulators(stim)):
        kk = int(stim.k[t])
        p = {n: stim.params[n][t][None, :] for n in LANE_FIELDS}
        s = acc + p["bias"]
        cov["sat_low"] += int(np.sum(s < INT32_MIN))
        cov["sat_high"] += int(np.sum(s > INT32_MAX))
        cov["int32_min_exact"] += int(np.sum(s == INT32_MIN))
        tt = np.clip(s, INT32_MIN, INT32_MAX)
        left = np.maximum(p["shift"], 0)
        cov["lshift_sat"] += int(np.sum((left > 0) & (tt != 0) & (np.abs(tt.astype(object) * 2 ** left.astype(object))
                                                                  > INT32_MAX)))
        v = multiply_by_quantized_multiplier(tt, p["mult"], p["shift"])
        ort = np.broadcast_to(p["mode"] == MODE_ORT, tt.shape)
        cov["prelu_applied"] += int(np.sum((p["prelu"] != 0) & (v < 0) & ~ort))
        cov["prelu_bypassed"] += int(np.sum((p["prelu"] == 0) & (v < 0) & ~ort))
        cov["ort_lanes"] += int(ort.sum())
        if ort.any():
            sc = np.where(p["mode"] == MODE_ORT, p["scale_f32"], 0x3F800000).astype(np.uint32).view(np.float32)
            with np.errstate(over="ignore", under="ignore"):
                f = tt.astype(np.int32).astype(np.float32) * sc
            fin = np.isfinite(f)
            frac = np.where(fin, f - np.floor(np.where(fin, f, 0)), 0)
            cov["ort_ties"] += int(np.sum(ort & fin & (frac == 0.5)))
            out_lo = f < (p["act_min"] - p["zp"])
            out_hi = f > (p["act_max"] - p["zp"])
            cov["ort_clamped"] += int(np.sum(ort & (out_lo | out_hi)))
            cov["ort_subnormal_scale"] += int(np.sum(ort & np.broadcast_to(
                (p["mode"] == MODE_ORT) & (p["scale_f32"] < 0x00800000), tt.shape)))
        q = lane_postprocess(acc, **p)
        cov["clamp_low"] += int(np.sum((q == p["act_min"]) & (p["act_min"] > -128)))
        cov["clamp_high"] += int(np.sum((q == p["act_max"]) & (p["act_max"] < 255)))
        cov["uint8_range"] += int(np.sum(np.broadcast_to(p["act_max"] > 127, q.shape)))
        cov["zp_ends"] += int(np.sum(np.isin(p["zp"], (-128, 255))))
        a, w = stim.act[:, b:b + kk], stim.wgt[b:b + kk, :]
        if kk > chain and np.all(a == -128) and np.any(np.all(w == cfg.weight_min, axis=0)):
            cov["extreme_chain"] += 1
        b += kk
    return cov
