"""Unit tests for pyconmon.cpuweight: the server's nice follows the number of floods."""

from __future__ import annotations

import os
import threading

import pytest

from pyconmon.cpuweight import MAX_BOOST, STEP, ServerWeight, boost_for


@pytest.mark.parametrize("busy", [0, 1])
def test_one_flood_or_none_needs_no_boost(busy: int) -> None:
    assert boost_for(busy) == 0


@pytest.mark.parametrize("busy", [2, 5, 20])
def test_the_boost_gives_the_weight_of_that_many_monitors(busy: int) -> None:
    steps = boost_for(busy)
    assert STEP ** (steps - 0.5) <= busy <= STEP ** (steps + 0.5)  # the nearest nice step


def test_the_boost_is_bounded() -> None:
    assert boost_for(10**6) == MAX_BOOST


class FakeLoop:
    """Stands in for EventLoop: only the bulk count matters here (the timer is not used)."""

    def __init__(self) -> None:
        self.busy = 0

    def bulk_count(self) -> int:
        return self.busy


def in_a_thread(fn):
    """Run ``fn`` in a thread of its own (nice is per thread: pytest's own stays untouched)."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    t.join(10)
    return out[0]


def test_the_thread_is_reniced_with_the_load_and_back() -> None:
    loop = FakeLoop()

    def scenario():
        weight = ServerWeight(loop)  # type: ignore[arg-type]
        base = os.getpriority(os.PRIO_PROCESS, 0)
        loop.busy = 20
        weight.update()
        during = os.getpriority(os.PRIO_PROCESS, 0)
        loop.busy = 0
        weight.update()
        after = os.getpriority(os.PRIO_PROCESS, 0)
        return base, during, after, weight.allowed

    base, during, after, allowed = in_a_thread(scenario)
    if os.geteuid() == 0:
        assert allowed and during == max(-20, base - boost_for(20))
    else:  # no CAP_SYS_NICE: it keeps its nice and stops trying
        assert not allowed and during == base
    assert after == base
