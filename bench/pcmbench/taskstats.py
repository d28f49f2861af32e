"""CPU time of short-lived processes, from the kernel's taskstats exit records.

CRI-O starts one monitor per exec probe and reaps it itself, so neither the
zombie trick of the other sections nor /proc sampling can see a probe
monitor's CPU.  The kernel's taskstats interface (generic netlink family
"TASKSTATS") sends a record for every task that exits on the registered CPUs:
pid, parent pid, command name and ``cpu_run_virtual_total`` (the
scheduler's exact run time, ``se.sum_exec_runtime``, in ns, of that task
alone: children are not included; ``cpu_run_real_total`` next to it is
utime + stime in whole ticks).

``ExitRecorder`` listens in a thread for as long as a ``with`` block runs and
keeps the records of the command names asked for.  Where the kernel has no
taskstats (CONFIG_TASKSTATS) ``ExitRecorder.unavailable()`` says so.

struct taskstats offsets are those of linux/taskstats.h (version >= 8; the
fields used here have not moved since version 1); ``selftest`` checks them
against a process of known pid and name.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
import time
from typing import NamedTuple

NETLINK_GENERIC = 16
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
TASKSTATS_CMD_GET = 1
TASKSTATS_CMD_ATTR_REGISTER_CPUMASK = 3
TASKSTATS_TYPE_STATS = 3
TASKSTATS_TYPE_AGGR_PID = 4
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
SO_RCVBUFFORCE = 33

# struct taskstats (linux/taskstats.h); a cross-check: a python3 summing
# numbers was given 130.1 ms here and 131.9 ms by wait4's rusage.
_OFF_CPU_RUN_VIRTUAL_TOTAL = 72
_OFF_AC_COMM = 80
_OFF_AC_PID = 128
_OFF_AC_PPID = 132
_MIN_LEN = 168


class TaskExit(NamedTuple):
    pid: int
    ppid: int
    comm: str
    cpu_ns: int  # cpu_run_virtual_total: this task's own CPU time


def _nla(kind: int, payload: bytes) -> bytes:
    head = struct.pack("=HH", 4 + len(payload), kind)
    return head + payload + b"\0" * (-len(payload) % 4)


def _attrs(data: bytes):
    """(type, payload) of each netlink attribute in ``data``."""
    off = 0
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        if length < 4:
            break
        yield kind & 0x3FFF, data[off + 4:off + length]
        off += (length + 3) & ~3


def _genl(family: int, cmd: int, attrs: bytes, seq: int) -> bytes:
    body = struct.pack("=BBH", cmd, 1, 0) + attrs
    return struct.pack("=IHHII", 16 + len(body), family, NLM_F_REQUEST, seq, 0) + body


def _messages(data: bytes):
    off = 0
    while off + 16 <= len(data):
        length, kind, _flags, _seq, _pid = struct.unpack_from("=IHHII", data, off)
        if length < 16:
            break
        yield kind, data[off + 16:off + length]
        off += (length + 3) & ~3


def _family_id(sock: socket.socket) -> int:
    sock.send(_genl(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, _nla(CTRL_ATTR_FAMILY_NAME, b"TASKSTATS\0"), 1))
    for kind, body in _messages(sock.recv(65536)):
        if kind == NLMSG_ERROR:
            raise OSError(-struct.unpack_from("=i", body)[0], "no TASKSTATS netlink family")
        for attr, payload in _attrs(body[4:]):
            if attr == CTRL_ATTR_FAMILY_ID:
                return struct.unpack_from("=H", payload)[0]
    raise OSError("no TASKSTATS family id in the reply")


def parse_stats(payload: bytes) -> TaskExit:
    if len(payload) < _MIN_LEN:
        raise ValueError(f"struct taskstats of {len(payload)} bytes")
    comm = payload[_OFF_AC_COMM:_OFF_AC_COMM + 32].split(b"\0", 1)[0].decode(errors="replace")
    pid, ppid = struct.unpack_from("=II", payload, _OFF_AC_PID)
    (cpu_ns,) = struct.unpack_from("=Q", payload, _OFF_CPU_RUN_VIRTUAL_TOTAL)
    return TaskExit(pid, ppid, comm, cpu_ns)


class ExitRecorder:
    """``with ExitRecorder({"conmon"}) as rec: ...`` then ``rec.exits``: TaskExit of each such task that exited."""

    def __init__(self, comms: set[str]):
        self.comms = comms
        self.exits: list[TaskExit] = []
        self.lost = 0  # ENOBUFS: records the kernel dropped (the socket buffer overflowed)
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def unavailable() -> str | None:
        try:
            with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC) as s:
                s.bind((0, 0))
                _family_id(s)
        except OSError as e:
            return f"no taskstats netlink interface (kernel CONFIG_TASKSTATS): {e}"
        return None

    def __enter__(self) -> ExitRecorder:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        sock.bind((0, 0))
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 20)
        family = _family_id(sock)
        cpus = f"0-{(os.cpu_count() or 1) - 1}".encode() + b"\0"
        sock.send(_genl(family, TASKSTATS_CMD_GET, _nla(TASKSTATS_CMD_ATTR_REGISTER_CPUMASK, cpus), 2))
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._run, args=(family,), daemon=True)
        self._thread.start()
        return self

    def _run(self, family: int) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                data = self._sock.recv(1 << 20)
            except TimeoutError:
                continue
            except OSError as e:
                if e.errno == 105:  # ENOBUFS
                    self.lost += 1
                    continue
                raise
            for kind, body in _messages(data):
                if kind != family:
                    continue
                for attr, nested in _attrs(body[4:]):
                    if attr != TASKSTATS_TYPE_AGGR_PID:
                        continue
                    for inner, payload in _attrs(nested):
                        if inner == TASKSTATS_TYPE_STATS:
                            rec = parse_stats(payload)
                            if rec.comm in self.comms:
                                self.exits.append(rec)

    def __exit__(self, *exc) -> None:
        time.sleep(0.3)  # the last exits' records are in flight
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._sock:
            self._sock.close()


def selftest() -> None:
    """Check the struct offsets on a process of known pid and name (raises AssertionError)."""
    with ExitRecorder({"sleep"}) as rec:
        p = subprocess.Popen(["sleep", "0.05"])
        p.wait()
    mine = [r for r in rec.exits if r.pid == p.pid]
    assert mine and mine[0].ppid == os.getpid() and 0 < mine[0].cpu_ns < 10**9, (p.pid, rec.exits)
