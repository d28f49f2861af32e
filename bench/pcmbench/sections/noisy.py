"""Noisy neighbours: the k8s-file workloads from 1 and 20 containers at once, and a quiet one's latency.

For each k8s-file workload and N in (1, 20), one quiet container (``cat``
of a FIFO bind-mounted from the host, as in the latency section) and N noisy
ones running the workload are created; the N are started one after another
and, while any of them runs, the bench writes a line into the quiet one's
FIFO every ``GAP_S`` and waits (inotify) for its k8s-file record.  Figures:

- monitor CPU of the whole run: for C conmon the sum over its N + 1 monitor
  processes (read as zombies, as in the k8s-file section); in server mode the
  N + 1 stubs (the same way) plus the shared server's utime+stime gained
  over the run (/proc/<server pid>/stat before the first create and after
  the last stub exited; a server started by this run counts from zero, its
  start-up included);
- the quiet container's write-to-record latency, p99 and max, over the
  samples taken while noisy containers ran.

Every noisy log is checked byte for byte (verify.py).  Two monitors: C conmon
and pyconmon in server mode (the install the density section uses).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time

from ..container import Monitor, Run
from ..system import CLK_TCK, RUNC, BenchFailure, Inotify, exit_code_in, proc_stat, run_quiet
from ..verify import check_stream, k8s_stream
from . import Row, Section, register
from .density import no_static_libc, server_mode_install, server_pids
from .latency import Latency, fifo_reader

COUNTS = (1, 20)
GAP_S = 0.01  # between the quiet container's writes (the pattern, not a wait for a condition)
P99_TARGET_MS = 50.0  # issue 11: a noisy container delays another's records by at most 50 ms (p99)


def server_cpu(pid):
    """utime+stime in seconds of a running server, or None if it is gone."""
    try:
        return proc_stat(pid)[1]
    except (OSError, ValueError, IndexError):
        return None


@register
class Noisy(Section):
    name = "noisy"
    title = "noisy neighbours: k8s-file from 1 and 20 containers at once"

    def unavailable(self):
        return no_static_libc()

    def setup(self):
        prefix = server_mode_install(self.bench)
        self.libdir = os.path.join(prefix, "lib", "pyconmon")
        c_mon = self.bench.monitors[0]
        self.variants = [c_mon, Monitor("pyconmon", "pyconmon server mode", os.path.join(prefix, "bin", "conmon"))]

    def run_round(self, rnd):
        for wl in self.bench.workloads:
            for n in COUNTS:
                print(f"  noisy: {wl.label}, {n} noisy container(s) + 1 quiet", flush=True)
                for mon in self.results.order(f"noisy/{wl.key}/{n}", self.variants):
                    self.noisy_run(mon, wl, n)

    def noisy_run(self, mon, wl, n):
        metrics = [f"noisy/{wl.key}/{n}/{m}" for m in ("cpu_s", "p99_ms")]
        served = mon.label.endswith("server mode")
        quiet, fifo = fifo_reader(self.bench, mon)
        noisy = [Run(self.bench, mon, ["sh", "-c", wl.script]) for _ in range(n)]
        wfd = watch = log = None
        server, cpu0 = None, 0.0
        try:
            if served:
                before = server_pids(self.libdir)
                server = before[0] if len(before) == 1 else None
                cpu0 = server_cpu(server) if server else 0.0
            quiet.create()
            if served:
                now = server_pids(self.libdir)
                if len(now) != 1:
                    raise BenchFailure(f"expected one pyconmon server, found {now}")
                if now[0] != server:  # started by this create: all its CPU is this run's
                    server, cpu0 = now[0], 0.0
            wfd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)
            watch = Inotify(quiet.log_path, Inotify.IN_MODIFY)
            log = open(quiet.log_path, "rb")
            quiet.start()
            for run in noisy:
                run.create()
                run.watch.close()  # the exit files are polled below: one inotify instance each is too many
                run.watch = None
            for run in noisy:
                run.start()
            samples, seq = [], 0
            deadline = time.monotonic() + self.bench.args.timeout
            while any(exit_code_in(run.m.exit_file) is None for run in noisy):
                if time.monotonic() > deadline:
                    raise BenchFailure(f"noisy containers still running after {self.bench.args.timeout} s")
                seq += 1
                token = b" F Q%07d\n" % seq
                t0 = time.monotonic()
                os.write(wfd, token[3:])
                Latency._await_record(log, watch, token)
                samples.append(time.monotonic() - t0)
                time.sleep(GAP_S)
            codes = [exit_code_in(run.m.exit_file)[0] for run in noisy]
            if any(codes):
                raise BenchFailure(f"noisy exit codes {codes}")
            run_quiet([RUNC, "kill", quiet.cid, "KILL"])
            quiet.wait_exit(30)
            cpus = [run.monitor_cpu()["cpu_s"] for run in [quiet, *noisy]]
            server_s = 0.0
            if served:
                cpu1 = server_cpu(server)
                if cpu1 is None:
                    raise BenchFailure(f"the pyconmon server {server} went away during the run")
                server_s = cpu1 - cpu0
            for run in noisy:
                check_stream(k8s_stream(run.log_path), wl.expected())
            if not samples:
                raise BenchFailure("no latency sample while the noisy containers ran")
            ms = sorted(s * 1000 for s in samples)
            p99 = ms[min(len(ms) - 1, int(0.99 * len(ms)))]
            total = sum(cpus) + server_s
            self.results.add(f"noisy/{wl.key}/{n}/cpu_s", mon, total,
                             {"monitor_cpu_s": cpus, "server_cpu_s": server_s, "server_tick_s": 1 / CLK_TCK})
            self.results.add(f"noisy/{wl.key}/{n}/p99_ms", mon, p99,
                             {"samples_ms": ms, "median_ms": statistics.median(ms), "max_ms": ms[-1]})
            print(f"    {mon.label:22} CPU {total:7.3f} s ({sum(cpus):.3f} monitors + {server_s:.2f} server)  "
                  f"quiet write-to-record p99 {p99:6.2f} ms, max {ms[-1]:6.2f} ms ({len(ms)} samples)", flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, AssertionError) as e:
            self.results.fail(f"noisy {wl.key} N={n} {mon.label}", e if isinstance(e, BenchFailure) else repr(e),
                              mon, metrics)
        finally:
            for f in (log, watch):
                if f is not None:
                    f.close()
            if wfd is not None:
                os.close(wfd)
            for run in [quiet, *noisy]:
                run.close()

    def rows(self):
        rows = []
        for wl in self.bench.workloads:
            for n in COUNTS:
                rows += [
                    Row(f"{wl.label}, {n} at once: monitor CPU, server mode incl. server (s)",
                        f"noisy/{wl.key}/{n}/cpu_s", "s", (1.0, "ratio")),
                    Row(f"{wl.label}, {n} at once: quiet container's write to record, p99 (ms)",
                        f"noisy/{wl.key}/{n}/p99_ms", "ms", (P99_TARGET_MS, "abs")),
                ]
        return rows

    @classmethod
    def method(cls):
        return (
            "**noisy**: for each k8s-file workload, N (1, 20) containers run it at once beside one quiet "
            "container that `cat`s a FIFO; every "
            f"{GAP_S * 1000:g} ms the bench writes a line into the FIFO and waits (inotify) for its record. "
            "Monitor CPU: for C conmon the sum over all N + 1 monitors (zombie figures, as above); in server "
            "mode the N + 1 stubs plus the shared server's utime+stime gained over the run "
            "(/proc/PID/stat, 10 ms ticks; a server started by the run counts whole, start-up included). "
            "p99: the quiet container's write-to-record latency over the samples taken while noisy "
            "containers ran. Every noisy log is checked byte for byte.")
