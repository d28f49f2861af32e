"""One container under one monitor, started exactly as Podman 4.3.1 starts it.

tests/support/harness.py does the starting (argv, environment, SEQPACKET
socketpairs for ``_OCI_SYNCPIPE``/``_OCI_STARTPIPE``, own process group).
``Run`` adds the measuring: the first process (it exits after forking; for
pyconmon it pays for interpreter start-up and imports) and the daemon are
read as zombies (system.zombie_cpu), and with the runtime probe
(runtime_probe.c) the runtime child's CPU before its exec is added, because
that work is the monitor's too.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import tempfile
import time

from .system import (
    CLK_TCK,
    RUNC,
    BenchFailure,
    H,
    Inotify,
    exit_code_in,
    proc_kv,
    reap,
    run_quiet,
    tb_bundle,
    zombie_cpu,
)

PROBE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime_probe.c")


def build_runtime_probe(workdir):
    """Compile runtime_probe.c (static if possible) for RUNC; return its path."""
    out = os.path.join(workdir, "runtime-probe")
    base = ["cc", "-O2", "-Wall", "-Wextra", f'-DREAL_RUNTIME="{RUNC}"', "-o", out, PROBE_SOURCE]
    for extra in (["-static"], []):
        r = run_quiet(base[:1] + extra + base[1:], timeout=120)
        if r.returncode == 0:
            return out
    raise SystemExit(f"building the runtime probe failed:\n{r.stderr}")


class Monitor:
    def __init__(self, name, label, path):
        self.name, self.label, self.path = name, label, path



class Run:
    """One container under one monitor: bundle, Podman-style create, pid files, clean-up."""

    def __init__(self, bench, mon, args, log_driver="k8s", bundle_edit=None, runtime=None, terminal=False,
                 stdin=False):
        self.bench = bench
        self.mon = mon
        self.work = tempfile.mkdtemp(prefix=f"{mon.name[:2]}-", dir=bench.workroot)
        self.cid = H.new_cid()
        self.runtime = runtime  # e.g. the runtime probe; RUNC otherwise
        self.terminal = terminal
        self.stdin = stdin
        self.bundle = tb_bundle.make_bundle(os.path.join(self.work, "bundle"), args, rootfs=bench.rootfs,
                                            edit=bundle_edit, terminal=terminal)
        self.log_path = os.path.join(self.bundle, "ctr.log")
        self.log_driver = "journald" if log_driver == "journald" else f"k8s-file:{self.log_path}"
        self.m = None
        self.daemon_pid = None
        self.daemon_pidfd = None
        self.first_cpu = None
        self.first_sched = None
        self.watch = None

    def create(self, deadline=30):
        """Spawn like Podman; return seconds from spawn to the container pid on the sync pipe."""
        exits = os.path.join(self.work, "exits")
        os.makedirs(exits, exist_ok=True)
        self.watch = Inotify(exits)
        t0 = time.monotonic()
        self.m = H.run_monitor(self.mon.path, bundle=self.bundle, workdir=self.work, cid=self.cid,
                               name=f"bench-{self.cid[:8]}", log_driver=self.log_driver, wait=False,
                               deadline=deadline, terminal=self.terminal, stdin=self.stdin,
                               extra_args=["--runtime", self.runtime] if self.runtime else ())
        first_fd = os.pidfd_open(self.m.first_pid)
        try:
            self.first_cpu, self.first_sched = zombie_cpu(self.m.first_pid, first_fd, deadline)
        finally:
            os.close(first_fd)
        self.m.finish_create(deadline)
        latency = time.monotonic() - t0
        if self.m.first_status != 0 or not self.m.container_pid:
            raise BenchFailure(f"create failed: {self.m.describe()}")
        self.daemon_pid = self.m.pid
        if not self.daemon_pid:
            raise BenchFailure(f"no conmon pid file: {self.m.describe()}")
        try:
            self.daemon_pidfd = os.pidfd_open(self.daemon_pid)
        except ProcessLookupError:
            raise BenchFailure(f"monitor {self.daemon_pid} already gone: {self.m.describe()}") from None
        with open(f"/proc/{self.daemon_pid}/status") as f:
            ppid = int(re.search(r"^PPid:\s*(\d+)", f.read(), re.M).group(1))
        if ppid != os.getpid():
            raise BenchFailure(f"monitor {self.daemon_pid} is not re-parented to the bench (ppid {ppid}); "
                               "is PR_SET_CHILD_SUBREAPER unsupported?")
        return latency

    def start(self):
        t0 = time.monotonic()
        self.m.start_container()
        return t0

    def wait_exit(self, timeout):
        """Wait for the exit file; return (monotonic time it was seen, exit code)."""
        code = self.watch.wait(lambda: exit_code_in(self.m.exit_file), timeout)[0]
        return time.monotonic(), code

    def runtime_child_cpu(self):
        """(ns, stat seconds) the runtime child had used when the runtime started (needs the probe)."""
        if not self.runtime:
            return None
        try:
            with open(os.path.join(self.bundle, "runtime-probe")) as f:
                ns, ticks = f.readline().split()
        except (OSError, ValueError) as e:
            raise BenchFailure(f"runtime probe left no figure: {e!r}") from None
        return int(ns), int(ticks) / CLK_TCK

    def monitor_cpu(self, timeout=30):
        """Wait for the monitor to exit; reap it; return its CPU: first process + daemon (+ the
        runtime child's work before its exec when the runtime probe is used)."""
        cpu, sched = zombie_cpu(self.daemon_pid, self.daemon_pidfd, timeout)
        status = proc_kv(f"/proc/{self.daemon_pid}/status")  # a zombie's still holds its final counts
        reap(self.daemon_pid)
        os.close(self.daemon_pidfd)
        self.daemon_pidfd = None
        stat_s = cpu + self.first_cpu
        sched_s = None if sched is None or self.first_sched is None else (sched + self.first_sched) / 1e9
        # schedstat is the run time that stat's utime+stime are scaled from, in ns instead of 10 ms
        # ticks, but of the main thread only: use it unless stat shows more (other threads ran)
        precise = sched_s is not None and stat_s <= sched_s + 2.5 / CLK_TCK + 0.05 * sched_s
        out = {"cpu_s": sched_s if precise else stat_s, "cpu_source": "schedstat" if precise else "stat",
               "stat_cpu_s": stat_s, "sched_cpu_s": sched_s, "cpu_daemon_stat_s": cpu,
               "cpu_first_stat_s": self.first_cpu,
               "cpu_first_s": self.first_sched / 1e9 if precise else self.first_cpu,
               # the daemon's sleeps (waiting for the container, journald, a client) and preemptions
               "voluntary_ctxt_switches": status.get("voluntary_ctxt_switches"),
               "nonvoluntary_ctxt_switches": status.get("nonvoluntary_ctxt_switches")}
        child = self.runtime_child_cpu()
        if child is not None:
            out["cpu_runtime_child_s"] = child[0] / 1e9
            out["cpu_s"] += child[0] / 1e9
            out["stat_cpu_s"] += child[1]
        return out

    def close(self):
        if self.watch is not None:
            self.watch.close()
            self.watch = None
        if self.m is not None:
            try:
                self.m.close(grace=5)
            except Exception as e:  # noqa: BLE001 - clean-up goes on
                print(f"  (clean-up: {e!r})", flush=True)
        if self.daemon_pidfd is not None:
            if not select.select([self.daemon_pidfd], [], [], 5)[0] and H._is_monitor_of(self.daemon_pid, self.cid):
                os.kill(self.daemon_pid, signal.SIGKILL)
            reap(self.daemon_pid)
            os.close(self.daemon_pidfd)
            self.daemon_pidfd = None
        if not self.bench.keep:
            shutil.rmtree(self.work, ignore_errors=True)
