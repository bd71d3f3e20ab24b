# t.tar holds foo (content0), b.tar holds bar (content1)
mkdir archive
printf content0 > archive/foo
printf content1 > archive/bar
chmod 0644 archive/foo archive/bar
tar --owner=0 --group=0 --numeric-owner --format=ustar -C archive -cf t.tar foo
tar --owner=0 --group=0 --numeric-owner --format=ustar -C archive -cf b.tar bar
rm -r archive
