"""Unit tests for pyconmon.attach: packet framing, the link rule, and AttachServer on real SEQPACKET sockets."""

from __future__ import annotations

import os
import re
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon import attach
from pyconmon.attach import AttachServer, link_path, packets
from pyconmon.loop import EventLoop
from support.diag import RecordingDiag

STDOUT, STDERR = 2, 3
CLIENT_BUFFER = 8193  # what conmon's clients read with; SEQPACKET truncates anything longer


# -- pure parts ------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([STDOUT, STDERR]), st.integers(0, 5 * 8192 + 3).flatmap(lambda n: st.binary(min_size=n,
                                                                                                   max_size=n)))
def test_packets_fit_the_client_buffer(stream, data):
    pkts = packets(stream, data)
    assert all(1 <= len(p) <= CLIENT_BUFFER for p in pkts)
    assert all(p[0] == stream for p in pkts)
    assert b"".join(p[1:] for p in pkts) == data
    assert len(pkts) == max(1, -(-len(data) // 8192))  # as few as possible
    assert all(len(p) == CLIENT_BUFFER for p in pkts[:-1])


@pytest.mark.parametrize(("size", "sizes"), [(0, [1]), (1, [2]), (8192, [8193]), (8193, [8193, 2]),
                                             (16384, [8193, 8193]), (20000, [8193, 8193, 3617])])
def test_packet_sizes(size, sizes):
    assert [len(p) for p in packets(STDERR, b"x" * size)] == sizes


@pytest.mark.parametrize("length", [105, 106, 107, 108, 109])
def test_link_path_trim_rule(length):
    socket_dir = "/run/crio"
    cuuid = "u" * (length - len(socket_dir) - 1)
    full = f"{socket_dir}/{cuuid}"
    assert len(full) == length
    assert link_path(socket_dir, cuuid) == (full[:-1] if length == 107 else full)
    assert link_path(socket_dir + "/", cuuid) == link_path(socket_dir, cuuid)


# -- the server ------------------------------------------------------------------


class Harness:
    def __init__(self, bundle: str, socket_dir: str | None = None, cuuid: str | None = None,
                 full_attach: bool = True) -> None:
        self.loop = EventLoop()
        self.diag = RecordingDiag()
        self.inputs: list[bytes] = []
        self.eofs = 0
        self.clients: list[socket.socket] = []
        self.server = AttachServer(self.loop, self.diag, bundle, socket_dir, cuuid, full_attach,
                                   self.inputs.append, self._on_eof)

    def _on_eof(self) -> None:
        self.eofs += 1

    def run_until(self, cond, timeout: float = 5.0) -> None:
        assert self.loop.run_until(cond, timeout), "condition not met in time"

    def connect(self) -> socket.socket:
        before = len(self.server.clients)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.settimeout(5)
        sock.connect(self.server.path)
        self.clients.append(sock)
        self.run_until(lambda: len(self.server.clients) == before + 1)
        return sock

    def close(self) -> None:
        self.server.close()
        self.loop.close()
        for sock in self.clients:
            sock.close()


@pytest.fixture
def harness(short_dir):
    h = Harness(short_dir)
    yield h
    h.close()


def recv_packets(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65536) for _ in range(count)]


def test_socket_in_bundle_mode_0700(harness, short_dir):
    path = os.path.join(short_dir, "attach")
    assert harness.server.path == path
    assert harness.server.link is None
    st_ = os.stat(path)
    assert stat.S_ISSOCK(st_.st_mode)
    assert stat.S_IMODE(st_.st_mode) == 0o700
    kind = socket.socket(fileno=os.dup(harness.server.sock.fileno()))
    try:
        assert kind.type == socket.SOCK_SEQPACKET
    finally:
        kind.close()


def test_stale_attach_file_is_replaced(short_dir):
    Path(short_dir, "attach").write_text("stale")
    h = Harness(short_dir)
    try:
        assert stat.S_ISSOCK(os.stat(h.server.path).st_mode)
        h.connect()
    finally:
        h.close()


def test_two_clients_get_the_same_output_in_order(harness):
    a = harness.connect()
    b = harness.connect()
    harness.server.broadcast(STDOUT, b"hello\n")
    harness.server.broadcast(STDERR, b"e" * 20000)
    harness.server.broadcast(STDOUT, b"bye")
    expected = [b"\x02hello\n", b"\x03" + b"e" * 8192, b"\x03" + b"e" * 8192, b"\x03" + b"e" * 3616, b"\x02bye"]
    assert recv_packets(a, 5) == expected
    assert recv_packets(b, 5) == expected


def test_broadcast_without_clients(harness):
    harness.server.broadcast(STDOUT, b"nobody listens")
    c = harness.connect()
    harness.server.broadcast(STDOUT, b"now")
    assert c.recv(65536) == b"\x02now"  # nothing from before the client came


def test_client_input_reaches_on_input(harness):
    c = harness.connect()
    c.send(b"echo hi\n")
    c.send(b"x" * 32768)  # CRI-O sends up to 32 KiB at a time
    harness.run_until(lambda: len(harness.inputs) == 2)
    assert harness.inputs == [b"echo hi\n", b"x" * 32768]
    assert harness.eofs == 0


def test_paused_input_is_read_later(harness):
    c = harness.connect()
    harness.server.pause_input(True)
    c.send(b"later")
    late = harness.connect()  # accepted while paused: not read either
    late.send(b"too")
    harness.loop.run_once(0.1)
    assert harness.inputs == []
    harness.server.pause_input(False)
    harness.run_until(lambda: len(harness.inputs) == 2)
    assert sorted(harness.inputs) == [b"later", b"too"]


def test_half_closed_client_still_gets_output(harness):
    a = harness.connect()
    b = harness.connect()
    a.shutdown(socket.SHUT_WR)  # its stdin ended
    harness.run_until(lambda: harness.eofs == 1)
    harness.loop.run_once(0.05)  # no spinning on the EOF, no drop
    assert harness.eofs == 1
    assert len(harness.server.clients) == 2
    harness.server.broadcast(STDOUT, b"still there")
    assert a.recv(65536) == b"\x02still there"
    assert b.recv(65536) == b"\x02still there"
    # the full hangup removes it, without a second EOF
    a.close()
    harness.run_until(lambda: len(harness.server.clients) == 1)
    assert harness.eofs == 1
    harness.server.broadcast(STDOUT, b"more")
    assert b.recv(65536) == b"\x02more"


def test_full_hangup_removes_client(harness):
    a = harness.connect()
    b = harness.connect()
    a.close()
    harness.run_until(lambda: len(harness.server.clients) == 1)
    assert harness.eofs == 1  # a client that hung up has no more input either
    harness.server.broadcast(STDOUT, b"x")
    assert b.recv(65536) == b"\x02x"
    assert harness.diag.warnings() == []


def drain_nonblocking(sock: socket.socket, into: bytearray) -> bool:
    """Append what ``sock`` has; False at EOF."""
    sock.setblocking(False)
    while True:
        try:
            pkt = sock.recv(65536)
        except BlockingIOError:
            return True
        if not pkt:
            return False
        assert len(pkt) <= CLIENT_BUFFER
        into += pkt[1:]


def chunk(i: int, size: int = 4096) -> bytes:
    head = f"{i:08d}:".encode()
    return head + bytes([65 + i % 26]) * (size - len(head))


def test_stuck_client_is_dropped_and_others_get_everything(harness, monkeypatch):
    monkeypatch.setattr(attach, "CLIENT_QUEUE_SOFT", 256 << 10)
    monkeypatch.setattr(attach, "CLIENT_STALL_S", 0.2)
    stuck = harness.connect()  # never reads
    fast = harness.connect()
    sent = bytearray()
    got = bytearray()
    deadline = time.monotonic() + 4
    i = 0
    while len(harness.server.clients) == 2:
        assert time.monotonic() < deadline, "the stuck client was never dropped"
        data = chunk(i)
        i += 1
        harness.server.broadcast(STDOUT, data)
        sent += data
        harness.loop.run_once(0.002)
        assert drain_nonblocking(fast, got)
    for _ in range(10):  # the survivor goes on as before
        data = chunk(i)
        i += 1
        harness.server.broadcast(STDOUT, data)
        sent += data
    harness.run_until(lambda: drain_nonblocking(fast, got) and len(got) >= len(sent))
    assert got == sent
    assert len(sent) > 256 << 10
    warnings = harness.diag.warnings()
    assert len(warnings) == 1
    assert re.fullmatch(r"Attach client stopped reading: dropped it \d+ bytes behind", warnings[0])
    assert harness.eofs == 1
    # what the stuck client did get is a clean prefix of the stream, then EOF
    partial = bytearray()
    stuck.settimeout(5)
    while pkt := stuck.recv(65536):
        partial += pkt[1:]
    assert 0 < len(partial) < len(sent)
    assert sent.startswith(partial)


def test_client_too_far_behind_is_dropped(harness, monkeypatch):
    monkeypatch.setattr(attach, "CLIENT_QUEUE_SOFT", 64 << 10)
    monkeypatch.setattr(attach, "CLIENT_QUEUE_HARD", 1 << 20)
    monkeypatch.setattr(attach, "CLIENT_STALL_S", 60.0)  # only the hard limit applies
    harness.connect()
    (client,) = harness.server.clients.values()
    sent = 0
    while client.queued <= 512 << 10:
        harness.server.broadcast(STDOUT, b"y" * 16384)
        sent += 16384
        assert sent < 8 << 20
    assert harness.server.clients  # past the soft limit, but not stalled long enough: kept
    while harness.server.clients:
        harness.server.broadcast(STDOUT, b"y" * 16384)
        sent += 16384
        assert sent < 8 << 20, "never dropped"
    warnings = harness.diag.warnings()
    assert len(warnings) == 1
    behind = int(re.fullmatch(r"Attach client too slow: dropped it (\d+) bytes behind", warnings[0]).group(1))
    assert behind > 1 << 20


def read_in_thread(c, size):
    """A thread reading ``size`` payload bytes from client ``c``: (thread, what it got so far)."""
    got = bytearray()

    def reader():
        while len(got) < size:
            pkt = c.recv(65536)
            if not pkt:
                return
            got.extend(pkt[1:])

    t = threading.Thread(target=reader)
    t.start()
    return t, got


def test_flush_all_delivers_the_backlog(harness):
    c = harness.connect()
    sent = b"".join(chunk(i, 65536) for i in range(32))  # 2 MiB: far more than the socket buffer holds
    for i in range(32):
        harness.server.broadcast(STDOUT, sent[i * 65536:(i + 1) * 65536])
    (client,) = harness.server.clients.values()
    assert client.queue  # the client hasn't read anything yet
    t, got = read_in_thread(c, len(sent))
    harness.server.flush_all()
    t.join(5)
    assert not t.is_alive()
    assert bytes(got) == sent
    assert not client.queue and client.queued == 0


def test_flushed_leaves_the_sending_to_the_loop(harness):
    """Server mode's exit: ``flushed()`` never blocks; the loop delivers the backlog meanwhile."""
    c = harness.connect()
    sent = b"".join(chunk(i, 65536) for i in range(32))
    for i in range(32):
        harness.server.broadcast(STDOUT, sent[i * 65536:(i + 1) * 65536])
    t0 = time.monotonic()
    assert not harness.server.flushed()  # nothing read yet: queued output waits, without blocking
    assert time.monotonic() - t0 < 0.5
    t, got = read_in_thread(c, len(sent))
    assert harness.loop.run_until(harness.server.flushed, timeout=10)
    t.join(5)
    assert bytes(got) == sent


def test_flushed_gives_up_on_a_stalled_client(harness, monkeypatch):
    harness.connect()
    for i in range(32):
        harness.server.broadcast(STDOUT, chunk(i, 65536))
    (client,) = harness.server.clients.values()
    assert not harness.server.flushed()
    monkeypatch.setattr(client, "progress", client.progress - attach.CLIENT_STALL_S - 1)
    assert harness.server.flushed()
    assert harness.server.clients == {}


def test_close_unlinks_and_disconnects(short_dir):
    h = Harness(short_dir)
    try:
        c = h.connect()
        listen_fd = h.server.sock.fileno()
        h.server.close()
        assert not os.path.lexists(os.path.join(short_dir, "attach"))
        assert not h.loop.watching(listen_fd)
        assert h.server.clients == {}
        assert c.recv(65536) == b""
    finally:
        h.loop.close()
        for sock in h.clients:
            sock.close()


def test_link_mode_with_a_long_bundle_path(tmp_path, short_dir):
    bundle = tmp_path / ("b" * 120)
    bundle.mkdir()
    assert len(str(bundle / "attach")) > 108  # too long to bind directly
    socket_dir = os.path.join(short_dir, "sockets")
    os.makedirs(socket_dir)
    os.symlink("/nonexistent", os.path.join(socket_dir, "cuuid-1"))  # a stale link is replaced
    h = Harness(str(bundle), socket_dir, "cuuid-1", full_attach=False)
    try:
        link = os.path.join(socket_dir, "cuuid-1")
        assert h.server.link == link
        assert os.readlink(link) == str(bundle)
        assert h.server.path == os.path.join(link, "attach")
        assert stat.S_ISSOCK(os.stat(bundle / "attach").st_mode)
        assert stat.S_IMODE(os.stat(bundle / "attach").st_mode) == 0o700
        c = h.connect()
        h.server.broadcast(STDERR, b"through the link")
        assert c.recv(65536) == b"\x03through the link"
        h.server.close()
        assert not os.path.lexists(link)
        assert not os.path.lexists(bundle / "attach")
    finally:
        h.loop.close()
        for sock in h.clients:
            sock.close()


def test_link_dir_is_created(tmp_path, short_dir):
    socket_dir = os.path.join(short_dir, "a", "b")
    h = Harness(str(tmp_path), socket_dir, "cu", full_attach=False)
    try:
        assert os.readlink(os.path.join(socket_dir, "cu")) == str(tmp_path)
    finally:
        h.close()


def test_full_attach_ignores_socket_dir(short_dir):
    socket_dir = os.path.join(short_dir, "sockets")
    h = Harness(short_dir, socket_dir, "cuuid-1", full_attach=True)
    try:
        assert h.server.link is None
        assert h.server.path == os.path.join(short_dir, "attach")
        assert not os.path.exists(socket_dir)
    finally:
        h.close()


def test_slow_live_client_throttles_output_and_loses_nothing(harness, monkeypatch):
    """A reader slower than the container is waited for (backpressure), never dropped."""
    monkeypatch.setattr(attach, "CLIENT_QUEUE_SOFT", 256 << 10)
    monkeypatch.setattr(attach, "CLIENT_QUEUE_LOW", 128 << 10)
    monkeypatch.setattr(attach, "CLIENT_STALL_S", 0.5)
    pauses: list[bool] = []
    harness.server.on_backpressure = pauses.append
    slow = harness.connect()
    sent = bytearray()
    got = bytearray()
    done = threading.Event()

    def reader():  # live but slow: a little at a time with pauses shorter than the stall limit
        slow.settimeout(10)
        while not done.is_set() or len(got) < len(sent):
            pkt = slow.recv(65536)
            if not pkt:
                return
            got.extend(pkt[1:])
            time.sleep(0.0005)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    deadline = time.monotonic() + 20
    for i in range(256):  # 4 MiB, far faster than the reader takes it
        while pauses and pauses[-1]:  # the container is held while throttled, as stdio does
            assert time.monotonic() < deadline, "throttled for good"
            harness.loop.run_once(0.01)
        data = chunk(i, 16384)
        harness.server.broadcast(STDOUT, data)
        sent += data
        harness.loop.run_once(0)
    done.set()
    while len(got) < len(sent) and harness.server.clients:  # the loop must keep flushing to the reader
        assert time.monotonic() < deadline, f"{len(got)} of {len(sent)} bytes"
        harness.loop.run_once(0.01)
    assert harness.server.clients, harness.diag.warnings()  # never dropped
    assert bytes(got) == bytes(sent)
    assert True in pauses and pauses[-1] is False  # it did throttle, and let go again
    assert harness.diag.warnings() == []


def test_stuck_client_while_throttled_is_dropped_and_output_resumes(harness, monkeypatch):
    monkeypatch.setattr(attach, "CLIENT_QUEUE_SOFT", 256 << 10)
    monkeypatch.setattr(attach, "CLIENT_QUEUE_LOW", 128 << 10)
    monkeypatch.setattr(attach, "CLIENT_STALL_S", 0.2)
    pauses: list[bool] = []
    harness.server.on_backpressure = pauses.append
    harness.connect()  # never reads
    i = 0
    while not pauses:
        harness.server.broadcast(STDOUT, chunk(i, 16384))
        i += 1
        assert i < 1000
    assert pauses == [True]
    start = time.monotonic()
    harness.run_until(lambda: not harness.server.clients, timeout=5)  # no more output arrives: the timer notices
    assert time.monotonic() - start < 2
    assert pauses == [True, False]
    assert [w.split(":")[0] for w in harness.diag.warnings()] == ["Attach client stopped reading"]
