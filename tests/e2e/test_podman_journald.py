"""``podman run --log-driver journald`` through the monitor, read back with ``podman logs``.

Podman 4.3.1 reads a journald container's log from the journal itself
(selecting by CONTAINER_ID_FULL, the stream from PRIORITY, joining
CONTAINER_PARTIAL_MESSAGE pieces), so this checks the monitor's entries the
way their real consumer sees them.  Plain ``podman logs`` works with the
private set-up's ``events_logger = "file"``; only ``logs -f`` would need the
journald events backend, and it is not used here.  The journal is the real
systemd-journald of tests/support/journald_service.py.
"""


from support.journald_service import journal_entries

SCRIPT = ("echo out1; echo err1 >&2; echo out2; "
          "head -c 20000 /dev/zero | tr '\\0' y; echo; "  # longer than an entry: partial pieces
          "echo err2 >&2; printf 'no newline'")


def test_podman_logs_reads_journald_entries(podman_clean, monitor_bin, journal, tmp_path):
    cidfile = tmp_path / "cid"
    r = podman_clean("run", "--log-driver", "journald", "--log-opt", "tag=mytag", "--name", "jd-logs",
                     "--cidfile", cidfile, "busybox", "sh", "-c", SCRIPT, conmon=monitor_bin)
    assert r.returncode == 0, r.stderr
    cid = cidfile.read_text().strip()
    out = "out1\nout2\n" + "y" * 20000 + "\nno newline"
    assert (r.stdout, r.stderr) == (out, "err1\nerr2\n")  # attached: live through the attach socket
    logs = podman_clean("logs", cid, conmon=monitor_bin)
    assert logs.returncode == 0, logs.stderr
    # stdout and stderr come apart; the 20000-byte line is whole again; the last line stays unfinished
    assert (logs.stdout, logs.stderr) == (out, "err1\nerr2\n")
    # what podman read: the monitor's entries, with Podman's name and tag
    es = journal_entries({"CONTAINER_ID_FULL": cid}, count=8)
    assert {e["CONTAINER_NAME"] for e in es} == {b"jd-logs"}
    assert {e["SYSLOG_IDENTIFIER"] for e in es} == {e["CONTAINER_TAG"] for e in es} == {b"mytag"}
    assert [e["PRIORITY"] for e in es if e["MESSAGE"].startswith(b"err")] == [b"3", b"3"]
    assert sum(e.get("CONTAINER_PARTIAL_MESSAGE") == b"true" for e in es) == 3  # 2 pieces + the unfinished line
    tail = podman_clean("logs", "--tail", "2", cid, conmon=monitor_bin)
    assert tail.returncode == 0, tail.stderr
    assert tail.stdout.endswith("no newline")


def test_podman_logs_of_a_detached_journald_container(podman_clean, monitor_bin, journal, tmp_path):
    """Output written after ``run -d`` returned (the monitor is the only writer) still reaches podman logs."""
    cidfile = tmp_path / "cid"
    r = podman_clean("run", "-d", "--log-driver", "journald", "--cidfile", cidfile, "busybox",
                     "sh", "-c", "i=0; while [ $i -lt 300 ]; do echo line $i; echo e$i >&2; i=$((i+1)); done",
                     conmon=monitor_bin)
    assert r.returncode == 0, r.stderr
    cid = cidfile.read_text().strip()
    w = podman_clean("wait", cid, conmon=monitor_bin)
    assert w.stdout.strip() == "0", w.stderr
    journal_entries({"CONTAINER_ID_FULL": cid}, count=600)  # all stored (journald is asynchronous)
    logs = podman_clean("logs", cid, conmon=monitor_bin)
    assert logs.returncode == 0, logs.stderr
    assert logs.stdout == "".join(f"line {i}\n" for i in range(300))
    assert logs.stderr == "".join(f"e{i}\n" for i in range(300))
