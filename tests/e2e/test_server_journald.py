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
import sys
import time

import pytest

from support.harness import poll_until, runtime_kill, server_pids
from support.installed import install_podman_conmon
from support.installed import unavailable_reason as install_unavailable
from support.journald_service import (
    journal_entries,
    read_entries,
    start_private_journald,
    stop_private_journald,
)

# Both streams, a <N> prefix, a line longer than an entry (partial pieces), an unfinished last line.
SCRIPT = ("echo out1; echo err1 >&2; echo '<2>crit line'; head -c 20000 /dev/zero | tr '\\0' y; echo; "
          "echo err2 >&2; echo ready; printf 'no newline'; exec sleep 600")
TRUSTED = ("_PID", "_COMM", "_EXE", "_CMDLINE", "_CGROUP", "_UID", "_GID", "_CAP_EFFECTIVE",
           "_SYSTEMD_UNIT", "_SYSTEMD_SLICE")
PER_RUN = ("CONTAINER_ID_FULL", "CONTAINER_ID")  # each run has a container of its own


@pytest.fixture(scope="module")
def stub(tmp_path_factory):
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    return install_podman_conmon(tmp_path_factory.mktemp("server-journald"), server_mode=True)


@pytest.fixture(scope="module")
def classic(stub):
    return os.path.join(lib_dir(stub), "classic", "conmon")


def lib_dir(stub):
    return os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(stub))), "lib", "pyconmon")


def user_fields(entry):
    """What the monitor put in the entry (journald's own fields start with ``_``)."""
    return {k: v for k, v in entry.items() if not k.startswith("_") and k not in PER_RUN}


def by_stream(entries, stream):
    """The entries of one stream: SCRIPT's stderr lines start with ``err``."""
    return [e for e in entries if e["MESSAGE"].startswith(b"err") == (stream == b"err")]


def run_journald_container(testbed, monitor, journal_dir=None):
    """A container logging SCRIPT to journald; (monitor, entries before its exit, /proc facts, all entries)."""
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
    served, served_proc, served_entries = run_journald_container(testbed, stub)
    assert served_proc["exe"] == os.path.realpath(stub)  # served: the monitor process stayed the stub
    plain, plain_proc, plain_entries = run_journald_container(testbed, classic)
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
    # What journald derives from the sender's cgroup is the stub's, as a classic monitor's is its own.
    for name in ("_CGROUP", "_SYSTEMD_UNIT", "_SYSTEMD_SLICE"):
        assert {e.get(name) for e in served_entries} == {e.get(name) for e in plain_entries}, name
