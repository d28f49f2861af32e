"""The benchmark's tables: one Section per table, registered here in table order.

To add a table (say, journald per-entry cost, container density, a CRI-O
probe storm): write a module in this package with a ``Section`` subclass,
decorate it with ``@register``, and import the module at the bottom of this
file.  It is then a ``--sections`` choice, runs in every round after the
sections before it, and gets its rows into the table, the JSON and
docs/performance.md (its ``method`` text goes to the docs' Method list).

A Section measures both monitors in each round, in the order
``self.order(key)`` gives (A B B A, see results.py), and records figures
with ``self.results.add(metric, monitor, value)`` under the metric names its
``rows()`` list.  A failed run goes to ``self.results.fail`` (and shows as
FAILED in the table): never a missing line silently.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple


class Row(NamedTuple):
    label: str
    metric: str
    unit: str  # "s", "ms", "MB"
    target: tuple[float, str] | None = None  # (value, "ratio" | "plus" | "abs")


class Section:
    name: ClassVar[str] = ""  # the --sections name
    title: ClassVar[str] = ""  # the table's heading for this section
    default: ClassVar[bool] = True  # part of a plain `make bench`

    def __init__(self, bench):
        self.bench = bench
        self.results = bench.results

    def order(self, key):
        """Both monitors, in this pair's A B B A order."""
        return self.results.order(key, self.bench.monitors)

    def unavailable(self):
        """Why this section cannot run here (it is then skipped with a note), or None."""
        return None

    def setup(self):
        """Once, before the first round."""

    def run_round(self, rnd):
        raise NotImplementedError

    def teardown(self):
        """Once, after the last round (also after a failure or ^C)."""

    def rows(self):
        """[Row]: what the table shows, in order."""
        return []

    def after(self, summary):
        """After all rounds, with the medians: add notes (self.results.note)."""

    @classmethod
    def method(cls):
        """Markdown for docs/performance.md's Method list: how this section measures."""
        return ""


REGISTRY: dict[str, type[Section]] = {}


def register(cls):
    if cls.name in REGISTRY:
        raise ValueError(f"two sections named {cls.name!r}")
    REGISTRY[cls.name] = cls
    return cls


# Registration order is table order.
from . import logs, create, memory, latency, podman, density, noisy, crio  # noqa: E402, F401, I001
