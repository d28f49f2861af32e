"""The README's reference tables read against the code they describe: the pyconmon.toml keys
(names, defaults, the values each accepts), the ``io.pyconmon.*`` annotations, the metric names,
the example error text, and the monitor options the README names (each one implemented, or
refused like an unknown option; none accepted and ignored)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from pyconmon import config, metrics, options
from pyconmon.config import SCHEMA, Settings, SettingsError

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def table_after(header: str) -> list[list[str]]:
    """Rows (cells stripped) of the markdown table whose header line is ``header``."""
    lines = README.splitlines()
    start = lines.index(header)
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
    assert rows, header
    return rows


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


KEY_ROWS = {ticked(row[0])[0]: row for row in table_after("| key | default | meaning |")}


def test_key_table_is_the_schema() -> None:
    assert list(KEY_ROWS) == [f"{table}.{key}" for table, key in SCHEMA]


@pytest.mark.parametrize("dotted", list(KEY_ROWS))
def test_documented_default_is_the_default(dotted: str) -> None:
    """A default written as a TOML value parses to Settings' default; one in words means 'unset'."""
    attr, parse = SCHEMA[tuple(dotted.split("."))]  # type: ignore[index]
    default = getattr(Settings, attr)
    cell = KEY_ROWS[dotted][1]
    if cell.startswith("`"):
        value = tomllib.loads(f"v = {ticked(cell)[0]}")["v"]
        assert parse(value) == default  # type: ignore[operator]
    else:  # "one second's worth", "the tag, else ...", "not set"
        assert not default, (dotted, default)


@pytest.mark.parametrize(("dotted", "choices"), [
    ("log.policy", config.POLICIES),
    ("log.sync", config.SYNC_POLICIES),
    ("journald.stderr_priority", config.PRIORITY_NAMES),
])
def test_documented_choices_are_the_accepted_ones(dotted: str, choices: tuple[str, ...]) -> None:
    named = [v.strip('"') for v in ticked(KEY_ROWS[dotted][2]) if v.startswith('"')]
    assert sorted(named) == sorted(choices)
    _, parse = SCHEMA[tuple(dotted.split("."))]  # type: ignore[index]
    with pytest.raises(ValueError):
        parse("sometimes")  # type: ignore[operator]


def test_priorities_are_0_to_7_and_the_names_in_order() -> None:
    assert "`0`..`7`" in KEY_ROWS["journald.stderr_priority"][2]
    _, parse = SCHEMA[("journald", "stderr_priority")]
    assert [parse(n) for n in range(8)] == list(range(8))  # type: ignore[operator]
    assert [parse(n) for n in config.PRIORITY_NAMES] == list(range(8))  # type: ignore[operator]
    with pytest.raises(ValueError):
        parse(8)  # type: ignore[operator]


def test_identifier_placeholders() -> None:
    named = [v for v in ticked(KEY_ROWS["journald.identifier"][2]) if v.startswith("{")]
    assert named == ["{id}", "{full_id}", "{name}", "{tag}"]
    _, parse = SCHEMA[("journald", "identifier")]
    assert parse("".join(named)) == "".join(named)  # type: ignore[operator]
    with pytest.raises(ValueError):
        parse("{image}")  # type: ignore[operator]


def test_size_suffixes_are_powers_of_1024() -> None:
    assert "`k`, `M` or `G` suffix (powers of 1024)" in KEY_ROWS["log.rate"][2]
    assert [config.parse_size(v) for v in ("3", "3k", "3M", "3G")] == [3, 3 << 10, 3 << 20, 3 << 30]


def test_rotate_needs_a_buffer_as_documented() -> None:
    assert "needs `log.buffer`" in KEY_ROWS["log.sync"][2]
    with pytest.raises(SettingsError, match=r"needs log\.buffer"):
        config.parse_file("/x.toml", b'[log]\nsync = "rotate"\n')
    assert config.parse_file("/x.toml", b'[log]\nsync = "rotate"\nbuffer = "1M"\n').log_sync == "rotate"


def test_metrics_dir_must_be_absolute() -> None:
    assert "absolute path" in KEY_ROWS["metrics.dir"][2]
    with pytest.raises(SettingsError, match=r"absolute path"):
        config.parse_file("/x.toml", b'[metrics]\ndir = "prom"\n')


def test_the_example_error_is_what_the_monitor_says() -> None:
    example = re.search(r"e\.g\. `(/etc/containers/pyconmon\.toml:6: [^`]+)`", README.replace("\n", " "))
    assert example, "the README's example error text moved"
    text = "# pyconmon\n\n[log]\nrate = \"1M\"\n[journald]\nidentfier = \"x\"\n"
    with pytest.raises(SettingsError) as err:
        config.parse_file("/etc/containers/pyconmon.toml", text.encode())
    assert str(err.value) == example.group(1)


def test_annotation_table_is_the_annotations() -> None:
    rows = table_after("| annotation | value |")
    assert [ticked(row[0])[0] for row in rows] == list(config.ANNOTATIONS)
    assert {config.ANNOTATIONS[ticked(row[0])[0]][0] for row in rows} == {"log_rate", "log_burst", "log_policy"}


def test_metric_table_names_every_metric_written() -> None:
    documented = {name for row in table_after("| metric | labels | meaning |") for name in ticked(row[0])}
    reporter = metrics.MetricsReporter.__new__(metrics.MetricsReporter)  # no directory, no loop: families only
    reporter.monitor = None
    reporter.output = reporter.logged = metrics.StreamCounter()
    reporter._attach_seen = (0, 0, 0)
    written = {family.name for family in reporter.families()}
    assert documented == written
    labels = {ticked(row[0])[0]: ticked(row[1]) for row in table_after("| metric | labels | meaning |")}
    assert labels["pyconmon_output_bytes_total"] == ["stream"]
    assert labels["pyconmon_dropped_bytes_total"] == ["cause"]
    causes = set(ticked(dropped_metric_meaning())) & {"rate_limit", "log_write", "global_size_max"}
    assert causes == {"rate_limit", "log_write", "global_size_max"}
    rendered = metrics.render(reporter.families(), {"container_id": "c", "container_name": "n"})
    assert {m for m in re.findall(r'cause="([a-z_]+)"', rendered)} == causes


def dropped_metric_meaning() -> str:
    rows = table_after("| metric | labels | meaning |")
    return next(row[2] for row in rows if "pyconmon_dropped_bytes_total" in row[0])


# Options of the monitor that the README names, outside the tables above: in backquotes, alone or
# after `conmon `. Another program's option is written with its name (`podman --runtime`), or, if it
# must stand alone, listed here.
NOT_THE_MONITORS = {"--conmon", "--sections", "--rm"}  # podman --conmon, bench.py --sections, podman run --rm
MENTIONED = sorted(set(re.findall(r"`(?:conmon )?(--[a-z][a-z-]+)", README)) - NOT_THE_MONITORS)
REFUSED = {"--seccomp-notify-socket", "--seccomp-notify-plugins"}  # conmon 2.2 no longer has them


@pytest.mark.parametrize("opt", MENTIONED)
def test_each_mentioned_option_is_implemented_or_refused(opt: str) -> None:
    known = {f"--{o[0]}" for o in options.OPTION_TABLE}
    if opt in REFUSED:
        assert opt not in known
        with pytest.raises(options.UsageError, match=f"Unknown option {opt}"):
            options.parse_args(["conmon", opt, "x"])
        return
    assert opt in known, f"the README names {opt}, which the monitor does not have (another program's? see above)"
    attr = next(o[3] for o in options.OPTION_TABLE if f"--{o[0]}" == opt)
    src = Path(options.__file__).parent
    users = [p.name for p in src.glob("*.py") if p.name != "options.py" and re.search(rf"\.{attr}\b", p.read_text())]
    assert users, f"{opt} is parsed into Options.{attr} but nothing reads it"


def test_the_drop_marker_is_as_documented() -> None:
    from pyconmon.config import LogLimit
    from pyconmon.ratelimit import marker_text
    documented = re.search(r"`(\[pyconmon\] dropped N bytes[^`]+)`", README.replace("\n", " "))
    assert documented, "the README's marker text moved"
    text = documented.group(1).replace("N", "123").replace(" R ", " 1048576 ").replace(" B ", " 2097152 ")
    assert marker_text(123, LogLimit(1 << 20, 2 << 20, "drop")) == text.encode() + b"\n"


def test_constants_the_policy_text_names() -> None:
    """"Once per second in which something was dropped"; "the 1 MiB pipe" (block, slow disk)."""
    from pyconmon import ratelimit, stdio
    assert "Once per second in which something was dropped" in README.replace("\n", " ")
    assert ratelimit.MARKER_INTERVAL == 1.0
    assert README.count("1 MiB pipe") >= 2
    assert stdio.PIPE_SIZE == 1 << 20
    # Performance, "How": "read in chunks of up to 1 MiB (128 KiB in server mode ...)"
    from pyconmon import monitor
    assert "read in chunks of up to 1 MiB (128 KiB in server mode" in README.replace("\n", " ")
    assert (stdio.READ_CHUNK, monitor.SHARED_READ_CHUNK) == (1 << 20, 128 << 10)


def test_module_table_names_every_module() -> None:
    """"One module per concern": the README's module table lists each module of the package once."""
    rows = table_after("| module | owns |")
    listed = [name for row in rows for name in re.findall(r"`([a-z0-9_]+\.py)`", row[0])]
    assert len(listed) == len(set(listed))
    package = Path(options.__file__).parent
    assert sorted(listed) == sorted(p.name for p in package.glob("*.py") if not p.name.startswith("__"))


def test_the_configuration_file_paths_in_order() -> None:
    """"read from the first of these that exists: `$(SYSCONFDIR)/pyconmon/pyconmon.toml` ... (default
    `$(PREFIX)/etc`, so `/usr/local/etc/pyconmon/pyconmon.toml` ...) and `/etc/containers/pyconmon.toml`"."""
    text = README.replace("\n", " ")
    assert "`$(SYSCONFDIR)/pyconmon/pyconmon.toml`" in text and "`/usr/local/etc/pyconmon/pyconmon.toml`" in text
    assert config.SYSCONFDIR == "/usr/local/etc"  # in the checkout; `make install` rewrites it
    assert config.config_files() == ("/usr/local/etc/pyconmon/pyconmon.toml", "/etc/containers/pyconmon.toml")
    assert text.index("`$(SYSCONFDIR)/pyconmon/pyconmon.toml`") < text.index("`/etc/containers/pyconmon.toml`")


def test_ten_times_c_conmons_private_memory_is_what_the_benchmark_measured() -> None:
    """Server mode's opening: a classic monitor is "more than ten times C conmon's private memory (the
    idle-memory rows under Performance)": the ratio in docs/performance.json, from which they come."""
    import json
    assert "more than ten times C conmon's private memory" in README.replace("\n", " ")
    results = json.loads((Path(__file__).resolve().parents[2] / "docs" / "performance.json").read_text())
    ratio = results["summary"]["memory/idle_private_dirty_mb"]["ratio"]
    assert 10 < ratio, ratio
