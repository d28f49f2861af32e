"""A busybox root file system and cheap OCI bundles that share it.

The root file system is built once (per machine, cached under /tmp and keyed
by the busybox binary) and mounted read-only by every bundle; a bundle is just
a directory holding ``config.json``.
"""

import copy
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile

from . import BUSYBOX, RUNC

PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
)
GROUP = "root:x:0:\ndaemon:x:1:\ntty:x:5:\nnogroup:x:65534:\n"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_READY = ".pyconmon-rootfs-ready"


_LAYOUT_VERSION = 1  # bump when make_rootfs changes what it builds


def _busybox_key(busybox):
    st = os.stat(busybox)
    h = hashlib.sha256(f"{_LAYOUT_VERSION}:{os.path.realpath(busybox)}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:12]


def default_rootfs_dir():
    """Where the shared root file system lives by default (under /tmp, short)."""
    return os.path.join(tempfile.gettempdir(), f"pyconmon-rootfs-{_busybox_key(BUSYBOX)}")


def make_rootfs(dir=None, busybox=BUSYBOX):
    """Build (once) a busybox root file system in ``dir`` and return its path.

    Idempotent and safe against concurrent callers (a lock file next to the
    directory); a finished tree is marked by a ready file, so a half-built
    tree from an interrupted run is rebuilt.
    """
    dir = os.path.abspath(dir or default_rootfs_dir())
    if os.path.exists(os.path.join(dir, _READY)):
        return dir
    os.makedirs(os.path.dirname(dir), exist_ok=True)
    with open(dir + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(os.path.join(dir, _READY)):
            return dir
        if os.path.exists(dir):
            shutil.rmtree(dir)
        tmp = dir + ".tmp"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        for sub in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "dev",
                    "sys", "root", "run", "var/tmp"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        os.chmod(os.path.join(tmp, "tmp"), 0o1777)
        os.chmod(os.path.join(tmp, "var/tmp"), 0o1777)
        shutil.copy2(busybox, os.path.join(tmp, "bin", "busybox"))
        os.chmod(os.path.join(tmp, "bin", "busybox"), 0o755)
        applets = subprocess.run([busybox, "--list"], check=True, capture_output=True,
                                 text=True).stdout.split()
        for applet in applets:
            link = os.path.join(tmp, "bin", applet)
            if applet == "busybox" or os.path.lexists(link):
                continue
            os.symlink("busybox", link)
        with open(os.path.join(tmp, "etc", "passwd"), "w") as f:
            f.write(PASSWD)
        with open(os.path.join(tmp, "etc", "group"), "w") as f:
            f.write(GROUP)
        with open(os.path.join(tmp, "etc", "hostname"), "w") as f:
            f.write("pyconmon-test\n")
        with open(os.path.join(tmp, "etc", "hosts"), "w") as f:
            f.write("127.0.0.1 localhost\n")
        open(os.path.join(tmp, "etc", "resolv.conf"), "w").close()
        open(os.path.join(tmp, _READY), "w").close()
        os.rename(tmp, dir)
    return dir


_BASE_SPEC = None


def base_spec():
    """The default spec of ``runc spec`` (generated once, deep-copied on use)."""
    global _BASE_SPEC
    if _BASE_SPEC is None:
        with tempfile.TemporaryDirectory(prefix="pcm-spec-") as d:
            subprocess.run([RUNC, "spec"], cwd=d, check=True, capture_output=True)
            with open(os.path.join(d, "config.json")) as f:
                _BASE_SPEC = json.load(f)
    return copy.deepcopy(_BASE_SPEC)


def _env_list(env):
    base = {"PATH": DEFAULT_PATH, "TERM": "xterm", "HOME": "/root"}
    if isinstance(env, dict):
        base.update(env)
    elif env:
        for item in env:
            k, _, v = item.partition("=")
            base[k] = v
    return [f"{k}={v}" for k, v in base.items()]


def make_spec(args, terminal=False, env=None, memory_limit=None, rootfs=None, cwd="/",
              readonly=True, network_ns=True, tmpfs_tmp=True, user=None, hostname=None,
              pids_limit=None, rlimits=None):
    """Return a runc config dict (see make_bundle for the arguments)."""
    spec = base_spec()
    proc = spec["process"]
    proc["args"] = list(args)
    proc["terminal"] = bool(terminal)
    proc["env"] = _env_list(env)
    proc["cwd"] = cwd
    if user is not None:
        uid, gid = user if isinstance(user, tuple) else (user, user)
        proc["user"] = {"uid": uid, "gid": gid}
    if rlimits is not None:
        proc["rlimits"] = [{"type": t, "hard": h, "soft": s} for t, (s, h) in rlimits.items()]
    spec["root"] = {"path": os.path.abspath(rootfs or make_rootfs()), "readonly": bool(readonly)}
    if hostname:
        spec["hostname"] = hostname
    linux = spec.setdefault("linux", {})
    if not network_ns:
        linux["namespaces"] = [n for n in linux.get("namespaces", []) if n["type"] != "network"]
    if tmpfs_tmp:
        spec.setdefault("mounts", []).append({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777", "size=65536k"],
        })
    resources = linux.setdefault("resources", {})
    if memory_limit is not None:
        mem = {"limit": int(memory_limit)}
        # Without swap accounting the limit alone is what triggers the OOM killer;
        # with it, cap swap too so the container can't escape into swap.
        if os.path.exists("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes"):
            mem["swap"] = int(memory_limit)
        resources["memory"] = mem
    if pids_limit is not None:
        resources["pids"] = {"limit": int(pids_limit)}
    return spec


def make_bundle(path, args, terminal=False, env=None, memory_limit=None, rootfs=None, cwd="/",
                readonly=True, network_ns=True, tmpfs_tmp=True, user=None, hostname=None,
                pids_limit=None, rlimits=None, edit=None):
    """Create an OCI bundle directory at ``path`` running ``args``; return its path.

    - ``terminal``: process.terminal (the monitor then needs ``-t``).
    - ``env``: dict or list of ``K=V`` added to PATH/TERM/HOME.
    - ``memory_limit``: bytes, linux.resources.memory.limit (OOM tests).
    - ``rootfs``: defaults to the shared busybox tree (``make_rootfs()``),
      used read-only; /tmp is a tmpfs unless ``tmpfs_tmp=False``.
    - ``network_ns=False`` shares the host network namespace.
    - ``user``: uid or (uid, gid); ``rlimits``: {"RLIMIT_NOFILE": (soft, hard)}.
    - ``edit``: optional callable(spec) to change anything else in place.
    """
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    spec = make_spec(args, terminal=terminal, env=env, memory_limit=memory_limit, rootfs=rootfs,
                     cwd=cwd, readonly=readonly, network_ns=network_ns, tmpfs_tmp=tmpfs_tmp,
                     user=user, hostname=hostname, pids_limit=pids_limit, rlimits=rlimits)
    if edit is not None:
        edit(spec)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(spec, f, indent=1)
    return path


def no_pid_ns(spec):
    """Bundle edit (``edit=no_pid_ns``): share the host pid namespace, so the container process is not
    a namespace init (an init ignores every signal it has no handler for) and can die of its own, or
    an unhandled, signal."""
    spec["linux"]["namespaces"] = [n for n in spec["linux"]["namespaces"] if n["type"] != "pid"]


def read_spec(bundle):
    with open(os.path.join(bundle, "config.json")) as f:
        return json.load(f)


def make_process_spec(path, bundle, args, terminal=None, env=None):
    """Write an exec process.json at ``path``: the bundle's process with new ``args``.

    ``terminal`` defaults to the container's own (what CRI-O does).
    """
    proc = read_spec(bundle)["process"]
    proc["args"] = list(args)
    if terminal is not None:
        proc["terminal"] = bool(terminal)
    if env is not None:
        proc["env"] = _env_list(env)
    proc.pop("consoleSize", None)
    with open(path, "w") as f:
        json.dump(proc, f)
    return path
