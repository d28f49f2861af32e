"""Command-line parsing (GOption rules) and validation (CONTRACT 1 and 8)."""

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyconmon.options import ConfigError, UsageError, parse_args, validate, validate_log_options
from support.validation import ROWS, pyconmon_line

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCHER = os.path.join(ROOT, "bin", "pyconmon")
CID = "0123456789abcdef0123"


def test_long_forms_and_arrays():
    o = parse_args(["--cid=abc", "--runtime-arg", "--root=/run/crun", "--runtime-arg=--x",
                    "--exit-command-arg", "a", "--exit-command-arg", "b", "--timeout=5", "--api-version", "1"])
    assert o.cid == "abc"
    assert o.runtime_args == ["--root=/run/crun", "--x"]
    assert o.exit_command_args == ["a", "b"]
    assert o.timeout == 5
    assert o.api_version is True


def test_short_forms():
    o = parse_args(["-cabc", "-u", "x", "-l", "k8s-file:/a", "-lnone:", "-ti", "-T3"])
    assert (o.cid, o.cuuid, o.log_paths, o.terminal, o.stdin, o.timeout) == ("abc", "x", ["k8s-file:/a", "none:"],
                                                                              True, True, 3)


def test_value_may_start_with_dashes():
    # CRI-O passes `--runtime-arg --root=/run/crun` and `-r --weird` would be a value too
    o = parse_args(["-c", "--x", "--bundle", "-b"])
    assert o.cid == "--x"
    assert o.bundle == "-b"


def test_aliases():
    o = parse_args(["--restore-arg", "x", "--runtime-opt", "y", "--pidfile", "p"])
    assert o.runtime_opts == ["x", "y"]
    assert o.container_pidfile == "p"


@pytest.mark.parametrize("argv,text", [
    (["--x"], "Unknown option --x"),
    (["-X"], "Unknown option -X"),
    (["--cid"], "Missing argument for --cid"),
    (["--exit-delay", "abc"], "Cannot parse integer value \u201cabc\u201d for --exit-delay"),
    (["--api-version=1"], "Error parsing option --api-version"),
])
def test_usage_errors(argv, text):
    with pytest.raises(UsageError) as err:
        parse_args(argv)
    assert str(err.value) == text


def base(*extra):
    return ["-c", CID, "-u", CID, "-r", "/bin/true", "-l", "k8s-file:/tmp/x.log", *extra]


def checked(argv, cwd="/tmp"):
    """What the program prints for ``argv`` before it starts anything (cli.main's wording), or None."""
    try:
        opts = parse_args(argv)
        validate(opts, cwd=cwd)
        validate_log_options(opts)
    except UsageError as err:
        return f"conmon: option parsing failed: {err}"
    except ConfigError as err:
        return f"{err.prefix}{err.text}"
    return None


@pytest.mark.parametrize("row", [r for r in ROWS if not r.opens], ids=lambda r: r.id)
def test_validation_in_c_conmons_order(tmp_path, row):
    """The shared table (tests/support/validation.py): each row breaks one check and later ones."""
    assert checked(row.argv(str(tmp_path)), cwd=str(tmp_path)) == pyconmon_line(row, tmp_path)


@pytest.mark.parametrize("argv", [
    ["-c", CID, "-u", CID, "-r", "/tmp", "-l", "none:"],  # a directory is a runtime to conmon
    ["-c", CID, "-u", CID, "-r", "/bin/true", "-l", "none:", "--log-label", "=x", "--log-tag", "t"],
    ["-c", CID, "-u", CID, "-r", "/bin/true", "-l", "passthrough:", "--log-label", "a=b=c"],
    ["-c", CID, "-u", CID, "-r", "/bin/true", "-l", "k8s-file:/tmp/x", "-l", "journald:", "--log-tag", "t",
     "--log-label", "A_1=x y"],
    ["-c", "short", "-u", "x", "-r", "/bin/true", "-l", "none:", "--log-tag", "t"],
])
def test_accepted_as_conmon_accepts(argv):
    """conmon looks at labels (and the id's length) only for journald, and at the tag only for k8s-file alone."""
    assert checked(argv) is None


@pytest.mark.parametrize("argv,text", [
    (["-c", "../etc", "-u", "x", "-r", "/bin/true", "-l", "none:"],
     "Invalid --cid '../etc': must not contain '/' or be empty, '.' or '..'"),
    (["-c", CID, "-u", "a/b", "-r", "/bin/true", "-l", "none:"],
     "Invalid --cuuid 'a/b': must not contain '/' or be empty, '.' or '..'"),
    (["-c", "", "-u", "x", "-r", "/bin/true", "-l", "none:"],
     "Invalid --cid '': must not contain '/' or be empty, '.' or '..'"),
    (["-c", CID, "-u", "", "-r", "/bin/true", "-l", "none:"],
     "Invalid --cuuid '': must not contain '/' or be empty, '.' or '..'"),
])
def test_pyconmon_only_refusals(argv, text):
    with pytest.raises(ConfigError) as err:
        validate(parse_args(argv), cwd="/tmp")
    assert err.value.text == text


@pytest.mark.parametrize("entry,parsed", [
    ("k8s-file:/a", ("k8s-file", "/a")), ("/var/log/x", ("k8s-file", "/var/log/x")),
    ("bogus", ("k8s-file", "bogus")), (":/a", ("k8s-file", "/a")), ("k8s-file::/a", ("k8s-file", "/a")),
    ("k8s-file:/a:b", ("k8s-file", "/a")),  # strtok: the path ends at the next colon, as in conmon
    ("journald", ("journald", "")), ("journald:/ignored", ("journald", "")), ("passthrough:", ("passthrough", "")),
    ("none", ("none", "")), ("off:", ("none", "")), ("null:x", ("none", "")),
])
def test_log_path_forms(entry, parsed):
    o = parse_args([*base()[:6], "-l", entry])
    validate(o, cwd="/tmp")
    assert [(d.kind, d.path) for d in o.log_drivers] == [parsed]


def test_defaults():
    o = parse_args(base())
    validate(o, cwd="/some/dir")
    assert o.bundle == "/some/dir"
    assert o.container_pidfile == f"/some/dir/pidfile-{CID}"
    assert o.socket_dir_path == "/var/run/crio"
    assert [(d.kind, d.path) for d in o.log_drivers] == [("k8s-file", "/tmp/x.log")]


def test_bare_driver_names():
    o = parse_args(base("-l", "journald", "-l", "none", "-l", "/var/log/x.log"))
    validate(o, cwd="/tmp")
    assert [(d.kind, d.path) for d in o.log_drivers] == [("k8s-file", "/tmp/x.log"), ("journald", ""),
                                                          ("none", ""), ("k8s-file", "/var/log/x.log")]


def test_legacy_exec_needs_no_cuuid():
    o = parse_args(["-c", CID, "-r", "/bin/true", "-e", "--exec-process-spec", "p", "-l", "/tmp/x"])
    validate(o, cwd="/tmp")
    assert o.legacy_exec and o.bundle is None


def run_launcher(*args):
    return subprocess.run([LAUNCHER, *args], capture_output=True, timeout=30, env={})


def test_cli_errors_and_version():
    out = run_launcher("--version")
    assert out.returncode == 0
    assert out.stdout.startswith(b"conmon version 2.2.1\ncommit: ")
    assert out.stderr == b""
    bad = run_launcher("--bogus")
    assert (bad.returncode, bad.stderr) == (1, b"conmon: option parsing failed: Unknown option --bogus\n")
    nocid = run_launcher()
    assert (nocid.returncode, nocid.stderr) == (1, b"conmon: Container ID not provided. Use --cid\n")
    nort = run_launcher("-c", CID, "-u", CID)
    assert (nort.returncode, nort.stderr) == (1, b"[conmon:e]: Runtime path not provided. Use --runtime\n")


def test_help_lists_everything():
    out = run_launcher("--help")
    assert out.returncode == 0
    text = out.stdout.decode()
    for word in ("--api-version", "--log-path", "--exit-command-arg", "--log-rotate", "k8s-file", "journald",
                 "passthrough", "none"):
        assert word in text


words = st.one_of(
    st.sampled_from(["--cid", "-c", "--api-version", "1", "--log-path", "-l", "--timeout", "-T", "--exit-delay",
                     "--", "-", "-ti", "-cX", "--log-level", "debug", "--runtime=/bin/true", "-e", "--exec-attach",
                     "--log-max-files", "-1", "--log-rotate", "journald:", "k8s-file:", "--log-label", "A=B"]),
    st.text(max_size=12),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(words, max_size=12))
def test_any_argv_parses_or_fails_cleanly(argv):
    try:
        opts = parse_args(argv)
        validate(opts, cwd="/tmp")
    except (UsageError, ConfigError) as err:
        assert str(err)


# A command line that gets through validation, option by option; the property test below drops
# required ones, adds valid extras and shuffles, so most examples get past validation.
REQUIRED = {"--cid": CID, "--cuuid": "uuid-1", "--runtime": "/bin/true", "--log-path": "k8s-file:/tmp/ctr.log"}
NOT_PROVIDED = {"--cid": "Container ID not provided. Use --cid", "--cuuid": "Container UUID not provided. Use --cuuid",
                "--runtime": "Runtime path not provided. Use --runtime",
                "--log-path": "Log driver not provided. Use --log-path"}
VALID_EXTRAS = [["--terminal"], ["-i"], ["--log-size-max", "1000"], ["--log-level", "debug"], ["--timeout", "7"],
                ["--syslog"], ["--exit-command", "/bin/true"], ["--exit-command-arg", "x"], ["--exit-delay", "2"],
                ["--runtime-arg", "--root=/run/x"], ["--leave-stdin-open"], ["--no-pivot"], ["--full-attach"],
                ["-b", "/tmp/bundle"], ["--exit-dir", "/tmp/exits"], ["-n", "name"], ["--api-version", "1"],
                ["--log-path", "journald:"], ["--log-path", "none:"], ["-P", "/tmp/conmon.pid"]]


@settings(max_examples=200, deadline=None)
@given(st.sets(st.sampled_from(sorted(REQUIRED))), st.lists(st.sampled_from(VALID_EXTRAS), max_size=6),
       st.randoms(use_true_random=False))
def test_valid_command_lines_validate_and_missing_options_are_named(dropped, extras, rng):
    """Required options (some dropped) and valid extras, in any order: with nothing dropped, validation
    passes and the options read back as given; otherwise the error names a dropped option."""
    extras = [g for g in extras if g[0] not in dropped]  # a dropped --log-path must not come back as an extra
    groups = [[k, v] for k, v in REQUIRED.items() if k not in dropped] + extras
    rng.shuffle(groups)
    argv = [w for g in groups for w in g]
    opts = parse_args(argv)
    if dropped:
        with pytest.raises(ConfigError) as err:
            validate(opts, cwd="/tmp")
        assert err.value.text in {NOT_PROVIDED[k] for k in dropped}, (argv, err.value.text)
        return
    validate(opts, cwd="/tmp")
    assert (opts.cid, opts.cuuid, opts.runtime) == (CID, "uuid-1", "/bin/true")
    assert opts.log_paths == [w for g in groups if g[0] == "--log-path" for w in g[1:]]
    assert [d.kind for d in opts.log_drivers] == [p.split(":")[0] for p in opts.log_paths]
    assert opts.terminal == (["--terminal"] in extras) and opts.stdin == (["-i"] in extras)
    assert opts.timeout == (7 if ["--timeout", "7"] in extras else 0)
    assert opts.bundle == ("/tmp/bundle" if ["-b", "/tmp/bundle"] in extras else "/tmp")
    assert opts.runtime_args == ["--root=/run/x"] * extras.count(["--runtime-arg", "--root=/run/x"])


@settings(max_examples=25, deadline=None)
@given(st.lists(words, max_size=8))
def test_any_argv_never_tracebacks_in_the_real_program(argv):
    argv = [a for a in argv if "\0" not in a]
    # --sync keeps the process in the foreground; a bogus runtime keeps anything from starting.
    out = subprocess.run([sys.executable, "-c", "import sys; from pyconmon.cli import main; "
                          "sys.exit(main(sys.argv[1:]))", *argv, "-r", "/nonexistent"],
                         capture_output=True, timeout=30, env={"PYTHONPATH": os.path.join(ROOT, "src")})
    assert b"Traceback" not in out.stderr
    assert out.returncode in (0, 1)
