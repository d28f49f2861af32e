#!/usr/bin/env python3
"""Soak: one container logging steadily for a long time; the monitor's RSS must stay flat (issue 7).

Not part of the test suite (it takes ten minutes by default)::

    python3 bench/soak.py                      # 10 minutes, the checkout launcher
    python3 bench/soak.py --minutes 2
    python3 bench/soak.py --monitor /usr/bin/conmon --minutes 2   # the same for C conmon

A busybox container under runc, started the way Podman starts a monitor
(tests/support/harness.py, imported by path), writes ``--rate`` lines a
second of 100 bytes (bursts of ``yes | head`` ten times a second), to a
k8s-file log capped by ``--log-size-max`` (so the file is truncated over and
over, as in production), while an attach client reads everything and a
``2 0 0`` reopen goes to the ctl FIFO every ``--reopen`` seconds.  Every
``--interval`` seconds the monitor's VmRSS and open fd count are sampled.

Pass: after ``--warmup`` seconds, the highest RSS sample is less than
``--slack`` (default 2 MiB) above the first sample taken after the warm-up,
and the fd count never changes; the container must still be running at the
end and the monitor must write its exit file once the container is killed.
Exit status 0 on pass, 1 on fail.
"""

from __future__ import annotations

import argparse
import os
import select
import signal
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from support import LAUNCHER  # noqa: E402  (the test bed, by path)
from support.harness import AttachClient, Tracker, container_state, run_monitor, short_tmpdir, write_ctl  # noqa: E402


def status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {name} in /proc/{pid}/status")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def reader(client: AttachClient, stop: threading.Event, counts: list[int]) -> None:
    """Read the attach socket all along (bytes counted, not kept)."""
    while not stop.is_set():
        if not select.select([client.sock], [], [], 0.5)[0]:
            continue
        try:
            data = client.sock.recv(65536)
        except OSError:
            return
        if not data:
            return
        counts[0] += len(data) - 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=10.0, help="how long the container logs (default 10)")
    ap.add_argument("--monitor", default=LAUNCHER, help="monitor binary (default: the checkout launcher)")
    ap.add_argument("--rate", type=int, default=2000, help="lines of 100 bytes per second (default 2000)")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples (default 5)")
    ap.add_argument("--warmup", type=float, default=30.0, help="seconds before the reference sample (default 30)")
    ap.add_argument("--slack", type=int, default=2048, help="allowed RSS growth in KiB (default 2048)")
    ap.add_argument("--log-size-max", type=int, default=8 << 20, help="k8s-file size limit (default 8 MiB)")
    ap.add_argument("--reopen", type=float, default=20.0, help="seconds between ctl reopens (0: none)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("soak: needs root (runc)", file=sys.stderr)
        return 1

    per_burst = max(1, args.rate // 10)
    line = "s" * 99
    script = f"while :; do yes {line} | head -n {per_burst}; usleep 100000; done"
    tracker = Tracker()
    workdir = tracker.add_dir(short_tmpdir("pcm-soak-"))
    stop = threading.Event()
    received = [0]
    samples: list[tuple[float, int, int]] = []
    ok = True
    try:
        m = run_monitor(args.monitor, ["sh", "-c", script], workdir=workdir, style="podman",
                        log_size_max=args.log_size_max, tracker=tracker, start=False)
        if not m.container_pid:
            print(f"soak: the monitor reported no container:\n{m.describe()}", file=sys.stderr)
            return 1
        client = m.attach()
        t = threading.Thread(target=reader, args=(client, stop, received), daemon=True)
        t.start()
        m.start_container()
        print(f"soak: {args.monitor}, pid {m.pid}, container {m.cid[:12]}, {args.rate} lines/s for "
              f"{args.minutes:g} min; sample every {args.interval:g} s, warm-up {args.warmup:g} s")
        print(f"{'t (s)':>8} {'RSS (KiB)':>10} {'fds':>5} {'attach MB':>10}")
        start = time.monotonic()
        end = start + args.minutes * 60
        next_reopen = start + args.reopen if args.reopen > 0 else float("inf")
        while True:
            now = time.monotonic()
            if now >= next_reopen:
                write_ctl(m.bundle, "2 0 0\n")
                next_reopen += args.reopen
            rss = status_field(m.pid, "VmRSS")
            fds = fd_count(m.pid)
            samples.append((now - start, rss, fds))
            print(f"{now - start:8.1f} {rss:10d} {fds:5d} {received[0] / 1e6:10.1f}", flush=True)
            if now >= end:
                break
            time.sleep(min(args.interval, max(0.0, end - time.monotonic())))  # sampling period, not a wait
        state = container_state(m.cid)
        if not state or state["status"] != "running":
            print(f"FAIL: the container is not running at the end: {state}")
            ok = False
        os.kill(m.container_pid, signal.SIGKILL)
        code = m.wait_exit_file(30)
        if code != 137:
            print(f"FAIL: exit file says {code}, expected 137")
            ok = False
    finally:
        stop.set()
        for problem in tracker.cleanup():
            print(f"soak: cleanup: {problem}", file=sys.stderr)

    after = [s for s in samples if s[0] >= args.warmup]
    if len(after) < 2:
        print("FAIL: too few samples after the warm-up (make --minutes longer or --warmup shorter)")
        return 1
    first = after[0][1]
    peak = max(s[1] for s in after)
    low = min(s[1] for s in after)
    fd_set = sorted({s[2] for s in after})
    growth = peak - first
    print(f"RSS after warm-up: first {first} KiB, min {low} KiB, max {peak} KiB, growth {growth} KiB "
          f"(allowed < {args.slack}); fds {fd_set}; attach client got {received[0] / 1e6:.1f} MB")
    if growth >= args.slack:
        print("FAIL: RSS grew")
        ok = False
    if len(fd_set) != 1:
        print("FAIL: the fd count changed")
        ok = False
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
