"""Tests of the recipe shell utilities (egs/TEMPLATE/utils/) and egs/TEMPLATE/setup.sh.

Every test runs the real scripts with bash/perl through subprocess. The only fake is `sbatch`
(no Slurm exists here): a script put first on PATH that records its arguments and runs the job
script locally, as `sbatch --wait` would.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "egs" / "TEMPLATE"
UTILS = TEMPLATE / "utils"

ALL_SCRIPTS = [
    UTILS / "parse_options.sh",
    UTILS / "log.sh",
    UTILS / "run.pl",
    UTILS / "slurm.pl",
    UTILS / "free_port.pl",
    UTILS / "validate_data_dir.sh",
    UTILS / "fix_data_dir.sh",
    UTILS / "utt2spk_to_spk2utt.sh",
    UTILS / "spk2utt_to_utt2spk.sh",
    TEMPLATE / "setup.sh",
]


def run(args, cwd, env=None, stdin=None):
    """Runs a command, returns the CompletedProcess (text stdout/stderr)."""
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, input=stdin,
        capture_output=True, text=True, timeout=60,
    )


def write(path, text, executable=False):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if executable:
        path.chmod(0o755)
    return path


# ---------------------------------------------------------------- usage texts


@pytest.mark.parametrize("script", ALL_SCRIPTS, ids=lambda p: p.name)
def test_help_prints_usage_and_wrong_use_fails_with_usage(script, tmp_path):
    interpreter = "perl" if script.suffix == ".pl" else "bash"
    shown = run([interpreter, script, "--help"], tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert "Usage" in shown.stdout

    wrong = run([interpreter, script, "--bogus-option"], tmp_path)
    assert wrong.returncode == 1
    assert "Usage" in wrong.stderr


# ---------------------------------------------------------------- parse_options.sh

CALLER = """#!/usr/bin/env bash
set -euo pipefail
stage=1
stop_stage=100
train_set=
use_fp16=false
help_message="Usage: caller.sh [options] <dir>
  --stage N   first stage"
. {utils}/parse_options.sh
echo "stage=${{stage}} stop_stage=${{stop_stage}} train_set=${{train_set}} use_fp16=${{use_fp16}}"
echo "args=$#:$*"
if compgen -v _po_ >/dev/null; then echo "leaked helper variables"; fi
"""


@pytest.fixture
def caller(tmp_path):
    script = write(tmp_path / "caller.sh", CALLER.format(utils=UTILS), executable=True)
    return lambda *args: run([script, *args], tmp_path)


def test_parse_options_sets_variables_with_dashes_or_underscores(caller):
    result = caller("--stage", "3", "--stop-stage", "5", "--train_set", "tr", "--use-fp16", "true", "a", "b")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stage=3 stop_stage=5 train_set=tr use_fp16=true", "args=2:a b"]


def test_parse_options_equals_form_keeps_rest_of_value(caller):
    result = caller("--stage=4", "--train-set=x=y z", "--use_fp16=false")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stage=4 stop_stage=100 train_set=x=y z use_fp16=false", "args=0:"]


def test_parse_options_accepts_empty_value(caller):
    result = caller("--stage", "", "pos")
    assert result.stdout.splitlines()[0].startswith("stage= ")


def test_parse_options_stops_at_first_positional_argument(caller):
    result = caller("--stage", "2", "data/train", "--stage", "9")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage=2 stop_stage=100 train_set= use_fp16=false", "args=3:data/train --stage 9"]
    ended = caller("--", "--stage", "9")
    assert ended.stdout.splitlines()[1] == "args=2:--stage 9"


def test_parse_options_unknown_option_is_an_error_naming_it(caller):
    result = caller("--no-such-var", "1", "pos")
    assert result.returncode == 1
    assert "--no_such_var" in result.stderr and "'no_such_var'" in result.stderr
    assert result.stdout == ""
    internal = caller("--_po_names", "x")
    assert internal.returncode == 1 and "unknown option --_po_names" in internal.stderr
    not_a_name = caller("--a.b", "1")
    assert not_a_name.returncode == 1 and "not a variable name" in not_a_name.stderr


def test_parse_options_boolean_only_takes_true_or_false(caller):
    result = caller("--use_fp16", "yes")
    assert result.returncode == 1
    assert "--use_fp16" in result.stderr and "true or false" in result.stderr
    assert caller("--use_fp16", "true").returncode == 0


def test_parse_options_choices_widen_a_boolean(tmp_path):
    """choices_<name> lists the values a true/false option also takes (dphubert.sh: --baseline auto)."""
    text = CALLER.format(utils=UTILS).replace("use_fp16=false\n", 'use_fp16=false\nchoices_use_fp16="true false auto"\n')
    script = write(tmp_path / "caller.sh", text, executable=True)
    ok = run([script, "--use_fp16", "auto"], tmp_path)
    assert ok.returncode == 0 and "use_fp16=auto" in ok.stdout and "leaked" not in ok.stdout
    bad = run([script, "--use_fp16", "yes"], tmp_path)
    assert bad.returncode == 1 and bad.stderr.strip() == (
        f"{script}: option --use_fp16 takes one of: true false auto; got 'yes'")


def test_parse_options_missing_value_is_an_error(caller):
    result = caller("--stage")
    assert result.returncode == 1
    assert "--stage needs a value" in result.stderr


def test_parse_options_config_gives_defaults_that_options_override(caller, tmp_path):
    config = write(tmp_path / "conf" / "defaults.sh", "stage=7\ntrain_set=from_config\n")
    # --config comes after --stage, yet the explicit --stage wins.
    result = caller("--stage", "2", "--config", str(config), "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "stage=2 stop_stage=100 train_set=from_config use_fp16=false", "args=1:x"]
    only_config = caller(f"--config={config}")
    assert only_config.stdout.splitlines()[0].startswith("stage=7 ")
    missing = caller("--config", str(tmp_path / "nope.sh"))
    assert missing.returncode == 1 and "nope.sh" in missing.stderr


def test_parse_options_help_prints_help_message_and_exits_0(caller):
    for flag in ("--help", "-h"):
        result = caller("--stage", "3", flag, "--bad-option")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "Usage: caller.sh [options] <dir>\n  --stage N   first stage\n"


def test_parse_options_leaves_no_helper_variables(caller, tmp_path):
    config = write(tmp_path / "empty.sh", "")
    result = caller("--stage", "1", "--config", str(config), "x")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["stage=1 stop_stage=100 train_set= use_fp16=false", "args=1:x"]


# ---------------------------------------------------------------- log.sh


def test_log_prints_date_file_and_line_to_stderr(tmp_path):
    write(tmp_path / "lib.sh", f". {UTILS}/log.sh\nhelper() {{\n    log \"from helper\"\n}}\n")
    script = write(tmp_path / "caller.sh", "\n".join([
        "#!/usr/bin/env bash",
        "set -euo pipefail",
        f". {tmp_path}/lib.sh",
        'log "hello  world" "again"',   # line 4
        "helper",
        'die "cannot go on"',           # line 6
        "echo not reached",
    ]) + "\n", executable=True)
    result = run([script], tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"
    lines = result.stderr.splitlines()
    assert len(lines) == 3, lines
    assert re.fullmatch(stamp + r" \(caller\.sh:4\) hello  world again", lines[0])
    assert re.fullmatch(stamp + r" \(lib\.sh:3\) from helper", lines[1])
    assert re.fullmatch(stamp + r" \(caller\.sh:6\) ERROR: cannot go on", lines[2])


# ---------------------------------------------------------------- run.pl

RUN_PL = UTILS / "run.pl"


def test_run_pl_substitutes_job_and_writes_kaldi_logs(tmp_path):
    result = run([RUN_PL, "--num-threads", "3", "JOB=1:3", "exp/a/log/x.JOB.log",
                  "echo", "job JOB of 3", "|", "tr", "a-z", "A-Z"], tmp_path)
    assert result.returncode == 0, result.stderr
    for job in (1, 2, 3):
        lines = (tmp_path / f"exp/a/log/x.{job}.log").read_text().splitlines()
        assert lines[0] == f"# echo 'job {job} of 3' | tr a-z A-Z"
        assert lines[1].startswith("# Started at ")
        assert lines[2] == f"JOB {job} OF 3"
        assert re.fullmatch(r"# Accounting: time=\d+ threads=3", lines[3])
        assert re.fullmatch(r"# Ended \(code 0\) at .+, elapsed time \d+ seconds", lines[4])
        assert len(lines) == 5


def test_run_pl_logs_stderr_and_single_job_without_range(tmp_path):
    result = run([RUN_PL, "log/single.log", "bash", "-c", "echo out; echo err >&2"], tmp_path)
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "log/single.log").read_text()
    assert "\nout\n" in text and "\nerr\n" in text


def test_run_pl_runs_jobs_in_parallel_up_to_max_jobs_run(tmp_path):
    """The most jobs running at once, as the jobs themselves see it (no wall-clock bounds).

    Each job leaves a mark while it runs, waits until it sees as many marks as --max-jobs-run allows (so a run.pl
    that runs jobs one after the other never reaches N), then keeps counting a little longer (so a run.pl that
    starts all jobs at once is seen exceeding N). A correct run.pl is seen at exactly N, whatever the timing.
    """
    job = write(tmp_path / "job.sh", "\n".join([
        "#!/usr/bin/env bash",
        "set -eu",
        "shopt -s nullglob",
        'dir=$1; max=$2; touch "$dir/running.$3"; reached=0; linger=0',
        "for _ in $(seq 500); do",
        '    marks=("$dir"/running.*); n=${#marks[@]}',
        '    echo "$n" >> "$dir/seen.$3"',
        '    [[ $n -ge $max ]] && reached=1',
        '    linger=$((linger + reached))',
        "    [[ $linger -ge 5 ]] && break",
        "    sleep 0.02",
        "done",
        'rm "$dir/running.$3"',
    ]) + "\n", executable=True)
    for max_jobs in (4, 2, 1):
        marks = tmp_path / f"marks{max_jobs}"
        marks.mkdir()
        result = run([RUN_PL, "--max-jobs-run", max_jobs, "JOB=1:4", f"log/{max_jobs}.JOB.log",
                      job, marks, max_jobs, "JOB"], tmp_path)
        assert result.returncode == 0, result.stderr
        seen = [int(n) for j in range(1, 5) for n in (marks / f"seen.{j}").read_text().split()]
        assert max(seen) == max_jobs, (max_jobs, sorted(set(seen)))


def test_run_pl_failed_jobs_give_exit_1_and_message(tmp_path):
    result = run([RUN_PL, "JOB=1:4", "log/f.JOB.log", "test", "JOB", "-le", "2"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == "run.pl: 2 / 4 failed, log is in log/f.*.log"
    assert (tmp_path / "log/f.2.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")
    assert (tmp_path / "log/f.3.log").read_text().splitlines()[-1].startswith("# Ended (code 1)")


FAILING_JOB = """echo starting
printf 'step 1\\rstep 2\\n'
[ "$1" -ne 2 ] || { echo 'Traceback (most recent call last):'; echo '  File "x.py", line 1'; echo "ValueError: bad input $1"; exit 1; }
"""


def test_run_pl_failure_shows_the_failing_logs_error_lines(tmp_path):
    (tmp_path / "job.sh").write_text(FAILING_JOB)
    result = run([RUN_PL, "JOB=1:3", "log/e.JOB.log", "bash", "job.sh", "JOB"], tmp_path)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["run.pl: 1 / 3 failed, log is in log/e.*.log",
                                          "run.pl: log/e.2.log: Traceback (most recent call last):",
                                          "run.pl: log/e.2.log: ValueError: bad input 2"]
    # No line names an error: the last line of output (a progress bar's last redraw).
    result = run([RUN_PL, "log/q.log", "bash", "-c", "printf 'bar 1\\rbar 2\\n'; exit 3"], tmp_path)
    assert result.stderr.splitlines()[1:] == ["run.pl: log/q.log: bar 2",
                                              "run.pl: log/q.log: (no line names an error; the job ended with exit code 3)"]


def test_run_pl_pipeline_failure_counts(tmp_path):
    result = run([RUN_PL, "log/p.log", "false", "|", "cat"], tmp_path)
    assert result.returncode == 1
    assert "1 / 1 failed, log is in log/p.log" in result.stderr


def test_run_pl_rejects_several_jobs_into_one_log(tmp_path):
    result = run([RUN_PL, "JOB=1:2", "log/one.log", "true"], tmp_path)
    assert result.returncode == 1
    assert "has no JOB in it" in result.stderr
    assert not (tmp_path / "log").exists()


# ---------------------------------------------------------------- slurm.pl

SLURM_PL = UTILS / "slurm.pl"

FAKE_SBATCH = r"""#!/usr/bin/env bash
# Fake sbatch: records its arguments, then runs the job script here like `sbatch --wait`.
printf '%s\n' "$@" > "${FAKE_SBATCH_ARGS}"
if [ -n "${FAKE_SBATCH_REFUSE:-}" ]; then
    echo "sbatch: error: invalid partition specified" >&2
    exit 1
fi
echo "Submitted batch job 42"
array= output=
for arg in "$@"; do
    case "${arg}" in
        --array=*) array=${arg#--array=} ;;
        --output=*) output=${arg#--output=} ;;
    esac
done
script=${!#}
if [ -z "${array}" ]; then
    bash "${script}" > "${output}" 2>&1
    exit
fi
range=${array%\%*}
failed=0
for ((task = ${range%-*}; task <= ${range#*-}; task++)); do
    if [ "${task}" = "${FAKE_SBATCH_CANCEL_TASK:-}" ]; then
        echo "slurmstepd: error: *** JOB CANCELLED DUE TO TIME LIMIT ***" > "${output//%a/${task}}"
        failed=1
        continue
    fi
    SLURM_ARRAY_TASK_ID=${task} bash "${script}" > "${output//%a/${task}}" 2>&1 || failed=1
done
exit "${failed}"
"""


@pytest.fixture
def slurm_env(tmp_path):
    """Environment with the fake sbatch first on PATH; its arguments land in tmp_path/sbatch.args."""
    write(tmp_path / "bin" / "sbatch", FAKE_SBATCH, executable=True)
    env = dict(os.environ)
    env["PATH"] = f"{tmp_path / 'bin'}:{env['PATH']}"
    env["FAKE_SBATCH_ARGS"] = str(tmp_path / "sbatch.args")
    return env


def sbatch_args(tmp_path):
    return (tmp_path / "sbatch.args").read_text().splitlines()


def test_slurm_pl_submits_array_job_with_mapped_options(tmp_path, slurm_env):
    result = run([SLURM_PL, "--gpu", "2", "--mem", "4G", "--num-threads", "3", "--max-jobs-run", "2",
                  "JOB=1:3", "exp/b/log/train.JOB.log", "echo", "task JOB", "|", "tr", "a-z", "A-Z"],
                 tmp_path, env=slurm_env)
    assert result.returncode == 0, result.stderr
    qdir = "exp/b/log/q"
    assert sbatch_args(tmp_path) == [
        "--export=ALL", "--gres=gpu:2", "--mem=4G", "--cpus-per-task=3",
        "--array=1-3%2", f"--output={qdir}/train-%a.out", "--job-name=train", "--wait",
        f"{qdir}/train.sh",
    ]
    for task in (1, 2, 3):
        lines = (tmp_path / f"exp/b/log/train.{task}.log").read_text().splitlines()
        assert lines[0] == f"# echo 'task {task}' | tr a-z A-Z"
        assert lines[2] == f"TASK {task}"
        assert lines[3].endswith("threads=3")
        assert lines[4].startswith("# Ended (code 0)")


def test_slurm_pl_single_job_and_zero_gpus(tmp_path, slurm_env):
    result = run([SLURM_PL, "--gpu", "0", "log/prep.log", "echo", "hi"], tmp_path, env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert sbatch_args(tmp_path) == [
        "--export=ALL", "--output=log/q/prep.out", "--job-name=prep", "--wait", "log/q/prep.sh"]
    assert (tmp_path / "log/prep.log").read_text().splitlines()[2] == "hi"


def test_slurm_pl_config_overrides_mapping(tmp_path, slurm_env):
    config = write(tmp_path / "my.conf", "\n".join([
        "# site config",
        "command sbatch --export=PATH --account=speech",
        "option gpu=* --partition=gpu --gres=gpu:$0",
        "option gpu=0 --partition=cpu",
        "option partition=* --partition=$0",
        "default gpu=0",
    ]) + "\n")
    result = run([SLURM_PL, "--config", config, "log/a.log", "true"], tmp_path, env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert sbatch_args(tmp_path)[:3] == ["--export=PATH", "--account=speech", "--partition=cpu"]

    result = run([SLURM_PL, "--config", config, "--gpu", "1", "log/a.log", "true"], tmp_path, env=slurm_env)
    assert sbatch_args(tmp_path)[:4] == ["--export=PATH", "--account=speech", "--partition=gpu", "--gres=gpu:1"]

    # An option the config does not describe is an error before anything is submitted.
    (tmp_path / "sbatch.args").unlink()
    result = run([SLURM_PL, "--config", config, "--mem", "2G", "log/a.log", "true"], tmp_path, env=slurm_env)
    assert result.returncode == 1
    assert "--mem 2G is not described in" in result.stderr and "my.conf" in result.stderr
    assert not (tmp_path / "sbatch.args").exists()


def test_slurm_pl_reads_conf_slurm_conf_by_default(tmp_path, slurm_env):
    write(tmp_path / "conf/slurm.conf", "command sbatch --export=NONE\noption gpu=* --gpus=$0\n")
    result = run([SLURM_PL, "--gpu", "1", "log/a.log", "true"], tmp_path, env=slurm_env)
    assert result.returncode == 0, result.stderr
    assert sbatch_args(tmp_path)[:2] == ["--export=NONE", "--gpus=1"]


def test_slurm_pl_reports_failed_tasks(tmp_path, slurm_env):
    result = run([SLURM_PL, "JOB=1:3", "log/f.JOB.log", "test", "JOB", "-ne", "2"], tmp_path, env=slurm_env)
    assert result.returncode == 1
    assert result.stderr.strip() == "slurm.pl: 1 / 3 failed, log is in log/f.*.log"
    assert (tmp_path / "log/f.2.log").read_text().splitlines()[-1].startswith("# Ended (code 1)")


def test_slurm_pl_failure_shows_the_failing_logs_error_lines(tmp_path, slurm_env):
    (tmp_path / "job.sh").write_text(FAILING_JOB)
    result = run([SLURM_PL, "JOB=1:3", "log/e.JOB.log", "bash", "job.sh", "JOB"], tmp_path, env=slurm_env)
    assert result.returncode == 1
    assert result.stderr.splitlines() == ["slurm.pl: 1 / 3 failed, log is in log/e.*.log",
                                          "slurm.pl: log/e.2.log: Traceback (most recent call last):",
                                          "slurm.pl: log/e.2.log: ValueError: bad input 2"]


def test_slurm_pl_counts_cancelled_task_despite_old_log(tmp_path, slurm_env):
    command = [SLURM_PL, "JOB=1:2", "log/c.JOB.log", "true"]
    assert run(command, tmp_path, env=slurm_env).returncode == 0
    slurm_env["FAKE_SBATCH_CANCEL_TASK"] = "2"
    result = run(command, tmp_path, env=slurm_env)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "slurm.pl: 1 / 2 failed, log is in log/c.*.log (1 never ended: Slurm's reason is in log/q/c*.out)")
    assert "TIME LIMIT" in (tmp_path / "log/q/c-2.out").read_text()


def test_slurm_pl_reports_refused_submission(tmp_path, slurm_env):
    slurm_env["FAKE_SBATCH_REFUSE"] = "1"
    result = run([SLURM_PL, "log/r.log", "true"], tmp_path, env=slurm_env)
    assert result.returncode == 1
    assert "sbatch failed (exit 1): sbatch: error: invalid partition specified" in result.stderr
    assert "log/q/r.sbatch.log" in result.stderr


# ---------------------------------------------------------------- data dirs

VALIDATE = UTILS / "validate_data_dir.sh"
FIX = UTILS / "fix_data_dir.sh"

GOOD_DIR = {
    "wav.scp": "spkA-u1 /corpus/a/1.flac\nspkA-u2 sox /corpus/a/2.wav -t wav - |\nspkB-u1 /corpus/b/1.flac\n",
    "utt2spk": "spkA-u1 spkA\nspkA-u2 spkA\nspkB-u1 spkB\n",
    "spk2utt": "spkA spkA-u1 spkA-u2\nspkB spkB-u1\n",
    "text": "spkA-u1 HELLO WORLD\nspkA-u2\nspkB-u1 GOOD BYE\n",
}


def make_data_dir(root, **changes):
    """data/train with GOOD_DIR's files, where changes replace (text) or remove (None) files."""
    data = root / "data" / "train"
    data.mkdir(parents=True)
    for name, text in {**GOOD_DIR, **changes}.items():
        if text is not None:
            (data / name).write_text(text)
    return data


def validate(data):
    """Runs validate_data_dir.sh data/train from the dir holding data/, as a recipe does."""
    root = data.parent.parent
    return run([VALIDATE, data.relative_to(root)], root)


def test_validate_accepts_good_dir(tmp_path):
    result = validate(make_data_dir(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "is valid (3 utterances)" in result.stderr


def test_validate_accepts_numeric_ids_in_c_order(tmp_path):
    data = make_data_dir(tmp_path, **{
        "wav.scp": "10 a.wav\n9 b.wav\n", "utt2spk": "10 s\n9 s\n", "spk2utt": "s 10 9\n", "text": None})
    result = validate(data)
    assert result.returncode == 0, result.stderr


BROKEN_DIRS = {
    "unsorted": ({"utt2spk": "spkA-u2 spkA\nspkA-u1 spkA\nspkB-u1 spkB\n"},
                 'utt2spk line 2 is not sorted: id "spkA-u1" comes after "spkA-u2"'),
    "duplicated": ({"wav.scp": "spkA-u1 /x.flac\nspkA-u1 /x.flac\nspkA-u2 /y.flac\nspkB-u1 /z.flac\n"},
                   'wav.scp line 2 repeats the id "spkA-u1"'),
    "empty_line": ({"text": "spkA-u1 HELLO WORLD\n\nspkA-u2\nspkB-u1 GOOD BYE\n"}, "text line 2 is empty"),
    "windows_line_end": ({"text": "spkA-u1 HELLO WORLD\r\nspkA-u2\nspkB-u1 GOOD BYE\n"},
                         "text line 1 ends with a carriage return"),
    "bad_fields": ({"utt2spk": "spkA-u1 spkA\nspkA-u2 spkA extra\nspkB-u1 spkB\n"},
                   "utt2spk line 2 has 3 fields, expected 2"),
    "text_misses_utt": ({"text": "spkA-u1 HELLO WORLD\nspkB-u1 GOOD BYE\n"},
                        'utt2spk line 2: id "spkA-u2" is not in data/train/text'),
    "wav_has_extra_utt": ({"wav.scp": GOOD_DIR["wav.scp"] + "spkC-u1 /c.flac\n"},
                          'wav.scp line 4: id "spkC-u1" is not in data/train/utt2spk'),
    "stale_spk2utt": ({"spk2utt": "spkA spkA-u1\nspkB spkB-u1\n"},
                      'spk2utt line 1 does not match utt2spk: expected "spkA spkA-u1 spkA-u2"'),
    "missing_spk2utt": ({"spk2utt": None}, "data/train/spk2utt is missing"),
}


@pytest.mark.parametrize("case", BROKEN_DIRS, ids=str)
def test_validate_rejects_broken_dir_naming_file_and_fix(case, tmp_path):
    changes, message = BROKEN_DIRS[case]
    result = validate(make_data_dir(tmp_path, **changes))
    assert result.returncode == 1
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert message in result.stderr
    assert "utils/fix_data_dir.sh data/train" in result.stderr


@pytest.mark.parametrize("case", BROKEN_DIRS, ids=str)
def test_fix_repairs_broken_dir_and_keeps_backups(case, tmp_path):
    changes, _ = BROKEN_DIRS[case]
    data = make_data_dir(tmp_path, **changes)
    originals = {p.name: p.read_text() for p in data.iterdir()}
    result = run([FIX, data], tmp_path)
    assert result.returncode == 0, result.stderr
    assert validate(data).returncode == 0
    assert {p.name: p.read_text() for p in (data / ".backup").iterdir()} == originals
    kept = [line.split()[0] for line in (data / "utt2spk").read_text().splitlines()]
    # Malformed lines are dropped, and the utterance with them.
    dropped = {"text_misses_utt": "spkA-u2", "bad_fields": "spkA-u2"}.get(case)
    expected = [utt for utt in ["spkA-u1", "spkA-u2", "spkB-u1"] if utt != dropped]
    assert kept == expected
    assert "spkC-u1" not in (data / "wav.scp").read_text()


def test_fix_keeps_first_line_of_repeated_id_and_regenerates_spk2utt(tmp_path):
    data = make_data_dir(tmp_path, **{
        "wav.scp": "b1 /b1.flac\na1 /first.flac\na1 /second.flac\n",
        "utt2spk": "a1 a\nb1 b\n",
        "spk2utt": None,
        "text": None,
    })
    assert run([FIX, data], tmp_path).returncode == 0
    assert (data / "wav.scp").read_text() == "a1 /first.flac\nb1 /b1.flac\n"
    assert (data / "spk2utt").read_text() == "a a1\nb b1\n"


def test_fix_builds_utt2spk_from_spk2utt(tmp_path):
    data = make_data_dir(tmp_path, utt2spk=None)
    result = run([FIX, data], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (data / "utt2spk").read_text() == GOOD_DIR["utt2spk"]


def test_fix_with_segments_drops_unknown_recordings(tmp_path):
    data = make_data_dir(tmp_path, **{
        "wav.scp": "rec1 /r1.flac\nrec2 /r2.flac\nrec9 /unused.flac\n",
        "segments": "s-1 rec1 0.0 1.5\ns-2 rec2 0.0 2.0\ns-3 rec3 1.0 2.0\n",
        "utt2spk": "s-1 s\ns-2 s\ns-3 s\n",
        "spk2utt": "s s-1 s-2 s-3\n",
        "text": None,
    })
    broken = validate(data)
    assert broken.returncode == 1 and 'segments line 3: recording "rec3" is not in' in broken.stderr
    result = run([FIX, data], tmp_path)
    assert result.returncode == 0, result.stderr
    assert (data / "segments").read_text() == "s-1 rec1 0.0 1.5\ns-2 rec2 0.0 2.0\n"
    assert (data / "wav.scp").read_text() == "rec1 /r1.flac\nrec2 /r2.flac\n"
    assert (data / "spk2utt").read_text() == "s s-1 s-2\n"


def test_fix_refuses_when_no_utterance_is_common(tmp_path):
    data = make_data_dir(tmp_path, text="other-1 X\n")
    result = run([FIX, data], tmp_path)
    assert result.returncode == 1
    assert "no utterance" in result.stderr and "nothing changed" in result.stderr
    assert (data / "text").read_text() == "other-1 X\n"
    assert (data / "utt2spk").read_text() == GOOD_DIR["utt2spk"]


def test_utt2spk_and_spk2utt_conversions(tmp_path):
    utt2spk = "a1 a\na2 a\nb1 b\na3 a\n"
    spk2utt = run([UTILS / "utt2spk_to_spk2utt.sh"], tmp_path, stdin=utt2spk)
    assert spk2utt.returncode == 0 and spk2utt.stdout == "a a1 a2 a3\nb b1\n"
    back = run([UTILS / "spk2utt_to_utt2spk.sh", write(tmp_path / "spk2utt", spk2utt.stdout)], tmp_path)
    assert back.returncode == 0 and back.stdout == "a1 a\na2 a\na3 a\nb1 b\n"

    bad = run([UTILS / "utt2spk_to_spk2utt.sh", write(tmp_path / "utt2spk", "a1 a\nb1\n")], tmp_path)
    assert bad.returncode == 1 and bad.stdout == ""
    assert 'utt2spk line 2: expected "<utt> <spk>", got "b1"' in bad.stderr


# ---------------------------------------------------------------- setup.sh and the skeleton

STUB_STAGE_SCRIPT = """#!/usr/bin/env bash
# Stand-in for dphubert.sh: parses options like the real one and runs a job through cmd.sh.
set -euo pipefail
. ./path.sh
. ./cmd.sh
. utils/log.sh
stage=1
train_set=
valid_set=
test_sets=
help_message="Usage: dphubert.sh --train_set <set> [options] (stub)"
. utils/parse_options.sh
log "stage=${stage} train_set=${train_set} valid_set=${valid_set} test_sets=${test_sets}"
${train_cmd} JOB=1:2 exp/log/stub.JOB.log python -c "import sys; print(sys.executable, JOB)"
"""


@pytest.fixture
def recipe(tmp_path):
    """A recipe dir made by setup.sh, with a stub dphubert.sh in place of the link."""
    recipe_dir = tmp_path / "egs" / "mycorpus"
    result = run([TEMPLATE / "setup.sh", recipe_dir], tmp_path)
    assert result.returncode == 0, result.stderr
    return recipe_dir


def test_setup_copies_skeleton_and_links_shared_parts(recipe):
    for name in ("run.sh", "db.sh", "cmd.sh", "path.sh", "conf/slurm.conf", "local/data.sh", "conf/distill_prune.yaml",
                 "conf/final_distill.yaml", "conf/distilhubert.yaml"):
        assert (recipe / name).read_text() == (TEMPLATE / "skeleton" / name).read_text()
    assert os.access(recipe / "run.sh", os.X_OK) and os.access(recipe / "local/data.sh", os.X_OK)
    for name in ("utils", "dphubert.sh"):
        link = recipe / name
        assert link.is_symlink() and not os.readlink(link).startswith("/")
        assert Path(os.path.realpath(link)) == (TEMPLATE / name).resolve()


@pytest.mark.parametrize("method", ["distill_prune", "final_distill", "distilhubert"])
def test_new_recipe_ships_the_papers_training_configs(recipe, method):
    """The configs a new recipe trains with are the paper's (those of egs/librispeech's HuBERT Base), read as the
    training CLIs read them; db.sh names the teacher that stage 0 converts."""
    from dphubert.distill.config import load_config

    shipped = load_config(method, recipe / "conf" / f"{method}.yaml")
    assert shipped == load_config(method, REPO / "egs" / "librispeech" / "conf" / "hubert_base" / f"{method}.yaml")
    paper = {"distill_prune": dict(max_steps=50000, lr=2e-4, warmup_steps=15000, target_sparsity=0.75, reg_lr=0.02,
                                   sparsity_warmup_steps=5000, batch_seconds=160.0),
             "final_distill": dict(max_steps=25000, lr=1e-4, warmup_steps=5000),
             "distilhubert": dict(max_steps=200000, lr=2e-4, cos_type="log_sig")}[method]
    assert {key: shipped[key] for key in paper} == paper
    db = (recipe / "db.sh").read_text()
    assert "\nTEACHER=\n" in db and "\nTEACHER_FORMAT=hf\n" in db


def test_setup_refuses_existing_dir(recipe, tmp_path):
    result = run([TEMPLATE / "setup.sh", recipe], tmp_path)
    assert result.returncode == 1 and "already exists" in result.stderr


def test_new_recipe_run_sh_reaches_stage_script(recipe):
    (recipe / "dphubert.sh").unlink()
    write(recipe / "dphubert.sh", STUB_STAGE_SCRIPT, executable=True)

    shown = run(["./run.sh", "--help"], recipe)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "Usage: dphubert.sh --train_set <set> [options] (stub)\n"

    result = run(["./run.sh", "--stage", "3"], recipe)
    assert result.returncode == 0, result.stderr
    assert "stage=3 train_set=train valid_set=dev test_sets=dev" in result.stderr
    # path.sh put the repository's venv python first; cmd.sh's run.pl came from utils/ on PATH.
    log = (recipe / "exp/log/stub.2.log").read_text().splitlines()
    assert log[2] == f"{REPO / '.venv' / 'bin' / 'python'} 2"

    wrong = run(["./run.sh", "--no_such_option", "1"], recipe)
    assert wrong.returncode == 1 and "no_such_option" in wrong.stderr


def test_new_recipe_path_sh_sets_environment(recipe):
    script = '. ./path.sh; echo "$MAIN_ROOT|$PYTHONPATH|$LC_ALL|$PYTHONIOENCODING|$(command -v run.pl)"'
    result = run(["bash", "-euo", "pipefail", "-c", script], recipe)
    assert result.returncode == 0, result.stderr
    main_root, pythonpath, lc_all, encoding, run_pl = result.stdout.strip().split("|")
    assert Path(main_root) == REPO.resolve()
    assert pythonpath.split(":")[0] == main_root
    assert (lc_all, encoding) == ("C", "UTF-8")
    assert run_pl == str(recipe / "utils" / "run.pl")


def test_new_recipe_cmd_sh_slurm_backend(recipe, slurm_env):
    cmd_sh = recipe / "cmd.sh"
    cmd_sh.write_text(cmd_sh.read_text().replace("cmd_backend=local", "cmd_backend=slurm"))
    script = '. ./path.sh; . ./cmd.sh; ${cuda_cmd} --gpu 1 --time 1:00:00 exp/log/gpu.log echo on-gpu'
    result = run(["bash", "-euo", "pipefail", "-c", script], recipe, env=slurm_env)
    assert result.returncode == 0, result.stderr
    args = (Path(slurm_env["FAKE_SBATCH_ARGS"])).read_text().splitlines()
    assert args[:3] == ["--export=ALL", "--gres=gpu:1", "--time=1:00:00"]
    assert (recipe / "exp/log/gpu.log").read_text().splitlines()[2] == "on-gpu"


def test_new_recipe_local_data_sh_asks_to_be_edited(recipe):
    result = run(["local/data.sh"], recipe)
    assert result.returncode == 1
    assert "edit local/data.sh" in result.stderr
    assert "wav.scp,utt2spk,spk2utt" in result.stderr
