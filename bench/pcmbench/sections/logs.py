"""Logging throughput: k8s-file, journald, and k8s-file with an attach client.

Each workload (workloads.py) runs under both monitors each round.  Figures:
monitor CPU (first process + daemon, read as zombies, never the runtime or
the container) and wall time from just before ``runc start`` until the exit
file holds the exit code (both monitors drain and fsync the log before
writing it).  Every run is checked byte for byte (verify.py); a run with a
missing or wrong line is a failure, not a figure.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import time

from ..container import Monitor, Run
from ..system import BUSYBOX, BenchFailure, journald_service, proc_stat
from ..verify import AttachReader, check_stream, journal_barrier, journal_stream, k8s_stream
from . import Row, Section, register


def time_generators(bench, workloads):
    """Each generator alone, on the host with the same busybox: to /dev/null and into a pipe."""
    print("\ngenerators alone (host busybox; median of 3):")
    todo = {}
    for wl in workloads:
        todo.setdefault(wl.id, wl)
    for wl in todo.values():
        walls, cpus = [], []
        for _ in range(3):
            t0 = time.monotonic()
            r0 = os.times()
            subprocess.run([BUSYBOX, "sh", "-c", wl.script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           check=True)
            r1 = os.times()
            walls.append(time.monotonic() - t0)
            cpus.append((r1.children_user - r0.children_user) + (r1.children_system - r0.children_system))
        # into a pipe, read and hashed by us: also checks the generator's output
        # (and, with --generator file, keeps it for the containers to cat)
        out = None
        if bench.args.generator == "file" and wl.stderr is None:
            out = open(os.path.join(bench.gendir, f"{wl.id}.txt"), "wb")
        t0 = time.monotonic()
        p = subprocess.Popen([BUSYBOX, "sh", "-c", wl.script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        h = hashlib.sha256()
        n = 0
        while True:
            b = p.stdout.read(1 << 20)
            if not b:
                break
            h.update(b)
            n += len(b)
            if out is not None:
                out.write(b)
        p.wait()
        pipe_wall = time.monotonic() - t0
        if out is not None:
            out.close()
            t0 = time.monotonic()
            p = subprocess.Popen([BUSYBOX, "cat", out.name], stdout=subprocess.PIPE)
            while p.stdout.read(1 << 20):
                pass
            p.wait()
            pipe_wall = time.monotonic() - t0
        sha, nbytes = wl.expected()[:2]
        if (h.hexdigest(), n) != (sha, nbytes):
            raise SystemExit(f"generator {wl.key} produced {n} bytes that don't match the expected output "
                             f"({nbytes} bytes): the bench is broken")
        bench.generator[wl.id] = {"devnull_wall_s": statistics.median(walls),
                                  "devnull_cpu_s": statistics.median(cpus), "pipe_wall_s": pipe_wall,
                                  "bytes": nbytes, "script": wl.script, "mode": bench.args.generator,
                                 "label": wl.label}
        how = "`cat` of the pre-generated file" if out is not None else "generator"
        print(f"  {wl.key:5} {wl.label:34} {nbytes / 1e6:7.1f} MB  to /dev/null {statistics.median(walls):.3f} s "
              f"wall ({statistics.median(cpus):.3f} s CPU); {how} into a pipe {pipe_wall:.3f} s", flush=True)


class LoggingSection(Section):
    """With ``pair_server``, also C conmon against pyconmon in server mode (the density section's
    install, the default mode), in pairs of their own (metrics ``..._server``), while an idle served
    container keeps the server up, so that the server's start-up is not one run's cost; where the
    stub cannot be built, only C and classic."""

    cpu_target = None
    wall_target = None
    pair_server = False
    served = None
    keeper = None

    def workloads(self):
        return self.bench.workloads

    def setup(self):
        todo = [w for w in self.workloads() if w.id not in self.bench.generator]
        if todo:
            time_generators(self.bench, todo)
        from .density import no_static_libc, server_mode_install  # not at the top: table order is import order
        if not self.pair_server or no_static_libc() is not None:
            return
        prefix = server_mode_install(self.bench)
        self.server_libdir = os.path.join(prefix, "lib", "pyconmon")
        self.served = Monitor("pyconmon", "pyconmon server mode", os.path.join(prefix, "bin", "conmon"))
        self.keeper = Run(self.bench, self.served, ["sleep", "100000"])
        self.keeper.create()
        self.keeper.start()

    def teardown(self):
        """The keeper ends, and the server with it: later sections (density) measure a fresh one,
        not one whose heap grew with this section's floods."""
        if self.keeper is None:
            return
        self.keeper.close()
        self.keeper = None
        from .density import stop_servers
        stop_servers(self.server_libdir)

    def the_server(self):
        """(pid, utime+stime in s) of the one server of the server-mode install."""
        from .density import server_pids
        pids = server_pids(self.server_libdir)
        if len(pids) != 1:
            raise BenchFailure(f"expected one pyconmon server, found {pids}")
        return pids[0], proc_stat(pids[0])[1]

    def run_round(self, rnd):
        for wl in self.workloads():
            print(f"  {self.name}: {wl.label}", flush=True)
            for mon in self.order(f"{self.name}/{wl.key}"):
                self.logging_run(mon, wl)
            if self.served is not None:
                for mon in self.results.order(f"{self.name}/{wl.key}/server", [self.bench.monitors[0], self.served]):
                    self.logging_run(mon, wl, "_server")

    def rows(self):
        out = []
        for wl in self.workloads():
            out.append(Row(f"{wl.label}: monitor CPU (s)", f"{self.name}/{wl.key}/cpu_s", "s", self.cpu_target))
            out.append(Row(f"{wl.label}: wall, start to exit file (s)", f"{self.name}/{wl.key}/wall_s", "s",
                           self.wall_target))
        if self.served is not None or any(m.startswith(f"{self.name}/") and m.endswith("_server")
                                          for m in self.results.samples):
            for wl in self.workloads():
                out.append(Row(f"{wl.label}: monitor CPU, pyconmon in server mode (s)",
                               f"{self.name}/{wl.key}/cpu_s_server", "s", self.cpu_target))
                out.append(Row(f"{wl.label}: wall, server mode (s)", f"{self.name}/{wl.key}/wall_s_server", "s"))
        return out

    def logging_run(self, mon, wl, suffix=""):
        """Monitor CPU and wall time for one workload under one monitor (metrics ``.../cpu_s<suffix>``).

        A monitor labelled "server mode" (``self.server_libdir`` set) is the stub plus the shared
        server: the server's utime+stime gained over the run is added to the stub's CPU."""
        mode = self.name
        bench = self.bench
        served = mon.label.endswith("server mode")
        server, server_cpu0 = None, 0.0
        timeout = bench.args.timeout
        if bench.args.generator == "file" and wl.stderr is None:  # a file is one stream
            gendir = bench.gendir

            def edit(spec):
                spec["mounts"].append({"destination": "/run", "type": "bind", "source": gendir,
                                       "options": ["rbind", "ro", "nosuid", "nodev"]})

            args, bundle_edit = ["cat", f"/run/{wl.id}.txt"], edit
        else:
            args, bundle_edit = ["sh", "-c", wl.script], None
        run = Run(bench, mon, args, log_driver="journald" if mode == "journald" else "k8s", bundle_edit=bundle_edit)
        client = None
        try:
            if served:
                server, server_cpu0 = self.the_server()
            run.create()
            if served:
                exe = os.readlink(f"/proc/{run.daemon_pid}/exe")
                if exe != os.path.realpath(mon.path):
                    raise BenchFailure(f"container {run.cid[:12]} not in server mode (monitor runs {exe})")
            if mode == "attach":
                client = AttachReader(run.m.attach_path)
            t0 = run.start()
            t1, code = run.wait_exit(timeout)
            cpu = run.monitor_cpu()
            if served:
                server_cpu1 = self.the_server()[1]
                if self.the_server()[0] != server:
                    raise BenchFailure(f"the pyconmon server {server} went away during the run")
                cpu["server_cpu_s"] = server_cpu1 - server_cpu0
                cpu["cpu_s"] += cpu["server_cpu_s"]
            wall = t1 - t0
            if code != 0:
                raise BenchFailure(f"container exit code {code}")
            tv = time.monotonic()
            if mode == "journald":
                journal_barrier()
                got = journal_stream(run.cid)
            else:
                got = k8s_stream(run.log_path)
            check_stream(got, wl.expected(), stderr=wl.stderr and wl.stderr.expected())
            verify_s = time.monotonic() - tv
            detail = dict(cpu, wall_s=wall, records=got["records"], partial_records=got["partial_records"],
                          cid=run.cid, verify_s=verify_s)
            if client is not None:
                a = client.result()
                client = None
                detail["attach"] = a
                sha, nbytes = wl.expected()[:2]
                bad = []
                if a["bytes"] != nbytes or a["sha256"] != sha:
                    bad.append(f"attach client got {a['bytes']:,} of {nbytes:,} bytes"
                               + ("" if a["sha256"] == sha or a["bytes"] != nbytes else " (content differs)")
                               + f"; it saw EOF {t1 - a['eof_at']:.3f} s before the exit file appeared"
                               + f" ({t1 - t0:.3f} s after runc start)")
                if a["truncated"] or a["max_packet"] > 8193:
                    bad.append(f"{a['truncated']} truncated packets (max {a['max_packet']} bytes)")
                if a["stderr_bytes"] or a["other"]:
                    bad.append(f"unexpected packets: {a['stderr_bytes']} stderr bytes, {a['other']} unknown")
                if bad:
                    raise BenchFailure("; ".join(bad))
            self.results.add(f"{mode}/{wl.key}/cpu_s{suffix}", mon, cpu["cpu_s"], detail)
            self.results.add(f"{mode}/{wl.key}/wall_s{suffix}", mon, wall)
            extra = f"  attach {detail['attach']['packets']} packets" if "attach" in detail else ""
            if cpu.get("voluntary_ctxt_switches") is not None:
                extra += f"  {cpu['voluntary_ctxt_switches']:,} sleeps"
            if served:
                extra += f"  (server {cpu['server_cpu_s']:.2f} s)"
            name = "server" if served else mon.name
            print(f"    {name:8} CPU {cpu['cpu_s']:7.3f} s (stat {cpu['stat_cpu_s']:.2f}; "
                  f"start-up {cpu['cpu_first_s']:.3f})  "
                  f"wall {wall:7.3f} s  {got['records']:,} records{extra}  ok (checked in {verify_s:.1f} s)",
                  flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, AssertionError) as e:
            self.results.fail(f"{mode} {wl.key} {mon.label}", e if isinstance(e, BenchFailure) else repr(e), mon,
                              (f"{mode}/{wl.key}/cpu_s{suffix}", f"{mode}/{wl.key}/wall_s{suffix}"))
        finally:
            if client is not None:
                client.kill()
            run.close()


@register
class K8sFile(LoggingSection):
    name = "k8s-file"
    title = "k8s-file"
    cpu_target = (1.0, "ratio")
    wall_target = (1.05, "ratio")
    pair_server = True

    def after(self, summary):
        """Note a workload whose generator alone takes half the logging wall time or more."""
        for wl in self.workloads():
            gen = self.bench.generator.get(wl.id)
            walls = [summary.get(f"k8s-file/{wl.key}/wall_s", {}).get(n) for n in ("conmon", "pyconmon")]
            walls = [w for w in walls if w]
            if not gen or not walls:
                continue
            share = gen["pipe_wall_s"] / min(walls)
            gen["share_of_fastest_k8s_wall"] = share
            if share >= 0.5:
                self.results.note(f"the {wl.key} generator alone takes {share:.0%} of the fastest k8s-file wall "
                                  "time: wall times of that workload measure the generator as much as the monitors")

    @classmethod
    def method(cls):
        return (
            "**k8s-file**: each workload, generated in the container by busybox `sh -c` (full size; "
            "`--quick` divides every count by ten: `seq 2000000`; "
            "`yes $(printf %099d 0) | head -c 40000000`, 400,000 lines of 100 bytes; 200 MiB in 3,200 lines "
            "of 64 KiB, a 128-line block written to the container's tmpfs /tmp, then `cat` 25 times). "
            "Monitor CPU: user+system run time of the monitor's own processes, never of its children "
            "(runc, the container): the bench is a child subreaper, so the daemonised monitor is "
            "re-parented to it and, after exiting, stays a zombie whose /proc files still hold the final "
            "figures (drain, fsync and exit files included); read from /proc/PID/schedstat (ns; "
            "/proc/PID/stat's 10 ms ticks are in the JSON too); the first monitor process (the one that "
            "forks and exits; for pyconmon it pays for interpreter start-up and imports) is added. "
            "Wall time: from just before `runc start` until the exit file holds the exit code (inotify), "
            "by which time both monitors have drained and fsynced the log. Check: the whole log is "
            "parsed, partial records joined, and the content hashed against the expected output. Each "
            "generator is also timed alone; busybox `seq` takes about as long as a monitor needs, so for "
            "`seq` the wall time says \"the monitor kept up\" rather than how fast it can go "
            "(`--generator file` has the containers `cat` pre-generated output instead). "
            "k8s-file and journald also pair C conmon with pyconmon in server mode (the default; rows "
            "saying so): the stub's CPU plus the shared server's utime+stime gained over the run "
            "(/proc/PID/stat, 10 ms ticks), while an idle served container keeps the server up.")


@register
class Journald(LoggingSection):
    name = "journald"
    title = "journald"
    cpu_target = (1.0, "ratio")  # issue 13
    pair_server = True

    def workloads(self):
        return self.bench.jworkloads

    def unavailable(self):
        reason = journald_service.unavailable_reason()
        if reason is None:
            try:
                journald_service.ensure_journald()
            except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as e:
                reason = f"could not start journald: {e}"
        return reason

    @classmethod
    def method(cls):
        return (
            "**journald**: containers like the ones above with `-l journald` (journald started standalone), "
            "with workloads of their own, smaller sizes: `seq 200000`; 100,000 lines of 100 bytes; "
            "`seq 100000` on stdout and on stderr at once (`seq 100000 >&2 & seq 100000; wait`); 20 MiB in "
            "64 KiB lines (`--journald-scale N` divides them by N). Checked by rebuilding both streams from "
            "`journalctl CONTAINER_ID_FULL=<cid> -o json --all` (PRIORITY 6 stdout, 3 stderr) once a marker "
            "entry sent after the monitor exited is visible. journald (one datagram per entry, a "
            "10-datagram socket queue, some 30,000 entries/s here) is the bottleneck: both monitors "
            "mostly wait for it, so their CPU is mostly the cost of that waiting, and wall times say more "
            "about journald than about the monitors.")


@register
class Attach(LoggingSection):
    name = "attach"
    title = "k8s-file + attach client"

    @classmethod
    def method(cls):
        return (
            "**attach**: k8s-file plus a SEQPACKET client (a separate Python process) connected to "
            "`<bundle>/attach` before `runc start`, reading with an 8193-byte buffer until EOF; its bytes "
            "are hashed and checked too.")
