"""OOM detection: watch the container's memory cgroup for OOM kills.

Systems facts this module is built on (checked on a 6.x kernel, runc 1.1):

* The memory cgroup comes from ``/proc/<pid>/cgroup``.  A ``N:memory:/path``
  line (the controller may be co-mounted, ``N:cpu,memory:/path``) means the
  v1 memory hierarchy, mounted at ``/sys/fs/cgroup/memory``; that holds on
  hybrid hosts too, where ``0::/path`` also exists but the unified hierarchy
  has no memory controller.  With only ``0::/path`` the memory controller is
  v2 and ``<root>/<path>/memory.events`` exists.
* v1: the kernel signals an eventfd registered by writing
  ``"<eventfd> <fd of memory.oom_control>"`` to ``cgroup.event_control``.
  The eventfd is a counter: one read returns how many signals came since the
  last read, so several events coalesce.  The notification is sent when the
  charge path decides to OOM, *before* the victim is killed: when the event is
  read, ``oom_kill`` in ``memory.oom_control`` may not have moved yet and
  ``under_oom`` may already be back to 0.  So an event is trusted as an OOM by
  itself; the counters are not needed to confirm it.
* v1: removing the cgroup (``runc delete``, systemd cleaning a scope) signals
  every registered eventfd once more, "the event is going away".  The
  directory is unlinked before that signal, so: event while the directory is
  gone and a count of 1 = removal, not an OOM; a count of 2 or more = an OOM
  coalesced with the removal.  An OOM read late, after a removal whose signal
  has not come yet, is lost: ``final_check`` catches the common case while
  the cgroup still exists by reading ``oom_kill``.
* v1: registering on a cgroup that is under OOM signals at once; an eventfd
  whose cgroup is gone never becomes readable again.
* v2: ``memory.events`` holds counters (``oom``: the limit was hit and an
  allocation was about to fail; ``oom_kill``: processes killed).  Changes
  raise ``IN_MODIFY`` on the file, so inotify watches it.  Either counter
  going up is an OOM; the two are kept apart (conmon compared both against a
  single remembered value, so ``oom 1`` followed by ``oom_kill 1`` looked
  like no change).  Counters are hierarchical: a cgroup's file counts its
  descendants, so the parent's file also sees the child's kills.
* v2: crun (systemd driver) puts the process in a sub-cgroup ``container``
  under the scope that carries the limit; the ``oom`` event is then counted at
  the scope, not in the process's own cgroup.  So the parent's
  ``memory.events`` is watched too, but only when the parent belongs to this
  container alone (a ``*.scope``, or the leaf is named ``container``): the
  parent of a plain container is ``machine.slice`` or a pod, shared with
  other containers whose OOMs must not be reported here.
* The counters can be re-read after the container exited, which catches an
  OOM whose notification was still unread when the process died.

Design: ``OomWatcher.for_pid`` resolves the cgroup and never raises (a
warning and ``None`` instead); the instance exposes fds for the event loop,
``on_readable`` consumes a notification and says whether it was an OOM,
``final_check`` says whether the container was OOM killed at any time while
watched.  ctypes is only loaded for v2 (inotify has no stdlib binding);
v1 uses ``os.eventfd``.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs 7 ms at start-up

if TYPE_CHECKING:
    from typing import Any

    from .diag import Diagnostics

V1 = 1
V2 = 2

_IN_MODIFY = 0x00000002
_IN_IGNORED = 0x00008000
_INOTIFY_EVENT_HEADER = 16  # int wd; uint32 mask, cookie, len


def parse_counters(text: str) -> dict[str, int]:
    """Parse ``name value`` lines (``memory.events``, ``memory.oom_control``)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                continue
    return out


def _read(path: str) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096).decode("ascii", "replace")
    except OSError:
        return None
    finally:
        os.close(fd)


def find_memory_cgroup(proc_cgroup: str, cgroup_root: str = "/sys/fs/cgroup") -> tuple[int, str] | None:
    """Return ``(version, directory)`` of the memory cgroup described by the
    text of ``/proc/<pid>/cgroup``, or None when there is none on disk."""
    unified: str | None = None
    for line in proc_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, path = parts
        rel = path.lstrip("/")
        if hier == "0" and controllers == "":
            unified = rel
            continue
        if "memory" in controllers.split(","):
            for mount in dict.fromkeys(("memory", controllers)):
                d = os.path.join(cgroup_root, mount, rel)
                if os.path.isfile(os.path.join(d, "memory.oom_control")):
                    return V1, d.rstrip("/")
            return None
    if unified is not None:
        for base in (cgroup_root, os.path.join(cgroup_root, "unified")):
            d = os.path.join(base, unified)
            if os.path.isfile(os.path.join(d, "memory.events")):
                return V2, d.rstrip("/")
    return None


def container_parent(cgroup_dir: str, cgroup_root: str = "/sys/fs/cgroup") -> str | None:
    """The parent cgroup whose ``memory.events`` also belongs to this
    container (crun's ``<scope>/container`` layout), else None."""
    parent = os.path.dirname(cgroup_dir.rstrip("/"))
    root = os.path.normpath(cgroup_root)
    if not parent or os.path.normpath(parent) in (root, os.path.join(root, "unified")):
        return None
    own = os.path.basename(cgroup_dir.rstrip("/")) == "container" or parent.endswith(".scope")
    if own and os.path.isfile(os.path.join(parent, "memory.events")):
        return parent
    return None


class _Inotify:
    """inotify_init1/inotify_add_watch through ctypes, loaded on first use."""

    @classmethod
    def _lib(cls) -> Any:
        import ctypes

        from .process import libc

        lib = libc()
        lib.inotify_init1.argtypes = [ctypes.c_int]
        lib.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        return lib

    @staticmethod
    def _errno() -> int:
        import ctypes

        return ctypes.get_errno()

    @classmethod
    def init(cls) -> int:
        fd = cls._lib().inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = cls._errno()
            raise OSError(err, os.strerror(err), "inotify_init1")
        return int(fd)

    @classmethod
    def add_watch(cls, fd: int, path: str, mask: int) -> int:
        wd = cls._lib().inotify_add_watch(fd, os.fsencode(path), mask)
        if wd < 0:
            err = cls._errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)


class OomWatcher:
    """Watches a container's memory cgroup for OOM kills (v1 eventfd or v2 inotify).

    ``OomWatcher(version, cgroup_dir, diag, parent_dir=None)`` works on any
    directory laid out like a memory cgroup (tests use prepared files); it
    raises OSError when nothing at all can be watched.  ``for_pid`` is what
    the monitor calls.
    """

    @classmethod
    def for_pid(
        cls, pid: int, diag: Diagnostics, cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc"
    ) -> OomWatcher | None:
        text = _read(os.path.join(proc_root, str(pid), "cgroup"))
        if text is None:
            diag.warn(f"Failed to read the cgroup of pid {pid}: container may have exited; not watching for OOM")
            return None
        found = find_memory_cgroup(text, cgroup_root)
        if found is None:
            diag.warn(f"Failed to find the memory cgroup of pid {pid}; not watching for OOM")
            return None
        version, cgroup_dir = found
        parent = container_parent(cgroup_dir, cgroup_root) if version == V2 else None
        try:
            return cls(version, cgroup_dir, diag, parent_dir=parent)
        except OSError as err:
            diag.warn(f"Failed to watch {cgroup_dir} for OOM: {err.strerror or err}")
            return None

    def __init__(self, version: int, cgroup_dir: str, diag: Diagnostics, parent_dir: str | None = None) -> None:
        if version not in (V1, V2):
            raise ValueError(f"cgroup version {version}")
        self.version = version
        self.cgroup_dir = cgroup_dir
        self.diag = diag
        self.oom_seen = False  # any OOM reported by on_readable or final_check
        self._fd = -1
        self._removed = False
        if version == V1:
            self._init_v1()
        else:
            self._files = [os.path.join(cgroup_dir, "memory.events")]
            if parent_dir is not None:
                self._files.append(os.path.join(parent_dir, "memory.events"))
            self._init_v2()

    # -- v1 ----------------------------------------------------------------
    def _oom_kill_v1(self) -> int | None:
        text = _read(os.path.join(self.cgroup_dir, "memory.oom_control"))
        if text is None:
            return None
        return parse_counters(text).get("oom_kill", 0)

    def _init_v1(self) -> None:
        base = self._oom_kill_v1()
        if base is None:
            raise OSError(2, "memory.oom_control is missing", self.cgroup_dir)
        self._kill_base = base
        efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        try:
            ocfd = os.open(os.path.join(self.cgroup_dir, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
            try:
                ecfd = os.open(os.path.join(self.cgroup_dir, "cgroup.event_control"), os.O_WRONLY | os.O_CLOEXEC)
                try:
                    os.write(ecfd, f"{efd} {ocfd}".encode())
                finally:
                    os.close(ecfd)
            finally:
                os.close(ocfd)
        except OSError as err:
            os.close(efd)
            # Only a warning: oom_kill can still be read after the exit.
            self.diag.warn(f"Failed to register for OOM events on {self.cgroup_dir}: {err.strerror or err}")
            return
        self._fd = efd

    def _on_readable_v1(self) -> bool:
        try:
            count = os.eventfd_read(self._fd)
        except (BlockingIOError, InterruptedError):
            return False
        if os.path.isdir(self.cgroup_dir):
            self.diag.info("OOM event received")
            return True
        # The cgroup is gone: one signal is the removal notice itself.
        self._removed = True
        if count >= 2:
            self.diag.info("OOM event received (with the cgroup's removal)")
            return True
        self.diag.debug("Memory cgroup removed")
        return False

    # -- v2 ----------------------------------------------------------------
    def _counters_v2(self, path: str) -> tuple[int, int] | None:
        text = _read(path)
        if text is None:
            return None
        c = parse_counters(text)
        return c.get("oom", 0), c.get("oom_kill", 0)

    def _init_v2(self) -> None:
        self._base: dict[str, tuple[int, int]] = {}
        for path in self._files:
            counters = self._counters_v2(path)
            if counters is None:
                if path == self._files[0]:
                    raise OSError(2, "memory.events is missing", path)
                continue
            self._base[path] = counters
        self._files = [p for p in self._files if p in self._base]
        self._last = dict(self._base)
        self._wds: dict[int, str] = {}
        try:
            fd = _Inotify.init()
        except (OSError, AttributeError) as err:
            self.diag.warn(f"Failed to watch for OOM events: {getattr(err, 'strerror', None) or err}")
            return
        for path in self._files:
            try:
                self._wds[_Inotify.add_watch(fd, path, _IN_MODIFY)] = path
            except OSError as err:
                self.diag.warn(f"Failed to add inotify watch for {path}: {err.strerror}")
        if not self._wds:
            os.close(fd)
            return
        self._fd = fd

    def _drain_inotify(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 4096)
            except (BlockingIOError, InterruptedError):
                return
            if not data:
                return
            off = 0
            while off + _INOTIFY_EVENT_HEADER <= len(data):
                wd = int.from_bytes(data[off : off + 4], "little", signed=True)
                mask = int.from_bytes(data[off + 4 : off + 8], "little")
                length = int.from_bytes(data[off + 12 : off + 16], "little")
                off += _INOTIFY_EVENT_HEADER + length
                if mask & _IN_IGNORED:  # the watch is gone: the cgroup was removed
                    self._wds.pop(wd, None)

    def _check_v2(self) -> bool:
        """True when a counter went up since the last look (kept apart)."""
        hit = False
        for path in self._files:
            now = self._counters_v2(path)
            if now is None:
                continue
            last = self._last[path]
            if now[0] > last[0] or now[1] > last[1]:
                hit = True
            self._last[path] = (max(now[0], last[0]), max(now[1], last[1]))
        return hit

    # -- interface ---------------------------------------------------------
    def fds(self) -> list[int]:
        """File descriptors to register for EPOLLIN (may be empty)."""
        return [self._fd] if self._fd >= 0 else []

    def on_readable(self, fd: int) -> bool:
        """Consume a notification on ``fd``; True when it means an OOM happened."""
        if fd != self._fd or self._fd < 0:
            return False
        if self.version == V1:
            hit = self._on_readable_v1()
        else:
            self._drain_inotify()
            hit = self._check_v2()
            if hit:
                self.diag.info("OOM event received")
        if hit:
            self.oom_seen = True
        return hit

    def final_check(self) -> bool:
        """After the container exited: True if it met an OOM at any time while
        watched (reported before or not; writing the oom files twice is harmless)."""
        if self._fd >= 0:
            self.on_readable(self._fd)  # an event still unread
        if self.version == V1:
            if not self._removed:
                kills = self._oom_kill_v1()
                if kills is not None and kills > self._kill_base:
                    self.oom_seen = True
        else:
            if self._check_v2():
                self.oom_seen = True
        return self.oom_seen

    def close(self) -> None:
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1


def write_oom_files(persist_dir: str | None, bundle: str | None, diag: Diagnostics | None = None) -> None:
    """Create an empty ``oom`` in the persist dir and in the bundle.

    Podman 4.3.1 and CRI-O read ``<bundle>/oom``; newer Podman reads
    ``<persist-dir>/oom``.  C conmon 2.1.6 wrote the first one relative to its
    cwd instead, which only CRI-O's cwd (= bundle) made work."""
    for d in (persist_dir, bundle):
        if not d:
            continue
        path = os.path.join(d, "oom")
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666))
        except OSError as err:
            if diag is not None:
                diag.warn(f"Failed to write oom file {path}: {err.strerror}")
