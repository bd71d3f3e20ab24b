#!/bin/sh
# How http/ was made (run from the case directory; needs git). Fixed names and dates
# make the commit hashes the case.toml and Dockerfiles name.
. "$(dirname "$0")/../../lib/git-repo.sh"
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
