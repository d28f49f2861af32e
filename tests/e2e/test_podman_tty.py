"""Podman 4.3.1 end to end through pyconmon: terminals, attach, exec, healthchecks (issue 3).

Terminal tests run Podman inside a private tmux server (its own socket under
/tmp, killed after the test), type with ``send-keys`` and read the screen
with ``capture-pane``, always polling for an expected text with a deadline.
The monitor is the installed one (``make podman PREFIX=<tmp>``); where it is
cheap the same steps also run through Debian's C conmon 2.1.6, the reference.
Exec sessions start a monitor of their own, so one long-running container
per runtime (runc, crun; made with the installed pyconmon) serves every exec
test. The other tests run with both runtimes through ``podman_clean``.
"""

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import time

import pytest

from support.harness import poll_until, read_k8s_log
from support.podman import SLOW, exit_code, run_d
from support.runtimes import require_runtime, selected_runtimes

# Without Debian's conmon only the [conmon] variants skip (tests/e2e/conftest.py's monitor_named).
pytestmark = pytest.mark.skipif(not shutil.which("tmux"), reason="needs tmux")

PROMPT = re.compile(r"^/ # ", re.M)


@pytest.fixture(scope="module", params=[name for name, _ in selected_runtimes()])
def sleeper(request, podman, installed_conmon):
    """A running container (installed pyconmon) for exec sessions, one per runtime (the exec tests
    run with each); removed after the module. Podman execs with the container's own runtime."""
    if request.param == "crun":
        request.getfixturevalue("crun_cgroups")
    require_runtime(request.param)
    cid = run_d(podman.with_runtime(request.param), installed_conmon, podman.image, "sleep", "3600")
    try:
        assert podman.inspect(cid, "{{.OCIRuntime}}") == request.param  # what every `podman exec` uses
        yield cid
    finally:
        podman.rm(cid)


class Pane:
    """One command in a tmux pane of a known size, on a private tmux server.

    When the command ends, the pane's shell writes its status to a file, then
    prints ``PODMAN_RC=<status>`` and sleeps, so the screen stays readable.
    """

    def __init__(self, cols, rows):
        self.dir = tempfile.mkdtemp(prefix="pcm-tmux-", dir="/tmp")
        self.sock = os.path.join(self.dir, "sock")
        self.rc_path = os.path.join(self.dir, "rc")
        self.cols, self.rows = cols, rows
        self.started = False

    def tmux(self, *args, env=None):
        r = subprocess.run(["tmux", "-S", self.sock, "-f", "/dev/null", *map(str, args)],
                           capture_output=True, text=True, timeout=20, env=env, check=False)
        assert r.returncode == 0, f"tmux {args}: {r.stderr}"
        return r.stdout

    def start(self, argv, env, cwd):
        script = os.path.join(self.dir, "pane.sh")
        with open(script, "w") as f:
            f.write(f"cd {shlex.quote(cwd)}\n{shlex.join(argv)}\nrc=$?\n"
                    f"echo $rc > {self.rc_path}.tmp && mv {self.rc_path}.tmp {self.rc_path}\n"
                    "echo PODMAN_RC=$rc\nexec sleep 600\n")
        self.tmux("new-session", "-d", "-s", "pcm", "-x", self.cols, "-y", self.rows, f"sh {script}", env=env)
        self.started = True

    def screen(self):
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "pcm")

    def wait_for(self, pattern, timeout=SLOW):
        """Poll the screen until ``pattern`` (regex) matches; returns the match."""
        rx = re.compile(pattern, re.M) if isinstance(pattern, str) else pattern
        try:
            return poll_until(lambda: rx.search(self.screen()), timeout, interval=0.05, what=f"{rx.pattern!r}")
        except TimeoutError as err:
            raise AssertionError(f"{err}; screen:\n{self.screen()}") from None

    def type(self, text):
        """Type ``text`` and press Enter."""
        self.tmux("send-keys", "-t", "pcm", "-l", text)
        self.tmux("send-keys", "-t", "pcm", "Enter")

    def key(self, name):
        self.tmux("send-keys", "-t", "pcm", name)

    def resize(self, cols, rows):
        self.tmux("resize-window", "-t", "pcm", "-x", cols, "-y", rows)

    def ask_size(self, tag, want=None, timeout=SLOW):
        """Run ``stty size`` in the pane's shell; returns (rows, cols). With ``want``, ask again
        until the answer is ``want`` (a resize travels tmux → podman → ctl → monitor → pty)."""
        deadline = time.monotonic() + timeout
        n = 0
        while True:
            n += 1
            self.type(f"echo {tag}{n}:$(stty size)")
            m = self.wait_for(rf"^{tag}{n}:(.*?)\r?$", max(1.0, deadline - time.monotonic()))
            # empty when a SIGWINCH interrupted stty (busybox gives up on EINTR): ask again
            sizes = re.fullmatch(r"(\d+) (\d+)", m.group(1))
            got = (int(sizes.group(1)), int(sizes.group(2))) if sizes else None
            if (got is not None and (want is None or got == want)) or time.monotonic() > deadline:
                return got

    def rc(self, timeout=SLOW):
        """Exit status of the pane's command."""
        self.wait_for(r"^PODMAN_RC=\d+", timeout)
        with open(self.rc_path) as f:
            return int(f.read())

    def close(self):
        if self.started:
            subprocess.run(["tmux", "-S", self.sock, "kill-server"], capture_output=True, timeout=20, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pane_factory():
    panes = []

    def make(podman, conmon, *args, cols=100, rows=30):
        p = Pane(cols, rows)
        panes.append(p)
        p.start(podman.argv(*args, conmon=conmon), podman.env(conmon), podman.base)
        return p

    yield make
    for p in panes:
        p.close()


# --------------------------------------------------------------------------
# run -it, attach


def test_run_it_echo_size_resize_exit_code(podman_clean, ref_and_installed, pane_factory):
    podman, conmon = podman_clean, ref_and_installed
    name = "pcm-it-" + os.urandom(4).hex()
    pane = pane_factory(podman, conmon, "run", "-it", "--name", name, podman.image, "sh", cols=100, rows=30)
    pane.wait_for(PROMPT)
    assert pane.ask_size("S") == (30, 100)
    pane.resize(120, 40)
    assert pane.ask_size("R", want=(40, 120)) == (40, 120)
    pane.type("echo hi-$((6*7)); exit 7")
    assert pane.rc() == 7
    screen = pane.screen()
    assert "/ # echo hi-$((6*7)); exit 7\nhi-42\n" in screen  # echoed input, then the output
    cid = podman.inspect(name, "{{.Id}}")
    assert exit_code(podman, cid) == "exited 7"
    # the pty's CR LF, all as stdout (podman logs drops the CR; the log file has it)
    records = [(x.stream, x.content) for x in read_k8s_log(os.path.join(podman.bundle(cid), "ctr.log"))]
    assert ("stdout", b"hi-42\r") in records
    assert {stream for stream, _ in records} == {"stdout"}


def test_attach_tty_and_detach(podman_clean, ref_and_installed, pane_factory):
    podman, conmon = podman_clean, ref_and_installed
    cid = run_d(podman, conmon, "-it", podman.image, "sh")
    pane = pane_factory(podman, conmon, "attach", cid, cols=90, rows=25)
    # podman sends the pane's size when it attaches
    assert pane.ask_size("A", want=(25, 90)) == (25, 90)
    pane.type("echo attached-$((6*7))")
    pane.wait_for(r"^attached-42\r?$")
    # Detach keys: podman 4.3.1 only sees them when each arrives in a read of its own. There is
    # nothing to poll between the two (podman holds ctrl-p back), hence the short pause.
    pane.key("C-p")
    time.sleep(0.3)
    pane.key("C-q")
    assert pane.rc() == 0
    assert podman.inspect(cid, "{{.State.Status}}") == "running"
    r = podman("exec", cid, "true", conmon=conmon, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    r = podman("logs", cid, conmon=conmon, timeout=SLOW)
    assert "attached-42\n" in r.stdout


def test_attach_resize_and_exit_after_the_server_is_killed(podman_clean, server_mode_conmon, pane_factory):
    """README (server mode): a `-t -i` container outlives its server. Podman's monitor is the stub;
    the server is SIGKILLed; the classic monitor takes over in the stub's process; then `podman
    attach` (the same socket path) sends its size through ctl (seen by `stty size`), types into the
    container and reads its output, and the container's exit reaches Podman (exit file and the
    exit command's cleanup)."""
    import signal

    from support.harness import server_pids
    podman, conmon = podman_clean, server_mode_conmon
    lib = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(conmon))), "lib", "pyconmon")
    cid = run_d(podman, conmon, "-it", podman.image, "sh")
    monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
    assert os.readlink(f"/proc/{monitor}/exe") == os.path.realpath(conmon)  # served: the stub itself
    (server,) = server_pids(lib)
    os.kill(server, signal.SIGKILL)
    poll_until(lambda: os.readlink(f"/proc/{monitor}/exe") == os.path.realpath(os.path.join(lib, "classic", "conmon")),
               SLOW, what="the classic monitor takes over in the stub's process")
    pane = pane_factory(podman, conmon, "attach", cid, cols=90, rows=25)
    assert pane.ask_size("A", want=(25, 90)) == (25, 90)
    pane.type("echo after-$((6*7)); exit 7")
    pane.wait_for(r"^after-42\r?$")
    assert exit_code(podman, cid) == "exited 7"
    r = podman("logs", cid, conmon=conmon, timeout=SLOW)
    assert "after-42\n" in r.stdout


# --------------------------------------------------------------------------
# exec


def test_exec_streams_apart_and_exit_codes(podman, sleeper, ref_and_installed):
    conmon = ref_and_installed
    r = podman("exec", sleeper, "sh", "-c", "echo out; echo err >&2; printf tail; exit 5", conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (5, "out\ntail", "err\n")
    r = podman("exec", sleeper, "sh", "-c", "kill -9 $$", conmon=conmon, timeout=SLOW)
    assert r.returncode == 137, r.stderr
    r = podman("exec", sleeper, "/no/such/binary", conmon=conmon, timeout=SLOW)
    assert r.returncode == 127, r.stderr
    assert "no such file or directory" in r.stderr.lower()  # runc's words, or crun's capitalised


def test_exec_interactive_piped_stdin(podman, sleeper, installed_conmon):
    r = podman("exec", "-i", sleeper, "sh", "-c", "cat; echo done", input="data\nmore\n",
               conmon=installed_conmon, timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (0, "data\nmore\ndone\n", "")
    blob = os.urandom(300_000)
    r = podman("exec", "-i", sleeper, "md5sum", input=blob, text=False, conmon=installed_conmon, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[0] == hashlib.md5(blob).hexdigest()


def test_exec_it(podman, sleeper, ref_and_installed, pane_factory):
    pane = pane_factory(podman, ref_and_installed, "exec", "-it", sleeper, "sh", cols=90, rows=20)
    pane.wait_for(PROMPT)
    pane.type("echo T:$(tty)")
    pane.wait_for(r"^T:/dev/pts/\d+\r?$")
    # Podman writes this first size into ctl before the runtime runs, i.e. before there is a pty.
    assert pane.ask_size("S") == (20, 90)
    pane.resize(70, 15)
    assert pane.ask_size("R", want=(15, 70)) == (15, 70)
    pane.type("exit 9")
    assert pane.rc() == 9


def test_exec_detached_cleans_up_through_exit_command(podman, sleeper, installed_conmon):
    conmon = installed_conmon
    gate = "/tmp/go-" + os.urandom(6).hex()
    r = podman("exec", "-d", sleeper, "sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done; exit 6",
               conmon=conmon, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    sid = r.stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", sid), r.stdout
    exec_bundle = os.path.join(podman.bundle(sleeper), sid)
    assert os.path.isdir(exec_bundle)
    assert sid in podman.inspect(sleeper, "{{.ExecIDs}}")
    assert podman("exec", sleeper, "touch", gate, conmon=conmon, timeout=SLOW).returncode == 0
    # The exit command (`podman container cleanup --exec SID CID`) records the code as an
    # exec_died event and removes the exec bundle; nothing else does for a detached exec.
    poll_until(lambda: not os.path.exists(exec_bundle), SLOW, interval=0.05, what="exec bundle removal")

    def died_codes():
        r = podman("events", "--stream=false", "--filter", f"container={sleeper}", "--filter",
                   "event=exec_died", "--format", "{{.ContainerExitCode}}", conmon=None, timeout=SLOW)
        return r.stdout.split()

    poll_until(lambda: "6" in died_codes(), SLOW, interval=0.1, what="exec_died event with code 6")


def test_parallel_execs(podman, sleeper, installed_conmon):
    procs = {i: podman.popen("exec", sleeper, "sh", "-c", f"echo p{i}; echo e{i} >&2; exit {i}",
                             conmon=installed_conmon, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
             for i in range(1, 7)}
    got = {}
    for i, p in procs.items():
        try:
            out, err = p.communicate(timeout=SLOW)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        got[i] = (p.returncode, out, err)
    assert got == {i: (i, f"p{i}\n", f"e{i}\n") for i in range(1, 7)}


def test_sequential_execs(podman, sleeper, installed_conmon):
    got = []
    for i in range(15):
        r = podman("exec", sleeper, "sh", "-c", f"echo s{i}; exit {i}", conmon=installed_conmon, timeout=SLOW)
        got.append((r.returncode, r.stdout, r.stderr))
    assert got == [(i, f"s{i}\n", "") for i in range(15)]


# --------------------------------------------------------------------------
# healthcheck (an exec with -i, no terminal, no exit command)


def test_healthcheck_run(podman_clean, ref_and_installed):
    podman, conmon = podman_clean, ref_and_installed
    cid = run_d(podman, conmon, "--health-cmd", "echo probe-out; echo probe-err >&2; test -e /tmp/healthy",
                "--health-retries", "1", "--health-interval", "disable", podman.image, "sleep", "600")
    fmt = "{{.State.Health.Status}} {{.State.Healthcheck.Status}}"
    assert podman.inspect(cid, fmt) == "starting starting"
    r = podman("healthcheck", "run", cid, conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout.strip()) == (1, "unhealthy"), r.stderr
    assert podman.inspect(cid, fmt) == "unhealthy unhealthy"
    last = podman.inspect(cid, "{{with $l := .State.Healthcheck.Log}}{{(index $l 0).ExitCode}}|"
                               "{{(index $l 0).Output}}{{end}}")
    assert last == "1|probe-out\nprobe-err"
    assert podman("exec", cid, "touch", "/tmp/healthy", conmon=conmon, timeout=SLOW).returncode == 0
    r = podman("healthcheck", "run", cid, conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout.strip()) == (0, ""), r.stderr
    assert podman.inspect(cid, fmt) == "healthy healthy"
