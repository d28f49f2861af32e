"""pyconmon.logbuffer: the writer thread, the bounded buffer's backpressure, read-time stamps, sync policies."""

from __future__ import annotations

import os
import threading
import time

from pyconmon.k8sfile import K8sFileWriter
from pyconmon.logbuffer import BufferedLogWriter
from pyconmon.loop import EventLoop
from support.diag import RecordingDiag


class SlowWriter:
    """A log writer on a disk that takes ``delay`` seconds per write (until released)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.data: list[tuple[int, bytes]] = []
        self.ops: list[str] = []
        self.release = threading.Event()

    def write(self, stream: int, data: bytes) -> None:
        self.release.wait(self.delay)
        self.data.append((stream, data))

    def reopen(self) -> None:
        self.ops.append("reopen")

    def flush(self) -> None:
        self.ops.append("flush")

    def sync(self) -> None:
        self.ops.append("sync")

    def close(self) -> None:
        self.ops.append("close")


def test_a_slow_disk_does_not_hold_the_caller_and_nothing_is_lost():
    inner = SlowWriter(0.2)
    w = BufferedLogWriter(inner, 1 << 20)
    start = time.monotonic()
    for i in range(10):
        w.write(2, b"line %d\n" % i)
    assert time.monotonic() - start < 0.1  # queued, not written: 10 writes would take 2 s
    inner.release.set()
    w.flush()
    assert b"".join(d for _, d in inner.data) == b"".join(b"line %d\n" % i for i in range(10))
    w.close()
    assert inner.ops == ["flush", "close"]


def test_full_buffer_holds_reading_until_half_empty():
    loop = EventLoop()
    events: list[bool] = []
    inner = SlowWriter(10)
    w = BufferedLogWriter(inner, 1000)
    w.attach_loop(loop, lambda full, reason: events.append(full))
    for _ in range(4):
        w.write(3, b"x" * 300)  # 1200 >= 1000 after the 4th
    assert events == [True] and w.full_count == 1 and w.peak == 1200
    inner.release.set()
    assert loop.run_until(lambda: events == [True, False], 5.0)
    w.close()
    assert sum(len(d) for _, d in inner.data) == 1200


def test_k8s_records_carry_the_read_time_not_the_write_time(tmp_path):
    path = tmp_path / "ctr.log"
    inner = K8sFileWriter(str(path), RecordingDiag())
    w = BufferedLogWriter(inner, 1 << 20)
    gate = threading.Event()
    real_write = inner.write

    def held(stream, data, ns=None):
        gate.wait(5)
        real_write(stream, data, ns)
    inner.write = held  # type: ignore[method-assign]
    w.write(2, b"early\n")
    read_at = time.time()
    time.sleep(1.2)
    gate.set()
    w.flush()
    w.close()
    stamp = path.read_bytes().split(b" ")[0].decode()
    import datetime
    written = datetime.datetime.fromisoformat(stamp[:26] + stamp[29:]).timestamp()
    assert abs(written - read_at) < 0.5, (stamp, read_at)


def test_sync_on_rotate_fsyncs_the_old_file_in_the_thread(tmp_path):
    path = tmp_path / "ctr.log"
    inner = K8sFileWriter(str(path), RecordingDiag(), size_max=100)
    w = BufferedLogWriter(inner, 1 << 20, sync_on_rotate=True)
    synced_in: list[str] = []
    real_sync = inner.sync

    def sync():
        synced_in.append(threading.current_thread().name)
        real_sync()
    inner.sync = sync  # type: ignore[method-assign]
    for i in range(10):
        w.write(2, b"%d %s\n" % (i, b"y" * 40))
    w.flush()
    assert w.rotations >= 3  # the inner writer's counter, for the metrics
    assert synced_in and set(synced_in) == {"pyconmon-log-writer"}
    w.close()
    assert inner.fd == -1 and os.path.getsize(path) <= 100


def test_chunks_queued_behind_a_slow_write_go_out_together():
    inner = SlowWriter(10)
    w = BufferedLogWriter(inner, 1 << 30)
    w.write(2, b"first\n")
    time.sleep(0.2)  # the thread is in the first (slow) write now
    for i in range(100):
        w.write(2, b"%d\n" % i)
    w.write(3, b"err\n")
    w.write(2, b"after\n")
    inner.release.set()
    w.flush()
    w.close()
    assert inner.data == [(2, b"first\n"), (2, b"".join(b"%d\n" % i for i in range(100))), (3, b"err\n"),
                          (2, b"after\n")]
