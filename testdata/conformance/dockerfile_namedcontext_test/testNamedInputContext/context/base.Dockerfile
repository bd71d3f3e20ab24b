
FROM alpine
ENV FOO=bar
RUN echo first > /out
