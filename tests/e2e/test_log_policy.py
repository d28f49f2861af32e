"""Issue 14: the configuration file, io.pyconmon.* annotations and the log rate limit, end to end.

Real runc containers under the installed monitor (``make podman PREFIX=<tmp>``:
the configuration file's path is fixed by that build, at
``<tmp>/prefix/etc/pyconmon/pyconmon.toml``), and real Podman passing
``--annotation``.  A container floods ~100 MB/s against a 1 MiB/s limit:
with ``drop`` it finishes at its own speed, the log holds about
rate x time + burst and the ``dropped N bytes`` markers add up exactly to
what is missing; with ``block`` every line is there and the container took
as long as the limit says.
"""

import os
import re
import time

import pytest

from support.harness import join_lines, read_attach_in_thread, read_k8s_log, stream_text
from support.podman import SLOW, exit_code, run_d

MiB = 1 << 20
LINE = "x" * 99  # + "\n": 100-byte lines
FLOOD_CHUNKS, CHUNK = 20, 10_000_000  # 200 MB in 20 bursts at full speed, 50 ms apart: ~100 MB/s
FLOOD = f"for i in $(seq {FLOOD_CHUNKS}); do yes {LINE} | head -c {CHUNK}; usleep 50000; done"
MARKER = re.compile(rb"dropped (\d+) bytes")
PIPE = MiB  # the monitor's pipe size: what a blocked container can write ahead


def annotate(annotations):
    def edit(spec):
        spec.setdefault("annotations", {}).update(annotations)
    return edit


def stdout_bytes(records):
    """Bytes of container stdout the log holds (a F record's content had a newline)."""
    return sum(len(r.content) + (r.tag == "F") for r in records if r.stream == "stdout")


def markers(records):
    found = [MARKER.search(r.content) for r in records if r.stream == "stderr"]
    assert all(found), [r.content for r in records if r.stream == "stderr"]
    return [int(m.group(1)) for m in found]


def run_timed(testbed, conmon, args, timeout=60, **kw):
    m = testbed.run(conmon, ["sh", "-c", args], start=False, **kw)
    assert m.container_pid, m.describe()
    started = time.monotonic()
    m.start_container()
    code = m.wait_exit_file(timeout)
    return m, code, time.monotonic() - started


def check_drop(records, total, rate, burst, took):
    logged, dropped = stdout_bytes(records), markers(records)
    assert logged + sum(dropped) == total  # exact: every byte is either in the log or in a marker
    lines = join_lines(records)
    assert all(x.complete and x.content == LINE.encode() for x in lines if x.stream == "stdout")  # whole lines
    assert logged <= burst + rate * took + MiB  # + one read's worth of slack
    assert logged >= 0.7 * (burst + rate * (took - 1.0))
    assert len(dropped) <= took / 1.0 + 2  # once per interval, plus the one at exit


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_drop_by_annotation_container_runs_at_its_own_speed(testbed, policy_conmon):
    m, code, took = run_timed(testbed, policy_conmon, FLOOD, bundle_kw={"edit": annotate(
        {"io.pyconmon.log.rate": "1M", "io.pyconmon.log.policy": "drop"})})
    assert code == 0
    total = FLOOD_CHUNKS * CHUNK
    assert took < 8  # unthrottled (~2.3 s here): the limit would have made it 190 s
    check_drop(m.log_records(), total, MiB, MiB, took)


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_block_by_config_file_loses_nothing_and_takes_size_over_rate(testbed, policy_conmon, config_file):
    config_file('[log]\nrate = "1M"\nburst = "512k"\npolicy = "block"\n')
    first, count = 1_000_000, 600_000  # 8-byte lines: 4.8 MB
    m, code, took = run_timed(testbed, policy_conmon, f"seq {first} {first + count - 1}")
    assert code == 0
    assert stream_text(m.log_records()) == b"".join(b"%d\n" % n for n in range(first, first + count))
    size = 8 * count
    assert took >= 0.8 * (size - 512 * 1024 - PIPE) / MiB, took
    assert took <= size / MiB + 3, took


def test_attach_in_block_gets_everything(testbed, policy_conmon):
    m = testbed.run(policy_conmon, ["sh", "-c", "seq 1 200000"], start=False, bundle_kw={"edit": annotate(
        {"io.pyconmon.log.rate": "512k", "io.pyconmon.log.policy": "block"})})
    seen = read_attach_in_thread(m)
    m.start_container()
    assert m.wait_exit_file(30) == 0
    assert seen(10) == b"".join(b"%d\n" % n for n in range(1, 200001))


def test_attach_in_drop_gets_what_was_logged(testbed, policy_conmon):
    m = testbed.run(policy_conmon, ["sh", "-c", f"yes {LINE} | head -c 20000000"], start=False,
                    bundle_kw={"edit": annotate({"io.pyconmon.log.rate": "256k", "io.pyconmon.log.policy": "drop"})})
    reader = read_attach_in_thread(m)
    m.start_container()
    assert m.wait_exit_file(30) == 0
    seen = reader(10)
    records = m.log_records()
    assert seen == stream_text(records, "stdout")
    assert 256 * 1024 <= len(seen) < 20_000_000 and sum(markers(records)) == 20_000_000 - len(seen)


@pytest.mark.parametrize(("annotations", "message"), [
    ({"io.pyconmon.log.rate": "1.5M"}, r"config\.json: annotation io\.pyconmon\.log\.rate: not a size"),
    ({"io.pyconmon.log.policy": "queue"}, r"io\.pyconmon\.log\.policy: must be one of drop, block"),
    ({"io.pyconmon.log.rat": "1M"}, r"unknown annotation 'io\.pyconmon\.log\.rat'"),
])
def test_bad_annotation_is_refused_on_the_sync_pipe(testbed, policy_conmon, annotations, message):
    m = testbed.run(policy_conmon, ["true"], start=False, bundle_kw={"edit": annotate(annotations)})
    assert m.sync_msg["data"] == -1, m.describe()
    assert re.search(message, m.sync_msg["message"]), m.sync_msg
    assert re.search(message, m.stderr.decode()), m.stderr  # and in the diagnostics
    assert m.container_pid is None


def test_bad_config_file_names_file_line_and_key(testbed, policy_conmon, config_file):
    path = config_file('[log]\nrate = "1M"\n\n[journald]\nstderr_priority = 4\nidentfier = "x"\n')
    m = testbed.run(policy_conmon, ["true"], start=False)
    assert m.sync_msg["data"] == -1, m.describe()
    assert m.sync_msg["message"].startswith(f"{path}:6: unknown key 'journald.identfier'"), m.sync_msg
    assert f"{path}:6: unknown key" in m.stderr.decode()
    config_file('[log]\nrate = = 1\n')
    m = testbed.run(policy_conmon, ["true"], start=False)
    assert re.match(rf"{re.escape(path)}: malformed TOML: .*line 2", m.sync_msg["message"]), m.sync_msg


def test_forbidden_override_is_refused(testbed, policy_conmon, config_file):
    config_file('[log]\nrate = "1M"\nallow_override = false\n')
    m = testbed.run(policy_conmon, ["true"], start=False, bundle_kw={"edit": annotate(
        {"io.pyconmon.log.rate": "0"})})
    assert m.sync_msg["data"] == -1 and "log.allow_override = false" in m.sync_msg["message"], m.sync_msg


def test_print_config(policy_conmon, config_file, tmp_path):
    import subprocess
    import tomllib
    r = subprocess.run([policy_conmon, "--print-config"], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "no configuration file (defaults)" in r.stdout
    assert tomllib.loads(r.stdout)["log"]["rate"] == 0
    path = config_file('[log]\nrate = "2M"\npolicy = "block"\n')
    (tmp_path / "config.json").write_text('{"annotations": {"io.pyconmon.log.burst": "4M"}}')
    r = subprocess.run([policy_conmon, "--print-config", "-b", str(tmp_path)], capture_output=True, text=True,
                       check=False)
    assert r.returncode == 0, r.stderr
    assert path in r.stdout.splitlines()[0]
    doc = tomllib.loads(r.stdout)
    assert doc["log"] == {"rate": 2 * MiB, "burst": 4 * MiB, "policy": "block", "allow_override": True,
                          "buffer": 0, "sync": "exit"}
    config_file('[logs]\n')
    r = subprocess.run([policy_conmon, "--print-config"], capture_output=True, text=True, check=False)
    assert r.returncode == 1 and f"{path}:1: unknown table 'logs'" in r.stderr


# --------------------------------------------------------------------------
# Podman: --annotation reaches the monitor through config.json


def podman_log(podman, cid):
    return read_k8s_log(podman.inspect(cid, "{{.HostConfig.LogConfig.Path}}"))


def podman_took(podman, cid):
    import datetime
    started, finished = (podman.inspect(cid, f"{{{{.State.{k}.Format \"2006-01-02T15:04:05.000000Z07:00\"}}}}")
                         for k in ("StartedAt", "FinishedAt"))
    return (datetime.datetime.fromisoformat(finished) - datetime.datetime.fromisoformat(started)).total_seconds()


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_podman_annotation_drop(podman_clean, installed_conmon):
    podman = podman_clean
    cid = run_d(podman, installed_conmon, "--annotation", "io.pyconmon.log.rate=1M",
                "--annotation", "io.pyconmon.log.policy=drop", "busybox", "sh", "-c", FLOOD)
    assert exit_code(podman, cid) == "exited 0"
    took = podman_took(podman, cid)
    total = FLOOD_CHUNKS * CHUNK
    assert took < 8, took
    check_drop(podman_log(podman, cid), total, MiB, MiB, took)
    r = podman("logs", cid, conmon=installed_conmon, timeout=SLOW)
    assert r.returncode == 0 and "dropped" in r.stderr


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_podman_annotation_block(podman_clean, installed_conmon):
    podman = podman_clean
    cid = run_d(podman, installed_conmon, "--annotation", "io.pyconmon.log.rate=1M",
                "--annotation", "io.pyconmon.log.burst=256k", "--annotation", "io.pyconmon.log.policy=block",
                "busybox", "seq", "1000000", "1399999")
    assert exit_code(podman, cid) == "exited 0"
    took = podman_took(podman, cid)
    assert stream_text(podman_log(podman, cid)) == b"".join(b"%d\n" % n for n in range(1000000, 1400000))
    size = 8 * 400_000
    assert 0.8 * (size - 256 * 1024 - PIPE) / MiB <= took <= size / MiB + 3, took


def test_podman_bad_annotation_fails_the_start(podman_clean, installed_conmon):
    r = podman_clean("run", "--rm", "--annotation", "io.pyconmon.log.policy=sometimes", "busybox", "true",
                     conmon=installed_conmon, timeout=SLOW)
    assert r.returncode != 0
    assert "io.pyconmon.log.policy: must be one of drop, block" in r.stderr, r.stderr


@pytest.mark.one_runtime  # refused before the runtime runs
def test_podman_shows_a_bad_configuration_file(podman_clean, policy_conmon, config_file):
    """README: a bad pyconmon.toml "stops every container start: the monitor sends -1 and a message
    naming the file, the line and the key on the sync pipe (Podman shows it)"."""
    path = config_file('[log]\nrate = "1M"\nburts = "2M"\n')
    r = podman_clean("run", "--rm", "busybox", "true", conmon=policy_conmon, timeout=SLOW)
    assert r.returncode != 0
    assert f"{path}:3: unknown key 'log.burts'" in r.stderr, r.stderr


# --------------------------------------------------------------------------
# journald: stderr priority and identifier from the file; markers in the journal


def test_journald_priority_identifier_and_drop_markers(testbed, policy_conmon, config_file, journal):
    from support.journald_service import journal_entries
    config_file('[journald]\nstderr_priority = "notice"\nidentifier = "ctr-{name}-{id}"\n')
    script = "echo out; echo '<2>crit' >&2; echo err >&2; yes " + LINE + " | head -c 3000000; echo last >&2"
    m = testbed.run(policy_conmon, ["sh", "-c", script], log_driver="journald", name="jd",
                    bundle_kw={"edit": annotate({"io.pyconmon.log.rate": "64k", "io.pyconmon.log.burst": "8k"})})
    assert m.wait_exit_file(30) == 0, m.describe()
    es = journal_entries({"CONTAINER_ID_FULL": m.cid}, timeout=15,
                         until=lambda es: any(MARKER.search(e["MESSAGE"]) for e in es)
                         and any(e["MESSAGE"] == b"last\n" for e in es))
    assert {e["SYSLOG_IDENTIFIER"] for e in es} == {f"ctr-jd-{m.cid[:12]}".encode()}
    prio = {e["MESSAGE"]: e["PRIORITY"] for e in es if not e["MESSAGE"].startswith(b"x")}
    assert (prio[b"out\n"], prio[b"crit\n"], prio[b"err\n"], prio[b"last\n"]) == (b"6", b"2", b"5", b"5")
    marks = [e for e in es if MARKER.search(e["MESSAGE"])]
    assert {e["PRIORITY"] for e in marks} == {b"5"}  # on the stderr stream, at its priority
    logged = sum(len(e["MESSAGE"]) for e in es if e["MESSAGE"].startswith(b"x"))
    total = 3_000_000
    assert logged + sum(int(MARKER.search(e["MESSAGE"]).group(1)) for e in marks) == total


def test_block_with_a_terminal(testbed, policy_conmon):
    """The limit holds the pty master too: every line logged, at the rate."""
    count = 300_000  # "%d\r\n" with ONLCR: ~2.2 MB
    m, code, took = run_timed(testbed, policy_conmon, f"seq 1 {count}", terminal=True,
                              bundle_kw={"edit": annotate({"io.pyconmon.log.rate": "512k",
                                                           "io.pyconmon.log.burst": "128k",
                                                           "io.pyconmon.log.policy": "block"})})
    assert code == 0
    text = stream_text(m.log_records())
    assert text.replace(b"\r\n", b"\n") == b"".join(b"%d\n" % n for n in range(1, count + 1))
    size = len(text)
    # a pty buffers little (a few KiB), so nearly all of it waits for the limit
    assert 0.8 * (size - 128 * 1024) / (512 * 1024) <= took <= size / (512 * 1024) + 3, (took, size)


# --------------------------------------------------------------------------
# where the limit does not apply


def test_exec_sessions_get_no_limit_and_write_no_metrics(testbed, policy_conmon, config_file, tmp_path):
    """README: "The limit applies to containers, not to exec sessions"; metrics: "Exec sessions write
    none". An ExecSync (CRI-O's way, output to a log) under a file that limits every container to
    64 KiB/s: all of its 2 MB is logged, no marker; the container's metrics file (written once: the
    interval is an hour) is the same file before and after, the only one in the directory."""
    mdir = tmp_path / "metrics"
    config_file(f'[log]\nrate = "64k"\npolicy = "drop"\n[metrics]\ndir = "{mdir}"\ninterval = 3600\n')
    m = testbed.run(policy_conmon, ["sleep", "300"], style="crio", start=True)
    prom = mdir / f"{m.cid}.prom"
    before = prom.stat()
    e = testbed.exec(policy_conmon, m, ["sh", "-c", f"yes {LINE} | head -c 2000000"], style="crio")
    assert e.sync_msg == {"exit_code": 0}, e.describe()
    records = read_k8s_log(e.log_path)
    assert stream_text(records) == (LINE + "\n").encode() * 20_000
    assert not [r for r in records if r.stream == "stderr"]  # no marker
    after = prom.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert os.listdir(mdir) == [prom.name]


def test_passthrough_refuses_a_limit_annotation(testbed, policy_conmon):
    """README: "with the passthrough driver the output never passes through the monitor, so a limit
    annotation is refused there" (and the same container without the annotation runs)."""
    edit = annotate({"io.pyconmon.log.rate": "1M"})
    m = testbed.run(policy_conmon, ["true"], log_driver="passthrough", start=False, bundle_kw={"edit": edit})
    assert m.sync_msg["data"] == -1, m.describe()
    assert "cannot limit the passthrough log driver" in m.sync_msg["message"], m.sync_msg
    assert m.container_pid is None
    ok = testbed.run(policy_conmon, ["true"], log_driver="passthrough", start=True)
    assert ok.wait_exit_file(30) == 0, ok.describe()
