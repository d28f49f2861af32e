"""sd_notify relay for ``--sdnotify-socket``.

The container talks to ``<bundle>/notify/notify.sock`` (a datagram socket,
mode 0777).  Podman bind-mounts ``<bundle>/notify`` into the container as
``/run/notify`` and puts ``NOTIFY_SOCKET=/run/notify/notify.sock`` in the
container's own environment (config.json); the monitor only owns the socket.
From each datagram only the lines systemd should hear from a container are
forwarded, joined by ``\\n``, to the host socket; ``MAINPID=`` never passes
(the manager announces the main pid itself) and neither does anything
unknown (``FDSTORE=``, ``BARRIER=``...).  File descriptors sent along
(``SCM_RIGHTS``) are dropped by the kernel because no control buffer is
offered.

C conmon 2.1.6 (observed with strace): binds the socket through
``/proc/self/fd/<bundle dirfd>/notify/notify.sock`` after unlinking a stale
one, chmods it 0777, needs the ``notify`` dir to exist, sends from a separate
unbound datagram socket with ``sendto(..., MSG_DONTWAIT|MSG_NOSIGNAL)``, and
forwards only ``READY=1`` or ``WATCHDOG=1`` (one per datagram).  It does not
set ``NOTIFY_SOCKET`` for the runtime: the runtime inherits the monitor's own
environment unchanged.
"""

from __future__ import annotations

import _socket
import errno
import os

from .unixpath import SUN_PATH_MAX, bind_in, via_fd

TYPE_CHECKING = False  # typing costs 7 ms at start-up

if TYPE_CHECKING:
    from .diag import Diagnostics

ALLOWED_LINES = frozenset({b"READY=1", b"RELOADING=1", b"STOPPING=1", b"WATCHDOG=1", b"WATCHDOG=trigger"})
ALLOWED_PREFIXES = (b"STATUS=", b"ERRNO=", b"BUSERROR=", b"MONOTONIC_USEC=")

_RECV_SIZE = 65536  # longer datagrams are truncated; sd_notify messages are short
_MAX_PER_WAKEUP = 256  # level-triggered: a flooding container can't starve the loop


def filter_notify(payload: bytes) -> bytes:
    """Keep only the lines a container may pass on to systemd, joined by ``\\n``."""
    return b"\n".join(
        line for line in payload.split(b"\n") if line in ALLOWED_LINES or line.startswith(ALLOWED_PREFIXES)
    )


class NotifyRelay:
    """Relays sd_notify datagrams from the container to the host socket (``--sdnotify-socket``)."""

    def __init__(self, bundle: str, host_socket: str, diag: Diagnostics) -> None:
        """Bind ``<bundle>/notify/notify.sock``; raises OSError when that fails."""
        self.diag = diag
        self.host_socket = host_socket
        notify_dir = os.path.join(bundle, "notify")
        self.socket_path = os.path.join(notify_dir, "notify.sock")
        try:
            os.mkdir(notify_dir, 0o755)
        except FileExistsError:
            pass
        # Bind through the directory's fd so a long bundle path fits sun_path.
        dirfd = os.open(notify_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        sock = None
        try:
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK)
            bind_in(sock, dirfd, "notify.sock", 0o777)
            self._out = _socket.socket(
                _socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
            )
        except BaseException:
            if sock is not None:
                sock.close()
            os.close(dirfd)
            raise
        self._dirfd = dirfd
        self._sock: _socket.socket | None = sock
        self.fd = sock.fileno()
        self._host_dirfd = -1
        self._host_addr = self._host_address(host_socket)

    def _host_address(self, path: str) -> str:
        if path.startswith("@"):  # abstract namespace, as sd_notify(3) accepts
            return "\0" + path[1:]
        if len(os.fsencode(path)) <= SUN_PATH_MAX:
            return path
        try:
            self._host_dirfd = os.open(os.path.dirname(path) or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return path  # sendto fails and warns
        return via_fd(self._host_dirfd, os.path.basename(path))

    def on_readable(self) -> None:
        """Read the pending datagrams and forward what passes the filter; never raises."""
        sock = self._sock
        if sock is None:
            return
        for _ in range(_MAX_PER_WAKEUP):
            try:
                data = sock.recv(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.diag.warn_once("sdnotify-recv", f"Failed to read from the notify socket: {err.strerror}")
                return
            out = filter_notify(data)
            if out:
                self._forward(out)

    def _forward(self, data: bytes) -> None:
        try:
            self._out.sendto(data, _socket.MSG_DONTWAIT | _socket.MSG_NOSIGNAL, self._host_addr)
        except (BlockingIOError, InterruptedError):
            self.diag.warn_once("sdnotify-full", f"Notify socket {self.host_socket} is full: dropped a message")
        except OSError as err:
            reason = err.strerror or errno.errorcode.get(err.errno or 0, str(err))
            self.diag.warn_once("sdnotify-send", f"Failed to send notification to {self.host_socket}: {reason}")
        else:
            self.diag.forget("sdnotify-send")
            self.diag.forget("sdnotify-full")

    def close(self) -> None:
        """Close both sockets and unlink ``notify.sock``."""
        if self._sock is None:
            return
        self._sock.close()
        self._sock = None
        self._out.close()
        try:
            os.unlink("notify.sock", dir_fd=self._dirfd)
        except OSError:
            pass
        os.close(self._dirfd)
        if self._host_dirfd >= 0:
            os.close(self._host_dirfd)
            self._host_dirfd = -1
        self.fd = -1
