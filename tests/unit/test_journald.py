"""The journald driver without journald: encoding, line logic, socket trouble.

The payload decoder here is written from the protocol description (CONTRACT
section 5), not from the encoder, so round trips check the encoder against it.
"""

from __future__ import annotations

import fcntl
import itertools
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyconmon import journald
from pyconmon.journald import (
    LINE_BUF,
    JournaldWriter,
    encode_field,
    encode_message,
    split_prefix,
    valid_field_name,
)
from support.diag import RecordingDiag

CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"


# -- a decoder for the native protocol ------------------------------------

def decode(payload: bytes) -> list[tuple[bytes, bytes]]:
    """Fields in order, as journald parses a native datagram."""
    fields = []
    pos = 0
    while pos < len(payload):
        nl = payload.index(b"\n", pos)
        line = payload[pos:nl]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = nl + 1
        else:
            name = line
            size = int.from_bytes(payload[nl + 1:nl + 9], "little")
            start = nl + 9
            value = payload[start:start + size]
            assert len(value) == size, "truncated binary field"
            assert payload[start + size:start + size + 1] == b"\n", "binary field not closed by a newline"
            pos = start + size + 1
        assert valid_field_name(name), name
        fields.append((name, value))
    return fields


def as_dict(payload: bytes) -> dict[bytes, bytes]:
    fields = decode(payload)
    d = dict(fields)
    assert len(d) == len(fields), "a field appears twice"
    return d


# -- pure encoder ---------------------------------------------------------

def test_plain_field() -> None:
    assert encode_field(b"CONTAINER_NAME", b"web") == b"CONTAINER_NAME=web\n"


def test_binary_safe_field_when_value_has_newline() -> None:
    assert encode_field(b"A", b"x\ny") == b"A\n" + (3).to_bytes(8, "little") + b"x\ny\n"


def test_message_is_always_binary_safe() -> None:
    p = encode_message(b"hi", 6, False, b"X=1\n")
    assert p == b"MESSAGE\n" + (2).to_bytes(8, "little") + b"hi\nPRIORITY=6\nX=1\n"
    assert decode(p) == [(b"MESSAGE", b"hi"), (b"PRIORITY", b"6"), (b"X", b"1")]
    p = encode_message(b"", 3, True, b"")
    assert decode(p) == [(b"MESSAGE", b""), (b"PRIORITY", b"3"), (b"CONTAINER_PARTIAL_MESSAGE", b"true")]


@pytest.mark.parametrize("line, expected", [
    (b"<0>emerg", (b"emerg", 0)), (b"<7>", (b"", 7)), (b"<3>x\n", (b"x\n", 3)),
    (b"<8>x", (b"<8>x", 6)), (b"<3", (b"<3", 6)), (b"<a>x", (b"<a>x", 6)),
    (b" <3>x", (b" <3>x", 6)), (b"<<3>", (b"<<3>", 6)), (b"", (b"", 6)),
])
def test_split_prefix(line: bytes, expected: tuple[bytes, int]) -> None:
    assert split_prefix(line, 6) == expected


@pytest.mark.parametrize("name, ok", [
    (b"MESSAGE", True), (b"A_1", True), (b"X" * 64, True), (b"X" * 65, False), (b"", False),
    (b"_PID", False), (b"1ABC", False), (b"lower", False), (b"A-B", False), (b"A B", False),
])
def test_valid_field_name(name: bytes, ok: bool) -> None:
    assert valid_field_name(name) is ok


names = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", min_size=1, max_size=64).filter(
    lambda s: s[0] not in "_0123456789").map(str.encode)


@given(st.lists(st.tuples(names, st.binary(max_size=300))))
def test_fields_round_trip(fields: list[tuple[bytes, bytes]]) -> None:
    assert decode(b"".join(encode_field(n, v) for n, v in fields)) == fields


@given(st.binary(max_size=2000), st.integers(0, 7), st.booleans())
def test_message_round_trip(message: bytes, prio: int, partial: bool) -> None:
    rest = encode_field(b"CONTAINER_ID_FULL", b"abc\0\n")
    d = as_dict(encode_message(message, prio, partial, rest))
    assert d[b"MESSAGE"] == message
    assert d[b"PRIORITY"] == str(prio).encode()
    assert (b"CONTAINER_PARTIAL_MESSAGE" in d) is partial
    assert d[b"CONTAINER_ID_FULL"] == b"abc\0\n"


# -- line logic (payloads captured, no socket) ----------------------------

class Captured(JournaldWriter):
    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.sent: list[bytes] = []

    def _send(self, payloads: list[bytes]) -> None:
        self.sent.extend(payloads)

    def entries(self) -> list[tuple[bytes, int, bool]]:
        out = []
        for p in self.sent:
            d = as_dict(p)
            out.append((d[b"MESSAGE"], int(d[b"PRIORITY"]), b"CONTAINER_PARTIAL_MESSAGE" in d))
        self.sent.clear()
        return out


def writer(**kw: object) -> Captured:
    args: dict[str, object] = {"cid": CID, "name": None, "tag": None, "labels": []}
    args.update(kw)
    return Captured(**args)


def test_constant_fields() -> None:
    w = writer(name="web", tag="mytag", labels=["STAGE=prod", "MULTI=a\nb"])
    w.write(2, b"hi\n")
    (payload,) = w.sent
    assert decode(payload) == [
        (b"MESSAGE", b"hi\n"), (b"PRIORITY", b"6"),
        (b"CONTAINER_ID_FULL", CID.encode()), (b"CONTAINER_ID", CID[:12].encode()),
        (b"CONTAINER_NAME", b"web"), (b"CONTAINER_TAG", b"mytag"), (b"SYSLOG_IDENTIFIER", b"mytag"),
        (b"STAGE", b"prod"), (b"MULTI", b"a\nb"),
    ]


@pytest.mark.parametrize("name, tag, ident", [
    ("web", None, b"web"), (None, None, CID[:12].encode()), (None, "t", b"t"), ("", "", CID[:12].encode()),
])
def test_syslog_identifier(name: str | None, tag: str | None, ident: bytes) -> None:
    w = writer(name=name, tag=tag)
    w.write(3, b"x\n")
    d = as_dict(w.sent[0])
    assert d[b"SYSLOG_IDENTIFIER"] == ident
    assert (b"CONTAINER_NAME" in d) is bool(name)
    assert (b"CONTAINER_TAG" in d) is bool(tag)


class ForgetfulDiag(RecordingDiag):
    """Also records the keys the writer forgets (a condition that cleared)."""

    def __init__(self) -> None:
        super().__init__()
        self.forgotten: list[str] = []

    def forget(self, key: str) -> None:
        self.forgotten.append(key)
        super().forget(key)


def test_bad_labels_are_skipped_with_a_warning() -> None:
    diag = RecordingDiag()
    w = writer(labels=["lower=x", "NOEQUALS", "_PID=1", "GOOD=1", "=v"], diag=diag)
    w.write(2, b"x\n")
    d = as_dict(w.sent[0])
    assert d[b"GOOD"] == b"1"
    assert not {b"lower", b"NOEQUALS", b"_PID", b""} & set(d)
    assert len(diag.messages) == 4


def test_lines_and_streams() -> None:
    w = writer()
    w.write(2, b"a\n\nb\n")
    w.write(3, b"err\n")
    assert w.entries() == [(b"a\n", 6, False), (b"\n", 6, False), (b"b\n", 6, False), (b"err\n", 3, False)]


def test_priority_prefix() -> None:
    w = writer()
    w.write(2, b"<0>zero\n<7>seven\n<8>eight\n<3\nx<3>y\n")
    w.write(3, b"<5>five\n<3>\n")
    assert w.entries() == [(b"zero\n", 0, False), (b"seven\n", 7, False), (b"<8>eight\n", 6, False),
                           (b"<3\n", 6, False), (b"x<3>y\n", 6, False), (b"five\n", 5, False), (b"\n", 3, False)]


def test_line_across_writes_is_one_entry() -> None:
    w = writer()
    w.write(2, b"hel")
    w.write(3, b"other stream\n")
    w.write(2, b"lo")
    assert w.entries() == [(b"other stream\n", 3, False)]
    w.write(2, b" world\nnext")
    assert w.entries() == [(b"hello world\n", 6, False)]
    w.flush()
    assert w.entries() == [(b"next", 6, True)]
    w.flush()
    assert w.entries() == []


def test_prefix_split_across_writes() -> None:
    w = writer()
    w.write(2, b"<")
    w.write(2, b"4")
    w.write(2, b">warn\n")
    assert w.entries() == [(b"warn\n", 4, False)]


def test_long_line_pieces_keep_the_priority() -> None:
    w = writer()
    line = b"<2>" + b"x" * (LINE_BUF * 2)
    w.write(3, line + b"\n")
    got = w.entries()
    assert [len(m) for m, _, _ in got] == [LINE_BUF - 3, LINE_BUF, 4]
    assert [(p, f) for _, p, f in got] == [(2, True), (2, True), (2, False)]
    assert b"".join(m for m, _, _ in got) == line[3:] + b"\n"


def test_exact_buffer_sizes() -> None:
    w = writer()
    w.write(2, b"y" * (LINE_BUF - 1) + b"\n")  # fits exactly with its newline
    assert w.entries() == [(b"y" * (LINE_BUF - 1) + b"\n", 6, False)]
    w.write(2, b"z" * LINE_BUF)  # a full buffer goes out at once
    assert w.entries() == [(b"z" * LINE_BUF, 6, True)]
    w.write(2, b"\n")
    assert w.entries() == [(b"\n", 6, False)]


def test_partial_flag_off() -> None:
    w = writer(partial_messages=False)
    w.write(2, b"q" * 20000 + b"\ntail")
    w.flush()
    got = w.entries()
    assert [(len(m), f) for m, _, f in got] == [(8192, False), (8192, False), (3617, False), (4, False)]


def test_binary_content() -> None:
    w = writer()
    data = b"\0\xff\xfe\r\n\x1b[31mred\x00\n"
    w.write(2, data)
    assert w.entries() == [(b"\0\xff\xfe\r\n", 6, False), (b"\x1b[31mred\x00\n", 6, False)]


def test_many_lines_are_linear() -> None:
    w = writer()
    data = b"".join(b"line %d\n" % i for i in range(200_000))
    start = time.perf_counter()
    w.write(2, data)
    elapsed = time.perf_counter() - start
    assert len(w.sent) == 200_000
    assert elapsed < 5  # ~0.2 s here; quadratic behaviour would take minutes


def test_many_small_writes_of_one_long_line() -> None:
    w = writer()
    for _ in range(30_000):
        w.write(2, b"ab")
    w.write(2, b"\n")
    got = w.entries()
    assert [len(m) for m, _, _ in got] == [8192] * 7 + [60_001 - 7 * 8192]
    assert [f for _, _, f in got] == [True] * 7 + [False]


def model(data: bytes, partial_messages: bool) -> list[tuple[bytes, int, bool]]:
    """Expected entries for stdout data followed by a flush, straight from the contract."""
    out = []
    *lines, rest = data.split(b"\n")
    for line in lines:
        raw = line + b"\n"
        pieces = [raw[i:i + LINE_BUF] for i in range(0, len(raw), LINE_BUF)]
        first, prio = split_prefix(pieces[0], 6)
        pieces[0] = first
        for i, piece in enumerate(pieces):
            out.append((piece, prio, partial_messages and i < len(pieces) - 1))
    if rest:
        pieces = [rest[i:i + LINE_BUF] for i in range(0, len(rest), LINE_BUF)]
        first, prio = split_prefix(pieces[0], 6)
        pieces[0] = first
        out.extend((piece, prio, partial_messages) for piece in pieces)
    return out


segments = st.one_of(
    st.binary(max_size=40),
    st.sampled_from([b"\n", b"<3>", b"<9>", b"<", b"\0", b"\r\n", b"\xff"]),
    st.integers(LINE_BUF - 10, 3 * LINE_BUF + 10).map(lambda n: b"x" * n),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(segments, max_size=12), st.lists(st.integers(0, 40_000), max_size=8), st.booleans())
def test_entries_do_not_depend_on_chunking(segs: list[bytes], cuts: list[int], partial: bool) -> None:
    data = b"".join(segs)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    w = writer(partial_messages=partial)
    for a, b in itertools.pairwise(points):
        w.write(2, data[a:b])
    w.flush()
    got = w.entries()
    assert got == model(data, partial)
    for message, _, _ in got:
        assert len(message) <= LINE_BUF
        assert b"\n" not in message[:-1]


# -- the socket -----------------------------------------------------------

class Receiver:
    """A stand-in journald socket: a thread collects datagrams and memfds."""

    def __init__(self, path: str, drain: bool = True) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.payloads: list[bytes] = []
        self.memfd_seals: list[int] = []
        self.cond = threading.Condition()
        self.stopped = False
        self.thread: threading.Thread | None = None
        if drain:
            self.start()

    def start(self) -> None:
        self.sock.settimeout(0.05)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(4 * 4))
            except TimeoutError:
                continue
            except OSError:
                return
            for level, kind, blob in anc:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fd = int.from_bytes(blob[:4], sys.byteorder)
                    self.memfd_seals.append(fcntl.fcntl(fd, fcntl.F_GET_SEALS))
                    size = os.fstat(fd).st_size
                    data = os.pread(fd, size, 0)
                    os.close(fd)
            with self.cond:
                self.payloads.append(data)
                self.cond.notify_all()

    def wait(self, count: int, timeout: float = 5.0) -> list[bytes]:
        return self.wait_for(lambda got: len(got) >= count, timeout)

    def wait_for(self, done: Callable[[list[bytes]], bool], timeout: float = 5.0) -> list[bytes]:
        with self.cond:
            assert self.cond.wait_for(lambda: done(self.payloads), timeout), self.payloads[-5:]
            return list(self.payloads)

    def close(self) -> None:
        self.stopped = True
        if self.thread is not None:
            self.thread.join()
        self.sock.close()
        os.unlink(self.path)


@pytest.fixture
def sockpath(tmp_path: Path) -> str:
    return str(tmp_path / "socket")


@pytest.fixture
def rx(sockpath: str):  # type: ignore[no-untyped-def]
    """A draining Receiver at ``sockpath``, closed after the test."""
    r = Receiver(sockpath)
    yield r
    r.close()


def messages(payloads: list[bytes]) -> list[bytes]:
    return [as_dict(p)[b"MESSAGE"] for p in payloads]


def test_delivery_over_a_socket(sockpath: str, rx: Receiver) -> None:
    w = JournaldWriter(CID, "web", None, [], socket_path=sockpath)
    w.write(2, b"".join(b"%d\n" % i for i in range(500)))  # far more than the queue holds
    got = rx.wait(500)
    assert messages(got) == [b"%d\n" % i for i in range(500)]
    assert rx.memfd_seals == []
    w.close()


def test_big_entry_goes_in_a_sealed_memfd(sockpath: str, rx: Receiver) -> None:
    big = "V" * 300_000  # the label makes every entry bigger than a datagram may be
    w = JournaldWriter(CID, None, None, [f"BIG={big}"], socket_path=sockpath)
    w.write(2, b"one\ntwo\n")
    got = rx.wait(2)
    assert messages(got) == [b"one\n", b"two\n"]
    assert as_dict(got[0])[b"BIG"] == big.encode()
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
    assert rx.memfd_seals == [want, want]
    w.close()


def test_missing_socket_warns_once_then_recovers(sockpath: str) -> None:
    diag = ForgetfulDiag()
    w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=diag)
    for _ in range(50):
        w.write(2, b"lost\n")
    w.flush()
    assert len(diag.messages) == 1 and "cannot connect" in diag.texts()[0]
    rx = Receiver(sockpath)
    try:
        w.write(2, b"found\n")
        assert as_dict(rx.wait(1)[0])[b"MESSAGE"] == b"found\n"
        assert journald.KEY_SOCKET in diag.forgotten
    finally:
        rx.close()
    w.write(2, b"lost again\n")  # gone again: warns again (it was forgotten)
    assert len(diag.messages) == 2
    w.close()


def test_restarted_journald_is_reconnected(sockpath: str) -> None:
    rx = Receiver(sockpath)
    w = JournaldWriter(CID, None, None, [], socket_path=sockpath)
    w.write(2, b"first\n")
    rx.wait(1)
    rx.close()
    rx = Receiver(sockpath)  # a new socket at the same path
    try:
        w.write(2, b"second\n")
        assert as_dict(rx.wait(1)[0])[b"MESSAGE"] == b"second\n"
    finally:
        rx.close()
        w.close()


def test_stuck_journal_waits_once_then_drops(sockpath: str) -> None:
    rx = Receiver(sockpath, drain=False)  # nobody reads: the queue fills up
    diag = ForgetfulDiag()
    try:
        w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=diag)
        start = time.monotonic()
        for i in range(20):
            w.write(2, b"".join(b"%d %d\n" % (i, j) for j in range(100)))
        elapsed = time.monotonic() - start
        # one wait of WAIT_MS for a journal that takes nothing, then drops (a wait per entry would take ages)
        assert elapsed < journald.WAIT_MS / 1000 + 1.0, elapsed
        assert len(diag.messages) == 1 and "not accepting" in diag.texts()[0]
        rx.start()  # journald catches up
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            w.write(2, b"again\n")
            if journald.KEY_FULL in diag.forgotten:
                break
            with rx.cond:
                rx.cond.wait(0.01)
        assert journald.KEY_FULL in diag.forgotten
        rx.wait_for(lambda got: any(as_dict(p)[b"MESSAGE"] == b"again\n" for p in got))
        w.close()
    finally:
        rx.close()


def test_entries_not_sent_are_counted_with_their_message_bytes(sockpath: str) -> None:
    # The metrics' write errors and log_write bytes: one error per entry not sent, its MESSAGE
    # bytes (after a <N> prefix is taken off); nothing for what was delivered.
    w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=ForgetfulDiag())
    w.write(2, b"a\nbb\n<4>ccc\n")  # missing socket: 2 + 3 + 4 bytes
    w.write(3, b"part")
    w.flush()  # the partial line goes out (is lost) too: 4 bytes
    assert (w.write_errors, w.lost_bytes) == (4, 13)
    rx = Receiver(sockpath)
    try:
        w.write(2, b"found\n")
        assert messages(rx.wait(1)) == [b"found\n"]
        assert (w.write_errors, w.lost_bytes) == (4, 13)
    finally:
        rx.close()
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(sockpath)
    dead.close()  # the file stays, nobody listens: refused
    w.write(2, b"no\nnot this\n")
    assert (w.write_errors, w.lost_bytes) == (6, 13 + 3 + 9)
    w.close()


def test_entries_dropped_by_a_stuck_journal_are_counted(sockpath: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Past the bound (WAIT_MS, shortened here) entries are dropped: the counters are exactly
    # the entries, and their bytes, that journald never got.
    monkeypatch.setattr(journald, "WAIT_MS", 200)
    rx = Receiver(sockpath, drain=False)  # takes nothing until started
    lines = [b"%04d %s\n" % (i, b"z" * (i % 300)) for i in range(400)]
    try:
        w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=ForgetfulDiag())
        w.write(2, b"".join(lines))
        rx.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as end:  # queued behind all of the writer's
            end.sendto(b"MESSAGE=end\n", sockpath)
        got = messages(rx.wait_for(lambda got: any(p == b"MESSAGE=end\n" for p in got)))[:-1]
        lost = [x for x in lines if x not in set(got)]
        assert 0 < len(got) < len(lines)
        assert (w.write_errors, w.lost_bytes) == (len(lost), sum(map(len, lost)))
        w.close()
    finally:
        rx.close()


def test_small_and_big_entries_stay_in_order(sockpath: str, rx: Receiver) -> None:
    # Entries go on a socket per size class, all to the same journald: the order is kept.
    sizes = (10, 3000, 10, 7000, 10, 500, 7000)
    lines = [b"%d %s\n" % (i, b"x" * sizes[i % len(sizes)]) for i in range(300)]
    w = JournaldWriter(CID, None, None, [], socket_path=sockpath)
    w.write(2, b"".join(lines))
    assert messages(rx.wait(300)) == lines
    assert rx.memfd_seals == []
    w.close()


def test_journal_pausing_within_the_bound_loses_nothing(sockpath: str) -> None:
    rx = Receiver(sockpath, drain=False)
    diag = ForgetfulDiag()
    try:
        timer = threading.Timer(0.5, rx.start)  # journald takes nothing for half a second
        timer.start()
        w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=diag)
        start = time.monotonic()
        w.write(2, b"".join(b"%d\n" % i for i in range(2000)))
        assert time.monotonic() - start >= 0.4  # the writer waited for it (it could not have sent them all)
        assert messages(rx.wait(2000)) == [b"%d\n" % i for i in range(2000)]
        assert diag.messages == []
        w.close()
        timer.join()
    finally:
        rx.close()


def test_journal_taking_a_little_during_the_wait_is_not_stuck(sockpath: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # A send blocked on its send buffer is woken only when a quarter of it is left: journald
    # taking one entry during WAIT_MS does not wake it, but the kernel looks once more when
    # SO_SNDTIMEO runs out, so that entry goes (a poll for POLLOUT would just time out).
    monkeypatch.setattr(journald, "WAIT_MS", 300)
    rx = Receiver(sockpath, drain=False)
    diag = ForgetfulDiag()
    lines = [b"%03d %s\n" % (i, b"y" * 500) for i in range(100)]  # ~7 fill the send buffer
    try:
        took = threading.Timer(0.1, lambda: rx.sock.recv(1 << 16))
        took.start()
        w = JournaldWriter(CID, None, None, [], socket_path=sockpath, diag=diag)
        w.write(2, b"".join(lines))
        took.join()
        assert len(diag.messages) == 1 and "not accepting" in diag.texts()[0]
        rx.start()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as end:  # queued behind all of the writer's
            end.sendto(b"MESSAGE=end\n", sockpath)
        got = messages(rx.wait_for(lambda got: any(p == b"MESSAGE=end\n" for p in got)))[:-1]
        # the rest of the start of the output (line 0 was taken during the wait), no line missing:
        # the entry that waited WAIT_MS went after all; only the next wait found journald stuck
        assert len(got) > 2 and got == lines[1:1 + len(got)], len(got)
        w.close()
    finally:
        rx.close()


def test_reopen_is_harmless(sockpath: str, rx: Receiver) -> None:
    w = JournaldWriter(CID, None, None, [], socket_path=sockpath)
    w.write(2, b"a\npart")
    w.reopen()
    w.write(2, b"ial\n")
    assert messages(rx.wait(2)) == [b"a\n", b"partial\n"]
    w.close()


def test_priority_prefix_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(JournaldWriter, "priority_prefix", False)
    w = writer()
    w.write(2, b"<3>kept\n")
    w.write(3, b"<5>" + b"e" * LINE_BUF + b"\n")
    got = w.entries()
    assert got[0] == (b"<3>kept\n", 6, False)
    assert [(len(m), p) for m, p, _ in got[1:]] == [(LINE_BUF, 3), (4, 3)]


def test_stderr_priority_and_identifier_are_configurable() -> None:
    """pyconmon.toml [journald]: stderr_priority applies to every stderr piece; a <N> prefix still wins."""
    w = writer(name="web", tag="t", stderr_priority=5, identifier="ctr-web")
    w.write(3, b"err\n<2>crit\n" + b"e" * 9000 + b"\n")
    w.write(2, b"out\n")
    assert as_dict(w.sent[0])[b"SYSLOG_IDENTIFIER"] == b"ctr-web"
    assert [(p, partial) for _, p, partial in w.entries()] == [(5, False), (2, False), (5, True), (5, False),
                                                               (6, False)]
