"""``checked(cls, label)``: a hardware block with its ``shadow_checks`` asserted on every cycle.

Blocks that keep a value as a register loaded from next-state logic, or as several copies of
one register (issue 6, timing), list ``(name, register, reference)`` in ``shadow_checks``: the
signal each register stands for. The subclass made here adds one simulation ``Assert`` per
entry, so every simulated test of the block also proves the change invisible at its ports.
"""
from __future__ import annotations

from amaranth import Assert


def checked(cls, label: str):
    """A subclass of ``cls`` whose ``elaborate`` asserts ``register == reference`` for every entry
    of the elaborated block's ``shadow_checks`` on every cycle (message: ``label``, the name)."""

    class Checked(cls):
        def elaborate(self, platform):
            m = super().elaborate(platform)
            for name, reg, ref in self.shadow_checks:
                m.d.sync += Assert(reg == ref, f"{label} {name} != the signal it stands for")
            return m

    Checked.__name__ = Checked.__qualname__ = f"Checked{cls.__name__}"
    Checked.__doc__ = f"``{cls.__name__}`` with its ``shadow_checks`` asserted on every cycle."
    return Checked
