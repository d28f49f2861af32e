"""The core monitor with real runc and crun on busybox bundles (issue 2, "What it must show").

Each test starts a monitor the way Podman does (``testbed.run``, style
``podman``) unless it says otherwise, and checks what a caller can observe:
exit files, sync messages, the k8s-file log, attach packets, pid files and
the monitor's own stdio. Tests that take ``monitor_bin`` run against C conmon
(/usr/bin/conmon) too, where it behaves the same; the rest are pyconmon's
own (better-than-conmon behaviour, or texts C conmon words differently).
"""

import os
import signal
import subprocess
import threading
import time

import pytest

from support import C_CONMON, LAUNCHER
from support.bundle import no_pid_ns
from support.harness import (
    Deadline,
    container_state,
    join_lines,
    parse_k8s_timestamp,
    pid_alive,
    poll_until,
    proc_cmdline,
    read_exit_file,
    read_k8s_log,
    runtime_kill,
    wait_pid_gone,
    write_script,
)
from support.validation import ROWS as VALIDATION_ROWS
from support.validation import c_line, pyconmon_line

# --------------------------------------------------------------------------
# helpers


def log_has(m, needle, stream="stdout"):
    return any(x.stream == stream and needle in x.content for x in m.log_lines())


def drain(client, timeout=30.0):
    """Read ``client`` until EOF; {stream id: bytes}. (Joins once: AttachClient.output() is
    quadratic in the number of packets, too slow for megabytes.)"""
    dl = Deadline(timeout)
    while client.recv(dl.left()) is not None:
        pass
    out = {}
    for stream in sorted({s for s, _ in client.packets}):
        out[stream] = b"".join(d for s, d in client.packets if s == stream)
    return out


def read_all(clients, timeout=30.0):
    """Read every client until EOF at the same time (so none stalls C conmon's blocking writes)."""
    errors = []
    outs = {}

    def run(c):
        try:
            outs[id(c)] = drain(c, timeout)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout + 5)
    assert not errors, errors
    return [outs[id(c)] for c in clients]


def check_records(recs):
    """Invariants of every k8s-file log: valid timestamps, tags, record size."""
    for r in recs:
        parse_k8s_timestamp(r.timestamp)
        assert r.stream in ("stdout", "stderr")
        assert r.tag in ("P", "F")
        assert len(r.content) <= 8192, (r.stream, r.tag, len(r.content))


def stderr_of(m):
    """The first process's stderr, once every holder of the pipe let go (the reader is a thread)."""
    assert m.wait_stdio_eof(10), "the caller's stdout/stderr pipes are still held open"
    return m.stderr


# --------------------------------------------------------------------------
# exit codes


EXIT_CASES = {
    # name: (command, share host pid ns, runtime kill signal or None, expected code)
    "exit0": (["true"], False, None, 0),
    "exit3": (["sh", "-c", "exit 3"], False, None, 3),
    "self-sigkill": (["sh", "-c", "kill -KILL $$; exit 1"], True, None, 137),
    "self-sigterm": (["sh", "-c", "kill -TERM $$; exit 1"], True, None, 143),
    "runtime-kill-KILL": (["sleep", "100"], False, "KILL", 137),
    "runtime-kill-TERM": (["sleep", "100"], True, "TERM", 143),
}


@pytest.mark.parametrize("case", list(EXIT_CASES))
def test_exit_codes(testbed, monitor_bin, case):
    args, host_pid_ns, kill, code = EXIT_CASES[case]
    kw = {"bundle_kw": {"edit": no_pid_ns}} if host_pid_ns else {}
    m = testbed.run(monitor_bin, args, **kw)
    assert m.sync_msg == {"data": m.container_pid}, m.describe()
    if kill:
        runtime_kill(m, kill, check=True)
    assert m.wait_exit_file() == code
    with open(m.exit_file, "rb") as f:
        assert f.read() == str(code).encode()  # no newline
    m.wait(10)
    assert not pid_alive(m.pid)
    assert not pid_alive(m.container_pid)


# --------------------------------------------------------------------------
# signals sent to the monitor reach the container


TRAPS = ("trap 'echo got-TERM; exit 42' TERM; trap 'echo got-INT; exit 43' INT; "
         "trap 'echo got-QUIT; exit 44' QUIT; echo ready; while :; do usleep 20000; done")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 42), (signal.SIGINT, 43), (signal.SIGQUIT, 44)],
                         ids=["TERM", "INT", "QUIT"])
def test_signal_forwarding(testbed, monitor_bin, sig, code):
    m = testbed.run(monitor_bin, ["sh", "-c", TRAPS])
    poll_until(lambda: log_has(m, b"ready"), what="container ready")
    assert pid_alive(m.pid)
    os.kill(m.pid, sig)
    assert m.wait_exit_file() == code, m.describe()
    assert log_has(m, f"got-{sig.name[3:]}".encode())
    m.wait(10)


def test_signal_forwarding_untrapped_term(testbed):
    """A container that doesn't trap SIGTERM (and isn't a namespace init) dies of it: 143."""
    m = testbed.run(LAUNCHER, ["sleep", "100"], bundle_kw={"edit": no_pid_ns})
    os.kill(m.pid, signal.SIGTERM)
    assert m.wait_exit_file() == 143
    m.wait(10)


# --------------------------------------------------------------------------
# --timeout


@pytest.mark.parametrize("form", ["podman", "equals", "space", "short"])
def test_timeout(testbed, monitor_bin, form):
    kw = {}
    if form == "podman":
        kw["timeout"] = 1  # Podman's own spelling: --timeout=1
    else:
        kw["extra_args"] = {"equals": ["--timeout=1"], "space": ["--timeout", "1"], "short": ["-T", "1"]}[form]
    t0 = time.monotonic()
    m = testbed.run(monitor_bin, ["sleep", "100"], **kw)
    assert m.wait_exit_file(15) == -1, m.describe()
    elapsed = time.monotonic() - t0
    # C conmon's g_timeout_add_seconds() fires on GLib's whole-second grid (see the next test).
    assert (0.95 if monitor_bin != C_CONMON else 0.0) <= elapsed < 10, elapsed
    with open(m.exit_file, "rb") as f:
        assert f.read() == b"-1"
    # (C conmon writes the exit file right after kill(), before the process is gone: tested below)
    poll_until(lambda: not pid_alive(m.container_pid), timeout=5, what="container killed")
    state = m.state()
    assert state is None or state["status"] == "stopped", state
    m.wait(10)


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_timeout_counts_from_the_pid_report(testbed, monitor_bin):
    """``--timeout 1`` started at ten phases of the wall-clock second: the exit file (its mtime)
    comes 1 s after the monitor reported the container's pid (0.05 s allowed for reading the
    report, since the timer starts just before it is sent).

    [conmon] C conmon 2.1.6 arms the timer right after the pid report, but as a GLib whole-second
    timer, whose deadline is moved to a second boundary (up to 0.25 s earlier or 0.75 s later):
    at some phase it fires early."""
    after = []
    for phase in (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        now = time.time()
        time.sleep((phase - now % 1.0) % 1.0)  # spawn at this phase of the second (nothing to poll)
        m = testbed.run(monitor_bin, ["sleep", "100"], timeout=1, start=False)
        reported = time.time()  # the pid is on the sync pipe
        assert m.container_pid, m.describe()
        m.start_container()
        assert m.wait_exit_file(15) == -1, m.describe()
        after.append(os.stat(m.exit_file).st_mtime_ns / 1e9 - reported)
    if monitor_bin != C_CONMON:  # pyconmon: the checkout, an install, server mode
        assert all(0.95 <= t < 1.5 for t in after), after
    else:
        assert min(after) < 0.9, after


def test_timeout_exit_file_only_after_the_process_is_gone(testbed, monitor_bin):
    """``--timeout 1`` on a frozen container (``runc pause``: the SIGKILL stays pending until it
    thaws).  pyconmon writes the exit file once the process is reaped: none while it is frozen,
    ``-1`` after ``runc resume``.  [conmon] C conmon 2.1.6 writes it right after kill(), while the
    process still exists."""
    m = testbed.run(monitor_bin, ["sleep", "100"], timeout=1)
    assert m.container_pid, m.describe()
    m.runtime_cmd("pause", m.cid, check=True)
    try:
        poll_until(lambda: pending_signals(m.container_pid) & (1 << (signal.SIGKILL - 1)), 10,
                   what="the monitor's SIGKILL, pending in the frozen process")
        if monitor_bin != C_CONMON:
            with pytest.raises(TimeoutError):
                m.wait_exit_file(2)
        else:
            assert m.wait_exit_file(5) == -1
            assert os.path.exists(f"/proc/{m.container_pid}")  # frozen, not reaped
    finally:
        m.runtime_cmd("resume", m.cid)
    assert m.wait_exit_file(10) == -1
    poll_until(lambda: not pid_alive(m.container_pid), 5, what="container gone")


def pending_signals(pid):
    """Process-wide pending signals of ``pid`` (ShdPnd in /proc/PID/status) as a bit mask."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("ShdPnd:"):
                return int(line.split()[1], 16)
    raise AssertionError(f"no ShdPnd for {pid}")


# --------------------------------------------------------------------------
# exit command


EXIT_ARGS = ["plain", "with space", "$HOME", "*", "a;b|c", "--dash", "x'y\"z"]


@pytest.mark.parametrize("delay", [0, 1])
def test_exit_command(testbed, monitor_bin, delay):
    workdir = testbed.workdir()
    out = os.path.join(workdir, "exitcmd")
    os.mkdir(out)
    exit_file_path = os.path.join(workdir, "exits")  # + cid, below
    script = write_script(os.path.join(out, "cmd"), f"""#!/bin/sh
# argv, NUL-separated; the time; whether the exit file was there already
now=$(date +%s.%N)
for a in "$0" "$@"; do printf '%s\\0' "$a"; done > {out}/args.tmp
exec >{out}/fds  # a permanent redirection: no saved copy of the old stdout shows up below
ls -l /proc/$$/fd/
[ -e "{exit_file_path}/$EXPECT_CID" ] && echo yes > {out}/seen
echo "$now" > {out}/when.tmp
mv {out}/args.tmp {out}/args
mv {out}/when.tmp {out}/when
""")
    cid = testbed.cid()
    extra = ["--exit-delay", str(delay)] if delay else []
    r, w = os.pipe()  # an inherited fd (Podman passes port reservations): must not reach the command
    try:
        m = testbed.run(monitor_bin, ["sh", "-c", "exit 5"], workdir=workdir, cid=cid, extra_fds=[w],
                        exit_command=[script, *EXIT_ARGS], extra_args=extra, env_extra={"EXPECT_CID": cid})
    finally:
        os.close(r)
        os.close(w)
    assert m.wait_exit_file() == 5
    exit_mtime = os.stat(m.exit_file).st_mtime
    poll_until(lambda: os.path.exists(os.path.join(out, "when")), timeout=delay + 10, what="exit command")
    with open(os.path.join(out, "args"), "rb") as f:
        argv = f.read().split(b"\0")[:-1]
    assert [a.decode() for a in argv] == [script, *EXIT_ARGS]
    assert os.path.exists(os.path.join(out, "seen")), "exit command ran before the exit file existed"
    with open(os.path.join(out, "fds")) as f:
        fds = dict(line.rstrip("\n").split()[-3::2] for line in f if " -> " in line)
    # only stdio (and the shell's own handle on its script) reach the exit command
    leaked = {fd: target for fd, target in fds.items() if int(fd) > 2 and target != script}
    assert not leaked, fds
    with open(os.path.join(out, "when")) as f:
        ran_at = float(f.read())
    assert ran_at >= exit_mtime + delay - 0.05, (ran_at - exit_mtime, delay)
    assert ran_at - exit_mtime < delay + 5
    m.wait(10)


def test_exit_command_status_is_monitor_status(testbed):
    """--sync: the monitor exits with the exit command's status when it is non-zero (CONTRACT 2.18)."""
    script = write_script(os.path.join(testbed.workdir(), "fail"), "#!/bin/sh\nexit 7\n")
    m = testbed.run(LAUNCHER, ["true"], exit_command=[script], extra_args=["--sync"], wait=False)
    m.container_pid = m.read_sync()["data"]  # the first process is the monitor: it stays
    m.start_container()
    assert m.wait_exit_file() == 0
    assert m.wait_first(10) == 7


# --------------------------------------------------------------------------
# the runtime: missing, not executable, failing


def _nothing_started(m):
    assert m.sync.read(5) is None, "a sync message from a monitor that should not have started"
    assert not os.path.exists(m.conmon_pidfile)
    assert read_exit_file(m.exit_file) is None
    assert m.state() is None


@pytest.mark.one_runtime
@pytest.mark.parametrize("kind", ["missing", "not-executable"])
def test_runtime_invalid(testbed, kind):
    wd = testbed.workdir()
    rt = os.path.join(wd, "rt")
    if kind == "not-executable":
        write_script(rt, "#!/bin/sh\nexit 0\n")
        os.chmod(rt, 0o644)
    m = testbed.run(LAUNCHER, ["true"], start=False, read_sync=False, extra_args=["-r", rt])
    assert m.first_status == 1
    reason = "No such file or directory" if kind == "missing" else "Permission denied"
    assert stderr_of(m) == f"[conmon:e]: Runtime path {rt} is not valid: {reason}\n".encode()
    _nothing_started(m)


@pytest.mark.one_runtime
def test_runtime_directory_passes_validation(testbed, monitor_bin):
    """conmon checks only access(X_OK), which a directory passes: the run fails, not the validation."""
    rt = testbed.workdir()
    m = testbed.run(monitor_bin, ["true"], start=False, read_sync=False, extra_args=["-r", rt])
    assert m.first_status == 0, m.describe()  # forked as for any valid command line
    msg = m.sync.read(10)
    if monitor_bin != C_CONMON:
        assert msg is not None and msg["data"] == -1 and f"Failed to exec {rt}" in msg["message"], msg
    else:
        assert msg is None  # C conmon's runtime child exits 127 silently: the caller sees EOF
    m.wait(10)
    assert read_exit_file(m.exit_file) is None
    assert m.state() is None


FAILING_RUNTIME = """#!/bin/sh
echo "fake runtime: it broke \\"badly\\"" >&2
echo "second line" >&2
exit 1
"""


@pytest.mark.one_runtime
def test_runtime_fails(testbed, monitor_bin):
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FAILING_RUNTIME)
    m = testbed.run(monitor_bin, ["true"], start=False, extra_args=["-r", rt])
    assert m.first_status == 0  # the first process exits 0 after forking
    assert m.sync_msg == {"data": -1, "message": 'fake runtime: it broke "badly"\nsecond line\n'}, m.describe()
    assert m.sync.read(5) is None  # and nothing else
    m.wait(10)
    assert not pid_alive(m.pid)
    assert read_exit_file(m.exit_file) is None
    assert not os.listdir(m.exit_dir)


FLOODING_RUNTIME = "#!/bin/sh\nhead -c 10485760 /dev/zero | tr '\\0' e >&2\necho final >&2\nexit 1\n"


@pytest.mark.one_runtime
@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "tty"])
def test_runtime_fails_with_10_mib_of_stderr(testbed, terminal):
    """A runtime that writes 10 MiB to stderr (more than the 1 MiB pipe, or the 64 KiB one with -t)
    and fails is reported with its first 8 KiB: the monitor drains the pipe while it waits."""
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FLOODING_RUNTIME)
    m = testbed.run(LAUNCHER, ["true"], start=False, terminal=terminal, extra_args=["-r", rt], deadline=30)
    assert m.first_status == 0
    assert m.sync_msg == {"data": -1, "message": "e" * 8192}, m.describe()  # the first 8 KiB
    assert m.sync.read(5) is None
    m.wait(10)
    assert not os.listdir(m.exit_dir)


@pytest.mark.one_runtime
@pytest.mark.parametrize("terminal", [False, True], ids=["pipes", "tty"])
def test_runtime_fails_with_10_mib_of_stderr_conmon(testbed, terminal):
    """[conmon] C conmon 2.1.6 reads the stderr pipe only after the runtime has exited, and the
    runtime never exits while the pipe is full: nothing on the sync pipe, both stay blocked."""
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FLOODING_RUNTIME)
    m = testbed.run(C_CONMON, ["true"], start=False, terminal=terminal, extra_args=["-r", rt], read_sync=False)
    assert m.first_status == 0
    with pytest.raises(TimeoutError):
        m.read_sync(5)  # pyconmon answers within a few seconds here (the test above)
    assert pid_alive(m.pid), "C conmon is expected to hang, not exit"
    with open(f"/proc/{m.pid}/task/{m.pid}/children") as f:
        children = [int(p) for p in f.read().split()]
    assert any(rt.encode() in proc_cmdline(p) for p in children), "the runtime is expected not to have exited"
    m.close()


@pytest.mark.one_runtime
def test_runtime_fails_crio_legacy_key(testbed, monitor_bin):
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FAILING_RUNTIME)
    m = testbed.run(monitor_bin, ["true"], style="crio", start=False, extra_args=["-r", rt])
    assert m.sync_msg == {"pid": -1, "message": 'fake runtime: it broke "badly"\nsecond line\n'}, m.describe()
    m.wait(10)
    assert not os.listdir(m.exit_dir)
    assert not os.path.exists(os.path.join(m.persist_dir, "exit"))


@pytest.mark.one_runtime
def test_runtime_fails_sync_mode_status(testbed):
    """With --sync the monitor is the caller's child: it exits 1 after reporting -1."""
    rt = write_script(os.path.join(testbed.workdir(), "rt"), FAILING_RUNTIME)
    m = testbed.run(LAUNCHER, ["true"], start=False, extra_args=["-r", rt, "--sync"])
    assert m.sync_msg["data"] == -1
    assert m.first_status == 1


# --------------------------------------------------------------------------
# validation errors: the whole table in C conmon's order, both monitors


def _refuse(monitor, argv_of, wd):
    """Run a refused command line in ``wd``: (status, stdout, stderr, files it created)."""
    argv = argv_of(str(wd))
    before = set(os.listdir(wd))
    r = subprocess.run([monitor, *argv], check=False, capture_output=True, timeout=30, cwd=wd,
                       stdin=subprocess.DEVNULL, env={"PATH": os.environ["PATH"]})
    return r.returncode, r.stdout, r.stderr, set(os.listdir(wd)) - before


@pytest.mark.parametrize("row", VALIDATION_ROWS, ids=lambda r: r.id)
def test_validation_in_c_conmons_order(tmp_path, row):
    """Each row breaks one check and every later one it can (tests/support/validation.py): the first
    error must be C conmon's.  Rows C conmon 2.1.6 has run against it too: the same status, its
    line (its own prefix and strerror form), and the same files left behind (conmon opens the
    k8s-file log before its last checks)."""
    wd = tmp_path / "pyconmon"
    wd.mkdir()
    status, out, err, created = _refuse(LAUNCHER, row.argv, wd)
    assert status == 1, (out, err)
    assert out == b""
    want = pyconmon_line(row, wd)
    if row.py_prefix:
        assert err.decode().startswith(want) and err.count(b"\n") == 1, err
    else:
        assert err.decode() == want + "\n"
    if not row.in_216:
        return
    cwd = tmp_path / "conmon"
    cwd.mkdir()
    c_status, c_out, c_err, c_created = _refuse(C_CONMON, row.argv, cwd)
    assert c_status == 1, (c_out, c_err)
    want_c = (c_line(row, cwd) + "\n").encode()
    if want_c.startswith(b"conmon: option parsing failed"):
        assert (c_out, c_err) == (want_c, b"")  # g_print: C conmon's option errors go to stdout
    else:
        assert (c_out, c_err) == (b"", want_c)
    assert created == c_created


@pytest.mark.parametrize("opt", ["--seccomp-notify-socket", "--seccomp-notify-plugins"])
def test_seccomp_notify_options_parsed_by_c_conmon_216(tmp_path, opt):
    """[conmon] 2.1.6 still parses them (it goes on to the next check); 2.2 no longer has them, and
    pyconmon refuses them as unknown options (the table above)."""
    status, out, err, _ = _refuse(C_CONMON, lambda t: [opt, "x"], tmp_path)
    assert (status, out, err) == (1, b"", b"conmon: Container ID not provided. Use --cid\n")
    status, out, err, _ = _refuse(LAUNCHER, lambda t: [opt, "x"], tmp_path)
    assert (status, out, err) == (1, b"", f"conmon: option parsing failed: Unknown option {opt}\n".encode())


@pytest.mark.one_runtime
@pytest.mark.parametrize("var", ["_OCI_SYNCPIPE", "_OCI_STARTPIPE"])
def test_bad_fd_in_environment(testbed, var):
    """A pipe fd variable that isn't a number is fatal before anything starts (CONTRACT 2.4)."""
    wd = testbed.workdir()
    cid = testbed.cid()
    bundle = testbed.bundle(["true"])
    env = {"PATH": os.environ["PATH"], var: "three"}
    r = subprocess.run([LAUNCHER, "-c", cid, "-u", cid, "-r", testbed.runtime, "-b", bundle, "-l", f"{wd}/log",
                        "--exit-dir", wd, "-P", f"{wd}/conmon.pid"], env=env, cwd=wd, capture_output=True,
                       timeout=30, check=False)
    assert r.returncode == 1, r
    assert r.stderr.startswith(b"[conmon:e]: "), r.stderr
    assert container_state(cid, runtime=testbed.runtime) is None
    assert not os.path.exists(f"{wd}/conmon.pid")


# --------------------------------------------------------------------------
# pid files


def test_pidfiles(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sleep", "100"])
    with open(m.conmon_pidfile, "rb") as f:
        raw = f.read()
    assert raw.isdigit(), raw  # bare digits, no newline
    assert int(raw) == m.pid != m.first_pid
    assert pid_alive(m.pid)
    with open(f"/proc/{m.pid}/cmdline", "rb") as f:
        assert m.cid.encode() in f.read().split(b"\0")
    with open(m.pidfile, "rb") as f:
        assert int(f.read()) == m.container_pid
    assert pid_alive(m.container_pid)
    with open(f"/proc/{m.container_pid}/status") as f:
        ppid = int(next(x for x in f if x.startswith("PPid:")).split()[1])
    assert ppid == m.pid  # the monitor (a subreaper) is the container's parent
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137
    wait_pid_gone(m.pid, 10)
    assert not pid_alive(m.pid)


# --------------------------------------------------------------------------
# log drivers: passthrough, none


def test_passthrough(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo out; echo err >&2; echo more"], log_driver="passthrough",
                    start=False)
    assert m.container_pid, m.describe()
    names = set(os.listdir(m.bundle))
    assert not names & {"attach", "ctl", "winsz"}, names
    m.start_container()
    assert m.wait_exit_file() == 0
    m.wait(10)
    assert m.wait_stdio_eof(10)
    assert m.stdout == b"out\nmore\n"
    assert m.stderr == b"err\n"
    assert not os.path.exists(m.log_path)


@pytest.mark.parametrize("stdin", [False, True], ids=["no-i", "i"])
def test_passthrough_stdin(testbed, monitor_bin, stdin):
    """The container reads the caller's own stdin (a pipe), with or without -i."""
    r, w = os.pipe()
    try:
        m = testbed.run(monitor_bin, ["sh", "-c", "cat; echo done"], log_driver="passthrough", first_stdin=r,
                        stdin=stdin)
    finally:
        os.close(r)
    os.write(w, b"piped input\n")
    os.close(w)
    assert m.wait_exit_file() == 0
    m.wait(10)
    assert m.wait_stdio_eof(10)
    assert m.stdout == b"piped input\ndone\n"


@pytest.mark.one_runtime
@pytest.mark.parametrize("fd", [0, 1, 2])
def test_passthrough_refuses_tty(testbed, fd):
    """pyconmon only: a tty as the monitor's stdio would be handed to the container (TIOCSTI)."""
    master, slave = os.openpty()
    try:
        where = {0: "first_stdin", 1: "first_stdout", 2: "first_stderr"}[fd]
        m = testbed.run(LAUNCHER, ["true"], log_driver="passthrough", start=False, read_sync=False,
                        **{where: slave})
        assert m.first_status == 1
        if fd != 2:
            err = stderr_of(m)
            assert err.startswith(b"[conmon:e]: ") and b"passthrough" in err, err
        else:
            os.set_blocking(master, False)
            assert b"passthrough" in os.read(master, 4096)
        assert m.sync.read(5) is None
        assert m.state() is None
    finally:
        os.close(slave)
        os.close(master)


def test_none_driver(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo hello; echo oops >&2"], log_driver="none", start=False)
    assert m.container_pid, m.describe()
    client = m.attach()
    m.start_container()
    assert client.read_until_eof(10) == {2: b"hello\n", 3: b"oops\n"}
    assert m.wait_exit_file() == 0
    assert not os.path.exists(m.log_path)
    assert not [n for n in os.listdir(m.bundle) if n.endswith(".log")]


def test_several_drivers(testbed):
    """k8s-file twice plus none: both files get the same records."""
    wd = testbed.workdir()
    a, b = os.path.join(wd, "a.log"), os.path.join(wd, "b.log")
    m = testbed.run(LAUNCHER, ["sh", "-c", "echo one; echo two >&2"], workdir=wd,
                    log_driver=[f"k8s-file:{a}", b, "none"])
    assert m.wait_exit_file() == 0
    ra, rb = read_k8s_log(a), read_k8s_log(b)
    assert sorted((r.stream, r.content) for r in ra) == [("stderr", b"two"), ("stdout", b"one")]
    assert [(r.stream, r.tag, r.content) for r in ra] == [(r.stream, r.tag, r.content) for r in rb]


# --------------------------------------------------------------------------
# stdin


def test_stdin_pipe(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["cat"], stdin=True, start=False)
    client = m.attach()
    m.start_container()
    client.send(b"hello\n")
    client.send(b"world\n")
    client.shutdown_write()  # stdin EOF: cat ends
    assert client.read_until_eof(10) == {2: b"hello\nworld\n"}
    assert m.wait_exit_file() == 0
    assert [(x.stream, x.content) for x in m.log_lines()] == [("stdout", b"hello"), ("stdout", b"world")]


def test_leave_stdin_open(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["cat"], stdin=True, start=False, extra_args=["--leave-stdin-open"])
    c1 = m.attach()
    m.start_container()
    c1.send(b"one\n")
    c1.read_until(lambda o: o.get(2, b"").endswith(b"one\n"))
    c1.shutdown_write()
    c1.close()
    # stdin is still open: a second client's input still reaches cat
    c2 = m.attach()
    c2.send(b"two\n")
    assert c2.read_until(lambda o: b"two\n" in o.get(2, b"")) == {2: b"two\n"}
    assert read_exit_file(m.exit_file) is None
    assert m.state()["status"] == "running"
    runtime_kill(m, "KILL", check=True)
    assert m.wait_exit_file() == 137
    assert [x.content for x in m.log_lines()] == [b"one", b"two"]


def test_stdin_without_attach_client_gets_eof_at_client_close(testbed):
    """Without --leave-stdin-open, closing the client completely (not just SHUT_WR) closes stdin too."""
    m = testbed.run(LAUNCHER, ["sh", "-c", "cat; echo done"], stdin=True, start=False)
    c = m.attach()
    m.start_container()
    c.send(b"x\n")
    c.read_until(lambda o: b"x\n" in o.get(2, b""))
    c.close()
    assert m.wait_exit_file() == 0
    assert [x.content for x in m.log_lines()] == [b"x", b"done"]


# --------------------------------------------------------------------------
# the attach socket


def test_two_clients_every_byte_in_order(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sh", "-c", "seq 1 20000; echo to-stderr >&2; seq 20001 20100"], start=False)
    c1, c2 = m.attach(), m.attach()
    m.start_container()
    o1, o2 = read_all([c1, c2])
    expected = "".join(f"{i}\n" for i in range(1, 20001)).encode() + "".join(
        f"{i}\n" for i in range(20001, 20101)).encode()
    assert o1 == o2 == {2: expected, 3: b"to-stderr\n"}
    assert c1.max_packet <= 8193 and c2.max_packet <= 8193
    assert m.wait_exit_file() == 0


def attach_retry(m):
    """Connect a client; while the listen backlog (10) is full, connect() says EAGAIN: retry."""
    def connect():
        try:
            return m.attach()
        except BlockingIOError:
            return None
    return poll_until(connect, what="a free slot in the attach backlog")


def test_many_clients(testbed, monitor_bin):
    """Any number of clients (more than the listen backlog), each gets the whole output."""
    m = testbed.run(monitor_bin, ["seq", "1", "5000"], start=False)
    clients = [attach_retry(m) for _ in range(25)]
    m.start_container()
    expected = {2: "".join(f"{i}\n" for i in range(1, 5001)).encode()}
    assert all(out == expected for out in read_all(clients))
    assert m.wait_exit_file() == 0


def test_stdin_flood_through_a_slow_container(testbed, monitor_bin):
    """2 MB of input for a container that reads late and echoes everything: all of it comes back.

    C conmon 2.1.6 passes this too: the deadlock the README once claimed for it (stdin written
    blocking while stdout is full) was not observed here, with 2 MB or 20 MB, a 0.3 s or 2 s delay."""
    m = testbed.run(monitor_bin, ["sh", "-c", "usleep 300000; cat"], stdin=True, start=False)
    c = m.attach()
    m.start_container()
    data = b"".join(b"%07d\n" % i for i in range(250_000))
    done = []
    t = threading.Thread(target=lambda: done.append(drain(c, 60)))
    t.start()
    for i in range(0, len(data), 32768):  # CRI-O's packet size
        c.send(data[i:i + 32768])
    c.shutdown_write()
    t.join(65)
    assert done and done[0].get(2, b"") == data
    assert m.wait_exit_file(30) == 0
    lines = m.log_lines()
    assert len(lines) == 250_000 and lines[-1].content == b"0249999"


@pytest.mark.one_runtime  # the monitor's own work after the start
def test_stuck_client_does_not_stall(testbed):
    """pyconmon only: C conmon blocks on a client that stops reading (CONTRACT 4).

    One client connects and never reads while the container writes 20 MB
    (in 100 kB bursts, so that a reading client can keep up on 2 cores);
    the container still finishes, the log is complete, the reading client
    gets everything in order and the stuck one is dropped (EOF after a
    bounded prefix)."""
    line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcdefghijklmnopqrstuvwxyz!\n"
    assert len(line) == 100
    bursts, per_burst = 200, 1000
    cmd = (f"i=0; while [ $i -lt {bursts} ]; do yes '{line[:-1].decode()}' | head -n {per_burst}; "
           "usleep 5000; i=$((i+1)); done")
    m = testbed.run(LAUNCHER, ["sh", "-c", cmd], start=False)
    stuck = m.attach()
    reader = m.attach()
    done = []
    t = threading.Thread(target=lambda: done.append(drain(reader, 60)))
    t.start()
    m.start_container()
    assert m.wait_exit_file(60) == 0
    t.join(65)
    assert done, "the reading client got no EOF"
    expected = line * bursts * per_burst
    got = done[0].get(2, b"")
    assert len(got) == len(expected) and got == expected, len(got)
    assert reader.max_packet <= 8193
    lines = m.log_lines()
    assert len(lines) == bursts * per_burst and all(x.content == line[:-1] and x.complete for x in lines)
    check_records(m.log_records())
    stuck_got = drain(stuck, 10).get(2, b"")
    assert len(stuck_got) < len(expected) // 2, "the stuck client was not dropped"
    assert expected.startswith(stuck_got)
    m.wait(10)


# --------------------------------------------------------------------------
# what gets logged: long lines, partial lines, binary output, floods


def test_long_lines(testbed, monitor_bin):
    cmd = "head -c 20000 /dev/zero | tr '\\0' x; echo; echo short; head -c 8192 /dev/zero | tr '\\0' y; echo"
    m = testbed.run(monitor_bin, ["sh", "-c", cmd], start=False)
    c = m.attach()
    m.start_container()
    out = c.read_until_eof(10)
    assert out == {2: b"x" * 20000 + b"\nshort\n" + b"y" * 8192 + b"\n"}
    assert c.max_packet <= 8193
    assert m.wait_exit_file() == 0
    recs = m.log_records()
    check_records(recs)
    lines = join_lines(recs)
    assert [(x.content, x.complete) for x in lines] == [(b"x" * 20000, True), (b"short", True), (b"y" * 8192, True)]
    first_f = next(i for i, r in enumerate(recs) if r.tag == "F")
    xs = recs[:first_f + 1]  # the 20000-byte line: P pieces, then F (maybe empty: echo writes the \n)
    assert len(xs) >= 3 and [r.tag for r in xs] == ["P"] * (len(xs) - 1) + ["F"]


def test_no_trailing_newline(testbed, monitor_bin):
    m = testbed.run(monitor_bin, ["sh", "-c", "echo one; printf two"])
    assert m.wait_exit_file() == 0
    recs = m.log_records()
    check_records(recs)
    assert [(r.stream, r.tag, r.content) for r in recs] == [("stdout", "F", b"one"), ("stdout", "P", b"two")]
    with open(m.log_path, "rb") as f:
        assert f.read().endswith(b" stdout P two\n")


def test_binary_output(testbed, monitor_bin):
    data = b"a\0b\xff\xfe\xc3(c\n\0\n\x1b[31mred\x7f\n"
    printf = "".join(f"\\{c:03o}" for c in data)
    m = testbed.run(monitor_bin, ["sh", "-c", f"printf '{printf}'; printf '{printf}' >&2"], start=False)
    c = m.attach()
    m.start_container()
    assert c.read_until_eof(10) == {2: data, 3: data}
    assert m.wait_exit_file() == 0
    for stream in ("stdout", "stderr"):
        got = b"".join(x.content + b"\n" for x in m.log_lines() if x.stream == stream)
        assert got == data


@pytest.mark.parametrize("how", ["seq-as-init", "shell-then-exit"])
def test_hundred_thousand_lines(testbed, monitor_bin, how):
    n = 100_000
    cmd = ["seq", "1", str(n)] if how == "seq-as-init" else ["sh", "-c", f"seq 1 {n}; exit 0"]
    m = testbed.run(monitor_bin, cmd)
    assert m.wait_exit_file(60) == 0
    recs = m.log_records()
    check_records(recs)
    lines = join_lines(recs)
    assert all(x.stream == "stdout" and x.complete for x in lines)
    got = [x.content for x in lines]
    assert len(got) == n
    assert got == [str(i).encode() for i in range(1, n + 1)]


def test_leftover_process_holding_the_pipes(testbed, monitor_bin):
    """A background process (no pid namespace, so it outlives the container's main process) keeps
    the output pipes open: the monitor still finishes when the main process exits."""
    m = testbed.run(monitor_bin, ["sh", "-c", "(sleep 100; echo late) & echo main-done"],
                    bundle_kw={"edit": no_pid_ns})
    assert m.wait_exit_file() == 0
    m.wait(10)
    assert [x.content for x in m.log_lines()] == [b"main-done"]


def test_flood_then_immediate_exit_both_streams(testbed):
    """Both pipes full when the container exits: nothing is lost on either."""
    n = 50_000
    m = testbed.run(LAUNCHER, ["sh", "-c", f"seq 1 {n} >&2 & seq 1 {n}; wait"])
    assert m.wait_exit_file(60) == 0
    lines = m.log_lines()
    for stream in ("stdout", "stderr"):
        got = [x.content for x in lines if x.stream == stream]
        assert got == [str(i).encode() for i in range(1, n + 1)], stream
