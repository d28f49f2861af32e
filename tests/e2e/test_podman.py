"""Podman 4.3.1 end to end through pyconmon, without a terminal (issue 2).

Real Podman (private store, tests/support/podman.py), real runc, the busybox
image.  Most tests use the *installed* monitor (``make podman PREFIX=<tmp>``
→ ``<tmp>/libexec/podman/conmon``: what users run); the cheap ones also run
through the checkout launcher bin/pyconmon, and a few through Debian's C
conmon 2.1.6 as the reference for what Podman shows.  Every Podman command
gets ``--conmon PATH`` and a containers.conf whose ``conmon_path`` is PATH
(the exit command's ``podman container cleanup`` only sees the latter).
"""

import hashlib
import os
import subprocess
import threading
import time

import pytest

from support.harness import poll_until, proc_cmdline, stat_after_comm, wait_pid_gone
from support.podman import SLOW, exit_code, run_d


@pytest.fixture(params=["conmon", "installed", "checkout"])
def any_monitor(request, monitor_named):
    """Each monitor Podman can be pointed at: C conmon (reference), installed pyconmon, checkout launcher."""
    return monitor_named(request.param)


@pytest.fixture(params=["installed", "checkout"])
def py_monitor(request, monitor_named):
    """Both pyconmon entry points."""
    return monitor_named(request.param)


def logs(podman, conmon, cid):
    r = podman("logs", cid, conmon=conmon, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stderr


# --------------------------------------------------------------------------
# which monitor Podman runs


def test_info_reports_monitor(podman, py_monitor):
    r = podman("info", "--format", "{{.Host.Conmon.Path}}\n{{.Host.Conmon.Version}}", conmon=py_monitor)
    assert r.returncode == 0, r.stderr
    path, version = r.stdout.split("\n", 1)
    assert path == py_monitor
    assert version.startswith("conmon version 2.2.1, commit: "), version
    # containers.conf alone, no --conmon: how the exit command's cleanup process finds it
    r = podman("info", "--format", "{{.Host.Conmon.Path}}", conmon=None,
               env={"CONTAINERS_CONF": podman.conf_for(py_monitor)})
    assert (r.returncode, r.stdout.strip()) == (0, py_monitor), r.stderr


def test_monitor_process_identity(podman_clean, installed_conmon):
    podman = podman_clean
    cid = run_d(podman, installed_conmon, podman.image, "sleep", "600")
    pid = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
    ctr_pid = int(podman.inspect(cid, "{{.State.Pid}}"))
    assert os.readlink(f"/proc/{pid}/exe") == os.path.realpath(installed_conmon)
    with open(f"/proc/{pid}/comm") as f:
        assert f.read() == "conmon\n"
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(x.split(b"=", 1) for x in f.read().split(b"\0") if b"=" in x)
    assert env[b"CONTAINERS_CONF"].decode() == podman.conf_for(installed_conmon)
    assert b"PYTHONPATH" not in env
    assert int(stat_after_comm(ctr_pid)[1]) == pid  # the subreaper inherited the container from `runc create`
    assert podman("rm", "-f", "-t", "0", cid, conmon=installed_conmon, timeout=SLOW).returncode == 0
    wait_pid_gone(pid, 10)


# --------------------------------------------------------------------------
# run in the foreground, run -d and what follows


def test_run_foreground_streams_apart(podman_clean, any_monitor):
    r = podman_clean("run", "--rm", podman_clean.image, "sh", "-c",
                     "echo out1; echo err1 >&2; echo out2; printf partial; echo err2 >&2; exit 3",
                     conmon=any_monitor, timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (3, "out1\nout2\npartial", "err1\nerr2\n")


def test_run_detached_logs_wait_stop_kill(podman_clean, installed_conmon):
    podman, conmon = podman_clean, installed_conmon
    trapper = run_d(podman, conmon, podman.image, "sh", "-c",
                    'echo ready; echo warming >&2; trap "echo stopping; exit 0" TERM; '
                    "while :; do sleep 0.1; done")
    stubborn = run_d(podman, conmon, podman.image, "sleep", "600")  # pid 1 ignores SIGTERM
    victim = run_d(podman, conmon, podman.image, "sleep", "600")
    short = run_d(podman, conmon, podman.image, "sh", "-c", "echo done; exit 3")

    poll_until(lambda: logs(podman, conmon, trapper) == ("ready\n", "warming\n"), SLOW, what="logs of trapper")
    # stop: SIGTERM, the trap ends the container at once
    r = podman("stop", "-t", "1", trapper, conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout.strip()) == (0, trapper), r.stderr
    assert exit_code(podman, trapper) == "exited 0"
    assert logs(podman, conmon, trapper) == ("ready\nstopping\n", "warming\n")
    # stop: SIGTERM ignored, SIGKILL after the 1 s timeout
    t0 = time.monotonic()
    r = podman("stop", "-t", "1", stubborn, conmon=conmon, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    assert 1 <= time.monotonic() - t0 < 5.5  # podman waits at most 5 s for the exit file
    assert exit_code(podman, stubborn) == "exited 137"
    # kill
    assert podman("kill", victim, conmon=conmon, timeout=SLOW).returncode == 0
    w = podman("wait", victim, conmon=conmon, timeout=SLOW)
    assert (w.returncode, w.stdout.strip()) == (0, "137"), w.stderr
    # wait on one that ends by itself
    w = podman("wait", short, conmon=conmon, timeout=SLOW)
    assert (w.returncode, w.stdout.strip()) == (0, "3"), w.stderr
    assert logs(podman, conmon, short) == ("done\n", "")


def test_exit_codes_from_inspect(podman_clean, ref_and_installed):
    podman, conmon = podman_clean, ref_and_installed
    ok = run_d(podman, conmon, podman.image, "true")
    three = run_d(podman, conmon, podman.image, "sh", "-c", "exit 3")
    killed = run_d(podman, conmon, podman.image, "sleep", "600")
    # In its own pid namespace the container's pid 1 ignores SIGTERM; in the host's it dies of it.
    termed = run_d(podman, conmon, "--pid", "host", podman.image, "sleep", "600")
    assert podman("kill", killed, conmon=conmon, timeout=SLOW).returncode == 0
    assert podman("kill", "-s", "TERM", termed, conmon=conmon, timeout=SLOW).returncode == 0
    got = {}
    for name, cid in (("ok", ok), ("three", three), ("killed", killed), ("termed", termed)):
        w = podman("wait", cid, conmon=conmon, timeout=SLOW)
        assert w.returncode == 0, w.stderr
        got[name] = (w.stdout.strip(), exit_code(podman, cid))
    assert got == {"ok": ("0", "exited 0"), "three": ("3", "exited 3"),
                   "killed": ("137", "exited 137"), "termed": ("143", "exited 143")}


def test_run_rm_and_detached_rm(podman_clean, installed_conmon):
    podman, conmon = podman_clean, installed_conmon
    before = set(podman.ids())
    r = podman("run", "--rm", podman.image, "echo", "bye", conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (0, "bye\n", "")
    assert set(podman.ids()) == before
    # -d --rm: nobody but the exit command (podman container cleanup --rm) removes it
    cid = run_d(podman, conmon, "--rm", podman.image, "sleep", "2")
    assert cid in podman.ids()
    monitor = int(podman.inspect(cid, "{{.State.ConmonPid}}"))
    poll_until(lambda: cid not in podman.ids(), SLOW, interval=0.1, what="run -d --rm container to go")
    wait_pid_gone(monitor, 10)
    assert set(podman.ids()) == before


def _processes_naming(cid):
    """Pids whose command line has ``cid`` as an argument (the monitor, the exit command)."""
    return [p for p in os.listdir("/proc") if p.isdigit() and cid.encode() in proc_cmdline(p).split(b"\0")]


def test_run_passthrough_stdout_is_the_containers_alone(podman_clean, any_monitor, tmp_path):
    """``--log-driver passthrough``: the caller's stdout holds what the container wrote and nothing else.
    The exit command (``podman container cleanup``, which prints the id) must not inherit it: C conmon
    gives up its stdio once the runtime has it. Read after the monitor and exit command are gone."""
    podman = podman_clean
    out, err, cidfile = tmp_path / "out", tmp_path / "err", tmp_path / "cid"
    with open(out, "wb") as o, open(err, "wb") as e:
        p = podman.popen("run", "--cidfile", cidfile, "--log-driver", "passthrough", podman.image,
                         "sh", "-c", "echo hi", conmon=any_monitor, stdin=subprocess.DEVNULL, stdout=o, stderr=e)
        assert p.wait(SLOW) == 0, err.read_text()
    cid = cidfile.read_text().strip()
    assert len(cid) == 64, cid
    assert exit_code(podman, cid) == "exited 0"
    poll_until(lambda: not _processes_naming(cid), SLOW, interval=0.1, what="monitor and exit command to end")
    assert (out.read_text(), err.read_text()) == ("hi\n", "")


def test_run_interactive_piped_stdin(podman_clean, py_monitor):
    podman = podman_clean
    r = podman("run", "-i", "--rm", podman.image, "cat", input="data\n", conmon=py_monitor, timeout=SLOW)
    assert (r.returncode, r.stdout, r.stderr) == (0, "data\n", "")
    blob = os.urandom(300_000)
    r = podman("run", "-i", "--rm", podman.image, "sh", "-c", "md5sum; echo read-all >&2",
               input=blob, text=False, conmon=py_monitor, timeout=SLOW)
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode().split()[0] == hashlib.md5(blob).hexdigest()
    assert r.stderr == b"read-all\n"


# --------------------------------------------------------------------------
# attach


def test_attach_sends_stdin_and_gets_output(podman_clean, ref_and_installed):
    podman, conmon = podman_clean, ref_and_installed
    cid = run_d(podman, conmon, "-i", podman.image, "sh", "-c",
                "while read line; do echo got:$line; echo err:$line >&2; done; echo eof; exit 4")
    r = podman("attach", cid, input="a\nb\n", conmon=conmon, timeout=SLOW)
    # podman 4.3.1 ends an attach with an extra newline on stdout and exit status 0 (with C conmon too)
    assert (r.returncode, r.stdout, r.stderr) == (0, "got:a\ngot:b\neof\n\n", "err:a\nerr:b\n")
    assert exit_code(podman, cid) == "exited 4"


class _Lines:
    """Collects a pipe's lines in a thread, so a test can poll what arrived so far."""

    def __init__(self, pipe):
        self.lines = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe):
        for line in pipe:
            self.lines.append(line.rstrip("\n"))

    def join(self, timeout):
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "pipe still open"
        return self.lines


def _consecutive(lines, prefix):
    nums = [int(x[len(prefix):]) for x in lines]
    return nums == list(range(nums[0], nums[0] + len(nums)))


def test_attach_to_running_container(podman_clean, installed_conmon):
    podman, conmon = podman_clean, installed_conmon
    cid = run_d(podman, conmon, podman.image, "sh", "-c",
                "i=0; while [ ! -e /tmp/stop ]; do echo line$i; echo err$i >&2; i=$((i+1)); sleep 0.05; done; "
                "echo last; exit 0")
    p = podman.popen("attach", "--no-stdin", cid, conmon=conmon, stdin=subprocess.DEVNULL,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = _Lines(p.stdout), _Lines(p.stderr)
        poll_until(lambda: len(out.lines) >= 3 and len(err.lines) >= 3, SLOW, what="attached output")
        r = podman("exec", cid, "touch", "/tmp/stop", conmon=conmon, timeout=SLOW)
        assert r.returncode == 0, r.stderr
        rc = p.wait(SLOW)
        out_lines, err_lines = out.join(10), err.join(10)
        assert rc == 0, (rc, out_lines[-3:], err_lines[-3:])
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert out_lines[-2:] == ["last", ""], out_lines[-5:]
    assert _consecutive(out_lines[:-2], "line"), out_lines
    assert _consecutive(err_lines, "err"), err_lines
    assert exit_code(podman, cid) == "exited 0"
    # attaching saw only the tail: the log has it all, from line0
    stdout, _ = logs(podman, conmon, cid)
    assert stdout.startswith("line0\n"), stdout[:50]
    assert stdout.endswith("\n".join(out_lines[:-2]) + "\nlast\n"), (stdout[-50:], out_lines[-5:])


# --------------------------------------------------------------------------
# lots of output


def test_100k_lines_in_logs_and_foreground(podman_clean, installed_conmon):
    podman, conmon = podman_clean, installed_conmon
    expected = "".join(f"{i}\n" for i in range(1, 100_001))
    cid = run_d(podman, conmon, podman.image, "seq", "100000")
    w = podman("wait", cid, conmon=conmon, timeout=SLOW)
    assert w.stdout.strip() == "0", w.stderr
    stdout, stderr = logs(podman, conmon, cid)
    assert stderr == ""
    assert stdout == expected, f"{len(stdout.splitlines())} lines, last {stdout[-30:]!r}"
    # and through the attach socket of a foreground run
    r = podman("run", "--rm", podman.image, "seq", "100000", conmon=conmon, timeout=SLOW)
    assert (r.returncode, r.stderr) == (0, "")
    assert r.stdout == expected, f"{len(r.stdout.splitlines())} lines, last {r.stdout[-30:]!r}"
