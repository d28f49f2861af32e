"""pyconmon.metrics: the Prometheus text format (read back by prometheus_client's parser) and the file's life."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from pyconmon.loop import EventLoop
from pyconmon.metrics import Family, MetricsReporter, StreamCounter, render
from support.diag import RecordingDiag


def parse(text):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_render_is_parsed_by_prometheus_client_with_odd_label_values():
    fam = Family("pyconmon_x_total", "counter", "A count.").add(3, stream="stdout").add(2.5, stream="stderr")
    text = render([fam, Family("pyconmon_g", "gauge", "A gauge.").add(7)],
                  {"container_id": "c1", "container_name": 'we"ird\\name\nx'})
    got = parse(text)
    common = (("container_id", "c1"), ("container_name", 'we"ird\\name\nx'))
    assert got[("pyconmon_x_total", tuple(sorted((*common, ("stream", "stdout")))))] == 3
    assert got[("pyconmon_x_total", tuple(sorted((*common, ("stream", "stderr")))))] == 2.5
    assert got[("pyconmon_g", common)] == 7


def test_stream_counter_counts_bytes_and_lines_and_passes_everything_on():
    seen = []
    counter = StreamCounter()
    wrapped = counter.wrap(lambda s, d: seen.append((s, d)))
    wrapped(2, b"a\nb\nc")
    wrapped(3, b"\n")
    assert seen == [(2, b"a\nb\nc"), (3, b"\n")]
    assert (counter.bytes, counter.lines) == ({2: 5, 3: 1}, {2: 2, 3: 1})


def test_reporter_writes_atomically_every_interval_and_removes_at_the_end(tmp_path):
    loop = EventLoop()
    directory = tmp_path / "m" / "sub"  # created on demand
    reporter = MetricsReporter(str(directory), "abc", "web", loop, RecordingDiag(), interval=0.05)
    reporter.output.wrap(lambda s, d: None)(2, b"x\n" * 10)
    reporter.start()
    path = directory / "abc.prom"
    got = parse(path.read_text())
    labels = (("container_id", "abc"), ("container_name", "web"))
    assert got[("pyconmon_output_bytes_total", tuple(sorted((*labels, ("stream", "stdout")))))] == 20
    assert got[("pyconmon_log_lines_total", tuple(sorted((*labels, ("stream", "stdout")))))] == 10
    assert got[("pyconmon_monitor_resident_memory_bytes", labels)] > 1 << 20
    assert got[("pyconmon_monitor_cpu_seconds_total", labels)] > 0
    assert loop.run_until(lambda: reporter.writes >= 3, 5.0)
    assert os.listdir(directory) == ["abc.prom"]  # the temporary file never stays
    reporter.final()
    writes = reporter.writes
    loop.run_until(lambda: False, 0.2)
    assert reporter.writes == writes  # no more updates after the final write
    reporter.remove()
    assert os.listdir(directory) == []


def test_unwritable_directory_is_one_warning(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    diag = RecordingDiag()
    reporter = MetricsReporter(str(blocker / "m"), "abc", None, EventLoop(), diag, interval=10)
    reporter.start()
    reporter.write()
    reporter.remove()
    assert len(diag.warnings()) == 1 and "metrics" in diag.warnings()[0]


def test_buffer_and_writer_counters_come_from_the_monitors_writers(tmp_path):
    from types import SimpleNamespace

    from pyconmon.logbuffer import BufferedLogWriter
    from pyconmon.logsink import LogSinks

    class Inner:
        write_errors, lost_bytes, rotations = 2, 300, 4

        def write(self, stream, data):
            pass

        def flush(self):
            pass

        def close(self):
            pass

    buffered = BufferedLogWriter(Inner(), 100)
    loop = EventLoop()
    held = []
    buffered.attach_loop(loop, lambda full, reason: held.append(full))
    buffered.write(2, b"x" * 150)  # over the limit: reading waits once
    buffered.flush()
    sinks = LogSinks([buffered], RecordingDiag())
    monitor = SimpleNamespace(limiter=None, sinks=sinks, attach=None, oom_killed=True)
    reporter = MetricsReporter(str(tmp_path), "c", "n", loop, RecordingDiag())
    reporter.monitor = monitor  # type: ignore[assignment]
    got = {(s_name, v) for s_name, v in ((k[0], val) for k, val in parse(render(reporter.families(), {})).items())}
    assert {("pyconmon_log_write_errors_total", 2), ("pyconmon_dropped_bytes_total", 300),
            ("pyconmon_log_rotations_total", 4), ("pyconmon_log_buffer_waits_total", 1),
            ("pyconmon_log_buffer_peak_bytes", 150), ("pyconmon_oom_kills_total", 1)} <= got
    sinks.close()


def test_journald_entries_not_sent_are_write_errors_and_log_write_bytes(tmp_path):
    from types import SimpleNamespace

    from pyconmon.journald import JournaldWriter
    from pyconmon.logsink import LogSinks

    writer = JournaldWriter("c" * 64, None, None, [], socket_path=str(tmp_path / "no-journald"),
                            diag=RecordingDiag())
    sinks = LogSinks([writer], RecordingDiag())
    sinks.write(2, b"one\ntwo\n")
    sinks.write(3, b"three\n")
    monitor = SimpleNamespace(limiter=None, sinks=sinks, attach=None, oom_killed=False)
    reporter = MetricsReporter(str(tmp_path / "m"), "c", "n", EventLoop(), RecordingDiag())
    reporter.monitor = monitor  # type: ignore[assignment]
    got = {(k[0], dict(k[1]).get("cause")): v for k, v in parse(render(reporter.families(), {})).items()}
    assert got[("pyconmon_log_write_errors_total", None)] == 3
    assert got[("pyconmon_dropped_bytes_total", "log_write")] == len(b"one\ntwo\nthree\n")
    sinks.close()


def test_count_lines_equals_bytes_count():
    from pyconmon.metrics import count_lines
    for data in (b"", b"x", b"\n", b"\n" * 200, b"a\nb", (b"x" * 999 + b"\n") * 70, b"y\n" * 63 + b"z" * 10,
                 b"y\n" * 64, b"y\n" * 65 + b"tail", b"\n" + b"q" * 5000):
        assert count_lines(data) == data.count(b"\n")
