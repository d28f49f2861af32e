"""Fixtures shared by all tests (the test bed itself is in tests/support).

- ``monitor_bin``: parametrised over the monitors to compare (ids ``conmon``
  = /usr/bin/conmon, ``pyconmon`` = bin/pyconmon). Restrict with
  ``PYCONMON_TEST_MONITORS=pyconmon`` (comma-separated names or paths).
- ``runtime``: parametrised over the OCI runtimes (ids ``runc``, ``crun``;
  tests/support/runtimes.py), the path of the one to use; ``testbed`` and
  ``podman_clean`` use it, so their tests run once per runtime. Restrict with
  ``PYCONMON_TEST_RUNTIMES=runc``. A missing runtime fails, it is not skipped.
- ``testbed``: per-test factory for bundles and monitors; deletes every
  container it created (``runc delete -f`` by id) and stops leftover monitors.
- ``tracker``: the Tracker behind ``testbed``, for ids you create by hand.
- ``rootfs``: the shared busybox root file system (built once).
- ``short_dir``: a fresh short directory under /tmp, for sockets (unit tests).
- ``podman``: a session-wide private Podman (tests/support/podman.py), runc;
  ``podman_clean`` is the same Podman with ``--runtime`` set to ``runtime``'s
  name, and removes, at the end of the test, the containers that test created.
"""

import os
import shutil
import sys
import warnings

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from support import MONITORS, RUNC
from support.bundle import make_bundle, make_rootfs
from support.harness import Tracker, new_cid, run_exec, run_monitor, short_tmpdir
from support.podman import PODMAN, Podman
from support.runtimes import prepare_crun_cgroups, require_runtime, selected_runtimes


def _selected_monitors():
    sel = os.environ.get("PYCONMON_TEST_MONITORS", "").strip()
    if not sel:
        return list(MONITORS.items())
    out = []
    for item in (x.strip() for x in sel.split(",")):
        if not item:
            continue
        if item in MONITORS:
            out.append((item, MONITORS[item]))
        else:
            out.append((os.path.basename(item), os.path.abspath(item)))
    return out


_MONITOR_PARAMS = _selected_monitors()
_RUNTIME_NAMES = [name for name, _ in selected_runtimes()]


@pytest.fixture(params=[p for _, p in _MONITOR_PARAMS], ids=[n for n, _ in _MONITOR_PARAMS])
def monitor_bin(request):
    """Path of the monitor under test (each test using it runs once per monitor); a monitor that
    is not installed (Debian's conmon) skips its variants only."""
    if not os.access(request.param, os.X_OK):
        pytest.skip(f"{request.param} is not installed")
    return request.param


@pytest.fixture(scope="session")
def crun_cgroups():
    """Once per session, before the first crun container: crun's cgroup set-up (support/runtimes.py)."""
    prepare_crun_cgroups()


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "one_runtime: the runtime plays no part in what the test checks (a fake runtime, a refusal "
                   "before it runs, or the monitor's own work after the start: floods, stalls, timers): run "
                   "it with the first selected runtime only")


def pytest_generate_tests(metafunc):
    if "runtime" in metafunc.fixturenames:
        one = metafunc.definition.get_closest_marker("one_runtime") is not None
        metafunc.parametrize("runtime", _RUNTIME_NAMES[:1] if one else _RUNTIME_NAMES, indirect=True)


@pytest.fixture
def runtime(request):
    """Path of the OCI runtime under test (each test using it runs once per runtime)."""
    if request.param == "crun":
        request.getfixturevalue("crun_cgroups")
    return require_runtime(request.param)


@pytest.fixture(scope="session")
def rootfs():
    return make_rootfs()


@pytest.fixture
def short_dir():
    """A fresh directory with a short path under /tmp (socket paths must stay under 108 bytes); removed after."""
    path = short_tmpdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tracker():
    t = Tracker()
    yield t
    for problem in t.cleanup():
        warnings.warn(f"test bed teardown: {problem}", stacklevel=1)


class Testbed:
    """Per-test helpers; every container, monitor and short dir is cleaned up after the test."""

    def __init__(self, tmp_path, tracker, runtime):
        self.tmp_path = tmp_path
        self.tracker = tracker
        self.runtime = runtime  # path of runc or crun: what run() and exec() use
        self._n = 0

    def workdir(self, prefix="c"):
        """A fresh directory under the test's tmp_path."""
        self._n += 1
        d = self.tmp_path / f"{prefix}{self._n}"
        d.mkdir(parents=True)
        return str(d)

    def short_dir(self):
        """A fresh short directory under /tmp (removed after the test)."""
        return self.tracker.add_dir(short_tmpdir())

    def cid(self):
        """A new 64-hex container id, deleted with ``runc delete -f`` after the test."""
        return self.tracker.add_container(new_cid(), runtime=self.runtime)

    def bundle(self, args, **kw):
        """make_bundle in a fresh work dir; returns the bundle path."""
        return make_bundle(os.path.join(self.workdir("b"), "bundle"), args, **kw)

    def run(self, conmon, args=None, *, start=True, **kw):
        """run_monitor in a fresh work dir; by default also ``runc start`` (pass start=False to attach first)."""
        kw.setdefault("workdir", self.workdir())
        kw.setdefault("runtime", self.runtime)
        return run_monitor(conmon, args, start=start, tracker=self.tracker, **kw)

    def exec(self, conmon, container, args, **kw):
        """run_exec against a container from ``run``."""
        return run_exec(conmon, container, args, tracker=self.tracker, **kw)


@pytest.fixture
def testbed(tmp_path, tracker, rootfs, runtime):
    return Testbed(tmp_path, tracker, runtime)


@pytest.fixture(scope="session")
def podman():
    if not os.path.exists(PODMAN) or not os.path.exists(RUNC):
        pytest.skip("podman/runc not installed")
    p = Podman()
    try:
        p.setup()
    except Exception:
        p.teardown()
        raise
    yield p
    for problem in p.teardown():
        warnings.warn(f"podman teardown: {problem}", stacklevel=1)


@pytest.fixture
def podman_clean(podman, runtime):
    before = set(podman.ids())
    yield podman.with_runtime(runtime)
    podman.cleanup(keep=before)
