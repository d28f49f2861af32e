"""Entry point: parse the command line, then hand over to the monitor."""

from __future__ import annotations

import os


def version_text() -> str:
    """``--version``: the contract version first (Podman and CRI-O parse that line)."""
    from . import CONTRACT_VERSION, __version__
    return f"conmon version {CONTRACT_VERSION}\ncommit: pyconmon-{__version__}\npyconmon version {__version__}\n"


def main(argv: list[str]) -> int:
    from .options import ConfigError, UsageError, help_text, parse_args, validate

    try:
        opts = parse_args(argv)
    except UsageError as err:
        os.write(2, f"conmon: option parsing failed: {err}\n".encode())
        return 1
    if opts.help:
        os.write(1, help_text().encode())
        return 0
    if opts.version:
        os.write(1, version_text().encode())
        return 0
    if opts.print_config:
        return print_config(opts.bundle)
    try:
        validate(opts)
    except ConfigError as err:
        os.write(2, f"{err.prefix}{err.text}\n".encode())
        return 1
    from .monitor import run
    return run(opts)


def print_config(bundle: str | None) -> int:
    """``--print-config``: the effective settings as TOML, or the error in them."""
    from .config import SettingsError, for_container
    try:
        settings = for_container(bundle)
    except SettingsError as err:
        os.write(2, f"conmon: {err}\n".encode())
        return 1
    os.write(1, settings.to_toml().encode())
    return 0


def console_main() -> None:
    """The ``pyconmon`` console script."""
    import sys
    sys.exit(main(sys.argv[1:]))
