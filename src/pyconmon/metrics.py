"""Metrics in the Prometheus text format, for node_exporter's textfile collector.

When ``metrics.dir`` is set in pyconmon.toml, the monitor keeps
``<dir>/<container id>.prom`` current: written every ``metrics.interval``
seconds while the container runs and once more after it exited (before the
exit file, so a caller that sees the exit file finds the final numbers), and
removed when the monitor exits.  Each write goes to ``.<id>.prom.tmp`` and is
renamed over the file, so a scraper never reads half a file (the collector
ignores names not ending in ``.prom``).  Every sample is labelled with
``container_id`` and ``container_name``.

Counting costs one extra call and a ``bytes.count`` per chunk of output, and
only when metrics are on; a directory that cannot be written is warned about
once and never stops the container.
"""

from __future__ import annotations

import os

from .streams import NAMES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from .diag import Diagnostics
    from .loop import EventLoop, Timer
    from .monitor import Monitor

DEFAULT_INTERVAL = 5.0


def count_lines(data: bytes) -> int:
    """``data.count(b"\\n")``, fast for long lines too.

    ``bytes.count`` walks every byte (~1.5 GB/s here); ``find`` is memchr
    (~10 times faster), so sparse newlines are found one by one and only
    dense ones (past 64) are left to ``count``.
    """
    n = 0
    pos = data.find(b"\n")
    for _ in range(64):
        if pos < 0:
            return n
        n += 1
        pos = data.find(b"\n", pos + 1)
    if pos < 0:
        return n
    return n + data.count(b"\n", pos)


class StreamCounter:
    """Bytes and lines per stream of what passes through :meth:`wrap`."""

    def __init__(self) -> None:
        self.bytes = dict.fromkeys(NAMES, 0)
        self.lines = dict.fromkeys(NAMES, 0)

    def wrap(self, inner: Callable[[int, bytes], None]) -> Callable[[int, bytes], None]:
        counted_bytes, counted_lines = self.bytes, self.lines

        def counted(stream: int, data: bytes) -> None:
            counted_bytes[stream] += len(data)
            counted_lines[stream] += count_lines(data)
            inner(stream, data)
        return counted


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Family:
    """One metric family: name, type, help and its samples."""

    def __init__(self, name: str, kind: str, text: str) -> None:
        self.name = name
        self.kind = kind
        self.text = text
        self.samples: list[tuple[dict[str, str], float]] = []

    def add(self, value: float, **labels: str) -> Family:
        self.samples.append((labels, value))
        return self


def render(families: list[Family], common: dict[str, str]) -> str:
    """The text exposition format (version 0.0.4)."""
    out = []
    for family in families:
        out.append(f"# HELP {family.name} {family.text}")
        out.append(f"# TYPE {family.name} {family.kind}")
        for labels, value in family.samples:
            pairs = ",".join(f'{k}="{_escape(v)}"' for k, v in {**common, **labels}.items())
            number = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
            out.append(f"{family.name}{{{pairs}}} {number}")
    return "\n".join(out) + "\n"


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class MetricsReporter:
    """Keeps one container's ``.prom`` file current."""

    def __init__(self, directory: str, cid: str, name: str | None, loop: EventLoop, diag: Diagnostics,
                 interval: float = DEFAULT_INTERVAL) -> None:
        self.path = os.path.join(directory, f"{cid}.prom")
        self.tmp = os.path.join(directory, f".{cid}.prom.tmp")
        self.directory = directory
        self.labels = {"container_id": cid, "container_name": name or ""}
        self.loop = loop
        self.diag = diag
        self.interval = interval
        self.output = StreamCounter()  # what the container wrote
        self.logged = self.output  # what went on to the log (a second counter behind a `drop` limit)
        self.monitor: Monitor | None = None
        self._timer: Timer | None = None
        self._attach_seen = (0, 0, 0)  # clients now, in all, dropped: kept for after the teardown
        self.writes = 0
        try:
            os.makedirs(directory, 0o755, exist_ok=True)
        except OSError as err:
            diag.warn_once("metrics", f"Failed to create metrics directory {directory}: {err.strerror}")

    def install(self, monitor: Monitor) -> None:
        """Count the output of ``monitor`` (after its rate limit is in place)."""
        self.monitor = monitor
        stdio = monitor.stdio
        limiter = monitor.limiter
        if limiter is not None:
            self.logged = StreamCounter()
            limiter.forward = self.logged.wrap(limiter.forward)
        if stdio is not None:
            stdio.on_output = self.output.wrap(stdio.on_output)

    def start(self) -> None:
        """Write now and every interval from now on."""
        self.write()

    def _tick(self) -> None:
        self._timer = None
        self.write()

    def families(self) -> list[Family]:
        monitor = self.monitor
        fams = []
        for name, counter, text in (("output", self.output, "read from the container"),
                                    ("log", self.logged, "handed to the log drivers (after the rate limit)")):
            b = Family(f"pyconmon_{name}_bytes_total", "counter", f"Bytes of container output {text}.")
            n = Family(f"pyconmon_{name}_lines_total", "counter", f"Newlines in the container output {text}.")
            for stream, label in NAMES.items():
                b.add(counter.bytes[stream], stream=label)
                n.add(counter.lines[stream], stream=label)
            fams += [b, n]
        limiter = monitor.limiter if monitor else None
        sinks = monitor.sinks if monitor else None
        writers = list(sinks.writers) if sinks is not None else []
        lost = sum(getattr(w, "lost_bytes", 0) for w in writers)
        dropped = Family("pyconmon_dropped_bytes_total", "counter",
                         "Bytes of container output not logged, by cause (rate_limit: the log rate limit; "
                         "log_write: a failed log write such as a full disk, or journald entries not sent; "
                         "global_size_max: --log-global-size-max).")
        dropped.add(limiter.dropped if limiter else 0, cause="rate_limit")
        dropped.add(lost, cause="log_write")
        dropped.add(sinks.over_budget if sinks is not None else 0, cause="global_size_max")
        fams.append(dropped)
        fams.append(Family("pyconmon_rate_limit_markers_total", "counter",
                           "`dropped N bytes` marker records written to the log.")
                    .add(limiter.markers if limiter else 0))
        fams.append(Family("pyconmon_log_write_errors_total", "counter",
                           "Failed writes to log files, and journald entries not sent.")
                    .add(sum(getattr(w, "write_errors", 0) for w in writers)))
        fams.append(Family("pyconmon_log_rotations_total", "counter",
                           "Log files started afresh (size limit, rotation or a reopen request).")
                    .add(sum(getattr(w, "rotations", 0) for w in writers)))
        fams.append(Family("pyconmon_log_buffer_waits_total", "counter",
                           "Times reading waited because the log buffer (log.buffer) was full.")
                    .add(sum(getattr(w, "full_count", 0) for w in writers)))
        fams.append(Family("pyconmon_log_buffer_peak_bytes", "gauge",
                           "The most output that waited in the log buffer at once.")
                    .add(max((getattr(w, "peak", 0) for w in writers), default=0)))
        attach = monitor.attach if monitor else None
        if attach is not None:
            self._attach_seen = (len(attach.clients), attach.accepted, attach.kicked)
        now, total, kicked = self._attach_seen
        if attach is None:
            now = 0  # torn down at exit: nobody is attached any more
        fams.append(Family("pyconmon_attach_clients", "gauge", "Attach clients connected now.").add(now))
        fams.append(Family("pyconmon_attach_clients_total", "counter", "Attach clients connected in all.")
                    .add(total))
        fams.append(Family("pyconmon_attach_clients_dropped_total", "counter",
                           "Attach clients the monitor dropped for not reading.").add(kicked))
        fams.append(Family("pyconmon_oom_kills_total", "counter", "OOM kills of the container seen.")
                    .add(1 if monitor is not None and monitor.oom_killed else 0))
        fams.append(Family("pyconmon_monitor_resident_memory_bytes", "gauge", "The monitor's own RSS.")
                    .add(_rss_bytes()))
        times = os.times()
        fams.append(Family("pyconmon_monitor_cpu_seconds_total", "counter",
                           "CPU time (user + system) the monitor itself used.").add(times.user + times.system))
        return fams

    def write(self, rearm: bool = True) -> None:
        """Replace the file with the current numbers; rearm the timer unless at exit."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        text = render(self.families(), self.labels)
        try:
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
            try:
                os.write(fd, text.encode("utf-8", "surrogateescape"))
            finally:
                os.close(fd)
            os.rename(self.tmp, self.path)
            self.writes += 1
            self.diag.forget("metrics")
        except OSError as err:
            self.diag.warn_once("metrics", f"Failed to write metrics file {self.path}: {err.strerror}")
        if rearm:
            self._timer = self.loop.call_later(self.interval, self._tick)

    def final(self) -> None:
        """The container exited: write the last numbers, stop updating."""
        self.write(rearm=False)

    def remove(self) -> None:
        """The monitor exits: the file goes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for path in (self.path, self.tmp):
            try:
                os.unlink(path)
            except OSError:
                pass
