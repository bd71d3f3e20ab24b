#!/bin/sh
# Push and pull of a 200 MB single-layer image against a local
# docker-registry, with the release kiln and, on a registry of its own,
# `skopeo copy` of the same image (from kiln's store, which is an OCI
# layout) in the same run. Prints MB/s and the ratio kiln/skopeo.
#
# Usage: bench/push-pull.sh   (as root; needs docker-registry and skopeo)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/registry.sh
trap 'stop_registries; rm -rf "$work"' EXIT

rate() {
    python3 -c "print(f'{$1 / 1e6 / ($2 / 1000):.1f}')"
}

# The image: one layer of 200 MB that does not compress, stored uncompressed
# so that the transfer, not compression, is measured.
mkdir -p "$work/context"
head -c 200000000 /dev/urandom > "$work/context/big.bin"
printf 'FROM scratch\nCOPY big.bin /big.bin\n' > "$work/context/Dockerfile"
export KILN_ROOT="$work/store"
"$kiln" build --compression uncompressed -t bench/big:1 "$work/context" > /dev/null 2>&1
size=$(du -sb "$work/store/blobs" | cut -f1)

registry=$(start_registry)
push=$(milliseconds "$kiln" push bench/big:1 "$registry/bench/big:1")
pull=$(KILN_ROOT="$work/pulled" milliseconds "$kiln" pull "$registry/bench/big:1")
echo "kiln   push $(rate "$size" "$push") MB/s (${push} ms), pull $(rate "$size" "$pull") MB/s (${pull} ms)"

if command -v skopeo > /dev/null; then
    other=$(start_registry)
    skopeo_push=$(milliseconds skopeo copy --dest-tls-verify=false \
        "oci:$work/store:docker.io/bench/big:1" "docker://$other/bench/big:1")
    skopeo_pull=$(milliseconds skopeo copy --src-tls-verify=false \
        "docker://$other/bench/big:1" "oci:$work/skopeo-pulled:big")
    echo "skopeo push $(rate "$size" "$skopeo_push") MB/s (${skopeo_push} ms), pull $(rate "$size" "$skopeo_pull") MB/s (${skopeo_pull} ms)"
    echo "kiln/skopeo time: push $(ratio "$push" "$skopeo_push"), pull $(ratio "$pull" "$skopeo_pull")"
fi
