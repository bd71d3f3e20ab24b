chmod 0700 sub
chmod 0600 sub/foo
ln -s sub link
