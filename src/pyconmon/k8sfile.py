"""The k8s-file log driver: CRI log records in a file, with size limits.

Record: ``<local time, 9 fraction digits, +hh:mm> <stdout|stderr> <F|P> <content>\n``
(CONTRACT section 5).  ``F`` ends a line, ``P`` is a piece of one; content is
at most 8192 bytes.  A chunk is formatted in 8192-byte windows, each as conmon
formats one of its 8192-byte reads, so the same output gives conmon's records;
the complete lines of a window become records with one ``replace`` (no Python
loop per line); the batch goes out in one ``write``.  Only when a size limit is
near does the writer fall back to record-by-record writes, so that it can
reopen the file between two records and a record never straddles files.

A write that fails (ENOSPC, EIO) warns once, keeps the whole records that
fitted, truncates the partial one away so the file stays parseable, drops the
rest of the batch, and logs again when writes succeed.  On a disk that stays
nearly full, big batches fail while small ones fit, so failures and successes
alternate: the warning (and the matching "again") is repeated at most once
every ``REWARN_AFTER`` seconds.
"""

from __future__ import annotations

import os
import time

from .diag import Diagnostics
from .streams import NAMES

MAX_RECORD = 8192
IOV_MAX = 1024
REWARN_AFTER = 60.0  # seconds between two "Failed to write" warnings for one file
STREAM_NAMES = {stream: name.encode() for stream, name in NAMES.items()}


class Clock:
    """Formats k8s timestamps; caches the part that changes once a second."""

    __slots__ = ("_head", "_sec", "_tail")

    def __init__(self) -> None:
        self._sec = -1
        self._head = b""
        self._tail = b""

    def stamp(self, ns: int | None = None) -> bytes:
        if ns is None:
            ns = time.time_ns()
        sec, frac = divmod(ns, 1_000_000_000)
        if sec != self._sec:
            tm = time.localtime(sec)
            off = tm.tm_gmtoff or 0
            sign = "+" if off >= 0 else "-"
            off = abs(off) // 60
            self._head = time.strftime("%Y-%m-%dT%H:%M:%S", tm).encode()
            self._tail = f"{sign}{off // 60:02d}:{off % 60:02d}".encode()
            self._sec = sec
        return b"%s.%09d%s" % (self._head, frac, self._tail)


def format_records(stamp: bytes, stream: int, data: bytes) -> bytes:
    """All k8s-file records for one chunk of container output.

    conmon reads 8192 bytes at a time and ends each read's records with a
    ``P`` piece when the read stops mid-line; pyconmon reads far more at once,
    so it cuts the chunk into the reads conmon would have made: a line that
    crosses a window boundary becomes ``P`` + ``F`` as it does with conmon,
    and no record can exceed ``MAX_RECORD``.
    """
    return b"".join(record_pieces(stamp, stream, data))


def record_pieces(stamp: bytes, stream: int, data: bytes) -> list[bytes | memoryview]:
    """:func:`format_records` as a list of buffers for ``writev``.

    Content without an inner newline (the bulk of long lines) is passed as a
    memoryview of ``data``, so it is copied once, by the kernel.
    """
    name = STREAM_NAMES[stream]
    full = stamp + b" " + name + b" F "
    part = stamp + b" " + name + b" P "
    sep = b"\n" + full
    view = memoryview(data)
    size = len(data)
    out: list[bytes | memoryview] = []
    for start in range(0, size, MAX_RECORD):
        stop = min(start + MAX_RECORD, size)
        end = data.rfind(b"\n", start, stop) + 1
        if end:
            last = end - 1
            if data.find(b"\n", start, last) < 0:
                out += (full, view[start:last], b"\n")
            else:
                out += (full, data[start:last].replace(b"\n", sep), b"\n")
            start = end
        if start < stop:
            out += (part, view[start:stop], b"\n")
    return out


def parse_records(text: bytes) -> list[tuple[bytes, bytes, bytes, bytes]]:
    """Split a k8s-file back into (time, stream, tag, content) records."""
    records = []
    for line in text.split(b"\n")[:-1]:
        stamp, stream, tag, content = line.split(b" ", 3)
        records.append((stamp, stream, tag, content))
    return records


class K8sFileWriter:
    """Appends records to one k8s-file log, reopening it at the size limit."""

    takes_read_time = True  # write() takes the time the chunk was read (logbuffer.py)
    sync_on_reopen = False  # fsync a file before starting the next one (log.sync = "rotate")

    def __init__(self, path: str, diag: Diagnostics, size_max: int = -1, rotate: bool = False,
                 max_files: int = 1, allowlist: list[str] | None = None) -> None:
        self.path = path
        self.diag = diag
        self.size_max = size_max
        self.rotate = rotate
        self.max_files = max(1, max_files)
        self.allowlist = allowlist or []
        self.clock = Clock()
        self.fd = -1
        self.size = 0
        self.failing = False
        self.rotations = 0  # files started by reopen (metrics)
        self.write_errors = 0  # failed writes (metrics)
        self.lost_bytes = 0  # bytes of records those failures lost (metrics)
        self._warned_at: float | None = None  # monotonic time of the last write warning
        self._episode_warned = False  # the current run of failures was reported
        from .logpath import check_log_path
        check_log_path(path, self.allowlist)
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o640)
        self.size = os.fstat(self.fd).st_size  # accounting starts from what is there

    # -- files -------------------------------------------------------------

    def reopen(self) -> None:
        """Start a fresh file: rotate or truncate-by-rename (ctl 2 and the size limit).

        The rename makes an IN_MOVED_TO on the path, which CRI-O's
        ReopenContainerLog waits for.
        """
        from .logpath import check_log_path
        try:
            check_log_path(self.path, self.allowlist, create=True)
            if self.rotate:
                for i in range(self.max_files, 1, -1):
                    older = f"{self.path}.{i - 1}"
                    if os.path.lexists(older):
                        os.rename(older, f"{self.path}.{i}")
                if os.path.lexists(self.path):
                    os.rename(self.path, f"{self.path}.1")
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            else:
                tmp = self.path + ".tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
                             | os.O_NOFOLLOW, 0o640)
                os.rename(tmp, self.path)
        except (OSError, ValueError) as err:
            self.diag.warn_once("reopen:" + self.path, f"Failed to reopen log file {self.path}: {err}")
            return
        self.diag.forget("reopen:" + self.path)
        self.rotations += 1
        if self.sync_on_reopen:
            self.sync()
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = fd
        self.size = 0

    # -- writing -----------------------------------------------------------
    def write(self, stream: int, data: bytes, ns: int | None = None) -> None:
        pieces = record_pieces(self.clock.stamp(ns), stream, data)
        total = sum(map(len, pieces))
        limit = self.size_max
        if limit <= 0 or self.size + total <= limit:
            # While failing, _write does the careful accounting; else one writev, unless it fell short.
            if self.failing or len(pieces) > IOV_MAX or not self._writev(pieces, total):
                self._write(b"".join(pieces))
            return
        out = b"".join(pieces)
        # Near the limit: write whole records, reopening before one would overflow.
        batch: list[bytes] = []
        pending = 0
        for record in out[:-1].split(b"\n"):
            record += b"\n"
            if self.size + pending + len(record) > limit and self.size + pending > 0:
                if batch:
                    self._write(b"".join(batch))
                    batch, pending = [], 0
                if self.size > 0:
                    self.reopen()
            batch.append(record)
            pending += len(record)
        if batch:
            self._write(b"".join(batch))

    def _writev(self, pieces: list[bytes | memoryview], total: int) -> bool:
        """All records in one writev; False (file as before) if that didn't work."""
        try:
            done = os.writev(self.fd, pieces)
        except OSError:
            return False
        if done == total:
            self.size += done
            return True
        try:  # a short write ends mid-record: take it back, _write starts again cleanly
            os.ftruncate(self.fd, self.size)
        except OSError:
            self.size += done
            return True
        return False

    def _write(self, out: bytes) -> None:
        fd = self.fd
        start = self.size
        view = memoryview(out)
        done = 0
        try:
            while done < len(out):
                done += os.write(fd, view[done:])
        except OSError as err:
            self.write_errors += 1
            keep = 0
            if done:
                keep = out.rfind(b"\n", 0, done) + 1  # the whole records that fitted stay
                try:
                    os.ftruncate(fd, start + keep)  # never leave half a record behind
                    self.size = start + keep
                except OSError:
                    self.size = start + done
                    keep = done
            self.lost_bytes += len(out) - keep
            if not self.failing:
                self.failing = True
                now = time.monotonic()
                if self._warned_at is None or now - self._warned_at >= REWARN_AFTER:
                    self._warned_at = now
                    self._episode_warned = True
                    self.diag.warn(f"Failed to write to log file {self.path}: {err.strerror}; "
                                   "dropping output until it works again")
            return
        if self.failing:
            self.failing = False
            if self._episode_warned:
                self._episode_warned = False
                self.diag.info(f"Writing to log file {self.path} again")
        self.size = start + done

    def flush(self) -> None:
        pass

    def sync(self) -> None:
        if self.fd >= 0:
            try:
                os.fsync(self.fd)
            except OSError:
                pass

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
