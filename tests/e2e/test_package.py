"""The Debian package (``make deb``, packaging/deb.py): reproducible, and Podman picks it up by itself.

The install test changes the host: it installs the package with apt-get
(adding /usr/libexec/podman/conmon and /usr/libexec/crio/conmon) and removes
it again, whatever happens in between.  It refuses to start when a
/usr/libexec/podman/conmon it did not install is there, or when a pyconmon
package is installed already (left by a run that was killed: remove it with
``apt-get remove pyconmon``), so it never deletes something it did not put
there.  The containers it runs use a private Podman store.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import C_CONMON
from support.podman import PODMAN, Podman, run_d

REPO = Path(__file__).resolve().parents[2]
PODMAN_LIBEXEC = "/usr/libexec/podman/conmon"
CRIO_LIBEXEC = "/usr/libexec/crio/conmon"
APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
APT_LOCK = ["-o", "DPkg::Lock::Timeout=300"]  # other apt users on the machine: wait, don't fail

pytestmark = pytest.mark.skipif(
    not (shutil.which("dpkg-deb") and shutil.which("make") and os.path.exists("/usr/bin/python3-config")),
    reason="needs dpkg-deb, make and Debian's python3-dev (see .ci/run)",
)


def make_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX", "SOURCE_DATE_EPOCH")}


def commit_epoch() -> str:
    return subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%ct"], capture_output=True, text=True,
                          check=True).stdout.strip()


def make_deb(tree: Path, builddir: Path, env: dict[str, str] | None = None) -> Path:
    r = subprocess.run(["make", "-s", "-C", str(tree), f"BUILDDIR={builddir}", "deb"], env=env or make_env(),
                       capture_output=True, text=True, timeout=600, check=False)
    assert r.returncode == 0, f"make deb failed:\n{r.stdout}\n{r.stderr}"
    debs = sorted(builddir.glob("pyconmon_*.deb"))
    assert len(debs) == 1, debs
    return debs[0]


def copy_of_checkout(dest: Path) -> Path:
    """The checkout's files (tracked and new, as they are now) in another directory, without .git."""
    files = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "-co", "--exclude-standard"],
                           capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, files):
        src = REPO / os.fsdecode(rel)
        if src.is_file():
            (dest / os.fsdecode(rel)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(rel))
    return dest


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_deb(REPO, tmp_path_factory.mktemp("deb") / "build")


def deb_fields(path: Path) -> dict[str, str]:
    out = subprocess.run(["dpkg-deb", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    return dict(line.split(": ", 1) for line in out.splitlines() if ": " in line and not line.startswith(" "))


def data_members(path: Path, into: Path) -> list[tarfile.TarInfo]:
    """The data.tar members (in archive order); the tree is extracted under ``into``."""
    subprocess.run(["dpkg-deb", "-x", str(path), str(into)], check=True)
    r = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(path)], capture_output=True, check=True)
    tar_path = into.parent / (into.name + ".tar")
    tar_path.write_bytes(r.stdout)
    with tarfile.open(tar_path) as t:
        return t.getmembers()


def test_package_name_and_fields(deb: Path) -> None:
    import pyconmon
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True, check=True).stdout.strip()
    assert deb.name == f"pyconmon_{pyconmon.__version__}_{arch}.deb"
    f = deb_fields(deb)
    assert (f["Package"], f["Version"], f["Architecture"]) == ("pyconmon", pyconmon.__version__, arch)
    assert "libpython3." in f["Depends"]


def test_package_contents(deb: Path, tmp_path: Path) -> None:
    members = data_members(deb, tmp_path / "x")
    names = [m.name.removeprefix("./").rstrip("/") for m in members]
    files = {n for n, m in zip(names, members, strict=True) if m.isfile()}
    assert {"usr/libexec/podman/conmon", "usr/libexec/crio/conmon", "usr/share/man/man8/pyconmon.8.gz",
            "usr/lib/pyconmon/pyconmon/cli.py", "usr/lib/pyconmon/pyconmon/__pycache__/cli.cpython-311.pyc"} <= files
    # nothing Debian's conmon package owns (dpkg would refuse the install)
    conmon_files = subprocess.run(["dpkg-query", "-L", "conmon"], capture_output=True, text=True).stdout.split()
    assert not files & {p.lstrip("/") for p in conmon_files}
    assert not any(n.startswith("usr/bin") for n in names)
    # pyconmon.toml is looked for in /etc/pyconmon, not /usr/etc/pyconmon
    assert '\nSYSCONFDIR = "/etc"' in (tmp_path / "x" / "usr/lib/pyconmon/pyconmon/config.py").read_text()
    # reproducible by construction: root-owned, sorted, one mtime (the commit's)
    assert {(m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, "root", "root")}
    assert names == sorted(names)
    assert {m.mtime for m in members} == {int(commit_epoch())}
    # the entries are the stub (server mode, the default), built to exec /usr/lib/pyconmon/classic/conmon:
    # the launcher, built for /usr/lib/pyconmon
    stub = (tmp_path / "x" / "usr/lib/pyconmon/stub/conmon").read_bytes()
    for exe in ("usr/libexec/podman/conmon", "usr/libexec/crio/conmon"):
        assert (tmp_path / "x" / exe).read_bytes() == stub
    assert b"/usr/lib/pyconmon/classic/conmon\0" in stub
    classic = tmp_path / "x" / "usr/lib/pyconmon/classic/conmon"
    r = subprocess.run([str(classic), "--version"], capture_output=True, text=True, env={}, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("conmon version 2.2.1\n"), r
    assert "/usr/lib/pyconmon".encode("utf-32-le") in classic.read_bytes()  # a wchar_t string
    # no path of the build machine in any file (.pyc file names, debug info, the man page)
    for n in files:
        data = (tmp_path / "x" / n).read_bytes()
        for leak in (str(REPO), str(tmp_path), "/tmp/"):
            for coded in (leak.encode(), leak.encode("utf-32-le")):  # the launcher's paths are wchar_t
                assert coded not in data, f"{n} contains {leak!r}"


def test_two_builds_of_one_commit_are_identical(deb: Path, tmp_path: Path) -> None:
    """A second build, from a copy of the checkout in another directory and into another build
    directory (SOURCE_DATE_EPOCH given, as there is no .git there), must be byte-for-byte the same."""
    tree = copy_of_checkout(tmp_path / "elsewhere" / "pyconmon")
    second = make_deb(tree, tmp_path / "out", env={**make_env(), "SOURCE_DATE_EPOCH": commit_epoch()})
    assert second.name == deb.name
    assert second.read_bytes() == deb.read_bytes()


def test_different_commit_date_changes_only_dates(deb: Path, tmp_path: Path) -> None:
    """The test above can fail: SOURCE_DATE_EPOCH really reaches the package."""
    other = make_deb(REPO, tmp_path / "b", env={**make_env(), "SOURCE_DATE_EPOCH": str(int(commit_epoch()) - 86400)})
    assert other.read_bytes() != deb.read_bytes()


# -- installing it --------------------------------------------------------------------------------


def dpkg_installed(package: str) -> bool:
    r = subprocess.run(["dpkg-query", "-W", "-f", "${Status}", package], capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.endswith(" installed")


def apt_get(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["apt-get", *APT_LOCK, "-y", "-q", *args], env=APT_ENV, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def installed_package(deb: Path) -> Iterator[None]:
    """apt-get install ./pyconmon_*.deb; removed on the way out if the body did not remove it."""
    if not shutil.which("apt-get") or not os.path.exists(PODMAN):
        pytest.fail("needs apt-get and podman (see .ci/run)")
    if dpkg_installed("pyconmon"):
        pytest.fail("a pyconmon package is installed already (a killed earlier run?): apt-get remove pyconmon")
    for path in (PODMAN_LIBEXEC, CRIO_LIBEXEC):
        if os.path.lexists(path):
            pytest.fail(f"{path} exists and is not from the pyconmon package: not touching this host")
    try:
        r = apt_get("install", "--no-install-recommends", str(deb.resolve()))
        assert r.returncode == 0, f"apt-get install failed:\n{r.stdout}\n{r.stderr}"
        yield
    finally:
        if dpkg_installed("pyconmon"):
            if apt_get("remove", "pyconmon").returncode != 0:
                subprocess.run(["dpkg", "--remove", "pyconmon"], capture_output=True, timeout=300)


def _dpkg_excludes_man_pages() -> bool:
    """Minimal images tell dpkg not to install /usr/share/man (path-exclude in dpkg.cfg.d)."""
    d = "/etc/dpkg/dpkg.cfg.d"
    for name in os.listdir(d) if os.path.isdir(d) else ():
        with open(os.path.join(d, name), errors="replace") as f:
            if any(line.startswith("path-exclude") and "/usr/share/man" in line for line in f):
                return True
    return False


@pytest.fixture
def host_lock() -> Iterator[None]:
    """Test runs on one machine (several checkouts) take turns with the host's package state."""
    lock_dir = "/run/lock" if os.path.isdir("/run/lock") else "/tmp"
    lock = os.open(f"{lock_dir}/pyconmon-package-test.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock)


@pytest.fixture
def search_podman(rootfs):
    """A private Podman that names no monitor: Podman picks one by its search order."""
    pd = Podman(default_conmon=None).setup(rootfs=rootfs)
    yield pd
    pd.teardown()


def podman_monitor(pd: Podman) -> str:
    r = pd("info", "--format", "{{.Host.Conmon.Path}}", conmon=None)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_apt_install_makes_podman_use_it_and_remove_gives_conmon_back(host_lock: None, search_podman: Podman,
                                                                     deb: Path) -> None:
    pd = search_podman
    assert os.path.exists(C_CONMON), "Debian's conmon package is needed (see .ci/run)"
    assert podman_monitor(pd) == C_CONMON  # before: Debian's
    with installed_package(deb):
        assert dpkg_installed("pyconmon")
        assert os.path.exists(C_CONMON)  # untouched
        assert podman_monitor(pd) == PODMAN_LIBEXEC
        r = pd("run", "--rm", "busybox", "echo", "hi from the package", conmon=None, timeout=120)
        assert (r.returncode, r.stdout) == (0, "hi from the package\n"), r.stderr
        cid = run_d(pd, None, "busybox", "sleep", "600")
        try:
            pid = int(pd.inspect(cid, "{{.State.ConmonPid}}"))
            with open("/proc/self/cgroup") as f:  # in a systemd *.service the stub runs classic (README)
                classic = ".service" in f.read()
            assert os.readlink(f"/proc/{pid}/exe") == ("/usr/lib/pyconmon/classic/conmon" if classic
                                                       else PODMAN_LIBEXEC)
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert f.read().split(b"\0")[0] == PODMAN_LIBEXEC.encode()
        finally:
            pd.rm(cid)
        r = subprocess.run([CRIO_LIBEXEC, "--version"], capture_output=True, text=True, env={}, timeout=30)
        assert r.returncode == 0 and "pyconmon version" in r.stdout, r
        if shutil.which("man") and not _dpkg_excludes_man_pages():
            r = subprocess.run(["man", "-w", "pyconmon"], capture_output=True, text=True)
            assert r.stdout.strip() == "/usr/share/man/man8/pyconmon.8.gz", r.stderr
        r = apt_get("remove", "pyconmon")
        assert r.returncode == 0, f"apt-get remove failed:\n{r.stdout}\n{r.stderr}"
    assert not dpkg_installed("pyconmon")
    assert not os.path.lexists(PODMAN_LIBEXEC) and not os.path.lexists(CRIO_LIBEXEC)
    assert podman_monitor(pd) == C_CONMON  # after: Debian's again
    r = pd("run", "--rm", "busybox", "echo", "back", conmon=None, timeout=120)
    assert (r.returncode, r.stdout) == (0, "back\n"), r.stderr
