"""Log path safety (logpath.check_log_path) and its use by the k8s-file writer on every open.

Real files, directories, symlinks and ownership in a temporary directory (the
tests run as root, so they can chown to another user).
"""

import os

import pytest

from pyconmon.k8sfile import K8sFileWriter
from pyconmon.logpath import LogPathError, check_log_path
from support.diag import RecordingDiag

OTHER_UID = 65534


@pytest.fixture
def base(tmp_path):
    os.chmod(tmp_path, 0o755)
    return tmp_path


def mkdir(path, mode=0o755):
    os.makedirs(path)
    os.chmod(path, mode)
    return str(path)


# -- the allowlist -----------------------------------------------------------


def test_no_allowlist_accepts_a_safe_directory(base):
    check_log_path(str(base / "ctr.log"), [])


@pytest.mark.parametrize("rel", ["ctr.log", "pod/ctr.log", "pod/deeper/ctr.log"])
def test_inside_the_allowlist(base, rel):
    allowed = mkdir(base / "allowed")
    for d in ("pod", "pod/deeper"):
        os.makedirs(os.path.join(allowed, d), exist_ok=True)
    check_log_path(os.path.join(allowed, rel), [allowed])
    check_log_path(os.path.join(allowed, rel), [allowed + "/"])  # a trailing slash is the same dir
    check_log_path(os.path.join(allowed, rel), [str(base / "elsewhere"), allowed])  # any entry will do


@pytest.mark.parametrize("rel", ["outside/ctr.log", "allowed-evil/ctr.log", "allowed/../outside/ctr.log", "ctr.log"])
def test_outside_the_allowlist(base, rel):
    allowed = mkdir(base / "allowed")
    mkdir(base / "outside")
    mkdir(base / "allowed-evil")  # a name that merely starts like the allowed one
    with pytest.raises(LogPathError, match="not inside an allowed directory"):
        check_log_path(str(base / rel), [allowed])


def test_allowlist_entry_through_a_symlink(base):
    real = mkdir(base / "real")
    os.symlink(real, base / "alias")
    check_log_path(os.path.join(real, "ctr.log"), [str(base / "alias")])
    check_log_path(str(base / "alias" / "ctr.log"), [real])


def test_directory_swapped_for_a_symlink_out_of_the_allowlist(base):
    allowed = mkdir(base / "allowed")
    outside = mkdir(base / "outside")
    os.symlink(outside, os.path.join(allowed, "pod"))
    with pytest.raises(LogPathError, match="not inside an allowed directory"):
        check_log_path(os.path.join(allowed, "pod", "ctr.log"), [allowed])


def test_relative_path_is_taken_from_the_working_directory(base, monkeypatch):
    allowed = mkdir(base / "allowed")
    monkeypatch.chdir(allowed)
    check_log_path("ctr.log", [allowed])
    monkeypatch.chdir(base)
    with pytest.raises(LogPathError):
        check_log_path("ctr.log", [allowed])


# -- the file and its directory ------------------------------------------------


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_log_path_is_refused(base, dangling):
    target = base / "target"
    if not dangling:
        target.write_bytes(b"")
    os.symlink(target, base / "ctr.log")
    with pytest.raises(LogPathError, match="is a symlink"):
        check_log_path(str(base / "ctr.log"), [])


def test_existing_regular_file_is_fine(base):
    (base / "ctr.log").write_bytes(b"old\n")
    check_log_path(str(base / "ctr.log"), [str(base)])


@pytest.mark.parametrize("mode", [0o777, 0o1777, 0o757])
def test_world_writable_directory_is_refused(base, mode):
    logs = mkdir(base / "logs", mode)  # sticky (like /tmp) too: anyone may still create the name first
    with pytest.raises(LogPathError, match="world-writable"):
        check_log_path(os.path.join(logs, "ctr.log"), [])


def test_own_existing_file_in_a_sticky_world_writable_directory_is_fine(base):
    # CRI-O's exec probes: it creates /tmp/crio-log-<id>NNN empty, then runs the monitor on it.
    tmp = mkdir(base / "tmp", 0o1777)
    log = os.path.join(tmp, "crio-log-1")
    open(log, "wb").close()
    check_log_path(log, [])
    with pytest.raises(LogPathError, match="world-writable"):  # but never made anew there (reopen)
        check_log_path(log, [], create=True)


@pytest.mark.parametrize("mode", [0o777, 0o757])
def test_own_existing_file_in_a_world_writable_directory_without_sticky_bit_is_refused(base, mode):
    logs = mkdir(base / "logs", mode)
    log = os.path.join(logs, "ctr.log")
    open(log, "wb").close()
    with pytest.raises(LogPathError, match="world-writable"):
        check_log_path(log, [])


def test_foreign_file_in_a_sticky_directory_is_refused(base):
    tmp = mkdir(base / "tmp", 0o1777)
    log = os.path.join(tmp, "crio-log-1")
    open(log, "wb").close()
    os.chown(log, OTHER_UID, OTHER_UID)
    with pytest.raises(LogPathError, match="world-writable"):
        check_log_path(log, [])


def test_group_writable_directory_is_fine(base):
    logs = mkdir(base / "logs", 0o770)
    check_log_path(os.path.join(logs, "ctr.log"), [])


def test_directory_owned_by_another_user_is_refused(base):
    logs = mkdir(base / "logs", 0o755)
    os.chown(logs, OTHER_UID, OTHER_UID)
    with pytest.raises(LogPathError, match=f"owned by another user \\(uid {OTHER_UID}\\)"):
        check_log_path(os.path.join(logs, "ctr.log"), [])


def test_checks_apply_to_the_resolved_directory(base):
    unsafe = mkdir(base / "unsafe", 0o777)
    os.symlink(unsafe, base / "looks-safe")
    with pytest.raises(LogPathError, match="world-writable"):
        check_log_path(str(base / "looks-safe" / "ctr.log"), [])


def test_missing_directory_is_an_error(base):
    with pytest.raises(LogPathError, match="No such file or directory"):
        check_log_path(str(base / "missing" / "ctr.log"), [])


# -- the k8s-file writer checks on every open --------------------------------------


def test_writer_refuses_on_the_first_open_and_creates_nothing(base):
    allowed = mkdir(base / "allowed")
    outside = mkdir(base / "outside")
    with pytest.raises(LogPathError):
        K8sFileWriter(os.path.join(outside, "ctr.log"), RecordingDiag(), allowlist=[allowed])
    assert os.listdir(outside) == []


@pytest.mark.parametrize("rotate", [False, True], ids=["truncate", "rotate"])
def test_writer_enforces_the_allowlist_on_reopen_and_at_the_limit(base, rotate):
    allowed = mkdir(base / "allowed")
    outside = mkdir(base / "outside")
    pod = mkdir(base / "allowed" / "pod")
    diag = RecordingDiag()
    w = K8sFileWriter(os.path.join(pod, "ctr.log"), diag, size_max=4096, rotate=rotate, max_files=2,
                      allowlist=[allowed])
    w.write(2, b"before\n")
    os.rename(pod, pod + ".old")
    os.symlink(outside, pod)
    w.reopen()  # ctl 2
    for i in range(200):  # ~10 KB of records through a 4 KiB limit
        w.write(2, b"after %d\n" % i)
    w.sync()
    w.close()
    assert os.listdir(outside) == []
    with open(os.path.join(pod + ".old", "ctr.log"), "rb") as f:
        contents = [line.split(b" ", 3)[3] for line in f.read().splitlines()]
    assert contents == [b"before"] + [b"after %d" % i for i in range(200)]  # nothing lost
    warnings = [t for _, t in diag.messages if "reopen" in t]
    assert len(warnings) == 1 and "not inside an allowed directory" in warnings[0]  # said once


def test_writer_refuses_a_symlink_planted_before_rotation(base):
    logs = mkdir(base / "logs")
    victim = base / "victim"
    victim.write_bytes(b"precious\n")
    diag = RecordingDiag()
    path = os.path.join(logs, "ctr.log")
    w = K8sFileWriter(path, diag, size_max=-1)
    os.rename(path, path + ".moved")  # an external rotator moved it away ...
    os.symlink(victim, path)  # ... and someone planted a link in its place
    w.reopen()
    w.write(2, b"line\n")
    w.close()
    assert victim.read_bytes() == b"precious\n"
    assert any("is a symlink" in t for _, t in diag.messages)
