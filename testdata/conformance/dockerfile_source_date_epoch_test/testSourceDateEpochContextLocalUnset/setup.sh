# Were the time of a local context's newest file taken as the epoch, the
# image would be dated 2001-01-01.
touch -d '2001-01-01 00:00:00' Dockerfile .
