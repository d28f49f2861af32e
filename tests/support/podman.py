"""An isolated Podman for end-to-end tests: private root, runroot, config and image.

Everything lives under one short directory in /tmp (socket paths stay short):

    <base>/root        --root (vfs graph root; bundles are <root>/vfs-containers/<id>/userdata)
    <base>/run         --runroot
    <base>/tmp         [engine] tmp_dir (exit dir <base>/tmp/exits, file locks)
    <base>/net         [network] network_config_dir
    <base>/conf/*.conf containers.conf, one per monitor path (conmon_path = [that path])
    <base>/storage.conf

What made Podman 4.3.1 work on this machine (root, cgroup v1, no systemd as
pid 1, hard RLIMIT_NOFILE 20000):

- ``default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]``: Podman's own
  default (nofile 1048576) is above the hard limit, and runc then fails with
  "error setting rlimit type 7: operation not permitted".
- ``cgroup_manager = "cgroupfs"`` (no systemd to talk to), ``events_logger =
  "file"`` (no journald for podman's events), ``netns = "none"`` (no network
  set-up needed; netavark is never run), ``lock_type = "file"`` (locks under
  our tmp_dir, not the machine-wide /dev/shm/libpod_lock).
- ``--storage-driver vfs`` (no overlay mounts to leak), with --root/--runroot
  as flags so that Podman copies them into the exit command (cleanup).
- No image can be pulled: the busybox rootfs is tarred and ``podman import``ed
  as ``localhost/busybox:latest``; ``busybox`` resolves to it.
- The exit command (``podman container cleanup``) gets no ``--conmon``: it
  sees our containers.conf only through CONTAINERS_CONF, which conmon hands
  down. So each monitor path has its own containers.conf with
  ``conmon_path = [path]``, and ``podman(..., conmon=path)`` uses both.
"""

import copy
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile

from . import LAUNCHER
from .bundle import make_rootfs
from .harness import poll_until

PODMAN = shutil.which("podman") or "/usr/bin/podman"
IMAGE = "localhost/busybox:latest"
SLOW = 60  # seconds: deadline for anything Podman does

_CONF = """\
[containers]
netns = "none"
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]
log_driver = "k8s-file"

[engine]
{conmon_path}cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
runtime = "runc"
tmp_dir = "{base}/tmp"
lock_type = "file"
{engine_extra}
[network]
network_config_dir = "{base}/net"
"""

_STORAGE = """\
[storage]
driver = "vfs"
graphroot = "{base}/root"
runroot = "{base}/run"
"""


def _toml_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Podman:
    """A private Podman. Call it: ``podman("run", "--rm", "busybox", "echo", "hi", conmon=PATH)``.

    ``conmon`` (default: the checkout launcher) is passed as ``--conmon`` and
    picks the containers.conf whose ``conmon_path`` is that path; pass
    ``conmon=None`` to give no ``--conmon`` flag (containers.conf alone).
    ``Podman(default_conmon=None)`` names no monitor anywhere: no flag, no
    ``conmon_path``, so Podman picks one by its own search order
    (/usr/libexec/podman/conmon first, then $PATH).
    """

    def __init__(self, base=None, default_conmon=LAUNCHER, engine_extra="", user=None):
        self.base = base or tempfile.mkdtemp(prefix="pcm-pd-", dir="/tmp")
        self.user = user  # a pwd entry: rootless Podman, every command run as that user (see rootless_env)
        self.default_conmon = default_conmon
        self.engine_extra = engine_extra
        self.root = os.path.join(self.base, "root")
        self.runroot = os.path.join(self.base, "run")
        self.tmpdir = os.path.join(self.base, "tmp")
        self.exit_dir = os.path.join(self.tmpdir, "exits")
        self.events_log = os.path.join(self.base, "events.log")
        self.storage_conf = os.path.join(self.base, "storage.conf")
        self._confs = {}
        self._verified = set()
        self.verify_monitor = True  # check `podman info` once per monitor path before using it
        self.image = IMAGE
        self.runtime = "runc"  # --runtime of every command; the exit command's cleanup gets it from Podman

    # -- set-up -------------------------------------------------------------

    def setup(self, rootfs=None):
        """Write the config files and import the busybox image. Returns self."""
        for d in ("root", "run", "tmp", "net", "conf"):
            os.makedirs(os.path.join(self.base, d), exist_ok=True)
        with open(self.storage_conf, "w") as f:
            f.write(_STORAGE.format(base=self.base))
        self.conf_for(self.default_conmon)
        rootfs = rootfs or make_rootfs()
        tar = os.path.join(self.base, "rootfs.tar")
        with tarfile.open(tar, "w") as t:
            for name in sorted(os.listdir(rootfs)):
                if not name.startswith(".pyconmon"):
                    t.add(os.path.join(rootfs, name), arcname=name)
        if self.user:  # the user's own store, configs and tar
            for d, dirs, files in os.walk(self.base):
                for name in [d] + [os.path.join(d, x) for x in dirs + files]:
                    os.chown(name, self.user.pw_uid, self.user.pw_gid)
        r = self("import", "--change", 'CMD ["/bin/sh"]', tar, self.image, conmon=None, timeout=120)
        os.unlink(tar)
        if r.returncode != 0:
            raise RuntimeError(f"podman import failed: {r.stderr}")
        return self

    def conf_for(self, conmon):
        """Path of the containers.conf that names ``conmon`` as the only conmon_path."""
        conmon = conmon or self.default_conmon
        if conmon not in self._confs:
            key = hashlib.sha256(conmon.encode()).hexdigest()[:10] if conmon else "search"
            path = os.path.join(self.base, "conf", f"containers-{key}.conf")
            line = f"conmon_path = [{_toml_str(conmon)}]\n" if conmon else ""
            with open(path, "w") as f:
                f.write(_CONF.format(conmon_path=line, base=self.base, engine_extra=self.engine_extra))
            self._confs[conmon] = path
        return self._confs[conmon]

    def with_runtime(self, runtime):
        """The same Podman (store, configs, verified monitors) passing ``--runtime`` ``runtime``
        (a name or path: runc, crun). Podman remembers each container's runtime, so later
        commands on a container use it whatever ``--runtime`` says."""
        view = copy.copy(self)
        view.runtime = os.path.basename(runtime)
        return view

    # -- running ------------------------------------------------------------

    def env(self, conmon=None, extra=None):
        """Environment for a podman command using ``conmon``'s containers.conf."""
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = self.conf_for(conmon)
        env["CONTAINERS_STORAGE_CONF"] = self.storage_conf
        for k in ("CONTAINERS_REGISTRIES_CONF", "CONTAINER_HOST", "CONTAINER_CONNECTION", "DOCKER_HOST"):
            env.pop(k, None)
        if self.user:
            env.update(rootless_env(self.user))
        if extra:
            env.update(extra)
        return env

    def _as_user(self):
        """subprocess keywords that run a command as ``self.user`` (nothing for root)."""
        if not self.user:
            return {}
        return {"user": self.user.pw_uid, "group": self.user.pw_gid, "extra_groups": []}

    def argv(self, *args, conmon=...):
        """Full podman argv: private storage flags, ``--conmon`` unless ``conmon=None``."""
        if conmon is ...:
            conmon = self.default_conmon
        a = [PODMAN, "--root", self.root, "--runroot", self.runroot, "--storage-driver", "vfs",
             "--runtime", self.runtime, "--cgroup-manager", "cgroupfs", "--events-backend", "file",
             "--tmpdir", self.tmpdir]
        if conmon:
            a += ["--conmon", conmon]
        return a + [str(x) for x in args]

    def __call__(self, *args, conmon=..., input=None, timeout=60, check=False, text=True, env=None,
                 cwd=None, stdin=None):
        """Run podman; returns CompletedProcess (stdout/stderr captured; ``text=False`` for bytes)."""
        if conmon is ...:
            conmon = self.default_conmon
        if conmon and self.verify_monitor and conmon not in self._verified:
            self.check_monitor(conmon)
        if isinstance(input, str) and not text:
            input = input.encode()
        kw = {"input": input} if input is not None else {"stdin": stdin if stdin is not None else subprocess.DEVNULL}
        return subprocess.run(self.argv(*args, conmon=conmon), env=self.env(conmon, env),
                              capture_output=True, text=text, timeout=timeout, check=check,
                              cwd=cwd or self.base, **kw, **self._as_user())

    def check_monitor(self, conmon):
        """Make sure Podman really uses ``conmon`` (it silently falls back to $PATH's conmon when the
        --version probe fails): ``podman info`` must report it. Raises RuntimeError otherwise."""
        self._verified.add(conmon)
        r = self("info", "--format", "{{.Host.Conmon.Path}}", conmon=conmon)
        if r.returncode != 0 or r.stdout.strip() != conmon:
            self._verified.discard(conmon)
            raise RuntimeError(f"podman does not use {conmon}: info says {r.stdout.strip()!r} "
                               f"(rc {r.returncode}): {r.stderr.strip()}")

    def popen(self, *args, conmon=..., env=None, **kw):
        """Start podman without waiting (e.g. an attached ``run`` you feed or signal)."""
        if conmon is ...:
            conmon = self.default_conmon
        if conmon and self.verify_monitor and conmon not in self._verified:
            self.check_monitor(conmon)
        kw.setdefault("cwd", self.base)
        kw.update(self._as_user())
        return subprocess.Popen(self.argv(*args, conmon=conmon), env=self.env(conmon, env), **kw)

    def inspect(self, cid, fmt, conmon=None):
        """``podman inspect --format FMT CID``, stripped stdout (raises on failure)."""
        r = self("inspect", "--format", fmt, cid, conmon=conmon, check=True)
        return r.stdout.strip()

    def bundle(self, cid):
        """The container's static dir (the bundle conmon gets as -b)."""
        return self.inspect(cid, "{{.StaticDir}}")

    def ids(self):
        """Full ids of every container in this private store."""
        r = self("ps", "-a", "--no-trunc", "--format", "{{.ID}}", conmon=None)
        return [x for x in r.stdout.split() if x]

    def rm(self, *cids):
        """Force-remove containers by id, without a stop timeout."""
        if cids:
            return self("rm", "-f", "-t", "0", *cids, conmon=None, timeout=120)
        return None

    def cleanup(self, keep=()):
        """Remove (by id) every container in the private store except ``keep``."""
        ids = [i for i in self.ids() if i not in set(keep)]
        self.rm(*ids)
        return ids

    def teardown(self):
        """Remove all containers, unmount anything left under base, delete base."""
        problems = []
        try:
            self.cleanup()
        except (OSError, subprocess.SubprocessError) as e:  # best effort at session end
            problems.append(f"podman cleanup: {e!r}")
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1] for line in f]
        for mp in sorted((m for m in mounts if m.startswith(self.base + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
            problems.append(f"had to unmount {mp}")
        shutil.rmtree(self.base, ignore_errors=True)
        return problems


def rootless_env(user):
    """What a login gives a user's Podman: HOME, USER, LOGNAME and XDG_RUNTIME_DIR=/run/user/UID
    (the caller creates that directory, 0700, owned by the user)."""
    return {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
            "XDG_RUNTIME_DIR": f"/run/user/{user.pw_uid}"}


def run_d(podman, conmon, *args):
    """``podman run -d ARGS``; returns the container id."""
    r = podman("run", "-d", *args, conmon=conmon, timeout=SLOW)
    assert r.returncode == 0, f"podman run -d exited {r.returncode}: {r.stderr}"  # (no assert rewriting here)
    cid = r.stdout.strip()
    assert len(cid) == 64, r.stdout
    return cid


def exit_code(podman, cid):
    """``"exited N"`` once Podman has processed the exit (the exit command's cleanup moves the
    container from "stopped" to "exited"); whatever inspect shows last if that never happens."""
    seen = []

    def done():
        seen.append(podman.inspect(cid, "{{.State.Status}} {{.State.ExitCode}}"))
        return seen[-1].startswith("exited ")

    try:
        poll_until(done, SLOW, interval=0.05, what=f"container {cid[:12]} to be exited")
    except TimeoutError:
        pass
    return seen[-1]
