"""Unit tests for pyconmon.protocol: the stub-server packets, over real SEQPACKET socket pairs."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon import protocol

fields_st = st.lists(st.binary().map(lambda b: b.replace(b"\0", b"")), max_size=20)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([protocol.HELLO, protocol.FORK, protocol.QUIT, protocol.EXITED]), fields_st)
def test_encode_decode_round_trip(kind: bytes, fields: list[bytes]) -> None:
    assert protocol.decode(protocol.encode(kind, fields)) == (kind, fields)


def test_wire_bytes_are_what_the_c_stub_writes() -> None:
    # stub.c's send_status: "X<pid>\0<status>\0"
    assert protocol.encode(protocol.EXITED, [b"123", b"-1"]) == b"X123\0-1\0"
    assert protocol.decode(b"X123\0-1\0") == (b"X", [b"123", b"-1"])
    assert protocol.decode(b"K") == (b"K", [])
    assert protocol.decode(b"F\0\0") == (b"F", [b"", b""])  # empty fields survive


@pytest.mark.parametrize("packet", [b"", b"Xabc", b"X1\0two"])
def test_malformed_packets_are_refused(packet: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode(packet)


def test_a_nul_in_a_field_is_refused() -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode(protocol.HELLO, [b"a\0b"])


def test_fds_travel_and_arrive_close_on_exec() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        protocol.send(a, protocol.STARTED, [b"42", b"0", b"sync"], [w])
        kind, fields, fds = protocol.receive(b) or (b"", [], [])
        assert (kind, fields) == (protocol.STARTED, [b"42", b"0", b"sync"])
        assert len(fds) == 1 and fds[0] != w
        assert not os.get_inheritable(fds[0])
        os.write(fds[0], b"x")  # the same pipe
        assert os.read(r, 1) == b"x"
        os.close(fds[0])
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_end_of_stream_is_none() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    a.close()
    assert protocol.receive(b) is None
    b.close()


def test_fds_of_a_malformed_packet_are_closed() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        import array
        a.sendmsg([b"Xunterminated"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [w]).tobytes())])
        os.close(w)
        with pytest.raises(protocol.ProtocolError):
            protocol.receive(b)
        assert os.read(r, 1) == b""  # no copy of the write end is left open in this process
    finally:
        os.close(r)
        a.close()
        b.close()


def test_parse_hello() -> None:
    fields = [b"key", b"/cwd", b"2", b"conmon", b"--cid", b"A=1", b"B=2"]
    assert protocol.parse_hello(fields) == (b"key", b"/cwd", [b"conmon", b"--cid"], [b"A=1", b"B=2"])
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_hello([b"key", b"/cwd", b"9", b"conmon"])
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_hello([b"key", b"/cwd", b"x"])
