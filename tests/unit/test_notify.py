"""Unit tests for pyconmon.notify: the line filter and the relay over real sockets."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyconmon.notify import NotifyRelay, filter_notify
from support.diag import RecordingDiag

# An oracle written from CONTRACT.md 4 independently of the filter: a line is a KEY=VALUE
# assignment (split at its first "="); the key decides, with either the exact values allowed
# or any value at all (None).
CONTRACT_KEYS: dict[bytes, frozenset[bytes] | None] = {
    b"READY": frozenset({b"1"}),
    b"RELOADING": frozenset({b"1"}),
    b"STOPPING": frozenset({b"1"}),
    b"WATCHDOG": frozenset({b"1", b"trigger"}),
    b"STATUS": None,
    b"ERRNO": None,
    b"BUSERROR": None,
    b"MONOTONIC_USEC": None,
}


def oracle(payload: bytes) -> bytes:
    """What the relay must forward for one datagram, computed line by line from CONTRACT_KEYS."""
    kept = []
    rest = payload
    while True:
        line, newline, rest = rest.partition(b"\n")
        key, eq, value = line.partition(b"=")
        if eq and key in CONTRACT_KEYS:
            values = CONTRACT_KEYS[key]
            if values is None or value in values:
                kept.append(line)
        if not newline:
            break
    return b"\n".join(kept)


# -- filter_notify ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"READY=1", b"READY=1"),
        (b"RELOADING=1", b"RELOADING=1"),
        (b"STOPPING=1", b"STOPPING=1"),
        (b"WATCHDOG=1", b"WATCHDOG=1"),
        (b"WATCHDOG=trigger", b"WATCHDOG=trigger"),
        (b"STATUS=Serving 3 clients", b"STATUS=Serving 3 clients"),
        (b"STATUS=", b"STATUS="),
        (b"ERRNO=2", b"ERRNO=2"),
        (b"BUSERROR=org.freedesktop.DBus.Error.Failed", b"BUSERROR=org.freedesktop.DBus.Error.Failed"),
        (b"MONOTONIC_USEC=123456", b"MONOTONIC_USEC=123456"),
        (b"READY=1\n", b"READY=1"),
        (b"MAINPID=42", b""),
        (b"MAINPID=42\nREADY=1\nSTATUS=hi there", b"READY=1\nSTATUS=hi there"),
        (b"READY=1\nMAINPID=42", b"READY=1"),
        (b"RELOADING=1\nMONOTONIC_USEC=5\nSTATUS=reloading", b"RELOADING=1\nMONOTONIC_USEC=5\nSTATUS=reloading"),
        (b"READY=0", b""),
        (b"READY=1 ", b""),
        (b" READY=1", b""),
        (b"ready=1", b""),
        (b"READY=10", b""),
        (b"WATCHDOG=0", b""),
        (b"WATCHDOG_USEC=1000000", b""),
        (b"FDSTORE=1", b""),
        (b"FDNAME=x", b""),
        (b"BARRIER=1", b""),
        (b"EXTEND_TIMEOUT_USEC=5", b""),
        (b"NOTIFYACCESS=all", b""),
        (b"X_CUSTOM=1", b""),
        (b"READY=1\r", b""),
        (b"", b""),
        (b"\n\n", b""),
        (b"X=1\nREADY=1\n\nWATCHDOG=1\n", b"READY=1\nWATCHDOG=1"),
        (b"READY=1\nREADY=1", b"READY=1\nREADY=1"),
        (b"STATUS=a=b\nERRNO=\n", b"STATUS=a=b\nERRNO="),
        (b"STATUS=caf\xc3\xa9\xff", b"STATUS=caf\xc3\xa9\xff"),
        (b"STATUS=\x00nul", b"STATUS=\x00nul"),
    ],
)
def test_filter_cases(payload: bytes, expected: bytes) -> None:
    assert filter_notify(payload) == expected


# Lines near the allowed ones: every contract key with allowed, empty and wrong values, keys
# one letter off or with spaces/CR around, plus random bytes.
_keys = [*sorted(CONTRACT_KEYS), b"MAINPID", b"FDSTORE", b"WATCHDOG_USEC", b"READ", b"READY_", b"STATUS_X",
         b"status", b" READY", b"ERRNO ", b""]
_values = st.one_of(
    st.sampled_from([b"1", b"0", b"trigger", b"", b"1 ", b"1\r", b"10", b"a=b"]), st.binary(max_size=8)
)
_line = st.one_of(
    st.tuples(st.sampled_from(_keys), st.sampled_from([b"=", b"", b" ="]), _values).map(b"".join),
    st.binary(max_size=20),
)


@given(st.lists(_line, max_size=12).map(lambda lines: b"\n".join(lines)))
def test_filter_property(payload: bytes) -> None:
    assert filter_notify(payload) == oracle(payload)


# -- NotifyRelay with real sockets ------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "host.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(str(path))
    s.settimeout(0.2)
    yield s, str(path)
    s.close()


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except (TimeoutError, BlockingIOError):
            return out


def send(path: str, *messages: bytes) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
        for m in messages:
            c.sendto(m, path)


def relay_once(bundle: Path, hpath: str, hsock: socket.socket, *messages: bytes) -> list[bytes]:
    """Send ``messages`` to a relay for ``bundle`` (host socket ``hpath``), let it read once; what ``hsock`` got."""
    relay = NotifyRelay(str(bundle), hpath, RecordingDiag())
    try:
        send(relay.socket_path, *messages)
        relay.on_readable()
        return received(hsock)
    finally:
        relay.close()


def test_relay_socket_setup(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    relay = NotifyRelay(str(bundle), host[1], RecordingDiag())
    try:
        assert relay.socket_path == str(bundle / "notify" / "notify.sock")
        st_ = os.stat(relay.socket_path)
        assert stat.S_ISSOCK(st_.st_mode)
        assert stat.S_IMODE(st_.st_mode) == 0o777
        assert not os.get_blocking(relay.fd)
        assert not os.get_inheritable(relay.fd)
        sock = socket.socket(fileno=os.dup(relay.fd))
        try:
            assert sock.type == socket.SOCK_DGRAM
        finally:
            sock.close()
    finally:
        relay.close()
    assert not os.path.exists(relay.socket_path)
    relay.close()  # idempotent


def test_relay_forwards_filtered_lines(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    hsock, hpath = host
    relay = NotifyRelay(str(tmp_path), hpath, RecordingDiag())
    try:
        send(
            relay.socket_path,
            b"READY=1",
            b"MAINPID=42\nREADY=1\nSTATUS=hi there",
            b"MAINPID=1",
            b"FDSTORE=1\nX=2",
            b"RELOADING=1\nSTOPPING=1\nERRNO=3\nBUSERROR=x\nMONOTONIC_USEC=5\nWATCHDOG=trigger\nFOO=1\nREADY=0",
            b"WATCHDOG=1\n",
        )
        relay.on_readable()
        assert received(hsock) == [
            b"READY=1",
            b"READY=1\nSTATUS=hi there",
            b"RELOADING=1\nSTOPPING=1\nERRNO=3\nBUSERROR=x\nMONOTONIC_USEC=5\nWATCHDOG=trigger",
            b"WATCHDOG=1",
        ]
        relay.on_readable()  # nothing pending: returns at once
        assert received(hsock) == []
    finally:
        relay.close()


@pytest.mark.parametrize(
    ("messages", "expected"),
    [
        pytest.param((b"MAINPID=1", b"MAINPID=7\n", b"READY=1\nMAINPID=9"), [b"READY=1"], id="mainpid-never-passes"),
        pytest.param((b"MAINPID=5", b"", b"BARRIER=1"), [], id="nothing-passes-nothing-sent"),
    ],
)
def test_relay_drops_what_must_not_pass(  # type: ignore[no-untyped-def]
    tmp_path: Path, host, messages: tuple[bytes, ...], expected: list[bytes]
) -> None:
    hsock, hpath = host
    got = relay_once(tmp_path, hpath, hsock, *messages)
    assert got == expected
    assert not any(b"MAINPID" in g for g in got)


def test_relay_existing_dir_and_stale_socket(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    hsock, hpath = host
    (tmp_path / "notify").mkdir()
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / "notify" / "notify.sock"))
    stale.close()
    assert relay_once(tmp_path, hpath, hsock, b"STATUS=ok") == [b"STATUS=ok"]


def test_relay_long_bundle_path(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    hsock, hpath = host
    bundle = tmp_path / ("b" * 60) / ("c" * 60)
    bundle.mkdir(parents=True)
    relay = NotifyRelay(str(bundle), hpath, RecordingDiag())
    try:
        assert len(relay.socket_path) > 108
        assert stat.S_ISSOCK(os.stat(relay.socket_path).st_mode)
        # a client reaches it through a short path to the same directory
        fd = os.open(bundle / "notify", os.O_PATH)
        try:
            send(f"/proc/self/fd/{fd}/notify.sock", b"READY=1")
        finally:
            os.close(fd)
        relay.on_readable()
        assert received(hsock) == [b"READY=1"]
    finally:
        relay.close()


@pytest.fixture(params=["long-path", "abstract"])
def odd_host(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A host socket a plain bind can't reach: a path longer than sun_path, or an abstract (``@name``) one."""
    hs = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "long-path":
        d = tmp_path / ("h" * 70) / ("i" * 70)
        d.mkdir(parents=True)
        hpath = str(d / "host.sock")
        fd = os.open(d, os.O_PATH)
        hs.bind(f"/proc/self/fd/{fd}/host.sock")
        os.close(fd)
    else:
        name = f"pyconmon-test-{os.getpid()}"
        hs.bind("\0" + name)
        hpath = "@" + name
    hs.settimeout(0.2)
    yield hs, hpath
    hs.close()


def test_relay_odd_host_socket(tmp_path: Path, odd_host) -> None:  # type: ignore[no-untyped-def]
    hsock, hpath = odd_host
    assert relay_once(tmp_path, hpath, hsock, b"READY=1") == [b"READY=1"]


def test_relay_host_socket_missing_warns_once(tmp_path: Path) -> None:
    diag = RecordingDiag()
    relay = NotifyRelay(str(tmp_path), str(tmp_path / "nope.sock"), diag)
    try:
        send(relay.socket_path, b"READY=1", b"WATCHDOG=1", b"STATUS=x")
        relay.on_readable()  # must not raise
        send(relay.socket_path, b"READY=1")
        relay.on_readable()
        warnings = diag.warnings()
        assert len(warnings) == 1
        assert "Failed to send notification to" in warnings[0]
    finally:
        relay.close()


def test_relay_drops_passed_fds(tmp_path: Path, host) -> None:  # type: ignore[no-untyped-def]
    hsock, hpath = host
    relay = NotifyRelay(str(tmp_path), hpath, RecordingDiag())
    before = set(os.listdir("/proc/self/fd"))
    r, w = os.pipe()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as c:
            c.connect(relay.socket_path)
            socket.send_fds(c, [b"FDSTORE=1\nREADY=1"], [r])
        os.close(r)
        os.close(w)
        relay.on_readable()
        assert received(hsock) == [b"READY=1"]
        assert set(os.listdir("/proc/self/fd")) <= before  # no descriptor was installed
    finally:
        relay.close()


def test_relay_bind_failure_raises(tmp_path: Path) -> None:
    (tmp_path / "notify").write_text("not a dir")
    with pytest.raises(OSError):
        NotifyRelay(str(tmp_path), "/nonexistent", RecordingDiag())
