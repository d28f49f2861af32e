"""What a classic monitor takes over from a server-mode stub whose server went away.

The stub (launcher/stub.c) keeps its own copies of the container's output
pipes.  When the server dies after the runtime was forked, the stub waits
for the runtime, then execs the classic monitor in the same process with
``_PYCONMON_ADOPT`` in its environment: the runtime's wait status, whether
the container pid was already sent on the sync pipe, the two read ends, and
the container's wait status if the stub has reaped it already.  The classic
monitor then goes on from there: nothing the container wrote after the server
died is lost (what the server had read but not yet written is).
"""

from __future__ import annotations

ENV = "_PYCONMON_ADOPT"
NOT_REAPED = "x"


class Adoption:
    """The parsed ``_PYCONMON_ADOPT``: ``RUNTIME_STATUS PID_SENT OUT_FD ERR_FD TARGET TARGET_STATUS``."""

    def __init__(self, runtime_status: int, pid_sent: bool, out_fd: int, err_fd: int, target: int,
                 target_status: int | None) -> None:
        self.runtime_status = runtime_status
        self.pid_sent = pid_sent
        self.out_fd = out_fd
        self.err_fd = err_fd
        self.target = target
        self.target_status = target_status

    @classmethod
    def parse(cls, text: str) -> Adoption:
        """Raises ValueError for anything but six fields of the right kinds."""
        words = text.split()
        if len(words) != 6:
            raise ValueError(f"{ENV}={text!r}: six fields expected")
        status, sent, out, err, target = (int(w) for w in words[:5])
        if sent not in (0, 1) or out < -1 or err < -1:
            raise ValueError(f"{ENV}={text!r}")
        target_status = None if words[5] == NOT_REAPED else int(words[5])
        return cls(status, bool(sent), out, err, target, target_status)

    def fds(self) -> list[int]:
        return [fd for fd in (self.out_fd, self.err_fd) if fd >= 0]
