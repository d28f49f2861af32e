"""Safety checks for log file paths (``--log-allowlist-dir`` and friends).

conmon checks the allowlist only for files that don't exist yet and follows
symlinks.  A log path is opened by a privileged monitor on behalf of a
container manager, so every open, reopen and rotation here checks that:

* the path is inside one of the allowlisted directories (after resolving
  the directory's symlinks) when an allowlist is given;
* the path itself is not a symlink (the open also uses O_NOFOLLOW);
* its directory is neither world-writable nor owned by another user, since
  anyone who can write there could swap the file for a link between checks.
"""

from __future__ import annotations

import os
import stat


class LogPathError(ValueError):
    """A log path the monitor refuses to open."""


def check_log_path(path: str, allowlist: list[str]) -> None:
    directory = os.path.dirname(os.path.abspath(path)) or "/"
    real_dir = os.path.realpath(directory)
    if allowlist:
        allowed = [os.path.realpath(d) for d in allowlist]
        if not any(real_dir == d or real_dir.startswith(d.rstrip("/") + "/") for d in allowed):
            raise LogPathError(f"log path {path} is not inside an allowed directory ({', '.join(allowlist)})")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISLNK(st.st_mode):
            raise LogPathError(f"log path {path} is a symlink")
    try:
        dst = os.stat(real_dir)
    except OSError as err:
        raise LogPathError(f"log directory {directory}: {err.strerror}") from None
    if dst.st_mode & stat.S_IWOTH:
        raise LogPathError(f"log directory {directory} is world-writable")
    if dst.st_uid != os.geteuid():
        raise LogPathError(f"log directory {directory} is owned by another user (uid {dst.st_uid})")
