"""The server's CPU weight: as much as the monitors it stands in for.

Facts that shape it:

* The kernel shares CPU among runnable tasks by weight.  Under C conmon a
  flooding container has a monitor task of its own: N floods, N monitor
  tasks, each woken by its own pipe.  The server is one task doing the work
  of all of them, and with floods it never sleeps, so it gets no wake-up
  preference either: beside N busy containers it got 1/(N + 1) of the CPU,
  and a quiet container's line waited for it behind the floods (p99 150 ms
  with 20 floods on 2 cores, against C's 12 ms).
* So the server's weight follows the number of sources flooding now (the
  loop's bulk fds): nice weights grow 1.25x a step, so N busy sources ask
  for ``log1.25(N)`` steps below the nice the server started with, at most
  ``MAX_BOOST`` steps, never below -20; back to the start when they stop.
* Lowering nice needs CAP_SYS_NICE (or RLIMIT_NICE): without it (rootless)
  the server keeps its nice, and the loop's fair turns still apply.
* ``setpriority(PRIO_PROCESS, 0)`` sets the calling thread only: the one
  that runs the loop, which is the one doing the work.
"""

from __future__ import annotations

import math
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .loop import EventLoop, Timer

STEP = 1.25  # weight ratio of one nice step (kernel sched_prio_to_weight)
MAX_BOOST = 15
INTERVAL_S = 0.1


def boost_for(busy: int) -> int:
    """Nice steps below the start for ``busy`` flooding sources: their monitors' weight in one task."""
    if busy <= 1:
        return 0
    return min(MAX_BOOST, round(math.log(busy) / math.log(STEP)))


class ServerWeight:
    """Re-nices the loop's thread to the number of bulk fds, every ``INTERVAL_S`` while armed."""

    def __init__(self, loop: EventLoop) -> None:
        self.loop = loop
        self.base = os.getpriority(os.PRIO_PROCESS, 0)
        self.current = self.base
        self.allowed = True
        self._timer: Timer | None = None

    def target(self) -> int:
        return max(-20, self.base - boost_for(self.loop.bulk_count()))

    def update(self) -> None:
        self._renice(self.target())

    def _renice(self, want: int) -> None:
        if want == self.current or (want < self.current and not self.allowed):
            return
        try:
            os.setpriority(os.PRIO_PROCESS, 0, want)
        except OSError:
            if want < self.current:
                self.allowed = False  # no CAP_SYS_NICE: the fair turns alone
            return
        self.current = want

    def arm(self) -> None:
        """Follow the load from now on (idempotent)."""
        if self._timer is None:
            self._timer = self.loop.call_later(INTERVAL_S, self._tick)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._renice(self.base)

    def _tick(self) -> None:
        self._timer = None
        self.update()
        self.arm()
