"""pyconmon.ratelimit: the token bucket, `drop` (cut at line ends, exact markers) and `block` (read no faster)."""

from __future__ import annotations

import os
import re
import threading
import time

from pyconmon.config import LogLimit
from pyconmon.loop import EventLoop
from pyconmon.ratelimit import BlockGate, DropLimiter, TokenBucket, marker_text
from pyconmon.stdio import ContainerStdio
from support.diag import RecordingDiag


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_refills_at_rate_up_to_burst():
    bucket = TokenBucket(1000, 500, 0.0)
    assert bucket.refill(0.0) == 500
    bucket.tokens -= 500
    assert bucket.refill(0.25) == 250
    assert bucket.refill(10.0) == 500


def make_drop(rate=1000, burst=1000):
    clock, loop = Clock(), EventLoop()
    kept, markers = [], []
    limiter = DropLimiter(LogLimit(rate, burst, "drop"), lambda s, d: kept.append((s, d)),
                          lambda s, d: markers.append((s, d)), loop, clock=clock, interval=0.01)
    return limiter, clock, loop, kept, markers


def dropped_in(markers):
    return sum(int(re.search(rb"dropped (\d+) bytes", d).group(1)) for _, d in markers)


def test_drop_passes_what_fits_and_cuts_after_the_last_whole_line():
    limiter, clock, loop, kept, markers = make_drop()
    limiter(2, b"a" * 599 + b"\n")  # 600 of 1000
    limiter(2, b"b" * 199 + b"\n" + b"c" * 299 + b"\n")  # 200 fit whole, the 300-byte line does not
    assert kept == [(2, b"a" * 599 + b"\n"), (2, b"b" * 199 + b"\n")]
    assert limiter.dropped == 300 and markers == []
    clock.now += 0.5  # 500 more tokens
    limiter(3, b"x" * 400 + b"\n")
    assert kept[-1] == (3, b"x" * 400 + b"\n")
    limiter(3, b"no line end in the allowance" * 20)  # 560 > the 299 left
    assert limiter.dropped == 300 + 560
    assert loop.run_until(lambda: markers, 2.0)
    assert markers == [(3, marker_text(860, limiter.limit))] and dropped_in(markers) == 860
    limiter.flush()
    assert len(markers) == 1  # nothing new dropped: no marker


def test_markers_add_up_to_everything_dropped():
    limiter, clock, loop, kept, markers = make_drop(rate=10_000, burst=2_000)
    line = b"y" * 99 + b"\n"
    sent = 0
    for step in range(300):
        limiter(2 + step % 2, line * 7)
        sent += len(line) * 7
        clock.now += 0.01
        if step % 50 == 0:
            loop.run_until(lambda: False, 0.02)  # let interval markers fire
    limiter.flush()
    logged = sum(len(d) for _, d in kept)
    assert logged + dropped_in(markers) == sent
    assert dropped_in(markers) == limiter.dropped > 0
    assert all(d.endswith(b"\n") for _, d in kept)
    # rate x time + burst, to within one chunk
    assert logged <= 10_000 * 3.0 + 2_000 + 700
    assert 1 < len(markers) <= 1 + 300 * 0.01 / 0.01


def test_block_gate_waits_until_min_read_is_there():
    clock = Clock()
    gate = BlockGate(LogLimit(1 << 20, 1 << 20, "block"), clock=clock)
    assert gate.allowance() == (1 << 20, 0.0)
    gate.consumed(1 << 20)
    allowed, wait = gate.allowance()
    assert allowed == 0 and abs(wait - (64 << 10) / (1 << 20)) < 1e-9
    clock.now += 0.5
    assert gate.allowance() == (1 << 19, 0.0)


def test_block_reads_no_faster_than_the_rate_and_loses_nothing():
    """A real pipe and loop: 600 KiB through a 1 MiB/s limit with a 100 KiB burst takes ~0.5 s."""
    loop, out = EventLoop(), []
    stdio = ContainerStdio(loop, RecordingDiag(), lambda s, d: out.append(d))
    stdio.make_pipes(False)
    stdio.gate = BlockGate(LogLimit(1 << 20, 100 << 10, "block"))
    payload = b"".join(b"%09d\n" % i for i in range((600 << 10) // 10))
    writer_done = []

    def write():
        fd = stdio.child_fds[1]
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        writer_done.append(time.monotonic())

    start = time.monotonic()
    stdio.watch_output()
    thread = threading.Thread(target=write)
    thread.start()
    assert loop.run_until(lambda: sum(map(len, out)) >= len(payload), 10.0)
    took = time.monotonic() - start
    thread.join()
    stdio.close()
    assert b"".join(out) == payload
    expected = (len(payload) - (100 << 10)) / (1 << 20)  # the burst is free
    assert expected * 0.9 <= took <= expected + 1.0, took
    assert stdio.gate.held > 0


def test_lines_stay_whole_whatever_the_chunking():
    """Random lines cut into random chunks: what passes is whole original lines, in order; the rest is counted."""
    import random
    rng = random.Random(14)
    for _round in range(30):
        limiter, clock, _loop, kept, markers = make_drop(rate=rng.choice([500, 5_000, 50_000]),
                                                        burst=rng.choice([300, 3_000, 30_000]))
        lines = [b"%d:" % i + b"z" * rng.randrange(0, 400) + b"\n" for i in range(400)]
        data = b"".join(lines)
        pos = 0
        while pos < len(data):
            step = rng.randrange(1, 3000)
            limiter(2, data[pos:pos + step])
            pos += step
            clock.now += rng.random() * 0.05
        limiter.flush()
        out = b"".join(d for _, d in kept)
        assert len(out) + dropped_in(markers) == len(data)
        got = out.split(b"\n")
        assert got.pop() == b""  # ends with a whole line
        originals = iter(lines)
        for line in got:  # a subsequence of the original lines, each whole
            assert any(line + b"\n" == x for x in originals), line[:20]


def test_a_begun_line_is_finished_up_to_64_kib_over_the_limit():
    """README: "a line whose start was logged is finished, up to 64 KiB over the limit"."""
    for over, finished in ((64 << 10, True), ((64 << 10) + 1, False)):
        limiter, _clock, _loop, kept, _markers = make_drop(rate=1000, burst=1000)
        limiter(2, b"a" * 600)  # logged, no line end yet: 400 tokens left
        limiter(2, b"b" * (400 + over - 1) + b"\n")  # the line's end, `over` bytes past the tokens
        if finished:
            assert b"".join(d for _, d in kept) == b"a" * 600 + b"b" * (400 + over - 1) + b"\n"
            assert limiter.dropped == 0
        else:
            assert kept == [(2, b"a" * 600)]
            assert limiter.dropped == 400 + over
