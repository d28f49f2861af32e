"""The container's stdio: pipes or a pty, and the pumps that move bytes.

Facts that shape this module:

* Pipes are enlarged to 1 MiB (F_SETPIPE_SZ, up to the system's
  ``pipe-max-size``) and read in chunks of that size, so a flood costs a few
  hundred system calls per hundred megabytes instead of one per 8 KiB.
* The container's ends are chmod 0777 (through /proc/self/fd) so a non-root
  container user can reopen ``/dev/stdout``.
* A pty master reports EPOLLHUP and fails reads with EIO while no process has
  the slave open, which happens for a moment between ``runc create`` and
  ``runc start`` and whenever the container's processes close the terminal.
  That is not the end of the output: the master is taken out of epoll (so
  the loop does not spin) and polled again a little later; the container's
  exit, not the hangup, ends the monitor.
* Output is drained after the container exits with non-blocking reads until
  EAGAIN or EOF, so nothing the container wrote is lost even when it exits
  at once after a flood.
* The runtime's console socket passes the pty master as SCM_RIGHTS with one
  fd and a name string as payload.
* The stderr pipe is also the runtime's stderr.  While the runtime runs it is
  read into memory (a runtime that writes more than the pipe holds and then
  fails would otherwise block forever, and the monitor with it): on failure
  its first 8 KiB are the error for the sync pipe; on success the bytes go
  to the log first, in order, as if they had waited in the pipe.
"""

from __future__ import annotations

import _socket
import os
import sys
from _collections import deque

from .diag import Diagnostics
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop
from .streams import STDERR, STDOUT

TYPE_CHECKING = False  # typing costs 7 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable

    from .loop import Timer
    from .ratelimit import BlockGate

READ_CHUNK = 1 << 20
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = 1031
STDIN_QUEUE_MAX = 1 << 20
PACE_BELOW = 64 << 10  # a read shorter than this means the container writes slowly...
PACE_S = 0.001  # ...so wait this long before the next read
PTY_RETRY = 0.1
RUNTIME_ERR_MAX = 8192  # what the sync pipe gets of a failed runtime's stderr, as conmon
EARLY_OUTPUT_MAX = 8 << 20  # output held while the runtime runs; beyond it, reading waits for the runtime
EARLY_WAIT_S = 2.0  # ... this long at most; then the pipes are drained again, the excess dropped with a warning


def _enlarge_pipe(fd: int) -> None:
    import fcntl
    for size in (PIPE_SIZE, 256 << 10):
        try:
            fcntl.fcntl(fd, F_SETPIPE_SZ, size)
            return
        except OSError:
            continue


def _set_nonblocking(fd: int) -> None:
    os.set_blocking(fd, False)


def _chmod_fd(fd: int) -> None:
    try:
        os.chmod(f"/proc/self/fd/{fd}", 0o777)
    except OSError:
        pass


class OutputSource:
    """One readable fd of container output (a pipe, or the pty master)."""

    def __init__(self, fd: int, stream: int, is_pty: bool = False) -> None:
        self.fd = fd
        self.stream = stream
        self.is_pty = is_pty
        self.eof = False


class ContainerStdio:
    """Creates the container's stdio and moves its bytes.

    ``on_output(stream, data)`` receives every chunk of output.  The
    container's ends (``child_fds``) are what the runtime child dups onto 0-2.
    """

    def __init__(self, loop: EventLoop, diag: Diagnostics, on_output: Callable[[int, bytes], None]) -> None:
        self.loop = loop
        self.diag = diag
        self.on_output = on_output
        self.read_size = READ_CHUNK  # per read from the loop (smaller on a shared loop: monitor.py)
        self.sources: list[OutputSource] = []
        self.child_fds: list[int] = []  # fds for the runtime child's 0, 1, 2 (-1 = /dev/null)
        self.stdin_fd = -1
        self.stdin_queue: deque[bytes] = deque()
        self.stdin_queued = 0
        self.stdin_close_pending = False
        self.on_stdin_backlog: Callable[[bool], None] | None = None
        self.on_pty: Callable[[], None] | None = None  # called as soon as the pty master is there
        self.on_stdin_closed: Callable[[], None] | None = None  # called when close_stdin closes the pipe
        self.console: ConsoleSocket | None = None
        self.pty_master = -1
        self.output_paused = False
        self._paused_by: set[str] = set()
        self.gate: BlockGate | None = None  # a `block` log rate limit, if any
        self._retry_timer: Timer | None = None
        self._early: list[tuple[int, bytes]] = []  # (stream, chunk) read while the runtime ran
        self._early_size = 0
        self._early_timer: Timer | None = None  # the bounded wait once EARLY_OUTPUT_MAX is held
        self._early_overflow = False  # the wait is over: what is read now is dropped
        self._early_dropped = 0

    # -- set-up --------------------------------------------------------------
    def make_pipes(self, want_stdin: bool) -> None:
        child = [-1, -1, -1]
        if want_stdin:
            r, w = os.pipe2(os.O_CLOEXEC)
            child[0] = r
            self.stdin_fd = w
            _set_nonblocking(w)
            _chmod_fd(r)
        for index, stream in ((1, STDOUT), (2, STDERR)):
            r, w = os.pipe2(os.O_CLOEXEC)
            _enlarge_pipe(r)
            _set_nonblocking(r)
            _chmod_fd(w)
            child[index] = w
            self.sources.append(OutputSource(r, stream))
        self.child_fds = child

    def adopt(self, in_fd: int, out_fd: int, err_fd: int, pty_fd: int) -> None:
        """The stdin write end, output read ends and pty master made or received earlier (by a
        server now gone; -1: none); no child ends."""
        for fd, stream in ((out_fd, STDOUT), (err_fd, STDERR)):
            if fd >= 0:
                os.set_inheritable(fd, False)
                _set_nonblocking(fd)
                self.sources.append(OutputSource(fd, stream))
        if in_fd >= 0:
            os.set_inheritable(in_fd, False)
            _set_nonblocking(in_fd)
            self.stdin_fd = in_fd
        if pty_fd >= 0:
            os.set_inheritable(pty_fd, False)
            self.set_pty(pty_fd)
        self.child_fds = [-1, -1, -1]

    def make_console_socket(self, tmpdir: str) -> str:
        self.console = ConsoleSocket(tmpdir)
        self.loop.add(self.console.sock.fileno(), EPOLLIN, self.receive_console)
        # A stderr pipe even with a tty, as conmon has: it catches the runtime's own
        # errors (for the sync pipe) before there is a pty.
        r, w = os.pipe2(os.O_CLOEXEC)
        _set_nonblocking(r)
        self.sources.append(OutputSource(r, STDERR))
        self.child_fds = [-1, -1, w]
        return self.console.path

    @property
    def has_pty(self) -> bool:
        """Whether the runtime has handed over the pty (with ``-t``)."""
        return self.pty_master >= 0

    def resize(self, rows: int, cols: int) -> None:
        """Set the pty's window size; OSError if that fails.  Requires :attr:`has_pty`."""
        from .ctl import resize_pty
        resize_pty(self.pty_master, rows, cols)

    def take_console(self) -> None:
        """After the runtime exited: the pty from the console socket, if it was sent and not taken yet."""
        if self.console is not None:
            self.receive_console()

    def receive_console(self, events: int = 0) -> None:
        """Take the pty master from the console socket if the runtime has sent it."""
        assert self.console is not None
        master = self.console.try_receive(self.diag)
        if master is not None:
            self.loop.remove(self.console.sock.fileno())
            self.console.close()
            self.console = None
            self.set_pty(master)

    def set_pty(self, master: int) -> None:
        import termios
        try:
            attrs = termios.tcgetattr(master)
            attrs[1] |= termios.ONLCR | termios.OPOST
            termios.tcsetattr(master, termios.TCSANOW, attrs)
        except termios.error as err:
            self.diag.warn(f"Failed to set ONLCR on the terminal: {err}")
        _set_nonblocking(master)
        self.pty_master = master
        self.stdin_fd = master
        src = OutputSource(master, STDOUT, is_pty=True)
        self.sources.append(src)
        if self.on_pty is not None:
            self.on_pty()
        # only the pty: the stderr pipe holds the runtime's errors until it has exited
        self.loop.add(master, EPOLLIN, lambda ev: self._on_readable(src, ev))

    def close_child_ends(self) -> None:
        for fd in self.child_fds:
            if fd >= 0:
                os.close(fd)
        self.child_fds = [-1, -1, -1]

    # -- output while the runtime runs ---------------------------------------
    # The runtime's stderr is the container's stderr pipe: a runtime that writes more than
    # the pipe holds and fails would deadlock (it blocks writing, we wait for it to exit),
    # so the pipes are read while it runs.  What is read is held, in the order it was read
    # (an exec'd process may already be writing both streams), until the runtime's fate is
    # known: on failure the first 8 KiB of stderr become the sync pipe's message and nothing
    # is logged; on success the held chunks are output, in the same order.  Past EARLY_OUTPUT_MAX
    # the pipes are left unread (the process waits on its full pipe, as under C conmon, which
    # reads nothing before the runtime has exited): an exec'd process can write megabytes before
    # `runc exec --detach` exits, and none of it may be lost (ExecSync output).  Only a runtime
    # still running EARLY_WAIT_S later (blocked on its own stderr?) gets the pipes drained again,
    # the excess dropped with a warning.
    def collect_early_output(self) -> None:
        """While the runtime runs: read the output pipes into memory, so they never fill up."""
        for src in self._early_pipes():
            self.loop.add(src.fd, EPOLLIN, lambda ev, s=src: self._on_early_output(s))  # type: ignore[misc]

    def _on_early_output(self, src: OutputSource) -> None:
        self._collect(src)
        if self._early_size >= EARLY_OUTPUT_MAX and self._early_timer is None:
            self._stop_collecting()  # release_early_output / runtime_error read on from there
            self._early_timer = self.loop.call_later(EARLY_WAIT_S, self._drain_early_overflow)

    def _drain_early_overflow(self) -> None:
        self._early_overflow = True
        self.collect_early_output()

    def _early_pipes(self) -> list[OutputSource]:
        return [src for src in self.sources if not src.is_pty and not src.eof]

    def _collect(self, src: OutputSource, limit: int = READ_CHUNK) -> bool:
        """Hold one chunk of ``src``; False once nothing more is there now (EAGAIN or EOF)."""
        try:
            data = os.read(src.fd, limit)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            data = b""
        if not data:
            self._source_eof(src)
            return False
        if self._early_overflow:
            self._early_dropped += len(data)
        else:
            self._early.append((src.stream, data))
            self._early_size += len(data)
        return True

    def _stop_collecting(self) -> None:
        for src in self._early_pipes():
            self.loop.remove(src.fd)
        if self._early_timer is not None:
            self._early_timer.cancel()

    def _early_stderr(self) -> bytes:
        return b"".join(data for stream, data in self._early if stream == STDERR)

    def runtime_error(self) -> str:
        """After the runtime failed: the first 8 KiB of what it wrote to stderr."""
        self._stop_collecting()
        for src in self._early_pipes():
            if src.stream == STDERR:
                while len(self._early_stderr()) < RUNTIME_ERR_MAX and self._collect(src, RUNTIME_ERR_MAX):
                    pass
        return self._early_stderr()[:RUNTIME_ERR_MAX].decode("utf-8", "replace")

    def release_early_output(self) -> None:
        """After the runtime succeeded: what was held is output, first and in the order read."""
        self._stop_collecting()
        early, self._early, self._early_size = self._early, [], 0
        for stream, data in early:
            self.on_output(stream, data)
        if self._early_dropped:
            self.diag.warn(f"Dropped {self._early_dropped} bytes of output written while the runtime ran "
                           f"(more than {EARLY_OUTPUT_MAX}, and the runtime still ran {EARLY_WAIT_S:g} s later)")
            self._early_dropped = 0

    # -- output --------------------------------------------------------------
    def watch_output(self) -> None:
        for src in self.sources:
            self._resume_source(src)

    def pause_output(self, paused: bool, reason: str = "attach") -> None:
        """Stop (or resume) reading the container's output: backpressure from a slow reader.

        Reasons (a slow attach client, a full log buffer) are independent:
        reading resumes when none holds it.  The container blocks on its full
        pipe or pty meanwhile.  ``drain`` at exit reads regardless.
        """
        if paused:
            self._paused_by.add(reason)
        else:
            self._paused_by.discard(reason)
        paused = bool(self._paused_by)
        if paused == self.output_paused:
            return
        self.output_paused = paused
        if paused:
            for src in self.sources:
                self.loop.remove(src.fd)
        else:
            self.watch_output()

    def _on_readable(self, src: OutputSource, events: int) -> None:
        if events & EPOLLOUT:  # only the pty master is both output and stdin
            self._on_stdin_writable(events)
        if events & (EPOLLIN | EPOLLHUP | EPOLLERR):
            if self.gate is None:
                self.read_source(src, once=True, size=self.read_size)
            else:
                self._read_gated(src, self.gate)

    def _read_gated(self, src: OutputSource, gate: BlockGate) -> None:
        """Under a `block` rate limit: read what the limit allows, or wait until it does."""
        allowed, wait = gate.allowance()
        if not allowed:
            self._pace(src, wait)  # the container's writes wait on the full pipe meanwhile
            return
        gate.consumed(self.read_source(src, once=True, size=min(allowed, self.read_size)))

    def read_source(self, src: OutputSource, once: bool, size: int = READ_CHUNK, pace: bool = True) -> int:
        """Read one chunk (``once``, from the loop) or everything there is (``drain``).

        Returns the size of the last chunk read (0 if none).
        """
        while not src.eof:
            try:
                data = os.read(src.fd, size)
            except BlockingIOError:
                return 0
            except InterruptedError:
                continue
            except OSError:  # EIO: pty with no slave open
                if src.is_pty:
                    self._pty_hangup(src)
                    return 0
                data = b""
            if not data:
                if src.is_pty:
                    self._pty_hangup(src)
                    return 0
                self._source_eof(src)
                return 0
            self.on_output(src.stream, data)
            if once:
                self.loop.set_bulk(src.fd, len(data) >= min(size, PACE_BELOW))  # a flood: fair turns (loop.py)
                if pace and len(data) < PACE_BELOW:
                    self._pace(src)
                return len(data)  # one chunk per event: the loop serves the other fds (attach clients!) in between
        return 0

    def _pace(self, src: OutputSource, delay: float = PACE_S) -> None:
        """After a short read, let output gather for a moment before reading again.

        A container writing small pieces would otherwise cost a wakeup, a
        read and a log write per piece (6,000 of each for 40 MB of 100-byte
        lines); a millisecond's pause lets the pipe collect them into a few
        large reads.  Nobody notices a millisecond on a log or a terminal.
        """
        self.loop.remove(src.fd)
        self.loop.call_later(delay, lambda: self._resume_source(src))

    def _resume_source(self, src: OutputSource) -> None:
        """Watch ``src`` again, unless it ended, output is held, or it is watched already."""
        if src.eof or self.output_paused or self.loop.watching(src.fd):
            return
        mask = EPOLLIN | (EPOLLOUT if src.fd == self.stdin_fd and self.stdin_queue else 0)
        self.loop.add(src.fd, mask, lambda ev, s=src: self._on_readable(s, ev))  # type: ignore[misc]

    def _pty_hangup(self, src: OutputSource) -> None:
        self.loop.remove(src.fd)
        if self._retry_timer is None:
            self._retry_timer = self.loop.call_later(PTY_RETRY, lambda: self._pty_retry(src))

    def _pty_retry(self, src: OutputSource) -> None:
        self._retry_timer = None
        self._resume_source(src)

    def _source_eof(self, src: OutputSource) -> None:
        src.eof = True
        self.loop.remove(src.fd)

    def drain(self, budget: int | None = None, hold: Callable[[], bool] | None = None) -> bool:
        """After the container exited: read what is left, without blocking.

        At most about ``budget`` bytes (server mode: the shared loop serves
        the other containers between slices), and nothing while ``hold()``
        (a log writer's backlog); True once everything is read.
        """
        left = budget
        for src in self.sources:
            while not src.eof:
                if (left is not None and left <= 0) or (hold is not None and hold()):
                    return False
                n = (self._read_pty_rest(src) if src.is_pty
                     else self.read_source(src, once=True, size=self.read_size, pace=False))
                if not n:
                    break
                if left is not None:
                    left -= n
        return True

    def _read_pty_rest(self, src: OutputSource) -> int:
        """One chunk of what a pty still holds after a hangup (an error such as EIO ends it); its size."""
        try:
            data = os.read(src.fd, READ_CHUNK)
        except OSError:
            return 0
        if data:
            self.on_output(src.stream, data)
        return len(data)

    # -- input ---------------------------------------------------------------
    def write_stdin(self, data: bytes) -> None:
        if self.stdin_fd < 0:
            return
        if not self.stdin_queue:
            try:
                n = os.write(self.stdin_fd, data)
            except BlockingIOError:
                n = 0
            except OSError as err:
                self.diag.warn(f"Failed to write to container stdin: {err.strerror}")
                self.close_stdin()
                return
            data = data[n:]
            if not data:
                return
            if self.stdin_fd == self.pty_master:
                self.loop.modify(self.stdin_fd, EPOLLIN | EPOLLOUT)
            else:
                self.loop.add(self.stdin_fd, EPOLLOUT, self._on_stdin_writable)
        self.stdin_queue.append(data)
        self.stdin_queued += len(data)
        if self.stdin_queued > STDIN_QUEUE_MAX and self.on_stdin_backlog:
            self.on_stdin_backlog(True)

    def _on_stdin_writable(self, events: int) -> None:
        queue = self.stdin_queue
        while queue:
            try:
                n = os.write(self.stdin_fd, queue[0])
            except BlockingIOError:
                return
            except OSError:
                queue.clear()
                self.stdin_queued = 0
                break
            self.stdin_queued -= n
            if n < len(queue[0]):
                queue[0] = queue[0][n:]
                return
            queue.popleft()
        self._stdin_idle()

    def _stdin_idle(self) -> None:
        if self.stdin_fd != self.pty_master:
            self.loop.remove(self.stdin_fd)
        else:
            self.loop.modify(self.stdin_fd, EPOLLIN)
        if self.on_stdin_backlog:
            self.on_stdin_backlog(False)
        if self.stdin_close_pending:
            self.close_stdin()

    def close_stdin(self) -> None:
        """Close the container's stdin pipe (never the pty) once queued input is written."""
        if self.stdin_fd < 0 or self.stdin_fd == self.pty_master:
            return
        if self.stdin_queue:
            self.stdin_close_pending = True
            return
        self.loop.remove(self.stdin_fd)
        os.close(self.stdin_fd)
        self.stdin_fd = -1
        if self.on_stdin_closed is not None:
            self.on_stdin_closed()

    def close(self) -> None:
        if self._retry_timer is not None:
            self._retry_timer.cancel()
        self.close_child_ends()
        if self.stdin_fd >= 0 and self.stdin_fd != self.pty_master:
            self.loop.remove(self.stdin_fd)
            os.close(self.stdin_fd)
        self.stdin_fd = -1
        for src in self.sources:
            self.loop.remove(src.fd)
            try:
                os.close(src.fd)
            except OSError:
                pass
        self.sources = []
        if self.console is not None:
            self.loop.remove(self.console.sock.fileno())
            self.console.close()


class ConsoleSocket:
    """The unix socket the runtime connects to with ``--console-socket``."""

    def __init__(self, tmpdir: str) -> None:
        for _ in range(100):
            suffix = os.urandom(6).hex()[:6]
            path = os.path.join(tmpdir, f"conmon-term.{suffix}")
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
            try:
                sock.bind(path)
            except FileExistsError:
                sock.close()
                continue
            except OSError as err:
                sock.close()
                if err.errno == 98:  # EADDRINUSE
                    continue
                raise
            break
        else:
            raise OSError("could not create a console socket")
        sock.listen(1)
        sock.setblocking(False)
        self.sock = sock
        self.path = path
        self.conn: _socket.socket | None = None

    def try_receive(self, diag: Diagnostics) -> int | None:
        """Accept the runtime and receive the pty master; None while not there yet."""
        if self.conn is None:
            try:
                fd, _ = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return None
            self.conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM, 0, fd)
            self.conn.settimeout(1.0)  # the runtime sends the pty right after connecting
        try:
            _msg, ancdata, _flags, _addr = self.conn.recvmsg(4096, _socket.CMSG_SPACE(4 * 4))
        except OSError as err:
            diag.warn(f"Failed to receive the terminal from the runtime: {err}")
            return None
        fds = []
        for level, kind, data in ancdata:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data) - 3, 4)]
        master = fds[0] if fds else None
        for extra in fds[1:]:
            os.close(extra)
        if master is not None:
            os.set_inheritable(master, False)
        return master

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


__all__ = ["EPOLLERR", "EPOLLHUP", "STDERR", "STDOUT", "ConsoleSocket", "ContainerStdio"]
