"""Fixtures shared by all tests (the test bed itself is in tests/support).

- ``monitor_bin``: parametrised over the monitors to compare (ids ``conmon``
  = /usr/bin/conmon, ``pyconmon`` = bin/pyconmon). Restrict with
  ``PYCONMON_TEST_MONITORS=pyconmon`` (comma-separated names or paths).
- ``testbed``: per-test factory for bundles and monitors; deletes every
  container it created (``runc delete -f`` by id) and stops leftover monitors.
- ``tracker``: the Tracker behind ``testbed``, for ids you create by hand.
- ``rootfs``: the shared busybox root file system (built once).
- ``short_dir``: a fresh short directory under /tmp, for sockets (unit tests).
- ``podman``: a session-wide private Podman (tests/support/podman.py);
  ``podman_clean`` is the same object but removes, at the end of the test,
  the containers that test created.
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


@pytest.fixture(params=[p for _, p in _MONITOR_PARAMS], ids=[n for n, _ in _MONITOR_PARAMS])
def monitor_bin(request):
    """Path of the monitor under test (each test using it runs once per monitor); a monitor that
    is not installed (Debian's conmon) skips its variants only."""
    if not os.access(request.param, os.X_OK):
        pytest.skip(f"{request.param} is not installed")
    return request.param


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

    def __init__(self, tmp_path, tracker):
        self.tmp_path = tmp_path
        self.tracker = tracker
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
        return self.tracker.add_container(new_cid())

    def bundle(self, args, **kw):
        """make_bundle in a fresh work dir; returns the bundle path."""
        return make_bundle(os.path.join(self.workdir("b"), "bundle"), args, **kw)

    def run(self, conmon, args=None, *, start=True, **kw):
        """run_monitor in a fresh work dir; by default also ``runc start`` (pass start=False to attach first)."""
        kw.setdefault("workdir", self.workdir())
        return run_monitor(conmon, args, start=start, tracker=self.tracker, **kw)

    def exec(self, conmon, container, args, **kw):
        """run_exec against a container from ``run``."""
        return run_exec(conmon, container, args, tracker=self.tracker, **kw)


@pytest.fixture
def testbed(tmp_path, tracker, rootfs):
    return Testbed(tmp_path, tracker)


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
def podman_clean(podman):
    before = set(podman.ids())
    yield podman
    podman.cleanup(keep=before)
