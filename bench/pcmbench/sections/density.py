"""Density: N idle containers side by side, the memory their monitors cost.

For N in 10, 50 and 200 (10 and 50 with ``--quick``), N runc containers
(``sleep``) are created one after another, each monitor started as Podman
starts it, and all left running; after ``--settle`` seconds every monitor
process's Pss and Private_Dirty are read from /proc/PID/smaps_rollup.
Three monitors: C conmon, pyconmon classic (the bench's installed
``conmon``) and pyconmon in server mode (a second install, ``make install
ENTRY=stub`` with its mode file saying ``always``): one static stub per
container plus the shared Python server, whose Pss is divided among the N
containers it serves (Pss already splits shared pages among the processes
mapping them).  Also recorded: the median create latency (spawn to the
container pid on the sync pipe) while the N are being started, and the drop
of MemAvailable per container (containers included; noisy on a shared
machine).  In the table the C column is always C conmon; the pyconmon
column is server mode, or classic in the rows that say so.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

from ..container import Monitor, Run
from ..system import REPO, BenchFailure, H, proc_kv, run_quiet
from . import Row, Section, register

COUNTS = (10, 50, 200)
QUICK_COUNTS = (10, 50)


def mem_available_kb():
    return proc_kv("/proc/meminfo")["MemAvailable"]


def smaps(pid):
    """(Pss, Private_Dirty) in KB of one process."""
    r = proc_kv(f"/proc/{pid}/smaps_rollup")
    return r["Pss"], r["Private_Dirty"]


def no_static_libc():
    """Why the server-mode stub cannot be built here, or None."""
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/libc.a") and not os.path.exists("/usr/lib/libc.a"):
        return "no static libc (libc6-dev) for the server-mode stub"
    return None


def server_pids(libdir):
    """The pyconmon-server processes of the install whose package dir is ``libdir``."""
    return H.server_pids(libdir)


def stop_servers(libdir):
    """SIGTERM the servers of that install and wait (10 s at most) until they are gone: a section
    that is done leaves no server behind for the next one to measure."""
    import signal
    for pid in server_pids(libdir):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + 10
        while pid in server_pids(libdir) and time.monotonic() < deadline:
            time.sleep(0.05)


def server_mode_install(bench):
    """The prefix of a second install in server mode (``make install ENTRY=stub``, mode file
    ``always``: server mode even if the bench runs inside a systemd service); made once per run."""
    prefix = getattr(bench, "server_mode_prefix", None)
    if prefix is not None:
        return prefix
    root = os.path.join(bench.workroot, "server-mode")
    os.makedirs(root)
    mode = os.path.join(root, "mode")
    with open(mode, "w") as f:
        f.write("always\n")
    prefix = os.path.join(root, "prefix")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    r = run_quiet(["make", "-C", REPO, "install", "ENTRY=stub", f"PREFIX={prefix}",
                   f"PYCONMON_MODE_FILE={mode}", f"BUILDDIR={os.path.join(root, 'build')}"], timeout=300, env=env)
    if r.returncode != 0:
        raise SystemExit(f"building pyconmon's server mode failed:\n{r.stdout}\n{r.stderr}")
    os.sync()  # a page of a file written and not yet written back counts as dirty in every mapping
    bench.server_mode_prefix = prefix
    return prefix


@register
class Density(Section):
    name = "density"
    title = "density: idle containers side by side"

    def unavailable(self):
        return no_static_libc()

    def counts(self):
        return QUICK_COUNTS if self.bench.args.quick else COUNTS

    def setup(self):
        self.prefix = server_mode_install(self.bench)
        self.libdir = os.path.join(self.prefix, "lib", "pyconmon")
        c_mon, classic = self.bench.monitors
        server = Monitor("pyconmon", "pyconmon server mode", os.path.join(self.prefix, "bin", "conmon"))
        classic_mon = Monitor("pyconmon", "pyconmon classic", classic.path)
        self.variants = [("conmon", c_mon), ("classic", classic_mon), ("server", server)]

    def run_round(self, rnd):
        for n in self.counts():
            order = self.results.order(f"density/{n}", self.variants)
            print(f"  density: {n} idle containers per monitor", flush=True)
            for kind, mon in order:
                self.density_run(kind, mon, n)

    def density_run(self, kind, mon, n):
        runs = []
        latencies = []
        before = mem_available_kb()
        metrics = [r.metric for r in self.rows() if f"/{n}/" in r.metric]
        try:
            for _ in range(n):
                run = Run(self.bench, mon, ["sleep", "1000000"])
                runs.append(run)
                latencies.append(run.create() * 1000)
                run.watch.close()  # one inotify instance per container would pass the default limit of 128
                run.watch = None
                run.start()
            time.sleep(self.bench.args.settle)  # the idle state is what is measured: no condition to await
            per = [smaps(run.daemon_pid) for run in runs]
            servers = server_pids(self.libdir) if kind == "server" else []
            if kind == "server" and len(servers) != 1:
                raise BenchFailure(f"expected one pyconmon server, found {servers}")
            for run in runs:  # server mode really served them: the monitor is the stub itself
                exe = os.readlink(f"/proc/{run.daemon_pid}/exe")
                if kind == "server" and exe != os.path.realpath(mon.path):
                    raise BenchFailure(f"container {run.cid[:12]} not in server mode (monitor runs {exe})")
            shared = [smaps(pid) for pid in servers]
            after = mem_available_kb()
            pss = (sum(p for p, _ in per) + sum(p for p, _ in shared)) / n
            own_dirty = statistics.mean(d for _, d in per)
            dirty = (sum(d for _, d in per) + sum(d for _, d in shared)) / n
            drop = (before - after) / n
            detail = {"n": n, "monitor_pss_kb": [p for p, _ in per], "monitor_private_dirty_kb": [d for _, d in per],
                      "server_pss_kb": [p for p, _ in shared], "server_private_dirty_kb": [d for _, d in shared],
                      "create_ms": latencies}
            for metric, value in ((f"density/{n}/pss_kb", pss), (f"density/{n}/private_dirty_kb", dirty),
                                  (f"density/{n}/process_private_dirty_kb", own_dirty),
                                  (f"density/{n}/mem_available_drop_kb", drop),
                                  (f"density/{n}/create_ms", statistics.median(latencies))):
                for suffix in ([""] if kind == "server" else ["_classic"] if kind == "classic" else ["", "_classic"]):
                    self.results.add(metric + suffix, mon, value, detail if not suffix else None)
            print(f"    {kind:8} N={n:3}  Pss/container {pss:7.0f} KB  Private_Dirty/container {dirty:7.0f} KB  "
                  f"(each process {own_dirty:5.0f} KB)  MemAvailable drop/container {drop:7.0f} KB  "
                  f"create median {statistics.median(latencies):5.1f} ms", flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            self.results.fail(f"density {kind} N={n}", e if isinstance(e, BenchFailure) else repr(e), mon,
                              [m for m in metrics if m.endswith("_classic") == (kind == "classic")])
        finally:
            for run in runs:
                run.close()

    def rows(self):
        rows = []
        for n in self.counts():
            # issue 11's goals: Pss <= C at 50 and <= C / 2 at 200, each stub <= 512 KB dirty, create <= C
            pss_target = (0.5, "ratio") if n >= 200 else (1.0, "ratio") if n >= 50 else None
            rows += [
                Row(f"{n} idle: monitors' Pss per container, server mode (KB)", f"density/{n}/pss_kb", "KB",
                    pss_target),
                Row(f"{n} idle: ... classic (KB)", f"density/{n}/pss_kb_classic", "KB"),
                Row(f"{n} idle: Private_Dirty per container, server mode (KB)", f"density/{n}/private_dirty_kb",
                    "KB"),
                Row(f"{n} idle: ... classic (KB)", f"density/{n}/private_dirty_kb_classic", "KB"),
                Row(f"{n} idle: Private_Dirty of each per-container process, server mode (KB)",
                    f"density/{n}/process_private_dirty_kb", "KB", (512.0, "abs")),
                Row(f"{n} idle: drop of MemAvailable per container, server mode (KB)",
                    f"density/{n}/mem_available_drop_kb", "KB"),
                Row(f"{n} idle: ... classic (KB)", f"density/{n}/mem_available_drop_kb_classic", "KB"),
                Row(f"{n} idle: create latency median, server mode (ms)", f"density/{n}/create_ms", "ms",
                    (1.0, "ratio")),
                Row(f"{n} idle: ... classic (ms)", f"density/{n}/create_ms_classic", "ms"),
            ]
        return rows

    @classmethod
    def method(cls):
        return (
            "**density**: N (10, 50, 200) idle runc containers (`sleep`) created one after another and left "
            "running, for C conmon, pyconmon classic and pyconmon server mode (`make install ENTRY=stub`, mode "
            "file `always`). After the settle time, Pss and Private_Dirty of every per-container monitor "
            "process from /proc/PID/smaps_rollup; in server mode the shared server's figures are added and "
            "divided by N. Also the median create latency while the N start, and the drop of MemAvailable "
            "per container (containers included; noisy on a shared machine).")
