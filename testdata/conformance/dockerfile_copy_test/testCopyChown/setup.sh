chmod 0700 bar
chmod 0600 foo bar/sub
