"""Unit tests for pyconmon.stdio: the container's pipes and pty on a real loop (no runtime, no container)."""

from __future__ import annotations

import array
import fcntl
import os
import re
import socket
import stat
import termios
import threading

import pytest

from pyconmon.loop import EventLoop
from pyconmon.stdio import ContainerStdio
from pyconmon.streams import STDERR, STDOUT
from support.diag import RecordingDiag

F_GETPIPE_SZ = 1032


class Harness:
    def __init__(self) -> None:
        self.loop = EventLoop()
        self.diag = RecordingDiag()
        self.output: list[tuple[int, bytes]] = []
        self.backlog: list[bool] = []
        self.stdio = ContainerStdio(self.loop, self.diag, lambda s, d: self.output.append((s, d)))
        self.stdio.on_stdin_backlog = self.backlog.append

    def run_until(self, cond, timeout: float = 5.0) -> None:
        assert self.loop.run_until(cond, timeout), "condition not met in time"

    def stream(self, which: int) -> bytes:
        return b"".join(d for s, d in self.output if s == which)

    def close(self) -> None:
        self.stdio.close()
        self.loop.close()


@pytest.fixture
def h():
    harness = Harness()
    yield harness
    harness.close()


# -- pipes -----------------------------------------------------------------------


def test_pipes_with_stdin(h):
    h.stdio.make_pipes(want_stdin=True)
    cin, cout, cerr = h.stdio.child_fds
    assert min(cin, cout, cerr) > 2
    for fd in (cin, cout, cerr):
        # the container's ends: reopenable by a non-root user as /dev/stdout, never leaked to other children
        assert stat.S_IMODE(os.stat(f"/proc/self/fd/{fd}").st_mode) == 0o777
        assert not os.get_inheritable(fd)
    for src in h.stdio.sources:
        assert fcntl.fcntl(src.fd, F_GETPIPE_SZ) >= 256 << 10
        assert not os.get_blocking(src.fd)
    h.stdio.watch_output()
    os.write(cout, b"out\n")
    os.write(cerr, b"err\n")
    h.run_until(lambda: h.stream(STDOUT) == b"out\n" and h.stream(STDERR) == b"err\n")
    h.stdio.write_stdin(b"input\n")
    assert os.read(cin, 100) == b"input\n"


def test_pipes_without_stdin(h):
    h.stdio.make_pipes(want_stdin=False)
    assert h.stdio.child_fds[0] == -1
    assert h.stdio.stdin_fd == -1
    h.stdio.write_stdin(b"dropped")  # nowhere to go: ignored
    h.stdio.close_stdin()
    assert h.diag.messages == []


def test_eof_unregisters_sources(h):
    h.stdio.make_pipes(want_stdin=False)
    h.stdio.watch_output()
    _, cout, _ = h.stdio.child_fds
    os.write(cout, b"last words")
    h.stdio.close_child_ends()
    assert h.stdio.child_fds == [-1, -1, -1]
    h.run_until(lambda: all(s.eof for s in h.stdio.sources))
    assert h.stream(STDOUT) == b"last words"
    assert not any(h.loop.watching(s.fd) for s in h.stdio.sources)
    h.stdio.watch_output()  # finished sources aren't watched again
    assert not any(h.loop.watching(s.fd) for s in h.stdio.sources)


def test_drain_reads_everything_left(h):
    h.stdio.make_pipes(want_stdin=False)
    _, cout, cerr = h.stdio.child_fds
    big = os.urandom(900 << 10)  # a flood that fits the enlarged pipe, written before the monitor reads
    os.write(cout, big)
    os.write(cerr, b"tail")
    h.stdio.drain()  # with the writers still open: stops at EAGAIN, never blocks
    assert h.stream(STDOUT) == big
    assert h.stream(STDERR) == b"tail"
    os.write(cout, b"more")
    h.stdio.close_child_ends()
    h.stdio.drain()
    assert h.stream(STDOUT) == big + b"more"
    assert all(s.eof for s in h.stdio.sources)


def test_drain_in_slices_on_a_shared_loop(h):
    """Server mode drains about a budget per loop turn (a read may pass it); the slices add up to all."""
    h.stdio.make_pipes(want_stdin=False)
    _, cout, cerr = h.stdio.child_fds
    big = os.urandom(900 << 10)
    os.write(cout, big)
    os.write(cerr, b"tail")
    assert not h.stdio.drain(64 << 10)  # the budget went on stdout: stderr waits for the next turn
    assert h.stream(STDOUT) == big
    assert h.stream(STDERR) == b""
    assert h.stdio.drain(64 << 10)
    assert h.stream(STDERR) == b"tail"


def _write_in_thread(fd: int, data: bytes) -> threading.Thread:
    """A writer that blocks while the pipe is full, as a runtime does."""
    t = threading.Thread(target=lambda: os.write(fd, data), daemon=True)
    t.start()
    return t


def test_runtime_stderr_beyond_the_pipe_is_drained_while_it_runs(h):
    """A runtime writing 10 MiB to stderr (ten pipes full) is never blocked: the failure keeps 8 KiB."""
    h.stdio.make_pipes(want_stdin=False)
    _, _, cerr = h.stdio.child_fds
    h.stdio.collect_early_output()
    writer = _write_in_thread(cerr, b"x" * 100 + b"e" * (10 << 20))
    h.run_until(lambda: not writer.is_alive(), timeout=20)
    assert h.stdio.runtime_error() == "x" * 100 + "e" * (8192 - 100)
    assert h.output == []  # a failed runtime's words go to the sync pipe, never to the log


def test_runtime_error_is_stderr_alone(h):
    """What an exec'd process wrote to stdout before the runtime failed is not part of its error."""
    h.stdio.make_pipes(want_stdin=False)
    _, cout, cerr = h.stdio.child_fds
    h.stdio.collect_early_output()
    os.write(cout, b"out\n")
    os.write(cerr, b"runc: boom\n")
    h.run_until(lambda: len(h.stdio._early) == 2)
    assert h.stdio.runtime_error() == "runc: boom\n"
    assert h.output == []


def test_output_of_a_successful_runtime_is_logged_first_in_the_order_read(h):
    h.stdio.make_pipes(want_stdin=False)
    _, cout, cerr = h.stdio.child_fds
    h.stdio.collect_early_output()
    os.write(cerr, b"runtime warning\n")
    h.run_until(lambda: h.stdio._early_size == 16)
    os.write(cerr, b"container says\n")  # still in the pipe when the runtime has exited
    os.write(cout, b"out\n")
    h.stdio.release_early_output()
    assert h.output == [(STDERR, b"runtime warning\n")]
    h.stdio.watch_output()
    h.run_until(lambda: h.stream(STDERR) == b"runtime warning\ncontainer says\n" and h.stream(STDOUT) == b"out\n")
    assert h.diag.messages == []


@pytest.mark.parametrize("first", [STDOUT, STDERR])
def test_both_streams_written_while_the_runtime_runs_keep_their_order(h, first):
    """A quick exec writes both streams before the runtime exits: a client gets them in the order written
    (``echo out; echo err >&2`` as well as ``echo err >&2; echo out``)."""
    h.stdio.make_pipes(want_stdin=False)
    _, cout, cerr = h.stdio.child_fds
    fds = {STDOUT: cout, STDERR: cerr}
    second = STDERR if first == STDOUT else STDOUT
    h.stdio.collect_early_output()
    os.write(fds[first], b"one\n")
    h.run_until(lambda: len(h.stdio._early) == 1)
    os.write(fds[second], b"two\n")
    h.run_until(lambda: len(h.stdio._early) == 2)
    h.stdio.release_early_output()
    h.stdio.close_child_ends()
    h.stdio.watch_output()
    h.run_until(lambda: all(s.eof for s in h.stdio.sources))
    assert h.output == [(first, b"one\n"), (second, b"two\n")]


def collecting_with_a_1000_byte_bound(h, monkeypatch) -> int:
    """The runtime runs, the early output bound is 1000 bytes; the write end of the stderr pipe."""
    monkeypatch.setattr("pyconmon.stdio.EARLY_OUTPUT_MAX", 1000)
    h.stdio.make_pipes(want_stdin=False)
    h.stdio.collect_early_output()
    return h.stdio.child_fds[2]


def test_output_beyond_the_bound_while_the_runtime_runs_waits_in_the_pipe(h, monkeypatch):
    """Past the bound the pipes are left unread until the runtime has exited (the writer waits, as
    under C conmon); nothing is dropped."""
    cerr = collecting_with_a_1000_byte_bound(h, monkeypatch)
    os.write(cerr, b"a" * 600)
    h.run_until(lambda: h.stdio._early_size == 600)
    os.write(cerr, b"b" * 600)
    h.run_until(lambda: h.stdio._early_size == 1200)
    os.write(cerr, b"c" * 600)  # not read while the runtime runs
    h.loop.run_once(0.05)
    assert h.stdio._early_size == 1200
    h.stdio.release_early_output()
    assert h.stream(STDERR) == b"a" * 600 + b"b" * 600
    h.stdio.watch_output()
    h.run_until(lambda: h.stream(STDERR) == b"a" * 600 + b"b" * 600 + b"c" * 600)
    assert h.diag.messages == []


def test_a_runtime_still_running_after_the_wait_gets_its_pipes_drained_the_excess_dropped(h, monkeypatch):
    monkeypatch.setattr("pyconmon.stdio.EARLY_WAIT_S", 0.2)
    cerr = collecting_with_a_1000_byte_bound(h, monkeypatch)
    os.write(cerr, b"a" * 1200)
    h.run_until(lambda: h.stdio._early_size == 1200)
    os.write(cerr, b"b" * 300)
    h.run_until(lambda: h.stdio._early_dropped == 300)
    h.stdio.release_early_output()
    assert h.stream(STDERR) == b"a" * 1200
    assert len(h.diag.messages) == 1 and "Dropped 300 bytes" in h.diag.messages[0][1], h.diag.messages


def read_all_in_thread(fd: int, into: bytearray) -> threading.Thread:
    def reader():
        while chunk := os.read(fd, 1 << 16):
            into.extend(chunk)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    return t


def test_stdin_backlog_is_queued_and_reported(h):
    h.stdio.make_pipes(want_stdin=True)
    cin = h.stdio.child_fds[0]
    data = os.urandom(3 << 20)  # far more than the stdin pipe holds
    h.stdio.write_stdin(data[:1 << 20])
    h.stdio.write_stdin(data[1 << 20:])
    assert h.backlog == [True]  # the caller pauses attach input
    assert h.stdio.stdin_queued > 1 << 20
    got = bytearray()
    t = read_all_in_thread(cin, got)
    h.run_until(lambda: h.stdio.stdin_queued == 0)
    assert h.backlog == [True, False]
    assert not h.loop.watching(h.stdio.stdin_fd)  # no EPOLLOUT spinning once idle
    h.stdio.close_stdin()
    t.join(5)
    assert bytes(got) == data


def test_close_stdin_waits_for_queued_input(h):
    h.stdio.make_pipes(want_stdin=True)
    cin = h.stdio.child_fds[0]
    data = b"z" * (300 << 10)
    h.stdio.write_stdin(data)
    h.stdio.close_stdin()  # the client hung up: close once what it sent is written
    assert h.stdio.stdin_fd >= 0 and h.stdio.stdin_close_pending
    got = bytearray()
    t = read_all_in_thread(cin, got)
    h.run_until(lambda: h.stdio.stdin_fd == -1)
    t.join(5)
    assert not t.is_alive()  # it saw EOF
    assert bytes(got) == data


def test_stdin_reader_gone(h):
    h.stdio.make_pipes(want_stdin=True)
    os.close(h.stdio.child_fds[0])
    h.stdio.child_fds[0] = -1
    h.stdio.write_stdin(b"nobody reads")
    assert h.diag.warnings() == ["Failed to write to container stdin: Broken pipe"]
    assert h.stdio.stdin_fd == -1
    h.stdio.write_stdin(b"again")  # ignored now
    assert len(h.diag.warnings()) == 1


# -- console socket and pty ------------------------------------------------------


def send_master(path: str, master: int) -> None:
    """What the runtime does with --console-socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path)
        sock.sendmsg([b"/dev/pts/x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]))])


@pytest.fixture
def pty_pair():
    master, slave = os.openpty()
    fds = {"master": master, "slave": slave}
    yield fds
    for fd in fds.values():
        try:
            os.close(fd)
        except OSError:
            pass


def test_console_socket_receives_the_pty(h, short_dir, pty_pair):
    attrs = termios.tcgetattr(pty_pair["master"])
    attrs[1] &= ~termios.ONLCR
    termios.tcsetattr(pty_pair["master"], termios.TCSANOW, attrs)
    seen_pty = []
    h.stdio.on_pty = lambda: seen_pty.append(h.stdio.pty_master)
    path = h.stdio.make_console_socket(short_dir)
    assert re.fullmatch(re.escape(short_dir) + r"/conmon-term\.[0-9a-f]{6}", path)
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert h.stdio.child_fds[:2] == [-1, -1] and h.stdio.child_fds[2] > 2  # a stderr pipe for the runtime
    send_master(path, pty_pair["master"])
    os.close(pty_pair.pop("master"))  # the monitor holds its own copy now
    h.run_until(lambda: h.stdio.pty_master >= 0)
    assert seen_pty == [h.stdio.pty_master]
    assert not os.path.exists(path)  # the socket is gone once the pty is there
    assert not os.get_inheritable(h.stdio.pty_master)
    assert termios.tcgetattr(h.stdio.pty_master)[1] & termios.ONLCR
    os.write(pty_pair["slave"], b"hello\n")
    h.run_until(lambda: h.stream(STDOUT) == b"hello\r\n")
    assert h.stream(STDERR) == b""
    attrs = termios.tcgetattr(pty_pair["slave"])
    attrs[3] &= ~termios.ECHO
    termios.tcsetattr(pty_pair["slave"], termios.TCSANOW, attrs)
    h.stdio.write_stdin(b"typed\n")  # the pty is stdin too
    assert os.read(pty_pair["slave"], 100) == b"typed\n"


def test_console_socket_paths_are_unique(short_dir):
    from pyconmon.stdio import ConsoleSocket
    socks = [ConsoleSocket(short_dir) for _ in range(20)]
    try:
        assert len({s.path for s in socks}) == 20
    finally:
        for s in socks:
            s.close()
    assert os.listdir(short_dir) == []


def test_pty_hangup_is_not_the_end(h, pty_pair, monkeypatch):
    import pyconmon.stdio as stdio_mod
    monkeypatch.setattr(stdio_mod, "PTY_RETRY", 0.02)
    slave_name = os.ttyname(pty_pair["slave"])
    h.stdio.set_pty(pty_pair.pop("master"))
    os.write(pty_pair["slave"], b"one\n")
    h.run_until(lambda: h.stream(STDOUT) == b"one\r\n")
    os.close(pty_pair.pop("slave"))  # no process has the terminal open for a while
    master = h.stdio.pty_master
    h.run_until(lambda: not h.loop.watching(master))  # taken out of epoll: no spinning on EPOLLHUP
    assert not h.stdio.sources[-1].eof
    pty_pair["slave"] = os.open(slave_name, os.O_RDWR | os.O_NOCTTY)
    os.write(pty_pair["slave"], b"two\n")
    h.run_until(lambda: h.stream(STDOUT) == b"one\r\ntwo\r\n")
    h.run_until(lambda: h.loop.watching(master))  # watched again (after the short pause a small read earns)


def test_pty_drain_after_exit(h, pty_pair):
    h.stdio.set_pty(pty_pair.pop("master"))
    os.write(pty_pair["slave"], b"bye\n")
    os.close(pty_pair.pop("slave"))
    h.stdio.drain()  # ends at EIO, doesn't block or raise
    assert h.stream(STDOUT) == b"bye\r\n"


def test_close_releases_everything():
    h = Harness()
    h.stdio.make_pipes(want_stdin=True)
    h.stdio.watch_output()
    fds = [s.fd for s in h.stdio.sources] + [h.stdio.stdin_fd] + h.stdio.child_fds
    h.stdio.close()
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)
    assert h.stdio.sources == [] and h.stdio.stdin_fd == -1
    h.loop.close()


def test_small_writes_are_gathered_into_few_reads(h):
    """A container writing many small pieces costs a few large reads, not one read per piece."""
    import threading
    import time
    h.stdio.make_pipes(want_stdin=False)
    _cin, cout, _cerr = h.stdio.child_fds
    h.stdio.watch_output()
    pieces = [b"%05d %s\n" % (i, b"x" * 93) for i in range(2000)]

    def writer():  # 100-byte lines, a few at a time, over some 30 ms
        for i in range(0, len(pieces), 10):
            os.write(cout, b"".join(pieces[i:i + 10]))
            time.sleep(0.0001)

    t = threading.Thread(target=writer)
    t.start()
    expected = b"".join(pieces)
    h.run_until(lambda: h.stream(STDOUT) == expected or (not t.is_alive() and len(h.stream(STDOUT)) >= len(expected)))
    t.join()
    assert h.stream(STDOUT) == expected
    assert len(h.output) < 100, len(h.output)  # 200 writes; unpaced this took about one read each
