"""hw.skid.SkidBuffer: every word once, in order, under random valid/ready; full throughput and
SKID_LATENCY when nothing stalls; i.ready a register (it never depends on o.ready in the same
cycle)."""
from __future__ import annotations

import random

import pytest
from amaranth import unsigned
from amaranth.sim import Simulator

from hw.skid import SKID_LATENCY, SkidBuffer


def _run(p_valid, p_ready, n_words=300, seed=0, max_cycles=5000):
    rng = random.Random(seed)
    dut = SkidBuffer(unsigned(16))
    log = {"sent": [], "got": [], "in_at": [], "out_at": [], "ready_vs_o_ready": set()}

    async def tb(ctx):
        nxt = 0
        offer = None
        for cyc in range(max_cycles):
            if offer is None and nxt < n_words and rng.random() < p_valid:
                offer = nxt
                nxt += 1
            o_ready = int(rng.random() < p_ready)
            ctx.set(dut.i.valid, offer is not None)
            ctx.set(dut.i.payload, offer if offer is not None else rng.randrange(1 << 16))
            ctx.set(dut.o.ready, 0)
            r0 = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1)
            r1 = ctx.get(dut.i.ready)
            log["ready_vs_o_ready"].add(r0 == r1)
            ctx.set(dut.o.ready, o_ready)
            if ctx.get(dut.o.valid) and o_ready:
                log["got"].append(ctx.get(dut.o.payload))
                log["out_at"].append(cyc)
            if offer is not None and ctx.get(dut.i.ready):
                log["sent"].append(offer)
                log["in_at"].append(cyc)
                offer = None
            await ctx.tick()
            if len(log["got"]) == n_words:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    return log


@pytest.mark.parametrize("p_valid,p_ready,seed", [(1.0, 1.0, 0), (0.7, 0.4, 1), (1.0, 0.3, 2), (0.3, 0.9, 3),
                                                   (0.9, 0.6, 4)])
def test_every_word_once_in_order(p_valid, p_ready, seed):
    log = _run(p_valid, p_ready, seed=seed)
    assert log["sent"] == list(range(300))
    assert log["got"] == list(range(300))
    assert log["ready_vs_o_ready"] == {True}        # i.ready is not a function of o.ready


def test_full_throughput_and_latency():
    log = _run(1.0, 1.0)
    assert log["in_at"] == list(range(300))            # one word accepted per cycle
    assert log["out_at"] == [c + SKID_LATENCY for c in log["in_at"]]
