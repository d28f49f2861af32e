"""Run one container under a conmon-compatible monitor, the way Podman does.

    python3 demo/run_monitor.py MONITOR RUNTIME BUNDLE CID

BUNDLE must hold an OCI bundle (config.json + rootfs). This script plays the
container manager (CONTRACT.md 2-3, PODMAN.md 3.1, 4, 5.1):

1. create the sync and start pipes (SOCK_SEQPACKET socketpairs) and start
   MONITOR with `_OCI_SYNCPIPE=3 _OCI_STARTPIPE=4` in a minimal environment;
2. write the start byte; the first monitor process forks, writes
   --conmon-pidfile and exits; reap it;
3. read `{"data": PID}` from the sync pipe (a negative value is an error);
4. run `RUNTIME start CID`;
5. wait for the exit file `BUNDLE/exits/CID`, then for the monitor to go away;
6. print the k8s-file log and the exit code.

It exits with the container's exit code, or 125 when the set-up failed.
Stdlib only; it does not import pyconmon.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable

TIMEOUT = 30.0


def fail(text: str) -> int:
    print(f"run_monitor: {text}", file=sys.stderr)
    return 125


def wait_for(pred: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    print(f"run_monitor: timed out waiting for {what}", file=sys.stderr)
    return False


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in (b"Z", b"X")


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    monitor, runtime, bundle, cid = argv
    bundle = os.path.abspath(bundle)
    exit_dir = os.path.join(bundle, "exits")
    log_path = os.path.join(bundle, "ctr.log")
    conmon_pidfile = os.path.join(bundle, "conmon.pid")
    exit_file = os.path.join(exit_dir, cid)
    os.makedirs(exit_dir, exist_ok=True)

    sync_parent, sync_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    start_parent, start_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)

    cmd = [
        monitor,
        "--api-version", "1",
        "-c", cid,
        "-u", cid,
        "-r", runtime,
        "-b", bundle,
        "-p", os.path.join(bundle, "pidfile"),
        "-n", "pyconmon-demo",
        "--exit-dir", exit_dir,
        "--full-attach",
        "-l", f"k8s-file:{log_path}",
        "--log-level", "info",
        "--conmon-pidfile", conmon_pidfile,
    ]
    # Podman's layout: fd 3 = sync pipe, fd 4 = start pipe (no preserved fds).
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "_OCI_SYNCPIPE": "3",
        "_OCI_STARTPIPE": "4",
    }
    print("+ " + " ".join(cmd), flush=True)

    pid = os.fork()
    if pid == 0:  # child: fds 3 and 4, stdin /dev/null, own process group
        try:
            os.setpgid(0, 0)  # podman starts conmon with Setpgid
            high_sync = fcntl.fcntl(sync_child.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
            high_start = fcntl.fcntl(start_child.fileno(), fcntl.F_DUPFD_CLOEXEC, 10)
            os.dup2(high_sync, 3)  # dup2 leaves the new fd inheritable
            os.dup2(high_start, 4)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.chdir(bundle)
            os.execve(monitor, cmd, env)
        except BaseException as err:  # noqa: BLE001 - report, never return into the parent's code
            os.write(2, f"run_monitor: exec {monitor}: {err}\n".encode())
        os._exit(127)
    sync_child.close()
    start_child.close()

    # The caller would move the monitor into a cgroup here; then the start byte.
    try:
        start_parent.send(b"\0")
    except OSError as err:
        return fail(f"write to start pipe: {err}")
    reaped: list[int] = []

    def reap() -> bool:
        done, wstatus = os.waitpid(pid, os.WNOHANG)
        if done:
            reaped.append(os.waitstatus_to_exitcode(wstatus))
        return bool(done)

    if not wait_for(reap, "the monitor's first process to exit"):
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        return 125
    status = reaped[0]
    if status != 0:
        return fail(f"monitor's first process exited with status {status}")
    try:
        with open(conmon_pidfile) as f:
            monitor_pid = int(f.read())
    except (OSError, ValueError) as err:
        return fail(f"bad --conmon-pidfile: {err}")

    sync_parent.settimeout(TIMEOUT)
    try:
        data = sync_parent.recv(65536)
    except TimeoutError:
        return fail("no message on the sync pipe")
    if not data:
        return fail("container create failed (no logs from conmon)")
    msg = json.loads(data.split(b"\n", 1)[0])
    print(f"sync pipe: {json.dumps(msg)}  (monitor pid {monitor_pid})", flush=True)
    if msg.get("data", -1) < 0:
        return fail(f"container create failed: {msg.get('message', '')}")

    subprocess.run([runtime, "start", cid], check=True)

    if not wait_for(lambda: os.path.exists(exit_file), "the exit file"):
        return 125
    wait_for(lambda: not pid_alive(monitor_pid), "the monitor to exit", timeout=10.0)
    start_parent.close()
    sync_parent.close()

    with open(exit_file) as f:
        code_text = f.read()
    print(f"--- {log_path}")
    with open(log_path, errors="replace") as f:
        sys.stdout.write(f.read())
    print(f"--- exit file {exit_file}: {code_text!r}")
    print(f"container exit code: {int(code_text)}", flush=True)
    return int(code_text) & 0xFF


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
