# Pinned versions of what tests/crio builds (sourced by build.sh and setup.sh).
# Both are on the Go module proxy; CRI-O v1.36.3's go.mod asks for go 1.26.3.
CRIO_VERSION=v1.36.3
CRICTL_VERSION=v1.36.0
PYCONMON_CRIO_CACHE=${PYCONMON_CRIO_CACHE:-/var/cache/pyconmon-crio}
CRIO_CACHE=$PYCONMON_CRIO_CACHE/crio-$CRIO_VERSION
CRICTL_CACHE=$PYCONMON_CRIO_CACHE/crictl-$CRICTL_VERSION
CRIO_TAGS='containers_image_openpgp containers_image_ostree_stub exclude_graphdriver_btrfs exclude_graphdriver_devicemapper exclude_graphdriver_zfs'
