# The build context is this tar archive (Dockerfile and foo at its root).
tar -cf context.tar -C tarball Dockerfile foo
