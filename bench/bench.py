#!/usr/bin/env python3
"""Benchmark pyconmon against Debian's C conmon.  Not part of the test suite.

    make bench                      # 4 rounds, all sections; writes docs/performance.{json,md} and README's table
    make bench ARGS="--quick"       # 2 rounds, workloads a tenth of the size (results only in bench/results/)
    make bench-docs                 # re-render docs/performance.md and README's table, measuring nothing
    python3 bench/bench.py --rounds 2 --sections k8s-file,create --workloads seq
    python3 bench/bench.py --help

Both monitors run the same busybox containers under runc, in pairs whose
order alternates (A B B A).  pyconmon is measured *as installed*: the bench
builds it with ``make install PREFIX=<temp dir> BUILDDIR=<temp dir>/build``
(the ``conmon`` launcher that embeds the system libpython, and the compiled
package; the checkout's own build/ is not touched) unless ``--pyconmon
PATH`` names an installed binary.  Monitors are started exactly as Podman
4.3.1 starts them (tests/support/harness.py).

The parts: this file runs (set-up, rounds, clean-up); bench/pcmbench/sections
measure (one module per table, registered in sections/__init__.py: add a
table there); bench/pcmbench/report.py reports.  What each section measures
and how is in its module's docstring and in docs/performance.md's Method
list (generated from the same text).  Results: a table of medians and
pyconmon/C ratios on stdout, all samples in bench/results/latest.json
(git-ignored; a time-stamped copy next to it); a full run (or ``--docs``)
also writes docs/performance.json, docs/performance.md and README.md's
Performance table.  A run in which any line is missing or wrong, or anything
else fails, is reported loudly, shows as FAILED in the table and makes the
exit status 1.  The machine is often shared: the load average before and
after is recorded and a table taken with a load of 1 or more is marked noisy.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "src"))  # pyconmon's constants, for the docs

from pcmbench import report  # noqa: E402
from pcmbench.container import Monitor, build_runtime_probe  # noqa: E402
from pcmbench.results import Results  # noqa: E402
from pcmbench.sections import REGISTRY  # noqa: E402
from pcmbench.system import (  # noqa: E402
    BUSYBOX,
    C_CONMON,
    REPO,
    RUNC,
    BenchFailure,
    proc_kv,
    run_quiet,
    set_subreaper,
    tb_bundle,
    tb_podman,
)
from pcmbench.workloads import WORKLOAD_KEYS, make_journald_workloads, make_workloads  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "bench", "results")
ROUNDS = 4  # even: every measurement gets as many A B pairs as B A pairs
QUICK_ROUNDS = 2
JOURNALD_SCALE = 1


class Bench:
    """The run: set-up, the selected sections round by round, clean-up."""

    def __init__(self, args):
        self.args = args
        self.keep = args.keep
        self.scale = 10 if args.quick else 1
        self.rounds = args.rounds
        all_wl = make_workloads(self.scale)
        self.workloads = [w for w in all_wl if w.key in args.workloads]
        self.jworkloads = [w for w in make_journald_workloads(self.scale * args.journald_scale)
                           if w.key in args.workloads]
        self.flood = all_wl[2]  # the memory section's flood, whatever --workloads says
        self.results = Results()
        self.monitors = []
        self.workroot = None
        self.gendir = None
        self.rootfs = None
        self.runtime_probe = None
        self.generator = {}
        self.sections = []
        self.machine_info = None
        self.t_start = time.time()

    # -- set-up -------------------------------------------------------------

    def build_pyconmon(self):
        if self.args.pyconmon:
            return os.path.abspath(self.args.pyconmon)
        prefix = os.path.join(self.workroot, "prefix")
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
        r = run_quiet(["make", "-C", REPO, "install", "ENTRY=classic", f"PREFIX={prefix}",
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
        self.runtime_probe = build_runtime_probe(self.workroot)
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

    # -- the rounds -----------------------------------------------------------

    def run(self):
        self.setup()
        load0 = os.getloadavg()
        print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
              + ("  (the machine is busy: figures will be noisy)" if load0[0] >= 1 else ""))
        print(f"rounds: {self.rounds}; sections: {', '.join(self.args.sections)}; workloads: "
              + ", ".join(w.label for w in self.workloads)
              + ("; journald: " + ", ".join(w.label for w in self.jworkloads) if self.jworkloads else ""))
        for name in self.args.sections:
            section = REGISTRY[name](self)
            reason = section.unavailable()
            if reason:
                self.results.note(f"{name} rows skipped: {reason}")
                continue
            self.sections.append(section)
        self.machine_info = self.machine()
        try:
            for section in self.sections:
                section.setup()
            for rnd in range(self.rounds):
                print(f"\n=== round {rnd + 1}/{self.rounds} ===", flush=True)
                for section in self.sections:
                    section.run_round(rnd)
        finally:
            for section in self.sections:
                try:
                    section.teardown()
                except Exception as e:  # noqa: BLE001 - the other clean-ups go on
                    print(f"  ({section.name} teardown: {e!r})")
            if not self.keep:
                shutil.rmtree(self.workroot, ignore_errors=True)
            else:
                print(f"kept {self.workroot}")
        return load0, os.getloadavg()

    # -- the results ------------------------------------------------------------

    def data(self, loads):
        """Everything about this run, as saved in the JSON (and rendered into the docs)."""
        summ = self.results.summary()
        for section in self.sections:
            section.after(summ)
        r = self.results
        return {
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "duration_s": round(time.time() - self.t_start, 1),
            "quick": self.args.quick, "rounds": self.rounds, "sections": [s.name for s in self.sections],
            "defaults": {"rounds": ROUNDS, "quick_rounds": QUICK_ROUNDS},
            "generator_mode": self.args.generator,
            "machine": self.machine_info, "load_start": loads[0], "load_end": loads[1],
            "monitors": {m.name: m.path for m in self.monitors},
            "workloads": {mode: {w.key: {"label": w.label, "script": w.script, "lines": w.lines,
                                         "bytes": w.expected().bytes, "sha256": w.expected().sha256} for w in wls}
                          for mode, wls in (("k8s-file", self.workloads), ("attach", self.workloads),
                                            ("journald", self.jworkloads))},
            "tables": [{"section": s.name, "title": s.title, "rows": [list(row) for row in s.rows()]}
                       for s in self.sections],
            "generator": self.generator, "summary": summ, "samples": r.samples, "details": r.details,
            "failures": r.failures, "notes": r.notes,
            "failed_runs": {f"{m} {n}": c for (m, n), c in r.failed_runs.items()},
            "pairs": r.pairs, "unbalanced": r.unbalanced(),
        }


def write_json(data):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, "latest.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    shutil.copyfile(path, os.path.join(RESULTS_DIR, f"{stamp}{'-quick' if data['quick'] else ''}.json"))
    return path


def parse_args(argv):
    names = list(REGISTRY)
    defaults = [n for n in names if REGISTRY[n].default]
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None,
                    help=f"rounds (default {ROUNDS}; {QUICK_ROUNDS} with --quick); even keeps A B B A balanced")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds, workloads a tenth of the size")
    ap.add_argument("--sections", default=",".join(defaults), help=f"comma-separated subset of {', '.join(names)}")
    ap.add_argument("--workloads", default=",".join(WORKLOAD_KEYS),
                    help=f"comma-separated subset of {','.join(WORKLOAD_KEYS)} (both: journald only)")
    ap.add_argument("--generator", choices=("shell", "file"), default="shell",
                    help="shell: the container runs the busybox generator (default); file: the generator's output "
                         "is made once on the host and the container cats it from a read-only bind mount, so that "
                         "wall times measure the monitors' throughput rather than the generator")
    ap.add_argument("--journald-scale", type=int, default=JOURNALD_SCALE,
                    help=f"divide the journald workloads (their own, smaller sizes: journald stores some 30,000 "
                         f"entries a second and journalctl reads them back as slowly) by this much more "
                         f"(default {JOURNALD_SCALE})")
    ap.add_argument("--create-samples", type=int, default=5, help="create-latency samples per monitor per round")
    ap.add_argument("--podman-samples", type=int, default=3, help="podman run/exec samples per monitor per round")
    ap.add_argument("--crio-seconds", type=int, default=None,
                    help="length of the CRI-O probe storm per monitor per round (default 60; 10 with --quick)")
    ap.add_argument("--latency-samples", type=int, default=None,
                    help="latency samples per pattern per monitor per round (default 100; 30 with --quick)")
    ap.add_argument("--settle", type=float, default=1.0, help="seconds an idle container runs before memory is read")
    ap.add_argument("--timeout", type=float, default=600, help="seconds one logging run may take")
    ap.add_argument("--pyconmon", help="an installed pyconmon `conmon` binary to use instead of building one")
    ap.add_argument("--workdir", default="/tmp", help="where bundles and logs go (default /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep bundles and logs")
    docs = ap.add_mutually_exclusive_group()
    docs.add_argument("--docs", action="store_true",
                      help="write docs/performance.{json,md} and README's table even with --quick or --sections")
    docs.add_argument("--no-docs", action="store_true", help="don't write the docs")
    docs.add_argument("--render-docs", action="store_true",
                      help="measure nothing: re-render docs/performance.md and README's table from "
                           "docs/performance.json (make bench-docs)")
    args = ap.parse_args(argv)
    if args.rounds is None:
        args.rounds = QUICK_ROUNDS if args.quick else ROUNDS
    if args.latency_samples is None:
        args.latency_samples = 30 if args.quick else 100
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if args.journald_scale < 1:
        ap.error("--journald-scale must be at least 1")
    args.full_sections = args.sections == ",".join(defaults)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in REGISTRY]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {names}")
    args.sections = [n for n in names if n in args.sections]  # table order
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    if not args.workloads or any(w not in WORKLOAD_KEYS for w in args.workloads):
        ap.error(f"--workloads: choose from {','.join(WORKLOAD_KEYS)}")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.render_docs:
        report.render_files()
        print(f"rendered {report.DOCS} and README.md's Performance table from {report.DOCS_DATA}")
        return 0
    if os.geteuid() != 0:
        raise SystemExit("the benchmark runs containers with runc: run it as root")
    bench = Bench(args)
    try:
        loads = bench.run()
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    data = bench.data(loads)
    print("\n" + report.table(data) + "\n")
    print(f"results: {write_json(data)}")
    if args.docs or (not args.quick and args.full_sections and not args.no_docs):
        report.write_docs(data)
        print(f"docs:    {report.DOCS} (from {report.DOCS_DATA}), README.md's Performance table")
    failures = bench.results.failures
    if failures:
        print(f"\n!!!!! {len(failures)} FAILURE(S) !!!!!")
        for f in failures:
            print(f"  - {f}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchFailure as e:
        traceback.print_exc()
        sys.exit(f"benchmark failed: {e}")
