"""Unix socket paths of any length, through ``/proc/self/fd``.

A socket address holds at most 107 bytes of path (``sun_path``), and bundle
paths are often longer.  Opening the directory (``O_PATH``) and naming the
socket ``/proc/self/fd/<dirfd>/<name>`` keeps the address short whatever
the directory's path: the kernel resolves the magic link to the directory.
conmon binds its attach socket the same way.
"""

from __future__ import annotations

import _socket
import os

SUN_PATH_MAX = 107


def via_fd(dirfd: int, name: str) -> str:
    """The short path of ``name`` in the directory open as ``dirfd``."""
    return f"/proc/self/fd/{dirfd}/{name}"


def bind_in(sock: _socket.socket, dirfd: int, name: str, mode: int) -> None:
    """Bind ``sock`` as ``name`` in the directory ``dirfd`` (a stale entry replaced), with ``mode``."""
    try:
        os.unlink(name, dir_fd=dirfd)
    except FileNotFoundError:
        pass
    sock.bind(via_fd(dirfd, name))
    os.chmod(name, mode, dir_fd=dirfd)


__all__ = ["SUN_PATH_MAX", "bind_in", "via_fd"]
