"""A thin event loop over epoll: fd callbacks, timers and signals.

Facts that shape it:

* epoll watches open file descriptions, not numbers.  Closing an fd removes
  it from the epoll set only when no other descriptor refers to the same
  description, so every fd is unregistered *before* it is closed, and a
  callback for an fd that was unregistered earlier in the same batch of
  events is skipped (its number may already belong to a new file).
* Signals arrive through ``signal.set_wakeup_fd``: the C-level handler writes
  the signal number into a non-blocking pipe that epoll watches, so no work
  happens in signal context and the loop never misses a SIGCHLD that came
  between two checks.  The Python-level handlers do nothing, which also keeps
  SIGINT from raising KeyboardInterrupt.
* EPOLLHUP and EPOLLERR are always reported, even for a mask of 0; an fd kept
  registered with mask 0 still wakes the loop on hangup, which callers use to
  notice a peer that went away.

* A shared loop (server mode) serves many containers.  Level-triggered
  epoll reports every ready fd each turn in its own order, so a quiet
  container's line would wait behind one chunk of every flooding
  container.  Fds whose last read was large (a flood) are marked *bulk*
  (:meth:`EventLoop.set_bulk`): each turn serves the others first, then
  bulk fds, least recently served first, until ``BULK_BUDGET_S`` of work is
  done; the rest stay ready and lead the next turn.  So a line waits for at
  most about one budget, whatever the number of floods.

* A monitor runs for months.  An exception escaping a callback (a bug, or
  an error nobody foresaw) is handed to ``on_error`` and the loop goes on:
  one failed event must not take the container's log and exit code with it.

The loop knows nothing about containers: callers register callbacks.
"""

from __future__ import annotations

import _signal
import heapq
import os
import select
import time

EPOLLIN = select.EPOLLIN
EPOLLOUT = select.EPOLLOUT
EPOLLHUP = select.EPOLLHUP
EPOLLERR = select.EPOLLERR
EPOLLRDHUP = select.EPOLLRDHUP

TYPE_CHECKING = False  # typing costs 7 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable

    FdCallback = Callable[[int], None]


BULK_BUDGET_S = 0.002  # bulk work per turn before the loop looks for other ready fds again


class Timer:
    __slots__ = ("callback", "cancelled", "deadline")

    def __init__(self, deadline: float, callback: Callable[[], None]) -> None:
        self.deadline = deadline
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True

    def __lt__(self, other: Timer) -> bool:
        return self.deadline < other.deadline


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level no-op: the wakeup fd carries the signal to the loop."""


class EventLoop:
    """Dispatches epoll events, timers and signals to callbacks."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._callbacks: dict[int, FdCallback] = {}
        self._masks: dict[int, int] = {}
        self._timers: list[Timer] = []
        self._signal_r = -1
        self._signal_w = -1
        self._signal_handler: Callable[[int], None] | None = None
        self.on_error: Callable[[Exception], None] | None = None  # None: exceptions propagate
        self._soon: list[Callable[[], None]] = []  # from other threads (call_soon_threadsafe)
        self._wake_fd = -1
        self._bulk: dict[int, int] = {}  # fd -> the turn it was last served, for fds with more to read
        self._turn = 0

    # -- descriptors -----------------------------------------------------
    def add(self, fd: int, mask: int, callback: FdCallback) -> None:
        self._epoll.register(fd, mask)
        self._callbacks[fd] = callback
        self._masks[fd] = mask

    def modify(self, fd: int, mask: int) -> None:
        if fd in self._callbacks and self._masks[fd] != mask:
            self._epoll.modify(fd, mask)
            self._masks[fd] = mask

    def remove(self, fd: int) -> None:
        self._bulk.pop(fd, None)
        if self._callbacks.pop(fd, None) is not None:
            del self._masks[fd]
            try:
                self._epoll.unregister(fd)
            except OSError:
                pass

    def watching(self, fd: int) -> bool:
        return fd in self._callbacks

    def set_bulk(self, fd: int, bulk: bool) -> None:
        """Mark ``fd`` as having more to read than one callback takes (module note), or not."""
        if not bulk:
            self._bulk.pop(fd, None)
        elif fd not in self._bulk and fd in self._callbacks:
            self._bulk[fd] = self._turn

    def bulk_count(self) -> int:
        """How many fds are bulk now (roughly: how many sources are flooding)."""
        return len(self._bulk)

    # -- timers ----------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        timer = Timer(time.monotonic() + delay, callback)
        heapq.heappush(self._timers, timer)
        return timer

    def allow_threads(self) -> None:
        """In the loop's thread, before other threads use :meth:`call_soon_threadsafe` (an eventfd)."""
        if self._wake_fd < 0:
            self._wake_fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.add(self._wake_fd, EPOLLIN, self._on_wake)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """From any thread (after :meth:`allow_threads`): run ``callback`` in the loop's thread."""
        self._soon.append(callback)  # list.append is atomic
        os.eventfd_write(self._wake_fd, 1)

    def _on_wake(self, events: int) -> None:
        try:
            os.eventfd_read(self._wake_fd)
        except BlockingIOError:
            pass
        while self._soon:
            self._soon.pop(0)()

    # -- signals ---------------------------------------------------------
    def handle_signals(self, signals: tuple[int, ...], handler: Callable[[int], None]) -> None:
        """Route ``signals`` to ``handler(signum)`` from inside the loop."""
        self._signal_r, self._signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        _signal.set_wakeup_fd(self._signal_w, warn_on_full_buffer=False)
        self._signal_handler = handler
        for sig in signals:
            _signal.signal(sig, _ignore_signal)
        self.add(self._signal_r, EPOLLIN, self._on_signal_fd)

    def _on_signal_fd(self, events: int) -> None:
        try:
            data = os.read(self._signal_r, 512)
        except BlockingIOError:
            return
        if self._signal_handler is not None:
            for signum in dict.fromkeys(data):  # each distinct signal once, in order
                self._signal_handler(signum)

    def restore_signals(self) -> None:
        """Undo handle_signals (before running the exit command)."""
        if self._signal_w >= 0:
            _signal.set_wakeup_fd(-1)
            self.remove(self._signal_r)
            os.close(self._signal_r)
            os.close(self._signal_w)
            self._signal_r = self._signal_w = -1

    # -- running ---------------------------------------------------------
    def run_once(self, timeout: float | None = None) -> None:
        """Wait for events (at most ``timeout`` seconds) and dispatch them."""
        timers = self._timers
        while timers and timers[0].cancelled:
            heapq.heappop(timers)
        if timers:
            until = max(0.0, timers[0].deadline - time.monotonic())
            timeout = until if timeout is None else min(timeout, until)
        try:
            events = self._epoll.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            events = []
        if self._bulk:
            self._dispatch_fairly(events)
        else:
            self._dispatch(events)
        now = time.monotonic()
        while timers and (timers[0].cancelled or timers[0].deadline <= now):
            timer = heapq.heappop(timers)
            if not timer.cancelled:
                try:
                    timer.callback()
                except Exception as err:  # noqa: BLE001 - handed to on_error (module note)
                    self._failed(err)

    def _dispatch(self, events: list[tuple[int, int]]) -> None:
        callbacks = self._callbacks
        for fd, mask in events:
            callback = callbacks.get(fd)
            if callback is not None:
                try:
                    callback(mask)
                except Exception as err:  # noqa: BLE001 - handed to on_error (module note)
                    self._failed(err)

    def _dispatch_fairly(self, events: list[tuple[int, int]]) -> None:
        """Other fds first, then bulk ones, least recently served first, within the budget."""
        bulk = self._bulk
        self._turn += 1
        heavy = [ev for ev in events if ev[0] in bulk]
        if len(heavy) < len(events):
            self._dispatch([ev for ev in events if ev[0] not in bulk])
        heavy.sort(key=lambda ev: bulk.get(ev[0], 0))
        callbacks = self._callbacks
        start = time.monotonic()
        for n, (fd, mask) in enumerate(heavy):
            if n and time.monotonic() - start > BULK_BUDGET_S:
                break  # still ready: epoll reports them again at once, and they lead then
            callback = callbacks.get(fd)
            if callback is not None:
                if fd in bulk:
                    bulk[fd] = self._turn
                try:
                    callback(mask)
                except Exception as err:  # noqa: BLE001 - handed to on_error (module note)
                    self._failed(err)

    def _failed(self, err: Exception) -> None:
        if self.on_error is None:
            raise err
        self.on_error(err)

    def run_until(self, done: Callable[[], bool], timeout: float | None = None) -> bool:
        """Run until ``done()`` is true; False if ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not done():
            if deadline is None:
                self.run_once()
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.run_once(left)
        return True

    def close(self) -> None:
        self.restore_signals()
        if self._wake_fd >= 0:
            self.remove(self._wake_fd)
            os.close(self._wake_fd)
            self._wake_fd = -1
        self._epoll.close()
        self._callbacks.clear()
        self._masks.clear()
        self._bulk.clear()
