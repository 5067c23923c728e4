package KaldiJob;
# What run.pl and slurm.pl share: their command line
#     <launcher> [--opt value ...] [JOB=1:N] <log> <command> [args ...]
# and the bash script that runs one job and writes its Kaldi-style log:
#     # <command>
#     # Started at <date>
#     <stdout and stderr of the command>
#     # Accounting: time=<seconds> threads=<T>
#     # Ended (code <exit code>) at <date>, elapsed time <seconds> seconds

use strict;
use warnings;
use Cwd qw(getcwd);
use Exporter qw(import);

our @EXPORT_OK = qw(parse_job_args job_script log_file ended_code error_lines usage_error);

# Prints "<program>: <message>", then the usage text, to stderr and exits 1.
sub usage_error {
    my ($program, $usage, $message) = @_;
    print STDERR "$program: $message\n\n$usage";
    exit 1;
}

# Quotes text as one bash word.
sub _bash_quote {
    my ($text) = @_;
    $text =~ s/'/'\\''/g;
    return "'$text'";
}

# Quotes one word of the command, with Kaldi's rule: a word without whitespace passes unquoted, so
# "|" or ">" given as separate words (written \| and '>' by the caller) still act as shell syntax;
# a word with whitespace stays one word.
sub _shell_word {
    my ($word) = @_;
    return $word =~ /^\S+$/ ? $word : _bash_quote($word);
}

# Parses the launcher command line. Returns a hash reference:
#   options      { name => value }, with dashes in names turned into underscores
#   job_name     e.g. "JOB", or undef when no range was given
#   first, last  the job range (1, 1 without a range)
#   log          the log path template
#   command      the command as one line of shell text
sub parse_job_args {
    my ($program, $usage, @args) = @_;
    my %options;
    while (@args && $args[0] =~ /^-/) {
        my $arg = shift @args;
        if ($arg eq '--help' || $arg eq '-h') {
            print $usage;
            exit 0;
        }
        my ($name, $value);
        if ($arg =~ /^--([^=]+)=(.*)$/s) {
            ($name, $value) = ($1, $2);
        } elsif ($arg =~ /^--(.+)$/) {
            $name = $1;
            usage_error($program, $usage, "option $arg needs a value") unless @args;
            $value = shift @args;
        } else {
            usage_error($program, $usage, "invalid option '$arg'");
        }
        $name =~ tr/-/_/;
        $options{$name} = $value;
    }

    my %job = (options => \%options, job_name => undef, first => 1, last => 1);
    if (@args && $args[0] =~ /^([A-Za-z_]\w*)=(\d+)(?::(\d+))?$/) {
        @job{qw(job_name first last)} = ($1, $2, $3 // $2);
        shift @args;
        usage_error($program, $usage, "empty job range $job{job_name}=$job{first}:$job{last}")
            if $job{first} > $job{last};
    }
    usage_error($program, $usage, "missing <log> and <command>") unless @args >= 2;
    $job{log} = shift @args;
    $job{command} = join ' ', map { _shell_word($_) } @args;

    if ($job{last} > $job{first} && index($job{log}, $job{job_name}) < 0) {
        usage_error($program, $usage,
            "$job{job_name}=$job{first}:$job{last} runs several jobs but log '$job{log}' "
            . "has no $job{job_name} in it: use e.g. log/x.$job{job_name}.log");
    }
    return \%job;
}

# The bash script that runs one job of `$job`, logging as described at the top of this file.
# $job_id is shell text for the job number: a literal, or e.g. '${SLURM_ARRAY_TASK_ID}'.
sub job_script {
    my ($job, $job_id, $threads, $program) = @_;
    my $substitute = '';
    if (defined $job->{job_name}) {
        my $name = $job->{job_name};
        $substitute = "log_file=\${log_file//$name/\$job_id}\ncommand=\${command//$name/\$job_id}\n";
    }
    my ($workdir, $log, $command) = map { _bash_quote($_) } (getcwd(), $job->{log}, $job->{command});
    return <<"EOF";
#!/usr/bin/env bash
# Written by $program: runs one job and writes its log.
cd $workdir || exit 1
job_id=$job_id
log_file=$log
command=$command
${substitute}mkdir -p "\$(dirname "\$log_file")" || exit 1
start=\$(date +%s)
printf '# %s\\n# Started at %s\\n' "\$command" "\$(date)" > "\$log_file" || exit 1
bash -c "set -o pipefail; \$command" >> "\$log_file" 2>&1
code=\$?
[ -z "\$(tail -c 1 "\$log_file")" ] || echo >> "\$log_file"  # output cut mid-line (a progress bar, a kill)
elapsed=\$(( \$(date +%s) - start ))
printf '# Accounting: time=%d threads=%d\\n# Ended (code %d) at %s, elapsed time %d seconds\\n' \\
    "\$elapsed" $threads "\$code" "\$(date)" "\$elapsed" >> "\$log_file"
exit "\$code"
EOF
}

# The log path of job $id; with $id = "*", the pattern for "log is in log/x.*.log" messages.
sub log_file {
    my ($job, $id) = @_;
    my $file = $job->{log};
    $file =~ s/\Q$job->{job_name}\E/$id/g if defined $job->{job_name};
    return $file;
}

# The exit code in a finished job's log ("# Ended (code N)"), or undef if the job never ended.
sub ended_code {
    my ($log_file) = @_;
    open(my $fh, '<', $log_file) or return undef;
    my $code;
    while (my $line = <$fh>) {
        $code = $1 if $line =~ /^# Ended \(code (\d+)\)/;
    }
    close($fh);
    return $code;
}

# What a failed job's log says about why, for the console: its last lines that name an error (error, Traceback,
# exception, killed, failed, out of memory), at most $max; else its last line of output and its exit code (a
# process killed by signal N ends with 128 + N). The launcher's "# " lines are left out, a progress bar's redraws
# cut to the last one.
sub error_lines {
    my ($log_file, $max) = @_;
    open(my $fh, '<', $log_file) or return ();
    my (@lines, $code);
    while (my $line = <$fh>) {
        chomp $line;
        $code = $1 if $line =~ /^# Ended \(code (\d+)\)/;
        $line =~ s/.*\r//;
        next if $line =~ /^# / || $line !~ /\S/;
        $line = substr($line, 0, 400) . ' ...' if length($line) > 400;
        push @lines, $line;
    }
    close($fh);
    my @errors = grep { /error|traceback|exception|killed|failed|out of memory/i } @lines;
    return @errors > $max ? @errors[-$max .. -1] : @errors if @errors;
    my @shown = @lines ? ($lines[-1]) : ();
    push @shown, "(no line names an error; the job ended with exit code $code)" if defined $code && @shown;
    return @shown;
}

1;
