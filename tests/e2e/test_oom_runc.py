"""OomWatcher against the real kernel, with runc and no monitor.

A minimal bundle (busybox-static rootfs, ``runc spec``) with a 20 MiB memory
limit runs a shell that doubles a string forever (``x=$x$x``): after ~20
rounds the string no longer fits and the memory cgroup's OOM killer sends
SIGKILL, within milliseconds.  The container is made with ``runc create``, the
watcher is set up on its pid, and only then ``runc start`` lets the hog run,
so the event can't come before the registration.

A helper process (a child subreaper, as conmon is) runs create and start and
reaps the container's init, which gets reparented to it, to report how the
process died.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from pyconmon.diag import Diagnostics
from pyconmon.oom import V1, OomWatcher

RUNC = shutil.which("runc")
BUSYBOX = next((p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p)), None)
LIMIT = 20 * 1024 * 1024
HOG = "x=a; while true; do x=$x$x; done"


def _memory_controller() -> str | None:
    try:
        text = Path("/proc/self/cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        _, controllers, _path = line.split(":", 2)
        if "memory" in controllers.split(","):
            return "v1" if os.path.isdir("/sys/fs/cgroup/memory") else None
    own = "/sys/fs/cgroup" + text.splitlines()[-1].split(":", 2)[2]
    return "v2" if os.path.exists(os.path.join(own, "memory.events")) else None


MEMCG = _memory_controller()

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc not installed"),
    pytest.mark.skipif(BUSYBOX is None, reason="busybox(-static) not installed"),
    pytest.mark.skipif(MEMCG is None, reason="no memory cgroup controller"),
]

# Runs create + start as a child subreaper and reports the container's wait status.
HELPER = r"""
import ctypes, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
    sys.exit("prctl failed")
runc, bundle, cid, log = sys.argv[1:5]
pidfile = os.path.join(bundle, "pidfile")
with open(log, "ab") as err:
    subprocess.run([runc, "create", "--bundle", bundle, "--pid-file", pidfile, cid],
                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, check=True)
pid = int(open(pidfile).read())
print(pid, flush=True)
sys.stdin.readline()
with open(log, "ab") as err:
    subprocess.run([runc, "start", cid], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, check=True)
_, status = os.waitpid(pid, 0)
print(status, flush=True)
"""


def _swap_accounting() -> bool:
    if MEMCG == "v1":
        return os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes")
    own = "/sys/fs/cgroup" + Path("/proc/self/cgroup").read_text().splitlines()[-1].split(":", 2)[2]
    return os.path.exists(os.path.join(own, "memory.swap.max"))


def make_bundle(root: Path, args: list[str]) -> Path:
    bundle = root / "bundle"
    bindir = bundle / "rootfs" / "bin"
    bindir.mkdir(parents=True)
    assert BUSYBOX is not None and RUNC is not None
    shutil.copy(BUSYBOX, bindir / "busybox")
    for applet in ("sh", "sleep", "true", "cat"):
        (bindir / applet).symlink_to("busybox")
    subprocess.run([RUNC, "spec"], cwd=bundle, check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["terminal"] = False
    config["process"]["args"] = args
    config["root"]["readonly"] = False
    memory: dict[str, int] = {"limit": LIMIT}
    if _swap_accounting():
        memory["swap"] = LIMIT  # memory+swap = memory: no escape into swap
    config["linux"].setdefault("resources", {})["memory"] = memory
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


class Container:
    def __init__(self, tmp_path: Path, args: list[str]) -> None:
        assert RUNC is not None
        self.cid = f"pyconmon-oom-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.bundle = make_bundle(tmp_path, args)
        self.log = tmp_path / "runc.log"
        self.helper = subprocess.Popen(
            [sys.executable, "-c", HELPER, RUNC, str(self.bundle), self.cid, str(self.log)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.helper.stdout is not None
        line = self.helper.stdout.readline()
        if not line:
            raise AssertionError(f"runc create failed: {self.log.read_text() if self.log.exists() else ''}")
        self.pid = int(line)

    def start(self) -> None:
        assert self.helper.stdin is not None
        self.helper.stdin.write("go\n")
        self.helper.stdin.flush()

    def wait_status(self, timeout: float = 30) -> int:
        assert self.helper.stdout is not None
        r, _, _ = select.select([self.helper.stdout], [], [], timeout)
        assert r, "container did not exit"
        return int(self.helper.stdout.readline())

    def delete(self) -> None:
        assert RUNC is not None
        subprocess.run(
            [RUNC, "delete", "-f", self.cid], check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if self.helper.poll() is None:
            self.helper.kill()
        self.helper.wait()


def wait_oom(watcher: OomWatcher, deadline: float) -> bool:
    fds = watcher.fds()
    while time.monotonic() < deadline:
        r, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
        for fd in r:
            if watcher.on_readable(fd):
                return True
    return False


def removal_events(watcher: OomWatcher, timeout: float) -> list[bool]:
    """on_readable results for whatever arrives within ``timeout``."""
    out = []
    deadline = time.monotonic() + timeout
    fds = watcher.fds()
    while time.monotonic() < deadline:
        r, _, _ = select.select(fds, [], [], max(0.0, deadline - time.monotonic()))
        for fd in r:
            out.append(watcher.on_readable(fd))
        if out and watcher.version == V1:
            break  # the one removal event came
    return out


def test_oom_kill_is_reported(tmp_path: Path) -> None:
    ctr = Container(tmp_path, ["sh", "-c", HOG])
    watcher = None
    try:
        watcher = OomWatcher.for_pid(ctr.pid, Diagnostics())
        assert watcher is not None
        assert watcher.version == (V1 if MEMCG == "v1" else 2)
        assert watcher.fds()
        ctr.start()
        assert wait_oom(watcher, time.monotonic() + 30), "no OOM event"
        status = ctr.wait_status()
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert watcher.final_check() is True
        ctr.delete()
        # final_check drained what was pending; the cgroup's removal makes one
        # more event (v1), which is not a second OOM
        events = removal_events(watcher, 5)
        if watcher.version == V1:
            assert events == [False]
        else:
            assert all(hit is False for hit in events)
    finally:
        if watcher is not None:
            watcher.close()
        ctr.delete()


def test_normal_exit_is_not_an_oom(tmp_path: Path) -> None:
    ctr = Container(tmp_path, ["sh", "-c", "x=hello; sleep 0.2; exit 3"])
    watcher = None
    try:
        watcher = OomWatcher.for_pid(ctr.pid, Diagnostics())
        assert watcher is not None
        ctr.start()
        status = ctr.wait_status()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3
        assert wait_oom(watcher, time.monotonic() + 0.5) is False
        assert watcher.final_check() is False
        ctr.delete()
        events = removal_events(watcher, 5)
        if watcher.version == V1:
            assert events == [False]  # the removal event came and was ignored
        else:
            assert all(hit is False for hit in events)
        assert watcher.final_check() is False
    finally:
        if watcher is not None:
            watcher.close()
        ctr.delete()
