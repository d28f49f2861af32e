"""A bounded buffer and a writer thread between reading the output and writing the log.

Without it (the default) the event loop writes each chunk to the log itself:
a disk that takes seconds per write, or an fsync, holds up reading, the
pipe fills and the container's writes wait.  With ``log.buffer`` set in
pyconmon.toml, each log writer gets a thread: the loop only queues the chunk
(with the time it was read, so k8s-file timestamps say when the container
wrote, not when the disk took it) and goes back to reading; the thread
writes, reopens and fsyncs.  The system calls release the GIL, so a stalled
disk stalls only the thread.

The buffer is bounded: once ``limit`` bytes wait, the stdio stops reading
(the container then waits, as without a buffer: nothing is lost) until the
thread has brought the backlog down to half; the thread tells the loop
through an eventfd.  Small chunks of one stream that queued up while the
disk was busy go out as one write (up to ``BATCH_MAX``); large ones as
they are.  ``flush`` and ``sync`` (at exit) wait until everything queued
is written, so the exit file still comes after a complete log.

``log.sync``: ``exit`` (the default: fsync at exit unless --no-sync-log),
``rotate`` (also fsync a file before starting the next one, in the thread),
``none`` (never).
"""

from __future__ import annotations

import os
import threading
import time
from _collections import deque

from .loop import EPOLLIN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .logsink import LogWriter
    from .loop import EventLoop

WRITE, REOPEN, FLUSH, SYNC, BARRIER, STOP = range(6)
BATCH_MAX = 4 << 20  # the most one write of the thread takes
BATCH_FROM = 256 << 10  # chunks at least this large are written as they are
PAUSE_REASON = "log"  # stdio.pause_output's reason while the buffer is full


class BufferedLogWriter:
    """A log writer that hands its work to a thread; the same interface as the writer it wraps."""

    def __init__(self, inner: LogWriter, limit: int, sync_on_rotate: bool = False) -> None:
        self.inner = inner
        self.limit = limit
        if sync_on_rotate and hasattr(inner, "sync_on_reopen"):
            inner.sync_on_reopen = True  # it reopens in this thread: the fsync is off the read path
        self.stamped = getattr(inner, "takes_read_time", False)
        self.queue: deque[tuple] = deque()
        self.queued = 0  # bytes waiting
        self.peak = 0  # the most that ever waited (metrics, tests)
        self.full = False
        self.full_count = 0  # times reading was held because the buffer was full
        self.on_full: Callable[[bool, str], None] | None = None
        self.cond = threading.Condition()
        self.wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.loop: EventLoop | None = None
        # Started on first use: the monitor forks after making its log writers, and a thread
        # does not survive fork.
        self.thread: threading.Thread | None = None

    def __getattr__(self, name: str) -> object:
        # The inner writer's counters (write_errors, rotations, ...) for the metrics.
        return getattr(self.__dict__["inner"], name)

    def attach_loop(self, loop: EventLoop, on_full: Callable[[bool, str], None]) -> None:
        """Tell ``on_full(True, "log")`` when the buffer is full, ``on_full(False, "log")`` when it has room again."""
        self.loop = loop
        self.on_full = on_full
        loop.add(self.wake, EPOLLIN, self._on_wake)

    # -- the loop's side -----------------------------------------------------
    def _put(self, item: tuple, size: int = 0) -> bool:
        if self.thread is None:
            self.thread = threading.Thread(target=self._run, name="pyconmon-log-writer", daemon=True)
            self.thread.start()
        with self.cond:
            self.queue.append(item)
            self.queued += size
            if self.queued > self.peak:
                self.peak = self.queued
            self.cond.notify()
            if self.queued >= self.limit and not self.full and self.on_full is not None:
                self.full = True
                self.full_count += 1
                return True
        return False

    def write(self, stream: int, data: bytes) -> None:
        if self._put((WRITE, stream, data, time.time_ns()), len(data)):
            assert self.on_full is not None
            self.on_full(True, PAUSE_REASON)

    def reopen(self) -> None:
        self._put((REOPEN,))

    def flush(self) -> None:
        self._put((FLUSH,))
        self._wait()

    def sync(self) -> None:
        self._put((SYNC,))
        self._wait()

    def _wait(self) -> None:
        """Until the thread has done everything queued so far."""
        done = threading.Event()
        self._put((BARRIER, done))
        done.wait()

    def _on_wake(self, events: int) -> None:
        try:
            os.eventfd_read(self.wake)
        except BlockingIOError:
            return
        with self.cond:
            resume = self.full and self.queued <= self.limit // 2
            if resume:
                self.full = False
        if resume and self.on_full is not None:
            self.on_full(False, PAUSE_REASON)

    def close(self) -> None:
        if self.thread is not None:
            self._put((STOP,))
            self.thread.join()
        if self.loop is not None:
            self.loop.remove(self.wake)
        os.close(self.wake)
        self.inner.close()

    # -- the thread ----------------------------------------------------------
    def _batch(self, first: tuple) -> tuple:
        """``first`` and the chunks of the same stream queued right after it, as one write.

        The slower the disk, the more has queued up and the fewer, larger
        writes the thread makes: a disk that takes a second per write still
        keeps up with a container writing small pieces.  The records carry
        the time the first chunk was read.  Called with the lock held.
        """
        queue = self.queue
        _, stream, data, ns = first
        if len(data) >= BATCH_FROM or not queue or queue[0][0] != WRITE or queue[0][1] != stream:
            return first  # a large chunk is a large write already: no copy
        parts = [data]
        size = len(data)
        while (queue and queue[0][0] == WRITE and queue[0][1] == stream and size < BATCH_MAX
               and len(queue[0][2]) < BATCH_FROM):
            chunk = queue.popleft()[2]
            parts.append(chunk)
            size += len(chunk)
        return (WRITE, stream, b"".join(parts), ns)

    def _run(self) -> None:
        inner = self.inner
        cond = self.cond
        while True:
            with cond:
                while not self.queue:
                    cond.wait()
                item = self.queue.popleft()
                if item[0] == WRITE:
                    item = self._batch(item)
            kind = item[0]
            try:
                if kind == WRITE:
                    _, stream, data, ns = item
                    if self.stamped:
                        inner.write(stream, data, ns)  # type: ignore[call-arg]
                    else:
                        inner.write(stream, data)
                    with cond:
                        self.queued -= len(data)
                        tell = self.full and self.queued <= self.limit // 2
                    if tell:
                        os.eventfd_write(self.wake, 1)
                elif kind == REOPEN:
                    inner.reopen()
                elif kind == FLUSH:
                    inner.flush()
                elif kind == SYNC:
                    if hasattr(inner, "sync"):
                        inner.sync()
                elif kind == BARRIER:
                    item[1].set()
                elif kind == STOP:
                    return
            except Exception as err:  # noqa: BLE001 - the thread must go on, or the loop would wait forever
                diag = getattr(inner, "diag", None)
                if diag is not None:
                    diag.error(f"Internal error in the log writer thread: {err!r}; carrying on")
