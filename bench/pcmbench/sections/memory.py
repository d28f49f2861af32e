"""Memory: the monitor of an idle container, then after a flood of output.

The container (``sh`` waiting on a ``sleep``; it traps SIGUSR1) idles for
``--settle`` seconds; then the daemon's VmRSS (/proc/PID/status), Pss and
Private_Dirty (/proc/PID/smaps_rollup) are read.  ``runc kill CID USR1``
makes it flood 200 MiB in 64 KiB lines to the k8s-file log and print a
marker; once the marker is logged, VmHWM (peak RSS over the monitor's life)
and VmRSS are read.  The log must then hold exactly the flood and the
marker, byte for byte.
"""

from __future__ import annotations

import os
import subprocess
import time

from ..container import Run
from ..system import RUNC, BenchFailure, H, proc_kv, run_quiet
from ..verify import check_stream, k8s_stream
from . import Row, Section, register

MARKER = b"FLOOD-DONE\n"


@register
class Memory(Section):
    name = "memory"
    title = "memory"

    def run_round(self, rnd):
        print("  memory: idle, then a flood of " + self.bench.flood.label, flush=True)
        for mon in self.order("memory"):
            self.memory_run(mon)

    def memory_run(self, mon):
        flood = self.bench.flood
        # idle: sh waits on a sleep; SIGUSR1 (trapped) ends the wait, then the flood and a marker
        script = f'trap : USR1; sleep 1000000 & p=$!; wait $p; {flood.script}; echo {MARKER.decode().strip()}; wait $p'
        run = Run(self.bench, mon, ["sh", "-c", script])
        try:
            run.create()
            run.start()
            time.sleep(self.bench.args.settle)  # the idle state is what is measured: no condition to await
            pid = run.daemon_pid
            status = proc_kv(f"/proc/{pid}/status")
            rollup = proc_kv(f"/proc/{pid}/smaps_rollup")
            idle = {"VmRSS": status["VmRSS"], "VmHWM": status["VmHWM"], "Pss": rollup.get("Pss"),
                    "Private_Dirty": rollup.get("Private_Dirty"), "Private_Clean": rollup.get("Private_Clean"),
                    "Shared_Clean": rollup.get("Shared_Clean")}
            t0 = time.monotonic()
            r = run_quiet([RUNC, "kill", run.cid, "USR1"])
            if r.returncode != 0:
                raise BenchFailure(f"runc kill USR1: {r.stderr.strip()}")

            def flood_done():
                try:
                    with open(run.log_path, "rb") as f:
                        f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
                        return b" F " + MARKER in f.read()
                except FileNotFoundError:
                    return False

            H.poll_until(flood_done, timeout=self.bench.args.timeout, interval=0.02, what="the flood to be logged")
            flood_wall = time.monotonic() - t0
            status = proc_kv(f"/proc/{pid}/status")
            after = {"VmHWM": status["VmHWM"], "VmRSS": status["VmRSS"]}
            H.runc_kill(run.cid)
            run.wait_exit(30)
            cpu = run.monitor_cpu()
            check_stream(k8s_stream(run.log_path), flood.expected(then=MARKER), f"memory flood {mon.name}")
            mb = 1 / 1024
            self.results.add("memory/idle_rss_mb", mon, idle["VmRSS"] * mb, {"idle": idle, "after_flood": after,
                                                                      "flood_wall_s": flood_wall, **cpu})
            self.results.add("memory/idle_pss_mb", mon, idle["Pss"] * mb)
            self.results.add("memory/idle_private_dirty_mb", mon, idle["Private_Dirty"] * mb)
            self.results.add("memory/flood_hwm_mb", mon, after["VmHWM"] * mb)
            self.results.add("memory/flood_rss_after_mb", mon, after["VmRSS"] * mb)
            print(f"    {mon.name:8} idle VmRSS {idle['VmRSS'] * mb:6.2f} MB  Pss {idle['Pss'] * mb:6.2f}  "
                  f"Private_Dirty {idle['Private_Dirty'] * mb:6.2f}  after flood VmHWM {after['VmHWM'] * mb:6.2f} "
                  f"VmRSS {after['VmRSS'] * mb:6.2f}", flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            self.results.fail(f"memory {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                      [r.metric for r in self.rows()])
        finally:
            run.close()

    def rows(self):
        return [
            Row("idle VmRSS (MB)", "memory/idle_rss_mb", "MB", (9.0, "abs")),
            Row("idle Pss (MB)", "memory/idle_pss_mb", "MB"),
            Row("idle Private_Dirty (MB)", "memory/idle_private_dirty_mb", "MB", (3.5, "abs")),
            Row(f"VmHWM after a flood of {self.bench.flood.label} (MB)", "memory/flood_hwm_mb", "MB"),
            Row("VmRSS after the flood (MB)", "memory/flood_rss_after_mb", "MB"),
        ]

    @classmethod
    def method(cls):
        return (
            "**memory**: the monitor daemon of an idle container (`sh` waiting on a `sleep`): VmRSS from "
            "/proc/PID/status, Pss and Private_Dirty from /proc/PID/smaps_rollup; then the container floods "
            "200 MiB in 64 KiB lines (k8s-file) on SIGUSR1 and VmHWM (peak RSS) is read once the flood's "
            "end marker is in the log; the log must hold the whole flood and the marker, byte for byte.")
