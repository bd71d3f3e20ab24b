# Sourced by the bench scripts: a docker daemon of their own, when Debian's
# docker.io is installed and none is reachable. It listens on a private
# socket, keeps its data under $work/docker and touches neither iptables nor
# a bridge; builds use `--network none` or the host's network.
#
# After `start_dockerd`, $docker is the docker command to use (empty when no
# daemon is available); `stop_dockerd` ends it (call it from the EXIT trap).

docker=
dockerd_pid=

start_dockerd() {
    # Debian's CLI; a newer one in /usr/local/bin wants the buildx plugin.
    cli=/usr/bin/docker
    [ -x "$cli" ] || cli=$(command -v docker || true)
    [ -n "$cli" ] || return 0
    if "$cli" version > /dev/null 2>&1; then
        docker=$cli
        return 0
    fi
    command -v dockerd > /dev/null || return 0
    mkdir -p "$work/docker"
    dockerd --host "unix://$work/docker/docker.sock" --data-root "$work/docker/data" \
        --exec-root "$work/docker/exec" --pidfile "$work/docker/docker.pid" \
        --iptables=false --bridge=none > "$work/docker/log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST="unix://$work/docker/docker.sock"
    i=0
    while [ $i -lt 100 ]; do
        if "$cli" version > /dev/null 2>&1; then
            docker=$cli
            return 0
        fi
        sleep 0.2
        i=$((i + 1))
    done
    echo "dockerd did not start (see $work/docker/log); skipping docker" >&2
}

stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        wait "$dockerd_pid" 2>/dev/null || true
        umount -R "$work/docker/data" 2>/dev/null || true
    fi
}
