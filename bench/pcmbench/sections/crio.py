"""CRI-O exec-probe storm: the real CRI-O, 10 containers each probed with ``crictl exec -s`` every second.

CRI-O (tests/crio/setup.sh: v1.36.3, runtime handlers ``conmon`` = Debian's C
conmon, ``pyconmon`` = ``make crio`` of this checkout into setup.sh's prefix,
classic mode, and ``pyconmon-server`` = the same in server mode) starts one
monitor per probe (ExecSync).  Per monitor and round: a pod
with 10 ``sleep`` containers; for ``--crio-seconds`` seconds (60; 10 with
--quick), every second, one ``crictl exec -s CTR echo ok`` per container, all
10 at once.  Every probe must succeed with the right output.  Figures: the
probes' wall time as crictl sees it (p50, p99), and the probe monitors' own
CPU time, summed, from the kernel's taskstats exit records (tasks named
``conmon`` whose parent is crio: each probe's monitor; runc and the probed
command are not counted), checked to be one monitor per probe.  In server mode the monitor CPU is the
stubs' (taskstats, as above) plus the server's own over the storm (its
/proc/PID/stat, threads included); the ``_server`` metrics hold C conmon
against server mode, the plain ones C conmon against classic.
"""

from __future__ import annotations

import importlib
import os
import statistics
import threading
import time

from .. import taskstats
from ..container import Monitor
from ..system import BenchFailure, H, set_subreaper
from . import Row, Section, register

tb_crio = importlib.import_module("pcm_bench_support.crio")

CONTAINERS = 10
SERVER_HANDLER = "pyconmon-server"


def _proc_cpu_s(pid):
    """utime + stime of ``pid`` itself, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@register
class CrioProbes(Section):
    name = "crio-probes"
    title = "CRI-O exec-probe storm (real CRI-O v1.36.3, 10 containers, `crictl exec -s` every second)"

    def __init__(self, bench):
        super().__init__(bench)
        self.crio = None
        self.started_crio = False
        self.ctrs = {}  # handler -> [container ids]
        self.broken = False
        self.variants = []  # (handler, kind, Monitor): kind "conmon", "classic" or "server"

    def unavailable(self):
        return tb_crio.unavailable_reason() or taskstats.ExitRecorder.unavailable()

    def seconds(self):
        return getattr(self.bench.args, "crio_seconds", None) or (10 if self.bench.args.quick else 60)

    def setup(self):
        set_subreaper(False)  # crio (setsid by setup.sh) must not become our child and zombie
        try:
            print("  crio-probes: tests/crio/setup.sh start (builds crio/crictl the first time)", flush=True)
            self.crio = tb_crio.Crio()
            self.started_crio = not self.crio.crio_pid_alive()
            self.crio.start()
            c_mon, classic = self.bench.monitors
            server = Monitor("pyconmon", "pyconmon server mode", self.crio.monitor_path[SERVER_HANDLER])
            self.variants = [(c_mon.name, "conmon", c_mon), (classic.name, "classic", classic),
                             (SERVER_HANDLER, "server", server)]
            for handler, _kind, _mon in self.variants:
                pod = self.crio.run_pod(handler, "bench-probes")
                self.ctrs[handler] = [self.crio.run(pod, f"c{i}", ["sleep", "1000000"]) for i in range(CONTAINERS)]
                for cid in self.ctrs[handler]:
                    self.crio.wait_state(cid, "CONTAINER_RUNNING")
                    self.probe(cid)  # warm-up, not counted
        except (BenchFailure, RuntimeError, OSError, TimeoutError) as e:
            self.results.fail("crio-probes set-up", e)
            self.broken = True
        finally:
            set_subreaper(True)

    def teardown(self):
        if self.crio is None:
            return
        set_subreaper(False)
        try:
            for p in self.crio.close():
                print(f"  (crio teardown: {p})")
            if self.started_crio:
                self.crio.stop()
            if self.variants:
                from .density import stop_servers
                stop_servers(self.server_lib_dir())  # later sections (density) measure without it
        finally:
            set_subreaper(True)
            self.crio = None

    def probe(self, cid):
        """One ``crictl exec -s CID echo ok``: its wall time in ms (BenchFailure if it failed)."""
        t0 = time.monotonic()
        r = self.crio.exec_sync(cid, "echo", "ok")
        wall = (time.monotonic() - t0) * 1000
        if r != (0, b"ok\n\n\n", ""):
            raise BenchFailure(f"probe of {cid[:12]}: {r}")
        return wall

    def run_round(self, rnd):
        if self.broken:
            return
        for handler, kind, mon in self.results.order("crio/probes", self.variants):
            self.storm(handler, kind, mon)

    def server_lib_dir(self):
        """``<prefix>/lib/pyconmon`` of the server-mode install (``<prefix>/libexec/crio/conmon``)."""
        prefix = os.path.dirname(os.path.dirname(os.path.dirname(self.crio.monitor_path[SERVER_HANDLER])))
        return os.path.join(prefix, "lib", "pyconmon")

    def server_cpu_s(self):
        """pid -> CPU seconds so far of each running server of the server-mode install."""
        cpu = {}
        for pid in H.server_pids(self.server_lib_dir()):
            try:
                cpu[pid] = _proc_cpu_s(pid)
            except OSError:
                pass
        return cpu

    def storm(self, handler, kind, mon):
        seconds = self.seconds()
        cids = self.ctrs[handler]
        crio_pid = self.crio.crio_pid()
        if kind == "server":
            self.probe(cids[0])  # the server is up (it exits when idle), not counted
        latencies, failures = [], []
        lock = threading.Lock()

        slow = []  # (wall ms, second of the storm, container) of every probe, for the slowest ones

        def one(cid, tick):
            try:
                wall = self.probe(cid)
            except Exception as e:  # noqa: BLE001 - every failure is reported below
                with lock:
                    failures.append(str(e))
                return
            with lock:
                latencies.append(wall)
                slow.append((round(wall, 1), tick, cid[:12]))

        print(f"  crio-probes: {handler}: {CONTAINERS} containers x {seconds} s", flush=True)
        threads = []
        server0 = self.server_cpu_s() if kind == "server" else {}
        crio_cpu0 = _proc_cpu_s(crio_pid)
        with taskstats.ExitRecorder({"conmon"}) as rec:
            t0 = time.monotonic()
            for tick in range(seconds):
                delay = t0 + tick - time.monotonic()
                if delay > 0:
                    time.sleep(delay)  # the storm's own clock: one wave per second
                for cid in cids:
                    t = threading.Thread(target=one, args=(cid, tick))
                    t.start()
                    threads.append(t)
            for t in threads:
                t.join()
        crio_cpu = _proc_cpu_s(crio_pid) - crio_cpu0
        server_cpu = 0.0
        if kind == "server":
            server_cpu = sum(cpu - server0.get(pid, 0.0) for pid, cpu in self.server_cpu_s().items())
        probes = seconds * len(cids)
        monitors = [e for e in rec.exits if e.ppid == crio_pid]
        suffixes = {"conmon": ["", "_server"], "classic": [""], "server": ["_server"]}[kind]
        metrics = [r.metric for r in self.rows() if any(r.metric.endswith(x) for x in suffixes if x)
                   or ("" in suffixes and not r.metric.endswith("_server"))]
        if failures:
            self.results.fail(f"crio-probes {handler}", f"{len(failures)} of {probes} probes failed; first: "
                              f"{failures[0]}", mon, metrics)
            return
        if rec.lost or len(monitors) != probes:
            self.results.fail(f"crio-probes {handler}", f"{len(monitors)} probe monitors seen for {probes} "
                              f"probes ({rec.lost} taskstats overflows)", mon, metrics)
            return
        if kind == "server" and server_cpu <= 0:
            self.results.fail(f"crio-probes {handler}", "the server did no work: the probes were not served",
                              mon, metrics)
            return
        cpu = sum(e.cpu_ns for e in monitors) / 1e9 + server_cpu
        q = statistics.quantiles(latencies, n=100)
        for suffix in suffixes:
            self.results.add("crio/probe_p50_ms" + suffix, mon, q[49])
            self.results.add("crio/probe_p99_ms" + suffix, mon, q[98],
                             {"slowest_ms_second_container": sorted(slow)[-10:]})
            self.results.add("crio/monitor_cpu_s" + suffix, mon, cpu)
            self.results.add("crio/monitor_cpu_per_probe_ms" + suffix, mon, cpu * 1000 / probes)
            self.results.add("crio/crio_cpu_s" + suffix, mon, crio_cpu)
        if kind == "server":
            self.results.add("crio/server_cpu_s_server", mon, server_cpu)
        print(f"    {handler:15} {probes} probes ok: p50 {q[49]:6.1f} ms  p99 {q[98]:6.1f} ms  "
              f"monitors' CPU {cpu:6.2f} s ({cpu * 1000 / probes:5.2f} ms/probe"
              + (f", server {server_cpu:5.2f} s" if kind == "server" else "") + f")  crio {crio_cpu:5.2f} s",
              flush=True)
        print(f"    slowest (ms, second, container): {sorted(slow)[-3:]}", flush=True)

    def rows(self):
        return [
            Row("probe wall time p50, `crictl exec -s` (ms)", "crio/probe_p50_ms", "ms"),
            Row("probe wall time p99 (ms)", "crio/probe_p99_ms", "ms"),
            Row("probe monitors' CPU, whole storm (s)", "crio/monitor_cpu_s", "s"),
            Row("probe monitor CPU per probe (ms)", "crio/monitor_cpu_per_probe_ms", "ms"),
            Row("crio's own CPU during the storm (s)", "crio/crio_cpu_s", "s"),
            Row("server mode: probe wall time p50 (ms)", "crio/probe_p50_ms_server", "ms"),
            Row("server mode: probe wall time p99 (ms)", "crio/probe_p99_ms_server", "ms"),
            Row("server mode: monitors' CPU, stubs plus server, whole storm (s)", "crio/monitor_cpu_s_server", "s"),
            Row("server mode: monitor CPU per probe (ms)", "crio/monitor_cpu_per_probe_ms_server", "ms"),
            Row("server mode: the server's share of it (s)", "crio/server_cpu_s_server", "s"),
            Row("server mode: crio's own CPU during the storm (s)", "crio/crio_cpu_s_server", "s"),
        ]

    @classmethod
    def method(cls):
        return (
            "**crio-probes**: the real CRI-O v1.36.3 (tests/crio/setup.sh) with a runtime handler per "
            "monitor; a pod of 10 `sleep` containers per monitor, each probed with `crictl exec -s CTR echo ok` "
            "once a second, all 10 at once, for 60 s (10 s with --quick); every probe must print `ok`. Wall "
            "time is crictl's (process start, gRPC, CRI-O's ExecSync, the monitor, `runc exec`). Monitor CPU "
            "is the probe monitors' own run time (kernel taskstats exit records of tasks named `conmon` whose "
            "parent is crio: exactly one per probe; runc and the probed command not included). pyconmon here "
            "is `make crio` into setup.sh's prefix (classic mode) and, in the rows marked server mode, a second "
            "install in server mode (`make crio ENTRY=stub`, handler `pyconmon-server`), whose monitor CPU is "
            "the stubs' (as above) plus the server process's own CPU over the storm (threads included).")
