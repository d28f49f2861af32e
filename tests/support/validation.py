"""C conmon's command-line validation, as a table in its order (cli.c ``process_cli``, ctr_logging.c).

Each row breaks one check *and every later check it can*, so the expected
error is only right if the checks run in conmon's order.  ``c_line`` is what
C conmon prints (its own wording: ``nexit`` writes ``[conmon:e] TEXT``,
``nexitf`` ``[conmon:e]: TEXT``, ``pexit`` ``[conmon:e]: TEXT STRERROR``;
option errors go to stdout); :func:`pyconmon_line` gives pyconmon's, which
always writes ``[conmon:e]: TEXT`` (and ``: STRERROR``) to stderr.

``in_216`` says whether Debian's conmon 2.1.6 has the check (the rotation and
label options came later, and 2.1.6 still accepts the seccomp-notify options
that 2.2 dropped); rows without it are asserted against the text of conmon's
source.  ``opens`` marks rows decided by opening the k8s-file log, which
conmon does before its last checks.
"""

import os
import re
from typing import NamedTuple

CID = "c" * 64
SHORT = "short"


class Row(NamedTuple):
    id: str
    argv: object  # function(tmpdir) -> list[str]
    c_line: str
    in_216: bool = True
    opens: bool = False
    py_prefix: str = ""  # pyconmon words this one its own way: its line starts with this


def _plain_file(t):
    path = os.path.join(t, "plain")
    with open(path, "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod(path, 0o644)
    return path


# the later checks most rows also break: a bad exit delay and an empty --log-path
LATER = ["--exit-delay", "-1", "-l", ""]

ROWS = [
    Row("unknown-option", lambda t: ["--bogus", "--log-level", "loud", "-e", "--restore", "x"],
        "conmon: option parsing failed: Unknown option --bogus"),
    Row("seccomp-notify-socket", lambda t: ["--seccomp-notify-socket", f"{t}/s", "--log-level", "loud"],
        "conmon: option parsing failed: Unknown option --seccomp-notify-socket", in_216=False),
    Row("seccomp-notify-plugins", lambda t: ["--seccomp-notify-plugins=x", "--log-level", "loud"],
        "conmon: option parsing failed: Unknown option --seccomp-notify-plugins", in_216=False),
    Row("no-cid", lambda t: ["--log-level", "loud", "-e", "--restore", "x", "--exec-attach", *LATER],
        "conmon: Container ID not provided. Use --cid"),
    Row("empty-cid-is-an-id", lambda t: ["-c", "", "--log-level", "loud", "-e", "--restore", "x", *LATER],
        "[conmon:e]: No such log level loud"),  # conmon tests for a missing option only
    Row("log-level", lambda t: ["-c", CID, "--log-level", "loud", "-e", "--restore", "x", "--exec-attach", *LATER],
        "[conmon:e]: No such log level loud"),
    Row("exec-and-restore", lambda t: ["-c", CID, "-e", "--restore", "x", "--exec-attach", *LATER],
        "[conmon:e] Cannot use 'exec' and 'restore' at the same time"),
    Row("attach-without-exec", lambda t: ["-c", CID, "--exec-attach", *LATER],
        "[conmon:e] Attach can only be specified with exec"),
    Row("attach-legacy-exec", lambda t: ["-c", CID, "-e", "--exec-attach", *LATER],
        "[conmon:e] Attach can only be specified for a non-legacy exec session"),
    Row("no-cuuid", lambda t: ["-c", CID, *LATER],
        "[conmon:e] Container UUID not provided. Use --cuuid"),
    Row("empty-cuuid-is-a-uuid", lambda t: ["-c", CID, "-u", "", "-r", t, "-l", "", "-l", "bogus:x"],
        "[conmon:e]: log-path must not be empty"),
    Row("legacy-exec-needs-no-cuuid", lambda t: ["-c", CID, "-e", *LATER],
        "[conmon:e] Runtime path not provided. Use --runtime"),
    Row("no-runtime", lambda t: ["-c", CID, "-u", CID, "-e", "--api-version", *LATER],
        "[conmon:e] Runtime path not provided. Use --runtime"),
    Row("runtime-missing", lambda t: ["-c", CID, "-u", CID, "-r", f"{t}/nope", "-e", "--api-version", *LATER],
        "[conmon:e]: Runtime path {t}/nope is not valid No such file or directory"),
    Row("empty-runtime", lambda t: ["-c", CID, "-u", CID, "-r", "", "-e", "--api-version", *LATER],
        "[conmon:e]: Runtime path  is not valid No such file or directory"),
    Row("runtime-not-executable", lambda t: ["-c", CID, "-u", CID, "-r", _plain_file(t), "-e", "--api-version",
                                             *LATER],
        "[conmon:e]: Runtime path {t}/plain is not valid Permission denied"),
    # access(X_OK) is all conmon checks: a directory passes (the upstream suite relies on it)
    Row("runtime-directory-passes", lambda t: ["-c", CID, "-u", CID, "-r", t, "-e", "--api-version", *LATER],
        "[conmon:e] Exec process spec path not provided. Use --exec-process-spec"),
    Row("exit-delay", lambda t: ["-c", CID, "-u", CID, "-r", t, *LATER],
        "[conmon:e] Delay before invoking exit command must be greater than or equal to 0"),
    Row("log-max-files-negative", lambda t: ["-c", CID, "-u", CID, "-r", t, "--log-max-files", "-1", "-l", ""],
        "[conmon:e]: conmon: log-max-files must be non-negative, got -1", in_216=False),
    Row("log-max-files-rotate", lambda t: ["-c", CID, "-u", CID, "-r", t, "--log-rotate", "--log-max-files", "0"],
        "[conmon:e]: conmon: log-max-files must be at least 1 when log-rotate is enabled, got 0", in_216=False),
    Row("no-log-path", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "--log-tag", "x"],
        "[conmon:e] Log driver not provided. Use --log-path"),
    Row("empty-log-path-first", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", "", "-l", "bogus:x"],
        "[conmon:e]: log-path must not be empty"),
    Row("only-colons", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", "::"],
        "[conmon:e]: log-path must not be empty"),
    Row("bad-driver-first", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", "bogus:/x", "-l", "k8s-file:"],
        "[conmon:e]: No such log driver bogus"),
    Row("k8s-file-without-path", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", "k8s-file:", "-l", "bogus:x"],
        "[conmon:e]: k8s-file requires a filename"),
    Row("bare-k8s-file", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", "k8s-file"],
        "[conmon:e]: k8s-file requires a filename"),
    Row("log-open-before-tag", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", f"k8s-file:{t}/no/log",
                                          "--log-tag", "x"],
        "[conmon:e]: Failed to open log file No such file or directory", opens=True,
        py_prefix="[conmon:e]: Failed to open log file: log directory {t}/no: No such file or directory"),
    Row("k8s-file-tag", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", f"{t}/log", "-l", "none:",
                                   "--log-tag", "x"],
        "[conmon:e] k8s-file doesn't support --log-tag", opens=True),
    Row("colon-path-is-k8s-file", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", f":{t}/log", "--log-tag", "x"],
        "[conmon:e] k8s-file doesn't support --log-tag", opens=True),
    Row("k8s-file-label", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", f"k8s-file:{t}/log",
                                     "--log-label", "=x"],
        "[conmon:e] k8s-file doesn't support --log-label", in_216=False, opens=True),
    Row("journald-short-cid", lambda t: ["-c", SHORT, "-u", CID, "-r", t, "-l", f"k8s-file:{t}/log",
                                         "-l", "journald:", "--log-tag", "x"],
        "[conmon:e] Container ID must be longer than 12 characters", opens=True),
    Row("label-without-name", lambda t: ["-c", CID, "-u", CID, "-r", t, "-l", "journald:", "--log-label", "=x",
                                         "--log-label", "a=b"],
        "[conmon:e]: Container labels must be in format LABEL=VALUE (no LABEL present in '=x')", in_216=False),
    Row("label-two-equals", lambda t: ["-c", CID, "-u", CID, "-r", t, "-l", "journald:", "--log-label", "A=B=C"],
        "[conmon:e]: Container labels must be in format LABEL=VALUE (none or more than one '=' present in 'A=B=C')",
        in_216=False),
    Row("label-no-equals", lambda t: ["-c", CID, "-u", CID, "-r", t, "-l", "journald:", "--log-label", "AB"],
        "[conmon:e]: Container labels must be in format LABEL=VALUE (none or more than one '=' present in 'AB')",
        in_216=False),
    Row("label-name", lambda t: ["-c", CID, "-u", CID, "-r", t, "-l", "journald:", "--log-label", "Ab=c",
                                 "--log-label", "=x"],
        "[conmon:e]: Container label names must contain only uppercase letters, numbers and underscore (in 'Ab=c')",
        in_216=False),
]


def c_line(row, tmpdir):
    return row.c_line.replace("{t}", str(tmpdir))


def pyconmon_line(row, tmpdir):
    """pyconmon's line for a row: ``[conmon:e]: `` throughout, and ``: STRERROR`` after a failed call."""
    if row.py_prefix:
        return row.py_prefix.replace("{t}", str(tmpdir))
    line = c_line(row, tmpdir)
    if line.startswith("[conmon:e] "):
        line = "[conmon:e]: " + line[len("[conmon:e] "):]
    return re.sub(r" (No such file or directory|Permission denied)$", r": \1", line)
