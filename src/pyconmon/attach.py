"""The attach socket: container output to clients, client input to stdin.

Wire format (CONTRACT 4): SOCK_SEQPACKET; each packet to a client is one
stream byte (2 stdout, 3 stderr) and at most 8192 bytes of data, because
clients read with an 8193-byte buffer and SEQPACKET silently truncates.
Input packets are raw bytes for the container's stdin (CRI-O sends up to
32 KiB at a time).

Facts that shape this module:

* Sockets in ``sun_path`` are limited to 108 bytes and bundle paths are
  longer, so the socket is bound as ``/proc/self/fd/<dirfd>/attach`` through
  an O_PATH handle on its directory.
* conmon writes to clients with blocking writes, so one client that stops
  reading stalls the container, the log and every other client for as long
  as it likes.  Here each client socket is non-blocking and has its own
  queue, and the two cases are told apart:

  - a client that reads, but slower than the container writes (``podman
    run`` into a slow terminal or pipe), must not lose output: once it is
    ``CLIENT_QUEUE_SOFT`` behind, the monitor stops reading the container's
    output (``on_backpressure(True)``) until every client is back under
    half of that, so the container runs at the pace of its readers, as with
    conmon, and memory stays bounded;
  - a client that takes nothing for ``CLIENT_STALL_S`` seconds while that
    far behind is stuck: it is disconnected with a warning (the log still
    has everything) and the output flows again.  A stuck client so costs the
    container at most about a second, never more.

  ``CLIENT_QUEUE_HARD`` is a last bound on one client's queue.
* A client that half-closes (``SHUT_WR``: its stdin ended) still wants
  output; only a full hangup (EPOLLHUP, or an error on send) removes it.
  After EOF the client stays registered with no input interest so that the
  hangup is still reported without the read side spinning.
"""

from __future__ import annotations

import _socket
import os
from _collections import deque
from time import monotonic

from .diag import Diagnostics
from .loop import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EventLoop
from .unixpath import bind_in

TYPE_CHECKING = False  # typing costs 7 ms at start-up; annotations are strings anyway
if TYPE_CHECKING:
    from collections.abc import Callable

    from .loop import Timer

MAX_PACKET_DATA = 8192
CLIENT_QUEUE_SOFT = 4 << 20  # past this backlog a client must be making progress
CLIENT_QUEUE_HARD = 16 << 20  # no client is ever this far behind
CLIENT_QUEUE_LOW = CLIENT_QUEUE_SOFT // 2  # output flows again when every client is under this
CLIENT_STALL_S = 1.0  # no progress for this long past the soft limit: stuck
INPUT_READ = 65536
_SOCK_FLAGS = _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK


def packets(stream: int, data: bytes) -> list[bytes]:
    """Attach packets for one chunk of output."""
    head = bytes((stream,))
    if len(data) <= MAX_PACKET_DATA:
        return [head + data]
    return [head + data[i:i + MAX_PACKET_DATA] for i in range(0, len(data), MAX_PACKET_DATA)]


def link_path(socket_dir: str, cuuid: str) -> str:
    """``<socket dir>/<cuuid>``, cut by one byte when it is exactly 107 long (conmon's rule)."""
    path = os.path.join(socket_dir, cuuid)
    if len(path) == 107:
        path = path[:-1]
    return path


class AttachClient:
    __slots__ = ("fd", "progress", "queue", "queued", "reading", "sock")

    def __init__(self, sock: _socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.queue: deque[bytes] = deque()
        self.queued = 0
        self.progress = 0.0  # when it last took queued output (monotonic)
        self.reading = True


class AttachServer:
    """Listens on ``attach`` and serves any number of clients."""

    def __init__(self, loop: EventLoop, diag: Diagnostics, bundle: str, socket_dir: str | None,
                 cuuid: str | None, full_attach: bool, on_input: Callable[[bytes], None],
                 on_client_eof: Callable[[], None], listener: int | None = None) -> None:
        """``listener``: a socket already bound and listening at the path (taken over, takeover.py)."""
        self.loop = loop
        self.diag = diag
        self.on_input = on_input
        self.on_client_eof = on_client_eof
        self.clients: dict[int, AttachClient] = {}
        self.accepted = 0  # clients in all (metrics)
        self.kicked = 0  # clients the monitor dropped (metrics)
        self.link: str | None = None
        self.input_paused = False
        self.on_backpressure: Callable[[bool], None] | None = None
        self.throttling = False
        self._stuck_timer: Timer | None = None
        if full_attach or not cuuid or not socket_dir:
            directory = bundle
        else:
            self.link = link_path(socket_dir, cuuid)
            if listener is None:
                os.makedirs(socket_dir, exist_ok=True)
                if os.path.lexists(self.link):
                    os.unlink(self.link)
                os.symlink(bundle, self.link)
            directory = self.link
        self.path = os.path.join(directory, "attach")
        if listener is not None:
            # Clients that connected while nobody accepted wait in its backlog.
            self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, listener)
            self.sock.setblocking(False)
        else:
            self.sock = self._bind(directory)
        loop.add(self.sock.fileno(), EPOLLIN, self._on_listen)

    @staticmethod
    def _bind(directory: str) -> _socket.socket:
        dirfd = os.open(directory, os.O_PATH | os.O_CLOEXEC)
        sock = _socket.socket(_socket.AF_UNIX, _SOCK_FLAGS)
        try:
            bind_in(sock, dirfd, "attach", 0o700)
        except BaseException:
            sock.close()
            raise
        finally:
            os.close(dirfd)
        sock.listen(10)
        return sock

    # -- connections ---------------------------------------------------------
    def _on_listen(self, events: int) -> None:
        while True:
            try:
                fd, _addr = self.sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                self.diag.warn(f"Failed to accept attach client: {err.strerror}")
                return
            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_SEQPACKET, 0, fd)
            sock.setblocking(False)
            client = AttachClient(sock)
            self.clients[client.fd] = client
            self.accepted += 1
            self.loop.add(client.fd, 0 if self.input_paused else EPOLLIN,
                          lambda ev, c=client: self._on_client(c, ev))  # type: ignore[misc]
            self.diag.debug("Accepted attach client")

    def _on_client(self, client: AttachClient, events: int) -> None:
        if events & EPOLLOUT:
            self._flush(client)
            if client.fd not in self.clients:
                return
        if events & EPOLLIN and client.reading:
            try:
                data = client.sock.recv(INPUT_READ)
            except (BlockingIOError, InterruptedError):
                data = None
            except OSError:
                self.drop(client, None)
                return
            if data is not None:
                if data:
                    self.on_input(data)
                else:
                    client.reading = False
                    self._update_mask(client)
                    self.on_client_eof()
                    return
        if events & (EPOLLHUP | EPOLLERR) and not events & EPOLLIN:
            self._take_last_input(client)
            self.drop(client, None)

    def _take_last_input(self, client: AttachClient) -> None:
        """Input a client sent just before hanging up, unread while input was paused."""
        while client.reading:
            try:
                data = client.sock.recv(INPUT_READ)
            except OSError:
                return
            if not data:
                return
            self.on_input(data)

    def _update_mask(self, client: AttachClient) -> None:
        mask = 0
        if client.reading and not self.input_paused:
            mask |= EPOLLIN
        if client.queue:
            mask |= EPOLLOUT
        self.loop.modify(client.fd, mask)

    def pause_input(self, paused: bool) -> None:
        """Stop reading client input while the container's stdin is backed up."""
        if paused != self.input_paused:
            self.input_paused = paused
            for client in self.clients.values():
                self._update_mask(client)

    def drop(self, client: AttachClient, reason: str | None) -> None:
        if self.clients.pop(client.fd, None) is None:
            return
        if reason:
            self.kicked += 1  # dropped by the monitor (too slow), not gone by itself
            self.diag.warn(reason)
        self.loop.remove(client.fd)
        client.sock.close()
        if client.reading:
            client.reading = False
            self.on_client_eof()
        self._update_throttle()

    # -- output --------------------------------------------------------------
    def broadcast(self, stream: int, data: bytes) -> None:
        if not self.clients:
            return
        pkts = packets(stream, data)
        size = len(data) + len(pkts)
        for client in list(self.clients.values()):
            if client.queue:
                client.queue.extend(pkts)
                client.queued += size
                if client.queued > CLIENT_QUEUE_SOFT:
                    self._check_backlog(client)
                continue
            for i, pkt in enumerate(pkts):
                try:
                    client.sock.send(pkt)
                except (BlockingIOError, InterruptedError):
                    rest = pkts[i:]
                    client.queue.extend(rest)
                    client.queued += sum(map(len, rest))
                    client.progress = monotonic()
                    self._update_mask(client)
                    break
                except OSError:
                    self.drop(client, None)
                    break

    def _check_backlog(self, client: AttachClient) -> None:
        if client.queued > CLIENT_QUEUE_HARD:
            self.drop(client, f"Attach client too slow: dropped it {client.queued} bytes behind")
        elif monotonic() - client.progress > CLIENT_STALL_S:
            self.drop(client, f"Attach client stopped reading: dropped it {client.queued} bytes behind")
        else:
            self._update_throttle()

    def _update_throttle(self) -> None:
        """Hold the container's output while a live client catches up (see the module note)."""
        if self.on_backpressure is None:
            return
        behind = max((c.queued for c in self.clients.values()), default=0)
        if not self.throttling and behind > CLIENT_QUEUE_SOFT:
            self.throttling = True
            self.on_backpressure(True)
            self._stuck_timer = self.loop.call_later(CLIENT_STALL_S / 4, self._check_stuck)
        elif self.throttling and behind <= CLIENT_QUEUE_LOW:
            self.throttling = False
            if self._stuck_timer is not None:
                self._stuck_timer.cancel()
                self._stuck_timer = None
            self.on_backpressure(False)

    def _check_stuck(self) -> None:
        """While throttled no output arrives to notice a stuck client: look now and then."""
        self._stuck_timer = None
        if not self.throttling:
            return
        for client in list(self.clients.values()):
            if client.queued > CLIENT_QUEUE_SOFT:
                self._check_backlog(client)
        if self.throttling and self._stuck_timer is None:
            self._stuck_timer = self.loop.call_later(CLIENT_STALL_S / 4, self._check_stuck)

    def _flush(self, client: AttachClient) -> None:
        queue = client.queue
        sent = False
        while queue:
            pkt = queue[0]
            try:
                client.sock.send(pkt)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.drop(client, None)
                return
            queue.popleft()
            client.queued -= len(pkt)
            sent = True
        if sent:
            client.progress = monotonic()
            if self.throttling and client.queued <= CLIENT_QUEUE_LOW:
                self._update_throttle()
        if not queue:
            self._update_mask(client)

    def flushed(self) -> bool:
        """Without blocking (the loop sends what the clients take): True once no live client waits
        for queued output; a client that took nothing for ``CLIENT_STALL_S`` is given up on."""
        self._drop_stalled()
        return not any(c.queue for c in self.clients.values())

    def _drop_stalled(self) -> None:
        now = monotonic()
        for client in [c for c in self.clients.values() if c.queue and now - c.progress > CLIENT_STALL_S]:
            self.drop(client, f"Attach client stopped reading: dropped it {client.queued} bytes behind")

    def flush_all(self) -> None:
        """Before the clients are closed: deliver what is queued to every client that still reads.

        A client that takes nothing for ``CLIENT_STALL_S`` is given up on, so
        this ends; a live one gets everything, however slowly it reads.
        """
        import select
        while True:
            self._drop_stalled()
            waiting = [c for c in self.clients.values() if c.queue]
            if not waiting:
                return
            poller = select.poll()  # not select(): fds may be >= 1024
            for client in waiting:
                poller.register(client.fd, select.POLLOUT)
            writable = {fd for fd, _ev in poller.poll(CLIENT_STALL_S * 250)}
            for client in waiting:
                if client.fd in writable:
                    self._flush(client)

    def close(self) -> None:
        if self._stuck_timer is not None:
            self._stuck_timer.cancel()
            self._stuck_timer = None
        for client in list(self.clients.values()):
            self.loop.remove(client.fd)
            client.sock.close()
        self.clients.clear()
        self.loop.remove(self.sock.fileno())
        self.sock.close()
        for path in (self.path, self.link):
            if path:
                try:
                    os.unlink(path)
                except OSError:
                    pass
