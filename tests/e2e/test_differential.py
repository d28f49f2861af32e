"""Differential tests: the same container through Debian's C conmon and pyconmon.

Each test runs one workload under both monitors (not via ``monitor_bin``:
the two results are compared with each other) and checks that callers see
the same thing: k8s-file records apart from the timestamps, exit files
(content, no newline, names), sync-pipe messages (byte for byte, with the
pid masked) for Podman's v1 protocol and CRI-O's legacy keys, the persist-dir
exit file and the legacy exec exit code.

Record boundaries follow the monitor's reads, so workloads write with small
pauses between writes (``usleep 20000``): then both monitors see the same
reads and must write the same records. Floods, whose reads are up to the
scheduler, are compared with join_lines() instead.
"""

import json
import os
import re
import subprocess

import pytest

from support import C_CONMON, LAUNCHER
from support.bundle import no_pid_ns
from support.harness import K8S_TS_RE, join_lines, read_k8s_log, write_script

MONITORS = {"conmon": C_CONMON, "pyconmon": LAUNCHER}

pytestmark = pytest.mark.skipif(not os.access(C_CONMON, os.X_OK), reason="no C conmon to compare with")


def both(fn):
    """{name: fn(path)} for both monitors."""
    return {name: fn(path) for name, path in MONITORS.items()}


def records(path):
    """(stream, tag, content) of every record; every timestamp must be k8s-style (9 digits, +hh:mm)."""
    recs = read_k8s_log(path)
    for r in recs:
        assert K8S_TS_RE.match(r.timestamp.encode()), r.timestamp
    return [(r.stream, r.tag, r.content) for r in recs]


def masked(chunks, pid):
    """Raw sync-pipe bytes with the container pid replaced by PID."""
    raw = b"".join(chunks)
    return raw.replace(str(pid).encode(), b"PID") if pid else raw


# --------------------------------------------------------------------------
# k8s-file records


P = "usleep 20000"
# One write() of a whole file (busybox cat and tr write 4 KiB pieces, which a monitor may read apart
# under load: C conmon and pyconmon would then split records differently, by timing alone).
DD = "dd if=/tmp/l bs=65536 2>/dev/null"
WORKLOADS = {
    "lines": f"echo a; {P}; echo bb; {P}; echo ccc; {P}; printf 'd\\ne\\nf\\n'",
    "partial": f"printf 'par'; {P}; printf 'tial\\n'; {P}; printf 'x'; {P}; printf 'y'; {P}; echo z",
    "no-final-newline": f"echo one; {P}; printf two",
    "stderr-mix": f"echo out1; {P}; echo err1 >&2; {P}; echo out2; {P}; printf 'err2' >&2; {P}; echo ' end' >&2",
    "empty-lines": f"echo; {P}; printf '\\n\\n'; {P}; echo x; {P}; echo",
    "crlf-and-tabs": f"printf 'a\\r\\nb\\tc\\r\\n'; {P}; printf '  lead and trail  \\n'",
    "binary": f"printf 'a\\000b\\377\\376\\n'; {P}; printf '\\000\\n'; {P}; printf '\\303(\\n'",
    "exactly-8192": f"head -c 8192 /dev/zero | tr '\\0' x > /tmp/l; {DD}; {P}; echo; {P}; echo after",
    "8191-plus-newline": f"head -c 8191 /dev/zero | tr '\\0' y > /tmp/l; echo >> /tmp/l; {DD}",
    "8192-plus-newline": f"head -c 8192 /dev/zero | tr '\\0' w > /tmp/l; echo >> /tmp/l; {DD}",
    "three-5000-lines-one-write": "i=0; while [ $i -lt 3 ]; do head -c 4999 /dev/zero | tr '\\0' v >> /tmp/l; "
                                  f"echo >> /tmp/l; i=$((i+1)); done; {DD}",
    "4096-lines": "i=0; while [ $i -lt 3 ]; do head -c 4095 /dev/zero | tr '\\0' z > /tmp/l; echo >> /tmp/l; "
                  f"cat /tmp/l; {P}; i=$((i+1)); done",
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("style", ["podman", "crio"])
def test_same_records(testbed, workload, style):
    out = both(lambda c: testbed.run(c, ["sh", "-c", WORKLOADS[workload]], style=style))
    for m in out.values():
        assert m.wait_exit_file() == 0, m.describe()
    recs = {name: records(m.log_path) for name, m in out.items()}
    assert recs["conmon"], "C conmon logged nothing"
    assert recs["pyconmon"] == recs["conmon"]


def test_same_records_long_line(testbed):
    """A 20000-byte line: the split depends on reads, the joined lines and the record limit don't."""
    cmd = f"head -c 20000 /dev/zero | tr '\\0' x; echo; {P}; echo short"
    out = both(lambda c: testbed.run(c, ["sh", "-c", cmd]))
    lines = {}
    for name, m in out.items():
        assert m.wait_exit_file() == 0
        recs = read_k8s_log(m.log_path)
        assert all(len(r.content) <= 8192 for r in recs)
        assert len(recs) >= 4  # at least P P P F for the long line, then short
        lines[name] = join_lines(recs)
    assert lines["pyconmon"] == lines["conmon"]
    assert [x.content for x in lines["conmon"]] == [b"x" * 20000, b"short"]


@pytest.mark.parametrize("n", [100_000])
def test_same_lines_flood(testbed, n):
    cmd = f"seq 1 {n}; seq 1 {n // 10} >&2; printf last"
    out = both(lambda c: testbed.run(c, ["sh", "-c", cmd]))
    lines = {}
    for name, m in out.items():
        assert m.wait_exit_file(60) == 0
        lines[name] = [tuple(x) for x in join_lines(read_k8s_log(m.log_path))]
    assert len(lines["conmon"]) == n + n // 10 + 1
    # the streams interleave as the monitor happened to read them: compare each stream
    for stream in ("stdout", "stderr"):
        assert [x for x in lines["pyconmon"] if x[0] == stream] == [x for x in lines["conmon"] if x[0] == stream]


# --------------------------------------------------------------------------
# exit files


EXITS = {
    0: (["true"], False),
    3: (["sh", "-c", "exit 3"], False),
    137: (["sh", "-c", "kill -KILL $$"], True),
    143: (["sh", "-c", "kill -TERM $$"], True),
}


@pytest.mark.parametrize("code", list(EXITS))
@pytest.mark.parametrize("style", ["podman", "crio"])
def test_same_exit_files(testbed, code, style):
    args, host_pid_ns = EXITS[code]
    kw = {"bundle_kw": {"edit": no_pid_ns}} if host_pid_ns else {}
    out = both(lambda c: testbed.run(c, args, style=style, **kw))
    seen = {}
    for name, m in out.items():
        assert m.wait_exit_file() == code, m.describe()
        m.wait(10)
        with open(m.exit_file, "rb") as f:
            content = f.read()
        names = sorted(os.listdir(m.exit_dir))
        assert names == [m.cid]  # no temp files left behind
        persist = None
        if style == "crio":
            assert sorted(os.listdir(m.persist_dir)) == ["exit"]
            with open(os.path.join(m.persist_dir, "exit"), "rb") as f:
                persist = f.read()
        seen[name] = (content, persist)
    assert seen["pyconmon"] == seen["conmon"]
    assert seen["conmon"][0] == str(code).encode()


# --------------------------------------------------------------------------
# sync-pipe messages


@pytest.mark.parametrize("style", ["podman", "crio"])
def test_same_create_success_message(testbed, style):
    out = both(lambda c: testbed.run(c, ["true"], style=style))
    raw = {}
    for name, m in out.items():
        assert m.wait_exit_file() == 0
        m.wait(10)
        assert m.sync.read_rest(5) == []  # create sends exactly one message
        raw[name] = masked(m.sync.chunks, m.container_pid)
    key = b"data" if style == "podman" else b"pid"
    assert raw["conmon"] == b'{"%s": PID}\n' % key
    assert raw["pyconmon"] == raw["conmon"]


FAILING_RUNTIME = r"""#!/bin/sh
printf 'container create failed: "quoted" \\back\\slash\ttab\n' >&2
printf 'l\303\251gal UTF-8 and a control \001 char\n' >&2
exit 1
"""


@pytest.mark.parametrize("style", ["podman", "crio"])
def test_same_create_failure_message(testbed, style):
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FAILING_RUNTIME)
    out = both(lambda c: testbed.run(c, ["true"], style=style, start=False, extra_args=["-r", rt]))
    msgs = {}
    for name, m in out.items():
        assert m.first_status == 0, m.describe()
        m.wait(10)
        assert m.sync.read_rest(5) == []
        msgs[name] = (m.sync_msg, b"".join(m.sync.chunks))
        assert not os.listdir(m.exit_dir)
    key = "data" if style == "podman" else "pid"
    expected = {key: -1, "message": 'container create failed: "quoted" \\back\\slash\ttab\n'
                                    "l\u00e9gal UTF-8 and a control \x01 char\n"}
    assert msgs["conmon"][0] == expected
    assert msgs["pyconmon"][0] == expected
    # one JSON object on one line, as CRI-O's and Podman's decoders expect
    for _, raw in msgs.values():
        assert raw.endswith(b"}\n") and raw.count(b"\n") == 1
        assert json.loads(raw) == expected


# --------------------------------------------------------------------------
# CRI-O ExecSync (legacy exec)


@pytest.mark.parametrize("cmd,code,lines", [
    ("exit 0", 0, []),
    ("echo out; usleep 20000; echo err >&2; exit 3", 3, [("stdout", "F", b"out"), ("stderr", "F", b"err")]),
    ("printf partial; usleep 20000; kill -KILL $$", 137, [("stdout", "P", b"partial")]),
])
def test_same_legacy_exec(testbed, cmd, code, lines):
    ctr = {name: testbed.run(c, ["sleep", "100"], style="crio") for name, c in MONITORS.items()}
    seen = {}
    for name, c in MONITORS.items():
        e = testbed.exec(c, ctr[name], ["sh", "-c", cmd], style="crio", deadline=20)
        assert e.first_status is not None
        raw = b"".join(e.sync.chunks)
        seen[name] = (raw, records(e.log_path))
    assert seen["conmon"] == (b'{"exit_code": %d}\n' % code, lines)
    assert seen["pyconmon"] == seen["conmon"]


def test_same_legacy_exec_not_found(testbed):
    """A failing runtime exec (``doesnotexist``): -1 with runc's error, the same from both."""
    ctr = {name: testbed.run(c, ["sleep", "100"], style="crio") for name, c in MONITORS.items()}
    seen = {}
    for name, c in MONITORS.items():
        e = testbed.exec(c, ctr[name], ["doesnotexist"], style="crio", deadline=20)
        msg = dict(e.sync_msg)
        msg["message"] = re.sub(r'time="[^"]*"', 'time="T"', msg.get("message", ""))
        seen[name] = (msg, records(e.log_path))
    assert seen["conmon"][0]["exit_code"] == -1 and "doesnotexist" in seen["conmon"][0]["message"]
    assert seen["pyconmon"] == seen["conmon"]


def test_same_legacy_exec_timeout(testbed):
    ctr = {name: testbed.run(c, ["sleep", "100"], style="crio") for name, c in MONITORS.items()}
    seen = {}
    for name, c in MONITORS.items():
        e = testbed.exec(c, ctr[name], ["sleep", "100"], style="crio", timeout=1, deadline=20)
        seen[name] = e.sync_msg
    assert seen["conmon"] == {"exit_code": -1, "message": "command timed out"}
    assert seen["pyconmon"] == seen["conmon"]


def test_timestamps_are_local_with_offset(testbed):
    """Both write local time with 9 fraction digits and a numeric offset; with TZ set, the same offset."""
    env = {"TZ": "Asia/Kolkata"} if os.path.exists("/usr/share/zoneinfo/Asia/Kolkata") else {"TZ": "UTC-05:30"}
    out = both(lambda c: testbed.run(c, ["echo", "hi"], env_extra=env))
    offsets = {}
    for name, m in out.items():
        assert m.wait_exit_file() == 0
        recs = read_k8s_log(m.log_path)
        assert len(recs) == 1 and K8S_TS_RE.match(recs[0].timestamp.encode())
        offsets[name] = re.search(r"[+-]\d\d:\d\d$", recs[0].timestamp).group(0)
    assert offsets["conmon"] == "+05:30"
    assert offsets["pyconmon"] == offsets["conmon"]


# --------------------------------------------------------------------------
# diagnostics: which stream, which prefix


DIAGNOSTICS = {  # id: (extra args, text)
    "unknown-option": (["--bogus"], "option parsing failed: Unknown option --bogus"),
    "bad-driver": (["-l", "bogus:/x"], "No such log driver bogus"),
    "exit-delay": (["--exit-delay", "-1"], "Delay before invoking exit command must be greater than or equal to 0"),
}


def test_diagnostics_streams_and_prefixes(tmp_path):
    """pyconmon: every message on stderr, ``[conmon:e]: `` (or ``conmon: `` for option parsing).
    C conmon 2.1.6: option-parsing errors on stdout, the others on stderr, some of them without the
    colon (``[conmon:e] Delay ...``); 2.1.6 has no ``--log-rotate`` (nor ``--log-max-files``)."""
    base = ["-c", "c" * 64, "-u", "c" * 64, "-r", "/bin/true", "-l", f"k8s-file:{tmp_path}/log"]

    def run(monitor, extra):
        r = subprocess.run([monitor, *base, *extra], capture_output=True, timeout=30, cwd=tmp_path,
                           stdin=subprocess.DEVNULL, check=False)
        assert r.returncode == 1, r
        return r.stdout.decode(), r.stderr.decode()

    seen = {name: {case: run(path, extra) for case, (extra, _) in DIAGNOSTICS.items()}
            for name, path in MONITORS.items()}
    want_py = {case: ("", f"conmon: {text}\n" if "option" in text else f"[conmon:e]: {text}\n")
               for case, (_, text) in DIAGNOSTICS.items()}
    assert seen["pyconmon"] == want_py
    texts = {case: text for case, (_, text) in DIAGNOSTICS.items()}
    assert seen["conmon"] == {
        "unknown-option": (f"conmon: {texts['unknown-option']}\n", ""),
        "bad-driver": ("", f"[conmon:e]: {texts['bad-driver']}\n"),
        "exit-delay": ("", f"[conmon:e] {texts['exit-delay']}\n"),
    }
    for option in ("--log-rotate", "--log-max-files=1"):
        assert run(C_CONMON, [option]) == (f"conmon: option parsing failed: Unknown option {option}\n", "")
