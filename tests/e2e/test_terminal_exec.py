"""Terminals, exec sessions and the control FIFOs, with real runc (issue 3, CONTRACT 2-4).

Most tests run against both monitors (``monitor_bin``): C conmon 2.1.6 is the
reference for the wire format; where it differs from the contract the test
says so and asserts the contract for pyconmon only.
"""

import concurrent.futures
import fcntl
import json
import os
import random
import re
import signal
import stat
import struct
import termios
import time

import pytest

from support import MONITORS, is_c
from support.harness import (
    new_cid,
    pid_alive,
    pidfile_runtime,
    poll_until,
    read_exit_file,
    read_pidfile,
    stat_after_comm,
    wait_for_path,
    wait_pid_gone,
    write_ctl,
    write_script,
)

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """user + system CPU time of ``pid`` from /proc/PID/stat."""
    fields = stat_after_comm(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


def test_tty_output_complete_when_container_exits_at_once(testbed, monitor_bin):
    """A burst on the pty right before exit is drained into the log and to the client."""
    m, client = started_with_client(testbed, monitor_bin, ["seq", "1", "30000"])
    expected = b"".join(b"%d\r\n" % i for i in range(1, 30001))
    out = client.read_until_eof(20)
    assert out == {2: expected}
    assert m.wait_exit_file() == 0
    lines = m.log_lines()  # reads may end mid-line: P pieces joined
    assert [(x.stream, x.content, x.complete) for x in lines] == [("stdout", b"%d\r" % i, True)
                                                                  for i in range(1, 30001)]
    assert client.max_packet <= 8193


def tty_fds(pid):
    """The fds of ``pid`` open on a pty slave."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("/dev/pts/"):
                out.append(fd)
        except FileNotFoundError:
            pass
    return out


def container_procs(pid):
    """Pids in the (v1 pids, or v2) cgroup of ``pid``."""
    with open(f"/proc/{pid}/cgroup") as f:
        lines = [x.split(":", 2) for x in f.read().splitlines()]
    for _, ctrls, path in lines:
        if "pids" in ctrls.split(","):
            procs = f"/sys/fs/cgroup/pids{path}/cgroup.procs"
            break
    else:
        procs = f"/sys/fs/cgroup{lines[-1][2]}/cgroup.procs"
    with open(procs) as f:
        return sorted(int(x) for x in f.read().split())


def started_with_client(testbed, monitor_bin, args, **kw):
    """A tty container, created, with an attach client connected before ``runc start``."""
    m = testbed.run(monitor_bin, args, terminal=True, start=False, **kw)
    assert m.container_pid, m.describe()
    client = m.attach()
    m.start_container()
    return m, client


# --------------------------------------------------------------------------
# --terminal: output, resize, hangup


def test_tty_output_is_stdout_with_crlf(testbed, monitor_bin):
    m, client = started_with_client(testbed, monitor_bin, ["sh", "-c", "echo out; echo err >&2; printf tail"])
    out = client.read_until_eof(10)
    assert out == {2: b"out\r\nerr\r\ntail"}, "with a tty everything is stream 2, ONLCR on"
    assert m.wait_exit_file() == 0
    recs = m.log_records()
    assert {r.stream for r in recs} == {"stdout"}
    assert b"".join(r.content + (b"\n" if r.tag == "F" else b"") for r in recs) == b"out\r\nerr\r\ntail"
    # two full lines, each ending in CR (a line read in two pieces is a partial record, then the rest)
    full = [r.content for r in recs if r.tag == "F"]
    assert len(full) == 2 and all(c.endswith(b"\r") for c in full), full


def test_tty_input_via_attach_survives_client_eof(testbed, monitor_bin):
    """Input from attach clients goes to the pty; a client leaving doesn't close it (-t, no -i)."""
    tmpdir = testbed.short_dir()
    script = 'read a; echo "a=$a"; read b; echo "b=$b"'
    m, first = started_with_client(testbed, monitor_bin, ["sh", "-c", script], env_extra={"TMPDIR": tmpdir})
    assert os.listdir(tmpdir) == [], "the console socket is unlinked once the pty is there"
    first.send(b"one\n")
    first.read_until(lambda o: b"a=one\r\n" in o.get(2, b""), 10)
    first.shutdown_write()
    first.close()
    second = m.attach()
    second.send(b"two\n")
    assert second.read_until_eof(10) == {2: b"two\r\nb=two\r\n"}
    assert m.wait_exit_file() == 0


def wait_size(rows, cols):
    """A script that prints its size (``stty size``, empty with an error while 0x0), then ``ready``,
    waits (10 s at most) until the pty is ROWSxCOLS and prints ``now <size>``."""
    return (f'stty size; echo ready; i=0; while [ "$(stty size 2>/dev/null)" != "{rows} {cols}" ] '
            f'&& [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done; echo "now $(stty size)"')


def wait_ready(client):
    client.read_until(lambda o: b"ready\r\n" in o.get(2, b""), 10)


@pytest.mark.parametrize("fifo,pieces", [("ctl", ["1 40 100\n"]), ("winsz", ["40 100\n"]),
                                         ("ctl", ["1 4", "0 10", "0\n"]), ("ctl", ["1 2 3\n1 40 100\n"]),
                                         ("ctl", ["1 40 100 2 3\n"]), ("winsz", ["40 100 7\n"])],
                         ids=["ctl", "winsz", "ctl-split", "ctl-two-lines", "ctl-extra-fields",
                              "winsz-extra-fields"])
def test_resize_seen_by_stty(testbed, monitor_bin, fifo, pieces):
    """[conmon] ctl-two-lines: C conmon 2.1.6 parses the first line of a read once per line in it
    (sscanf on the buffer start): it applies 2x3 twice and never 40x100, so the script gives up
    waiting after 10 s and reports 2x3."""
    c_two_lines = len(pieces[0].splitlines()) > 1 and is_c(monitor_bin)
    m, client = started_with_client(testbed, monitor_bin, ["sh", "-c", wait_size(40, 100)])
    wait_ready(client)
    fd = os.open(os.path.join(m.bundle, fifo), os.O_WRONLY | os.O_NONBLOCK)
    try:
        for piece in pieces:  # each piece is read on its own
            os.write(fd, piece.encode())
            poll_until(lambda: fifo_pending(fd) == 0, 5, what="the monitor to read the piece")
    finally:
        os.close(fd)
    out = client.read_until_eof(15)[2]
    assert out.endswith(b"ready\r\nnow 2 3\r\n" if c_two_lines else b"ready\r\nnow 40 100\r\n"), out
    assert m.wait_exit_file() == 0


def test_ctl_fifos_are_fifos_0660(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sleep", "30"], terminal=True)
    assert m.container_pid, m.describe()
    modes = {}
    for name in ("ctl", "winsz"):
        st = os.stat(os.path.join(m.bundle, name))
        assert stat.S_ISFIFO(st.st_mode), name
        modes[name] = stat.S_IMODE(st.st_mode)
    # CONTRACT 4 says 0660; C conmon's mkfifo(0660) goes through its umask 022: 0640
    assert modes["ctl"] == (0o660 if not is_c(monitor_bin) else 0o640), modes


def test_stale_ctl_and_winsz_are_replaced(testbed, monitor_bin):
    bundle = testbed.bundle(["sh", "-c", wait_size(12, 34)], terminal=True)
    with open(os.path.join(bundle, "ctl"), "w") as f:
        f.write("1 99 99\n")  # a regular file left behind
    os.mkfifo(os.path.join(bundle, "winsz"))  # a stale FIFO nobody reads
    m = testbed.run(monitor_bin, bundle=bundle, terminal=True, start=False)
    assert m.container_pid, m.describe()
    client = m.attach()
    m.start_container()
    wait_ready(client)
    for name in ("ctl", "winsz"):
        assert stat.S_ISFIFO(os.stat(os.path.join(bundle, name)).st_mode), name
    write_ctl(bundle, "12 34\n", name="winsz")
    assert client.read_until_eof(15)[2].endswith(b"ready\r\nnow 12 34\r\n")
    assert m.wait_exit_file() == 0


def _garbage_lines(rng, n):
    """``n`` malformed (or harmless) ctl writes: bytes, partial lines, huge numbers, NULs."""
    pieces = [b"1", b"2", b"3", b"-1", b"0", b"1000", b"1001", b"99999999999999999999999", b"-" + b"9" * 40,
              b"1e3", b"0x10", b"+5", b" ", b"\t", b"\x00", b"\xff", b"abc", b"\r", b"1 2", b"1 2 3 4"]
    out = []
    for _ in range(n):
        kind = rng.randrange(6)
        if kind == 0:
            line = rng.randbytes(rng.randrange(0, 40))
        elif kind == 1:  # words from the pieces, odd counts and separators
            line = b" ".join(rng.choice(pieces) for _ in range(rng.randrange(0, 6)))
        elif kind == 2:  # out-of-range resize
            line = b"1 %d %d" % (rng.choice([-1, 1001, 65536, 2**31, -(2**40)]), rng.randrange(-5, 5000))
        elif kind == 3:  # unknown type
            line = b"%d 10 10" % rng.choice([0, 3, 4, 255, -1, 2**33])
        elif kind == 4:  # very long line (beyond any line buffer)
            line = b"1 " + b"9" * rng.randrange(200, 5000)
        else:  # NULs and garbage around a plausible line
            line = b"\x00" * rng.randrange(3) + b"1 30 80" + rng.choice([b"\x00", b"x", b"  7", b""])
        # most lines end with a newline; some don't and run into the next one
        out.append(line + (b"\n" if rng.random() < 0.9 else b""))
    return out


def fifo_pending(fd):
    """Bytes written to a FIFO and not read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


def _c_conmon_spins_on_ctl(m):
    fd = os.open(os.path.join(m.bundle, "ctl"), os.O_WRONLY | os.O_NONBLOCK)
    try:
        os.write(fd, b"x" * 100)
        poll_until(lambda: fifo_pending(fd) == 0, 5, what="the monitor to read the first piece")
        os.write(fd, b"y" * 150)  # 250 bytes without a newline: more than its 200-byte buffer
        cpu0 = cpu_seconds(m.pid)
        time.sleep(2)  # CPU use needs a span of time: nothing to poll
        # an idle monitor uses next to nothing; a spinning one all it gets of the 2 shared cores
        assert cpu_seconds(m.pid) - cpu0 > 0.3, "C conmon does not spin"
        assert fifo_pending(fd) > 0, "C conmon read the rest after all"
        # the garbage stream: the FIFO stops draining for good
        stuck_at = None
        for i, line in enumerate(_garbage_lines(random.Random(0x5eed), 10_000)):
            try:
                os.write(fd, line)
            except BlockingIOError:
                stuck_at = i
                break
        assert stuck_at is not None, "C conmon took all 10,000 lines"
        pending = fifo_pending(fd)
        with pytest.raises(TimeoutError):
            poll_until(lambda: fifo_pending(fd) < pending, 3, what="the FIFO to drain")
        assert pid_alive(m.pid)
    finally:
        os.close(fd)
        os.kill(m.pid, signal.SIGKILL)  # it would spin on after the container's exit


def test_ctl_garbage_then_valid_resize(testbed, monitor_bin):
    """10,000 malformed ctl (and 1,000 winsz) lines, written one by one, never stop the monitor nor
    leave it spinning; a later resize still works (pyconmon).

    [conmon] C conmon 2.1.6 fails this: a line of more than 199 bytes arriving in two pieces makes it
    spin (100% CPU, the rest of the line never read), and the garbage stream leaves it spinning and
    no longer reading the FIFO after about 130 lines.
    """
    m, client = started_with_client(testbed, monitor_bin, ["sh", "-c", wait_size(33, 77)])
    wait_ready(client)
    if is_c(monitor_bin):
        _c_conmon_spins_on_ctl(m)
        return
    rng = random.Random(0x5eed)
    lines = _garbage_lines(rng, 10_000)
    # a line of a few hundred KB, a burst of NULs, and a long partial line in two pieces
    lines += [b"7" * 300_000 + b"\n", b"\x00" * 70_000, b"\n", b"x" * 100, b"y" * 150]
    fds = {name: os.open(os.path.join(m.bundle, name), os.O_WRONLY) for name in ("ctl", "winsz")}
    try:
        for i, line in enumerate(lines):
            os.write(fds["ctl"], line)  # blocking: the monitor reads as we go
            if i % 10 == 0:
                os.write(fds["winsz"], line)
        for fd in fds.values():
            poll_until(lambda fd=fd: fifo_pending(fd) == 0, 10, what="the monitor to read everything")
        assert pid_alive(m.pid)
        cpu0 = cpu_seconds(m.pid)
        time.sleep(0.5)  # measuring idle CPU needs a span of time: nothing to poll
        assert cpu_seconds(m.pid) - cpu0 < 0.1, "the monitor spins after the garbage"
        assert container_procs(m.container_pid), "the container still runs"
        os.write(fds["ctl"], b"\n1 33 77\n")  # the first \n ends whatever partial line is pending
    finally:
        for fd in fds.values():
            os.close(fd)
    out = client.read_until_eof(20)[2]
    assert out.endswith(b"ready\r\nnow 33 77\r\n"), out[-200:]
    assert m.wait_exit_file() == 0


def test_pty_hangup_neither_ends_monitor_nor_spins(testbed, monitor_bin):
    """The container closes every tty fd for 1.5 s, then reopens /dev/console and writes again."""
    script = ("echo closing; exec 0<&- 1>&- 2>&-; sleep 1.5; "
              "exec 1>/dev/console; echo back; exit 3")
    m, client = started_with_client(testbed, monitor_bin, ["sh", "-c", script])
    client.read_until(lambda o: b"closing\r\n" in o.get(2, b""), 10)
    poll_until(lambda: not tty_fds(m.container_pid), 5, what="the container to close its tty")
    cpu0 = time.monotonic(), cpu_seconds(m.pid)
    out = client.read_until(lambda o: b"back" in o.get(2, b""), 10)
    wall, cpu = time.monotonic() - cpu0[0], cpu_seconds(m.pid) - cpu0[1]
    assert out == {2: b"closing\r\nback\r\n"}
    assert wall > 1.0, "the hangup lasted about 1.5 s"
    assert cpu < 0.2, f"monitor used {cpu:.2f} s CPU during a {wall:.1f} s pty hangup"
    assert m.wait_exit_file() == 3
    # a line may come in two reads ("closing", "\r\n": C conmon under load), i.e. a partial record first
    text = b"".join(r.content + (b"\n" if r.tag == "F" else b"") for r in m.log_records())
    assert text == b"closing\r\nback\r\n"


def test_pty_closed_until_exit(testbed, monitor_bin):
    """A process that closes its tty and exits later still ends the monitor normally."""
    m, client = started_with_client(testbed, monitor_bin,
                                    ["sh", "-c", "echo bye; exec 0<&- 1>&- 2>&-; sleep 0.5; exit 3"])
    assert client.read_until_eof(10) == {2: b"bye\r\n"}
    assert m.wait_exit_file() == 3
    m.wait(10)


def test_runtime_did_not_set_up_terminal(testbed, monitor_bin):
    fake = pidfile_runtime(os.path.join(testbed.workdir("rt"), "fake-runtime"))  # never sends a pty
    tmpdir = testbed.short_dir()
    m = testbed.run(monitor_bin, ["true"], terminal=True, start=False, extra_args=["-r", fake],
                    env_extra={"TMPDIR": tmpdir})
    try:
        m.wait(10)
        if not is_c(monitor_bin):
            assert m.sync_msg == {"data": -1, "message": "Runtime did not set up terminal"}, m.describe()
            assert m.read_sync(5) is None
            assert os.listdir(tmpdir) == [], "console socket removed"
        else:
            # C conmon 2.1.6 only logs the error and exits: the caller reads EOF, no message,
            # and it leaves its console socket $TMPDIR/conmon-term.XXXXXX behind
            assert m.sync_msg is None, m.describe()
            assert [n[:len("conmon-term.")] for n in os.listdir(tmpdir)] == ["conmon-term."], os.listdir(tmpdir)
        assert not os.path.exists(m.exit_file)
    finally:
        pid = read_pidfile(m.pidfile)
        if pid:
            os.kill(pid, signal.SIGKILL)


# --------------------------------------------------------------------------
# --exec


@pytest.fixture
def sleeper(testbed, monitor_bin):
    """A running ``sleep 60`` container (no tty) under the monitor being tested."""
    m = testbed.run(monitor_bin, ["sleep", "60"])
    assert m.container_pid, m.describe()
    return m


EXIT_CASES = [("echo out; echo err >&2; exit 0", 0), ("echo out; echo err >&2; exit 5", 5),
              ("echo out; echo err >&2; kill -9 $$", 137)]


def test_exec_exit_codes_v1(testbed, monitor_bin, sleeper):
    """Podman: pid, then (after the exit file <exit-dir>/<cid>) the exit code on the sync pipe."""
    for script, code in EXIT_CASES:
        e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", script])
        assert e.attach_msg == {"data": 0}, e.describe()
        assert e.container_pid and e.sync_msg == {"data": e.container_pid}, e.describe()
        assert read_pidfile(e.pidfile) == e.container_pid
        assert e.client.read_until_eof(10) == {2: b"out\n", 3: b"err\n"}
        assert e.exit_file == os.path.join(e.bundle, "exit", sleeper.cid)
        assert e.wait_exit_file() == code, script
        assert e.read_sync(10) == {"data": code}, script
        assert e.read_sync(10) is None
        e.wait(10)
    assert pid_alive(sleeper.container_pid)


def test_exec_exit_codes_legacy(testbed, monitor_bin, sleeper):
    """CRI-O ExecSync: no pid message, only {"exit_code": N}."""
    for script, code in EXIT_CASES:
        e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", script], style="crio")
        assert e.sync_msg == {"exit_code": code}, e.describe()
        assert e.messages == [{"exit_code": code}]
        assert {(x.stream, x.content) for x in e.log_lines()} == {("stdout", b"out"), ("stderr", b"err")}


def test_legacy_exec_with_tty(testbed, monitor_bin, sleeper):
    """CRI-O ExecSync with a tty: output logged as stdout with CR LF."""
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo out; echo err >&2; exit 3"], style="crio",
                     terminal=True)
    assert e.sync_msg == {"exit_code": 3}, e.describe()
    assert [(r.stream, r.content) for r in e.log_records()] == [("stdout", b"out\r"), ("stdout", b"err\r")]


def not_found(runtime, name="doesnotexist"):
    """The runtime's own words for a command that isn't in the container."""
    if os.path.basename(runtime) == "crun":
        return f"executable file `{name}` not found in $PATH"
    return f'exec: "{name}": executable file not found in $PATH'


def test_exec_that_fails_to_start_v1(testbed, monitor_bin, sleeper):
    e = testbed.exec(monitor_bin, sleeper, ["doesnotexist"])
    assert e.attach_msg == {"data": 0}, e.describe()
    assert e.sync_msg["data"] == -1, e.describe()
    assert not_found(testbed.runtime) in e.sync_msg["message"]  # the runtime's own stderr
    assert e.read_sync(10) is None, "nothing after the failure"
    e.wait(10)
    assert read_exit_file(e.exit_file) is None
    assert pid_alive(sleeper.container_pid)


def test_exec_that_fails_to_start_legacy(testbed, monitor_bin, sleeper):
    e = testbed.exec(monitor_bin, sleeper, ["doesnotexist"], style="crio")
    assert e.sync_msg["exit_code"] == -1, e.describe()
    # the runtime's stderr (runc's in logfmt, quotes escaped)
    assert not_found(testbed.runtime).replace('"', '\\"') in e.sync_msg["message"], e.sync_msg
    assert e.messages == [e.sync_msg]
    assert e.first_status == 1


def test_tty_runtime_errors_reach_the_sync_pipe(testbed, monitor_bin, sleeper):
    """With -t the runtime's stderr is still a pipe: runc's errors go there (there is no pty yet
    when it fails). crun's exec sends the pty first and writes its error to it (in colour):
    pyconmon takes the error from the pty. [conmon] C conmon reads only the stderr pipe, finds it
    empty and exits without a word: EOF on the sync pipe."""
    crun = os.path.basename(testbed.runtime) == "crun"
    want = not_found(testbed.runtime)
    e = testbed.exec(monitor_bin, sleeper, ["doesnotexist"], terminal=True)
    if crun and is_c(monitor_bin):
        assert e.sync_msg is None, e.describe()
    else:
        assert e.sync_msg["data"] == -1 and want in e.sync_msg["message"], e.describe()
        assert "\x1b" not in e.sync_msg["message"] and "\r" not in e.sync_msg["message"], e.sync_msg
    e = testbed.exec(monitor_bin, sleeper, ["doesnotexist"], terminal=True, style="crio")
    if crun and is_c(monitor_bin):
        assert e.sync_msg is None, e.describe()
    else:
        assert e.sync_msg["exit_code"] == -1, e.describe()
        assert want.replace('"', '\\"') in e.sync_msg["message"], e.sync_msg
    m = testbed.run(monitor_bin, ["/does/not/exist"], terminal=True, start=False)
    assert m.sync_msg["data"] == -1, m.describe()
    if crun:
        assert not_found(testbed.runtime, "/does/not/exist") in m.sync_msg["message"], m.describe()
    else:
        assert "stat /does/not/exist: no such file or directory" in m.sync_msg["message"]


@pytest.mark.parametrize("style", ["podman", "crio"])
def test_exec_timeout_kills(testbed, monitor_bin, sleeper, style):
    t0 = time.monotonic()
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo started; sleep 30 & exec sleep 31"], style=style,
                     timeout=1)
    if style == "crio":
        assert e.sync_msg == {"exit_code": -1, "message": "command timed out"}, e.describe()
    else:
        pid = e.container_pid
        assert pid and e.sync_msg == {"data": pid}, e.describe()
        e.client.read_until(lambda o: o.get(2) == b"started\n", 5)
        assert pid in container_procs(sleeper.container_pid)
        assert e.client.read_until_eof(10) == {2: b"started\n"}
        assert e.wait_exit_file() == -1
        assert e.read_sync(10) == {"data": -1, "message": "command timed out"}
        wait_pid_gone(pid, 5)  # the process was killed, not left behind
    assert time.monotonic() - t0 < 8
    # nothing but the container's own process is left in its cgroup
    poll_until(lambda: container_procs(sleeper.container_pid) == [sleeper.container_pid], 5,
               what="the timed-out exec to be gone")


def test_parallel_execs(testbed, monitor_bin, sleeper):
    """Six exec sessions at once, each with its own bundle, output and exit code."""
    def one(i):
        e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", f"echo out{i}; sleep 0.3; echo err{i} >&2; exit {i}"])
        out = e.client.read_until_eof(15)
        return out, e.wait_exit_file(15), e.read_sync(15)

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(6)))
    for i, (out, code, msg) in enumerate(results):
        assert out == {2: f"out{i}\n".encode(), 3: f"err{i}\n".encode()}
        assert (code, msg) == (i, {"data": i})


def test_detached_exec_runs_exit_command_after_exit_file(testbed, monitor_bin, sleeper):
    """``podman exec -d``: no client, byte 2 at once; the exit command finds the exit file."""
    session = new_cid()
    exit_file = os.path.join(sleeper.bundle, session, "exit", sleeper.cid)
    marker = os.path.join(testbed.workdir("mark"), "marker")
    cmd = write_script(os.path.join(testbed.workdir("cmd"), "cleanup"),
                       f'#!/bin/sh\n{{ cat {exit_file}; echo; printf "%s\\n" "$@"; }} > {marker}.tmp\n'
                       f'mv {marker}.tmp {marker}\n')
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo ignored; exit 9"], detach=True, session_id=session,
                     exit_command=[cmd, "container", "cleanup", "--exec", session, sleeper.cid])
    assert e.client is None and e.sync_msg["data"] > 0, e.describe()
    assert e.exit_file == exit_file and e.wait_exit_file() == 9
    wait_for_path(marker)
    with open(marker) as f:
        assert f.read().split("\n") == ["9", "container", "cleanup", "--exec", session, sleeper.cid, ""]
    assert e.read_sync(10) == {"data": 9}
    e.wait(10)


def test_exec_attach_waits_for_second_start_byte(testbed, monitor_bin, sleeper):
    """Podman's sequence by hand: nothing runs before byte 2, so a client connected then sees all output."""
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo first"], wait=False)
    assert e.write_start()
    e.wait_first(10)
    assert e.attach_pipe.read(10) == {"data": 0}, e.describe()
    assert os.path.exists(e.attach_path)
    with pytest.raises(TimeoutError):
        e.read_sync(0.5)  # the runtime child waits for the second byte: no pid yet
    assert read_pidfile(e.pidfile) is None
    client = e.attach()
    assert e.write_start()
    msg = e.read_sync(10)
    assert msg["data"] > 0, e.describe()
    assert client.read_until_eof(10) == {2: b"first\n"}
    assert e.wait_exit_file() == 0
    assert e.read_sync(10) == {"data": 0}


def test_exec_attach_start_messages_of_any_length(testbed, monitor_bin, sleeper):
    """The upstream suite's sequence: a byte-stream start pipe (a FIFO there) and two multi-byte
    messages. conmon reads each message with one read() before its fork and before the runtime
    starts the exec: the exec neither runs nor writes its log until the second message."""
    log = os.path.join(testbed.workdir(), "exec.log")
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo 'Hello from exec!'"], wait=False,
                     start_kind="stream", extra_args=["-l", f"k8s-file:{log}"])
    assert e.write_start(b"start conmon\n")
    e.wait_first(10)
    assert e.attach_pipe.read(10) == {"data": 0}, e.describe()
    with pytest.raises(TimeoutError):
        e.read_sync(1.0)  # a second passes: the runtime child still waits for the second message
    assert read_pidfile(e.pidfile) is None
    with open(log, "rb") as f:
        assert f.read() == b""
    client = e.attach()
    assert e.write_start(b"start attach\n")
    assert e.read_sync(10)["data"] > 0, e.describe()
    assert client.read_until_eof(10) == {2: b"Hello from exec!\n"}
    assert e.wait_exit_file() == 0
    with open(log, "rb") as f:
        assert f.read().endswith(b" stdout F Hello from exec!\n")


@pytest.mark.parametrize("sync", [True, False], ids=["sync", "detached"])
def test_exec_attach_without_attach_pipe(testbed, monitor_bin, sleeper, sync):
    """``--exec-attach`` with no ``_OCI_ATTACHPIPE``: conmon's error, after its fork (so a caller
    without ``--sync`` sees status 0 and the error from the daemon child), and nothing runs."""
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "echo ran"], wait=False, attach_pipe=False,
                     extra_args=["--sync"] if sync else [])
    assert "_OCI_ATTACHPIPE" not in e.env
    assert e.write_start()
    assert e.wait_first(10) == (1 if sync else 0)
    assert e.read_sync(10) is None  # EOF: the monitor is gone without a word on the sync pipe
    assert e.wait_stdio_eof(10)
    err = e.stderr
    assert err.startswith(b"[conmon:e]: --attach specified but _OCI_ATTACHPIPE was not"), err
    assert err.count(b"\n") == 1, err
    if not is_c(monitor_bin):
        assert err == b"[conmon:e]: --attach specified but _OCI_ATTACHPIPE was not set\n"
    assert read_pidfile(e.pidfile) is None
    assert read_exit_file(e.exit_file) is None


def test_exec_attach_first_bytes_repeatedly(testbed, monitor_bin, sleeper):
    for i in range(5):
        e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", f"echo first{i}; echo err{i} >&2"])
        assert e.client.read_until_eof(10) == {2: f"first{i}\n".encode(), 3: f"err{i}\n".encode()}
        assert e.wait_exit_file() == 0


def podman_exec_by_hand(testbed, monitor_bin, container, args, ctl_line=None, **kw):
    """run_exec's Podman sequence step by step, with the initial ``1 ROWS COLS`` before byte 2 (PODMAN 5.2)."""
    e = testbed.exec(monitor_bin, container, args, wait=False, **kw)
    assert e.write_start()
    e.wait_first(10)
    assert e.attach_pipe.read(10) == {"data": 0}, e.describe()
    if ctl_line is not None:
        write_ctl(e.bundle, ctl_line)
    e.client = e.attach()
    assert e.write_start()
    e.sync_msg = e.read_sync(10)
    assert e.sync_msg["data"] > 0, e.describe()
    e.container_pid = e.sync_msg["data"]
    return e


def test_exec_it(testbed, monitor_bin, sleeper):
    """``podman exec -it``: -t and -i, process.terminal true; in and out through the pty, all stream 2."""
    e = podman_exec_by_hand(testbed, monitor_bin, sleeper,
                            ["sh", "-c", 'read x; echo "got $x"; stty size; tty; exit 4'],
                            ctl_line="1 24 80\n", terminal=True, stdin=True)
    with open(e.exec_spec) as f:
        assert json.load(f)["terminal"] is True
    e.client.send(b"hello\n")
    out = e.client.read_until_eof(10)
    # the pty echoes the input; the size Podman wrote to ctl before the pty existed applies
    assert out == {2: b"hello\r\ngot hello\r\n24 80\r\n/dev/pts/0\r\n"}
    assert e.wait_exit_file() == 4
    assert e.read_sync(10) == {"data": 4}


def test_exec_it_pty_stays_open_after_client_eof(testbed, monitor_bin, sleeper):
    """pyconmon never closes the pty for a client's EOF, even with -i (exec -it): a later client can
    still type. [conmon] C conmon 2.1.6 closes its stdin copy of the pty master instead, so later
    input is dropped (not even echoed) while the process, which never sees EOF, waits on."""
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", 'read a; echo "a=$a"; read b; echo "b=$b"'],
                     terminal=True, stdin=True)
    e.client.send(b"one\n")
    e.client.read_until(lambda o: b"a=one\r\n" in o.get(2, b""), 10)
    e.client.shutdown_write()
    second = e.attach()
    second.send(b"two\n")
    if is_c(monitor_bin):
        with pytest.raises(TimeoutError):
            second.read_until(lambda o: b"two" in o.get(2, b""), 3)
        assert pid_alive(e.container_pid), "the exec process still waits for its second line"
        os.kill(e.container_pid, signal.SIGKILL)
        assert e.wait_exit_file() == 137
        return
    assert second.read_until_eof(10) == {2: b"two\r\nb=two\r\n"}
    assert e.wait_exit_file() == 0


def test_exec_i_pipes_stdin(testbed, monitor_bin, sleeper):
    """``podman exec -i`` (and healthchecks): stdin pipe; the client's EOF closes it."""
    e = testbed.exec(monitor_bin, sleeper, ["sh", "-c", "cat; echo done >&2; tty || exit 6"], stdin=True,
                     terminal=False)
    e.client.send(b"abc\n")
    e.client.read_until(lambda o: o.get(2) == b"abc\n", 10)
    e.client.send(b"def")
    e.client.shutdown_write()
    out = e.client.read_until_eof(10)
    assert out == {2: b"abc\ndefnot a tty\n", 3: b"done\n"}
    assert e.wait_exit_file() == 6


def test_exec_t_in_tty_container_resize(testbed, monitor_bin):
    """``podman exec -t`` in a ``-t`` container: its own pty gets the size Podman wrote to the exec
    bundle's ctl before the pty existed, and follows a later resize."""
    m = testbed.run(monitor_bin, ["sleep", "60"], terminal=True)
    assert m.container_pid, m.describe()
    # The runtime starts the process right after handing over the pty: the first size may
    # land a moment after the process started (C conmon alike), so wait for it, bounded.
    script = ('i=0; while [ "$(stty size 2>/dev/null)" != "10 20" ] && [ $i -lt 100 ]; do sleep 0.05; '
              'i=$((i+1)); done; echo "initial $(stty size)"; ' + wait_size(11, 21))
    e = podman_exec_by_hand(testbed, monitor_bin, m, ["sh", "-c", script], ctl_line="1 10 20\n")
    wait_ready(e.client)
    write_ctl(e.bundle, "1 11 21\n")
    out = e.client.read_until_eof(10)[2]
    assert out == b"initial 10 20\r\n10 20\r\nready\r\nnow 11 21\r\n"
    assert e.wait_exit_file() == 0


# --------------------------------------------------------------------------
# the runtime's command line, C conmon vs pyconmon

SHIM = """#!/bin/sh
printf '%s\\0' "$0" "$@" > "$(mktemp {log}/argv.XXXXXX)"
exec {runtime} "$@"
"""


class ArgvShim:
    """A runtime that records each argv (one file per call) and then execs the real one (runc, crun)."""

    def __init__(self, testbed):
        d = testbed.workdir("shim")
        self.log = os.path.join(d, "calls")
        os.mkdir(self.log)
        self.path = write_script(os.path.join(d, "runtime"), SHIM.format(log=self.log, runtime=testbed.runtime))

    def take(self):
        """The argvs recorded since the last call (oldest first), and forget them."""
        calls = []
        for name in os.listdir(self.log):
            p = os.path.join(self.log, name)
            with open(p, "rb") as f:
                calls.append((os.stat(p).st_mtime_ns, f.read().decode().split("\0")[:-1]))
            os.unlink(p)
        return [argv for _, argv in sorted(calls)]


def normalise(argv, replace, tmpdir):
    """argv with run-specific paths replaced by placeholders; the console socket checked and hidden."""
    out = []
    for i, word in enumerate(argv):
        if i > 0 and argv[i - 1] == "--console-socket":
            assert word.startswith(os.path.join(tmpdir, "conmon-term.")), word  # in $TMPDIR
            word = "<console-socket>"
        for old, new in replace:
            word = word.replace(old, new)
        out.append(word)
    return out


CREATE_OPTS = ["--runtime-arg=--debug", "--runtime-opt", "--preserve-fds", "--runtime-opt", "0",
               "--no-pivot", "--no-new-keyring"]


@pytest.mark.parametrize("case", ["create-tty", "create-systemd", "restore"])
def test_create_argv_matches_c_conmon(testbed, case):
    shim = ArgvShim(testbed)
    tmpdir = testbed.short_dir()
    seen = {}
    image = os.path.join(testbed.workdir("img"), "checkpoint")
    for name, monitor in MONITORS.items():
        extra = ["-r", shim.path, *CREATE_OPTS]
        if case != "create-tty":
            extra += ["-s"]  # runc fails without systemd cgroups here: only the argv matters
        if case == "restore":
            extra += ["--restore", image]  # no checkpoint there: runc fails, after the argv is recorded
        m = testbed.run(monitor, ["echo", "hi"], terminal=(case != "create-systemd"), start=(case == "create-tty"),
                        extra_args=extra, env_extra={"TMPDIR": tmpdir})
        if case == "create-tty":
            assert m.wait_exit_file() == 0, m.describe()
            assert [r.content for r in m.log_records()] == [b"hi\r"]
        else:
            assert m.sync_msg["data"] == -1, m.describe()
        calls = shim.take()
        assert len(calls) == 1, calls
        seen[name] = normalise(calls[0], [(m.workdir, "<W>"), (m.cid, "<CID>"), (shim.path, "<RT>")], tmpdir)
    assert seen["pyconmon"] == seen["conmon"]


@pytest.mark.parametrize("tty", [False, True], ids=["no-tty", "tty"])
def test_exec_argv_matches_c_conmon(testbed, tty):
    container = testbed.run(MONITORS["conmon"], ["sleep", "60"], terminal=tty)
    assert container.container_pid, container.describe()
    shim = ArgvShim(testbed)
    tmpdir = testbed.short_dir()
    seen = {}
    for name, monitor in MONITORS.items():
        e = testbed.exec(monitor, container, ["sh", "-c", "tty; exit 2"], terminal=tty, stdin=True,
                         extra_args=["-r", shim.path, "--runtime-arg=--debug", "-s", "--no-pivot",
                                     "--runtime-opt", "--preserve-fds", "--runtime-opt", "0"],
                         env_extra={"TMPDIR": tmpdir})
        assert e.container_pid, e.describe()
        out = e.client.read_until_eof(10)
        if tty:
            assert set(out) == {2} and re.fullmatch(rb"/dev/pts/\d+\r\n", out[2]), out
        else:
            assert out == {2: b"not a tty\n"}
        assert e.wait_exit_file() == 2
        calls = shim.take()
        assert len(calls) == 1, calls
        replace = [(e.exec_spec, "<SPEC>"), (e.bundle, "<EB>"), (container.cid, "<CID>"), (shim.path, "<RT>")]
        seen[name] = normalise(calls[0], replace, tmpdir)
    assert seen["pyconmon"] == seen["conmon"]
    assert ("--tty" in seen["pyconmon"]) == tty
    assert "--systemd-cgroup" not in seen["pyconmon"] and "--no-pivot" not in seen["pyconmon"]  # create only
