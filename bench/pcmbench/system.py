"""What the bench reads from the kernel and the shared test bed.

- tests/support (harness, bundle, podman, journald_service) is imported by
  path as ``pcm_bench_support`` (``tests`` is no package).
- CPU: /proc/PID/stat's utime+stime are in 10 ms ticks; /proc/PID/schedstat
  has the same run time in ns (main thread only).  A zombie's /proc files
  still hold its final figures, so a process is read after it exits and
  before it is reaped: exact, with no sampling gap.  The bench is a child
  subreaper (PR_SET_CHILD_SUBREAPER) so the daemonised monitor becomes its
  child and stays a zombie until the bench reaps it.
- Waiting for files: inotify (via libc), never sleeps.
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import os
import select
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36

_libc = ctypes.CDLL(None, use_errno=True)


class BenchFailure(Exception):
    """A run that went wrong: missing output, a timeout, a monitor error."""


def _load_support():
    """Import tests/support as package ``pcm_bench_support``."""
    path = os.path.join(REPO, "tests", "support")
    name = "pcm_bench_support"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                      submodule_search_locations=[path])
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return (sys.modules[name], importlib.import_module(name + ".bundle"), importlib.import_module(name + ".harness"),
            importlib.import_module(name + ".journald_service"), importlib.import_module(name + ".podman"))


support, tb_bundle, H, journald_service, tb_podman = _load_support()
C_CONMON = support.C_CONMON
RUNC = support.RUNC
BUSYBOX = support.BUSYBOX


def set_subreaper(on):
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


def proc_stat(pid):
    """(state, cpu seconds = utime+stime of the process itself) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_schedstat_ns(pid):
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_kv(path):
    """``Key: value kB`` lines -> {key: int kB} (non-numeric values skipped)."""
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                out[k.strip()] = int(parts[0])
    return out


def zombie_cpu(pid, pidfd, timeout):
    """Wait until our child ``pid`` has exited (still unreaped); return (cpu s, schedstat ns)."""
    if not select.select([pidfd], [], [], timeout)[0]:
        raise BenchFailure(f"process {pid} still running after {timeout}s")
    state, cpu = proc_stat(pid)
    if state not in ("Z", "X"):
        # pidfd readiness and the zombie state are set together; be safe anyway
        deadline = time.monotonic() + 2
        while state not in ("Z", "X") and time.monotonic() < deadline:
            time.sleep(0.001)
            state, cpu = proc_stat(pid)
    return cpu, proc_schedstat_ns(pid)


def reap(pid):
    try:
        os.waitpid(pid, 0)
        return True
    except ChildProcessError:
        return False


class Inotify:
    """inotify on one path (via libc), to wake up as soon as a file there is written."""

    IN_MODIFY, IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x2, 0x8, 0x80, 0x100
    DIR_MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE

    def __init__(self, path, mask=DIR_MASK):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def wait(self, cond, timeout):
        """Return cond()'s first truthy value; BenchFailure after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchFailure(f"timed out after {timeout}s")
            if select.select([self.fd], [], [], min(left, 0.05))[0]:
                try:
                    os.read(self.fd, 65536)
                except BlockingIOError:
                    pass

    def close(self):
        os.close(self.fd)


def exit_code_in(path):
    v = H.read_exit_file(path)
    return None if v is None else (v,)


def run_quiet(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
