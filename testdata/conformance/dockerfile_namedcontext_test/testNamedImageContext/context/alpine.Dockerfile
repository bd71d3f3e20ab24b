FROM busybox
RUN echo 3.18.0 > /etc/alpine-release
