"""Quantized layers of the golden model: exact int32 accumulators, then requantization.

Layouts follow ONNX / PyTorch: activations NCHW, convolution weights OIHW
(``(C_out, C_in / groups, kh, kw)``), transposed-convolution weights
``(C_in, C_out / groups, kh, kw)``, fully-connected weights ``(C_out, K)``.
Activations are int8 or uint8 ndarrays, weights int8 (the full range
[-128, 127] is accepted), biases int32.

Accumulator definition (this project's, used by golden/, hw/ and firmware/):

    acc = saturate_int32( sum((x - x_zp) * (w - w_zp)) + bias )

The sum and the bias are added exactly (in unbounded integers) and the total
is saturated ONCE to [-2**31, 2**31 - 1]. There is no intermediate wrap or
saturation. (onnxruntime and TFLite wrap in int32 instead; the two agree
whenever the exact total fits, which is the only case a sane model produces.)

Exactness of the fast path. The sums are evaluated as float32 GEMMs (BLAS)
on integer-valued operands. Activations are first centred into the int8
range (uint8 ``x`` is stored as ``x - 128``, an XOR of the top bit), so each
product has |x' * w| <= B = max|x'| * max|w| <= 2**14. The reduction
dimension K is cut into chunks of at most ``floor(2**24 / B)`` terms. Within
a chunk every value BLAS can form (a product, or any partial sum of a subset
of the chunk's products, in any order or blocking, with or without FMA) is an
integer of magnitude <= 2**24, hence exactly representable in float32: no
operation ever rounds and the chunk result is the exact integer. Chunk
results are added in float64 (exact: every total is an integer below 2**53)
and converted to int64. (This assumes a classical GEMM, i.e. each output
is a sum of the K products; OpenBLAS, MKL and BLIS are. Strassen-type
algorithms would break it; none is used by NumPy's BLAS.) The centring is
undone exactly in int64: sum((x - zp) * w) = sum(x' * w) + (c - zp) * sum(w)
with c = 128 for uint8 and 0 for int8; padded pixels hold the zero point
(real 0), so every output sees all K terms and the correction is a constant
per output channel.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._check import (INT32_MAX, INT32_MIN, check_dtype, check_int_array, check_positive_int,
                     check_zero_point, qrange)
from .ops import relu6_range
from .requant import (OrtFast, _ort_fast_core, f32_decompose, ort_scale, quantize_multiplier, requantize_tflite,
                      tflite_multiplier)

#: Largest chunk magnitude for which every float32 partial sum is exact.
F32_EXACT = 2**24
ACT_DTYPES = ("int8", "uint8")
MODES = ("tflite", "ort")

# --------------------------------------------------------------------------
# argument checks
# --------------------------------------------------------------------------


def _act(x, name: str, ndim: int) -> np.ndarray:
    a = check_dtype(x, name, ACT_DTYPES)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _weights(w, name: str, ndim: int, dtypes=("int8",)) -> np.ndarray:
    a = check_dtype(w, name, dtypes)
    if a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _scalar_zp(zp, name: str, dtype: str) -> int:
    a = check_zero_point(zp, name, dtype)
    if a.size != 1:
        raise ValueError(f"{name} must be a single value, got shape {a.shape}")
    return int(a.reshape(()))


def _bias(bias, n_out: int) -> np.ndarray:
    if bias is None:
        return np.zeros(n_out, np.int64)
    b = check_int_array(bias, "bias", INT32_MIN, INT32_MAX, ndim=1)
    if b.shape[0] != n_out:
        raise ValueError(f"bias must have {n_out} values (one per output channel), got {b.shape[0]}")
    return b


def _pair(v, name: str, lo: int = 1) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
        return check_positive_int(v[0], name, lo), check_positive_int(v[1], name, lo)
    v = check_positive_int(v, name, lo)
    return v, v


def _pads(padding) -> tuple[int, int, int, int]:
    """int, (ph, pw) or (top, left, bottom, right) -> (top, left, bottom, right), all >= 0."""
    if isinstance(padding, (tuple, list)):
        if len(padding) == 2:
            ph, pw = _pair(tuple(padding), "padding", 0)
            return ph, pw, ph, pw
        if len(padding) == 4:
            return tuple(check_positive_int(p, "padding", 0) for p in padding)
        raise ValueError(f"padding must be an int, (ph, pw) or (top, left, bottom, right), got {padding!r}")
    p = check_positive_int(padding, "padding", 0)
    return p, p, p, p


def _centre(x: np.ndarray) -> tuple[np.ndarray, int]:
    """Activations as int8 ``x - c`` (c = 128 for uint8, 0 for int8), and c."""
    if x.dtype == np.uint8:
        return (x ^ np.uint8(0x80)).view(np.int8), 128
    return x, 0


def _saturate(acc: np.ndarray, bound: int) -> np.ndarray:
    """Saturate int64 values to int32; ``bound`` is a proven max |acc| (skip if it fits)."""
    if bound > INT32_MAX:
        np.clip(acc, INT32_MIN, INT32_MAX, out=acc)
    return acc


# --------------------------------------------------------------------------
# exact integer GEMM on float32 BLAS
# --------------------------------------------------------------------------


def _chunk(k: int, bound: int) -> int:
    """Largest number of terms of magnitude <= bound whose partial sums stay exact in float32."""
    if bound == 0:
        return max(k, 1)
    return max(1, min(k, F32_EXACT // bound))


def _exact_matmul(a: np.ndarray, b: np.ndarray, bound: int) -> np.ndarray:
    """Exact ``a @ b`` of integer-valued float32 stacks with |a_ik * b_kj| <= bound.

    ``a``: (..., M, K), ``b``: (..., K, N). K is cut into chunks of
    ``floor(2**24 / bound)`` terms (see the module docstring for the proof);
    a single chunk is returned as float32, several are summed in float64
    (each chunk result is an integer <= 2**24 in magnitude and the total
    K * bound < 2**53, so the float64 additions are exact too). Every value of
    the result is an exact integer.
    """
    k = a.shape[-1]
    kc = _chunk(k, bound)
    if kc >= k:
        return np.matmul(a, b)
    out = np.matmul(a[..., :kc], b[..., :kc, :]).astype(np.float64)
    for k0 in range(kc, k, kc):
        out += np.matmul(a[..., k0:k0 + kc], b[..., k0:k0 + kc, :])
    return out


#: Elements per block in the post-GEMM pipeline (int64 temporaries stay in cache).
_BLOCK = 1 << 14


def _num_threads() -> int:
    """Worker threads for the NumPy (non-BLAS) stages: GOLDEN_NUM_THREADS, else the
    OpenMP/OpenBLAS setting, else the CPU count."""
    for var in ("GOLDEN_NUM_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v.isdigit() and int(v) > 0:
            return int(v)
    return os.cpu_count() or 1


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _parallel(fn, items) -> None:
    """Run ``fn`` over ``items`` on the worker threads (NumPy ufuncs release the GIL).

    Every item writes a disjoint part of a preallocated output, so the result
    does not depend on scheduling. Exceptions propagate.
    """
    global _POOL
    n = _num_threads()
    if n < 2 or len(items) < 2:
        for it in items:
            fn(it)
        return
    if _POOL is None or _POOL[0] != n:
        _POOL = (n, ThreadPoolExecutor(n, thread_name_prefix="golden"))
    for _ in _POOL[1].map(fn, items):
        pass


def _blockwise(get, shape: tuple[int, int], corr: np.ndarray, bound: int, fn, out_dtype,
               block: int = _BLOCK, min_blocks: int = 1, gemm: bool = False) -> np.ndarray:
    """``fn(saturate(get(rows, cols) + corr[rows, None]), rows)`` over blocks of a (C, P) array.

    ``get(rows, cols)`` returns a block of exact integer sums (float32, float64
    or int64), ``corr`` is int64 per row, ``bound`` a proven max of |sum| +
    |corr| (saturation is skipped if it fits int32). ``fn(acc, rows)`` returns
    the block's output values for the int64 accumulators ``acc``. When no
    saturation is needed, ``fn.block(sum, rows, offset, amax)`` is used if
    ``fn`` has it: it folds ``offset = corr[rows]`` into its own arithmetic,
    returns ``(codes, unsafe)`` and the ``unsafe`` elements are finished in
    one batch by ``fn.fix(acc_values, channels)`` after all blocks. Blocks hold
    about ``block`` elements (cache-sized int64 temporaries); there are at
    least ``min_blocks`` of them when the shape allows. They run on the worker
    threads. ``gemm=True``: ``get`` computes a GEMM, so blocks keep all rows
    (weights) and split the columns while they stay >= 256 wide, else the rows.
    """
    o, p = shape
    out = np.empty((o, p), out_dtype)
    if gemm:
        rows, cols = o, min(p, max(256, block // o))
        n_col = -(-p // cols)
        if n_col < min_blocks:
            if -(-p // min_blocks) >= 256:
                cols = -(-p // min_blocks)
            else:
                rows = max(1, -(-o // -(-min_blocks // n_col)))
    else:
        cols = min(p, block)
        rows = max(1, block // cols)
        n_col = -(-p // cols)
        if n_col * -(-o // rows) < min_blocks:
            rows = max(1, -(-o // max(1, -(-min_blocks // n_col))))
    sat = bound > INT32_MAX
    split = not sat and hasattr(fn, "block")
    pending = []  # (flat output positions, accumulator values, channels) of deferred elements

    def work(blk):
        rs, cs = blk
        a = get(rs, cs).astype(np.int64)
        if split:
            q, unsafe = fn.block(a, rs, corr[rs], bound)
            np.copyto(out[rs, cs], q, casting="unsafe")
            if unsafe.any():
                fi = np.flatnonzero(unsafe)
                r_, c_ = np.divmod(fi, a.shape[1])
                pending.append(((r_ + rs.start) * p + c_ + cs.start, a[r_, c_] + corr[rs][r_], r_ + rs.start))
            return
        a += corr[rs, None]
        if sat:
            np.clip(a, INT32_MIN, INT32_MAX, out=a)
        np.copyto(out[rs, cs], fn(a, rs), casting="unsafe")  # values already in range

    _parallel(work, [(slice(r0, min(o, r0 + rows)), slice(c0, c0 + cols))
                     for r0 in range(0, o, rows) for c0 in range(0, p, cols)])
    if pending:
        pos, vals, ch = (np.concatenate(v) for v in zip(*pending))
        out.reshape(-1)[pos] = fn.fix(vals, ch)
    return out


def _blas_single_threaded() -> bool:
    """True if the BLAS was told to use one thread (OPENBLAS_NUM_THREADS, else OMP_NUM_THREADS)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        v = os.environ.get(var, "")
        if v:
            return v == "1"
    return False


# --------------------------------------------------------------------------
# 2-D convolution
# --------------------------------------------------------------------------


def _conv_geometry(x, w, stride, padding, dilation, groups):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    groups = check_positive_int(groups, "groups")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pl, pb, pr = _pads(padding)
    if c % groups or o % groups:
        raise ValueError(f"groups must divide the input ({c}) and output ({o}) channels, got groups={groups}")
    if cg * groups != c:
        raise ValueError(f"w must have C_in/groups = {c // groups} input channels (w.shape[1]), got {cg}")
    if kh < 1 or kw < 1 or o < 1:
        raise ValueError(f"w must have a non-empty (O, I, kh, kw) shape, got {w.shape}")
    ho = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
    if ho < 1 or wo < 1 or h + pt + pb < dh * (kh - 1) + 1 or wd + pl + pr < dw * (kw - 1) + 1:
        raise ValueError(f"the (dilated) kernel {kh}x{kw} does not fit the padded input "
                         f"{h + pt + pb}x{wd + pl + pr}: padding or x shape too small")
    return dict(n=n, c=c, h=h, w=wd, o=o, cg=cg, kh=kh, kw=kw, g=groups, sh=sh, sw=sw, dh=dh, dw=dw,
                pt=pt, pl=pl, pb=pb, pr=pr, ho=ho, wo=wo)


def _conv_sum(x: np.ndarray, w: np.ndarray, x_zp: int, gm: dict) -> tuple[tuple, np.ndarray, int]:
    """sum((x - x_zp) * w), laid out (O, N*Ho*Wo), as ``gemm + corr[:, None]`` and a bound.

    ``gemm = (a, col, b)``: the centred weights (G, Og, K) and im2col matrix
    (G, K, P) as float32, whose exact product (``_exact_matmul(a, col, b)``)
    is the centred sum; ``corr``: int64 per output channel; bound >= max
    |sum|.
    """
    n, c, o, g, cg = gm["n"], gm["c"], gm["o"], gm["g"], gm["cg"]
    kh, kw, ho, wo = gm["kh"], gm["kw"], gm["ho"], gm["wo"]
    og = o // g
    xs, c0 = _centre(x)
    pad_val = x_zp - c0  # the zero point, centred: in [-128, 127]
    hp, wp = gm["h"] + gm["pt"] + gm["pb"], gm["w"] + gm["pl"] + gm["pr"]
    if (hp, wp) != (gm["h"], gm["w"]):
        xp = np.full((n, c, hp, wp), pad_val, np.int8)
        xp[:, :, gm["pt"]:gm["pt"] + gm["h"], gm["pl"]:gm["pl"] + gm["w"]] = xs
    else:
        xp = xs
    bx = max(int(np.abs(xs.min(initial=0), dtype=np.int64)), int(xs.max(initial=0)), abs(pad_val))
    bw = max(int(w.max(initial=0)), -int(w.min(initial=0)))
    k = cg * kh * kw
    bound = bx * bw
    p = n * ho * wo
    # im2col: col[g, (ci, i, j), (n, y, x)] = xp[n, g*cg + ci, y*sh + i*dh, x*sw + j*dw]
    col = np.empty((g, cg, kh, kw, n, ho, wo), np.float32)

    def tap(ij):
        i, j = ij
        r0, c0_ = i * gm["dh"], j * gm["dw"]
        v = xp[:, :, r0:r0 + gm["sh"] * (ho - 1) + 1:gm["sh"], c0_:c0_ + gm["sw"] * (wo - 1) + 1:gm["sw"]]
        col[:, :, i, j] = v.reshape(n, g, cg, ho, wo).transpose(1, 2, 0, 3, 4)

    _parallel(tap, [(i, j) for i in range(kh) for j in range(kw)])
    # undo the centring: + (c0 - x_zp) * sum(w) per output channel
    wsum = w.reshape(o, k).sum(axis=1, dtype=np.int64)
    corr = (c0 - x_zp) * wsum
    return (w.reshape(g, og, k).astype(np.float32), col.reshape(g, k, p), bound), corr, \
        k * bound + int(np.abs(corr).max(initial=0))


def _conv_prepare(x, w, bias, x_zp, stride, padding, dilation, groups):
    x = _act(x, "x", 4)
    w = _weights(w, "w", 4)
    zp = _scalar_zp(x_zp, "x_zp", x.dtype.name)
    gm = _conv_geometry(x, w, stride, padding, dilation, groups)
    b = _bias(bias, gm["o"])
    return x, w, b, zp, gm


def _conv_blocks(x, w, b, zp, gm, fn, out_dtype) -> np.ndarray:
    """(O, N*Ho*Wo) array of ``fn(acc_block, rows)`` over the saturated accumulators.

    With a multi-threaded BLAS, one GEMM call (BLAS-parallel), then the
    post-processing in blocks on the worker threads. With a single-threaded
    BLAS (OPENBLAS_NUM_THREADS=1) and groups == 1, each worker computes its
    block's GEMM and post-processes it while it is in cache (one parallel
    region per layer). Both give identical, exact results.
    """
    (a, col, chunk_bound), corr, bound = _conv_sum(x, w, zp, gm)
    corr += b
    bound += int(np.abs(b).max(initial=0))
    o, p = gm["o"], col.shape[2]
    if gm["g"] == 1 and _blas_single_threaded() and _num_threads() > 1:
        a0, c0 = a[0], col[0]
        return _blockwise(lambda rs, cs: _exact_matmul(a0[rs], c0[:, cs], chunk_bound), (o, p), corr, bound,
                          fn, out_dtype, block=1 << 16, min_blocks=2 * _num_threads(), gemm=True)
    s = _exact_matmul(a, col, chunk_bound).reshape(o, p)
    return _blockwise(lambda rs, cs: s[rs, cs], (o, p), corr, bound, fn, out_dtype)


def _to_nchw(a: np.ndarray, gm: dict) -> np.ndarray:
    """(O, N*Ho*Wo) -> (N, O, Ho, Wo)."""
    return np.ascontiguousarray(a.reshape(gm["o"], gm["n"], gm["ho"], gm["wo"]).transpose(1, 0, 2, 3))


def _identity(acc, rows, offset=None, amax=None):
    return acc if offset is None else acc + offset[:, None]


def conv2d_acc(x, w, bias=None, x_zp=0, stride=1, padding=0, dilation=1, groups=1) -> np.ndarray:
    """int32 accumulators of a quantized 2-D convolution (cross-correlation, as ONNX/PyTorch).

    ``acc[n, o, y, x] = saturate_int32(sum_{ci, i, j} (xpad[n, g*Cg + ci, y*sh + i*dh, x*sw + j*dw]
    - x_zp) * w[o, ci, i, j] + bias[o])`` with g = o // (O / groups); padded
    pixels equal ``x_zp`` (real 0). One saturation of the exact total.

    x: (N, C, H, W) int8/uint8; w: (O, C/groups, kh, kw) int8; bias: (O,)
    int32 values or None; x_zp: integer in x's range; stride, dilation: int or
    (h, w) pair >= 1; padding: int, (ph, pw) or (top, left, bottom, right) >= 0;
    groups >= 1 dividing C and O. Returns int32 (N, O, Ho, Wo).
    """
    x, w, b, zp, gm = _conv_prepare(x, w, bias, x_zp, stride, padding, dilation, groups)
    return _to_nchw(_conv_blocks(x, w, b, zp, gm, _identity, np.int32), gm)


# --------------------------------------------------------------------------
# requantization and activation clamps
# --------------------------------------------------------------------------


def activation_range(act, y_scale, y_zp: int, out_dtype: str) -> tuple[int, int]:
    """Quantized clamp range of a fused activation (arithmetic.md §2).

    ``None``: the type range; ``"relu"``: [max(qmin, zp), qmax]; ``"relu6"``:
    [max(qmin, zp), min(qmax, zp + round(6 / y_scale))] with a float32 division
    rounded half away from zero (TFLite ``CalculateActivationRangeQuantized``,
    via ``golden.ops.relu6_range``); or an explicit (lo, hi) pair of
    integers with qmin <= lo <= hi <= qmax.
    """
    qmin, qmax = qrange(out_dtype, "out_dtype")
    if act is None:
        return qmin, qmax
    if isinstance(act, str):
        if act == "relu":
            return max(qmin, y_zp), qmax
        if act == "relu6":
            return relu6_range(y_scale, y_zp, out_dtype)
        raise ValueError(f"act must be None, 'relu', 'relu6' or a (lo, hi) pair, got {act!r}")
    if isinstance(act, (tuple, list)) and len(act) == 2:
        lo, hi = act
        for nm, v in (("act[0]", lo), ("act[1]", hi)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not qmin <= v <= qmax:
                raise ValueError(f"{nm} must be an integer in [{qmin}, {qmax}], got {v!r}")
        if lo > hi:
            raise ValueError(f"act must satisfy lo <= hi, got ({lo}, {hi})")
        return int(lo), int(hi)
    raise ValueError(f"act must be None, 'relu', 'relu6' or a (lo, hi) pair, got {act!r}")


class _Requantizer:
    """Validated requantization parameters of one layer; ``q(acc, rows, axis)`` applies them
    and returns int64 codes (cast to ``out_dtype`` by the caller).

    Per-tensor or per-channel (``n_ch`` values of ``w_scale``); ``rows`` selects
    the channels of an accumulator block whose channel axis is ``axis``.
    """

    def __init__(self, mode, x_scale, w_scale, y_scale, y_zp, out_dtype, act, n_ch: int):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.out_dtype = out_dtype if isinstance(out_dtype, str) else np.dtype(out_dtype).name
        qrange(self.out_dtype, "out_dtype")
        self.zp = _scalar_zp(y_zp, "y_zp", self.out_dtype)
        self.lo, self.hi = activation_range(act, y_scale, self.zp, self.out_dtype)
        ws = np.asarray(w_scale)
        if ws.ndim > 1 or ws.size not in (1, n_ch):
            raise ValueError(f"w_scale must be a scalar or have {n_ch} values (one per output channel), "
                             f"got shape {ws.shape}")
        if mode == "ort":
            mant, exp = f32_decompose(ort_scale(x_scale, ws, y_scale))
            self.p = (mant.reshape(-1), exp.reshape(-1))
            # constants for (C, P) blocks (channel axis 0), see OrtFast
            self.fast = OrtFast(self.p[0][:, None], self.p[1][:, None], np.int64(self.zp),
                                self.lo - self.zp, self.hi - self.zp)
            if self.fast.ok:
                self.block = self._block
        else:
            q_fixed, shift = quantize_multiplier(tflite_multiplier(x_scale, ws, y_scale))
            self.p = (q_fixed.reshape(-1), shift.reshape(-1))

    def _block(self, acc: np.ndarray, rows: slice, offset: np.ndarray, amax: int):
        """Fast-path codes of ``acc + offset[:, None]`` for channels ``rows`` (axis 0) and the
        mask of elements left to ``fix`` (``OrtFast.kernel``)."""
        return self.fast.take(rows).kernel(acc, offset[:, None], amax)

    def fix(self, acc_values: np.ndarray, channels: np.ndarray) -> np.ndarray:
        """Bit-level codes of single accumulators of the given channels (``OrtFast.slow``)."""
        n = self.fast.mant.shape[0]
        return self.fast.slow(acc_values, (channels if n > 1 else np.zeros_like(channels),
                                           np.zeros_like(channels)), (n, 1))

    def __call__(self, acc: np.ndarray, rows=slice(None), axis: int = 0, offset=None, amax=None) -> np.ndarray:
        """Codes for ``acc`` (+ ``offset`` per channel, if given; the sums must be int32 values)."""
        p0, p1 = (v if v.size == 1 else v[rows] for v in self.p)
        shape = [1] * acc.ndim
        shape[axis] = -1
        if offset is not None:
            offset = np.asarray(offset, np.int64).reshape(shape)
        if self.mode == "ort":
            q = _ort_fast_core(acc, p0.reshape(shape), p1.reshape(shape), np.int64(self.zp),
                               self.lo - self.zp, self.hi - self.zp, offset=offset, amax=amax)
        else:
            if offset is not None:
                acc = acc + offset
            q = requantize_tflite(acc, p0, p1, self.zp, self.lo, self.hi, axis=axis if p0.size > 1 else None)
        return q  # int64 codes in [lo, hi]


def conv2d(x, w, bias, x_zp, x_scale, w_scale, y_scale, y_zp, *, stride=1, padding=0, dilation=1,
           groups=1, mode: str = "tflite", act=None, out_dtype=None) -> np.ndarray:
    """Quantized 2-D convolution: ``conv2d_acc`` then requantization to int8/uint8.

    ``w_scale`` is a scalar (per tensor) or one value per output channel.
    ``mode="tflite"``: TFLite fixed-point requantization (arithmetic.md §2);
    ``mode="ort"``: onnxruntime's float32 requantization, bit exact (§3,
    ``QLinearConv``). ``act``: None, "relu", "relu6" or a (lo, hi) clamp (see
    ``activation_range``). ``out_dtype`` defaults to x's dtype. Returns
    (N, O, Ho, Wo) of ``out_dtype``.
    """
    x, w, b, zp, gm = _conv_prepare(x, w, bias, x_zp, stride, padding, dilation, groups)
    rq = _Requantizer(mode, x_scale, w_scale, y_scale, y_zp, x.dtype.name if out_dtype is None else out_dtype,
                      act, gm["o"])
    return _to_nchw(_conv_blocks(x, w, b, zp, gm, rq, rq.out_dtype), gm)


# --------------------------------------------------------------------------
# fully connected / QLinearMatMul
# --------------------------------------------------------------------------


def _matmul_sum(a: np.ndarray, b: np.ndarray, a_zp: int, b_zp: np.ndarray) -> tuple[np.ndarray, int]:
    """Exact sum_k (a - a_zp)(b - b_zp) for a (..., M, K), b (..., K, N); b_zp scalar or (N,)."""
    ac, ca = _centre(a)
    bc, cb = _centre(b)
    da = ca - a_zp                          # a - a_zp = ac + da
    db = (cb - b_zp).astype(np.int64)       # b - b_zp = bc + db (per column)
    k = a.shape[-1]
    ba = max(int(np.abs(ac.astype(np.int64)).max(initial=0)), 0)
    bb = max(int(np.abs(bc.astype(np.int64)).max(initial=0)), 0)
    s = _exact_matmul(ac.astype(np.float32), bc.astype(np.float32), ba * bb).astype(np.int64)
    a_rows = ac.astype(np.int64).sum(axis=-1, keepdims=True)          # (..., M, 1)
    b_cols = bc.astype(np.int64).sum(axis=-2, keepdims=True)          # (..., 1, N)
    s = s + a_rows * db + da * b_cols + k * da * db
    return s, k * 255 * 255  # |a - a_zp|, |b - b_zp| <= 255


def matmul_acc(a, b, a_zp=0, b_zp=0) -> np.ndarray:
    """int32 accumulators of QLinearMatMul / MatMulInteger: saturate(sum_k (a - a_zp)(b - b_zp)).

    a: (..., M, K) int8/uint8; b: (..., K, N) int8/uint8 (batch dims broadcast
    as in numpy.matmul); a_zp: one integer in a's range; b_zp: one integer or
    N (per column) integers in b's range. Returns int32 (..., M, N).
    """
    a, b, azp, bzp = _matmul_prepare(a, b, a_zp, b_zp)
    s, bound = _matmul_sum(a, b, azp, bzp)
    return _saturate(s, bound).astype(np.int32)


def _matmul_prepare(a, b, a_zp, b_zp):
    a = check_dtype(a, "a", ACT_DTYPES)
    b = check_dtype(b, "b", ACT_DTYPES)
    if a.ndim < 2 or b.ndim < 2:
        raise ValueError(f"a and b must have at least 2 dimensions, got shapes {a.shape} and {b.shape}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"a's last dimension ({a.shape[-1]}) must equal b's second to last ({b.shape[-2]})")
    try:
        np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        raise ValueError(f"the batch dimensions of a {a.shape[:-2]} and b {b.shape[:-2]} do not broadcast")
    azp = _scalar_zp(a_zp, "a_zp", a.dtype.name)
    bzp = check_zero_point(b_zp, "b_zp", b.dtype.name)
    if bzp.ndim > 1 or bzp.size not in (1, b.shape[-1]):
        raise ValueError(f"b_zp must be a single value or {b.shape[-1]} per-column values, got shape {bzp.shape}")
    return a, b, azp, bzp.reshape(-1) if bzp.size > 1 else bzp.reshape(())


def qlinear_matmul(a, a_scale, a_zp, b, b_scale, b_zp, y_scale, y_zp, *, mode: str = "ort",
                   out_dtype=None) -> np.ndarray:
    """ONNX QLinearMatMul: ``matmul_acc`` then requantization (``mode="ort"`` is onnxruntime's).

    ``b_scale`` may be per column (N values). ``out_dtype`` defaults to a's dtype
    (onnxruntime's CPU kernel produces a's type). Returns (..., M, N).
    """
    a, b, azp, bzp = _matmul_prepare(a, b, a_zp, b_zp)
    rq = _Requantizer(mode, a_scale, b_scale, y_scale, y_zp, a.dtype.name if out_dtype is None else out_dtype,
                      None, b.shape[-1])
    s, bound = _matmul_sum(a, b, azp, bzp)
    return rq(_saturate(s, bound), axis=-1).astype(rq.out_dtype)


def fully_connected_acc(x, w, bias=None, x_zp=0) -> np.ndarray:
    """int32 accumulators of a fully-connected layer: saturate(sum_k (x - x_zp) * w[o, k] + bias[o]).

    x: (N, K) int8/uint8; w: (O, K) int8 (TFLite layout); bias (O,) or None.
    Returns int32 (N, O).
    """
    x, w, b, zp = _fc_prepare(x, w, bias, x_zp)
    return _fc_acc(x, w, b, zp).astype(np.int32)


def _fc_prepare(x, w, bias, x_zp):
    x = _act(x, "x", 2)
    w = _weights(w, "w", 2)
    if x.shape[1] != w.shape[1]:
        raise ValueError(f"w must have K = {x.shape[1]} columns (w.shape[1]), got {w.shape[1]}")
    zp = _scalar_zp(x_zp, "x_zp", x.dtype.name)
    return x, w, _bias(bias, w.shape[0]), zp


def _fc_acc(x, w, b, zp) -> np.ndarray:
    s, bound = _matmul_sum(x, w.T, zp, np.int64(0))
    s += b[None, :]
    return _saturate(s, bound + int(np.abs(b).max(initial=0)))


def fully_connected(x, w, bias, x_zp, x_scale, w_scale, y_scale, y_zp, *, mode: str = "tflite", act=None,
                    out_dtype=None) -> np.ndarray:
    """Quantized fully-connected layer: ``fully_connected_acc`` then requantization (per-channel OK)."""
    x, w, b, zp = _fc_prepare(x, w, bias, x_zp)
    rq = _Requantizer(mode, x_scale, w_scale, y_scale, y_zp, x.dtype.name if out_dtype is None else out_dtype,
                      act, w.shape[0])
    return rq(_fc_acc(x, w, b, zp), axis=1).astype(rq.out_dtype)


# --------------------------------------------------------------------------
# transposed 2-D convolution
# --------------------------------------------------------------------------


def _convt_geometry(x, w, stride, padding, output_padding, dilation, groups):
    n, c, h, wd = x.shape
    ci, og, kh, kw = w.shape
    groups = check_positive_int(groups, "groups")
    sh, sw = _pair(stride, "stride")
    dh, dw = _pair(dilation, "dilation")
    pt, pl, pb, pr = _pads(padding)
    oph, opw = _pair(output_padding, "output_padding", 0)
    if ci != c:
        raise ValueError(f"w must have C_in = {c} rows (w.shape[0]), got {ci}")
    if c % groups:
        raise ValueError(f"groups must divide the input channels ({c}), got groups={groups}")
    if og < 1 or kh < 1 or kw < 1:
        raise ValueError(f"w must have a non-empty (C_in, C_out/groups, kh, kw) shape, got {w.shape}")
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise ValueError(f"output_padding must be smaller than stride or dilation, got {(oph, opw)} "
                         f"with stride {(sh, sw)} and dilation {(dh, dw)}")
    hf = (h - 1) * sh + dh * (kh - 1) + 1 + oph
    wf = (wd - 1) * sw + dw * (kw - 1) + 1 + opw
    ho, wo = hf - pt - pb, wf - pl - pr
    if ho < 1 or wo < 1:
        raise ValueError(f"padding {(pt, pl, pb, pr)} leaves an empty output ({ho}x{wo})")
    return dict(n=n, c=c, h=h, w=wd, o=og * groups, og=og, cg=c // groups, kh=kh, kw=kw, g=groups,
                sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl, hf=hf, wf=wf, ho=ho, wo=wo)


def _convt_prepare(x, w, bias, x_zp, stride, padding, output_padding, dilation, groups):
    x = _act(x, "x", 4)
    w = _weights(w, "w", 4)
    zp = _scalar_zp(x_zp, "x_zp", x.dtype.name)
    gm = _convt_geometry(x, w, stride, padding, output_padding, dilation, groups)
    return x, w, _bias(bias, gm["o"]), zp, gm


def _convt_acc(x, w, b, zp, gm) -> np.ndarray:
    """Saturated int64 accumulators (N, O, Ho, Wo) of the transposed convolution.

    Scatter form: every input pixel (h, w) adds ``(x - zp) * w[c, o, i, j]`` to
    full-size output (h*sh + i*dh, w*sw + j*dw); the result is then cropped by
    the padding. One float32 GEMM per group gives all taps' contributions
    (exact by chunking; here |x - zp| <= 255 so B <= 255 * 128); they are
    added into int64 tap by tap with strided slices (col2im).
    """
    n, g, cg, og, kh, kw = gm["n"], gm["g"], gm["cg"], gm["og"], gm["kh"], gm["kw"]
    h, wd = gm["h"], gm["w"]
    xr = x.astype(np.int16) - np.int16(zp)                                  # real values / x_scale
    bx = int(np.abs(xr).max(initial=0))
    bw = int(np.abs(w.astype(np.int64)).max(initial=0))
    xm = xr.reshape(n, g, cg, h * wd).transpose(1, 2, 0, 3).reshape(g, cg, n * h * wd).astype(np.float32)
    # wm[g, (o, i, j), ci] = w[g*cg + ci, o, i, j]
    wm = w.reshape(g, cg, og * kh * kw).transpose(0, 2, 1).astype(np.float32)
    cols = _exact_matmul(wm, xm, bx * bw).astype(np.int64).reshape(g, og, kh, kw, n, h, wd)
    full = np.zeros((n, g, og, gm["hf"], gm["wf"]), np.int64)
    for i in range(kh):
        r0 = i * gm["dh"]
        for j in range(kw):
            c0 = j * gm["dw"]
            full[:, :, :, r0:r0 + gm["sh"] * (h - 1) + 1:gm["sh"], c0:c0 + gm["sw"] * (wd - 1) + 1:gm["sw"]] += \
                cols[:, :, i, j].transpose(2, 0, 1, 3, 4)
    acc = full.reshape(n, gm["o"], gm["hf"], gm["wf"])[:, :, gm["pt"]:gm["pt"] + gm["ho"], gm["pl"]:gm["pl"] + gm["wo"]]
    acc = acc + b[None, :, None, None]
    # every output receives at most cg * kh * kw terms
    return _saturate(acc, cg * kh * kw * bx * bw + int(np.abs(b).max(initial=0)))


def conv_transpose2d_acc(x, w, bias=None, x_zp=0, stride=1, padding=0, output_padding=0, dilation=1,
                         groups=1) -> np.ndarray:
    """int32 accumulators of a quantized transposed convolution (ONNX ConvTranspose / PyTorch).

    ``acc[n, g*Og + o, Y, X] = saturate_int32(sum (x[n, g*Cg + c, h, w] - x_zp) * w[g*Cg + c, o, i, j]
    + bias)`` over all (c, h, w, i, j) with ``Y + pt = h*sh + i*dh`` and
    ``X + pl = w*sw + j*dw``. Output size ``(H - 1)*sh - pt - pb + dh*(kh - 1)
    + output_padding + 1``. x: (N, C_in, H, W) int8/uint8; w: (C_in, C_out /
    groups, kh, kw) int8; output_padding < max(stride, dilation). CenterNet's
    neck uses stride 2, kernel 4, padding 1 (2x upsampling). Returns int32.
    """
    x, w, b, zp, gm = _convt_prepare(x, w, bias, x_zp, stride, padding, output_padding, dilation, groups)
    return _convt_acc(x, w, b, zp, gm).astype(np.int32)


def conv_transpose2d(x, w, bias, x_zp, x_scale, w_scale, y_scale, y_zp, *, stride=1, padding=0,
                     output_padding=0, dilation=1, groups=1, mode: str = "tflite", act=None,
                     out_dtype=None) -> np.ndarray:
    """Quantized transposed convolution: ``conv_transpose2d_acc`` then requantization.

    ``w_scale`` is a scalar or one value per output channel (C_out values).
    """
    x, w, b, zp, gm = _convt_prepare(x, w, bias, x_zp, stride, padding, output_padding, dilation, groups)
    rq = _Requantizer(mode, x_scale, w_scale, y_scale, y_zp, x.dtype.name if out_dtype is None else out_dtype,
                      act, gm["o"])
    return rq(_convt_acc(x, w, b, zp, gm), axis=1).astype(rq.out_dtype)
