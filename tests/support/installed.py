"""The installed monitor, as users get it: ``make`` + ``make podman PREFIX=<dir>``.

Builds in a private BUILDDIR (never the checkout's build/, which other test
runs may be rebuilding for another PREFIX) and installs under ``base``; the
result is ``<base>/prefix/libexec/podman/conmon``, the path Podman is then
pointed at.  Calling it again with the same ``base`` reuses the install, so
several test modules can share one build per session.
"""

import os
import shutil
import subprocess

from . import REPO


def unavailable_reason():
    """Why the launcher cannot be built here, or None."""
    if not shutil.which("make"):
        return "make is not installed"
    if not (shutil.which("cc") or shutil.which("gcc")):
        return "no C compiler"
    if not os.path.exists("/usr/bin/python3-config"):
        return "Debian's python3-dev is not installed (see .ci/run)"
    return None


def install_podman_conmon(base, server_mode=False):
    """Build and install into ``base`` (once); return the installed monitor's path.

    ``server_mode``: the entry is the stub (``ENTRY=stub``), switched to
    server mode by ``<base>/mode`` (its PYCONMON_MODE_FILE), "always": also
    where the tests themselves run inside a systemd service.
    """
    base = str(base)
    prefix = os.path.join(base, "prefix")
    conmon = os.path.join(prefix, "libexec", "podman", "conmon")
    if os.access(conmon, os.X_OK):
        return conmon
    extra = ["ENTRY=classic"]  # the classic monitor itself as conmon (the default entry is the stub)
    if server_mode:
        mode_file = os.path.join(base, "mode")
        os.makedirs(base, exist_ok=True)
        with open(mode_file, "w") as f:
            f.write("always\n")
        extra = ["ENTRY=stub", f"PYCONMON_MODE_FILE={mode_file}"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX")}
    build = os.path.join(base, "build")
    for target in ("all", "podman"):
        r = subprocess.run(["make", "-s", "-C", REPO, f"BUILDDIR={build}", f"PREFIX={prefix}", *extra, target],
                           env=env, capture_output=True, text=True, timeout=300, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"make {target} failed:\n{r.stdout}\n{r.stderr}")
    return conmon


def install_prefix(conmon):
    """The prefix an installed ``conmon`` belongs to (``<prefix>/bin/conmon``,
    ``<prefix>/libexec/podman/conmon``...): the nearest ancestor with ``lib/pyconmon``; None if none."""
    d = os.path.dirname(os.path.abspath(conmon))
    for _ in range(3):
        if os.path.isdir(os.path.join(d, "lib", "pyconmon")):
            return d
        d = os.path.dirname(d)
    return None


def server_mode_file(conmon):
    """The mode file of a stub installed by install_podman_conmon(server_mode=True) (``<base>/mode``)."""
    return os.path.join(os.path.dirname(install_prefix(conmon)), "mode")


def is_server_stub(conmon):
    """Whether ``conmon`` is an installed stub (``ENTRY=stub``: the test installs switch it to server mode)."""
    import filecmp
    prefix = install_prefix(conmon)
    stub = os.path.join(prefix, "lib", "pyconmon", "stub", "conmon") if prefix else None
    return bool(stub) and os.path.exists(stub) and filecmp.cmp(conmon, stub, shallow=False)


def server_lib_dir(conmon):
    """``<prefix>/lib/pyconmon`` of the install of ``conmon`` (its servers' command lines name it)."""
    return os.path.join(install_prefix(conmon), "lib", "pyconmon")
