#!/bin/sh
# A build agent with an empty store whose every step is a hit in another
# agent's registry cache, against pulling that agent's final image: the
# multi-stage compile of testdata/examples/gcc, whose gcc stage's base
# (about 130 MB) no step of the cached build runs on. Prints both times,
# their ratio, and the bytes each store holds afterwards.
#
# The base images (busybox, gcc:12, from this machine's packages) are pushed
# to a local docker-registry first, as an agent would find them there.
#
# Usage: bench/cache-from.sh   (as root; needs docker-registry)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/registry.sh
trap 'stop_registries; rm -rf "$work"' EXIT
unset SOURCE_DATE_EPOCH

registry=$(start_registry)
for kind in busybox gcc; do
    mkdir -p "$work/base-$kind"
    testdata/images/rootfs.sh "$kind" "$work/base-$kind/rootfs"
    printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' > "$work/base-$kind/Dockerfile"
done
KILN_ROOT="$work/seed" "$kiln" build -t "$registry/base/busybox:1" --push "$work/base-busybox" > /dev/null 2>&1
KILN_ROOT="$work/seed" "$kiln" build --compression zstd -t "$registry/base/gcc:12" --push "$work/base-gcc" > /dev/null 2>&1

cp -r testdata/examples/gcc "$work/compile"
sed -i -e "s|^FROM gcc:12|FROM $registry/base/gcc:12|" \
    -e "s|^FROM busybox|FROM $registry/base/busybox:1|" "$work/compile/Dockerfile"
cd "$work/compile"

# Agent A builds, pushes its image and exports every step's cache.
KILN_ROOT="$work/agent-a" "$kiln" build -t "$registry/team/app:1" --push \
    --cache-to "type=registry,ref=$registry/team/app:cache,mode=max" . > /dev/null 2>&1

rounds=5
cached_times=
pull_times=
i=0
while [ $i -lt $rounds ]; do
    rm -rf "$work/agent-b" "$work/agent-c"
    c=$(KILN_ROOT="$work/agent-b" milliseconds "$kiln" build -t app \
        --cache-from "$registry/team/app:cache" .)
    p=$(KILN_ROOT="$work/agent-c" milliseconds "$kiln" pull "$registry/team/app:1")
    cached_times="$cached_times $c"
    pull_times="$pull_times $p"
    i=$((i + 1))
done
median() {
    echo "$@" | tr ' ' '\n' | sed '/^$/d' | sort -n | sed -n "$(( ($# + 1) / 2 ))p"
}
c=$(median $cached_times)
p=$(median $pull_times)
echo "all-cached build with --cache-from: ${c} ms (runs:$cached_times), store $(du -sb "$work/agent-b/blobs" | cut -f1) bytes of blobs"
echo "pull of the final image:            ${p} ms (runs:$pull_times), store $(du -sb "$work/agent-c/blobs" | cut -f1) bytes of blobs"
echo "cached build over pull: $(ratio "$c" "$p")"
