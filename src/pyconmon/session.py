"""One stub connection in the server: a Monitor whose processes live in the stub.

The stub (launcher/stub.c) is the process the caller started; it forks the
runtime and the exit command, reaps, forwards signals and exits when told.
Here the server side of one connection decides whether it can serve the
caller exactly (else the stub runs the classic monitor, before the start
byte is read, so nothing is lost), then drives a
:class:`~pyconmon.monitor.Monitor` in the shared event loop through its
``steps()`` generator, resuming it when the stub reports a pid or a status.

CRI-O's ExecSync (legacy exec with ``--sync``) is served too: the stub does
not fork then, so the process CRI-O started, waits for and SIGINTs is the
stub, which forwards the signal and exits with the command's code; a ``-T``
timeout kills the exec process's group from here, sparing the stub's own.

Where the server cannot act exactly as the caller's own process would, it
answers "classic":

* the passthrough driver (the caller's stdio would have to be handed over);
* journald when the server may not send entries as the stub (no
  CAP_SYS_ADMIN: they would carry the server's pid and unit;
  served_journald.py);
* metrics (pyconmon.toml ``metrics.dir``: they report the monitor process's
  own memory and CPU);
* relative paths (the server has its own working directory);
* another version, or a peer in other namespaces than the server's.
"""

from __future__ import annotations

import os

from . import protocol
from .children import UNKNOWN_STATUS, Children
from .diag import Diagnostics

TYPE_CHECKING = False
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Generator

    from .config import Settings
    from .logsink import LogSinks
    from .loop import EventLoop
    from .monitor import Monitor
    from .options import Options

SERVED_LOG_KINDS = frozenset({"k8s-file", "none"})


class StubChildren(Children):
    """Asks the stub to fork, watch and run the exit command; statuses arrive as messages."""

    def __init__(self, session: StubSession, environ: dict[str, str], stub_pid: int, read_start: bool) -> None:
        super().__init__()
        self.session = session
        self.environ = environ
        self.pid = stub_pid
        self.read_start = read_start
        self.exit_argv: list[str] = []
        self.exit_delay = 0
        self.closing_inherited = False

    def spawn_runtime(self, argv: list[str], env: dict[str, str], rewrite_listen_pid: bool,
                      child_fds: list[int] | None, preserved: range, start_fd: int | None,
                      old_oom: str | None) -> None:
        fds: list[int] = []
        stdio_map = b""
        for fd in child_fds if child_fds is not None else []:
            if fd >= 0:
                stdio_map += str(len(fds)).encode()
                fds.append(fd)
            else:
                stdio_map += b"-"
        flags = (b"L" if rewrite_listen_pid else b"") + (b"A" if self.read_start else b"")
        env_fields = [os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items()]
        fields = [flags, stdio_map, str(len(preserved)).encode(), str(len(argv)).encode(),
                  *map(os.fsencode, argv), *env_fields]
        self.session.send(protocol.FORK, fields, fds)

    def keep(self, fds: dict[str, int]) -> None:
        # Should this server die, the classic monitor the stub then execs goes on with these
        # (takeover.py): the same pipes, pty, attach listener and FIFOs.
        if fds:
            self._send_quietly(protocol.KEEP, [name.encode() for name in fds], list(fds.values()))

    def drop(self, name: str) -> None:
        self._send_quietly(protocol.DROP, [name.encode()])

    def _send_quietly(self, kind: bytes, fields: list[bytes], fds: list[int] | None = None) -> None:
        try:
            self.session.send(kind, fields, fds or [])
        except OSError:
            pass  # the stub is gone: its connection's end closes the session

    def own_group(self) -> int:
        return self.pid  # the stub called setsid(), or led its group already: either way its pid

    def watch_exit(self, pid: int) -> None:
        self.session.send(protocol.WATCH, [str(pid).encode()])

    def close_inherited(self, fds: list[int]) -> None:
        self.session.send(protocol.CLOSE_INHERITED)
        self.closing_inherited = True

    def inherited_closed(self) -> bool:
        return not self.closing_inherited  # the stub's ``k``: they are closed before the exit file

    def exit_command(self, argv: list[str], delay: int, old_oom: str | None) -> int:
        self.exit_argv, self.exit_delay = argv, delay  # run by the stub when it quits
        return 0


class StubSession:
    """The server's half of one stub connection."""

    def __init__(self, sock: socket.socket, loop: EventLoop, key: bytes, on_closed: Callable[[StubSession], None],
                 check_peer: Callable[[], str | None] = lambda: None,
                 peer: tuple[int, int, int] = (0, -1, -1)) -> None:
        self.sock = sock
        self.loop = loop
        self.key = key
        self.on_closed = on_closed
        self.check_peer = check_peer
        self.peer = peer  # pid, uid, gid of the stub (SO_PEERCRED)
        self.opts: Options | None = None
        self.environ: dict[str, str] = {}
        self.diag: Diagnostics | None = None
        self.sinks: LogSinks | None = None
        self.settings: Settings | None = None
        self.monitor: Monitor | None = None
        self.children: StubChildren | None = None
        self.steps: Generator[Callable[[], bool], None, int] | None = None
        self.waiting: Callable[[], bool] | None = None
        self.finished = False
        self.closed = False
        loop.add(sock.fileno(), 1, self._on_readable)

    # -- transport ------------------------------------------------------------
    def send(self, kind: bytes, fields: list[bytes] | tuple[bytes, ...] = (),
             fds: list[int] | tuple[int, ...] = ()) -> None:
        if not self.closed:
            protocol.send(self.sock, kind, fields, fds)

    def _on_readable(self, events: int) -> None:
        try:
            packet = protocol.receive(self.sock)
        except (OSError, protocol.ProtocolError):
            packet = None
        if packet is None:
            self.close()
            return
        kind, fields, fds = packet
        try:
            self._dispatch(kind, fields, fds)
        except protocol.ProtocolError:
            protocol.close_all(fds)
            self.close()

    def _dispatch(self, kind: bytes, fields: list[bytes], fds: list[int]) -> None:
        if kind == protocol.HELLO and self.opts is None:
            protocol.close_all(fds)
            reason = self._hello(fields)
            if reason is None:
                assert self.diag is not None and self.diag.captured is not None
                self.send(protocol.OK, ["".join(self.diag.captured).encode("utf-8", "replace")])
                self.diag.captured = None
                self.diag.use_stderr = False  # the caller's stderr stays with the stub
            else:
                self.send(protocol.CLASSIC, [reason.encode()])
                self.close()
        elif kind == protocol.STARTED and self.opts is not None and self.monitor is None:
            self._started(fields, fds)
        elif kind == protocol.SPAWNED and self.children is not None:
            protocol.close_all(fds)
            pid = protocol.int_field(fields, 0)
            self.children.runtime_pid = pid
            if pid <= 0:
                self.children.spawn_error = os.fsdecode(fields[1]) if len(fields) > 1 else "fork failed"
            self._advance()
        elif kind == protocol.INHERITED_CLOSED and self.children is not None:
            protocol.close_all(fds)
            self.children.closing_inherited = False
            self._advance()
        elif kind == protocol.EXITED and self.children is not None:
            protocol.close_all(fds)
            pid, status = protocol.int_field(fields, 0), protocol.int_field(fields, 1)
            if status == UNKNOWN_STATUS and self.diag is not None:
                self.diag.warn(f"Process {pid} exited but is not our child: its exit status is unknown")
            self.children.statuses[pid] = status
            self._advance()
        else:
            raise protocol.ProtocolError(f"unexpected message {kind!r}")

    # -- hello: can we serve this caller exactly? ----------------------------------
    def _hello(self, fields: list[bytes]) -> str | None:
        """None if the server will serve; else why the stub must run classic."""
        from .options import ConfigError, UsageError, parse_args, validate
        key, cwd, argv, env = protocol.parse_hello(fields)
        if key != self.key:
            return "another pyconmon version"
        problem = self.check_peer()
        if problem:
            return problem
        try:
            opts = parse_args([os.fsdecode(a) for a in argv[1:]])
        except UsageError:
            return "usage error"
        if opts.help or opts.version or opts.print_config:
            return "not a monitor run"
        try:
            validate(opts, os.fsdecode(cwd))
        except ConfigError:
            return "configuration error"
        kinds = opts.log_kinds()
        if not kinds <= SERVED_LOG_KINDS | {"journald"}:
            return "log driver"
        if "journald" in kinds:
            from .served_journald import can_send_as
            if not can_send_as(*self.peer):
                return "journald: cannot send as the monitor process (no CAP_SYS_ADMIN)"
        if not opts.cid:
            return "no container id"  # conmon accepts an empty --cid; classic reports what follows
        for path in paths_of(opts):
            if not os.path.isabs(path):
                return "relative path"
        environ: dict[str, str] = {}
        for entry in env:
            name, eq, value = entry.partition(b"=")
            if eq:  # all of it, PYCONMON_MODE too: the runtime gets what a classic monitor passes on
                environ.setdefault(os.fsdecode(name), os.fsdecode(value))
        diag = Diagnostics(opts.log_level_num)
        diag.captured = []  # until the start: lines for the caller's stderr, which the stub writes
        if opts.syslog:
            diag.enable_syslog(opts.cid)
        diag.trace(f"set log level to {opts.log_level or 'warning'}")  # conmon's wording
        from .config import SettingsError, for_container
        try:
            settings = for_container(None if opts.exec_ else opts.bundle, passthrough=False)
        except SettingsError:
            return "settings"  # classic reports it
        if settings.metrics_dir:
            return "metrics"  # they give the monitor process's own memory and CPU
        from .logpath import LogPathError
        from .logsink import LogSinks
        if opts.exec_attach and "_OCI_ATTACHPIPE" not in environ:
            return "no attach pipe"  # classic reports it as C does
        try:
            self.sinks = LogSinks.from_options(opts, diag, settings, served=True)
        except ConfigError:
            return "configuration error"  # conmon's checks after opening the k8s-file: classic reports them
        except (OSError, LogPathError):
            return "log file"  # classic reports it exactly as C does
        self.opts, self.environ, self.diag, self.settings = opts, environ, diag, settings
        return None

    # -- started: the stub has read the start byte, forked and written the pid file --------------
    def _started(self, fields: list[bytes], fds: list[int]) -> None:
        from .monitor import Monitor
        from .syncpipe import SyncPipe
        opts, diag = self.opts, self.diag
        assert opts is not None and diag is not None
        stub_pid = protocol.int_field(fields, 0)
        old_oom = os.fsdecode(fields[1]) if len(fields) > 1 and fields[1] else None
        names = [f.decode() for f in fields[2:]]
        if len(names) != len(fds):
            protocol.close_all(fds)
            raise protocol.ProtocolError("fd names do not match the fds")
        named = dict(zip(names, fds, strict=True))
        diag.pid = stub_pid
        if self.sinks is not None:
            for writer in self.sinks.writers:
                if hasattr(writer, "send_as"):  # journald: entries name the stub, as a classic monitor's would
                    writer.send_as(stub_pid, self.peer[1], self.peer[2])
        key = "data" if opts.api_version else ("exit_code" if opts.exec_ else "pid")
        sync = SyncPipe(named.get("sync"), key)
        attach_fd = named.get("attach")
        attach_pipe = SyncPipe(attach_fd, "data") if attach_fd is not None and opts.exec_attach else None
        self.children = StubChildren(self, self.environ, stub_pid, bool(opts.exec_attach))
        self.monitor = Monitor(opts, diag, sync, attach_pipe, None, [], old_oom, self.sinks, self.loop,
                               self.children)
        self.monitor.settings = self.settings
        self.monitor.shared_loop = True  # never block the other containers (monitor.py's note)
        self.monitor.resume = self._advance
        self.sinks = None
        self.steps = self.monitor.steps()
        self._advance()

    def _advance(self) -> None:
        """Resume the monitor's sequence while what it waits for holds."""
        from .monitor import Fatal
        monitor, steps = self.monitor, self.steps
        if monitor is None or steps is None or self.finished:
            return
        try:
            while self.waiting is None or self.waiting():
                self.waiting = next(steps)
        except StopIteration as done:
            self._quit(int(done.value))
        except Fatal as err:
            monitor.diag.error(str(err))
            monitor.teardown()
            self._quit(1)
        except OSError as err:
            monitor.diag.error(f"{err}")
            monitor.sync.send(-1, str(err))
            monitor.teardown()
            self._quit(1)
        except Exception as err:  # noqa: BLE001 - one container's bug must not end the server
            monitor.diag.error(f"Internal error: {err!r}")
            monitor.teardown()
            self._quit(1)

    def _quit(self, code: int) -> None:
        self.finished = True
        children, monitor = self.children, self.monitor
        assert children is not None and monitor is not None
        # What the end of a classic monitor process closes: the caller waits for these EOFs.
        monitor.sync.close()
        if monitor.attach_pipe is not None:
            monitor.attach_pipe.close()
        fields = [str(code).encode(), str(children.exit_delay).encode(), *map(os.fsencode, children.exit_argv)]
        try:
            self.send(protocol.QUIT, fields)
        except OSError:
            self.close()

    def close(self) -> None:
        """The stub went away (or we refused it): release everything of this container."""
        if self.closed:
            return
        self.closed = True
        self.loop.remove(self.sock.fileno())
        self.sock.close()
        if self.monitor is not None and not self.finished:
            self.finished = True
            self.monitor.teardown()  # like a killed C conmon: the container loses its reader
            self.monitor.sync.close()
        if self.sinks is not None:
            self.sinks.close()
            self.sinks = None
        self.on_closed(self)


def paths_of(opts: Options) -> list[str]:
    """The paths the server itself opens (they must not depend on the caller's cwd)."""
    paths = [p for p in (opts.bundle, opts.container_pidfile, opts.exit_dir, opts.persist_dir,
                         opts.socket_dir_path, opts.runtime, opts.exec_process_spec, opts.restore) if p]
    paths += [d.path for d in opts.log_drivers if d.path]
    paths += opts.log_allowlist_dirs
    return paths
