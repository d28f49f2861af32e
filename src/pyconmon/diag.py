"""The monitor's own diagnostics: ``[conmon:e]: text`` lines and syslog.

Messages go to stderr while the monitor still has the caller's stderr (before
it detaches, or always with ``--sync``/passthrough), filtered by
``--log-level``.  With ``--syslog`` they also go to the local syslog socket
(``/dev/log``) as RFC 3164 datagrams tagged ``conmon`` with the container id,
the way conmon's ``syslog(3)`` calls appear.  A missing or refusing syslog is
silently ignored: CRI-O always passes ``--syslog``, also on hosts without one.
"""

from __future__ import annotations

import _socket
import os
import time

ERROR, WARNING, INFO, DEBUG, TRACE = range(5)
_LETTER = "ewidd"  # conmon prints trace lines as [conmon:d]
_SYSLOG_SEVERITY = (3, 4, 6, 7, 7)  # err, warning, info, debug, debug
_SYSLOG_TAG = ("error", "nwarn", "ninfo", "ndebug", "ntrace")  # conmon's words, for grep
_FACILITY_USER = 1 << 3


class Diagnostics:
    """Filters and writes the monitor's own messages."""

    def __init__(self, level: int = WARNING) -> None:
        self.level = level
        self.use_stderr = True
        self.captured: list[str] | None = None  # server mode: stderr lines the stub writes for us
        self.cid = ""
        self.pid = 0  # the pid syslog lines name (server mode: the stub's); 0: this process
        self.syslog_path: str | None = None
        self._syslog: _socket.socket | None = None
        self._once: set[str] = set()

    def enable_syslog(self, cid: str, path: str = "/dev/log") -> None:
        self.cid = cid
        self.syslog_path = path

    def _send_syslog(self, level: int, text: str) -> None:
        if self.syslog_path is None:
            return
        try:
            if self._syslog is None:
                sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                sock.connect(self.syslog_path)
                self._syslog = sock
            pri = _FACILITY_USER | _SYSLOG_SEVERITY[level]
            stamp = time.strftime("%b %e %H:%M:%S")
            pid = self.pid or os.getpid()
            msg = f"<{pri}>{stamp} conmon[{pid}]: conmon {self.cid[:20]} <{_SYSLOG_TAG[level]}>: {text}"
            self._syslog.send(msg.encode("utf-8", "replace"))
        except OSError:
            if self._syslog is not None:
                self._syslog.close()
                self._syslog = None

    def log(self, level: int, text: str) -> None:
        if level > self.level:
            return
        if self.use_stderr and self.captured is not None:
            self.captured.append(f"[conmon:{_LETTER[level]}]: {text}\n")
        elif self.use_stderr:
            try:
                os.write(2, f"[conmon:{_LETTER[level]}]: {text}\n".encode("utf-8", "replace"))
            except OSError:
                pass
        self._send_syslog(level, text)

    def error(self, text: str) -> None:
        self.log(ERROR, text)

    def warn(self, text: str) -> None:
        self.log(WARNING, text)

    def warn_once(self, key: str, text: str) -> None:
        """Warn the first time ``key`` comes up; a full disk must not flood."""
        if key not in self._once:
            self._once.add(key)
            self.log(WARNING, text)

    def forget(self, key: str) -> None:
        """Allow ``key`` to warn again (the condition cleared)."""
        self._once.discard(key)

    def info(self, text: str) -> None:
        self.log(INFO, text)

    def debug(self, text: str) -> None:
        self.log(DEBUG, text)

    def trace(self, text: str) -> None:
        self.log(TRACE, text)

    def close(self) -> None:
        if self._syslog is not None:
            self._syslog.close()
            self._syslog = None
