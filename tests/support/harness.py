"""Start a monitor the way Podman or CRI-O does, and talk to it.

Styles (see shared/spec PODMAN.md 3.1/3.2/4 and CRIO.md 2.1/2.2/3):

- ``"podman"``: ``--api-version 1 -c ID -u ID -r RUNC -b BUNDLE -p PIDFILE -n NAME
  --exit-dir DIR --full-attach -l k8s-file:LOG --log-level warning
  --runtime-arg --log-format=json --runtime-arg --log --runtime-arg=OCILOG
  [-t] [-i] [--timeout=N] --conmon-pidfile P``; SEQPACKET socketpairs for
  ``_OCI_SYNCPIPE`` (fd 3+N) and ``_OCI_STARTPIPE`` (fd 4+N), own process
  group, cwd inherited (the test's work dir), Podman's environment.
- ``"crio"``: ``-b B -c ID --exit-dir D -l LOG --log-level info -n NAME -P
  B/conmon-pidfile -p B/pidfile --persist-dir P -r RUNC --runtime-arg
  --root=/run/runc --socket-dir-path S --syslog -u ID [-t] [-i]``; STREAM
  socketpairs for sync (fd 3) and start (fd 4), cwd = bundle, own process
  group, minimal environment (no HOME, TMPDIR, PYTHONPATH, LANG).
- ``run_exec(style="podman")``: ``podman exec`` (``-e --exec-attach``, a
  third SEQPACKET pair for ``_OCI_ATTACHPIPE``, two start bytes).
- ``run_exec(style="crio")``: CRI-O ExecSync (legacy exec with ``--sync``; sync
  is a plain pipe, start a stream socket, same process group, no bundle).

The sequence is the caller's: spawn, write the start byte 0x00, wait for the
first process to exit, read the conmon pid file, then read sync messages
(JSON, one per line) with a deadline. Nothing here sleeps blindly: every wait
polls a condition against a deadline.
"""

import collections
import datetime
import errno
import fcntl
import glob
import json
import os
import re
import secrets
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time

from . import RUNC
from .bundle import make_bundle, make_process_spec

STD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEFAULT_TIMEOUT = 10.0
CRIO_RUNTIME_ROOT = "/run/runc"  # runc's; crio_runtime_root() below for any runtime


def readable(fd, timeout):
    """Whether ``fd`` (a number or an object with fileno()) is readable within ``timeout`` seconds
    (None: wait); poll, not select, which fails for fds >= 1024 (200 containers in one test)."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(None if timeout is None else max(0, int(timeout * 1000))))


def crio_runtime_root(runtime=RUNC):
    """The ``--root`` CRI-O gives a runtime: /run/runc for runc, /run/crun for crun."""
    return f"/run/{os.path.basename(runtime)}"

_spawn_lock = threading.Lock()


def new_cid():
    """A fresh container id: 64 hex characters, like Podman and CRI-O use."""
    return secrets.token_hex(32)


def short_tmpdir(prefix="pcm-"):
    """A new directory with a short path under /tmp (socket dirs, console sockets)."""
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


class Deadline:
    def __init__(self, timeout):
        self.end = time.monotonic() + timeout

    def left(self):
        return max(0.0, self.end - time.monotonic())

    def expired(self):
        return time.monotonic() >= self.end


def poll_until(cond, timeout=DEFAULT_TIMEOUT, interval=0.01, what="condition"):
    """Call ``cond()`` until it returns a truthy value; return it. TimeoutError after ``timeout``."""
    dl = Deadline(timeout)
    delay = interval
    while True:
        value = cond()
        if value:
            return value
        if dl.expired():
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(min(delay, dl.left()))
        delay = min(delay * 1.5, 0.1)


# --------------------------------------------------------------------------
# OCI runtime helpers (runc or crun: ``runtime`` is the binary's path)


def run_runtime(args, root=None, timeout=30, check=False, runtime=RUNC):
    """``RUNTIME [--root ROOT] ARGS``; returns the CompletedProcess (text)."""
    argv = [runtime] + (["--root", root] if root else []) + list(args)
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def start_container(cid, root=None, timeout=30, runtime=RUNC):
    """``runc start CID`` (what Podman/CRI-O do after the pid message); returns CompletedProcess, raises on failure."""
    return run_runtime(["start", cid], root=root, timeout=timeout, check=True, runtime=runtime)


def container_state(cid, root=None, runtime=RUNC):
    """``runc state CID`` as a dict, or None if the runtime doesn't know the container."""
    r = run_runtime(["state", cid], root=root, runtime=runtime)
    if r.returncode != 0:
        return None
    return json.loads(r.stdout)


def runc_kill(cid, sig="KILL", root=None, check=False, runtime=RUNC):
    """``runc kill CID SIG`` (or ``runtime``'s); with ``check`` a failure raises."""
    return run_runtime(["kill", cid, sig], root=root, check=check, runtime=runtime)


def runtime_kill(m, sig="KILL", check=False):
    """``runc kill`` / ``crun kill`` of a Monitor's container, with its runtime and root."""
    return m.runtime_cmd("kill", m.cid, sig, check=check)


def cleanup(cid, root=None, runtime=RUNC):
    """``runc delete -f CID``; a container that is already gone is fine. Returns True if the runtime succeeded."""
    r = run_runtime(["delete", "-f", cid], root=root, runtime=runtime)
    return r.returncode == 0


# --------------------------------------------------------------------------
# scripts and fake runtimes


def write_script(path, text):
    """An executable file ``path`` holding ``text``; returns the path."""
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o755)
    return path


def pidfile_runtime(path, sleep=30):
    """A fake runtime that "creates" any container: a ``sleep`` it starts (its pid written to
    ``--pid-file`` atomically), then exits 0, never touching a console socket (and taking any id,
    even one runc would refuse). Returns the script's path."""
    return write_script(path, f"""#!/bin/sh
while [ $# -gt 0 ]; do
  case "$1" in --pid-file) pidfile=$2; shift ;; esac
  shift
done
sleep {sleep} </dev/null >/dev/null 2>&1 &
printf %s $! > "$pidfile.tmp" && mv "$pidfile.tmp" "$pidfile"
exit 0
""")


# --------------------------------------------------------------------------
# files written by the monitor


def read_exit_file(path):
    """Exit code in ``path`` (decimal, no newline), or None if absent/incomplete."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def wait_exit_file(path, timeout=DEFAULT_TIMEOUT):
    """Poll until ``path`` holds an exit code; return it as int (TimeoutError otherwise)."""
    def check():
        v = read_exit_file(path)
        return None if v is None else (v,)

    return poll_until(check, timeout, what=f"exit file {path}")[0]


def wait_for_path(path, timeout=DEFAULT_TIMEOUT):
    """Poll until ``path`` exists."""
    poll_until(lambda: os.path.lexists(path), timeout, what=f"{path} to exist")
    return path


def read_pidfile(path):
    """Pid in a pid file (whole-file integer, as Podman/CRI-O parse it), or None."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        return int(data)
    except (FileNotFoundError, ValueError):
        return None


def stat_after_comm(pid):
    """The fields of /proc/PID/stat after the command name, split ([0] is the state, field 3 of
    proc(5)); OSError once the process is gone. The name may hold spaces and parentheses."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def pid_alive(pid):
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = stat_after_comm(pid)[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def wait_pid_gone(pid, timeout=DEFAULT_TIMEOUT):
    """Wait until ``pid`` (not necessarily our child) has exited."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        # pidfd readiness is the exit; /proc settles zombie races
        if not readable(pidfd, timeout) and pid_alive(pid):
            raise TimeoutError(f"pid {pid} still running after {timeout}s")
    finally:
        os.close(pidfd)


K8sRecord = collections.namedtuple("K8sRecord", "timestamp stream tag content")
Line = collections.namedtuple("Line", "stream content complete")

K8S_TS_RE = re.compile(rb"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{9}[+-]\d{2}:\d{2}$")


def parse_k8s_line(line):
    """One log line (bytes, without the final \\n) -> K8sRecord (timestamp str, stream str, tag str, content bytes)."""
    parts = line.split(b" ", 3)
    if len(parts) < 3:
        raise ValueError(f"malformed k8s-file line: {line!r}")
    content = parts[3] if len(parts) == 4 else b""
    return K8sRecord(parts[0].decode(), parts[1].decode(), parts[2].decode(), content)


def read_k8s_log(path):
    """Parse a k8s-file log into a list of K8sRecord(timestamp, stream, tag, content: bytes).

    A missing file gives []. Each record ends with ``\\n`` in the file; a
    final line without it (a torn write) is still returned.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [parse_k8s_line(x) for x in lines]


def join_lines(records):
    """Join each stream's P pieces with the following F: list of Line(stream, content, complete).

    Lines come out in the order their last piece appears; pieces left without
    an F (container exited mid-line) come last with ``complete=False``.
    """
    pending = {}
    out = []
    for rec in records:
        buf = pending.setdefault(rec.stream, [])
        buf.append(rec.content)
        if rec.tag.split(":")[0] == "F":
            out.append(Line(rec.stream, b"".join(buf), True))
            del pending[rec.stream]
    for stream, buf in pending.items():
        out.append(Line(stream, b"".join(buf), False))
    return out


def parse_k8s_timestamp(ts):
    """k8s-file timestamp -> aware datetime (ValueError unless 9 fraction digits and +hh:mm)."""
    if not K8S_TS_RE.match(ts.encode() if isinstance(ts, str) else ts):
        raise ValueError(f"bad k8s timestamp {ts!r}")
    ts = ts.decode() if isinstance(ts, bytes) else ts
    main, frac_off = ts.split(".")
    frac, off = frac_off[:9], frac_off[9:]
    dt = datetime.datetime.strptime(main + off, "%Y-%m-%dT%H:%M:%S%z")
    return dt + datetime.timedelta(microseconds=int(frac) // 1000)


def stream_text(records, stream="stdout"):
    """All content of one stream, P pieces joined, lines separated by \\n (complete lines end in \\n)."""
    return b"".join(line.content + (b"\n" if line.complete else b"")
                    for line in join_lines(records) if line.stream == stream)


# --------------------------------------------------------------------------
# sync / attach pipes


class SyncReader:
    """Reads newline-terminated JSON objects from the caller's end of a sync (or attach) pipe.

    ``kind`` is "seqpacket" (Podman), "stream" (CRI-O create) or "pipe"
    (CRI-O ExecSync). ``chunks`` keeps every raw read for byte-exact checks.
    """

    def __init__(self, fd, kind):
        self.fd = fd
        self.kind = kind
        self.buf = b""
        self.chunks = []
        self.messages = []
        self.eof = False

    def _fill(self, timeout):
        r = readable(self.fd, timeout)
        if not r:
            return False
        try:
            data = os.read(self.fd, 65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        else:
            self.chunks.append(data)
            self.buf += data
        return True

    def read(self, timeout=DEFAULT_TIMEOUT):
        """Next message as a dict; None at EOF; TimeoutError if nothing in time."""
        dl = Deadline(timeout)
        while True:
            if b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                if not line.strip():
                    continue
                msg = json.loads(line)
                self.messages.append(msg)
                return msg
            if self.eof:
                if self.buf.strip():  # a value without newline: CRI-O's decoder still takes it
                    line, self.buf = self.buf, b""
                    msg = json.loads(line)
                    self.messages.append(msg)
                    return msg
                return None
            if not self._fill(dl.left()):
                raise TimeoutError(f"no sync message within {timeout}s (got so far: {self.chunks!r})")

    def read_rest(self, timeout=DEFAULT_TIMEOUT):
        """All remaining messages until EOF."""
        out = []
        while True:
            m = self.read(timeout)
            if m is None:
                return out
            out.append(m)

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class AttachClient:
    """A client of the monitor's SEQPACKET attach socket, connected like Podman (via /proc/self/fd)."""

    def __init__(self, path, timeout=DEFAULT_TIMEOUT):
        self.path = path
        fd = os.open(path, os.O_PATH)
        try:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            self.sock.settimeout(timeout)
            self.sock.connect(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        self.packets = []  # (stream id, bytes)
        self.max_packet = 0
        self.eof = False

    def recv(self, timeout=DEFAULT_TIMEOUT):
        """Next packet as (stream id, data); None at EOF; TimeoutError if none in time."""
        if self.eof:
            return None
        if not readable(self.sock, timeout):
            raise TimeoutError(f"no attach packet within {timeout}s")
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
            return None
        self.max_packet = max(self.max_packet, len(data))
        pkt = (data[0], data[1:])
        self.packets.append(pkt)
        return pkt

    def read_until_eof(self, timeout=DEFAULT_TIMEOUT):
        """Collect packets until the monitor closes the connection; returns {stream id: bytes}."""
        dl = Deadline(timeout)
        while self.recv(dl.left()) is not None:
            pass
        return self.output()

    def read_until(self, predicate, timeout=DEFAULT_TIMEOUT):
        """Read until ``predicate(self.output())`` is true (or EOF); returns output()."""
        dl = Deadline(timeout)
        while not predicate(self.output()):
            if self.recv(dl.left()) is None:
                break
        return self.output()

    def output(self):
        """{stream id: bytes}: everything received, joined once per stream."""
        parts = {}
        for stream, data in self.packets:
            parts.setdefault(stream, []).append(data)
        return {stream: b"".join(chunks) for stream, chunks in parts.items()}

    def send(self, data):
        self.sock.sendall(data)

    def shutdown_write(self):
        self.sock.shutdown(socket.SHUT_WR)

    def close(self):
        self.sock.close()


def write_ctl(bundle, line, timeout=DEFAULT_TIMEOUT, name="ctl"):
    """Write one line to ``<bundle>/ctl`` (or ``winsz``) like Podman: O_WRONLY|O_NONBLOCK, retrying."""
    path = os.path.join(bundle, name)
    dl = Deadline(timeout)
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError as e:
            if e.errno not in (errno.ENXIO, errno.EAGAIN, errno.EINTR, errno.ENOENT) or dl.expired():
                raise
            time.sleep(0.02)
    try:
        os.write(fd, line.encode() if isinstance(line, str) else line)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# the monitor


def _reader(fd, buf, done):
    try:
        while True:
            data = os.read(fd, 65536)
            if not data:
                break
            buf.extend(data)
    except OSError:
        pass
    finally:
        os.close(fd)
        done.set()


def _high_dup(fd):
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)


def _inheritable_fds():
    out = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            if not fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                out.append(fd)
        except OSError:
            pass
    return out


def proc_cmdline(pid):
    """The raw ``/proc/PID/cmdline`` (NUL-separated), or b"" once the process is gone."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def held_exit_command(hold):
    """An exit command that waits for the file ``hold`` to exist, so the monitor (and what it leaves
    until it exits) stays.  It gives up after 60 s: a test that fails before creating ``hold`` leaves
    no process behind."""
    return ["/bin/sh", "-c", f"i=0; while [ ! -e {hold} ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done"]


def traced(pid):
    """Every thread of ``pid`` has a tracer."""
    for status in glob.glob(f"/proc/{pid}/task/*/status"):
        with open(status) as f:
            if "TracerPid:\t0\n" in f.read():
                return False
    return True


def strace_attached(pid, *expressions, out="/dev/null", flags=()):
    """strace (``-e EXPR`` each, extra ``flags`` such as ``-y``) on every thread of ``pid``, once it is
    attached; the caller ends it."""
    argv = ["strace", "-f", "-qq", *flags, "-o", str(out), "-p", str(pid)]
    for expr in expressions:
        argv += ["-e", expr]
    tracer = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll_until(lambda: traced(pid), what="strace to attach to every thread of the monitor")
    return tracer


def private_dirty_kb(pid):
    """A process's Private_Dirty in KB, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Private_Dirty:"))


def server_pids(lib_dir):
    """Pids of the running pyconmon servers of the install whose package dir is ``lib_dir``
    (``<prefix>/lib/pyconmon``: a server's command line names it)."""
    lib = os.fsencode(lib_dir)
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            argv = proc_cmdline(name).split(b"\0")
            if argv[0] == b"pyconmon-server" and any(lib in a for a in argv):
                found.append(int(name))
    return found


def _is_monitor_of(pid, cid):
    """True if ``pid`` still runs a command line naming ``cid`` (guards against pid reuse)."""
    return cid.encode() in proc_cmdline(pid).split(b"\0")


def _pair(kind):
    """(our end, child end) for a pipe of ``kind``; both close-on-exec."""
    if kind == "seqpacket":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    elif kind == "stream":
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    elif kind == "pipe":  # child writes
        r, w = os.pipe2(os.O_CLOEXEC)
        return r, w
    else:
        raise ValueError(kind)
    return a.detach(), b.detach()


def podman_env(extra=None):
    """The environment Podman 4.3.1 gives conmon (root, default conmon_env_vars)."""
    env = {"PATH": STD_PATH}
    for k, v in os.environ.items():
        if k.startswith("LC_"):
            env[k] = v
    env["PATH"] = os.environ.get("PATH", STD_PATH)
    if "CONTAINERS_CONF" in os.environ:
        env["CONTAINERS_CONF"] = os.environ["CONTAINERS_CONF"]
    env["XDG_RUNTIME_DIR"] = ""
    env["_CONTAINERS_USERNS_CONFIGURED"] = os.environ.get("_CONTAINERS_USERNS_CONFIGURED", "")
    env["_CONTAINERS_ROOTLESS_UID"] = os.environ.get("_CONTAINERS_ROOTLESS_UID", "")
    env["HOME"] = os.environ.get("HOME", "/root")
    if extra:
        env.update(extra)
    return env


def crio_env(extra=None):
    """CRI-O's environment for conmon: monitor_env, CRI_O_EXTERNAL=1, PATH; nothing else."""
    env = {"PATH": STD_PATH, "CRI_O_EXTERNAL": "1"}
    if extra:
        env.update(extra)
    return env


class Monitor:
    """One monitor process started like Podman or CRI-O (create with run_monitor, exec with run_exec).

    Useful attributes: ``argv``, ``env``, ``cwd``, ``cid``, ``cuuid``,
    ``bundle``, ``log_path``, ``exit_dir``, ``exit_file``, ``persist_dir``,
    ``socket_dir``, ``pidfile`` (the container's), ``conmon_pidfile``,
    ``first_pid``/``first_status`` (the process we spawned; status is the
    exit code or -signal), ``pid`` (the monitor: the pid file's value, or
    the first process with ``--sync``), ``sync`` (SyncReader), ``attach_pipe``
    (SyncReader, Podman exec), ``messages`` (sync messages read so far),
    ``container_pid``, ``stdout``/``stderr`` (what the first process and
    anything else holding its stdio wrote, as bytes), ``runtime`` (the OCI
    runtime's path, runc or crun: ``start_container``, ``state`` and
    ``runtime_cmd`` use it with ``runtime_root``).
    """

    def __init__(self, conmon, argv, env, cwd, *, style, cid, runtime=RUNC, runtime_root=None, sync_kind,
                 start_kind, attach_kind=None, preserve_fds=(), extra_fds=(), setpgroup=True,
                 stdin=None, stdout=None, stderr=None, bundle=None, tracker=None, **paths):
        self.conmon = conmon
        self.argv = [conmon, *argv]
        self.env = dict(env)
        self.cwd = cwd
        self.style = style
        self.cid = cid
        self.runtime = runtime
        self.runtime_root = runtime_root
        self.bundle = bundle
        self.cuuid = paths.pop("cuuid", None)
        self.log_path = paths.pop("log_path", None)
        self.exit_dir = paths.pop("exit_dir", None)
        self.persist_dir = paths.pop("persist_dir", None)
        self.socket_dir = paths.pop("socket_dir", None)
        self.pidfile = paths.pop("pidfile", None)
        self.conmon_pidfile = paths.pop("conmon_pidfile", None)
        self.exec_spec = paths.pop("exec_spec", None)
        self.attach_path = paths.pop("attach_path", None)
        self.oci_log = paths.pop("oci_log", None)
        self.workdir = paths.pop("workdir", None)
        if paths:
            raise TypeError(f"unknown arguments {sorted(paths)}")
        self.exit_file = os.path.join(self.exit_dir, cid) if self.exit_dir else None
        self.sync_kind, self.start_kind, self.attach_kind = sync_kind, start_kind, attach_kind
        self.preserve_fds, self.extra_fds = list(preserve_fds), list(extra_fds)
        self.setpgroup = setpgroup
        self._stdin, self._stdout, self._stderr = stdin, stdout, stderr
        self.first_pid = None
        self.first_status = None
        self.pid = None
        self.sync = None
        self.attach_pipe = None
        self.start_fd = None
        self.start_error = None
        self.container_pid = None
        self.clients = []
        self._out = bytearray()
        self._err = bytearray()
        self._readers = []
        self._own_dirs = []
        self._first_pidfd = None
        if tracker is not None:
            tracker.add_monitor(self)

    # -- launching ----------------------------------------------------------

    def spawn(self):
        """Spawn the first process with fds laid out as the caller does; don't write the start byte yet."""
        n = len(self.preserve_fds)
        ours_sync, child_sync = _pair(self.sync_kind)
        ours_start, child_start = _pair(self.start_kind)
        layout = [_high_dup(fd) for fd in self.preserve_fds] + [child_sync, child_start]
        self.env["_OCI_SYNCPIPE"] = str(3 + n)
        self.env["_OCI_STARTPIPE"] = str(4 + n)
        ours_attach = None
        if self.attach_kind:
            ours_attach, child_attach = _pair(self.attach_kind)
            layout.append(child_attach)
            self.env["_OCI_ATTACHPIPE"] = str(5 + n)
        layout += [_high_dup(fd) for fd in self.extra_fds]
        layout = [fd if fd >= 100 else self._redup(fd) for fd in layout]

        close_after = list(layout)
        if self._stdin is None:
            stdin = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
            close_after.append(stdin)
        else:
            stdin = self._stdin
        outs = []
        for given, buf in ((self._stdout, self._out), (self._stderr, self._err)):
            if given is None:
                r, w = os.pipe2(os.O_CLOEXEC)
                done = threading.Event()
                t = threading.Thread(target=_reader, args=(r, buf, done), daemon=True)
                self._readers.append((t, done))
                outs.append(w)
                close_after.append(w)
            else:
                outs.append(given)
        actions = [(os.POSIX_SPAWN_DUP2, stdin, 0), (os.POSIX_SPAWN_DUP2, outs[0], 1),
                   (os.POSIX_SPAWN_DUP2, outs[1], 2)]
        for i, fd in enumerate(layout):
            actions.append((os.POSIX_SPAWN_DUP2, fd, 3 + i))
        with _spawn_lock:
            # Like a Go exec.Cmd: the child gets 0-2 and the listed fds, nothing else.
            for fd in _inheritable_fds():
                if fd >= 3 + len(layout):
                    actions.append((os.POSIX_SPAWN_CLOSE, fd))
            old = os.getcwd()
            os.chdir(self.cwd)
            try:
                kw = {"setpgroup": 0} if self.setpgroup else {}
                self.first_pid = os.posix_spawn(
                    self.argv[0], self.argv, self.env, file_actions=actions,
                    setsigdef=(signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM,
                               signal.SIGQUIT, signal.SIGCHLD, signal.SIGHUP),
                    setsigmask=(), **kw)
            finally:
                os.chdir(old)
        for fd in close_after:
            os.close(fd)
        for t, _ in self._readers:
            t.start()
        self._first_pidfd = os.pidfd_open(self.first_pid)
        self.sync = SyncReader(ours_sync, self.sync_kind)
        self.start_fd = ours_start
        if ours_attach is not None:
            self.attach_pipe = SyncReader(ours_attach, self.attach_kind)
        return self

    @staticmethod
    def _redup(fd):
        new = _high_dup(fd)
        os.close(fd)
        return new

    def write_start(self, byte=b"\0"):
        """Write one start byte (Podman writes a second one for exec-attach). False if the monitor is gone."""
        try:
            os.write(self.start_fd, byte)
            return True
        except OSError as e:
            self.start_error = e
            return False

    def wait_first(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the first process to exit; return its exit code (-signal if killed)."""
        if self.first_status is not None:
            return self.first_status
        if not readable(self._first_pidfd, timeout):
            raise TimeoutError(f"first monitor process {self.first_pid} still running after {timeout}s")
        _, status = os.waitpid(self.first_pid, 0)
        os.close(self._first_pidfd)
        self._first_pidfd = None
        self.first_status = os.waitstatus_to_exitcode(status)
        return self.first_status

    def first_running(self):
        if self.first_status is not None:
            return False
        if readable(self._first_pidfd, 0):
            self.wait_first(0)
            return False
        return True

    def read_conmon_pidfile(self):
        """Read ``--conmon-pidfile`` (or ``-P``) into ``self.pid``; None if missing/not an integer."""
        if self.conmon_pidfile:
            self.pid = read_pidfile(self.conmon_pidfile)
        return self.pid

    def read_sync(self, timeout=DEFAULT_TIMEOUT):
        """Next sync message (dict), None at EOF; TimeoutError otherwise."""
        return self.sync.read(timeout)

    @property
    def messages(self):
        return self.sync.messages if self.sync else []

    # -- the container ------------------------------------------------------

    def start_container(self, timeout=30):
        """``runc start`` the container (Podman/CRI-O do this themselves after the pid)."""
        return start_container(self.cid, root=self.runtime_root, timeout=timeout, runtime=self.runtime)

    def runtime_cmd(self, *args, timeout=30, check=False):
        """Run the container's runtime (with its root) on ``args``, e.g. ``m.runtime_cmd("kill", m.cid, "KILL")``."""
        return run_runtime(args, root=self.runtime_root, timeout=timeout, check=check, runtime=self.runtime)

    def state(self):
        """The runtime's ``state`` of this container as a dict, None once it is unknown."""
        return container_state(self.cid, root=self.runtime_root, runtime=self.runtime)

    def wait_exit_file(self, timeout=DEFAULT_TIMEOUT):
        """Exit code from ``<exit-dir>/<cid>``, polled with a deadline."""
        return wait_exit_file(self.exit_file, timeout)

    def persist_exit(self, timeout=DEFAULT_TIMEOUT):
        """Exit code from ``<persist-dir>/exit``."""
        return wait_exit_file(os.path.join(self.persist_dir, "exit"), timeout)

    def log_records(self):
        return read_k8s_log(self.log_path)

    def log_lines(self):
        return join_lines(self.log_records())

    def attach(self, timeout=DEFAULT_TIMEOUT):
        """Connect a new AttachClient to this monitor's attach socket."""
        path = self.attach_path
        client = AttachClient(path, timeout)
        self.clients.append(client)
        return client

    def write_ctl(self, line, timeout=DEFAULT_TIMEOUT):
        write_ctl(self.ctl_dir, line, timeout)

    @property
    def ctl_dir(self):
        return os.path.dirname(self.attach_path) if self.attach_path else self.bundle

    # -- the monitor process ------------------------------------------------

    def monitor_pid(self):
        return self.pid if self.pid else self.first_pid

    def alive(self):
        """True while the monitor (or, before it is known, the first process) runs."""
        if self.pid and self.pid != self.first_pid:
            return pid_alive(self.pid)
        return self.first_running()

    def wait(self, timeout=DEFAULT_TIMEOUT):
        """Wait for the monitor itself to exit. Returns its exit code only when it's our child (--sync)."""
        if self.pid and self.pid != self.first_pid:
            wait_pid_gone(self.pid, timeout)
            return None
        return self.wait_first(timeout)

    def signal(self, sig):
        os.kill(self.monitor_pid(), sig)

    def wait_stdio_eof(self, timeout=DEFAULT_TIMEOUT):
        """Wait until every holder of the first process's stdout/stderr pipes let go. True if so."""
        dl = Deadline(timeout)
        for _, done in self._readers:
            if not done.wait(dl.left()):
                return False
        return True

    def _settle_readers(self):
        """Once the first process has exited, let the reader threads take what it wrote (they may
        lag a moment behind its exit; a monitor that kept the pipes, e.g. passthrough, costs 0.2 s)."""
        if self.first_status is not None:
            for _, done in self._readers:
                done.wait(0.2)

    @property
    def stdout(self):
        self._settle_readers()
        return bytes(self._out)

    @property
    def stderr(self):
        self._settle_readers()
        return bytes(self._err)

    def finish_create(self, deadline=DEFAULT_TIMEOUT, read_sync=True, start=False):
        """The rest of run_monitor after ``write_start=False`` or ``wait=False``: wait, pid file, sync, start."""
        return _finish_create(self, deadline, read_sync, start)

    def close(self, kill=True, grace=3.0, delete=True):
        """Tear down: close clients, delete the container (create styles), make sure the monitor is gone."""
        for c in self.clients:
            try:
                c.close()
            except OSError:
                pass
        if delete and self.cid and self.style in ("podman", "crio"):
            cleanup(self.cid, root=self.runtime_root, runtime=self.runtime)
        if kill:
            dl = Deadline(grace)
            pids = [p for p in (self.pid, self.first_pid) if p]
            for p in pids:
                if p == self.first_pid and self.first_status is not None:
                    continue
                try:
                    wait_pid_gone(p, dl.left())
                except TimeoutError:
                    if p == self.first_pid or _is_monitor_of(p, self.cid):
                        try:
                            os.kill(p, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
            if self.first_status is None and self._first_pidfd is not None:
                try:
                    self.wait_first(5)
                except TimeoutError:
                    pass
        for r in (self.sync, self.attach_pipe):
            if r is not None:
                r.close()
        if self.start_fd is not None:
            os.close(self.start_fd)
            self.start_fd = None
        if self._first_pidfd is not None:
            os.close(self._first_pidfd)
            self._first_pidfd = None
        for d in self._own_dirs:
            shutil.rmtree(d, ignore_errors=True)

    def describe(self):
        """A text summary for assertion messages."""
        return (f"argv={self.argv}\nfirst_status={self.first_status} pid={self.pid}\n"
                f"messages={self.messages}\nstderr={self.stderr[-2000:]!r}")


# --------------------------------------------------------------------------
# argv builders


def podman_create_args(*, cid, bundle, pidfile, name, exit_dir, log_driver, conmon_pidfile, oci_log,
                       runtime=RUNC, terminal=False, stdin=False, timeout=None, log_size_max=None,
                       log_level="warning", exit_command=None, runtime_root=None, extra=()):
    """Podman 4.3.1's argument list for create/run (PODMAN.md 3.1), in its order."""
    a = ["--api-version", "1", "-c", cid, "-u", cid, "-r", runtime, "-b", bundle, "-p", pidfile,
         "-n", name, "--exit-dir", exit_dir, "--full-attach"]
    if runtime_root:
        a += ["--runtime-arg", f"--root={runtime_root}"]
    for d in ([log_driver] if isinstance(log_driver, str) else log_driver):
        a += ["-l", d]
    a += ["--log-level", log_level]
    if log_size_max is not None:
        a += ["--log-size-max", str(log_size_max)]
    a += ["--runtime-arg", "--log-format=json", "--runtime-arg", "--log", f"--runtime-arg={oci_log}"]
    if terminal:
        a += ["-t"]
    elif stdin:
        a += ["-i"]
    if timeout is not None:
        a += [f"--timeout={timeout}"]
    a += ["--conmon-pidfile", conmon_pidfile]
    if exit_command:
        a += ["--exit-command", exit_command[0]]
        for x in exit_command[1:]:
            a += ["--exit-command-arg", x]
    return a + list(extra)


def crio_create_args(*, cid, bundle, exit_dir, log_path, name, persist_dir, socket_dir,
                     runtime=RUNC, runtime_root=None, terminal=False, stdin=False,
                     stdin_once=True, log_size_max=None, log_level="info", no_sync_log=False,
                     journald=False, extra=()):
    """CRI-O's argument list for CreateContainer (CRIO.md 2.1), in its order."""
    runtime_root = runtime_root or crio_runtime_root(runtime)
    a = ["-b", bundle, "-c", cid, "--exit-dir", exit_dir, "-l", log_path, "--log-level", log_level,
         "-n", name, "-P", os.path.join(bundle, "conmon-pidfile"), "-p", os.path.join(bundle, "pidfile"),
         "--persist-dir", persist_dir, "-r", runtime, "--runtime-arg", f"--root={runtime_root}",
         "--socket-dir-path", socket_dir, "--syslog", "-u", cid]
    if log_size_max is not None:
        a += ["--log-size-max", str(log_size_max)]
    if no_sync_log:
        a += ["--no-sync-log"]
    if journald:
        a += ["--log-path", "journald:"]
    if terminal:
        a += ["-t"]
    elif stdin:
        if not stdin_once:
            a += ["--leave-stdin-open"]
        a += ["-i"]
    return a + list(extra)


# --------------------------------------------------------------------------
# high level


def _mk(path):
    os.makedirs(path, exist_ok=True)
    return path


def run_monitor(conmon, args=None, *, workdir, style="podman", runtime=RUNC, bundle=None, cid=None, name=None,
                terminal=False, stdin=False, stdin_once=True, log_driver=None, log_path=None,
                log_size_max=None, timeout=None, exit_command=None, runtime_root=None,
                argv=None, extra_args=(), env=None, env_extra=None, preserve_fds=(), extra_fds=(),
                first_stdin=None, first_stdout=None, first_stderr=None, bundle_kw=None,
                write_start=True, wait=True, read_sync=True, start=False, deadline=DEFAULT_TIMEOUT,
                tracker=None):
    """Start a monitor for a new container the way Podman (``style="podman"``) or CRI-O (``"crio"``) does.

    ``args`` (the container's command) makes a bundle at ``<workdir>/bundle``
    on the shared busybox rootfs (``bundle_kw`` goes to make_bundle; ``terminal``
    is passed to both); or pass an existing ``bundle``. ``argv`` replaces the
    built argument list entirely (``extra_args`` are appended either way);
    ``env`` replaces, ``env_extra`` amends the style's environment.

    Then, unless told otherwise: write the start byte, wait for the first
    process, read the conmon pid file, read the first sync message into
    ``m.sync_msg`` and, if it is a pid, ``m.container_pid``; with
    ``start=True`` also ``runc start`` the container. Returns the Monitor;
    failures of the monitor don't raise (check ``m.first_status``,
    ``m.sync_msg``, ``m.stderr``), a monitor that hangs raises TimeoutError.
    """
    if style not in ("podman", "crio"):
        raise ValueError(f"style must be 'podman' or 'crio', not {style!r}")
    workdir = _mk(os.path.abspath(str(workdir)))
    cid = cid or new_cid()
    name = name or f"test-{cid[:8]}"
    if bundle is None:
        bundle = os.path.join(workdir, "bundle")
        if args is None:
            args = ["true"]
        make_bundle(bundle, args, terminal=terminal, **(bundle_kw or {}))
    bundle = os.path.abspath(str(bundle))
    own_dirs = []
    if tracker is not None:
        tracker.add_container(cid, runtime_root or (crio_runtime_root(runtime) if style == "crio" else None),
                              runtime)
    if style == "podman":
        userdata = _mk(os.path.join(workdir, "userdata"))
        exit_dir = _mk(os.path.join(workdir, "exits"))
        log_path = log_path or os.path.join(bundle, "ctr.log")
        if log_driver is None:
            log_driver = f"k8s-file:{log_path}"
        paths = {
            "cuuid": cid, "exit_dir": exit_dir, "log_path": log_path,
            "pidfile": os.path.join(userdata, "pidfile"),
            "conmon_pidfile": os.path.join(userdata, "conmon.pid"),
            "oci_log": os.path.join(userdata, "oci-log"),
            "attach_path": os.path.join(bundle, "attach"), "workdir": workdir}
        if argv is None:
            argv = podman_create_args(
                cid=cid, bundle=bundle, pidfile=paths["pidfile"], name=name, exit_dir=exit_dir,
                log_driver=log_driver, conmon_pidfile=paths["conmon_pidfile"], oci_log=paths["oci_log"],
                terminal=terminal, stdin=stdin, timeout=timeout, log_size_max=log_size_max,
                exit_command=exit_command, runtime_root=runtime_root, runtime=runtime)
        base_env = podman_env()
        cwd = workdir
        kinds = {"sync_kind": "seqpacket", "start_kind": "seqpacket"}
    else:
        runtime_root = runtime_root or crio_runtime_root(runtime)
        exit_dir = _mk(os.path.join(workdir, "exits"))
        persist_dir = _mk(os.path.join(workdir, "persist"))
        socket_dir = short_tmpdir("pcm-s-")
        own_dirs.append(socket_dir)
        log_path = log_path or os.path.join(_mk(os.path.join(workdir, "logs")), "0.log")
        paths = {
            "cuuid": cid, "exit_dir": exit_dir, "persist_dir": persist_dir, "socket_dir": socket_dir,
            "log_path": log_path, "pidfile": os.path.join(bundle, "pidfile"),
            "conmon_pidfile": os.path.join(bundle, "conmon-pidfile"),
            "attach_path": os.path.join(socket_dir, cid, "attach"), "workdir": workdir}
        if argv is None:
            argv = crio_create_args(
                cid=cid, bundle=bundle, exit_dir=exit_dir, log_path=log_driver or log_path, name=name,
                persist_dir=persist_dir, socket_dir=socket_dir, runtime=runtime, runtime_root=runtime_root,
                terminal=terminal, stdin=stdin, stdin_once=stdin_once, log_size_max=log_size_max)
        base_env = crio_env()
        cwd = bundle
        kinds = {"sync_kind": "stream", "start_kind": "stream"}
    if env is not None:
        base_env = dict(env)
    if env_extra:
        base_env.update(env_extra)
    m = Monitor(conmon, list(argv) + list(extra_args), base_env, cwd, style=style, cid=cid,
                runtime=runtime, runtime_root=runtime_root, bundle=bundle, preserve_fds=preserve_fds,
                extra_fds=extra_fds, stdin=first_stdin, stdout=first_stdout, stderr=first_stderr,
                tracker=tracker, **kinds, **paths)
    m._own_dirs += own_dirs
    m.sync_msg = None
    m.spawn()
    if not write_start:
        return m
    m.write_start()
    if not wait:
        return m
    _finish_create(m, deadline, read_sync, start)
    return m


def _finish_create(m, deadline, read_sync=True, start=False):
    m.wait_first(deadline)
    m.read_conmon_pidfile()
    if not read_sync:
        return m
    m.sync_msg = m.read_sync(deadline)
    if m.sync_msg:
        key = "data" if m.style == "podman" else "pid"
        v = m.sync_msg.get(key)
        if isinstance(v, int) and v > 0:
            m.container_pid = v
    if start:
        if m.container_pid is None:
            raise AssertionError(f"monitor reported no container pid; cannot start\n{m.describe()}")
        m.start_container()
    return m


def run_exec(conmon, container, args, *, style="podman", workdir=None, terminal=None, stdin=False,
             timeout=None, detach=False, attach=True, log_path=None, argv=None, extra_args=(),
             env=None, env_extra=None, exit_command=None, session_id=None, preserve_fds=(),
             first_stdin=None, first_stdout=None, first_stderr=None, deadline=DEFAULT_TIMEOUT,
             wait=True, tracker=None, start_kind=None, attach_pipe=True):
    """Exec ``args`` in a running ``container`` (a Monitor from run_monitor) like Podman or CRI-O.

    ``start_kind`` replaces the start pipe's kind (``"stream"``: a byte stream,
    as a FIFO is); ``attach_pipe=False`` leaves ``_OCI_ATTACHPIPE`` out.

    Podman (``podman exec``, PODMAN.md 3.2/5.2): exec bundle
    ``<bundle>/<session>``, start byte, wait first, read ``{"data": 0}`` from
    the attach pipe, connect an AttachClient (``m.client``) unless ``detach``
    or ``attach=False``, second start byte, read the pid message. Later:
    ``m.wait_exit_file()`` (``<exec bundle>/exit/<cid>``), then
    ``m.read_sync()`` gives the exit code message.

    CRI-O (ExecSync, CRIO.md 2.2): legacy ``-e --sync``; waits for the monitor
    to exit (``deadline``) and reads ``{"exit_code": N}`` into ``m.sync_msg``;
    output is in ``m.log_path`` (pre-created empty, like CRI-O).
    """
    cid = container.cid
    workdir = os.path.abspath(str(workdir or container.workdir))
    if terminal is None:
        with open(os.path.join(container.bundle, "config.json")) as f:
            terminal = json.load(f)["process"].get("terminal", False)
    if style == "podman":
        session = session_id or new_cid()
        ebundle = _mk(os.path.join(container.bundle, session))
        exit_dir = _mk(os.path.join(ebundle, "exit"))
        spec = make_process_spec(os.path.join(ebundle, f"exec-process-{secrets.token_hex(4)}"),
                                 container.bundle, args, terminal=terminal)
        paths = {"cuuid": session, "exit_dir": exit_dir, "pidfile": os.path.join(ebundle, "exec_pid"),
                 "exec_spec": spec, "oci_log": os.path.join(ebundle, "oci-log"),
                 "attach_path": os.path.join(ebundle, "attach"), "workdir": workdir}
        if argv is None:
            argv = ["--api-version", "1", "-c", cid, "-u", session, "-r", container.runtime, "-b", ebundle,
                    "-p", paths["pidfile"], "-n", container.argv[container.argv.index("-n") + 1]
                    if "-n" in container.argv else f"test-{cid[:8]}",
                    "--exit-dir", exit_dir, "--full-attach", "-l", "none", "--log-level", "warning"]
            if container.runtime_root:
                argv += ["--runtime-arg", f"--root={container.runtime_root}"]
            argv += ["--runtime-arg", "--log-format=json", "--runtime-arg", "--log",
                     f"--runtime-arg={paths['oci_log']}"]
            if terminal:
                argv += ["-t"]
            if stdin:
                argv += ["-i"]
            if timeout is not None:
                argv += [f"--timeout={timeout}"]
            argv += ["-e", "--exec-attach", "--exec-process-spec", spec]
            if exit_command:
                argv += ["--exit-command", exit_command[0]]
                for x in exit_command[1:]:
                    argv += ["--exit-command-arg", x]
        base_env = podman_env()
        kinds = {"sync_kind": "seqpacket", "start_kind": "seqpacket",
                 "attach_kind": "seqpacket" if attach_pipe else None}
        cwd, setpgroup, bundle = ebundle, True, ebundle
    elif style == "crio":
        tmp = _mk(os.path.join(workdir, f"exec-{secrets.token_hex(4)}"))
        socket_dir = container.socket_dir or short_tmpdir("pcm-s-")
        own = [] if container.socket_dir else [socket_dir]
        pidfile = os.path.join(tmp, "pidfile")
        log_path = log_path or os.path.join(tmp, f"crio-log-{cid}")
        open(pidfile, "w").close()
        open(log_path, "w").close()
        spec = make_process_spec(os.path.join(tmp, "exec-process"), container.bundle, args,
                                 terminal=terminal)
        root = container.runtime_root or crio_runtime_root(container.runtime)
        paths = {"pidfile": pidfile, "log_path": log_path, "socket_dir": socket_dir, "exec_spec": spec,
                 "workdir": workdir}
        if argv is None:
            argv = ["-c", cid, "-n", f"test-{cid[:8]}", "-r", container.runtime, "-p", pidfile, "-e", "-l", log_path,
                    "--socket-dir-path", socket_dir, "--log-level", "info", "--sync",
                    "--log-global-size-max", "16777216"]
            if terminal:
                argv += ["-t"]
            if timeout:
                argv += ["-T", str(timeout)]
            argv += ["--exec-process-spec", spec, "--runtime-arg", f"--root={root}"]
        base_env = crio_env()
        kinds = {"sync_kind": "pipe", "start_kind": "stream"}
        cwd, setpgroup, bundle = workdir, False, None
    else:
        raise ValueError(style)
    if start_kind is not None:
        kinds["start_kind"] = start_kind
    if env is not None:
        base_env = dict(env)
    if env_extra:
        base_env.update(env_extra)
    m = Monitor(conmon, list(argv) + list(extra_args), base_env, cwd, style=style + "-exec", cid=cid,
                runtime=container.runtime, runtime_root=container.runtime_root, bundle=bundle,
                preserve_fds=preserve_fds, setpgroup=setpgroup, stdin=first_stdin, stdout=first_stdout,
                stderr=first_stderr, tracker=tracker, **kinds, **paths)
    if style == "crio":
        m._own_dirs += own
    m.sync_msg = None
    m.attach_msg = None
    m.client = None
    m.spawn()
    if not wait:
        return m
    m.write_start()
    if style == "crio":
        m.wait_first(deadline)
        m.sync_msg = m.read_sync(deadline)
        return m
    m.wait_first(deadline)
    m.attach_msg = m.attach_pipe.read(deadline)
    if m.attach_msg is None:  # the monitor failed before setting up attach
        m.sync_msg = m.read_sync(deadline)
        return m
    if attach and not detach:
        m.client = m.attach()
    m.write_start()
    m.sync_msg = m.read_sync(deadline)
    if m.sync_msg and isinstance(m.sync_msg.get("data"), int) and m.sync_msg["data"] > 0:
        m.container_pid = m.sync_msg["data"]
    return m


class Tracker:
    """Collects what tests create (container ids, monitors, dirs) and removes it all at teardown."""

    def __init__(self):
        self.containers = []  # (cid, runtime root, runtime)
        self.monitors = []
        self.dirs = []

    def add_container(self, cid, root=None, runtime=RUNC):
        self.containers.append((cid, root, runtime))
        return cid

    def add_monitor(self, m):
        self.monitors.append(m)
        return m

    def add_dir(self, d):
        self.dirs.append(d)
        return d

    def cleanup(self):
        """Delete every container by id, then close every monitor; returns a list of problems (empty if none)."""
        errors = []
        failed = [c for c in self.containers if not cleanup(c[0], root=c[1], runtime=c[2])]
        for m in reversed(self.monitors):
            try:
                m.close(delete=False)
            except Exception as e:  # noqa: BLE001 - teardown must go on
                errors.append(f"closing monitor {m.argv[:1]} {m.cid}: {e!r}")
        for cid, root, runtime in failed:
            if container_state(cid, root, runtime) is not None and not cleanup(cid, root=root, runtime=runtime):
                errors.append(f"{runtime} delete -f {cid} failed")
        for d in self.dirs:
            shutil.rmtree(d, ignore_errors=True)
        self.containers, self.monitors, self.dirs = [], [], []
        return errors


def read_attach_in_thread(m, timeout=60):
    """Attach to ``m`` and read in a thread until EOF (a client that stops reading holds the container up).

    Returns ``result(timeout)``: waits for the EOF, then gives the stdout bytes received.
    """
    client = m.attach()
    out = {}
    thread = threading.Thread(target=lambda: out.update(client.read_until_eof(timeout)), daemon=True)
    thread.start()

    def result(wait):
        thread.join(wait)
        assert not thread.is_alive(), "the attach connection did not end"
        return out.get(2, b"")
    return result
