"""Create: how long a monitor takes to start a container, and its CPU for a whole short life.

Latency: from spawning the monitor (Podman's argv, environment and
socketpairs) to the container pid on the sync pipe, doing what Podman does
in between (start byte, wait for the first process, read the conmon pid
file, read the sync pipe).  The container is ``true``; it is then started
and run to its exit.  CPU: the first process, the daemon, and the runtime
child's work before it execs the runtime.  That last part is measured by
the runtime probe (runtime_probe.c) given as ``--runtime``, which also puts
one exec of a small static program into the latency, for both monitors.
"""

from __future__ import annotations

import statistics
import subprocess

from ..container import Run
from ..system import BenchFailure
from . import Row, Section, register


@register
class Create(Section):
    name = "create"
    title = "create"

    def run_round(self, rnd):
        n = self.bench.args.create_samples
        print(f"  create latency ({n} samples per monitor)", flush=True)
        lat = {m.name: [] for m in self.bench.monitors}
        for _ in range(n):
            for mon in self.order("create"):
                latency = self.create_run(mon)
                if latency is not None:
                    lat[mon.name].append(latency * 1000)
        for name, v in lat.items():
            if v:
                print(f"    {name:8} median {statistics.median(v):7.1f} ms (min {min(v):.1f}, max {max(v):.1f})",
                      flush=True)

    def create_run(self, mon):
        run = Run(self.bench, mon, ["true"], runtime=self.bench.runtime_probe)
        try:
            latency = run.create()
            run.start()
            _, code = run.wait_exit(30)
            cpu = run.monitor_cpu()
            if code != 0:
                raise BenchFailure(f"`true` exited {code}")
            self.results.add("create/latency_ms", mon, latency * 1000)
            self.results.add("create/cpu_ms", mon, cpu["cpu_s"] * 1000, cpu)
            self.results.add("create/runtime_child_ms", mon, cpu["cpu_runtime_child_s"] * 1000)
            return latency
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, AssertionError) as e:
            self.results.fail(f"create {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                              [r.metric for r in self.rows()])
            return None
        finally:
            run.close()

    def rows(self):
        return [
            Row("create latency: spawn to pid on sync pipe (ms)", "create/latency_ms", "ms", (25.0, "plus")),
            Row("monitor CPU for a whole `true` container (ms)", "create/cpu_ms", "ms"),
            Row("... of which the runtime child before its exec (ms)", "create/runtime_child_ms", "ms"),
        ]

    @classmethod
    def method(cls):
        return (
            "**create**: latency from spawning the monitor (Podman's argv, environment and socketpairs) "
            "to the container pid on the sync pipe, doing what Podman does in between (start byte, wait "
            "for the first process, read the conmon pid file, read the sync pipe). Container: `true`, then "
            "started and run to its exit. Its CPU is the monitor's for that whole life: first process, "
            "daemon, and the work the runtime child does before it execs the runtime (that work is the "
            "monitor's, but the kernel accounts it to the child, which becomes runc). The runtime is a "
            "small static probe that reads its thread's CPU clock first thing (CPU time survives exec) "
            "and then execs runc; so the child's figure includes one exec, and the latency one extra exec, "
            "for both monitors alike (C conmon's figure is mostly that exec).")
