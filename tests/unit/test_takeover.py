"""Unit tests for pyconmon.takeover: the state a server-mode stub hands to the classic monitor."""

from __future__ import annotations

import pytest

from pyconmon.takeover import Adoption


def test_parse_what_the_stub_writes() -> None:
    # stub.c: "%d %d %d %d %d %s" runtime status, pid sent, out fd, err fd, target, target status or x
    a = Adoption.parse("0 1 7 8 4242 x")
    assert (a.runtime_status, a.pid_sent, a.out_fd, a.err_fd, a.target, a.target_status) == (0, True, 7, 8, 4242,
                                                                                              None)
    assert a.fds() == [7, 8]
    b = Adoption.parse("256 0 -1 9 0 137")
    assert (b.runtime_status, b.pid_sent, b.fds(), b.target_status) == (256, False, [9], 137)


@pytest.mark.parametrize("text", ["", "0 1 7 8 4242", "0 2 7 8 1 x", "0 1 -5 8 1 x", "a 1 7 8 1 x", "0 1 7 8 1 y"])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Adoption.parse(text)
