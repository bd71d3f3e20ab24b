# The build context is this tar archive, of which only sub/dir is used; the
# Dockerfile comes from outside it.
tar -cf context.tar -C tarball sub/dir/foo
