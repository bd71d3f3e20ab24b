FROM scratch
COPY got/ /
