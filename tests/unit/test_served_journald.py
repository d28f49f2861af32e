"""Unit tests for pyconmon.served_journald: sending as another process, and never blocking the loop.

"journald" here is a datagram socket of the test's own that it reads (or,
to stand for a journald that stopped reading, does not): the kernel's
queue limits and credential checks are the real ones.  Against the real
systemd-journald: tests/e2e/test_server_journald.py.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pyconmon import served_journald
from pyconmon.loop import EventLoop
from pyconmon.served_journald import PAUSE_REASON, ServedJournaldWriter, can_send_as
from support.diag import RecordingDiag

CID = "c" * 64
SRC = Path(__file__).resolve().parents[2] / "src"


class Journal:
    """A bound datagram socket standing in for journald's, with SO_PASSCRED like journald's."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)

    def read(self) -> list[tuple[bytes, int]]:
        """Every datagram queued now: (its MESSAGE, the sender pid journald would see)."""
        got = []
        while True:
            try:
                data, anc, _, _ = self.sock.recvmsg(1 << 17, socket.CMSG_SPACE(12))
            except BlockingIOError:
                return got
            pid = next(struct.unpack("3i", d)[0] for lvl, typ, d in anc if typ == socket.SCM_CREDENTIALS)
            size = int.from_bytes(data[8:16], "little")
            got.append((data[16:16 + size], pid))


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    j = Journal(str(tmp_path / "journal.sock"))
    yield j
    j.sock.close()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    p = subprocess.Popen(["sleep", "60"])
    yield p
    p.kill()
    p.wait()


def writer(journal: Journal, loop: EventLoop, held: list[bool] | None = None,
           diag: RecordingDiag | None = None) -> ServedJournaldWriter:
    w = ServedJournaldWriter(CID, "name", None, [], socket_path=journal.path, diag=diag)

    def on_full(full: bool, reason: str) -> None:
        assert reason == PAUSE_REASON
        if held is not None:
            held.append(full)
    w.attach_loop(loop, on_full)
    return w


def lines(start: int, count: int) -> bytes:
    return b"".join(b"line %06d\n" % i for i in range(start, start + count))


def expected(start: int, count: int) -> list[bytes]:
    return [b"line %06d\n" % i for i in range(start, start + count)]


def test_entries_carry_the_pid_they_are_sent_as(journal: Journal, sleeper: subprocess.Popen[bytes]) -> None:
    loop = EventLoop()
    w = writer(journal, loop)
    w.write(1, b"as me\n")
    w.send_as(sleeper.pid, os.getuid(), os.getgid())
    w.write(1, b"as the stub\n")
    assert journal.read() == [(b"as me\n", os.getpid()), (b"as the stub\n", sleeper.pid)]
    w.close()
    loop.close()


def test_memfd_entries_carry_it_too(journal: Journal, sleeper: subprocess.Popen[bytes],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry too big for a datagram goes in a memfd: the credentials go with it."""
    monkeypatch.setattr("pyconmon.journald.SNDBUFS", (4096, 4096, 4096))
    loop = EventLoop()
    w = writer(journal, loop)
    w.send_as(sleeper.pid, os.getuid(), os.getgid())
    w.write(1, b"x" * 8191 + b"\n")  # 8 KiB plus the fields: more than a 8 KiB send buffer takes
    data, anc, _, _ = journal.sock.recvmsg(16, socket.CMSG_SPACE(4) + socket.CMSG_SPACE(12))
    kinds = {typ: d for _, typ, d in anc}
    assert data == b""  # the entry is in the memfd
    assert struct.unpack("3i", kinds[socket.SCM_CREDENTIALS])[0] == sleeper.pid
    fd = int.from_bytes(kinds[socket.SCM_RIGHTS][:4], sys.byteorder)
    try:
        assert os.pread(fd, 9000, 0).startswith(b"MESSAGE\n" + (8192).to_bytes(8, "little") + b"x" * 8191 + b"\n")
    finally:
        os.close(fd)
    w.close()
    loop.close()


def test_a_vanished_stub_leaves_its_entries_to_the_server(journal: Journal) -> None:
    p = subprocess.Popen(["true"])
    p.wait()  # reaped: the pid names no process (ESRCH)
    diag = RecordingDiag()
    loop = EventLoop()
    w = writer(journal, loop, diag=diag)
    w.send_as(p.pid, os.getuid(), os.getgid())
    w.write(1, b"a\nb\n")
    assert journal.read() == [(b"a\n", os.getpid()), (b"b\n", os.getpid())]
    assert len(diag.warnings()) == 1 and "gone" in diag.warnings()[0]
    assert w.write_errors == 0
    w.close()
    loop.close()


def test_only_a_process_with_cap_sys_admin_can_send_as_another(sleeper: subprocess.Popen[bytes]) -> None:
    assert os.geteuid() == 0  # the e2e set-up runs as root
    assert can_send_as(sleeper.pid, os.getuid(), os.getgid())
    assert can_send_as(os.getpid(), os.getuid(), os.getgid())
    probe = (f"import sys; sys.path.insert(0, {str(SRC)!r}); from pyconmon.served_journald import can_send_as; "
             f"print(can_send_as({sleeper.pid}, 0, 0), can_send_as(__import__('os').getpid(), 0, 0))")
    # root without CAP_SYS_ADMIN (bounding set: exec drops it from the effective set)
    out = subprocess.run(["setpriv", "--bounding-set", "-sys_admin", sys.executable, "-I", "-S", "-c", probe],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]
    # a rootless server: another uid has no capabilities at all
    out = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", sys.executable,
                          "-I", "-S", "-c", probe.replace(", 0, 0)", ", 65534, 65534)")],
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


def test_a_full_journal_never_blocks_and_holds_reading_until_it_takes_everything(journal: Journal) -> None:
    loop = EventLoop()
    held: list[bool] = []
    diag = RecordingDiag()
    w = writer(journal, loop, held, diag)
    start = time.monotonic()
    w.write(1, lines(0, 5000))  # far more than the socket queue holds
    assert time.monotonic() - start < 0.5  # no wait in send
    assert held == [True] and not w.drained()
    got: list[tuple[bytes, int]] = []
    deadline = time.monotonic() + 10
    while not w.drained() and time.monotonic() < deadline:
        got += journal.read()
        loop.run_once(0.01)  # EPOLLOUT: the rest of the backlog goes out
    got += journal.read()
    assert [m for m, _ in got] == expected(0, 5000)  # all of them, in order, once
    assert held == [True, False]
    assert diag.messages == [] and w.write_errors == 0
    w.close()
    loop.close()


def test_a_stuck_journal_is_given_up_on_after_the_bound(journal: Journal, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing taken for WAIT_MS: the backlog is dropped (one warning), reading resumes; later lines arrive."""
    monkeypatch.setattr(served_journald, "WAIT_MS", 300)
    monkeypatch.setattr("pyconmon.journald.CONGESTED_S", 0.3)
    loop = EventLoop()
    held: list[bool] = []
    diag = RecordingDiag()
    w = writer(journal, loop, held, diag)
    w.write(1, lines(0, 2000))
    assert held == [True]
    loop.run_until(lambda: held == [True, False], 5.0)
    assert len(diag.warnings()) == 1 and "not accepting" in diag.warnings()[0]
    w.write(1, lines(2000, 100))  # still full, taken for stuck: dropped at once, not warned again
    assert held == [True, False] and w.drained()
    got = [m for m, _ in journal.read()]
    time.sleep(0.3)  # past CONGESTED_S
    w.write(1, lines(5000, 1))
    got += [m for m, _ in journal.read()]
    assert got[:len(got) - 1] == expected(0, len(got) - 1)  # the queued ones, whole and in order
    assert got[-1] == b"line 005000\n"  # journald is back: the next line arrives
    assert w.write_errors == 2100 - (len(got) - 1)  # every other line counted lost
    assert len(diag.warnings()) == 1
    w.close()
    loop.close()


def test_a_flush_from_another_thread_is_sent_by_the_loop(journal: Journal) -> None:
    """The exit's flush runs in a worker thread (monitor.py): the loop's thread does the sending."""
    loop = EventLoop()
    w = writer(journal, loop)
    w.write(1, b"unfinished")
    t = threading.Thread(target=w.flush)
    t.start()
    t.join()
    assert not w.drained()  # handed over, not sent yet
    assert journal.read() == []
    loop.run_until(w.drained, 5.0)
    assert journal.read() == [(b"unfinished", os.getpid())]
    w.close()
    loop.close()
