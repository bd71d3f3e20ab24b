
FROM scratch
WORKDIR /test
ENV foo=bar
	