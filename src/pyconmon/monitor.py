"""One container's monitor: the sequence of CONTRACT section 2, in order.

:func:`run` does the process set-up that must happen before and around the
fork (start pipe, pidfile, detaching) and then hands over to
:class:`Monitor`, which owns everything of one container: its stdio, log
sinks, attach server, control FIFOs, OOM watcher, timers and the runtime
child.  The monitor holds no module-level state, so several could share one
process and one :class:`~pyconmon.loop.EventLoop`.

Facts that shape it:

* The runtime's stderr is the container's stderr pipe.  While the runtime
  runs, that pipe is read into memory (never left to fill up: a runtime
  blocked on it would never exit); on failure its start is the runtime's
  error (reported on the sync pipe, not logged, as conmon does); on success
  it is output and goes to the log ahead of what follows.
* Forking, reaping and signals are process-wide, so the monitor leaves them
  to a *children* object (``pyconmon.children``): this process in classic
  mode, the per-container stub in server mode.  Waits are ``yield``s of
  :meth:`Monitor.steps`, so one loop can drive many monitors.
* After the container exits, output is drained before the exit files are
  written: once a caller sees the exit file, the log is complete.
* On a shared loop (server mode, ``shared_loop``) one container's exit must
  not stall the others: the drain goes in slices of ``DRAIN_SLICE`` bytes
  with a loop turn between them, attach clients are flushed by the loop
  (each one's own stall limit still applies), and the log's fsync runs in a
  worker thread; the exit file is written once it has returned.  Waits that
  end by themselves call ``resume`` (the driver's hook) when they end.
"""

from __future__ import annotations

import _signal
import os

from .children import FORWARDED, START_MESSAGE_MAX, UNKNOWN_STATUS, Children, LocalChildren
from .diag import Diagnostics
from .exitfiles import exit_code_from_status, write_exit_files
from .loop import EventLoop
from .options import Options
from .process import (
    fd_from_env,
    open_fds,
    redirect_stdio_to_devnull,
    set_oom_score_adj,
    set_subreaper,
    tune_malloc,
    write_file_atomic,
)
from .runtime import ListenPidError, listen_pid_env, preserved_fd_count, runtime_argv
from .streams import STDOUT
from .syncpipe import SyncPipe

# Output kept from before the container pid is known: the error of a runtime that failed after
# sending the pty (crun's exec), as much as is kept of its stderr pipe (stdio.RUNTIME_ERR_MAX).
PTY_ERROR_MAX = 8192
# Shared loop (server mode): bytes drained per loop turn after an exit, and how often the attach
# clients' progress is looked at while they are flushed at an exit.
SHARED_READ_CHUNK = 128 << 10
DRAIN_SLICE = SHARED_READ_CHUNK  # one read per turn: several exits at once stay within a few ms
ATTACH_FLUSH_POLL_S = 0.01

TYPE_CHECKING = False  # typing costs 7 ms at start-up
if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, Generator

    from .attach import AttachServer
    from .config import Settings
    from .ctl import ControlFifos
    from .logsink import LogSinks
    from .metrics import MetricsReporter
    from .notify import NotifyRelay
    from .oom import OomWatcher
    from .ratelimit import DropLimiter
    from .stdio import ContainerStdio
    from .takeover import Adoption

SIGKILL, SIGPIPE, SIGINT = 9, 13, 2


class Fatal(Exception):
    """An error that ends the monitor with exit status 1."""


class Monitor:
    """Runs and supervises one container (or exec session)."""

    def __init__(self, opts: Options, diag: Diagnostics, sync: SyncPipe, attach_pipe: SyncPipe | None,
                 start_fd: int | None, inherited: list[int], old_oom: str | None, sinks: LogSinks | None,
                 loop: EventLoop | None = None, children: Children | None = None,
                 adopted: Adoption | None = None) -> None:
        self.opts = opts
        self.diag = diag
        self.sync = sync
        self.attach_pipe = attach_pipe
        self.start_fd = start_fd
        self.inherited = inherited
        self.old_oom = old_oom
        self.sinks = sinks
        self.loop = loop or EventLoop()
        # Forks, reaps and signals: in this process (classic) or in the stub (server mode).
        self.children = children or LocalChildren(diag)
        self.statuses = self.children.statuses
        self.adopted = adopted  # classic mode taking over from a server-mode stub (takeover.py)
        self.runtime_pid = 0
        self.container_pid = 0
        self.timed_out = False
        self.oom_killed = False
        self.stdio: ContainerStdio | None = None
        self.attach: AttachServer | None = None
        self.fifos: ControlFifos | None = None
        self.oom: OomWatcher | None = None
        self.notify: NotifyRelay | None = None
        self.passthrough = "passthrough" in opts.log_kinds()
        self.winsize: tuple[int, int] | None = None  # the last size asked for through ctl/winsz
        self.settings: Settings | None = None  # the configuration file and annotations, if any
        self.limiter: DropLimiter | None = None
        self.metrics: MetricsReporter | None = None
        self.early_output = b""  # the first bytes of output before there is a container pid (see below)
        self.shared_loop = False  # server mode: never block the loop (module note)
        self.resume: Callable[[], None] = lambda: None  # the driver's: a wait below has ended
        self._background: threading.Event | None = None  # set when the worker thread is done

    # -- signals ------------------------------------------------------------------
    def _forward(self, signum: int) -> None:
        if signum not in FORWARDED:
            return
        target = self.container_pid or self.runtime_pid
        if target:
            self.diag.info(f"Forwarding signal {signum} to {target}")
            try:
                os.kill(target, signum)
            except OSError:
                pass

    # -- output ----------------------------------------------------------------
    def _on_output(self, stream: int, data: bytes) -> None:
        if not self.container_pid and len(self.early_output) < PTY_ERROR_MAX:
            self.early_output += data[:PTY_ERROR_MAX - len(self.early_output)]
        if self.sinks is not None:
            self.sinks.write(stream, data)
        if self.attach is not None:
            self.attach.broadcast(stream, data)

    def _log_only(self, stream: int, data: bytes) -> None:
        if self.sinks is not None:
            self.sinks.write(stream, data)

    def _on_input(self, data: bytes) -> None:
        if self.stdio is not None:
            self.stdio.write_stdin(data)

    def _on_client_eof(self) -> None:
        if self.opts.stdin and not self.opts.leave_stdin_open and self.stdio is not None:
            self.stdio.close_stdin()

    def _resize(self, rows: int, cols: int) -> None:
        # Podman writes the first size of an `exec -t` before the runtime runs, when there
        # is no pty yet: keep it and apply it once the pty arrives.
        self.winsize = (rows, cols)
        if self.stdio is not None and self.stdio.has_pty:
            self.stdio.resize(rows, cols)

    def _on_pty(self) -> None:
        assert self.stdio is not None
        self.children.keep({"pty": self.stdio.pty_master})
        # Apply a size that came before the pty at once: the runtime exec's the process
        # right after sending the pty, and it may look at its size before the runtime exits.
        if self.winsize is not None:
            try:
                self._resize(*self.winsize)
            except OSError as err:
                self.diag.warn(f"Failed to resize the terminal: {err.strerror}")

    def _reopen_logs(self) -> None:
        if self.sinks is not None:
            self.sinks.reopen()

    # -- set-up ------------------------------------------------------------------
    def _setup_io(self) -> str | None:
        """Create stdio, attach socket and FIFOs; the console socket path, if any."""
        from .stdio import ContainerStdio
        opts = self.opts
        console = None
        if not self.passthrough:
            self.stdio = stdio = ContainerStdio(self.loop, self.diag, self._on_output)
            if self.shared_loop:
                stdio.read_size = SHARED_READ_CHUNK  # one container's read and format: one loop turn
            adopted = self.adopted
            if opts.terminal:
                stdio.on_pty = self._on_pty
            if adopted is not None:  # what a server-mode stub kept (takeover.py)
                stdio.adopt(adopted.in_fd, adopted.out_fd, adopted.err_fd, adopted.pty_fd)
            elif opts.terminal:
                console = stdio.make_console_socket(self.children.environ.get("TMPDIR") or "/tmp")
            else:
                stdio.make_pipes(opts.stdin)
            stdio.on_stdin_closed = lambda: self.children.drop("in")
            if self.sinks is not None:
                self.sinks.attach_loop(self.loop, stdio.pause_output)
            limit = self.settings.log_limit() if self.settings is not None and not opts.exec_ else None
            if limit is not None:
                from .ratelimit import apply_limit
                self.limiter = apply_limit(limit, stdio, self.loop, self._log_only)
            if self.settings is not None and self.settings.metrics_dir and not opts.exec_ and opts.cid:
                from .metrics import MetricsReporter
                self.metrics = MetricsReporter(self.settings.metrics_dir, opts.cid, opts.name, self.loop, self.diag,
                                               self.settings.metrics_interval)
                self.metrics.install(self)
            if opts.bundle and os.path.isdir(opts.bundle):
                from .attach import AttachServer
                from .ctl import ControlFifos
                listener = adopted.attach_fd if adopted is not None and adopted.attach_fd >= 0 else None
                self.attach = AttachServer(self.loop, self.diag, opts.bundle, opts.socket_dir_path, opts.cuuid,
                                           opts.full_attach, self._on_input, self._on_client_eof, listener)
                stdio.on_stdin_backlog = self.attach.pause_input
                self.attach.on_backpressure = stdio.pause_output
                fifo_ends = (adopted.ctl_fds, adopted.winsz_fds) if adopted is not None and \
                    adopted.ctl_fds[0] >= 0 and adopted.winsz_fds[0] >= 0 else None
                self.fifos = ControlFifos(self.loop, self.diag, opts.bundle, self._resize, self._reopen_logs,
                                          fifo_ends)
            self.children.keep(self._takeover_fds())
        if opts.sdnotify_socket and opts.bundle:
            from .notify import NotifyRelay
            try:
                notify = NotifyRelay(opts.bundle, opts.sdnotify_socket, self.diag)
            except OSError as err:
                raise Fatal(f"Failed to create the notify socket: {err.strerror}") from None
            self.notify = notify
            self.loop.add(notify.fd, 1, lambda ev: notify.on_readable())
        return console

    def _takeover_fds(self) -> dict[str, int]:
        """What a classic monitor would need of stdio, attach socket and FIFOs (takeover.KEPT)."""
        fds: dict[str, int] = {}
        if self.stdio is not None:
            for src in self.stdio.sources:
                if not src.is_pty:
                    fds["out" if src.stream == STDOUT else "err"] = src.fd
            if self.stdio.stdin_fd >= 0 and not self.stdio.has_pty:
                fds["in"] = self.stdio.stdin_fd
        if self.attach is not None:
            fds["attach"] = self.attach.sock.fileno()
        if self.fifos is not None:
            fds.update(ctl=self.fifos.ctl.rfd, ctlw=self.fifos.ctl.wfd, winsz=self.fifos.winsz.rfd,
                       winszw=self.fifos.winsz.wfd)
        return fds

    def _spawn_runtime(self, argv: list[str]) -> None:
        opts = self.opts
        env = dict(self.children.environ)
        try:
            # conmon compares with getppid() in the runtime child: LISTEN_PID names the monitor
            # itself (started with --sync by a socket unit), never the caller.
            rewrite_listen_pid = listen_pid_env(env, self.children.pid, opts.replace_listen_pid)
        except ListenPidError as err:
            self.sync.send(-1, str(err))  # conmon's runtime child fails with this text on the sync pipe
            raise Fatal(str(err)) from None
        preserved = range(3, 3 + preserved_fd_count(opts))
        child_fds = self.stdio.child_fds if self.stdio is not None else None
        start_fd = self.start_fd if opts.exec_attach else None
        self.children.spawn_runtime(argv, env, rewrite_listen_pid, child_fds, preserved, start_fd, self.old_oom)

    def _read_pidfile(self) -> int:
        path = self.opts.container_pidfile
        assert path
        try:
            with open(path, "rb") as f:
                text = f.read().strip()
            pid = int(text)
        except (OSError, ValueError):
            return 0
        return pid if pid > 0 else 0

    # -- the sequence ------------------------------------------------------------
    def run(self) -> int:
        """The whole sequence in this process's own loop; the exit status."""
        self.loop.on_error = self._on_loop_error
        steps = self.steps()
        try:
            while True:
                self.loop.run_until(next(steps))
        except StopIteration as done:
            return int(done.value)

    def steps(self) -> Generator[Callable[[], bool], None, int]:
        """The sequence, pausing at each wait: yields conditions, returns the exit status.

        Written as a generator so that one event loop can drive many monitors
        (server mode): the driver resumes it once the yielded condition holds.
        Each step below is one stretch of CONTRACT section 2.
        """
        self.children.start(self.loop, self._forward)
        console = self._setup_io()
        if self.adopted is not None:
            runtime_code = self._adopt(self.adopted)  # a server did steps 6-10 (takeover.py)
        else:
            yield from self._launch_runtime(console)  # steps 6-9
            runtime_code = yield from self._wait_for_runtime()  # step 10
        pid = self._container_pid_after(runtime_code)  # steps 10-12
        if pid is None:
            return self._runtime_failed(runtime_code)
        self._supervise(pid)  # step 13
        status = yield from self._wait_for_container(pid)
        code = -1 if self.timed_out or status == UNKNOWN_STATUS else exit_code_from_status(status)
        yield from self._finish_output()  # steps 14-15
        yield self.children.inherited_closed  # at once, unless the stub holds them
        return self._finish(code)  # steps 16-18

    def _launch_runtime(self, console: str | None) -> Generator[Callable[[], bool], None, None]:
        """The runtime child, once stdio, attach socket and FIFOs are there; until it has a pid."""
        opts = self.opts
        if self.attach_pipe is not None:
            self.attach_pipe.send(0)
        argv = runtime_argv(opts, console)
        self.diag.debug("Running " + " ".join(argv))
        try:
            os.unlink(opts.container_pidfile or "")  # a stale pid must never be taken for the new one
        except OSError:
            pass
        self._spawn_runtime(argv)
        if self.passthrough:
            # As conmon: only the runtime (and so the container) keeps the caller's stdio. The
            # monitor lets go of it now, so the exit command (`podman container cleanup`, which
            # prints the container id) never writes into the caller's output.
            redirect_stdio_to_devnull()
            self.diag.use_stderr = False
        if self.stdio is not None:
            self.stdio.close_child_ends()
            self.stdio.collect_early_output()
        if self.start_fd is not None:
            os.close(self.start_fd)  # the child has its own copy for the second byte
            self.start_fd = None
        yield lambda: self.children.runtime_pid is not None  # at once, unless the stub forks it
        if not self.children.runtime_pid:
            raise OSError(f"Failed to fork the runtime: {self.children.spawn_error}")
        self.runtime_pid = self.children.runtime_pid

    def _adopt(self, adopted: Adoption) -> int:
        """Take over from a server-mode stub after its runtime ran; the runtime's exit code."""
        if self.start_fd is not None:
            os.close(self.start_fd)  # the runtime child has read the second byte (or has its copy)
            self.start_fd = None
        if adopted.target > 0 and adopted.target_status is not None:
            self.statuses[adopted.target] = adopted.target_status  # the stub reaped it already
        return exit_code_from_status(adopted.runtime_status)

    def _wait_for_runtime(self) -> Generator[Callable[[], bool], None, int]:
        """Until the runtime child exits (its stderr drained meanwhile); its exit code."""
        yield lambda: self.runtime_pid in self.statuses
        code = exit_code_from_status(self.statuses.pop(self.runtime_pid))
        if self.stdio is not None:
            self.stdio.take_console()  # the runtime has sent the pty by now, if ever (on_pty resizes)
        return code

    def _container_pid_after(self, runtime_code: int) -> int | None:
        """The container's pid, reported on the sync pipe; None if the runtime failed.

        Raises Fatal (after telling the caller) when the runtime succeeded but
        left no pty (with ``-t``) or no pid.
        """
        opts = self.opts
        pid = self._read_pidfile()
        if runtime_code != 0 and not (opts.exec_ and pid):
            return None  # for exec, the runtime's status is the command's own when it ran
        if opts.terminal and self.stdio is not None and not self.stdio.has_pty:
            self.sync.send(-1, "Runtime did not set up terminal")
            raise Fatal("Runtime did not set up terminal")
        if not pid:
            message = self._runtime_error() or f"Failed to read the container pid from {opts.container_pidfile}"
            self.sync.send(-1, message)
            raise Fatal(f"Failed to read the container pid from {opts.container_pidfile}")
        self.container_pid = pid
        if not opts.legacy_exec and not (self.adopted is not None and self.adopted.pid_sent):
            self.sync.send(pid)
        self.diag.debug(f"Container pid {pid}")
        return pid

    def _supervise(self, pid: int) -> None:
        """Start watching: OOM, the exit, the output (what the runtime left first), timers."""
        self._watch_oom()
        self._watch_exit(pid)
        if self.stdio is not None:
            self.stdio.release_early_output()
            self.stdio.watch_output()
        if self.metrics is not None:
            self.metrics.start()
        if self.opts.timeout > 0:
            self.loop.call_later(self.opts.timeout, self._on_timeout)

    def _wait_for_container(self, pid: int) -> Generator[Callable[[], bool], None, int]:
        """Until the container exits; then what is left of its output; its wait status."""
        yield lambda: pid in self.statuses
        if self.stdio is not None:
            if not self.shared_loop:
                self.stdio.drain()
            else:  # in slices, each waiting for a log that holds a backlog (served journald)
                sinks = self.sinks
                while not self.stdio.drain(DRAIN_SLICE, None if sinks is None else lambda: not sinks.drained()):
                    yield self._next_turn(0.0 if sinks is None or sinks.drained() else ATTACH_FLUSH_POLL_S)
        return self.statuses[pid]

    def _next_turn(self, delay: float = 0.0) -> Callable[[], bool]:
        """A wait of ``delay`` seconds, at least one loop turn: the others' events are served meanwhile."""
        fired: list[bool] = []

        def fire() -> None:
            fired.append(True)
            self.resume()
        self.loop.call_later(delay, fire)
        return lambda: bool(fired)

    def _in_thread(self, work: Callable[[], None]) -> Callable[[], bool]:
        """Run ``work`` (blocking system calls: they release the GIL) in a thread; a wait for its end."""
        import threading
        done = threading.Event()
        self.loop.allow_threads()

        def run() -> None:
            try:
                work()
            finally:
                done.set()
                self.loop.call_soon_threadsafe(self.resume)
        threading.Thread(target=run, name="pyconmon-exit-sync", daemon=True).start()
        self._background = done
        return done.is_set

    def _on_loop_error(self, err: Exception) -> None:
        """A callback failed: say where, and keep monitoring the container."""
        tb = err.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        where = f" at {tb.tb_frame.f_code.co_filename.rsplit('/', 1)[-1]}:{tb.tb_lineno}" if tb else ""
        self.diag.error(f"Internal error{where}: {err!r}; carrying on")

    def _watch_exit(self, pid: int) -> None:
        self.children.watch_exit(pid)

    def _runtime_error(self) -> str:
        return self.stdio.runtime_error() if self.stdio is not None else ""

    def _runtime_error_on_pty(self) -> str:
        """What came on the pty of a runtime that failed after sending it: crun's exec writes its
        error there, in colour (runc's goes to the stderr pipe), and the pty is pumped from the
        moment it arrives. Colours dropped, CR LF made LF."""
        if self.stdio is None or self.stdio.pty_master < 0:
            return ""
        data = self.early_output
        try:
            data += os.read(self.stdio.pty_master, PTY_ERROR_MAX)  # what the loop has not taken yet
        except OSError:
            pass
        import re
        data = re.sub(rb"\x1b\[[0-9;]*[A-Za-z]", b"", data[:PTY_ERROR_MAX]).replace(b"\r\n", b"\n")
        return data.decode("utf-8", "replace")

    def _runtime_failed(self, code: int) -> int:
        message = self._runtime_error() or self._runtime_error_on_pty()
        text = f"Failed to create container: exit status {code}"
        self.sync.send(-1, message or text)
        self.diag.error(text)
        self.teardown()
        return 1

    def _watch_oom(self) -> None:
        try:
            from .oom import OomWatcher
        except ImportError:
            return
        try:
            self.oom = OomWatcher.for_pid(self.container_pid, self.diag)
        except Exception as err:  # noqa: BLE001 - a watcher is optional: never fail the container for it
            self.diag.warn(f"Failed to watch for OOM: {err}")
            self.oom = None
        if self.oom is not None:
            for fd in self.oom.fds():
                self.loop.add(fd, 1, lambda ev, fd=fd: self._on_oom_fd(fd))  # type: ignore[misc]

    def _on_oom_fd(self, fd: int) -> None:
        assert self.oom is not None
        try:
            hit = self.oom.on_readable(fd)
        except Exception as err:  # noqa: BLE001 - OOM watching must never end the monitor
            self.diag.warn(f"OOM watcher failed: {err}")
            self.loop.remove(fd)
            return
        if hit:
            self._record_oom()

    def _record_oom(self) -> None:
        if not self.oom_killed:
            self.oom_killed = True
            self.diag.info("Container was OOM killed")
            from .oom import write_oom_files
            write_oom_files(self.opts.persist_dir, self.opts.bundle)

    def _on_timeout(self) -> None:
        if self.container_pid in self.statuses:
            return
        self.timed_out = True
        self.diag.warn(f"Timed out after {self.opts.timeout} seconds: killing the container")
        # As conmon: the process's group, whoever leads it. runc makes an exec'd process its own
        # group leader; crun's exec process joins the group of crun's intermediate child, so
        # killpg(pid) would miss it and leave its children behind. Never our own group.
        try:
            group = os.getpgid(self.container_pid)
        except OSError:
            group = 0
        try:
            if group > 1 and group != self.children.own_group():
                os.killpg(group, SIGKILL)
            else:
                os.kill(self.container_pid, SIGKILL)
        except OSError:
            pass

    def _finish_output(self) -> Generator[Callable[[], bool], None, None]:
        """After the container's end, before the exit files: last OOM check, logs, clients, fds.

        On a shared loop the fsync runs in a thread while the loop flushes the
        attach clients; classic mode does both in place (nothing else waits).
        """
        opts = self.opts
        if self.oom is not None:
            try:
                if self.oom.final_check():
                    self._record_oom()
            except Exception as err:  # noqa: BLE001 - nor must the last OOM check
                self.diag.warn(f"OOM check failed: {err}")
        if self.limiter is not None:
            self.limiter.flush()  # the last `dropped N bytes` marker
        synced: Callable[[], bool] | None = None
        if self.sinks is not None:
            sinks, sync = self.sinks, not opts.no_sync_log
            if self.shared_loop:
                synced = self._in_thread(lambda: sinks.finish(sync))
            else:
                sinks.finish(sync)
        if self.attach is not None:
            if self.shared_loop:
                while not self.attach.flushed():
                    yield self._next_turn(ATTACH_FLUSH_POLL_S)
            else:
                self.attach.flush_all()
        if synced is not None:
            yield synced
            self._background = None
        if self.shared_loop and self.sinks is not None:
            # Served journald sends as the stub: it must outlive the last entry (served_journald.py).
            while not self.sinks.drained():
                yield self._next_turn(ATTACH_FLUSH_POLL_S)
        if self.metrics is not None:
            self.metrics.final()  # before the exit file: who sees it finds the final numbers
        self.children.close_inherited([fd for fd in self.inherited if fd != self.sync.fd])

    def _finish(self, code: int) -> int:
        opts = self.opts
        self.teardown()
        assert opts.cid
        for problem in write_exit_files(code, opts.cid, opts.persist_dir, opts.exit_dir):
            self.diag.error(problem)
        if opts.exec_:
            self.sync.send(code, "command timed out" if self.timed_out else None)
        self.sync.close()
        if opts.exit_command:
            status = self.children.exit_command([opts.exit_command, *opts.exit_command_args], opts.exit_delay,
                                                self.old_oom)
            if status:
                return status
        return code & 0xFF  # as conmon: a --sync caller sees the container's code as our status

    def teardown(self) -> None:
        if self._background is not None:
            self._background.wait()  # the stub went away during the exit fsync: it still uses the log fds
        if self.oom is not None:
            # Registered by this object, so unregistered here: in server mode the loop outlives
            # the container, and a stale entry for a closed fd number made a later container's
            # output pipe with that number never be watched (found with CRI-O).
            for fd in self.oom.fds():
                self.loop.remove(fd)
        for part in (self.attach, self.fifos, self.notify, self.oom):
            if part is not None:
                try:
                    part.close()
                except OSError:
                    pass
        self.attach = self.fifos = self.notify = self.oom = None
        if self.stdio is not None:
            self.stdio.close()
        if self.sinks is not None:
            self.sinks.close()
            self.sinks = None


class _Stop(Exception):
    """A step of :func:`run` ended the process early, with this status (the reason already said)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


class CallerPipes:
    """The fds the caller passed in the environment, and what the process inherited."""

    def __init__(self, opts: Options) -> None:
        self.start = fd_from_env("_OCI_STARTPIPE")  # ValueError for a value that is no number
        self.sync = fd_from_env("_OCI_SYNCPIPE")
        self.attach = fd_from_env("_OCI_ATTACHPIPE") if opts.exec_attach else None
        self.key = "data" if opts.api_version else ("exit_code" if opts.exec_ else "pid")
        # The server-mode stub read the start byte, forked and wrote the pid file already,
        # then lost its server before the runtime ran: this process takes over from there.
        self.resumed = os.environ.pop("_PYCONMON_RESUMED", None) == "1"
        # ... or even after the runtime was forked: this process adopts the container (takeover.py).
        self.adopted: Adoption | None = None
        adopt_text = os.environ.pop("_PYCONMON_ADOPT", None)
        if adopt_text is not None:
            from .takeover import Adoption
            self.adopted = Adoption.parse(adopt_text)  # ValueError, as for a bad fd number
            self.resumed = True
        if self.resumed and not opts.exec_attach:
            self.start = None  # the stub closed it; the number may be reused
        self.inherited = [fd for fd in open_fds() if fd > 2]

    def fail(self, message: str) -> None:
        """Tell the caller on the sync pipe (Podman and CRI-O read errors there, not our stderr)."""
        SyncPipe(self.sync, self.key).send(-1, message)


def run(opts: Options) -> int:
    """The whole life of a monitor process: CONTRACT section 2, steps 1-18."""
    diag, old_oom = _set_up_process(opts)
    try:
        pipes = _caller_pipes(opts, diag)
        settings, sinks = _open_logs(opts, diag, pipes)
        _wait_for_start(opts, diag, pipes)
        _daemonize(opts, diag, pipes)
        inherited = _detach_from_caller(opts, diag, pipes)
    except _Stop as stop:
        return stop.status
    if settings.error is not None:
        pipes.fail(settings.error)
        sinks.close()
        return 1
    sync = SyncPipe(pipes.sync, pipes.key)
    attach_pipe = SyncPipe(pipes.attach, "data") if pipes.attach is not None else None
    monitor = Monitor(opts, diag, sync, attach_pipe, pipes.start, inherited, old_oom, sinks, adopted=pipes.adopted)
    monitor.settings = settings
    try:
        return monitor.run()
    except Fatal as err:
        diag.error(str(err))
        monitor.teardown()
        return 1
    except OSError as err:
        diag.error(f"{err}")
        sync.send(-1, str(err))
        monitor.teardown()
        return 1
    finally:
        if monitor.metrics is not None:
            monitor.metrics.remove()


def _set_up_process(opts: Options) -> tuple[Diagnostics, str | None]:
    """Step 1: diagnostics, umask, oom_score_adj (the old value kept for children), signals."""
    diag = Diagnostics(opts.log_level_num)
    if opts.syslog:
        assert opts.cid
        diag.enable_syslog(opts.cid)
    os.umask(0o022)
    old_oom = set_oom_score_adj("-1000")
    _signal.signal(SIGPIPE, _signal.SIG_IGN)
    _signal.signal(SIGINT, _signal.SIG_DFL)  # like C until the loop forwards it; never KeyboardInterrupt
    tune_malloc()
    return diag, old_oom


def _caller_pipes(opts: Options, diag: Diagnostics) -> CallerPipes:
    """The caller's stdio and pipes: refused if unusable."""
    if "passthrough" in opts.log_kinds():
        for fd in (0, 1, 2):
            if os.isatty(fd):
                diag.error("passthrough log driver cannot be used with a terminal as stdio")
                raise _Stop(1)
    try:
        pipes = CallerPipes(opts)
    except ValueError as err:
        diag.error(f"Invalid fd number in the environment: {err}")
        raise _Stop(1) from None
    # Only now: a syslog socket opened earlier would count as inherited and be closed at exit.
    diag.trace(f"set log level to {opts.log_level or 'warning'}")  # conmon's wording
    return pipes


def _open_logs(opts: Options, diag: Diagnostics, pipes: CallerPipes) -> tuple[Settings, LogSinks]:
    """Settings and log files, before anything starts, so a bad one is a clear error."""
    from .config import Settings, SettingsError, for_container
    from .logpath import LogPathError
    from .logsink import LogSinks
    from .options import ConfigError
    try:  # pyconmon.toml and the io.pyconmon.* annotations: a bad one is refused like a bad option
        settings = for_container(None if opts.exec_ else opts.bundle, passthrough="passthrough" in opts.log_kinds())
    except SettingsError as err:
        # Said now, while stderr is the caller's; refused after the fork (run), like a failing
        # runtime, because CRI-O reads the sync pipe only when the first process exits 0.
        diag.error(str(err))
        settings = Settings()
        settings.error = str(err)
    try:
        sinks = LogSinks.from_options(opts, diag, settings)
    except ConfigError as err:  # conmon's last option checks come after opening the k8s-file
        diag.error(err.text)
        raise _Stop(1) from None
    except (OSError, LogPathError) as err:
        diag.error(f"Failed to open log file: {err}")
        pipes.fail(f"Failed to open log file: {err}")
        raise _Stop(1) from None
    return settings, sinks


def _wait_for_start(opts: Options, diag: Diagnostics, pipes: CallerPipes) -> None:
    """Step 2: one message on the start pipe (the caller may move us into a cgroup first)."""
    if pipes.start is not None and not pipes.resumed:
        try:
            os.read(pipes.start, START_MESSAGE_MAX)  # one message, whatever its length, as conmon
        except OSError as err:
            diag.error(f"Failed to read from the start pipe: {err.strerror}")
    if pipes.start is not None and not opts.exec_attach:
        os.close(pipes.start)  # exec-attach keeps it: the runtime child waits for a second message
        pipes.start = None


def _daemonize(opts: Options, diag: Diagnostics, pipes: CallerPipes) -> None:
    """Step 3: unless --sync, fork; the parent writes the child's pid and exits 0 at once."""
    if pipes.resumed:
        return
    if opts.sync:
        if opts.conmon_pidfile:
            write_file_atomic(opts.conmon_pidfile, str(os.getpid()).encode())
        return
    child = os.fork()
    if child:
        if opts.conmon_pidfile:
            try:
                write_file_atomic(opts.conmon_pidfile, str(child).encode())
            except OSError as err:
                diag.error(f"Failed to write conmon pidfile: {err.strerror}")
                os.kill(child, SIGKILL)
                os._exit(1)
        os._exit(0)


def _detach_from_caller(opts: Options, diag: Diagnostics, pipes: CallerPipes) -> list[int]:
    """Steps 4-5: pipes close-on-exec, stdio to /dev/null, own session, subreaper; the fds to
    close at exit (inherited, neither kept nor preserved)."""
    if opts.exec_attach and pipes.attach is None:
        # conmon's wording and place: after the fork, so without --sync the caller sees status 0.
        diag.error("--attach specified but _OCI_ATTACHPIPE was not set")
        raise _Stop(1)
    keep = {fd for fd in (pipes.sync, pipes.attach, pipes.start) if fd is not None}
    if pipes.adopted is not None:
        keep.update(pipes.adopted.fds())
    inherited = [fd for fd in pipes.inherited if fd not in keep]
    preserved = set(range(3, 3 + preserved_fd_count(opts)))
    for fd in inherited + list(keep):
        if fd not in preserved:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass
    if "passthrough" not in opts.log_kinds():
        redirect_stdio_to_devnull()
        diag.use_stderr = False
    try:
        os.setsid()
    except OSError:
        pass
    try:
        set_subreaper(True)
    except OSError as err:
        diag.warn(f"Failed to become a child subreaper: {err.strerror}")
    return inherited
