"""The packed dual-INT8 DSP48E2 model (golden/packing.py) against plain integer arithmetic.

What is proved here, exhaustively where the space allows:

* pack/multiply/unpack of one product is exact for every (w_hi, w_lo, x) in int8^3;
* a chain is exact iff the low field's true sum fits signed 18 bits (checked
  on every low sum in a window twice the field, with extreme high sums);
* the product range of int8 x int8 (full range and weights in [-127, 127]),
  hence K = 7 (full) / K = 8 (restricted) always fit, and K + 1 does not;
* the same on real chains: every chain of extreme operands of length K, and
  the exact set of failing chains of length K + 1.
"""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from golden.config import PACK_SHIFT, packed_chain_bound
from golden.packing import (P_WIDTH, dsp48e2_mac_chain, pack_dual_int8, packed_dot, unpack_dual,
                            wrap_signed)

INT8 = np.arange(-128, 128, dtype=np.int64)
LO_MIN, LO_MAX = -(2**(PACK_SHIFT - 1)), 2**(PACK_SHIFT - 1) - 1


def _chain_exact(wh, wl, x):
    """Run chains (last axis) through the DSP model; return (exact mask, low-field true sums)."""
    p = np.asarray(dsp48e2_mac_chain(wh, wl, x))
    hi, lo = unpack_dual(p)
    true_hi = np.sum(wh * x, axis=-1)
    true_lo = np.sum(wl * x, axis=-1)
    return (hi == true_hi) & (lo == true_lo), true_lo


# ---------------------------------------------------------------- packing

def test_pack_exhaustive():
    wh, wl = np.meshgrid(INT8, INT8, indexing="ij")
    word = pack_dual_int8(wh, wl)
    assert np.array_equal(word, wh * 2**18 + wl)
    assert word.min() >= -(2**26) and word.max() < 2**26          # fits the 27-bit pre-adder
    # bit layout: bits [17:0] are sext(w_lo)'s low bits, the rest w_hi minus the borrow
    assert np.array_equal(word & (2**18 - 1), wl & (2**18 - 1))
    assert np.array_equal(word >> 18, wh - (wl < 0))
    assert pack_dual_int8(-128, -128) == -128 * 2**18 - 128
    assert isinstance(pack_dual_int8(3, -4), int)


def test_single_product_table_256x256():
    """K = 1 for every (w, x): both fields, with the other field at its extremes and zero."""
    w, x = np.meshgrid(INT8, INT8, indexing="ij")
    w, x = w.ravel(), x.ravel()
    for other in (-128, -1, 0, 1, 127):
        o = np.full_like(w, other)
        p = np.asarray(dsp48e2_mac_chain(o[:, None], w[:, None], x[:, None]))
        assert np.array_equal(p, o * x * 2**18 + w * x)
        hi, lo = unpack_dual(p)
        assert np.array_equal(lo, w * x) and np.array_equal(hi, o * x)
        hi, lo = unpack_dual(np.asarray(dsp48e2_mac_chain(w[:, None], o[:, None], x[:, None])))
        assert np.array_equal(hi, w * x) and np.array_equal(lo, o * x)


def test_all_single_products_int8_cubed():
    """All 256**3 = 16.7M (w_hi, w_lo, x): hi (with the borrow) and lo are exact."""
    wl, x = (a.ravel() for a in np.meshgrid(INT8, INT8, indexing="ij"))
    n = 0
    for block in np.split(INT8, 8):                  # 32 values of w_hi at a time: 2M products
        wh = np.repeat(block, wl.size)
        wlb = np.tile(wl, block.size)
        xb = np.tile(x, block.size)
        p = np.asarray(dsp48e2_mac_chain(wh[:, None], wlb[:, None], xb[:, None]))
        hi, lo = unpack_dual(p)
        assert np.array_equal(hi, wh * xb)
        assert np.array_equal(lo, wlb * xb)
        # the borrow is what makes hi exact: the bare arithmetic shift is off by one when lo < 0
        assert np.array_equal((p >> 18) - hi, -(lo < 0).astype(np.int64))
        n += wh.size
    assert n == 256**3


# ------------------------------------------------------- exactness theorem

@pytest.mark.parametrize("true_hi", [0, 1, -1, 8 * 16384, 8 * -16256, 9 * 16384, -(9 * 16384), 2**28, -(2**28)])
def test_unpack_exact_iff_low_sum_fits_18_bits(true_hi):
    """P = H * 2**18 + L: unpack returns (H, L) iff L in [-2**17, 2**17 - 1], for every L in a 2**20 window."""
    L = np.arange(-(2**19), 2**19, dtype=np.int64)
    p = wrap_signed(true_hi * 2**18 + L, P_WIDTH)
    hi, lo = unpack_dual(p)
    exact = (hi == true_hi) & (lo == L)
    assert np.array_equal(exact, (L >= LO_MIN) & (L <= LO_MAX))
    assert np.array_equal(hi * 2**18 + lo, p)          # the identity behind it: hi = (P - lo) / 2**18
    # out of range, the error is a whole number of field wraps, moved from lo to hi
    bad = ~exact
    assert np.all((L[bad] - lo[bad]) % 2**18 == 0)
    assert np.array_equal((L[bad] - lo[bad]) // 2**18, hi[bad] - true_hi)


@pytest.mark.parametrize("weight_min,k_bound", [(-128, 7), (-127, 8)])
def test_chain_bound_from_product_range(weight_min, k_bound):
    """Exhaustive product range of w in [weight_min, 127] x x in int8, and the K it allows."""
    w, x = np.meshgrid(np.arange(weight_min, 128), INT8, indexing="ij")
    prod = w * x
    pmin, pmax = int(prod.min()), int(prod.max())
    assert (pmin, pmax) == ((-16256, 16384) if weight_min == -128 else (-16256, 16256))
    assert packed_chain_bound(weight_min) == k_bound
    # every K-chain's low sum lies in [K*pmin, K*pmax] (attained), inside the field
    assert LO_MIN <= k_bound * pmin and k_bound * pmax <= LO_MAX
    # and K + 1 does not fit: one attained sum leaves the field
    assert (k_bound + 1) * pmax > LO_MAX or (k_bound + 1) * pmin < LO_MIN


def _all_sequences(n_choices, k):
    """Index array (n_choices**k, k): every sequence of k choices, in mixed-radix order."""
    n = n_choices ** k
    return (np.arange(n, dtype=np.int64)[:, None] // (n_choices ** np.arange(k, dtype=np.int64))) % n_choices


def _corner_ops(w_vals, x_vals):
    """Per-beat operand choices (w_hi, w_lo, x), shape (n, 3)."""
    return np.array(list(itertools.product(w_vals, w_vals, x_vals)), np.int64)


def test_k7_full_range_every_extreme_chain_exact():
    """All 8**7 = 2.1M ordered chains of 7 beats with w_hi, w_lo, x in {-128, 127}: exact."""
    ops = _corner_ops((-128, 127), (-128, 127))
    tail = _all_sequences(len(ops), 6)
    lo_seen = []
    for first in range(len(ops)):                    # 8 blocks of 262144 chains
        idx = np.concatenate([np.full((len(tail), 1), first), tail], axis=1)
        exact, true_lo = _chain_exact(ops[idx, 0], ops[idx, 1], ops[idx, 2])
        assert exact.all()
        lo_seen += [true_lo.min(), true_lo.max()]
    assert (min(lo_seen), max(lo_seen)) == (7 * -16256, 7 * 16384)          # the corners are reached


def _k_chains_of_corners(k, ops, rng):
    """Chains of length k over the corner operand choices ``ops`` (rows of (w_hi, w_lo, x)):

    * every multiset of k choices (the 48-bit P sum does not depend on the order), and
    * every order of the (w_lo, x) corners, w_hi drawn per beat at random from its corners
      (showing on the model itself that the order does not matter).
    Returns (w_hi, w_lo, x), each (n_chains, k).
    """
    multi = np.array(list(itertools.combinations_with_replacement(range(len(ops)), k)), np.int64)
    lo_ops = np.unique(ops[:, 1:], axis=0)
    seq = _all_sequences(len(lo_ops), k)
    wh_seq = rng.choice(np.unique(ops[:, 0]), size=seq.shape)
    wh = np.concatenate([ops[multi, 0], wh_seq])
    wl = np.concatenate([ops[multi, 1], lo_ops[seq, 0]])
    x = np.concatenate([ops[multi, 2], lo_ops[seq, 1]])
    return wh, wl, x


def test_k8_full_range_fails_only_for_all_minus128_squared():
    """8-chains of operands in {-128, 127}: the failures are exactly the chains with
    w_lo = x = -128 on every beat (low sum 8 * 16384 = 2**17), whatever w_hi is."""
    ops = _corner_ops((-128, 127), (-128, 127))
    wh, wl, x = _k_chains_of_corners(8, ops, np.random.default_rng(8))
    exact, true_lo = _chain_exact(wh, wl, x)
    assert np.array_equal(~exact, true_lo > LO_MAX)                         # fails iff the field overflows
    all_min = np.all((wl == -128) & (x == -128), axis=-1)
    assert np.array_equal(~exact, all_min)
    assert all_min[:-(4**8)].sum() == 9              # the 9 multisets of w_hi with w_lo = x = -128 everywhere
    assert all_min[-(4**8):].sum() == 1              # and one order of the (w_lo, x) corners


def test_k8_restricted_every_extreme_chain_exact():
    """Weights in [-127, 127]: every 8-chain of w in {-127, 127}, x in {-128, 127} is exact,
    and the extreme low sums 8 * (-16256), 8 * 16256 are reached."""
    ops = _corner_ops((-127, 127), (-128, 127))
    wh, wl, x = _k_chains_of_corners(8, ops, np.random.default_rng(9))
    exact, true_lo = _chain_exact(wh, wl, x)
    assert exact.all()
    assert (true_lo.min(), true_lo.max()) == (8 * -16256, 8 * 16256)


def test_k9_restricted_failing_chains():
    """Weights in [-127, 127], 9 beats: all 4**9 (w_lo, x) corner chains (w_hi = -w_lo);
    a chain fails iff its low sum leaves 18 bits, and failing chains exist, e.g. 9 x (-127)(-128)."""
    ops = np.array(list(itertools.product((-127, 127), (-128, 127))), np.int64)
    idx = _all_sequences(len(ops), 9)
    wl, x = ops[idx, 0], ops[idx, 1]
    wh = -wl                                         # hi field at its own extremes, opposite sign
    exact, true_lo = _chain_exact(wh, wl, x)
    out = (true_lo > LO_MAX) | (true_lo < LO_MIN)
    assert np.array_equal(~exact, out)
    assert out.any() and out.mean() < 0.5
    fail_hi, fail_lo = unpack_dual(dsp48e2_mac_chain([5] * 9, [-127] * 9, [-128] * 9))
    assert 9 * 16256 > LO_MAX
    assert (fail_hi, fail_lo) == (9 * 5 * -128 + 1, 9 * 16256 - 2**18)       # one wrap moved into hi
    # the same 9 products split 8 + 1 are exact again (what the PE's chain restart buys)
    assert packed_dot([5] * 9, [-127] * 9, [-128] * 9, weight_min=-127) == (9 * 5 * -128, 9 * 16256)


def test_k8_full_range_failing_chain_values():
    hi, lo = unpack_dual(dsp48e2_mac_chain([-128] * 8, [-128] * 8, [-128] * 8))
    assert (hi, lo) != (8 * 16384, 8 * 16384)
    assert (hi, lo) == (8 * 16384 + 1, 8 * 16384 - 2**18)
    # one beat of 16256 instead: 7 * 16384 + 16256 = 130944 still fits
    assert unpack_dual(dsp48e2_mac_chain([0] * 8, [-128] * 7 + [-127], [-128] * 8)) == (0, 7 * 16384 + 16256)


@pytest.mark.parametrize("weight_min", [-128, -127])
def test_random_chains_exact_iff_low_field_fits(weight_min):
    """1M random chains of length 1 .. K+2, operands biased towards the extremes."""
    rng = np.random.default_rng(486 + weight_min)
    k_bound = packed_chain_bound(weight_min)
    corners = np.array([weight_min, weight_min + 1, -1, 0, 1, 126, 127])
    for k in range(1, k_bound + 3):
        n = 1_000_000 // (k_bound + 2)

        def draw(lo):
            full = rng.integers(lo, 128, size=(n, k))
            pick = rng.integers(0, corners.size, size=(n, k))
            c = np.clip(corners[pick], lo, 127)
            return np.where(rng.random((n, k)) < 0.5, c, full)
        wh, wl, x = draw(weight_min), draw(weight_min), draw(-128)
        exact, true_lo = _chain_exact(wh, wl, x)
        assert np.array_equal(exact, (true_lo >= LO_MIN) & (true_lo <= LO_MAX))
        if k <= k_bound:
            assert exact.all()


# ------------------------------------------------------------- P register

def test_p_init_continues_the_chain_and_p_wraps_at_48_bits():
    rng = np.random.default_rng(1)
    wh, wl, x = (rng.integers(-128, 128, size=(1000, 6)) for _ in range(3))
    p_a = np.asarray(dsp48e2_mac_chain(wh[:, :2], wl[:, :2], x[:, :2]))
    assert np.array_equal(dsp48e2_mac_chain(wh[:, 2:], wl[:, 2:], x[:, 2:], p_init=p_a),
                          dsp48e2_mac_chain(wh, wl, x))
    top = 2**47 - 1
    # +1 product on a full register wraps to the most negative value, as the 48-bit adder does
    assert dsp48e2_mac_chain([0], [1], [1], p_init=top) == -(2**47)
    assert dsp48e2_mac_chain([0], [-1], [1], p_init=-(2**47)) == top
    big = pack_dual_int8(-128, -128) * -128          # largest product, 2**32 + 2**14
    assert dsp48e2_mac_chain([-128], [-128], [-128], p_init=top) == wrap_signed(top + big, 48)


def test_packed_dot_long_reductions_exact():
    rng = np.random.default_rng(7)
    for weight_min in (-128, -127):
        for k in (1, 6, 7, 8, 9, 63, 577):
            wh = rng.integers(weight_min, 128, size=(50, k))
            wl = rng.integers(weight_min, 128, size=(50, k))
            x = rng.integers(-128, 128, size=(50, k))
            wl[0] = weight_min                       # the worst case: every product at the extreme
            x[0] = -128
            hi, lo = packed_dot(wh, wl, x, weight_min=weight_min)
            assert np.array_equal(hi, (wh * x).sum(-1)) and np.array_equal(lo, (wl * x).sum(-1))


def test_refuses_bad_input():
    with pytest.raises(ValueError, match="w_hi"):
        pack_dual_int8(128, 0)
    with pytest.raises(ValueError, match="x"):
        dsp48e2_mac_chain([0], [0], [-129])
    with pytest.raises(ValueError, match="w_lo"):
        dsp48e2_mac_chain([0], [0.5], [1])
    with pytest.raises(ValueError, match="K >= 1"):
        dsp48e2_mac_chain(1, 2, 3)
    with pytest.raises(ValueError, match="p_init"):
        dsp48e2_mac_chain([0], [0], [0], p_init=2**47)
    with pytest.raises(ValueError, match="p"):
        unpack_dual(2**47)
    with pytest.raises(ValueError, match=r"chain must be \[1, 8\]"):
        packed_dot([1] * 9, [1] * 9, [1] * 9, weight_min=-127, chain=9)
    with pytest.raises(ValueError, match=r"w_lo values must lie in \[-127, 127\]"):
        packed_dot([1], [-128], [1], weight_min=-127)
