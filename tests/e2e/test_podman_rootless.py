"""Rootless Podman 4.3.1 through pyconmon, in classic and in server mode.

A real unprivileged user, made for this module (``useradd``, subordinate ids
from /etc/login.defs, ``/run/user/UID`` 0700: what a login gives it) and
removed after, runs a real Podman with its own store (vfs, runc, the busybox
image imported by the user).  Rootless Podman runs conmon inside the user's
namespace, as uid 0 there (mapped to the user outside), with
XDG_RUNTIME_DIR=/run/user/UID.  Each Podman here has its own ``--tmpdir``, so
its own pause process and user namespace.

The monitor is installed twice under a directory the user can read (pytest's
tmp dirs are 0700 root): ``ENTRY=classic``, and the stub with its mode file
saying "always" (tests/support/installed.py).  In server mode the stub finds
(or starts) the user's server at ``$XDG_RUNTIME_DIR/pyconmon/KEY-USERNS-MNTNS.sock``:
one server per user and namespace context, which serves only its own uid
(SO_PEERCRED): real root, which is no uid of the user's namespace, is turned away.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile

import pytest

from pyconmon import protocol
from support.harness import poll_until, server_pids, wait_pid_gone
from support.installed import install_podman_conmon
from support.installed import unavailable_reason as install_unavailable
from support.journald_service import journal_entries
from support.podman import SLOW, Podman, exit_code, rootless_env, run_d

TRAP = "echo started; trap 'echo bye; exit 7' TERM; while :; do sleep 0.1; done"


def userns_forbidden():
    """Why the kernel refuses an unprivileged user namespace here, or None."""
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return "user.max_user_namespaces is 0"
    except OSError:
        pass
    try:
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            if f.read().strip() == "0":
                return "kernel.unprivileged_userns_clone is 0"
    except OSError:
        pass  # not a Debian-patched knob on this kernel: allowed
    return None


def _proc_uid(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                return int(line.split()[1])
    return None


def _pids_of_uid(uid):
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if _proc_uid(name) == uid:
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def rootless_user():
    """A fresh unprivileged user with subordinate ids and /run/user/UID; removed (with every
    process it still runs: pause processes, servers) after the module."""
    reason = userns_forbidden()
    if reason:
        pytest.skip(f"the kernel forbids user namespaces: {reason}")
    for tool in ("useradd", "userdel", "newuidmap", "newgidmap"):
        assert shutil.which(tool), f"{tool} is missing (.ci/run installs uidmap)"
    name = f"pcmrl{os.getpid()}"[:32]
    home = tempfile.mkdtemp(prefix="pcm-rl-home-", dir="/tmp")
    subprocess.run(["useradd", "--no-create-home", "--home-dir", home, "--shell", "/usr/sbin/nologin",
                    "--user-group", name], check=True, capture_output=True)
    user = pwd.getpwnam(name)
    run_dir = f"/run/user/{user.pw_uid}"
    try:
        with open("/etc/subuid") as f:
            has_ids = any(line.split(":")[0] == name for line in f)
        if not has_ids:  # login.defs gives none here: add a range past every one in use
            ends = [100000]
            for path in ("/etc/subuid", "/etc/subgid"):
                with open(path) as f:
                    ends += [int(p[1]) + int(p[2]) for p in (line.strip().split(":") for line in f) if len(p) == 3]
            first = max(ends)
            ids = f"{first}-{first + 65535}"
            subprocess.run(["usermod", "--add-subuids", ids, "--add-subgids", ids, name], check=True,
                           capture_output=True)
        os.chown(home, user.pw_uid, user.pw_gid)
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chown(run_dir, user.pw_uid, user.pw_gid)
        os.chmod(run_dir, 0o700)
        yield user
    finally:
        for pid in _pids_of_uid(user.pw_uid):  # this module started all of them (pause, server)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in _pids_of_uid(user.pw_uid):
            wait_pid_gone(pid, 10)
        subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def rootless_base():
    """A directory every user can read and search, for the installs and the users' stores."""
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="pcm-rl-", dir="/tmp")
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def _private_podman(base, name, user, conmon):
    d = os.path.join(base, name)
    os.makedirs(d)
    os.chown(d, user.pw_uid, user.pw_gid)
    return Podman(base=d, default_conmon=conmon, user=user).setup()


@pytest.fixture(scope="module")
def rootless_podmans(rootless_base, rootless_user):
    """mode -> (podman, conmon, mode), made on first use: the user's private Podman, pointed at
    an install of that mode."""
    made = {}

    def get(mode):
        if mode not in made:
            conmon = install_podman_conmon(os.path.join(rootless_base, mode), server_mode=mode == "server")
            made[mode] = (_private_podman(rootless_base, f"pd-{mode}", rootless_user, conmon), conmon, mode)
        return made[mode]

    yield get
    for podman, _conmon, _mode in made.values():
        podman.teardown()


@pytest.fixture(params=["classic", "server"])
def rootless(request, rootless_podmans):
    return rootless_podmans(request.param)


@pytest.fixture
def rootless_server(rootless_podmans):
    return rootless_podmans("server")


def _user_ns(pid):
    return os.stat(f"/proc/{pid}/ns/user").st_ino


def _servers_of(conmon, user):
    """Pids of the servers of this install that run as ``user``."""
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(conmon))), "lib", "pyconmon")
    return [p for p in server_pids(lib) if _proc_uid(p) == user.pw_uid]


def _server_of(conmon, user, monitor):
    """The one server of this install that runs as ``user`` in ``monitor``'s user namespace."""
    mine = [p for p in _servers_of(conmon, user) if _user_ns(p) == _user_ns(monitor)]
    assert len(mine) == 1, mine
    return mine[0]


def _classic_of(conmon):
    """The classic monitor of the install whose entry is ``conmon``."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(conmon))), "lib", "pyconmon", "classic",
                        "conmon")


def _socket_of(server):
    with open(f"/proc/{server}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return argv[argv.index(b"--socket") + 1].decode()


def test_run_rm_echo(rootless):
    podman, conmon, _mode = rootless
    r = podman("run", "--rm", "busybox", "echo", "hi", conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr


def test_exit_code(rootless):
    podman, conmon, _mode = rootless
    r = podman("run", "--rm", "busybox", "sh", "-c", "exit 42", conmon=conmon, timeout=SLOW)
    assert r.returncode == 42, r.stderr


def test_detached_logs_exec_stop(rootless, rootless_user):
    podman, conmon, mode = rootless
    cid = run_d(podman, conmon, "busybox", "sh", "-c", TRAP)
    try:
        monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
        # The monitor runs as the user, in the user's namespace, and is the entry itself: in server
        # mode the stub, served (a fallback would have exec'd lib/pyconmon/classic/conmon).
        assert _proc_uid(monitor) == rootless_user.pw_uid
        assert _user_ns(monitor) != _user_ns(os.getpid())
        assert os.readlink(f"/proc/{monitor}/exe") == os.path.realpath(conmon)
        if mode == "server":
            server = _server_of(conmon, rootless_user, monitor)  # started by the user's stub, in its namespace
            sock = _socket_of(server)
            run_dir = f"/run/user/{rootless_user.pw_uid}/pyconmon"
            assert os.path.dirname(sock) == run_dir
            st = os.stat(run_dir)
            assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (rootless_user.pw_uid, 0o700)
        poll_until(lambda: podman("logs", cid, conmon=conmon).stdout == "started\n", SLOW,
                   what="the first line logged")
        r = podman("exec", cid, "sh", "-c", "echo in exec; echo exec err >&2; exit 3", conmon=conmon,
                   timeout=SLOW)
        assert (r.returncode, r.stdout, r.stderr) == (3, "in exec\n", "exec err\n")
        r = podman("stop", "-t", "10", cid, conmon=conmon, timeout=SLOW)
        assert r.returncode == 0, r.stderr
        assert exit_code(podman, cid) == "exited 7"
        r = podman("logs", cid, conmon=conmon, timeout=SLOW)
        assert (r.returncode, r.stdout) == (0, "started\nbye\n"), r.stderr
        wait_pid_gone(monitor, 10)
    finally:
        podman.rm(cid)


def test_users_server_turns_real_root_away(rootless_server, rootless_user):
    """Real root is no uid of the user's namespace (SO_PEERCRED gives the overflow uid): the
    server closes the connection without a word, before it even reads the hello."""
    podman, conmon, _mode = rootless_server
    cid = run_d(podman, conmon, "busybox", "sleep", "600")  # a container keeps the server up
    try:
        server = _server_of(conmon, rootless_user, int(podman.inspect(cid, "{{.State.ConmonPid}}")))
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
            s.settimeout(SLOW)
            s.connect(_socket_of(server))
            hello = [b"key", b"/", b"1", b"conmon", b"PATH=/usr/bin"]
            try:
                protocol.send(s, protocol.HELLO, hello)
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed already
            try:
                answer = s.recv(4096)
            except ConnectionResetError:  # closed with our hello unread
                answer = b""
            assert answer == b""  # not 'C' (the namespace check): the uid check closed it
        assert os.path.exists(f"/proc/{server}")  # and it goes on serving
        r = podman("exec", cid, "echo", "still served", conmon=conmon, timeout=SLOW)
        assert (r.returncode, r.stdout) == (0, "still served\n"), r.stderr
    finally:
        podman.rm(cid)


def test_each_user_namespace_gets_its_own_server(rootless_server, rootless_base, rootless_user):
    """Another Podman of the same user (another --tmpdir: another pause process, so another user
    namespace) gets a server of its own, beside the first, and both serve."""
    podman, conmon, _mode = rootless_server
    other = _private_podman(rootless_base, "pd-other", rootless_user, conmon)
    cids = []
    try:
        cids.append((podman, run_d(podman, conmon, "busybox", "sleep", "600")))
        cids.append((other, run_d(other, conmon, "busybox", "sleep", "600")))
        monitors = [int(p.inspect(c, "{{.State.ConmonPid}}")) for p, c in cids]
        assert _user_ns(monitors[0]) != _user_ns(monitors[1])
        assert all(os.readlink(f"/proc/{m}/exe") == os.path.realpath(conmon) for m in monitors)  # both served
        servers = _servers_of(conmon, rootless_user)
        assert sorted(_user_ns(s) for s in servers) == sorted(_user_ns(m) for m in monitors)
        for p, c in cids:
            r = p("exec", c, "echo", "ok", conmon=conmon, timeout=SLOW)
            assert (r.returncode, r.stdout) == (0, "ok\n"), r.stderr
    finally:
        for p, c in cids:
            p.rm(c)
        other.teardown()


def test_rootless_env_is_what_podman_hands_conmon(rootless, rootless_user):
    """The premise of the socket location: rootless Podman gives conmon XDG_RUNTIME_DIR."""
    podman, conmon, _mode = rootless
    cid = run_d(podman, conmon, "busybox", "sleep", "600")
    try:
        monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
        with open(f"/proc/{monitor}/environ", "rb") as f:
            env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
        assert env[b"XDG_RUNTIME_DIR"].decode() == rootless_env(rootless_user)["XDG_RUNTIME_DIR"]
    finally:
        podman.rm(cid)


def test_stdin_through_the_attach_socket(rootless):
    """``run -i``: Podman writes stdin through the monitor's attach socket (in the user's runroot)."""
    podman, conmon, _mode = rootless
    r = podman("run", "--rm", "-i", "busybox", "sh", "-c", "cat; echo done >&2", conmon=conmon,
               input="line one\nline two\n", timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (0, "line one\nline two\n", "done\n")


def test_server_killed_the_users_classic_monitor_takes_over(rootless_server, rootless_user):
    """No shared fate, rootless too: the user's server is killed under a running container; its stub
    execs the classic monitor, which goes on logging, and ``stop`` still gets the exit code."""
    podman, conmon, _mode = rootless_server
    ticker = "trap 'echo bye; exit 7' TERM; i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.1; done"
    cid = run_d(podman, conmon, "busybox", "sh", "-c", ticker)
    try:
        monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
        poll_until(lambda: "tick 1\n" in podman("logs", cid, conmon=conmon).stdout, SLOW, what="ticks logged")
        os.kill(_server_of(conmon, rootless_user, monitor), signal.SIGKILL)
        classic = _classic_of(conmon)
        poll_until(lambda: os.readlink(f"/proc/{monitor}/exe") == classic, SLOW, what="the classic takeover")
        before = podman("logs", cid, conmon=conmon).stdout.count("tick")
        poll_until(lambda: podman("logs", cid, conmon=conmon).stdout.count("tick") >= before + 3, SLOW,
                   what="ticks logged after the takeover")
        r = podman("stop", "-t", "10", cid, conmon=conmon, timeout=SLOW)
        assert r.returncode == 0, r.stderr
        assert exit_code(podman, cid) == "exited 7"
        out = podman("logs", cid, conmon=conmon).stdout.splitlines()
        assert out[-1] == "bye"
        ticks = [int(line.split()[1]) for line in out[:-1]]
        # In order, none twice; at most the line in flight at the kill is lost (README: what the
        # server had read and not yet written).
        assert ticks == sorted(set(ticks)) and ticks[0] == 0
        assert len(set(range(ticks[-1] + 1)) - set(ticks)) <= 1, ticks
    finally:
        podman.rm(cid)


def test_journald_containers_run_classic(rootless, rootless_user, journal):
    """README: a rootless server may not send entries as the stub (naming another pid needs
    CAP_SYS_ADMIN over the host's pid namespace, which uid 0 of a user namespace lacks), so
    a journald container runs classic, in the stub's process; its entries come from there."""
    podman, conmon, mode = rootless
    cid = run_d(podman, conmon, "--log-driver", "journald", "busybox", "sh", "-c", TRAP)
    try:
        monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
        expected = os.path.realpath(_classic_of(conmon) if mode == "server" else conmon)
        assert os.readlink(f"/proc/{monitor}/exe") == expected  # server mode: the stub fell back
        entries = journal_entries({"CONTAINER_ID_FULL": cid})
        assert [e["MESSAGE"] for e in entries] == [b"started\n"]
        assert entries[0]["_PID"] == str(monitor).encode()
        assert entries[0]["_UID"] == str(rootless_user.pw_uid).encode()
        r = podman("stop", "-t", "10", cid, conmon=conmon, timeout=SLOW)
        assert r.returncode == 0, r.stderr
        assert exit_code(podman, cid) == "exited 7"
    finally:
        podman.rm(cid)
