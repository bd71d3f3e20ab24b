# t.tar holds foo (content0, 0644, owned by root)
mkdir archive
printf content0 > archive/foo
chmod 0644 archive/foo
tar --owner=0 --group=0 --numeric-owner --format=ustar -C archive -cf t.tar foo
rm -r archive
