"""The wire format between the per-container stub (launcher/stub.c) and the server.

One SOCK_SEQPACKET connection per container: each message is one packet, a
type byte followed by NUL-terminated fields (bytes, so argv and environment
round-trip whatever their encoding), with descriptors as SCM_RIGHTS.  The
format is tiny on purpose: the C side parses it without a library.

Stub to server:

``H`` hello: key, cwd, argc, argv..., environment...
    before the start byte; the server answers ``O`` (it will serve) or ``C``
    (reason: the stub runs the classic monitor instead).
``S`` started: stub pid, old oom_score_adj, names of the attached fds
    (``sync``, ``attach``), after the start byte, the fork and the pid file.
``R`` runtime spawned: pid (0 on failure), error text.
``X`` exited: pid, wait status (-1: gone but not our child, status unknown).
``k`` the inherited descriptors are closed (the answer to ``K``).

Server to stub:

``O`` / ``C`` answer to hello: ``O`` carries the text for the caller's stderr
    (what a classic monitor prints before it detaches), ``C`` the reason.
``P`` keep: one name per attached fd (takeover.KEPT: ``in``, ``out``, ``err``,
    ``pty``, ``attach``, ``ctl``, ``ctlw``, ``winsz``, ``winszw``); the stub
    holds them for a takeover (a name sent again replaces the earlier fd).
``D`` drop: name; the stub closes the fd it keeps under that name.
``F`` fork the runtime: flags (``L`` rewrite LISTEN_PID, ``A`` read the second
    start byte first), stdio map (three of ``0``..``2`` index into the attached
    fds or ``-`` for /dev/null), number of preserved fds (3..3+N keep across
    exec), argc, argv..., environment...
``W`` watch pid (a pidfd: it may not be the stub's child).
``T`` signal target: the container pid (TERM, INT and QUIT are forwarded to it).
``K`` close the caller's inherited descriptors (before the exit files).
``Q`` quit: exit code, exit delay, exit command argv (may be empty).
"""

from __future__ import annotations

import array
import socket

MAX_PACKET = 1 << 20  # argv plus environment beyond this: classic mode
MAX_FDS = 8

HELLO, STARTED, SPAWNED, EXITED, INHERITED_CLOSED = b"H", b"S", b"R", b"X", b"k"
OK, CLASSIC, FORK, WATCH, TARGET, CLOSE_INHERITED, QUIT = b"O", b"C", b"F", b"W", b"T", b"K", b"Q"
KEEP, DROP = b"P", b"D"


class ProtocolError(ValueError):
    """A malformed packet: the connection is dropped."""


def encode(kind: bytes, fields: list[bytes] | tuple[bytes, ...] = ()) -> bytes:
    for field in fields:
        if b"\0" in field:
            raise ProtocolError("a field contains NUL")
    return kind + b"".join(field + b"\0" for field in fields)


def decode(packet: bytes) -> tuple[bytes, list[bytes]]:
    """The type byte and the fields of one packet."""
    if not packet:
        raise ProtocolError("empty packet")
    kind, body = packet[:1], packet[1:]
    if not body:
        return kind, []
    if not body.endswith(b"\0"):
        raise ProtocolError("unterminated field")
    return kind, body[:-1].split(b"\0")


def send(sock: socket.socket, kind: bytes, fields: list[bytes] | tuple[bytes, ...] = (),
         fds: list[int] | tuple[int, ...] = ()) -> None:
    data = encode(kind, fields)
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())] if fds else []
    sock.sendmsg([data], ancillary)


def receive(sock: socket.socket) -> tuple[bytes, list[bytes], list[int]] | None:
    """One packet: (type, fields, fds); None at end of stream.

    Descriptors arrive close-on-exec.  On a malformed packet they are closed
    before ProtocolError is raised, so a bad peer leaks nothing.
    """
    data, ancdata, flags, _addr = sock.recvmsg(MAX_PACKET, socket.CMSG_SPACE(MAX_FDS * 4),
                                               socket.MSG_CMSG_CLOEXEC)
    fds: list[int] = []
    for level, ctype, cdata in ancdata:
        if level == socket.SOL_SOCKET and ctype == socket.SCM_RIGHTS:
            arr = array.array("i")
            arr.frombytes(cdata[:len(cdata) - len(cdata) % arr.itemsize])
            fds.extend(arr)
    if not data and not fds:
        return None
    try:
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            raise ProtocolError("truncated packet")
        kind, fields = decode(data)
    except ProtocolError:
        close_all(fds)
        raise
    return kind, fields, fds


def close_all(fds: list[int]) -> None:
    import os
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def parse_hello(fields: list[bytes]) -> tuple[bytes, bytes, list[bytes], list[bytes]]:
    """(key, cwd, argv, environment) of a hello."""
    if len(fields) < 3:
        raise ProtocolError("short hello")
    key, cwd, count = fields[0], fields[1], fields[2]
    try:
        argc = int(count)
    except ValueError:
        raise ProtocolError("bad argc") from None
    if argc < 1 or 3 + argc > len(fields):
        raise ProtocolError("bad argc")
    return key, cwd, fields[3:3 + argc], fields[3 + argc:]


def int_field(fields: list[bytes], index: int) -> int:
    try:
        return int(fields[index])
    except (IndexError, ValueError):
        raise ProtocolError(f"field {index} is not a number") from None
