"""Latency: what the monitors add between a write and its arrival, including pyconmon's read pacing.

pyconmon pauses reading a pipe or pty for ``stdio.PACE_S`` after a read
shorter than ``stdio.PACE_BELOW`` (so small writes gather into large reads).
That pause can delay a write that comes right after a read; these figures
show by how much, for both monitors.  Two patterns each:

- isolated: one write, then an idle gap (``GAP_S``) before the next;
- back to back: the next write as soon as the previous one has arrived (it
  lands inside the pause that followed the previous read).

Measurements:

- write to log record: the container runs ``cat`` on a FIFO bind-mounted
  from the host; the bench writes a line into the FIFO and waits (inotify,
  IN_MODIFY) until the k8s-file log holds its record;
- tty echo round trip: the container runs ``cat`` on a terminal (``-t``); an
  attach client sends one keystroke and waits for the terminal's echo to
  come back over the attach socket.
"""

from __future__ import annotations

import os
import select
import statistics
import subprocess
import tempfile
import time

from ..container import Run
from ..system import RUNC, BenchFailure, H, Inotify, run_quiet
from . import Row, Section, register

GAP_S = 0.01  # idle time before an isolated write: longer than any read pause
TIMEOUT_S = 10.0
PATTERNS = (("isolated", "isolated"), ("b2b", "back to back"))


def fifo_reader(bench, mon):
    """(Run, FIFO path): a container that ``cat``s a FIFO bind-mounted from the host."""
    fifo_dir = tempfile.mkdtemp(prefix="fifo-", dir=bench.workroot)
    fifo = os.path.join(fifo_dir, "in")
    os.mkfifo(fifo)

    def edit(spec):
        spec["mounts"].append({"destination": "/run/pcm", "type": "bind", "source": fifo_dir,
                               "options": ["rbind", "ro", "nosuid", "nodev"]})

    return Run(bench, mon, ["cat", "/run/pcm/in"], bundle_edit=edit), fifo


def _ms(values):
    return [v * 1000 for v in values]


@register
class Latency(Section):
    name = "latency"
    title = "latency (pyconmon's read pacing included)"

    def run_round(self, rnd):
        n = self.bench.args.latency_samples
        print(f"  latency: write to record, tty echo ({n} samples per pattern per monitor)", flush=True)
        for mon in self.order("latency/record"):
            self.measure(mon, "record", self.record_run, n)
        for mon in self.order("latency/echo"):
            self.measure(mon, "echo", self.echo_run, n)

    def measure(self, mon, what, fn, n):
        metrics = [f"latency/{what}_{key}_ms" for key, _ in PATTERNS]
        try:
            samples = fn(mon, n)
        except (BenchFailure, TimeoutError, OSError, subprocess.SubprocessError, ValueError) as e:
            self.results.fail(f"latency {what} {mon.name}", e if isinstance(e, BenchFailure) else repr(e), mon,
                              metrics)
            return
        line = []
        for (key, _), metric in zip(PATTERNS, metrics, strict=True):
            ms = _ms(samples[key])
            q = statistics.quantiles(ms, n=10) if len(ms) > 1 else ms * 9
            self.results.add(metric, mon, statistics.median(ms),
                             {"samples_ms": ms, "p90_ms": q[-1], "max_ms": max(ms)})
            line.append(f"{key} median {statistics.median(ms):.3f} ms (p90 {q[-1]:.3f}, max {max(ms):.3f})")
        print(f"    {mon.name:8} {what:6} " + "; ".join(line), flush=True)

    # -- write to log record ---------------------------------------------------------------------------

    def record_run(self, mon, n):
        run, fifo = fifo_reader(self.bench, mon)
        wfd = None
        watch = None
        try:
            run.create()
            wfd = os.open(fifo, os.O_RDWR | os.O_CLOEXEC)  # never blocks; cat sees no EOF meanwhile
            watch = Inotify(run.log_path, Inotify.IN_MODIFY)
            log = open(run.log_path, "rb")  # closed below
            run.start()
            out = {}
            seq = 0
            try:
                for key, _ in PATTERNS:
                    out[key] = []
                    for _ in range(n):
                        seq += 1
                        token = b" F L%07d\n" % seq
                        if key == "isolated":
                            time.sleep(GAP_S)  # the idle gap is the pattern, not a wait for a condition
                        t0 = time.monotonic()
                        os.write(wfd, token[3:])
                        self._await_record(log, watch, token)
                        out[key].append(time.monotonic() - t0)
            finally:
                log.close()
            return out
        finally:
            if watch is not None:
                watch.close()
            if wfd is not None:
                os.close(wfd)
            self._stop(run)

    @staticmethod
    def _await_record(log, watch, token):
        """Read the log as it grows until ``token`` (the end of a record) is in it."""
        deadline = time.monotonic() + TIMEOUT_S
        tail = b""
        while True:
            data = log.read()
            if data:
                tail = tail[-len(token):] + data
                if token in tail:
                    return
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchFailure(f"no log record {token.strip()!r} within {TIMEOUT_S} s")
            if select.select([watch.fd], [], [], left)[0]:
                try:
                    os.read(watch.fd, 65536)
                except BlockingIOError:
                    pass

    # -- tty echo ------------------------------------------------------------------------------------

    def echo_run(self, mon, n):
        run = Run(self.bench, mon, ["cat"], terminal=True)
        client = None
        try:
            run.create()
            run.start()
            client = H.AttachClient(run.m.attach_path)
            out = {}
            keys = b"abcdefghijklmnopqrstuvwxyz"
            i = 0
            for key, _ in PATTERNS:
                out[key] = []
                for _ in range(n):
                    ch = keys[i % len(keys):i % len(keys) + 1]
                    i += 1
                    if key == "isolated":
                        time.sleep(GAP_S)  # the idle gap is the pattern, not a wait for a condition
                    t0 = time.monotonic()
                    client.send(ch)
                    got = b""
                    while ch not in got:
                        pkt = client.recv(TIMEOUT_S)
                        if pkt is None:
                            raise BenchFailure("attach socket closed while waiting for the echo")
                        if pkt[0] == 2:
                            got += pkt[1]
                    out[key].append(time.monotonic() - t0)
                    if got != ch:
                        raise BenchFailure(f"echo of {ch!r} came back as {got!r}")
            return out
        finally:
            if client is not None:
                client.close()
            self._stop(run)

    @staticmethod
    def _stop(run):
        try:
            if run.m is not None and run.daemon_pid:
                run_quiet([RUNC, "kill", run.cid, "KILL"])
                run.wait_exit(30)
                run.monitor_cpu()
        finally:
            run.close()

    def rows(self):
        rows = []
        for what, label in (("record", "write to log record"), ("echo", "tty echo round trip")):
            for key, pattern in PATTERNS:
                rows.append(Row(f"{label}, {pattern} (ms)", f"latency/{what}_{key}_ms", "ms"))
        return rows

    @classmethod
    def method(cls):
        from pyconmon.stdio import PACE_BELOW, PACE_S
        return (
            f"**latency**: pyconmon pauses reading a pipe or terminal for {PACE_S * 1000:g} ms after a read "
            f"shorter than {PACE_BELOW // 1024} KiB, so that small writes gather into large reads; these rows "
            "show what that costs next to C conmon, which reads at once. *Write to log record*: the "
            "container `cat`s a FIFO bind-mounted from the host; the bench writes a line into it and waits "
            "(inotify) until the k8s-file log holds its record. *tty echo round trip*: the container runs "
            "`cat` on a terminal (`-t`); an attach client sends one keystroke and waits for the terminal's "
            f"echo. *Isolated*: {GAP_S * 1000:g} ms idle before each write; *back to back*: the next write "
            "as soon as the previous one arrived, so it falls into the pause after the previous read. "
            "Medians of all samples; the JSON has every sample.")
