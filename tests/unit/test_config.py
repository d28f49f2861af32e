"""pyconmon.config: the TOML file, the io.pyconmon.* annotations, and their errors."""

from __future__ import annotations

import json

import pytest

from pyconmon.config import (
    LogLimit,
    Settings,
    SettingsError,
    apply_annotations,
    find_line,
    for_container,
    load_file,
    parse_file,
    parse_size,
    read_annotations,
)


@pytest.mark.parametrize(("text", "size"), [("0", 0), ("123", 123), ("64k", 64 << 10), ("64K", 64 << 10),
                                            ("1M", 1 << 20), ("2G", 2 << 30), (" 3M ", 3 << 20), (7, 7)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.5M", "-1", "1T", "1 M", "abc", "１M", True, 1.0, -5])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_defaults_are_todays_behaviour(tmp_path):
    settings = load_file((str(tmp_path / "none.toml"),))
    assert settings.source is None and not settings.configured
    assert settings.log_limit() is None
    assert settings.journald_stderr_priority == 3 and settings.journald_identifier is None


def test_first_existing_file_wins(tmp_path):
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    second.write_text('[log]\nrate = "2M"\n')
    assert load_file((str(first), str(second))).log_rate == 2 << 20
    first.write_text('[log]\nrate = "1k"\npolicy = "block"\n')
    settings = load_file((str(first), str(second)))
    assert (settings.source, settings.log_rate, settings.log_policy) == (str(first), 1024, "block")
    limit = settings.log_limit()
    assert isinstance(limit, LogLimit) and (limit.rate, limit.burst, limit.policy) == (1024, 1024, "block")


def test_malformed_toml_names_file_and_line():
    with pytest.raises(SettingsError, match=r"^/x/p\.toml: malformed TOML: .*line 3"):
        parse_file("/x/p.toml", b'[log]\nrate = 1\nburst = = 2\n')


@pytest.mark.parametrize(("text", "message"), [
    ('[log]\nrate = 1\n\n[jounald]\nidentifier = "x"\n', r"/p\.toml:4: unknown table 'jounald'"),
    ('[log]\nrate = 1\nrte = 2\n', r"/p\.toml:3: unknown key 'log\.rte' \(known in \[log\]: rate, burst"),
    ('log.rate = 1\nlog.brust = 2\n', r"/p\.toml:2: unknown key 'log\.brust'"),
    ('[log]\npolicy = "slow"\n', r"/p\.toml:2: log\.policy: must be one of drop, block, not 'slow'"),
    ('[log]\n# rate = 1\nburst = "1X"\n', r"/p\.toml:3: log\.burst: not a size"),
    ('[journald]\nstderr_priority = 9\n', r"/p\.toml:2: journald\.stderr_priority: must be 0\.\.7"),
    ('[journald]\nidentifier = "{nme}"\n', r"/p\.toml:2: journald\.identifier: .*only \{id\}"),
    ('log = 3\n', r"/p\.toml:1: 'log' must be a table"),
])
def test_bad_files_name_line_and_key(text, message):
    with pytest.raises(SettingsError, match=message):
        parse_file("/p.toml", text.encode())


def test_find_line_handles_quoted_and_dotted_keys():
    text = '[log]\n"rate" = 1\n[journald]\nlog.rate = 2\n'
    assert find_line(text, "log.rate") == 2
    assert find_line(text, "journald.log.rate") == 4
    assert find_line(text, "nothing") is None


def test_priority_names():
    assert parse_file("/p", b'[journald]\nstderr_priority = "warning"\n').journald_stderr_priority == 4
    assert parse_file("/p", b'[journald]\nstderr_priority = 5\n').journald_stderr_priority == 5


def write_bundle(path, annotations):
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({"ociVersion": "1.0.2", "annotations": annotations}))
    return str(path)


def test_annotations_override_the_file(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[log]\nrate = "4M"\nburst = "8M"\n')
    bundle = write_bundle(tmp_path / "b", {"io.pyconmon.log.rate": "1M", "io.pyconmon.log.policy": "block",
                                           "other.annotation": "x"})
    settings = for_container(bundle, (str(conf),))
    limit = settings.log_limit()
    assert (limit.rate, limit.burst, limit.policy) == (1 << 20, 8 << 20, "block")
    assert settings.annotations == {"io.pyconmon.log.rate": "1M", "io.pyconmon.log.policy": "block"}
    assert "annotations: io.pyconmon.log.policy=block, io.pyconmon.log.rate=1M" in settings.to_toml()
    assert 'policy = "block"' in settings.to_toml()


def test_rate_zero_annotation_lifts_the_default_limit(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[log]\nrate = "4M"\n')
    bundle = write_bundle(tmp_path / "b", {"io.pyconmon.log.rate": "0"})
    assert for_container(bundle, (str(conf),)).log_limit() is None


def test_no_annotations_means_no_json_parsing(tmp_path, monkeypatch):
    bundle = write_bundle(tmp_path / "b", {"org.example": "1"})
    import json as json_module
    monkeypatch.setattr(json_module, "loads", None)  # would fail if called
    assert read_annotations(bundle) == {}
    assert read_annotations(str(tmp_path / "missing")) == {}


@pytest.mark.parametrize(("annotations", "message"), [
    ({"io.pyconmon.log.rate": "fast"}, r"config\.json: annotation io\.pyconmon\.log\.rate: not a size"),
    ({"io.pyconmon.log.policy": "queue"}, r"annotation io\.pyconmon\.log\.policy: must be one of drop, block"),
    ({"io.pyconmon.log.rat": "1M"}, r"unknown annotation 'io\.pyconmon\.log\.rat'"),
])
def test_bad_annotations(tmp_path, annotations, message):
    bundle = write_bundle(tmp_path / "b", annotations)
    with pytest.raises(SettingsError, match=message):
        for_container(bundle, ())


def test_the_file_may_forbid_overrides(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[log]\nrate = "1M"\nallow_override = false\n')
    bundle = write_bundle(tmp_path / "b", {"io.pyconmon.log.rate": "100M"})
    with pytest.raises(SettingsError, match=r"annotation 'io\.pyconmon\.log\.rate' refused: .*c\.toml sets "
                                            r"log\.allow_override = false"):
        for_container(bundle, (str(conf),))


def test_passthrough_refuses_limit_annotations(tmp_path):
    bundle = write_bundle(tmp_path / "b", {"io.pyconmon.log.rate": "1M"})
    with pytest.raises(SettingsError, match="passthrough"):
        for_container(bundle, (), passthrough=True)


def test_print_config_is_toml_that_reads_back(tmp_path):
    import tomllib
    settings = apply_annotations(Settings(), {"io.pyconmon.log.burst": "2M", "io.pyconmon.log.rate": "1k"})
    settings.journald_identifier = 'a "quoted" {name}'
    doc = tomllib.loads(settings.to_toml())
    assert doc["log"] == {"rate": 1024, "burst": 2 << 20, "policy": "drop", "allow_override": True, "buffer": 0,
                          "sync": "exit"}
    back = parse_file("/p", settings.to_toml().encode())
    assert back.journald_identifier == 'a "quoted" {name}' and back.log_burst == 2 << 20


def test_log_buffer_and_sync_policy():
    settings = parse_file("/p", b'[log]\nbuffer = "16M"\nsync = "rotate"\n')
    assert (settings.log_buffer, settings.log_sync) == (16 << 20, "rotate")
    assert parse_file("/p", b"").log_sync == "exit" and parse_file("/p", b"").log_buffer == 0
    with pytest.raises(SettingsError, match=r'/p:2: log\.sync = "rotate" needs log\.buffer'):
        parse_file("/p", b'[log]\nsync = "rotate"\n')
    with pytest.raises(SettingsError, match=r"/p:1: log\.sync: must be one of none, exit, rotate"):
        parse_file("/p", b'log.sync = "always"\n')


# -- the tomllib-free fast path ---------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pyconmon.config import parse_simple_toml  # noqa: E402

_pieces = st.sampled_from([
    "[log]", "[journald]", "[ metrics ]", "[log] # c", "[[log]]", "[a.b]", "[]", "[log",
    "rate = 1", "rate=1", "rate = 0", "rate = 01", "rate = +1", "rate = 1_000", "rate = 1.5", "rate = 1.",
    "rate = 1e3", "policy = \"drop\"", "policy = \"dr#op\" # comment", "policy = \"a\\\"b\"", "policy = 'x'",
    "policy = \"\"", "policy = \"x\" y", "ok = true", "ok = false", "ok = True", "x.y = 1", "\"q\" = 1",
    "# comment", "", "   ", "\t", "key =", "= 1", "a = [1]", "a = {b = 1}", "s = \"é ü\"", "s = \"tab\there\"",
    "s = \"unterminated", "dup = 1", "dup = 2", "n = 123456789012345678901234", "k-1 = 2", "a = 1 # x = 2",
])


@settings(max_examples=400, deadline=None)
@given(st.lists(_pieces, max_size=8), st.sampled_from(["\n", "\r\n"]))
def test_fast_path_agrees_with_tomllib_or_steps_aside(lines, newline):
    import tomllib
    text = newline.join(lines)
    fast = parse_simple_toml(text)
    if fast is None:
        return  # tomllib decides (and words the error)
    assert fast == tomllib.loads(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=60))
def test_fast_path_never_accepts_what_tomllib_refuses(text):
    import tomllib
    fast = parse_simple_toml(text)
    if fast is not None:
        assert fast == tomllib.loads(text)


def test_common_files_take_the_fast_path():
    text = '# pyconmon\n[log]\nrate = "1M"   # per container\npolicy = "block"\nallow_override = false\n\n' \
           '[metrics]\ndir = "/run/pyconmon/metrics"\ninterval = 2.5\n'
    assert parse_simple_toml(text) == {"log": {"rate": "1M", "policy": "block", "allow_override": False},
                                       "metrics": {"dir": "/run/pyconmon/metrics", "interval": 2.5}}
