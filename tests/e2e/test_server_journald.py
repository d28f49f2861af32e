"""The journald log driver served in server mode, against a real systemd-journald.

A root server sends each container's entries with SCM_CREDENTIALS naming
that container's stub (src/pyconmon/served_journald.py), so journald's
trusted fields describe the process the caller knows as conmon, as they
would for a classic monitor in its place.  Read back with ``journalctl -o
json`` (tests/support/journald_service.py).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

import pytest

from support.harness import poll_until, runtime_kill, server_pids, stat_after_comm
from support.journald_service import (
    journal_entries,
    read_entries,
    start_private_journald,
    stop_private_journald,
)

# Both streams, a <N> prefix, a line longer than an entry (partial pieces), an unfinished last line.
SCRIPT = ("echo out1; echo err1 >&2; echo '<2>crit line'; head -c 20000 /dev/zero | tr '\\0' y; echo; "
          "echo err2 >&2; echo ready; printf 'no newline'; exec sleep 600")
PER_RUN = ("CONTAINER_ID_FULL", "CONTAINER_ID")  # each run has a container of its own


def lib_dir(stub):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(stub))), "lib", "pyconmon")


def user_fields(entry):
    """What the monitor put in the entry (journald's own fields start with ``_``)."""
    return {k: v for k, v in entry.items() if not k.startswith("_") and k not in PER_RUN}


def by_stream(entries, stream):
    """The entries of one stream: SCRIPT's stderr lines start with ``err``."""
    return [e for e in entries if e["MESSAGE"].startswith(b"err") == (stream == b"err")]


def run_journald_container(testbed, monitor, journal_dir=None):
    """A container logging SCRIPT to journald: (monitor, /proc facts of its monitor, all its entries)."""
    m = testbed.run(monitor, ["sh", "-c", SCRIPT], log_driver=["journald:"],
                    extra_args=["--log-tag", "tagged", "--log-label", "STAGE=test"], name="jd-same")
    assert m.container_pid, m.describe()
    match = {"CONTAINER_ID_FULL": m.cid}
    journal_entries(match, until=lambda es: any(e.get("MESSAGE") == b"ready\n" for e in es),
                    directory=journal_dir)
    proc = {"pid": str(m.pid), "comm": open(f"/proc/{m.pid}/comm").read().strip(),
            "exe": os.readlink(f"/proc/{m.pid}/exe"),
            "cmdline": " ".join(open(f"/proc/{m.pid}/cmdline").read().split("\0")[:-1])}
    runtime_kill(m)
    assert m.wait_exit_file(20) == 137
    entries = journal_entries(match, until=lambda es: any(e.get("MESSAGE") == b"no newline" for e in es),
                              directory=journal_dir)
    return m, proc, entries


def test_same_entries_as_classic_sent_as_the_stub(testbed, stub, classic, journal):
    """Field by field what the classic monitor logs; the trusted fields name the stub, not the server."""
    _, served_proc, served_entries = run_journald_container(testbed, stub)
    assert served_proc["exe"] == os.path.realpath(stub)  # served: the monitor process stayed the stub
    _, plain_proc, plain_entries = run_journald_container(testbed, classic)
    assert plain_proc["exe"] != os.path.realpath(stub)  # classic: the stub exec'd the Python monitor

    # Per stream (how stdout and stderr interleave depends on when each was read)
    for stream in (b"out", b"err"):
        assert ([user_fields(e) for e in by_stream(served_entries, stream)]
                == [user_fields(e) for e in by_stream(plain_entries, stream)]), stream
    assert [e["MESSAGE"] for e in by_stream(served_entries, b"err")] == [b"err1\n", b"err2\n"]
    assert [e["MESSAGE"] for e in by_stream(served_entries, b"out")][:2] == [b"out1\n", b"crit line\n"]
    assert [e["PRIORITY"] for e in served_entries if e["MESSAGE"] == b"crit line\n"] == [b"2"]
    assert sum(e.get("CONTAINER_PARTIAL_MESSAGE") == b"true" for e in served_entries) == 3  # 2 pieces + the tail
    assert {e["SYSLOG_IDENTIFIER"] for e in served_entries} == {b"tagged"}

    servers = server_pids(lib_dir(stub))
    assert servers
    for e in served_entries:
        assert e["_PID"] == served_proc["pid"].encode()  # the pid the caller knows as conmon's
        assert int(e["_PID"]) not in servers
        assert e["_COMM"] == served_proc["comm"].encode()
        assert e["_EXE"] == served_proc["exe"].encode()
        assert e["_CMDLINE"] == served_proc["cmdline"].encode()
        assert e["_UID"] == b"0"
    for e in plain_entries:
        assert e["_PID"] == plain_proc["pid"].encode()
    # What journald derives from the sender's cgroup is the stub's, as a classic monitor's is its own
    # (on this test host, where no systemd runs, journald records these for neither).
    for name in ("_CGROUP", "_SYSTEMD_UNIT", "_SYSTEMD_SLICE"):
        assert {e.get(name) for e in served_entries} == {e.get(name) for e in plain_entries}, name


def test_server_killed_the_classic_monitor_goes_on_as_the_same_sender(testbed, stub, classic, journal):
    """SIGKILL to the server of an idle journald container: the stub execs the classic monitor, which
    adopts it; every line arrives once, in order, all from the one pid the caller knows as conmon."""
    script = "trap : USR1; seq 1 1000; sleep 1000000 & wait $!; seq 1001 2000; echo end"
    m = testbed.run(stub, ["sh", "-c", script], log_driver=["journald:"])
    match = {"CONTAINER_ID_FULL": m.cid}
    journal_entries(match, until=lambda es: any(e["MESSAGE"] == b"1000\n" for e in es))
    ours = {os.stat("/proc/self/ns/mnt").st_ino}
    (server,) = [p for p in server_pids(lib_dir(stub)) if os.stat(f"/proc/{p}/ns/mnt").st_ino in ours]
    os.kill(server, signal.SIGKILL)
    poll_until(lambda: os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(classic), 15,
               what="the classic monitor takes the container over in the stub's process")
    runtime_kill(m, "USR1")
    assert m.wait_exit_file(30) == 0
    entries = journal_entries(match, until=lambda es: any(e["MESSAGE"] == b"end\n" for e in es))
    assert [e["MESSAGE"] for e in entries] == [b"%d\n" % i for i in range(1, 2001)] + [b"end\n"]
    assert {e["_PID"] for e in entries} == {str(m.pid).encode()}
    assert {e["_EXE"] for e in entries[:1000]} == {os.path.realpath(stub).encode()}  # served, as the stub
    # (later entries' _EXE: journald caches what it read of a pid's /proc for a few seconds)


# --------------------------------------------------------------------------
# a journald that stops reading must not stall the server's other containers


@pytest.fixture
def private_served(testbed, stub, journal):
    """A journald of the test's own, and a wrapper running the stub in its mount namespace.

    A tmpfs on /run/pyconmon there gives the stubs a server of their own in
    that namespace (a peer in another mount namespace would run classic), so
    the server's journal socket is that daemon's; SIGSTOP then stops no one
    else's journald.
    """
    j = start_private_journald(testbed.workdir("journald"))
    os.makedirs("/run/pyconmon", mode=0o700, exist_ok=True)  # the mount point
    subprocess.run(["nsenter", "--mount", "--target", str(j.pid), "mount", "-t", "tmpfs", "-o", "mode=0700",
                    "tmpfs", "/run/pyconmon"], check=True)
    wrapper = os.path.join(testbed.workdir("wrap"), "conmon")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec nsenter --mount --target {j.pid} {shlex.quote(stub)} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    ns = os.stat(f"/proc/{j.pid}/ns/mnt").st_ino
    yield j, wrapper
    os.kill(j.pid, signal.SIGCONT)
    for pid in server_pids(lib_dir(stub)):  # the server started in that namespace (it would idle out)
        try:
            if os.stat(f"/proc/{pid}/ns/mnt").st_ino != ns:
                continue  # another test's server, outside that namespace: not ours to end
            os.kill(pid, signal.SIGTERM)
        except OSError:
            continue
        # gone before other tests of this install count its servers
        poll_until(lambda pid=pid: pid not in server_pids(lib_dir(stub)), 10, what=f"server {pid} gone")
    stop_private_journald(j)


def numbered_script(n):
    """``n`` numbered lines of 100 bytes, then wait for USR1 and say ``last``."""
    flood = f'awk \'BEGIN {{ p = sprintf("%091d", 0); for (i = 1; i <= {n}; i++) printf "%08d %s\\n", i, p }}\''
    return f"trap 'echo last; exit 0' USR1; {flood}; while :; do sleep 0.05; done"


def journal_messages(cid, directory):
    return [e["MESSAGE"] for e in read_entries({"CONTAINER_ID_FULL": cid}, directory)]


@pytest.mark.one_runtime
@pytest.mark.parametrize("stop_s", [1.5, 4.0], ids=["within-the-2s-bound", "past-the-2s-bound"])
def test_a_stopped_journald_stalls_only_its_own_container(testbed, private_served, stop_s):
    """journald SIGSTOPped while a served container floods it: another container of the same
    server (k8s-file) keeps logging; the flood loses nothing within the 2 s bound and, past
    it, loses whole lines only, in order, and logs again once journald is back."""
    j, wrapper = private_served
    n = 30000  # 3 MB: more than the pipe holds, so the flood is held up while journald is stopped
    flood = testbed.run(wrapper, ["sh", "-c", numbered_script(n)], log_driver=["journald:"], name="flood",
                         start=False)
    ticker = testbed.run(wrapper, ["sh", "-c", "i=0; while :; do echo tick $i; i=$((i+1)); sleep 0.05; done"],
                         start=True)
    assert flood.container_pid and ticker.container_pid
    for m in (flood, ticker):
        assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(stub_of_wrapper(wrapper))  # both served
    servers = {pid for pid in server_pids(lib_dir(stub_of_wrapper(wrapper)))
               if os.stat(f"/proc/{pid}/ns/mnt").st_ino == os.stat(f"/proc/{j.pid}/ns/mnt").st_ino}
    assert len(servers) == 1  # one server for both
    poll_until(lambda: len(ticker.log_records()) >= 2, what="ticker logging")
    os.kill(j.pid, signal.SIGSTOP)
    try:
        flood.start_container()
        stopped_at = time.monotonic()
        before = len(ticker.log_records())
        # The stimulus: journald takes nothing for stop_s; meanwhile the other container's log grows.
        poll_until(lambda: len(ticker.log_records()) >= before + 10, timeout=stop_s, what="ticker while stopped")
        time.sleep(max(0.0, stop_s - (time.monotonic() - stopped_at)))
        assert stat_after_comm(j.pid)[0] == "T"  # still stopped
        assert not os.path.exists(flood.exit_file)
    finally:
        os.kill(j.pid, signal.SIGCONT)
    runtime_kill(flood, "USR1")
    assert flood.wait_exit_file(120) == 0, flood.describe()
    got = journal_entries({"CONTAINER_ID_FULL": flood.cid}, timeout=60, directory=j.directory,
                          until=lambda es: any(e["MESSAGE"] == b"last\n" for e in es))
    lines = [e["MESSAGE"] for e in got]
    assert lines[-1] == b"last\n"
    lines = lines[:-1]
    numbers = [int(x[:8]) for x in lines]
    assert lines == [b"%08d %s\n" % (i, b"0" * 91) for i in numbers]  # whole lines
    assert numbers == sorted(set(numbers))  # in order, none twice
    if stop_s < 2:
        assert numbers == list(range(1, n + 1))  # nothing lost
    else:
        assert numbers[:1] == [1] and len(numbers) < n  # queued before the stop; then some dropped
    runtime_kill(ticker)
    assert ticker.wait_exit_file(20) == 137


def stub_of_wrapper(wrapper):
    """The stub a private_served wrapper execs."""
    return shlex.split(open(wrapper).read().splitlines()[1])[-2]


# --------------------------------------------------------------------------
# Podman


def test_podman_logs_of_a_served_journald_container(podman_clean, stub, journal, tmp_path):
    """``podman run --log-driver journald`` with the stub as conmon: served (the entries' sender is the
    stub Podman started, whose pid Podman records as ConmonPid), and ``podman logs`` reads them back."""
    cidfile = tmp_path / "cid"
    script = ("echo out1; echo err1 >&2; head -c 20000 /dev/zero | tr '\\0' y; echo; "
              "echo err2 >&2; printf 'no newline'")
    r = podman_clean("run", "-d", "--log-driver", "journald", "--name", "jd-served", "--cidfile", cidfile,
                     "busybox", "sh", "-c", f"trap 'exit 0' USR1; {script}; while :; do sleep 0.05; done",
                     conmon=stub)
    assert r.returncode == 0, r.stderr
    cid = cidfile.read_text().strip()
    conmon_pid = podman_clean("inspect", "--format", "{{.State.ConmonPid}}", cid, conmon=stub).stdout.strip()
    assert os.readlink(f"/proc/{conmon_pid}/exe") == os.path.realpath(stub)  # served, not classic
    journal_entries({"CONTAINER_ID_FULL": cid}, count=6)  # all but the unfinished line (sent at the exit)
    assert podman_clean("kill", "-s", "USR1", cid, conmon=stub).returncode == 0
    assert podman_clean("wait", cid, conmon=stub).stdout.strip() == "0"
    entries = journal_entries({"CONTAINER_ID_FULL": cid}, count=7)
    assert {e["_PID"] for e in entries} == {conmon_pid.encode()}
    assert {e["_EXE"] for e in entries} == {os.path.realpath(stub).encode()}
    assert {e["CONTAINER_NAME"] for e in entries} == {b"jd-served"}
    logs = podman_clean("logs", cid, conmon=stub)
    assert logs.returncode == 0, logs.stderr
    assert (logs.stdout, logs.stderr) == ("out1\n" + "y" * 20000 + "\nno newline", "err1\nerr2\n")
