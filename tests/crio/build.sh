#!/bin/bash
# Build crio and crictl with the `go` command from the Go module proxy, at
# pinned versions, into /var/cache/pyconmon-crio/<version>/ (kept between
# runs on one machine; a fresh CI machine builds them again).
#
# Usage: tests/crio/build.sh            (prints the two binaries' paths)
# Nothing of CRI-O's is copied into this repository: `go install` fetches the
# modules into the Go module cache.
set -euo pipefail
. "$(dirname "$0")/versions.sh"

GO_TOOLCHAIN=go1.26.8   # when the machine has no Go >= 1.26.3 of its own

go_ok() {  # $1 is a go command of version >= 1.26.3
    local v
    v=$("$1" env GOVERSION 2>/dev/null) || return 1
    v=${v#go}
    printf '%s\n%s\n' 1.26.3 "$v" | sort -C -V
}

# A Go >= 1.26.3: $GO, /usr/local/go (this project's machines), or the Go
# toolchain module golang.org/toolchain from the module proxy, fetched by
# Debian's own (older) Go and kept under the cache dir.
find_go() {
    local g
    for g in "${GO:-}" /usr/local/go/bin/go "$(command -v go || true)"; do
        if [ -n "$g" ] && [ -x "$g" ] && go_ok "$g"; then GO=$g; return 0; fi
    done
    local root=$PYCONMON_CRIO_CACHE/$GO_TOOLCHAIN
    if [ ! -x "$root/bin/go" ]; then
        command -v go >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q golang-go </dev/null >&2
        local dir
        dir=$(GOFLAGS=-modcacherw go mod download -json "golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-amd64" |
              sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
        [ -d "$dir" ] || { echo "build.sh: could not fetch the $GO_TOOLCHAIN toolchain module" >&2; exit 1; }
        rm -rf "$root.tmp"
        cp -a "$dir" "$root.tmp"
        chmod -R u+w "$root.tmp"
        chmod +x "$root.tmp"/bin/* "$root.tmp"/pkg/tool/*/*   # module zips keep no exec bits
        mv "$root.tmp" "$root"
    fi
    GO=$root/bin/go
    go_ok "$GO" || { echo "build.sh: $GO is not Go >= 1.26.3" >&2; exit 1; }
}
unset GOFLAGS                 # a -mod=... GOFLAGS breaks `go install pkg@version`
# go needs a cache and a module directory: under $HOME, or here where CI gives no HOME.
if [ -z "${HOME:-}" ]; then
    export GOPATH=${GOPATH:-/var/cache/pyconmon-crio/gopath} GOCACHE=${GOCACHE:-/var/cache/pyconmon-crio/gocache}
fi
export CGO_ENABLED=1 GOTOOLCHAIN=local
# Two shared cores: at most two compile jobs at a time.
export GOMAXPROCS=${GOMAXPROCS:-2}
GOBUILD_P=${GOBUILD_P:-2}

build_crio() {
    local out=$CRIO_CACHE
    [ -x "$out/crio" ] && return 0
    mkdir -p "$out"
    local start=$SECONDS
    # Built inside the module cache's copy of the module (`go build` of a
    # downloaded module): `go install ...@version` asks the proxy for the
    # module's version list to check deprecations, and the proxy here
    # answers 403 for github.com/cri-o/cri-o's list.
    local dir
    dir=$("$GO" mod download -json "github.com/cri-o/cri-o@$CRIO_VERSION" |
          sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -d "$dir" ] || { echo "go mod download github.com/cri-o/cri-o@$CRIO_VERSION gave no directory" >&2; exit 1; }
    mkdir -p "$out.tmp"
    # Minimal tags: no gpgme, btrfs, seccomp, apparmor or selinux C libraries.
    (cd "$dir" && "$GO" build -mod=readonly -p "$GOBUILD_P" -trimpath -tags "$CRIO_TAGS" \
        -ldflags "-s -w -X github.com/cri-o/cri-o/internal/version.buildCommit=$CRIO_VERSION" \
        -o "$out.tmp/crio" ./cmd/crio)
    mv "$out.tmp/crio" "$out/crio"
    rmdir "$out.tmp"
    echo "crio $CRIO_VERSION built in $((SECONDS - start)) s" >&2
    echo "$((SECONDS - start))" > "$out/build-seconds"
}

build_crictl() {
    local out=$CRICTL_CACHE
    [ -x "$out/crictl" ] && return 0
    mkdir -p "$out"
    local start=$SECONDS
    CGO_ENABLED=0 GOBIN="$out.tmp" "$GO" install -p "$GOBUILD_P" -trimpath \
        -ldflags "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION#v}" \
        "sigs.k8s.io/cri-tools/cmd/crictl@$CRICTL_VERSION"
    mv "$out.tmp/crictl" "$out/crictl"
    rmdir "$out.tmp"
    echo "crictl $CRICTL_VERSION built in $((SECONDS - start)) s" >&2
    echo "$((SECONDS - start))" > "$out/build-seconds"
}

# One build at a time (CI's setup and a test session may both ask).
mkdir -p "$PYCONMON_CRIO_CACHE"
exec 8>"$PYCONMON_CRIO_CACHE/build.lock"
flock 8
[ -x "$CRIO_CACHE/crio" ] && [ -x "$CRICTL_CACHE/crictl" ] || find_go
build_crictl
build_crio
echo "$CRIO_CACHE/crio"
echo "$CRICTL_CACHE/crictl"
