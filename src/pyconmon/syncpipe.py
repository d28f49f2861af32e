"""Messages to the caller on ``_OCI_SYNCPIPE`` and ``_OCI_ATTACHPIPE``.

One JSON object per line, ``{"KEY": N}`` or ``{"KEY": N, "message": "..."}``
(CONTRACT section 3).  KEY is ``data`` with ``--api-version``; the legacy
keys are ``pid`` (create/restore) and ``exit_code`` (exec).  The caller may
be a SEQPACKET socket (Podman), a stream socket or a plain pipe (CRI-O), so
each message goes out in a single ``write``.  EPIPE means the caller left:
the monitor stops writing to that pipe and carries on.
"""

from __future__ import annotations

import os

_ESCAPES = {i: f"\\u{i:04x}" for i in range(0x20)}
_ESCAPES.update({ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t",
                 0x7F: "\\u007f", 0x2028: "\\u2028", 0x2029: "\\u2029"})


def json_string(text: str) -> str:
    """A JSON string literal for ``text``, without importing json.

    Like ``json.dumps(text, ensure_ascii=False)``, but control characters,
    DEL, U+2028 and U+2029 are always ``\\u`` escapes (safe for any reader).
    """
    return '"' + text.translate(_ESCAPES) + '"'


def format_message(key: str, value: int, message: str | None = None) -> bytes:
    if message is None:
        return f'{{"{key}": {value}}}\n'.encode()
    return f'{{"{key}": {value}, "message": {json_string(message)}}}\n'.encode("utf-8", "replace")


class SyncPipe:
    """A write-only message channel to the caller that tolerates its absence."""

    def __init__(self, fd: int | None, key: str) -> None:
        self.fd = fd
        self.key = key

    def send(self, value: int, message: str | None = None) -> bool:
        """Write one message; False once the caller is gone (or never was)."""
        if self.fd is None:
            return False
        data = format_message(self.key, value, message)
        try:
            while data:
                n = os.write(self.fd, data)
                data = data[n:]
        except OSError:
            self.close()
            return False
        return True

    def close(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
