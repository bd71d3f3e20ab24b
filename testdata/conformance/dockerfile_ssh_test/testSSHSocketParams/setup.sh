# An ssh-agent for --ssh, outside the context; it ends by itself after two
# minutes (the harness has no teardown).
timeout 120 ssh-agent -D -a ../agent.sock </dev/null >/dev/null 2>&1 &
i=0
while [ ! -S ../agent.sock ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "ssh-agent did not start" >&2; exit 1; }
    sleep 0.1
done
ssh-keygen -q -t ed25519 -N '' -f ../key
SSH_AUTH_SOCK=../agent.sock ssh-add -q ../key
