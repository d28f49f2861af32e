"""The OCI runtime's command line for create, restore and exec (CONTRACT 2.8).

Pure functions: what the runtime child execs, and the LISTEN_PID rule.
"""

from __future__ import annotations

from .options import Options


def runtime_argv(opts: Options, console_socket: str | None) -> list[str]:
    """The runtime's argv for the mode ``opts`` describes."""
    assert opts.runtime and opts.cid and opts.container_pidfile
    argv = [opts.runtime]
    if opts.exec_:
        argv += opts.runtime_args
        argv += ["exec", "--pid-file", opts.container_pidfile, "--process", opts.exec_process_spec or "",
                 "--detach"]
        if opts.terminal:
            argv.append("--tty")
    else:
        if opts.systemd_cgroup:
            argv.append("--systemd-cgroup")
        argv += opts.runtime_args
        bundle = opts.bundle or "."
        if opts.restore:
            argv += ["restore", "--bundle", bundle, "--pid-file", opts.container_pidfile]
        else:
            argv += ["create", "--bundle", bundle, "--pid-file", opts.container_pidfile]
        if opts.no_pivot:
            argv.append("--no-pivot")
        if opts.no_new_keyring:
            argv.append("--no-new-keyring")
        if opts.restore:
            argv += ["--detach", "--image-path", opts.restore, "--work-path", bundle]
    argv += opts.runtime_opts
    if console_socket is not None:
        argv += ["--console-socket", console_socket]
    argv.append(opts.cid)
    return argv


def preserved_fd_count(opts: Options) -> int:
    """N from ``--runtime-opt --preserve-fds N`` (or ``--preserve-fds=N``)."""
    count = 0
    ropts = opts.runtime_opts
    for i, word in enumerate(ropts):
        value = None
        if word == "--preserve-fds" and i + 1 < len(ropts):
            value = ropts[i + 1]
        elif word.startswith("--preserve-fds="):
            value = word.split("=", 1)[1]
        if value is not None:
            try:
                count = max(0, int(value))
            except ValueError:
                pass
    return count


class ListenPidError(ValueError):
    pass


def listen_pid_env(env: dict[str, str], parent_pid: int, replace: bool) -> bool:
    """Whether LISTEN_PID must be rewritten to the runtime child's pid.

    ``parent_pid`` is the runtime child's parent, the monitor itself (what
    conmon's ``getppid()`` in that child returns).  Raises ListenPidError
    for a LISTEN_PID that isn't a positive number.
    """
    value = env.get("LISTEN_PID")
    if value is None:
        return False
    try:
        pid = int(value)
    except ValueError:
        pid = 0
    if pid <= 0:
        raise ListenPidError(f"Invalid LISTEN_PID {value}")
    return replace or pid == parent_pid
