"""The README's demo (demo/demo.sh) does what the README says, under pyconmon and under C conmon."""

import os
import re
import subprocess

import pytest

from support import REPO

DEMO = os.path.join(REPO, "demo", "demo.sh")
TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d"


def record(stream, text):
    return f"{TIMESTAMP} {stream} F {re.escape(text)}\n"


@pytest.mark.parametrize("monitor", ["pyconmon", "conmon"])
def test_demo(monitor_named, monitor):
    env = dict(os.environ)
    if monitor == "conmon":
        env["MONITOR"] = monitor_named("conmon")
    r = subprocess.run(["bash", DEMO], capture_output=True, text=True, timeout=600, env=env,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = r.stdout
    version = "conmon version 2.2.1\n" if monitor == "pyconmon" else "conmon version 2.1.6\n"
    assert version in out, out
    assert re.search(r'^sync pipe: \{"data": \d+\}', out, re.M), out
    # the k8s-file log: one stdout and one stderr line
    log = out.split("--- ", 2)[1]
    expected = r"\S+ctr\.log\n" + record("stdout", "hello from pyconmon") + record("stderr", "to stderr")
    assert re.fullmatch(expected, log), log
    assert "container exit code: 3\n" in out
    assert re.search(r"^\+ runc delete -f pyconmon-demo-[0-9a-f]{12}$", out, re.M), out
    assert out.endswith("demo: OK (exit code 3 as the container said)\n"), out
