"""The real CRI-O, driven through crictl, for the e2e tests.

tests/crio/setup.sh builds crio and crictl (cached), writes our pinns and
pause, imports the images, writes the configuration with two runtime handlers
(``pyconmon``: the monitor as ``make crio`` installs it into a private prefix;
``conmon``: Debian's C conmon) and starts and stops crio. This module only
calls that script and crictl, and reads what CRI-O and the monitors leave on
disk.

Facts learnt running it (CRI-O v1.36.3, crictl v1.36.0, runc 1.1.5, cgroup v1,
no systemd):

- A pod gets an infra (pause) container, run by the monitor, only when its
  PID namespace is POD (``"pid": 0``); with ``"pid": 1`` (CONTAINER) CRI-O
  spoofs the sandbox and no monitor runs for it (``drop_infra_ctr``).
- Host-network pods (``"network": 2``) need no CNI at all.
- CRI-O keeps each container's bundle (the monitor's ``-b`` and cwd, with
  ``conmon-pidfile``, ``ctl`` and ``oom``) in
  ``<runroot>/vfs-containers/<id>/userdata``, and the persist dir (the
  ``exit`` file, and CRI-O's ``state.json`` with the monitor's pid and start
  time) in ``<root>/vfs-containers/<id>/userdata``.
- ``crictl exec -s`` shows little of an ExecSync (see ``exec_sync``).
"""

import collections
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile

from . import REPO
from .harness import poll_until, read_pidfile, stat_after_comm

SETUP = os.path.join(REPO, "tests", "crio", "setup.sh")
HANDLERS = ("conmon", "pyconmon", "pyconmon-server")
SLOW = 120  # seconds: deadline for anything crictl asks CRI-O
_NS_POD, _NS_CONTAINER, _NS_NODE = 0, 1, 2


def setup_env():
    """setup.sh's paths (``setup.sh env``) as a dict."""
    r = subprocess.run(["bash", SETUP, "env"], capture_output=True, text=True, check=True, timeout=30)
    env = {}
    for line in r.stdout.splitlines():
        key, _, value = line.partition("=")
        env[key] = shlex.split(value)[0] if value else ""
    return env


def unavailable_reason():
    """Why the real CRI-O cannot run on this machine (a missing kernel or host feature), or None."""
    if not os.path.isdir("/sys/fs/cgroup/memory") and not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return "no cgroup memory controller mounted (/sys/fs/cgroup/memory)"
    if not os.path.exists("/proc/self/ns/uts"):
        return "kernel without namespaces (/proc/self/ns/uts)"
    return None


class Crio:
    """One CRI-O instance (setup.sh's), and a tracker of the pods tests create."""

    def __init__(self):
        self.env = setup_env()
        self.crictl_bin = self.env["CRICTL"]
        self.crictl_conf = self.env["CRICTL_CONF"]
        self.runroot = os.path.join(self.env["RUNDIR"], "storage")
        self.log_root = os.path.join(self.env["LOGDIR"], "tests")
        self.image = self.env["IMAGE_BUSYBOX"]
        self.monitor_path = {"pyconmon": self.env["PYCONMON_MONITOR"], "conmon": self.env["C_CONMON"],
                             "pyconmon-server": self.env["PYCONMON_SERVER_MONITOR"]}
        self.pods = []
        self._log_dirs = {}  # pod id -> its log directory (removed with the pod, as the kubelet does)
        self._n = 0
        self._tmp = tempfile.mkdtemp(prefix="pcm-crio-")

    # -- the daemon -------------------------------------------------------

    def _setup(self, action, timeout):
        r = subprocess.run(["bash", SETUP, action], capture_output=True, text=True, timeout=timeout, check=False)
        if r.returncode != 0:
            raise RuntimeError(f"tests/crio/setup.sh {action} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def start(self, timeout=3600):
        """Prepare (builds crio and crictl the first time: minutes) and start CRI-O."""
        self._setup("start", timeout)

    def stop(self):
        self._setup("stop", 120)

    def restart(self):
        self.stop()
        self.start(timeout=300)

    def crio_pid(self):
        return read_pidfile(self.env["PIDFILE"])

    def crio_pid_alive(self):
        pid = self.crio_pid()
        return pid is not None and proc_exe(pid) == self.env["CRIO"]

    def crio_log(self):
        with open(self.env["CRIO_LOG"], errors="replace") as f:
            return f.read()

    def crio_log_size(self):
        try:
            return os.path.getsize(self.env["CRIO_LOG"])
        except FileNotFoundError:
            return 0

    def crio_log_since(self, offset):
        with open(self.env["CRIO_LOG"], "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    # -- crictl -----------------------------------------------------------

    def crictl(self, *args, input=None, timeout=SLOW, check=True):
        """Run crictl; CompletedProcess with bytes stdout/stderr (check=True raises on failure)."""
        argv = [self.crictl_bin, "--config", self.crictl_conf, *args]
        r = subprocess.run(argv, input=input, capture_output=True, timeout=timeout, check=False)
        if check and r.returncode != 0:
            raise RuntimeError(f"{shlex.join(argv)} failed ({r.returncode}):\n"
                               f"{r.stderr.decode(errors='replace')}")
        return r

    def _json_file(self, obj):
        self._n += 1
        path = os.path.join(self._tmp, f"cfg{self._n}.json")
        with open(path, "w") as f:
            json.dump(obj, f)
        return path

    # -- pods and containers ----------------------------------------------

    def pod_config(self, name, *, infra):
        """A host-network pod; ``infra`` gives it a pause container (PID namespace POD)."""
        self._n += 1
        uid = f"pyconmon-{name}-{os.getpid()}-{self._n}"
        return {
            "metadata": {"name": name, "namespace": "pyconmon-e2e", "uid": uid, "attempt": 0},
            "log_directory": os.path.join(self.log_root, uid),
            "linux": {"security_context": {"namespace_options": {
                "network": _NS_NODE, "pid": _NS_POD if infra else _NS_CONTAINER, "ipc": _NS_POD}}},
        }

    def run_pod(self, handler, name="pod", *, infra=False):
        """``crictl runp --runtime HANDLER``: returns Pod (id, config, handler); removed by ``cleanup``."""
        cfg = self.pod_config(name, infra=infra)
        r = self.crictl("runp", "--runtime", handler, self._json_file(cfg))
        pod = Pod(r.stdout.decode().strip(), cfg, handler)
        self.pods.append(pod.id)
        self._log_dirs[pod.id] = cfg["log_directory"]
        return pod

    def container_config(self, name, command, *, attempt=0, stdin=False, stdin_once=False, tty=False,
                         memory_limit=None, annotations=None):
        cfg = {
            "metadata": {"name": name, "attempt": attempt},
            "image": {"image": self.image},
            "command": list(command),
            "envs": [{"key": "PATH", "value": "/bin:/sbin:/usr/bin:/usr/sbin"}],
            "log_path": f"{name}/{attempt}.log",
            "stdin": stdin, "stdin_once": stdin_once, "tty": tty,
            "linux": {},
        }
        if annotations:
            cfg["annotations"] = dict(annotations)
        if memory_limit:
            cfg["linux"]["resources"] = {"memory_limit_in_bytes": memory_limit,
                                         "memory_swap_limit_in_bytes": memory_limit}
        return cfg

    def create(self, pod, name, command, **kw):
        """``crictl create --no-pull``; returns the container id."""
        cfg = self.container_config(name, command, **kw)
        # The kubelet makes the container's log directory; CRI-O doesn't.
        os.makedirs(os.path.join(pod.config["log_directory"], name), exist_ok=True)
        # The pod's namespaces (a pod without infra container has no pod PID namespace to join).
        pod_ns = pod.config["linux"]["security_context"]["namespace_options"]
        cfg["linux"]["security_context"] = {"namespace_options": pod_ns}
        r = self.crictl("create", "--no-pull", pod.id, self._json_file(cfg), self._json_file(pod.config))
        return r.stdout.decode().strip()

    def run(self, pod, name, command, **kw):
        """create + start; returns the container id."""
        cid = self.create(pod, name, command, **kw)
        self.crictl("start", cid)
        return cid

    def inspect(self, cid):
        return json.loads(self.crictl("inspect", cid).stdout)

    def inspectp(self, pod_id):
        return json.loads(self.crictl("inspectp", pod_id).stdout)

    def status(self, cid):
        return self.inspect(cid)["status"]

    def wait_state(self, cid, state, timeout=60):
        """Poll ``crictl inspect`` until the container's state is ``state``; return its status."""
        def check():
            s = self.status(cid)
            return s if s["state"] == state else None

        return poll_until(check, timeout, interval=0.1, what=f"{cid[:12]} to be {state}")

    def exited(self, cid, timeout=60):
        """(exitCode, reason) once the container has exited."""
        s = self.wait_state(cid, "CONTAINER_EXITED", timeout)
        return s["exitCode"], s["reason"]

    def logs(self, cid, *args):
        """``crictl logs``: (stdout, stderr) bytes: stdout records go to stdout, stderr ones to stderr."""
        r = self.crictl("logs", *args, cid)
        return r.stdout, r.stderr

    def log_path(self, cid):
        return self.status(cid)["logPath"]

    def bundle(self, cid):
        """The monitor's bundle (``-b``, its cwd) and CRI-O's state dir for the container."""
        return os.path.join(self.runroot, "vfs-containers", cid, "userdata")

    def persist_dir(self, cid):
        """The monitor's ``--persist-dir``: CRI-O reads the exit code from ``exit`` there."""
        return os.path.join(self.env["STATE"], "storage", "vfs-containers", cid, "userdata")

    def monitor_pid(self, cid):
        return read_pidfile(os.path.join(self.bundle(cid), "conmon-pidfile"))

    def tracked_monitor(self, cid):
        """CRI-O's record of the monitor (``containerMonitorProcess`` in state.json): {pid, startTime}."""
        with open(os.path.join(self.persist_dir(cid), "state.json")) as f:
            return json.load(f).get("containerMonitorProcess")

    def exec_sync(self, cid, *command, timeout=None):
        """``crictl exec -s`` -> ExecResult(exit_code, output, message).

        What crictl v1.36 shows of an ExecSync: for exit code 0 it prints the
        command's stdout + "\\n" + its stderr + "\\n" (``output``) and exits 0;
        otherwise it exits 1 with "... exited with N: <stderr>" (``exit_code``
        N, ``message`` the stderr) or, for a gRPC error, the error text
        (``exit_code`` None).
        """
        args = ["exec", "-s"] + (["--timeout", str(timeout)] if timeout else []) + [cid, *command]
        r = self.crictl(*args, check=False, timeout=SLOW + (timeout or 0))
        if r.returncode == 0:
            return ExecResult(0, r.stdout, "")
        fatal = [x for x in r.stderr.decode(errors="replace").splitlines() if "level=fatal" in x]
        msg = fatal[-1] if fatal else r.stderr.decode(errors="replace")
        m = re.search(r'msg="(.*)"\s*$', msg)
        text = m.group(1).encode().decode("unicode_escape") if m else msg
        m = re.search(r" exited with (-?\d+): (.*)\Z", text, re.S)
        if m:
            return ExecResult(int(m.group(1)), r.stdout, m.group(2))
        return ExecResult(None, r.stdout, text)

    def remove_pod(self, pod_id):
        """Stop and remove a pod and its containers (by id); returns problems as strings."""
        problems = []
        # Containers first, at once: a pod stop waits out each one's grace period.
        r = self.crictl("ps", "-a", "-q", "--pod", pod_id, check=False)
        for cid in r.stdout.decode().split():
            self.crictl("stop", "-t", "0", cid, check=False)
        for args in (("stopp", pod_id), ("rmp", "-f", pod_id)):
            r = self.crictl(*args, check=False)
            if r.returncode != 0 and b"not found" not in r.stderr:
                problems.append(f"crictl {' '.join(args)}: {r.stderr.decode(errors='replace').strip()}")
        if pod_id in self.pods:
            self.pods.remove(pod_id)
        if not problems and pod_id in self._log_dirs:
            shutil.rmtree(self._log_dirs.pop(pod_id), ignore_errors=True)
        return problems

    def cleanup(self, keep=()):
        problems = []
        for pod_id in [p for p in self.pods if p not in keep]:
            problems += self.remove_pod(pod_id)
        return problems

    def close(self):
        """Remove every pod this object made and its own temporary files; returns problems."""
        problems = self.cleanup()
        shutil.rmtree(self._tmp, ignore_errors=True)
        return problems


ExecResult = collections.namedtuple("ExecResult", "exit_code output message")


class Pod:
    def __init__(self, pod_id, config, handler):
        self.id = pod_id
        self.config = config
        self.handler = handler


def proc_start_time(pid):
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None once the process is gone."""
    try:
        return int(stat_after_comm(pid)[19])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return None


def proc_exe(pid):
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def kill_quietly(pid, sig=signal.SIGKILL):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
