"""Lower accelerator layers (firmware.graph ArrayNodes) to tile programs for one ArrayConfig.

Pipeline: ``lower`` (layer -> GEMM jobs) -> ``schedule`` (jobs -> RUN order,
bank allocation, commands) -> ``compile_layer`` (commands + payload words +
where every output row goes). ``plan_layer`` is the same without data: the
geometry, the command list and the word counts (what bench/network.py times).

Design decisions (details in docs/firmware.md)
==============================================

im2col on the host. The array is output-stationary: a tile is ``rows`` output
pixels x ``out_lanes`` channels and its reduction K = C/groups*kh*kw arrives as
K beats, beat j carrying A[:, j] (one input value per pixel) and W[j, :]. The
host therefore sends the activation matrix A (P x K) already unrolled: the
top needs no address generators, line buffers or padding logic, only linear
buffers. The cost is bandwidth: each input value is sent kh*kw/(sh*sw) times
(9x for a 3x3 stride-1 conv), and an ``act`` entry (``rows`` bytes) takes a
whole bus word (entries never share words, golden.isa), so the activation
stream is one word per beat -- the same rate the array consumes beats. That is
why activations must be reused across channel blocks (below).

uint8 activations are flipped to int8 (x - 128, an XOR of the MSB) with the
zero point moved to zp - 128; padded positions hold that zero point (real 0)
and the zero point is folded into the lane bias: ``bias_eff = bias - zp' *
sum_k W[k, c]`` (golden.array_model.params_from_layer, TFLite requantization,
per channel).

Jobs. A layer becomes GEMM jobs ``out[p, c] = lane(sum_k A[p, k] W[k, c])``:

* Conv2d, groups == 1: one job. Fully connected: one job, a 1x1 conv over N
  "pixels".
* Grouped / depthwise convs: when a group has fewer output channels (og) than
  out_lanes, ``gp = min(out_lanes // og, kmax // Kg)`` groups are packed into
  one job with a block-diagonal weight matrix (zero weights across groups) and
  K = gp * Kg. An output-stationary array wastes the zero lanes either way --
  depthwise (og = 1, 16 lanes) runs at 1/16 utilization whether one lane of 16
  is used per program or 16 lanes each use 1/16 of the K beats -- but packing
  sends each output row once instead of 16 times (16x less ``dout``), has 16x
  fewer RUNs/params and gives K = 16*9 >= rows (no tile-gap stalls). Groups with
  og >= out_lanes get one job each.
* ConvTranspose2d: the 4 (in general sh*sw) sub-pixel convolutions. Output
  phase (a, b) (Y = sh*y + a) receives only the taps i with (a + pt - i*dh) %
  sh == 0, at input row y + (a + pt - i*dh)/sh: a stride-1 conv with a
  ceil(kh/sh) x ceil(kw/sw) kernel. For CenterNet's k4 s2 p1 that is 2x2 taps,
  K = 4*C_in. Lowering to a stride-1 conv over a zero-inserted input would
  stream 4x more beats (K = 16*C_in, 3/4 of them zeros) for the same outputs.

Host ops. Max pool, directional max, residual add, concat, upsample (and
standalone PReLU/LUT/ReLU that could not be fused) run on the host: they do
no MACs -- each output reads 1..9 inputs -- so they are bound by memory
traffic; sending their operands over the 16-byte bus and back would cost more
than computing them where the data already is, and the array's only asset is
its MAC rate.

Schedule. A job has Pb = ceil(P/rows) pixel tiles and Cb = ceil(L/out_lanes)
channel blocks; every (tile, block) pair is computed once (K beats). A RUN
computes one channel block over an "act chunk" of up to pc = act_depth // K
tiles (<= out_depth // rows) with one weight block (reused by all its tiles).
A "weight chunk" is up to cc = min(wgt_depth // K, param_depth) channel blocks
(weights + their params sets, written together, params bank = weight bank).
Banks: before a RUN whose chunk is not resident, the chunk is written into the
bank NOT used by the previous RUN (which is running or queued while the write
streams: double buffering; the interlock makes the write wait for the RUN
before it). Outputs alternate banks per RUN and ``READ_OUT`` of RUN n is issued
after RUN n+1, so the job queue never runs dry while the decoder waits for a
result. The RUN order is chosen among four (``ORDERS``) by the modelled time
(firmware.report.timeline): acts or weights outer, with m = 1 or 2 resident
outer chunks. With ``acts_outer`` each act chunk is written once and weight
chunks stream past it (snake order, so the last weight chunk is reused across
the boundary); with m = 2 two act chunks (one per bank) share every streamed
weight chunk, halving weight traffic -- this is what keeps K = 4608 layers
(3x3 over 512 channels; one tile fills an act bank) from being stream-bound.

K limit: K <= min(max_k, wgt_depth, act_depth) (golden.isa.k_max); a layer
needing more raises ValueError naming the layer and the limit (the array
cannot split a reduction: each tile leaves requantized).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from golden import isa
from golden.array_model import ORT_LANE_FIELDS, params_from_layer
from golden.config import ArrayConfig
from golden.isa import Op

from .graph import ArrayNode, Conv2d, ConvTranspose2d, FullyConnected

__all__ = ["Job", "Command", "LayerPlan", "Program", "ORDERS", "kmax", "convt_phases", "lower", "schedule",
           "plan_layer", "compile_layer", "device_lut", "hw_lane_fields", "check_mode_supported"]

ORDERS = (("acts_outer", 1), ("acts_outer", 2), ("weights_outer", 1), ("weights_outer", 2))


def kmax(cfg: ArrayConfig) -> int:
    """Longest reduction a tile may have: min(max_k, wgt_depth, act_depth) (= golden.isa.k_max)."""
    return isa.k_max(cfg)


# --------------------------------------------------------------------------- jobs


@dataclass
class Job:
    """One GEMM on the array: out[p, c] = lane_c(sum_k A[p, k] * W[k, c]), p < P, c < L.

    ``A``/``W``/``params`` are None in data-free plans. ``channels``: output
    channel of each of the L columns; ``place(out, y)`` writes the job's result
    y (P x L codes) into the layer output. ``macs``: true MACs (zero weights of
    packed groups excluded).
    """

    name: str
    P: int
    K: int
    L: int
    macs: int
    channels: np.ndarray
    place: Callable | None = None
    A: np.ndarray | None = None          # P x K int8 (centred activations)
    W: np.ndarray | None = None          # K x L int8
    params: list | None = None           # one params beat per channel block

    def tiles(self, cfg: ArrayConfig) -> int:
        return -(-self.P // cfg.rows)

    def blocks(self, cfg: ArrayConfig) -> int:
        return -(-self.L // cfg.out_lanes)


def convt_phases(node: ConvTranspose2d, in_shape) -> list[dict]:
    """Sub-pixel decomposition of a transposed conv: one stride-1 correlation per output phase.

    Phase (a, b) holds outputs Y = a + sh*y, X = b + sw*x. Tap i (of kh)
    contributes to phase a iff (a + pt - i*dh) % sh == 0, reading input row
    y + dy with dy = (a + pt - i*dh) // sh. Returns dicts with a, b, ho, wo
    (phase output size), taps_h [(i, dy)], taps_w [(j, dx)]; phases without
    outputs are omitted.
    """
    n, c, h, w = in_shape
    _, _, ho, wo = node.out_shape([in_shape])
    _, _, kh, kw = node.weight.shape
    sh, sw = node.stride
    dh, dw = node.dilation
    pt, pl = node.padding[0], node.padding[1]
    out = []
    for a in range(sh):
        hoa = len(range(a, ho, sh))
        taps_h = [(i, (a + pt - i * dh) // sh) for i in range(kh) if (a + pt - i * dh) % sh == 0]
        for b in range(sw):
            wob = len(range(b, wo, sw))
            if hoa == 0 or wob == 0:
                continue
            taps_w = [(j, (b + pl - j * dw) // sw) for j in range(kw) if (b + pl - j * dw) % sw == 0]
            out.append(dict(a=a, b=b, ho=hoa, wo=wob, taps_h=taps_h, taps_w=taps_w))
    return out


def _centre(x: np.ndarray, zp: int) -> tuple[np.ndarray, int]:
    """int8 view of activations for the array: uint8 x -> x - 128 (MSB flip), zp -> zp - 128."""
    if x.dtype == np.uint8:
        return (x ^ np.uint8(0x80)).view(np.int8), zp - 128
    return x, zp


def _gather(xc: np.ndarray, pad: int, offs_h, offs_w, step, ho: int, wo: int) -> np.ndarray:
    """(N, C, len(offs_h), len(offs_w), ho, wo): xc[n, c, y*step_h + oh, x*step_w + ow], ``pad`` outside."""
    n, c, h, w = xc.shape
    sh, sw = step
    lo_h, hi_h = min(offs_h), (ho - 1) * sh + max(offs_h)
    lo_w, hi_w = min(offs_w), (wo - 1) * sw + max(offs_w)
    bh, ah = max(0, -lo_h), max(0, hi_h - (h - 1))
    bw, aw = max(0, -lo_w), max(0, hi_w - (w - 1))
    xp = np.pad(xc, ((0, 0), (0, 0), (bh, ah), (bw, aw)), constant_values=np.int8(pad)) if bh or ah or bw or aw else xc
    out = np.empty((n, c, len(offs_h), len(offs_w), ho, wo), np.int8)
    for i, oh in enumerate(offs_h):
        r0 = oh + bh
        for j, ow in enumerate(offs_w):
            c0 = ow + bw
            out[:, :, i, j] = xp[:, :, r0:r0 + (ho - 1) * sh + 1:sh, c0:c0 + (wo - 1) * sw + 1:sw]
    return out


def _cols(g: np.ndarray) -> np.ndarray:
    """(N, C, th, tw, ho, wo) gather -> A (N*ho*wo, C*th*tw), pixel-major (n, y, x), k = (c, i, j)."""
    n, c, th, tw, ho, wo = g.shape
    return np.ascontiguousarray(g.transpose(0, 4, 5, 1, 2, 3).reshape(n * ho * wo, c * th * tw))


def _limit_error(node, k: int, what: str, cfg: ArrayConfig) -> ValueError:
    return ValueError(
        f"layer {node.name!r}: reduction K = {k} ({what}) exceeds the array's limit K <= {kmax(cfg)} "
        f"= min(max_k = {cfg.max_k}, wgt_depth = {cfg.wgt_depth}, act_depth = {cfg.act_depth}); a tile "
        "leaves the array requantized, so K cannot be split")


def _place_nchw(ch, ys=slice(None), xs=slice(None)):
    def place(out, y, n=None):
        # y: P x L, P = (n, y, x) row-major over the (sub)grid
        nn, _, hh, ww = out[:, :, ys, xs].shape
        out[:, ch, ys, xs] = y.reshape(nn, hh, ww, len(ch)).transpose(0, 3, 1, 2)
    return place


def lower(node: ArrayNode, in_shape, cfg: ArrayConfig, x: np.ndarray | None = None) -> list[Job]:
    """Split an array layer into GEMM jobs (see the module docstring); with ``x`` the jobs carry data.

    Raises ValueError naming the layer if a job's K exceeds ``kmax(cfg)`` or a
    weight lies below ``cfg.weight_min``.
    """
    if not isinstance(node, ArrayNode):
        raise ValueError(f"lower: {node!r} is not an accelerator layer (it runs on the host)")
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be an ArrayConfig, got {type(cfg).__name__}")
    in_shape = tuple(int(s) for s in in_shape)
    out_shape = node.out_shape([in_shape])
    km = kmax(cfg)
    if x is not None:
        x = node._check_inputs([x])[0]
        if tuple(x.shape) != in_shape:
            raise ValueError(f"layer {node.name!r}: input shape {x.shape} != {in_shape}")
        wmin = int(node.weight.min(initial=0))
        if wmin < cfg.weight_min:
            raise ValueError(f"layer {node.name!r}: weight {wmin} is below the array's weight_min = "
                             f"{cfg.weight_min} (TFLite weights are in [-127, 127]; the packed chain needs it)")
        xc, zpc = _centre(x, node.in_q[0].zp)
    jobs: list[Job] = []

    if isinstance(node, FullyConnected):
        n, kk = in_shape
        o = node.n_out
        if kk > km:
            raise _limit_error(node, kk, "fully-connected input features", cfg)
        ch = np.arange(o)

        def place(out, y):
            out[:, ch] = y
        j = Job(node.name, n, kk, o, n * o * kk, ch, place)
        if x is not None:
            j.A, j.W = np.ascontiguousarray(xc), np.ascontiguousarray(node.weight.T)
        jobs.append(j)

    elif isinstance(node, Conv2d):
        n, c, h, w = in_shape
        _, o, ho, wo = out_shape
        _, cg, kh, kw = node.weight.shape
        g = node.groups
        og = o // g
        kg = cg * kh * kw
        if kg > km:
            raise _limit_error(node, kg, f"C/groups*kh*kw = {cg}*{kh}*{kw}", cfg)
        gp = 1
        if og < cfg.out_lanes and g > 1:
            gp = max(1, min(cfg.out_lanes // og, km // kg, g))
        offs_h = [i * node.dilation[0] - node.padding[0] for i in range(kh)]
        offs_w = [j * node.dilation[1] - node.padding[1] for j in range(kw)]
        for g0 in range(0, g, gp):
            gs = list(range(g0, min(g, g0 + gp)))
            ch = np.concatenate([np.arange(gi * og, (gi + 1) * og) for gi in gs])
            P = n * ho * wo
            jb = Job(f"{node.name}" + (f"[g{gs[0]}..{gs[-1]}]" if g > 1 else ""), P, kg * len(gs), len(ch),
                     P * og * len(gs) * kg, ch, _place_nchw(ch))
            if x is not None:
                cols = _cols(_gather(xc[:, g0 * cg:(gs[-1] + 1) * cg], zpc, offs_h, offs_w, node.stride, ho, wo))
                W = np.zeros((kg * len(gs), len(ch)), np.int8)
                for li, gi in enumerate(gs):
                    W[li * kg:(li + 1) * kg, li * og:(li + 1) * og] = node.weight[gi * og:(gi + 1) * og].reshape(og, kg).T
                jb.A, jb.W = cols, W
            jobs.append(jb)

    elif isinstance(node, ConvTranspose2d):
        n = in_shape[0]
        ci = in_shape[1]
        g = node.groups
        cg = ci // g
        og = node.weight.shape[1]
        for ph in convt_phases(node, in_shape):
            nt = len(ph["taps_h"]) * len(ph["taps_w"])
            kg = cg * max(nt, 1)
            if kg > km:
                raise _limit_error(node, kg, f"C_in/groups*taps = {cg}*{nt} of sub-pixel phase "
                                             f"({ph['a']}, {ph['b']})", cfg)
            P = n * ph["ho"] * ph["wo"]
            ys = slice(ph["a"], None, node.stride[0])
            xs = slice(ph["b"], None, node.stride[1])
            for gi in range(g):
                ch = np.arange(gi * og, (gi + 1) * og)
                jb = Job(f"{node.name}[phase {ph['a']},{ph['b']}" + (f" g{gi}]" if g > 1 else "]"), P, kg, og,
                         P * og * cg * nt, ch, _place_nchw(ch, ys, xs))
                if x is not None:
                    xg = xc[:, gi * cg:(gi + 1) * cg]
                    if nt == 0:        # no tap lands in this phase: output = bias (K = 1, zero weight)
                        jb.A = np.full((P, 1), zpc, np.int8)
                        jb.W = np.zeros((1, og), np.int8)
                    else:
                        jb.A = _cols(_gather(xg, zpc, [d for _, d in ph["taps_h"]], [d for _, d in ph["taps_w"]],
                                             (1, 1), ph["ho"], ph["wo"]))
                        wt = node.weight[gi * cg:(gi + 1) * cg][:, :, [i for i, _ in ph["taps_h"]]][
                            :, :, :, [j for j, _ in ph["taps_w"]]]                # cg, og, th, tw
                        jb.W = np.ascontiguousarray(wt.transpose(0, 2, 3, 1).reshape(kg, og))
                jobs.append(jb)
    else:  # pragma: no cover - every ArrayNode subclass is handled above
        raise ValueError(f"lower: unsupported layer type {type(node).__name__}")

    if x is not None:
        for jb in jobs:
            jb.params = _job_params(node, jb, zpc, cfg)
    return jobs


def _job_params(node: ArrayNode, job: Job, zpc: int, cfg: ArrayConfig) -> list[dict]:
    """One lane-params beat per channel block, zp folded into the bias: tflite per-channel requant
    (Q31 multiplier + shift) or, for ``node.mode == "ort"``, onnxruntime's float32 scale per channel
    (lane mode 1, ``scale_f32``; docs/array.md "ort mode")."""
    mult = node.lane_scales()
    wsum = job.W.astype(np.int64).sum(axis=0)
    lo, hi = node.act_range
    out = []
    for c0 in range(0, job.L, cfg.out_lanes):
        sl = slice(c0, min(job.L, c0 + cfg.out_lanes))
        ch = job.channels[sl]
        out.append(params_from_layer(cfg, mult[ch], bias=node.bias.astype(np.int64)[ch], zp_out=node.out.zp,
                                     act_min=lo, act_max=hi, zp_in=zpc, w_sum=wsum[sl],
                                     alpha=None if node.prelu is None else node.prelu[ch],
                                     lut_en=node.lut is not None, mode=node.mode))
    return out


def hw_lane_fields(cfg: ArrayConfig) -> tuple[str, ...]:
    """Names of the per-lane params fields the hardware layout (``hw.core.params_layout``) carries.

    golden.isa packs params entries by field name through that layout, so a field the
    layout lacks would be silently dropped from the bus words: ``check_mode_supported``
    refuses such layers instead.
    """
    from hw.core import params_layout    # lazy, as golden.isa does
    lane = params_layout(cfg).members["lane"]
    return tuple(name for name, _ in lane.elem_shape)


def check_mode_supported(node: ArrayNode, cfg: ArrayConfig) -> None:
    """ValueError naming the layer if its requantization mode needs params fields the hardware lacks."""
    if getattr(node, "mode", "tflite") != "ort":
        return
    missing = [f for f in ORT_LANE_FIELDS if f not in hw_lane_fields(cfg)]
    if missing:
        raise ValueError(f"layer {node.name!r}: requantization mode 'ort' needs the lane params fields {missing}, "
                         "which the hardware params layout (hw.requant_lane.lane_params_layout) does not have "
                         "(docs/array.md, 'ort mode')")


def device_lut(node: ArrayNode) -> np.ndarray:
    """The 256 bytes written by WRITE_LUT: entry (q & 0xFF) = table[q - qmin] as an 8-bit pattern."""
    t = node.lut.table.astype(np.int64) & 0xFF
    qmin = node.out.qmin
    codes = np.arange(256)
    q = codes if qmin == 0 else np.where(codes < 128, codes, codes - 256)
    return t[q - qmin].astype(np.uint8)


# --------------------------------------------------------------------------- commands


@dataclass
class Command:
    """One command of a program: opcode, fields, payload/response sizes in bus words.

    ``payload()`` (None when the command has no payload) returns the ``din``
    words; ``read`` = (job index, first tile, tiles, channel block) for a
    READ_OUT; ``label`` names it for error messages.
    """

    op: Op
    fields: dict
    din_words: int = 0
    dout_words: int = 0
    payload: Callable | None = None
    read: tuple | None = None
    label: str = ""
    run: dict | None = None        # RUN: {"k", "ntiles", "job", "tile0", "block", "rows_valid", "lanes_valid"}
    fill: tuple | None = None      # WRITE_*: (buffer, job, first tile/block, count, first entry, entries)

    def descriptor(self, cfg: ArrayConfig) -> int:
        return isa.encode(cfg, self.op, **self.fields)


def _words(cfg: ArrayConfig, buffer: str, entries: int) -> int:
    return entries * isa.words_per_entry(isa.entry_bytes(cfg, buffer), cfg.bus_bytes)


def _chunks(n: int, cap: int) -> list[tuple[int, int]]:
    """Split n items into ceil(n/cap) balanced consecutive chunks (start, count)."""
    k = -(-n // cap)
    base, extra = divmod(n, k)
    out, s = [], 0
    for i in range(k):
        c = base + (i < extra)
        out.append((s, c))
        s += c
    return out


def _run_order(n_ac: int, n_wc: int, order: str, m: int) -> list[tuple[int, int]]:
    """(act chunk, weight chunk) pairs: groups of m resident outer chunks, snake over the streamed ones."""
    pairs = []
    outer_n, inner_n = (n_ac, n_wc) if order == "acts_outer" else (n_wc, n_ac)
    for gi, g0 in enumerate(range(0, outer_n, m)):
        grp = list(range(g0, min(outer_n, g0 + m)))
        inner = range(inner_n) if gi % 2 == 0 else range(inner_n - 1, -1, -1)
        for ii, i in enumerate(inner):
            # alternate the member order so a group boundary keeps the last member's bank busy
            members = grp if ii % 2 == 0 else grp[::-1]
            for o in members:
                pairs.append((o, i) if order == "acts_outer" else (i, o))
    return pairs


def schedule(jobs: list[Job], cfg: ArrayConfig, order: tuple[str, int] | None = None, *,
             lut: bool = False, name: str = "", max_pieces: int = 16) -> tuple[list[Command], tuple[str, int]]:
    """Commands (payload closures not yet attached) for ``jobs``; picks the fastest RUN order if None.

    1. RUN list: (act chunk, weight chunk) pairs in the order's sequence, one
       RUN per channel block of the weight chunk; a chunk not resident is
       assigned the bank NOT used by the previous RUN (a "fill").
    2. Fills are spread: a fill into a bank whose last reader is RUN L and
       that RUN d needs can stream in slots L+1 .. d-1 (a slot = after RUN s is
       queued and READ_OUT(s-1) returned, so the bank is already free and the
       write never blocks the decoder); it is cut into that many WRITE pieces
       (at most ``max_pieces``, whole entries) so the decoder's din work per
       RUN stays even. A fill with no free slot is written right before RUN d.
    3. READ_OUT of RUN n is issued after RUN n+1 (outputs alternate banks).

    Returns (commands, order used); every job uses the same order.
    """
    if order is None:
        from .report import timeline
        best = None
        for od in ORDERS:
            cmds, _ = schedule(jobs, cfg, od, lut=lut, name=name, max_pieces=max_pieces)
            tl = timeline(cmds, cfg)
            t = (tl["cycles"], tl["din_words"] + tl["dout_words"])   # ties: less bus traffic
            if best is None or t < best[0]:
                best = (t, cmds, od)
        return best[1], best[2]
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    rows, lanes = cfg.rows, cfg.out_lanes

    # ---- 1. the RUN list and the fills ----
    runs: list[dict] = []      # one per output bank use: {"job", "t0", "nt", "block", "banks", "parts"}
    fills: list[dict] = []     # {"buf", "bank", "job", "start", "count", "deadline", "after"}
    resident = {"act": [None, None], "wgt": [None, None]}
    last_user = {("act", 0): -1, ("act", 1): -1, ("wgt", 0): -1, ("wgt", 1): -1}
    for ji, job in enumerate(jobs):
        K = job.K
        pb, cb = job.tiles(cfg), job.blocks(cfg)
        pc_max = min(cfg.act_depth // K, cfg.out_depth // rows, isa.ntiles_max(cfg))
        cc_max = min(cfg.wgt_depth // K, cfg.param_depth)
        achunks = _chunks(pb, pc_max)
        wchunks = _chunks(cb, cc_max)
        last_rows = job.P - (pb - 1) * rows
        for ai, wi in _run_order(len(achunks), len(wchunks), *order):
            t0, nt = achunks[ai]
            b0, nb = wchunks[wi]
            need = {"act": (ji, ai), "wgt": (ji, wi)}
            bank = {}
            for buf in ("act", "wgt"):
                if need[buf] in resident[buf]:
                    bank[buf] = resident[buf].index(need[buf])
                    continue
                used = runs[-1]["banks"][buf] if runs else 1
                bk = 1 - used
                resident[buf][bk] = need[buf]
                bank[buf] = bk
                s0, n0 = (t0, nt) if buf == "act" else (b0, nb)
                fills.append({"buf": buf, "bank": bk, "job": ji, "start": s0, "count": n0, "K": K,
                              "deadline": len(runs), "after": last_user[(buf, bk)]})
            for bi in range(b0, b0 + nb):
                # a partial last tile gets its own RUN so that USEFUL_MACS counts exactly
                parts = [(0, nt)]
                if t0 + nt == pb and last_rows < rows and nt > 1:
                    parts = [(0, nt - 1), (nt - 1, 1)]
                for buf in ("act", "wgt"):
                    last_user[(buf, bank[buf])] = len(runs)
                runs.append({"job": ji, "t0": t0, "nt": nt, "block": bi, "b0": b0, "banks": dict(bank),
                             "parts": parts, "last_rows": last_rows, "pb": pb})

    # ---- 2. fill pieces per slot ----
    before: dict[int, list] = {}     # RUN index -> fill pieces to write right before it
    slot: dict[int, list] = {}       # RUN index s -> pieces written after RUN s / READ_OUT(s-1)
    for f in fills:
        r, d = f["after"] + 1, f["deadline"]
        total = f["count"] * f["K"]            # entries of the fill
        n_slots = min(d - r, max_pieces, total)
        if n_slots <= 0:
            before.setdefault(d, []).append((f, 0, total, True))
            continue
        for i, (e0, ne) in enumerate(_chunks(total, -(-total // n_slots))):
            # spread over the LAST slots of the window (closest to the deadline)
            s = d - n_slots + i
            slot.setdefault(s, []).append((f, e0, ne, e0 + ne == total))

    def emit_fill(piece):
        f, e0, ne, final = piece
        job = jobs[f["job"]]
        if f["buf"] == "act":
            out.append(Command(Op.WRITE_ACT, {"bank": f["bank"], "offset": e0, "length": ne},
                               din_words=_words(cfg, "act", ne),
                               label=f"{job.name} WRITE_ACT tiles {f['start']}..{f['start'] + f['count'] - 1} "
                                     f"entries {e0}..{e0 + ne - 1}",
                               fill=("act", f["job"], f["start"], f["count"], e0, ne)))
        else:
            out.append(Command(Op.WRITE_WGT, {"bank": f["bank"], "offset": e0, "length": ne},
                               din_words=_words(cfg, "wgt", ne),
                               label=f"{job.name} WRITE_WGT blocks {f['start']}..{f['start'] + f['count'] - 1} "
                                     f"entries {e0}..{e0 + ne - 1}",
                               fill=("wgt", f["job"], f["start"], f["count"], e0, ne)))
            if final:
                out.append(Command(Op.WRITE_PARAMS, {"bank": f["bank"], "offset": 0, "length": f["count"]},
                                   din_words=_words(cfg, "params", f["count"]),
                                   label=f"{job.name} WRITE_PARAMS blocks {f['start']}..{f['start'] + f['count'] - 1}",
                                   fill=("params", f["job"], f["start"], f["count"], 0, f["count"])))

    # ---- 3. emission ----
    out: list[Command] = []
    if lut:
        out.append(Command(Op.WRITE_LUT, {"offset": 0, "length": isa.LUT_ENTRIES},
                           din_words=_words(cfg, "lut", isa.LUT_ENTRIES), label=f"{name} WRITE_LUT"))
    pending_read = None
    for n, rn in enumerate(runs):
        for piece in before.get(n, []):
            emit_fill(piece)
        job = jobs[rn["job"]]
        K, bi, bank = job.K, rn["block"], rn["banks"]
        lv = min(lanes, job.L - bi * lanes)
        for p0, pn in rn["parts"]:
            rv = rn["last_rows"] if rn["t0"] + p0 + pn == rn["pb"] and rn["last_rows"] < rows else rows
            out.append(Command(Op.RUN, {
                "act_bank": bank["act"], "act_offset": p0 * K, "wgt_bank": bank["wgt"],
                "wgt_offset": (bi - rn["b0"]) * K, "par_bank": bank["wgt"], "par_index": bi - rn["b0"],
                "out_bank": n % 2, "out_offset": p0 * rows, "k": K, "ntiles": pn, "rows_valid": rv,
                "lanes_valid": lv},
                label=f"{job.name} RUN block {bi} tiles {rn['t0'] + p0}..{rn['t0'] + p0 + pn - 1}",
                run={"k": K, "ntiles": pn, "job": rn["job"], "tile0": rn["t0"] + p0, "block": bi,
                     "rows_valid": rv, "lanes_valid": lv}))
        if pending_read is not None:
            out.append(pending_read)
        pending_read = Command(Op.READ_OUT, {"bank": n % 2, "offset": 0, "length": rn["nt"] * rows},
                               dout_words=_words(cfg, "out", rn["nt"] * rows),
                               read=(rn["job"], rn["t0"], rn["nt"], bi),
                               label=f"{job.name} READ_OUT block {bi} tiles {rn['t0']}..{rn['t0'] + rn['nt'] - 1}")
        for piece in slot.get(n, []):
            emit_fill(piece)
    if pending_read is not None:
        out.append(pending_read)
    return out, order


# --------------------------------------------------------------------------- plans and programs


@dataclass
class LayerPlan:
    """Data-free compilation result: jobs (geometry), commands with word counts, chosen order."""

    node: ArrayNode
    in_shape: tuple
    out_shape: tuple
    cfg: ArrayConfig
    jobs: list[Job]
    commands: list[Command]
    order: tuple[str, int]

    @property
    def macs(self) -> int:
        return sum(j.macs for j in self.jobs)

    @property
    def din_words(self) -> int:
        return sum(c.din_words for c in self.commands)

    @property
    def dout_words(self) -> int:
        return sum(c.dout_words for c in self.commands)

    @property
    def runs(self) -> list[Command]:
        return [c for c in self.commands if c.op == Op.RUN]


def plan_layer(node: ArrayNode, in_shape, cfg: ArrayConfig, order=None) -> LayerPlan:
    """Geometry + schedule of one array layer, no data (for timing and reports)."""
    jobs = lower(node, in_shape, cfg)
    cmds, od = schedule(jobs, cfg, order, lut=node.lut is not None, name=node.name)
    return LayerPlan(node, tuple(in_shape), tuple(node.out_shape([tuple(in_shape)])), cfg, jobs, cmds, od)


@dataclass
class Program:
    """A compiled layer: ``commands`` (each with ``descriptor(cfg)`` and ``payload()``), and
    ``assemble(responses)`` that turns the READ_OUT responses (in command order) into the
    layer output (NCHW, or (N, O) for fully connected) of the node's output dtype."""

    plan: LayerPlan
    jobs: list[Job]
    lut_bytes: np.ndarray | None = None
    commands: list[Command] = field(default_factory=list)

    def assemble(self, responses: list[list[int]]) -> np.ndarray:
        cfg, node = self.plan.cfg, self.plan.node
        reads = [c for c in self.commands if c.op == Op.READ_OUT]
        if len(responses) != len(reads):
            raise ValueError(f"assemble: {len(reads)} READ_OUT responses expected, got {len(responses)}")
        ys = [np.zeros((j.P, j.L), np.uint8) for j in self.jobs]
        got = [np.zeros((j.P, j.L), bool) for j in self.jobs]
        rows, lanes = cfg.rows, cfg.out_lanes
        for cmd, words in zip(reads, responses):
            ji, t0, nt, bi = cmd.read
            job = self.jobs[ji]
            r = isa.unpack_entries(words, isa.entry_bytes(cfg, "out"), cfg.bus_bytes)
            if r.shape[0] != nt * rows:
                raise ValueError(f"{cmd.label}: {nt * rows} rows expected, got {r.shape[0]}")
            p0, p1 = t0 * rows, min(job.P, (t0 + nt) * rows)
            c0, c1 = bi * lanes, min(job.L, (bi + 1) * lanes)
            ys[ji][p0:p1, c0:c1] = r[:p1 - p0, :c1 - c0]
            got[ji][p0:p1, c0:c1] = True
        out = np.zeros(self.plan.out_shape, np.uint8)
        for j, y, g in zip(self.jobs, ys, got):
            if not g.all():
                raise ValueError(f"assemble: job {j.name} has outputs no READ_OUT covered (compiler bug)")
            j.place(out, y)
        return out.view(node.out_q.dtype)


def compile_layer(node: ArrayNode, x: np.ndarray, cfg: ArrayConfig, order=None) -> Program:
    """Compile one array layer with its input data: commands with descriptors and payloads.

    ``x``: the layer input (int8/uint8, the node's input dtype and shape).
    """
    x = node._check_inputs([x])[0]
    check_mode_supported(node, cfg)
    in_shape = tuple(x.shape)
    jobs = lower(node, in_shape, cfg, x)
    cmds, od = schedule(jobs, cfg, order, lut=node.lut is not None, name=node.name)
    plan = LayerPlan(node, in_shape, tuple(node.out_shape([in_shape])), cfg, jobs, cmds, od)
    prog = Program(plan, jobs, device_lut(node) if node.lut is not None else None, cmds)
    rows, lanes, bus = cfg.rows, cfg.out_lanes, cfg.bus_bytes
    for c in cmds:
        if c.op == Op.WRITE_LUT:
            tbl = prog.lut_bytes
            c.payload = lambda tbl=tbl: isa.pack_entries(tbl.reshape(-1, 1), bus)
        elif c.fill is not None:
            buf, ji, s, n, e0, ne = c.fill
            job = jobs[ji]
            if buf == "act":
                def pay(job=job, s=s, n=n, e0=e0, ne=ne):
                    a = np.zeros((n * rows, job.K), np.int8)
                    blk = job.A[s * rows:min(job.P, (s + n) * rows)]
                    a[:len(blk)] = blk
                    ent = a.reshape(n, rows, job.K).transpose(0, 2, 1).reshape(n * job.K, rows)
                    return isa.pack_entries(ent[e0:e0 + ne], bus)
            elif buf == "wgt":
                def pay(job=job, s=s, n=n, e0=e0, ne=ne):
                    w = np.zeros((job.K, n * lanes), np.int8)
                    blk = job.W[:, s * lanes:min(job.L, (s + n) * lanes)]
                    w[:, :blk.shape[1]] = blk
                    ent = w.reshape(job.K, n, lanes).transpose(1, 0, 2).reshape(n * job.K, lanes)
                    return isa.pack_entries(ent[e0:e0 + ne], bus)
            else:
                def pay(job=job, s=s, n=n):
                    return isa.pack_entries(isa.pack_params(cfg, job.params[s:s + n]), bus)
            c.payload = pay
    return prog
