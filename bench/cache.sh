#!/bin/sh
# The cache at work: each case of testdata/bench built cold (empty cache),
# warm (nothing changed) and with one input file changed, with the release
# kiln into a store of its own; where buildah or docker (a private daemon,
# bench/lib/dockerd.sh) is installed, the same builds with them in the same
# run, and kiln's time over theirs.
#
# Cases: compile (testdata/examples/gcc: a gcc stage and a busybox stage),
# copy-5000 (COPY of 5,000 files), run-200mb (a RUN writing 200 MB). The base images (busybox,
# gcc:12) come from this machine's packages (testdata/images/rootfs.sh) and
# are loaded into each builder before timing starts.
#
# Then random-200mb (a RUN writing 200 MB that does not compress) built cold
# and pushed to a local docker-registry by each builder: the layer export
# and the upload, as a CI job does them.
#
# Usage: bench/cache.sh   (as root)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/dockerd.sh
. bench/lib/registry.sh
trap 'stop_dockerd; stop_registries; umount -R "$work/buildah/overlay" 2>/dev/null || true; rm -rf "$work"' EXIT
export KILN_ROOT="$work/kiln"
unset SOURCE_DATE_EPOCH



# Base images, for every builder.
for kind in busybox gcc; do
    mkdir -p "$work/base-$kind"
    testdata/images/rootfs.sh "$kind" "$work/base-$kind/rootfs"
    printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' > "$work/base-$kind/Dockerfile"
done
"$kiln" build -t busybox "$work/base-busybox" > /dev/null 2>&1
"$kiln" build --compression zstd -t gcc:12 "$work/base-gcc" > /dev/null 2>&1

# Contexts: copies of testdata/bench, so that changing a file changes
# nothing in the repository.
cp -r testdata/bench "$work/cases"
cp -r testdata/examples/gcc "$work/cases/compile"
make_files "$work/cases/copy-5000/files"
sync

# The one file each case changes.
change() {
    case $1 in
        compile) echo "/* changed $2 */" >> "$work/cases/compile/hello.c" ;;
        copy-5000) echo "changed $2" > "$work/cases/copy-5000/files/dir17/file42.txt" ;;
        run-200mb) echo "$2" > "$work/cases/run-200mb/version.txt" ;;
    esac
}

buildah_cmd=
if command -v buildah > /dev/null; then
    runc=$(command -v runc || echo /usr/sbin/runc)
    buildah_cmd="buildah --root $work/buildah --runroot $work/buildah-run --storage-driver overlay"
    $buildah_cmd bud -t docker.io/library/busybox:latest "$work/base-busybox" > /dev/null 2>&1
    $buildah_cmd bud -t docker.io/library/gcc:12 "$work/base-gcc" > /dev/null 2>&1
fi
start_dockerd
if [ -n "$docker" ]; then
    DOCKER_BUILDKIT=1 $docker build -t busybox:latest "$work/base-busybox" > /dev/null 2>&1
    DOCKER_BUILDKIT=1 $docker build -t gcc:12 "$work/base-gcc" > /dev/null 2>&1
fi

sync
printf '%-10s %-6s %9s' case build kiln
[ -n "$buildah_cmd" ] && printf ' %9s %9s' buildah kiln/bud
[ -n "$docker" ] && printf ' %9s %9s' docker kiln/dkr
printf '\n'
for case in compile copy-5000 run-200mb; do
    context="$work/cases/$case"
    round=0
    for build in cold warm changed; do
        round=$((round + 1))
        [ "$build" = changed ] && change "$case" "$round"
        k=$(milliseconds "$kiln" build -t "bench-$case" "$context")
        printf '%-10s %-6s %7sms' "$case" "$build" "$k"
        if [ -n "$buildah_cmd" ]; then
            b=$(milliseconds $buildah_cmd bud --layers --pull-never --isolation oci --runtime "$runc" -t "bench-$case" "$context")
            printf ' %7sms %9s' "$b" "$(ratio "$k" "$b")"
        fi
        if [ -n "$docker" ]; then
            d=$(DOCKER_BUILDKIT=1 milliseconds $docker build --network none -t "bench-$case" "$context")
            printf ' %7sms %9s' "$d" "$(ratio "$k" "$d")"
        fi
        printf '\n'
    done
done

# Build and push. Each builder pushes to a repository of its own.
registry=$(start_registry)
context="$work/cases/random-200mb"
printf '\n%-14s %9s %9s %9s %9s\n' random-200mb build push total peak-rss
target="$registry/bench/random:kiln"
rss_log="$work/rss.log"
k_build=$(milliseconds /usr/bin/time -o "$rss_log" -f %M "$kiln" build -t "$target" "$context")
k_rss=$(tail -1 "$rss_log")
k_push=$(milliseconds "$kiln" push "$target")
k_total=$((k_build + k_push))
printf '%-14s %7sms %7sms %7sms %7sMB\n' kiln "$k_build" "$k_push" "$k_total" "$((k_rss / 1024))"
best=
if [ -n "$buildah_cmd" ]; then
    target="$registry/bench/random:buildah"
    b_build=$(milliseconds $buildah_cmd bud --layers --pull-never --isolation oci --runtime "$runc" -t "$target" "$context")
    b_push=$(milliseconds $buildah_cmd push --tls-verify=false "$target")
    b_total=$((b_build + b_push))
    printf '%-14s %7sms %7sms %7sms\n' buildah "$b_build" "$b_push" "$b_total"
    best=$b_total
fi
if [ -n "$docker" ]; then
    target="$registry/bench/random:docker"
    d_build=$(DOCKER_BUILDKIT=1 milliseconds $docker build --network none -t "$target" "$context")
    d_push=$(milliseconds $docker push "$target")
    d_total=$((d_build + d_push))
    printf '%-14s %7sms %7sms %7sms\n' docker "$d_build" "$d_push" "$d_total"
    if [ -z "$best" ] || [ "$d_total" -lt "$best" ]; then best=$d_total; fi
fi
[ -n "$best" ] && echo "kiln build+push over the best other's: $(ratio "$k_total" "$best")"
