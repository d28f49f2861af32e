"""The journald log driver on the server's shared loop: entries sent as the stub, never waiting.

Facts that shape it:

* journald takes an entry's trusted fields (_PID, _UID, _GID, and from that
  pid's /proc: _COMM, _EXE, _CMDLINE, _CGROUP, _SYSTEMD_UNIT, ...) from the
  datagram's SCM_CREDENTIALS, which the kernel fills in with the sender's
  own pid unless the sender names one itself.  Naming another process's pid
  needs CAP_SYS_ADMIN over the sender's pid namespace (the kernel's
  ``scm_check_creds``; EPERM otherwise); the pid must exist (ESRCH).  So a
  root server sends each container's entries as that container's stub, the
  process the caller knows as conmon, and journald sees what it would see
  from a classic monitor in that place.  :func:`can_send_as` tries it on a
  socketpair; without the capability the session answers "classic".
* The stub must still exist when its entries go out: the monitor waits for
  :meth:`ServedJournaldWriter.drained` before the stub is told to quit.
  Should the stub vanish first, the rest goes out as the server (warned).
* One loop serves every container, so a journald that stops reading must
  not block it (the classic writer waits in ``send`` up to WAIT_MS).  Here
  sends never wait: what journald has no room for waits in this
  container's backlog, in order, reading of its output is paused (its pipe
  fills: that is the back-pressure, as with the classic writer), and the
  loop retries on EPOLLOUT.  The backlog is bounded by one read of output
  (the stdio reads one chunk, SHARED_READ_CHUNK, per event and stops once
  paused; the drain at exit waits for the backlog between reads), except
  for the output held while the runtime ran, released at once.  If journald
  takes nothing for WAIT_MS, it is taken for stuck as in classic mode: the
  backlog is dropped (one warning, whole entries, counted lost), reading
  resumes and entries are dropped without waiting for CONGESTED_S or until
  one goes through.
* The exit's log flush runs in a worker thread (monitor.py): entries made
  there are handed to the loop's thread, which alone sends.
"""

from __future__ import annotations

import _socket
import _struct
import errno
import threading
import time
from _collections import deque

from .journald import CLASS_MAX, FULL, GONE, SENT, WAIT_MS, JournaldWriter
from .loop import EPOLLOUT

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .loop import EventLoop, Timer

KEY_SENDER = "journald-sender"
PAUSE_REASON = "journald"  # stdio.pause_output's reason while a backlog waits


def credentials(pid: int, uid: int, gid: int) -> tuple[int, int, bytes]:
    """The SCM_CREDENTIALS control message naming ``pid``."""
    return (_socket.SOL_SOCKET, _socket.SCM_CREDENTIALS, _struct.pack("3i", pid, uid, gid))


def can_send_as(pid: int, uid: int, gid: int) -> bool:
    """Whether this process may send as ``pid`` (tried on a socketpair: the kernel's check is the same)."""
    a, b = _socket.socketpair(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        a.sendmsg([b"?"], [credentials(pid, uid, gid)])
    except OSError:
        return False
    finally:
        a.close()
        b.close()
    return True


class ServedJournaldWriter(JournaldWriter):
    """JournaldWriter for a shared loop: sends as the stub, keeps a backlog instead of waiting."""

    blocking = False
    own_buffer = True  # never wrapped in a BufferedLogWriter: it does not block the loop

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._backlog: deque[bytes] = deque()
        self._loop: EventLoop | None = None
        self._on_full: Callable[[bool, str], None] | None = None
        self._holding = False  # output reading paused for the backlog
        self._watched = -1  # the socket waited on for EPOLLOUT
        self._stall: Timer | None = None
        self._progress = 0.0  # when journald last took an entry of the backlog
        self._owner = threading.get_ident()
        self._posted = 0  # batches handed over from another thread, not yet taken

    def send_as(self, pid: int, uid: int, gid: int) -> None:
        """From now on, entries carry ``pid`` (the stub) as their sender."""
        self._credentials = [credentials(pid, uid, gid)]

    def attach_loop(self, loop: EventLoop, on_full: Callable[[bool, str], None]) -> None:
        self._loop = loop
        self._on_full = on_full
        loop.allow_threads()
        if self._backlog:
            self._pump()

    def drained(self) -> bool:
        """Nothing waits to be sent (sent, or dropped as the rules say)."""
        return not self._backlog and not self._posted

    # -- sending ------------------------------------------------------------
    def _send(self, payloads: list[bytes]) -> None:
        if not payloads:
            return
        if threading.get_ident() != self._owner:
            assert self._loop is not None
            self._posted += 1
            self._loop.call_soon_threadsafe(lambda: self._take_posted(payloads))
            return
        if self._backlog or self._loop is None:
            self._backlog.extend(payloads)
            return
        self._backlog.extend(payloads)  # the pump sends from the backlog's head: one code path
        self._pump()

    def _take_posted(self, payloads: list[bytes]) -> None:
        self._posted -= 1
        self._send(payloads)

    def _pump(self) -> None:
        """Send from the backlog's head until it is empty or journald is full."""
        backlog = self._backlog
        small = CLASS_MAX[0]
        progressed = False
        while backlog:
            error = None
            sock = self._sock
            if sock is not None and not self._troubled:
                sendmsg, creds = sock.sendmsg, self._credentials
                try:
                    while backlog:
                        payload = backlog[0]
                        if len(payload) <= small:
                            sendmsg([payload], creds)
                        else:
                            self._socket_for(payload).sendmsg([payload], creds)
                        backlog.popleft()
                        progressed = True
                    break
                except BlockingIOError:  # journald is busy: the common case, no fallback applies
                    if progressed:
                        self._progress = time.monotonic()
                    self._wait_for_room()
                    return
                except OSError as e:
                    error = e
            outcome = self._send_one(backlog[0], error, False)
            if outcome == FULL:
                if progressed:
                    self._progress = time.monotonic()
                self._wait_for_room()
                return
            if outcome == GONE:
                self._lost(list(backlog), 0, len(backlog))
                backlog.clear()
                break
            backlog.popleft()
            progressed = progressed or outcome == SENT
        self._idle()

    def _transmit(self, sock: _socket.socket, payload: bytes, flags: int) -> None:
        sock.sendmsg([payload], self._credentials, flags)

    def _retry_after(self, code: int | None) -> bool:
        if code == errno.ESRCH and self._credentials:  # the stub is gone; its entries still count
            self._credentials = []
            self._warn(KEY_SENDER, "journald: the monitor process is gone; sending its last entries as the server")
            return True
        return False

    # -- waiting for room -------------------------------------------------------
    def _wait_for_room(self) -> None:
        loop = self._loop
        assert loop is not None
        try:
            fd = self._socket_for(self._backlog[0]).fileno()
        except OSError:
            fd = -1
        if fd != self._watched:
            self._unwatch()
            if fd >= 0:
                loop.add(fd, EPOLLOUT, lambda events: self._pump())
                self._watched = fd
        if not self._holding and self._on_full is not None:
            self._holding = True
            self._on_full(True, PAUSE_REASON)
        if self._stall is None:
            self._progress = time.monotonic()
            self._stall = loop.call_later(WAIT_MS / 1000, self._check_stall)

    def _check_stall(self) -> None:
        """WAIT_MS after the backlog began or journald last took from it."""
        self._stall = None
        if not self._backlog:
            return
        left = self._progress + WAIT_MS / 1000 - time.monotonic()
        if left > 0:
            assert self._loop is not None
            self._stall = self._loop.call_later(left, self._check_stall)
            return
        self._stuck()
        self._lost(list(self._backlog), 0, len(self._backlog))
        self._backlog.clear()
        self._idle()

    def _idle(self) -> None:
        """The backlog is empty: stop waiting, read output again."""
        self._unwatch()
        if self._stall is not None:
            self._stall.cancel()
            self._stall = None
        if self._holding and self._on_full is not None:
            self._holding = False
            self._on_full(False, PAUSE_REASON)

    def _unwatch(self) -> None:
        if self._watched >= 0 and self._loop is not None:
            self._loop.remove(self._watched)
        self._watched = -1

    def _drop_socket(self) -> None:
        self._unwatch()
        super()._drop_socket()

    def close(self) -> None:
        """The end (the monitor waited for ``drained``, or the stub went away): what waits is lost."""
        self._on_full = None  # the stdio is closed already: its fds may be another container's now
        self.flush()
        if self._backlog:
            self._lost(list(self._backlog), 0, len(self._backlog))
            self._backlog.clear()
        self._idle()
        self._drop_socket()
