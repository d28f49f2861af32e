#!/bin/bash
# The real CRI-O for pyconmon's e2e tests: offline, cgroupfs, no systemd, vfs
# storage, everything in private directories (no clash with the Podman tests,
# a system CRI-O or another checkout's tests: /var/lib/pyconmon-crio/KEY,
# /run/pyconmon-crio/KEY, /var/log/pyconmon-crio/KEY, KEY a hash of the
# checkout's path; `setup.sh env` prints them), two runtime handlers:
#   pyconmon  monitor_path = $PYCONMON_CRIO_PREFIX/libexec/crio/conmon
#             (where `make crio ENTRY=classic PREFIX=$PYCONMON_CRIO_PREFIX` installs it)
#   pyconmon-server  the same in server mode (`make crio ENTRY=stub`, mode "always")
#   conmon    monitor_path = /usr/bin/conmon (Debian's C conmon, the reference)
#
#   tests/crio/setup.sh [prepare]  apt packages, crio/crictl (built once, see
#                                  build.sh), our pinns and pause, the busybox
#                                  and pause images, the configuration,
#                                  `make crio` into the private prefix
#   tests/crio/setup.sh start      start CRI-O (prepares first); waits for its socket
#   tests/crio/setup.sh stop       SIGTERM CRI-O, wait for it to exit
#   tests/crio/setup.sh env        print shell assignments of the paths below
#
# Every step is idempotent. The tests (tests/support/crio.py) call it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
. "$HERE/versions.sh"

# One CRI-O per checkout (several worktrees may test at once): the
# directories are keyed by a hash of the checkout's path.
KEY=$(printf %s "$REPO" | sha256sum | cut -c1-8)
STATE=${PYCONMON_CRIO_STATE:-/var/lib/pyconmon-crio/$KEY}
RUNDIR=${PYCONMON_CRIO_RUN:-/run/pyconmon-crio/$KEY}
LOGDIR=${PYCONMON_CRIO_LOGS:-/var/log/pyconmon-crio/$KEY}
PREFIX=${PYCONMON_CRIO_PREFIX:-$STATE/prefix}
CONF=$STATE/etc/crio.conf
CONF_DIR=$STATE/etc/crio.conf.d
CRICTL_CONF=$STATE/etc/crictl.yaml
SOCK=$RUNDIR/crio.sock
PIDFILE=$RUNDIR/crio.pid
CRIO_LOG=$LOGDIR/crio.log
CRIO=$CRIO_CACHE/crio
CRICTL=$CRICTL_CACHE/crictl
PYCONMON_MONITOR=$PREFIX/libexec/crio/conmon
# Server mode (README "Server mode"): the stub as conmon, its mode file saying
# "always"; CRI-O's exec probes (--sync) still get the classic monitor.
SERVER_PREFIX=$STATE/prefix-server
SERVER_MODE_FILE=$STATE/server-mode
PYCONMON_SERVER_MONITOR=$SERVER_PREFIX/libexec/crio/conmon
C_CONMON=/usr/bin/conmon
RUNC=$(command -v runc || echo /usr/sbin/runc)
# Without CAP_SYS_RESOURCE in the bounding set (a host limit) runc cannot give
# the pause container the oom_score_adj -998 that CRI-O asks for; the
# handlers then use runc through tests/crio/runc-oom-adj-shim.
if (( (0x$(sed -n 's/^CapBnd:[[:space:]]*//p' /proc/self/status) >> 24) & 1 )); then
    RUNTIME_PATH=$RUNC
else
    RUNTIME_PATH=$STATE/bin/runc-oom-adj-shim
fi
IMAGE_BUSYBOX=localhost/busybox:latest
IMAGE_PAUSE=localhost/pause:latest
IMAGE_CRITEST=registry.k8s.io/e2e-test-images/busybox:1.29-2

# Environment of crio (and of the podman import): private registries, storage
# and containers.conf files instead of /etc/containers.
crio_env() {
    export CONTAINERS_REGISTRIES_CONF=$STATE/etc/registries.conf
    export CONTAINERS_STORAGE_CONF=$STATE/etc/storage.conf
    export CONTAINERS_CONF=$STATE/etc/containers.conf
}

print_env() {
    local v
    for v in KEY STATE RUNDIR LOGDIR PREFIX CONF CONF_DIR CRICTL_CONF SOCK PIDFILE CRIO_LOG CRIO CRICTL \
             PYCONMON_MONITOR PYCONMON_SERVER_MONITOR C_CONMON RUNC RUNTIME_PATH IMAGE_BUSYBOX IMAGE_PAUSE CRIO_VERSION CRICTL_VERSION; do
        printf '%s=%q\n' "$v" "${!v}"
    done
}

install_packages() {
    # gcc/libc6-dev: crio's cgo parts and our static pause; runc/conmon: the
    # runtime and the reference monitor; busybox-static: the image; podman:
    # imports the images; make/python3-dev: `make crio`.
    local pkgs=(gcc libc6-dev make pkg-config runc conmon busybox-static podman python3-dev libpython3.11-dev)
    local missing=() p
    for p in "${pkgs[@]}"; do
        dpkg-query -W -f '${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null >&2 || {
            apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" </dev/null >&2; }
    fi
}

build_helpers() {
    # Our pinns and pause (tests/crio/*.c), rebuilt when their source changes.
    mkdir -p "$STATE/bin"
    local src=$HERE/pinns.c out=$STATE/bin/pinns
    if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
        gcc -O2 -Wall -Wextra -Werror -o "$out.tmp" "$src" && mv "$out.tmp" "$out"
    fi
    sed "s|^RUNC=.*|RUNC=$RUNC|" "$HERE/runc-oom-adj-shim" > "$STATE/bin/runc-oom-adj-shim.tmp"
    chmod 755 "$STATE/bin/runc-oom-adj-shim.tmp"
    mv "$STATE/bin/runc-oom-adj-shim.tmp" "$STATE/bin/runc-oom-adj-shim"
    src=$HERE/pause.c out=$STATE/bin/pause
    if [ ! -x "$out" ] || [ "$src" -nt "$out" ]; then
        gcc -static -Os -Wall -Wextra -Werror -o "$out.tmp" "$src" && strip "$out.tmp" && mv "$out.tmp" "$out"
    fi
}

write_config() {
    mkdir -p "$STATE/etc" "$CONF_DIR" "$STATE/hooks.d" "$STATE/cni" "$LOGDIR/pods" "$RUNDIR"
    cat > "$STATE/etc/registries.conf" <<EOT
# pyconmon's CRI-O tests: no registry at all (images are imported).
unqualified-search-registries = []
EOT
    cat > "$STATE/etc/policy.json" <<EOT
{ "default": [ { "type": "insecureAcceptAnything" } ] }
EOT
    cat > "$STATE/etc/storage.conf" <<EOT
[storage]
driver = "vfs"
graphroot = "$STATE/storage"
runroot = "$RUNDIR/storage"
EOT
    # Only for the podman import: file locks and tmp under our directories.
    cat > "$STATE/etc/containers.conf" <<EOT
[engine]
cgroup_manager = "cgroupfs"
events_logger = "none"
lock_type = "file"
tmp_dir = "$RUNDIR/podman-tmp"
EOT
    cat > "$CRICTL_CONF" <<EOT
runtime-endpoint: unix://$SOCK
image-endpoint: unix://$SOCK
timeout: 120
pull-image-on-create: false
disable-pull-on-run: true
EOT
    cat > "$CONF.tmp" <<EOT
# Written by tests/crio/setup.sh: CRI-O $CRIO_VERSION for pyconmon's e2e tests.
[crio]
root = "$STATE/storage"
runroot = "$RUNDIR/storage"
storage_driver = "vfs"
storage_option = []
log_dir = "$LOGDIR/pods"
version_file = "$RUNDIR/version"
version_file_persist = "$STATE/version"
clean_shutdown_file = "$STATE/clean.shutdown"
# After an unclean shutdown the repair may wipe the store (imported images too).
internal_repair = false
internal_wipe = false

[crio.api]
listen = "$SOCK"
stream_address = "127.0.0.1"
stream_port = "0"

[crio.runtime]
default_runtime = "pyconmon"
cgroup_manager = "cgroupfs"
log_level = "info"
pinns_path = "$STATE/bin/pinns"
namespaces_dir = "$RUNDIR/ns"
drop_infra_ctr = true
selinux = false
seccomp_profile = ""
apparmor_profile = "unconfined"
# Without it crio refuses to start when neither iptables nor nft is usable.
disable_hostport_mapping = true
enable_criu_support = false
log_size_max = -1
container_exits_dir = "$RUNDIR/exits"
container_attach_socket_dir = "$RUNDIR"
hooks_dir = ["$STATE/hooks.d"]
default_mounts_file = ""

[crio.runtime.runtimes.pyconmon]
runtime_path = "$RUNTIME_PATH"
runtime_type = "oci"
runtime_root = "$RUNDIR/runc"
monitor_path = "$PYCONMON_MONITOR"
monitor_cgroup = "pod"
monitor_env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

[crio.runtime.runtimes.pyconmon-server]
runtime_path = "$RUNTIME_PATH"
runtime_type = "oci"
runtime_root = "$RUNDIR/runc"
monitor_path = "$PYCONMON_SERVER_MONITOR"
monitor_cgroup = "pod"
monitor_env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

[crio.runtime.runtimes.conmon]
runtime_path = "$RUNTIME_PATH"
runtime_type = "oci"
runtime_root = "$RUNDIR/runc"
monitor_path = "$C_CONMON"
monitor_cgroup = "pod"
monitor_env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]

[crio.image]
pause_image = "$IMAGE_PAUSE"
pause_command = "/pause"
signature_policy = "$STATE/etc/policy.json"
short_name_mode = "enforcing"

[crio.network]
network_dir = "$STATE/cni"
plugin_dirs = ["/usr/lib/cni"]

[crio.metrics]
enable_metrics = false

[crio.tracing]
enable_tracing = false

[crio.nri]
enable_nri = false
EOT
    mv "$CONF.tmp" "$CONF"
}

install_monitor() {
    # `make crio` into the private prefix the pyconmon handler points at; a
    # private BUILDDIR so that the checkout's build/ is left alone.
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u DESTDIR \
        make -s -C "$REPO" BUILDDIR="$STATE/build" PREFIX="$PREFIX" ENTRY=classic crio >&2
    echo always > "$SERVER_MODE_FILE"
    env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL -u DESTDIR \
        make -s -C "$REPO" BUILDDIR="$STATE/build-server" PREFIX="$SERVER_PREFIX" ENTRY=stub \
        PYCONMON_MODE_FILE="$SERVER_MODE_FILE" all crio >&2
}

import_images() {
    # Imported before crio starts (podman 4.3's storage library writes the
    # store; crio only reads what is there). Re-done when the content changes.
    local key
    key=$({ echo "$IMAGE_BUSYBOX $IMAGE_PAUSE $IMAGE_CRITEST"; cat /bin/busybox "$STATE/bin/pause"; } | sha256sum | cut -c1-16)
    [ "$(cat "$STATE/images.key" 2>/dev/null)" = "$key" ] && return 0
    crio_env
    local w=$STATE/images.tmp
    rm -rf "$w"; mkdir -p "$w/busybox" "$w/pause"
    local r=$w/busybox d
    for d in bin sbin usr/bin usr/sbin etc proc sys dev tmp var/tmp run root; do mkdir -p "$r/$d"; done
    chmod 1777 "$r/tmp" "$r/var/tmp"
    cp /bin/busybox "$r/bin/busybox"
    for d in $("$r/bin/busybox" --list); do [ "$d" = busybox ] || ln -sf busybox "$r/bin/$d"; done
    printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$r/etc/passwd"
    printf 'root:x:0:\nnogroup:x:65534:\n' > "$r/etc/group"
    tar --numeric-owner -C "$r" -cf "$w/busybox.tar" .
    cp "$STATE/bin/pause" "$w/pause/pause"
    tar --numeric-owner -C "$w/pause" -cf "$w/pause.tar" .
    local podman=(podman --root "$STATE/storage" --runroot "$RUNDIR/storage" --storage-driver vfs)
    "${podman[@]}" rmi -f "$IMAGE_BUSYBOX" "$IMAGE_PAUSE" "$IMAGE_CRITEST" >/dev/null 2>&1 || true
    "${podman[@]}" import --change 'ENV PATH=/bin:/sbin:/usr/bin:/usr/sbin' --change 'CMD ["/bin/sh"]' \
        "$w/busybox.tar" "$IMAGE_BUSYBOX" >&2
    "${podman[@]}" import --change 'ENTRYPOINT ["/pause"]' "$w/pause.tar" "$IMAGE_PAUSE" >&2
    # critest's default image name (tests/crio/critest.sh): busybox again, no registry needed.
    "${podman[@]}" tag "$IMAGE_BUSYBOX" "$IMAGE_CRITEST" >&2
    rm -rf "$w"
    echo "$key" > "$STATE/images.key"
}

running_pid() {
    local pid
    pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" = "$CRIO" ] || return 1
    echo "$pid"
}

prepare() {
    exec 9>"/run/pyconmon-crio-setup.lock"
    flock 9
    install_packages
    "$HERE/build.sh" >/dev/null
    build_helpers
    write_config
    install_monitor
    if ! running_pid >/dev/null; then
        import_images
    fi
    flock -u 9
}

start() {
    prepare
    if running_pid >/dev/null; then
        return 0
    fi
    crio_env
    mkdir -p "$LOGDIR" "$RUNDIR"
    # Own session: crio survives the caller's terminal and process group.
    setsid "$CRIO" --config "$CONF" --config-dir "$CONF_DIR" >>"$CRIO_LOG" 2>&1 </dev/null &
    echo $! > "$PIDFILE"
    local deadline=$((SECONDS + 60))
    until "$CRICTL" --config "$CRICTL_CONF" info >/dev/null 2>&1; do
        if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
            echo "setup.sh: crio exited; the end of $CRIO_LOG:" >&2
            tail -20 "$CRIO_LOG" >&2
            exit 1
        fi
        if [ $SECONDS -ge $deadline ]; then
            echo "setup.sh: crio did not answer on $SOCK within 60 s" >&2
            exit 1
        fi
        sleep 0.2
    done
}

stop() {
    local pid
    pid=$(running_pid) || return 0
    kill -TERM "$pid"
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            echo "setup.sh: crio ($pid) still running 60 s after SIGTERM" >&2
            exit 1
        fi
        sleep 0.1
    done
    rm -f "$PIDFILE"
}

case "${1:-prepare}" in
prepare) prepare ;;
start) start ;;
stop) stop ;;
env) print_env ;;
*) echo "usage: $0 [prepare|start|stop|env]" >&2; exit 2 ;;
esac
