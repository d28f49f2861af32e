"""JournaldWriter against a real systemd-journald, read back with journalctl.

Each test uses its own CONTAINER_ID_FULL and selects entries by it.  To know
that nothing more is coming (journald works asynchronously), a test ends its
output with a sentinel line and waits for that: datagrams from one socket are
stored in order.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from pyconmon.journald import LINE_BUF, JournaldWriter
from pyconmon.loop import EventLoop
from pyconmon.served_journald import ServedJournaldWriter
from support.diag import RecordingDiag
from support.journald_service import Entry, JournaldService, journal_entries

SENTINEL = b"--sentinel--\n"


@pytest.fixture(scope="module")
def journal(journal: JournaldService) -> str:
    """The socket path of tests/e2e/conftest.py's journald (skipped where there is none)."""
    return journal.socket_path


def new_cid() -> str:
    return "pyc" + uuid.uuid4().hex + uuid.uuid4().hex[:29]  # 64 chars, like podman's


def collect(w: JournaldWriter, cid: str, timeout: float = 20.0) -> list[Entry]:
    """Send the sentinel, wait for it, return the entries before it."""
    w.write(2, SENTINEL)
    entries = journal_entries({"CONTAINER_ID_FULL": cid}, timeout=timeout,
                              until=lambda es: any(e.get("MESSAGE") == SENTINEL for e in es))
    assert entries[-1]["MESSAGE"] == SENTINEL
    return entries[:-1]


def simple(entries: list[Entry]) -> list[tuple[object, object, bool]]:
    return [(e["MESSAGE"], e["PRIORITY"], "CONTAINER_PARTIAL_MESSAGE" in e) for e in entries]


def test_every_field(journal: str) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, "web-1", "mytag", ["STAGE=prod", "TEAM=core"], socket_path=journal)
    w.write(2, b"hello\n")
    (e,) = collect(w, cid)
    assert e["MESSAGE"] == b"hello\n"
    assert e["CONTAINER_ID_FULL"] == cid.encode()
    assert e["CONTAINER_ID"] == cid[:12].encode()
    assert e["CONTAINER_NAME"] == b"web-1"
    assert e["CONTAINER_TAG"] == b"mytag"
    assert e["SYSLOG_IDENTIFIER"] == b"mytag"
    assert e["PRIORITY"] == b"6"
    assert e["STAGE"] == b"prod"
    assert e["TEAM"] == b"core"
    assert "CONTAINER_PARTIAL_MESSAGE" not in e
    assert e["_TRANSPORT"] == b"journal"
    w.close()


@pytest.mark.parametrize("name, tag, ident", [("web", None, "web"), (None, None, "short")])
def test_syslog_identifier_fallback(journal: str, name: str | None, tag: str | None, ident: str) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, name, tag, [], socket_path=journal)
    w.write(2, b"x\n")
    (e,) = collect(w, cid)
    assert e["SYSLOG_IDENTIFIER"] == (cid[:12] if ident == "short" else ident).encode()
    assert ("CONTAINER_NAME" in e) is bool(name)
    assert "CONTAINER_TAG" not in e
    w.close()


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        pytest.param([(2, b"out 1\n"), (3, b"err 1\nerr 2\n"), (2, b"out 2\n")],
                     [(b"out 1\n", b"6", False), (b"err 1\n", b"3", False),
                      (b"err 2\n", b"3", False), (b"out 2\n", b"6", False)],
                     id="stdout-and-stderr-priority"),
        pytest.param([(2, b"".join(b"<%d>level %d\n" % (n, n) for n in range(8))),
                      (2, b"<8>not a level\n<3 no\n"),
                      (3, b"<5>notice on stderr\n")],
                     [(b"level %d\n" % n, b"%d" % n, False) for n in range(8)] + [
                         (b"<8>not a level\n", b"6", False), (b"<3 no\n", b"6", False),
                         (b"notice on stderr\n", b"5", False)],
                     id="priority-prefixes"),
        pytest.param([(2, b"hello, "), (2, b"world\n"), (3, b"<4>warn"), (3, b"ing\n")],
                     [(b"hello, world\n", b"6", False), (b"warning\n", b"4", False)],
                     id="line-split-across-slow-writes-is-one-entry"),
    ],
)
def test_writes_to_entries(journal: str, writes: list[tuple[int, bytes]],
                           expected: list[tuple[bytes, bytes, bool]]) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, None, None, [], socket_path=journal)
    for fd, data in writes:
        w.write(fd, data)
    assert simple(collect(w, cid)) == expected
    w.close()


def test_binary_content_round_trips(journal: str) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, None, None, [], socket_path=journal)
    lines = [b"nul\0inside\n", b"\xff\xfe invalid utf-8\n", b"crlf\r\n", b"\x1b[1mtty\x1b[0m\n", b"\n"]
    w.write(2, b"".join(lines))
    assert [e["MESSAGE"] for e in collect(w, cid)] == lines
    w.close()


def test_100k_line_is_split_into_partial_entries(journal: str) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, None, None, [], socket_path=journal)
    line = bytes(range(256)).replace(b"\n", b"") * 410  # ~100 KiB, every byte value but newline
    line = line[:100 * 1024]
    w.write(3, line + b"\n")
    got = collect(w, cid)
    sizes = [len(e["MESSAGE"]) for e in got]  # type: ignore[arg-type]
    assert sizes == [LINE_BUF] * 12 + [100 * 1024 + 1 - 12 * LINE_BUF]
    assert [("CONTAINER_PARTIAL_MESSAGE" in e) for e in got] == [True] * 12 + [False]
    assert all(e.get("CONTAINER_PARTIAL_MESSAGE", b"true") == b"true" for e in got)
    assert all(e["PRIORITY"] == b"3" for e in got)
    assert b"".join(e["MESSAGE"] for e in got) == line + b"\n"  # type: ignore[misc]
    w.close()


@pytest.mark.parametrize("served", [False, True], ids=["classic", "served-as-another-pid"])
def test_entry_too_big_for_a_datagram_goes_by_memfd(journal: str, monkeypatch: pytest.MonkeyPatch,
                                                    served: bool) -> None:
    """Also from server mode's writer, whose entries name another process (served_journald.py)."""
    cid = new_cid()
    used: list[int] = []
    real = JournaldWriter._send_memfd

    def counting(self: JournaldWriter, sock: socket.socket, payload: bytes, flags: int = 0) -> None:
        used.append(len(payload))
        real(self, sock, payload, flags)

    monkeypatch.setattr(JournaldWriter, "_send_memfd", counting)
    big = "B" * (300 * 1024)  # beyond the writer's largest send buffer (128 KiB)
    sender = subprocess.Popen(["sleep", "60"])
    loop = EventLoop()
    try:
        if served:
            w: JournaldWriter = ServedJournaldWriter(cid, None, None, [f"BIGLABEL={big}"], socket_path=journal)
            w.attach_loop(loop, lambda full, reason: None)
            w.send_as(sender.pid, os.getuid(), os.getgid())
        else:
            w = JournaldWriter(cid, None, None, [f"BIGLABEL={big}"], socket_path=journal)
        w.write(2, b"x" * 9000 + b"\nsmall\n")
        got = journal_entries({"CONTAINER_ID_FULL": cid}, count=3)
        w.close()
    finally:
        sender.kill()
        sender.wait()
        loop.close()
    assert [(len(e["MESSAGE"]), "CONTAINER_PARTIAL_MESSAGE" in e) for e in got] == [  # type: ignore[arg-type]
        (8192, True), (809, False), (6, False)]
    assert all(e["BIGLABEL"] == big.encode() for e in got)
    assert len(used) == 3 and min(used) > 300 * 1024
    assert {e["_PID"] for e in got} == {str(sender.pid if served else os.getpid()).encode()}


def test_labels(journal: str) -> None:
    cid = new_cid()
    diag = RecordingDiag()
    w = JournaldWriter(cid, None, None, ["A=1", "EMPTY=", "WITH_EQ=a=b", "MULTI=x\ny", "bad=1"],
                       socket_path=journal, diag=diag)
    w.write(2, b"labelled\n")
    (e,) = collect(w, cid)
    assert (e["A"], e["EMPTY"], e["WITH_EQ"], e["MULTI"]) == (b"1", b"", b"a=b", b"x\ny")
    assert "bad" not in e and "BAD" not in e
    assert len(diag.messages) == 1
    w.close()


@pytest.mark.parametrize("partial", [True, False])
def test_partial_flag_and_flush(journal: str, partial: bool) -> None:
    cid = new_cid()
    w = JournaldWriter(cid, None, None, [], partial_messages=partial, socket_path=journal)
    w.write(2, b"y" * 10000 + b"\n")
    w.write(2, b"no newline at exit")
    w.flush()
    got = simple(collect(w, cid))
    assert [(len(m), f) for m, _, f in got] == [  # type: ignore[arg-type]
        (8192, partial), (1809, False), (18, partial)]
    assert got[-1][0] == b"no newline at exit"
    w.close()


def test_burst_of_many_lines_all_arrive(journal: str) -> None:
    # journald's queue holds only net.unix.max_dgram_qlen datagrams: the writer
    # has to wait for room instead of dropping.
    cid = new_cid()
    w = JournaldWriter(cid, None, None, [], socket_path=journal)
    n = 5000
    w.write(2, b"".join(b"line %05d\n" % i for i in range(n)))
    got = collect(w, cid, timeout=60)
    assert [e["MESSAGE"] for e in got] == [b"line %05d\n" % i for i in range(n)]
    w.close()


def test_missing_socket_warns_once(tmp_path: Path) -> None:
    diag = RecordingDiag()
    w = JournaldWriter(new_cid(), None, None, [], socket_path=str(tmp_path / "no-journald"), diag=diag)
    for _ in range(100):
        w.write(2, b"into the void\n")
        w.write(3, b"partial")
    w.reopen()
    w.flush()
    w.close()
    assert len(diag.messages) == 1
    assert "no-journald" in diag.texts()[0]


def test_refusing_socket_warns_once(tmp_path: Path) -> None:
    import socket

    path = str(tmp_path / "dead")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens: ECONNREFUSED
    diag = RecordingDiag()
    w = JournaldWriter(new_cid(), None, None, [], socket_path=path, diag=diag)
    for _ in range(20):
        w.write(2, b"a\nb\n")
    w.close()
    assert len(diag.messages) == 1
