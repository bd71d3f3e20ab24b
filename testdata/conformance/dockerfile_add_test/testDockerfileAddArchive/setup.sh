# t.tar holds the file foo (content0, 0644); t.tar.gz is it gzipped.
mkdir archive
printf content0 > archive/foo
chmod 0644 archive/foo
tar --owner=0 --group=0 --numeric-owner --format=ustar -C archive -cf t.tar foo
gzip -n -c t.tar > t.tar.gz
rm -r archive
