"""Issue 14: ``<metrics dir>/<container id>.prom``, read with prometheus_client's parser, against the log.

The installed monitor of ``policy_conmon`` with its pyconmon.toml naming a
metrics directory; runc containers through the harness and one through Podman.
"""

import os
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.harness import held_exit_command, join_lines, poll_until, read_attach_in_thread, read_k8s_log, stream_text
from support.journald_service import read_entries

LINE = "m" * 99
MARKER = re.compile(rb"dropped (\d+) bytes")


def read_metrics(path):
    """{(name, stream/cause label or None): value}, checking every sample's container labels."""
    with open(path) as f:
        text = f.read()
    out, labels = {}, set()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels.add((s.labels.get("container_id"), s.labels.get("container_name")))
            out[(s.name, s.labels.get("stream") or s.labels.get("cause"))] = s.value
    return out, labels


def config(config_file, directory, extra=""):
    return config_file(f'[metrics]\ndir = "{directory}"\ninterval = 0.2\n{extra}')


def test_final_numbers_equal_the_log_and_the_file_goes_at_exit(testbed, policy_conmon, config_file, tmp_path):
    mdir = tmp_path / "metrics"
    config(config_file, mdir, '[log]\nrate = "256k"\npolicy = "drop"\n')
    hold = tmp_path / "hold"
    script = f"yes {LINE} | head -c 5000000; echo bye >&2"
    m = testbed.run(policy_conmon, ["sh", "-c", script], start=False, name="metr",
                    exit_command=held_exit_command(hold))
    attached = read_attach_in_thread(m)
    m.start_container()
    assert m.wait_exit_file(30) == 0
    prom = mdir / f"{m.cid}.prom"
    got, labels = read_metrics(prom)  # the final write comes before the exit file
    assert labels == {(m.cid, "metr")}
    records = m.log_records()
    out = [r for r in records if r.stream == "stdout"]
    marks = [int(MARKER.search(r.content).group(1)) for r in records if MARKER.search(r.content)]
    logged = len(stream_text(records, "stdout"))
    assert got[("pyconmon_output_bytes_total", "stdout")] == 5_000_000
    assert got[("pyconmon_output_bytes_total", "stderr")] == 4
    assert got[("pyconmon_log_bytes_total", "stdout")] == logged == sum(len(r.content) + (r.tag == "F") for r in out)
    assert got[("pyconmon_log_lines_total", "stdout")] == sum(x.complete for x in join_lines(out))
    assert got[("pyconmon_output_lines_total", "stdout")] == 5_000_000 // 100
    assert got[("pyconmon_dropped_bytes_total", "rate_limit")] == sum(marks) == 5_000_000 - logged > 0
    assert got[("pyconmon_rate_limit_markers_total", None)] == len(marks)
    assert got[("pyconmon_dropped_bytes_total", "log_write")] == got[("pyconmon_log_write_errors_total", None)] == 0
    assert got[("pyconmon_attach_clients_total", None)] == 1
    assert got[("pyconmon_attach_clients_dropped_total", None)] == 0
    assert got[("pyconmon_oom_kills_total", None)] == 0
    assert 1 << 20 < got[("pyconmon_monitor_resident_memory_bytes", None)] < 200 << 20
    assert 0 <= got[("pyconmon_monitor_cpu_seconds_total", None)] < 30  # clock ticks: 0 for a quick monitor
    assert attached(10) == stream_text(records, "stdout")
    hold.write_text("")  # the exit command ends, then the monitor: the file goes with it
    poll_until(lambda: not prom.exists(), what="the metrics file to be removed")
    assert os.listdir(mdir) == []


def test_updated_while_running_with_rotations(testbed, policy_conmon, config_file, tmp_path):
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    m = testbed.run(policy_conmon, ["sh", "-c", "seq 1 3000; echo oops >&2; exec sleep 300"], log_size_max=20000)
    prom = mdir / f"{m.cid}.prom"

    def lines():
        return prom.exists() and read_metrics(prom)[0][("pyconmon_log_lines_total", "stdout")] == 3000

    poll_until(lines, what="the metrics file to count 3000 lines")
    got, _ = read_metrics(prom)
    assert got[("pyconmon_log_lines_total", "stderr")] == 1
    assert got[("pyconmon_log_bytes_total", "stdout")] == len(b"".join(b"%d\n" % n for n in range(1, 3001)))
    assert got[("pyconmon_log_rotations_total", None)] >= 3  # ~100 kB of records through a 20 kB file
    assert got[("pyconmon_dropped_bytes_total", "rate_limit")] == 0
    first = os.stat(prom).st_mtime_ns
    poll_until(lambda: os.stat(prom).st_mtime_ns != first, what="a later write")  # every interval
    os.kill(m.container_pid, 9)
    m.wait_exit_file(10)
    poll_until(lambda: not prom.exists(), what="the metrics file to be removed")


def held_exit(tmp_path):
    """An exit command that waits for ``hold`` to exist: the monitor, and its final metrics file, stay."""
    hold = tmp_path / "hold"
    return hold, held_exit_command(hold)


def test_full_disk_is_counted_as_write_errors_and_lost_record_bytes(testbed, policy_conmon, config_file,
                                                                  tmp_path, small_tmpfs):
    """README's metric table: ``pyconmon_log_write_errors_total`` (failed writes to k8s-file logs) and
    ``pyconmon_dropped_bytes_total{cause="log_write"}`` (bytes of records lost to failed writes, e.g. a
    full disk). 3 MB of lines into a log on a 1 MiB tmpfs: the records on disk plus the lost ones are
    all the records (each a 100-byte line plus its timestamp and tags), roughly."""
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    hold, exit_command = held_exit(tmp_path)
    m = testbed.run(policy_conmon, ["sh", "-c", f"yes {LINE} | head -c 3000000"], start=False,
                    log_path=os.path.join(small_tmpfs, "ctr.log"), exit_command=exit_command)
    m.start_container()
    assert m.wait_exit_file(30) == 0
    got, _ = read_metrics(mdir / f"{m.cid}.prom")
    on_disk = os.path.getsize(m.log_path)
    records = m.log_records()
    lost = got[("pyconmon_dropped_bytes_total", "log_write")]
    assert got[("pyconmon_log_write_errors_total", None)] >= 1
    assert got[("pyconmon_log_bytes_total", "stdout")] == 3_000_000  # handed to the driver, all of it
    logged = len(stream_text(records, "stdout"))
    assert logged < 1 << 20
    # lost counts records, not bare output: the records on disk and the lost ones add up to
    # 30,000 records of one line each (a few more where a read cut a line into two records)
    with open(m.log_path, "rb") as f:  # a whole line's record: timestamp, "stdout F", the 99 bytes
        record = next(len(x) for x in f if x.endswith(b" stdout F " + LINE.encode() + b"\n"))
    assert 30_000 * record <= on_disk + lost < 30_000 * record * 1.01, (on_disk, lost, record)
    assert got[("pyconmon_dropped_bytes_total", "global_size_max")] == 0
    hold.write_text("")


def test_global_size_limit_is_counted(testbed, policy_conmon, config_file, tmp_path):
    """``pyconmon_dropped_bytes_total{cause="global_size_max"}``: output past --log-global-size-max,
    exactly what the log lacks."""
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    hold, exit_command = held_exit(tmp_path)
    m = testbed.run(policy_conmon, ["sh", "-c", f"yes {LINE} | head -c 300000"], start=False,
                    exit_command=exit_command, extra_args=["--log-global-size-max", "100000"])
    m.start_container()
    assert m.wait_exit_file(30) == 0
    got, _ = read_metrics(mdir / f"{m.cid}.prom")
    logged = len(stream_text(m.log_records(), "stdout"))
    assert logged == 100_000
    assert got[("pyconmon_dropped_bytes_total", "global_size_max")] == 300_000 - logged
    assert got[("pyconmon_dropped_bytes_total", "log_write")] == got[("pyconmon_log_write_errors_total", None)] == 0
    hold.write_text("")


def test_oom_kill_is_counted(testbed, policy_conmon, config_file, tmp_path):
    """``pyconmon_oom_kills_total``: 1 after the memory cgroup's OOM killer ended the container."""
    if not os.path.isdir("/sys/fs/cgroup/memory"):
        pytest.skip("needs the cgroup v1 memory controller (the v2 path is unit-tested)")
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    hold, exit_command = held_exit(tmp_path)
    m = testbed.run(policy_conmon, ["sh", "-c", "x=a; while true; do x=$x$x; done"], exit_command=exit_command,
                    bundle_kw={"memory_limit": 20 << 20})
    assert m.wait_exit_file(30) == 137, m.describe()
    got, _ = read_metrics(mdir / f"{m.cid}.prom")
    assert got[("pyconmon_oom_kills_total", None)] == 1
    hold.write_text("")


def test_attach_clients_now_in_all_and_dropped(testbed, policy_conmon, config_file, tmp_path):
    """``pyconmon_attach_clients`` (now), ``..._total`` and ``..._dropped_total``: a client that
    connects and never reads is counted, then dropped by the monitor once the flood leaves it
    4 MiB behind for a second."""
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    go = tmp_path / "go"
    script = f"while [ ! -e /run/go ]; do usleep 20000; done; yes {LINE} | head -c 30000000; exec sleep 300"
    m = testbed.run(policy_conmon, ["sh", "-c", script], start=False, bundle_kw={"edit": bind_go(tmp_path)})
    prom = mdir / f"{m.cid}.prom"
    m.attach()  # never reads
    m.start_container()

    def sample(name):
        return prom.exists() and read_metrics(prom)[0].get((name, None))

    poll_until(lambda: sample("pyconmon_attach_clients") == 1, what="one client connected now")
    assert sample("pyconmon_attach_clients_dropped_total") == 0
    go.write_text("")
    poll_until(lambda: sample("pyconmon_attach_clients_dropped_total") == 1, 30, what="the client dropped")
    got, _ = read_metrics(prom)
    assert (got[("pyconmon_attach_clients", None)], got[("pyconmon_attach_clients_total", None)]) == (0, 1)
    os.kill(m.container_pid, 9)
    m.wait_exit_file(10)


def bind_go(tmp_path):
    """Bundle edit: the host's ``tmp_path`` at /run in the container (the ``go`` file starts the flood)."""
    def edit(spec):
        spec["mounts"].append({"destination": "/run", "type": "bind", "source": str(tmp_path),
                               "options": ["bind", "rw"]})
    return edit


def test_podman_container_metrics(podman_clean, policy_conmon, config_file, tmp_path):
    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    podman = podman_clean
    r = podman("run", "-d", "--name", "prom-1", "busybox", "sh", "-c", "seq 1 5000; exec sleep 300",
               conmon=policy_conmon)
    assert r.returncode == 0, r.stderr
    cid = r.stdout.strip()
    prom = mdir / f"{cid}.prom"
    poll_until(lambda: prom.exists() and read_metrics(prom)[0][("pyconmon_log_lines_total", "stdout")] == 5000,
               timeout=30, what="5000 lines in the metrics")
    got, labels = read_metrics(prom)
    assert labels == {(cid, "prom-1")}
    log = podman.inspect(cid, "{{.HostConfig.LogConfig.Path}}")
    with open(log, "rb") as f:
        assert got[("pyconmon_log_bytes_total", "stdout")] == len(b"".join(b"%d\n" % n for n in range(1, 5001)))
        assert f.read().count(b" stdout F ") == 5000
    podman.rm(cid)
    poll_until(lambda: not prom.exists(), timeout=30, what="the metrics file to be removed")


@pytest.mark.one_runtime  # the monitor's own work after the start
@pytest.mark.parametrize("trouble", ["missing", "refusing"])
def test_journald_entries_not_sent_are_write_errors_and_log_write_bytes(testbed, policy_conmon, config_file,
                                                                      tmp_path, journal, trouble):
    """README's metric table: journald entries not sent count in ``pyconmon_log_write_errors_total``,
    one each, and their bytes in ``pyconmon_dropped_bytes_total{cause="log_write"}``.  The monitor
    runs in a private mount namespace whose journal socket is missing or refuses (test_logging's
    ns_wrapper); k8s-file beside journald shows what the container wrote: none of it reached the
    journal, and the counts are exactly its lines and bytes."""
    from test_logging import ns_wrapper

    mdir = tmp_path / "metrics"
    config(config_file, mdir)
    hold, exit_command = held_exit(tmp_path)
    wrap = ns_wrapper(testbed.workdir("ns"), policy_conmon, journal_socket=trouble)
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    script = f"yes {LINE} | head -n 3000; seq 1 500 >&2; printf tail"  # 3000 + 500 lines and a partial one
    m = testbed.run(wrap, ["sh", "-c", script], start=False, log_driver=["journald", f"k8s-file:{log}"],
                    exit_command=exit_command)
    m.start_container()
    assert m.wait_exit_file(30) == 0, m.describe()
    got, _ = read_metrics(mdir / f"{m.cid}.prom")
    records = read_k8s_log(log)
    out, err = stream_text(records, "stdout"), stream_text(records, "stderr")
    assert out == (LINE + "\n").encode() * 3000 + b"tail"
    assert err == b"".join(b"%d\n" % i for i in range(1, 501))
    assert got[("pyconmon_log_bytes_total", "stdout")] + got[("pyconmon_log_bytes_total", "stderr")] == len(out + err)
    assert got[("pyconmon_dropped_bytes_total", "log_write")] == len(out + err)
    assert got[("pyconmon_log_write_errors_total", None)] == 3000 + 500 + 1  # an entry per line
    assert got[("pyconmon_dropped_bytes_total", "rate_limit")] == 0
    assert got[("pyconmon_dropped_bytes_total", "global_size_max")] == 0
    hold.write_text("")
    m.wait(10)
    assert read_entries({"CONTAINER_ID_FULL": m.cid}) == []  # none was delivered after all
