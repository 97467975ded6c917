"""The command format of the accelerator top (docs/top.md): the ONE definition.

hw/top.py (the RTL decoder), the golden device, firmware/ (the host driver)
and the generated C header (``c_header``) all derive from this module.
Everything here is a function of ``golden.config.ArrayConfig``: field widths
and range limits follow the buffer depths, so a configuration has exactly one
descriptor layout (``layout(cfg)``).

Descriptor (128 bits, one ``cmd`` beat)
=======================================

Bits [0, 8) hold the opcode (``Op``). The opcode's fields follow from bit 8
upwards, packed LSB first in the order of ``FIELDS[op]``; each field's width
comes from ``field_widths(cfg)`` and is chosen so that one value past the
largest legal one is representable (a malformed descriptor can always be
expressed, and the hardware must flag it). All other bits are reserved and
must be zero. Field values are unsigned.

Widths (``D`` = the buffer depth in entries, ``bl`` = ``int.bit_length``):
bank ``bl(BANKS)``, offset ``bl(D)``, length ``bl(D + 1)``, k ``bl(k_max + 1)``,
ntiles ``bl(ntiles_max + 1)``, par_index ``bl(param_depth)``, rows_valid
``bl(rows + 1)``, lanes_valid ``bl(out_lanes + 1)``, counters 1, where
``k_max = min(max_k, act_depth, wgt_depth)`` and ``ntiles_max =
min(act_depth, out_depth // rows)``. A configuration whose RUN descriptor
does not fit 128 bits is rejected (ValueError) by ``layout``.

Commands and what the hardware checks (``descriptor_errors`` is the exact
golden of the checks; every violated check sets its sticky flag, the command
is dropped and counted in the CMDS_DROPPED counter; a dropped WRITE_* still
consumes its ``din`` payload up to and including the first word with
``last`` = 1, so the stream stays framed):

* ``WRITE_ACT bank offset length`` / ``WRITE_WGT`` / ``WRITE_PARAMS``:
  checks ``bank < BANKS``, ``1 <= length`` and ``offset + length <= depth``
  of that buffer (act_depth / wgt_depth / param_depth). Payload: ``length``
  entries of ``entry_bytes(cfg, buffer)`` bytes, each spanning
  ``words_per_entry`` ``din`` words (``pack_entries``), entry ``i`` written at
  ``offset + i``; ``last`` = 1 on exactly the final word. Waits (interlock)
  while a queued or running RUN still reads that bank of that buffer.
* ``WRITE_LUT offset length``: ``1 <= length``, ``offset + length <= 256``;
  entries of one byte, entry ``i`` is table entry ``offset + i``. Waits until
  no RUN is queued or running (the table is shared by every job).
* Payload framing (valid WRITE_*): a word with ``last`` = 1 before the final
  word ends the command early: LENGTH_MISMATCH, the complete entries received
  so far are written, the partial one is discarded. A final word with
  ``last`` = 0: LENGTH_MISMATCH, all entries are written and the following
  words are discarded up to and including the next word with ``last`` = 1.
* ``RUN act_bank act_offset wgt_bank wgt_offset par_bank par_index out_bank
  out_offset k ntiles rows_valid lanes_valid``: checks every bank ``< BANKS``,
  ``1 <= k <= k_max``, ``wgt_offset + k <= wgt_depth``, ``ntiles >= 1``,
  ``act_offset + ntiles*k <= act_depth``, ``out_offset + ntiles*rows <=
  out_depth``, ``par_index < param_depth``, ``rows_valid <= rows``,
  ``lanes_valid <= out_lanes``. Queued into the job queue (JOB_QUEUE_DEPTH
  entries; waits while it is full); the decoder continues with the next
  command. Tile t (0 <= t < ntiles) streams beats j = 0 .. k-1 with
  activations ``act[act_bank][act_offset + t*k + j]`` and weights
  ``wgt[wgt_bank][wgt_offset + j]`` (the same weights for every tile), the
  params set ``params[par_bank][par_index]`` (pushed once per tile), and its
  ``rows`` output rows go to ``out[out_bank][out_offset + t*rows + r]``.
  Every accepted beat adds ``rows_valid * lanes_valid`` to USEFUL_MACS.
* ``READ_OUT bank offset length``: checks as WRITE (out_depth). Waits while a
  queued or running RUN writes that bank, then sends ``length`` rows on
  ``dout`` (``out_lanes`` bytes each, ``words_per_entry`` words per row,
  ``last`` on the final word). A dropped READ_OUT sends nothing.
* ``READ_STATUS``: sends ``STATUS_SLOTS`` 64-bit little-endian slots
  (``Slot``: the status word, then the counters, snapshot on one cycle) as
  ``status_response_words(cfg)`` words, ``last`` on the final word.
* ``CLEAR_STATUS counters``: clears the error flags; ``counters`` = 1 also
  zeroes every counter. Does not wait.
* ``SYNC``: waits until no RUN is queued or running, then sends the status
  word (``words_per_entry(STATUS_BYTES, bus_bytes)`` words, normally one).

An unknown opcode sets BAD_OPCODE only (its fields mean nothing) and
consumes no payload. Nonzero reserved bits set RESERVED, fields out of range
BAD_RANGE (both may be set by one descriptor).
"""
from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass

import numpy as np

from ._check import UINT8_MAX, UINT8_MIN, check_int_array
from .config import BANKS, PARAM_CREDIT_CYCLES, ArrayConfig

__all__ = [
    "DESC_BITS", "OPCODE_BITS", "JOB_QUEUE_DEPTH", "DECODE_CYCLES", "SNAPSHOT_CYCLES", "OUT_READ_CYCLES", "LUT_ENTRIES",
    "COUNTER_BITS",
    "STATUS_BYTES", "SLOT_BYTES",
    "Op", "Flag", "Slot", "STATUS_SLOTS", "STATUS_BUSY", "STATUS_JOBS_SHIFT", "STATUS_JOBS_WIDTH", "ERROR_MASK",
    "FIELDS", "PAYLOAD_BUFFER", "Field", "field_widths", "layout", "k_max", "ntiles_max",
    "encode", "decode", "descriptor_errors", "reserved_mask",
    "BUFFERS", "entry_bytes", "buffer_depth", "words_per_entry", "pack_entries", "unpack_entries",
    "params_entry_bits", "pack_params", "unpack_params",
    "status_word", "status_response_words", "pack_status", "parse_status", "sync_response_words",
    "run_timing", "c_header",
]

#: Width of one command descriptor (one ``cmd`` beat).
DESC_BITS = 128
#: The opcode occupies descriptor bits [0, OPCODE_BITS).
OPCODE_BITS = 8
#: RUN jobs queued or running at once (the decoder waits while the queue is full).
JOB_QUEUE_DEPTH = 2
#: Cycles from a command's transfer (cycle c, the decoder in IDLE) to its first WAIT cycle: the
#: descriptor checks take CHECK (c + 1) and COMPARE (c + 2), the drop decision DECIDE (c + 3;
#: a dropped command is back in IDLE on c + DECODE_CYCLES, after discarding a WRITE's payload).
#: hw/decoder.py's states, the cycle models (firmware/report.py, firmware/golden_device.py) and
#: the buffers' write-to-read spacing (hw.buffers.WRITE_TO_READ_MIN_CYCLES) derive from it.
DECODE_CYCLES = 4
#: Cycles from the WAIT cycle w of a READ_STATUS / SYNC (the cycle its response shows: status and
#: counters) to its first response word, on w + 1 + SNAPSHOT_CYCLES: the counters' events pass a
#: register, then a chain of two per counter group (hw/top.py ``_COPY_STAGES``), then the
#: counters' own register is the decoder's response register's input (hw/top.py,
#: hw/decoder.py's SNAP states; issue 6: one cycle for the counters -> decoder distance was the
#: 30 x 4 top's critical path in session 9, the events -> counters distance 7.6-8.5 ns in session
#: 11, the events' register -> a group's copy 8.47 ns in session 11's a3). The cycle models
#: (firmware/report.py) derive from it.
SNAPSHOT_CYCLES = 4
#: Cycles from a READ_OUT's out-buffer read to its row on dout: the block RAMs' read register,
#: then their output register (hw.buffers output_register; issue 6: a DP16KD's clock-to-out without
#: it is 5.83 ns). The first word is on w + 1 + OUT_READ_CYCLES (w: the last WAIT cycle); the
#: cycle models (firmware/report.py) derive from it.
OUT_READ_CYCLES = 2
#: Entries of the output look-up table (indexed by an 8-bit code).
LUT_ENTRIES = UINT8_MAX - UINT8_MIN + 1
#: Width of every performance counter (wraps modulo 2**64).
COUNTER_BITS = 64
#: Bytes of one READ_STATUS slot (a counter, or the zero-extended status word).
SLOT_BYTES = COUNTER_BITS // 8
#: Bytes of the status word (the SYNC response).
STATUS_BYTES = 4


class Op(enum.IntEnum):
    """Opcodes (descriptor bits [0, 8)). 0 is deliberately invalid: an all-zero descriptor is flagged."""

    WRITE_ACT = 1
    WRITE_WGT = 2
    WRITE_PARAMS = 3
    WRITE_LUT = 4
    RUN = 5
    READ_OUT = 6
    READ_STATUS = 7
    CLEAR_STATUS = 8
    SYNC = 9


class Flag(enum.IntEnum):
    """Sticky error flags: bits of the status word (set by the decoder, cleared by CLEAR_STATUS)."""

    BAD_OPCODE = 1 << 0        # unknown opcode
    BAD_RANGE = 1 << 1         # a field out of its range (bank, offset + length, k, ntiles, ...)
    RESERVED = 1 << 2          # a nonzero bit outside the opcode's fields
    LENGTH_MISMATCH = 1 << 3   # din ``last`` early, or missing on the declared final word


#: All error flag bits.
ERROR_MASK = sum(int(f) for f in Flag)
#: Status bit: a RUN is queued, streaming or draining (the job queue is not empty).
STATUS_BUSY = 1 << 8
#: Status bits [12, 16): number of RUN jobs in the job queue.
STATUS_JOBS_SHIFT = 12
STATUS_JOBS_WIDTH = 4


class Slot(enum.IntEnum):
    """READ_STATUS response: 64-bit slots in this order (byte 8*i .. 8*i + 7, little-endian)."""

    STATUS = 0           # the status word, zero-extended
    CYCLES = 1           # every clock cycle since reset / CLEAR_STATUS counters=1
    BUSY_CYCLES = 2      # cycles with the job queue not empty (a RUN queued, streaming or draining)
    USEFUL_MACS = 3      # sum over beats accepted by the core of rows_valid * lanes_valid
    IN_STALL_CYCLES = 4  # cycles the sequencer offers a beat and the core is not ready
    OUT_STALL_CYCLES = 5  # cycles dout is valid and not ready
    CMDS_DROPPED = 6     # commands that set an error flag
    JOBS_DONE = 7        # RUN jobs whose last output row was written


STATUS_SLOTS = len(Slot)

#: Fields of each opcode, in descriptor order (LSB first, from bit OPCODE_BITS).
FIELDS: dict[Op, tuple[str, ...]] = {
    Op.WRITE_ACT: ("bank", "offset", "length"),
    Op.WRITE_WGT: ("bank", "offset", "length"),
    Op.WRITE_PARAMS: ("bank", "offset", "length"),
    Op.WRITE_LUT: ("offset", "length"),
    Op.RUN: ("act_bank", "act_offset", "wgt_bank", "wgt_offset", "par_bank", "par_index", "out_bank",
             "out_offset", "k", "ntiles", "rows_valid", "lanes_valid"),
    Op.READ_OUT: ("bank", "offset", "length"),
    Op.READ_STATUS: (),
    Op.CLEAR_STATUS: ("counters",),
    Op.SYNC: (),
}

#: Which buffer a payload-carrying / reading command addresses.
PAYLOAD_BUFFER: dict[Op, str] = {Op.WRITE_ACT: "act", Op.WRITE_WGT: "wgt", Op.WRITE_PARAMS: "params",
                                 Op.WRITE_LUT: "lut", Op.READ_OUT: "out"}

#: The on-chip buffers (entries addressed by WRITE_*/READ_OUT).
BUFFERS = ("act", "wgt", "params", "out", "lut")


@dataclass(frozen=True)
class Field:
    """One descriptor field: ``name``, bit ``offset`` in the descriptor, ``width``, and its
    simple range [``lo``, ``hi``] (compound rules such as offset + length <= depth are
    checked by ``descriptor_errors``)."""

    name: str
    offset: int
    width: int
    lo: int
    hi: int


def _check_cfg(cfg) -> ArrayConfig:
    if not isinstance(cfg, ArrayConfig):
        raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
    if cfg.out_depth < cfg.rows:
        raise ValueError(f"out_depth must be >= rows = {cfg.rows} (one tile's output rows), got {cfg.out_depth}")
    return cfg


def buffer_depth(cfg: ArrayConfig, buffer: str) -> int:
    """Entries per bank of ``buffer`` (``LUT_ENTRIES`` for the single LUT)."""
    depths = {"act": cfg.act_depth, "wgt": cfg.wgt_depth, "params": cfg.param_depth, "out": cfg.out_depth,
              "lut": LUT_ENTRIES}
    if buffer not in depths:
        raise ValueError(f"buffer must be one of {BUFFERS}, got {buffer!r}")
    return depths[buffer]


def k_max(cfg: ArrayConfig) -> int:
    """Largest legal RUN ``k``: the accumulators' max_k and one tile's beats in both buffers."""
    return min(cfg.max_k, cfg.act_depth, cfg.wgt_depth)


def ntiles_max(cfg: ArrayConfig) -> int:
    """Largest legal RUN ``ntiles`` (k = 1, offsets 0)."""
    return min(cfg.act_depth, cfg.out_depth // cfg.rows)


def field_widths(cfg: ArrayConfig) -> dict[str, int]:
    """Width of every field name (each holds one value past its largest legal value)."""
    _check_cfg(cfg)
    bw = BANKS.bit_length()
    w = {"counters": 1, "k": (k_max(cfg) + 1).bit_length(), "ntiles": (ntiles_max(cfg) + 1).bit_length(),
         "par_index": cfg.param_depth.bit_length(), "rows_valid": (cfg.rows + 1).bit_length(),
         "lanes_valid": (cfg.out_lanes + 1).bit_length(), "bank": bw,
         "act_bank": bw, "wgt_bank": bw, "par_bank": bw, "out_bank": bw,
         "act_offset": cfg.act_depth.bit_length(), "wgt_offset": cfg.wgt_depth.bit_length(),
         "out_offset": cfg.out_depth.bit_length()}
    return w


def _simple_ranges(cfg: ArrayConfig, op: Op) -> dict[str, tuple[int, int]]:
    """[lo, hi] of each field of ``op`` taken alone."""
    r = {"bank": (0, BANKS - 1), "act_bank": (0, BANKS - 1), "wgt_bank": (0, BANKS - 1),
         "par_bank": (0, BANKS - 1), "out_bank": (0, BANKS - 1), "counters": (0, 1),
         "act_offset": (0, cfg.act_depth - 1), "wgt_offset": (0, cfg.wgt_depth - 1),
         "out_offset": (0, cfg.out_depth - 1), "par_index": (0, cfg.param_depth - 1),
         "k": (1, k_max(cfg)), "ntiles": (1, ntiles_max(cfg)), "rows_valid": (0, cfg.rows),
         "lanes_valid": (0, cfg.out_lanes)}
    if op in PAYLOAD_BUFFER:
        d = buffer_depth(cfg, PAYLOAD_BUFFER[op])
        r["offset"] = (0, d - 1)
        r["length"] = (1, d)
    return r


def layout(cfg: ArrayConfig) -> dict[Op, tuple[Field, ...]]:
    """The descriptor layout of every opcode: ``{op: (Field, ...)}`` (offsets from bit 8 up).

    Raises ValueError when an opcode's fields do not fit ``DESC_BITS`` (very deep buffers).
    """
    return dict(_layout(_check_cfg(cfg)))


@functools.lru_cache(maxsize=64)
def _layout(cfg: ArrayConfig) -> dict[Op, tuple[Field, ...]]:
    """``layout`` for a checked (frozen, hashable) cfg; cached because encode/decode/checks call it per word."""
    w = field_widths(cfg)
    out = {}
    for op, names in FIELDS.items():
        ranges = _simple_ranges(cfg, op)
        wo = dict(w)
        if op in PAYLOAD_BUFFER:
            d = buffer_depth(cfg, PAYLOAD_BUFFER[op])
            wo.update(offset=d.bit_length(), length=(d + 1).bit_length())
        pos, fields = OPCODE_BITS, []
        for n in names:
            fields.append(Field(n, pos, wo[n], *ranges[n]))
            pos += wo[n]
        if pos > DESC_BITS:
            raise ValueError(f"the {op.name} descriptor needs {pos} bits for this cfg, more than {DESC_BITS}: "
                             "reduce act_depth/wgt_depth/out_depth/param_depth/max_k")
        out[op] = tuple(fields)
    return out


def reserved_mask(cfg: ArrayConfig, op: Op) -> int:
    """Descriptor bits of ``op`` that must be zero (outside the opcode and its fields)."""
    used = (1 << OPCODE_BITS) - 1
    for f in layout(cfg)[Op(op)]:
        used |= ((1 << f.width) - 1) << f.offset
    return ((1 << DESC_BITS) - 1) & ~used


def _op(op) -> Op:
    try:
        return Op(op) if not isinstance(op, str) else Op[op]
    except (ValueError, KeyError):
        raise ValueError(f"op must be one of {[o.name for o in Op]} (or their values), got {op!r}") from None


def _range_errors(cfg: ArrayConfig, op: Op, v: dict[str, int]) -> list[str]:
    """Every violated range rule of ``op`` with field values ``v``, as messages (empty: in range)."""
    errs = []
    for n, (lo, hi) in _simple_ranges(cfg, op).items():
        if n in v and not lo <= v[n] <= hi:
            errs.append(f"{op.name}.{n} must be in [{lo}, {hi}], got {v[n]}")
    if op in PAYLOAD_BUFFER:
        d = buffer_depth(cfg, PAYLOAD_BUFFER[op])
        if v["offset"] + v["length"] > d:
            errs.append(f"{op.name}: offset + length must be <= {PAYLOAD_BUFFER[op]} depth {d}, got "
                        f"{v['offset']} + {v['length']}")
    if op == Op.RUN:
        k, n = v["k"], v["ntiles"]
        if v["wgt_offset"] + k > cfg.wgt_depth:
            errs.append(f"RUN: wgt_offset + k must be <= wgt_depth {cfg.wgt_depth}, got {v['wgt_offset']} + {k}")
        if v["act_offset"] + n * k > cfg.act_depth:
            errs.append(f"RUN: act_offset + ntiles*k must be <= act_depth {cfg.act_depth}, got "
                        f"{v['act_offset']} + {n}*{k}")
        if v["out_offset"] + n * cfg.rows > cfg.out_depth:
            errs.append(f"RUN: out_offset + ntiles*rows must be <= out_depth {cfg.out_depth}, got "
                        f"{v['out_offset']} + {n}*{cfg.rows}")
    return errs


def encode(cfg: ArrayConfig, op, *, check: bool = True, **fields) -> int:
    """The 128-bit descriptor of ``op`` with ``fields`` (every field of ``FIELDS[op]``, by name).

    ``check=True`` (the host driver's default) raises ValueError naming the
    field and its allowed range for any rule the hardware would flag.
    ``check=False`` only requires each value to fit its field's width: it
    builds malformed-but-representable descriptors for tests of the hardware's
    checks.
    """
    cfg = _check_cfg(cfg)
    op = _op(op)
    lay = layout(cfg)[op]
    names = {f.name for f in lay}
    extra = set(fields) - names
    if extra:
        raise ValueError(f"{op.name} has no field(s) {sorted(extra)}; its fields are {FIELDS[op]}")
    missing = names - set(fields)
    if missing:
        raise ValueError(f"{op.name} is missing field(s) {sorted(missing)}; its fields are {FIELDS[op]}")
    word = int(op)
    vals = {}
    for f in lay:
        v = fields[f.name]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{op.name}.{f.name} must be an integer, got {v!r}")
        v = int(v)
        if not 0 <= v < (1 << f.width):
            raise ValueError(f"{op.name}.{f.name} must be in [0, {(1 << f.width) - 1}] (its {f.width}-bit field), "
                             f"got {v}")
        vals[f.name] = v
        word |= v << f.offset
    if check:
        errs = _range_errors(cfg, op, vals)
        if errs:
            raise ValueError(errs[0])
    return word


def _fields_of(cfg: ArrayConfig, op: Op, word: int) -> dict[str, int]:
    return {f.name: (word >> f.offset) & ((1 << f.width) - 1) for f in layout(cfg)[op]}


def descriptor_errors(cfg: ArrayConfig, word: int) -> int:
    """The error flags (``Flag`` bits) the hardware sets for descriptor ``word`` (0: accepted).

    Exactly the decoder's checks: BAD_OPCODE alone for an unknown opcode;
    otherwise RESERVED if a reserved bit is set and BAD_RANGE if any range
    rule fails. (LENGTH_MISMATCH depends on the payload, not the descriptor.)
    """
    cfg = _check_cfg(cfg)
    if isinstance(word, bool) or not isinstance(word, (int, np.integer)) or not 0 <= int(word) < (1 << DESC_BITS):
        raise ValueError(f"word must be an integer in [0, 2**{DESC_BITS} - 1], got {word!r}")
    word = int(word)
    code = word & ((1 << OPCODE_BITS) - 1)
    if code not in {int(o) for o in Op}:
        return int(Flag.BAD_OPCODE)
    op = Op(code)
    flags = 0
    if word & reserved_mask(cfg, op):
        flags |= Flag.RESERVED
    if _range_errors(cfg, op, _fields_of(cfg, op, word)):
        flags |= Flag.BAD_RANGE
    return int(flags)


def decode(cfg: ArrayConfig, word: int) -> tuple[Op, dict[str, int]]:
    """Inverse of ``encode``: ``(op, {field: value})``.

    Raises ValueError (naming the opcode/field and its allowed range) for
    anything the hardware would flag: unknown opcode, reserved bits set, a
    field out of range.
    """
    cfg = _check_cfg(cfg)
    if isinstance(word, bool) or not isinstance(word, (int, np.integer)) or not 0 <= int(word) < (1 << DESC_BITS):
        raise ValueError(f"word must be an integer in [0, 2**{DESC_BITS} - 1], got {word!r}")
    word = int(word)
    code = word & ((1 << OPCODE_BITS) - 1)
    if code not in {int(o) for o in Op}:
        raise ValueError(f"opcode must be one of {[(o.name, int(o)) for o in Op]}, got {code}")
    op = Op(code)
    res = word & reserved_mask(cfg, op)
    if res:
        raise ValueError(f"{op.name}: reserved bits must be zero, got mask {res:#x}")
    vals = _fields_of(cfg, op, word)
    errs = _range_errors(cfg, op, vals)
    if errs:
        raise ValueError(errs[0])
    return op, vals


# ---------------------------------------------------------------------------
# Payload entries <-> bus words
# ---------------------------------------------------------------------------
def params_entry_bits(cfg: ArrayConfig) -> int:
    """Bits of one params entry: ``hw.core.params_layout(cfg).size`` (the core's params beat)."""
    from hw.core import params_layout    # lazy: golden/ does not need hw/ at import time
    return params_layout(cfg).size


def entry_bytes(cfg: ArrayConfig, buffer: str) -> int:
    """Bytes of one entry of ``buffer``: act ``rows``, wgt/out ``out_lanes``, params
    ``ceil(params_entry_bits / 8)``, lut 1."""
    if buffer == "params":
        return (params_entry_bits(cfg) + 7) // 8
    sizes = {"act": cfg.rows, "wgt": cfg.out_lanes, "out": cfg.out_lanes, "lut": 1}
    if buffer not in sizes:
        raise ValueError(f"buffer must be one of {BUFFERS}, got {buffer!r}")
    return sizes[buffer]


def words_per_entry(entry_bytes: int, bus_bytes: int) -> int:
    """Bus words one entry occupies: ceil(entry_bytes / bus_bytes) (entries never share a word)."""
    for n, v in (("entry_bytes", entry_bytes), ("bus_bytes", bus_bytes)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{n} must be an integer >= 1, got {v!r}")
    return -(-int(entry_bytes) // int(bus_bytes))


def pack_entries(entries, bus_bytes: int) -> list[int]:
    """Bus words carrying ``entries`` (n x entry_bytes, values in [-128, 255]: int8 or uint8).

    Entry i's bytes, little-endian (byte 0 = element 0 in the low 8 bits; int8
    as its two's-complement byte), fill words ``i*wpe .. i*wpe + wpe - 1``,
    unused high bytes of the last word zero.
    """
    a = np.asarray(entries)
    if a.ndim != 2 or a.shape[1] < 1:
        raise ValueError(f"entries must be a 2-D array (n x entry_bytes, entry_bytes >= 1), got shape {a.shape}")
    if a.dtype.kind not in "iu":
        raise ValueError(f"entries must have an integer dtype, got {a.dtype}")
    a = check_int_array(a, "entries", -128, 255)     # int8 or uint8 values (a byte either way)
    wpe = words_per_entry(a.shape[1], bus_bytes)
    b = np.zeros((a.shape[0], wpe * bus_bytes), np.uint8)
    b[:, :a.shape[1]] = (a & 0xFF).astype(np.uint8)
    flat = b.reshape(-1, bus_bytes)
    return [int.from_bytes(row.tobytes(), "little") for row in flat]


def unpack_entries(words, entry_bytes: int, bus_bytes: int) -> np.ndarray:
    """Inverse of ``pack_entries``: uint8 array (n x entry_bytes) from bus words.

    ``len(words)`` must be a multiple of ``words_per_entry``; every word must
    fit ``bus_bytes`` bytes. Padding bytes are ignored.
    """
    wpe = words_per_entry(entry_bytes, bus_bytes)
    ws = [int(w) for w in words]
    if len(ws) % wpe:
        raise ValueError(f"words must hold whole entries ({wpe} words each), got {len(ws)} words")
    for w in ws:
        if not 0 <= w < (1 << (8 * bus_bytes)):
            raise ValueError(f"words must be in [0, 2**{8 * bus_bytes} - 1], got {w}")
    raw = b"".join(w.to_bytes(bus_bytes, "little") for w in ws)
    b = np.frombuffer(raw, np.uint8).reshape(-1, wpe * bus_bytes) if ws else np.zeros((0, wpe * bus_bytes), np.uint8)
    return b[:, :entry_bytes].copy()


def _params_int(cfg: ArrayConfig, params) -> int:
    from hw.core import pack_payload, params_layout

    from .array_model import LANE_FIELDS, check_params
    p = check_params(params, cfg.out_lanes, cfg.bias_width)
    beat = {"lane": [{f: int(p[f][i]) for f in LANE_FIELDS} for i in range(cfg.out_lanes)],
            "lut_en": int(p["lut_en"])}
    return pack_payload(params_layout(cfg), beat)


def pack_params(cfg: ArrayConfig, params_sets) -> np.ndarray:
    """Params entries (n x entry_bytes(cfg, "params") uint8) for ``pack_entries``.

    ``params_sets``: a sequence of params beats (``golden.array_model.check_params``
    layouts, validated). Entry = ``hw.core.pack_payload(params_layout(cfg), beat)``
    as a little-endian integer.
    """
    if isinstance(params_sets, dict):
        raise ValueError("params_sets must be a sequence of params dicts (wrap a single set in a list)")
    nb = entry_bytes(cfg, "params")
    rows = [np.frombuffer(_params_int(cfg, p).to_bytes(nb, "little"), np.uint8) for p in params_sets]
    if not rows:
        raise ValueError("params_sets must hold at least one params set")
    return np.stack(rows)


def unpack_params(cfg: ArrayConfig, entry) -> dict:
    """One params entry (entry_bytes uint8) -> the RTL payload dict (``hw.core.unpack_payload``)."""
    from hw.core import params_layout, unpack_payload
    e = check_int_array(entry, "entry", 0, 255, ndim=1)
    nb = entry_bytes(cfg, "params")
    if e.size != nb:
        raise ValueError(f"entry must have entry_bytes = {nb} bytes, got {e.size}")
    bits = int.from_bytes(e.astype(np.uint8).tobytes(), "little")
    if bits >> params_entry_bits(cfg):
        raise ValueError("entry has nonzero padding bits above the params layout")
    return unpack_payload(params_layout(cfg), bits)


# ---------------------------------------------------------------------------
# Status and responses
# ---------------------------------------------------------------------------
def status_word(flags: int, jobs: int) -> int:
    """The status word: error ``flags`` (bits of ``Flag``), STATUS_BUSY when ``jobs`` > 0,
    ``jobs`` (RUN jobs in the queue) in bits [STATUS_JOBS_SHIFT, + STATUS_JOBS_WIDTH)."""
    if isinstance(flags, bool) or not isinstance(flags, (int, np.integer)) or int(flags) & ~ERROR_MASK:
        raise ValueError(f"flags must be a combination of Flag bits (mask {ERROR_MASK:#x}), got {flags!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, (int, np.integer)) or not 0 <= jobs <= JOB_QUEUE_DEPTH:
        raise ValueError(f"jobs must be an integer in [0, {JOB_QUEUE_DEPTH}], got {jobs!r}")
    return int(flags) | (STATUS_BUSY if jobs else 0) | (int(jobs) << STATUS_JOBS_SHIFT)


def status_response_words(cfg: ArrayConfig) -> int:
    """Words of the READ_STATUS response: ceil(STATUS_SLOTS * SLOT_BYTES / bus_bytes)."""
    return words_per_entry(STATUS_SLOTS * SLOT_BYTES, cfg.bus_bytes)


def sync_response_words(cfg: ArrayConfig) -> int:
    """Words of the SYNC response (the status word): ceil(STATUS_BYTES / bus_bytes)."""
    return words_per_entry(STATUS_BYTES, cfg.bus_bytes)


def pack_status(cfg: ArrayConfig, slots) -> list[int]:
    """READ_STATUS response words for slot values (``STATUS_SLOTS`` ints, order of ``Slot``)."""
    v = [int(x) for x in slots]
    if len(v) != STATUS_SLOTS:
        raise ValueError(f"slots must have STATUS_SLOTS = {STATUS_SLOTS} values, got {len(v)}")
    for s, x in zip(Slot, v):
        if not 0 <= x < (1 << COUNTER_BITS):
            raise ValueError(f"slot {s.name} must be in [0, 2**{COUNTER_BITS} - 1], got {x}")
    raw = np.frombuffer(b"".join(x.to_bytes(SLOT_BYTES, "little") for x in v), np.uint8)
    return pack_entries(raw[None, :], cfg.bus_bytes)


def parse_status(cfg: ArrayConfig, words) -> dict[str, int]:
    """READ_STATUS response words -> ``{slot name: value}`` plus ``flags``, ``busy``, ``jobs``."""
    ws = list(words)
    if len(ws) != status_response_words(cfg):
        raise ValueError(f"words must be the {status_response_words(cfg)} words of a READ_STATUS response, "
                         f"got {len(ws)}")
    b = unpack_entries(ws, STATUS_SLOTS * SLOT_BYTES, cfg.bus_bytes)[0]
    out = {s.name: int.from_bytes(b[SLOT_BYTES * s:SLOT_BYTES * (s + 1)].tobytes(), "little") for s in Slot}
    st = out["STATUS"]
    out.update(flags=st & ERROR_MASK, busy=int(bool(st & STATUS_BUSY)),
               jobs=(st >> STATUS_JOBS_SHIFT) & ((1 << STATUS_JOBS_WIDTH) - 1))
    return out


# ---------------------------------------------------------------------------
# Timing of a RUN (docs/top.md, "Busy cycles")
# ---------------------------------------------------------------------------
def run_timing(cfg: ArrayConfig, k: int, ntiles: int) -> dict:
    """Cycle counts of one RUN executed alone (job queue empty before, no other job after).

    The sequencer offers the core one beat per cycle and the params set on
    every cycle from the same cycle (model cycle 0 = the second cycle of the
    job in the queue), exactly ``golden.array_model.simulate`` with
    ``in_valid = params_valid = out_ready = 1``. With ``al = cfg.array_latency``,
    ``D = cfg.param_fifo_depth``, ``R = cfg.rows``, ``C = PARAM_CREDIT_CYCLES``
    (golden.config: a push counts for the credit C cycles later), model cycles:

        p_t = t                                  for t < D     (params push t)
        p_t = max(p_{t-1} + 1, L_{t-D} + al + R) for t >= D    (a pop frees the slot)
        L_0 = max(k - 1, p_0 + C)                               (last beat of tile 0)
        L_t = max(L_{t-1} + max(k, R), p_t + C)                 (gap rule, param credit)
        T   = L_{ntiles-1} + cfg.latency + R - 1                (last row on out)

    Returns ``{"last_accept": [L_t], "param_push": [p_t], "last_row": T,
    "busy_cycles": T + 2, "in_stall_cycles": ...}``: BUSY_CYCLES grows by ``T + 2`` (the job's
    first queue cycle issues the first reads, whose data are on the core's
    inputs from model cycle 0; the last row is written on model cycle T);
    IN_STALL_CYCLES counts the cycles the sequencer's beat waits, which is the
    model's ``in_valid & ~in_ready`` total: sum over t of (L_t - earliest
    offer of the last beat of tile t).
    """
    cfg = _check_cfg(cfg)
    for n, v, hi in (("k", k, k_max(cfg)), ("ntiles", ntiles, None)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1 or (hi is not None and v > hi):
            raise ValueError(f"{n} must be an integer in [1, {hi if hi is not None else 'inf'}], got {v!r}")
    al, depth, rows = cfg.array_latency, cfg.param_fifo_depth, cfg.rows
    p, last = [], []
    stall = 0
    for t in range(ntiles):
        p.append(t if t < depth else max(p[t - 1] + 1, last[t - depth] + al + rows))
        offer = k - 1 if t == 0 else last[t - 1] + k
        credit = p[t] + PARAM_CREDIT_CYCLES
        lt = max(offer, credit) if t == 0 else max(last[t - 1] + max(k, rows), credit)
        stall += lt - offer
        last.append(lt)
    t_last = last[-1] + cfg.latency + rows - 1
    return {"last_accept": last, "param_push": p, "last_row": t_last, "busy_cycles": t_last + 2, "in_stall_cycles": stall}


# ---------------------------------------------------------------------------
# C header for a driver
# ---------------------------------------------------------------------------
def _cname(s: str) -> str:
    return re.sub(r"[^A-Z0-9]", "_", s.upper())


def c_header(cfg: ArrayConfig, prefix: str = "ANL") -> str:
    """A self-contained C99 header with everything a driver needs for ``cfg``.

    Opcodes, per-opcode field shifts/widths/ranges, reserved masks (as four
    32-bit words, word 0 = descriptor bits [0, 32)), status bits and slots,
    buffer depths, entry sizes and words per entry, and two inline helpers
    to build a descriptor as ``uint32_t d[4]`` (``<prefix>_desc_set``) and
    read a field back (``<prefix>_desc_get``).
    """
    cfg = _check_cfg(cfg)
    if not re.fullmatch(r"[A-Z][A-Z0-9_]*", prefix):
        raise ValueError(f"prefix must be an upper-case C identifier, got {prefix!r}")
    P = prefix
    lay = layout(cfg)
    g = f"{P}_ISA_H"
    L = [f"/* Generated by golden.isa.c_header for ArrayConfig({cfg}). Do not edit. */",
         f"#ifndef {g}", f"#define {g}", "", "#include <stdint.h>", "",
         f"#define {P}_DESC_BITS {DESC_BITS}", f"#define {P}_DESC_WORDS32 {DESC_BITS // 32}",
         f"#define {P}_OPCODE_BITS {OPCODE_BITS}", f"#define {P}_BANKS {BANKS}",
         f"#define {P}_JOB_QUEUE_DEPTH {JOB_QUEUE_DEPTH}", f"#define {P}_BUS_BYTES {cfg.bus_bytes}",
         f"#define {P}_ROWS {cfg.rows}", f"#define {P}_COLS {cfg.cols}", f"#define {P}_OUT_LANES {cfg.out_lanes}",
         f"#define {P}_K_MAX {k_max(cfg)}", f"#define {P}_NTILES_MAX {ntiles_max(cfg)}", ""]
    for buf in BUFFERS:
        eb = entry_bytes(cfg, buf)
        B = _cname(buf)
        L += [f"#define {P}_{B}_DEPTH {buffer_depth(cfg, buf)}", f"#define {P}_{B}_ENTRY_BYTES {eb}",
              f"#define {P}_{B}_WORDS_PER_ENTRY {words_per_entry(eb, cfg.bus_bytes)}"]
    L.append("")
    for op in Op:
        L.append(f"#define {P}_OP_{op.name} {int(op)}")
    L.append("")
    for op in Op:
        for f in lay[op]:
            n = f"{P}_{op.name}_{_cname(f.name)}"
            L += [f"#define {n}_SHIFT {f.offset}", f"#define {n}_WIDTH {f.width}",
                  f"#define {n}_MIN {f.lo}", f"#define {n}_MAX {f.hi}"]
        m = reserved_mask(cfg, op)
        for i in range(DESC_BITS // 32):
            L.append(f"#define {P}_{op.name}_RESERVED{i} 0x{(m >> (32 * i)) & 0xFFFFFFFF:08X}u")
        L.append("")
    for fl in Flag:
        L.append(f"#define {P}_FLAG_{fl.name} 0x{int(fl):X}u")
    L += [f"#define {P}_ERROR_MASK 0x{ERROR_MASK:X}u", f"#define {P}_STATUS_BUSY 0x{STATUS_BUSY:X}u",
          f"#define {P}_STATUS_JOBS_SHIFT {STATUS_JOBS_SHIFT}", f"#define {P}_STATUS_JOBS_WIDTH {STATUS_JOBS_WIDTH}",
          ""]
    for s in Slot:
        L.append(f"#define {P}_SLOT_{s.name} {int(s)}")
    L += [f"#define {P}_STATUS_SLOTS {STATUS_SLOTS}", f"#define {P}_SLOT_BYTES {SLOT_BYTES}",
          f"#define {P}_STATUS_RESPONSE_WORDS {status_response_words(cfg)}",
          f"#define {P}_SYNC_RESPONSE_WORDS {sync_response_words(cfg)}", "",
          "/* Set field [shift, shift + width) of descriptor d (bit 0 = bit 0 of d[0]) to value. */",
          f"static inline void {P.lower()}_desc_set(uint32_t d[{DESC_BITS // 32}], unsigned shift, unsigned width, "
          "uint32_t value)",
          "{",
          "    for (unsigned i = 0; i < width; i++) {",
          "        unsigned b = shift + i;",
          "        uint32_t bit = (value >> i) & 1u;",
          "        d[b / 32] = (d[b / 32] & ~(1u << (b % 32))) | (bit << (b % 32));",
          "    }",
          "}", "",
          "/* Read field [shift, shift + width) (width <= 32) of descriptor d. */",
          f"static inline uint32_t {P.lower()}_desc_get(const uint32_t d[{DESC_BITS // 32}], unsigned shift, "
          "unsigned width)",
          "{",
          "    uint32_t v = 0;",
          "    for (unsigned i = 0; i < width; i++) {",
          "        unsigned b = shift + i;",
          "        v |= ((d[b / 32] >> (b % 32)) & 1u) << i;",
          "    }",
          "    return v;",
          "}", "", f"#endif /* {g} */", ""]
    return "\n".join(L)
