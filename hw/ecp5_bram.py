"""``PipelinedReadRam``: a simple dual-port RAM whose read data is registered twice (the RAM's own
read register, then an output register), in ECP5 block RAMs with their output register when
targeting one.

Why (issue 6, docs/fpga.md): nextpnr times an ECP5 DP16KD without its output register
(``REGMODE`` "NOREG", what yosys' memory mapping always produces) with a 5.83 ns clock-to-out
at speed grade 6, 0.84 ns short of a whole 150 MHz cycle before any routing; with
``REGMODE`` "OUTREG" its clock-to-out is 0.96 ns (measured with this flow's nextpnr on a
one-DP16KD design). yosys does not merge a fabric register behind the RAM into that output
register, and nextpnr does not pack one into it, so the block RAM is instantiated here.

Ports (``w_*``: the write port; ``r_*``: the read port):

* ``w_en``   In(1)             write ``w_data`` to entry ``w_addr`` at the clock edge
* ``w_addr`` In(range(depth))
* ``w_data`` In(width)
* ``r_en``   In(1)             the read register loads entry ``r_addr`` (the RAM's own
                               address register: it then shows that entry and holds it)
* ``r_addr`` In(range(depth))
* ``r_oce``  In(1)             the output register loads what the read register shows
* ``r_data`` Out(width)        the output register

So with ``r_en`` = 1 on cycle t and ``r_oce`` = 1 on cycle t + 1, ``r_data`` shows the entry
from t + 2 on. No reset on the read side (datapath, as the registers it replaces). A read of
an entry on the cycle it is written returns undefined data on the FPGA: callers use it only
where that cannot happen (``hw.buffers.BankedBuffer(collision_free=True)``), which the
Amaranth model makes explicit with yosys' ``no_rw_check``.

``elaborate(platform)``: on an ECP5 platform (``hw.ecp5_mult.is_ecp5``) ``ceil(width / w)``
DP16KD of ``depth`` x ``w`` (``dp16kd_mode``: the narrowest entry count >= ``depth`` of 512 x 18
(true dual-port mode has no x36), 1024 x 18, 2048 x 9, 4096 x 4, 8192 x 2, 16384 x 1), port A
writing, port B reading with ``REGMODE_B`` "OUTREG"; elsewhere an ``amaranth.lib.memory.Memory``
with a synchronous read port and an Amaranth register behind it (the same cycle behaviour).
"""
from __future__ import annotations

from amaranth import C, Cat, ClockSignal, Instance, Module, Signal, unsigned
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .ecp5_mult import is_ecp5

__all__ = ["PipelinedReadRam", "dp16kd_mode", "DP16KD_ADDR_BITS"]

#: Address pins of one DP16KD port (AD0 .. AD13: 16 Kbit addressed in bits).
DP16KD_ADDR_BITS = 14

#: (entries, data width) of the DP16KD's true dual-port modes, narrowest first (Lattice TN1264).
_MODES = ((512, 18), (1024, 18), (2048, 9), (4096, 4), (8192, 2), (16384, 1))


def dp16kd_mode(depth: int) -> tuple[int, int]:
    """(data width, lowest address pin) of the DP16KD mode holding ``depth`` entries.

    The port's address is in units of one bit of the 16 Kbit array: in a mode of 2**k entries
    the entry index drives AD13 .. AD(14 - k) and the pins below are not address bits (AD0/AD1
    are the byte enables in x18 mode; yosys' ``brams_map_16kd.v`` wires them the same way)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or not 1 <= depth <= _MODES[-1][0]:
        raise ValueError(f"a DP16KD holds 1 .. {_MODES[-1][0]} entries, got depth={depth!r}")
    for entries, width in _MODES:
        if depth <= entries:
            return width, DP16KD_ADDR_BITS - (entries.bit_length() - 1)
    raise AssertionError("unreachable")                   # pragma: no cover


class PipelinedReadRam(wiring.Component):
    """``depth`` x ``width`` bits; read data registered twice (module docstring)."""

    def __init__(self, width: int, depth: int, *, collision_free: bool = False):
        for name, v in (("width", width), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                self._MustUse__used = True
                raise ValueError(f"{name} must be an int >= 1, got {v!r}")
        if not isinstance(collision_free, bool):
            self._MustUse__used = True
            raise ValueError(f"collision_free must be a bool, got {collision_free!r}")
        self.width, self.depth, self.collision_free = width, depth, collision_free
        super().__init__({
            "w_en": In(1), "w_addr": In(range(depth)), "w_data": In(unsigned(width)),
            "r_en": In(1), "r_addr": In(range(depth)), "r_oce": In(1), "r_data": Out(unsigned(width)),
        })

    def elaborate(self, platform):
        m = Module()
        if not is_ecp5(platform):
            mem = memory.Memory(shape=unsigned(self.width), depth=self.depth, init=[],
                                attrs={"no_rw_check": 1} if self.collision_free else {})
            m.submodules.mem = mem
            wp, rp = mem.write_port(), mem.read_port(transparent_for=())
            q = Signal(unsigned(self.width), name="out_reg", reset_less=True)
            m.d.comb += [wp.en.eq(self.w_en), wp.addr.eq(self.w_addr), wp.data.eq(self.w_data),
                         rp.en.eq(self.r_en), rp.addr.eq(self.r_addr), self.r_data.eq(q)]
            with m.If(self.r_oce):
                m.d.sync += q.eq(rp.data)
            return m

        if not self.collision_free:
            raise ValueError("PipelinedReadRam on the ECP5 needs collision_free=True: its DP16KD has no "
                             "read-during-write emulation")
        dw, lsb = dp16kd_mode(self.depth)
        abits = DP16KD_ADDR_BITS - lsb
        out = []
        for g, lo in enumerate(range(0, self.width, dw)):
            hi = min(lo + dw, self.width)
            do = Signal(18, name=f"do{g}")
            ports = {}
            for side, addr in (("A", self.w_addr), ("B", self.r_addr)):
                a = Cat(addr, C(0, abits - len(addr)))
                for i in range(DP16KD_ADDR_BITS):
                    if i >= lsb:
                        ports[f"i_AD{side}{i}"] = a[i - lsb]
                    elif dw == 18 and i < 2:
                        # x18: AD0/AD1 are the byte enables of a write: both bytes with w_en (port
                        # A, as yosys' mapping drives them); port B never writes
                        ports[f"i_AD{side}{i}"] = self.w_en if side == "A" else C(0, 1)
                    else:
                        ports[f"i_AD{side}{i}"] = C(0, 1)
            data = Cat(self.w_data[lo:hi], C(0, 18 - (hi - lo)))
            for i in range(18):
                ports[f"i_DIA{i}"] = data[i]
                ports[f"i_DIB{i}"] = C(0, 1)
                ports[f"o_DOB{i}"] = do[i]
            # Port A writes (its read side and output register unused: NOREG, CEA = 1 for the
            # write), port B reads: CEB the read register's enable, OCEB the output register's.
            # Chip selects decoded as 0b000 and tied to 0; RST tied to 0 (no reset, GSR disabled:
            # datapath, like the Amaranth model's reset-less register).
            m.submodules[f"bram{g}"] = Instance(
                "DP16KD",
                p_DATA_WIDTH_A=dw, p_DATA_WIDTH_B=dw, p_REGMODE_A="NOREG", p_REGMODE_B="OUTREG",
                p_RESETMODE="SYNC", p_ASYNC_RESET_RELEASE="SYNC", p_CSDECODE_A="0b000",
                p_CSDECODE_B="0b000", p_WRITEMODE_A="NORMAL", p_WRITEMODE_B="NORMAL", p_GSR="DISABLED",
                i_CLKA=ClockSignal("sync"), i_CEA=C(1, 1), i_OCEA=C(1, 1), i_WEA=self.w_en, i_RSTA=C(0, 1),
                i_CSA0=C(0, 1), i_CSA1=C(0, 1), i_CSA2=C(0, 1),
                i_CLKB=ClockSignal("sync"), i_CEB=self.r_en, i_OCEB=self.r_oce, i_WEB=C(0, 1),
                i_RSTB=C(0, 1), i_CSB0=C(0, 1), i_CSB1=C(0, 1), i_CSB2=C(0, 1),
                **ports)
            out.append(do[:hi - lo])
        m.d.comb += self.r_data.eq(Cat(*out))
        return m
