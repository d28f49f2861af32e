#!/bin/bash
# Demo: run a busybox container with runc under pyconmon, show its log and exit code.
#
#   bash demo/demo.sh                        # fresh Debian 12, as root
#   MONITOR=/usr/bin/conmon bash demo/demo.sh   # same, with another monitor
#
# Installs what is missing (runc busybox-static python3 make gcc python3-dev libc6-dev),
# builds the `conmon` launcher and installs it with the package into a
# temporary prefix, builds a busybox bundle, and plays the container manager
# (demo/run_monitor.py): sync/start pipes, start byte, {"data": pid},
# `runc start`, exit file. Expected: the two lines in the log and exit code 3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
top=$(dirname "$here")

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: run as root (runc needs it)" >&2
    exit 1
fi

# --- packages -----------------------------------------------------------------
missing=()
static_busybox() {
    local b
    for b in /bin/busybox /usr/bin/busybox; do
        if [ -x "$b" ] && ! ldd "$b" >/dev/null 2>&1; then echo "$b"; return 0; fi
    done
    return 1
}
command -v runc >/dev/null 2>&1 || [ -x /usr/sbin/runc ] || missing+=(runc)
static_busybox >/dev/null || missing+=(busybox-static)
[ -x /usr/bin/python3 ] || missing+=(python3)
if [ -z "${MONITOR:-}" ]; then
    command -v make >/dev/null 2>&1 || missing+=(make)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    [ -x /usr/bin/python3-config ] && [ -e /usr/include/python3.11/Python.h ] || missing+=(python3-dev)
    [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || [ -n "$(gcc -print-file-name=libc.a 2>/dev/null | grep /)" ] \
        || missing+=(libc6-dev)  # the static stub
fi
if [ ${#missing[@]} -gt 0 ]; then
    echo "+ apt-get install -y ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi

RUNC=${RUNC:-$(command -v runc || echo /usr/sbin/runc)}
BUSYBOX=$(static_busybox)
PYTHON=${PYTHON:-/usr/bin/python3}

work=$(mktemp -d /tmp/pyconmon-demo.XXXXXX)
cid=pyconmon-demo-$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
cleanup() {
    "$RUNC" delete -f "$cid" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# --- the monitor ----------------------------------------------------------------
if [ -z "${MONITOR:-}" ]; then
    echo "+ make install PREFIX=$work/prefix"
    make -s -C "$top" install PREFIX="$work/prefix" BUILDDIR="$work/build" >/dev/null
    MONITOR=$work/prefix/bin/conmon
fi
echo "+ $MONITOR --version"
"$MONITOR" --version

# --- the bundle -----------------------------------------------------------------
bundle=$work/bundle
mkdir -p "$bundle/rootfs/bin" "$bundle/rootfs/proc" "$bundle/rootfs/dev" "$bundle/rootfs/sys" "$bundle/rootfs/tmp"
cp "$BUSYBOX" "$bundle/rootfs/bin/busybox"
for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$bundle/rootfs/bin/$applet"
done
(cd "$bundle" && "$RUNC" spec)
"$PYTHON" - "$bundle/config.json" <<'PY'
import json, sys
path = sys.argv[1]
with open(path) as f:
    spec = json.load(f)
spec["process"]["terminal"] = False
spec["process"]["args"] = ["sh", "-c", "echo hello from pyconmon; echo to stderr >&2; exit 3"]
spec["process"]["env"] = ["PATH=/bin", "TERM=xterm"]
spec["hostname"] = "pyconmon-demo"
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
PY

# --- run it -----------------------------------------------------------------------
set +e
"$PYTHON" "$here/run_monitor.py" "$MONITOR" "$RUNC" "$bundle" "$cid"
rc=$?
set -e
echo "+ runc delete -f $cid"
"$RUNC" delete -f "$cid" 2>/dev/null || true
if [ "$rc" = 3 ]; then
    echo "demo: OK (exit code 3 as the container said)"
    exit 0
fi
echo "demo: FAILED (run_monitor.py exited $rc, expected 3)" >&2
exit 1
