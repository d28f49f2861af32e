"""Samples, failures and notes of one benchmark run, and the A B B A order of the monitors.

Order: the two monitors of one measurement always run back to back, and the
order of each pair alternates: C, pyconmon, then pyconmon, C, then C,
pyconmon ... (A B B A), counted per measurement.  A drift of the machine
over time (a cache warming, another job starting) then hits both monitors
alike once the number of pairs is even; ``unbalanced`` lists the
measurements where it was not.
"""

from __future__ import annotations

import statistics


class Results:
    def __init__(self):
        self.samples = {}  # metric -> monitor name -> [values]
        self.details = {}  # metric -> monitor name -> [dicts] (details per run)
        self.failures = []
        self.failed_runs = {}  # (metric, monitor name) -> number of failed runs
        self.notes = []
        self.pairs = {}  # measurement -> [pairs in A B order, pairs in B A order]

    def order(self, key, monitors):
        """The monitors in this pair's order: A B for the 1st, 3rd ... pair of ``key``, B A for the others."""
        count = self.pairs.setdefault(key, [0, 0])
        flip = (count[0] + count[1]) % 2 == 1
        count[1 if flip else 0] += 1
        return list(reversed(monitors)) if flip else list(monitors)

    def unbalanced(self):
        return sorted(k for k, (ab, ba) in self.pairs.items() if ab != ba)

    def add(self, metric, mon, value, detail=None):
        self.samples.setdefault(metric, {}).setdefault(mon.name, []).append(value)
        if detail is not None:
            self.details.setdefault(metric, {}).setdefault(mon.name, []).append(detail)

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

    def summary(self):
        """metric -> {"conmon": median, "pyconmon": median, "ratio": p / c, "n": {...}}."""
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
