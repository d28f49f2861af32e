"""The monitor server: one process and one event loop for many containers.

Each container's ``conmon`` (the static stub, launcher/stub.c) connects to
this server's unix socket and gets a :class:`~pyconmon.session.StubSession`:
a Monitor in the shared loop whose processes the stub forks and reaps.  A
container then costs the server a few KB of Python objects and a dozen fds
instead of a Python process of its own.

Facts that shape it:

* The stub binds the socket (in a 0700 directory of its uid: /run/pyconmon
  for root, $XDG_RUNTIME_DIR/pyconmon for a user and for uid 0 of a user
  namespace, i.e. rootless Podman, one socket per user and mount namespace)
  and execs the server with the listening fd, so the first
  container's connect succeeds at once; the hello is answered once Python
  is up.  The socket's name carries the build key, so another install or
  version starts another server and the old one ends when idle.
* Only peers of our own uid are served (``SO_PEERCRED``): root serves only
  root, so the server is never a privilege-escalation service.  A peer in
  other user, mount, pid or cgroup namespaces, with other capabilities
  (effective, permitted, bounding, inheritable, ambient), no_new_privs,
  seccomp mode or filter count, or another LSM label than the server's is
  told to run classic (ZYGOTE.md R8): the runtime and exit command it forks
  get its own, but the server would act for it with the server's.
* A dozen fds per container: the soft RLIMIT_NOFILE is raised to the hard one.
* The server is one task doing many monitors' work: it weighs as much as
  the ones flooding now (cpuweight.py), and its loop takes turns fairly
  among floods (loop.py).
* Every module is imported at start-up: an upgrade replaces the files under a
  running server, which must not then load a module of the new version.
* The server is started from a container's monitor scope; it moves into a
  cgroup of its own beside that scope, so it does not keep the scope alive
  (where the cgroup file system lets it; placement of the containers'
  processes is the stubs', untouched).
"""

from __future__ import annotations

import os
import socket
import struct
import time

from .cpuweight import ServerWeight
from .loop import EventLoop
from .session import StubSession

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

IDLE_EXIT_S = 60.0
NAMESPACES = ("user", "mnt", "pid", "cgroup")
# /proc/PID/status lines that must be the server's own (absent lines, e.g. on an old kernel, compare as absent)
PRIVILEGE_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp", "Seccomp_filters")


def peer_problem(pid: int, label_of: Callable[[str], bytes | None] | None = None) -> str | None:
    """Why a peer can't be served by this process (namespaces, privileges, LSM label), or None."""
    for ns in NAMESPACES:
        try:
            if os.stat(f"/proc/{pid}/ns/{ns}").st_ino != os.stat(f"/proc/self/ns/{ns}").st_ino:
                return f"other {ns} namespace"
        except OSError:
            return "namespaces unknown"
    try:
        theirs, ours = privileges(str(pid)), privileges("self")
    except OSError:
        return "privileges unknown"
    differ = [name for name in PRIVILEGE_FIELDS if theirs.get(name) != ours.get(name)]
    if differ:
        return "other " + ", ".join(differ)
    label_of = label_of or lsm_label
    if label_of(str(pid)) != label_of("self"):
        return "other LSM label"
    return None


def privileges(pid: str) -> dict[str, str]:
    """The PRIVILEGE_FIELDS of /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        lines = f.read().splitlines()
    found = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name in PRIVILEGE_FIELDS:
            found[name] = value.strip()
    return found


def lsm_label(pid: str) -> bytes | None:
    """The LSM label (/proc/PID/attr/current), None where no LSM provides one (EINVAL)."""
    try:
        with open(f"/proc/{pid}/attr/current", "rb") as f:
            return f.read().rstrip(b"\0\n")
    except OSError:
        return None


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the peer, from SO_PEERCRED."""
    data = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", data)
    return pid, uid, gid


class Server:
    """Accepts stubs and runs their sessions until idle."""

    def __init__(self, listener: socket.socket, key: bytes, path: str | None = None,
                 idle_exit: float = IDLE_EXIT_S, loop: EventLoop | None = None) -> None:
        self.listener = listener
        self.key = key
        self.path = path
        self.path_ino = _inode(path)
        self.idle_exit = idle_exit
        self.loop = loop or EventLoop()
        self.sessions: set[StubSession] = set()
        self.refused = 0
        self.last_active = time.monotonic()
        self.stopping = False
        self.weight = ServerWeight(self.loop)  # cpuweight.py: as much CPU weight as the monitors it replaces
        listener.setblocking(False)
        self.loop.add(listener.fileno(), 1, self._on_accept)
        self.loop.on_error = lambda err: None  # a failed callback is one container's problem
        self._arm_idle()

    def _on_accept(self, events: int) -> None:
        while True:
            try:
                conn, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # EMFILE and the like: the stub times out and runs classic
            conn.setblocking(True)
            try:
                pid, uid, gid = peer_credentials(conn)
            except OSError:
                conn.close()
                continue
            if uid != os.geteuid():
                self.refused += 1
                conn.close()
                continue
            self.last_active = time.monotonic()
            session = StubSession(conn, self.loop, self.key, self._on_closed, _checker(pid), (pid, uid, gid))
            self.sessions.add(session)
            self.weight.arm()

    def _on_closed(self, session: StubSession) -> None:
        self.sessions.discard(session)
        self.last_active = time.monotonic()
        if not self.sessions:
            self.weight.disarm()

    def _arm_idle(self) -> None:
        self.loop.call_later(max(0.05, self.idle_exit / 4), self._idle_check)

    def _idle_check(self) -> None:
        if not self.sessions and time.monotonic() - self.last_active >= self.idle_exit:
            self.stop()
        else:
            self._arm_idle()

    def stop(self) -> None:
        """Stop accepting: remove the socket (if still ours) so the next stub starts a new server."""
        self.stopping = True
        if self.path is not None and _inode(self.path) == self.path_ino:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        self.loop.remove(self.listener.fileno())
        self.listener.close()

    def run(self) -> None:
        self.loop.run_until(lambda: self.stopping)
        # Connections accepted just before the stop still get their answer.
        self.loop.run_until(lambda: not self.sessions)


def _checker(pid: int) -> Callable[[], str | None]:
    return lambda: peer_problem(pid)


def _inode(path: str | None) -> int | None:
    try:
        return os.stat(path).st_ino if path else None
    except OSError:
        return None


def raise_fd_limit() -> None:
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError):
            pass


def leave_monitor_scope() -> None:
    """Move out of the first container's monitor cgroup (a conmon cgroup, a scope, or a service's
    when the mode is "always") into one beside it."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return
    for line in lines:
        _id, controllers, path = line.split(":", 2)
        last = path.rsplit("/", 1)[-1]
        if "conmon" not in last and not last.endswith((".scope", ".service")):
            continue
        if controllers == "":
            mount = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"
        else:
            name = controllers.split(",")[0].removeprefix("name=")
            mount = f"/sys/fs/cgroup/{name}"
        target = f"{mount}{path.rsplit('/', 1)[0]}/pyconmon-server"
        try:
            os.makedirs(target, exist_ok=True)
            with open(f"{target}/cgroup.procs", "w") as f:
                f.write("0")
        except OSError:
            pass


def import_everything() -> None:
    """Import every module of the package now.

    The monitor imports lazily, to start fast; a server lives long, and an
    upgrade replaces the files under it (the new install gets its own server,
    by its key): a module first imported after that would be the new version
    in the old process.  The cost is paid once, shared by every container.
    """
    import importlib
    package = os.path.dirname(os.path.abspath(__file__))
    for name in sorted(os.listdir(package)):
        if name.endswith(".py") and name not in ("__main__.py", "__init__.py"):
            try:
                importlib.import_module(f"{__package__}.{name[:-3]}")
            except ImportError:
                pass  # an optional part missing here (as the monitor tolerates)


def main(argv: list[str]) -> int:
    """``pyconmon-server --listen-fd N --socket PATH --key KEY [--idle S]`` (exec'd by the stub)."""
    import _signal
    args = dict(zip(argv[::2], argv[1::2], strict=False))
    from .process import set_oom_score_adj
    _signal.signal(13, _signal.SIG_IGN)  # SIGPIPE: a stub that went away is a closed session
    os.umask(0o022)  # as each classic monitor: the files it creates
    set_oom_score_adj("-1000")  # as each classic monitor: the OOM killer spares it
    raise_fd_limit()
    leave_monitor_scope()
    import_everything()
    if "--listen-fd" in args:
        listener = socket.socket(fileno=int(args["--listen-fd"]))
    else:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        listener.bind(args["--socket"])
        listener.listen(1024)
    server = Server(listener, args.get("--key", "dev").encode(), args.get("--socket"),
                    float(args.get("--idle", IDLE_EXIT_S)))
    server.run()
    return 0
