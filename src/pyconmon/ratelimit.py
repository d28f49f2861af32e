"""The per-container log rate limit: a token bucket over both output streams.

Two policies (``io.pyconmon.log.policy`` or ``log.policy`` in the file):

* ``drop`` (:class:`DropLimiter`): output is read as fast as the container
  writes it; what exceeds the bucket is discarded before the log and the
  attach clients see it.  Whole lines are kept or dropped: the cut is made
  after the last line end that fits; a line whose start was dropped is
  dropped to its end, and a line whose start was logged is finished even a
  little over the limit (up to ``CONTINUATION_MAX`` bytes of debt, repaid
  from later tokens), so no logged line is torn unless it is that long.
  Once per interval in which anything was dropped, a marker record goes to
  the log, through the log drivers (so in their own format), on the stderr
  stream: ``[pyconmon] dropped N bytes ...`` with N
  the exact count since the previous marker; the last marker is written at
  exit, so the markers add up to everything dropped.
* ``block`` (:class:`BlockGate`): the monitor stops reading while the bucket
  is empty.  The pipe (or pty) fills and the container's writes wait: its
  output is slowed to the rate and nothing is lost.  Reads are at least
  ``MIN_READ`` bytes (or the burst, if smaller), so a slow limit costs a few
  wakeups a second, not one per line.

Without a limit neither object exists and the output path is untouched.
"""

from __future__ import annotations

import time

from .config import LogLimit
from .streams import STDERR

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .loop import EventLoop, Timer
    from .stdio import ContainerStdio

MARKER_INTERVAL = 1.0  # seconds: at most one marker per interval
MIN_READ = 64 << 10
CONTINUATION_MAX = 64 << 10  # how far over the limit the end of a begun line may go


class TokenBucket:
    """``rate`` bytes per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: int, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.stamp = now

    def refill(self, now: float) -> float:
        """Add what accrued since the last call; the tokens now available."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        self.tokens = tokens if tokens < self.burst else float(self.burst)
        self.stamp = now
        return self.tokens


def marker_text(dropped: int, limit: LogLimit) -> bytes:
    """The marker record's text (one line)."""
    return (b"[pyconmon] dropped %d bytes of container output: log rate limit %d bytes/s, burst %d bytes\n"
            % (dropped, limit.rate, limit.burst))


class DropLimiter:
    """Policy ``drop``: call it as the output callback; it passes on what fits."""

    def __init__(self, limit: LogLimit, forward: Callable[[int, bytes], None],
                 write_marker: Callable[[int, bytes], None], loop: EventLoop,
                 clock: Callable[[], float] = time.monotonic, interval: float = MARKER_INTERVAL) -> None:
        self.limit = limit
        self.bucket = TokenBucket(limit.rate, limit.burst, clock())
        self.forward = forward
        self.write_marker = write_marker
        self.loop = loop
        self.clock = clock
        self.interval = interval
        self.pending = 0  # dropped since the last marker
        self.dropped = 0  # dropped in all
        self.markers = 0
        self.open_line: set[int] = set()  # streams whose last logged chunk ended mid-line
        self.skipping: set[int] = set()  # streams in a line whose start was dropped
        self._timer: Timer | None = None

    def __call__(self, stream: int, data: bytes) -> None:
        size = len(data)
        bucket = self.bucket
        available = bucket.refill(self.clock())
        if available >= size and stream not in self.skipping:
            bucket.tokens = available - size
            self.forward(stream, data)
            if data[-1:] != b"\n":
                self.open_line.add(stream)
            else:
                self.open_line.discard(stream)
            return
        self._cut(stream, data, available)

    def _cut(self, stream: int, data: bytes, available: float) -> None:
        """Over the limit: pass whole lines that fit, drop the rest, keep lines whole across chunks."""
        start = 0
        if stream in self.skipping or stream in self.open_line:
            end = data.find(b"\n") + 1
            if stream in self.open_line and not end and len(data) <= available + CONTINUATION_MAX:
                self.forward(stream, data)  # more of a begun line, still without its end
                self.bucket.tokens = available - len(data)
                return
            if stream in self.open_line and end and end <= available + CONTINUATION_MAX:
                # The log holds the start of this line: finish it, a little over the limit if need be.
                self.forward(stream, data[:end])
                available -= end
            elif end:
                self._dropped(end)  # the rest of a line whose start was dropped (or too long to finish)
            else:
                self.skipping.add(stream)
                self.open_line.discard(stream)
                self._dropped(len(data))
                self.bucket.tokens = available
                return
            self.skipping.discard(stream)
            self.open_line.discard(stream)
            start = end
        rest = len(data) - start
        if available >= rest:
            self.bucket.tokens = available - rest
            if rest:
                self.forward(stream, data[start:])
                if data[-1:] != b"\n":
                    self.open_line.add(stream)
            return
        keep = data.rfind(b"\n", start, start + int(available)) + 1 if available >= 1 else 0
        if keep:
            self.forward(stream, data[start:keep])
            available -= keep - start
        else:
            keep = start
        self.bucket.tokens = available
        self._dropped(len(data) - keep)
        if data[-1:] != b"\n":
            self.skipping.add(stream)

    def _dropped(self, size: int) -> None:
        self.pending += size
        self.dropped += size
        if self._timer is None:
            self._timer = self.loop.call_later(self.interval, self._on_interval)

    def _on_interval(self) -> None:
        self._timer = None
        self.flush()

    def flush(self) -> None:
        """Write the marker for what was dropped since the last one (at exit too)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.pending:
            pending, self.pending = self.pending, 0
            self.markers += 1
            self.write_marker(STDERR, marker_text(pending, self.limit))


class BlockGate:
    """Policy ``block``: decides how much the stdio may read now, and when to look again."""

    def __init__(self, limit: LogLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.bucket = TokenBucket(limit.rate, limit.burst, clock())
        self.clock = clock
        self.min_read = min(MIN_READ, limit.burst)
        self.held = 0  # how many times reading was held back

    def allowance(self) -> tuple[int, float]:
        """``(bytes that may be read now, 0.0)`` or ``(0, seconds to wait)``."""
        available = self.bucket.refill(self.clock())
        if available >= self.min_read:
            return int(available), 0.0
        self.held += 1
        return 0, (self.min_read - available) / self.limit.rate

    def consumed(self, size: int) -> None:
        self.bucket.tokens -= size


def apply_limit(limit: LogLimit, stdio: ContainerStdio, loop: EventLoop,
                write_log: Callable[[int, bytes], None]) -> DropLimiter | None:
    """Put ``limit`` on a container's output; the DropLimiter (to flush at exit) for ``drop``."""
    if limit.policy == "block":
        stdio.gate = BlockGate(limit)
        return None
    limiter = DropLimiter(limit, stdio.on_output, write_log, loop)
    stdio.on_output = limiter
    return limiter
