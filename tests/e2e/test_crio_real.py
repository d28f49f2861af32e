"""The real CRI-O (tests/crio/setup.sh) drives the monitor through crictl.

Every test runs once per runtime handler: ``conmon`` (Debian's C conmon, the
reference) and ``pyconmon`` (``make crio`` into setup.sh's private prefix),
and asserts the same exact outcome for both, so a difference between the two
monitors fails one of the pair. Restrict with PYCONMON_TEST_MONITORS.
"""

import os
import re
import signal
import threading
import time
import warnings

import pytest

from support.crio import HANDLERS, Crio, proc_exe, proc_start_time, unavailable_reason
from support.harness import (
    join_lines,
    pid_alive,
    poll_until,
    proc_cmdline,
    read_k8s_log,
    server_pids,
    stat_after_comm,
    wait_pid_gone,
)


def _selected_handlers():
    sel = [x.strip() for x in os.environ.get("PYCONMON_TEST_MONITORS", "").split(",") if x.strip()]
    return [h for h in HANDLERS if not sel or h in sel] or list(HANDLERS)


@pytest.fixture(scope="module")
def crio():
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    c = Crio()
    was_running = c.crio_pid_alive()
    c.start()
    yield c
    problems = c.close()
    if not was_running:  # a CRI-O someone else started is left to them
        c.stop()
    for p in problems:
        warnings.warn(f"crio teardown: {p}", stacklevel=1)


@pytest.fixture(params=_selected_handlers())
def handler(request):
    return request.param


@pytest.fixture
def crio_pods(crio):
    """The CRI-O object; pods the test created are removed (by id) afterwards."""
    before = list(crio.pods)
    yield crio
    for p in crio.cleanup(keep=before):
        warnings.warn(f"crio cleanup: {p}", stacklevel=1)


def _monitor_of(crio, handler, cid):
    """The monitor's pid for ``cid``, checked to be the handler's monitor binary."""
    pid = poll_until(lambda: crio.monitor_pid(cid), 30, what="conmon-pidfile")
    exe = proc_exe(pid)
    want = os.path.realpath(crio.monitor_path[handler])
    assert exe == want, f"monitor {pid} runs {exe}, not {want}"
    return pid


# -- pods --------------------------------------------------------------------


def test_pod_without_infra_container(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "noinfra", infra=False)
    info = crio.inspectp(pod.id)
    assert info["status"]["state"] == "SANDBOX_READY"
    assert info["info"]["runtimeSpec"]["annotations"]["io.kubernetes.cri-o.RuntimeHandler"] == handler
    # A spoofed sandbox: no monitor (it would have written conmon-pidfile).
    assert os.path.isdir(crio.bundle(pod.id))
    assert not os.path.exists(os.path.join(crio.bundle(pod.id), "conmon-pidfile"))
    cid = crio.run(pod, "hello", ["echo", "hello"])
    assert crio.exited(cid) == (0, "Completed")
    assert crio.logs(cid) == (b"hello\n", b"")
    crio.crictl("stopp", pod.id)
    assert crio.inspectp(pod.id)["status"]["state"] == "SANDBOX_NOTREADY"


def test_pod_with_infra_container(crio_pods, handler):
    """The pause container, run by the monitor; the pod's containers share its PID namespace.

    On a machine without CAP_SYS_RESOURCE (this VM) runc cannot set the
    pause container's oom_score_adj of -998, so setup.sh puts runc behind
    tests/crio/runc-oom-adj-shim, which drops that one setting.
    """
    crio = crio_pods
    pod = crio.run_pod(handler, "infra", infra=True)
    assert crio.inspectp(pod.id)["status"]["state"] == "SANDBOX_READY"
    monitor = _monitor_of(crio, handler, pod.id)
    pause_pid = int(open(os.path.join(crio.bundle(pod.id), "pidfile")).read())
    # `runc start` returns before runc's init has exec'd pause (a SIGTERM in that window is lost).
    poll_until(lambda: open(f"/proc/{pause_pid}/comm").read() == "pause\n", 10, what="pause to run")
    # A container shares the pause container's PID namespace: pause is its pid 1.
    cid = crio.run(pod, "ps", ["cat", "/proc/1/comm"])
    assert crio.exited(cid) == (0, "Completed")
    assert crio.logs(cid) == (b"pause\n", b"")
    crio.crictl("stopp", pod.id)
    assert crio.inspectp(pod.id)["status"]["state"] == "SANDBOX_NOTREADY"
    wait_pid_gone(monitor, 30)
    assert not pid_alive(pause_pid)


# -- logs --------------------------------------------------------------------


def test_log_records_and_partial_lines(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "records")
    long_line = "x" * 20000
    script = (f"echo one; printf 'two\\nthree\\n'; echo err >&2; sleep 0.2; echo {long_line}; "
              "sleep 0.2; printf no-newline")
    cid = crio.run(pod, "records", ["sh", "-c", script])
    assert crio.exited(cid) == (0, "Completed")
    records = read_k8s_log(crio.log_path(cid))
    for r in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+([+-]\d\d:\d\d|Z)", r.timestamp), r
    lines = join_lines(records)
    assert [(x.stream, x.content, x.complete) for x in lines if x.stream == "stdout"] == [
        ("stdout", b"one", True), ("stdout", b"two", True), ("stdout", b"three", True),
        ("stdout", long_line.encode(), True), ("stdout", b"no-newline", False)]
    assert [(x.stream, x.content, x.complete) for x in lines if x.stream == "stderr"] == [("stderr", b"err", True)]
    # The long line is split into P records; the last record of the file is a P.
    assert len([r for r in records if r.tag == "P"]) >= 2
    assert records[-1].tag == "P" and records[-1].content == b"no-newline"
    out, err = crio.logs(cid)
    assert out == f"one\ntwo\nthree\n{long_line}\nno-newline".encode()
    assert err == b"err\n"


def test_log_flood_100000_lines(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "flood")
    cid = crio.run(pod, "flood", ["seq", "1", "100000"])
    assert crio.exited(cid, timeout=120) == (0, "Completed")
    out, err = crio.logs(cid)
    assert err == b""
    assert out == b"".join(b"%d\n" % i for i in range(1, 100001))
    # Both monitors split a few lines at their read boundaries (P + F records).
    lines = join_lines(read_k8s_log(crio.log_path(cid)))
    assert [x.content for x in lines] == [b"%d" % i for i in range(1, 100001)]
    assert all(x.complete and x.stream == "stdout" for x in lines)


def test_logs_reopen_after_moving_the_file(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "reopen")
    cid = crio.run(pod, "ticker", ["sh", "-c", "i=0; while [ $i -lt 600 ]; do echo $i; i=$((i+1)); usleep 10000; done"])
    path = crio.log_path(cid)
    poll_until(lambda: len(read_k8s_log(path)) >= 50, 30, what="50 lines logged")
    os.rename(path, path + ".moved")
    crio.crictl("logs", "--reopen", cid, timeout=30)
    assert os.path.exists(path)
    assert crio.exited(cid) == (0, "Completed")
    old = [int(r.content) for r in read_k8s_log(path + ".moved")]
    new = [int(r.content) for r in read_k8s_log(path)]
    assert old and new, (len(old), len(new))
    assert old + new == list(range(600))
    out, _ = crio.logs(cid)  # crictl reads the new file only
    assert out == b"".join(b"%d\n" % i for i in new)


# -- exec --------------------------------------------------------------------


def test_exec_sync_exit_codes_and_output(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "exec")
    cid = crio.run(pod, "sleeper", ["sleep", "600"])
    crio.wait_state(cid, "CONTAINER_RUNNING")
    # crictl prints stdout + "\n" + stderr + "\n" for exit code 0, the stderr alone otherwise.
    assert crio.exec_sync(cid, "echo", "exec-ok") == (0, b"exec-ok\n\n\n", "")
    assert crio.exec_sync(cid, "sh", "-c", "echo out; echo err >&2") == (0, b"out\n\nerr\n\n", "")
    assert crio.exec_sync(cid, "sh", "-c", "echo out; echo err >&2; exit 7") == (7, b"", "err\n")
    assert crio.exec_sync(cid, "sh", "-c", "exit 255") == (255, b"", "")
    assert crio.exec_sync(cid, "sh", "-c", "printf partial") == (0, b"partial\n\n", "")
    r = crio.exec_sync(cid, "seq", "1", "20000")
    assert r == (0, b"".join(b"%d\n" % i for i in range(1, 20001)) + b"\n\n", "")
    # The runtime fails: a gRPC error carrying runc's message, exit code -1.
    r = crio.exec_sync(cid, "/does/not/exist")
    assert r.exit_code is None
    assert 'exec: \\"/does/not/exist\\": stat /does/not/exist: no such file or directory' in r.message, r
    assert r.message.endswith(", stdout: , stderr: , exit code -1"), r


def test_exec_sync_timeout(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "exect")
    cid = crio.run(pod, "sleeper", ["sleep", "600"])
    crio.wait_state(cid, "CONTAINER_RUNNING")
    start = time.monotonic()
    r = crio.exec_sync(cid, "sh", "-c", "echo before; sleep 30", timeout=2)
    elapsed = time.monotonic() - start
    assert r == (-1, b"", "command timed out")
    # C conmon's whole-second GLib timer can fire early (README's comparison table, `--timeout`:
    # up to 0.1 s here; 1.93 s seen through CRI-O); pyconmon's fires on time.
    assert (1.5 if handler == "conmon" else 2) <= elapsed < 20, elapsed
    # The probe's processes are gone: only the container's own sleep is left.
    r = crio.exec_sync(cid, "sh", "-c", "ps -o args | grep -c '[s]leep 30'; true")
    assert r == (0, b"0\n\n\n", ""), r
    # A probe that ends in time is not affected by its timeout.
    assert crio.exec_sync(cid, "echo", "quick", timeout=5) == (0, b"quick\n\n\n", "")


def _probe_monitors(crio, cid):
    """Pids of CRI-O's children running an ExecSync monitor (``--sync``) for ``cid``."""
    crio_pid = str(crio.crio_pid())
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            ppid = stat_after_comm(name)[1]
            argv = proc_cmdline(name).split(b"\0")
        except (OSError, IndexError):
            continue
        if ppid == crio_pid and b"--sync" in argv and cid.encode() in argv:
            found.append(int(name))
    return found


def _server_holding_probe_log(crio, cid):
    """A pyconmon-server of the server-mode install with the probe's log (``/tmp/crio-log-<cid>*``) open."""
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(crio.monitor_path["pyconmon-server"])))
    for pid in server_pids(os.path.join(prefix, "lib", "pyconmon")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.path.basename(os.readlink(f"/proc/{pid}/fd/{fd}")).startswith(f"crio-log-{cid}"):
                    return pid
        except OSError:
            continue
    return None


@pytest.mark.parametrize("probe", ["ok", "timeout"])
def test_exec_sync_is_served_in_server_mode(crio_pods, probe):
    """pyconmon-server's ExecSync probes run in the server: while a probe runs, CRI-O's child for it is
    the stub itself (not the classic monitor it would exec) and the server holds the probe's log."""
    crio = crio_pods
    pod = crio.run_pod("pyconmon-server", f"served-{probe}")
    cid = crio.run(pod, "sleeper", ["sleep", "600"])
    crio.wait_state(cid, "CONTAINER_RUNNING")
    result = []
    command = ["sh", "-c", "echo held; sleep 3"] if probe == "ok" else ["sh", "-c", "echo before; sleep 30"]
    t = threading.Thread(target=lambda: result.append(crio.exec_sync(cid, *command,
                                                                      timeout=2 if probe == "timeout" else None)))
    t.start()
    try:
        server = poll_until(lambda: _server_holding_probe_log(crio, cid), 30, what="the server to take the probe")
        (monitor,) = poll_until(lambda: _probe_monitors(crio, cid), 10, what="the probe's monitor")
        assert proc_exe(monitor) == os.path.realpath(crio.monitor_path["pyconmon-server"])
        assert server
    finally:
        t.join(60)
    assert result == [(0, b"held\n\n\n", "")] if probe == "ok" else result == [(-1, b"", "command timed out")]


# -- attach ------------------------------------------------------------------


def test_attach_with_stdin(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "attach")
    cid = crio.run(pod, "shell", ["sh"], stdin=True, stdin_once=True)
    crio.wait_state(cid, "CONTAINER_RUNNING")
    r = crio.crictl("attach", "-i", cid, input=b"echo attached-ok\necho to-err >&2\nexit 5\n",
                    check=False, timeout=60)
    assert b"attached-ok" in r.stdout, r
    assert crio.exited(cid) == (5, "Error")
    assert crio.logs(cid) == (b"attached-ok\n", b"to-err\n")


def test_a_container_after_one_with_stdin_is_logged(crio_pods, handler):
    """Server mode serves both from one process: nothing of the first may linger (it did: a stale
    OOM eventfd registration hid the second container's stdout pipe from the loop)."""
    crio = crio_pods
    pod = crio.run_pod(handler, "stdin-first")
    first = crio.run(pod, "first", ["sh", "-c", "echo first; exit 5"], stdin=True, stdin_once=True)
    assert crio.exited(first) == (5, "Error")
    second = crio.run(pod, "second", ["sh", "-c", "echo second; sleep 600"])
    poll_until(lambda: crio.logs(second)[0] == b"second\n", 10, what="the second container's log")
    crio.crictl("stop", "-t", "0", second)


# -- stop and exit codes ------------------------------------------------------


def test_stop_with_term_trap(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "trap")
    cid = crio.run(pod, "trap", ["sh", "-c", "trap 'echo got-TERM; exit 0' TERM; echo ready; "
                                             "while true; do sleep 1 & wait $!; done"])
    poll_until(lambda: b"ready" in crio.logs(cid)[0], 30, what="ready")
    start = time.monotonic()
    crio.crictl("stop", "-t", "30", cid)
    assert time.monotonic() - start < 20
    assert crio.exited(cid) == (0, "Completed")
    assert crio.logs(cid)[0] == b"ready\ngot-TERM\n"


def test_stop_without_term_trap_is_killed(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "notrap")
    # sh as pid 1 without a trap ignores SIGTERM: the stop ends with SIGKILL.
    cid = crio.run(pod, "notrap", ["sh", "-c", "echo ready; while true; do sleep 1; done"])
    poll_until(lambda: b"ready" in crio.logs(cid)[0], 30, what="ready")
    start = time.monotonic()
    crio.crictl("stop", "-t", "2", cid)
    assert time.monotonic() - start >= 2
    assert crio.exited(cid) == (137, "Error")


@pytest.mark.parametrize("code,reason", [(0, "Completed"), (3, "Error")])
def test_exit_code_and_reason(crio_pods, handler, code, reason):
    crio = crio_pods
    pod = crio.run_pod(handler, f"exit{code}")
    cid = crio.run(pod, f"exit{code}", ["sh", "-c", f"echo bye; exit {code}"])
    assert crio.exited(cid) == (code, reason)
    # finishedAt is the exit file's ctime (it may precede CRI-O's startedAt for so short a container).
    assert crio.status(cid)["finishedAt"].startswith(time.strftime("%Y-", time.gmtime()))
    # CRI-O read the code from the persist dir's exit file, no newline.
    assert open(os.path.join(crio.persist_dir(cid), "exit")).read() == str(code)


def _memory_controller():
    if os.path.exists("/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        return True
    try:
        with open("/sys/fs/cgroup/cgroup.controllers") as f:
            return "memory" in f.read().split()
    except OSError:
        return False


def test_oom_killed(crio_pods, handler):
    if not _memory_controller():
        pytest.skip("no cgroup memory controller (neither /sys/fs/cgroup/memory nor 'memory' in "
                    "/sys/fs/cgroup/cgroup.controllers)")
    crio = crio_pods
    pod = crio.run_pod(handler, "oom")
    cid = crio.run(pod, "oom", ["sh", "-c", "echo start; x=y; while true; do x=$x$x; done"],
                   memory_limit=16 * 1024 * 1024)
    assert crio.exited(cid) == (137, "OOMKilled")


# -- restart ----------------------------------------------------------------


def test_container_restart_is_a_new_attempt_without_restore(crio_pods, handler):
    """What the kubelet does on restart: a new container (attempt 1) in the same pod, no --restore."""
    crio = crio_pods
    pod = crio.run_pod(handler, "restart")
    first = crio.run(pod, "app", ["sh", "-c", "echo first; exit 3"], attempt=0)
    assert crio.exited(first) == (3, "Error")
    second = crio.create(pod, "app", ["sh", "-c", "echo second; sleep 600"], attempt=1)
    crio.crictl("start", second)
    monitor = _monitor_of(crio, handler, second)
    argv = open(f"/proc/{monitor}/cmdline", "rb").read().split(b"\0")
    assert b"--restore" not in argv
    assert argv[argv.index(b"-l") + 1].endswith(b"/app/1.log")
    poll_until(lambda: crio.logs(second)[0] == b"second\n", 30, what="second's log")
    assert crio.logs(first) == (b"first\n", b"")
    assert crio.status(second)["metadata"] == {"name": "app", "attempt": 1}
    # The first attempt cannot be started again (CRI-O's answer, not the monitor's).
    assert crio.crictl("start", first, check=False).returncode != 0
    crio.crictl("stop", "-t", "0", second)
    assert crio.exited(second) == (137, "Error")


# -- CRI-O and the monitor going away -----------------------------------------


def test_crio_restart_keeps_tracking_running_containers(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "crio-restart")
    cid = crio.run(pod, "ticker", ["sh", "-c", "trap 'exit 4' TERM; while true; do echo tick; sleep 1 & wait $!; done"])
    crio.wait_state(cid, "CONTAINER_RUNNING")
    monitor = _monitor_of(crio, handler, cid)
    tracked = crio.tracked_monitor(cid)
    started = proc_start_time(monitor)
    assert tracked["pid"] == monitor
    log_from = crio.crio_log_size()
    crio.restart()
    assert crio.status(cid)["state"] == "CONTAINER_RUNNING"
    assert crio.tracked_monitor(cid) == tracked
    assert proc_start_time(monitor) == started
    assert f"Failed to load conmon process for container {cid}" not in crio.crio_log_since(log_from)
    assert crio.exec_sync(cid, "echo", "still-here") == (0, b"still-here\n\n\n", "")
    crio.crictl("stop", "-t", "10", cid)
    assert crio.exited(cid) == (4, "Error")
    wait_pid_gone(monitor, 30)


def test_monitor_killed_is_reported(crio_pods, handler):
    crio = crio_pods
    pod = crio.run_pod(handler, "monkill")
    cid = crio.run(pod, "sleeper", ["sleep", "600"])
    crio.wait_state(cid, "CONTAINER_RUNNING")
    monitor = _monitor_of(crio, handler, cid)
    log_from = crio.crio_log_size()
    os.kill(monitor, signal.SIGKILL)
    wait_pid_gone(monitor, 10)
    # CRI-O probes monitors every 10 s (+ up to 1 s jitter).
    line = f"Conmon for container {cid} is stopped, although the container is running"
    poll_until(lambda: line in crio.crio_log_since(log_from), 40, interval=0.5, what="CRI-O to notice")
    assert crio.status(cid)["state"] == "CONTAINER_RUNNING"
    # Nobody writes an exit file now; CRI-O's stop still ends the container.
    pid = int(crio.inspect(cid)["info"]["pid"])
    crio.crictl("stop", "-t", "0", cid, timeout=90)
    poll_until(lambda: not pid_alive(pid), 30, what="container process gone")
    # With no exit file CRI-O cannot know the code: -1, "Error".
    assert crio.exited(cid) == (-1, "Error")


# -- issue 14: io.pyconmon.* annotations through CRI-O ------------------------


def test_crio_passes_pyconmon_annotations(crio_pods):
    """Container annotations reach the monitor's config.json: a `drop` limit, markers exact; a bad value refused."""
    crio = crio_pods
    pod = crio.run_pod("pyconmon", "annotated")
    line = "a" * 99
    cid = crio.run(pod, "flood", ["sh", "-c", f"yes {line} | head -c 3000000"],
                   annotations={"io.pyconmon.log.rate": "64k", "io.pyconmon.log.policy": "drop"})
    assert crio.exited(cid)[0] == 0
    records = read_k8s_log(crio.log_path(cid))
    out = [x for x in join_lines(records) if x.stream == "stdout"]
    assert out and all(x.complete and x.content == line.encode() for x in out)
    marks = [int(m.group(1)) for r in records if (m := re.search(rb"dropped (\d+) bytes", r.content))]
    assert marks and sum(marks) == 3_000_000 - 100 * len(out)
    # refused on the sync pipe; CRI-O shows the monitor's message
    with pytest.raises(RuntimeError, match=r"io\.pyconmon\.log\.policy: must be one of drop, block"):
        crio.run(pod, "bad", ["true"], annotations={"io.pyconmon.log.policy": "sometimes"})
