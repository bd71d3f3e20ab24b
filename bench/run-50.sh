#!/bin/sh
# Per-step cost of RUN: an image with 50 `RUN true` steps on busybox, built
# with the release kiln into a fresh store, against the same Dockerfile with
# one step; the difference over 49 is what each RUN step costs (sandbox set
# up and torn down, an empty change set detected). Where buildah (with runc,
# one layer per step as kiln makes) or a docker daemon is available, the
# same builds run with it too and the ratio kiln/other is printed.
#
# Usage: bench/run-50.sh   (as root)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/dockerd.sh
# buildah leaves its storage mounted.
trap 'stop_dockerd; umount -R "$work/buildah/overlay" 2>/dev/null || true; rm -rf "$work"' EXIT

testdata/images/rootfs.sh busybox "$work/base/rootfs"
printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' > "$work/base/Dockerfile"
mkdir "$work/one" "$work/fifty"
printf 'FROM localhost/busybox\nRUN true 0\n' > "$work/one/Dockerfile"
{
    echo 'FROM localhost/busybox'
    i=0
    while [ $i -lt 50 ]; do
        echo "RUN true $i"
        i=$((i + 1))
    done
} > "$work/fifty/Dockerfile"


# Prints "TOTAL PER_STEP" for a builder command (the context comes last).
measure() {
    set -e
    one=$(milliseconds "$@" "$work/one")
    fifty=$(milliseconds "$@" "$work/fifty")
    echo "$fifty $(python3 -c "print(round(($fifty - $one) / 49, 1))")"
}

export KILN_ROOT="$work/store"
"$kiln" build -t localhost/busybox "$work/base" > /dev/null 2>&1
read -r kiln_total kiln_step <<RESULT
$(measure "$kiln" build --no-cache -t bench)
RESULT
echo "kiln    50 x RUN true: ${kiln_total} ms, ${kiln_step} ms per step"

if command -v buildah > /dev/null; then
    buildah="buildah --root $work/buildah --runroot $work/buildah-run --storage-driver overlay"
    runc=$(command -v runc || echo /usr/sbin/runc)
    $buildah bud -t localhost/busybox "$work/base" > /dev/null 2>&1
    # --layers: a layer per step, as kiln makes; runc, as kiln uses.
    read -r other_total other_step <<RESULT
$(measure $buildah bud --layers --no-cache --isolation oci --runtime "$runc" -t bench)
RESULT
    echo "buildah 50 x RUN true: ${other_total} ms, ${other_step} ms per step; kiln/buildah = $(ratio "$kiln_step" "$other_step") per step"
fi
start_dockerd
if [ -n "$docker" ]; then
    "$kiln" save localhost/busybox -o "$work/busybox.tar" > /dev/null 2>&1
    $docker load -i "$work/busybox.tar" > /dev/null 2>&1
    read -r other_total other_step <<RESULT
$(DOCKER_BUILDKIT=1 measure $docker build --network none --no-cache -t bench)
RESULT
    echo "docker  50 x RUN true: ${other_total} ms, ${other_step} ms per step; kiln/docker = $(ratio "$kiln_step" "$other_step") per step"
fi
