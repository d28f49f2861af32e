"""The command line: GOption-compatible parsing and validation.

Callers are compiled against C conmon's GLib option parser, so this module
reproduces its rules rather than argparse's: ``--opt value`` takes the next
word whatever it looks like (CRI-O passes ``--runtime-arg --root=/run/crun``),
``--opt=value`` and ``-cVALUE`` work, array options accumulate, flags take no
value, and stray positional words (the ``1`` after ``--api-version``) are
ignored.  Everything here is pure: :func:`parse_args` returns an
:class:`Options` or raises :class:`UsageError`; :func:`validate` raises
:class:`ConfigError` with conmon's wording (CONTRACT section 8).
"""

from __future__ import annotations

import os

__all__ = [
    "ConfigError",
    "LogDriver",
    "Options",
    "UsageError",
    "help_text",
    "parse_args",
    "shown_options",
    "validate",
    "validate_log_options",
]

# kinds of options
FLAG, STR, ARRAY, INT, INT64 = range(5)

# (long name, short letter or "", kind, attribute, help)
OPTION_TABLE: tuple[tuple[str, str, int, str, str], ...] = (
    ("api-version", "", FLAG, "api_version", "Conmon API version to use"),
    ("bundle", "b", STR, "bundle", "Location of the OCI Bundle path"),
    ("cid", "c", STR, "cid", "Identification of Container"),
    ("conmon-pidfile", "P", STR, "conmon_pidfile", "PID file for the conmon process"),
    ("container-pidfile", "p", STR, "container_pidfile", "PID file for the initial pid inside of container"),
    ("pidfile", "", STR, "container_pidfile", ""),
    ("cuuid", "u", STR, "cuuid", "Container UUID"),
    ("exec", "e", FLAG, "exec_", "Exec a command into a running container"),
    ("exec-attach", "", FLAG, "exec_attach", "Attach to an exec session"),
    ("exec-process-spec", "", STR, "exec_process_spec", "Path to the process spec for execution"),
    ("exit-command", "", STR, "exit_command", "Path to the program to execute when the container terminates"),
    ("exit-command-arg", "", ARRAY, "exit_command_args", "Additional arg to pass to the exit command (repeatable)"),
    ("exit-delay", "", INT, "exit_delay", "Delay before invoking the exit command (in seconds)"),
    ("exit-dir", "", STR, "exit_dir", "Path to the directory where exit files are written"),
    ("full-attach", "", FLAG, "full_attach", "Put the attach socket in the bundle; ignore --socket-dir-path"),
    ("leave-stdin-open", "", FLAG, "leave_stdin_open", "Leave stdin open when attached client disconnects"),
    ("log-allowlist-dir", "", ARRAY, "log_allowlist_dirs", "Allowed directories for log files (repeatable)"),
    ("log-global-size-max", "", INT64, "log_global_size_max", "Maximum size of all log output over the monitor's life"),
    ("log-label", "", ARRAY, "log_labels", "Additional journald field NAME=VALUE (repeatable)"),
    ("log-level", "", STR, "log_level", "Print debug logs based on log level"),
    ("log-max-files", "", INT, "log_max_files", "Number of rotated log files to keep"),
    ("log-path", "l", ARRAY, "log_paths", "Log driver and path DRIVER:PATH (k8s-file, journald, passthrough, none)"),
    ("log-rotate", "", FLAG, "log_rotate", "Rotate log files instead of truncating at --log-size-max"),
    ("log-size-max", "", INT64, "log_size_max", "Maximum size of log file"),
    ("log-tag", "", STR, "log_tag", "Additional tag to use for logging"),
    ("name", "n", STR, "name", "Container name"),
    ("no-container-partial-message", "", FLAG, "no_partial_message", "journald: never set CONTAINER_PARTIAL_MESSAGE"),
    ("no-new-keyring", "", FLAG, "no_new_keyring", "Do not create a new session keyring for the container"),
    ("no-pivot", "", FLAG, "no_pivot", "Do not use pivot_root"),
    ("no-sync-log", "", FLAG, "no_sync_log", "Do not manually call sync on logs after container shutdown"),
    ("print-config", "", FLAG, "print_config",
     "Print pyconmon's effective settings (config file; with -b, the bundle's annotations) and exit"),
    ("persist-dir", "0", STR, "persist_dir", "Persistent directory for container data (exit and oom files)"),
    ("replace-listen-pid", "", FLAG, "replace_listen_pid", "Replace listen pid if set for oci-runtime pid"),
    ("restore", "", STR, "restore", "Restore a container from a checkpoint"),
    ("restore-arg", "", ARRAY, "runtime_opts", ""),
    ("runtime", "r", STR, "runtime", "Path to the OCI runtime binary"),
    ("runtime-arg", "", ARRAY, "runtime_args", "Additional arg to pass to the runtime (repeatable)"),
    ("runtime-opt", "", ARRAY, "runtime_opts", "Additional opts to pass to the create, restore or exec command"),
    ("sdnotify-socket", "", STR, "sdnotify_socket", "Path to the host's sd-notify socket to relay messages to"),
    ("socket-dir-path", "", STR, "socket_dir_path", "Location of container attach sockets"),
    ("stdin", "i", FLAG, "stdin", "Open up a pipe to pass stdin to the container"),
    ("sync", "", FLAG, "sync", "Keep the main conmon process as its child by only forking once"),
    ("syslog", "", FLAG, "syslog", "Log to syslog (use with cgroupfs cgroup manager)"),
    ("systemd-cgroup", "s", FLAG, "systemd_cgroup", "Enable systemd cgroup manager"),
    ("terminal", "t", FLAG, "terminal", "Allocate a pseudo-TTY"),
    ("timeout", "T", INT, "timeout", "Kill container after specified timeout in seconds"),
    ("version", "", FLAG, "version", "Print the version and exit"),
    ("help", "h", FLAG, "help", "Show help options"),
)

_LONG = {o[0]: o for o in OPTION_TABLE}
_SHORT = {o[1]: o for o in OPTION_TABLE if o[1]}
_INT_RANGE = {INT: 2**31, INT64: 2**63}

LOG_LEVELS = {
    "error": 0, "fatal": 0, "panic": 0,
    "warn": 1, "warning": 1,
    "info": 2,
    "debug": 3,
    "trace": 4,
}


class UsageError(Exception):
    """A malformed command line (GOption's 'option parsing failed')."""


class ConfigError(Exception):
    """A well-formed command line that conmon refuses (CONTRACT section 8)."""

    def __init__(self, text: str, prefix: str = "[conmon:e]: ") -> None:
        super().__init__(text)
        self.text = text
        self.prefix = prefix


class LogDriver:
    """One ``--log-path`` entry: a driver name and, for k8s-file, a path."""

    __slots__ = ("kind", "path")

    def __init__(self, kind: str, path: str) -> None:
        self.kind = kind
        self.path = path

    def __repr__(self) -> str:
        return f"LogDriver({self.kind!r}, {self.path!r})"


class Options:
    """Everything the command line says, with conmon's defaults."""

    api_version = False
    bundle: str | None = None
    cid: str | None = None
    conmon_pidfile: str | None = None
    container_pidfile: str | None = None
    cuuid: str | None = None
    exec_ = False
    exec_attach = False
    exec_process_spec: str | None = None
    exit_command: str | None = None
    exit_delay = 0
    exit_dir: str | None = None
    full_attach = False
    leave_stdin_open = False
    log_global_size_max = -1
    log_level: str | None = None
    log_max_files = 1
    log_rotate = False
    log_size_max = -1
    log_tag: str | None = None
    name: str | None = None
    no_partial_message = False
    no_new_keyring = False
    no_pivot = False
    no_sync_log = False
    persist_dir: str | None = None
    print_config = False
    replace_listen_pid = False
    restore: str | None = None
    runtime: str | None = None
    sdnotify_socket: str | None = None
    socket_dir_path: str | None = None
    stdin = False
    sync = False
    syslog = False
    systemd_cgroup = False
    terminal = False
    timeout = 0
    version = False
    help = False

    def __init__(self) -> None:
        self.exit_command_args: list[str] = []
        self.log_allowlist_dirs: list[str] = []
        self.log_labels: list[str] = []
        self.log_paths: list[str] = []
        self.runtime_args: list[str] = []
        self.runtime_opts: list[str] = []
        # derived by validate()
        self.log_drivers: list[LogDriver] = []
        self.log_level_num = 1

    @property
    def legacy_exec(self) -> bool:
        """Exec without the v1 API (CRI-O's ExecSync)."""
        return self.exec_ and not self.api_version

    def log_kinds(self) -> set[str]:
        return {d.kind for d in self.log_drivers}


def _store(opts: Options, spec: tuple[str, str, int, str, str], value: str | None, shown: str) -> None:
    _name, _short, kind, attr, _help = spec
    if kind == FLAG:
        setattr(opts, attr, True)
        return
    assert value is not None
    if kind == ARRAY:
        getattr(opts, attr).append(value)
    elif kind in (INT, INT64):
        setattr(opts, attr, _parse_int(value, shown, _INT_RANGE[kind]))
    else:
        setattr(opts, attr, value)


def _parse_int(value: str, shown: str, limit: int) -> int:
    """GLib accepts base-10 with surrounding blanks; anything else fails."""
    text = value.strip()
    try:
        number = int(text, 10)
    except ValueError:
        raise UsageError(f"Cannot parse integer value \u201c{value}\u201d for {shown}") from None
    if not -limit <= number < limit:
        raise UsageError(f"Integer value \u201c{value}\u201d for {shown} out of range")
    return number


def parse_args(argv: list[str]) -> Options:
    """Parse ``argv`` (without the program name) the way GOption does."""
    opts = Options()
    i = 0
    n = len(argv)
    while i < n:
        word = argv[i]
        i += 1
        if word == "--":
            break  # the rest is positional, and positional words are ignored
        if word.startswith("--"):
            name, eq, inline = word[2:].partition("=")
            spec = _LONG.get(name)
            if spec is None:
                raise UsageError(f"Unknown option {word if not eq else '--' + name}")
            shown = "--" + name
            if spec[2] == FLAG:
                if eq:
                    raise UsageError(f"Error parsing option {shown}")
                _store(opts, spec, None, shown)
            elif eq:
                _store(opts, spec, inline, shown)
            else:
                if i >= n:
                    raise UsageError(f"Missing argument for {shown}")
                _store(opts, spec, argv[i], shown)
                i += 1
        elif word.startswith("-") and len(word) > 1:
            letters = word[1:]
            j = 0
            while j < len(letters):
                letter = letters[j]
                spec = _SHORT.get(letter)
                if spec is None:
                    raise UsageError(f"Unknown option -{letter}")
                shown = "-" + letter
                j += 1
                if spec[2] == FLAG:
                    _store(opts, spec, None, shown)
                    continue
                if j < len(letters):
                    _store(opts, spec, letters[j:], shown)
                else:
                    if i >= n:
                        raise UsageError(f"Missing argument for {shown}")
                    _store(opts, spec, argv[i], shown)
                    i += 1
                break
        # anything else is a positional word: ignored, as GOption leaves it in argv
    return opts


def _parse_log_path(entry: str) -> LogDriver:
    """One ``--log-path`` as conmon's ``parse_log_path`` reads it.

    conmon splits with ``strtok(":")``: empty fields vanish, the driver is the
    first field and the path the second (``k8s-file:/a:b`` logs to ``/a``);
    ``:PATH`` is a k8s-file path, and a bare word that is no driver name is one too.
    """
    fields = [f for f in entry.split(":") if f]
    if not fields:
        raise ConfigError("log-path must not be empty")
    driver = fields[0]
    path = fields[1] if len(fields) > 1 else None
    if path is None and entry.startswith(":"):
        driver, path = "k8s-file", driver
    if driver in ("none", "off", "null"):
        return LogDriver("none", "")
    if driver in ("passthrough", "journald"):
        return LogDriver(driver, "")
    if driver == "k8s-file":
        if path is None:
            raise ConfigError("k8s-file requires a filename")
        return LogDriver("k8s-file", path)
    if path is None and ":" not in entry:
        return LogDriver("k8s-file", driver)
    raise ConfigError(f"No such log driver {driver}")


def _check_runtime(path: str) -> None:
    """conmon checks only ``access(path, X_OK)``: a directory passes (root may search it)."""
    if os.access(path, os.X_OK):
        return
    try:
        os.stat(path)
        reason = os.strerror(13)  # it exists, so access() said EACCES
    except OSError as err:
        reason = err.strerror or str(err)
    raise ConfigError(f"Runtime path {path} is not valid: {reason}")


def validate(opts: Options, cwd: str | None = None) -> None:
    """conmon's checks before anything is opened, in its order (cli.c ``process_cli``).

    The first failure raises ConfigError.  The checks that conmon makes only
    after it has opened the k8s-file log are in :func:`validate_log_options`.
    """
    if opts.cid is None:  # conmon tests for a missing option: an empty one passes
        raise ConfigError("Container ID not provided. Use --cid", prefix="conmon: ")
    if opts.log_level is not None:
        level = LOG_LEVELS.get(opts.log_level.lower())
        if level is None:
            raise ConfigError(f"No such log level {opts.log_level}")
        opts.log_level_num = level
    if opts.exec_ and opts.restore:
        raise ConfigError("Cannot use 'exec' and 'restore' at the same time")
    if opts.exec_attach and not opts.exec_:
        raise ConfigError("Attach can only be specified with exec")
    if opts.exec_attach and not opts.api_version:
        raise ConfigError("Attach can only be specified for a non-legacy exec session")
    if opts.cuuid is None and not opts.legacy_exec:
        raise ConfigError("Container UUID not provided. Use --cuuid")
    if opts.runtime is None:
        raise ConfigError("Runtime path not provided. Use --runtime")
    _check_runtime(opts.runtime)
    if opts.exec_ and opts.exec_process_spec is None:
        raise ConfigError("Exec process spec path not provided. Use --exec-process-spec")
    if cwd is None:
        try:
            cwd = os.getcwd()
        except OSError:
            raise ConfigError("Failed to get working directory") from None
    if opts.exit_delay < 0:
        raise ConfigError("Delay before invoking exit command must be greater than or equal to 0")
    # conmon 2.2's rotation options (2.1.6 has none): before the log drivers
    if opts.log_max_files < 0:
        raise ConfigError(f"conmon: log-max-files must be non-negative, got {opts.log_max_files}")
    if opts.log_rotate and opts.log_max_files < 1:
        raise ConfigError("conmon: log-max-files must be at least 1 when log-rotate is enabled, "
                          f"got {opts.log_max_files}")
    if not opts.log_paths:
        raise ConfigError("Log driver not provided. Use --log-path")
    opts.log_drivers = [_parse_log_path(entry) for entry in opts.log_paths]
    for ident, what in ((opts.cid, "--cid"), (opts.cuuid, "--cuuid")):
        # pyconmon only: conmon would write <exit-dir>/<cid> outside the exit dir.
        if ident is not None and ("/" in ident or ident in ("", ".", "..") or "\0" in ident):
            raise ConfigError(f"Invalid {what} {ident!r}: must not contain '/' or be empty, '.' or '..'")
    if opts.bundle is None and not opts.exec_:
        opts.bundle = cwd
    if opts.container_pidfile is None:
        opts.container_pidfile = os.path.join(cwd, f"pidfile-{opts.cid}")
    if opts.socket_dir_path is None:
        opts.socket_dir_path = "/var/run/crio"


def validate_log_options(opts: Options) -> None:
    """The checks conmon makes after opening the k8s-file log (ctr_logging.c), in its order."""
    kinds = opts.log_kinds()
    journald = "journald" in kinds
    if "k8s-file" in kinds and not journald:
        if opts.log_tag:
            raise ConfigError("k8s-file doesn't support --log-tag")
        if opts.log_labels:
            raise ConfigError("k8s-file doesn't support --log-label")
    if not journald:
        return  # conmon looks at the labels only for journald
    assert opts.cid
    if len(opts.cid) <= 12:
        raise ConfigError("Container ID must be longer than 12 characters")
    for label in opts.log_labels:
        if label.startswith("="):
            raise ConfigError(f"Container labels must be in format LABEL=VALUE (no LABEL present in '{label}')")
        if label.count("=") != 1:
            raise ConfigError("Container labels must be in format LABEL=VALUE "
                              f"(none or more than one '=' present in '{label}')")
        if not all(c in _LABEL_CHARS for c in label.partition("=")[0]):
            raise ConfigError("Container label names must contain only uppercase letters, numbers and underscore "
                              f"(in '{label}')")


_LABEL_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


LOG_DRIVERS_HELP = "Log drivers for --log-path: k8s-file (default), journald, passthrough, none (off, null)"


def shown_options() -> list[tuple[str, str, int, str]]:
    """(long name, short letter or "", kind, help) of every option ``--help`` lists, --help first.

    The man page (packaging/manpage.py) is made from this list too, so the
    two cannot drift apart; options without help text are hidden aliases.
    """
    rows = [(name, short, kind, text) for name, short, kind, _attr, text in OPTION_TABLE if text]
    return sorted(rows, key=lambda row: row[0] != "help")


def help_text() -> str:
    """Usage in GOption's layout: every option, and the log drivers."""
    lines = ["Usage:", "  conmon [OPTION\u2026] - conmon utility", ""]
    for name, short, _kind, text in shown_options():
        if name == "help":
            lines += ["Help Options:", f"  -h, --help                   {text}", "", "Application Options:"]
            continue
        head = f"-{short}, --{name}" if short else f"--{name}"
        lines.append(f"  {head:<28} {text}")
    lines += ["", LOG_DRIVERS_HELP, ""]
    return "\n".join(lines)
