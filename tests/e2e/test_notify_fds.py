"""sd_notify relay, LISTEN_PID and inherited/preserved fds through the monitor (issue 5).

- Relay: the bundle is set up as Podman does it (``<bundle>/notify`` bind
  mounted at ``/run/notify``, ``NOTIFY_SOCKET=/run/notify/notify.sock`` in the
  process env); the monitor gets ``--sdnotify-socket=<a datagram socket this
  test listens on>``.  Busybox has nothing that sends unix datagrams, so a
  tiny static sender is compiled with ``gcc -static`` and bind-mounted in;
  without gcc that test is skipped and the host-side test (datagrams sent
  straight to ``<bundle>/notify/notify.sock`` while the container runs) still
  covers the filter.
- LISTEN_PID: a shim runtime records its own pid and environment, then execs
  runc, so the test sees exactly what the monitor gave the runtime.
- fds: a pipe's write end passed as preserved fd 3 reaches the container; a
  pipe's write end given to the monitor after the sync/start pipes (like
  Podman's port reservations) is held while the container runs and closed
  before the exit file appears.
"""

import os
import select
import shutil
import signal
import socket
import stat
import subprocess

import pytest

from support import MONITORS
from support.harness import poll_until, proc_cmdline

SENDER_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
/* sdsend MSG...: one datagram per argument to $NOTIFY_SOCKET */
int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path) { fputs("no NOTIFY_SOCKET\n", stderr); return 2; }
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    for (int i = 1; i < argc; i++)
        if (sendto(fd, argv[i], strlen(argv[i]), 0, (struct sockaddr *)&a, sizeof a) < 0) {
            perror("sendto");
            return 1;
        }
    return 0;
}
"""

# What the contract lets through, line by line (CONTRACT 4).
ALLOWED = ["READY=1", "RELOADING=1", "STOPPING=1", "WATCHDOG=1", "WATCHDOG=trigger", "STATUS=busy: 3 of 7",
           "ERRNO=5", "BUSERROR=org.example.Failed", "MONOTONIC_USEC=123456"]
REFUSED = ["MAINPID=1", "MAINPID=4242", "FDSTORE=1", "FDNAME=x", "BARRIER=1", "READY=0", "READY=1 ", " READY=1",
           "WATCHDOG_USEC=5", "EXTEND_TIMEOUT_USEC=1", "NOTIFYACCESS=all", "X_CUSTOM=1", "status=lower", ""]


@pytest.fixture(scope="module")
def sdsend(tmp_path_factory):
    """A directory holding a static ``sdsend`` binary, or skip."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not installed: no in-container sd_notify sender")
    d = tmp_path_factory.mktemp("sdsend")
    src = d / "sdsend.c"
    src.write_text(SENDER_C)
    r = subprocess.run([gcc, "-static", "-Os", "-o", str(d / "sdsend"), str(src)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"gcc -static failed (no static libc?): {r.stderr[-300:]}")
    src.unlink()
    return str(d)


def notify_mounts(bundle_notify, tools=None):
    """A bundle edit doing what Podman does for --sdnotify=container (plus our sender)."""
    def edit(spec):
        mounts = spec.setdefault("mounts", [])
        # a tmpfs /run first, so runc makes the mount points there, not in the shared rootfs
        mounts.append({"destination": "/run", "type": "tmpfs", "source": "tmpfs",
                       "options": ["nosuid", "nodev", "mode=755", "size=1m"]})
        mounts.append({"destination": "/run/notify", "type": "bind", "source": bundle_notify,
                       "options": ["bind", "rw"]})
        if tools:
            mounts.append({"destination": "/run/tools", "type": "bind", "source": tools, "options": ["bind", "ro"]})
        spec["process"]["env"].append("NOTIFY_SOCKET=/run/notify/notify.sock")
    return edit


class Listener:
    """The host's sd_notify socket: a datagram socket in a short directory."""

    def __init__(self, directory):
        self.path = os.path.join(directory, "host-notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)

    def recv(self, timeout=10):
        if not select.select([self.sock], [], [], timeout)[0]:
            raise TimeoutError(f"no datagram on {self.path} within {timeout}s")
        return self.sock.recv(65536)

    def pending(self):
        return bool(select.select([self.sock], [], [], 0)[0])

    def close(self):
        self.sock.close()


@pytest.fixture
def listener(testbed):
    sock = Listener(testbed.short_dir())
    yield sock
    sock.close()


def _bundle_with_notify(testbed, args, tools=None):
    workdir = testbed.workdir("n")
    bundle = os.path.join(workdir, "bundle")
    os.makedirs(os.path.join(bundle, "notify"))  # Podman makes it; C conmon needs it to exist
    return workdir, bundle, {"edit": notify_mounts(os.path.join(bundle, "notify"), tools)}


def test_relay_from_inside_the_container(testbed, listener, sdsend):
    """The container's own sd_notify datagrams reach the host socket, filtered line by line."""
    script = ("test -S /run/notify/notify.sock && echo socket-visible; "
              "/run/tools/sdsend \"$(printf 'MAINPID=1\\nREADY=1\\nFDSTORE=1\\nSTATUS=up')\" MAINPID=7 "
              "\"$(printf 'X=1\\nWATCHDOG=1')\" STOPPING=1")
    workdir, bundle, kw = _bundle_with_notify(testbed, None, sdsend)
    from support.bundle import make_bundle
    make_bundle(bundle, ["sh", "-c", script], **kw)
    m = testbed.run(MONITORS["pyconmon"], workdir=workdir, bundle=bundle, style="podman",
                    extra_args=[f"--sdnotify-socket={listener.path}"])
    assert m.container_pid, m.describe()
    assert m.wait_exit_file() == 0, m.log_lines()
    assert [x.content for x in m.log_lines()] == [b"socket-visible"]
    # MAINPID=7 alone: nothing at all is sent for it
    assert [listener.recv(), listener.recv(), listener.recv()] == [b"READY=1\nSTATUS=up", b"WATCHDOG=1",
                                                                   b"STOPPING=1"]
    assert not listener.pending()


@pytest.mark.parametrize("monitor", ["pyconmon", "conmon"])
def test_relay_filter_from_host_side(testbed, listener, monitor):
    """Every allowed line passes, every other line never does; sent straight to the bundle's socket.

    C conmon 2.1.6 forwards only READY=1 and WATCHDOG=1; the test pins that down too.
    """
    workdir, bundle, kw = _bundle_with_notify(testbed, None)
    from support.bundle import make_bundle
    make_bundle(bundle, ["sleep", "30"], **kw)
    m = testbed.run(MONITORS[monitor], workdir=workdir, bundle=bundle, style="crio",
                    extra_args=[f"--sdnotify-socket={listener.path}"])
    assert m.container_pid, m.describe()
    path = os.path.join(bundle, "notify", "notify.sock")
    assert stat.S_ISSOCK(os.stat(path).st_mode)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o777
    out = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    marks = iter(range(1000))

    def exchange(payload):
        """Send one datagram, then a marker datagram; what came through before the marker."""
        # pyconmon passes STATUS=; C conmon passes only (anything containing) WATCHDOG=1
        marker = f"STATUS=mark-{next(marks)}" if monitor == "pyconmon" else "WATCHDOG=1"
        out.sendto(payload.encode(), path)
        out.sendto(marker.encode(), path)
        got = []
        while (data := listener.recv()) != marker.encode():
            got.append(data)
        return got

    try:
        if monitor == "pyconmon":
            assert {line: exchange(line) for line in REFUSED} == {line: [] for line in REFUSED}
            mixed = REFUSED[:3] + ALLOWED[:2] + REFUSED[3:6] + ALLOWED[2:] + REFUSED[6:]
            assert exchange("\n".join(mixed)) == ["\n".join(ALLOWED).encode()]
            assert {line: exchange(line) for line in ALLOWED} == {line: [line.encode()] for line in ALLOWED}
            assert exchange("x" * 70000) == []  # longer than a read: truncated, then filtered away
        else:
            # conmon 2.1.6 matches substrings and forwards READY=1 or WATCHDOG=1 only
            got = {p: exchange(p) for p in ("MAINPID=1", "NOTREADY=1", "STATUS=x", "STOPPING=1",
                                            "READY=1\nSTATUS=x")}
            assert got == {"MAINPID=1": [], "NOTREADY=1": [b"READY=1"], "STATUS=x": [], "STOPPING=1": [],
                           "READY=1\nSTATUS=x": [b"READY=1"]}
        assert not listener.pending()
    finally:
        out.close()
    os.kill(m.container_pid, signal.SIGKILL)
    assert m.wait_exit_file() == 137
    if monitor == "pyconmon":
        assert not os.path.exists(path)  # unlinked at exit


# --------------------------------------------------------------------------
# LISTEN_PID


@pytest.fixture
def shim(testbed):
    """A runtime that records its pid and environment (``env.<pid>`` files), then execs the real one."""
    d = testbed.workdir("shim")
    path = os.path.join(d, "runtime")
    with open(path, "w") as f:
        f.write(f'#!/bin/sh\n{{ echo "SHIM_PID=$$"; env; }} > {d}/env.$$\nexec {testbed.runtime} "$@"\n')
    os.chmod(path, 0o755)

    def envs():
        out = []
        for name in sorted(os.listdir(d)):
            if name.startswith("env."):
                with open(os.path.join(d, name)) as f:
                    out.append(dict(line.split("=", 1) for line in f.read().splitlines() if "=" in line))
        return out

    return path, envs


@pytest.mark.one_runtime  # the monitor's environment handling: the shim sees it before any runtime runs
@pytest.mark.parametrize("case", ["monitor", "caller", "other", "other-replace", "none"])
def test_listen_pid(testbed, monitor_bin, shim, case):
    """Rewritten to the runtime's pid only when it names the monitor itself or with --replace-listen-pid.

    "monitor": a --sync monitor started by a wrapper that sets LISTEN_PID to
    its own pid and execs the monitor (as a socket unit would start it).
    "caller": LISTEN_PID is the pid of the process that spawned the monitor;
    C conmon leaves that alone (its test is getppid() in the runtime child).
    """
    runtime, envs = shim
    extra = ["-r", runtime] + (["--replace-listen-pid"] if case == "other-replace" else [])
    if case == "monitor":
        wrapper = os.path.join(testbed.workdir("wrap"), "monitor")
        with open(wrapper, "w") as f:
            f.write(f'#!/bin/sh\nexport LISTEN_PID=$$ LISTEN_FDS=0\nexec {monitor_bin} "$@"\n')
        os.chmod(wrapper, 0o755)
        m = testbed.run(wrapper, ["true"], style="crio", extra_args=[*extra, "--sync"], wait=False)
        msg = m.read_sync()
        assert msg and msg["pid"] > 0, m.describe()
        m.start_container()
        assert m.wait_exit_file() == 0
        assert m.wait_first() == 0
        listen_pid = str(m.first_pid)
    else:
        listen_pid = {"caller": str(os.getpid()), "other": "1", "other-replace": "1", "none": None}[case]
        env_extra = {"LISTEN_PID": listen_pid, "LISTEN_FDS": "0"} if listen_pid else {}
        m = testbed.run(monitor_bin, ["true"], style="crio", env_extra=env_extra, extra_args=extra)
        assert m.container_pid, m.describe()
        assert m.wait_exit_file() == 0
    (env,) = envs()
    if case in ("monitor", "other-replace"):
        assert env["LISTEN_PID"] == env["SHIM_PID"] != listen_pid
    elif case in ("caller", "other"):
        assert env["LISTEN_PID"] == listen_pid
    else:
        assert "LISTEN_PID" not in env
    if listen_pid:
        assert env["LISTEN_FDS"] == "0"


@pytest.mark.one_runtime
@pytest.mark.parametrize("value", ["abc", "0", "-3", ""])
def test_invalid_listen_pid_is_fatal(testbed, monitor_bin, shim, value):
    """The runtime never runs; the caller gets -1 with the reason on the sync pipe."""
    runtime, envs = shim
    m = testbed.run(monitor_bin, ["true"], style="crio", env_extra={"LISTEN_PID": value},
                    extra_args=["-r", runtime], start=False)
    assert m.sync_msg is not None and m.sync_msg["pid"] == -1, m.describe()
    assert f"Invalid LISTEN_PID {value}" in m.sync_msg["message"]
    m.wait(10)
    assert envs() == []
    assert not os.path.exists(m.exit_file)


# --------------------------------------------------------------------------
# preserved and inherited fds


def _pipe_holders(ino, pids):
    """Which of ``pids`` have the pipe with inode ``ino`` open."""
    out = []
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for name in names:
            try:
                if os.readlink(f"/proc/{pid}/fd/{name}") == f"pipe:[{ino}]":
                    out.append((pid, int(name)))
            except FileNotFoundError:
                pass
    return out


def test_preserved_fd_is_open_in_the_container(testbed, monitor_bin):
    r, w = os.pipe()
    ino = os.fstat(w).st_ino
    try:
        m = testbed.run(monitor_bin, ["sh", "-c", "readlink /proc/self/fd/3; echo via-fd3 >&3; exec sleep 30"],
                        style="podman", preserve_fds=[w],
                        extra_args=["--runtime-opt", "--preserve-fds", "--runtime-opt", "1"])
        os.close(w)
        w = None
        assert m.container_pid, m.describe()
        poll_until(lambda: m.log_lines(), what="container output")
        assert [x.content for x in m.log_lines()] == [f"pipe:[{ino}]".encode()]
        assert os.read(r, 100) == b"via-fd3\n"
        # from the host: the container's init holds 0-2 and the preserved fd, nothing else
        # (once it is sleep: the shell keeps a saved copy of fd 1 around a redirection)
        poll_until(lambda: proc_cmdline(m.container_pid).startswith(b"sleep\0"), what="exec sleep")
        assert sorted(int(x) for x in os.listdir(f"/proc/{m.container_pid}/fd")) == [0, 1, 2, 3]
        assert os.readlink(f"/proc/{m.container_pid}/fd/3") == f"pipe:[{ino}]"
        os.kill(m.container_pid, signal.SIGKILL)
        assert m.wait_exit_file() == 137
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


def test_inherited_fd_closed_before_exit_file(testbed, monitor_bin):
    """A port-reservation-like fd: held while the container runs, released before the exit file."""
    r, w = os.pipe()
    ino = os.fstat(r).st_ino
    try:
        m = testbed.run(monitor_bin, ["sleep", "30"], style="podman", extra_fds=[w])
        os.close(w)
        w = None
        assert m.container_pid, m.describe()
        # crun's `start` returns before the container process has closed its extra fds and exec'd
        poll_until(lambda: proc_cmdline(m.container_pid).startswith(b"sleep\0"), what="exec sleep")
        # only the monitor holds it: not the container
        holders = _pipe_holders(ino, [m.pid, m.container_pid])
        assert [pid for pid, _ in holders] == [m.pid], holders
        assert not select.select([r], [], [], 0.2)[0], "closed while the container still runs"
        os.kill(m.container_pid, signal.SIGKILL)
        assert m.wait_exit_file() == 137
        # the monitor closes the fd before it writes the exit file, so EOF is there already
        assert select.select([r], [], [], 0)[0] and os.read(r, 1) == b"", "fd still open after the exit file"
    finally:
        os.close(r)
        if w is not None:
            os.close(w)

