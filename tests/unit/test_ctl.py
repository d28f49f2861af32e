"""ctl/winsz line parsing: robust against anything a writer can send."""

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon.ctl import LineBuffer, parse_ctl_line, parse_winsz_line, scan_ints


def test_valid_lines():
    assert parse_ctl_line(b"1 24 80") == (1, 24, 80)
    assert parse_ctl_line(b"2 0 0") == (2, 0, 0)
    assert parse_winsz_line(b"50 132") == (50, 132)


# conmon reads a line with sscanf("%d %d %d"): whatever follows the numbers is ignored
@pytest.mark.parametrize("line,parsed", [
    (b"1 2 2 3", (1, 2, 2)),  # extra fields: the first two numbers after the type (callers rely on it)
    (b"1 24 80abc", (1, 24, 80)),
    (b"1 24 80.5", (1, 24, 80)),
    (b" \t1  24\t80 ", (1, 24, 80)),
    (b"+1 +24 +80", (1, 24, 80)),
    (b"2 0 0 junk", (2, 0, 0)),
    (b"1 1000 0", (1, 1000, 0)),
])
def test_ctl_lines_as_sscanf_reads_them(line, parsed):
    assert parse_ctl_line(line) == parsed


@pytest.mark.parametrize("line,parsed", [(b"50 132 7", (50, 132)), (b"50 132x", (50, 132)), (b"+5 6", (5, 6))])
def test_winsz_lines_as_sscanf_reads_them(line, parsed):
    assert parse_winsz_line(line) == parsed


# what conmon refuses: fewer than three numbers, another type, a size outside 0..1000 (for a reopen too)
@pytest.mark.parametrize("line", [b"", b"1", b"1 2", b"1 2x 3", b"3 1 1", b"0 1 1", b"1 -1 5", b"1 1001 5",
                                  b"2 1001 0", b"x y z", b"\xff\xfe 1 1", b"1 1_0 2", b"1 0x10 2",
                                  b"1 \xd9\xa3 2", b"- 1 2", b"1 99999999999 2"])
def test_bad_ctl_lines(line):
    with pytest.raises(ValueError):
        parse_ctl_line(line)


@pytest.mark.parametrize("line", [b"", b"5", b"5x 6", b"-1 5", b"5 1001", b"\xff 5 5"])
def test_bad_winsz_lines(line):
    with pytest.raises(ValueError):
        parse_winsz_line(line)


def test_line_buffer_partial_and_many():
    buf = LineBuffer()
    assert buf.feed(b"1 2") == []
    assert buf.feed(b"4 80\n2 0 0\n1 ") == [b"1 24 80", b"2 0 0"]
    assert buf.feed(b"5 5\n") == [b"1 5 5"]


def test_line_buffer_drops_overlong_line_then_recovers():
    buf = LineBuffer(limit=16)
    assert buf.feed(b"x" * 100) == []
    assert buf.feed(b"y" * 100 + b"\n1 2 3\n") == [b"1 2 3"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_parsers_never_raise_anything_but_valueerror(chunks):
    buf = LineBuffer()
    for chunk in chunks:
        for line in buf.feed(chunk):
            assert len(line) <= 256 + 300
            for parse in (parse_ctl_line, parse_winsz_line):
                try:
                    parse(line)
                except ValueError:
                    pass


# The scanner is hand-written (ctl.py: `re` cost an idle monitor about 1 MB); it must read exactly
# what the pattern it replaced, [ \t\v\f\r]*([+-]?[0-9]+), reads from each position.
_SSCANF_INT = re.compile(rb"[ \t\v\f\r]*([+-]?[0-9]+)", re.ASCII)


def scan_ints_by_pattern(line, count):
    values, pos = [], 0
    for _ in range(count):
        match = _SSCANF_INT.match(line, pos)
        if match is None or not -(2**31) <= int(match.group(1)) <= 2**31 - 1:
            return None
        values.append(int(match.group(1)))
        pos = match.end()
    return tuple(values)


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from([b" ", b"\t", b"\v", b"\f", b"\r", b"+", b"-", b"0", b"7", b"12", b"x", b".",
                                 b"_", b"\xd9\xa3", b"99999999999"]), max_size=12),
       st.integers(min_value=1, max_value=3))
def test_scan_ints_reads_as_the_sscanf_pattern(parts, count):
    line = b"".join(parts)
    expected = scan_ints_by_pattern(line, count)
    try:
        assert scan_ints(line, count) == expected
    except ValueError:
        assert expected is None
