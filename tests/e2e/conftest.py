"""Fixtures shared by the end-to-end tests.

- ``installed_conmon``: the monitor as ``make podman PREFIX=<tmp>`` installs it
  (built once per session; the test is skipped where it can't be built).
- ``server_mode_conmon``: the same with ``ENTRY=stub`` and a mode file saying
  "always": the ``conmon`` Podman starts is the server-mode stub (once per session).
- ``monitor_named``: a function from a monitor's name (``conmon`` = Debian's C
  conmon, ``installed``, ``server`` = server_mode_conmon, ``checkout``/``pyconmon`` =
  bin/pyconmon) to its path, for test modules' own parametrised monitor fixtures.
- ``ref_and_installed``: C conmon (the reference) and the installed pyconmon.
- ``policy_conmon``/``config_file``: a second installed monitor and a writer for its
  configuration file (``<prefix>/etc/pyconmon/pyconmon.toml``, removed after each test).
- ``journal``: a real systemd-journald (tests/support/journald_service.py),
  skipped where there is none.
- ``small_tmpfs``: a 1 MiB tmpfs for a log that fills its disk.
- ``stub``/``classic``: that install's stub (the ``conmon`` under test in the
  server-mode tests) and its classic monitor (``lib/pyconmon/classic/conmon``).
"""

import os
import subprocess

import pytest

from support import C_CONMON, LAUNCHER
from support.installed import install_podman_conmon
from support.installed import unavailable_reason as install_unavailable
from support.journald_service import ensure_journald
from support.journald_service import unavailable_reason as journald_unavailable


@pytest.fixture(scope="session")
def installed_conmon(tmp_path_factory):
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    return install_podman_conmon(tmp_path_factory.getbasetemp() / "installed-conmon")


@pytest.fixture(scope="session")
def server_mode_conmon(tmp_path_factory):
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    return install_podman_conmon(tmp_path_factory.getbasetemp() / "server-mode-conmon", server_mode=True)


@pytest.fixture(scope="module")
def stub(server_mode_conmon):
    return server_mode_conmon


@pytest.fixture(scope="module")
def classic(stub):
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(stub)))
    return os.path.join(prefix, "lib", "pyconmon", "classic", "conmon")


@pytest.fixture
def monitor_named(request):
    def path(name):
        if name == "conmon":
            if not os.access(C_CONMON, os.X_OK):
                pytest.skip("Debian's conmon is not installed")
            return C_CONMON
        if name == "installed":
            return request.getfixturevalue("installed_conmon")
        if name == "server":
            return request.getfixturevalue("server_mode_conmon")
        assert name in ("checkout", "pyconmon"), name
        return LAUNCHER

    return path


@pytest.fixture(params=["conmon", "installed"])
def ref_and_installed(request, monitor_named):
    """C conmon (the reference) and the installed pyconmon."""
    return monitor_named(request.param)


@pytest.fixture(scope="module")
def journal():
    reason = journald_unavailable()
    if reason is not None:
        pytest.skip(reason)
    return ensure_journald()


@pytest.fixture(scope="session")
def policy_conmon(tmp_path_factory):
    """An installed monitor of its own, for tests that write its pyconmon.toml (``config_file``)."""
    reason = install_unavailable()
    if reason:
        pytest.skip(reason)
    return install_podman_conmon(tmp_path_factory.mktemp("policy-conmon"))


@pytest.fixture
def config_file(policy_conmon):
    """Write the installed monitor's configuration file (removed after the test)."""
    prefix = os.path.dirname(os.path.dirname(os.path.dirname(policy_conmon)))
    path = os.path.join(prefix, "etc", "pyconmon", "pyconmon.toml")
    os.makedirs(os.path.dirname(path), exist_ok=True)

    def write(text):
        with open(path, "w") as f:
            f.write(text)
        return path

    yield write
    if os.path.exists(path):
        os.unlink(path)


@pytest.fixture
def small_tmpfs(testbed):
    """A 1 MiB tmpfs on a fresh directory; unmounted at teardown."""
    d = os.path.join(testbed.workdir("full"), "logs")
    os.mkdir(d)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", d], check=True, timeout=30)
    try:
        yield d
    finally:
        r = subprocess.run(["umount", d], capture_output=True, timeout=30)
        if r.returncode != 0:  # still busy: don't leave it behind
            subprocess.run(["umount", "-l", d], capture_output=True, timeout=30)
