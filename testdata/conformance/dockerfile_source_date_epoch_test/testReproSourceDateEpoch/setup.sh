chmod 0600 foo
