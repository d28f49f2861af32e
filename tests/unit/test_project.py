"""Claims the README makes about the project as a whole: the monitor imports nothing but the
standard library, and ``pip install .`` gives a ``pyconmon`` console script."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "pyconmon"


def imported_top_level_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in one source file (relative ones are the package's)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_runtime_imports_only_the_standard_library() -> None:
    """Besides the stdlib: the package itself and the launcher's built-in module (launcher/conmon.c)."""
    ours = {"pyconmon", "_pyconmon_native"}
    assert 'PyImport_AppendInittab("_pyconmon_native"' in (ROOT / "launcher" / "conmon.c").read_text()
    sources = sorted(PACKAGE.glob("*.py"))
    assert len(sources) > 10, sources
    outside = {
        path.name: sorted(n for n in imported_top_level_modules(path) if n not in sys.stdlib_module_names | ours)
        for path in sources
    }
    assert {k: v for k, v in outside.items() if v} == {}


def test_console_script_is_declared_and_callable() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert not project.get("dependencies"), project.get("dependencies")  # nothing to install at run time
    module, _, func = project["scripts"]["pyconmon"].partition(":")
    assert callable(getattr(importlib.import_module(module), func))


def test_ci_installs_both_runtimes_and_readies_crun() -> None:
    """README "Tests": `.ci/run` installs runc and crun, and mounts hugetlb as v1 when the
    cgroup v2 hierarchy holds controllers (crun refuses every container otherwise)."""
    script = (ROOT / ".ci" / "run").read_text()
    install = script[script.index("apt-get install"):]
    packages = install[:install.index("</dev/null")].split()
    assert {"runc", "crun"} <= set(packages), packages
    assert 'if [ -n "$(cat /sys/fs/cgroup/unified/cgroup.controllers 2>/dev/null)" ]; then' in script
    assert "mount -t cgroup -o hugetlb cgroup /sys/fs/cgroup/hugetlb" in script
    assert script.index("hugetlb") < script.index("make test")


def recipe(makefile: str, target: str) -> list[str]:
    """The recipe lines of ``target`` in the Makefile's text (tabs stripped)."""
    lines = makefile.splitlines()
    start = lines.index(f"{target}:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("\t"):
            break
        out.append(line[1:].lstrip("@"))  # make's echo-off prefix; "-" (ignore errors) is kept
    return out


def test_make_test_is_the_whole_story_and_ci_runs_just_it() -> None:
    """README "Tests": `make test` runs the whole suite (classic), then the e2e suite in server
    mode, in that order, stopping at the first failure; CI runs exactly `make test`."""
    makefile = (ROOT / "Makefile").read_text()
    test = [line for line in recipe(makefile, "test") if not line.startswith("echo")]
    assert test == ["$(DEV_PYTHON) -m pytest -q tests", "$(MAKE) --no-print-directory test-server"]
    server = recipe(makefile, "test-server")
    install = next(i for i, line in enumerate(server) if "install ENTRY=stub" in line)
    run = next(i for i, line in enumerate(server) if "-m pytest -q tests/e2e" in line)
    assert install < run and server[run].startswith("PYCONMON_TEST_MONITORS=")
    assert not any(line.startswith("-") or "|| true" in line for line in test + server)  # no failure ignored
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line.split("<")[0].strip() for line in script.splitlines() if line.startswith("make")]
    assert commands[-1] == "make test" and "make test-server" not in commands, commands


# What an idle classic monitor has imported (read from a real one with sys.modules): the package's
# modules on the path from the command line to a running container, and these from the stdlib.
IDLE_PATH = ["cli", "options", "config", "monitor", "children", "diag", "exitfiles", "loop", "process", "runtime",
             "syncpipe", "stdio", "streams", "logsink", "logpath", "k8sfile", "attach", "unixpath", "ctl", "oom"]
IDLE_STDLIB = {"__future__", "_collections", "_collections_abc", "_heapq", "_socket", "_stat", "fcntl",
               "genericpath", "heapq", "os", "os.path", "posixpath", "select", "stat", "time"}


def test_the_idle_path_imports_only_small_stdlib_modules() -> None:
    """README: the monitor "imports nothing it does not need".  Every module is private memory in every
    classic monitor: `re` (with enum and functools), imported by ctl.py for one pattern, added about 1 MB
    of Private_Dirty to each idle monitor (4.5 MB instead of 3.6)."""
    code = ("import sys\nbefore = set(sys.modules)\n"
            + "".join(f"import pyconmon.{name}\n" for name in IDLE_PATH)
            + "print(' '.join(sorted(n for n in set(sys.modules) - before if not n.startswith('pyconmon'))))\n")
    r = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", f"import sys; sys.path.insert(0, {str(ROOT / 'src')!r})\n"
                        + code], capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) - IDLE_STDLIB == set()
