"""Unit tests for pyconmon.syncpipe: the JSON lines on _OCI_SYNCPIPE (CONTRACT 3), over real pipes and sockets."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon.syncpipe import SyncPipe, format_message, json_string

# json_string escapes a few characters json.dumps(ensure_ascii=False) leaves alone or spells differently
# (conmon's escaper: \b and \f as \u00XX, DEL, and U+2028/2029 so the line is also valid JavaScript).
EXTRA_ESCAPES = {"\b": "\\u0008", "\f": "\\u000c", "\x7f": "\\u007f", "\u2028": "\\u2028", "\u2029": "\\u2029"}
TRICKY = "\"\\\n\r\t\b\f\x00\x01\x1f\x7f\u2028\u2029é€😀/'<>&"
# Any text a runtime's error message could hold, leaning on the characters that need escaping.
texts = st.text(alphabet=st.one_of(st.sampled_from(TRICKY), st.characters(blacklist_categories=("Cs",))))


def reference(text: str) -> str:
    """json.dumps(ensure_ascii=False), character by character, with the extra escapes above."""
    return '"' + "".join(EXTRA_ESCAPES.get(c) or json.dumps(c, ensure_ascii=False)[1:-1] for c in text) + '"'


@settings(max_examples=500, deadline=None)
@given(texts)
def test_json_string_is_json(text):
    lit = json_string(text)
    assert json.loads(lit) == text
    assert lit == reference(text)
    # Nothing that would break a line-oriented reader or a JavaScript parser is left raw.
    assert not any(ord(c) < 0x20 or c in "\x7f\u2028\u2029" for c in lit)


@pytest.mark.parametrize(("text", "lit"), [
    ("", '""'),
    ('say "hi"', '"say \\"hi\\""'),
    ("C:\\dir", '"C:\\\\dir"'),
    ("a\nb\r\tc", '"a\\nb\\r\\tc"'),
    ("\x00\x1b\x7f", '"\\u0000\\u001b\\u007f"'),
    ("\b\f", '"\\u0008\\u000c"'),
    ("é€😀", '"é€😀"'),
    ("\u2028\u2029", '"\\u2028\\u2029"'),
])
def test_json_string_examples(text, lit):
    assert json_string(text) == lit


@pytest.mark.parametrize(("key", "value", "message", "line"), [
    ("data", 1234, None, b'{"data": 1234}\n'),
    ("pid", -1, None, b'{"pid": -1}\n'),
    ("exit_code", 0, None, b'{"exit_code": 0}\n'),
    ("data", -1, "exec failed: \"x\"\n", b'{"data": -1, "message": "exec failed: \\"x\\"\\n"}\n'),
    ("exit_code", 137, "command timed out", b'{"exit_code": 137, "message": "command timed out"}\n'),
    ("pid", -1, "caf\u00e9", '{"pid": -1, "message": "caf\u00e9"}\n'.encode()),
])
def test_format_message_shapes(key, value, message, line):
    assert format_message(key, value, message) == line


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["data", "pid", "exit_code"]), st.integers(-(2**31), 2**31 - 1), st.none() | texts)
def test_format_message_is_one_json_line(key, value, message):
    line = format_message(key, value, message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    obj = json.loads(line)
    expected = {key: value} if message is None else {key: value, "message": message}
    assert obj == expected
    assert list(obj) == list(expected)  # the value first: callers match on the prefix


def test_format_message_survives_lone_surrogates():
    # A message built from undecodable bytes must still go out as one valid line.
    line = format_message("data", -1, "bad \udcff byte")
    assert json.loads(line) == {"data": -1, "message": "bad ? byte"}


def recv_all(sock: socket.socket) -> list[bytes]:
    sock.settimeout(2)
    out = []
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return out
        out.append(chunk)


@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_STREAM])
def test_send_over_socketpair(kind):
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    pipe = SyncPipe(os.dup(ours.fileno()), "data")
    ours.close()
    try:
        assert pipe.send(4242) is True
        assert pipe.send(-1, "runc: \"oops\"\n") is True
        pipe.close()
        assert pipe.fd is None
        got = recv_all(theirs)
    finally:
        theirs.close()
    if kind == socket.SOCK_SEQPACKET:
        # Podman reads one message per packet: each message must be a single write.
        assert got == [b'{"data": 4242}\n', b'{"data": -1, "message": "runc: \\"oops\\"\\n"}\n']
    lines = b"".join(got).splitlines()
    assert [json.loads(x) for x in lines] == [{"data": 4242}, {"data": -1, "message": 'runc: "oops"\n'}]


def test_send_over_pipe_large_message():
    r, w = os.pipe()
    message = "x" * 300_000  # several pipe buffers: the writer loops until all of it is out
    got = bytearray()

    def reader():
        while chunk := os.read(r, 65536):
            got.extend(chunk)

    t = threading.Thread(target=reader)
    t.start()
    pipe = SyncPipe(w, "pid")
    try:
        assert pipe.send(7, message) is True
    finally:
        pipe.close()
        t.join(5)
        os.close(r)
    assert not t.is_alive()
    assert json.loads(bytes(got)) == {"pid": 7, "message": message}
    assert got.count(b"\n") == 1


def test_send_after_reader_left_pipe():
    r, w = os.pipe()
    os.close(r)
    pipe = SyncPipe(w, "pid")
    assert pipe.send(1) is False  # EPIPE (SIGPIPE is ignored), not an exception
    assert pipe.fd is None
    with pytest.raises(OSError):
        os.fstat(w)  # the fd was closed
    assert pipe.send(2, "again") is False


@pytest.mark.parametrize("kind", [socket.SOCK_SEQPACKET, socket.SOCK_STREAM])
def test_send_after_reader_left_socket(kind):
    ours, theirs = socket.socketpair(socket.AF_UNIX, kind)
    fd = ours.detach()
    theirs.close()
    pipe = SyncPipe(fd, "data")
    assert pipe.send(1, "hello") is False
    assert pipe.fd is None
    assert pipe.send(2) is False


def test_no_fd_is_no_caller():
    pipe = SyncPipe(None, "data")
    assert pipe.send(1) is False
    assert pipe.send(-1, "message") is False
    pipe.close()  # harmless
    assert pipe.fd is None
