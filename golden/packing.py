"""Bit-level model of one DSP48E2 computing two INT8 products per cycle.

The two products share the activation ``x`` (arithmetic.md §4, Xilinx WP486):

    A(27) = w_hi << 18       D(27) = sext(w_lo)       pre-adder: A + D
    B(18) = sext(x)
    M     = (A + D) * B     = (w_hi * x) * 2**18 + (w_lo * x)
    P(48) = P + M           (two's complement, wraps at 48 bits)

    lo = sext(P[17:0])
    hi = (P >>> 18) + P[17]  (the arithmetic shift borrows 1 when lo < 0)

Accumulating K packed products in P keeps both fields exact exactly while the
low field's true sum ``sum(w_lo * x)`` lies in signed 18 bits
[-2**17, 2**17 - 1] (``hi = (P - lo) / 2**18`` always holds, so a wrong lo
moves hi by the same multiple of 2**18). ``golden.config.packed_chain_bound``
turns that into the chain length: 7 for full-range int8 weights, 8 for
weights in [-127, 127]. The array's PEs unpack and restart P every ``chain``
products (``packed_dot`` below models that).

Everything here is vectorised over NumPy int64 arrays: the packed word fits
27 bits, a product 27 + 8 bits, and P is wrapped to 48 bits after every
accumulation, so int64 never overflows and no object arrays are needed.
"""
from __future__ import annotations

import numpy as np

from ._check import INT8_MAX, INT8_MIN, check_int_array, check_positive_int
from .config import PACK_SHIFT, packed_chain_bound

#: DSP48E2 port widths (UG579): pre-adder output / multiplier A input, B input, P register.
PREADD_WIDTH = 27
B_WIDTH = 18
P_WIDTH = 48


def wrap_signed(v, width: int) -> np.ndarray:
    """Two's complement wrap of int64 values to ``width`` bits (what a ``width``-bit register keeps)."""
    v = np.asarray(v, np.int64)
    half = np.int64(1) << (width - 1)
    return ((v + half) & ((np.int64(1) << width) - 1)) - half


def _int8(v, name: str, lo: int = INT8_MIN) -> np.ndarray:
    return check_int_array(v, name, lo, INT8_MAX)


def _out(a: np.ndarray, scalar: bool):
    return int(a) if scalar else a


def pack_dual_int8(w_hi, w_lo):
    """Packed weight word ``(w_hi << 18) + sext(w_lo)``: the DSP's 27-bit pre-adder output A + D.

    ``w_hi``, ``w_lo``: int8 values (scalars or broadcastable arrays). Returns
    the signed 27-bit word as int64 (a Python int for scalar inputs). The
    27-bit wrap of the pre-adder is applied; it never triggers for int8
    inputs (|word| <= 128 * 2**18 + 128 < 2**26).
    """
    scalar = np.ndim(w_hi) == 0 and np.ndim(w_lo) == 0
    a = _int8(w_hi, "w_hi") << PACK_SHIFT             # A port: w_hi in bits [25:18]
    d = _int8(w_lo, "w_lo")                            # D port: sext(w_lo)
    word = wrap_signed(wrap_signed(a, PREADD_WIDTH) + wrap_signed(d, PREADD_WIDTH), PREADD_WIDTH)
    return _out(word, scalar)


def dsp48e2_mac_chain(w_hi, w_lo, x, p_init=0):
    """Accumulate K packed products along the last axis in a 48-bit P register.

    ``w_hi``, ``w_lo``, ``x``: int8 arrays broadcastable to a common shape
    ``(..., K)``; beat k multiplies the packed word of (w_hi[..., k],
    w_lo[..., k]) by x[..., k] (27 x 18 signed multiply) and adds it to P with
    two's complement wrap at 48 bits after every step, as the DSP does.
    ``p_init`` (signed 48-bit, broadcastable to ``(...)``) is P before the
    first beat (0 = the PE's restart of the chain). Returns P (signed 48-bit
    value, int64, shape ``(...)``; a Python int when everything is scalar/1-D).
    """
    wh = _int8(w_hi, "w_hi")
    wl = _int8(w_lo, "w_lo")
    xb = _int8(x, "x")
    p0 = check_int_array(p_init, "p_init", -(2**(P_WIDTH - 1)), 2**(P_WIDTH - 1) - 1)
    shape = np.broadcast_shapes(wh.shape, wl.shape, xb.shape)
    if len(shape) == 0:
        raise ValueError("w_hi/w_lo/x must have at least one axis (the chain axis, length K >= 1), got scalars")
    if shape[-1] < 1:
        raise ValueError(f"the chain axis (last) must have length K >= 1, got shape {shape}")
    # chain axis first and contiguous: one pass per beat over the whole batch
    word = np.ascontiguousarray(np.moveaxis(np.broadcast_to(pack_dual_int8(wh, wl), shape), -1, 0))
    b = np.ascontiguousarray(np.moveaxis(np.broadcast_to(wrap_signed(xb, B_WIDTH), shape), -1, 0))  # B: sext(x)
    try:
        p = np.array(np.broadcast_to(p0, shape[:-1]), np.int64)
    except ValueError:
        raise ValueError(f"p_init must broadcast to the batch shape {shape[:-1]}, got shape {p0.shape}") from None
    half = np.int64(1) << (P_WIDTH - 1)
    mask = (np.int64(1) << P_WIDTH) - 1
    prod = np.empty_like(p)
    for k in range(shape[-1]):
        # 27 x 18 signed product (fits 45 bits), sign-extended and added to the 48-bit P register,
        # which keeps the sum modulo 2**48 (two's complement wrap, in place: p = wrap48(p + prod))
        np.multiply(word[k], b[k], out=prod)
        p += prod
        p += half
        p &= mask
        p -= half
    return _out(p, p.ndim == 0)


def unpack_dual(p):
    """Split a packed accumulator P into its two fields: ``(hi, lo)``.

    ``lo = sext(P[17:0])``; ``hi = (P >>> 18) + P[17]``. ``p``: signed 48-bit
    values (int64 array or scalar). Returns int64 arrays (Python ints for a
    scalar). Exact (hi = sum w_hi*x, lo = sum w_lo*x) iff the low field's true
    sum lies in [-2**17, 2**17 - 1]; always ``hi * 2**18 + lo == P``.
    """
    scalar = np.ndim(p) == 0
    pa = check_int_array(p, "p", -(2**(P_WIDTH - 1)), 2**(P_WIDTH - 1) - 1)
    lo = wrap_signed(pa, PACK_SHIFT)                         # sext(P[17:0])
    hi = (pa >> PACK_SHIFT) + ((pa >> (PACK_SHIFT - 1)) & 1)  # arithmetic shift + borrow bit P[17]
    return _out(hi, scalar), _out(lo, scalar)


def packed_dot(w_hi, w_lo, x, weight_min: int = -128, chain: int | None = None):
    """Two dot products over the last axis, computed the way a packed PE does.

    The reduction is cut into chains of ``chain`` beats (default
    ``packed_chain_bound(weight_min)``); each chain is accumulated in a fresh
    P (``dsp48e2_mac_chain``), unpacked, and the fields are summed into wide
    accumulators. Weights must lie in [weight_min, 127] and ``chain`` must not
    exceed the bound (otherwise the result is not exact): both are checked.
    Returns ``(sum(w_hi * x), sum(w_lo * x))`` as int64 arrays of shape ``(...)``.
    """
    if weight_min not in (-127, -128):
        raise ValueError(f"weight_min must be -127 or -128, got {weight_min!r}")
    bound = packed_chain_bound(weight_min)
    chain = bound if chain is None else check_positive_int(chain, "chain", 1, bound)
    wh = _int8(w_hi, "w_hi", weight_min)
    wl = _int8(w_lo, "w_lo", weight_min)
    xb = _int8(x, "x")
    shape = np.broadcast_shapes(wh.shape, wl.shape, xb.shape)
    if len(shape) == 0 or shape[-1] < 1:
        raise ValueError(f"w_hi/w_lo/x need a reduction axis (last) of length >= 1, got shape {shape}")
    wh, wl, xb = (np.broadcast_to(a, shape) for a in (wh, wl, xb))
    hi = np.zeros(shape[:-1], np.int64)
    lo = np.zeros(shape[:-1], np.int64)
    for k0 in range(0, shape[-1], chain):
        s = slice(k0, k0 + chain)
        h, l_ = unpack_dual(np.asarray(dsp48e2_mac_chain(wh[..., s], wl[..., s], xb[..., s])))
        hi += h
        lo += l_
    return hi, lo
