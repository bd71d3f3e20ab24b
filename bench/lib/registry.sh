# Sourced by the bench scripts that need a registry: `start_registry`
# starts Debian's docker-registry on a free loopback port with storage of
# its own under $work and prints its address; `stop_registries` (call it
# from the EXIT trap) ends every one started.

registry_pids=

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

start_registry() {
    port=$(free_port)
    dir="$work/registry-$port"
    mkdir -p "$dir"
    cat > "$dir/config.yml" << CONFIG
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/data
http:
  addr: 127.0.0.1:$port
  secret: bench
CONFIG
    docker-registry serve "$dir/config.yml" > "$dir/log" 2>&1 &
    echo $! >> "$work/registry-pids"
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$port/v2/" > /dev/null 2>&1 && break
        sleep 0.1
    done
    echo "127.0.0.1:$port"
}

stop_registries() {
    [ -f "$work/registry-pids" ] || return 0
    while read -r pid; do kill "$pid" 2> /dev/null || true; done < "$work/registry-pids"
}
