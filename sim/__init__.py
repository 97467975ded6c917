"""cocotb/Verilator verification of the RTL against golden/.

* ``sim.build``     cached Verilator models of ``hw.core.ArrayCore`` and the runner glue
* ``sim.stimulus``  seeded stimulus (tiles, params, LUT phases, handshake patterns) + functional reference
* ``sim.tb_core``   the cocotb testbench: RTL vs ``golden.array_model.ArrayModel``, every cycle
"""
