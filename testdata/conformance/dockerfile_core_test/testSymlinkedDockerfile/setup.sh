ln -s Dockerfile.web Dockerfile
