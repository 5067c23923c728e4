"""Multi-process and multi-node training through the stage script (egs/TEMPLATE/dphubert.sh), on CPU with gloo.

Real runs of stage 3 (distill-prune + physical pruning) with a tiny teacher and generated audio:
- ``--ngpu 2``: one torchrun with two processes (the reference the other runs are compared with);
- two "nodes" on 127.0.0.1: the stage script run twice with ``--num_nodes 2 --node_rank 0/1 --master_addr``,
  each starting ``torchrun --nnodes 2`` with a c10d rendezvous, as a user does on two machines;
- ``cmd_backend=slurm`` with stand-ins for ``sbatch`` and ``srun`` (scripts first on PATH that run the job script
  and its per-node command here, with the variables Slurm sets): one job over two nodes, with a rank killed
  midway (``DPHUBERT_CRASH_AFTER_STEP``) and ``--max_restarts 1``.
Then the one-line errors for a multi-node run that cannot work.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from conftest import make_recipe_dir, tiny_config
from dphubert.bin import distill_prune
from dphubert.data import write_utt2num_samples
from dphubert.distill.distributed import DistEnv, DistributedSetupError, check_same_inputs
from dphubert.models import Wav2Vec2Model, save_model

REPO = Path(__file__).resolve().parents[1]
SR = 16000
CONFIG = """\
min_seconds: 0.2
max_seconds: 1.0
batch_seconds: 1.6
num_buckets: 2
num_workers: 0
max_steps: 8
lr: 1.0e-3
warmup_steps: 2
target_sparsity: 0.3
sparsity_warmup_steps: 3
reg_lr: 0.05
log_interval: 4
save_interval: 4
valid_interval: 1000
valid_max_batches: 1
"""

# Slurm's sbatch runs the job script on the first node of the allocation, with these variables set.
FAKE_SBATCH = r"""#!/usr/bin/env bash
printf '%s\n' "$@" > "${FAKE_SLURM_DIR}/sbatch.args"
nodes=1 output=
for arg in "$@"; do
    case "${arg}" in
        --nodes=*) nodes=${arg#--nodes=} ;;
        --output=*) output=${arg#--output=} ;;
    esac
done
echo "Submitted batch job 4242"
export SLURM_JOB_ID=4242 SLURM_JOB_NUM_NODES=${nodes} SLURM_NNODES=${nodes} SLURMD_NODENAME=127.0.0.1
bash "${!#}" > "${output}" 2>&1
"""

# srun in a job: the command once on each node (here: N local processes) with --output's %n = node index;
# --kill-on-bad-exit: the first failure ends the other nodes' tasks.
FAKE_SRUN = r"""#!/usr/bin/env bash
printf '%s\n' "$@" > "${FAKE_SLURM_DIR}/srun.args"
nodes=${SLURM_NNODES:-1} output=/dev/stdout
while [[ $# -gt 0 && $1 == --* ]]; do
    case "$1" in
        --nodes=*) nodes=${1#--nodes=} ;;
        --output=*) output=${1#--output=} ;;
    esac
    shift
done
pids=()
for ((node = 0; node < nodes; node++)); do
    SLURM_NODEID=${node} SLURM_PROCID=${node} SLURM_LOCALID=0 "$@" > "${output//%n/${node}}" 2>&1 &
    pids+=($!)
done
status=0
for ((i = 0; i < nodes; i++)); do
    if ! wait -n; then
        status=1
        kill "${pids[@]}" 2>/dev/null
    fi
done
exit "${status}"
"""


def write_wavs(data: Path, seconds, seed: int) -> None:
    (data / "audio").mkdir(parents=True)
    lines = []
    for i, sec in enumerate(seconds):
        rng = np.random.default_rng(seed * 100 + i)
        t = np.arange(int(sec * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 400) * t) + 0.05 * rng.standard_normal(t.size)
        path = data / "audio" / f"u{i:02d}.wav"
        soundfile.write(path, x.astype(np.float32), SR, subtype="PCM_16")
        lines.append(f"u{i:02d} {path}\n")
    (data / "wav.scp").write_text("".join(lines))
    write_utt2num_samples(data)  # what stage 1 writes (dphubert.bin.prepare_data)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """What stages 0-1 leave: exp/teacher/teacher.pt and prepared data dirs (linked into each recipe dir)."""
    root = tmp_path_factory.mktemp("multinode")
    torch.manual_seed(0)
    (root / "teacher").mkdir()
    save_model(Wav2Vec2Model(tiny_config("hubert")), root / "teacher" / "teacher.pt")
    rng = np.random.default_rng(0)
    write_wavs(root / "data" / "train", [float(x) for x in rng.uniform(0.5, 1.0, 12)], seed=1)
    write_wavs(root / "data" / "dev", [0.6] * 2, seed=2)
    return root


def make_recipe(shared: Path, path: Path, backend: str = "local") -> Path:
    """A corpus recipe as egs/<corpus> has it: the real stage script, utils, path.sh and cmd.sh (with backend)."""
    make_recipe_dir(path, "--train_set train --valid_set dev --distill_prune_config conf/distill_prune.yaml", backend)
    shutil.copytree(REPO / "egs" / "demo" / "conf", path / "conf", ignore=shutil.ignore_patterns("*.yaml", "*.sh"))
    (path / "conf" / "distill_prune.yaml").write_text(CONFIG)
    os.symlink(shared / "data", path / "data")
    (path / "exp").mkdir()
    os.symlink(shared / "teacher", path / "exp" / "teacher")
    return path


def recipe_env(**extra) -> dict:
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", OMP_NUM_THREADS="1", **extra)


def stage3(recipe: Path, *args, env=None, wait=True):
    cmd = ["./run.sh", "--stage", "3", "--stop_stage", "3", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=recipe, env=env or recipe_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    return finish(proc) if wait else proc


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=600)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def free_ports(count: int) -> int:
    """A port p with p .. p + count - 1 free here."""
    while True:
        with socket.socket() as s:
            s.bind(("", 0))
            first = s.getsockname()[1]
        if first + count > 65535:
            continue
        try:
            sockets = [socket.socket() for _ in range(count)]
            for offset, s in enumerate(sockets):
                s.bind(("", first + offset))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()


def weights(path: Path) -> dict:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in ckpt["state_dict"].items()}
    out.update({f"proj.{k}": v for k, v in ckpt["distill_linear_projs"].items()})
    return out


def assert_same_weights(a: Path, b: Path) -> None:
    """Within the tolerance of test_distill's two-process test (here they are equal bit for bit, measured)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-5, rtol=1e-4), key


@pytest.fixture(scope="module")
def one_node(shared, tmp_path_factory):
    """Stage 3 with --ngpu 2 on this CPU machine: torchrun --standalone with 2 gloo processes."""
    recipe = make_recipe(shared, tmp_path_factory.mktemp("one") / "corpus")
    result = stage3(recipe, "--ngpu", 2, "--tag", "one")
    assert result.returncode == 0, result.stderr[-3000:]
    return recipe / "exp" / "one"


# ----- one node, two processes (the --ngpu 2 path on CPU) ----------------------------------------------------------
def test_ngpu2_stage_runs_two_gloo_processes_on_cpu(one_node):
    job_log = (one_node / "logs" / "distill_prune.log").read_text().splitlines()
    assert job_log[0].startswith("# torchrun --standalone --nproc_per_node 2 --max_restarts 0 "
                                 "-m dphubert.bin.distill_prune ")
    train_log = (one_node / "train.log").read_text()
    assert "(rank 0 of 2, cpu)" in train_log
    assert ("batch: 1.6 s of audio per process (batch_seconds) x 1 accumulated (accum_grad) x 2 processes "
            "(1 node x 2) = 3.2 s per optimizer step") in train_log
    ckpt = torch.load(one_node / "checkpoints" / "ckpt_step00000008.pt", weights_only=True)
    assert ckpt["sampler"]["world_size"] == 2 and len(ckpt["rng"]) == 2
    assert (one_node / "pruned.pt").is_file() and (one_node / ".done.3").is_file()


# ----- two nodes by hand -----------------------------------------------------------------------------------------
def test_two_nodes_started_by_hand_train_like_one_node(shared, one_node, tmp_path):
    recipe = make_recipe(shared, tmp_path / "corpus")
    port = free_ports(3)
    nodes = ["--tag", "two", "--num_nodes", 2, "--master_addr", "127.0.0.1", "--master_port", port]
    node0 = stage3(recipe, *nodes, "--node_rank", 0, wait=False)
    node1 = finish(stage3(recipe, *nodes, "--node_rank", 1, wait=False))
    node0 = finish(node0)
    assert node0.returncode == 0, node0.stderr[-3000:]
    assert node1.returncode == 0, node1.stderr[-3000:]
    exp = recipe / "exp" / "two"
    assert_same_weights(exp / "last.pt", one_node / "last.pt")

    for rank in (0, 1):  # run.pl's log of each node starts with the command it ran
        first = (exp / "logs" / f"distill_prune.node{rank}.log").read_text().splitlines()[0]
        assert first.startswith(
            f"# torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint 127.0.0.1:{port} "
            f"--rdzv_id two_distill_prune --rdzv_conf {'is_host=1' if rank == 0 else 'is_host=0,read_timeout=1800'} "
            f"--max_restarts 0 -m dphubert.bin.distill_prune --config conf/distill_prune.yaml "), first
    assert "(2 nodes x 1)" in (exp / "train.log").read_text()
    # Node 0 pruned and marked the stage done; node 1 only trained.
    assert "node_rank 1: joining the training runs of stages 3-3" in node1.stderr
    assert "physical pruning" in node0.stderr and "physical pruning" not in node1.stderr
    assert (exp / "pruned.pt").is_file() and (exp / ".done.3").is_file()
    rerun = (exp / "run.sh").read_text()
    assert "--node_rank 0" in rerun and "with --node_rank K on node K" in rerun


# ----- SLURM, one job over two nodes, a rank killed midway --------------------------------------------------------
def test_slurm_job_over_two_nodes_survives_a_killed_rank(shared, one_node, tmp_path):
    recipe = make_recipe(shared, tmp_path / "corpus", backend="slurm")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("srun", FAKE_SRUN)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = recipe_env(FAKE_SLURM_DIR=str(tmp_path), DPHUBERT_CRASH_AFTER_STEP="6", DPHUBERT_CRASH_RANK="1")
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    result = stage3(recipe, "--tag", "slurm", "--num_nodes", 2, "--max_restarts", 1, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    exp = recipe / "exp" / "slurm"

    # One sbatch job over two nodes, one task per node; its script runs srun, which starts torchrun on each node.
    q = "exp/slurm/logs/q"
    assert (tmp_path / "sbatch.args").read_text().splitlines() == [
        "--export=ALL", "--nodes=2", "--ntasks-per-node=1", f"--output={q}/distill_prune.out",
        "--job-name=distill_prune", "--wait", f"{q}/distill_prune.sh"]
    torchrun = ("torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d --rdzv_endpoint {endpoint} "
                "--rdzv_id {job} --max_restarts 1 -m dphubert.bin.distill_prune --config conf/distill_prune.yaml "
                "--teacher exp/teacher/teacher.pt --data data/train --valid data/dev --exp exp/slurm")
    srun = "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 --output=exp/slurm/logs/distill_prune.node%n.log"
    script = (recipe / q / "distill_prune.sh").read_text()
    assert (f"command='port=$(utils/free_port.pl) && {srun} "
            + torchrun.format(endpoint="${SLURMD_NODENAME}:${port}", job="${SLURM_JOB_ID}") + "'\n") in script
    # What each node ran: the job's first node and a port free there, the job id as the rendezvous id.
    srun_args = (tmp_path / "srun.args").read_text().splitlines()
    port = next(a for a in srun_args if a.startswith("127.0.0.1:")).split(":")[1]
    assert " ".join(srun_args) == f"{srun[5:]} " + torchrun.format(endpoint=f"127.0.0.1:{port}", job="4242")

    # Rank 1 died after step 6; torchrun restarted both nodes' workers, which resumed from step 4.
    node_logs = [(exp / "logs" / f"distill_prune.node{k}.log").read_text() for k in (0, 1)]
    assert sum("exitcode: 75" in text for text in node_logs) == 1 and (exp / ".crash_hook_fired").is_file()
    train_log = (exp / "train.log").read_text()
    assert "torchrun restarted the workers (--max_restarts): resuming" in train_log
    assert "resumed from exp/slurm/checkpoints/ckpt_step00000004.pt (step 4)" in train_log
    assert (exp / "logs" / "distill_prune.log").read_text().splitlines()[-1].startswith("# Ended (code 0)")
    assert_same_weights(exp / "last.pt", one_node / "last.pt")
    assert (exp / "pruned.pt").is_file()


# ----- runs that cannot work: one line, before any training step ------------------------------------------------
def test_multi_node_runs_that_cannot_work_name_the_fix(shared, tmp_path):
    recipe = make_recipe(shared, tmp_path / "corpus")

    def error(*args):
        result = stage3(recipe, "--tag", "bad", *args)
        assert result.returncode == 1
        return result.stderr.strip().splitlines()[-1]

    line = error("--num_nodes", 2)
    assert "--num_nodes 2 with cmd_backend=local: the nodes cannot find each other" in line
    assert "--master_addr" in line and "cmd_backend=slurm" in line
    assert "--node_rank must be 0..1" in error("--num_nodes", 2, "--master_addr", "127.0.0.1", "--node_rank", 2)
    with socket.socket() as taken:  # another program listens on the rendezvous port
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = error("--num_nodes", 2, "--master_addr", "127.0.0.1", "--master_port", port)
    assert f"port {port} is in use" in line and "pass another --master_port" in line
    assert not (recipe / "exp" / "bad" / "checkpoints").exists()


def test_ranks_with_another_config_stop_before_training(shared, tmp_path):
    """Two launchers, the second with another lr: both fail at start with one line naming the key."""
    port = free_ports(1)
    common = ["-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
              "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "mismatch", "-m", "dphubert.bin.distill_prune",
              "--teacher", shared / "teacher" / "teacher.pt", "--data", shared / "data" / "train",
              "--exp", tmp_path / "exp", "--max-steps", 4, "--min-seconds", 0.2, "--num-workers", 0,
              "--num-buckets", 2]
    launchers = [subprocess.Popen([sys.executable, *map(str, common), *extra], cwd=REPO, env=recipe_env(),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for extra in ([], ["--lr", "2e-3"])]
    for proc in launchers:
        result = finish(proc)
        assert result.returncode != 0
        errors = [line for line in result.stderr.splitlines() if ": error: " in line]
        assert len(errors) == 1, result.stderr[-3000:]
        assert re.search(r"python -m dphubert\.bin\.distill_prune: error: rank 1 \(host .+\) has another config "
                         r"than rank 0 \(host .+\) \(lr: (0\.002 vs 0\.0002|0\.0002 vs 0\.002)\); start every "
                         r"node with the same options and config files$", errors[0]), errors[0]
    assert not (tmp_path / "exp" / "checkpoints").exists()


def test_a_refused_fresh_start_stays_refused_after_torchrun_restarts_it(one_node, shared, tmp_path):
    """Without --resume over an earlier run's checkpoints: refused, and the restart torchrun makes is refused too."""
    exp = tmp_path / "exp"
    shutil.copytree(one_node, exp)
    before = {p.name: p.read_bytes() for p in (exp / "checkpoints").iterdir()}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
           "--max_restarts", "1", "-m", "dphubert.bin.distill_prune",
           "--teacher", str(shared / "teacher" / "teacher.pt"), "--data", str(shared / "data" / "train"),
           "--exp", str(exp)]
    result = subprocess.run(cmd, cwd=REPO, env=recipe_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode != 0
    assert result.stderr.count("holds checkpoints of an earlier run (ckpt_step00000008.pt); pass --resume") == 2
    assert {p.name: p.read_bytes() for p in (exp / "checkpoints").iterdir()} == before


def _check_ranks(rank: int, store: str, cases: dict, queue) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    env = DistEnv(rank=rank, world_size=2, local_world_size=1)
    for name, per_rank in cases.items():
        exp_dir, config, inputs = per_rank[rank]
        try:
            check_same_inputs(env, exp_dir, config, inputs)
            queue.put((name, rank, None))
        except DistributedSetupError as e:
            queue.put((name, rank, str(e)))
    torch.distributed.destroy_process_group()


def test_ranks_that_see_other_data_or_another_exp_dir_are_named(tmp_path):
    """check_same_inputs in two forked gloo processes: every rank fails with the same line."""
    shared_exp, other_exp = tmp_path / "exp", tmp_path / "elsewhere"
    shared_exp.mkdir()
    other_exp.mkdir()
    config = {"lr": 2e-4}
    data = {"training data (data/train)": "aaa"}
    cases = {
        "same": [(shared_exp, config, data)] * 2,
        "data": [(shared_exp, config, data), (shared_exp, config, {"training data (data/train)": "bbb"})],
        "exp": [(shared_exp, config, data), (other_exp, config, data)],  # as if rank 1's node mounted another disk
    }
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    procs = [context.Process(target=_check_ranks, args=(rank, tmp_path / "store", cases, queue)) for rank in (0, 1)]
    for proc in procs:
        proc.start()
    results = {}
    for _ in range(2 * len(cases)):
        name, rank, message = queue.get(timeout=120)
        results[name, rank] = message
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    assert results["same", 0] is None and results["same", 1] is None
    for name in ("data", "exp"):
        assert results[name, 0] == results[name, 1], name
    assert re.fullmatch(r"rank 1 \(host .+\) reads another training data \(data/train\) than rank 0 \(host .+\) "
                        r"\(digest bbb vs aaa\); give every node the same files \(a shared file system, or identical "
                        r"copies at the same paths\)", results["data", 0])
    assert results["exp", 0].startswith(f"{shared_exp}: rank 1 (host ") and "a file system every node mounts" in \
        results["exp", 0]
    assert not list(shared_exp.iterdir())  # the check leaves no file behind


def test_device_cuda_without_cuda_is_one_line(shared, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status = distill_prune.main(["--teacher", str(shared / "teacher" / "teacher.pt"), "--data",
                                 str(shared / "data" / "train"), "--exp", str(tmp_path / "exp"), "--device", "cuda"])
    assert status == 1
    assert capsys.readouterr().err.strip() == ("python -m dphubert.bin.distill_prune: error: --device cuda: no CUDA "
                                               "device is available; use --device cpu")
