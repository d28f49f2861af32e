"""Unit tests for pyconmon.takeover: the state a server-mode stub hands to the classic monitor."""

from __future__ import annotations

import os

import pytest

from pyconmon.takeover import KEPT, Adoption


def test_parse_what_the_stub_writes() -> None:
    # stub.c: "%d %d %d %s" runtime status, pid sent, target, target status or x; then " %d" per KEPT slot
    a = Adoption.parse("0 1 4242 x -1 7 8 -1 10 11 12 13 14")
    assert (a.runtime_status, a.pid_sent, a.target, a.target_status) == (0, True, 4242, None)
    assert (a.in_fd, a.out_fd, a.err_fd, a.pty_fd, a.attach_fd) == (-1, 7, 8, -1, 10)
    assert (a.ctl_fds, a.winsz_fds) == ((11, 12), (13, 14))
    assert a.fds() == [7, 8, 10, 11, 12, 13, 14]
    b = Adoption.parse("256 0 0 137 -1 -1 9 -1 -1 -1 -1 -1 -1")
    assert (b.runtime_status, b.pid_sent, b.fds(), b.target_status) == (256, False, [9], 137)


def test_a_tty_container_hands_over_its_pty_and_an_i_container_its_stdin() -> None:
    tty = Adoption.parse("0 1 99 x -1 -1 5 6 7 8 9 10 11")
    assert (tty.pty_fd, tty.in_fd, tty.out_fd, tty.err_fd) == (6, -1, -1, 5)
    interactive = Adoption.parse("0 1 99 x 4 5 6 -1 7 8 9 10 11")
    assert (interactive.in_fd, interactive.pty_fd) == (4, -1)
    assert sorted(interactive.fds()) == list(range(4, 12))


def test_the_field_order_is_the_stubs() -> None:
    from support import REPO
    with open(os.path.join(REPO, "launcher", "stub.c")) as f:
        stub = f.read()
    assert "{" + ", ".join(f'"{name}"' for name in KEPT) + "}" in stub


@pytest.mark.parametrize("text", [
    "",
    "0 1 7 8 4242 x",  # the old six fields
    "0 1 4242 x -1 7 8 -1 10 11 12 13",  # one fd short
    "0 1 4242 x -1 7 8 -1 10 11 12 13 14 15",  # one too many
    "0 2 4242 x -1 7 8 -1 10 11 12 13 14",  # pid sent is 0 or 1
    "0 1 -3 x -1 7 8 -1 10 11 12 13 14",  # negative target
    "0 1 4242 y -1 7 8 -1 10 11 12 13 14",  # status neither number nor x
    "a 1 4242 x -1 7 8 -1 10 11 12 13 14",
    "0 1 4242 x -5 7 8 -1 10 11 12 13 14",  # an fd below -1
    "0 1 4242 x -1 7 7 -1 10 11 12 13 14",  # one fd twice
    "0 1 4242 x -1 7 8 -1 10 11 -1 13 14",  # ctl without its write end
    "0 1 4242 x -1 7 8 -1 10 11 12 -1 14",  # winsz without its read end
    "0 1 4242 x -1 7 8 -1 10 11 12 13 z",
])
def test_anything_else_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        Adoption.parse(text)
