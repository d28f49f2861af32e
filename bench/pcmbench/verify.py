"""Checking what arrived: every line, byte for byte.

- k8s-file: the whole log is parsed (``TIMESTAMP STREAM TAG CONTENT``), P
  pieces joined, and the rebuilt stdout hashed.
- journald: after the monitor has exited a marker entry is sent and awaited
  (journald reads its socket in order, so everything before it is stored),
  then ``journalctl CONTAINER_ID_FULL=<cid> -o json --all`` rebuilds the
  streams (CONTAINER_PARTIAL_MESSAGE=true entries joined; PRIORITY 6 is
  stdout, 3 stderr), each checked on its own.
- attach: a separate Python process reads the SEQPACKET socket with an
  8193-byte buffer (MSG_TRUNC checked) and hashes stdout.
"""

from __future__ import annotations

import hashlib
import json
import os
import select
import subprocess
import sys
import time

from .system import BenchFailure, journald_service


def k8s_stream(path):
    """Rebuild the container's streams from a k8s-file log: (stdout sha256, stdout bytes,
    stdout lines (F records), records, P records, stderr bytes, last stdout line, malformed)."""
    h = hashlib.sha256()
    out_bytes = lines = records = partial = err_bytes = malformed = 0
    last = b""
    cur = []  # pieces of the current stdout line
    tail = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 22)
            if not chunk:
                break
            buf = tail + chunk
            parts = buf.split(b"\n")
            tail = parts.pop()
            for ln in parts:
                records += 1
                fields = ln.split(b" ", 3)
                if len(fields) < 3:
                    malformed += 1
                    continue
                content = fields[3] if len(fields) == 4 else b""
                tag = fields[2].split(b":")[0]
                if fields[1] == b"stdout":
                    if tag == b"F":
                        lines += 1
                        h.update(content)
                        h.update(b"\n")
                        out_bytes += len(content) + 1
                        last = (b"".join(cur) + content) if cur else content
                        cur = []
                    elif tag == b"P":
                        partial += 1
                        h.update(content)
                        out_bytes += len(content)
                        if len(content) < 64:
                            cur.append(content)
                    else:
                        malformed += 1
                else:
                    err_bytes += len(content)
    if tail:
        malformed += 1  # a record without its newline
    return {"sha256": h.hexdigest(), "bytes": out_bytes, "lines": lines, "records": records,
            "partial_records": partial, "stderr_bytes": err_bytes, "last_line": last.decode(errors="replace"),
            "malformed": malformed}


def journal_barrier(timeout=120):
    """Wait until journald has stored everything sent to it so far.

    journald reads its socket in order, so once an entry we send now can be
    read back, every entry the monitor sent before exiting has been stored.
    """
    token = f"pcmbench{os.getpid()}x{time.monotonic_ns()}"
    journald_service.send_native({"MESSAGE": "pyconmon bench barrier", "PYCONMON_BENCH_BARRIER": token})
    journald_service.journal_entries({"PYCONMON_BENCH_BARRIER": token}, timeout=timeout)


class _Rebuilt:
    """One stream rebuilt from journal entries (CONTAINER_PARTIAL_MESSAGE=true pieces joined)."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.bytes = self.lines = self.partial = 0
        self.last = b""

    def add(self, msg, partial):
        if partial:
            self.partial += 1
            self.h.update(msg)
            self.bytes += len(msg)
            return
        if msg.endswith(b"\n"):
            msg = msg[:-1]
        self.lines += 1
        self.h.update(msg + b"\n")
        self.bytes += len(msg) + 1
        self.last = msg

    def result(self):
        return {"sha256": self.h.hexdigest(), "bytes": self.bytes, "lines": self.lines,
                "partial_records": self.partial, "last_line": self.last[-64:].decode(errors="replace")}


def journal_stream(cid, timeout=600):
    """Rebuild stdout (PRIORITY 6) from the journal entries of container ``cid`` (as k8s_stream);
    ``stderr``: the same for PRIORITY 3."""
    argv = ["journalctl", f"CONTAINER_ID_FULL={cid}", "-o", "json", "--all", "--no-pager", "-q",
            "--output-fields=MESSAGE,CONTAINER_PARTIAL_MESSAGE,PRIORITY"]
    out, err = _Rebuilt(), _Rebuilt()
    records = malformed = 0
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        for raw in p.stdout:
            e = json.loads(raw)
            records += 1
            msg = e.get("MESSAGE")
            if isinstance(msg, list):
                msg = bytes(msg) if all(isinstance(x, int) for x in msg) else None
            elif isinstance(msg, str):
                msg = msg.encode("utf-8", "surrogateescape")
            stream = {"6": out, "3": err}.get(e.get("PRIORITY"))
            if msg is None or stream is None:
                malformed += 1
                continue
            stream.add(msg, e.get("CONTAINER_PARTIAL_MESSAGE") == "true")
        p.wait(timeout)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return dict(out.result(), records=records, partial_records=out.partial + err.partial, stderr_bytes=err.bytes,
                stderr=err.result(), malformed=malformed)


def check_stream(got, exp, what="", stderr=None):
    """Raise BenchFailure unless the rebuilt stream ``got`` is exactly ``exp`` (an Expected) and stderr
    is empty, or (journald) ``got["stderr"]`` is exactly ``stderr``."""
    problems = _problems(got, exp)
    if stderr is not None:
        problems += [f"stderr: {x}" for x in _problems(got["stderr"], stderr)]
    elif got.get("stderr_bytes"):
        problems.append(f"{got['stderr_bytes']} bytes on stderr")
    if got.get("malformed"):
        problems.append(f"{got['malformed']} malformed records")
    if problems:
        raise BenchFailure((what + ": " if what else "") + "; ".join(problems))


def _problems(got, exp):
    problems = []
    if got["lines"] != exp.lines:
        problems.append(f"{got['lines']:,} of {exp.lines:,} lines")
    if got["bytes"] != exp.bytes:
        problems.append(f"{got['bytes']:,} of {exp.bytes:,} bytes")
    if got["sha256"] != exp.sha256:
        problems.append("content differs from the expected output")
    if exp.last_line is not None and got["last_line"] != exp.last_line:
        problems.append(f"last line {got['last_line']!r}, expected {exp.last_line!r}")
    return problems


ATTACH_CLIENT = r"""
import hashlib, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_PATH)
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect("/proc/self/fd/%d" % fd)
os.close(fd)
sys.stdout.write("ready\n")
sys.stdout.flush()
buf = bytearray(8193)
mv = memoryview(buf)
h = hashlib.sha256()
out = err = packets = biggest = other = trunc = 0
recv = s.recvmsg_into
while True:
    try:
        n, _, flags, _ = recv([buf])
    except ConnectionResetError:
        break
    if n == 0:
        break
    packets += 1
    if n > biggest:
        biggest = n
    if flags & socket.MSG_TRUNC:
        trunc += 1
    if buf[0] == 2:
        h.update(mv[1:n])
        out += n - 1
    elif buf[0] == 3:
        err += n - 1
    else:
        other += 1
print(json.dumps({"sha256": h.hexdigest(), "bytes": out, "stderr_bytes": err, "packets": packets,
                  "max_packet": biggest, "truncated": trunc, "other": other, "eof_at": time.monotonic()}))
"""


class AttachReader:
    """The attach client as a separate process (so it doesn't share the bench's CPU time or GIL)."""

    def __init__(self, path, timeout=10):
        self.p = subprocess.Popen([sys.executable, "-I", "-S", "-c", ATTACH_CLIENT, path],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if not select.select([self.p.stdout], [], [], timeout)[0] or self.p.stdout.readline() != b"ready\n":
            self.p.kill()
            raise BenchFailure(f"attach client did not connect: {self.p.stderr.read().decode()[-500:]}")

    def result(self, timeout=60):
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.communicate()
            raise BenchFailure(f"attach client still reading {timeout}s after the monitor exited") from None
        if self.p.returncode != 0:
            raise BenchFailure(f"attach client failed: {err.decode()[-500:]}")
        return json.loads(out)

    def kill(self):
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
