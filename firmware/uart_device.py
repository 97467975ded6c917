"""``UartDevice``: the accelerator on a board (or in simulation) behind a byte pipe.

The same ``firmware.device.Device`` interface as ``GoldenDevice``, so
``firmware.driver.run_layer`` / ``run_graph`` drive a real ULX3S unchanged.
The byte framing is ``hw.uart``'s (docs/fpga.md): ``H_CMD`` frames for
descriptors, ``H_DATA`` bursts for payload words, ``D_WORD``/``D_LAST``
frames back for ``dout`` words, ``D_CREDIT`` bytes for flow control.

A *link* is any byte pipe with

* ``write(data: bytes)``
* ``read(n, timeout_s) -> bytes``: waits up to ``timeout_s`` for the first
  byte, then returns the bytes already there (at most ``n``; empty: the
  timeout passed with nothing received)
* ``send_break()`` (returns when the break is over)
* ``drain(settle_s)`` (let ``settle_s`` pass, then discard everything
  received so far)
* ``close()``

``SerialLink`` is the pyserial one (the ULX3S's FT231X, e.g. /dev/ttyUSB0);
``hw.uart.UartSim`` is the bit-level simulation of the bridged accelerator.

Flow control: the host never has more than the bridge's ``fifo_bytes`` bytes
outstanding (its ``D_HELLO`` says how many); while it has no credit it reads
the link, which returns credit (and queues any ``dout`` words). A device that
returns no credit for ``credit_timeout_s`` -> ``DeviceTimeout``.

``reset()`` (also done on construction): break (the bridge and the
accelerator reset, the FIFO empties), ``drain``, then ``H_HELLO`` with a new
nonce; the answering ``D_HELLO`` must carry ``config_id(cfg)`` -- a board
built for another ArrayConfig is refused with ``DeviceError`` naming both ids.
"""
from __future__ import annotations

import itertools
import time
from collections import deque

from golden import isa
from golden.config import ArrayConfig
from golden.isa import Op
from hw.uart import (BRIDGE_VERSION, D_CREDIT, D_ERROR, D_HELLO, D_LAST, D_WORD, DATA_LAST, H_CMD, H_DATA,
                     H_HELLO, HELLO_BYTES, HELLO_MAGIC, MAX_BURST, config_id)

from .device import Device, DeviceError, DeviceTimeout

__all__ = ["UartDevice", "SerialLink", "frame_command", "frame_data"]

#: Longest single wait on the link (s); timeouts are counted in these steps of silence.
_POLL_S = 0.05
#: Bytes the host may send before any D_HELLO (an H_HELLO frame; the bridge's FIFO holds at least 16).
_HELLO_REQ_BYTES = 2
_RESPONSE_WORDS = {Op.READ_STATUS: lambda cfg, f: isa.status_response_words(cfg),
                   Op.SYNC: lambda cfg, f: isa.sync_response_words(cfg),
                   Op.READ_OUT: lambda cfg, f: f.get("length", 0) * isa.words_per_entry(isa.entry_bytes(cfg, "out"),
                                                                                        cfg.bus_bytes)}


def frame_command(desc: int) -> bytes:
    """The H_CMD frame of one 128-bit descriptor."""
    if isinstance(desc, bool) or not isinstance(desc, int) or not 0 <= desc < 1 << isa.DESC_BITS:
        raise ValueError(f"desc must be an integer in [0, 2**{isa.DESC_BITS} - 1], got {desc!r}")
    return bytes([H_CMD]) + desc.to_bytes(isa.DESC_BITS // 8, "little")


def frame_data(words, bus_bytes: int, last_on_final: bool = True) -> bytes:
    """H_DATA frames carrying ``words`` (bursts of at most MAX_BURST words; only the final
    burst's flag sets ``last`` when ``last_on_final``). An empty list gives no bytes."""
    ws = [int(w) for w in words]
    top = 1 << (8 * bus_bytes)
    for w in ws:
        if not 0 <= w < top:
            raise ValueError(f"words must be integers in [0, 2**{8 * bus_bytes} - 1] (bus_bytes = {bus_bytes}), "
                             f"got {w!r}")
    out = bytearray()
    for i in range(0, len(ws), MAX_BURST):
        chunk = ws[i:i + MAX_BURST]
        final = i + MAX_BURST >= len(ws)
        out += bytes([H_DATA, DATA_LAST if (final and last_on_final) else 0])
        out += (len(chunk) - 1).to_bytes(2, "little")
        out += b"".join(w.to_bytes(bus_bytes, "little") for w in chunk)
    return bytes(out)


class SerialLink:
    """pyserial transport (8N1, no flow control) for ``UartDevice``.

    ``port`` e.g. "/dev/ttyUSB0"; ``baud`` must be the one the bitstream was
    built for (``python -m hw.build --target ulx3s --baud``); ``break_s`` the
    break duration; ``settle_s`` how long ``drain`` waits for in-flight bytes
    (the FT231X's latency timer is up to 16 ms).
    """

    def __init__(self, port: str, baud: int, *, break_s: float = 0.02):
        import serial
        self.ser = serial.Serial(port, baud, bytesize=8, parity="N", stopbits=1, timeout=0, write_timeout=10)
        self.break_s = break_s

    def write(self, data: bytes) -> None:
        self.ser.write(data)

    def read(self, n: int, timeout_s: float) -> bytes:
        self.ser.timeout = timeout_s
        first = self.ser.read(1)
        if not first or n <= 1:
            return first
        self.ser.timeout = 0
        return first + self.ser.read(min(n - 1, self.ser.in_waiting))

    def send_break(self) -> None:
        self.ser.send_break(self.break_s)

    def drain(self, settle_s: float) -> None:
        time.sleep(settle_s)
        self.ser.reset_input_buffer()

    def close(self) -> None:
        self.ser.close()


def _label(cfg: ArrayConfig, desc: int) -> tuple[str, int]:
    """(human label, expected response words) of a descriptor (0 words: no response)."""
    code = desc & ((1 << isa.OPCODE_BITS) - 1)
    try:
        op = Op(code)
    except ValueError:
        return f"opcode {code}", 0
    fields = {f.name: (desc >> f.offset) & ((1 << f.width) - 1) for f in isa.layout(cfg)[op]}
    label = " ".join([op.name] + [f"{k}={v}" for k, v in fields.items()])
    n = _RESPONSE_WORDS[op](cfg, fields) if op in _RESPONSE_WORDS else 0
    if n and isa.descriptor_errors(cfg, desc):
        n = 0                      # the decoder drops it: no response
    return label, n


class UartDevice(Device):
    """``Device`` over a byte ``link`` (module docstring).

    ``hello_timeout_s``: how long ``reset`` waits for D_HELLO; ``credit_timeout_s``:
    how long a send may wait for credit (the accelerator may hold ``din`` back while
    a RUN finishes); ``settle_s``: ``link.drain`` time after the break.
    """

    def __init__(self, cfg: ArrayConfig, link, *, hello_timeout_s: float = 2.0, credit_timeout_s: float = 10.0,
                 settle_s: float = 0.05):
        if not isinstance(cfg, ArrayConfig):
            raise ValueError(f"cfg must be a golden.config.ArrayConfig, got {type(cfg).__name__}")
        isa.layout(cfg)
        for name in ("write", "read", "send_break", "drain", "close"):
            if not callable(getattr(link, name, None)):
                raise ValueError(f"link must have a {name}() method (see firmware.uart_device)")
        self.cfg, self.link = cfg, link
        self.hello_timeout_s, self.credit_timeout_s, self.settle_s = hello_timeout_s, credit_timeout_s, settle_s
        self._nonces = itertools.count(0x5A)
        self.fifo_bytes = self.credit_unit = None
        self.reset()

    @classmethod
    def open(cls, cfg: ArrayConfig, port: str, baud: int, **kw) -> "UartDevice":
        """A ``UartDevice`` on a serial port (``SerialLink(port, baud)``)."""
        return cls(cfg, SerialLink(port, baud), **kw)

    # ---- Device interface
    def reset(self) -> None:
        self._rx = bytearray()
        self._words: deque[int] = deque()
        self._lasts: deque[int] = deque()
        self._pending: deque[list] = deque()        # [label, expected, received] of response commands
        self.link.send_break()
        self.link.drain(self.settle_s)
        nonce = next(self._nonces) & 0xFF
        self.link.write(bytes([H_HELLO, nonce]))
        want = bytes([D_HELLO]) + HELLO_MAGIC + bytes([BRIDGE_VERSION, nonce])
        buf = bytearray()
        budget = self.hello_timeout_s
        while True:
            i = buf.find(want)
            if i >= 0 and len(buf) >= i + HELLO_BYTES:
                hello, rest = bytes(buf[i:i + HELLO_BYTES]), buf[i + HELLO_BYTES:]
                break
            step = min(_POLL_S, budget)
            got = self.link.read(4096, step)
            buf += got
            if not got:
                budget -= step
            if budget <= 0:
                raise DeviceTimeout(f"H_HELLO nonce={nonce}", 0, 1, self.hello_timeout_s,
                                    f"no D_HELLO after a break; received {len(buf)} bytes "
                                    f"({bytes(buf[:16]).hex()}...): is the bitstream loaded and the baud right?")
        cid = int.from_bytes(hello[6:10], "little")
        if cid != config_id(self.cfg):
            raise DeviceError(f"the board's bitstream was built for another ArrayConfig (config id {cid:#010x}, "
                              f"this host's cfg has {config_id(self.cfg):#010x}: {self.cfg})")
        self.fifo_bytes, self.credit_unit = 1 << hello[10], 1 << hello[11]
        self._credit = self.fifo_bytes - _HELLO_REQ_BYTES
        self._rx = bytearray(rest)
        self._parse()

    def send_command(self, desc: int) -> None:
        frame = frame_command(int(desc) if not isinstance(desc, bool) else desc)
        label, n = _label(self.cfg, int(desc))
        if n:
            self._pending.append([label, n, 0])
        self._send(frame, label)

    def send_data(self, words, last_on_final: bool = True) -> None:
        self._send(frame_data(words, self.cfg.bus_bytes, last_on_final), "payload")

    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        if isinstance(n_words, bool) or not isinstance(n_words, int) or n_words < 0:
            raise ValueError(f"n_words must be an integer >= 0, got {n_words!r}")
        budget = timeout_s
        while len(self._words) < n_words:
            if budget <= 0:
                raise self._timeout(n_words, timeout_s)
            step = min(_POLL_S, budget)
            if not self._pump(step):
                budget -= step
        out = [self._words.popleft() for _ in range(n_words)]
        for _ in range(n_words):
            self._lasts.popleft()
        self._account(n_words)
        return out

    def close(self) -> None:
        self.link.close()

    # ---- internals
    def _account(self, n: int) -> None:
        while n and self._pending:
            rec = self._pending[0]
            take = min(n, rec[1] - rec[2])
            rec[2] += take
            n -= take
            if rec[2] == rec[1]:
                self._pending.popleft()

    def _timeout(self, n_words: int, timeout_s: float) -> DeviceTimeout:
        have = len(self._words)
        if self._pending:
            label = self._pending[0][0]
            detail = (f"the bridge sent {have} words; a command the decoder drops (see READ_STATUS flags) "
                      "sends nothing, and a decoder waiting on an interlock sends later")
        else:
            label, detail = "(no pending command)", "no command sent so far answers that many words"
        return DeviceTimeout(label, have, n_words, timeout_s, detail)

    def _pump(self, timeout_s: float) -> int:
        """Read what the link has (waiting up to ``timeout_s`` for the first byte) and parse it."""
        got = self.link.read(4096, timeout_s)
        if got:
            self._rx += got
            self._parse()
        return len(got)

    def _parse(self) -> None:
        bb = self.cfg.bus_bytes
        rx = self._rx
        i = 0
        while i < len(rx):
            t = rx[i]
            if t in (D_WORD, D_LAST):
                if len(rx) - i < 1 + bb:
                    break
                self._words.append(int.from_bytes(rx[i + 1:i + 1 + bb], "little"))
                self._lasts.append(int(t == D_LAST))
                i += 1 + bb
            elif t == D_CREDIT:
                self._credit += self.credit_unit
                i += 1
            elif t == D_ERROR:
                if len(rx) - i < 2:
                    break
                raise DeviceError(f"the bridge skipped byte {rx[i + 1]:#04x} where a frame type was expected: "
                                  "the host's byte stream lost framing (reset() recovers)")
            else:
                raise DeviceError(f"unexpected byte {t:#04x} from the bridge (expected a D_* frame type); "
                                  f"next bytes {bytes(rx[i:i + 16]).hex()}: wrong baud or a desynchronised link")
        del rx[:i]

    def _send(self, data: bytes, what: str) -> None:
        pos = 0
        while pos < len(data):
            budget = self.credit_timeout_s
            while self._credit <= 0:
                if budget <= 0:
                    raise DeviceTimeout(f"credit for {what}", 0, 1, self.credit_timeout_s,
                                        f"the bridge's FIFO ({self.fifo_bytes} bytes) stayed full: the "
                                        "accelerator is not taking cmd/din")
                step = min(_POLL_S, budget)
                if not self._pump(step):
                    budget -= step
            n = min(self._credit, len(data) - pos)
            self.link.write(data[pos:pos + n])
            self._credit -= n
            pos += n
        # opportunistic: take in what has arrived (credits, words) without waiting
        self._pump(0)
