#!/usr/bin/env python3
"""Benchmark pyconmon against Debian's C conmon (issue 6).  Not part of the test suite.

    make bench                      # 5 rounds (about an hour: journald is slow, see 2)
    make bench ARGS="--quick"       # 1 round, workloads a tenth of the size (~2 min)
    python3 bench/bench.py --rounds 3 --sections k8s-file,create --workloads seq
    python3 bench/bench.py --help

Both monitors run the same busybox containers under runc, alternating
C, pyconmon, C, pyconmon ... for every measurement of every round.  pyconmon
is measured *as installed*: the bench builds it with ``make install
PREFIX=<temp dir> BUILDDIR=<temp dir>/build`` (the ``conmon`` launcher that
embeds the system libpython, and the compiled package; the checkout's own
build/ is not touched) unless ``--pyconmon PATH`` names an installed binary.
Monitors are started exactly as Podman 4.3.1 starts them
(tests/support/harness.py: argv, environment, SEQPACKET socketpairs for
``_OCI_SYNCPIPE``/``_OCI_STARTPIPE``, own process group); the shared test bed
(tests/support) is imported by path.

Results: a table of medians and pyconmon/C ratios (and the issue's targets)
on stdout, all samples in ``bench/results/latest.json`` (git-ignored; a
time-stamped copy next to it), and the table in ``docs/performance.md``
(full runs; ``--quick`` only with ``--docs``).  A run in which any line is
missing or wrong, or anything else fails, is reported loudly, shows as FAILED
in the table and makes the exit status 1.

Method, per metric
------------------

Workloads, generated inside the container by busybox ``sh -c``:

* ``seq``: ``seq 2000000`` -- 2,000,000 short lines (14.9 MB);
* ``100b``: ``yes $(printf %099d 0) | head -c 40000000`` -- 400,000 lines of
  100 bytes (newline included);
* ``64k``: 200 MiB in 3,200 lines of 65,536 bytes: a block of 128 lines is
  written once to the container's /tmp (tmpfs) with ``yes | head``, then
  ``cat`` 25 times (``yes | head`` alone runs at only ~200 MB/s).

``--quick`` divides every count by ten.  Each generator is first run alone on
the host (same busybox) to /dev/null and into a pipe, its output hashed
against the expected output, and its time printed; after the runs the bench
notes any workload whose generator alone takes half the fastest wall time or
more.  busybox ``seq`` is such a case (~0.35 s for 2,000,000 lines, as long as
a monitor needs): its wall times then say "the monitor kept up", not how fast
the monitor could go.  ``--generator file`` makes each output once on the
host and has the container ``cat`` it from a read-only bind mount (on /run),
so that wall times measure the monitors' throughput (the output then arrives
in large writes rather than 4 KiB stdio ones, which also changes the CPU).

1. Monitor CPU seconds (k8s-file, journald, attach): utime+stime of the
   monitor's *own* processes (not cutime/cstime, so neither the runtime nor
   the container is counted).  The bench makes itself a child subreaper
   (``PR_SET_CHILD_SUBREAPER``), so when the first monitor process exits
   after writing the conmon pid file, the daemonised monitor is re-parented
   to the bench; when the monitor exits it stays a zombie until the bench
   reaps it, and a zombie's /proc/PID files still hold its final CPU time.
   So the value is exact, including the drain, the fsync and the exit files,
   with no sampling gap.  ``os.wait4`` is *not* used: its rusage would include
   the monitor's reaped children (runc create and the container process,
   which the monitor reaps as a subreaper itself).  The first process (it
   exits after forking; for pyconmon it pays for interpreter start-up and
   imports) is read the same way, as a zombie child of the bench, and
   added: CPU = first process + daemon.  The figure is the run time in
   /proc/PID/schedstat (ns): the same quantity that /proc/PID/stat's
   utime+stime (fields 14-15) are scaled from, without the 10 ms ticks; it
   covers the main thread only, so the stat figure is used instead whenever
   it is larger (other threads ran).  Both are in the JSON.
   Wall time: from just before ``runc start`` until the exit file
   (``<exit-dir>/<cid>``, watched with inotify) holds an exit code; both
   monitors drain the pipes and fsync the log before writing it, so at that
   moment the last record is in the file.  It includes ``runc start`` itself.
   Check: the whole k8s-file log is parsed (``TIMESTAMP STREAM TAG
   CONTENT``), P pieces joined, and the sha256 of the rebuilt stdout must
   equal that of the expected output, with exactly the expected number of
   lines (F records), no stderr and exit code 0.
2. journald: the same container with ``-l journald`` (journald running
   standalone via tests/support/journald_service.ensure_journald; rows are
   skipped with a note if it cannot start).  Check: after the monitor has
   exited the bench sends a marker entry and waits until journalctl shows it
   (journald reads its socket in order, so everything before is stored), then
   ``journalctl CONTAINER_ID_FULL=<cid> -o json --all`` rebuilds the stream
   (entries with CONTAINER_PARTIAL_MESSAGE=true are joined) and it must hash
   the same.  journald is the bottleneck here (each entry is a datagram, the
   socket queue holds 10; ~20,000 entries/s on this VM) and journalctl reads
   back about as slowly, so the 2,000,000-line run takes minutes per monitor;
   ``--journald-scale N`` divides the journald workloads by N.
   Attach: k8s-file plus one attach client, a separate Python process
   connected to ``<bundle>/attach`` (SOCK_SEQPACKET) before ``runc start``,
   reading with an 8193-byte buffer (``recvmsg_into``, MSG_TRUNC checked)
   until EOF.  Check: the log as above, and the client's stdout bytes must
   hash the same, with no truncated or oversized packet.  A client the
   monitor dropped shows up as missing bytes (and when it saw EOF).
3. Create latency: time from just before spawning the monitor to the
   container pid read from the sync pipe, doing what Podman does in between
   (write the start byte, wait for the first process to exit, read the
   conmon pid file, read the sync pipe).  The container is ``true``; it is
   then started and run to its exit, and the monitor's total CPU for that
   whole short life is reported too.
4. Memory: a container that idles (``sh`` waiting on a ``sleep``; it traps
   SIGUSR1).  After ``runc start`` and ``--settle`` seconds, the monitor
   daemon's VmRSS (/proc/PID/status), Pss and Private_Dirty
   (/proc/PID/smaps_rollup) are read.  Then ``runc kill CID USR1`` makes the
   container flood 200 MiB in 64 KiB lines (k8s-file) and print a marker;
   once the marker is in the log, VmHWM (peak RSS over the monitor's life)
   and VmRSS are read, and the container is killed.
5. End to end: ``podman run --rm busybox true`` and ``podman exec CTR
   true`` (CTR: a ``sleep`` container started by the same monitor), wall
   time of the podman command, with a private Podman store
   (tests/support/podman.py; its containers.conf names the monitor, so the
   exit command uses it too).  One warm-up run each is not counted.

Every figure is the median over rounds (create latency and podman: over all
samples).  The machine is often shared: check ``uptime``; the JSON and the
docs record the load average before and after, and a table taken with a load
of 1 or more is marked as noisy.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import hashlib
import importlib
import importlib.util
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO, "bench", "results")
DOCS = os.path.join(REPO, "docs", "performance.md")
CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
MARK_BEGIN = "<!-- bench:begin (generated by bench/bench.py; edit outside these markers) -->"
MARK_END = "<!-- bench:end -->"


def _load_support():
    """Import tests/support as package ``pcm_bench_support`` (by path: ``tests`` is no package)."""
    path = os.path.join(REPO, "tests", "support")
    name = "pcm_bench_support"
    spec = importlib.util.spec_from_file_location(name, os.path.join(path, "__init__.py"),
                                                  submodule_search_locations=[path])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return (mod, importlib.import_module(name + ".bundle"), importlib.import_module(name + ".harness"),
            importlib.import_module(name + ".journald_service"), importlib.import_module(name + ".podman"))


support, tb_bundle, H, journald_service, tb_podman = _load_support()
C_CONMON = support.C_CONMON
RUNC = support.RUNC
BUSYBOX = support.BUSYBOX

_libc = ctypes.CDLL(None, use_errno=True)


class BenchFailure(Exception):
    """A run that went wrong: missing output, a timeout, a monitor error."""


# --------------------------------------------------------------------------
# workloads


class Workload:
    def __init__(self, key, label, script, lines, line_bytes=None, seq=False):
        self.key = key
        self.label = label
        self.script = script
        self.lines = lines
        self.line_bytes = line_bytes  # fixed line length incl. newline; None for seq
        self.seq = seq
        self.id = f"{key}-{lines}"
        self._expected = None

    def expected_chunks(self):
        if self.seq:
            step = 100000
            for lo in range(1, self.lines + 1, step):
                hi = min(lo + step, self.lines + 1)
                yield ("\n".join(map(str, range(lo, hi))) + "\n").encode()
        else:
            fill = b"0" if self.line_bytes == 100 else b"x"
            line = fill * (self.line_bytes - 1) + b"\n"
            per = max(1, (1 << 20) // len(line))
            left = self.lines
            while left > 0:
                n = min(per, left)
                yield line * n
                left -= n

    def expected(self):
        """(sha256 hex, bytes) of the stdout the container must produce."""
        if self._expected is None:
            h = hashlib.sha256()
            n = 0
            for c in self.expected_chunks():
                h.update(c)
                n += len(c)
            self._expected = (h.hexdigest(), n)
        return self._expected

    @property
    def last_line(self):
        return str(self.lines) if self.seq else None


def make_workloads(scale):
    n_seq = 2_000_000 // scale
    n_100 = 400_000 // scale
    n_64k = 3_200 // scale
    block = next(b for b in (128, 64, 32, 16, 8, 4, 2, 1) if n_64k % b == 0)
    gen64 = ('B=/tmp/pcm-gen.$$; L="$(head -c 65535 /dev/zero | tr "\\0" x)"; '
             f'yes "$L" | head -n {block} >"$B"; '
             f'i=0; while [ $i -lt {n_64k // block} ]; do cat "$B"; i=$((i+1)); done; rm -f "$B"')
    return [
        Workload("seq", f"{n_seq:,} short lines (seq)", f"seq {n_seq}", n_seq, seq=True),
        Workload("100b", f"{n_100:,} lines of 100 B", f"yes $(printf %099d 0) | head -c {n_100 * 100}",
                 n_100, line_bytes=100),
        Workload("64k", f"{n_64k * 64 // 1024} MiB in 64 KiB lines", gen64, n_64k, line_bytes=65536),
    ]


# --------------------------------------------------------------------------
# small system helpers


def set_subreaper(on):
    if _libc.prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(e)}")


def proc_stat(pid):
    """(state, cpu seconds = utime+stime of the process itself) from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    rest = data[data.rindex(b")") + 2:].split()
    return rest[0].decode(), (int(rest[11]) + int(rest[12])) / CLK_TCK


def proc_schedstat_ns(pid):
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_kv(path):
    """``Key: value kB`` lines -> {key: int kB} (non-numeric values skipped)."""
    out = {}
    with open(path) as f:
        for line in f:
            k, _, v = line.partition(":")
            parts = v.split()
            if parts and parts[0].isdigit():
                out[k.strip()] = int(parts[0])
    return out


def zombie_cpu(pid, pidfd, timeout):
    """Wait until our child ``pid`` has exited (still unreaped); return (cpu s, schedstat ns)."""
    if not select.select([pidfd], [], [], timeout)[0]:
        raise BenchFailure(f"process {pid} still running after {timeout}s")
    state, cpu = proc_stat(pid)
    if state not in ("Z", "X"):
        # pidfd readiness and the zombie state are set together; be safe anyway
        deadline = time.monotonic() + 2
        while state not in ("Z", "X") and time.monotonic() < deadline:
            time.sleep(0.001)
            state, cpu = proc_stat(pid)
    return cpu, proc_schedstat_ns(pid)


def reap(pid):
    try:
        os.waitpid(pid, 0)
        return True
    except ChildProcessError:
        return False


class DirWatch:
    """inotify on one directory (via libc), to wake up as soon as a file lands there."""

    IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x8, 0x80, 0x100

    def __init__(self, path):
        self.fd = _libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or _libc.inotify_add_watch(
                self.fd, os.fsencode(path), self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), f"inotify on {path}")

    def wait(self, cond, timeout):
        """Return cond()'s first truthy value; BenchFailure after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            v = cond()
            if v:
                return v
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchFailure(f"timed out after {timeout}s")
            if select.select([self.fd], [], [], min(left, 0.05))[0]:
                try:
                    os.read(self.fd, 65536)
                except BlockingIOError:
                    pass

    def close(self):
        os.close(self.fd)


def exit_code_in(path):
    v = H.read_exit_file(path)
    return None if v is None else (v,)


def run_quiet(argv, timeout=60, **kw):
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)


# --------------------------------------------------------------------------
# checking what arrived


def k8s_stream(path):
    """Rebuild the container's streams from a k8s-file log: (stdout sha256, stdout bytes,
    stdout lines (F records), records, P records, stderr bytes, last stdout line, malformed)."""
    h = hashlib.sha256()
    out_bytes = lines = records = partial = err_bytes = malformed = 0
    last = b""
    cur = []  # pieces of the current stdout line
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            buf = tail + chunk
            parts = buf.split(b"\n")
            tail = parts.pop()
            for ln in parts:
                records += 1
                fields = ln.split(b" ", 3)
                if len(fields) < 3:
                    malformed += 1
                    continue
                content = fields[3] if len(fields) == 4 else b""
                tag = fields[2].split(b":")[0]
                if fields[1] == b"stdout":
                    if tag == b"F":
                        lines += 1
                        h.update(content)
                        h.update(b"\n")
                        out_bytes += len(content) + 1
                        last = (b"".join(cur) + content) if cur else content
                        cur = []
                    elif tag == b"P":
                        partial += 1
                        h.update(content)
                        out_bytes += len(content)
                        if len(content) < 64:
                            cur.append(content)
                    else:
                        malformed += 1
                else:
                    err_bytes += len(content)
    if tail:
        malformed += 1  # a record without its newline
    return {"sha256": h.hexdigest(), "bytes": out_bytes, "lines": lines, "records": records,
            "partial_records": partial, "stderr_bytes": err_bytes, "last_line": last.decode(errors="replace"),
            "malformed": malformed}


def journal_barrier(timeout=120):
    """Wait until journald has stored everything sent to it so far.

    journald reads its socket in order, so once an entry we send now can be
    read back, every entry the monitor sent before exiting has been stored.
    """
    token = f"pcmbench{os.getpid()}x{time.monotonic_ns()}"
    journald_service.send_native({"MESSAGE": "pyconmon bench barrier", "PYCONMON_BENCH_BARRIER": token})
    journald_service.journal_entries({"PYCONMON_BENCH_BARRIER": token}, timeout=timeout)


def journal_stream(cid, timeout=600):
    """Rebuild stdout from the journal entries of container ``cid`` (as k8s_stream)."""
    argv = ["journalctl", f"CONTAINER_ID_FULL={cid}", "-o", "json", "--all", "--no-pager", "-q",
            "--output-fields=MESSAGE,CONTAINER_PARTIAL_MESSAGE,PRIORITY"]
    h = hashlib.sha256()
    out_bytes = lines = records = partial = err_bytes = malformed = 0
    last = b""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for raw in p.stdout:
            e = json.loads(raw)
            records += 1
            msg = e.get("MESSAGE")
            if isinstance(msg, list):
                msg = bytes(msg) if all(isinstance(x, int) for x in msg) else None
            elif isinstance(msg, str):
                msg = msg.encode("utf-8", "surrogateescape")
            if msg is None:
                malformed += 1
                continue
            if e.get("PRIORITY") != "6":
                err_bytes += len(msg)
                continue
            if e.get("CONTAINER_PARTIAL_MESSAGE") == "true":
                partial += 1
                h.update(msg)
                out_bytes += len(msg)
            else:
                if msg.endswith(b"\n"):
                    msg = msg[:-1]
                lines += 1
                h.update(msg + b"\n")
                out_bytes += len(msg) + 1
                last = msg
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return {"sha256": h.hexdigest(), "bytes": out_bytes, "lines": lines, "records": records,
            "partial_records": partial, "stderr_bytes": err_bytes,
            "last_line": last[-64:].decode(errors="replace"), "malformed": malformed}


def check_stream(got, wl):
    sha, nbytes = wl.expected()
    problems = []
    if got["lines"] != wl.lines:
        problems.append(f"{got['lines']:,} of {wl.lines:,} lines")
    if got["bytes"] != nbytes:
        problems.append(f"{got['bytes']:,} of {nbytes:,} bytes")
    if got["sha256"] != sha:
        problems.append("content differs from the expected output")
    if wl.last_line is not None and got["last_line"] != wl.last_line:
        problems.append(f"last line {got['last_line']!r}, expected {wl.last_line!r}")
    if got.get("stderr_bytes"):
        problems.append(f"{got['stderr_bytes']} bytes on stderr")
    if got.get("malformed"):
        problems.append(f"{got['malformed']} malformed records")
    if problems:
        raise BenchFailure("; ".join(problems))


ATTACH_CLIENT = r"""
import hashlib, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_PATH)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/proc/self/fd/%d" % fd)
os.close(fd)
sys.stdout.write("ready\n")
sys.stdout.flush()
buf = bytearray(8193)
mv = memoryview(buf)
h = hashlib.sha256()
out = err = packets = biggest = other = trunc = 0
recv = s.recvmsg_into
while True:
    try:
        n, _, flags, _ = recv([buf])
    except ConnectionResetError:
        break
    if n == 0:
        break
    packets += 1
    if n > biggest:
        biggest = n
    if flags & socket.MSG_TRUNC:
        trunc += 1
    if buf[0] == 2:
        h.update(mv[1:n])
        out += n - 1
    elif buf[0] == 3:
        err += n - 1
    else:
        other += 1
print(json.dumps({"sha256": h.hexdigest(), "bytes": out, "stderr_bytes": err, "packets": packets,
                  "max_packet": biggest, "truncated": trunc, "other": other, "eof_at": time.monotonic()}))
"""


class AttachReader:
    """The attach client as a separate process (so it doesn't share the bench's CPU time or GIL)."""

    def __init__(self, path, timeout=10):
        self.p = subprocess.Popen([sys.executable, "-I", "-S", "-c", ATTACH_CLIENT, path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if not select.select([self.p.stdout], [], [], timeout)[0] or self.p.stdout.readline() != b"ready\n":
            self.p.kill()
            raise BenchFailure(f"attach client did not connect: {self.p.stderr.read().decode()[-500:]}")

    def result(self, timeout=60):
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            raise BenchFailure(f"attach client still reading {timeout}s after the monitor exited") from None
        if self.p.returncode != 0:
            raise BenchFailure(f"attach client failed: {err.decode()[-500:]}")
        return json.loads(out)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()


# --------------------------------------------------------------------------
# one monitor run


class Run:
    """One container under one monitor: bundle, Podman-style create, pid files, clean-up."""

    def __init__(self, bench, mon, args, log_driver="k8s", bundle_edit=None):
        self.bench = bench
        self.mon = mon
        self.work = tempfile.mkdtemp(prefix=f"{mon.name[:2]}-", dir=bench.workroot)
        self.cid = H.new_cid()
        self.bundle = tb_bundle.make_bundle(os.path.join(self.work, "bundle"), args, rootfs=bench.rootfs,
                                            edit=bundle_edit)
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
        self.watch = DirWatch(exits)
        t0 = time.monotonic()
        self.m = H.run_monitor(self.mon.path, bundle=self.bundle, workdir=self.work, cid=self.cid,
                               name=f"bench-{self.cid[:8]}", log_driver=self.log_driver, wait=False,
                               deadline=deadline)
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

    def monitor_cpu(self, timeout=30):
        """Wait for the monitor to exit; return its CPU (first process + daemon) and reap it."""
        cpu, sched = zombie_cpu(self.daemon_pid, self.daemon_pidfd, timeout)
        reap(self.daemon_pid)
        os.close(self.daemon_pidfd)
        self.daemon_pidfd = None
        stat_s = cpu + self.first_cpu
        sched_s = None if sched is None or self.first_sched is None else (sched + self.first_sched) / 1e9
        # schedstat is the run time that stat's utime+stime are scaled from, in ns instead of 10 ms
        # ticks, but of the main thread only: use it unless stat shows more (other threads ran)
        precise = sched_s is not None and stat_s <= sched_s + 2.5 / CLK_TCK + 0.05 * sched_s
        return {"cpu_s": sched_s if precise else stat_s, "cpu_source": "schedstat" if precise else "stat",
                "stat_cpu_s": stat_s, "sched_cpu_s": sched_s, "cpu_daemon_stat_s": cpu,
                "cpu_first_stat_s": self.first_cpu,
                "cpu_first_s": self.first_sched / 1e9 if precise else self.first_cpu}

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
        if not self.bench.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)


# --------------------------------------------------------------------------
# the benchmark


class Monitor:
    def __init__(self, name, label, path):
        self.name, self.label, self.path = name, label, path


class Bench:
    def __init__(self, args):
        self.args = args
        self.scale = 10 if args.quick else 1
        self.rounds = 1 if args.quick and not args.rounds_given else args.rounds
        all_wl = make_workloads(self.scale)
        self.workloads = [w for w in all_wl if w.key in args.workloads]
        if args.journald_scale > 1:
            self.jworkloads = [w for w in make_workloads(self.scale * args.journald_scale)
                               if w.key in args.workloads]
        else:
            self.jworkloads = self.workloads
        self.flood = all_wl[2]  # the memory section's flood, whatever --workloads says
        self.samples = {}  # metric -> monitor -> [values]
        self.extra = {}  # metric -> monitor -> [dicts] (details per run)
        self.failures = []
        self.failed_runs = {}  # (metric, monitor name) -> failed runs
        self.notes = []
        self.monitors = []
        self.workroot = None
        self.rootfs = None
        self.generator = {}
        self.t_start = time.time()

    # -- bookkeeping --------------------------------------------------------

    def add(self, metric, mon, value, detail=None):
        self.samples.setdefault(metric, {}).setdefault(mon.name, []).append(value)
        if detail is not None:
            self.extra.setdefault(metric, {}).setdefault(mon.name, []).append(detail)

    def fail(self, what, err, mon=None, metrics=()):
        msg = f"{what}: {err}"
        self.failures.append(msg)
        for metric in metrics:
            key = (metric, mon.name)
            self.failed_runs[key] = self.failed_runs.get(key, 0) + 1
        print(f"\n!!!!! FAILURE !!!!! {msg}\n", flush=True)

    def note(self, msg):
        self.notes.append(msg)
        print(f"NOTE: {msg}", flush=True)

    # -- set-up -------------------------------------------------------------

    def build_pyconmon(self):
        if self.args.pyconmon:
            return os.path.abspath(self.args.pyconmon)
        prefix = os.path.join(self.workroot, "prefix")
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        r = run_quiet(["make", "-C", REPO, "install", f"PREFIX={prefix}",
                       f"BUILDDIR={os.path.join(self.workroot, 'build')}"], timeout=300, env=env)
        if r.returncode != 0:
            raise SystemExit(f"building pyconmon failed:\n{r.stdout}\n{r.stderr}")
        return os.path.join(prefix, "bin", "conmon")

    def setup(self):
        self.workroot = tempfile.mkdtemp(prefix="pcm-bench-", dir=self.args.workdir)
        self.gendir = os.path.join(self.workroot, "gen")
        os.makedirs(self.gendir)
        py = self.build_pyconmon()
        for path in (C_CONMON, py):
            r = run_quiet([path, "--version"])
            if r.returncode != 0:
                raise SystemExit(f"{path} --version failed: {r.stderr}")
        self.monitors = [Monitor("conmon", "C conmon", C_CONMON), Monitor("pyconmon", "pyconmon", py)]
        print(f"monitors: C {C_CONMON}; pyconmon {py} (installed form)")
        self.rootfs = tb_bundle.make_rootfs()
        set_subreaper(True)

    def machine(self):
        def first(cmd):
            try:
                r = run_quiet(cmd, timeout=30)
                return (r.stdout or r.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                return None

        cpu = None
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        mem = proc_kv("/proc/meminfo").get("MemTotal", 0)
        osname = None
        try:
            with open("/etc/os-release") as f:
                osname = re.search(r'^PRETTY_NAME="?([^"\n]*)', f.read(), re.M).group(1)
        except (OSError, AttributeError):
            pass
        fstype = None
        target = os.path.realpath(self.workroot)
        best = ""
        with open("/proc/mounts") as f:
            for line in f:
                _dev, mp, typ = line.split()[:3]
                if (target == mp or target.startswith(mp.rstrip("/") + "/")) and len(mp) >= len(best):
                    best, fstype = mp, typ
        return {
            "host": platform.node(), "os": osname, "kernel": platform.release(), "cpu": cpu,
            "cpus": os.cpu_count(), "mem_gib": round(mem / 1048576, 1),
            "cgroup": "v2" if os.path.exists("/sys/fs/cgroup/cgroup.controllers") else "v1",
            "runc": first([RUNC, "--version"]), "conmon": first([C_CONMON, "--version"]),
            "pyconmon": " / ".join(run_quiet([self.monitors[1].path, "--version"]).stdout.split("\n")[:3:2]),
            "python_embedded": first(["/usr/bin/python3", "--version"]),
            "pyconmon_tree": self.tree_version(),
            "podman": first([tb_podman.PODMAN, "--version"]),
            "busybox": (first([BUSYBOX]) or "").replace(" multi-call binary.", ""),
            "log_dir_fs": f"{fstype} ({best})", "bench_python": sys.version.split()[0],
        }

    @staticmethod
    def tree_version():
        """The commit measured, with ``+changes`` when the working tree differs from it."""
        try:
            rev = run_quiet(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]).stdout.strip()
            dirty = run_quiet(["git", "-C", REPO, "status", "--porcelain", "--", "src", "launcher", "Makefile"]).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        return rev + ("+changes" if dirty.strip() else "") if rev else None

    def time_generators(self):
        """Each generator alone, on the host with the same busybox: to /dev/null and into a pipe."""
        print("\ngenerators alone (host busybox; median of 3):")
        todo = {}
        for wl in self.workloads + (self.jworkloads if "journald" in self.args.sections else []):
            todo.setdefault(wl.id, wl)
        for wl in todo.values():
            walls, cpus = [], []
            for _ in range(3):
                t0 = time.monotonic()
                r0 = os.times()
                subprocess.run([BUSYBOX, "sh", "-c", wl.script], stdout=subprocess.DEVNULL, check=True)
                r1 = os.times()
                walls.append(time.monotonic() - t0)
                cpus.append((r1.children_user - r0.children_user) + (r1.children_system - r0.children_system))
            # into a pipe, read and hashed by us: also checks the generator's output
            # (and, with --generator file, keeps it for the containers to cat)
            out = None
            if self.args.generator == "file":
                out = open(os.path.join(self.gendir, f"{wl.id}.txt"), "wb")
            t0 = time.monotonic()
            p = subprocess.Popen([BUSYBOX, "sh", "-c", wl.script], stdout=subprocess.PIPE)
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
            sha, nbytes = wl.expected()
            if (h.hexdigest(), n) != (sha, nbytes):
                raise SystemExit(f"generator {wl.key} produced {n} bytes that don't match the expected output "
                                 f"({nbytes} bytes): the bench is broken")
            self.generator[wl.id] = {"devnull_wall_s": statistics.median(walls),
                                      "devnull_cpu_s": statistics.median(cpus), "pipe_wall_s": pipe_wall,
                                      "bytes": nbytes, "script": wl.script, "mode": self.args.generator,
                                     "label": wl.label}
            how = "`cat` of the pre-generated file" if out is not None else "generator"
            print(f"  {wl.key:5} {wl.label:34} {nbytes / 1e6:7.1f} MB  to /dev/null {statistics.median(walls):.3f} s "
                  f"wall ({statistics.median(cpus):.3f} s CPU); {how} into a pipe {pipe_wall:.3f} s", flush=True)

    # -- sections -----------------------------------------------------------

    def logging_run(self, mon, wl, mode):
        """k8s-file / journald / attach: monitor CPU and wall time for one workload."""
        timeout = self.args.timeout
        if self.args.generator == "file":
            gendir = self.gendir

            def edit(spec):
                spec["mounts"].append({"destination": "/run", "type": "bind", "source": gendir,
                                       "options": ["rbind", "ro", "nosuid", "nodev"]})

            args, bundle_edit = ["cat", f"/run/{wl.id}.txt"], edit
        else:
            args, bundle_edit = ["sh", "-c", wl.script], None
        run = Run(self, mon, args, log_driver="journald" if mode == "journald" else "k8s", bundle_edit=bundle_edit)
        client = None
        try:
            run.create()
            if mode == "attach":
                client = AttachReader(run.m.attach_path)
            t0 = run.start()
            t1, code = run.wait_exit(timeout)
            cpu = run.monitor_cpu()
            wall = t1 - t0
            if code != 0:
                raise BenchFailure(f"container exit code {code}")
            tv = time.monotonic()
            if mode == "journald":
                journal_barrier()
                got = journal_stream(run.cid)
            else:
                got = k8s_stream(run.log_path)
            check_stream(got, wl)
            verify_s = time.monotonic() - tv
            detail = dict(cpu, wall_s=wall, records=got["records"], partial_records=got["partial_records"],
                          cid=run.cid, verify_s=verify_s)
            if client is not None:
                a = client.result()
                client = None
                detail["attach"] = a
                sha, nbytes = wl.expected()
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
            self.add(f"{mode}/{wl.key}/cpu_s", mon, cpu["cpu_s"], detail)
            self.add(f"{mode}/{wl.key}/wall_s", mon, wall)
            extra = f"  attach {detail['attach']['packets']} packets" if "attach" in detail else ""
            print(f"    {mon.name:8} CPU {cpu['cpu_s']:7.3f} s (stat {cpu['stat_cpu_s']:.2f}; "
                  f"start-up {cpu['cpu_first_s']:.3f})  "
                  f"wall {wall:7.3f} s  {got['records']:,} records{extra}  ok (checked in {verify_s:.1f} s)",
                  flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, AssertionError) as e:
            self.fail(f"{mode} {wl.key} {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                      (f"{mode}/{wl.key}/cpu_s", f"{mode}/{wl.key}/wall_s"))
        finally:
            if client is not None:
                client.kill()
            run.close()

    def create_run(self, mon):
        run = Run(self, mon, ["true"])
        try:
            latency = run.create()
            run.start()
            _, code = run.wait_exit(30)
            cpu = run.monitor_cpu()
            if code != 0:
                raise BenchFailure(f"`true` exited {code}")
            self.add("create/latency_ms", mon, latency * 1000)
            self.add("create/cpu_ms", mon, cpu["cpu_s"] * 1000, cpu)
            return latency, cpu
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, AssertionError) as e:
            self.fail(f"create {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                      ("create/latency_ms", "create/cpu_ms"))
            return None, None
        finally:
            run.close()

    def memory_run(self, mon):
        flood = self.flood
        # idle: sh waits on a sleep; SIGUSR1 (trapped) ends the wait, then the flood and a marker
        script = f'trap : USR1; sleep 1000000 & p=$!; wait $p; {flood.script}; echo FLOOD-DONE; wait $p'
        run = Run(self, mon, ["sh", "-c", script])
        try:
            run.create()
            run.start()
            time.sleep(self.args.settle)
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
                        return b" F FLOOD-DONE\n" in f.read()
                except FileNotFoundError:
                    return False

            H.poll_until(flood_done, timeout=self.args.timeout, interval=0.02, what="the flood to be logged")
            flood_wall = time.monotonic() - t0
            status = proc_kv(f"/proc/{pid}/status")
            after = {"VmHWM": status["VmHWM"], "VmRSS": status["VmRSS"]}
            H._runc(["kill", run.cid, "KILL"])
            run.wait_exit(30)
            cpu = run.monitor_cpu()
            got = k8s_stream(run.log_path)
            if got["lines"] != flood.lines + 1:
                raise BenchFailure(f"memory flood {mon.name}: {got['lines']:,} of {flood.lines + 1:,} lines logged")
            mb = 1 / 1024
            self.add("memory/idle_rss_mb", mon, idle["VmRSS"] * mb, {"idle": idle, "after_flood": after,
                                                                      "flood_wall_s": flood_wall, **cpu})
            self.add("memory/idle_pss_mb", mon, idle["Pss"] * mb)
            self.add("memory/idle_private_dirty_mb", mon, idle["Private_Dirty"] * mb)
            self.add("memory/flood_hwm_mb", mon, after["VmHWM"] * mb)
            self.add("memory/flood_rss_after_mb", mon, after["VmRSS"] * mb)
            print(f"    {mon.name:8} idle VmRSS {idle['VmRSS'] * mb:6.2f} MB  Pss {idle['Pss'] * mb:6.2f}  "
                  f"Private_Dirty {idle['Private_Dirty'] * mb:6.2f}  after flood VmHWM {after['VmHWM'] * mb:6.2f} "
                  f"VmRSS {after['VmRSS'] * mb:6.2f}", flush=True)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError, KeyError) as e:
            self.fail(f"memory {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                      [m for m in self.metric_names() if m.startswith("memory/")])
        finally:
            run.close()

    # -- podman -------------------------------------------------------------

    def podman_setup(self):
        set_subreaper(False)  # podman's monitors must not end up as our zombies
        self.pd = tb_podman.Podman(base=tempfile.mkdtemp(prefix="pd-", dir=self.workroot),
                                   default_conmon=C_CONMON).setup(rootfs=self.rootfs)
        self.pd_ctrs = {}
        for mon in self.monitors:
            self.pd.check_monitor(mon.path)
            r = self.pd("run", "--rm", "busybox", "true", conmon=mon.path, timeout=120)  # warm-up
            if r.returncode != 0:
                raise BenchFailure(f"podman run with {mon.name}: {r.stderr.strip()[-500:]}")
            r = self.pd("run", "-d", "--name", f"bench-{mon.name}", "busybox", "sleep", "1000000",
                        conmon=mon.path, timeout=120)
            if r.returncode != 0:
                raise BenchFailure(f"podman run -d with {mon.name}: {r.stderr.strip()[-500:]}")
            self.pd_ctrs[mon.name] = r.stdout.strip()
            r = self.pd("exec", self.pd_ctrs[mon.name], "true", conmon=mon.path, timeout=120)  # warm-up
            if r.returncode != 0:
                raise BenchFailure(f"podman exec with {mon.name}: {r.stderr.strip()[-500:]}")

    def podman_teardown(self):
        pd = getattr(self, "pd", None)
        if pd is not None:
            for p in pd.teardown():
                print(f"  (podman teardown: {p})")
            self.pd = None
        set_subreaper(True)

    def podman_run(self, mon, what):
        if what == "run":
            args = ("run", "--rm", "busybox", "true")
        else:
            args = ("exec", self.pd_ctrs[mon.name], "true")
        argv = self.pd.argv(*args, conmon=mon.path)
        env = self.pd.env(mon.path)
        t0 = time.monotonic()
        r = subprocess.run(argv, env=env, cwd=self.pd.base, stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=120)
        wall = time.monotonic() - t0
        if r.returncode != 0:
            self.fail(f"podman {what} {mon.name}", f"exit {r.returncode}: {r.stderr.decode()[-500:]}", mon,
                      (f"podman/{what}_ms",))
            return
        self.add(f"podman/{what}_ms", mon, wall * 1000)
        print(f"    {mon.name:8} podman {what:4} {wall * 1000:7.1f} ms", flush=True)

    # -- driver -------------------------------------------------------------

    def run(self):
        args = self.args
        sections = args.sections
        self.setup()
        load0 = os.getloadavg()
        print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
              + ("  (the machine is busy: figures will be noisy)" if load0[0] >= 1 else ""))
        print(f"rounds: {self.rounds}; workloads: " + ", ".join(w.label for w in self.workloads)
              + ("" if self.jworkloads is self.workloads else
                 "; journald: " + ", ".join(w.label for w in self.jworkloads)))
        if "journald" in sections:
            reason = journald_service.unavailable_reason()
            if reason is None:
                try:
                    journald_service.ensure_journald()
                except (RuntimeError, OSError, TimeoutError, subprocess.SubprocessError) as e:
                    reason = f"could not start journald: {e}"
            if reason:
                self.note(f"journald rows skipped: {reason}")
                sections = [s for s in sections if s != "journald"]
        if any(s in sections for s in ("k8s-file", "journald", "attach")):
            self.time_generators()
        podman_ok = "podman" in sections
        self.machine_info = self.machine()
        try:
            for rnd in range(self.rounds):
                print(f"\n=== round {rnd + 1}/{self.rounds} ===", flush=True)
                for mode in ("k8s-file", "journald", "attach"):
                    if mode not in sections:
                        continue
                    for wl in (self.jworkloads if mode == "journald" else self.workloads):
                        print(f"  {mode}: {wl.label}", flush=True)
                        for mon in self.monitors:
                            self.logging_run(mon, wl, mode)
                if "create" in sections:
                    print(f"  create latency ({args.create_samples} samples per monitor)", flush=True)
                    lat = {m.name: [] for m in self.monitors}
                    for _ in range(args.create_samples):
                        for mon in self.monitors:
                            latency, _ = self.create_run(mon)
                            if latency is not None:
                                lat[mon.name].append(latency * 1000)
                    for mon in self.monitors:
                        if lat[mon.name]:
                            print(f"    {mon.name:8} median {statistics.median(lat[mon.name]):7.1f} ms "
                                  f"(min {min(lat[mon.name]):.1f}, max {max(lat[mon.name]):.1f})", flush=True)
                if "memory" in sections:
                    print("  memory: idle, then a flood of " + self.flood.label, flush=True)
                    for mon in self.monitors:
                        self.memory_run(mon)
                if podman_ok:
                    try:
                        if rnd == 0:
                            print("  podman: private store set-up and warm-up", flush=True)
                            self.podman_setup()
                        else:
                            set_subreaper(False)
                        print(f"  podman run --rm / exec ({args.podman_samples} each per monitor)", flush=True)
                        for _ in range(args.podman_samples):
                            for mon in self.monitors:
                                self.podman_run(mon, "run")
                        for _ in range(args.podman_samples):
                            for mon in self.monitors:
                                self.podman_run(mon, "exec")
                        set_subreaper(True)
                    except (BenchFailure, RuntimeError, OSError, subprocess.SubprocessError) as e:
                        self.fail("podman", e)
                        podman_ok = False
                        self.podman_teardown()
        finally:
            self.podman_teardown()
            if not args.keep:
                shutil.rmtree(self.workroot, ignore_errors=True)
            else:
                print(f"kept {self.workroot}")
        load1 = os.getloadavg()
        return load0, load1

    # -- reporting ----------------------------------------------------------

    def rows(self):
        """(section title, [(label, metric, unit, target)])."""
        out = []
        for mode, title in (("k8s-file", "k8s-file"), ("journald", "journald"),
                            ("attach", "k8s-file + attach client")):
            rows = []
            for wl in (self.jworkloads if mode == "journald" else self.workloads):
                cpu_target = (1.0, "ratio") if mode == "k8s-file" else None
                wall_target = (1.05, "ratio") if mode == "k8s-file" else None
                rows.append((f"{wl.label}: monitor CPU (s)", f"{mode}/{wl.key}/cpu_s", "s", cpu_target))
                rows.append((f"{wl.label}: wall, start to exit file (s)", f"{mode}/{wl.key}/wall_s", "s", wall_target))
            out.append((title, rows))
        out.append(("create", [
            ("create latency: spawn to pid on sync pipe (ms)", "create/latency_ms", "ms", (25.0, "plus")),
            ("monitor CPU for a whole `true` container (ms)", "create/cpu_ms", "ms", None)]))
        out.append(("memory", [
            ("idle VmRSS (MB)", "memory/idle_rss_mb", "MB", (9.0, "abs")),
            ("idle Pss (MB)", "memory/idle_pss_mb", "MB", None),
            ("idle Private_Dirty (MB)", "memory/idle_private_dirty_mb", "MB", (3.5, "abs")),
            (f"VmHWM after a flood of {self.flood.label} (MB)", "memory/flood_hwm_mb", "MB", None),
            ("VmRSS after the flood (MB)", "memory/flood_rss_after_mb", "MB", None)]))
        out.append(("podman end to end", [
            ("`podman run --rm busybox true` (ms)", "podman/run_ms", "ms", (1.10, "ratio")),
            ("`podman exec CTR true` (ms)", "podman/exec_ms", "ms", (1.10, "ratio"))]))
        return out

    def check_generators(self, summ):
        """Note a workload whose generator alone takes half the logging wall time or more."""
        for wl in self.workloads:
            gen = self.generator.get(wl.id)
            walls = [summ.get(f"k8s-file/{wl.key}/wall_s", {}).get(n) for n in ("conmon", "pyconmon")]
            walls = [w for w in walls if w]
            if not gen or not walls:
                continue
            share = gen["pipe_wall_s"] / min(walls)
            gen["share_of_fastest_k8s_wall"] = share
            print(f"generator {wl.key}: {gen['pipe_wall_s']:.3f} s into a pipe = {share:.0%} of the fastest "
                  f"k8s-file wall time")
            if share >= 0.5:
                self.note(f"the {wl.key} generator alone takes {share:.0%} of the fastest k8s-file wall time: "
                          "wall times of that workload measure the generator as much as the monitors")

    def metric_names(self):
        return [metric for _, rows in self.rows() for _, metric, _, _ in rows]

    def summary(self):
        summ = {}
        for metric, per in self.samples.items():
            c = per.get("conmon")
            p = per.get("pyconmon")
            mc = statistics.median(c) if c else None
            mp = statistics.median(p) if p else None
            summ[metric] = {"conmon": mc, "pyconmon": mp,
                            "ratio": (mp / mc) if mc and mp is not None else None,
                            "n": {"conmon": len(c or []), "pyconmon": len(p or [])}}
        return summ

    @staticmethod
    def _fmt(v, unit):
        if v is None:
            return "-"
        if unit == "s":
            return f"{v:.3f}" if v < 10 else f"{v:.2f}"
        if unit == "MB":
            return f"{v:.2f}"
        return f"{v:.1f}"

    def table(self, summ):
        lines = ["| metric | C conmon | pyconmon | pyconmon / C | target |", "|---|---:|---:|---:|---|"]
        for title, rows in self.rows():
            present = [r for r in rows if r[1] in summ or any(k[0] == r[1] for k in self.failed_runs)]
            if not present:
                continue
            lines.append(f"| **{title}** | | | | |")
            for label, metric, unit, target in present:
                s = summ.get(metric) or {"conmon": None, "pyconmon": None, "ratio": None}
                cells = []
                for name in ("conmon", "pyconmon"):
                    cell = self._fmt(s[name], unit)
                    bad = self.failed_runs.get((metric, name), 0)
                    if bad:
                        cell = "FAILED" if s[name] is None else f"{cell} ({bad} run(s) FAILED)"
                    cells.append(cell)
                ratio = "-" if s["ratio"] is None else f"{s['ratio']:.2f}"
                tgt = ""
                if target is not None and s["pyconmon"] is not None:
                    val, kind = target
                    if kind == "ratio" and s["ratio"] is not None:
                        ok = s["ratio"] <= val
                        tgt = f"<= {val:.2f} x: {'met' if ok else 'NOT met'}"
                    elif kind == "plus" and s["conmon"] is not None:
                        ok = s["pyconmon"] <= s["conmon"] + val
                        tgt = f"<= C + {val:g} {unit}: {'met' if ok else 'NOT met'}"
                    elif kind == "abs":
                        ok = s["pyconmon"] <= val
                        tgt = f"<= {val:g} {unit}: {'met' if ok else 'NOT met'}"
                lines.append(f"| {label} | {cells[0]} | {cells[1]} | {ratio} | {tgt} |")
        return "\n".join(lines)

    def write_json(self, summ, machine, loads):
        os.makedirs(RESULTS_DIR, exist_ok=True)
        data = {
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "duration_s": round(time.time() - self.t_start, 1),
            "quick": self.args.quick, "rounds": self.rounds, "sections": self.args.sections,
            "generator_mode": self.args.generator,
            "machine": machine, "load_start": loads[0], "load_end": loads[1],
            "monitors": {m.name: m.path for m in self.monitors},
            "workloads": {mode: {w.key: {"label": w.label, "script": w.script, "lines": w.lines,
                                         "bytes": w.expected()[1], "sha256": w.expected()[0]} for w in wls}
                          for mode, wls in (("k8s-file", self.workloads), ("attach", self.workloads),
                                            ("journald", self.jworkloads))},
            "generator": self.generator, "summary": summ, "samples": self.samples, "details": self.extra,
            "failures": self.failures, "notes": self.notes,
            "failed_runs": {f"{m} {n}": c for (m, n), c in self.failed_runs.items()},
        }
        path = os.path.join(RESULTS_DIR, "latest.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, path)
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        shutil.copyfile(path, os.path.join(RESULTS_DIR, f"{stamp}{'-quick' if self.args.quick else ''}.json"))
        return path

    def write_docs(self, table, machine, loads):
        m = machine
        date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        kind = "quick run (`--quick`: workloads / 10)" if self.args.quick else "full run"
        if self.args.generator == "file":
            kind += ", `--generator file` (containers cat pre-generated output)"
        gen = "; ".join(f"{v['label']} {v['devnull_wall_s']:.2f} s (into a pipe {v['pipe_wall_s']:.2f} s)"
                        for v in self.generator.values())
        block = [
            MARK_BEGIN,
            f"Latest results: {date}, {kind}, {self.rounds} round(s), medians. "
            f"Load average {loads[0][0]:.2f} at start, {loads[1][0]:.2f} at end"
            + (" (the machine was busy: treat these figures as noisy)." if max(loads[0][0], loads[1][0]) >= 1 else "."),
            "",
            f"Machine: {m['cpu']}, {m['cpus']} CPUs, {m['mem_gib']} GiB, {m['os']}, kernel {m['kernel']}, "
            f"cgroup {m['cgroup']}; logs on {m['log_dir_fs']}. {m['runc']}; {m['conmon']} (/usr/bin/conmon); "
            f"pyconmon installed form ({m['pyconmon']}, tree {m['pyconmon_tree']}, embedded "
            f"{m['python_embedded']}); {m['podman']}; "
            f"{m['busybox']}.",
            "",
            table,
            "",
            f"Generators alone to /dev/null: {gen}." if gen else "",
            "",
        ]
        if self.failures:
            block += [f"**{len(self.failures)} run(s) FAILED** (see bench/results/latest.json):", ""]
            block += [f"- {f}" for f in self.failures] + [""]
        if self.notes:
            block += [f"Note: {n}" for n in self.notes] + [""]
        block.append(MARK_END)
        text = "\n".join(block)
        if os.path.exists(DOCS):
            with open(DOCS) as f:
                doc = f.read()
            if MARK_BEGIN in doc and MARK_END in doc:
                head, rest = doc.split(MARK_BEGIN, 1)
                _, tail = rest.split(MARK_END, 1)
                doc = head + text + tail
            else:
                doc = doc.rstrip("\n") + "\n\n" + text + "\n"
        else:
            doc = DOC_TEMPLATE.replace("@TABLE@", text)
        os.makedirs(os.path.dirname(DOCS), exist_ok=True)
        with open(DOCS, "w") as f:
            f.write(doc)
        return DOCS


DOC_TEMPLATE = """\
# Performance: pyconmon against C conmon

`make bench` (5 rounds, about an hour) or `make bench ARGS="--quick"` (1
round, workloads a tenth of the size, a few minutes; `python3 bench/bench.py
--help` for the rest) runs the same busybox containers under runc through
Debian's C conmon (`/usr/bin/conmon`) and through pyconmon as installed
(`make install` into a temporary prefix), alternating C, pyconmon, C,
pyconmon for every measurement, and reports medians and pyconmon/C ratios
next to the targets of issue 6. All samples go to
`bench/results/latest.json`. Every run checks that every line arrived (the
whole log is parsed and its content hashed against the expected output); a
run with missing or wrong output is shown as FAILED and fails the benchmark.
The method is described in detail in the docstring of `bench/bench.py`.

## Latest results

@TABLE@

## Method

- **Workloads**, generated in the container by busybox `sh -c`:
  `seq 2000000`; `yes $(printf %099d 0) | head -c 40000000` (400,000 lines
  of 100 bytes); 200 MiB in 3,200 lines of 64 KiB (a 128-line block written
  to the container's tmpfs /tmp, then `cat` 25 times). Each generator is
  also timed alone; busybox `seq` takes about as long as a monitor needs, so
  for `seq` the wall time says "the monitor kept up" rather than how fast it
  can go. `--generator file` has the containers `cat` pre-generated output
  instead, to measure the monitors' throughput.
- **Monitor CPU**: user+system run time of the monitor's own processes,
  never of its children (runc, the container). The bench is a child
  subreaper, so the daemonised monitor is re-parented to it and, after
  exiting, stays a zombie whose /proc files still hold the final figures:
  exact, drain, fsync and exit files included. Read from
  /proc/PID/schedstat (ns; the run time that /proc/PID/stat's utime+stime
  are scaled from, in 10 ms ticks; both are in the JSON). The first monitor
  process (the one that forks and exits; for pyconmon it pays for
  interpreter start-up and imports) is read the same way and added.
- **Wall time**: from just before `runc start` until the exit file holds
  the exit code (inotify on the exit dir). Both monitors drain and fsync the
  log before writing it, so the last record is in the file by then.
- **journald**: `-l journald`; checked by rebuilding the stream from
  `journalctl CONTAINER_ID_FULL=<cid> -o json --all` once a marker entry
  sent after the monitor exited is visible. journald (one datagram per
  entry, a 10-datagram socket queue, about 20,000 entries/s here) is the
  bottleneck, so wall times say more about journald than about the monitors;
  `--journald-scale N` makes these workloads N times smaller.
- **attach**: k8s-file plus a SEQPACKET client (a separate Python process)
  connected to `<bundle>/attach` before `runc start`, reading with an
  8193-byte buffer until EOF; its bytes are hashed and checked too.
- **Create latency**: from spawning the monitor (Podman's argv, environment
  and socketpairs) to the container pid on the sync pipe, doing what Podman
  does in between (start byte, wait for the first process, read the conmon
  pid file, read the sync pipe). Container: `true`; the monitor's CPU for
  that container's whole life is reported too.
- **Memory**: the monitor daemon of an idle container (`sh` waiting on a
  `sleep`): VmRSS from /proc/PID/status, Pss and Private_Dirty from
  /proc/PID/smaps_rollup; then the container floods 200 MiB in 64 KiB lines
  (k8s-file) on SIGUSR1 and VmHWM (peak RSS) is read once the flood is in
  the log.
- **podman**: wall time of `podman run --rm busybox true` and `podman exec
  CTR true` with a private store (tests/support/podman.py) whose
  containers.conf names the monitor; one warm-up each is not counted.

## Reading the table

- The machine is usually shared: the load average at start and end is
  recorded, and a table taken under load is marked as noisy. Ratios of
  `--quick` runs are dominated by start-up costs and `runc start`.
- C conmon never loses output: it blocks on a full journald queue and on a
  slow attach client, stalling the container. pyconmon deliberately does
  not: it drops log lines when journald takes nothing for 50 ms, and
  disconnects an attach client that falls 4 MiB behind. On a loaded 2-core
  machine both happen, and the bench reports them as failed runs (missing
  lines / bytes), because the output did not arrive.
"""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 5; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="1 round, workloads a tenth of the size")
    ap.add_argument("--sections", default="k8s-file,journald,attach,create,memory,podman",
                    help="comma-separated subset of k8s-file,journald,attach,create,memory,podman")
    ap.add_argument("--workloads", default="seq,100b,64k", help="comma-separated subset of seq,100b,64k")
    ap.add_argument("--generator", choices=("shell", "file"), default="shell",
                    help="shell: the container runs the busybox generator (default); file: the generator's output "
                         "is made once on the host and the container cats it from a read-only bind mount, so that "
                         "wall times measure the monitors' throughput rather than the generator")
    ap.add_argument("--journald-scale", type=int, default=1,
                    help="divide the journald workloads by this much more (journald itself takes ~50 us an entry "
                         "to store and journalctl as long to read back: 2,000,000 lines cost minutes per run)")
    ap.add_argument("--create-samples", type=int, default=5, help="create-latency samples per monitor per round")
    ap.add_argument("--podman-samples", type=int, default=3, help="podman run/exec samples per monitor per round")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds an idle container runs before memory is read")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one logging run may take")
    ap.add_argument("--pyconmon", help="an installed pyconmon `conmon` binary to use instead of building one")
    ap.add_argument("--workdir", default="/tmp", help="where bundles and logs go (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep bundles and logs")
    docs = ap.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true", help="update docs/performance.md even with --quick")
    docs.add_argument("--no-docs", action="store_true", help="don't update docs/performance.md")
    args = ap.parse_args(argv)
    args.rounds_given = args.rounds is not None
    if args.rounds is None:
        args.rounds = 5
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.journald_scale < 1:
        ap.error("--journald-scale must be at least 1")
    known = ["k8s-file", "journald", "attach", "create", "memory", "podman"]
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in known]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {known}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in ("seq", "100b", "64k") for w in args.workloads):
        ap.error("--workloads: choose from seq,100b,64k")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if os.geteuid() != 0:
        raise SystemExit("the benchmark runs containers with runc: run it as root")
    bench = Bench(args)
    try:
        loads = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    summ = bench.summary()
    bench.check_generators(summ)
    machine = bench.machine_info
    table = bench.table(summ)
    print("\n" + table + "\n")
    path = bench.write_json(summ, machine, loads)
    print(f"results: {path}")
    if args.docs or (not args.quick and not args.no_docs):
        print(f"table:   {bench.write_docs(table, machine, loads)}")
    if bench.failures:
        print(f"\n!!!!! {len(bench.failures)} FAILURE(S) !!!!!")
        for f in bench.failures:
            print(f"  - {f}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailure as e:
        traceback.print_exc()
        sys.exit(f"benchmark failed: {e}")
