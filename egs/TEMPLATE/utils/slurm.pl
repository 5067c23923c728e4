#!/usr/bin/env perl
# slurm.pl: runs jobs through Slurm's sbatch, with the Kaldi/ESPnet launcher interface
# (see $usage below). Options are turned into sbatch arguments by a Kaldi-style slurm.conf.

use strict;
use warnings;
use File::Basename qw(basename dirname);
use File::Path qw(make_path);
use FindBin;
use lib "$FindBin::RealBin/lib";
use KaldiJob qw(parse_job_args job_script log_file ended_code error_lines usage_error);

my $default_config = <<'EOF';
command sbatch --export=ALL
option time=* --time=$0
option mem=* --mem=$0
option mem=0
option num_threads=* --cpus-per-task=$0
option num_threads=1 --cpus-per-task=1
option gpu=* --gres=gpu:$0
option gpu=0
option num_nodes=* --nodes=$0 --ntasks-per-node=1
EOF

my $usage = <<"EOF";
Usage: slurm.pl [options] [JOB=1:N] <log> <command> [args ...]
Submits <command> with sbatch as one job, or as an array job of N tasks when JOB=1:N is given
(JOB is replaced by the task number in <log> and in the command), waits for it (sbatch --wait)
and exits 1 when a job failed. The job script and sbatch's own output go to <log dir>/q/.

Options:
  --config F         slurm.conf mapping options to sbatch arguments
                     (default: conf/slurm.conf if it exists, else the built-in one below)
  --max-jobs-run K   at most K array tasks at a time (--array=1-N%K)
  --gpu N            --gres=gpu:N        --mem M          --mem=M
  --num-threads T    --cpus-per-task=T   --time D         --time=D
  --num-nodes N      --nodes=N --ntasks-per-node=1: one job over N nodes; the job script runs on
                     the first one, so start the command on every node with srun inside it
                     (e.g. srun torchrun ...; --gpu is per node)
  --<name> V         any option that the config describes (e.g. --partition)

Config format (Kaldi's): "command <submit command>", "option <name>=* <args with \$0 = value>",
"option <name>=<value> <args>" (wins over *), "default <name>=<value>". Built-in config:
$default_config
Example:
  slurm.pl --gpu 1 --num-threads 4 --mem 16G exp/distill/log/train.log \\
      python -m dphubert.bin.distill --config conf/distill.yaml
EOF

my $job = parse_job_args('slurm.pl', $usage, @ARGV);
my %options = %{ $job->{options} };
my $config_file = delete $options{config} // (-f 'conf/slurm.conf' ? 'conf/slurm.conf' : undef);
my $max_jobs_run = delete $options{max_jobs_run};
usage_error('slurm.pl', $usage, "--max-jobs-run needs a positive integer, got '$max_jobs_run'")
    if defined $max_jobs_run && $max_jobs_run !~ /^[1-9]\d*$/;
my $threads = $options{num_threads} // 1;
usage_error('slurm.pl', $usage, "--num-threads needs a positive integer, got '$threads'")
    unless $threads =~ /^[1-9]\d*$/;

my $config = read_config($config_file);
my @sbatch = (@{ $config->{command} }, sbatch_options($config, \%options, $config_file));

# Files: <log dir>/q/<name>.sh (job script), <name>.out or <name>-<task>.out (sbatch output).
my $qdir = dirname($job->{log}) . '/q';
make_path($qdir);
(my $name = basename($job->{log})) =~ s/\.log$//;
$name =~ s/\.?\Q$job->{job_name}\E//g if defined $job->{job_name};
$name = 'job' if $name eq '';
if (defined $job->{job_name}) {
    my $throttle = defined $max_jobs_run ? "%$max_jobs_run" : '';
    push @sbatch, "--array=$job->{first}-$job->{last}$throttle";
    push @sbatch, "--output=$qdir/$name-%a.out";
} else {
    push @sbatch, "--output=$qdir/$name.out";
}
my $job_id = defined $job->{job_name} ? '${SLURM_ARRAY_TASK_ID}' : $job->{first};
my $script = "$qdir/$name.sh";
open(my $fh, '>', $script) or fail("cannot write $script: $!");
print $fh job_script($job, $job_id, $threads, 'slurm.pl');
close($fh);
chmod 0755, $script;
push @sbatch, "--job-name=$name", '--wait', $script;

# Old logs go first: a task that Slurm kills before it starts must not look finished.
my @log_files = map { log_file($job, $_) } ($job->{first} .. $job->{last});
unlink(@log_files);
my $sbatch_log = "$qdir/$name.sbatch.log";
my $sbatch_code = run_with_output(\@sbatch, $sbatch_log);

my @codes = map { ended_code($_) } @log_files;
my $num_ended = grep { defined } @codes;
if ($sbatch_code != 0 && $num_ended == 0) {
    print STDERR "slurm.pl: $sbatch[0] failed (exit $sbatch_code): " . last_line($sbatch_log)
        . " (all of its output is in $sbatch_log)\n";
    exit 1;
}
my $num_failed = grep { !defined || $_ != 0 } @codes;
if ($num_failed > 0) {
    my $num_jobs = scalar @codes;
    my $killed = $num_jobs - $num_ended;
    my $hint = $killed ? " ($killed never ended: Slurm's reason is in $qdir/$name*.out)" : '';
    print STDERR "slurm.pl: $num_failed / $num_jobs failed, log is in " . log_file($job, '*') . "$hint\n";
    # Why the first job that ended with an error failed, so that the console says it without opening the log.
    my ($first) = grep { defined $codes[$_] && $codes[$_] != 0 } 0 .. $#codes;
    print STDERR "slurm.pl: $log_files[$first]: $_\n" for defined $first ? error_lines($log_files[$first], 3) : ();
    exit 1;
}
exit 0;

# Reads a Kaldi-style slurm.conf (or the built-in one when $file is undef) into
# { command => [words], option => { name => { value or '*' => [words] } }, default => { name => value } }.
sub read_config {
    my ($file) = @_;
    my @lines;
    if (defined $file) {
        open(my $in, '<', $file) or fail("cannot read config $file: $!");
        @lines = <$in>;
        close($in);
    } else {
        @lines = split /\n/, $default_config;
    }
    my %config = (command => undef, option => {}, default => {});
    my $where = $file // 'the built-in config';
    for my $i (0 .. $#lines) {
        my $line = $lines[$i];
        $line =~ s/#.*//;
        my ($kind, @words) = split ' ', $line;
        next unless defined $kind;
        if ($kind eq 'command' && @words) {
            $config{command} = \@words;
        } elsif ($kind eq 'option' && @words && $words[0] =~ /^(\w+)=(.+)$/) {
            shift @words;
            $config{option}{$1}{$2} = \@words;
        } elsif ($kind eq 'default' && @words == 1 && $words[0] =~ /^(\w+)=(.+)$/) {
            $config{default}{$1} = $2;
        } else {
            fail("$where line " . ($i + 1) . ": expected 'command <cmd>', "
                . "'option <name>=<value|*> [args]' or 'default <name>=<value>'");
        }
    }
    fail("$where has no 'command' line (e.g. 'command sbatch --export=ALL')")
        unless $config{command};
    return \%config;
}

# The sbatch arguments for the config's defaults overridden by the command-line options.
sub sbatch_options {
    my ($config, $options, $file) = @_;
    my %values = (%{ $config->{default} }, %$options);
    my @args;
    for my $name (sort keys %values) {
        my $value = $values{$name};
        my $choices = $config->{option}{$name} // {};
        my $words = $choices->{$value};
        if (!$words && $choices->{'*'}) {
            $words = [ map { (my $w = $_) =~ s/\$0/$value/g; $w } @{ $choices->{'*'} } ];
        }
        fail("option --$name $value is not described in " . ($file // 'the built-in config')
            . "; add a line 'option $name=* <sbatch args with \$0>' to a config given with --config")
            unless $words;
        push @args, @$words;
    }
    return @args;
}

# Runs a command with its stdout and stderr in $file; returns its exit code.
sub run_with_output {
    my ($command, $file) = @_;
    my $pid = fork() // fail("cannot fork: $!");
    if ($pid == 0) {
        open(STDOUT, '>', $file) or fail("cannot write $file: $!");
        open(STDERR, '>&', \*STDOUT) or fail("cannot redirect stderr: $!");
        exec(@$command) or fail("cannot run $command->[0]: $!");
    }
    waitpid($pid, 0);
    return $? == 0 ? 0 : ($? >> 8 || 1);
}

sub last_line {
    my ($file) = @_;
    open(my $in, '<', $file) or return '(no output)';
    my @lines = grep { /\S/ } <$in>;
    close($in);
    return '(no output)' unless @lines;
    chomp(my $line = $lines[-1]);
    return $line;
}

# Prints "slurm.pl: <message>" to stderr and exits 1.
sub fail {
    print STDERR "slurm.pl: @_\n";
    exit 1;
}
