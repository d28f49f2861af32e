"""Running test code in a throw-away forked child.

For code that closes every fd, changes signal dispositions or process
attributes (the exit command, fd clean-up, subreaper): only a child may run
it.  The result comes back as JSON through a file.
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from pathlib import Path


def wait_status(pid: int, timeout: float = 5.0, flags: int = 0) -> int:
    """waitpid ``pid`` with a deadline; a child still running then is killed and the test fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got, status = os.waitpid(pid, os.WNOHANG | flags)
        if got == pid:
            return status
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    raise AssertionError(f"child {pid} still running after {timeout}s")


def in_child(tmp_path: Path, fn, timeout: float = 5.0):
    """Run ``fn()`` in a forked child; its JSON-able result (an exception fails the test)."""
    result = tmp_path / "result.json"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            text = json.dumps({"ok": fn()})
            code = 0
        except BaseException:  # noqa: BLE001 - report anything to the parent
            text = json.dumps({"error": traceback.format_exc()})
        try:
            with open(result, "w") as f:
                f.write(text)
        finally:
            os._exit(code)
    status = wait_status(pid, timeout)
    out = json.loads(result.read_text())
    assert "error" not in out, out["error"]
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    return out["ok"]
