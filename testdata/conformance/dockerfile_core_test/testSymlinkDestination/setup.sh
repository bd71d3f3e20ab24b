# t.tar holds one entry: the symlink `symlink` -> ../tmp/symlink-target
ln -s ../tmp/symlink-target symlink
tar -cf t.tar symlink
rm symlink
