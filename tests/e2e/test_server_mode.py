"""Server mode end to end: the static stub in front of the shared Python server, with real runc.

The monitor is installed as ``make podman ENTRY=stub PYCONMON_MODE_FILE=<file
saying "server">`` (tests/support/installed.py), so the ``conmon`` that the
harness starts (as Podman and CRI-O do) is the stub, and the classic monitor
of the same install is ``lib/pyconmon/classic/conmon``.  The rest of the e2e
suite runs in server mode with ``PYCONMON_TEST_MONITORS=<that stub>``.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import threading

import pytest

from pyconmon import protocol
from support.harness import (
    poll_until,
    private_dirty_kb,
    read_k8s_log,
    read_pidfile,
    runtime_kill,
    server_pids,
    stat_after_comm,
    write_ctl,
)
from support.installed import install_podman_conmon, server_lib_dir, server_mode_file

LONG = ["sh", "-c", "echo out; echo err >&2; exec sleep 600"]


def servers_of(stub):
    """Pids of the running servers of this install (their command line names its lib dir)."""
    return server_pids(server_lib_dir(stub))


def server_socket(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    return argv[argv.index(b"--socket") + 1].decode()


def proc_text(pid, name):
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read()


def status_fields(pid, names):
    lines = dict(line.split(":", 1) for line in proc_text(pid, "status").decode().splitlines())
    return {n: lines[n].strip() for n in names}


def stat_fields(pid):
    """(ppid, pgrp, session) from /proc/PID/stat."""
    rest = stat_after_comm(pid)
    return int(rest[1]), int(rest[2]), int(rest[3])


def wait_gone(pid, timeout=10):
    poll_until(lambda: not os.path.exists(f"/proc/{pid}") or stat_state(pid) == "Z", timeout, what=f"{pid} gone")


def stat_state(pid):
    try:
        return stat_after_comm(pid)[0]
    except OSError:
        return "gone"


@pytest.mark.parametrize("style", ["podman", "crio"])
def test_container_in_server_mode(testbed, stub, style):
    m = testbed.run(stub, LONG, style=style)
    poll_until(lambda: [r.content for r in m.log_records()] in ([b"out", b"err"], [b"err", b"out"]),
               what="both lines logged")
    # Served: the monitor process is still the stub itself (classic would have exec'd lib/pyconmon/classic).
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    servers = servers_of(stub)
    assert len(servers) == 1
    assert stat_fields(servers[0])[2] == servers[0]  # the server leads a session of its own
    assert os.readlink(f"/proc/{servers[0]}/cwd") == "/"  # and keeps no caller's directory busy
    assert [os.readlink(f"/proc/{servers[0]}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3
    assert int(stat_after_comm(m.container_pid)[1]) == m.pid  # the stub is the container's reaper
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137
    m.wait(10)
    assert m.first_status == 0
    assert sorted((r.stream, r.content) for r in m.log_records()) == [("stderr", b"err"), ("stdout", b"out")]


def test_exit_code_and_runtime_failure(testbed, stub):
    m = testbed.run(stub, ["sh", "-c", "exit 7"])
    assert m.wait_exit_file(10) == 7
    bad = testbed.run(stub, ["true"], start=False, extra_args=["-r", "/bin/false"])
    bad.wait(10)
    assert bad.messages[0]["data"] == -1
    assert bad.read_sync(5) is None  # the sync pipe ends: nothing else holds it


def test_identity_matches_classic_field_by_field(testbed, stub, classic):
    """The same caller starts one server-mode and one classic monitor: what callers can see is the same."""
    mons = {"server": testbed.run(stub, LONG), "classic": testbed.run(classic, LONG)}
    seen = {}
    for name, m in mons.items():
        pid = m.pid
        env = dict(x.split(b"=", 1) for x in proc_text(pid, "environ").split(b"\0") if b"=" in x)
        assert env == {k.encode(): v.encode() for k, v in m.env.items()}, name
        assert proc_text(pid, "cmdline").split(b"\0")[:-1] == [a.encode() for a in m.argv], name
        assert [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in (0, 1, 2)] == ["/dev/null"] * 3, name
        ppid, pgrp, sid = stat_fields(pid)
        assert (pgrp, sid) == (pid, pid), name  # setsid(), as C conmon
        assert int(stat_after_comm(m.container_pid)[1]) == pid, name  # the subreaper has the container
        seen[name] = {
            "exe": os.path.basename(os.readlink(f"/proc/{pid}/exe")),
            "comm": proc_text(pid, "comm"),
            "ppid": ppid,
            "cgroup": proc_text(pid, "cgroup"),
            "ns": {ns: os.readlink(f"/proc/{pid}/ns/{ns}") for ns in sorted(os.listdir(f"/proc/{pid}/ns"))},
            "oom_score_adj": proc_text(pid, "oom_score_adj"),
            "limits": proc_text(pid, "limits"),
            "status": status_fields(pid, ["Uid", "Gid", "Groups", "CapEff", "CapBnd", "NoNewPrivs", "Seccomp",
                                          "Cpus_allowed_list"]),
            "env_keys": None,
            "container_oom_score_adj": proc_text(m.container_pid, "oom_score_adj"),
        }
    assert seen["server"]["exe"] == "conmon"
    assert seen["server"] == seen["classic"]
    for m in mons.values():
        runtime_kill(m)
    assert [m.wait_exit_file(10) for m in mons.values()] == [137, 137]
    logs = {name: sorted((r.stream, r.content) for r in m.log_records()) for name, m in mons.items()}
    assert logs["server"] == logs["classic"] == [("stderr", b"err"), ("stdout", b"out")]


def test_podman_exec_and_crio_execsync_in_server_mode(testbed, stub):
    m = testbed.run(stub, ["sleep", "600"])
    e = testbed.exec(stub, m, ["sh", "-c", "echo exec-out; exit 3"], style="podman")  # -e --exec-attach
    assert e.client.read_until_eof(10) == {2: b"exec-out\n"}  # through the server's attach socket
    assert e.wait_exit_file(10) == 3
    # --sync (CRI-O's ExecSync, tests/e2e/test_crio_way.py has the rest): served, no fork
    s = testbed.exec(stub, m, ["sh", "-c", "echo sync-out; exit 4"], style="crio", wait=False)
    poll_until(lambda: any(os.path.realpath(f"/proc/{p}/fd/{fd}") == s.log_path
                           for p in servers_of(stub) for fd in os.listdir(f"/proc/{p}/fd")),
               what="the server to hold the probe's log")
    assert os.readlink(f"/proc/{s.first_pid}/exe") == os.path.realpath(stub)
    s.write_start()
    assert s.wait_first(10) == 4
    assert s.read_sync(10) == {"exit_code": 4}
    assert [r.content for r in read_k8s_log(s.log_path)] == [b"sync-out"]
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137


def test_server_killed_mid_probe_classic_takes_the_probe_over(testbed, stub, classic):
    """The server dies while an ExecSync probe runs: the stub (the very process CRI-O waits for)
    waits for the runtime, execs the classic monitor, which adopts the probe with the stub's copies
    of its output pipes; the exit code, the whole log and the monitor's status are as without the kill."""
    m = testbed.run(stub, ["sleep", "600"])
    e = testbed.exec(stub, m, ["sh", "-c", "trap 'echo released; exit 5' USR1; echo ready; "
                                            "while :; do usleep 20000; done"], style="crio", wait=False)
    e.write_start()
    exec_pid = poll_until(lambda: read_pidfile(e.pidfile), what="exec pid file")
    poll_until(lambda: [r.content for r in read_k8s_log(e.log_path)] == [b"ready"], what="ready logged")
    assert os.readlink(f"/proc/{e.first_pid}/exe") == os.path.realpath(stub)
    kill_server(stub)
    poll_until(lambda: os.readlink(f"/proc/{e.first_pid}/exe") == os.path.realpath(classic), what="classic takes over")
    os.kill(exec_pid, signal.SIGUSR1)
    assert e.wait_first(15) == 5, e.describe()
    assert e.read_sync(5) == {"exit_code": 5}, e.describe()
    assert b"".join(e.sync.chunks) == b'{"exit_code": 5}\n'
    assert [(r.stream, r.content) for r in read_k8s_log(e.log_path)] == [("stdout", b"ready"),
                                                                          ("stdout", b"released")]
    assert e.wait_stdio_eof(5)
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137


def test_killed_server_is_replaced_by_the_next_create(testbed, stub):
    first = testbed.run(stub, ["true"])
    assert first.wait_exit_file(10) == 0
    (old,) = servers_of(stub)
    os.kill(old, signal.SIGKILL)
    wait_gone(old)
    m = testbed.run(stub, ["sh", "-c", "echo again"])
    assert m.wait_exit_file(10) == 0
    assert [r.content for r in m.log_records()] == [b"again"]
    assert servers_of(stub) and old not in servers_of(stub)


def test_server_lost_before_the_runtime_classic_takes_over(testbed, stub, classic):
    """The server says yes, then goes away after the start byte: the classic monitor resumes in the same process."""
    first = testbed.run(stub, ["true"])
    assert first.wait_exit_file(10) == 0
    (real,) = servers_of(stub)
    path = server_socket(real)
    os.kill(real, signal.SIGKILL)
    wait_gone(real)
    os.unlink(path)
    fake = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fake.bind(path)
    fake.listen(4)
    got = []

    def serve_once():
        conn, _ = fake.accept()
        with conn:
            got.append(protocol.receive(conn)[0])  # hello
            protocol.send(conn, protocol.OK, [b""])
            packet = protocol.receive(conn)  # started, with the sync pipe
            got.append(packet[0])
            protocol.close_all(packet[2])
        # ... and the connection drops, as when the server is killed

    t = threading.Thread(target=serve_once, daemon=True)
    t.start()
    try:
        m = testbed.run(stub, LONG)
        t.join(10)
        assert got == [protocol.HELLO, protocol.STARTED]
        # The pid file named the stub's monitor process; that very process now runs the classic monitor.
        poll_until(lambda: os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic), what="classic exec")
        assert b"_PYCONMON_RESUMED" not in proc_text(m.container_pid, "environ")
        poll_until(lambda: sorted(r.content for r in m.log_records()) == [b"err", b"out"], what="logs")
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
    finally:
        fake.close()
        try:
            os.unlink(path)
        except OSError:
            pass


@pytest.mark.parametrize("switch", ["environment", "mode file", "unknown word"])
def test_classic_when_switched_off(testbed, stub, classic, switch):
    """PYCONMON_MODE=classic in the caller's environment wins over the mode file; a mode file saying
    "classic" (or a word the stub does not know) puts the stub in classic mode (an exec of the
    classic monitor: same pid)."""
    mode_file = mode_file_of(stub)
    with open(mode_file) as f:
        assert f.read() == "always\n"
    try:
        if switch != "environment":
            with open(mode_file, "w") as f:
                f.write("classic\n" if switch == "mode file" else "  sever  \n")
        m = testbed.run(stub, LONG, env_extra={"PYCONMON_MODE": "classic"} if switch == "environment" else None)
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic)
        assert proc_text(m.pid, "cmdline").split(b"\0")[0] == stub.encode()  # argv[0] as the caller gave it
        # "argv and environment untouched"
        assert proc_text(m.pid, "cmdline").split(b"\0")[:-1] == [a.encode() for a in m.argv]
        env = dict(x.split(b"=", 1) for x in proc_text(m.pid, "environ").split(b"\0") if b"=" in x)
        assert env == {k.encode(): v.encode() for k, v in m.env.items()}
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
    finally:
        with open(mode_file, "w") as f:
            f.write("always\n")


def in_a_service_cgroup():
    """The stub's own test (launcher/stub.c in_service_cgroup): a *.service in /proc/self/cgroup."""
    with open("/proc/self/cgroup") as f:
        return ".service" in f.read()


@pytest.mark.parametrize("mode_file", ["absent", "empty", "server"])
def test_server_mode_is_the_default(testbed, stub, classic, mode_file):
    """README: server mode is the default: no mode file, an empty one or one saying "server" (outside a
    systemd *.service cgroup, where "server" means classic: test_caller_in_a_systemd_service_gets_classic)."""
    path = mode_file_of(stub)
    try:
        if mode_file == "absent":
            os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write("" if mode_file == "empty" else "server\n")
        m = testbed.run(stub, LONG)
        expected = classic if in_a_service_cgroup() else stub
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(expected)
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
    finally:
        with open(path, "w") as f:
            f.write("always\n")


mode_file_of = server_mode_file


def test_signals_are_forwarded_to_the_container(testbed, stub):
    m = testbed.run(stub, ["sh", "-c", 'trap "echo got-TERM; exit 7" TERM; echo ready; while :; do sleep 0.1; done'])
    poll_until(lambda: [r.content for r in m.log_records()] == [b"ready"], what="ready")
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    os.kill(m.pid, signal.SIGTERM)
    assert m.wait_exit_file(10) == 7
    assert [r.content for r in m.log_records()] == [b"ready", b"got-TERM"]
    m.wait(10)


def service_cgroup_dir():
    """A new cgroup named like a systemd service, in a hierarchy this host has (v1 pids, or v2)."""
    for root in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(root, "cgroup.procs")):
            path = os.path.join(root, f"pcm-test-{os.getpid()}.service")
            try:
                os.mkdir(path)
            except OSError as err:
                pytest.skip(f"cannot make a cgroup here: {err}")
            return path
    pytest.skip("no cgroup hierarchy to make a *.service cgroup in")


def in_a_service(stub, mode, tmp_path):
    """(a new *.service cgroup, a wrapper that joins it and execs ``stub`` with PYCONMON_MODE=``mode``)."""
    cg = service_cgroup_dir()
    wrapper = tmp_path / "in-service"
    wrapper.write_text(f'#!/bin/sh\necho $$ > {cg}/cgroup.procs && PYCONMON_MODE={mode} exec {stub} "$@"\n')
    wrapper.chmod(0o755)
    return cg, wrapper


@pytest.mark.parametrize("mode", ["server", "always"])
def test_caller_in_a_systemd_service_gets_classic(testbed, stub, classic, tmp_path, mode):
    """Podman inside quadlet/generate-systemd units: the monitor may become MainPID, so classic (ZYGOTE R5),
    unless the mode is "always". A server that a stub in the unit starts leaves the unit's cgroup (else
    the unit would never end): no server runs before, so this stub starts one."""
    cg, wrapper = in_a_service(stub, mode, tmp_path)
    for pid in servers_of(stub):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid)
    m = None
    try:
        m = testbed.run(str(wrapper), LONG)
        expected = classic if mode == "server" else stub
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(expected)
        assert f"{os.path.basename(cg)}\n".encode() in proc_text(m.pid, "cgroup")
        if mode == "always":
            (server,) = servers_of(stub)
            assert f"{os.path.basename(cg)}\n".encode() not in proc_text(server, "cgroup")
            assert b"/pyconmon-server\n" in proc_text(server, "cgroup")  # README: "beside it"
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
        m.wait(10)
    finally:
        if m is not None:
            m.close()  # reaped and the container deleted: nothing of it is left in the cgroup
        poll_until(lambda: _rmdir(cg), 10, what=f"{cg} empty")


def test_crio_execsync_from_a_systemd_service_is_served(testbed, stub, tmp_path):
    """CRI-O in crio.service: its ExecSync monitors are never a unit's MainPID, so the probe is served
    in mode "server" too (ZYGOTE R5), while a Podman caller there gets classic (the test above)."""
    m = testbed.run(stub, ["sleep", "600"])
    cg, wrapper = in_a_service(stub, "server", tmp_path)
    e = None
    try:
        e = testbed.exec(str(wrapper), m, ["sh", "-c", "trap 'echo released; exit 6' USR1; echo ready; "
                                                       "while :; do usleep 20000; done"], style="crio", wait=False)
        e.write_start()
        exec_pid = poll_until(lambda: read_pidfile(e.pidfile), what="exec pid file")
        assert os.readlink(f"/proc/{e.first_pid}/exe") == os.path.realpath(stub)  # classic would be exec'd by now
        assert f"{os.path.basename(cg)}\n".encode() in proc_text(e.first_pid, "cgroup")
        poll_until(lambda: [r.content for r in read_k8s_log(e.log_path)] == [b"ready"], what="ready logged")
        os.kill(exec_pid, signal.SIGUSR1)
        assert e.wait_first(10) == 6
        assert e.read_sync(5) == {"exit_code": 6}
        assert [r.content for r in read_k8s_log(e.log_path)] == [b"ready", b"released"]
    finally:
        if e is not None:
            e.close()
        poll_until(lambda: _rmdir(cg), 10, what=f"{cg} empty")
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137


def _rmdir(path):
    try:
        os.rmdir(path)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# no shared fate: the server dies, the stubs' classic monitors take over (takeover.py)

FLOOD = 'trap : USR1; seq 1 50000; sleep 1000000 & wait $!; seq 50001 {last}; echo end'


def kill_server(stub):
    (server,) = servers_of(stub)
    os.kill(server, signal.SIGKILL)
    wait_gone(server)


def logged_numbers(m):
    """The numbered lines in the log, in order (partial records joined), and whether `end` came."""
    text = b"".join(r.content + (b"\n" if r.tag == "F" else b"") for r in m.log_records())
    lines = text.split(b"\n")
    return [int(x) for x in lines if x.isdigit()], b"end" in lines


@pytest.mark.parametrize("when", ["idle", "flooding"])
def test_server_killed_containers_keep_logging(testbed, stub, classic, when):
    """SIGKILL to the server while 10 containers run (issue 11): no EPIPE, logging goes on, exit files
    written.

    Killed while they are idle, nothing is lost; killed during a flood, at most what the server
    had read and not yet written (one gap in the numbers)."""
    last = 100000 if when == "idle" else 400000
    ms = [testbed.run(stub, ["sh", "-c", FLOOD.format(last=last)]) for _ in range(10)]
    for m in ms:
        poll_until(lambda m=m: logged_numbers(m)[0][-1:] == [50000], 30, what="the first half logged")
    if when == "idle":
        kill_server(stub)
    for m in ms:
        runtime_kill(m, "USR1")
    if when == "flooding":
        kill_server(stub)
    for m in ms:
        assert m.wait_exit_file(60) == 0  # seq would have died of SIGPIPE (141) on EPIPE
        m.wait(10)
        numbers, ended = logged_numbers(m)
        assert ended
        if when == "idle":
            assert numbers == list(range(1, last + 1))
            continue
        # The chunk in flight when the server died is lost (one range of numbers), and the line it
        # cut can leave one fragment, alone or joined to the rest of a later line ("12326" + "478").
        head = next((k for k, n in enumerate(numbers) if n != k + 1), len(numbers))  # 1..head intact
        tail = len(numbers) - next((k for k, n in enumerate(reversed(numbers)) if n != last - k), len(numbers))
        assert head > 0 and tail < len(numbers), numbers[:3] + numbers[-3:]  # starts at 1, ends at last
        assert tail - head <= 1, numbers[max(0, head - 2):tail + 2]  # between them: the fragment at most
        assert head == len(numbers) or numbers[tail] > head, (head, numbers[tail])  # nothing logged twice


def test_server_killed_while_the_runtime_runs(testbed, stub, classic, tmp_path):
    """The server dies mid-create: the stub waits for the runtime, the classic monitor reads the
    pid file, sends the pid and monitors the container to its end."""
    marker = tmp_path / "runtime-started"
    slow = tmp_path / "slow-runtime"
    slow.write_text(f'#!/bin/sh\ntouch {marker}\nsleep 1\nexec {testbed.runtime} "$@"\n')
    slow.chmod(0o755)
    testbed.run(stub, ["true"])  # a server to kill
    m = testbed.run(stub, ["sh", "-c", "echo created-while-the-server-died"], start=False, read_sync=False,
                    extra_args=["-r", str(slow)])
    poll_until(marker.exists, 10, what="the runtime to start")
    kill_server(stub)
    msg = m.read_sync(15)
    assert msg and msg["data"] > 0, m.describe()
    m.container_pid = msg["data"]
    poll_until(lambda: os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic), what="classic takes over")
    m.start_container()
    assert m.wait_exit_file(10) == 0
    assert [r.content for r in m.log_records()] == [b"created-while-the-server-died"]


def test_parallel_creates_share_one_server(testbed, stub):
    """200 containers created at once (issue 11): one server serves them all; every exit file and log is right."""
    import concurrent.futures
    n = 200
    with concurrent.futures.ThreadPoolExecutor(max_workers=n) as pool:
        ms = list(pool.map(lambda i: testbed.run(stub, ["sh", "-c", f"echo container-{i}; exec sleep 600"],
                                                 deadline=60), range(n)))
    served = {os.readlink(f"/proc/{m.pid}/exe") for m in ms}
    assert served == {os.path.realpath(stub)}  # all in server mode (none fell back to classic)
    assert len(servers_of(stub)) == 1
    for m in ms:
        runtime_kill(m)
    for i, m in enumerate(ms):
        assert m.wait_exit_file(60) == 137
        assert [r.content for r in m.log_records()] == [f"container-{i}".encode()]


def test_upgrade_while_monitors_run(testbed, tmp_path_factory):
    """`make install` of another version over a running one: the old server keeps its containers
    (its modules all loaded), new containers get a new server (the socket is named by the install)."""
    import shutil
    import subprocess

    from support import REPO
    base = tmp_path_factory.mktemp("upgrade")
    old = install_podman_conmon(base, server_mode=True)
    m_old = testbed.run(old, LONG)
    (old_server,) = servers_of(old)
    tree = base / "tree"
    tree.mkdir()
    shutil.copy2(os.path.join(REPO, "Makefile"), tree / "Makefile")
    for part in ("launcher", "src", "packaging"):
        shutil.copytree(os.path.join(REPO, part), tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    with open(tree / "src" / "pyconmon" / "__init__.py", "a") as f:
        f.write("# the next version\n")
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(old)))
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    r = subprocess.run(["make", "-s", "-C", str(tree), f"BUILDDIR={base / 'build2'}", f"PREFIX={prefix}",
                        "ENTRY=stub", f"PYCONMON_MODE_FILE={base / 'mode'}", "podman"],
                       env=env, capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr
    m_new = testbed.run(old, LONG)  # the same path, the new binary
    servers = servers_of(old)
    assert old_server in servers and len(servers) == 2
    assert os.readlink(f"/proc/{m_new.pid}/exe") == os.path.realpath(old)
    for m in (m_old, m_new):
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
        assert sorted(r.content for r in m.log_records()) == [b"err", b"out"]


def test_a_stub_has_less_private_memory_than_c_conmon(testbed, stub):
    """Issue 11's per-process goal: each stub's Private_Dirty <= 512 KB, and below C conmon's."""
    from support import C_CONMON
    if not os.access(C_CONMON, os.X_OK):
        pytest.skip("Debian's conmon is not installed")
    ms = {"stub": testbed.run(stub, LONG), "conmon": testbed.run(C_CONMON, LONG)}
    for m in ms.values():
        poll_until(lambda m=m: len(m.log_records()) == 2, what="both lines logged")  # idle from here on
    assert os.readlink(f"/proc/{ms['stub'].pid}/exe") == os.path.realpath(stub)
    # The install was just written: until written back, its page-cache pages count as dirty,
    # and as private while only one process maps them.
    os.sync()
    dirty = {name: private_dirty_kb(m.pid) for name, m in ms.items()}
    assert dirty["stub"] <= 512 and dirty["stub"] < dirty["conmon"], dirty
    for m in ms.values():
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137


# --------------------------------------------------------------------------
# README sentences of the server-mode section that no test above asserts


@pytest.mark.parametrize("sig", ["INT", "QUIT"])
def test_sigint_and_sigquit_are_forwarded_too(testbed, stub, sig):
    """README: the stub "forwards SIGTERM/SIGINT/SIGQUIT" (SIGTERM: the test above)."""
    m = testbed.run(stub, ["sh", "-c", f'trap "echo got-{sig}; exit 7" {sig}; echo ready; '
                                       'while :; do sleep 0.1; done'])
    poll_until(lambda: [r.content for r in m.log_records()] == [b"ready"], what="ready")
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    os.kill(m.pid, getattr(signal, f"SIG{sig}"))
    assert m.wait_exit_file(10) == 7
    assert [r.content for r in m.log_records()] == [b"ready", f"got-{sig}".encode()]
    m.wait(10)


def test_a_signal_before_the_server_names_the_container_waits_for_it(testbed, stub, tmp_path):
    """A signal the stub gets after the runtime's end but before the server has told it the container's
    pid (here the server is stopped in between) reaches the container once the server does, as in a
    classic monitor (where nothing can come in between); it is not sent to the runtime's old pid."""
    busy = testbed.run(stub, ["sleep", "600"])  # keeps a server up, to be stopped
    (server,) = servers_of(stub)
    marker = tmp_path / "runtime-done"
    runtime = tmp_path / "runtime"
    runtime.write_text(f'#!/bin/sh\n{testbed.runtime} "$@"; rc=$?\n'
                       f'case " $* " in *" create "*) kill -STOP {server}; echo $$ > {marker}.tmp; '
                       f'mv {marker}.tmp {marker};; esac\nexit $rc\n')
    runtime.chmod(0o755)
    traps = "trap 'echo got-TERM; exit 42' TERM; echo ready; while :; do usleep 20000; done"
    try:
        m = testbed.run(stub, ["sh", "-c", traps], start=False, read_sync=False, extra_args=["-r", str(runtime)])
        poll_until(marker.exists, what="the runtime's create done")
        runtime_pid = int(marker.read_text())
        poll_until(lambda: not os.path.exists(f"/proc/{runtime_pid}"), what="the stub reaps the runtime")
        m.start_container()
        with open(m.pidfile) as f:
            container = int(f.read())
        # The shell's own trap: before its exec, runc init (Go) catches TERM too.
        poll_until(lambda: status_fields(container, ["Name"])["Name"] == "sh" and
                   int(status_fields(container, ["SigCgt"])["SigCgt"], 16) & (1 << (signal.SIGTERM - 1)),
                   what="the container's TERM trap")
        os.kill(m.pid, signal.SIGTERM)
    finally:
        os.kill(server, signal.SIGCONT)
    msg = m.read_sync(10)
    assert msg and msg["data"] == container, m.describe()
    assert m.wait_exit_file(10) == 42, m.describe()
    assert [r.content for r in m.log_records()] == [b"ready", b"got-TERM"]
    runtime_kill(busy)
    assert busy.wait_exit_file(10) == 137


def test_the_server_socket_is_in_a_0700_directory_of_its_uid(testbed, stub):
    """README: "over a unix socket in a 0700 directory of its uid (`/run/pyconmon/` for root)"."""
    m = testbed.run(stub, LONG)
    (server,) = servers_of(stub)
    path = server_socket(server)
    st = os.stat(os.path.dirname(path))
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.getuid())
    if os.getuid() == 0:
        assert os.path.dirname(path) == "/run/pyconmon"
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137


TTY_ECHO = 'echo ready; while read x; do echo "got $x $(stty size)"; [ "$x" = quit ] && exit 3; done'
STDIN_ECHO = 'echo ready; while read x; do echo "got $x"; done; echo stdin-ended; exit 5'


def logged_text(m):
    return b"".join(r.content + (b"\n" if r.tag == "F" else b"") for r in m.log_records())


def recording_exit_command(tmp_path):
    """An exit command that writes its arguments to ``<tmp_path>/exit.seen``; (argv, that path)."""
    seen = tmp_path / "exit.seen"
    script = tmp_path / "exit-command"
    script.write_text(f'#!/bin/sh\necho "$@" > {seen}.tmp && mv {seen}.tmp {seen}\n')
    script.chmod(0o755)
    return [str(script), "cleanup", "the-container"], seen


def pty_size(pid):
    """(rows, cols) of the terminal that is ``pid``'s stdin."""
    import fcntl
    import struct
    import termios
    fd = os.open(f"/proc/{pid}/fd/0", os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        return struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]
    finally:
        os.close(fd)


def kill_server_and_await_classic(stub, classic, m):
    kill_server(stub)
    poll_until(lambda: os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic), 15,
               what="the classic monitor takes the container over in the stub's process")


@pytest.mark.parametrize("style", ["podman", "crio"])
@pytest.mark.parametrize("attached", [False, True], ids=["no-client", "client-attached"])
def test_a_tty_container_is_adopted(testbed, stub, classic, tmp_path, style, attached):
    """README: `-t` containers are adopted too: the stub keeps the pty master (the server hands it a
    copy as soon as the runtime sends it), the attach listener and the ctl/winsz FIFOs. After SIGKILL
    of the server, in the very same stub process: a client connecting at the same socket path (at
    once, before the classic monitor is even running: it waits in the listener's backlog) gets the
    output and writes the container's stdin, a resize written to ctl (as at once) is what `stty size`
    says in the container, output after the kill is logged, and the exit file and the exit command
    come when the container ends. A client attached at the kill reads EOF: its connection ends."""
    exit_command, seen = recording_exit_command(tmp_path)
    m = testbed.run(stub, ["sh", "-c", TTY_ECHO], terminal=True, style=style,
                    exit_command=exit_command if style == "podman" else None)  # CRI-O passes none
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    poll_until(lambda: b"ready" in logged_text(m), what="ready logged")
    before = m.attach() if attached else None
    if before is not None:
        before.send(b"before\n")
        assert b"got before" in before.read_until(lambda out: b"got before" in out.get(2, b""), 10).get(2, b"")
    files = {name: os.stat(os.path.join(m.ctl_dir, name)).st_ino for name in ("attach", "ctl", "winsz")}
    os.kill(m.pid, signal.SIGSTOP)  # the stub cannot exec the classic monitor before we are done: the gap
    try:
        kill_server(stub)
        client = m.attach()  # the listener is the stub's copy: the client waits in its backlog
        m.write_ctl("1 12 34\n")  # the FIFO has a reader (the stub's copy): the line waits in it
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    finally:
        os.kill(m.pid, signal.SIGCONT)
    poll_until(lambda: os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic), 15,
               what="the classic monitor takes the container over in the stub's process")
    assert {name: os.stat(os.path.join(m.ctl_dir, name)).st_ino for name in files} == files  # the same files
    assert stat_state(m.container_pid) not in ("Z", "gone")
    if before is not None:
        before.read_until_eof(10)
        assert before.eof  # what a client attached at the kill sees: the end of its connection
    client.send(b"after\n")
    out = client.read_until(lambda out: b"got after 12 34" in out.get(2, b""), 10)
    assert b"got after 12 34" in out.get(2, b""), out
    poll_until(lambda: b"got after 12 34" in logged_text(m), 10, what="output after the kill logged")
    write_ctl(m.ctl_dir, "20 60\n", name="winsz")
    poll_until(lambda: pty_size(m.container_pid) == (20, 60), 10, what="the resize through winsz")
    client.send(b"quit\n")
    assert m.wait_exit_file(10) == 3
    assert b"got quit 20 60" in logged_text(m)
    if style == "podman":
        poll_until(seen.exists, 10, what="the exit command")
        assert seen.read_text() == "cleanup the-container\n"
    client.read_until_eof(10)
    assert client.eof
    m.wait(10)


@pytest.mark.parametrize("style", ["podman", "crio"])
def test_an_interactive_container_is_adopted_with_its_stdin(testbed, stub, classic, style):
    """README: with `-i` the stub keeps the stdin pipe's write end too. After the server's death a
    new attach client's input reaches the container, a log reopen through ctl works, and the
    client's end of input closes the container's stdin (stdin once, as before the kill)."""
    m = testbed.run(stub, ["sh", "-c", STDIN_ECHO], stdin=True, style=style)
    poll_until(lambda: b"ready" in logged_text(m), what="ready logged")
    kill_server_and_await_classic(stub, classic, m)
    client = m.attach()
    client.send(b"hello\n")
    assert client.read_until(lambda out: b"got hello" in out.get(2, b""), 10).get(2, b"") == b"got hello\n"
    os.rename(m.log_path, m.log_path + ".old")
    m.write_ctl("2 0 0\n")
    poll_until(lambda: os.path.exists(m.log_path), 10, what="the log reopened at its path")
    client.send(b"after-reopen\n")
    client.shutdown_write()
    assert m.wait_exit_file(10) == 5
    assert [r.content for r in m.log_records()] == [b"got after-reopen", b"stdin-ended"]
    with open(m.log_path + ".old", "rb") as f:
        old = f.read()
    assert b"ready" in old and b"got hello" in old
    m.wait(10)


def test_stdin_end_reaches_the_container_although_the_stub_keeps_a_copy(testbed, stub):
    """The stub's copy of the stdin pipe (for a takeover) goes when the server closes its own: a
    client's end of input is the container's EOF in server mode (protocol ``D``)."""
    m = testbed.run(stub, ["sh", "-c", STDIN_ECHO], stdin=True)
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)
    client = m.attach()
    client.send(b"one\n")
    client.shutdown_write()
    assert m.wait_exit_file(10) == 5
    assert [r.content for r in m.log_records()] == [b"ready", b"got one", b"stdin-ended"]


def test_every_install_has_both_programs(stub, installed_conmon):
    """README: "Every install puts both programs under `$(PREFIX)/lib/pyconmon/` (`classic/conmon`,
    `stub/conmon`); `ENTRY=stub` makes the stub the `conmon` entry"."""
    for entry, kind in ((installed_conmon, "classic"), (stub, "stub")):
        lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(entry))), "lib", "pyconmon")
        programs = {name: open(os.path.join(lib, name, "conmon"), "rb").read() for name in ("classic", "stub")}
        assert programs["classic"] != programs["stub"]
        with open(entry, "rb") as f:
            assert f.read() == programs[kind], (entry, kind)


def test_the_default_mode_file_is_under_sysconfdir(testbed, installed_conmon):
    """README: `echo classic > /usr/local/etc/pyconmon/mode`, i.e. `$(SYSCONFDIR)/pyconmon/mode`
    (SYSCONFDIR: `$(PREFIX)/etc`) when the install names no other. An install made without
    PYCONMON_MODE_FILE: its stub serves (outside a systemd service), then is classic once that file
    says so."""
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(installed_conmon)))
    stub = os.path.join(prefix, "lib", "pyconmon", "stub", "conmon")
    classic = os.path.join(prefix, "lib", "pyconmon", "classic", "conmon")
    mode = os.path.join(prefix, "etc", "pyconmon", "mode")
    assert not os.path.exists(mode)
    m = testbed.run(stub, LONG)
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic if in_a_service_cgroup() else stub)
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137
    os.makedirs(os.path.dirname(mode), exist_ok=True)
    try:
        with open(mode, "w") as f:
            f.write("classic\n")
        m = testbed.run(stub, LONG)
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic)
        runtime_kill(m)
        assert m.wait_exit_file(10) == 137
    finally:
        os.unlink(mode)


@pytest.mark.one_runtime
def test_a_slow_fsync_at_one_exit_does_not_delay_the_other_containers(testbed, stub):
    """README: "a container's exit blocks no other: its log is fsynced in a worker thread (the exit
    file is written after it) ...". Two containers on one server, the server's fsync delayed 3 s
    (strace, every thread): the first container's exit file comes only after its slow fsync, and
    meanwhile the second's output is read on (its records, stamped when read, show no gap of
    even 1 s although it writes every 0.1 s)."""
    import shutil
    import subprocess
    import time

    from support.harness import parse_k8s_timestamp
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (see .ci/run)")
    quiet = testbed.run(stub, ["sleep", "600"])
    ticker = testbed.run(stub, ["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i; usleep 100000; done"])
    (server,) = servers_of(stub)
    tracer = subprocess.Popen([strace, "-f", "-qq", "-o", "/dev/null", "-p", str(server), "-e", "trace=fsync",
                               "-e", "inject=fsync:delay_enter=3000000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        poll_until(lambda: "TracerPid:\t0\n" not in proc_text(server, "status").decode(), what="strace to attach")
        poll_until(lambda: len(ticker.log_records()) >= 5, what="the ticker to log")
        killed = time.monotonic()
        runtime_kill(quiet)
        assert quiet.wait_exit_file(15) == 137
        assert time.monotonic() - killed > 2.5  # the exit file waited for the (slow) fsync
        count = len(ticker.log_records())
        poll_until(lambda: len(ticker.log_records()) >= count + 5, what="the ticker to go on")
    finally:
        tracer.terminate()
        tracer.wait(10)
    runtime_kill(ticker)
    assert ticker.wait_exit_file(10) == 137
    stamps = [parse_k8s_timestamp(r.timestamp) for r in ticker.log_records()]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1.0, gaps


def test_runtime_and_exit_command_run_in_the_callers_world(testbed, stub, tmp_path):
    """README: the stub "forks and execs the runtime and the exit command when the server asks (so
    they run in the caller's cgroups, namespaces and environment)". Both record their parent, cgroup,
    namespaces and environment: the parent is the stub, the rest is the caller's (this test's), and
    the caller's own variable reached them (the server, started once, never saw it)."""
    import json

    record = ("#!/bin/sh\n"
              "{ echo \"$PPID\"; cat /proc/self/cgroup | tr '\\n' ' '; echo; "
              "for n in mnt net pid ipc uts user cgroup; do readlink /proc/self/ns/$n; done | tr '\\n' ' '; echo; "
              "echo \"$PCM_CALLER_MARK\"; } > {out}\n")
    runtime = tmp_path / "runtime"
    runtime.write_text(record.replace("{out}", f"{tmp_path}/runtime-$(echo \" $* \" | grep -q ' create ' && "
                                      "echo create || echo other).seen") + f'exec {testbed.runtime} "$@"\n')
    exit_command = tmp_path / "exit-command"
    exit_command.write_text(record.replace("{out}", f"{tmp_path}/exit.seen"))
    for script in (runtime, exit_command):
        script.chmod(0o755)
    testbed.run(stub, ["true"]).wait_exit_file(10)  # a server started before this caller's variable existed
    m = testbed.run(stub, ["true"], extra_args=["-r", str(runtime)], exit_command=[str(exit_command)],
                    env_extra={"PCM_CALLER_MARK": "from-the-caller"}, start=False)
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub)  # before `true` can end
    m.start_container()
    assert m.wait_exit_file(10) == 0
    done = tmp_path / "exit.seen"
    poll_until(lambda: done.exists() and done.read_text().count("\n") == 4, what="the exit command's record")
    mine = (proc_text(os.getpid(), "cgroup").decode().replace("\n", " "),
            " ".join(os.readlink(f"/proc/self/ns/{n}") for n in ("mnt", "net", "pid", "ipc", "uts", "user", "cgroup")))
    for seen in (tmp_path / "runtime-create.seen", tmp_path / "exit.seen"):
        ppid, cgroup, ns, mark = seen.read_text().split("\n")[:4]
        assert int(ppid) == m.pid, (seen.name, json.dumps(seen.read_text()))
        assert (cgroup, ns.strip(), mark) == (mine[0], mine[1], "from-the-caller"), seen.name


@pytest.mark.parametrize("wrapper, differ", [
    (["setpriv", "--no-new-privs"], ["NoNewPrivs"]),
    (["setpriv", "--bounding-set", "-net_raw"], ["CapPrm", "CapEff", "CapBnd"]),
], ids=["no_new_privs", "bounding_set"])
def test_a_caller_with_other_privileges_gets_classic(testbed, stub, classic, tmp_path, wrapper, differ):
    """ZYGOTE.md R8: the server acts for a caller only with the caller's privileges. A caller that
    differs from the running server in no_new_privs or capabilities gets a classic monitor, which
    has the caller's (the fields that differ, and only those), while the server runs on."""
    import shutil
    if shutil.which(wrapper[0]) is None:
        pytest.fail(f"{wrapper[0]} is not installed (see .ci/run)")
    served = testbed.run(stub, LONG)  # the server is up, started by a caller with the test's privileges
    assert os.readlink(f"/proc/{served.pid}/exe") == os.path.realpath(stub)
    (server,) = servers_of(stub)
    caller = tmp_path / "caller"
    caller.write_text(f'#!/bin/sh\nexec {" ".join(wrapper)} {stub} "$@"\n')
    caller.chmod(0o755)
    m = testbed.run(str(caller), LONG)
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic)
    fields = ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"]
    mine, theirs = status_fields(server, fields), status_fields(m.pid, fields)
    assert [f for f in fields if mine[f] != theirs[f]] == differ
    assert servers_of(stub) == [server]
    for mon in (served, m):
        runtime_kill(mon)
    assert [mon.wait_exit_file(10) for mon in (served, m)] == [137, 137]


def nice_of(pid):
    """The nice value of a process's main thread (the one running the server's loop)."""
    return int(stat_after_comm(pid)[16])


def test_the_server_weighs_as_much_as_the_monitors_of_the_floods(testbed, stub):
    """README: while containers flood, the server lowers its nice so that its CPU weight is about
    that of one monitor per flooding stream (cpuweight.py), and returns to its own when they stop."""
    from pyconmon.cpuweight import boost_for
    quiet = testbed.run(stub, LONG)
    (server,) = servers_of(stub)
    base = nice_of(server)
    flood = ["sh", "-c", "while :; do seq 1 100000; done"]
    floods = [testbed.run(stub, flood, extra_args=["--log-size-max", "4000000"]) for _ in range(4)]
    if os.geteuid() == 0:  # CAP_SYS_NICE: it may go below the nice it started with
        poll_until(lambda: nice_of(server) <= base - boost_for(3), 20, what="the server's nice to drop")
    for m in floods:
        runtime_kill(m)
        assert m.wait_exit_file(30) == 137
    poll_until(lambda: nice_of(server) == base, 10, what="the server's nice back to its own")
    runtime_kill(quiet)
    assert quiet.wait_exit_file(10) == 137
