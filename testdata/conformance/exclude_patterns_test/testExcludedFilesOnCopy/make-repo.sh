#!/bin/sh
# How http/ was made (run from the case directory; needs git): the source
# tree of setup.sh committed and tagged 0.1. (BuildKit's test serves its
# repository at /.git; a path named .git cannot be committed, so here it is
# repo.git.)
. "$(dirname "$0")/../../lib/git-repo.sh"
mkrepo $W/r
( cd $W/r && sh -eu "$OLDPWD/setup.sh" && git add . && git commit -q -m 0.1 && git tag 0.1 )
serve $W/r repo.git
