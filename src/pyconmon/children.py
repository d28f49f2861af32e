"""The monitor's child processes in classic mode: runtime, reaping, exit command.

A :class:`~pyconmon.monitor.Monitor` never forks, waits or takes signals
itself: it asks a *children* object.  :class:`LocalChildren` (here) does it
in the monitor's own process, as conmon does.  In server mode the per-container
stub process does it on the server's request (``pyconmon.session``), so the
runtime and the exit command run in the caller's context, not the server's.

Facts that shape it:

* Children are reaped with ``waitpid(-1, WNOHANG)`` on every SIGCHLD and
  their statuses kept, so a container that exits before its pid file is read
  is still recognised.
* A container that is not our child (``runc exec`` of a process whose parent
  went away before we became its subreaper) still ends the wait through a
  pidfd; its status is then unknown.
"""

from __future__ import annotations

import _signal
import os

from .process import set_oom_score_adj, set_parent_death_signal

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from .diag import Diagnostics
    from .loop import EventLoop

SIGQUIT, SIGKILL, SIGPIPE, SIGTERM, SIGCHLD, SIGINT = 3, 9, 13, 15, 17, 2
FORWARDED = (SIGTERM, SIGINT, SIGQUIT)
UNKNOWN_STATUS = -1  # in statuses: the process ended but could not be reaped
START_MESSAGE_MAX = 8192  # conmon reads each start-pipe message with one read() of BUF_SIZE


class Children:
    """What a Monitor needs of its processes; the base keeps the shared state."""

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}  # pid -> wait status (UNKNOWN_STATUS: not ours)
        self.environ: Mapping[str, str] = os.environ  # what the runtime's environment starts from
        self.pid = os.getpid()  # the runtime's parent: LISTEN_PID is compared with it
        self.runtime_pid: int | None = None  # None until spawned; 0 if the fork failed
        self.spawn_error = ""

    def start(self, loop: EventLoop, forward: Callable[[int], None]) -> None:
        """Before anything runs: route signals (the stub forwards them itself)."""

    def own_group(self) -> int:
        """The monitor process's process group, which a timeout kill must spare."""
        return os.getpgrp()

    def spawn_runtime(self, argv: list[str], env: dict[str, str], rewrite_listen_pid: bool,
                      child_fds: list[int] | None, preserved: range, start_fd: int | None,
                      old_oom: str | None) -> None:
        """Fork and exec the runtime; ``runtime_pid`` is set once known."""
        raise NotImplementedError

    def watch_exit(self, pid: int) -> None:
        """Make ``statuses`` get ``pid`` when it ends, child or not."""
        raise NotImplementedError

    def close_inherited(self, fds: list[int]) -> None:
        """Close the caller's descriptors (port reservations...) before the exit file."""
        raise NotImplementedError

    def inherited_closed(self) -> bool:
        """Whether close_inherited has taken effect (the stub acknowledges it)."""
        return True

    def exit_command(self, argv: list[str], delay: int, old_oom: str | None) -> int:
        """Run the exit command after ``delay`` seconds; its exit code."""
        raise NotImplementedError

    def keep(self, fds: dict[str, int]) -> None:
        """Copies of these descriptors (named as in takeover.KEPT) for a classic monitor that takes
        the container over should this process go away (server mode; nothing to do in classic)."""

    def drop(self, name: str) -> None:
        """The copy kept of ``name`` must go: the monitor closed its own (the stdin pipe at EOF)."""


class LocalChildren(Children):
    """Forks, reaps and signals in this process (classic mode)."""

    def __init__(self, diag: Diagnostics) -> None:
        super().__init__()
        self.diag = diag
        self.loop: EventLoop | None = None

    def start(self, loop: EventLoop, forward: Callable[[int], None]) -> None:
        self.loop = loop

        def on_signal(signum: int) -> None:
            if signum == SIGCHLD:
                self.reap()
            elif signum in FORWARDED:
                forward(signum)

        loop.handle_signals((SIGCHLD, SIGTERM, SIGINT, SIGQUIT), on_signal)

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            except InterruptedError:
                continue
            if pid == 0:
                return
            self.statuses[pid] = status

    def spawn_runtime(self, argv: list[str], env: dict[str, str], rewrite_listen_pid: bool,
                      child_fds: list[int] | None, preserved: range, start_fd: int | None,
                      old_oom: str | None) -> None:
        pid = os.fork()
        if pid == 0:  # the runtime child: never returns
            try:
                for sig in (SIGPIPE, SIGTERM, SIGINT, SIGQUIT, SIGCHLD):
                    _signal.signal(sig, _signal.SIG_DFL)
                set_parent_death_signal(SIGKILL)
                if child_fds is not None:
                    null = os.open("/dev/null", os.O_RDWR)
                    for target, fd in enumerate(child_fds):
                        os.dup2(fd if fd >= 0 else null, target)
                for fd in preserved:
                    try:
                        os.set_inheritable(fd, True)
                    except OSError:
                        pass
                if start_fd is not None:
                    os.read(start_fd, START_MESSAGE_MAX)  # exec-attach: wait until the caller has attached
                if old_oom is not None:
                    set_oom_score_adj(old_oom)
                if rewrite_listen_pid:
                    env["LISTEN_PID"] = str(os.getpid())
                os.execve(argv[0], argv, env)
            except BaseException as err:  # noqa: BLE001 - a forked child must never return
                try:
                    os.write(2, f"Failed to exec {argv[0]}: {err}\n".encode())
                finally:
                    os._exit(127)
        self.runtime_pid = pid

    def watch_exit(self, pid: int) -> None:
        # Also a pidfd: a process that is not our child still ends the wait.
        loop = self.loop
        assert loop is not None
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            if pid not in self.statuses:
                self.reap()
                if pid not in self.statuses and not os.path.exists(f"/proc/{pid}"):
                    self.statuses[pid] = UNKNOWN_STATUS
            return

        def exited(events: int) -> None:
            loop.remove(pidfd)
            os.close(pidfd)
            self.reap()
            if pid not in self.statuses:
                self.diag.warn(f"Process {pid} exited but is not our child: its exit status is unknown")
                self.statuses[pid] = UNKNOWN_STATUS

        loop.add(pidfd, 1, exited)

    def close_inherited(self, fds: list[int]) -> None:
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def exit_command(self, argv: list[str], delay: int, old_oom: str | None) -> int:
        from .exitfiles import run_exit_command
        if self.loop is not None:
            self.loop.restore_signals()
        return run_exit_command(argv, delay, old_oom)
