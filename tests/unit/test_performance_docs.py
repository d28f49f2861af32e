"""docs/performance.md and README's Performance table are generated (bench/pcmbench/report.py), and
the benchmark's pure parts (A B B A order, expected output, the table) do what they say."""

from __future__ import annotations

import copy
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

from pcmbench import report  # noqa: E402
from pcmbench.results import Results  # noqa: E402
from pcmbench.sections import REGISTRY, Row, Section  # noqa: E402
from pcmbench.workloads import make_workloads  # noqa: E402


@pytest.fixture(scope="module")
def data() -> dict:
    return json.loads((REPO / "docs" / "performance.json").read_text())


def test_performance_md_is_what_the_results_and_the_code_make(data: dict) -> None:
    """Stale figures or limits fail here: re-run `make bench` (or `make bench-docs` for text changes)."""
    assert (REPO / "docs" / "performance.md").read_text() == report.render_docs(data), (
        "docs/performance.md is stale: `make bench-docs` re-renders it (text, limits), `make bench` re-measures")


def test_readme_table_is_what_the_results_make(data: dict) -> None:
    readme = (REPO / "README.md").read_text()
    block = report.readme_block(data)
    assert block in readme, "README's Performance table is stale: run `make bench-docs`"
    assert readme.count(report.README_BEGIN) == 1


def test_limits_come_from_the_code(data: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from pyconmon import attach, journald, stdio

    text = report.render_docs(data)
    assert f"{journald.WAIT_MS / 1000:g} s" in text
    monkeypatch.setattr(journald, "WAIT_MS", 1234)
    monkeypatch.setattr(attach, "CLIENT_QUEUE_SOFT", 3 << 20)
    monkeypatch.setattr(stdio, "PACE_S", 0.007)
    changed = report.render_docs(data)
    assert "1.234 s" in changed and "3 MiB behind" in changed and "7 ms" in changed
    assert changed != text


def test_docs_cover_every_section_measured(data: dict) -> None:
    text = report.render_docs(data)
    for name in data["sections"]:
        assert REGISTRY[name].method() and REGISTRY[name].method() in text
        assert any(t["section"] == name for t in data["tables"])


def test_render_docs_command_leaves_the_files_as_they_are(data: dict, tmp_path: Path) -> None:
    docs, readme, js = tmp_path / "performance.md", tmp_path / "README.md", tmp_path / "performance.json"
    js.write_text(json.dumps(data))
    readme.write_text(f"intro\n{report.README_BEGIN}\nold\n{report.README_END}\nrest\n")
    report.render_files(str(js), str(docs), str(readme))
    assert docs.read_text() == (REPO / "docs" / "performance.md").read_text()
    assert readme.read_text() == f"intro\n{report.readme_block(data)}\nrest\n"


def test_bench_help_lists_every_section() -> None:
    r = subprocess.run([sys.executable, str(REPO / "bench" / "bench.py"), "--help"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    text = re.sub(r"-\s+", "-", r.stdout)  # argparse wraps lines after a hyphen (crio-probes)
    for name in REGISTRY:
        assert name in text


# -- the order of the monitors: A B B A ----------------------------------------------------------


def test_pairs_alternate_per_measurement() -> None:
    r = Results()
    orders = [r.order("x", ["A", "B"]) for _ in range(4)]
    assert orders == [["A", "B"], ["B", "A"], ["A", "B"], ["B", "A"]]
    assert r.order("y", ["A", "B"]) == ["A", "B"]  # counted per measurement
    assert r.unbalanced() == ["y"]
    r.order("y", ["A", "B"])
    assert r.unbalanced() == []


# -- expected output -----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["seq", "100b", "64k"])
def test_expected_output_is_what_the_generator_writes(key: str) -> None:
    wl = next(w for w in make_workloads(100) if w.key == key)
    out = subprocess.run(["/bin/busybox", "sh", "-c", wl.script], capture_output=True, check=True, timeout=60).stdout
    exp = wl.expected()
    assert (hashlib.sha256(out).hexdigest(), len(out), out.count(b"\n")) == (exp.sha256, exp.bytes, exp.lines)


def test_expected_output_with_a_marker() -> None:
    wl = make_workloads(100)[2]
    body = b"".join(wl.chunks())
    exp = wl.expected(then=b"FLOOD-DONE\n")
    assert exp.sha256 == hashlib.sha256(body + b"FLOOD-DONE\n").hexdigest()
    assert (exp.bytes, exp.lines, exp.last_line) == (len(body) + 11, wl.lines + 1, "FLOOD-DONE")
    assert wl.expected().sha256 != exp.sha256


def test_check_stream_refuses_a_flood_with_one_wrong_byte(tmp_path: Path) -> None:
    from pcmbench.system import BenchFailure
    from pcmbench.verify import check_stream, k8s_stream

    wl = make_workloads(100)[2]
    line = b"x" * 65535
    records = [b"2026-01-01T00:00:00.000000000Z stdout F " + line] * wl.lines
    good = tmp_path / "good.log"
    good.write_bytes(b"\n".join([*records, b"2026-01-01T00:00:00.000000000Z stdout F FLOOD-DONE"]) + b"\n")
    check_stream(k8s_stream(good), wl.expected(then=b"FLOOD-DONE\n"))
    records[3] = records[3][:-1] + b"y"  # same line count, same size
    bad = tmp_path / "bad.log"
    bad.write_bytes(b"\n".join([*records, b"2026-01-01T00:00:00.000000000Z stdout F FLOOD-DONE"]) + b"\n")
    with pytest.raises(BenchFailure, match="content differs"):
        check_stream(k8s_stream(bad), wl.expected(then=b"FLOOD-DONE\n"))


# -- the table -----------------------------------------------------------------------------------


def test_table_marks_failed_runs_and_targets(data: dict) -> None:
    d = copy.deepcopy(data)
    d["tables"] = [{"section": "t", "title": "T", "rows": [list(Row("a (ms)", "t/a", "ms", (1.0, "ratio"))),
                                                          list(Row("b (ms)", "t/b", "ms"))]}]
    d["summary"] = {"t/a": {"conmon": 2.0, "pyconmon": 3.0, "ratio": 1.5}}
    d["failed_runs"] = {"t/b pyconmon": 2}
    text = report.table(d)
    assert "| a (ms) | 2.00 | 3.00 | 1.50 | <= 1.00 x: NOT met |" in text
    assert "| b (ms) | - | FAILED | - |  |" in text


def test_a_new_section_only_needs_registering() -> None:
    from pcmbench import sections

    class Probe(Section):
        name = "test-probe"
        title = "probe"

        def rows(self):
            return [Row("x", "test-probe/x", "ms")]

    try:
        sections.register(Probe)
        assert list(REGISTRY)[-1] == "test-probe"
        with pytest.raises(ValueError):
            sections.register(Probe)
    finally:
        REGISTRY.pop("test-probe", None)
