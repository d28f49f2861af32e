"""Unit tests for pyconmon.oom on prepared directories.

This machine's memory controller is cgroup v1 (hybrid hierarchy: the unified
v2 hierarchy has no memory controller), so the cgroup v2 tests run on plain
``memory.events`` files in a tmp dir as a stand-in for the kernel's: inotify
reports IN_MODIFY on a write to a regular file just as it does when the
kernel updates a counter.  The v1 tests drive the watcher's real eventfd by
writing to it, standing in for the kernel's signal.  The real kernel is
exercised in tests/e2e/test_oom_runc.py.
"""

from __future__ import annotations

import os
import select
import shutil
from pathlib import Path

import pytest

from pyconmon.oom import (
    V1,
    V2,
    OomWatcher,
    container_parent,
    find_memory_cgroup,
    parse_counters,
    write_oom_files,
)
from support.diag import RecordingDiag


def events_text(oom: int = 0, oom_kill: int = 0) -> str:
    return f"low 0\nhigh 0\nmax 3\noom {oom}\noom_kill {oom_kill}\noom_group_kill 0\n"


def oom_control_text(oom_kill: int = 0, under_oom: int = 0) -> str:
    return f"oom_kill_disable 0\nunder_oom {under_oom}\noom_kill {oom_kill}\n"


def readable(fds: list[int], timeout: float = 2.0) -> list[int]:
    if not fds:
        return []
    r, _, _ = select.select(fds, [], [], timeout)
    return r


def make_v2(root: Path, rel: str, oom: int = 0, oom_kill: int = 0) -> Path:
    d = root / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.events").write_text(events_text(oom, oom_kill))
    return d


def make_v1(root: Path, rel: str, oom_kill: int = 0) -> Path:
    d = root / "memory" / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.oom_control").write_text(oom_control_text(oom_kill))
    (d / "cgroup.event_control").write_text("")
    return d


# -- parsing -------------------------------------------------------------------


def test_parse_v1_oom_control() -> None:
    c = parse_counters("oom_kill_disable 0\nunder_oom 1\noom_kill 7\n")
    assert c == {"oom_kill_disable": 0, "under_oom": 1, "oom_kill": 7}


def test_parse_v1_old_kernel_without_oom_kill_line() -> None:
    c = parse_counters("oom_kill_disable 0\nunder_oom 0\n")
    assert c.get("oom_kill", 0) == 0


def test_parse_v2_memory_events() -> None:
    c = parse_counters(events_text(oom=2, oom_kill=5))
    assert c["oom"] == 2 and c["oom_kill"] == 5 and c["oom_group_kill"] == 0


def test_parse_ignores_garbage() -> None:
    assert parse_counters("oom x\n\nfoo\noom_kill 3 4\nmax 1\n") == {"max": 1}


# -- finding the cgroup ------------------------------------------------------------

HYBRID = """\
9:name=systemd:/user.slice
4:memory:/machine/ctr1
3:cpuset:/
1:cpu:/
0::/
"""


def test_find_v1_on_hybrid(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "machine/ctr1")
    assert find_memory_cgroup(HYBRID, str(tmp_path)) == (V1, str(d))


def test_find_v1_comounted(tmp_path: Path) -> None:
    d = tmp_path / "cpu,memory" / "ctr"
    d.mkdir(parents=True)
    (d / "memory.oom_control").write_text(oom_control_text())
    assert find_memory_cgroup("5:cpu,memory:/ctr\n0::/\n", str(tmp_path)) == (V1, str(d))


def test_find_v1_missing_dir(tmp_path: Path) -> None:
    assert find_memory_cgroup(HYBRID, str(tmp_path)) is None


def test_find_v2(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "machine.slice/libpod-abc.scope")
    assert find_memory_cgroup("0::/machine.slice/libpod-abc.scope\n", str(tmp_path)) == (V2, str(d))


def test_find_v2_without_memory_controller(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    assert find_memory_cgroup("0::/x\n", str(tmp_path)) is None


def test_find_nothing() -> None:
    assert find_memory_cgroup("", "/nonexistent") is None


def test_container_parent_crun_subgroup(tmp_path: Path) -> None:
    scope = make_v2(tmp_path, "machine.slice/libpod-abc.scope")
    leaf = make_v2(tmp_path, "machine.slice/libpod-abc.scope/container")
    assert container_parent(str(leaf), str(tmp_path)) == str(scope)


def test_container_parent_shared_parents_are_not_watched(tmp_path: Path) -> None:
    make_v2(tmp_path, "machine.slice")
    scope = make_v2(tmp_path, "machine.slice/libpod-abc.scope")
    assert container_parent(str(scope), str(tmp_path)) is None  # machine.slice holds other containers
    make_v2(tmp_path, "libpod_parent/pod1")
    ctr = make_v2(tmp_path, "libpod_parent/pod1/ctr")
    assert container_parent(str(ctr), str(tmp_path)) is None  # a pod holds other containers
    top = make_v2(tmp_path, "container")
    assert container_parent(str(top), str(tmp_path)) is None  # never the root


# -- v2 watcher on stand-in files -----------------------------------------------------


def test_v2_oom_counter(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        [fd] = w.fds()
        assert readable([fd], 0.05) == []
        (d / "memory.events").write_text(events_text(oom=1))
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
        assert readable([fd], 0.05) == []  # the event was consumed
        assert w.final_check() is True
    finally:
        w.close()
    assert w.fds() == []


def test_v2_counters_are_kept_apart(tmp_path: Path) -> None:
    """conmon compared both lines against one remembered value: oom 1 then
    oom_kill 1 looked unchanged.  Each counter counts on its own here."""
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        [fd] = w.fds()
        (d / "memory.events").write_text(events_text(oom=1, oom_kill=0))
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
        (d / "memory.events").write_text(events_text(oom=1, oom_kill=1))
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
        (d / "memory.events").write_text(events_text(oom=1, oom_kill=1))  # a write that changes nothing
        assert readable([fd]) == [fd]  # the event did arrive: the watcher looked and saw no new count
        assert w.on_readable(fd) is False
        assert readable([fd], 0.05) == []
    finally:
        w.close()


def test_v2_preexisting_counts_are_the_baseline(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr", oom=4, oom_kill=4)
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        [fd] = w.fds()
        (d / "memory.events").write_text(events_text(oom=4, oom_kill=4))
        assert readable([fd]) == [fd]  # an event arrived, but the counts are the baseline
        assert w.on_readable(fd) is False
        assert w.final_check() is False
        (d / "memory.events").write_text(events_text(oom=5, oom_kill=4))  # a count above the baseline
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
    finally:
        w.close()


def test_v2_parent_events(tmp_path: Path) -> None:
    scope = make_v2(tmp_path, "machine.slice/libpod-abc.scope")
    leaf = make_v2(tmp_path, "machine.slice/libpod-abc.scope/container")
    w = OomWatcher(V2, str(leaf), RecordingDiag(), parent_dir=str(scope))
    try:
        [fd] = w.fds()
        (scope / "memory.events").write_text(events_text(oom=1))  # the limit is on the scope
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
    finally:
        w.close()


def test_v2_final_check_catches_unread_event(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        (d / "memory.events").write_text(events_text(oom_kill=1))
        assert w.final_check() is True
    finally:
        w.close()


def test_v2_no_oom(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        assert w.final_check() is False
    finally:
        w.close()


def test_v2_removal_is_not_an_oom(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        [fd] = w.fds()
        shutil.rmtree(d)
        assert readable([fd]) == [fd]  # IN_IGNORED (and friends)
        assert w.on_readable(fd) is False
        assert readable([fd], 0.05) == []
        assert w.final_check() is False
    finally:
        w.close()


def test_v2_for_pid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "123").mkdir(parents=True)
    (proc / "123" / "cgroup").write_text("0::/machine.slice/crio-x.scope/container\n")
    root = tmp_path / "cg"
    make_v2(root, "machine.slice")
    scope = make_v2(root, "machine.slice/crio-x.scope")
    leaf = make_v2(root, "machine.slice/crio-x.scope/container")
    w = OomWatcher.for_pid(123, RecordingDiag(), cgroup_root=str(root), proc_root=str(proc))
    assert w is not None
    try:
        assert w.version == V2 and w.cgroup_dir == str(leaf)
        [fd] = w.fds()
        (scope / "memory.events").write_text(events_text(oom=1))
        assert readable([fd]) == [fd]
        assert w.on_readable(fd) is True
    finally:
        w.close()


# -- v1 watcher: real eventfd, prepared files ----------------------------------------


def test_v1_registration_line(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr")
    w = OomWatcher(V1, str(d), RecordingDiag())
    try:
        [efd] = w.fds()
        line = (d / "cgroup.event_control").read_text()
        ev, oc = line.split(" ")
        assert int(ev) == efd
        assert int(oc) > 2  # the oom_control fd (closed again after registering)
    finally:
        w.close()


def test_v1_event_while_cgroup_exists_is_oom(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr")
    w = OomWatcher(V1, str(d), RecordingDiag())
    try:
        [efd] = w.fds()
        assert w.on_readable(efd) is False  # nothing pending: no event, no block
        os.eventfd_write(efd, 1)  # as the kernel does on OOM (oom_kill may not have moved yet)
        assert w.on_readable(efd) is True
        assert w.final_check() is True
    finally:
        w.close()


def test_v1_removal_event_is_ignored(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr")
    w = OomWatcher(V1, str(d), RecordingDiag())
    try:
        [efd] = w.fds()
        shutil.rmtree(d)
        os.eventfd_write(efd, 1)  # the kernel's "event going away" signal
        assert w.on_readable(efd) is False
        assert w.final_check() is False
    finally:
        w.close()


def test_v1_oom_coalesced_with_removal(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr")
    w = OomWatcher(V1, str(d), RecordingDiag())
    try:
        [efd] = w.fds()
        shutil.rmtree(d)
        os.eventfd_write(efd, 1)  # OOM...
        os.eventfd_write(efd, 1)  # ...and removal, read as one count of 2
        assert w.on_readable(efd) is True
    finally:
        w.close()


def test_v1_final_check_reads_oom_kill(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr", oom_kill=2)
    w = OomWatcher(V1, str(d), RecordingDiag())
    try:
        assert w.final_check() is False  # 2 was the baseline
        (d / "memory.oom_control").write_text(oom_control_text(oom_kill=3))
        assert w.final_check() is True
    finally:
        w.close()


def test_v1_registration_failure_is_a_warning(tmp_path: Path) -> None:
    d = make_v1(tmp_path, "ctr")
    (d / "cgroup.event_control").unlink()
    (d / "cgroup.event_control").mkdir()  # can't be opened for writing
    diag = RecordingDiag()
    w = OomWatcher(V1, str(d), diag)
    try:
        assert w.fds() == []
        assert any("Failed to register for OOM events" in t for t in diag.warnings())
        (d / "memory.oom_control").write_text(oom_control_text(oom_kill=1))
        assert w.final_check() is True
    finally:
        w.close()


def test_v1_for_pid(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "77").mkdir(parents=True)
    (proc / "77" / "cgroup").write_text(HYBRID)
    d = make_v1(tmp_path / "cg", "machine/ctr1")
    w = OomWatcher.for_pid(77, RecordingDiag(), cgroup_root=str(tmp_path / "cg"), proc_root=str(proc))
    assert w is not None
    try:
        assert w.version == V1 and w.cgroup_dir == str(d) and len(w.fds()) == 1
    finally:
        w.close()


def test_for_pid_failures_warn(tmp_path: Path) -> None:
    diag = RecordingDiag()
    assert OomWatcher.for_pid(999999, diag, cgroup_root=str(tmp_path), proc_root=str(tmp_path)) is None
    (tmp_path / "5").mkdir()
    (tmp_path / "5" / "cgroup").write_text(HYBRID)
    assert OomWatcher.for_pid(5, diag, cgroup_root=str(tmp_path), proc_root=str(tmp_path)) is None
    assert len(diag.warnings()) == 2


def test_on_readable_foreign_fd(tmp_path: Path) -> None:
    d = make_v2(tmp_path, "ctr")
    w = OomWatcher(V2, str(d), RecordingDiag())
    try:
        assert w.on_readable(w.fds()[0] + 100) is False
    finally:
        w.close()
        w.close()  # idempotent


def test_bad_version(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        OomWatcher(3, str(tmp_path), RecordingDiag())


# -- oom files -------------------------------------------------------------------


def test_write_oom_files(tmp_path: Path) -> None:
    persist = tmp_path / "persist"
    bundle = tmp_path / "bundle"
    persist.mkdir()
    bundle.mkdir()
    write_oom_files(str(persist), str(bundle))
    assert (persist / "oom").read_bytes() == b""
    assert (bundle / "oom").read_bytes() == b""
    write_oom_files(str(persist), str(bundle))  # again: harmless


def test_write_oom_files_skips_none_and_warns(tmp_path: Path) -> None:
    write_oom_files(None, None)
    diag = RecordingDiag()
    write_oom_files(str(tmp_path / "missing"), str(tmp_path), diag)
    assert (tmp_path / "oom").exists()
    assert len(diag.warnings()) == 1
