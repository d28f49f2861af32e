"""A real systemd-journald for tests, and a reader for what it stored.

Machines without systemd as PID 1 (containers, CI VMs) have the daemon
(``apt-get install systemd``) but nothing that starts it.  It runs standalone:

    mkdir -p /run/systemd/journal /run/log/journal
    setsid /lib/systemd/systemd-journald </dev/null >>LOG 2>&1 &

It stays in the foreground, binds ``/run/systemd/journal/{socket,stdout,
dev-log,io.systemd.journal}`` itself (removing stale socket files first) and
stores entries under ``/run/log/journal/<machine-id>/``, where a plain
``journalctl`` (as root) reads them.  Gotchas:

- Without ``systemd-journal-flush`` nobody moves the runtime journal to
  /var/log/journal; a drop-in ``Storage=volatile`` makes that explicit.  The
  drop-in (in /run/systemd/journald.conf.d, read once at start-up) also turns
  off rate limiting, kernel-log import and forwarding to wall/syslog/console
  (an entry with PRIORITY 0 would otherwise be broadcast to every terminal),
  and is removed again once the daemon is up, so a host journald restarted
  later never sees it.
- ``/dev/log`` is not created (that is a systemd socket unit's job), so
  syslog(3) users are unaffected.
- journald processes datagrams asynchronously: read back by polling
  ``journalctl`` until the expected entries show up (``journal_entries``).
- ``journalctl -o json`` prints values over 4096 bytes as null unless
  ``--all``; non-printable values (NUL, invalid UTF-8, control characters
  other than newline and tab) come out as arrays of byte values and a field
  given several times as an array of values.

``start_private_journald()`` runs a second daemon of a test's own in a private
mount namespace (tmpfs over /run/systemd and /run/log/journal, the drop-in
inside it), for tests that stop it with SIGSTOP: the shared one must keep
serving other tests.  Monitors reach it by entering that namespace
(``nsenter -m -t PID``); the test itself reaches its socket and journal
files through ``/proc/PID/root`` and ``journalctl -D``.

``ensure_journald()`` is idempotent: a daemon already answering on the socket
(ours from an earlier run, or the host's) is reused.  It is left running when
the tests end; ``stop_journald`` ends it only if this process started it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

CANDIDATES = ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
SOCKET = "/run/systemd/journal/socket"
DIRS = ("/run/systemd/journal", "/run/log/journal")
DROPIN_DIR = "/run/systemd/journald.conf.d"
DROPIN = os.path.join(DROPIN_DIR, "zz-pyconmon-tests.conf")
LOCK = "/run/pyconmon-journald.lock"
LOG = "/run/pyconmon-journald.log"
CONFIG = """\
[Journal]
Storage=volatile
RateLimitIntervalSec=0
RateLimitBurst=0
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
"""

Entry = dict[str, "bytes | list[bytes] | None"]


def find_journald() -> str | None:
    for path in CANDIDATES:
        if os.access(path, os.X_OK):
            return path
    return None


def unavailable_reason() -> str | None:
    """Why a real journald cannot be used here, or None when it can."""
    if find_journald() is None:
        return "systemd-journald not installed (apt-get install systemd)"
    if shutil.which("journalctl") is None:
        return "journalctl not installed"
    if os.geteuid() != 0 and not _answers(SOCKET):
        return "not root and no journald running"
    return None


@dataclass
class JournaldService:
    socket_path: str
    pid: int | None  # None: a daemon we did not start
    started: bool


_started: JournaldService | None = None


def _answers(path: str) -> bool:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.connect(path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def send_native(fields: dict[str, str], path: str = SOCKET) -> None:
    """One plain entry (values without newlines), as a probe."""
    payload = "".join(f"{k}={v}\n" for k, v in fields.items()).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(payload, path)


def _probe(path: str, timeout: float) -> None:
    token = uuid.uuid4().hex
    send_native({"MESSAGE": "pyconmon test journald probe", "PYCONMON_PROBE": token}, path)
    journal_entries({"PYCONMON_PROBE": token}, timeout=timeout)


def ensure_journald(timeout: float = 15.0) -> JournaldService:
    """A journald that accepts entries and whose entries journalctl shows."""
    global _started
    if _started is not None and _answers(_started.socket_path):
        return _started
    fd = os.open(LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # parallel test processes start one daemon
        if _answers(SOCKET):
            _probe(SOCKET, timeout)
            return JournaldService(SOCKET, None, False)
        binary = find_journald()
        if binary is None:
            raise RuntimeError("systemd-journald not installed")
        for d in DIRS:
            os.makedirs(d, exist_ok=True)
        os.makedirs(DROPIN_DIR, exist_ok=True)
        with open(DROPIN, "w") as f:
            f.write(CONFIG)
        try:
            # Detached (sh exits, the daemon is reparented) so it outlives this
            # process and is reused by the next test run; a minimal environment
            # keeps e.g. a NOTIFY_SOCKET of ours away from it.
            out = subprocess.run(
                ["sh", "-c", 'setsid "$0" </dev/null >>"$1" 2>&1 & echo $!', binary, LOG],
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                check=True, capture_output=True, text=True, timeout=timeout,
            )
            pid = int(out.stdout.strip())
            deadline = time.monotonic() + timeout
            delay = 0.005
            while not _answers(SOCKET):
                if time.monotonic() > deadline or not os.path.exists(f"/proc/{pid}"):
                    raise RuntimeError(f"systemd-journald did not come up; see {LOG}")
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            _probe(SOCKET, max(0.1, deadline - time.monotonic()))
        finally:
            os.unlink(DROPIN)
        _started = JournaldService(SOCKET, pid, True)
        return _started
    finally:
        os.close(fd)


def stop_journald(service: JournaldService) -> None:
    """End the daemon if this process started it (by its pid)."""
    global _started
    if service.started and service.pid is not None:
        try:
            os.kill(service.pid, 15)
        except ProcessLookupError:
            pass
        if _started is service:
            _started = None


@dataclass
class PrivateJournald:
    pid: int
    socket_path: str  # reachable from the host, through /proc/PID/root
    directory: str  # its journal files, for journalctl -D


PRIVATE_SCRIPT = """set -e
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir -p /run/systemd/journal /run/systemd/journald.conf.d
cp "$2" /run/systemd/journald.conf.d/zz-pyconmon-tests.conf
mount -t tmpfs -o mode=0755 tmpfs /run/log/journal
exec "$1"
"""


def _comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return None


def start_private_journald(workdir: str, timeout: float = 15.0) -> PrivateJournald:
    """A journald of the caller's own in a private mount namespace (end it with stop_private_journald)."""
    binary = find_journald()
    if binary is None:
        raise RuntimeError("systemd-journald not installed")
    for d in DIRS:
        os.makedirs(d, exist_ok=True)  # mount points
    conf = os.path.join(workdir, "journald.conf")
    with open(conf, "w") as f:
        f.write(CONFIG)
    with open(os.path.join(workdir, "journald.log"), "ab") as log:
        # unshare and sh exec: the daemon keeps this pid
        p = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", PRIVATE_SCRIPT,
                              "sh", binary, conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                             env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
                             start_new_session=True)
    root = f"/proc/{p.pid}/root"
    j = PrivateJournald(p.pid, root + SOCKET, root + "/run/log/journal")
    deadline = time.monotonic() + timeout
    # Until the exec, /proc/PID/root still shows the host's mounts (and journald).
    while not (_comm(p.pid) == "systemd-journal" and _answers(j.socket_path)):
        if time.monotonic() > deadline or p.poll() is not None:
            stop_private_journald(j)
            raise RuntimeError(f"private systemd-journald did not come up; see {workdir}/journald.log")
        time.sleep(0.01)
    token = uuid.uuid4().hex
    send_native({"MESSAGE": "pyconmon test journald probe", "PYCONMON_PROBE": token}, j.socket_path)
    journal_entries({"PYCONMON_PROBE": token}, timeout=max(0.1, deadline - time.monotonic()), directory=j.directory)
    return j


def stop_private_journald(j: PrivateJournald) -> None:
    """End it (continued first, in case a test left it stopped) and reap it."""
    for sig in (18, 15):  # SIGCONT, SIGTERM
        try:
            os.kill(j.pid, sig)
        except ProcessLookupError:
            return
    try:
        os.waitpid(j.pid, 0)
    except ChildProcessError:
        pass


def _value(v: object) -> bytes | list[bytes] | None:
    if v is None:
        return None
    if isinstance(v, str):
        return v.encode("utf-8")
    assert isinstance(v, list)
    if all(isinstance(x, int) for x in v):
        return bytes(v)  # one binary value
    out = []
    for x in v:  # a field given several times
        item = _value(x)
        assert isinstance(item, bytes)
        out.append(item)
    return out


def read_entries(match: dict[str, str], directory: str | None = None) -> list[Entry]:
    """Every stored entry with all of ``match``'s fields, oldest first (``directory``: journalctl -D)."""
    args = ["journalctl", "-o", "json", "--all", "--no-pager", "-q"]
    if directory is not None:
        args += ["-D", directory]
    args += [f"{k}={v}" for k, v in match.items()]
    out = subprocess.run(args, check=True, capture_output=True, timeout=30).stdout
    entries = []
    for line in out.splitlines():
        if line.strip():
            entries.append({k: _value(v) for k, v in json.loads(line).items()})
    return entries


def journal_entries(match: dict[str, str], timeout: float = 10.0, count: int = 1,
                    until: Callable[[list[Entry]], bool] | None = None, directory: str | None = None) -> list[Entry]:
    """Poll journalctl until ``count`` entries match (or ``until`` says done).

    Raises TimeoutError, showing what was found, once ``timeout`` has passed.
    """
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        entries = read_entries(match, directory)
        if until(entries) if until is not None else len(entries) >= count:
            return entries
        left = deadline - time.monotonic()
        if left <= 0:
            shown = [e.get("MESSAGE") for e in entries][:20]
            raise TimeoutError(f"journal: {len(entries)} entries match {match} after {timeout}s: {shown!r}")
        time.sleep(min(delay, left))
        delay = min(delay * 2, 0.2)
