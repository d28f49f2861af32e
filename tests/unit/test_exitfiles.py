"""Unit tests for pyconmon.exitfiles: exit codes from real wait statuses, exit files, the exit command."""

from __future__ import annotations

import ctypes
import os
import signal
import struct
import time
from pathlib import Path

import pytest

from pyconmon.exitfiles import exit_code_from_status, run_exit_command, write_exit_files
from support.forked import in_child, wait_status

CID = "0123456789abcdef0123"


def status_of(child) -> int:
    """The waitpid status of a forked child that runs ``child()``."""
    pid = os.fork()
    if pid == 0:
        try:
            child()
        finally:
            os._exit(99)
    return wait_status(pid)


@pytest.mark.parametrize("code", [0, 1, 42, 127, 255])
def test_exit_code_of_exited_child(code):
    assert exit_code_from_status(status_of(lambda: os._exit(code))) == code


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP])
def test_exit_code_of_killed_child(sig):
    def child():
        if sig != signal.SIGKILL:
            signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
        time.sleep(5)

    assert exit_code_from_status(status_of(child)) == 128 + sig


def test_exit_code_of_stopped_child_is_not_an_exit():
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(3)
    try:
        status = wait_status(pid, flags=os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert exit_code_from_status(status) == -1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


# -- exit files ------------------------------------------------------------------


def test_write_exit_files(tmp_path: Path):
    persist, exits = tmp_path / "persist", tmp_path / "exits"
    persist.mkdir()
    exits.mkdir()
    assert write_exit_files(137, CID, str(persist), str(exits)) == []
    assert (persist / "exit").read_bytes() == b"137"
    assert (exits / CID).read_bytes() == b"137"
    assert os.listdir(persist) == ["exit"]  # no temp files left behind
    assert os.listdir(exits) == [CID]


@pytest.mark.parametrize(("code", "data"), [(0, b"0"), (-1, b"-1"), (255, b"255")])
def test_exit_file_is_bare_digits(tmp_path: Path, code, data):
    assert write_exit_files(code, CID, None, str(tmp_path)) == []
    assert (tmp_path / CID).read_bytes() == data


def test_exit_file_replaces_old_one(tmp_path: Path):
    (tmp_path / "exit").write_bytes(b"12345\n")
    assert write_exit_files(3, CID, str(tmp_path), None) == []
    assert (tmp_path / "exit").read_bytes() == b"3"
    assert os.listdir(tmp_path) == ["exit"]


def test_no_dirs_no_files(tmp_path: Path):
    assert write_exit_files(1, CID, None, None) == []
    assert write_exit_files(1, CID, "", "") == []


def test_errors_are_returned_and_every_file_attempted(tmp_path: Path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    missing = tmp_path / "missing"
    exits = tmp_path / "exits"
    exits.mkdir()
    # persist dir is unusable: the exit-dir file is still written
    errors = write_exit_files(5, CID, str(missing), str(exits))
    assert errors == [f"Failed to write exit file {missing}/exit: No such file or directory"]
    assert (exits / CID).read_bytes() == b"5"
    # both unusable: two errors, no exception
    errors = write_exit_files(5, CID, str(not_a_dir), str(missing))
    assert errors == [f"Failed to write exit file {not_a_dir}/exit: Not a directory",
                      f"Failed to write exit file {missing}/{CID}: No such file or directory"]
    assert not missing.exists()


def test_failed_exit_file_leaves_no_temp_file(tmp_path: Path):
    # <exit-dir>/<cid> is a directory: the rename fails after the temp file was written
    (tmp_path / CID).mkdir()
    (tmp_path / CID / "x").write_text("keep me non-empty")
    errors = write_exit_files(1, CID, None, str(tmp_path))
    assert len(errors) == 1 and errors[0].startswith(f"Failed to write exit file {tmp_path}/{CID}: ")
    assert os.listdir(tmp_path) == [CID]


IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_CLOEXEC = os.O_CLOEXEC


def test_persist_file_appears_before_exit_dir_file(tmp_path: Path):
    """CRI-O reacts to the exit-dir file and then reads the persist one: the order is part of the contract."""
    libc = ctypes.CDLL(None, use_errno=True)
    persist, exits = tmp_path / "persist", tmp_path / "exits"
    persist.mkdir()
    exits.mkdir()
    ifd = libc.inotify_init1(IN_CLOEXEC | os.O_NONBLOCK)
    assert ifd >= 0
    try:
        wd_persist = libc.inotify_add_watch(ifd, str(persist).encode(), IN_MOVED_TO | IN_CREATE)
        wd_exits = libc.inotify_add_watch(ifd, str(exits).encode(), IN_MOVED_TO | IN_CREATE)
        assert wd_persist >= 0 and wd_exits >= 0
        assert write_exit_files(0, CID, str(persist), str(exits)) == []
        data = os.read(ifd, 65536)
    finally:
        os.close(ifd)
    events = []
    while data:
        wd, mask, _cookie, length = struct.unpack_from("iIII", data)
        name = data[16:16 + length].rstrip(b"\0").decode()
        data = data[16 + length:]
        events.append(({wd_persist: "persist", wd_exits: "exits"}[wd], mask, name))
    # Each file appears complete (moved in), never created in place.
    assert [e for e in events if e[1] & IN_MOVED_TO] == [("persist", IN_MOVED_TO, "exit"),
                                                          ("exits", IN_MOVED_TO, CID)]
    assert not [e for e in events if e[1] & IN_CREATE and e[2] in ("exit", CID)]


# -- exit command ----------------------------------------------------------------


def test_exit_command_argv_is_literal(tmp_path: Path):
    out = tmp_path / "argv"
    args = ["a b", "$HOME", "*", "'q'", ";echo injected", ""]
    script = 'for a in "$@"; do printf "%s\\0" "$a"; done > "$0"'
    code = in_child(tmp_path, lambda: run_exit_command(["/bin/sh", "-c", script, str(out), *args], 0, None))
    assert code == 0
    assert out.read_bytes().split(b"\0")[:-1] == [a.encode() for a in args]


@pytest.mark.parametrize(("script", "code"), [("exit 0", 0), ("exit 7", 7), ("kill -TERM $$", 128 + 15)])
def test_exit_command_status(tmp_path: Path, script, code):
    assert in_child(tmp_path, lambda: run_exit_command(["/bin/sh", "-c", script], 0, None)) == code


def test_exit_command_status_even_if_sigchld_was_ignored(tmp_path: Path):
    # With SIGCHLD ignored, children are reaped by the kernel and waitpid can't see the status.
    def child():
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        return run_exit_command(["/bin/sh", "-c", "exit 7"], 0, None)

    assert in_child(tmp_path, child) == 7


def test_exit_command_not_found(tmp_path: Path):
    err = tmp_path / "stderr"

    def child():
        fd = os.open(err, os.O_WRONLY | os.O_CREAT, 0o600)
        os.dup2(fd, 2)
        return run_exit_command([str(tmp_path / "nonexistent"), "x"], 0, None)

    assert in_child(tmp_path, child) == 127
    assert err.read_text().startswith(f"[conmon:e]: Failed to exec exit command {tmp_path}/nonexistent: ")


def test_exit_command_delay(tmp_path: Path):
    def child(delay):
        start = time.monotonic()
        code = run_exit_command(["/bin/sh", "-c", "exit 3"], delay, None)
        return [code, time.monotonic() - start]

    code, elapsed = in_child(tmp_path, lambda: child(0))
    assert code == 3 and elapsed < 0.9
    code, elapsed = in_child(tmp_path, lambda: child(1))
    assert code == 3 and elapsed >= 1.0


def test_exit_command_gets_no_inherited_fds(tmp_path: Path):
    out = tmp_path / "fd"
    probe = ["/bin/sh", "-c", 'if [ -e /proc/self/fd/50 ]; then echo open; else echo closed; fi > "$0"', str(out)]

    def child():
        r, _w = os.pipe()
        os.dup2(r, 50, inheritable=True)
        # the probe itself works: a plain spawn passes fd 50 on
        pid = os.spawnv(os.P_NOWAIT, probe[0], probe)
        os.waitpid(pid, 0)
        before = out.read_text().strip()
        return [before, run_exit_command(probe, 0, None), out.read_text().strip()]

    assert in_child(tmp_path, child) == ["open", 0, "closed"]


def sigign_mask(path: Path) -> int:
    line = next(x for x in path.read_text().splitlines() if x.startswith("SigIgn:"))
    return int(line.split()[1], 16)


def test_exit_command_gets_default_sigpipe(tmp_path: Path):
    out = tmp_path / "status"
    probe = ["/bin/sh", "-c", 'cat /proc/self/status > "$0"', str(out)]

    def child():
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as in the monitor
        return run_exit_command(probe, 0, None)

    assert in_child(tmp_path, child) == 0
    assert not sigign_mask(out) & (1 << (signal.SIGPIPE - 1))


def test_exit_command_restores_oom_score(tmp_path: Path):
    out = tmp_path / "oom"
    probe = ["/bin/sh", "-c", 'cat /proc/self/oom_score_adj > "$0"', str(out)]

    def child():
        try:
            with open("/proc/self/oom_score_adj", "w") as f:
                f.write("500")
        except OSError:
            return None
        return run_exit_command(probe, 0, "123")

    code = in_child(tmp_path, child)
    if code is None:
        pytest.skip("cannot write oom_score_adj here")
    assert code == 0
    assert out.read_text().strip() == "123"


def test_exit_command_does_not_wait_for_its_orphans(tmp_path: Path):
    """The monitor stops being a subreaper first: what the exit command leaves running is not its business."""
    from pyconmon.process import set_subreaper

    pidfile = tmp_path / "orphan"
    script = 'sleep 3 & echo $! > "$0"; exit 4'

    def child():
        set_subreaper(True)  # as the monitor is
        start = time.monotonic()
        code = run_exit_command(["/bin/sh", "-c", script, str(pidfile)], 0, None)
        return [code, time.monotonic() - start]

    try:
        code, elapsed = in_child(tmp_path, child)
    finally:
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass
    assert code == 4
    assert elapsed < 2.5
