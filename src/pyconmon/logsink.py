"""Fan-out of container output to the configured log drivers.

Owns the set of writers made from ``--log-path`` (k8s-file, journald, none;
passthrough has no writer because the container writes to the caller's stdio
itself) and the ``--log-global-size-max`` budget: once it is spent, output is
dropped (the pipes keep draining so the container never blocks) and the
diagnostics say so once.
"""

from __future__ import annotations

from .diag import Diagnostics
from .options import Options

TYPE_CHECKING = False  # typing costs 7 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    from .config import Settings
    from .loop import EventLoop

    class LogWriter(Protocol):
        def write(self, stream: int, data: bytes) -> None: ...
        def reopen(self) -> None: ...
        def flush(self) -> None: ...
        def close(self) -> None: ...


class LogSinks:
    """Every log writer of one container, written to as one."""

    def __init__(self, writers: list[LogWriter], diag: Diagnostics, global_max: int = -1) -> None:
        self.writers = writers
        self.diag = diag
        self.budget = global_max if global_max > 0 else -1
        self.over_budget = 0  # bytes dropped by --log-global-size-max (metrics)
        self.sync_at_exit = True  # log.sync = "none" turns it off

    @classmethod
    def from_options(cls, opts: Options, diag: Diagnostics, settings: Settings | None = None,
                     served: bool = False) -> LogSinks:
        """Open every driver's writer.  As conmon, the k8s-file logs are opened before the
        last option checks (:func:`~pyconmon.options.validate_log_options`), which may
        still raise ConfigError.  ``served``: for the server's shared loop (journald's
        writer then never blocks, and sends as the stub: served_journald.py)."""
        from .options import ConfigError, validate_log_options
        writers: list[LogWriter] = []
        for driver in opts.log_drivers:
            if driver.kind == "k8s-file":
                from .k8sfile import K8sFileWriter
                writers.append(K8sFileWriter(driver.path, diag, opts.log_size_max, opts.log_rotate,
                                             opts.log_max_files, opts.log_allowlist_dirs))
        try:
            validate_log_options(opts)
        except ConfigError:
            for writer in writers:
                writer.close()
            raise
        if "journald" in opts.log_kinds():  # `-l journald -l journald:` is still one journal writer
            from .journald import JournaldWriter
            if served:
                from .served_journald import ServedJournaldWriter as JournaldWriter  # type: ignore[assignment]
            assert opts.cid
            identifier = None
            if settings is not None and settings.journald_identifier:
                identifier = settings.journald_identifier.format(
                    id=opts.cid[:12], full_id=opts.cid, name=opts.name or "", tag=opts.log_tag or "")
            writers.append(JournaldWriter(opts.cid, opts.name, opts.log_tag, opts.log_labels,
                                          not opts.no_partial_message, diag=diag, identifier=identifier,
                                          stderr_priority=settings.journald_stderr_priority if settings else 3))
        sinks = cls(writers, diag, opts.log_global_size_max)
        if settings is not None:
            sinks.sync_at_exit = settings.log_sync != "none"
            if settings.log_buffer > 0:
                from .logbuffer import BufferedLogWriter
                sinks.writers = [w if getattr(w, "own_buffer", False)
                                 else BufferedLogWriter(w, settings.log_buffer, settings.log_sync == "rotate")
                                 for w in writers]
        return sinks

    def attach_loop(self, loop: EventLoop, on_full: Callable[[bool, str], None]) -> None:
        """Buffered writers (log.buffer, served journald) tell ``on_full(full, reason)`` when
        reading must wait for the disk or journald."""
        for writer in self.writers:
            if hasattr(writer, "attach_loop"):
                writer.attach_loop(loop, on_full)

    def drained(self) -> bool:
        """Whether every writer has passed on what it was given (served journald may hold a backlog)."""
        return all(writer.drained() for writer in self.writers if hasattr(writer, "drained"))

    def write(self, stream: int, data: bytes) -> None:
        if self.budget >= 0:
            if self.budget < len(data):
                # Said as soon as anything is dropped: the cut chunk may be the last one.
                self.diag.warn_once("global-size", "Global log size limit reached: dropping further output")
                self.over_budget += len(data) - self.budget
                if self.budget == 0:
                    return
                data = data[:self.budget]
                self.budget = 0
            else:
                self.budget -= len(data)
        for writer in self.writers:
            writer.write(stream, data)

    def reopen(self) -> None:
        for writer in self.writers:
            writer.reopen()

    def finish(self, sync: bool) -> None:
        """At exit: flush partial lines, fsync files unless --no-sync-log."""
        for writer in self.writers:
            writer.flush()
            if sync and self.sync_at_exit and hasattr(writer, "sync"):
                writer.sync()

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
