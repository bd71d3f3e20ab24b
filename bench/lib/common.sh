# Sourced first by the bench scripts: the repository as working directory,
# the release kiln as $kiln, an empty $work directory (each script removes
# it on exit), and timing helpers.

cd "$(dirname "$0")/.."
cargo build --release -q -p kiln
kiln=$PWD/target/release/kiln
work=$(mktemp -d)

# Milliseconds a command takes; its output goes to $work/last.log, shown
# when it fails.
milliseconds() {
    start=$(date +%s%N)
    "$@" > "$work/last.log" 2>&1 || { echo "failed: $*" >&2; tail -20 "$work/last.log" >&2; exit 1; }
    end=$(date +%s%N)
    echo $(( (end - start) / 1000000 ))
}

# $1 / $2, two decimals (kiln's time over another's).
ratio() {
    python3 -c "print(round($1 / max($2, 1), 2))"
}

# Writes 5,000 small files into $1 (50 directories of 100).
make_files() {
    i=0
    while [ $i -lt 50 ]; do
        mkdir -p "$1/dir$i"
        j=0
        while [ $j -lt 100 ]; do
            echo "file $i/$j" > "$1/dir$i/file$j.txt"
            j=$((j + 1))
        done
        i=$((i + 1))
    done
}
