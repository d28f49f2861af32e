"""k8s-file records: format, round trip for any bytes and any chunking, size limits."""

import os
import re

from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon.diag import Diagnostics
from pyconmon.k8sfile import MAX_RECORD, Clock, K8sFileWriter, format_records, parse_records

STAMP_RE = re.compile(rb"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}[+-]\d\d:\d\d$")


def join(records):
    """Reassemble the bytes a stream carried: F records end a line, P records don't."""
    return b"".join(content + (b"\n" if tag == b"F" else b"") for _s, _n, tag, content in records)


def test_timestamp_format():
    stamp = Clock().stamp()
    assert STAMP_RE.match(stamp), stamp
    assert Clock().stamp(1_000_000_007)[19:29] == b".000000007"


def test_simple_lines_and_partial():
    out = format_records(b"T", 2, b"a\nbb\nccc")
    assert out == b"T stdout F a\nT stdout F bb\nT stdout P ccc\n"
    assert format_records(b"T", 3, b"\n") == b"T stderr F \n"


def test_long_line_split_into_pieces():
    line = b"x" * (2 * MAX_RECORD + 5)
    recs = parse_records(format_records(b"T", 2, line + b"\nend\n"))
    assert [r[2] for r in recs] == [b"P", b"P", b"F", b"F"]
    assert all(len(r[3]) <= MAX_RECORD for r in recs)
    assert join(recs) == line + b"\nend\n"


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=20000), max_size=6))
def test_round_trip_any_bytes_any_chunking(chunks):
    out = b"".join(format_records(b"2026-01-01T00:00:00.000000000+00:00", 2, c) for c in chunks if c)
    recs = parse_records(out)
    assert join(recs) == b"".join(chunks)
    assert all(len(r[3]) <= MAX_RECORD and r[1] == b"stdout" for r in recs)


def test_writer_appends_and_accounts_existing_size(tmp_path):
    path = tmp_path / "ctr.log"
    path.write_bytes(b"x" * 100)
    w = K8sFileWriter(str(path), Diagnostics())
    assert w.size == 100
    w.write(2, b"hello\n")
    assert w.size == os.path.getsize(path)
    w.close()


def test_new_file_mode(tmp_path):
    path = tmp_path / "new.log"
    w = K8sFileWriter(str(path), Diagnostics())
    w.close()
    assert path.stat().st_mode & 0o777 == 0o640


def test_truncate_mode_keeps_under_limit(tmp_path):
    path = tmp_path / "ctr.log"
    w = K8sFileWriter(str(path), Diagnostics(), size_max=1000)
    for i in range(200):
        w.write(2, b"line %d\n" % i)
        assert path.stat().st_size <= 1000
    recs = parse_records(path.read_bytes())
    assert recs[-1][3] == b"line 199"
    assert not os.path.exists(str(path) + ".1")


def test_rotation_keeps_n_files_and_every_record(tmp_path):
    path = tmp_path / "ctr.log"
    w = K8sFileWriter(str(path), Diagnostics(), size_max=2000, rotate=True, max_files=3)
    for i in range(1000):
        w.write(2, b"line %06d\n" % i)
    w.close()
    names = sorted(os.listdir(tmp_path))
    assert names == ["ctr.log", "ctr.log.1", "ctr.log.2", "ctr.log.3"]
    lines = []
    for name in ("ctr.log.3", "ctr.log.2", "ctr.log.1", "ctr.log"):
        data = (tmp_path / name).read_bytes()
        assert len(data) <= 2000
        lines += [r[3] for r in parse_records(data)]
    # the newest records are all there, in order, with none missing between files
    numbers = [int(x.split()[1]) for x in lines]
    assert numbers == list(range(numbers[0], 1000))


def test_record_larger_than_limit_written_whole(tmp_path):
    path = tmp_path / "ctr.log"
    w = K8sFileWriter(str(path), Diagnostics(), size_max=100)
    w.write(2, b"y" * 500 + b"\n")
    w.write(2, b"z\n")
    recs = parse_records(path.read_bytes())
    assert [r[3] for r in recs] == [b"z"]
    w.close()


def test_reopen_picks_up_moved_file(tmp_path):
    path = tmp_path / "ctr.log"
    w = K8sFileWriter(str(path), Diagnostics())
    w.write(2, b"before\n")
    os.rename(path, tmp_path / "ctr.log.moved")
    w.reopen()
    w.write(2, b"after\n")
    w.close()
    assert [r[3] for r in parse_records(path.read_bytes())] == [b"after"]
    assert [r[3] for r in parse_records((tmp_path / "ctr.log.moved").read_bytes())] == [b"before"]


def test_records_follow_conmons_8192_byte_reads():
    """A chunk is formatted as conmon formats its 8192-byte reads (same output, same records)."""
    recs = parse_records(format_records(b"T", 2, b"x" * MAX_RECORD + b"\n"))
    assert [(r[2], len(r[3])) for r in recs] == [(b"P", MAX_RECORD), (b"F", 0)]
    line = b"v" * 4999 + b"\n"
    recs = parse_records(format_records(b"T", 2, line * 3))
    assert [(r[2], len(r[3])) for r in recs] == [(b"F", 4999), (b"P", 3192), (b"F", 1807), (b"F", 4999)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4 * MAX_RECORD), st.sampled_from([b"\n", b"ab\n", b"x" * 100 + b"\n"]))
def test_chunk_equals_its_8192_byte_windows(noise, line):
    data = (noise + line * 300)[:5 * MAX_RECORD]
    windows = [data[i:i + MAX_RECORD] for i in range(0, len(data), MAX_RECORD)]
    assert format_records(b"T", 3, data) == b"".join(format_records(b"T", 3, w) for w in windows)
