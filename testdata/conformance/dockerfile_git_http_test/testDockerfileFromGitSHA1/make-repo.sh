#!/bin/sh
# How http/ was made (run from the case directory; needs git). Fixed names and dates
# make the commit hashes the case.toml and Dockerfiles name.
. "$(dirname "$0")/../../lib/git-repo.sh"
mkrepo $W/r
cd $W/r
printf '\nFROM busybox AS build\nRUN echo -n fromgit > foo\nFROM scratch\nCOPY --from=build foo bar\n' > Dockerfile
git add Dockerfile && git commit -q -m initial && git branch first
printf '\nCOPY --from=build foo bar2\n' >> Dockerfile
git add Dockerfile && git commit -q -m second
cd - >/dev/null
serve $W/r repo.git
