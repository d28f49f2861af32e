"""The conmon(8) man page (packaging/manpage.py): the same options as ``--help``, installed by make install."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYS_PYTHON = "/usr/bin/python3"


def generated_page(*args: str) -> str:
    r = subprocess.run([SYS_PYTHON, "-I", "-S", str(REPO / "packaging" / "manpage.py"), *args],
                       capture_output=True, text=True, check=True, timeout=60)
    return r.stdout


def monitor_output(*args: str) -> str:
    r = subprocess.run([str(REPO / "bin" / "pyconmon"), *args], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def help_options(text: str) -> dict[str, tuple[str, str]]:
    """``--help``: long name -> (short letter or "", help text)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^  (?:-(\w), )?--([\w-]+)\s+(\S.*)$", line)
        if m:
            out[m.group(2)] = (m.group(1) or "", m.group(3))
    return out


def page_options(page: str) -> dict[str, tuple[str, str]]:
    """The OPTIONS section: long name -> (short letter or "", the text under it, unescaped)."""
    section = page.split("\n.SH OPTIONS\n", 1)[1].split("\n.SH ", 1)[0]
    out = {}
    entries = section.split(".TP\n")
    assert entries[0] == ""  # nothing but entries
    for entry in entries[1:]:
        head, body = entry.rstrip("\n").split("\n", 1)
        m = re.match(r"^(?:\\fB\\-(\w)\\fR, )?\\fB\\-\\-([\w\\-]+)\\fR", head)
        assert m, head
        name = m.group(2).replace("\\-", "-")
        assert name not in out, f"--{name} twice"
        out[name] = (m.group(1) or "", body.replace("\\-", "-").replace("\\e", "\\"))
    return out


def test_every_option_in_help_is_in_the_page_and_back() -> None:
    shown = help_options(monitor_output("--help"))
    documented = page_options(generated_page())
    assert len(shown) > 40  # the parser above did find the options
    assert set(documented) == set(shown)
    for name, (short, text) in shown.items():
        assert documented[name][0] == short, name
        assert documented[name][1].startswith(text), name


def test_page_order_is_the_help_order() -> None:
    shown = list(help_options(monitor_output("--help")))
    assert list(page_options(generated_page())) == shown


def test_version_in_the_page_is_what_the_monitor_prints() -> None:
    version = monitor_output("--version").splitlines()
    page = generated_page().replace("\\-", "-")
    assert version[0] in page  # conmon version 2.2.1
    assert version[2] in page and "third line" in page  # pyconmon version X
    assert f'"pyconmon {version[2].split()[-1]}"' in page  # in the .TH header too


def test_date_only_when_given() -> None:
    assert re.search(r'^\.TH CONMON 8 "" ', generated_page(), re.M)
    assert re.search(r'^\.TH CONMON 8 "2001-02-03" ', generated_page("--date", "2001-02-03"), re.M)


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is missing (groff-base, see .ci/run)")
def test_page_renders_without_warnings() -> None:
    r = subprocess.run(["groff", "-man", "-Tutf8", "-ww", "-z"], input=generated_page("--libdir", "/usr/lib/x"),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    text = subprocess.run(["groff", "-man", "-Tutf8"], input=generated_page(), capture_output=True, text=True,
                          timeout=60, env={**os.environ, "LC_ALL": "C.UTF-8"}).stdout
    plain = re.sub(r".\x08", "", text)
    assert "--log-size-max" in plain and "-c, --cid" in plain


def test_make_install_installs_the_page(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "DESTDIR", "PREFIX")}
    r = subprocess.run(["make", "-s", "-C", str(REPO), f"BUILDDIR={tmp_path / 'build'}", "PREFIX=/opt/pcm",
                        f"DESTDIR={tmp_path / 'stage'}", "install"], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "stage" / "opt" / "pcm" / "share" / "man" / "man8" / "conmon.8").read_text()
    assert page_options(page) == page_options(generated_page())
    assert "/opt/pcm/lib/pyconmon/pyconmon/" in page.replace("\\-", "-")  # FILES names the real libdir
    r = subprocess.run(["make", "-s", "-C", str(REPO), f"BUILDDIR={tmp_path / 'build'}", "PREFIX=/opt/pcm",
                        f"DESTDIR={tmp_path / 'stage'}", "uninstall"], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not (tmp_path / "stage" / "opt" / "pcm" / "share" / "man" / "man8" / "conmon.8").exists()
