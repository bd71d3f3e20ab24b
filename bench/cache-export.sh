#!/bin/sh
# The cost of `--cache-to type=registry` on a CI agent that imports and
# exports the same reference: a Dockerfile of eight steps (six of them
# writing 8 MB each), exported once, then
#   1. rebuilt on a fresh agent with nothing new: every step cached, the
#      export finds the reference holds it all already;
#   2. rebuilt after a change that only the last step reads.
# kiln's export is timed by its progress (`--progress rawjson`), medians of
# 5 fresh agents; buildah's is the difference between medians of builds
# with and without --cache-to. Prints the bytes kiln says it uploaded. Where buildah is
# installed, the same two cases run with `buildah build --layers
# --cache-from/--cache-to` (which pushes each layer as an image of the
# repository) and the ratios are printed.
#
# Usage: bench/cache-export.sh   (as root; needs docker-registry, busybox-static)
set -eu
. "$(dirname "$0")/lib/common.sh"
. bench/lib/registry.sh
trap 'stop_registries; rm -rf "$work"' EXIT
unset SOURCE_DATE_EPOCH

registry=$(start_registry)
mkdir -p "$work/base"
testdata/images/rootfs.sh busybox "$work/base/rootfs"
printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' > "$work/base/Dockerfile"
KILN_ROOT="$work/seed" "$kiln" build -t "$registry/base/busybox:1" --push "$work/base" > /dev/null 2>&1

mkdir -p "$work/app"
cd "$work/app"
echo 1 > last-input.txt
{
    echo "FROM $registry/base/busybox:1"
    for i in 1 2 3 4 5 6; do
        echo "RUN head -c 8000000 /dev/urandom > /layer-$i"
    done
    echo "COPY last-input.txt /last-input.txt"
    echo "RUN cat /last-input.txt > /last"
} > Dockerfile

cache="$registry/team/app:cache"
export_args="--cache-from $cache --cache-to type=registry,ref=$cache"
KILN_ROOT="$work/agent-a" "$kiln" build $export_args . > /dev/null 2>&1

# Agent stores start as copies of one that built nothing but pulled the base.
KILN_ROOT="$work/fresh" "$kiln" pull "$registry/base/busybox:1" > /dev/null 2>&1
agent() {
    rm -rf "$work/agent"
    cp -a "$work/fresh" "$work/agent"
}

uploaded() {
    grep -o 'exported the cache to [^"]*: [0-9]* record(s), [^"]* uploaded\|the cache at [^"]* is up to date' "$work/last.log" |
        sed -n 's/.*record(s), \(.*\) uploaded$/\1/p; s/.* is up to date$/0B/p' | tail -1
}

median() {
    echo "$@" | tr ' ' '\n' | sed '/^$/d' | sort -n | sed -n "$(( ($# + 1) / 2 ))p"
}

# kiln's export, as its progress times it (`--progress rawjson`: the
# seconds between the start and the end of the "exporting cache to" step),
# in milliseconds, from the last build's log.
export_time() {
    python3 -c '
import json, sys
start = end = None
for line in open(sys.argv[1]):
    line = line.strip()
    if not line.startswith("{"):
        continue
    event = json.loads(line)
    if event["event"] == "start" and event["name"].startswith("exporting cache to"):
        start, step = event["time"], event["id"]
    elif start is not None and event["id"] == step and event["event"] != "start":
        end = event["time"]
print(round((end - start) * 1000))
' "$work/last.log"
}

# Medians of 5 builds on fresh agents, `change` run before each: the
# export's time in $export, what the last one uploaded in $bytes.
rounds=5
export_rounds() {
    change=$1
    times=
    i=0
    while [ $i -lt $rounds ]; do
        $change $i
        agent
        KILN_ROOT="$work/agent" milliseconds "$kiln" build --progress rawjson $export_args . > /dev/null
        times="$times $(export_time)"
        bytes=$(uploaded)
        i=$((i + 1))
    done
    export=$(median $times)
}
unchanged() { :; }
# Each round changes the input of the last step again, so each export
# finds the reference one changed step behind.
changed() { echo "round $1" > last-input.txt; }

export_rounds unchanged
nothing_new=$export
nothing_new_bytes=$bytes
export_rounds changed
one_changed=$export
one_changed_bytes=$bytes

echo "kiln: export with nothing new: ${nothing_new} ms, ${nothing_new_bytes} uploaded"
echo "kiln: export after one changed step: ${one_changed} ms, ${one_changed_bytes} uploaded"

if command -v buildah > /dev/null 2>&1; then
    echo 1 > last-input.txt
    storage="$work/buildah"
    b() {
        buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs \
            build --layers --tls-verify=false "$@" .
    }
    bcache="$registry/team/buildah-cache"
    fresh_buildah() {
        buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs \
            rm --all > /dev/null 2>&1 || true
        buildah --root "$storage/root" --runroot "$storage/run" --storage-driver vfs \
            rmi --all --force > /dev/null 2>&1 || true
    }
    milliseconds b --cache-to "$bcache" > /dev/null
    buildah_rounds() {
        change=$1
        withouts=
        withs=
        i=0
        while [ $i -lt 3 ]; do
            $change $i
            fresh_buildah
            withouts="$withouts $(milliseconds b --cache-from "$bcache")"
            fresh_buildah
            withs="$withs $(milliseconds b --cache-from "$bcache" --cache-to "$bcache")"
            i=$((i + 1))
        done
    }
    buildah_rounds unchanged
    b_nothing_new=$(( $(median $withs) - $(median $withouts) ))
    buildah_rounds changed
    b_one_changed=$(( $(median $withs) - $(median $withouts) ))
    echo "buildah: export with nothing new: ${b_nothing_new} ms; after one changed step: ${b_one_changed} ms"
    echo "kiln over buildah: nothing new $(ratio "$nothing_new" "$b_nothing_new"), one changed $(ratio "$one_changed" "$b_one_changed")"
fi
