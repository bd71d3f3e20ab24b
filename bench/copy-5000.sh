#!/bin/sh
# COPY of 5,000 small files into an image, built with the release kiln into
# a fresh store (cold), then again into the same store (warm; kiln has no
# layer cache yet, so it does the same work). `cp -a` of the same files shows
# what creating them costs on this file system. Where buildah or a docker
# daemon is available, the same build runs with it too and the ratio
# kiln/other is printed.
#
# Usage: bench/copy-5000.sh   (as root)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/dockerd.sh
trap 'stop_dockerd; umount -R "$work/buildah/overlay" 2>/dev/null || true; rm -rf "$work"' EXIT

make_files "$work/context/files"
printf 'FROM scratch\nCOPY files/ /files/\n' > "$work/context/Dockerfile"
# A context is usually on disk long before it is built: flush it now, so
# that no run pays for writing it out.
sync


cold=$(KILN_ROOT="$work/store" milliseconds "$kiln" build -t bench "$work/context")
warm=$(KILN_ROOT="$work/store" milliseconds "$kiln" build -t bench "$work/context")
echo "kiln    COPY of 5,000 files: cold ${cold} ms, warm ${warm} ms"

# What creating the same files costs on this file system, whoever does it.
sync
copied=$(milliseconds cp -a "$work/context/files" "$work/cp-copy")
echo "cp -a   of the same files:   ${copied} ms; kiln/cp = $(ratio "$cold" "$copied")"

if command -v buildah > /dev/null; then
    # Its own fresh storage, with the overlay driver, as kiln gets a fresh store.
    other=$(milliseconds buildah --root "$work/buildah" --runroot "$work/buildah-run" \
        --storage-driver overlay bud --isolation chroot -t bench "$work/context")
    echo "buildah COPY of 5,000 files: ${other} ms; kiln/buildah = $(ratio "$cold" "$other")"
fi
start_dockerd
if [ -n "$docker" ]; then
    other=$(DOCKER_BUILDKIT=1 milliseconds $docker build -t bench "$work/context")
    echo "docker  COPY of 5,000 files: ${other} ms; kiln/docker = $(ratio "$cold" "$other")"
fi
