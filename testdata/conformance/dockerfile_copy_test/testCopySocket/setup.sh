# A listening Unix socket left in the context (perl is in every Debian).
perl -MIO::Socket::UNIX -e 'IO::Socket::UNIX->new(Type => IO::Socket::UNIX::SOCK_STREAM(), Local => "socket.sock", Listen => 1) or die "socket: $!"'
chmod 0600 socket.sock
[ -S socket.sock ]
