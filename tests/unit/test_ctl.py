"""ctl/winsz line parsing: robust against anything a writer can send."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon.ctl import LineBuffer, parse_ctl_line, parse_winsz_line


def test_valid_lines():
    assert parse_ctl_line(b"1 24 80") == (1, 24, 80)
    assert parse_ctl_line(b"2 0 0") == (2, 0, 0)
    assert parse_winsz_line(b"50 132") == (50, 132)


@pytest.mark.parametrize("line", [b"", b"1", b"1 2", b"3 1 1", b"1 -1 5", b"1 1001 5", b"x y z", b"1 2 3 4",
                                  b"\xff\xfe 1 1", b"1 24 80abc"])
def test_bad_ctl_lines(line):
    with pytest.raises(ValueError):
        parse_ctl_line(line)


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
