"""The idle classic monitor's private memory, read from a real one: a bound, not a benchmark.

Memory is not timing: an idle monitor's Private_Dirty (/proc/PID/smaps_rollup)
comes out the same, within some tens of KB, run after run on the same Python
and libc.  The bench's memory section measures it against C conmon; this test
only fails when it grows past a bound with room to spare, as it did when
ctl.py imported `re` (4.5 MB instead of 3.6; the target is 3.5).
"""

import os

from support.harness import poll_until, private_dirty_kb, runtime_kill

IDLE_PRIVATE_DIRTY_MAX_KB = 4096


def test_an_idle_classic_monitor_stays_under_its_private_memory_bound(testbed, installed_conmon):
    m = testbed.run(installed_conmon, ["sh", "-c", "echo out; echo err >&2; exec sleep 600"])
    poll_until(lambda: len(m.log_records()) == 2, what="both lines logged")  # idle from here on
    assert os.readlink(f"/proc/{m.pid}/exe") == os.path.realpath(installed_conmon)
    with open(f"/proc/{m.pid}/maps") as f:
        assert "libpython" in f.read()  # the Python monitor itself, not a server-mode stub
    # The install was just written: until written back, its page-cache pages count as dirty,
    # and as private while only one process maps them.
    os.sync()
    assert private_dirty_kb(m.pid) <= IDLE_PRIVATE_DIRTY_MAX_KB
    runtime_kill(m)
    assert m.wait_exit_file(10) == 137
