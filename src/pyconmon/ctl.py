"""The ``ctl`` and ``winsz`` control FIFOs in the bundle.

``ctl`` carries lines ``TYPE A B``: type 1 resizes the pty to A rows and B
columns, type 2 reopens the log files.  ``winsz`` carries ``ROWS COLS``.
Lines are read as conmon's ``sscanf`` reads them: fields beyond those are
ignored, so callers that send ``1 ROWS COLS EXTRA`` get their resize.

Facts that shape this module:

* A FIFO whose last writer closes reports EPOLLHUP to its reader forever
  after; the monitor keeps its own write end open so that never happens and
  so that a blocking ``open(O_WRONLY)`` by Podman or CRI-O always finds a
  reader.
* Writers may split a line across writes or put several lines in one, and
  anything can arrive; the parser keeps a partial line between reads, bounds
  it, and rejects bad lines with a warning without ever stopping.
"""

from __future__ import annotations

import os
import stat

from .diag import Diagnostics
from .loop import EPOLLIN, EventLoop

TYPE_CHECKING = False  # typing costs 7 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_LINE = 256
MAX_SIZE = 1000


class LineBuffer:
    """Splits a byte stream into lines, with a bound on a pending partial line."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.pending = b""
        self.limit = limit
        self.overflow = False

    def feed(self, data: bytes) -> list[bytes]:
        parts = (self.pending + data).split(b"\n")
        self.pending = parts.pop()
        lines = []
        for part in parts:
            if self.overflow:
                self.overflow = False  # the rest of an over-long line: dropped
                continue
            lines.append(part)
        if len(self.pending) > self.limit:
            self.pending = b""
            self.overflow = True
        return lines


# sscanf's %d: optional blanks, an optional sign, decimal digits; the rest of the line is not looked at.
# Scanned by hand: `re` (with enum and functools) costs an idle monitor about 1 MB of private memory.
_BLANKS = b" \t\v\f\r"
_DIGITS = b"0123456789"
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


def _scan_int(line: bytes, pos: int) -> tuple[bytes, int] | None:
    """The text of the ``%d`` at ``pos`` (blanks skipped) and the position after it; None if there is none."""
    end = len(line)
    while pos < end and line[pos] in _BLANKS:
        pos += 1
    start = pos
    if pos < end and line[pos] in b"+-":
        pos += 1
    digits = pos
    while pos < end and line[pos] in _DIGITS:
        pos += 1
    if pos == digits:
        return None
    return line[start:pos], pos


def scan_ints(line: bytes, count: int) -> tuple[int, ...]:
    """The first ``count`` numbers of ``line`` as conmon's ``sscanf(line, "%d %d ...")`` reads them.

    Anything after them is ignored (``1 2 2 3`` is type 1, 2 rows, 2 columns);
    a line with fewer numbers is refused.  Unlike C, each line stands alone
    (sscanf reads on into the next line) and a number beyond ``int`` is refused.
    """
    values: list[int] = []
    pos = 0
    for _ in range(count):
        scanned = _scan_int(line, pos)
        if scanned is None:
            raise ValueError(f"expected {count} numbers, got {len(values)}")
        text, pos = scanned
        value = int(text)
        if not _INT_MIN <= value <= _INT_MAX:
            raise ValueError(f"{text[:20]!r} is out of range")
        values.append(value)
    return tuple(values)


def _check_size(rows: int, cols: int) -> None:
    if not (0 <= rows <= MAX_SIZE and 0 <= cols <= MAX_SIZE):
        raise ValueError(f"size {rows}x{cols} out of range")


def parse_ctl_line(line: bytes) -> tuple[int, int, int]:
    """``TYPE A B`` → integers; ValueError for what conmon refuses (its checks, in its order)."""
    kind, a, b = scan_ints(line, 3)
    if kind not in (1, 2):
        raise ValueError(f"unknown message type {kind}")
    _check_size(a, b)  # conmon checks the size for a reopen too
    return kind, a, b


def parse_winsz_line(line: bytes) -> tuple[int, int]:
    rows, cols = scan_ints(line, 2)
    _check_size(rows, cols)
    return rows, cols


def resize_pty(fd: int, rows: int, cols: int) -> None:
    import fcntl
    import struct
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Fifo:
    """A FIFO the monitor reads, with its own spare writer."""

    def __init__(self, path: str, ends: tuple[int, int] | None = None) -> None:
        """``ends``: the read and write ends of the FIFO already at ``path`` (taken over, takeover.py)."""
        self.path = path
        self.lines = LineBuffer()
        if ends is not None:
            self.rfd, self.wfd = ends  # lines written while nobody read wait in it
            os.set_blocking(self.rfd, False)
            return
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or stat.S_ISREG(st.st_mode) \
                    or stat.S_ISLNK(st.st_mode):
                os.unlink(path)
        os.mkfifo(path, 0o660)
        os.chmod(path, 0o660)
        self.rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.wfd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)

    def read_lines(self) -> list[bytes]:
        try:
            data = os.read(self.rfd, 4096)
        except BlockingIOError:
            return []
        return self.lines.feed(data)

    def close(self) -> None:
        os.close(self.rfd)
        os.close(self.wfd)


class ControlFifos:
    """``ctl`` and ``winsz`` in one directory, dispatching resize and reopen."""

    def __init__(self, loop: EventLoop, diag: Diagnostics, directory: str,
                 resize: Callable[[int, int], None], reopen: Callable[[], None],
                 adopted: tuple[tuple[int, int], tuple[int, int]] | None = None) -> None:
        """``adopted``: the (read, write) ends of ``ctl`` and ``winsz``, if taken over."""
        self.loop = loop
        self.diag = diag
        self.resize = resize
        self.reopen = reopen
        self.ctl = Fifo(os.path.join(directory, "ctl"), adopted[0] if adopted else None)
        self.winsz = Fifo(os.path.join(directory, "winsz"), adopted[1] if adopted else None)
        loop.add(self.ctl.rfd, EPOLLIN, self._on_ctl)
        loop.add(self.winsz.rfd, EPOLLIN, self._on_winsz)

    def _on_ctl(self, events: int) -> None:
        for line in self.ctl.read_lines():
            self.handle_ctl_line(line)

    def handle_ctl_line(self, line: bytes) -> None:
        try:
            kind, a, b = parse_ctl_line(line)
        except ValueError as err:
            self.diag.warn(f"Ignoring malformed ctl message {line[:64]!r}: {err}")
            return
        if kind == 1:
            self._resize(a, b)
        else:
            self.diag.info("Reopening log files")
            self.reopen()

    def _on_winsz(self, events: int) -> None:
        for line in self.winsz.read_lines():
            try:
                rows, cols = parse_winsz_line(line)
            except ValueError as err:
                self.diag.warn(f"Ignoring malformed winsz message {line[:64]!r}: {err}")
                continue
            self._resize(rows, cols)

    def _resize(self, rows: int, cols: int) -> None:
        try:
            self.resize(rows, cols)
        except OSError as err:
            self.diag.warn(f"Failed to resize the terminal: {err.strerror}")

    def close(self, unlink: bool = False) -> None:
        for fifo in (self.ctl, self.winsz):
            self.loop.remove(fifo.rfd)
            fifo.close()
            if unlink:
                try:
                    os.unlink(fifo.path)
                except OSError:
                    pass
