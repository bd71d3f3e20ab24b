ln -s bar foo
chmod 0700 sub
ln -s subfile sub/l0
ln -s second sub/l1
ln -s baz sub/second
