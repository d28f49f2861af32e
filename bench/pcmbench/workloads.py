"""What the containers write, and the exact output expected from them.

Workloads are generated inside the container by busybox ``sh -c``:

* ``seq``: ``seq 2000000``: 2,000,000 short lines (14.9 MB);
* ``100b``: ``yes $(printf %099d 0) | head -c 40000000``: 400,000 lines of
  100 bytes (newline included);
* ``64k``: 200 MiB in 3,200 lines of 65,536 bytes: a block of 128 lines is
  written once to the container's /tmp (tmpfs) with ``yes | head``, then
  ``cat`` 25 times (``yes | head`` alone runs at only ~200 MB/s).

journald's own workloads (issue 13; journald stores only some 30,000
entries a second, so they are smaller): ``seq 200000``; 100,000 lines of
100 bytes; ``both``: ``seq 100000`` on stdout and on stderr at once (two
processes, so the monitor sees the streams interleaved); and 20 MiB in
64 KiB lines.

``scale`` divides every count (``--quick``: 10).  ``Expected`` is what a
check compares the rebuilt stream with: sha256, bytes, lines, last line.
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple


class Expected(NamedTuple):
    sha256: str
    bytes: int
    lines: int
    last_line: str | None  # checked when not None


class Workload:
    def __init__(self, key, label, script, lines, line_bytes=None, seq=False, stderr=None):
        self.key = key
        self.label = label
        self.script = script
        self.lines = lines
        self.line_bytes = line_bytes  # fixed line length incl. newline; None for seq
        self.seq = seq
        self.stderr = stderr  # a Workload: what the container writes to stderr, or None (nothing)
        self.id = f"{key}-{lines}"
        self._expected = {}

    def chunks(self):
        """The expected stdout, in pieces of about 1 MB."""
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

    def expected(self, then=b""):
        """Expected of this output followed by ``then`` (whole lines, e.g. a marker)."""
        if then not in self._expected:
            h = hashlib.sha256()
            n = 0
            for c in self.chunks():
                h.update(c)
                n += len(c)
            h.update(then)
            last = self.last_line
            if then:
                last = then.rstrip(b"\n").rsplit(b"\n", 1)[-1].decode()
            self._expected[then] = Expected(h.hexdigest(), n + len(then), self.lines + then.count(b"\n"), last)
        return self._expected[then]

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


def make_journald_workloads(scale):
    n_seq = 200_000 // scale
    n_100 = 100_000 // scale
    n_both = 100_000 // scale
    both_err = Workload("both-stderr", f"{n_both:,} short lines (seq) on stderr", f"seq {n_both}", n_both, seq=True)
    return [
        Workload("seq", f"{n_seq:,} short lines (seq)", f"seq {n_seq}", n_seq, seq=True),
        Workload("100b", f"{n_100:,} lines of 100 B", f"yes $(printf %099d 0) | head -c {n_100 * 100}",
                 n_100, line_bytes=100),
        Workload("both", f"{n_both:,} short lines on stdout and on stderr at once",
                 f"seq {n_both} >&2 & seq {n_both}; wait", n_both, seq=True, stderr=both_err),
        make_workloads(10 * scale)[2],
    ]


WORKLOAD_KEYS = ("seq", "100b", "64k", "both")  # both: journald only
