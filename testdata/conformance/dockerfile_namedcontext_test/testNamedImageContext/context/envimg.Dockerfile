
FROM realalpine:latest
ENV PATH=/foobar:$PATH
ENV FOOBAR=foobar
