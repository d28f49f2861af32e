"""Unit tests for pyconmon.server and the hello step of pyconmon.session.

A real Server on a real unix socket, driven in this process (``run_once``);
the tests play the stub's side of the protocol.  The stub itself and whole
containers in server mode are covered by tests/e2e/test_server_mode.py.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pyconmon import protocol
from pyconmon.server import Server, lsm_label, peer_problem, privileges
from support.forked import wait_status

KEY = b"test-key"
TRUE = shutil.which("true") or "/bin/true"


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="pcm-srv-", dir="/tmp"))
    os.chmod(d, 0o755)  # another uid may try to connect (the refusal test)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def server(sock_dir: Path) -> Iterator[Server]:
    path = str(sock_dir / "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(16)
    os.chmod(path, 0o777)
    srv = Server(listener, KEY, path, idle_exit=3600)
    yield srv
    for session in list(srv.sessions):
        session.close()
    if not srv.stopping:
        srv.stop()
    srv.loop.close()


def connect(srv: Server) -> socket.socket:
    assert srv.path is not None
    c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    c.connect(srv.path)
    return c


def answer(srv: Server, client: socket.socket, timeout: float = 5.0) -> tuple[bytes, list[bytes]] | None:
    """Run the server until the client has a packet (or EOF): (type, fields), None at EOF."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        srv.loop.run_once(0.02)
        if select.select([client], [], [], 0)[0]:
            got = protocol.receive(client)
            return None if got is None else got[:2]
    raise AssertionError("no answer from the server")


def hello(tmp_path: Path, *extra: str, key: bytes = KEY, cwd: str = "/", env: tuple[bytes, ...] = (b"A=1",)
          ) -> list[bytes]:
    log = tmp_path / "ctr.log"
    argv = ["conmon", "--api-version", "1", "-c", "c" * 64, "-u", "c" * 64, "-r", TRUE, "-b", str(tmp_path),
            "-p", str(tmp_path / "pidfile"), "--exit-dir", str(tmp_path), "-l", f"k8s-file:{log}", *extra]
    return [key, cwd.encode(), str(len(argv)).encode(), *(a.encode() for a in argv), *env]


def test_a_caller_it_can_serve_gets_ok_and_the_foreground_lines(server: Server, tmp_path: Path) -> None:
    c = connect(server)
    protocol.send(c, protocol.HELLO, hello(tmp_path, "--log-level", "trace"))
    assert answer(server, c) == (protocol.OK, [b"[conmon:d]: set log level to trace\n"])
    assert (tmp_path / "ctr.log").exists()  # log files are opened before the start byte, as classic does
    assert len(server.sessions) == 1
    c.close()
    deadline = time.monotonic() + 5
    while server.sessions and time.monotonic() < deadline:
        server.loop.run_once(0.02)
    assert not server.sessions  # the stub went away before the start: nothing of it is kept


def test_crio_execsync_is_served(server: Server, tmp_path: Path) -> None:
    """CRI-O's ExecSync: legacy exec (no -u, -b, --api-version) with --sync, -T, a bare -l path."""
    spec = tmp_path / "exec-process"
    spec.write_text("{}")
    argv = ["conmon", "-c", "c" * 64, "-n", "k8s_x", "-r", TRUE, "-p", str(tmp_path / "pidfile"), "-e",
            "-l", str(tmp_path / "crio-log"), "--socket-dir-path", str(tmp_path), "--log-level", "info", "--sync",
            "--log-global-size-max", "16777216", "-T", "5", "--exec-process-spec", str(spec),
            "--runtime-arg", "--root=/run/runc"]
    c = connect(server)
    protocol.send(c, protocol.HELLO, [KEY, b"/", str(len(argv)).encode(), *(a.encode() for a in argv), b"A=1"])
    assert answer(server, c) == (protocol.OK, [b""])
    assert (tmp_path / "crio-log").exists()
    c.close()


@pytest.mark.parametrize(("extra", "key", "cwd", "reason"), [
    ((), b"other-key", "/", b"another pyconmon version"),
    (("-l", "passthrough"), KEY, "/", b"log driver"),
    (("--persist-dir", "relative/dir"), KEY, "/", b"relative path"),
    (("--log-level", "shouting"), KEY, "/", b"configuration error"),
    (("--no-such-option",), KEY, "/", b"usage error"),
])
def test_what_it_cannot_serve_exactly_goes_classic(server: Server, tmp_path: Path, extra: tuple[str, ...],
                                                   key: bytes, cwd: str, reason: bytes) -> None:
    c = connect(server)
    protocol.send(c, protocol.HELLO, hello(tmp_path, *extra, key=key, cwd=cwd))
    assert answer(server, c) == (protocol.CLASSIC, [reason])
    assert answer(server, c) is None  # and the connection is closed
    c.close()


def test_journald_is_served_when_the_server_can_send_as_the_stub(server: Server, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Root (CAP_SYS_ADMIN): served, entries name the stub (served_journald.py); else classic."""
    c = connect(server)
    protocol.send(c, protocol.HELLO, hello(tmp_path, "-l", "journald:"))
    assert answer(server, c) == (protocol.OK, [b""])
    c.close()
    # Without the capability (can_send_as is checked for real in tests/unit/test_served_journald.py)
    monkeypatch.setattr("pyconmon.served_journald.can_send_as", lambda pid, uid, gid: False)
    c = connect(server)
    protocol.send(c, protocol.HELLO, hello(tmp_path, "-l", "journald:"))
    assert answer(server, c) == (protocol.CLASSIC, [b"journald: cannot send as the monitor process "
                                                    b"(no CAP_SYS_ADMIN)"])
    c.close()


def test_a_malformed_hello_drops_the_connection(server: Server) -> None:
    c = connect(server)
    c.send(b"Hkey\0/\0not-a-number\0")
    assert answer(server, c) is None
    c.close()


def test_another_uid_is_refused(server: Server) -> None:
    """SO_PEERCRED: a peer of another uid gets no answer, only the closed connection."""
    assert server.path is not None
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            os.setgid(65534)
            os.setuid(65534)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.connect(server.path)
            c.settimeout(10)
            try:
                c.send(protocol.encode(protocol.HELLO, [KEY, b"/", b"1", b"conmon"]))
                data = c.recv(4096)
            except (BrokenPipeError, ConnectionResetError):  # closed before or with our hello unread
                data = b""
            code = 0 if data == b"" else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while server.refused == 0 and time.monotonic() < deadline:
        server.loop.run_once(0.02)
    assert server.refused == 1
    assert not server.sessions
    assert os.waitstatus_to_exitcode(wait_status(pid, 10)) == 0


def idle_server(path: str) -> Server:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(4)
    return Server(listener, KEY, path, idle_exit=0.2)


def test_idle_server_exits_and_removes_its_socket(sock_dir: Path) -> None:
    path = str(sock_dir / "idle.sock")
    srv = idle_server(path)
    started = time.monotonic()
    srv.run()
    assert 0.2 <= time.monotonic() - started < 5
    assert not os.path.exists(path)
    srv.loop.close()


def test_idle_server_leaves_a_socket_that_is_not_its_own(sock_dir: Path) -> None:
    """A newer server bound the same path meanwhile: the old one must not unlink it."""
    path = str(sock_dir / "taken.sock")
    srv = idle_server(path)
    os.unlink(path)
    newer = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    newer.bind(path)
    try:
        srv.run()
        assert os.path.exists(path)
    finally:
        newer.close()
        srv.loop.close()


def test_peer_namespaces() -> None:
    assert peer_problem(os.getpid()) is None
    assert peer_problem(2**22 + 12345) == "namespaces unknown"  # no such process


@pytest.fixture
def peer_under() -> Iterator:
    """Start ``sleep`` under a wrapper (setpriv, capsh, ...); yield a function that returns its pid."""
    import subprocess
    procs: list[subprocess.Popen] = []

    def start(*wrapper: str, ready: Callable[[dict[str, str]], bool] = lambda st: True) -> int:
        if shutil.which(wrapper[0]) is None:
            pytest.fail(f"{wrapper[0]} is not installed (see .ci/run)")
        p = subprocess.Popen(list(wrapper) if "--" in wrapper else [*wrapper, "sleep", "60"])
        procs.append(p)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until it runs what it execs (the wrapper has applied its change)
            st = privileges(str(p.pid))
            if os.readlink(f"/proc/{p.pid}/exe").endswith("/sleep") and ready(st):
                return p.pid
            time.sleep(0.01)
        raise AssertionError(f"{wrapper} did not get to sleep")

    yield start
    for p in procs:
        p.kill()
        p.wait()


def test_peer_privileges_field_by_field(peer_under: Callable[..., int]) -> None:
    """ZYGOTE.md R8: a peer whose capabilities, no_new_privs or seccomp differ from the server's is
    named with every field that differs (and then runs classic)."""
    assert peer_problem(peer_under("setpriv", "--no-new-privs")) == "other NoNewPrivs"
    assert peer_problem(peer_under("setpriv", "--bounding-set", "-net_raw")) == "other CapPrm, CapEff, CapBnd"
    assert peer_problem(peer_under("setpriv", "--inh-caps", "+net_raw")) == "other CapInh"
    assert peer_problem(peer_under("capsh", "--drop=cap_sys_admin", "--", "-c", "exec sleep 60")) == \
        "other CapPrm, CapEff, CapBnd"
    assert peer_problem(peer_under("env")) is None  # the same privileges: served


def test_a_peer_in_seccomp_strict_mode_is_named() -> None:
    import subprocess
    import sys
    code = ("import ctypes, os; ctypes.CDLL(None).prctl(22, 1, 0, 0, 0); os.read(0, 1)")  # PR_SET_SECCOMP, STRICT
    p = subprocess.Popen([sys.executable, "-I", "-S", "-c", code], stdin=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while privileges(str(p.pid)).get("Seccomp") != "1":
            assert time.monotonic() < deadline and p.poll() is None
            time.sleep(0.01)
        assert peer_problem(p.pid) == "other Seccomp"
    finally:
        p.kill()
        p.wait()


def test_a_peer_with_another_lsm_label_is_named() -> None:
    """Fake labels: this kernel has no LSM that gives processes one (/proc/PID/attr/current: EINVAL)."""
    labels = {"self": b"system_u:system_r:container_runtime_t:s0", str(os.getpid()): b"unconfined_t"}
    assert peer_problem(os.getpid(), labels.get) == "other LSM label"
    assert peer_problem(os.getpid(), lambda pid: b"same") is None
    assert lsm_label("self") == lsm_label(str(os.getpid()))


def test_a_peer_in_another_mount_namespace_goes_classic(server: Server, tmp_path: Path) -> None:
    import ctypes
    assert server.path is not None
    packet = protocol.encode(protocol.HELLO, hello(tmp_path))
    pid = os.fork()
    if pid == 0:
        code = 3
        try:
            if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
                os._exit(4)
            c = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            c.connect(server.path)
            c.send(packet)
            c.settimeout(10)
            code = 0 if c.recv(4096) == protocol.encode(protocol.CLASSIC, [b"other mnt namespace"]) else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        server.loop.run_once(0.02)
        got, status = os.waitpid(pid, os.WNOHANG)
        if got:
            assert os.waitstatus_to_exitcode(status) == 0
            return
    raise AssertionError("the peer got no answer")
