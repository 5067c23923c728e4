#!/usr/bin/env perl
# free_port.pl: prints a free TCP port of this machine, or checks that a given one is free (see $usage below).

use strict;
use warnings;
use IO::Socket::INET;

my $usage = <<'EOF_USAGE';
Usage: free_port.pl [PORT]
Without PORT: prints a TCP port that is free on this machine (the system picks it).
With PORT: prints PORT if it is free here, else exits 1 (something listens on it).
The recipes use it for torchrun's rendezvous: dphubert.sh checks --master_port on node 0,
and a multi-node SLURM job picks its port on its first node.
EOF_USAGE

if (@ARGV && ($ARGV[0] eq '--help' || $ARGV[0] eq '-h')) {
    print $usage;
    exit 0;
}
if (@ARGV > 1 || (@ARGV && $ARGV[0] !~ /^\d+$/) || (@ARGV && $ARGV[0] > 65535)) {
    print STDERR "free_port.pl: expected no argument or a port number, got '@ARGV'\n\n$usage";
    exit 1;
}
my $port = $ARGV[0] // 0;
# ReuseAddr as torchrun's store has: a port left in TIME_WAIT by an earlier run counts as free.
my $socket = IO::Socket::INET->new(LocalAddr => '0.0.0.0', LocalPort => $port, Proto => 'tcp', Listen => 1,
                                   ReuseAddr => 1) or exit 1;
print $socket->sockport(), "\n";
