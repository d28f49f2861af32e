"""Safety checks for log file paths (``--log-allowlist-dir`` and friends).

conmon checks the allowlist only for files that don't exist yet and follows
symlinks.  A log path is opened by a privileged monitor on behalf of a
container manager, so every open, reopen and rotation here checks that:

* the path is inside one of the allowlisted directories (after resolving
  the directory's symlinks) when an allowlist is given;
* the path itself is not a symlink (the open also uses O_NOFOLLOW);
* its directory is neither world-writable nor owned by another user, since
  anyone who can write there could swap the file for a link between checks.

One exception, for CRI-O: its exec probes (ExecSync) log to a file it
creates empty beforehand in ``$TMPDIR`` or ``/tmp`` (``crio-log-<id>NNN``).
In a *sticky* world-writable directory a regular file that already exists
and belongs to the monitor's own user is safe to open (O_NOFOLLOW): the
sticky bit stops anyone else from removing or renaming it.  Creating a new
file there (``create=True``: reopen, rotation) is still refused.
"""

from __future__ import annotations

import os
import stat


class LogPathError(ValueError):
    """A log path the monitor refuses to open."""


def check_log_path(path: str, allowlist: list[str], create: bool = False) -> None:
    """Raise LogPathError unless ``path`` is safe to open (``create``: to make anew)."""
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    real_dir = os.path.realpath(directory)
    if allowlist:
        allowed = [os.path.realpath(d) for d in allowlist]
        if not any(real_dir == d or real_dir.startswith(d.rstrip("/") + "/") for d in allowed):
            raise LogPathError(f"log path {path} is not inside an allowed directory ({', '.join(allowlist)})")
    try:
        st: os.stat_result | None = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISLNK(st.st_mode):
        raise LogPathError(f"log path {path} is a symlink")
    try:
        dst = os.stat(real_dir)
    except OSError as err:
        raise LogPathError(f"log directory {directory}: {err.strerror}") from None
    own_file_in_sticky_dir = (not create and st is not None and stat.S_ISREG(st.st_mode)
                              and st.st_uid == os.geteuid() and bool(dst.st_mode & stat.S_ISVTX))
    if dst.st_mode & stat.S_IWOTH and not own_file_in_sticky_dir:
        raise LogPathError(f"log directory {directory} is world-writable")
    if dst.st_uid != os.geteuid():
        raise LogPathError(f"log directory {directory} is owned by another user (uid {dst.st_uid})")
