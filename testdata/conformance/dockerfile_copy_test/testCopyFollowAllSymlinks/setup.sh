mkdir -p foo
chmod 0700 foo
ln -s ../bar foo/sub
