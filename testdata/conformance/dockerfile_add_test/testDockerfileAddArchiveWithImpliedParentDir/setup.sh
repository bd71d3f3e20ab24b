# t.tar.gz holds etc/dnf/ and etc/dnf/dnf.conf, but no entry for etc/.
mkdir -p archive/etc/dnf
printf content0 > archive/etc/dnf/dnf.conf
chmod 0755 archive/etc/dnf
chmod 0644 archive/etc/dnf/dnf.conf
tar --owner=0 --group=0 --numeric-owner --format=ustar -C archive -czf t.tar.gz etc/dnf
rm -r archive
[ "$(tar -tzf t.tar.gz | head -1)" = etc/dnf/ ]
