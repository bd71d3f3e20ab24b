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
mkrepo $W/submod
( cd $W/submod && echo 123 > file && git add file && git commit -q -m initial )
serve $W/submod submod.git
mkrepo $W/r
cd $W/r
echo base > foo
printf '\nFROM scratch AS withgit\nCOPY .git/HEAD out\nFROM scratch as withsubmod\nCOPY submod/file out\nFROM scratch\nCOPY foo out\n' > Dockerfile
git -c protocol.file.allow=always submodule add -q $W/submod submod
git config -f .gitmodules submodule.submod.url ../submod.git
git add .gitmodules Dockerfile foo submod && git commit -q -m initial && git tag v0.0.1 && git branch base
echo feature > foo && mkdir sub && echo subfeature > sub/foo && cp Dockerfile sub/ && git add foo sub && git commit -q -m feature && git branch feature
git checkout -q -B master base && echo v0.0.2 > foo && git add foo && git commit -q -m v0.0.2 && git tag v0.0.2
echo latest > foo && git add foo && git commit -q -m latest && git tag latest
cd - >/dev/null
serve $W/r repo.git
