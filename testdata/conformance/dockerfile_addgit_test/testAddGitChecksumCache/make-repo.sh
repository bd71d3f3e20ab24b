#!/bin/sh
# How http/ was made (run from the case directory; needs git). Fixed names and dates
# make the commit hashes the case.toml and Dockerfiles name.
. "$(dirname "$0")/../../lib/git-repo.sh"
mkrepo $W/r
for t in v0.0.1 v0.0.2; do ( cd $W/r && echo "foo of $t" > foo && git add foo && git commit -q -m $t && git tag $t ); done
serve $W/r repo.git
