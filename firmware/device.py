"""The host's view of an accelerator: three streams (docs/top.md) behind one small interface.

``Device`` is what firmware.driver talks to. Implementations:

* ``firmware.golden_device.GoldenDevice`` -- the ISA (golden/isa.py) in NumPy;
* the RTL device (cocotb/Verilator, written against this same interface).

Semantics every implementation keeps:

* ``send_command(desc)``: one 128-bit descriptor on ``cmd`` (an int in
  [0, 2**128)). Never blocks on a device that is alive (commands queue).
* ``send_data(words, last_on_final=True)``: payload words on ``din``, each an
  int of ``cfg.bus_bytes`` bytes; ``last`` = 1 on the final word when
  ``last_on_final`` (a payload may be sent in several calls, only the final
  call setting it).
* ``receive(n_words, timeout_s)``: the next ``n_words`` words of ``dout``, in
  order. If they do not all arrive within ``timeout_s`` seconds it raises
  ``DeviceTimeout`` naming the command whose response it was waiting for (and
  how many words had arrived), never returns a short list.
* ``reset()``: back to the power-on state (flags, counters, queues).
* ``close()``: release resources; also via ``with``.
"""
from __future__ import annotations

import abc

from golden.config import ArrayConfig

__all__ = ["Device", "DeviceError", "DeviceTimeout"]


class DeviceError(RuntimeError):
    """The device reported an error (sticky status flags) or misbehaved."""


class DeviceTimeout(DeviceError):
    """``receive`` gave up: the device did not send the expected words in time.

    Attributes: ``command`` (the command whose response was awaited, e.g.
    "READ_OUT bank=0 offset=0 length=128"), ``got`` and ``expected`` words,
    ``timeout_s``, ``detail`` (what the device knows about why, may be empty).
    """

    def __init__(self, command: str, got: int, expected: int, timeout_s: float, detail: str = ""):
        self.command, self.got, self.expected, self.timeout_s, self.detail = command, got, expected, timeout_s, detail
        msg = (f"device did not answer {command}: {got} of {expected} response words within {timeout_s:g} s"
               + (f" ({detail})" if detail else ""))
        super().__init__(msg)


class Device(abc.ABC):
    """Abstract accelerator endpoint (see the module docstring). ``cfg`` is its ArrayConfig."""

    cfg: ArrayConfig

    @abc.abstractmethod
    def send_command(self, desc: int) -> None:
        """Send one descriptor on ``cmd``."""

    @abc.abstractmethod
    def send_data(self, words: list[int], last_on_final: bool = True) -> None:
        """Send payload words on ``din`` (``last`` on the final word if ``last_on_final``)."""

    @abc.abstractmethod
    def receive(self, n_words: int, timeout_s: float = 5.0) -> list[int]:
        """The next ``n_words`` words from ``dout``, or DeviceTimeout naming the awaited command."""

    @abc.abstractmethod
    def reset(self) -> None:
        """Return to the power-on state."""

    def close(self) -> None:
        """Release resources (default: nothing to release)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
