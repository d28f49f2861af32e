"""LogSinks: fan-out to every writer and the --log-global-size-max budget."""

from pyconmon.logsink import LogSinks
from support.diag import RecordingDiag


class Writer:
    def __init__(self):
        self.data = {2: b"", 3: b""}
        self.reopened = self.flushed = self.synced = self.closed = 0

    def write(self, stream, data):
        self.data[stream] += data

    def reopen(self):
        self.reopened += 1

    def flush(self):
        self.flushed += 1

    def sync(self):
        self.synced += 1

    def close(self):
        self.closed += 1


def test_every_writer_gets_everything():
    a, b = Writer(), Writer()
    sinks = LogSinks([a, b], RecordingDiag())
    sinks.write(2, b"out\n")
    sinks.write(3, b"err\n")
    assert a.data == b.data == {2: b"out\n", 3: b"err\n"}
    sinks.reopen()
    sinks.finish(True)
    sinks.finish(False)
    sinks.close()
    assert [(w.reopened, w.flushed, w.synced, w.closed) for w in (a, b)] == [(1, 2, 1, 1)] * 2


def test_no_cap_by_default():
    w = Writer()
    sinks = LogSinks([w], RecordingDiag(), 0)
    sinks.write(2, b"x" * 100_000)
    assert len(w.data[2]) == 100_000


def test_cap_counts_both_streams_then_drops_and_warns_once():
    w = Writer()
    diag = RecordingDiag()
    sinks = LogSinks([w], diag, 10)
    sinks.write(2, b"12345")
    sinks.write(3, b"678")
    assert diag.messages == []
    sinks.write(2, b"90abc")  # cut: two bytes left
    for _ in range(100):
        sinks.write(3, b"dropped\n")
    assert w.data == {2: b"1234590", 3: b"678"}
    assert diag.texts() == ["Global log size limit reached: dropping further output"]


def test_cap_warns_when_the_last_chunk_is_cut():
    diag = RecordingDiag()
    w = Writer()
    LogSinks([w], diag, 4).write(2, b"too long")
    assert w.data[2] == b"too "
    assert len(diag.messages) == 1


def test_exactly_the_cap_is_not_a_drop():
    diag = RecordingDiag()
    w = Writer()
    LogSinks([w], diag, 4).write(2, b"four")
    assert w.data[2] == b"four" and diag.messages == []


def test_sync_policy_none_never_fsyncs():
    a = Writer()
    sinks = LogSinks([a], RecordingDiag())
    sinks.sync_at_exit = False  # log.sync = "none"
    sinks.finish(True)
    assert (a.flushed, a.synced) == (1, 0)
