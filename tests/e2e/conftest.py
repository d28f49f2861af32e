"""Fixtures shared by the end-to-end tests.

- ``installed_conmon``: the monitor as ``make podman PREFIX=<tmp>`` installs it
  (built once per session; the test is skipped where it can't be built).
- ``monitor_named``: a function from a monitor's name (``conmon`` = Debian's C
  conmon, ``installed``, ``checkout``/``pyconmon`` = bin/pyconmon) to its path,
  for test modules' own parametrised monitor fixtures.
- ``ref_and_installed``: C conmon (the reference) and the installed pyconmon.
- ``journal``: a real systemd-journald (tests/support/journald_service.py),
  skipped where there is none.
"""

import os

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


@pytest.fixture
def monitor_named(request):
    def path(name):
        if name == "conmon":
            if not os.access(C_CONMON, os.X_OK):
                pytest.skip("Debian's conmon is not installed")
            return C_CONMON
        if name == "installed":
            return request.getfixturevalue("installed_conmon")
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
