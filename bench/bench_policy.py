#!/usr/bin/env python3
"""Monitor CPU with and without pyconmon.toml features (issue 14), on the log workloads.

    python3 bench/bench_policy.py                 # 3 rounds, workloads at half size
    python3 bench/bench_policy.py --quick         # 2 rounds, a tenth of the size
    python3 bench/bench_policy.py --rounds 5 --scale 1 --json out.json

Self-contained (only tests/support is shared): it installs pyconmon into a
temporary prefix (``make podman PREFIX=...``, the configuration file's path is
fixed by that build) and runs each workload under each variant, alternating
the order every round:

* ``default``: no configuration file (what every caller gets today);
* ``idle-drop``/``idle-block``: ``log.rate = "100G"``: a limit that never
  triggers, with each policy (the claim: it costs nothing measurable);
* ``metrics``: ``metrics.dir`` set, ``interval = 5``;
* ``buffer``: ``log.buffer = "64M"`` (the writer thread);
* ``drop-1M``: a real limit, 1 MiB/s ``drop`` (most of the output discarded).

A container is started the way Podman starts it (tests/support/harness.py);
the monitor's CPU is its first process (read as a zombie from
/proc/PID/schedstat, ns) plus the daemon (reaped by this process, a child
subreaper, with ``wait4``: user + system of all its threads).  Every variant
but ``drop-1M`` must log every line (checked).  Prints medians per variant and
workload, and the difference to ``default``.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))

from support.bundle import make_rootfs  # noqa: E402
from support.harness import cleanup, run_monitor  # noqa: E402

PR_SET_CHILD_SUBREAPER = 36
VARIANTS = {
    "default": None,
    "idle-drop": '[log]\nrate = "100G"\npolicy = "drop"\n',
    "idle-block": '[log]\nrate = "100G"\npolicy = "block"\n',
    "metrics": '[metrics]\ndir = "{work}/metrics"\ninterval = 5\n',
    "buffer": '[log]\nbuffer = "64M"\n',
    "drop-1M": '[log]\nrate = "1M"\npolicy = "drop"\n',
}


def workloads(scale: int) -> list[tuple[str, str, int]]:
    """(key, script, stdout lines) as in bench/bench.py: short lines, 100-byte lines, 64 KiB lines."""
    n_seq, n_100, n_64k = 2_000_000 // scale, 400_000 // scale, 3_200 // scale
    gen64 = ('B=/tmp/gen.$$; L="$(head -c 65535 /dev/zero | tr "\\0" x)"; yes "$L" | head -n 16 >"$B"; '
             f'i=0; while [ $i -lt {n_64k // 16} ]; do cat "$B"; i=$((i+1)); done; rm -f "$B"')
    return [("seq", f"seq {n_seq}", n_seq),
            ("100b", f"yes $(printf %099d 0) | head -c {n_100 * 100}", n_100),
            ("64k", gen64, n_64k // 16 * 16)]


def install(work: str) -> tuple[str, str]:
    prefix = os.path.join(work, "prefix")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX")}
    for target in ("all", "podman"):
        subprocess.run(["make", "-s", "-C", REPO, f"BUILDDIR={work}/build", f"PREFIX={prefix}", "ENTRY=classic",
                        target], env=env, check=True, capture_output=True, timeout=600)
    conf = os.path.join(prefix, "etc", "pyconmon", "pyconmon.toml")
    os.makedirs(os.path.dirname(conf), exist_ok=True)
    return os.path.join(prefix, "libexec", "podman", "conmon"), conf


def zombie_schedstat_s(pid: int, timeout: float = 60) -> float:
    """CPU seconds of ``pid`` (single-threaded) once it has exited, before it is reaped."""
    fd = os.pidfd_open(pid)
    try:
        if not select.select([fd], [], [], timeout)[0]:
            raise TimeoutError(f"pid {pid} did not exit")
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    finally:
        os.close(fd)


def stdout_lines(path: str) -> int:
    """Complete stdout lines in a k8s-file log."""
    n = 0
    with open(path, "rb") as f:
        for record in f:
            n += b" stdout F " in record[:60]
    return n


def one_run(conmon: str, script: str, work: str) -> tuple[float, str]:
    m = run_monitor(conmon, ["sh", "-c", script], workdir=work, wait=False)
    first = zombie_schedstat_s(m.first_pid)
    m.wait_first(30)
    m.read_conmon_pidfile()
    m.sync_msg = m.read_sync(30)
    daemon = m.pid
    try:
        m.start_container()
        _, _, usage = os.wait4(daemon, 0)  # the monitor exits after the container: all its CPU
    finally:
        cleanup(m.cid)
    return first + usage.ru_utime + usage.ru_stime, m.log_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--scale", type=int, default=2, help="divide the workload sizes by this (default 2)")
    ap.add_argument("--quick", action="store_true", help="2 rounds, scale 10")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--json", help="write the raw figures here")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.scale = 2, 10
    variants = [v.strip() for v in args.variants.split(",") if v.strip() in VARIANTS]
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")
    make_rootfs()
    base = tempfile.mkdtemp(prefix="pcm-policy-bench-")
    try:
        conmon, conf = install(base)
        loads = workloads(args.scale)
        cpu: dict[tuple[str, str], list[float]] = {}
        for rnd in range(args.rounds):
            order = variants if rnd % 2 == 0 else variants[::-1]
            for key, script, lines in loads:
                for variant in order:
                    work = tempfile.mkdtemp(dir=base)
                    text = VARIANTS[variant]
                    if text is None:
                        if os.path.exists(conf):
                            os.unlink(conf)
                    else:
                        with open(conf, "w") as f:
                            f.write(text.format(work=work))
                    seconds, log = one_run(conmon, script, work)
                    got = stdout_lines(log)
                    if variant != "drop-1M" and got != lines:
                        raise SystemExit(f"{variant}/{key}: {got} of {lines} lines logged")
                    cpu.setdefault((variant, key), []).append(seconds)
                    print(f"round {rnd + 1} {key:>4} {variant:<10} {seconds * 1000:8.1f} ms  ({got} lines)",
                          flush=True)
                    shutil.rmtree(work, ignore_errors=True)
        print(f"\nmonitor CPU, median of {args.rounds} rounds (scale 1/{args.scale}), ms; "
              "difference to default in brackets")
        print(f"{'variant':<11}" + "".join(f"{k:>20}" for k, _, _ in loads))
        for variant in variants:
            cells = []
            for key, _, _ in loads:
                med = statistics.median(cpu[(variant, key)])
                ref = statistics.median(cpu[("default", key)]) if ("default", key) in cpu else med
                cells.append(f"{med * 1000:9.1f} ({(med - ref) / ref * 100:+5.1f} %)")
            print(f"{variant:<11}" + "".join(f"{c:>20}" for c in cells))
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"rounds": args.rounds, "scale": args.scale, "when": time.strftime("%Y-%m-%d %H:%M"),
                           "cpu_s": {f"{v}/{k}": xs for (v, k), xs in cpu.items()}}, f, indent=1)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
