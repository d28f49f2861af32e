#!/usr/bin/env python3
"""Assemble the pyconmon Debian package from a staged tree (``make deb`` runs this).

    python3 packaging/deb.py --root STAGE --man conmon.8 --python /usr/bin/python3 --out build/

STAGE holds what ``make podman crio`` installed with PREFIX=/usr:
/usr/libexec/podman/conmon (the first path in Podman's conmon search, so
Podman uses it with no configuration), /usr/libexec/crio/conmon and the
package in /usr/lib/pyconmon.  This adds the man page, the control file and
md5sums, and calls ``dpkg-deb``.  Nothing goes to /usr/bin, and the man page
is ``pyconmon.8.gz``: Debian's ``conmon`` package owns /usr/bin/conmon and
conmon.8.gz, and the two packages must not share a file.  Removing the
package gives Podman its old monitor back.

Reproducible: with SOURCE_DATE_EPOCH (``make`` sets it to the commit date)
every mtime is that date, modes are fixed (0755 directories and executables,
0644 the rest), the owner is root (``--root-owner-group``), the man page is
gzipped without name or time, and dpkg-deb writes the members in sorted
order with that date, so two builds of one commit are byte-for-byte equal.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "src"))

from pyconmon import __version__  # noqa: E402

PACKAGE = "pyconmon"
MAN_PAGE = "usr/share/man/man8/pyconmon.8.gz"

DESCRIPTION = """\
conmon-compatible container monitor, in Python
 pyconmon does the job of conmon for Podman and CRI-O: it runs the OCI
 runtime, holds the container's stdio, writes the container log (k8s-file,
 journald), serves attach and records the exit code.
 .
 It installs as /usr/libexec/podman/conmon, where Podman looks first, and as
 /usr/libexec/crio/conmon. Debian's conmon package (/usr/bin/conmon) is left
 as it is; removing this package gives Podman that monitor back.
 .
 By default a small static stub per container hands it to one shared
 monitor server; "classic" in /etc/pyconmon/mode gives each container a
 monitor process of its own."""


def python_depends(python: str) -> str:
    """The libpython package the launcher links against, e.g. ``libpython3.11``."""
    ver = subprocess.run([python, "-I", "-S", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return f"libpython{ver}"


def architecture() -> str:
    return subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()


def add_man_page(root: str, page: str) -> None:
    dest = os.path.join(root, MAN_PAGE)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with open(page, "rb") as src, open(dest, "wb") as raw:
        # what `gzip -n -9` writes: no file name, no time stamp
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw, mtime=0) as gz:
            shutil.copyfileobj(src, gz)


def walk_sorted(root: str) -> list[str]:
    """Every path under ``root`` (relative, sorted), DEBIAN/ excluded."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        if rel == "DEBIAN":
            dirnames[:] = []
            continue
        for name in sorted(dirnames + filenames):
            path = os.path.normpath(os.path.join(rel, name))
            if path != "DEBIAN":
                out.append(path)
    return sorted(out)


def normalise(root: str, paths: list[str]) -> None:
    """Fixed modes: the build's umask and install(1) defaults must not leak into the package."""
    os.chmod(root, 0o755)
    for rel in paths:
        path = os.path.join(root, rel)
        if os.path.islink(path):
            continue
        if os.path.isdir(path):
            os.chmod(path, 0o755)
        else:
            os.chmod(path, 0o755 if os.stat(path).st_mode & 0o111 else 0o644)


def installed_size_kib(root: str, paths: list[str]) -> int:
    """dpkg-gencontrol's rule: each file rounded up to 1 KiB, 1 KiB per directory or link."""
    total = 0
    for rel in paths:
        path = os.path.join(root, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            total += -(-os.path.getsize(path) // 1024)
        else:
            total += 1
    return total


def md5sums(root: str, paths: list[str]) -> str:
    lines = []
    for rel in paths:
        path = os.path.join(root, rel)
        if os.path.isfile(path) and not os.path.islink(path):
            with open(path, "rb") as f:
                lines.append(f"{hashlib.md5(f.read()).hexdigest()}  {rel}\n")
    return "".join(lines)


def control(arch: str, depends: str, size_kib: int) -> str:
    return (f"Package: {PACKAGE}\n"
            f"Version: {__version__}\n"
            f"Architecture: {arch}\n"
            "Maintainer: pyconmon developers <pyconmon@localhost>\n"
            f"Installed-Size: {size_kib}\n"
            f"Depends: libc6, {depends}\n"
            "Enhances: podman, cri-o\n"
            "Section: admin\n"
            "Priority: optional\n"
            f"Description: {DESCRIPTION}\n")


def set_mtimes(root: str, paths: list[str], epoch: int) -> None:
    for rel in [*paths, "DEBIAN", "DEBIAN/control", "DEBIAN/md5sums", "."]:
        os.utime(os.path.join(root, rel), (epoch, epoch), follow_symlinks=False)


def build(root: str, man: str, python: str, out: str) -> str:
    epoch_text = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not epoch_text.isdigit():
        raise SystemExit("deb.py: SOURCE_DATE_EPOCH must be set (make deb sets it to the commit date)")
    epoch = int(epoch_text)
    for need in ("usr/libexec/podman/conmon", "usr/libexec/crio/conmon", "usr/lib/pyconmon/pyconmon/cli.py"):
        if not os.path.exists(os.path.join(root, need)):
            raise SystemExit(f"deb.py: {need} is not in {root}: stage with `make podman crio` first")
    if os.path.exists(os.path.join(root, "usr/bin")):
        raise SystemExit("deb.py: nothing may go to /usr/bin (Debian's conmon owns /usr/bin/conmon)")
    add_man_page(root, man)
    paths = walk_sorted(root)
    normalise(root, paths)
    arch = architecture()
    debian = os.path.join(root, "DEBIAN")
    os.makedirs(debian, exist_ok=True)
    os.chmod(debian, 0o755)
    for name, text in (("control", control(arch, python_depends(python), installed_size_kib(root, paths))),
                       ("md5sums", md5sums(root, paths))):
        with open(os.path.join(debian, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(debian, name), 0o644)
    set_mtimes(root, paths, epoch)
    os.makedirs(out, exist_ok=True)
    deb = os.path.join(out, f"{PACKAGE}_{__version__}_{arch}.deb")
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", root, deb], check=True,
                   stdout=subprocess.DEVNULL)
    return deb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="the staged tree")
    ap.add_argument("--man", required=True, help="the generated conmon.8")
    ap.add_argument("--python", default="/usr/bin/python3", help="the Python the launcher embeds")
    ap.add_argument("--out", required=True, help="directory for the .deb")
    args = ap.parse_args(argv)
    print(build(args.root, args.man, args.python, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
