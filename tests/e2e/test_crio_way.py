"""The monitor driven exactly the way CRI-O drives it (shared/spec CRIO.md).

CreateContainer (CRIO.md 2.1): CRI-O's argument order, ``--runtime-arg
--root=...`` (a value starting with ``--``), STREAM socketpairs for sync and
start, a minimal environment (no PYTHONPATH, HOME, TMPDIR, LANG), cwd = the
bundle, ``-P`` pid file, ``--persist-dir``, ``--syslog`` (this machine has no
/dev/log), ``--socket-dir-path`` with the ``-u`` link to the bundle. That is
the harness's ``style="crio"``. ExecSync (2.2) is ``testbed.exec(...,
style="crio")``: legacy exec with ``--sync``, a plain pipe for sync, a
pre-created empty pid file and log.

Tests that take ``crio_monitor`` run against Debian's C conmon (the
reference), the checkout launcher and, where it matters, the installed
binary (``make`` + ``make podman PREFIX=<tmp>``, shared with test_podman.py)
started with an empty environment.
"""

import ctypes
import os
import select
import signal
import struct
import subprocess

import pytest

from support import C_CONMON, LAUNCHER
from support.harness import (
    crio_runtime_root,
    pid_alive,
    poll_until,
    read_k8s_log,
    read_pidfile,
    runtime_kill,
    server_pids,
    stat_after_comm,
    wait_pid_gone,
)
from support.installed import is_server_stub, server_lib_dir

# --------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(params=["conmon", "pyconmon", "server"])
def crio_monitor(request, monitor_named):
    """C conmon (reference), the checkout launcher and the server-mode stub."""
    return monitor_named(request.param)


@pytest.fixture(params=["conmon", "pyconmon", "installed", "server"])
def any_monitor(request, monitor_named):
    """C conmon, the checkout launcher, the installed binary and the server-mode stub."""
    return monitor_named(request.param)


def is_installed(monitor):
    """The installed binaries (classic or server-mode stub) are run with an empty environment."""
    return monitor not in (C_CONMON, LAUNCHER)


def records(path):
    return [(r.stream, r.tag, r.content) for r in read_k8s_log(path)]


def log_has(path, needle):
    return any(needle in r.content for r in read_k8s_log(path))


IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100


class Inotify:
    """Just enough inotify (via libc) to see what CRI-O's watchers see."""

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs = {}
        self.events = []  # (dir, name, mask) in the order the kernel queued them

    def watch(self, path, mask):
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        self.dirs[wd] = path

    def _read(self, timeout):
        if not select.select([self.fd], [], [], timeout)[0]:
            return
        data = os.read(self.fd, 65536)
        pos = 0
        while pos < len(data):
            wd, mask, _cookie, n = struct.unpack_from("iIII", data, pos)
            name = data[pos + 16:pos + 16 + n].rstrip(b"\0").decode()
            self.events.append((self.dirs.get(wd), name, mask))
            pos += 16 + n

    def wait_for(self, pred, timeout=10.0, what="inotify event"):
        """Index of the first event with pred(dir, name, mask), reading more as needed."""
        def found():
            for i, ev in enumerate(self.events):
                if pred(*ev):
                    return (i,)
            self._read(0.05)
            return None
        return poll_until(found, timeout, what=what)[0]

    def close(self):
        os.close(self.fd)


# --------------------------------------------------------------------------
# CreateContainer


def test_create_like_crio(testbed, crio_monitor):
    m = testbed.run(crio_monitor, ["sh", "-c", "echo hello; echo oops >&2; exec sleep 100"], style="crio")
    # what CRI-O passed: its order, a dash-led value, its minimal environment, cwd = bundle
    i = m.argv.index("--runtime-arg")
    assert m.argv[i + 1] == f"--root={crio_runtime_root(testbed.runtime)}"
    assert m.argv[1:3] == ["-b", m.bundle] and m.argv[-2:] == ["-u", m.cid]
    assert "--syslog" in m.argv  # and no /dev/log on this machine: must not matter
    assert set(m.env) == {"PATH", "CRI_O_EXTERNAL", "_OCI_SYNCPIPE", "_OCI_STARTPIPE"}
    assert m.cwd == m.bundle
    assert m.first_status == 0, m.describe()
    # one JSON value with the legacy key, on a stream socket
    assert b"".join(m.sync.chunks) == b'{"pid": %d}\n' % m.container_pid
    assert m.state()["status"] == "running"
    with open(m.pidfile, "rb") as f:
        assert int(f.read()) == m.container_pid
    # -P: bare digits; the pid is alive (kill(pid, 0)) and stays the same process (start time)
    with open(m.conmon_pidfile, "rb") as f:
        raw = f.read()
    assert raw.isdigit() and int(raw) == m.pid
    os.kill(m.pid, 0)
    start_time = stat_after_comm(m.pid)[19]
    poll_until(lambda: log_has(m.log_path, b"oops") and log_has(m.log_path, b"hello"), what="output logged")
    assert sorted((s, c) for s, _, c in records(m.log_path)) == [("stderr", b"oops"), ("stdout", b"hello")]
    assert not os.listdir(m.persist_dir) and not os.listdir(m.exit_dir)
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137
    assert m.persist_exit() == 137
    with open(os.path.join(m.persist_dir, "exit"), "rb") as f:
        assert f.read() == b"137"
    assert not os.path.exists(os.path.join(m.bundle, "oom"))  # a normal exit is no OOM
    assert not os.path.exists(os.path.join(m.persist_dir, "oom"))
    wait_pid_gone(m.pid, 10)
    assert m.sync.read_rest(5) == []
    assert start_time


def test_installed_binary_empty_environment(testbed, installed_conmon):
    """The installed monitor starts from its own executable under ``env -i`` (no PYTHONPATH, no PATH)."""
    m = testbed.run(installed_conmon, ["sh", "-c", "echo from-installed; exec sleep 100"], style="crio", env={})
    assert set(m.env) == {"_OCI_SYNCPIPE", "_OCI_STARTPIPE"}
    assert m.sync_msg == {"pid": m.container_pid}, m.describe()
    assert os.readlink(f"/proc/{m.pid}/exe").endswith("/conmon")
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(installed_conmon)
    with open(f"/proc/{m.pid}/comm") as f:
        assert f.read() == "conmon\n"
    r = subprocess.run(["pidof", "conmon"], capture_output=True, text=True, check=False)
    assert str(m.pid) in r.stdout.split()
    poll_until(lambda: log_has(m.log_path, b"from-installed"), what="output logged")
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137
    assert m.persist_exit() == 137


@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "tty"])
def test_first_process_lets_go_of_callers_stdio(testbed, crio_monitor, terminal):
    """CRI-O waits for EOF on the stderr it gave conmon (with -t a pipe into a buffer): the monitor
    and its children must not keep it while the container runs."""
    m = testbed.run(crio_monitor, ["sleep", "100"], style="crio", terminal=terminal)
    assert m.container_pid, m.describe()
    assert m.wait_stdio_eof(5), "the running monitor or container still holds CRI-O's stdout/stderr"
    assert m.state()["status"] == "running"
    assert m.stdout == m.stderr == b""
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137


def test_attach_through_socket_dir_link(testbed, crio_monitor):
    m = testbed.run(crio_monitor, ["sh", "-c", "echo hi; echo err >&2"], style="crio", start=False)
    link = os.path.join(m.socket_dir, m.cid)
    assert os.readlink(link) == m.bundle
    assert len(link) < 107
    assert m.attach_path == os.path.join(link, "attach")
    client = m.attach()  # <socket dir>/<ID>/attach, as CRI-O dials it
    m.start_container()
    assert client.read_until_eof(10) == {2: b"hi\n", 3: b"err\n"}
    assert m.wait_exit_file() == 0
    assert m.persist_exit() == 0
    m.wait(10)
    if crio_monitor != C_CONMON:  # C conmon 2.1.6 leaves the link behind (CRIO.md 4.2: remove it)
        assert not os.path.lexists(link)


def test_stdin_once(testbed, crio_monitor):
    """-i without --leave-stdin-open: CRI-O sends up to 32 KiB per packet, half-closes at stdin EOF
    and still expects the output until the container exits."""
    m = testbed.run(crio_monitor, ["sh", "-c", "cat; echo cat-done"], style="crio", stdin=True, stdin_once=True,
                    start=False)
    assert "-i" in m.argv and "--leave-stdin-open" not in m.argv
    client = m.attach()
    m.start_container()
    big = b"y" * 32767 + b"\n"
    client.send(big)  # one packet of 32 KiB
    client.send(b"small\n")
    client.shutdown_write()
    out = client.read_until_eof(10)
    assert out == {2: big + b"small\ncat-done\n"}
    assert client.max_packet <= 8193
    assert m.wait_exit_file() == 0
    lines = [(r.stream, r.content) for r in read_k8s_log(m.log_path)]
    assert b"".join(c for _, c in lines) == b"y" * 32767 + b"smallcat-done"


def test_stdin_not_once(testbed, crio_monitor):
    """--leave-stdin-open -i (stdin, not stdin_once): a client's EOF leaves the container's stdin open."""
    m = testbed.run(crio_monitor, ["cat"], style="crio", stdin=True, stdin_once=False, start=False)
    i = m.argv.index("--leave-stdin-open")
    assert m.argv[i + 1] == "-i"
    c1 = m.attach()
    m.start_container()
    c1.send(b"one\n")
    c1.read_until(lambda o: b"one\n" in o.get(2, b""))
    c1.shutdown_write()
    c1.close()
    c2 = m.attach()
    c2.send(b"two\n")
    assert c2.read_until(lambda o: b"two\n" in o.get(2, b"")) == {2: b"two\n"}
    assert m.state()["status"] == "running"
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137


def test_reopen_log_makes_an_event_and_empties_the_log(testbed, crio_monitor):
    """ReopenContainerLog: CRI-O writes ``2 0 0`` to ctl and waits (no timeout) for a Create or
    Write event on exactly the log path; the old content is gone, new output goes to the new file."""
    m = testbed.run(crio_monitor, ["sh", "-c", "echo before; while read x; do echo \"$x\"; done"], style="crio",
                    stdin=True, stdin_once=False)
    poll_until(lambda: log_has(m.log_path, b"before"), what="first line logged")
    name = os.path.basename(m.log_path)
    old_ino = os.stat(m.log_path).st_ino
    ino = Inotify()
    try:
        ino.watch(os.path.dirname(m.log_path), IN_CREATE | IN_MOVED_TO | IN_MODIFY)
        fd = os.open(os.path.join(m.bundle, "ctl"), os.O_WRONLY)  # blocking, as CRI-O opens it
        try:
            os.write(fd, b"2 0 0\n")
        finally:
            os.close(fd)
        # CRI-O accepts Create or Write; a reopen makes a new file, so look for the Create (IN_MOVED_TO
        # from conmon's <log>.tmp rename, or IN_CREATE)
        ino.wait_for(lambda d, n, mask: n == name and mask & (IN_CREATE | IN_MOVED_TO),
                     what="Create event on the log path")
    finally:
        ino.close()
    poll_until(lambda: records(m.log_path) == [], what="log emptied")
    assert os.stat(m.log_path).st_ino != old_ino  # a new file renamed over the path
    c = m.attach()
    c.send(b"after\n")
    poll_until(lambda: records(m.log_path) == [("stdout", "F", b"after")], what="new output in the new file")
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137
    assert records(m.log_path) == [("stdout", "F", b"after")]


def test_persist_exit_before_exits_dir(testbed, crio_monitor):
    """CRI-O reacts to the exits-dir file and then reads <persist-dir>/exit: it must already be there."""
    m = testbed.run(crio_monitor, ["sh", "-c", "exit 9"], style="crio", start=False)
    ino = Inotify()
    try:
        ino.watch(m.persist_dir, IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE)
        ino.watch(m.exit_dir, IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE)
        m.start_container()
        assert m.wait_exit_file() == 9
        persist = ino.wait_for(lambda d, n, mask: d == m.persist_dir and n == "exit", what="persist exit")
        final = ino.wait_for(lambda d, n, mask: d == m.exit_dir and n == m.cid, what="exits-dir file")
    finally:
        ino.close()
    assert persist < final, ino.events
    with open(os.path.join(m.persist_dir, "exit"), "rb") as f:
        assert f.read() == b"9"
    assert not os.path.exists(os.path.join(m.bundle, "oom"))


# --------------------------------------------------------------------------
# ExecSync (legacy exec with --sync)


@pytest.fixture
def crio_container(testbed):
    """A running container (its monitor is pyconmon; the exec monitors under test are separate)."""
    m = testbed.run(LAUNCHER, ["sleep", "1000"], style="crio")
    assert m.container_pid, m.describe()
    return m


def server_holding(lib_dir, path):
    """The pid of a server of that install that has ``path`` open, or None."""
    for pid in server_pids(lib_dir):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == path:
                    return pid
            except OSError:
                pass
    return None


def assert_served(e):
    """A server-mode stub's probe is the server's: it has the probe's log open (it opens it when it
    accepts the stub's hello), and the process CRI-O started is still the stub, not the classic monitor."""
    server = poll_until(lambda: server_holding(server_lib_dir(e.conmon), e.log_path), 10,
                        what="the server to take the probe")
    assert os.readlink(f"/proc/{e.first_pid}/exe") == os.path.realpath(e.conmon)
    return server


def exec_sync(testbed, monitor, container, args, *, deadline=15, wait=True, **kw):
    """ExecSync as CRI-O runs it (testbed.exec style="crio"); with the server-mode stub, first
    asserts that the server serves it.  ``wait=False``: spawned, the start byte not written yet."""
    kw.setdefault("env", {} if is_installed(monitor) else None)
    e = testbed.exec(monitor, container, args, style="crio", wait=False, **kw)
    e.server = assert_served(e) if is_server_stub(monitor) else None
    if wait:
        e.write_start()
        e.wait_first(deadline)
        e.sync_msg = e.read_sync(deadline)
    return e


def test_exec_sync(testbed, crio_container, any_monitor):
    e = exec_sync(testbed, any_monitor, crio_container, ["sh", "-c", "echo out; usleep 20000; echo err >&2; exit 3"])
    assert "--sync" in e.argv and "-b" not in e.argv and "--api-version" not in e.argv
    assert e.sync_msg == {"exit_code": 3}, e.describe()
    assert b"".join(e.sync.chunks) == b'{"exit_code": 3}\n'  # only the exit code, no pid first
    assert e.sync.read_rest(5) == []
    assert e.first_status == 3  # as conmon: the monitor's status is the command's code
    assert records(e.log_path) == [("stdout", "F", b"out"), ("stderr", "F", b"err")]
    exec_pid = read_pidfile(e.pidfile)
    assert exec_pid and not pid_alive(exec_pid)
    assert e.wait_stdio_eof(5)
    assert crio_container.state()["status"] == "running"


def test_exec_sync_timeout(testbed, crio_container, crio_monitor):
    e = exec_sync(testbed, crio_monitor, crio_container, ["sh", "-c", "echo started; exec sleep 100"], timeout=1)
    assert "-T" in e.argv
    assert e.sync_msg == {"exit_code": -1, "message": "command timed out"}, e.describe()
    exec_pid = read_pidfile(e.pidfile)
    assert exec_pid
    poll_until(lambda: not pid_alive(exec_pid), what="timed-out exec process killed")
    assert records(e.log_path) == [("stdout", "F", b"started")]
    assert crio_container.state()["status"] == "running"


def test_exec_sync_timeout_kills_the_group_not_the_monitor(testbed, crio_container, crio_monitor):
    """-T expiry kills the exec process's whole group (a child it started too), and the monitor still
    ends normally with the timed-out message: in server mode the kill comes from the server, which
    must spare the stub's own group."""
    def sleepers():
        r = crio_container.runtime_cmd("exec", crio_container.cid, "sh", "-c", "ps -o args | grep -c '^[s]leep 107'")
        return r.stdout.strip()

    e = exec_sync(testbed, crio_monitor, crio_container, ["sh", "-c", "sleep 107 & echo started; wait"], timeout=3,
                  wait=False)
    e.write_start()
    poll_until(lambda: sleepers() == "1", what="the exec process's child running")
    assert e.wait_first(15) == 255, e.describe()  # -1 & 0xff, as conmon: not killed by a signal
    assert e.read_sync(5) == {"exit_code": -1, "message": "command timed out"}, e.describe()
    poll_until(lambda: not pid_alive(read_pidfile(e.pidfile)), what="timed-out exec process killed")
    assert records(e.log_path) == [("stdout", "F", b"started")]
    poll_until(lambda: sleepers() == "0", what="the exec process's child killed with it")


def test_exec_sync_command_not_found(testbed, crio_container, crio_monitor):
    """``doesnotexist``: CRI-O needs a non-zero code or -1 with a message, never 0.  Both monitors
    send -1 with the runtime's error text (the runtime fails before the process exists, so nothing
    is logged)."""
    e = exec_sync(testbed, crio_monitor, crio_container, ["doesnotexist"])
    msg = e.sync_msg
    assert msg is not None and set(msg) == {"exit_code", "message"} and msg["exit_code"] == -1, e.describe()
    assert "doesnotexist" in msg["message"], msg
    assert records(e.log_path) == []
    assert crio_container.state()["status"] == "running"


@pytest.mark.parametrize("trap", [False, True], ids=["default", "trapped"])
def test_exec_sync_sigint_forwarded(testbed, crio_container, any_monitor, trap):
    """When the container stops, CRI-O SIGINTs running exec monitors: forwarded, then a normal end."""
    if trap:
        args = ["sh", "-c", "trap 'echo got-int; exit 7' INT; echo ready; while :; do usleep 20000; done"]
    else:
        args = ["sh", "-c", "echo ready; exec sleep 100"]
    e = exec_sync(testbed, any_monitor, crio_container, args, wait=False)
    e.write_start()
    poll_until(lambda: read_pidfile(e.pidfile), what="exec pid file")
    poll_until(lambda: log_has(e.log_path, b"ready"), what="exec process ready")
    if is_installed(any_monitor):
        with open(f"/proc/{e.first_pid}/comm") as f:
            assert f.read() == "conmon\n"  # CRI-O's test finds exec monitors with `pidof conmon`
    os.kill(e.first_pid, signal.SIGINT)
    status = e.wait_first(10)
    # the monitor ends normally, not killed by SIGINT, with the exec's code as its status (as conmon)
    assert status == (7 if trap else 128 + signal.SIGINT), e.describe()
    msg = e.read_sync(5)
    assert msg == {"exit_code": 7 if trap else 128 + signal.SIGINT}, e.describe()
    if trap:
        assert log_has(e.log_path, b"got-int")
    assert not pid_alive(read_pidfile(e.pidfile))
    assert crio_container.state()["status"] == "running"


def test_exec_sync_output_cap(testbed, crio_container, crio_monitor):
    """--log-global-size-max 16777216: past 16 MiB conmon stops logging but keeps draining."""
    e = exec_sync(testbed, crio_monitor, crio_container, ["sh", "-c", "head -c 20000000 /dev/zero | tr '\\0' a; echo"],
                  deadline=60)
    assert e.sync_msg == {"exit_code": 0}, e.describe()
    content = b"".join(r.content for r in read_k8s_log(e.log_path))
    assert content == b"a" * len(content)
    # pyconmon counts the container's output: exactly 16 MiB of it is kept.  C conmon counts the
    # bytes of the log file, headers included, which costs it 1 % or more depending on its reads.
    if crio_monitor == C_CONMON:
        assert 16 * 1024 * 1024 * 95 // 100 <= len(content) <= 16777216
    else:
        assert len(content) == 16777216
    assert os.path.getsize(e.log_path) >= 16777216


def test_exec_sync_monitor_sigkilled(testbed, crio_container, crio_monitor):
    """SIGKILL to the monitor of a probe (CRI-O does it when it fails to start one): as with C conmon,
    the sync pipe ends with nothing on it, the caller's stdio ends, and the exec process is not killed
    with it; it ends of SIGPIPE at its next write, since nothing reads its output any more."""
    e = exec_sync(testbed, crio_monitor, crio_container,
                  ["sh", "-c", "echo ready; while :; do usleep 200000; echo tick; done"], wait=False)
    e.write_start()
    exec_pid = poll_until(lambda: read_pidfile(e.pidfile), what="exec pid file")
    poll_until(lambda: log_has(e.log_path, b"ready"), what="exec process ready")
    os.kill(e.first_pid, signal.SIGKILL)
    assert e.wait_first(10) == -signal.SIGKILL
    assert e.read_sync(10) is None, e.describe()
    assert e.wait_stdio_eof(10)
    poll_until(lambda: not pid_alive(exec_pid), 10, what="the exec process to end at its next write")
    assert crio_container.state()["status"] == "running"


def test_exec_sync_monitor_sigtermed(testbed, crio_container, crio_monitor):
    """SIGTERM to the monitor of a probe is forwarded to the exec process; the monitor then reports
    its code (143) and exits with it, as C conmon."""
    e = exec_sync(testbed, crio_monitor, crio_container, ["sh", "-c", "echo ready; exec sleep 100"], wait=False)
    e.write_start()
    exec_pid = poll_until(lambda: read_pidfile(e.pidfile), what="exec pid file")
    poll_until(lambda: log_has(e.log_path, b"ready"), what="exec process ready")
    os.kill(e.first_pid, signal.SIGTERM)
    assert e.wait_first(10) == 128 + signal.SIGTERM
    assert e.read_sync(10) == {"exit_code": 128 + signal.SIGTERM}, e.describe()
    assert not pid_alive(exec_pid)
    assert records(e.log_path) == [("stdout", "F", b"ready")]
