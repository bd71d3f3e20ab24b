# What the git cases' make-repo.sh scripts share (sourced, from the case
# directory): fixed names and dates, so that commits get the hashes the cases
# name; W, a scratch directory; mkrepo DIR [OBJECT-FORMAT]; serve REPO NAME,
# which writes the files a dumb-HTTP clone reads to http/NAME.
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
