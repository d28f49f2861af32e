"""What a classic monitor takes over from a server-mode stub whose server went away.

The server hands the stub (launcher/stub.c) a copy of every descriptor of the
container that it creates or receives (protocol ``P``, names in
:data:`KEPT`): the output pipes' read ends, the stdin pipe's write end, the
pty master (when the runtime sends it through the console socket), the
attach socket's listener and both ends of the ``ctl`` and ``winsz`` FIFOs.
When the server dies after the runtime was forked, the stub waits for the
runtime, then execs the classic monitor in the same process with
``_PYCONMON_ADOPT`` in its environment: the runtime's wait status, whether
the container pid was already sent on the sync pipe, the container pid and
its wait status if the stub has reaped it already, then those descriptors.
The classic monitor goes on from there with the very same pipes, pty,
listening socket and FIFOs: nothing the container wrote after the server
died is lost (what the server had read but not yet written is), attach
clients that connect meanwhile wait in the listener's backlog, and ``ctl``
lines written meanwhile wait in the FIFO.  The attach connections the server
had accepted end (their clients read EOF): the stub keeps no copy of them.
"""

from __future__ import annotations

ENV = "_PYCONMON_ADOPT"
NOT_REAPED = "x"
# The descriptors a stub keeps, in the order of their fields in ENV (stub.c's slots).
KEPT = ("in", "out", "err", "pty", "attach", "ctl", "ctlw", "winsz", "winszw")
HEAD = 4  # RUNTIME_STATUS PID_SENT TARGET TARGET_STATUS


class Adoption:
    """The parsed ``_PYCONMON_ADOPT``: ``RUNTIME_STATUS PID_SENT TARGET TARGET_STATUS`` and one fd per
    name of :data:`KEPT` (-1: none)."""

    def __init__(self, runtime_status: int, pid_sent: bool, target: int, target_status: int | None,
                 fds: dict[str, int]) -> None:
        self.runtime_status = runtime_status
        self.pid_sent = pid_sent
        self.target = target
        self.target_status = target_status
        self.in_fd, self.out_fd, self.err_fd, self.pty_fd = (fds[name] for name in KEPT[:4])
        self.attach_fd = fds["attach"]
        self.ctl_fds = (fds["ctl"], fds["ctlw"])
        self.winsz_fds = (fds["winsz"], fds["winszw"])

    @classmethod
    def parse(cls, text: str) -> Adoption:
        """Raises ValueError for anything but the fields of the right kinds."""
        words = text.split()
        if len(words) != HEAD + len(KEPT):
            raise ValueError(f"{ENV}={text!r}: {HEAD + len(KEPT)} fields expected")
        status, sent, target = int(words[0]), int(words[1]), int(words[2])
        target_status = None if words[3] == NOT_REAPED else int(words[3])
        fds = dict(zip(KEPT, (int(w) for w in words[HEAD:]), strict=True))
        given = [fd for fd in fds.values() if fd >= 0]
        if sent not in (0, 1) or target < 0 or min(fds.values()) < -1 or len(set(given)) != len(given):
            raise ValueError(f"{ENV}={text!r}")
        for reader, writer in (("ctl", "ctlw"), ("winsz", "winszw")):
            if (fds[reader] < 0) != (fds[writer] < 0):
                raise ValueError(f"{ENV}={text!r}: {reader} needs both ends")
        return cls(status, bool(sent), target, target_status, fds)

    def fds(self) -> list[int]:
        return [fd for fd in (self.in_fd, self.out_fd, self.err_fd, self.pty_fd, self.attach_fd, *self.ctl_fds,
                              *self.winsz_fds) if fd >= 0]
