"""Unit tests for pyconmon.runtime: the runtime's argv (CONTRACT 2 step 8), --preserve-fds and LISTEN_PID."""

from __future__ import annotations

import pytest

from pyconmon.options import parse_args, validate
from pyconmon.runtime import ListenPidError, listen_pid_env, preserved_fd_count, runtime_argv

RT = "/bin/true"
CID = "0123456789abcdef0123"
CWD = "/run/cwd"


def options(*extra: str):
    opts = parse_args(["-c", CID, "-u", CID, "-r", RT, "-l", "none:", *extra])
    validate(opts, cwd=CWD)
    return opts


def test_create_minimal_uses_defaults():
    # bundle and pid file default to the working directory (options.validate)
    assert runtime_argv(options(), None) == [RT, "create", "--bundle", CWD, "--pid-file", f"{CWD}/pidfile-{CID}", CID]


def test_create_everything():
    opts = options("-b", "/b", "-p", "/p", "-s", "--runtime-arg", "--root=/run/crun", "--runtime-arg", "--debug",
                   "--no-pivot", "--no-new-keyring", "--runtime-opt", "--preserve-fds", "--runtime-opt", "2")
    assert runtime_argv(opts, "/tmp/conmon-term.abc123") == [
        RT, "--systemd-cgroup", "--root=/run/crun", "--debug", "create", "--bundle", "/b", "--pid-file", "/p",
        "--no-pivot", "--no-new-keyring", "--preserve-fds", "2", "--console-socket", "/tmp/conmon-term.abc123", CID]


@pytest.mark.parametrize(("extra", "tail"), [
    (["--no-pivot"], ["--no-pivot"]),
    (["--no-new-keyring"], ["--no-new-keyring"]),
    (["--no-new-keyring", "--no-pivot"], ["--no-pivot", "--no-new-keyring"]),  # order is fixed, not the caller's
])
def test_create_flags_order(extra, tail):
    argv = runtime_argv(options("-b", "/b", "-p", "/p", *extra), None)
    assert argv == [RT, "create", "--bundle", "/b", "--pid-file", "/p", *tail, CID]


def test_restore():
    opts = options("-b", "/b", "-p", "/p", "--systemd-cgroup", "--runtime-arg", "--log=x", "--restore", "/ckpt",
                   "--no-pivot", "--no-new-keyring", "--restore-arg", "--tcp-established")
    assert runtime_argv(opts, None) == [
        RT, "--systemd-cgroup", "--log=x", "restore", "--bundle", "/b", "--pid-file", "/p", "--no-pivot",
        "--no-new-keyring", "--detach", "--image-path", "/ckpt", "--work-path", "/b", "--tcp-established", CID]


def test_restore_with_console_socket():
    argv = runtime_argv(options("-b", "/b", "-p", "/p", "--restore", "/ckpt", "-t"), "/tmp/cs")
    assert argv == [RT, "restore", "--bundle", "/b", "--pid-file", "/p", "--detach", "--image-path", "/ckpt",
                    "--work-path", "/b", "--console-socket", "/tmp/cs", CID]


def test_exec():
    opts = options("-e", "--exec-process-spec", "/spec.json", "-p", "/exec.pid", "--runtime-arg", "--root=/r",
                   "--runtime-opt", "--preserve-fds=1")
    assert runtime_argv(opts, None) == [RT, "--root=/r", "exec", "--pid-file", "/exec.pid", "--process",
                                        "/spec.json", "--detach", "--preserve-fds=1", CID]


def test_exec_tty_and_no_create_only_flags():
    # --systemd-cgroup, --no-pivot and --no-new-keyring belong to create/restore: exec never gets them.
    opts = options("-e", "--exec-process-spec", "/spec.json", "-p", "/exec.pid", "-t", "-s", "--no-pivot",
                   "--no-new-keyring")
    assert runtime_argv(opts, "/tmp/cs") == [RT, "exec", "--pid-file", "/exec.pid", "--process", "/spec.json",
                                             "--detach", "--tty", "--console-socket", "/tmp/cs", CID]


def test_legacy_exec_without_cuuid_or_bundle():
    opts = parse_args(["-c", CID, "-r", RT, "-e", "--exec-process-spec", "/s", "-l", "none:", "-p", "/p"])
    validate(opts, cwd=CWD)
    assert runtime_argv(opts, None) == [RT, "exec", "--pid-file", "/p", "--process", "/s", "--detach", CID]


@pytest.mark.parametrize(("opts", "count"), [
    ([], 0),
    (["--preserve-fds", "3"], 3),
    (["--preserve-fds=4"], 4),
    (["--other", "--preserve-fds", "2", "--x"], 2),
    (["--preserve-fds", "abc"], 0),
    (["--preserve-fds=abc"], 0),
    (["--preserve-fds="], 0),
    (["--preserve-fds", "-3"], 0),
    (["--preserve-fds"], 0),  # no value follows
    (["--preserve-fds", "2", "--preserve-fds=5"], 5),  # the last one counts
    (["--preserve-fds", "2", "--preserve-fds=junk"], 2),  # garbage doesn't reset a good value
    (["--preserve-fds-extra", "9"], 0),
    (["preserve-fds", "9"], 0),
])
def test_preserved_fd_count(opts, count):
    args = []
    for word in opts:
        args += ["--runtime-opt", word]
    assert preserved_fd_count(options(*args)) == count


@pytest.mark.parametrize(("env", "parent", "replace", "rewrite"), [
    ({}, 100, False, False),
    ({}, 100, True, False),  # nothing to replace
    ({"LISTEN_PID": "100"}, 100, False, True),
    ({"LISTEN_PID": "101"}, 100, False, False),
    ({"LISTEN_PID": "101"}, 100, True, True),
    ({"LISTEN_PID": "1", "LISTEN_FDS": "2"}, 1, False, True),
])
def test_listen_pid(env, parent, replace, rewrite):
    assert listen_pid_env(env, parent, replace) is rewrite


@pytest.mark.parametrize("value", ["0", "-5", "abc", "", "12abc"])
@pytest.mark.parametrize("replace", [False, True])
def test_listen_pid_invalid(value, replace):
    with pytest.raises(ListenPidError) as err:
        listen_pid_env({"LISTEN_PID": value}, 100, replace)
    assert str(err.value) == f"Invalid LISTEN_PID {value}"
    assert isinstance(err.value, ValueError)
