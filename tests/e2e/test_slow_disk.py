"""Issue 14: with ``log.buffer`` the disk never stalls the container.

The monitor's own ``write``/``writev``/``fsync`` calls are delayed by
``strace -e inject=...:delay_enter=...`` (a real slow disk, as far as the
monitor can tell).  With a buffer the container writes its 8 MB and exits at
once while the writer thread catches up, and every line reaches the log;
without one (today's behaviour, the control) the same container waits for
the disk.
"""

import glob
import os
import shutil
import time

import pytest

from support.harness import held_exit_command, pid_alive, poll_until, read_k8s_log, strace_attached, stream_text

LINES = 1_000_000  # "%7d\n": 8 MB
SCRIPT = f"seq 1000000 {1000000 + LINES - 1}"
DELAY_US = 400_000  # per write, writev and fsync of the monitor

pytestmark = pytest.mark.skipif(not shutil.which("strace"), reason="strace is not installed (see .ci/run)")


def slow_disk(pid):
    return strace_attached(pid, "trace=write,writev,fsync", f"inject=write,writev,fsync:delay_enter={DELAY_US}")


@pytest.mark.parametrize("buffered", [True, False], ids=["buffer", "no-buffer"])
def test_slow_disk_does_not_stall_the_container(testbed, policy_conmon, config_file, buffered):
    if buffered:
        config_file('[log]\nbuffer = "64M"\nsync = "rotate"\n')
    m = testbed.run(policy_conmon, ["sh", "-c", SCRIPT], start=False, log_size_max=3_000_000)
    tracer = slow_disk(m.monitor_pid())
    try:
        started = time.monotonic()
        m.start_container()
        poll_until(lambda: not pid_alive(m.container_pid), timeout=120, interval=0.02, what="the container to exit")
        took = time.monotonic() - started
        assert m.wait_exit_file(120) == 0
        logged_at = time.monotonic() - started
    finally:
        tracer.terminate()
        tracer.wait(10)
    # The log was rotated by size (3 MB): read back every file.
    paths = [*sorted(glob.glob(m.log_path + ".*"), reverse=True), m.log_path]
    records = [r for p in paths for r in read_k8s_log(p)]
    if buffered:
        assert took < 2.0, took  # 8 MB at its own speed
        assert logged_at > took + 1.0  # ... while the writer thread took its time
    else:
        assert took > 2.0, took  # the control: the same disk stalls the container without a buffer
    # size-based reopening truncates (no --log-rotate): the last file holds the newest records, whole
    tail = stream_text(records).split(b"\n")
    assert tail.pop() == b""
    assert tail[-1] == b"%d" % (1000000 + LINES - 1)
    assert tail == [b"%d" % n for n in range(int(tail[0]), 1000000 + LINES)]
    assert os.path.getsize(m.log_path) <= 3_000_000


@pytest.mark.parametrize(("conf", "fsyncs"), [
    (None, "one"),  # today's behaviour: the log is fsynced once, at exit
    ('[log]\nsync = "none"\n', "none"),
    ('[log]\nbuffer = "8M"\nsync = "rotate"\n', "per file"),
], ids=["exit", "none", "rotate"])
def test_sync_policy_counts_fsyncs(testbed, policy_conmon, config_file, tmp_path, conf, fsyncs):
    if conf:
        config_file(conf)
    m = testbed.run(policy_conmon, ["sh", "-c", "seq 1 100000"], start=False, log_size_max=200_000)
    out = tmp_path / "trace"
    tracer = strace_attached(m.monitor_pid(), "trace=fsync,rename", out=out)
    try:
        m.start_container()
        assert m.wait_exit_file(60) == 0
    finally:
        tracer.terminate()
        tracer.wait(10)
    trace = out.read_text()
    n_fsync = trace.count("fsync(")
    n_reopen = trace.count(f', "{m.log_path}")')  # each size-limit reopen renames a fresh file into place
    assert n_reopen >= 5
    if fsyncs == "one":
        assert n_fsync == 1
    elif fsyncs == "none":
        assert n_fsync == 0
    else:
        assert n_fsync == n_reopen + 1  # before each new file, and at exit


@pytest.mark.one_runtime  # the monitor's own writes
@pytest.mark.parametrize("name", ["conmon", "installed"])
def test_without_a_buffer_the_container_waits_for_the_disk_as_with_c_conmon(testbed, monitor_named, name):
    """README: without ``log.buffer`` a slow write holds up reading, the pipe fills and the
    container's writes wait, "as with C conmon". Both monitors, no configuration file: the
    container is still writing after 3 s (it needs well under one without the delay); once the
    disk is fast again it finishes and the newest lines are all in the log."""
    conmon = monitor_named(name)
    m = testbed.run(conmon, ["sh", "-c", SCRIPT], start=False, log_size_max=3_000_000)
    tracer = slow_disk(m.monitor_pid())
    try:
        started = time.monotonic()
        m.start_container()
        while time.monotonic() - started < 3.0:
            assert pid_alive(m.container_pid), f"{name}: the container finished its 8 MB despite the slow disk"
            time.sleep(0.05)  # a negative condition: nothing to await, only a deadline to reach
    finally:
        tracer.terminate()
        tracer.wait(10)
    assert m.wait_exit_file(120) == 0
    tail = stream_text(m.log_records()).split(b"\n")
    assert tail.pop() == b""
    assert tail[-1] == b"%d" % (1000000 + LINES - 1)
    assert tail[1:] == [b"%d" % n for n in range(int(tail[1]), 1000000 + LINES)]  # tail[0] may be a line's end


@pytest.mark.one_runtime  # the monitor's own writes
def test_a_full_buffer_waits_loses_nothing_and_is_counted(testbed, policy_conmon, config_file, tmp_path):
    """README: "When the buffer is full, reading waits until the thread has brought it down to half:
    nothing is lost"; metrics ``pyconmon_log_buffer_waits_total`` and ``..._peak_bytes``. A 1 MiB
    buffer in front of a disk whose every write takes 0.2 s: 8 MB of lines all reach the log, reading
    waited, and the most that waited at once is about the buffer (plus the chunk that filled it)."""
    from prometheus_client.parser import text_string_to_metric_families
    mdir = tmp_path / "metrics"
    config_file(f'[log]\nbuffer = "1M"\n[metrics]\ndir = "{mdir}"\ninterval = 3600\n')
    hold = tmp_path / "hold"
    m = testbed.run(policy_conmon, ["sh", "-c", SCRIPT], start=False,
                    exit_command=held_exit_command(hold))
    tracer = strace_attached(m.monitor_pid(), "trace=write,writev", "inject=write,writev:delay_enter=200000")
    try:
        m.start_container()
        assert m.wait_exit_file(120) == 0
    finally:
        tracer.terminate()
        tracer.wait(10)
    assert stream_text(m.log_records()) == b"".join(b"%d\n" % n for n in range(1000000, 1000000 + LINES))
    with open(mdir / f"{m.cid}.prom") as f:
        got = {s.name: s.value for fam in text_string_to_metric_families(f.read()) for s in fam.samples}
    hold.write_text("")
    assert got["pyconmon_log_buffer_waits_total"] >= 1
    assert 1 << 20 <= got["pyconmon_log_buffer_peak_bytes"] <= 2 << 20
