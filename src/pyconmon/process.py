"""Process set-up: the monitor's own process attributes and descriptors.

Facts that shape this module:

* The caller waits for the *first* monitor process to exit and then reads the
  conmon pidfile and the sync pipe, so unless ``--sync`` the monitor forks and
  the parent exits at once; the child must drop the caller's stdio (CRI-O with
  ``-t`` waits for EOF on a stderr pipe) and leave its session (``setsid``).
* The container is the grandchild ``runc create`` leaves behind.  Only a child
  subreaper (``PR_SET_CHILD_SUBREAPER``) gets it re-parented and can reap it.
  Python has no ``prctl`` wrapper, so it goes through ctypes, loaded once.
* Every descriptor the monitor opens itself is close-on-exec (Python's
  default), so the container sees only its stdio and the preserved fds.
  Descriptors inherited from the caller that are not preserved (Podman's
  port reservations, the start pipe) are recorded at start-up, made
  close-on-exec, and closed before the exit file is written.
"""

from __future__ import annotations

import os

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
SIGKILL = 9

_libc = None


def libc():  # type: ignore[no-untyped-def]
    """The C library through ctypes, loaded on first use (ctypes costs ~4 ms)."""
    global _libc  # a loaded library handle, not monitor state
    if _libc is None:
        import ctypes
        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


try:  # the installed launcher provides these natively (no ctypes)
    from _pyconmon_native import mallopt as _mallopt  # type: ignore[import-not-found]
    from _pyconmon_native import prctl as _prctl
except ImportError:
    _prctl = _mallopt = None


def prctl(option: int, arg: int) -> None:
    """prctl(2) with one argument; raises OSError on failure."""
    if _prctl is not None:
        _prctl(option, arg)
        return
    if libc().prctl(option, arg, 0, 0, 0) != 0:
        import ctypes
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


def tune_malloc() -> None:
    """Keep freed output buffers in the heap for reuse.

    Output is read in chunks of up to 1 MiB.  With glibc's adaptive
    thresholds, buffers that size are returned to the kernel when freed and
    faulted in again on the next read: one page fault per 4 KiB of output,
    which doubled the kernel time of a flood.  Fixed thresholds above the
    working set make the heap reuse them instead; trimming stays on above
    4 MiB so a backlog that was dropped (a stuck attach client) goes back.
    """
    set_option = _mallopt if _mallopt is not None else libc().mallopt
    set_option(M_MMAP_THRESHOLD, 16 << 20)
    set_option(M_TRIM_THRESHOLD, 4 << 20)


def set_subreaper(on: bool) -> None:
    prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0)


def set_parent_death_signal(sig: int = SIGKILL) -> None:
    prctl(PR_SET_PDEATHSIG, sig)


def set_oom_score_adj(value: str, pid: str = "self") -> str | None:
    """Write oom_score_adj; return the previous value, or None if it failed."""
    path = f"/proc/{pid}/oom_score_adj"
    try:
        with open(path, "rb") as f:
            old = f.read().decode().strip()
        with open(path, "wb") as f:
            f.write(value.encode())
        return old
    except OSError:
        return None


def open_fds() -> list[int]:
    """The descriptors open in this process now."""
    import fcntl
    fds = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            fcntl.fcntl(fd, fcntl.F_GETFD)  # drops the fd listdir itself used
        except OSError:
            continue
        fds.append(fd)
    return sorted(fds)


def fd_from_env(name: str) -> int | None:
    """An fd number from the environment; a non-number raises ValueError."""
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    fd = int(value)
    if fd < 0:
        raise ValueError(value)
    return fd


def write_file_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it into place.

    Readers watching the directory with inotify see one IN_MOVED_TO of a
    complete file, never a half-written one.
    """
    directory, base = os.path.split(path)
    tmp = os.path.join(directory, f".{base}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            while data:
                data = data[os.write(fd, data):]
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # a full disk must not leave a stray file in a watched directory
        except OSError:
            pass
        raise


def redirect_stdio_to_devnull() -> None:
    fd = os.open("/dev/null", os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(fd, target)
    if fd > 2:
        os.close(fd)


def close_fds_from(low: int, keep: set[int]) -> None:
    """Close every fd >= low except ``keep`` (before exec'ing the exit command)."""
    for fd in open_fds():
        if fd >= low and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass
