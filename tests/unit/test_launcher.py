"""The installed monitor: launcher/conmon.c built and installed by the Makefile.

Builds into temporary directories (never the checkout's build/), installs, and
checks what callers see: `conmon --version` in an empty environment, the
process's /proc/PID/exe and comm (PODMAN.md 12), DESTDIR staging, the podman
and crio targets, and how the launcher runs Python (sys.path, tracebacks,
SystemExit codes).
"""

from __future__ import annotations

import ast
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYS_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    not (
        os.path.exists(f"{SYS_PYTHON}-config")
        and shutil.which("make")
        and (shutil.which("cc") or shutil.which("gcc"))
        and sys.platform.startswith("linux")
    ),
    reason="needs make, a C compiler and Debian's python3-dev (see .ci/run)",
)


def make(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX")}
    proc = subprocess.run(
        ["make", "-C", str(REPO), *args], check=False, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"make {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """make install ENTRY=classic PREFIX=<tmp> (the launcher as bin/conmon): returns the prefix."""
    root = tmp_path_factory.mktemp("launcher")
    prefix = root / "prefix"
    make(f"BUILDDIR={root / 'build'}", f"PREFIX={prefix}", "ENTRY=classic", "install")
    return prefix


def test_version_in_empty_environment(installed: Path) -> None:
    conmon = installed / "bin" / "conmon"
    proc = subprocess.run([str(conmon), "--version"], check=False, env={}, capture_output=True, timeout=30, cwd="/")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == b""  # CRI-O parses stdout and stderr together
    assert proc.stdout.splitlines()[0] == b"conmon version 2.2.1"
    # the same through env -i, as in the README
    proc = subprocess.run(["env", "-i", str(conmon), "--version"], check=False, capture_output=True, timeout=30)
    assert proc.stdout.startswith(b"conmon version 2.2.1\n")


def test_version_answered_by_the_launcher_is_pythons(installed: Path) -> None:
    """`conmon --version` alone is answered in C (Podman probes before every start and exec);
    it must say exactly what the Python side says, which still answers any other command line."""
    from pyconmon.cli import version_text
    conmon = str(installed / "bin" / "conmon")
    fast = subprocess.run([conmon, "--version"], check=True, env={}, capture_output=True, timeout=30)
    slow = subprocess.run([conmon, "--version", "--api-version"], check=True, env={}, capture_output=True, timeout=30)
    assert fast.stdout == slow.stdout == version_text().encode()
    bad = subprocess.run([conmon, "--version", "--bogus"], check=False, env={}, capture_output=True, timeout=30)
    assert (bad.returncode, bad.stderr) == (1, b"conmon: option parsing failed: Unknown option --bogus\n")


def test_version_probe_starts_no_python(installed: Path, tmp_path: Path) -> None:
    """README: the launcher "answers Podman's `--version` probes without starting Python": no file of
    the stdlib or of the package is opened (any other command line opens both)."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed (see .ci/run)")
    conmon = str(installed / "bin" / "conmon")

    def opened(*args: str) -> list[str]:
        out = tmp_path / "trace"
        subprocess.run([strace, "-f", "-qq", "-e", "trace=open,openat,stat,newfstatat", "-o", str(out), conmon,
                        *args], check=False, env={}, capture_output=True, timeout=30)
        return [line for line in out.read_text().splitlines() if "ENOENT" not in line]

    def python_files(lines: list[str]) -> list[str]:
        return [line for line in lines if "/encodings" in line or "/lib/pyconmon/pyconmon" in line]

    assert python_files(opened("--version")) == []
    assert python_files(opened("--version", "--api-version"))  # the control: Python answers this one


def test_installed_layout(installed: Path) -> None:
    lib = installed / "lib" / "pyconmon" / "pyconmon"
    sources = sorted(p.name for p in (REPO / "src" / "pyconmon").glob("*.py"))
    assert sorted(p.name for p in lib.glob("*.py")) == sources
    for name in sources:
        pyc = lib / "__pycache__" / name.replace(".py", f".cpython-{sys.version_info[0]}{sys.version_info[1]}.pyc")
        assert pyc.exists(), pyc
    assert os.access(installed / "bin" / "conmon", os.X_OK)


def _wait_reading_fd(pid: int, fd: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` sleeps in read(2) on ``fd`` (from /proc/PID/syscall: x86-64 read is 0)."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        try:
            seen = Path(f"/proc/{pid}/syscall").read_text()
        except OSError as err:
            pytest.fail(f"monitor {pid} gone or unreadable: {err}")
        nr, _, rest = seen.partition(" ")
        if nr == "0" and rest.split(" ", 1)[0] == hex(fd):
            return
        time.sleep(0.02)
    pytest.fail(f"monitor did not block reading fd {fd} (the start pipe): /proc/{pid}/syscall is {seen!r}")


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="reads x86-64 syscall numbers from /proc/PID/syscall")
def test_running_monitor_looks_like_conmon(installed: Path, tmp_path: Path) -> None:
    """A monitor blocked on _OCI_STARTPIPE: exe ends in /conmon, comm is conmon; only the start byte
    lets it run the runtime."""
    conmon = installed / "bin" / "conmon"
    ran = tmp_path / "runtime-ran"
    runtime = tmp_path / "runtime"
    runtime.write_text(f"#!/bin/sh\necho \"$@\" > {ran}\n")
    runtime.chmod(0o755)
    r, w = os.pipe()
    try:
        proc = subprocess.Popen(
            [str(conmon), "--cid", "abcdef0123456", "--cuuid", "x", "--runtime", str(runtime),
             "--log-path", "none:", "--sync"],
            env={"_OCI_STARTPIPE": str(r)}, pass_fds=(r,), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/",
        )
    finally:
        os.close(r)
    try:
        _wait_reading_fd(proc.pid, r)
        assert proc.poll() is None, proc.communicate()
        assert os.readlink(f"/proc/{proc.pid}/exe") == str(conmon)
        assert os.readlink(f"/proc/{proc.pid}/exe").endswith("/conmon")
        assert Path(f"/proc/{proc.pid}/comm").read_text() == "conmon\n"
        assert Path(f"/proc/{proc.pid}/environ").read_bytes() == b"_OCI_STARTPIPE=%d\0" % r
        assert not ran.exists()
        # the start byte: it goes on to run the runtime (which writes no pid file) and exits
        os.write(w, b"\0")
        proc.wait(30)
        assert "create" in ran.read_text().split(), ran.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
        os.close(w)


def test_destdir_staging(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    build = tmp_path / "build"
    common = [f"BUILDDIR={build}", "PREFIX=/usr", f"DESTDIR={stage}"]
    make(*common, "install")
    make(*common, "podman")
    make(*common, "crio")
    binary = stage / "usr" / "bin" / "conmon"
    assert os.access(binary, os.X_OK)
    for target in ("podman", "crio"):
        assert (stage / "usr" / "libexec" / target / "conmon").read_bytes() == binary.read_bytes()
    assert (stage / "usr" / "lib" / "pyconmon" / "pyconmon" / "cli.py").exists()
    # the entry is the stub (ENTRY's default): the classic program's path compiled in, without DESTDIR
    stub = binary.read_bytes()
    assert stub == (stage / "usr" / "lib" / "pyconmon" / "stub" / "conmon").read_bytes()
    assert b"/usr/lib/pyconmon/classic/conmon\0" in stub
    # the classic launcher's compiled-in sys.path entry (a wchar_t string), without DESTDIR
    data = (stage / "usr" / "lib" / "pyconmon" / "classic" / "conmon").read_bytes()
    assert "/usr/lib/pyconmon\0".encode("utf-32-le") in data
    for program in (stub, data):
        assert str(stage).encode() not in program
        assert str(stage).encode("utf-32-le") not in program
    # Tracebacks name the installed path, not the staging one.
    pyc = next((stage / "usr" / "lib" / "pyconmon" / "pyconmon" / "__pycache__").glob("cli.*.pyc")).read_bytes()
    assert b"/usr/lib/pyconmon/pyconmon/cli.py" in pyc
    assert str(stage).encode() not in pyc
    # Nothing landed outside the staging dir's prefix.
    assert sorted(p.name for p in stage.iterdir()) == ["usr"]
    assert sorted(p.name for p in (stage / "usr").iterdir()) == ["bin", "lib", "libexec", "share"]
    assert [p.name for p in (stage / "usr" / "share").rglob("*")] == ["man", "man8", "conmon.8"]


@pytest.fixture(scope="module")
def fake_monitor(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The launcher built against a stand-in pyconmon package (cli.main does what argv says)."""
    root = tmp_path_factory.mktemp("fake")
    pkg = root / "lib" / "pyconmon"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text(
        "import os, sys\n"
        "def main(argv):\n"
        "    cmd = argv[0] if argv else ''\n"
        "    if cmd == 'info':\n"
        "        print(repr(sys.argv[1:]))\n"
        "        print(repr(sys.path))\n"
        "        print(sys.flags.isolated, sys.flags.no_site, sys.flags.no_user_site, sys.flags.dont_write_bytecode)\n"
        "        print(sys.getfilesystemencoding(), repr(dict(os.environ)))\n"
        "        return 0\n"
        "    if cmd == 'raise':\n"
        "        raise RuntimeError('boom')\n"
        "    if cmd == 'exit':\n"
        "        sys.exit(int(argv[1]))\n"
        "    return int(cmd)\n"
    )
    make(f"BUILDDIR={root / 'build'}", f"PYCONMON_LIBDIR={root / 'lib'}")
    binary = root / "bin" / "conmon"
    binary.parent.mkdir()
    shutil.copy2(root / "build" / "conmon", binary)
    return binary


def _run(binary: Path, *args: str | bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(binary), *args], check=False, env={}, capture_output=True, timeout=30, cwd="/")


def test_fake_sys_path_and_flags(fake_monitor: Path) -> None:
    proc = _run(fake_monitor, "info", "--cid", "é", b"\xff")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.decode().splitlines()
    assert lines[0] == repr(["info", "--cid", "é", "\udcff"])
    path = ast.literal_eval(lines[1])
    assert path[0] == str(fake_monitor.parent.parent / "lib")
    assert "" not in path and "/" not in path
    assert not any("site-packages" in p or "dist-packages" in p for p in path)
    assert lines[2] == "1 1 1 1"
    assert lines[3] == "utf-8 {}"


def test_fake_exit_codes_and_traceback(fake_monitor: Path) -> None:
    assert _run(fake_monitor, "0").returncode == 0
    assert _run(fake_monitor, "42").returncode == 42
    proc = _run(fake_monitor, "exit", "7")
    assert (proc.returncode, proc.stderr) == (7, b"")
    proc = _run(fake_monitor, "raise")
    assert proc.returncode == 1
    assert proc.stdout == b""
    assert b"Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.rstrip().endswith(b"RuntimeError: boom")
