"""The monitor's own diagnostics (diag.Diagnostics): stderr lines, level filter, syslog datagrams.

stderr is checked through pytest's fd capture; syslog through a real datagram
socket standing in for /dev/log.
"""

import os
import re
import socket
import tempfile
import time

import pytest

from pyconmon.diag import DEBUG, ERROR, INFO, TRACE, WARNING, Diagnostics

CID = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
SYSLOG_RE = re.compile(r"^<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) conmon\[(\d+)\]: conmon (\S+) <(\w+)>: (.*)$", re.S)


def emit_all(d):
    d.error("e-msg")
    d.warn("w-msg")
    d.info("i-msg")
    d.debug("d-msg")
    d.trace("t-msg")


LINES = ["[conmon:e]: e-msg", "[conmon:w]: w-msg", "[conmon:i]: i-msg", "[conmon:d]: d-msg",
         "[conmon:d]: t-msg"]  # trace lines look like debug lines, as in conmon


@pytest.mark.parametrize("level", [ERROR, WARNING, INFO, DEBUG, TRACE])
def test_stderr_lines_filtered_by_level(capfd, level):
    emit_all(Diagnostics(level))
    out, err = capfd.readouterr()
    assert out == ""
    assert err.splitlines() == LINES[:level + 1]


def test_default_level_is_warning(capfd):
    emit_all(Diagnostics())
    assert capfd.readouterr().err.splitlines() == LINES[:2]


def test_no_stderr_once_detached(capfd):
    d = Diagnostics(TRACE)
    d.use_stderr = False
    emit_all(d)
    assert capfd.readouterr().err == ""


def test_text_that_is_not_utf8_does_not_raise(capfd):
    Diagnostics().warn("bad \udcff byte")
    assert capfd.readouterr().err == "[conmon:w]: bad ? byte\n"


def test_a_failing_stderr_is_ignored():
    full = os.open("/dev/full", os.O_WRONLY)
    saved = os.dup(2)
    try:
        os.dup2(full, 2)
        Diagnostics().error("nowhere to go")  # ENOSPC: must not raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(full)


def test_warn_once_and_forget(capfd):
    d = Diagnostics()
    for _ in range(3):
        d.warn_once("disk", "disk full")
    d.warn_once("other", "other trouble")
    d.forget("disk")
    d.warn_once("disk", "disk full")
    assert capfd.readouterr().err.splitlines() == ["[conmon:w]: disk full", "[conmon:w]: other trouble",
                                                  "[conmon:w]: disk full"]


def test_warn_once_respects_the_level(capfd):
    d = Diagnostics(ERROR)
    d.warn_once("k", "hidden")
    assert capfd.readouterr().err == ""


# -- syslog ------------------------------------------------------------------


@pytest.fixture
def devlog():
    d = tempfile.mkdtemp(prefix="pcm-diag-", dir="/tmp")  # short: sun_path is 108 bytes
    path = os.path.join(d, "log")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()
    if os.path.exists(path):
        os.unlink(path)
    os.rmdir(d)


def recv_all(sock):
    out = []
    sock.setblocking(False)
    try:
        while True:
            out.append(sock.recv(65536).decode())
    except BlockingIOError:
        pass
    finally:
        sock.settimeout(2)
    return out


def parse(msg):
    m = SYSLOG_RE.match(msg)
    assert m, msg
    pri, _stamp, pid, cid, tag, text = m.groups()
    return int(pri), int(pid), cid, tag, text


def syslog_diag(path, level=WARNING, stderr=False):
    """Diagnostics at ``level`` with syslog to ``path``; stderr only if ``stderr``."""
    d = Diagnostics(level)
    d.use_stderr = stderr
    d.enable_syslog(CID, path)
    return d


def stop_syslog(path, sock):
    """The syslog daemon goes away: its socket closed and the path gone."""
    sock.close()
    os.unlink(path)


def error_to_new_syslog(d, path, text):
    """A new syslog socket at ``path``; ``d.error(text)``; the text of what arrives there."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as again:
        again.bind(path)
        d.error(text)
        return parse(again.recv(65536).decode())[4]


@pytest.mark.parametrize("level", [ERROR, WARNING, INFO, DEBUG, TRACE])
def test_syslog_datagrams_levels_and_format(capfd, devlog, level):
    path, sock = devlog
    d = syslog_diag(path, level)
    emit_all(d)
    got = [parse(m) for m in recv_all(sock)]
    expected = [(8 + 3, "error", "e-msg"), (8 + 4, "nwarn", "w-msg"), (8 + 6, "ninfo", "i-msg"),
                (8 + 7, "ndebug", "d-msg"), (8 + 7, "ntrace", "t-msg")][:level + 1]  # facility user
    assert [(pri, tag, text) for pri, _, _, tag, text in got] == expected
    assert {(pid, cid) for _, pid, cid, _, _ in got} <= {(os.getpid(), CID[:20])}
    assert capfd.readouterr().err == ""


def test_syslog_and_stderr_together(capfd, devlog):
    path, sock = devlog
    d = syslog_diag(path, stderr=True)
    d.error("both")
    assert capfd.readouterr().err == "[conmon:e]: both\n"
    assert parse(sock.recv(65536).decode())[3:] == ("error", "both")


def test_syslog_timestamp_is_rfc3164(devlog):
    path, sock = devlog
    d = syslog_diag(path)
    d.error("x")
    stamp = SYSLOG_RE.match(sock.recv(65536).decode()).group(2)
    assert stamp == time.strftime("%b %e %H:%M:%S", time.strptime(stamp, "%b %d %H:%M:%S"))


def test_missing_syslog_is_ignored_and_picked_up_later(capfd, devlog):
    path, sock = devlog
    stop_syslog(path, sock)
    d = syslog_diag(path, stderr=True)
    d.error("lost")  # nobody listens: silently dropped, stderr still works
    assert capfd.readouterr().err == "[conmon:e]: lost\n"
    assert error_to_new_syslog(d, path, "found") == "found"


def test_restarted_syslog_is_reconnected(devlog):
    path, sock = devlog
    d = syslog_diag(path)
    d.error("one")
    assert parse(sock.recv(65536).decode())[4] == "one"
    stop_syslog(path, sock)
    d.error("into the void")  # ECONNREFUSED: dropped, the socket forgotten
    assert error_to_new_syslog(d, path, "two") == "two"


def test_a_full_syslog_never_blocks(devlog):
    path, sock = devlog
    d = syslog_diag(path)
    t0 = time.monotonic()
    for i in range(2000):  # far more than the receive queue holds; nobody reads
        d.error(f"message {i} " + "x" * 200)
    assert time.monotonic() - t0 < 2
    first = parse(sock.recv(65536).decode())[4]
    assert first.startswith("message 0 ")


def test_close_and_reuse(devlog):
    path, sock = devlog
    d = syslog_diag(path)
    d.error("a")
    d.close()
    d.close()  # twice is fine
    d.error("b")  # reconnects
    assert [parse(m)[4] for m in recv_all(sock)] == ["a", "b"]
