"""The journald log driver: one journal entry per line of container output.

Owns the encoding of entries in the journal's native protocol, the per-stream
line buffers, and the socket to journald (CONTRACT section 5).

Protocol facts (what libsystemd's ``sd_journal_sendv`` does): an entry is one
``AF_UNIX``/``SOCK_DGRAM`` datagram to ``/run/systemd/journal/socket``, made of
fields.  A value without a newline may be written ``NAME=VALUE\\n``; any value
may be written binary-safe as ``NAME\\n`` + its length as a 64-bit
little-endian integer + the bytes + ``\\n``.  MESSAGE always takes the
binary-safe form, so NULs, newlines and invalid UTF-8 pass untouched.  Field
names are uppercase ASCII letters, digits and ``_``, not starting with ``_`` or
a digit, at most 64 characters; journald silently drops fields with other
names, so labels with such names are skipped here (with one warning).  A
datagram larger than the socket's send buffer fails with EMSGSIZE (ENOBUFS
when the kernel is short of memory): the same payload then goes into a memfd
sealed against any change and an empty datagram carries it as SCM_RIGHTS.

Lines: a line's entry has MESSAGE = the line with its ``\\n``.  A line that
outgrows the 8 KiB per-stream buffer is sent in pieces of 8192 bytes, each
marked ``CONTAINER_PARTIAL_MESSAGE=true`` (unless partial messages are off),
the last piece (the one with the ``\\n``) unmarked; pieces are cut at fixed
offsets from the line start, so how the output was chunked by reads never
changes the entries.  A line starting ``<N>`` (N in 0..7) has the prefix
removed and PRIORITY N; later pieces of that line keep N.  A partial line left
at exit goes out marked partial by ``flush``.

Sending (what most of the CPU goes to: journald, not the monitor, is the
bottleneck, so the monitor mostly waits for room).  journald's socket queue
holds only ``net.unix.max_dgram_qlen`` (10) datagrams, so during a burst
every send finds it full.  Like libsystemd (and so C conmon), the writer
then blocks in ``send``, not in an EAGAIN-exception-poll-retry round per
entry.  A sender blocked on a full *queue* is woken by every datagram
journald takes: one sleep and wake-up per entry, which is most of C
conmon's cost.  A sender blocked on its own *send buffer* (the bytes of its
datagrams still in journald's queue) is woken only once that has drained
to a quarter (the kernel's ``unix_writable``).  So entries go on
one of three sockets by size, each with a send buffer that holds about
eight of them (SO_SNDBUF 8, 32 and 128 KiB for entries up to 1, 4 and
16 KiB and beyond): the send buffer, not the queue, fills first, and one
wake-up lets several entries out while a few are still queued for journald
(measured sending 200,000 short lines: about 22,000 voluntary context
switches instead of 105,000, and less than half the CPU).  An entry too big
for the largest buffer (only huge labels make one) takes the memfd path.
All the sockets are connected to the same journald socket and written one
entry at a time, so entries reach its queue in order.

A slow journal is like a slow disk: the log must not lose lines, so the
container is slowed instead, as with C conmon.  Sends wait at most WAIT_MS
(SO_SNDTIMEO).  When that time is up the kernel looks once more, so a send
fails (EAGAIN) only if journald took none of the writer's entries in the
meantime (some, too few to wake it, are enough).  journald is then taken
for stuck: the writer drops lines without waiting (warned once) until a
send succeeds again or CONGESTED_S has passed.  A missing or refusing
socket is warned about once and the lines dropped; each later ``write``
tries to reconnect.  Nothing raises out of ``write``.  Every entry dropped
counts as a write error and its MESSAGE bytes as lost (the metrics'
``log_write`` cause), on the failure path only.
"""

from __future__ import annotations

import _socket
import _struct
import errno
import os
import sys
import time

from .diag import Diagnostics
from .streams import STDERR

JOURNAL_SOCKET = "/run/systemd/journal/socket"
LINE_BUF = 8192  # the per-stream buffer: a MESSAGE is at most this many bytes
WAIT_MS = 2000  # journald taking nothing for this long is stuck, not busy
CONGESTED_S = 1.0  # how long to drop without waiting after a wait timed out
SNDBUFS = (4096, 16384, 65536)  # SO_SNDBUF asked for per size class; Linux doubles it
# Each socket takes entries up to an eighth of its (doubled) buffer, the last one all bigger ones.
CLASS_MAX = tuple(2 * size // 8 for size in SNDBUFS[:-1])


_PRIORITY = tuple(b"\nPRIORITY=%d\n" % n for n in range(8))  # also ends MESSAGE's value
_PARTIAL = b"CONTAINER_PARTIAL_MESSAGE=true\n"
_GONE = frozenset((errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.ECONNRESET,
                   errno.EPIPE, errno.EDESTADDRREQ))
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# How _send_one tries an entry: wait for room (at most WAIT_MS), try
# without waiting while journald is taken for stuck, pass it in a memfd.
_WAIT, _DROPPING, _MEMFD = range(3)
# What became of it (_send_one): sent; dropped (counted); journald full, not waited for; journald gone.
SENT, DROPPED, FULL, GONE = range(4)

KEY_SOCKET = "journald-socket"
KEY_FULL = "journald-full"
KEY_SEND = "journald-send"


def _b(text: str) -> bytes:
    return text.encode("utf-8", "surrogateescape")


def valid_field_name(name: bytes) -> bool:
    """journald's rule for fields a client may set."""
    return (0 < len(name) <= 64 and name[0] != 0x5F and not 0x30 <= name[0] <= 0x39
            and _NAME_CHARS.issuperset(name))


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field, ``NAME=VALUE\\n`` or binary-safe when the value has a newline."""
    if b"\n" in value:
        return b"".join((name, b"\n", len(value).to_bytes(8, "little"), value, b"\n"))
    return b"".join((name, b"=", value, b"\n"))


def encode_message(message: bytes, priority: int, partial: bool, rest: bytes) -> bytes:
    """A whole entry: MESSAGE (binary-safe), PRIORITY, the partial flag, then ``rest``."""
    return b"".join((b"MESSAGE\n", len(message).to_bytes(8, "little"), message,
                     _PRIORITY[priority], _PARTIAL if partial else b"", rest))


def split_prefix(line: bytes, default: int) -> tuple[bytes, int]:
    """Strip a ``<N>`` priority prefix (N in 0..7) from the start of a line."""
    if line[:1] == b"<" and line[2:3] == b">" and 0x30 <= line[1] <= 0x37:
        return line[3:], line[1] - 0x30
    return line, default


class JournaldWriter:
    """Log driver: one journal entry per line of container output."""

    # CONTRACT 5 asks for ``<N>`` priority prefixes; C conmon 2.1.6 leaves
    # such lines alone (PRIORITY from the stream, prefix kept).  One switch.
    priority_prefix = True
    blocking = True  # sends wait for room (classic); server mode's writer never waits (served_journald.py)

    def __init__(self, cid: str, name: str | None, tag: str | None, labels: list[str],
                 partial_messages: bool = True, socket_path: str = JOURNAL_SOCKET,
                 diag: Diagnostics | None = None, stderr_priority: int = 3, identifier: str | None = None) -> None:
        self.socket_path = socket_path
        self.diag = diag
        self.partial_messages = partial_messages
        fields = [encode_field(b"CONTAINER_ID_FULL", _b(cid)), encode_field(b"CONTAINER_ID", _b(cid[:12]))]
        if name:
            fields.append(encode_field(b"CONTAINER_NAME", _b(name)))
        if tag:
            fields.append(encode_field(b"CONTAINER_TAG", _b(tag)))
        fields.append(encode_field(b"SYSLOG_IDENTIFIER", _b(identifier or tag or name or cid[:12])))
        for label in labels:
            key, eq, value = _b(label).partition(b"=")
            if eq and valid_field_name(key):
                fields.append(encode_field(key, value))
            elif diag is not None:
                diag.warn_once("journald-label:" + label,
                               f"journald: ignoring log label {label!r}: not NAME=VALUE with a valid field name")
        self._fields = b"".join(fields)
        # Per stream (index 0 stdout, 1 stderr): the unsent start of the current
        # line, whether a piece of it went out already, and that line's priority.
        self._pend = (bytearray(), bytearray())
        self._cont = [False, False]
        self._default_prio = (6, stderr_priority)  # stdout, stderr (pyconmon.toml journald.stderr_priority)
        self._prio = list(self._default_prio)
        self._sock: _socket.socket | None = None  # for the smallest entries; None: not connected
        self._bigger: list[_socket.socket | None] = [None] * (len(SNDBUFS) - 1)  # opened as needed
        self._congested_until = 0.0
        self._credentials: list[tuple[int, int, bytes]] = []  # ancillary data sent with each entry
        self._troubled: set[str] = set()
        self.write_errors = 0  # entries that could not be sent (metrics)
        self.lost_bytes = 0  # their MESSAGE bytes (metrics)

    # -- lines to entries ------------------------------------------------

    def write(self, stream: int, data: bytes) -> None:
        if not data:
            return
        err = 1 if stream == STDERR else 0
        pend = self._pend[err]
        if b"\n" not in data:
            pend += data
            if len(pend) >= LINE_BUF:
                out: list[bytes] = []
                self._pieces(err, out)
                self._send(out)
            return
        lines = data.split(b"\n")
        rest = lines.pop()
        if pend:
            lines[0] = bytes(pend) + lines[0]
            pend.clear()
        default = self._default_prio[err]
        fields = self._fields
        out = []
        append = out.append
        for line in lines:
            if self._cont[err] or len(line) >= LINE_BUF:
                self._long_line(err, line, out)
                continue
            if line[:1] == b"<" and self.priority_prefix:
                message, prio = split_prefix(line, default)
                message += b"\n"
            else:
                message, prio = line + b"\n", default
            append(b"".join((b"MESSAGE\n", len(message).to_bytes(8, "little"), message,
                             _PRIORITY[prio], fields)))
        if rest:
            pend += rest
            if len(pend) >= LINE_BUF:
                self._pieces(err, out)
        self._send(out)

    def _entry(self, err: int, piece: bytes, partial: bool, out: list[bytes]) -> None:
        """Queue one piece of the current line of stream ``err``."""
        if self._cont[err]:
            prio = self._prio[err]
        elif self.priority_prefix:
            piece, prio = split_prefix(piece, self._default_prio[err])
        else:
            prio = self._default_prio[err]
        self._prio[err] = prio
        self._cont[err] = partial
        out.append(encode_message(piece, prio, partial and self.partial_messages, self._fields))

    def _long_line(self, err: int, line: bytes, out: list[bytes]) -> None:
        """A complete line that is a continuation or longer than the buffer."""
        message = line + b"\n"
        last = len(message) - 1
        for start in range(0, len(message), LINE_BUF):
            piece = message[start:start + LINE_BUF]
            self._entry(err, piece, start + LINE_BUF <= last, out)

    def _pieces(self, err: int, out: list[bytes]) -> None:
        """Send the full buffers' worth of the pending partial line."""
        pend = self._pend[err]
        whole = len(pend) - len(pend) % LINE_BUF
        for start in range(0, whole, LINE_BUF):
            self._entry(err, bytes(pend[start:start + LINE_BUF]), True, out)
        del pend[:whole]

    def flush(self) -> None:
        """Send the partial lines still buffered (marked partial)."""
        out: list[bytes] = []
        for err in (0, 1):
            pend = self._pend[err]
            if pend:
                self._entry(err, bytes(pend), True, out)
                pend.clear()
            self._cont[err] = False
        self._send(out)

    def reopen(self) -> None:
        """Nothing to reopen for journald; reconnect on the next write."""
        self._drop_socket()

    def close(self) -> None:
        self.flush()
        self._drop_socket()

    # -- the socket ------------------------------------------------------

    def _warn(self, key: str, text: str) -> None:
        self._troubled.add(key)
        if self.diag is not None:
            self.diag.warn_once(key, text)

    def _lost(self, payloads: list[bytes], start: int, stop: int) -> None:
        """Count entries ``start`` to ``stop`` as not sent (each begins with MESSAGE and its length)."""
        for payload in payloads[start:stop]:
            self.write_errors += 1
            self.lost_bytes += int.from_bytes(payload[8:16], "little")

    def _recovered(self) -> None:
        if self.diag is not None:
            for key in self._troubled:
                self.diag.forget(key)
        self._troubled.clear()
        self._congested_until = 0.0

    def _drop_socket(self) -> None:
        for sock in (self._sock, *self._bigger):
            if sock is not None:
                sock.close()
        self._sock = None
        self._bigger = [None] * len(self._bigger)

    def _open(self, sndbuf: int) -> _socket.socket:
        """A socket to journald whose sends wait at most WAIT_MS (``blocking``) or not at all; raises OSError."""
        nonblock = 0 if self.blocking else _socket.SOCK_NONBLOCK
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC | nonblock)
        try:
            sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDBUF, sndbuf)
            if self.blocking:
                sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_SNDTIMEO,  # a struct timeval
                                _struct.pack("@ll", WAIT_MS // 1000, WAIT_MS % 1000 * 1000))
            sock.connect(self.socket_path)
        except OSError:
            sock.close()
            raise
        return sock

    def _connect(self) -> _socket.socket | None:
        """The socket for the smallest entries, or None (warned) when journald is not there."""
        try:
            sock = self._open(SNDBUFS[0])
        except OSError as e:
            self._warn(KEY_SOCKET, f"journald: cannot connect to {self.socket_path}: {e.strerror}; "
                                   "dropping log lines")
            return None
        self._sock = sock
        return sock

    def _socket_for(self, payload: bytes) -> _socket.socket:
        """The socket of the payload's size class (opened when first needed; raises OSError)."""
        size = len(payload)
        if size <= CLASS_MAX[0]:
            assert self._sock is not None
            return self._sock
        cls = next((i for i, limit in enumerate(CLASS_MAX) if size <= limit), len(CLASS_MAX))
        sock = self._bigger[cls - 1]
        if sock is None:
            sock = self._bigger[cls - 1] = self._open(SNDBUFS[cls])
        return sock

    def _send(self, payloads: list[bytes]) -> None:
        """Send entries in order, one datagram each; never raises.

        The fast path: one blocking ``send`` per entry, nothing else.  The
        first failure, and everything while something is wrong, goes entry
        by entry through ``_send_slowly``.
        """
        if not payloads:
            return
        sock = self._sock
        if sock is None or self._troubled:
            self._send_slowly(payloads, 0, None)
            return
        send = sock.send
        small = CLASS_MAX[0]
        done = 0
        try:
            for payload in payloads:
                if len(payload) <= small:
                    send(payload)
                else:
                    self._socket_for(payload).send(payload)
                done += 1
        except OSError as e:
            self._send_slowly(payloads, done, e)

    def _send_slowly(self, payloads: list[bytes], start: int, error: OSError | None) -> None:
        """Entries from ``start`` on, one at a time; ``error``: how the first one failed (after a wait)."""
        for index in range(start, len(payloads)):
            if self._send_one(payloads[index], error, True) == GONE:
                self._lost(payloads, index, len(payloads))
                return
            error = None

    def _send_one(self, payload: bytes, error: OSError | None, wait: bool) -> int:
        """One entry, through every fallback: SENT, DROPPED (counted), FULL or GONE (not counted).

        ``error``: how its first try failed.  ``wait``: a full journald is
        waited for (WAIT_MS, then the entry is dropped); else, unless
        journald is taken for stuck already, the answer is FULL: the caller
        keeps the entry and tries again when there is room.
        """
        how = _WAIT
        reconnected = False
        while True:
            if error is None:
                if self._sock is None and self._connect() is None:
                    return GONE
                if how == _WAIT and self._congested_until and time.monotonic() < self._congested_until:
                    how = _DROPPING
                try:
                    sock = self._socket_for(payload)
                    if how == _MEMFD:
                        self._send_memfd(sock, payload, 0 if wait else _socket.MSG_DONTWAIT)
                    else:
                        self._transmit(sock, payload, 0 if how == _WAIT and wait else _socket.MSG_DONTWAIT)
                except OSError as e:
                    error = e
                else:
                    if self._troubled:
                        self._recovered()
                    return SENT
            code, reason = error.errno, error.strerror
            if code == errno.EAGAIN:
                if how == _DROPPING:
                    self._lost([payload], 0, 1)
                    return DROPPED
                if not wait:
                    return FULL
                self._stuck()
                self._lost([payload], 0, 1)
                return DROPPED
            error = None
            if code in (errno.EMSGSIZE, errno.ENOBUFS) and how != _MEMFD:
                how = _MEMFD
                continue
            if code in _GONE:
                self._drop_socket()
                if reconnected:
                    self._warn(KEY_SOCKET, f"journald: {self.socket_path} refuses entries: "
                                           f"{reason}; dropping log lines")
                    return GONE
                reconnected = True
                continue
            if self._retry_after(code):
                continue
            self._warn(KEY_SEND, f"journald: cannot send an entry: {reason}; dropping it")
            self._lost([payload], 0, 1)
            return DROPPED

    def _stuck(self) -> None:
        """journald took nothing for WAIT_MS: drop without waiting for CONGESTED_S (warned once)."""
        self._congested_until = time.monotonic() + CONGESTED_S
        self._warn(KEY_FULL, "journald: not accepting entries; dropping log lines")

    def _retry_after(self, code: int | None) -> bool:
        """Whether a send that failed with ``code`` is worth trying again (after a fix-up)."""
        return False

    def _transmit(self, sock: _socket.socket, payload: bytes, flags: int) -> None:
        sock.send(payload, flags)

    def _send_memfd(self, sock: _socket.socket, payload: bytes, flags: int = 0) -> None:
        """The payload in a sealed memfd, passed in an empty datagram."""
        import fcntl

        fd = os.memfd_create("pyconmon-journal", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
                        | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
            sock.sendmsg([], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder)),
                              *self._credentials], flags)
        finally:
            os.close(fd)
