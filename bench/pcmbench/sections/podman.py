"""Podman end to end: ``podman run --rm busybox true`` and ``podman exec CTR true``.

Wall time of the podman command, with a private store
(tests/support/podman.py) whose containers.conf names the monitor (so the
exit command uses it too); CTR is a ``sleep`` container started by the same
monitor.  One warm-up run each is not counted.  Podman's monitors must not
become the bench's zombies, so the bench stops being a subreaper meanwhile.
"""

from __future__ import annotations

import subprocess
import tempfile
import time

from ..system import C_CONMON, BenchFailure, set_subreaper, tb_podman
from . import Row, Section, register


@register
class Podman(Section):
    name = "podman"
    title = "podman end to end"

    def __init__(self, bench):
        super().__init__(bench)
        self.pd = None
        self.pd_ctrs = {}
        self.broken = False

    def run_round(self, rnd):
        if self.broken:
            return
        set_subreaper(False)
        try:
            if self.pd is None:
                print("  podman: private store set-up and warm-up", flush=True)
                self.start()
            n = self.bench.args.podman_samples
            print(f"  podman run --rm / exec ({n} each per monitor)", flush=True)
            for what in ("run", "exec"):
                for _ in range(n):
                    for mon in self.order(f"podman/{what}"):
                        self.podman_run(mon, what)
        except (BenchFailure, RuntimeError, OSError, subprocess.SubprocessError) as e:
            self.results.fail("podman", e)
            self.broken = True
            self.teardown()
        finally:
            set_subreaper(True)

    def start(self):
        set_subreaper(False)  # podman's monitors must not end up as our zombies
        self.pd = tb_podman.Podman(base=tempfile.mkdtemp(prefix="pd-", dir=self.bench.workroot),
                                   default_conmon=C_CONMON).setup(rootfs=self.bench.rootfs)
        self.pd_ctrs = {}
        for mon in self.bench.monitors:
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

    def teardown(self):
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
            self.results.fail(f"podman {what} {mon.name}", f"exit {r.returncode}: {r.stderr.decode()[-500:]}", mon,
                              (f"podman/{what}_ms",))
            return
        self.results.add(f"podman/{what}_ms", mon, wall * 1000)
        print(f"    {mon.name:8} podman {what:4} {wall * 1000:7.1f} ms", flush=True)

    def rows(self):
        return [
            Row("`podman run --rm busybox true` (ms)", "podman/run_ms", "ms", (1.10, "ratio")),
            Row("`podman exec CTR true` (ms)", "podman/exec_ms", "ms", (1.10, "ratio")),
        ]

    @classmethod
    def method(cls):
        return (
            "**podman**: wall time of `podman run --rm busybox true` and `podman exec CTR true` with a "
            "private store (tests/support/podman.py) whose containers.conf names the monitor; one warm-up "
            "each is not counted.")
