#!/bin/sh
# How http/ was made (run from the case directory; needs git): a Dockerfile
# committed at 2023-11-14T22:15:01Z (1700000101), as in BuildKit's test. (It
# serves the repository at /.git; a path named .git cannot be committed, so
# here it is repo.git.)
. "$(dirname "$0")/../../lib/git-repo.sh"
export GIT_AUTHOR_DATE="2023-11-14T22:15:01Z" GIT_COMMITTER_DATE="2023-11-14T22:15:01Z"
mkrepo $W/r
( cd $W/r && printf 'FROM scratch\nCOPY Dockerfile /\n' > Dockerfile && git add Dockerfile && git commit -q -m msg )
serve $W/r repo.git
