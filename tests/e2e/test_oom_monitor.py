"""OOM kills through the whole monitor (issue 5), with real runc and Podman.

A busybox container with a 20 MiB memory limit runs a shell that doubles a
string until the memory cgroup's OOM killer sends SIGKILL.  The monitor must
report exit code 137 and create an empty ``oom`` file in the bundle (what
Podman 4.3.1 and CRI-O look at) and in the persist dir (newer Podman, CRI-O),
before the exit files.  A container that exits normally leaves no ``oom``.

This machine has cgroup v1 with the memory controller; the v2 path
(``memory.events``) has no kernel to run on here and is tested on prepared
files in tests/unit/test_oom.py.

Debian's C conmon 2.1.6 writes ``oom`` relative to its working directory
(the caller's), not into the bundle (PODMAN.md 6): with CRI-O, whose cwd is
the bundle, that happens to be right; with Podman the file lands in Podman's
cwd and ``podman inspect`` says ``OOMKilled: false``.  The tests assert that
difference rather than skip it.
"""

import os

import pytest

from support import MONITORS

LIMIT = 20 << 20
HOG = "x=a; while true; do x=$x$x; done"
STYLES = ["podman", "crio"]

pytestmark = pytest.mark.skipif(not os.path.isdir("/sys/fs/cgroup/memory"),
                                reason="needs the cgroup v1 memory controller (cgroup v2 is unit-tested)")


def _is_c_conmon(monitor_bin):
    return monitor_bin == MONITORS["conmon"]


@pytest.mark.parametrize("style", STYLES)
def test_oom_kill_makes_oom_files_and_137(testbed, monitor_bin, style):
    m = testbed.run(monitor_bin, ["sh", "-c", HOG], style=style, bundle_kw={"memory_limit": LIMIT})
    assert m.container_pid, m.describe()
    assert m.wait_exit_file(30) == 137, m.describe()
    bundle_oom = os.path.join(m.bundle, "oom")
    cwd_oom = os.path.join(m.cwd, "oom")
    if _is_c_conmon(monitor_bin) and style == "podman":
        # conmon 2.1.6: oom goes to its cwd (the caller's), never into the bundle
        assert os.path.exists(cwd_oom) and not os.path.exists(bundle_oom)
        return
    assert os.path.isfile(bundle_oom), os.listdir(m.bundle)
    assert os.path.getsize(bundle_oom) == 0
    if style == "crio":
        persist_oom = os.path.join(m.persist_dir, "oom")
        assert os.path.isfile(persist_oom) and os.path.getsize(persist_oom) == 0
        assert m.persist_exit() == 137
        # CRI-O looks for oom when it sees the exit file: oom must come first
        assert os.stat(persist_oom).st_ctime_ns <= os.stat(os.path.join(m.persist_dir, "exit")).st_ctime_ns
    assert os.stat(bundle_oom).st_ctime_ns <= os.stat(m.exit_file).st_ctime_ns
    if not _is_c_conmon(monitor_bin):
        assert not os.path.exists(cwd_oom) or m.cwd == m.bundle  # no stray file in the caller's cwd


@pytest.mark.parametrize("style", STYLES)
def test_normal_exit_leaves_no_oom_file(testbed, monitor_bin, style):
    # same limit, small allocation: the cgroup exists and is watched, nothing fires
    m = testbed.run(monitor_bin, ["sh", "-c", "x=$(seq 1 1000); echo ${#x}; exit 3"], style=style,
                    bundle_kw={"memory_limit": LIMIT})
    assert m.container_pid, m.describe()
    assert m.wait_exit_file(30) == 3, m.describe()
    places = [m.bundle, m.cwd] + ([m.persist_dir] if m.persist_dir else [])
    assert [p for p in places if os.path.exists(os.path.join(p, "oom"))] == []
    assert [x.content for x in m.log_lines()] == [b"3892"]


def test_podman_reports_oomkilled(podman_clean):
    """``podman run --memory 20m`` with a memory hog: 137 and OOMKilled=true (C conmon 2.1.6: false)."""
    podman = podman_clean
    seen = {}
    for name, conmon in MONITORS.items():
        r = podman("run", "--memory", "20m", "busybox", "sh", "-c", HOG, conmon=conmon, timeout=120)
        assert r.returncode == 137, (name, r.returncode, r.stderr)
        cid = podman("ps", "-a", "-l", "--no-trunc", "--format", "{{.ID}}", conmon=None).stdout.strip()
        assert len(cid) == 64, cid
        assert podman.inspect(cid, "{{.State.ExitCode}}") == "137"
        seen[name] = podman.inspect(cid, "{{.State.OOMKilled}}")
        podman.rm(cid)
    assert seen == {"pyconmon": "true", "conmon": "false"}


def test_podman_exit_without_oom_is_not_oomkilled(podman_clean):
    podman = podman_clean
    r = podman("run", "--memory", "20m", "busybox", "sh", "-c", "exit 137", timeout=120)
    assert r.returncode == 137, r.stderr
    cid = podman("ps", "-a", "-l", "--no-trunc", "--format", "{{.ID}}", conmon=None).stdout.strip()
    assert podman.inspect(cid, "{{.State.OOMKilled}}") == "false"
