#!/bin/sh
# How http/ was made (run from the case directory; needs git). Fixed names and dates
# make the commit hashes the case.toml and Dockerfiles name.
set -eu
export GIT_AUTHOR_NAME=test GIT_AUTHOR_EMAIL=test GIT_COMMITTER_NAME=test GIT_COMMITTER_EMAIL=test
export GIT_AUTHOR_DATE="2015-10-21T07:28:00Z" GIT_COMMITTER_DATE="2015-10-21T07:28:00Z"
W=$(mktemp -d)
mkrepo() { mkdir -p "$1"; git -C "$1" init -q -b master ${2:+--object-format=$2}; }
# serve REPO NAME: the files a dumb-HTTP clone reads, at http/NAME
serve() {
  git -C "$1" repack -a -d -q; git -C "$1" pack-refs --all; git -C "$1" update-server-info
  rm -rf "http/$2"; mkdir -p "http/$2"; dest=$(pwd)/http/$2
  ( cd "$1/.git" && cp --parents HEAD info/refs objects/info/packs objects/pack/*.pack objects/pack/*.idx packed-refs "$dest/" )
}
mkrepo $W/r sha256
for t in v0.0.1 v0.0.2 v0.0.3; do ( cd $W/r && echo "foo of $t" > foo && git add foo && git commit -q -m $t && git tag $t ); done
serve $W/r repo.git
