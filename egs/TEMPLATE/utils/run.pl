#!/usr/bin/env perl
# run.pl: runs jobs on this machine, with the Kaldi/ESPnet launcher interface (see $usage below).

use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use KaldiJob qw(parse_job_args job_script log_file error_lines usage_error);

my $usage = <<'EOF';
Usage: run.pl [options] [JOB=1:N] <log> <command> [args ...]
Runs <command> on this machine, N times when JOB=1:N is given, replacing JOB by the job number
(1..N) in <log> and in the command. Each log gets the command, its output and its exit code.
Exits 1 when a job fails.

Options:
  --max-jobs-run K   run at most K jobs at a time (default: the number of CPUs, nproc)
  --num-threads T    threads one job uses: only written to the log's Accounting line
  --gpu N, --mem M, --time D, --config F
                     accepted for compatibility with slurm.pl and ignored

Example:
  run.pl --max-jobs-run 4 JOB=1:8 exp/dump/log/dump.JOB.log \
      python -m dphubert.bin.dump --split JOB --num-splits 8
EOF

my $job = parse_job_args('run.pl', $usage, @ARGV);
my %options = %{ $job->{options} };
my %known = map { $_ => 1 } qw(max_jobs_run num_threads gpu mem time config);
for my $name (sort keys %options) {
    usage_error('run.pl', $usage, "unknown option --$name") unless $known{$name};
}
for my $name (qw(max_jobs_run num_threads)) {
    next unless defined $options{$name};
    usage_error('run.pl', $usage, "--$name needs a positive integer, got '$options{$name}'")
        unless $options{$name} =~ /^[1-9]\d*$/;
}
my $max_jobs_run = $options{max_jobs_run} // number_of_cpus();
my $threads = $options{num_threads} // 1;

# Start jobs while fewer than max_jobs_run are running; count the failed ones as they end.
my %running;  # pid => job id
my @failed;   # ids of the failed jobs
for my $id ($job->{first} .. $job->{last}) {
    wait_for_one_job(\%running, \@failed) if keys %running >= $max_jobs_run;
    my $pid = fork() // fail("cannot fork: $!");
    if ($pid == 0) {
        exec('bash', '-c', job_script($job, $id, $threads, 'run.pl'))
            or fail("cannot run bash: $!");
    }
    $running{$pid} = $id;
}
wait_for_one_job(\%running, \@failed) while %running;

if (@failed) {
    my $num_jobs = $job->{last} - $job->{first} + 1;
    print STDERR "run.pl: " . scalar(@failed) . " / $num_jobs failed, log is in " . log_file($job, '*') . "\n";
    # Why the first of them failed, so that the console says it without opening the log.
    my ($first) = sort { $a <=> $b } @failed;
    my $log = log_file($job, $first);
    print STDERR "run.pl: $log: $_\n" for error_lines($log, 3);
    exit 1;
}
exit 0;

# Waits for one of the running jobs to end; adds its id to @$failed if it failed.
sub wait_for_one_job {
    my ($running, $failed) = @_;
    my $pid = waitpid(-1, 0);
    fail("lost track of the running jobs") if $pid <= 0;
    my $id = delete $running->{$pid};
    push @$failed, $id if $? != 0;
}

sub number_of_cpus {
    my $cpus = `nproc 2>/dev/null`;
    return ($cpus && $cpus =~ /^(\d+)/ && $1 > 0) ? $1 : 1;
}

# Prints "run.pl: <message>" to stderr and exits 1.
sub fail {
    print STDERR "run.pl: @_\n";
    exit 1;
}
