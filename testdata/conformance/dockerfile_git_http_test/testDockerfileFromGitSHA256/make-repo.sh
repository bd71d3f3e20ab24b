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
cd $W/r
printf '\nFROM busybox AS build\nRUN echo -n fromgit > foo\nFROM scratch\nCOPY --from=build foo bar\n' > Dockerfile
git add Dockerfile && git commit -q -m initial && git branch first
printf '\nCOPY --from=build foo bar2\n' >> Dockerfile
git add Dockerfile && git commit -q -m second
cd - >/dev/null
serve $W/r repo.git
