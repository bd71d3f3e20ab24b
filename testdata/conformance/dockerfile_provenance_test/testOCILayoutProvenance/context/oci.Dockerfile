
FROM scratch
COPY <<EOF /foo
foo
EOF
	