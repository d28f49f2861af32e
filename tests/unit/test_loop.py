"""Unit tests for pyconmon.loop: fd callbacks, timers and signals on a real epoll."""

from __future__ import annotations

import os
import signal
import time

import pytest

from pyconmon.loop import EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop


@pytest.fixture
def loop():
    lp = EventLoop()
    yield lp
    lp.close()


@pytest.fixture
def pipe():
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    fds = [r, w]
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def test_readable_fd_gets_its_callback_with_the_mask(loop, pipe):
    r, w = pipe
    got = []
    loop.add(r, EPOLLIN, got.append)
    assert loop.watching(r)
    os.write(w, b"x")
    assert loop.run_until(lambda: got, timeout=2)
    assert got[0] & EPOLLIN and not got[0] & EPOLLHUP


def test_writable_fd(loop, pipe):
    _r, w = pipe
    got = []
    loop.add(w, EPOLLOUT, got.append)
    assert loop.run_until(lambda: got, timeout=2)
    assert got[0] & EPOLLOUT


def test_modify_changes_interest(loop, pipe):
    r, w = pipe
    got = []
    loop.add(r, 0, got.append)
    os.write(w, b"x")
    loop.run_once(0.05)
    assert got == []  # readable, but no interest
    loop.modify(r, EPOLLIN)
    assert loop.run_until(lambda: got, timeout=2)
    assert got[0] & EPOLLIN
    loop.modify(12345, EPOLLIN)  # an fd that isn't registered: ignored
    assert not loop.watching(12345)


def test_mask_zero_still_reports_hangup(loop, pipe):
    r, w = pipe
    got = []
    loop.add(r, 0, got.append)
    os.close(w)
    assert loop.run_until(lambda: got, timeout=2)
    assert got[0] & EPOLLHUP


def test_removed_fd_gets_no_callback(loop, pipe):
    r, w = pipe
    got = []
    loop.add(r, EPOLLIN, got.append)
    loop.remove(r)
    assert not loop.watching(r)
    loop.remove(r)  # twice is harmless
    os.write(w, b"x")
    loop.run_once(0.05)
    assert got == []
    # and it can be registered again afterwards
    loop.add(r, EPOLLIN, got.append)
    assert loop.run_until(lambda: got, timeout=2)


def test_fd_removed_earlier_in_the_same_batch_is_skipped(loop):
    a_r, a_w = os.pipe()
    b_r, b_w = os.pipe()
    try:
        called = []

        def on_a(ev):
            called.append("a")
            loop.remove(b_r)

        def on_b(ev):
            called.append("b")
            loop.remove(a_r)

        loop.add(a_r, EPOLLIN, on_a)
        loop.add(b_r, EPOLLIN, on_b)
        os.write(a_w, b"x")
        os.write(b_w, b"x")
        # both are ready before the loop polls: one batch, and whichever runs first removes the other
        loop.run_once(1)
        assert len(called) == 1
    finally:
        for fd in (a_r, a_w, b_r, b_w):
            os.close(fd)


def test_timers_fire_in_deadline_order(loop):
    fired = []
    loop.call_later(0.06, lambda: fired.append("c"))
    loop.call_later(0.02, lambda: fired.append("a"))
    loop.call_later(0.04, lambda: fired.append("b"))
    start = time.monotonic()
    assert loop.run_until(lambda: len(fired) == 3, timeout=2)
    assert fired == ["a", "b", "c"]
    assert time.monotonic() - start >= 0.06


def test_cancelled_timer_does_not_fire(loop):
    fired = []
    early = loop.call_later(0.01, lambda: fired.append("early"))
    loop.call_later(0.05, lambda: fired.append("late"))
    early.cancel()
    assert loop.run_until(lambda: fired, timeout=2)
    assert fired == ["late"]
    loop.run_once(0.02)
    assert fired == ["late"]


def test_cancel_from_another_timer(loop):
    fired = []
    second = loop.call_later(0.03, lambda: fired.append("second"))
    loop.call_later(0.01, lambda: (fired.append("first"), second.cancel()))
    loop.call_later(0.05, lambda: fired.append("third"))
    assert loop.run_until(lambda: "third" in fired, timeout=2)
    assert fired == ["first", "third"]


def test_timer_wakes_a_blocking_run_once(loop):
    fired = []
    loop.call_later(0.02, lambda: fired.append(1))
    start = time.monotonic()
    loop.run_once()  # no fds, no timeout: returns because of the timer
    assert fired == [1]
    assert time.monotonic() - start < 1


def test_a_callback_from_another_thread_wakes_a_blocking_run_once(loop):
    import threading
    ran = []
    loop.allow_threads()
    worker = threading.Thread(target=lambda: loop.call_soon_threadsafe(lambda: ran.append(threading.get_ident())))
    t0 = time.monotonic()
    worker.start()
    assert loop.run_until(lambda: bool(ran), timeout=5)
    worker.join()
    assert ran == [threading.get_ident()]  # run in the loop's thread
    assert time.monotonic() - t0 < 2


def test_run_until_timeout(loop):
    start = time.monotonic()
    assert loop.run_until(lambda: False, timeout=0.1) is False
    assert 0.1 <= time.monotonic() - start < 1


def test_run_until_already_done(loop):
    assert loop.run_until(lambda: True, timeout=0) is True


@pytest.fixture
def saved_signals():
    sigs = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)
    handlers = {s: signal.getsignal(s) for s in sigs}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    yield sigs
    signal.set_wakeup_fd(wakeup)
    for s, h in handlers.items():
        signal.signal(s, h)


def test_signals_reach_the_handler_from_the_loop(loop, saved_signals):
    got = []
    loop.handle_signals(saved_signals, got.append)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert got == []  # nothing runs in signal context: only the loop calls the handler
        assert loop.run_until(lambda: got, timeout=2)
        assert got == [signal.SIGUSR1]
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert loop.run_until(lambda: len(got) == 3, timeout=2)
        assert got[1:] == [signal.SIGUSR2, signal.SIGUSR1]
    finally:
        loop.restore_signals()


def test_sigint_does_not_raise(loop, saved_signals):
    got = []
    loop.handle_signals(saved_signals, got.append)
    try:
        # Python's default handler would raise KeyboardInterrupt as soon as os.kill returns.
        os.kill(os.getpid(), signal.SIGINT)
        assert loop.run_until(lambda: got, timeout=2)
        assert got == [signal.SIGINT]
    finally:
        loop.restore_signals()


def test_restore_signals_detaches_the_loop(loop, saved_signals):
    got = []
    loop.handle_signals(saved_signals, got.append)
    loop.restore_signals()
    assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind
    os.kill(os.getpid(), signal.SIGUSR1)  # the Python-level handler is still the no-op one
    loop.run_once(0.05)
    assert got == []
    loop.restore_signals()  # twice is harmless


def test_a_failing_callback_is_reported_and_the_loop_goes_on():
    loop = EventLoop()
    errors: list[Exception] = []
    loop.on_error = errors.append
    r, w = os.pipe()
    try:
        def broken(events: int) -> None:
            os.read(r, 10)
            raise RuntimeError("bug")

        fired: list[bool] = []
        loop.add(r, EPOLLIN, broken)
        loop.call_later(0, lambda: 1 / 0)
        loop.call_later(0.01, lambda: fired.append(True))
        os.write(w, b"x")
        assert loop.run_until(lambda: bool(fired), timeout=5)
        assert [type(e) for e in errors] == [RuntimeError, ZeroDivisionError]
        loop.on_error = None  # without a handler the error propagates, as before
        loop.call_later(0, lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            loop.run_once(1)
    finally:
        loop.close()
        os.close(r)
        os.close(w)


# -- fair turns among floods (server mode) -------------------------------------


@pytest.fixture
def ready_pipes():
    """Four pipes with a byte in each: level-triggered, they stay ready while nobody reads."""
    pairs = [os.pipe2(os.O_CLOEXEC) for _ in range(4)]
    for _r, w in pairs:
        os.write(w, b"x")
    yield [r for r, _w in pairs]
    for pair in pairs:
        for fd in pair:
            os.close(fd)


def test_other_fds_are_served_before_bulk_ones(loop, ready_pipes):
    order = []
    for fd in ready_pipes:
        loop.add(fd, EPOLLIN, lambda ev, fd=fd: order.append(fd))
    a, b, c, d = ready_pipes
    loop.set_bulk(a, True)
    loop.set_bulk(b, True)
    loop.run_once(1)
    assert sorted(order[:2]) == sorted([c, d]) and sorted(order[2:]) == sorted([a, b])


def test_bulk_fds_take_turns_least_recently_served_first(loop, ready_pipes, monkeypatch):
    """With no budget left after one bulk callback, each turn serves the other fds and one bulk fd,
    the one that waited longest: a round robin, whatever order epoll reports them in."""
    import pyconmon.loop as loop_module
    monkeypatch.setattr(loop_module, "BULK_BUDGET_S", 0.0)
    served = []
    for fd in ready_pipes:
        loop.add(fd, EPOLLIN, lambda ev, fd=fd: (served.append(fd), time.sleep(0.0001)))
    a, b, c, quiet = ready_pipes
    for fd in (a, b, c):
        loop.set_bulk(fd, True)
    turns = []
    for _ in range(6):
        served.clear()
        loop.run_once(1)
        turns.append(list(served))
    assert all(turn[0] == quiet and len(turn) == 2 for turn in turns), turns
    bulk_order = [turn[1] for turn in turns]
    assert sorted(bulk_order[:3]) == sorted([a, b, c]) and bulk_order[3:] == bulk_order[:3], bulk_order


def test_bulk_is_forgotten_when_the_fd_is_removed_or_not_watched(loop, ready_pipes):
    a, b = ready_pipes[:2]
    loop.add(a, EPOLLIN, lambda ev: None)
    loop.set_bulk(a, True)
    loop.set_bulk(b, True)  # not watched: ignored
    assert loop.bulk_count() == 1
    loop.remove(a)
    assert loop.bulk_count() == 0
    loop.add(a, EPOLLIN, lambda ev: None)
    loop.set_bulk(a, True)
    loop.set_bulk(a, False)
    assert loop.bulk_count() == 0
