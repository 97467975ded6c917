"""Input validation shared by golden/, hw/ and firmware/.

Every public entry point checks its arguments before doing any work and raises
``ValueError`` naming the parameter and the allowed range; nothing is silently
wrapped, truncated or dropped.
"""
from __future__ import annotations

import numpy as np

INT8_MIN, INT8_MAX = -128, 127
UINT8_MIN, UINT8_MAX = 0, 255
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

#: (qmin, qmax) of each activation storage type.
QRANGE = {"int8": (INT8_MIN, INT8_MAX), "uint8": (UINT8_MIN, UINT8_MAX)}


def qrange(dtype: str, name: str = "dtype") -> tuple[int, int]:
    """Return (qmin, qmax) for ``"int8"`` or ``"uint8"``."""
    dtype = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
    if dtype not in QRANGE:
        raise ValueError(f"{name} must be 'int8' or 'uint8', got {dtype!r}")
    return QRANGE[dtype]


def check_int_array(x, name: str, lo: int, hi: int, *, ndim: int | None = None) -> np.ndarray:
    """``x`` must be an integer ndarray with all values in [lo, hi]; returns it as int64."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu":
        raise ValueError(f"{name} must have an integer dtype, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    if a.size:
        mn, mx = int(a.min()), int(a.max())
        if mn < lo or mx > hi:
            raise ValueError(f"{name} values must lie in [{lo}, {hi}], got [{mn}, {mx}]")
    return a.astype(np.int64)


def check_dtype(x, name: str, dtypes) -> np.ndarray:
    """``x`` must be an ndarray of one of ``dtypes`` (names); returns it unchanged."""
    a = np.asarray(x)
    allowed = tuple(np.dtype(d).name for d in dtypes)
    if a.dtype.name not in allowed:
        raise ValueError(f"{name} must have dtype in {allowed}, got {a.dtype}")
    return a


def check_scale(s, name: str) -> np.ndarray:
    """A scale must be finite and strictly positive."""
    a = np.asarray(s, dtype=np.float64)
    if a.size == 0:
        raise ValueError(f"{name} must not be empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite and > 0, got {a[~np.isfinite(a)][:4].tolist()}")
    if np.any(a <= 0):
        raise ValueError(f"{name} must be finite and > 0 (allowed range (0, inf)), got {a[a <= 0][:4].tolist()}")
    return a


def check_zero_point(zp, name: str, dtype: str) -> np.ndarray:
    """A zero point must be an integer inside the storage type's range."""
    lo, hi = qrange(dtype)
    a = np.asarray(zp)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must be an integer in [{lo}, {hi}], got {a.ravel()[:4].tolist()}")
        a = a.astype(np.int64)
    return check_int_array(a, name, lo, hi)


def check_positive_int(v, name: str, lo: int = 1, hi: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be {rng}, got {v}")
    return int(v)
