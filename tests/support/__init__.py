"""Shared test bed for pyconmon's end-to-end tests.

- ``bundle``: a busybox root file system (built once) and cheap OCI bundles.
- ``harness``: starts a monitor (``/usr/bin/conmon`` or the checkout
  launcher) exactly the way Podman or CRI-O does and talks to it.
- ``podman``: an isolated Podman set-up (private root, runroot, config).

Only the standard library is used here; fixtures live in tests/conftest.py.

Typical use (fixtures ``testbed`` and ``monitor_bin`` from tests/conftest.py)::

    m = testbed.run(monitor_bin, ["echo", "hello"], style="crio")  # bundle, spawn, start byte,
    assert m.sync_msg == {"pid": m.container_pid}                   # wait, sync, runc start
    assert m.wait_exit_file() == 0
    assert [(r.stream, r.tag, r.content) for r in m.log_records()] == [("stdout", "F", b"hello")]

    e = testbed.exec(monitor_bin, m2, ["sh", "-c", "exit 3"], style="crio")   # ExecSync
    assert e.sync_msg == {"exit_code": 3}

    r = podman("run", "--rm", "busybox", "echo", "hi", conmon=monitor_bin)   # private Podman
"""

import os

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
C_CONMON = "/usr/bin/conmon"
LAUNCHER = os.path.join(REPO, "bin", "pyconmon")
RUNC = next((p for p in ("/usr/bin/runc", "/usr/sbin/runc") if os.path.exists(p)), "runc")
CRUN = next((p for p in ("/usr/bin/crun", "/usr/sbin/crun") if os.path.exists(p)), "crun")
BUSYBOX = "/bin/busybox"

# name -> path of every monitor the end-to-end tests compare.
MONITORS = {"conmon": C_CONMON, "pyconmon": LAUNCHER}


def is_c(monitor):
    """Whether ``monitor`` is Debian's C conmon (any other is a pyconmon: checkout, installed, stub)."""
    return os.path.realpath(monitor) == os.path.realpath(C_CONMON)


# name -> path of every OCI runtime the end-to-end tests run containers with (conmon's README names both).
RUNTIMES = {"runc": RUNC, "crun": CRUN}
