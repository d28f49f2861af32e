"""The end of a container's life: exit code, exit files, exit command.

Exit files hold the decimal code with no newline and appear atomically
(temp file + rename), ``<persist-dir>/exit`` first and ``<exit-dir>/<cid>``
second: CRI-O reacts to the exit-dir file and then reads the persist-dir one.
The exit command is exec'd directly (never through a shell) with the
monitor's environment, after ``--exit-delay`` seconds, by a child that no
longer holds any of the monitor's descriptors.
"""

from __future__ import annotations

import os

from .process import close_fds_from, set_oom_score_adj, set_subreaper, write_file_atomic

SIGPIPE = 13
SIGCHLD = 17


def exit_code_from_status(status: int) -> int:
    """waitpid status → the code callers expect: WEXITSTATUS or 128+signal."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -1


def write_exit_files(code: int, cid: str, persist_dir: str | None, exit_dir: str | None) -> list[str]:
    """Write the exit files; return the errors (each write is attempted)."""
    errors = []
    data = str(code).encode()
    targets = []
    if persist_dir:
        targets.append(os.path.join(persist_dir, "exit"))
    if exit_dir:
        targets.append(os.path.join(exit_dir, cid))
    for path in targets:
        try:
            write_file_atomic(path, data)
        except OSError as err:
            errors.append(f"Failed to write exit file {path}: {err.strerror}")
    return errors


def run_exit_command(argv: list[str], delay: int, old_oom_score: str | None) -> int:
    """Fork, run the exit command in the child, wait for every child; its status."""
    import _signal
    _signal.signal(SIGCHLD, _signal.SIG_DFL)
    close_fds_from(3, set())
    try:
        set_subreaper(False)
    except OSError:
        pass
    pid = os.fork()
    if pid == 0:
        try:
            _signal.signal(SIGPIPE, _signal.SIG_DFL)
            if delay > 0:
                import time
                time.sleep(delay)
            if old_oom_score is not None:
                set_oom_score_adj(old_oom_score)
            os.execv(argv[0], argv)
        except BaseException as err:  # noqa: BLE001 - a forked child must never return
            try:
                os.write(2, f"[conmon:e]: Failed to exec exit command {argv[0]}: {err}\n".encode())
            finally:
                os._exit(127)
    status = 0
    while True:
        try:
            child, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if child == pid:
            status = st
    return exit_code_from_status(status)
