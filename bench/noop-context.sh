#!/bin/sh
# A no-op rebuild of a large context: `COPY . /ctx/` of 12,500, 25,000 and
# 50,000 files of 4 KB (100 to a directory), built once cold into a store of
# its own, then again with nothing changed. Beside kiln's time (the median of
# several runs) stands what walking and stat()ing the same tree costs
# (`find` printing each entry's inode, size and times): a no-op rebuild
# should cost little more than that, and grow linearly with the files. The
# two are timed in turns, $runs times each, and their medians shown. Peak
# RSS is kiln's, from /usr/bin/time, on one more no-op run.
#
# Usage: bench/noop-context.sh   (as root)
set -eu
. "$(dirname "$0")/lib/common.sh"
trap 'rm -rf "$work"' EXIT
unset SOURCE_DATE_EPOCH
runs=7

if [ ! -x /usr/bin/time ]; then
    echo "needs /usr/bin/time for the peak RSS: apt-get install time" >&2
    exit 1
fi

# Writes $2 files of 4 KB into $1, 100 to a directory, each its own bytes
# (a stretch of `seq`, so they compress as text does).
make_context() {
    dirs=$(( $2 / 100 ))
    i=0
    while [ $i -lt "$dirs" ]; do
        mkdir -p "$1/src/dir$i"
        seq $(( i * 60000 )) $(( i * 60000 + 59999 )) | head -c 409600 |
            split -b 4096 -d -a 2 - "$1/src/dir$i/file"
        i=$((i + 1))
    done
    printf 'FROM scratch\nCOPY . /ctx/\n' > "$1/Dockerfile"
}

# The median of a column of numbers.
median() {
    sort -n | sed -n "$(( (runs + 1) / 2 ))p"
}

walk() {
    find . -printf '%i %s %T@ %C@\n' > /dev/null
}

printf '%8s %10s %10s %8s %10s %10s\n' files cold_ms noop_ms walk_ms noop/walk peak_rss
for files in 12500 25000 50000; do
    context="$work/context-$files"
    make_context "$context" "$files"
    # A context is usually on disk long before it is built.
    sync
    export KILN_ROOT="$work/store-$files"
    cold=$(cd "$context" && milliseconds "$kiln" build -t bench .)
    # Taken in turns, so that what else runs on the machine slows both alike.
    i=0
    while [ $i -lt $runs ]; do
        (cd "$context" && milliseconds "$kiln" build -t bench .) >> "$work/noop"
        (cd "$context" && milliseconds walk) >> "$work/walk"
        i=$((i + 1))
    done
    noop=$(median < "$work/noop")
    walked=$(median < "$work/walk")
    rm "$work/noop" "$work/walk"
    (cd "$context" && /usr/bin/time -f %M -o "$work/rss" "$kiln" build -t bench . > /dev/null 2>&1)
    rss_mb=$(( $(tail -1 "$work/rss") / 1024 ))
    printf '%8s %10s %10s %8s %10s %8s MB\n' "$files" "$cold" "$noop" "$walked" \
        "$(ratio "$noop" "$walked")" "$rss_mb"
    rm -rf "$context" "$KILN_ROOT"
done
