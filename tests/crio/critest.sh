#!/bin/bash
# critest, the CRI validation suite (cri-tools, same version as crictl),
# against tests/crio/setup.sh's CRI-O with one runtime handler.
#
#   tests/crio/critest.sh HANDLER [ginkgo/critest args...]
#
# Offline: no registry, so the specs that pull images (Image Manager, image
# consistency, and those needing nginx/httpd or cri-tools' own test images)
# are skipped; busybox is pre-loaded under critest's default image name. Pods
# that are not host-network get a bridge (CNI, no masquerading). Prints
# critest's summary; the JUnit report goes to $LOGDIR/critest-HANDLER/.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
. "$HERE/versions.sh"
eval "$(bash "$HERE/setup.sh" env)"
handler=${1:?usage: critest.sh HANDLER [args]}
shift

CRITEST=$PYCONMON_CRIO_CACHE/critest-$CRICTL_VERSION/critest
if [ ! -x "$CRITEST" ]; then
    # A test binary (`go test -c`), built inside the module cache's copy of cri-tools.
    GO=${GO:-/usr/local/go/bin/go}
    dir=$(env -u GOFLAGS "$GO" mod download -json "sigs.k8s.io/cri-tools@$CRICTL_VERSION" |
          sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    mkdir -p "$(dirname "$CRITEST")"
    (cd "$dir" && env -u GOFLAGS CGO_ENABLED=0 "$GO" test -c -p 2 -trimpath -o "$CRITEST.tmp" ./cmd/critest)
    mv "$CRITEST.tmp" "$CRITEST"
fi

mkdir -p "$STATE/cni"
cat > "$STATE/cni/10-pyconmon-bridge.conflist" <<EOT
{
  "cniVersion": "1.0.0",
  "name": "pyconmon-crio",
  "plugins": [
    { "type": "bridge", "bridge": "pcmcrio0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": { "type": "host-local", "dataDir": "$RUNDIR/cni-ipam",
                "ranges": [[{ "subnet": "10.86.0.0/16" }]], "routes": [{ "dst": "0.0.0.0/0" }] } }
  ]
}
EOT
# Leave CRI-O as we found it: stop it at the end if this script started it.
if [ -n "$(cat "$PIDFILE" 2>/dev/null)" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    was_running=1
else
    was_running=
fi
bash "$HERE/setup.sh" start
[ -n "$was_running" ] || trap 'bash "$HERE/setup.sh" stop' EXIT

report=$LOGDIR/critest-$handler
rm -rf "$report"; mkdir -p "$report"
cat > "$report/images.yaml" <<EOT
defaultTestContainerImage: registry.k8s.io/e2e-test-images/busybox:1.29-2
webServerTestImage: registry.k8s.io/e2e-test-images/nginx:1.14-2
EOT
cd "$report"
status=0
"$CRITEST" --runtime-endpoint "unix://$SOCK" --image-endpoint "unix://$SOCK" \
    --runtime-handler "$handler" --test-images-file "$report/images.yaml" --report-dir "$report" \
    --ginkgo.skip='Image Manager|Image Consistency|Image Identifier|public image|AppArmor|SELinux|port forward|portforward|Networking|Multiple Containers|nginx|Mount Propagation' \
    --ginkgo.no-color "$@" || status=$?
exit $status
