chmod 0600 foo
chmod 0700 bar
