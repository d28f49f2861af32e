"""A Diagnostics that records the monitor's messages instead of writing them."""

from __future__ import annotations

from pyconmon.diag import WARNING, Diagnostics


class RecordingDiag(Diagnostics):
    """Every message, whatever its level, as ``(level, text)`` in ``messages``; nothing goes to stderr."""

    def __init__(self) -> None:
        super().__init__()
        self.use_stderr = False
        self.messages: list[tuple[int, str]] = []

    def log(self, level: int, text: str) -> None:
        self.messages.append((level, text))

    def texts(self) -> list[str]:
        return [t for _, t in self.messages]

    def warnings(self) -> list[str]:
        return [t for lvl, t in self.messages if lvl == WARNING]
