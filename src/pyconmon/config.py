"""pyconmon's own settings: the configuration file and per-container annotations.

Callers pass no new flags.  An administrator writes a TOML file (read with the
stdlib's ``tomllib``), looked up at two paths in order, the first that exists
winning: ``$(SYSCONFDIR)/pyconmon/pyconmon.toml`` (``SYSCONFDIR`` is fixed by
``make install``: ``$(PREFIX)/etc``) and ``/etc/containers/pyconmon.toml``.
No file means every setting has its default, which is today's behaviour.

A container may override the log limit with OCI annotations in its bundle's
``config.json`` (``io.pyconmon.log.rate``/``burst``/``policy``), which Podman
(``--annotation``) and CRI-O pass through, unless the file forbids it.

Anything wrong (bad TOML, unknown table or key, a bad value, a bad or
forbidden annotation) raises :class:`SettingsError` whose text names the file,
the line and the key; the monitor reports it on the sync pipe and refuses to
start the container, as for a bad option.

Start-up cost when nothing is configured: two ``stat`` calls and one read of
``config.json``, which is only parsed when it mentions ``io.pyconmon.``.
"""

from __future__ import annotations

import os

SYSCONFDIR = "/usr/local/etc"  # rewritten by `make install-lib` to $(SYSCONFDIR)
ANNOTATION_PREFIX = "io.pyconmon."
POLICIES = ("drop", "block")
SYNC_POLICIES = ("none", "exit", "rotate")
PRIORITY_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
_SUFFIXES = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def config_files() -> tuple[str, ...]:
    """Where the configuration file is looked for, in order."""
    return (os.path.join(SYSCONFDIR, "pyconmon", "pyconmon.toml"), "/etc/containers/pyconmon.toml")


class SettingsError(Exception):
    """A configuration file or annotation pyconmon refuses."""


# -- values ------------------------------------------------------------------

def parse_size(value: object) -> int:
    """Bytes from ``123``, ``"64k"``, ``"1M"``, ``"2G"`` (powers of 1024); ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("expected a size")
    if isinstance(value, int):
        number, unit = value, 1
    elif isinstance(value, str):
        text = value.strip()
        unit = _SUFFIXES.get(text[-1:].lower(), 1)
        digits = text[:-1] if unit > 1 else text
        if not digits.isdigit() or not digits.isascii():
            raise ValueError(f"not a size: {value!r} (digits with an optional k, M or G suffix)")
        number = int(digits)
    else:
        raise ValueError(f"not a size: {value!r}")
    if number < 0:
        raise ValueError(f"must not be negative: {value!r}")
    return number * unit


def _choice(choices: tuple[str, ...]) -> object:
    def parse(value: object) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, not {value!r}")
        return str(value)
    return parse


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, not {value!r}")
    return value


def _priority(value: object) -> int:
    if isinstance(value, str) and value in PRIORITY_NAMES:
        return PRIORITY_NAMES.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 7:
        return value
    raise ValueError(f"must be 0..7 or one of {', '.join(PRIORITY_NAMES)}, not {value!r}")


def _identifier(value: object) -> str:
    if not isinstance(value, str) or not value or "\n" in value:
        raise ValueError(f"must be a non-empty string without a newline, not {value!r}")
    try:
        value.format(id="", full_id="", name="", tag="")
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f"{value!r}: only {{id}}, {{full_id}}, {{name}}, {{tag}} may be used ({err})") from None
    return value


def _absolute_path(value: object) -> str:
    if not isinstance(value, str) or not value.startswith("/") or "\0" in value:
        raise ValueError(f"must be an absolute path, not {value!r}")
    return value


def _seconds(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 86400:
        raise ValueError(f"must be a number of seconds > 0, not {value!r}")
    return float(value)


# (table, key) -> (attribute of Settings, parser of the value)
SCHEMA: dict[tuple[str, str], tuple[str, object]] = {
    ("log", "rate"): ("log_rate", parse_size),
    ("log", "burst"): ("log_burst", parse_size),
    ("log", "policy"): ("log_policy", _choice(POLICIES)),
    ("log", "allow_override"): ("log_allow_override", _boolean),
    ("log", "buffer"): ("log_buffer", parse_size),
    ("log", "sync"): ("log_sync", _choice(SYNC_POLICIES)),
    ("journald", "stderr_priority"): ("journald_stderr_priority", _priority),
    ("journald", "identifier"): ("journald_identifier", _identifier),
    ("metrics", "dir"): ("metrics_dir", _absolute_path),
    ("metrics", "interval"): ("metrics_interval", _seconds),
}
TABLES = tuple(dict.fromkeys(table for table, _ in SCHEMA))


class LogLimit:
    """A container's log rate limit: ``rate`` bytes per second, ``burst`` bytes, ``policy``."""

    __slots__ = ("burst", "policy", "rate")

    def __init__(self, rate: int, burst: int, policy: str) -> None:
        self.rate = rate
        self.burst = burst
        self.policy = policy

    def __repr__(self) -> str:
        return f"LogLimit({self.rate}, {self.burst}, {self.policy!r})"


class Settings:
    """Effective settings; the class attributes are the defaults (today's behaviour)."""

    source: str | None = None  # the file they came from, if any
    error: str | None = None  # why they were refused (the monitor reports it after the fork)
    log_rate = 0  # bytes per second; 0: no limit
    log_burst = 0  # bytes; 0: one second's worth
    log_policy = "drop"
    log_allow_override = True
    log_buffer = 0  # bytes between reading and writing the log; 0: the loop writes itself
    log_sync = "exit"
    journald_stderr_priority = 3
    journald_identifier: str | None = None  # None: the tag, else the name, else the short id
    metrics_dir: str | None = None  # None: no metrics file
    metrics_interval = 5.0

    def __init__(self) -> None:
        self.annotations: dict[str, str] = {}  # the io.pyconmon.* annotations applied

    @property
    def configured(self) -> bool:
        """True when anything differs from the defaults."""
        return self.source is not None or bool(self.annotations)

    def log_limit(self) -> LogLimit | None:
        """The container's limit, or None (no limit: the output path is untouched)."""
        if self.log_rate <= 0:
            return None
        return LogLimit(self.log_rate, self.log_burst or self.log_rate, self.log_policy)

    def to_toml(self) -> str:
        """The effective settings as a TOML file (``conmon --print-config``)."""
        lines = [f"# pyconmon settings: {self.source or 'no configuration file (defaults)'}"]
        if self.annotations:
            lines.append("# annotations: " + ", ".join(f"{k}={v}" for k, v in sorted(self.annotations.items())))
        for table in TABLES:
            lines += ["", f"[{table}]"]
            for (tname, key), (attr, _parse) in SCHEMA.items():
                if tname != table:
                    continue
                value = getattr(self, attr)
                if value is None:
                    lines.append(f"# {key} is not set")
                    continue
                lines.append(f"{key} = {_toml_value(value)}")
        return "\n".join(lines) + "\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# -- the file --------------------------------------------------------------------

def find_line(text: str, dotted: str) -> int | None:
    """The line (from 1) where ``dotted`` (``table`` or ``table.key``) is defined in TOML ``text``."""
    header = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            header = _dotted(line.strip("[]"))
            if header == dotted:
                return number
            continue
        key, eq, _ = line.partition("=")
        if not eq or line.startswith("#"):
            continue
        full = f"{header}.{_dotted(key)}" if header else _dotted(key)
        if full == dotted or full.startswith(dotted + "."):
            return number
    return None


def _dotted(key: str) -> str:
    return ".".join(part.strip().strip("\"'") for part in key.split("."))


_BARE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")


def _bare(name: str) -> bool:
    return bool(name) and _BARE.issuperset(name)


def _simple_value(text: str) -> object:
    """A basic string without escapes, a decimal integer or float, or a boolean; None otherwise."""
    if text[:1] == '"':
        end = text.find('"', 1)
        value = text[1:end]
        rest = text[end + 1:].strip(" \t")
        if end < 0 or "\\" in value or (rest and rest[0] != "#"):
            return None
        return value
    token = text.split("#", 1)[0].strip(" \t")
    if token in ("true", "false"):
        return token == "true"
    whole, dot, frac = token.partition(".")
    if not whole.isdigit() or not whole.isascii() or (len(whole) > 1 and whole[0] == "0"):
        return None
    if not dot:
        return int(whole)
    return float(token) if frac.isdigit() and frac.isascii() else None


def parse_simple_toml(text: str) -> dict[str, object] | None:
    """The common shape of pyconmon.toml (``[table]`` headers, ``key = scalar`` lines, comments)
    without importing tomllib (~10 ms of start-up per container); None for anything else,
    which then goes to tomllib (which also words the errors)."""
    if "\r" in text or "\x7f" in text or any(c < " " and c not in "\t\n" for c in text):
        return None
    doc: dict[str, object] = {}
    table = doc
    for raw in text.split("\n"):
        line = raw.strip(" \t")
        if not line or line[0] == "#":
            continue
        if line[0] == "[":
            name, close, rest = line[1:].partition("]")
            rest = rest.strip(" \t")
            name = name.strip(" \t")
            if not close or not _bare(name) or name in doc or (rest and rest[0] != "#"):
                return None
            table = doc[name] = {}
            continue
        key, eq, value = line.partition("=")
        key = key.strip(" \t")
        if not eq or not _bare(key) or key in table:
            return None
        parsed = _simple_value(value.strip(" \t"))
        if parsed is None:
            return None
        table[key] = parsed
    return doc


def parse_file(path: str, data: bytes, settings: Settings | None = None) -> Settings:
    """Settings from the TOML ``data`` of the file at ``path``; SettingsError names what is wrong."""
    settings = settings or Settings()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise SettingsError(f"{path}: not UTF-8 ({err})") from None
    doc = parse_simple_toml(text)
    if doc is None:
        import tomllib
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise SettingsError(f"{path}: malformed TOML: {err}") from None

    def where(dotted: str) -> str:
        line = find_line(text, dotted)
        return f"{path}:{line}" if line else path

    for table, entries in doc.items():
        if table not in TABLES:
            raise SettingsError(f"{where(table)}: unknown table {table!r} (known: {', '.join(TABLES)})")
        if not isinstance(entries, dict):
            raise SettingsError(f"{where(table)}: {table!r} must be a table ([{table}])")
        for key, value in entries.items():
            spec = SCHEMA.get((table, key))
            dotted = f"{table}.{key}"
            if spec is None:
                known = ", ".join(k for t, k in SCHEMA if t == table)
                raise SettingsError(f"{where(dotted)}: unknown key {dotted!r} (known in [{table}]: {known})")
            attr, parse = spec
            try:
                setattr(settings, attr, parse(value))  # type: ignore[operator]
            except ValueError as err:
                raise SettingsError(f"{where(dotted)}: {dotted}: {err}") from None
    if settings.log_sync == "rotate" and not settings.log_buffer:
        raise SettingsError(f"{where('log.sync')}: log.sync = \"rotate\" needs log.buffer (the fsync at a rotation "
                            "happens in the log writer thread, never on the read path)")
    settings.source = path
    return settings


def load_file(paths: tuple[str, ...] | None = None) -> Settings:
    """Settings from the first configuration file that exists, or the defaults."""
    for path in paths if paths is not None else config_files():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            continue
        except OSError as err:
            raise SettingsError(f"{path}: cannot read: {err.strerror}") from None
        return parse_file(path, data)
    return Settings()


# -- annotations -----------------------------------------------------------------

ANNOTATIONS = {
    "io.pyconmon.log.rate": ("log_rate", parse_size),
    "io.pyconmon.log.burst": ("log_burst", parse_size),
    "io.pyconmon.log.policy": ("log_policy", _choice(POLICIES)),
}


def read_annotations(bundle: str) -> dict[str, str]:
    """The ``io.pyconmon.*`` annotations of the bundle's config.json ({} if none or no file)."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    if ANNOTATION_PREFIX.encode() not in data:
        return {}  # the common case: no JSON parsing at all
    import json
    try:
        annotations = json.loads(data).get("annotations") or {}
    except (ValueError, AttributeError) as err:
        raise SettingsError(f"{path}: cannot read annotations: {err}") from None
    return {k: v for k, v in annotations.items() if isinstance(k, str) and k.startswith(ANNOTATION_PREFIX)}


def apply_annotations(settings: Settings, annotations: dict[str, str], where: str = "config.json") -> Settings:
    """Override ``settings`` with a container's annotations; SettingsError if one is bad or forbidden."""
    for key in sorted(annotations):
        value = annotations[key]
        spec = ANNOTATIONS.get(key)
        if spec is None:
            raise SettingsError(f"{where}: unknown annotation {key!r} (known: {', '.join(ANNOTATIONS)})")
        if not settings.log_allow_override:
            raise SettingsError(f"{where}: annotation {key!r} refused: {settings.source} sets "
                                "log.allow_override = false")
        attr, parse = spec
        if not isinstance(value, str):
            raise SettingsError(f"{where}: annotation {key}: must be a string, not {value!r}")
        try:
            setattr(settings, attr, parse(value))  # type: ignore[operator]
        except ValueError as err:
            raise SettingsError(f"{where}: annotation {key}: {err}") from None
        settings.annotations[key] = value
    return settings


def for_container(bundle: str | None, paths: tuple[str, ...] | None = None, passthrough: bool = False) -> Settings:
    """The effective settings of one container: the file, then its annotations.

    ``bundle`` is None for exec sessions: annotations belong to the container.
    With the passthrough driver the output never passes through the monitor,
    so a rate-limit annotation is refused rather than ignored.
    """
    settings = load_file(paths)
    if bundle:
        found = read_annotations(bundle)
        if found:
            where = os.path.join(bundle, "config.json")
            if passthrough:
                raise SettingsError(f"{where}: {', '.join(sorted(found))}: cannot limit the passthrough log "
                                    "driver (the container writes to the caller's stdio itself)")
            apply_annotations(settings, found, where)
    return settings
