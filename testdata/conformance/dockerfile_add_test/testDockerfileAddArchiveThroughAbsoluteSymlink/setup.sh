# rootfs.tar: run/, var/ and the symlink var/run -> /run (absolute).
mkdir -p rootfs/run rootfs/var
chmod 0755 rootfs/run rootfs/var
ln -s /run rootfs/var/run
tar --owner=0 --group=0 --numeric-owner --format=ustar -C rootfs -cf rootfs.tar run var
# payload.tar: var/run/act/... with each directory given, but no entry for
# var/ or var/run itself, a file HEAD and a hard link HEAD.link to it.
mkdir -p payload/var/run/act/actions/broad/.git
printf 'ref: refs/heads/main\n' > payload/var/run/act/actions/broad/.git/HEAD
chmod 0644 payload/var/run/act/actions/broad/.git/HEAD
ln payload/var/run/act/actions/broad/.git/HEAD payload/var/run/act/actions/broad/.git/HEAD.link
tar --owner=0 --group=0 --numeric-owner --format=ustar --sort=name -C payload -cf payload.tar var/run/act
rm -r rootfs payload
tar -tvf payload.tar | grep -q '^h.*HEAD.link link to var/run/act/actions/broad/.git/HEAD$'
