#!/bin/sh
# How http/ was made (run from the case directory; needs git). Fixed names and dates
# make the commit hashes the case.toml and Dockerfiles name.
. "$(dirname "$0")/../../lib/git-repo.sh"
mkrepo $W/r
mkdir -p $W/r/src
printf '\nFROM busybox:latest\nRUN --network=none echo "git" > /foo\nCOPY myapp.Dockerfile /\n' > $W/r/src/myapp.Dockerfile
( cd $W/r && git add src/myapp.Dockerfile && git commit -q -m initial && git branch v1 )
serve $W/r repo.git
