# agentping stands in for BuildKit's `ssh -T git@github.com` (openssh is not
# in the image, nor github.com on the network): a static program that asks
# the agent for its identities once per run.
gcc -static -O2 -o agentping "$(dirname "$0")/agentping.c"
# An ssh-agent in debug mode, outside the context, logging which of its
# connection slots each request comes on; it ends by itself after two
# minutes (the harness has no teardown).
timeout 120 ssh-agent -d -a ../agent.sock </dev/null >/dev/null 2>../agent.log &
i=0
while [ ! -S ../agent.sock ]; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "ssh-agent did not start" >&2; exit 1; }
    sleep 0.1
done
