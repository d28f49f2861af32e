"""The OCI runtimes the end-to-end tests run containers with: runc and crun.

crun on a hybrid cgroup host: crun 1.8 refuses every container ("cgroups in
hybrid mode not supported, drop all controllers from cgroupv2") when any
controller is enabled on the v2 hierarchy. On this Debian 12 VM (cgroup v1,
hybrid) ``hugetlb`` is the one: /sys/fs/cgroup/unified/cgroup.controllers
reads ``hugetlb``. Mounting hugetlb as a v1 hierarchy moves it off v2 and
leaves the v2 hierarchy with no controllers; runc is unaffected. ``.ci/run``
does the same before the tests.
"""

import os
import subprocess

from . import RUNTIMES

UNIFIED_CONTROLLERS = "/sys/fs/cgroup/unified/cgroup.controllers"
HUGETLB_MOUNT = "/sys/fs/cgroup/hugetlb"


def v2_controllers(path=UNIFIED_CONTROLLERS):
    """Controllers enabled on the hybrid host's v2 hierarchy ([] if none, or no such hierarchy)."""
    try:
        with open(path) as f:
            return f.read().split()
    except OSError:
        return []


def prepare_crun_cgroups():
    """Make crun usable on a hybrid host: mount hugetlb as v1 while the v2 hierarchy holds controllers.

    Does nothing when the v2 hierarchy has none. Raises RuntimeError (with the
    controllers left) if they are still there afterwards.
    """
    if not v2_controllers():
        return
    os.makedirs(HUGETLB_MOUNT, exist_ok=True)
    r = subprocess.run(["mount", "-t", "cgroup", "-o", "hugetlb", "cgroup", HUGETLB_MOUNT],
                       capture_output=True, text=True, timeout=30, check=False)
    left = v2_controllers()
    if left:
        raise RuntimeError(f"crun needs no controllers on the cgroup v2 hierarchy; still there: {left} "
                           f"(mount hugetlb: {r.stderr.strip() or r.returncode})")


def selected_runtimes():
    """(name, path) of the runtimes to test: all of RUNTIMES, or those named in PYCONMON_TEST_RUNTIMES."""
    sel = [x.strip() for x in os.environ.get("PYCONMON_TEST_RUNTIMES", "").split(",") if x.strip()]
    unknown = [x for x in sel if x not in RUNTIMES]
    if unknown:
        raise ValueError(f"PYCONMON_TEST_RUNTIMES: unknown runtime(s) {unknown}; known: {sorted(RUNTIMES)}")
    return [(n, p) for n, p in RUNTIMES.items() if not sel or n in sel]


def require_runtime(name):
    """The runtime's path, ready to run containers; RuntimeError if it is missing (no skip: CI installs it)."""
    path = RUNTIMES[name]
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"{name} is not installed ({path}); .ci/run installs it")
    if name == "crun":
        prepare_crun_cgroups()
    return path
