# The Dockerfile is a symlink to Dockerfile.web, as in BuildKit's test.
ln -s Dockerfile.web Dockerfile
