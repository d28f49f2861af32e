"""Unit tests for pyconmon.process: atomic files, descriptor bookkeeping, and prctl in forked children."""

from __future__ import annotations

import errno
import os
import resource
import signal
import stat
import time
from pathlib import Path

import pytest

from pyconmon.process import (
    close_fds_from,
    fd_from_env,
    open_fds,
    redirect_stdio_to_devnull,
    set_oom_score_adj,
    set_parent_death_signal,
    set_subreaper,
    write_file_atomic,
)
from support.forked import in_child

# -- write_file_atomic -----------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_write_file_atomic_content_and_mode(tmp_path: Path, mode):
    path = tmp_path / "f"
    old_umask = os.umask(0o022)
    try:
        write_file_atomic(str(path), b"12345", mode)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"12345"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert os.listdir(tmp_path) == ["f"]


def test_write_file_atomic_default_mode_and_large_data(tmp_path: Path):
    path = tmp_path / "big"
    data = os.urandom(3 << 20)
    old_umask = os.umask(0)
    try:
        write_file_atomic(str(path), data)
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_write_file_atomic_empty(tmp_path: Path):
    path = tmp_path / "empty"
    write_file_atomic(str(path), b"")
    assert path.read_bytes() == b""


def test_write_file_atomic_replaces_by_rename(tmp_path: Path):
    path = tmp_path / "pid"
    path.write_bytes(b"old content")
    with open(path, "rb") as reader:
        old_inode = os.fstat(reader.fileno()).st_ino
        write_file_atomic(str(path), b"new")
        # The old file was replaced, not rewritten in place: an open reader still sees it whole.
        assert reader.read() == b"old content"
    assert path.read_bytes() == b"new"
    assert path.stat().st_ino != old_inode
    assert os.listdir(tmp_path) == ["pid"]


def test_write_file_atomic_missing_dir_raises(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        write_file_atomic(str(tmp_path / "no" / "f"), b"x")
    assert os.listdir(tmp_path) == []


def test_write_file_atomic_failed_rename_leaves_nothing(tmp_path: Path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "x").write_text("non-empty")
    with pytest.raises(OSError):
        write_file_atomic(str(target), b"x")
    assert os.listdir(tmp_path) == ["d"]


def test_write_file_atomic_failed_write_leaves_nothing(tmp_path: Path):
    # A disk that fills up mid-write (RLIMIT_FSIZE stands in for it: EFBIG instead of ENOSPC).
    def child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1000, resource.RLIM_INFINITY))
        try:
            write_file_atomic(str(tmp_path / "sub" / "f"), b"x" * 5000)
        except OSError as err:
            return err.errno
        return None

    (tmp_path / "sub").mkdir()
    assert in_child(tmp_path, child) == errno.EFBIG
    assert os.listdir(tmp_path / "sub") == []


# -- descriptors -----------------------------------------------------------------


def test_open_fds_sees_a_new_fd_and_not_its_own():
    before = open_fds()
    assert before == sorted(before)
    assert {0, 1, 2} <= set(before)
    fd = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    try:
        assert fd in open_fds()
    finally:
        os.close(fd)
    assert fd not in open_fds()
    # fd is now the lowest free number: listdir's own descriptor takes it and is gone by the time it's checked
    lowest = os.open("/dev/null", os.O_RDONLY)
    os.close(lowest)
    assert lowest not in open_fds()


def test_open_fds_includes_high_numbers():
    r, w = os.pipe()
    try:
        os.dup2(r, 200)
        try:
            fds = open_fds()
            assert {r, w, 200} <= set(fds)
        finally:
            os.close(200)
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(("value", "fd"), [(None, None), ("", None), ("0", 0), ("5", 5), ("123", 123)])
def test_fd_from_env(monkeypatch, value, fd):
    if value is None:
        monkeypatch.delenv("_OCI_TEST_FD", raising=False)
    else:
        monkeypatch.setenv("_OCI_TEST_FD", value)
    assert fd_from_env("_OCI_TEST_FD") == fd


@pytest.mark.parametrize("value", ["abc", "-1", "3x", "0x3", "1.0"])
def test_fd_from_env_rejects_non_numbers(monkeypatch, value):
    monkeypatch.setenv("_OCI_TEST_FD", value)
    with pytest.raises(ValueError):
        fd_from_env("_OCI_TEST_FD")


def test_close_fds_from_in_child(tmp_path: Path):
    def child():
        fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]
        os.dup2(fds[0], 77)
        os.dup2(fds[0], 300)
        close_fds_from(3, {77, fds[1]})
        return [fds[1], open_fds()]

    kept, left = in_child(tmp_path, child)
    assert left == [0, 1, 2, kept, 77]


def test_close_fds_from_low_bound(tmp_path: Path):
    def child():
        for fd in open_fds():
            if fd > 2:
                os.close(fd)
        a = os.open("/dev/null", os.O_RDONLY)  # 3
        b = os.open("/dev/null", os.O_RDONLY)  # 4
        c = os.dup2(a, 40)
        close_fds_from(4, set())
        return [[a, b, c], open_fds()]

    (a, b, c), left = in_child(tmp_path, child)
    assert (a, b, c) == (3, 4, 40)
    assert left == [0, 1, 2, 3]


# -- process attributes (each in a throw-away child) -----------------------------


def test_redirect_stdio_to_devnull(tmp_path: Path):
    def child():
        redirect_stdio_to_devnull()
        return [os.readlink(f"/proc/self/fd/{fd}") for fd in (0, 1, 2)]

    assert in_child(tmp_path, child) == ["/dev/null"] * 3


def test_set_oom_score_adj(tmp_path: Path):
    def child():
        old = set_oom_score_adj("321")
        with open("/proc/self/oom_score_adj") as f:
            now = f.read().strip()
        return [old, now, set_oom_score_adj("5", pid="999999999")]

    old, now, missing = in_child(tmp_path, child)
    if old is None:
        pytest.skip("cannot write oom_score_adj here")
    assert old.lstrip("-").isdigit()
    assert now == "321"
    assert missing is None  # failure is reported, not raised


def test_subreaper_adopts_orphans_and_pdeathsig_kills(tmp_path: Path):
    """A subreaper reaps a grandchild whose parent died; that grandchild had PDEATHSIG=SIGKILL."""

    def child():
        set_subreaper(True)
        ready_r, ready_w = os.pipe()
        middle = os.fork()
        if middle == 0:
            grandchild = os.fork()
            if grandchild == 0:
                set_parent_death_signal()
                os.write(ready_w, b"x")
                time.sleep(30)
                os._exit(0)
            os.read(ready_r, 1)  # the grandchild has PDEATHSIG set
            os._exit(0)
        _, middle_status = os.waitpid(middle, 0)
        # The grandchild was re-parented to us (subreaper) and killed by its parent's death.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid:
                return [os.WEXITSTATUS(middle_status), os.WIFSIGNALED(status) and os.WTERMSIG(status)]
            time.sleep(0.005)
        return None

    assert in_child(tmp_path, child) == [0, signal.SIGKILL]
