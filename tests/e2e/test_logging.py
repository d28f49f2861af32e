"""Log drivers and log management through the real monitor (issue 4).

Every test starts a monitor the way Podman does (tests/support/harness.py)
on a real runc or crun container; most run once per monitor (``monitor_bin``) so C
conmon 2.1.6 is the reference.  Where 2.1.6 lacks an option
(``--log-label``, ``--no-container-partial-message``, ``--log-rotate``,
``--log-max-files``, ``--log-allowlist-dir``) or where the CONTRACT/issue asks
for better than conmon does (symlinked or unsafe log directories, ``<N>``
priority prefixes, a -1 on the sync pipe when the log can't be opened,
syslog severities), the C run is skipped or asserts conmon's own behaviour,
and the difference is named.

Two things are observed from a private mount namespace (``unshare -m``, see
``ns_wrapper``), so the real paths are tested without touching the host:
``/dev/log`` (an overlay over /dev adds a ``/dev/log`` symlink to a datagram
socket the test listens on) and a missing journal socket (a tmpfs hides
``/run/systemd/journal``).
"""

import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time

import pytest

from support import is_c
from support.harness import (
    join_lines,
    new_cid,
    parse_k8s_timestamp,
    podman_create_args,
    poll_until,
    read_k8s_log,
    runtime_kill,
    server_pids,
    strace_attached,
    write_ctl,
)
from support.installed import is_server_stub, server_lib_dir
from support.journald_service import (
    SOCKET,
    journal_entries,
    read_entries,
    send_native,
    start_private_journald,
    stop_private_journald,
)

MiB = 1 << 20
LINE_BUF = 8192  # journald per-stream buffer (CONTRACT 5)


def skip_c(monitor, why):
    if is_c(monitor):
        pytest.skip(f"C conmon 2.1.6: {why}")


def numbered(n, width=100, start=1):
    """busybox awk writing ``n`` numbered lines of ``width`` bytes each (plus the newline)."""
    pad = width - 9
    return ["awk", f'BEGIN {{ p = sprintf("%0{pad}d", 0); '
                   f'for (i = {start}; i < {start + n}; i++) printf "%08d %s\\n", i, p }}']


def numbered_line(i, width=100):
    return b"%08d %s" % (i, b"0" * (width - 9))


def check_numbered(contents, width=100):
    """``contents`` are consecutive numbered lines; returns (first, last) number."""
    assert contents, "no lines"
    first = int(contents[0][:8])
    expected = [numbered_line(first + k, width) for k in range(len(contents))]
    if contents != expected:
        bad = next(k for k, (a, b) in enumerate(zip(contents, expected, strict=True)) if a != b)
        raise AssertionError(f"line {bad} is {contents[bad][:40]!r}, expected {expected[bad][:40]!r}")
    return first, first + len(contents) - 1


def check_numbered_lines(lines, width=100):
    """Joined lines that are consecutive numbered lines; (first, last) number.

    The first line may lack its start: a read that ended mid-line made a P
    record, and the file holding it was truncated or rotated out of existence.
    """
    assert lines and all(x.complete for x in lines), lines[-1:]
    contents = [x.content for x in lines]
    if len(contents) > 1 and contents[0] != numbered_line(int(contents[1][:8]) - 1, width):
        assert numbered_line(int(contents[1][:8]) - 1, width).endswith(contents[0]), contents[0]
        contents = contents[1:]
    return check_numbered(contents, width)


def files_of(log):
    d, base = os.path.split(log)
    return sorted(f for f in os.listdir(d) if f.startswith(base))


def run_podman(testbed, monitor, args, drivers=None, extra=(), **kw):
    return testbed.run(monitor, args, style="podman", log_driver=drivers, extra_args=list(extra), **kw)


# --------------------------------------------------------------------------
# a private mount namespace: a test /dev/log, a missing journal socket


def ns_wrapper(directory, monitor, dev_log=None, journal_socket=None, journald=None):
    """An executable that runs ``monitor`` (same pid, via exec) in a private mount namespace.

    ``journald``: a PrivateJournald whose namespace the new one is made from
    (``nsenter`` first), so the monitor's journal socket is that daemon's.

    ``dev_log``: make ``/dev/log`` a symlink to this socket path (an overlay
    on /dev, upper layer on a private tmpfs). ``journal_socket``: mount an
    empty tmpfs on /run/systemd/journal, so the journal socket is
    ``"missing"``, or ``"refusing"`` (a socket file nobody listens on).
    Nothing is visible outside the namespace, which ends with its processes.
    """
    steps = ["set -e"]
    if dev_log:
        ovl = os.path.join(directory, "devovl")
        os.makedirs(ovl, exist_ok=True)
        q = shlex.quote(ovl)
        steps += [f"mount -t tmpfs -o mode=0700 tmpfs {q}", f"mkdir {q}/u {q}/w",
                  f"mount -t overlay overlay -o lowerdir=/dev,upperdir={q}/u,workdir={q}/w /dev",
                  f"ln -s {shlex.quote(dev_log)} /dev/log"]
    if journal_socket:
        steps.append("mount -t tmpfs tmpfs /run/systemd/journal")
    if journal_socket == "refusing":
        bind = "import socket; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).bind('/run/systemd/journal/socket')"
        steps.append(f"{shlex.quote(sys.executable)} -c {shlex.quote(bind)}")
    steps.append('exec "$@"')
    path = os.path.join(directory, "ns-" + os.path.basename(monitor))
    enter = f"nsenter --mount --target {journald.pid} " if journald is not None else ""
    with open(path, "w") as f:
        f.write("#!/bin/sh\n"
                "# test wrapper: the monitor in a private mount namespace (tests/e2e/test_logging.py)\n"
                f"exec {enter}unshare --mount --propagation private /bin/sh -c {shlex.quote('; '.join(steps))} "
                f"sh {shlex.quote(monitor)} \"$@\"\n")
    os.chmod(path, 0o755)
    return path


SYSLOG_RE = re.compile(rb"^<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) ([^\[:]+)(?:\[(\d+)\])?: "
                       rb"conmon (\S+) <(\w+)>: (.*)$", re.S)


class SyslogListener:
    """A datagram socket standing in for /dev/log; parses RFC 3164 lines as syslog(3) sends them."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setblocking(False)
        self.messages = []  # (severity, tag, cid20, text, raw)

    def drain(self):
        while True:
            try:
                raw = self.sock.recv(65536)
            except BlockingIOError:
                return self.messages
            m = SYSLOG_RE.match(raw)
            assert m, f"not a conmon syslog line: {raw!r}"
            pri, _, ident, _, cid20, tag, text = m.groups()
            assert ident == b"conmon", raw
            assert int(pri) >> 3 == 1, f"facility is not user: {raw!r}"
            self.messages.append((int(pri) & 7, tag.decode(), cid20.decode(), text.strip().decode(), raw))

    def wait_for(self, pred, timeout=10, what="syslog message"):
        return poll_until(lambda: [x for x in self.drain() if pred(x)], timeout, what=what)

    def close(self):
        self.sock.close()


@pytest.fixture
def syslog(testbed):
    d = testbed.short_dir()
    listener = SyslogListener(os.path.join(d, "log"))
    yield listener
    listener.close()


# --------------------------------------------------------------------------
# journald through the monitor


def entries_of(cid, count, timeout=15):
    """The journal entries of container ``cid`` once there are ``count`` (they come asynchronously)."""
    es = journal_entries({"CONTAINER_ID_FULL": cid}, timeout=timeout, until=lambda es: len(es) >= count)
    return es


PREFIX_SCRIPT = "echo out1; echo '<4>warning prefix'; echo '<9>not a level'; echo err1 >&2; echo '<5>notice' >&2"


@pytest.mark.parametrize("driver", ["journald", "journald:"])
def test_journald_fields_and_k8s_file_together(testbed, monitor_bin, journal, driver):
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    extra = ["--log-tag", "tg"]
    if not is_c(monitor_bin):  # 2.1.6 has no --log-label
        extra += ["--log-label", "STAGE=prod", "--log-label", "TEAM=core"]
    m = run_podman(testbed, monitor_bin, ["sh", "-c", PREFIX_SCRIPT], [driver, f"k8s-file:{log}"], extra,
                   name="web-1")
    assert m.wait_exit_file() == 0, m.describe()
    es = entries_of(m.cid, 5)
    for e in es:
        assert e["CONTAINER_ID_FULL"] == m.cid.encode()
        assert e["CONTAINER_ID"] == m.cid[:12].encode()
        assert e["CONTAINER_NAME"] == b"web-1"
        assert e["CONTAINER_TAG"] == b"tg"
        assert e["SYSLOG_IDENTIFIER"] == b"tg"  # the tag wins over the name
        assert "CONTAINER_PARTIAL_MESSAGE" not in e
        assert e["_TRANSPORT"] == b"journal"
        if not is_c(monitor_bin):
            assert (e["STAGE"], e["TEAM"]) == (b"prod", b"core")
    got = [(e["MESSAGE"], e["PRIORITY"]) for e in es]
    if is_c(monitor_bin):  # conmon 2.1.6 keeps <N> and takes PRIORITY from the stream
        out = [(b"out1\n", b"6"), (b"<4>warning prefix\n", b"6"), (b"<9>not a level\n", b"6")]
        err = [(b"err1\n", b"3"), (b"<5>notice\n", b"3")]
    else:  # CONTRACT 5: <N> (0..7) sets PRIORITY and is removed
        out = [(b"out1\n", b"6"), (b"warning prefix\n", b"4"), (b"<9>not a level\n", b"6")]
        err = [(b"err1\n", b"3"), (b"notice\n", b"5")]
    assert sorted(got) == sorted(out + err)
    assert [x for x in got if x in out] == out  # each stream in order
    assert [x for x in got if x in err] == err
    # k8s-file got the same lines, untouched
    lines = [(x.stream, x.content) for x in join_lines(read_k8s_log(log)) if x.complete]
    assert [c for s, c in lines if s == "stdout"] == [b"out1", b"<4>warning prefix", b"<9>not a level"]
    assert [c for s, c in lines if s == "stderr"] == [b"err1", b"<5>notice"]


@pytest.mark.parametrize("name", ["nm", None])
def test_journald_syslog_identifier_falls_back(testbed, monitor_bin, journal, name):
    """Without a tag SYSLOG_IDENTIFIER is the name; without a name, the short id."""
    wd = testbed.workdir()
    cid = new_cid()
    u = os.path.join(wd, "userdata")
    argv = podman_create_args(cid=cid, bundle=os.path.join(wd, "bundle"), pidfile=os.path.join(u, "pidfile"),
                              name=name or "x", exit_dir=os.path.join(wd, "exits"), log_driver="journald",
                              conmon_pidfile=os.path.join(u, "conmon.pid"), oci_log=os.path.join(u, "oci-log"),
                              runtime=testbed.runtime)
    if name is None:
        i = argv.index("-n")
        del argv[i:i + 2]
    m = testbed.run(monitor_bin, ["echo", "hi"], workdir=wd, cid=cid, argv=argv)
    assert m.wait_exit_file() == 0, m.describe()
    (e,) = entries_of(cid, 1)
    assert e["MESSAGE"] == b"hi\n"
    assert e["SYSLOG_IDENTIFIER"] == (name or cid[:12]).encode()
    assert e.get("CONTAINER_NAME") == (name.encode() if name else None)
    assert "CONTAINER_TAG" not in e


LONG = 100 * 1024
LONG_SCRIPT = (f"head -c {LONG} /dev/zero | tr '\\0' x; echo; "  # a 100 KiB line in many writes
               "printf abc; sleep 0.3; echo def; "  # a line split across slow writes
               "printf 'tail without newline'")  # a partial line at exit


@pytest.mark.parametrize("partial", [True, False], ids=["partial-on", "partial-off"])
def test_journald_long_slow_and_unfinished_lines(testbed, monitor_bin, journal, partial):
    extra = []
    if not partial:
        skip_c(monitor_bin, "no --no-container-partial-message")
        extra = ["--no-container-partial-message"]
    m = run_podman(testbed, monitor_bin, ["sh", "-c", LONG_SCRIPT], ["journald:"], extra)
    assert m.wait_exit_file() == 0, m.describe()
    pieces = LONG // LINE_BUF  # 12 full buffers, then the rest of the line with its newline
    if is_c(monitor_bin):  # its piece count varies (see below): wait for the last entry instead
        es = journal_entries({"CONTAINER_ID_FULL": m.cid}, timeout=15,
                             until=lambda es: any(e["MESSAGE"] == b"tail without newline" for e in es))
    else:
        es = entries_of(m.cid, pieces + 3)
    got = [(e["MESSAGE"], e["PRIORITY"], e.get("CONTAINER_PARTIAL_MESSAGE")) for e in es]
    flag = b"true" if partial else None
    want = ([(b"x" * LINE_BUF, b"6", flag)] * pieces
            + [(b"x" * (LONG - pieces * LINE_BUF) + b"\n", b"6", None),
               (b"abcdef\n", b"6", None),  # one entry, though written in two pieces 0.3 s apart
               (b"tail without newline", b"6", flag)])  # flushed at exit, marked partial
    if is_c(monitor_bin):
        # C conmon cuts the long line where its reads happened to end (seen: a 12288-byte piece),
        # so only what it carries is compared: the same bytes, partial pieces flagged, same tail.
        assert b"".join(a for a, _, _ in got[:-2]) == b"".join(a for a, _, _ in want[:-2])
        assert all(c == flag for _, _, c in got[:-3]) and got[-3][2] is None
        assert got[-2:] == want[-2:]
        return
    assert [(len(a), b, c) for a, b, c in got] == [(len(a), b, c) for a, b, c in want]
    assert got == want


def test_journald_entry_bigger_than_a_datagram(testbed, monitor_bin, journal):
    """Labels making every entry ~300 KB: too big for any datagram, so they go in a sealed memfd."""
    skip_c(monitor_bin, "no --log-label")
    with open("/proc/sys/net/core/wmem_default") as f:  # 208 KiB here: more than pyconmon's largest send buffer
        wmem = int(f.read())
    size = 100_000  # one argument may be at most 128 KiB, all of them 2 MiB
    if wmem > 15 * size:
        pytest.skip(f"net.core.wmem_default is {wmem}: too big to exceed with arguments")
    labels = {f"BIG{i}": chr(ord("a") + i) * size for i in range(wmem // size + 1)}
    extra = [x for k, v in labels.items() for x in ("--log-label", f"{k}={v}")]
    m = run_podman(testbed, monitor_bin, ["sh", "-c", "echo hi; echo there >&2"], ["journald"], extra)
    assert m.wait_exit_file() == 0, m.describe()
    es = entries_of(m.cid, 2)
    assert sorted((e["MESSAGE"], e["PRIORITY"]) for e in es) == [(b"hi\n", b"6"), (b"there\n", b"3")]
    for e in es:
        assert {k: e[k] for k in labels} == {k: v.encode() for k, v in labels.items()}
    assert len(labels) * size > wmem


@pytest.mark.parametrize("trouble", ["missing", "refusing"])
def test_journal_socket_trouble_keeps_container_and_k8s_going(testbed, monitor_bin, journal, syslog, trouble):
    """No journal (in a private mount namespace): the container runs, k8s-file gets it all."""
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path, journal_socket=trouble)
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    script = "i=0; while [ $i -lt 200 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done"
    t0 = time.monotonic()
    m = run_podman(testbed, wrap, ["sh", "-c", script], ["journald", f"k8s-file:{log}"], ["--syslog"])
    assert m.container_pid, m.describe()
    # Keep reading syslog meanwhile: conmon 2.1.6 warns on every write when journald refuses, and
    # glibc's syslog() blocks on a full /dev/log queue, which would stall it.
    poll_until(lambda: syslog.drain() is not None and os.path.exists(m.exit_file), 20, what="exit file")
    assert m.wait_exit_file() == 0
    assert time.monotonic() - t0 < 15
    lines = join_lines(read_k8s_log(log))
    assert [x.content for x in lines if x.stream == "stdout"] == [b"out%d" % i for i in range(200)]
    assert [x.content for x in lines if x.stream == "stderr"] == [b"err%d" % i for i in range(200)]
    m.wait(10)
    assert read_entries({"CONTAINER_ID_FULL": m.cid}) == []  # the socket really was out of reach
    warnings = [x for x in syslog.drain() if x[1] != "ndebug"]
    if is_c(monitor_bin):  # 2.1.6: silent when missing, two warnings per failed write when refused
        assert (len(warnings) >= 2) is (trouble == "refusing"), warnings[:4]
    else:
        assert len(warnings) == 1, warnings  # said once, not once per line
        assert warnings[0][:2] == (4, "nwarn") and "journal" in warnings[0][3].lower()


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_full_syslog_stalls_nothing(testbed, monitor_bin, syslog):
    """A syslog daemon that never reads (its /dev/log queue fills up) while the journal socket
    refuses every write (a warning per write for C conmon): pyconmon's syslog writes don't block,
    the container finishes and k8s-file gets everything.

    [conmon] C conmon 2.1.6's syslog(3) blocks on the full queue: the container finishes, but its
    output is not all logged and no exit file comes until the syslog socket is read again."""
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path, journal_socket="refusing")
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    n = 300  # each line its own read: a journald write, and a warning or two from C conmon, per line
    script = f"i=0; while [ $i -lt {n} ]; do echo out$i; usleep 2000; i=$((i+1)); done"
    m = run_podman(testbed, wrap, ["sh", "-c", script], ["journald", f"k8s-file:{log}"], ["--syslog"])
    assert m.container_pid, m.describe()
    if is_c(monitor_bin):
        poll_until(lambda: m.state()["status"] == "stopped", 20, what="the container to finish")
        with pytest.raises(TimeoutError):  # it finished, but its monitor is stuck in syslog(3)
            m.wait_exit_file(5)
        logged = len(join_lines(read_k8s_log(log)))
        assert logged < n, "C conmon logged everything: it did not block"
        # read the syslog socket again: it goes on
        poll_until(lambda: syslog.drain() is not None and os.path.exists(m.exit_file), 60, what="exit file")
    assert m.wait_exit_file(15) == 0
    lines = join_lines(read_k8s_log(log))
    assert [x.content for x in lines] == [b"out%d" % i for i in range(n)]
    m.wait(10)


# --------------------------------------------------------------------------
# journald floods (issue 13): every entry exactly once, in order per stream,
# with every field, also when journald stops taking entries for a while

FLOOD_NAME = "flood-1"
FLOODS = {  # workload: (script, stdout lines, stderr lines)
    "seq": ("seq 20000", [b"%d" % i for i in range(1, 20001)], []),
    "100b": (shlex.join(numbered(10000)), [numbered_line(i) for i in range(1, 10001)], []),
    "both-streams": ("seq 10000 >&2 & seq 10001 20000; wait",
                     [b"%d" % i for i in range(10001, 20001)], [b"%d" % i for i in range(1, 10001)]),
}


def journal_streams(cid, name, directory=None, socket_path=SOCKET):
    """(stdout lines, stderr lines) of ``cid``'s entries, each entry checked for every field.

    Called after the exit file: the monitor has sent everything, so once an
    entry sent now is stored, so are all of the container's (journald takes
    its socket queue in order).
    """
    token = new_cid()
    send_native({"MESSAGE": "pyconmon test barrier", "PYCONMON_BARRIER": token}, socket_path)
    journal_entries({"PYCONMON_BARRIER": token}, timeout=60, directory=directory)
    streams = {b"6": [], b"3": []}
    for e in read_entries({"CONTAINER_ID_FULL": cid}, directory):
        assert (e["CONTAINER_ID"], e["CONTAINER_NAME"], e["SYSLOG_IDENTIFIER"]) == (
            cid[:12].encode(), name.encode(), name.encode()), e
        assert e["_TRANSPORT"] == b"journal" and "CONTAINER_PARTIAL_MESSAGE" not in e, e
        assert e["MESSAGE"].endswith(b"\n"), e
        streams[e["PRIORITY"]].append(e["MESSAGE"][:-1])
    return streams[b"6"], streams[b"3"]


@pytest.mark.one_runtime  # the monitor's own work after the start
@pytest.mark.parametrize("workload", FLOODS)
def test_journald_flood_arrives_exactly_once_in_order(testbed, monitor_bin, journal, workload):
    script, out, err = FLOODS[workload]
    m = run_podman(testbed, monitor_bin, ["sh", "-c", script], ["journald"], name=FLOOD_NAME)
    assert m.wait_exit_file(60) == 0, m.describe()
    got_out, got_err = journal_streams(m.cid, FLOOD_NAME)
    assert (len(got_out), len(got_err)) == (len(out), len(err))
    assert got_out == out
    assert got_err == err


@pytest.fixture
def private_journal(testbed, journal):
    """A journald of this test's own (the shared one must not be stopped under other tests)."""
    j = start_private_journald(testbed.workdir("journald"))
    yield j
    stop_private_journald(j)


@pytest.mark.one_runtime  # the monitor's own work after the start
@pytest.mark.parametrize("stop_s", [1.0, 4.0], ids=["within-the-2s-bound", "past-the-2s-bound"])
def test_journald_stopped_for_a_while(testbed, monitor_bin, private_journal, syslog, stop_s):
    """journald SIGSTOPped while the container floods, then continued.

    Within the 2 s bound nothing is lost and nothing is said.  Past it
    pyconmon says so once and drops lines for a while (C conmon waits for
    ever); what arrives is still in order, each line once, and a line
    written after journald is back arrives.
    """
    j = private_journal
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path, journald=j)
    n = 30000  # 3 MB: more than the pipe holds, so the container is held up while journald is stopped
    script = f"trap 'echo last; exit 0' USR1; {shlex.join(numbered(n))}; while :; do sleep 0.05; done"
    m = run_podman(testbed, wrap, ["sh", "-c", script], ["journald"], ["--syslog"], name=FLOOD_NAME, start=False)
    os.kill(j.pid, signal.SIGSTOP)
    try:
        m.start_container()
        time.sleep(stop_s)  # the stimulus: how long journald takes nothing
        assert not os.path.exists(m.exit_file)
        said_while_stopped = len([x for x in syslog.drain() if x[1] != "ndebug"])
    finally:
        os.kill(j.pid, signal.SIGCONT)
    runtime_kill(m, "USR1")  # the trap runs once the flood is written: "last" comes after it
    assert m.wait_exit_file(120) == 0, m.describe()
    got, err = journal_streams(m.cid, FLOOD_NAME, j.directory, j.socket_path)
    assert err == [] and got[-1:] == [b"last"], got[-3:]
    got = got[:-1]
    warnings = [x for x in syslog.drain() if x[1] != "ndebug"]  # all of them, from the start
    if stop_s < 2 or is_c(monitor_bin):
        assert len(got) == n and check_numbered(got) == (1, n)
        assert warnings == []
        return
    numbers = [int(x[:8]) for x in got]
    assert got == [numbered_line(i) for i in numbers]  # whole lines
    assert numbers == sorted(set(numbers))  # in order, none twice
    assert numbers[:1] == [1] and len(numbers) < n, len(numbers)  # queued before the stop; then some dropped
    assert len(warnings) == said_while_stopped == 1, warnings  # said while journald was stopped, only once
    assert warnings[0][:2] == (4, "nwarn") and "not accepting" in warnings[0][3], warnings


# --------------------------------------------------------------------------
# k8s-file size limits: rotation and truncation


def test_rotation_keeps_exactly_max_files(testbed, monitor_bin):
    skip_c(monitor_bin, "no --log-rotate/--log-max-files")
    n = 500_000  # 50 MB of output, ~72 MB of records
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    m = run_podman(testbed, monitor_bin, numbered(n), [f"k8s-file:{log}"],
                   ["--log-size-max", str(MiB), "--log-rotate", "--log-max-files", "3"])
    assert m.wait_exit_file(120) == 0, m.describe()
    assert files_of(log) == ["ctr.log", "ctr.log.1", "ctr.log.2", "ctr.log.3"]
    records = []
    for name in ("ctr.log.3", "ctr.log.2", "ctr.log.1", "ctr.log"):  # oldest first
        path = os.path.join(os.path.dirname(log), name)
        size = os.path.getsize(path)
        assert 0 < size <= MiB, (name, size)
        if name != "ctr.log":
            assert size > MiB - 200, (name, size)  # a rotated file is full: reopened only at the limit
        records += read_k8s_log(path)
        parse_k8s_timestamp(records[-1].timestamp)
    assert {r.stream for r in records} == {"stdout"}
    first, last = check_numbered_lines(join_lines(records))  # the newest records, all there, in order
    assert last == n
    assert first > 1


def test_rotation_with_one_file_keeps_only_dot_1(testbed, monitor_bin):
    skip_c(monitor_bin, "no --log-rotate/--log-max-files in 2.1.6 (test_diagnostics_streams_and_prefixes)")
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    n = 30_000  # ~4 MB of records: three rotations
    m = run_podman(testbed, monitor_bin, numbered(n), [f"k8s-file:{log}"],
                   ["--log-size-max", str(MiB), "--log-rotate", "--log-max-files", "1"])
    assert m.wait_exit_file(60) == 0, m.describe()
    assert files_of(log) == ["ctr.log", "ctr.log.1"]
    records = [r for p in (log + ".1", log) for r in read_k8s_log(p)]
    assert check_numbered_lines(join_lines(records))[1] == n


def test_rotation_writes_an_oversized_record_whole(testbed, monitor_bin):
    skip_c(monitor_bin, "no --log-rotate")
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    script = "echo first; y=$(head -c 6000 /dev/zero | tr '\\0' y); echo $y; echo last"  # one write
    m = run_podman(testbed, monitor_bin, ["sh", "-c", script], [f"k8s-file:{log}"],
                   ["--log-size-max", "4096", "--log-rotate", "--log-max-files", "5"])
    assert m.wait_exit_file() == 0, m.describe()
    files = [os.path.join(os.path.dirname(log), f) for f in reversed(files_of(log)[1:])] + [log]
    per_file = [[(r.tag, r.content) for r in read_k8s_log(f)] for f in files]
    # The 6000-byte record (> the limit) sits alone in a file, whole; nothing is lost.
    assert per_file == [[("F", b"first")], [("F", b"y" * 6000)], [("F", b"last")]]
    assert os.path.getsize(files[1]) > 6000


def test_truncation_keeps_the_file_under_the_limit(testbed, monitor_bin):
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    n = 40_000  # ~5.6 MB of records
    m = run_podman(testbed, monitor_bin, numbered(n), [f"k8s-file:{log}"], ["--log-size-max", str(MiB)])
    assert m.wait_exit_file(60) == 0, m.describe()
    assert files_of(log) == ["ctr.log"]  # no PATH.1, no PATH.tmp left behind
    assert 0 < os.path.getsize(log) <= MiB
    first, last = check_numbered_lines(join_lines(read_k8s_log(log)))
    assert last == n
    assert first > 1


# --------------------------------------------------------------------------
# --log-global-size-max


def test_global_size_cap_drops_output_and_never_blocks(testbed, monitor_bin, syslog):
    cap = 100 * 1024
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path)
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    t0 = time.monotonic()
    m = run_podman(testbed, wrap, numbered(100_000), [f"k8s-file:{log}"],  # 10 MB
                   ["--log-global-size-max", str(cap), "--syslog"])
    assert m.wait_exit_file(30) == 0, m.describe()
    assert time.monotonic() - t0 < 20  # the pipe kept draining: the container was never blocked
    lines = join_lines(read_k8s_log(log))
    assert all(x.stream == "stdout" for x in lines)
    assert check_numbered([x.content for x in lines if x.complete])[0] == 1  # the first lines, in order
    m.wait(10)
    said = [x for x in syslog.drain() if "limit" in x[3].lower()]
    if is_c(monitor_bin):
        assert cap - 200 < os.path.getsize(log) <= cap + 200  # conmon 2.1.6 counts the records it writes
        assert said == []  # and says nothing
    else:
        # pyconmon counts the container's bytes: exactly the first `cap` bytes of output survive
        everything = b"".join(x.content + (b"\n" if x.complete else b"") for x in lines)
        assert everything == b"".join(numbered_line(i) + b"\n" for i in range(1, cap // 101 + 2))[:cap]
        assert [(s, t) for s, t, *_ in said] == [(4, "nwarn")]  # once, though ~9.9 MB were dropped


# --------------------------------------------------------------------------
# reopen through ctl (the kubelet's rotation: rename, then ReopenContainerLog)


@pytest.mark.parametrize("mode", ["moved-away", "in-place", "in-place-rotate"])
def test_ctl_reopen_while_writing(testbed, monitor_bin, mode):
    """Ctl ``2 0 0`` while the container writes as fast as it can.

    moved-away: the kubelet renamed the log first; the union of both files
    has every line once, in order. in-place: truncate-by-rename (a new
    inode, what CRI-O waits for), the old lines gone, the new ones intact.
    in-place-rotate: with --log-rotate the monitor moves it to PATH.1 itself.
    """
    extra = []
    if mode == "in-place-rotate":
        skip_c(monitor_bin, "no --log-rotate")
        extra = ["--log-rotate", "--log-max-files", "1"]
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    script = 'i=0; while :; do echo "line $i"; i=$((i+1)); done'
    m = run_podman(testbed, monitor_bin, ["sh", "-c", script], [f"k8s-file:{log}"], extra)
    assert m.container_pid, m.describe()
    poll_until(lambda: os.path.getsize(log) > 20_000, what="output in the log")
    ino = os.stat(log).st_ino
    if mode == "moved-away":
        os.rename(log, log + ".1")  # the old file moved away first, like the kubelet
    write_ctl(m.bundle, "2 0 0\n")
    poll_until(lambda: os.path.exists(log) and os.stat(log).st_ino != ino and os.path.getsize(log) > 20_000,
               what="the reopened log")
    runtime_kill(m)
    assert m.wait_exit_file() == 137
    old = read_k8s_log(log + ".1") if mode != "in-place" else []
    new = read_k8s_log(log)
    assert new and (old or mode == "in-place")
    assert files_of(log) == (["ctr.log"] if mode == "in-place" else ["ctr.log", "ctr.log.1"])
    for r in old + new:
        parse_k8s_timestamp(r.timestamp)
        assert r.stream == "stdout" and r.tag in ("F", "P")
    lines = [x.content for x in join_lines(old + new)]
    if mode == "in-place":  # the first line may have lost its start (a P record) with the old file
        n = int(lines[1].split()[1])
        assert n > 0 and (b"line %d" % (n - 1)).endswith(lines[0])
        assert lines[1:] == [b"line %d" % i for i in range(n, n + len(lines) - 1)]
    else:
        assert lines == [b"line %d" % i for i in range(len(lines))]  # each once, in order


# --------------------------------------------------------------------------
# log path safety: allowlist, symlinks, unsafe directories


def _refusal_case(base, case):
    """(log path, extra args, expected text) for a log path the monitor must refuse."""
    logs = os.path.join(base, "logs")
    os.makedirs(logs)
    log = os.path.join(logs, "ctr.log")
    if case == "outside-allowlist":
        allowed = os.path.join(base, "allowed")
        os.makedirs(allowed)
        return log, ["--log-allowlist-dir", allowed], "not inside an allowed directory"
    if case == "symlink":
        target = os.path.join(logs, "target")
        open(target, "w").close()
        os.symlink(target, log)
        return log, [], "is a symlink"
    if case == "world-writable":
        os.chmod(logs, 0o777)
        return log, [], "world-writable"
    if case == "other-owner":
        os.chown(logs, 65534, 65534)
        return log, [], "owned by another user"
    raise ValueError(case)


@pytest.mark.parametrize("case", ["outside-allowlist", "symlink", "world-writable", "other-owner"])
def test_unsafe_log_path_is_refused_before_the_container(testbed, monitor_bin, case):
    """pyconmon refuses the log path before anything starts.  [conmon] C conmon 2.1.6 (no
    --log-allowlist-dir) follows the symlink and logs into any directory."""
    if case == "outside-allowlist":
        skip_c(monitor_bin, "no --log-allowlist-dir")
    base = testbed.workdir("safety")
    log, extra, why = _refusal_case(base, case)
    m = run_podman(testbed, monitor_bin, ["echo", "hi"], [f"k8s-file:{log}"], extra, start=False)
    if is_c(monitor_bin):
        assert m.container_pid, m.describe()
        m.start_container()
        assert m.wait_exit_file() == 0
        target = os.path.join(os.path.dirname(log), "target") if case == "symlink" else log
        assert os.path.islink(log) is (case == "symlink")
        assert [x.content for x in join_lines(read_k8s_log(target))] == [b"hi"]
        return
    assert m.first_status == 1, m.describe()
    assert m.wait_stdio_eof(5)
    err = m.stderr.decode()
    assert "[conmon:e]: Failed to open log file" in err and why in err, err
    # The caller reads errors from the sync pipe: a -1 with the reason, not just EOF.
    assert m.sync_msg and m.sync_msg["data"] == -1, m.describe()
    assert why in m.sync_msg["message"]
    assert m.read_sync() is None
    assert m.state() is None  # no container created ...
    assert not os.path.exists(m.oci_log)  # ... the runtime never ran
    if case == "symlink":
        assert os.path.islink(log) and os.path.getsize(log) == 0  # the target untouched
    else:
        assert not os.path.lexists(log)


def test_unsafe_log_path_refusal_reaches_crio_too(testbed, monitor_bin):
    """CRI-O style (stream socket, legacy ``pid`` key, bare log path): the same -1 with the reason.
    [conmon] C conmon 2.1.6 logs into the world-writable directory."""
    log, extra, why = _refusal_case(testbed.workdir("safety"), "world-writable")
    m = testbed.run(monitor_bin, ["echo", "hi"], style="crio", log_path=log, extra_args=extra, start=False)
    if is_c(monitor_bin):
        assert m.container_pid, m.describe()
        m.start_container()
        assert m.wait_exit_file() == 0
        assert [x.content for x in join_lines(read_k8s_log(log))] == [b"hi"]
        return
    assert m.first_status == 1, m.describe()
    assert m.sync_msg and m.sync_msg["pid"] == -1 and why in m.sync_msg["message"], m.describe()
    assert m.state() is None
    assert not os.path.lexists(log)


def test_allowlisted_log_path_is_accepted(testbed, monitor_bin):
    skip_c(monitor_bin, "no --log-allowlist-dir")
    base = testbed.workdir("allow")
    real = os.path.join(base, "real")
    os.makedirs(os.path.join(real, "pod"))
    os.symlink(real, os.path.join(base, "alias"))  # the allowlist entry may itself be a symlink
    log = os.path.join(real, "pod", "ctr.log")
    m = run_podman(testbed, monitor_bin, ["echo", "hi"], [f"k8s-file:{log}"],
                   ["--log-allowlist-dir", os.path.join(base, "alias")])
    assert m.wait_exit_file() == 0, m.describe()
    assert [x.content for x in join_lines(read_k8s_log(log))] == [b"hi"]


def test_allowlist_is_enforced_on_reopen_and_rotation(testbed, monitor_bin):
    """A directory on the log path swapped for a symlink out of the allowlist: no file appears there."""
    skip_c(monitor_bin, "no --log-allowlist-dir in 2.1.6")
    base = testbed.workdir("allow")
    allowed, outside = os.path.join(base, "allowed"), os.path.join(base, "outside")
    sub = os.path.join(allowed, "pod")
    os.makedirs(sub)
    os.makedirs(outside)
    log = os.path.join(sub, "ctr.log")
    script = 'echo before; read x; i=0; while [ $i -lt 500 ]; do echo "after $i"; i=$((i+1)); done'
    m = run_podman(testbed, monitor_bin, ["sh", "-c", script], [f"k8s-file:{log}"],
                   ["--log-allowlist-dir", allowed, "--log-size-max", "8192", "--log-rotate",
                    "--log-max-files", "2"], stdin=True)
    assert m.container_pid, m.describe()
    poll_until(lambda: b"before" in open(log, "rb").read(), what="first line")
    os.rename(sub, sub + ".old")
    os.symlink(outside, sub)
    write_ctl(m.bundle, "2 0 0\n")  # an explicit reopen ...
    client = m.attach()
    client.send(b"go\n")  # ... and ~27 KB of records through an 8 KiB limit: rotations
    assert m.wait_exit_file() == 0
    assert os.listdir(outside) == []
    # Every reopen was refused: the records went on into the file the monitor had open.
    lines = join_lines(read_k8s_log(os.path.join(sub + ".old", "ctr.log")))
    assert [x.content for x in lines] == [b"before"] + [b"after %d" % i for i in range(500)]


# --------------------------------------------------------------------------
# the monitor's own diagnostics: stderr in the foreground, syslog


def test_log_open_error_on_stderr_and_sync_pipe(testbed, monitor_bin):
    """A log directory that doesn't exist: a clear error while the monitor still has stderr."""
    log = os.path.join(testbed.workdir("logs"), "missing", "ctr.log")
    m = run_podman(testbed, monitor_bin, ["echo", "hi"], [f"k8s-file:{log}"], start=False)
    assert m.first_status == 1, m.describe()
    assert m.wait_stdio_eof(5)
    assert b"[conmon:e]: Failed to open log file" in m.stderr
    assert m.state() is None
    if is_c(monitor_bin):
        assert m.sync_msg is None  # conmon 2.1.6: just EOF on the sync pipe
    else:
        assert m.sync_msg["data"] == -1 and "Failed to open log file" in m.sync_msg["message"], m.describe()


@pytest.mark.parametrize("level", ["warning", "trace"])
def test_foreground_stderr_is_filtered_by_level(testbed, monitor_bin, level):
    skip_c(monitor_bin, "prints no trace line in the foreground")
    m = run_podman(testbed, monitor_bin, ["true"], extra=["--log-level", level])
    assert m.wait_exit_file() == 0, m.describe()
    m.wait(10)
    assert m.wait_stdio_eof(5)
    if level == "trace":  # trace is shown as [conmon:d], like conmon
        assert m.stderr == b"[conmon:d]: set log level to trace\n", m.stderr
    else:
        assert m.stderr == b""


@pytest.mark.parametrize("level", ["warning", "debug"])
def test_passthrough_keeps_diagnostics_on_the_callers_stderr(testbed, monitor_bin, level):
    """With passthrough the monitor keeps the caller's stdio until the runtime has it: diagnostics
    up to then stay visible, later ones (the container pid) don't, as in C conmon."""
    m = run_podman(testbed, monitor_bin, ["sh", "-c", "echo out; echo err >&2"], ["passthrough"],
                   ["--log-level", level])
    assert m.wait_exit_file() == 0, m.describe()
    m.wait(10)
    assert m.wait_stdio_eof(5)
    assert m.stdout == b"out\n"  # the container's own output, inherited
    err = m.stderr.decode()
    assert "err\n" in err
    diag = [x for x in err.splitlines() if x.startswith("[conmon:")]
    assert all(re.match(r"^\[conmon:[ewid]\]: ", x) for x in diag), diag
    if level == "debug":
        assert any(x.startswith("[conmon:d]: ") for x in diag), err
        assert not any("container pid" in x.lower() for x in diag), err
    else:
        assert not any(x.startswith(("[conmon:i]", "[conmon:d]")) for x in diag), err


# syslog severities: pyconmon uses the level's own; conmon 2.1.6 sends everything but errors as LOG_INFO
PY_SEVERITY = {"error": 3, "nwarn": 4, "ninfo": 6, "ndebug": 7, "ntrace": 7}
C_SEVERITY = {"error": 3, "nwarn": 6, "ninfo": 6, "ndebug": 6, "ntrace": 6}
LEVEL_TAGS = {"warning": {"error", "nwarn"}, "info": {"error", "nwarn", "ninfo"},
              "debug": {"error", "nwarn", "ninfo", "ndebug"},
              "trace": {"error", "nwarn", "ninfo", "ndebug", "ntrace"}}


@pytest.mark.parametrize("level", ["warning", "info", "debug", "trace"])
def test_syslog_levels(testbed, monitor_bin, syslog, level):
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path)
    m = run_podman(testbed, wrap, ["sleep", "30"], extra=["--syslog", "--log-level", level])
    assert m.container_pid, m.describe()
    ino = os.stat(m.log_path).st_ino
    write_ctl(m.bundle, "2 0 0\n")  # a reopen (info in pyconmon) ...
    poll_until(lambda: os.stat(m.log_path).st_ino != ino, what="the reopened log")
    write_ctl(m.bundle, "9 0 0\n")  # ... and a bad message: a warning in both
    syslog.wait_for(lambda x: x[1] == "nwarn" and "9" in x[3], what="the ctl warning")
    runtime_kill(m)
    assert m.wait_exit_file() == 137
    m.wait(10)
    got = syslog.drain()
    severity = C_SEVERITY if is_c(monitor_bin) else PY_SEVERITY
    for sev, tag, cid20, _text, raw in got:
        assert cid20 == m.cid[:20], raw
        assert tag in LEVEL_TAGS[level], raw  # nothing more verbose than --log-level
        assert sev == severity[tag], raw
    tags = {x[1] for x in got}
    assert "nwarn" in tags
    if level in ("debug", "trace"):
        assert "ndebug" in tags
    if level == "trace":
        assert "ntrace" in tags
    if not is_c(monitor_bin) and level != "warning":
        assert ("ninfo", "Reopening log files") in [(x[1], x[3]) for x in got]


def test_syslog_error_level_shows_only_errors(testbed, monitor_bin, syslog):
    wrap = ns_wrapper(testbed.workdir("ns"), monitor_bin, dev_log=syslog.path)
    m = run_podman(testbed, wrap, ["/does/not/exist"], extra=["--syslog", "--log-level", "error"], start=False)
    assert m.sync_msg and m.sync_msg["data"] == -1, m.describe()
    m.wait(10)
    got = syslog.drain()
    assert got, "no error reached syslog"
    assert {(sev, tag) for sev, tag, *_ in got} == {(3, "error")}
    assert any("Failed to create container: exit status" in x[3] for x in got)
    assert all(x[2] == m.cid[:20] for x in got)


# --------------------------------------------------------------------------
# fsync of the log at exit


@pytest.mark.parametrize("no_sync", [False, True], ids=["sync", "no-sync-log"])
def test_log_is_fsynced_at_exit_unless_no_sync_log(testbed, monitor_bin, no_sync):
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace not installed")
    d = testbed.workdir("strace")
    out = os.path.join(d, "trace")
    log = os.path.join(testbed.workdir("logs"), "ctr.log")
    extra = ["--sync"] + (["--no-sync-log"] if no_sync else [])

    def run_to_the_end(monitor, args, drivers=None):
        """A --sync monitor: its container started and run to its end, the monitor exited 0."""
        m = run_podman(testbed, monitor, args, drivers, extra, wait=False)
        msg = m.read_sync()
        assert msg and msg["data"] > 0, m.describe()
        m.start_container()
        assert m.wait_exit_file() == 0, m.describe()
        assert m.wait_first() == 0

    if is_server_stub(monitor_bin):
        # Server mode: the log is the server's to fsync (in a worker thread), so the server is traced.
        run_to_the_end(monitor_bin, ["true"])  # the server is up
        (server,) = server_pids(server_lib_dir(monitor_bin))
        tracer = strace_attached(server, "trace=fsync,fdatasync,sync,syncfs", out=out, flags=("-y",))
        try:
            run_to_the_end(monitor_bin, ["echo", "hi"], [f"k8s-file:{log}"])
        finally:
            tracer.terminate()
            tracer.wait(10)
        with open(out) as f:
            trace = f.read()
    else:
        wrap = os.path.join(d, "strace-monitor")
        with open(wrap, "w") as f:  # -D: the tracer is a grandchild, the monitor keeps its pid and parent
            f.write(f"#!/bin/sh\nexec {strace} -D -q --seccomp-bpf -e trace=fsync,fdatasync,sync,syncfs -y "
                    f"-o {shlex.quote(out)} {shlex.quote(monitor_bin)} \"$@\"\n")
        os.chmod(wrap, 0o755)
        # --sync: the traced process is the monitor itself, so strace needs no -f (no runc, no container)
        run_to_the_end(wrap, ["echo", "hi"], [f"k8s-file:{log}"])

        def finished():
            text = open(out).read() if os.path.exists(out) else ""
            return text if "+++ exited" in text else None

        try:
            trace = poll_until(finished, 30, what="strace to finish")
        except TimeoutError:
            raise AssertionError("no exit in the trace:\n" + open(out).read()[-3000:]) from None
    synced = [x for x in trace.splitlines() if f"<{log}>" in x and re.search(r"\b(fsync|fdatasync)\(", x)]
    if no_sync:
        assert synced == [], trace
    else:
        assert synced and all(x.endswith("= 0") for x in synced), trace
