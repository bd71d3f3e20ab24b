mkdir -p foo
printf foo > foo/foo
head -c 4096000 /dev/zero > foo/bar
