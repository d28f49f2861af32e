"""Tests of the shared test bed (tests/support) against /usr/bin/conmon and the launcher.

The C conmon results are the reference: a test bed change that breaks one of
the ``[conmon]`` cases is a test bed bug, not a pyconmon bug.
"""

import json
import os
import signal
import stat
import subprocess
import sys

import pytest

from support import MONITORS, REPO, RUNTIMES
from support.bundle import make_bundle, make_process_spec, read_spec
from support.harness import (
    K8sRecord,
    container_state,
    join_lines,
    parse_k8s_timestamp,
    pid_alive,
    read_k8s_log,
    read_pidfile,
    stream_text,
    wait_exit_file,
    wait_pid_gone,
)
from support.runtimes import require_runtime, v2_controllers

STYLES = ["podman", "crio"]
SYNC_KEY = {"podman": "data", "crio": "pid"}


# --------------------------------------------------------------------------
# the pieces on their own (no monitor)


def test_rootfs_layout(rootfs):
    bb = os.path.join(rootfs, "bin", "busybox")
    assert stat.S_ISREG(os.lstat(bb).st_mode) and os.access(bb, os.X_OK)
    for applet in ("sh", "echo", "cat", "sleep", "head"):
        assert os.readlink(os.path.join(rootfs, "bin", applet)) == "busybox"
    for d in ("tmp", "proc", "dev", "sys"):
        assert os.path.isdir(os.path.join(rootfs, d))
    with open(os.path.join(rootfs, "etc", "passwd")) as f:
        assert f.readline().startswith("root:x:0:0:")
    assert os.path.exists(os.path.join(rootfs, "etc", "group"))


def test_make_bundle_config(tmp_path, rootfs):
    b = make_bundle(tmp_path / "b", ["sh", "-c", "echo hi"], terminal=True, env={"FOO": "bar"},
                    memory_limit=32 << 20)
    spec = read_spec(b)
    assert spec["process"]["args"] == ["sh", "-c", "echo hi"]
    assert spec["process"]["terminal"] is True
    assert "FOO=bar" in spec["process"]["env"]
    assert any(e.startswith("PATH=") for e in spec["process"]["env"])
    assert spec["root"] == {"path": rootfs, "readonly": True}
    assert spec["linux"]["resources"]["memory"]["limit"] == 32 << 20
    assert os.listdir(b) == ["config.json"]
    ps = make_process_spec(tmp_path / "p.json", b, ["true"], terminal=False)
    with open(ps) as f:
        proc = json.load(f)
    assert proc["args"] == ["true"] and proc["terminal"] is False


def test_k8s_log_parsing(tmp_path):
    p = tmp_path / "log"
    p.write_bytes(
        b"2026-11-29T20:02:21.198261565+00:00 stdout P abc\n"
        b"2026-11-29T20:02:21.198261566+00:00 stderr F err line\n"
        b"2026-11-29T20:02:21.198261567+00:00 stdout F def  ghi\n"
        b"2026-11-29T20:02:21.198261568+00:00 stdout F \n"
        b"2026-11-29T20:02:21.198261569+01:00 stdout P tail\n"
    )
    recs = read_k8s_log(p)
    assert recs[0] == K8sRecord("2026-11-29T20:02:21.198261565+00:00", "stdout", "P", b"abc")
    assert recs[2].content == b"def  ghi"
    assert recs[3].content == b""
    lines = join_lines(recs)
    assert [(x.stream, x.content, x.complete) for x in lines] == [
        ("stderr", b"err line", True),
        ("stdout", b"abcdef  ghi", True),
        ("stdout", b"", True),
        ("stdout", b"tail", False),
    ]
    assert stream_text(recs) == b"abcdef  ghi\n\ntail"
    assert parse_k8s_timestamp(recs[4].timestamp).utcoffset().total_seconds() == 3600
    with pytest.raises(ValueError):
        parse_k8s_timestamp("2026-11-29T20:02:21.1982615Z")
    assert read_k8s_log(tmp_path / "missing") == []


def test_wait_exit_file_has_a_deadline(tmp_path):
    with pytest.raises(TimeoutError):
        wait_exit_file(tmp_path / "never", timeout=0.2)
    (tmp_path / "x").write_text("42")
    assert wait_exit_file(tmp_path / "x", timeout=0.2) == 42


# --------------------------------------------------------------------------
# create, the way each caller does it


@pytest.mark.parametrize("style", STYLES)
def test_echo_hello(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["echo", "hello"], style=style)
    assert m.first_status == 0, m.describe()
    assert m.sync_msg == {SYNC_KEY[style]: m.container_pid}, m.describe()
    assert m.container_pid > 0
    assert m.pid and m.pid != m.first_pid
    with open(m.conmon_pidfile, "rb") as f:
        assert f.read() == str(m.pid).encode()  # no newline
    assert m.wait_exit_file() == 0
    recs = m.log_records()
    assert [(r.stream, r.tag, r.content) for r in recs] == [("stdout", "F", b"hello")]
    parse_k8s_timestamp(recs[0].timestamp)
    if style == "crio":
        assert m.persist_exit() == 0
        assert m.messages == [{"pid": m.container_pid}]
    m.wait(10)
    assert not pid_alive(m.pid)
    assert m.wait_stdio_eof(5), "someone kept the caller's stdout/stderr pipe open"


@pytest.mark.parametrize("style", STYLES)
def test_exit_code_and_stderr(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo out; echo err >&2; exit 7"], style=style)
    assert m.wait_exit_file() == 7, m.describe()
    lines = {(x.stream, x.content) for x in m.log_lines()}
    assert lines == {("stdout", b"out"), ("stderr", b"err")}


@pytest.mark.parametrize("style", STYLES)
def test_terminal(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo a; echo b >&2"], style=style, terminal=True)
    assert m.container_pid, m.describe()
    assert m.wait_exit_file() == 0
    assert [(r.stream, r.content) for r in m.log_records()] == [("stdout", b"a\r"), ("stdout", b"b\r")]


@pytest.mark.parametrize("style", STYLES)
def test_attach_before_start(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo hello; echo bye >&2"], style=style, start=False)
    assert m.container_pid, m.describe()
    client = m.attach()
    m.start_container()
    out = client.read_until_eof(10)
    assert out == {2: b"hello\n", 3: b"bye\n"}
    assert client.max_packet <= 8193
    assert m.wait_exit_file() == 0


@pytest.mark.parametrize("style", STYLES)
def test_stdin_via_attach(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["cat"], style=style, stdin=True)
    assert m.container_pid, m.describe()
    client = m.attach()
    client.send(b"ping\n")
    client.read_until(lambda o: o.get(2) == b"ping\n", 10)
    client.shutdown_write()  # closes the container's stdin (-i without --leave-stdin-open)
    assert client.read_until_eof(10) == {2: b"ping\n"}
    assert m.wait_exit_file() == 0


@pytest.mark.parametrize("style", STYLES)
def test_failed_create_reports_minus_one(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["/does/not/exist"], style=style, start=False)
    assert m.sync_msg is not None, m.describe()
    assert m.sync_msg[SYNC_KEY[style]] < 0
    assert m.sync_msg.get("message")
    m.wait(10)
    assert not os.path.exists(m.exit_file)


@pytest.mark.parametrize("style", STYLES)
def test_oom_kill(testbed, monitor_bin, style):
    script = "x=0123456789abcdef; while true; do x=$x$x; done"
    m = testbed.run(monitor_bin, ["sh", "-c", script], style=style, bundle_kw={"memory_limit": 16 << 20})
    assert m.wait_exit_file(30) == 137, m.describe()
    if style == "crio":
        assert os.path.exists(os.path.join(m.persist_dir, "oom"))
        assert os.path.exists(os.path.join(m.bundle, "oom"))  # cwd = bundle, so 2.1.6 agrees


@pytest.mark.parametrize("style", STYLES)
def test_blocks_on_start_pipe(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["echo", "hello"], style=style, write_start=False)
    with pytest.raises(TimeoutError):
        m.wait_first(0.3)  # nothing happens before the start byte
    assert not os.path.exists(m.conmon_pidfile)
    assert m.write_start()
    m.finish_create(start=True)
    assert m.container_pid, m.describe()
    assert m.wait_exit_file() == 0


@pytest.mark.parametrize("style", STYLES)
def test_raw_argv_validation_error(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, argv=["-r", "/usr/bin/runc", "-l", "k8s-file:/dev/null"], style=style,
                    start=False)
    assert m.first_status == 1
    assert b"Container ID not provided. Use --cid" in m.stderr
    assert m.sync_msg is None  # EOF, nothing sent


def test_monitor_env_is_the_callers(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sleep", "30"], style="crio")
    assert m.container_pid, m.describe()
    with open(f"/proc/{m.pid}/environ", "rb") as f:
        env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if x)
    assert env[b"_OCI_SYNCPIPE"] == b"3" and env[b"_OCI_STARTPIPE"] == b"4"
    assert env[b"CRI_O_EXTERNAL"] == b"1"
    for k in (b"HOME", b"TMPDIR", b"PYTHONPATH", b"LANG"):
        assert k not in env


def test_preserved_fd_reaches_container(testbed, monitor_bin):
    r, w = os.pipe()
    try:
        m = testbed.run(monitor_bin, ["sh", "-c", "echo via-fd3 >&3"], style="podman", preserve_fds=[w],
                        extra_args=["--runtime-opt", "--preserve-fds", "--runtime-opt", "1"])
        os.close(w)
        w = None
        assert m.env["_OCI_SYNCPIPE"] == "4" and m.env["_OCI_STARTPIPE"] == "5"
        assert m.container_pid, m.describe()
        assert m.wait_exit_file() == 0
        assert os.read(r, 100) == b"via-fd3\n"
    finally:
        os.close(r)
        if w is not None:
            os.close(w)


@pytest.mark.parametrize("style", STYLES)
def test_teardown_deletes_container(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["sleep", "60"], style=style)
    assert m.container_pid, m.describe()
    assert m.state()["status"] == "running"
    testbed.tracker.cleanup()
    assert m.state() is None
    assert not pid_alive(m.pid)
    assert wait_exit_file(m.exit_file, 1) == 137


def test_signal_forwarded(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sleep", "60"], style="crio")
    assert m.container_pid, m.describe()
    m.signal(signal.SIGTERM)  # pid 1 in the container ignores TERM: conmon forwards, nothing happens
    m.signal(signal.SIGQUIT)
    assert pid_alive(m.pid)
    os.kill(m.container_pid, signal.SIGKILL)
    assert m.wait_exit_file() == 137
    wait_pid_gone(m.pid, 10)


# --------------------------------------------------------------------------
# exec


@pytest.fixture(params=STYLES)
def sleeper(request, testbed):
    """A running ``sleep 60`` container started with C conmon (exec tests vary only the exec monitor)."""
    m = testbed.run(MONITORS["conmon"], ["sleep", "60"], style=request.param)
    assert m.container_pid, m.describe()
    return m


def test_podman_exec_attach(testbed, monitor_bin, sleeper):
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"], style="podman")
    assert e.attach_msg == {"data": 0}, e.describe()
    assert e.sync_msg["data"] > 0, e.describe()
    assert e.client.read_until_eof(10) == {2: b"out\n", 3: b"err\n"}
    assert e.wait_exit_file() == 3
    assert e.exit_file == os.path.join(e.bundle, "exit", sleeper.cid)
    assert e.read_sync(10) == {"data": 3}


def test_crio_exec_sync(testbed, monitor_bin, sleeper):
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"], style="crio")
    assert e.sync_msg == {"exit_code": 3}, e.describe()
    assert e.messages == [{"exit_code": 3}]
    assert {(x.stream, x.content) for x in e.log_lines()} == {("stdout", b"out"), ("stderr", b"err")}
    assert e.wait_stdio_eof(5)


def test_crio_exec_timeout(testbed, monitor_bin, sleeper):
    e = testbed.exec(monitor_bin, sleeper, ["sleep", "30"], style="crio", timeout=1)
    assert e.sync_msg == {"exit_code": -1, "message": "command timed out"}, e.describe()


# --------------------------------------------------------------------------
# Podman


def test_podman_info_reports_monitor(podman, monitor_bin):
    r = podman("info", "--format", "{{.Host.Conmon.Path}}", conmon=monitor_bin)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == monitor_bin


def test_podman_run_rm(podman_clean, monitor_bin):
    r = podman_clean("run", "--rm", "busybox", "echo", "hi", conmon=monitor_bin)
    assert (r.returncode, r.stdout) == (0, "hi\n"), r.stderr


def test_podman_run_detached(podman_clean, monitor_bin):
    podman = podman_clean
    r = podman("run", "-d", "busybox", "sh", "-c", "echo hello; echo oops >&2; exit 4", conmon=monitor_bin)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    assert len(cid) == 64
    w = podman("wait", cid, conmon=monitor_bin, timeout=30)
    assert w.stdout.strip() == "4", w.stderr
    logs = podman("logs", cid, conmon=monitor_bin)
    assert (logs.stdout, logs.stderr) == ("hello\n", "oops\n")
    assert podman.inspect(cid, "{{.State.ExitCode}}") == "4"
    log_path = os.path.join(podman.bundle(cid), "ctr.log")
    assert [(x.stream, x.content) for x in read_k8s_log(log_path)] == [("stdout", b"hello"), ("stderr", b"oops")]


def test_podman_passes_monitor_to_exit_command(podman_clean, monitor_bin):
    podman = podman_clean
    r = podman("run", "-d", "busybox", "sleep", "30", conmon=monitor_bin)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    pid = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if x)
    assert env[b"CONTAINERS_CONF"].decode() == podman.conf_for(monitor_bin)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert cid.encode() in argv and b"--exit-command" in argv
    # the exit command (``podman container cleanup``) does not get --conmon: it finds the monitor
    # through CONTAINERS_CONF alone (README, "Using it with Podman")
    exit_args = [a for i, a in enumerate(argv) if i and argv[i - 1] == b"--exit-command-arg"]
    assert exit_args[-3:] == [b"container", b"cleanup", cid.encode()], exit_args
    assert b"--conmon" not in exit_args and monitor_bin.encode() not in exit_args, exit_args
    assert podman("rm", "-f", "-t", "0", cid, conmon=monitor_bin).returncode == 0
    wait_pid_gone(pid, 10)


def test_short_dirs_fit_sun_path(testbed):
    # short dirs keep <dir>/<64 hex id>/attach under sun_path's 108 bytes
    d = testbed.short_dir()
    assert len(os.path.join(d, "x" * 64, "attach")) < 108
    assert read_pidfile(os.path.join(d, "none")) is None


def test_podman_fallback_is_detected(podman, tmp_path):
    """Podman silently falls back to another conmon when the one it is given fails its version
    probe (README, "Using it with Podman"); the test bed's check catches that."""
    fake = tmp_path / "conmon"
    fake.write_text("#!/bin/sh\necho not a conmon\n")
    fake.chmod(0o755)
    r = subprocess.run(podman.argv("info", "--format", "{{.Host.Conmon.Path}}", conmon=str(fake)),
                       env=podman.env(str(fake)), capture_output=True, text=True, timeout=60, cwd=podman.base)
    assert r.returncode == 0, r.stderr  # silently ...
    assert r.stdout.strip() not in ("", str(fake)), r.stdout  # ... another monitor
    with pytest.raises(RuntimeError, match="does not use"):
        podman("ps", conmon=str(fake))


# --------------------------------------------------------------------------
# the OCI runtimes (README "Tests": runc and crun)


@pytest.mark.parametrize("style", STYLES)
def test_container_runs_under_the_selected_runtime(testbed, monitor_bin, style):
    """The monitor is given ``-r <runtime>``, and that runtime (not the other) knows the container."""
    m = testbed.run(monitor_bin, ["sleep", "60"], style=style)
    assert m.container_pid, m.describe()
    assert m.argv[m.argv.index("-r") + 1] == m.runtime == testbed.runtime
    assert m.state()["status"] == "running"
    (other,) = (path for path in RUNTIMES.values() if path != testbed.runtime)
    assert container_state(m.cid, m.runtime_root, runtime=other) is None
    m.runtime_cmd("kill", m.cid, "KILL", check=True)
    assert m.wait_exit_file() == 137


def test_crun_cgroup_setup_leaves_v2_without_controllers(crun_cgroups):
    """After the set-up crun needs (tests/support/runtimes.py; .ci/run does the same), the v2
    hierarchy of this hybrid host holds no controller."""
    assert v2_controllers() == []


def test_e2e_tests_are_collected_for_both_runtimes():
    """Without PYCONMON_TEST_RUNTIMES a testbed test gets a [runc] and a [crun] id (per monitor);
    a ``one_runtime`` test gets runc alone; a Podman test through ``podman_clean`` gets both, and so
    does a Podman exec test (one container per runtime)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYCONMON_TEST_RUNTIMES", "PYCONMON_TEST_MONITORS")}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
                        "tests/e2e/test_core_runc.py::test_pidfiles", "tests/e2e/test_core_runc.py::test_runtime_fails",
                        "tests/e2e/test_podman.py::test_run_foreground_streams_apart",
                        "tests/e2e/test_podman_tty.py::test_exec_streams_apart_and_exit_codes"],
                       capture_output=True, text=True, timeout=120, env=env, cwd=REPO, check=False)
    ids = sorted(x for x in r.stdout.splitlines() if "::" in x)
    assert ids == sorted([
        "tests/e2e/test_core_runc.py::test_pidfiles[conmon-runc]",
        "tests/e2e/test_core_runc.py::test_pidfiles[conmon-crun]",
        "tests/e2e/test_core_runc.py::test_pidfiles[pyconmon-runc]",
        "tests/e2e/test_core_runc.py::test_pidfiles[pyconmon-crun]",
        "tests/e2e/test_core_runc.py::test_runtime_fails[conmon-runc]",
        "tests/e2e/test_core_runc.py::test_runtime_fails[pyconmon-runc]",
        *(f"tests/e2e/test_podman.py::test_run_foreground_streams_apart[{mon}-{rt}]"
          for rt in ("runc", "crun") for mon in ("conmon", "installed", "checkout")),
        *(f"tests/e2e/test_podman_tty.py::test_exec_streams_apart_and_exit_codes[{rt}-{mon}]"
          for rt in ("runc", "crun") for mon in ("conmon", "installed")),
    ]), r.stdout + r.stderr


def test_a_missing_runtime_fails_it_is_not_skipped(monkeypatch):
    monkeypatch.setitem(RUNTIMES, "crun", "/nonexistent/crun")
    with pytest.raises(RuntimeError, match=r"crun is not installed \(/nonexistent/crun\); .ci/run installs it"):
        require_runtime("crun")
