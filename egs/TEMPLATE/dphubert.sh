#!/usr/bin/env bash
# The shared stages of every dphubert recipe (ESPnet egs2 style). A corpus's run.sh names its sets and passes "$@".
#   0 teacher preparation     1 data preparation        2 teacher feature dump (optional)
#   3 joint distill-prune + physical pruning             4 final distill + packaging
#   5 SUPERB evaluation
set -euo pipefail

_orig_args=$(printf '%q ' "$@")   # for exp/<tag>/run.sh
. utils/log.sh
. ./db.sh   # corpus and teacher locations; --config files may refer to them

# ---- options (each can be given as --name value; see --help) ----
stage=0                 # first stage to run
stop_stage=10000        # last stage to run
ngpu=0                  # GPUs per node of a training job (0: CPU); >1 launches torchrun --nproc_per_node ngpu
num_nodes=1             # nodes per training job: cmd_backend=slurm runs one job over them (srun); else run this
                        # script on every node with --node_rank and --master_addr (docs/recipes.md: several GPUs and several nodes)
node_rank=0             # without SLURM: this node's index 0..num_nodes-1 (node 0 also prunes and packages)
master_addr=            # without SLURM: node 0's address, where torchrun's rendezvous runs
master_port=29400       # without SLURM: the rendezvous port on node 0 (stages 3, 4 and the baseline: +0, +1, +2)
max_restarts=0          # torchrun restarts after a lost worker; the restarted run resumes from its last checkpoint
nj=4                    # parallel jobs for data preparation and dumping
tag=                    # experiment name: exp/<tag>; default from the configs
force=false             # rerun stages that already finished (their .done markers are ignored)
python=python           # python interpreter (path.sh activates the repository's .venv)

train_set=              # data/<train_set>: distillation data
valid_set=              # data/<valid_set>: validation during training
test_sets=              # other data sets local/data.sh prepares
local_data_opts=        # options passed to local/data.sh
resample=false          # accept audio that is not 16 kHz (resampled when read) in every stage that reads data/<set>
downmix=false           # accept multi-channel audio (channels averaged when read)
skip_bad_audio=false    # leave out unreadable/empty utterances instead of failing: stage 1 lists them in
                        # data/<set>/skipped_audio.txt and drops them from data/<set> (the training stages too)

teacher=${TEACHER:-}    # stage 0: the teacher checkpoint (HF dir, fairseq .pt, torchaudio state dict, ours); db.sh's TEACHER
teacher_tag=teacher     # stage 0 writes exp/<teacher_tag>/teacher.pt
teacher_format=${TEACHER_FORMAT:-hf}  # hf | fairseq | torchaudio | dphubert | pretrain (demo: pretrain a small HuBERT)
pretrain_config=conf/pretrain_hubert.yaml   # teacher_format=pretrain only
trust_checkpoint=false  # allow teacher pickles that need code to load (old fairseq files)

dump_teacher=false      # stage 2: dump teacher features once instead of running the teacher online
dump_layers=            # teacher layers to dump; empty: those Step 1 distils (distill_prune_config's distill_layers)
distill_prune_config=conf/distill_prune.yaml
distill_prune_opts=     # stage 3: extra distill_prune options, e.g. "--budget macs --target-sparsity 0.6"
prune_opts=             # stage 3: extra options of dphubert.bin.prune, e.g. "--selection paper"
targets=                # a target sweep, e.g. "params:0.5 macs:0.75" (docs/recipes.md: target sweeps): stages 3-4 per target
                        # in exp/<tag>_<budget><target>, stage 5 once for all, exp/<sweep_tag>/PARETO.md
sweep_tag=              # the sweep's dir exp/<sweep_tag> [<tag>_sweep]
seed=                   # stages 3-4: the training seed of Step 1, Step 2 and the baseline [the configs' seed]
seeds=                  # several training runs, e.g. "1 2 3": stages 3-4 per seed in exp/<tag>_seed<N>, stage 5 once for
                        # all in exp/<tag>/superb with the mean, spread and paired comparison over seeds
final_distill_config=conf/final_distill.yaml
baseline=false          # stage 4: also train the DistilHuBERT-style baseline of the same size (auto: where one fits)
choices_baseline="true false auto"
distilhubert_config=conf/distilhubert.yaml
superb_tasks=           # stage 5: e.g. "ks ic pr"
superb_opts=            # stage 5: extra options of dphubert.bin.superb_stage

help_message="Usage: $0 --train_set <set> --valid_set <set> [options]
Runs the dphubert stages for this corpus; outputs go to data/, dump/ and exp/<tag>/.
Stages: 0 teacher, 1 data, 2 teacher dump (--dump_teacher true), 3 distill-prune + prune,
        4 final distill + packaging, 5 SUPERB (--superb_tasks \"ks ic pr\").
Options (defaults in brackets):
  --stage N / --stop_stage N     stages to run [${stage} / ${stop_stage}]
  --ngpu N                       GPUs per node of a training job; 0 = CPU [${ngpu}]
  --num_nodes N                  nodes per training job (SLURM: one job over N nodes) [${num_nodes}]
  --node_rank K --master_addr HOST [--master_port P]
                                 multi-node without SLURM: run on every node, K = 0..N-1, HOST = node 0
  --max_restarts R               torchrun restarts after a lost worker (the run resumes) [${max_restarts}]
  --nj N                         parallel data jobs [${nj}]
  --tag NAME                     experiment dir exp/NAME [from the config file names]
  --force true|false             rerun finished stages [${force}]
  --resample / --downmix / --skip_bad_audio true|false
                                 audio that is not 16 kHz / not mono / unreadable: resample, average the
                                 channels, leave it out (listed in data/<set>/skipped_audio.txt) [false]
  --teacher PATH --teacher_format hf|fairseq|torchaudio|dphubert|pretrain [--teacher_tag NAME]
  --dump_teacher true|false      dump teacher features in stage 2 [${dump_teacher}]
  --dump_layers 0,4,8,12         layers to dump [empty: the distill_layers and layer0 of --distill_prune_config]
  --distill_prune_config / --final_distill_config / --distilhubert_config FILE
  --distill_prune_opts \"...\"     extra distill_prune options (e.g. \"--budget macs --target-sparsity 0.6\")
  --prune_opts \"...\"             extra options of the physical pruning (e.g. \"--selection paper\")
  --targets \"params:0.5 macs:0.75\"  a target sweep: one exp dir per target, then exp/<sweep_tag>/PARETO.md
  --seed N                       training seed of stages 3-4 [the configs' seed]
  --seeds \"1 2 3\"               train stages 3-4 once per seed (exp/<tag>_seed<N>); stage 5 reports the mean,
                                 the spread and DPHuBERT vs the baseline over seeds and test utterances
  --baseline true|false|auto     also train the DistilHuBERT-style baseline; auto: only where one can be as
                                 small as the student (else distilhubert/NOT_BUILT.txt says why) [${baseline}]
  --superb_tasks \"ks ic ...\"     SUPERB tasks of stage 5
  --config FILE                  read option defaults from FILE
e.g.: ./run.sh --stage 3 --stop_stage 4 --ngpu 4
      ./run.sh --targets \"params:0.5 params:0.75 macs:0.6 macs:0.75\"              # a sweep and its Pareto report
      ./run.sh --stage 3 --stop_stage 4 --ngpu 8 --num_nodes 2 --max_restarts 2   # cmd_backend=slurm"

. utils/parse_options.sh
[ $# -eq 0 ] || die "unexpected argument '$1' (options look like --stage 3; see --help)"
# The Python stages' error messages then name this script's options (--resample true) rather than their flags.
export DPHUBERT_RECIPE=1
. ./path.sh
. ./cmd.sh

[ -n "${train_set}" ] || die "--train_set is empty: run.sh must name the training data set"
[ -n "${valid_set}" ] || die "--valid_set is empty: run.sh must name the validation data set"
[[ "${num_nodes}" =~ ^[1-9][0-9]*$ ]] || die "--num_nodes must be a positive integer, got '${num_nodes}'"
[[ "${max_restarts}" =~ ^[0-9]+$ ]] || die "--max_restarts must be 0 or a positive integer, got '${max_restarts}'"
if [ "${num_nodes}" -gt 1 ] && [ "${cmd_backend}" != slurm ]; then
    [ -n "${master_addr}" ] || die "--num_nodes ${num_nodes} with cmd_backend=${cmd_backend}: the nodes cannot" \
        "find each other; run this script on every node with --node_rank 0..$(( num_nodes - 1 ))" \
        "--master_addr <node 0's address>, or set cmd_backend=slurm in cmd.sh"
    [[ "${node_rank}" =~ ^[0-9]+$ ]] && [ "${node_rank}" -lt "${num_nodes}" ] \
        || die "--node_rank must be 0..$(( num_nodes - 1 )) with --num_nodes ${num_nodes}, got '${node_rank}'"
    [[ "${master_port}" =~ ^[0-9]+$ ]] || die "--master_port must be a port number, got '${master_port}'"
    if [ "${node_rank}" -eq 0 ]; then  # node 0 hosts the rendezvous: a taken port would hang the other nodes
        for _port in "${master_port}" $(( master_port + 1 )) $(( master_port + 2 )); do
            utils/free_port.pl "${_port}" > /dev/null || die "--master_port ${master_port}: port ${_port} is in" \
                "use on $(hostname) (another run's rendezvous?); pass another --master_port, e.g." \
                "--master_port $(utils/free_port.pl)"
        done
    fi
elif [ "${node_rank}" != 0 ]; then
    die "--node_rank ${node_rank} is for --num_nodes > 1 without SLURM (with cmd_backend=slurm, srun starts the nodes)"
fi
# How every stage that reads data/<set> treats audio it cannot take as it is (the same flags in each CLI).
audio_opts=""
for _opt in resample downmix skip_bad_audio; do
    case "${!_opt}" in
        true) audio_opts="${audio_opts} --${_opt//_/-}" ;;
        false) ;;
        *) die "--${_opt} must be true or false, got '${!_opt}'" ;;
    esac
done
[ -z "${seed}" ] || [[ "${seed}" =~ ^[0-9]+$ ]] || die "--seed must be a non-negative integer, got '${seed}'"
if [ -n "${seeds}" ]; then
    for _s in ${seeds}; do
        [[ "${_s}" =~ ^[0-9]+$ ]] || die "--seeds must be non-negative integers separated by spaces, e.g. \"1 2 3\"; got '${seeds}'"
    done
    [ "$(printf '%s\n' ${seeds} | sort | uniq -d)" = "" ] || die "--seeds '${seeds}' names a seed twice; give each once"
    [ -z "${seed}" ] || die "--seed ${seed} and --seeds '${seeds}' both given: --seeds sets each run's seed; drop --seed"
fi
case "${baseline}" in
    true|false|auto) ;;
    *) die "--baseline must be true, false or auto, got '${baseline}'" ;;
esac
# torch shares one rendezvous store across torchrun's restarts, where a restarted group can read the lost workers'
# addresses and fail once more: with restarts, every attempt gets a fresh store.
[ "${max_restarts}" -eq 0 ] || export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1
if [ "${node_rank}" -gt 0 ]; then
    # The other nodes only join the training runs; node 0 also prepares the data, prunes, packages and evaluates.
    [ "${stage}" -ge 3 ] || stage=3
    [ "${stop_stage}" -le 4 ] || stop_stage=4
    log "node_rank ${node_rank}: joining the training runs of stages ${stage}-${stop_stage} (node 0 does the rest)"
fi
if [ -z "${tag}" ]; then
    tag=$(basename "${distill_prune_config%.*}")
fi
expdir=exp/${tag}
teacher_dir=exp/${teacher_tag}
teacher_pt=${teacher_dir}/teacher.pt
logdir=${expdir}/logs
mkdir -p "${logdir}"

# A stage's .done marker makes reruns skip it; --force true (or deleting the marker) reruns it. A stage that starts
# work removes its marker first, so that a run killed midway (a --force rerun too) is not taken for a finished one:
# the next plain run does the stage again, and its training runs resume from their checkpoints.
stage_done() { [ "${force}" = false ] && [ -f "$1/.done.$2" ]; }
start_work() { [ "${node_rank}" -gt 0 ] || rm -f "$1/.done.$2"; }
mark_done() { [ "${node_rank}" -gt 0 ] || touch "$1/.done.$2"; }
# Before a long stage, leave a script that reruns it with the same options (as ESPnet does).
write_rerun_script() {
    local n=$1
    [ "${node_rank}" -eq 0 ] || return 0  # node 0 writes it; the others run it with --node_rank K
    {
        echo "#!/usr/bin/env bash"
        echo "# Reruns stage ${n} of ${expdir} with the options it was started with."
        if [ "${num_nodes}" -gt 1 ] && [ "${cmd_backend}" != slurm ]; then
            echo "# ${num_nodes} nodes: run it on every node, as it is on node 0 and with --node_rank K on node K."
        fi
        echo "cd $(pwd) && ./dphubert.sh ${_orig_args}--stage ${n} --stop_stage ${n} --force true \"\$@\""
    } > "${expdir}/run.sh"
    chmod +x "${expdir}/run.sh"
}
# How training run $1 (distill_prune, final_distill, distilhubert; $2: its port offset) starts: python (one
# process); torchrun --standalone on one node (ngpu > 1 or max_restarts > 0); over num_nodes nodes, torchrun with a
# c10d rendezvous on node 0, started on every node by srun (cmd_backend=slurm) or by this script on each node.
launcher() {
    local per_node=$(( ngpu > 1 ? ngpu : 1 ))
    local elastic="--max_restarts ${max_restarts}"
    if [ "${num_nodes}" -eq 1 ]; then
        if [ "${ngpu}" -le 1 ] && [ "${max_restarts}" -eq 0 ]; then
            echo "${python}"
        else
            echo "torchrun --standalone --nproc_per_node ${per_node} ${elastic}"
        fi
    elif [ "${cmd_backend}" = slurm ]; then
        # Expanded in the job script on the job's first node: SLURMD_NODENAME is that node, free_port.pl picks a
        # port there; srun starts one torchrun per node, each node's output in ${logdir}/$1.node<K>.log.
        echo "port=\$(utils/free_port.pl) && srun --nodes=${num_nodes} --ntasks-per-node=1 --kill-on-bad-exit=1" \
            "--output=${logdir}/$1.node%n.log torchrun --nnodes ${num_nodes} --nproc_per_node ${per_node}" \
            "--rdzv_backend c10d --rdzv_endpoint \${SLURMD_NODENAME}:\${port} --rdzv_id \${SLURM_JOB_ID} ${elastic}"
    else
        # Node 0 hosts the rendezvous store; the others wait for it (node 0 may still be pruning or packaging).
        local conf="is_host=1"
        [ "${node_rank}" -eq 0 ] || conf="is_host=0,read_timeout=1800"
        echo "torchrun --nnodes ${num_nodes} --nproc_per_node ${per_node} --rdzv_backend c10d" \
            "--rdzv_endpoint ${master_addr}:$(( master_port + $2 )) --rdzv_id ${tag}_$1 --rdzv_conf ${conf} ${elastic}"
    fi
}
# The launcher options and the log of training run $1: with several nodes and no SLURM, one log per node.
train_opts() {
    if [ "${num_nodes}" -gt 1 ] && [ "${cmd_backend}" = slurm ]; then
        echo "--gpu ${ngpu} --num_nodes ${num_nodes}"
    else
        echo "--gpu ${ngpu}"
    fi
}
train_log() {
    if [ "${num_nodes}" -gt 1 ] && [ "${cmd_backend}" != slurm ]; then
        echo "${logdir}/$1.node${node_rank}.log"
    else
        echo "${logdir}/$1.log"
    fi
}
# Wall time per stage, for the summary at the end (exp/<tag>/stage_times.txt, one line per stage that ran;
# a rerun replaces its stage's line, a skipped stage keeps the time of the run that did the work).
stage_started() { _stage_t0=${SECONDS}; _stage_ran=true; }
stage_skipped() { _stage_ran=false; }  # after the log line saying why
stage_finished() {
    [ "${_stage_ran}" = true ] && [ "${node_rank}" -eq 0 ] || return 0
    local times="${expdir}/stage_times.txt"
    # (grep finds no other line when this stage is the only one timed so far: not an error)
    { [ -f "${times}" ] && grep -v "^stage $1:" "${times}" || true; echo "stage $1: $(( SECONDS - _stage_t0 )) s"; } \
        | sort -k2,2n > "${times}.tmp"
    mv "${times}.tmp" "${times}"
}
# A killed training run resumes from DIR/checkpoints; with --force true it starts again, and the old
# checkpoints are kept aside in DIR/checkpoints.before_force (one generation) instead of being resumed.
resume_flag() {
    [ "${node_rank}" -eq 0 ] || return 0  # node 0 decides: when one rank resumes, every rank does
    [ -d "$1/checkpoints" ] || return 0
    if [ "${force}" = true ]; then
        rm -rf "$1/checkpoints.before_force"
        mv "$1/checkpoints" "$1/checkpoints.before_force"
        log "--force true: training $1 from scratch (its old checkpoints are in $1/checkpoints.before_force)"
    else
        echo "--resume"
    fi
}

# ---- a target sweep (--targets): this script again per target, stage 5 once, the Pareto report ----
if [ -n "${targets}" ]; then
    sweep_dir=exp/${sweep_tag:-${tag}_sweep}
    # The plan: "<tag> <distill_prune options>" per target; an item that does not parse (or, once the teacher
    # exists, a target the student cannot reach) fails here in one line.
    plan=$(${python} -m dphubert.bin.sweep plan --targets "${targets}" --prefix "${tag}" --teacher "${teacher_pt}" \
        --config "${distill_prune_config}") || exit 1
    again() { eval "./dphubert.sh ${_orig_args} --targets '' $*"; }
    if [ "${stage}" -le 2 ]; then
        again --stop_stage $(( stop_stage < 2 ? stop_stage : 2 )) --tag "$(basename "${sweep_dir}")"
    fi
    models="teacher=${teacher_pt}"
    while read -r t_tag t_opts; do
        if [ "${stop_stage}" -ge 3 ]; then
            if stage_done "exp/${t_tag}" 4; then
                log "Sweep: exp/${t_tag} finished stages 3-4; skipped (--force true reruns it)"
            else
                log "Sweep: stages 3-4 of target ${t_tag} (${t_opts})"
                again --stage $(( stage > 3 ? stage : 3 )) --stop_stage $(( stop_stage < 4 ? stop_stage : 4 )) \
                    --tag "${t_tag}" --superb_tasks "''" --distill_prune_opts "'${distill_prune_opts} ${t_opts}'"
            fi
        fi
        for _s in ${seeds:-0}; do  # without --seeds: one run, no suffix
            suffix=${seeds:+_seed${_s}}
            models="${models} ${t_tag}${suffix}=exp/${t_tag}${suffix}/final/model.pt"
            # (--baseline auto: a target whose student is smaller than any baseline has none)
            [ "${baseline}" = false ] || [ ! -f "exp/${t_tag}${suffix}/distilhubert/model.pt" ] \
                || models="${models} ${t_tag}_distilhubert${suffix}=exp/${t_tag}${suffix}/distilhubert/model.pt"
        done
    done <<< "${plan}"
    results=
    if [ "${stop_stage}" -ge 5 ] && [ -n "${superb_tasks}" ]; then
        # One stage 5 over the teacher and every target's models: the teacher is evaluated once, and pairs
        # finished before (same model file) are kept by superb_stage.
        superb_force=""
        [ "${force}" = true ] && superb_force="--force"
        log "Sweep: SUPERB tasks '${superb_tasks}' of ${models} -> ${sweep_dir}/superb (log: ${sweep_dir}/superb.log)"
        mkdir -p "${sweep_dir}"
        ${cuda_cmd} --gpu "$(( ngpu > 0 ? 1 : 0 ))" "${sweep_dir}/superb.log" \
            ${python} -m dphubert.bin.superb_stage --tasks "${superb_tasks}" --models ${models} \
            --out "${sweep_dir}/superb" ${superb_opts} ${superb_force}
        results="--results ${sweep_dir}/superb/results.json"
    fi
    if [ "${stop_stage}" -ge 4 ]; then
        ${python} -m dphubert.bin.sweep report --targets "${targets}" --prefix "${tag}" --teacher "${teacher_pt}" \
            --out "${sweep_dir}" ${seeds:+--seeds "${seeds}"} ${results}
        log "Sweep: ${sweep_dir}/PARETO.md and pareto.png"
    fi
    exit 0
fi

# ---- several seeds (--seeds): this script again per seed for stages 3-4, then stage 5 here over all of them ----
if [ -n "${seeds}" ]; then
    again_seeds() { eval "./dphubert.sh ${_orig_args} --seeds '' $*"; }
    if [ "${stage}" -le 2 ]; then
        again_seeds --stop_stage $(( stop_stage < 2 ? stop_stage : 2 ))
    fi
    if [ "${stop_stage}" -ge 3 ] && [ "${stage}" -le 4 ]; then
        for _s in ${seeds}; do
            log "Seeds: stages 3-4 of seed ${_s} -> exp/${tag}_seed${_s}"
            again_seeds --stage $(( stage > 3 ? stage : 3 )) --stop_stage $(( stop_stage < 4 ? stop_stage : 4 )) \
                --tag "${tag}_seed${_s}" --seed "${_s}" --superb_tasks "''"
        done
    fi
    stage=$(( stage > 5 ? stage : 5 ))  # stages 0-4 ran above; stage 5 (below) evaluates every seed's models
fi

if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ]; then
    stage_started
    if stage_done "${teacher_dir}" 0; then
        log "Stage 0: teacher ready (${teacher_pt}); skipped (--force true reruns it)"; stage_skipped
    else
        mkdir -p "${teacher_dir}"
        start_work "${teacher_dir}" 0
        if [ "${teacher_format}" = pretrain ]; then
            log "Stage 0: pretraining a small HuBERT teacher on data/${train_set}" \
                "(log: ${teacher_dir}/logs/pretrain.log)"
            # The demo pretrains on its own corpus, so the corpus must exist first.
            local/data.sh ${local_data_opts}
            ${train_cmd} --num-threads "${nj}" "${teacher_dir}/logs/pretrain.log" \
                ${python} -m dphubert.bin.pretrain_hubert --config "${pretrain_config}" \
                --data "data/${train_set}" --out "${teacher_pt}" $(resume_flag "${teacher_dir}") ${audio_opts}
        else
            [ -n "${teacher}" ] || die "no teacher: set TEACHER (and TEACHER_FORMAT) in db.sh, or pass --teacher PATH"
            [ -e "${teacher}" ] || die "teacher checkpoint '${teacher}' does not exist; fix TEACHER in db.sh (or --teacher)"
            trust=""
            [ "${trust_checkpoint}" = true ] && trust="--trust-checkpoint"
            log "Stage 0: converting the ${teacher_format} teacher ${teacher} -> ${teacher_pt}"
            ${python} -m dphubert.bin.convert --from "${teacher_format}" "${teacher}" --out "${teacher_pt}" ${trust}
        fi
        mark_done "${teacher_dir}" 0
    fi
    stage_finished 0
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    stage_started
    if stage_done data 1; then
        log "Stage 1: data ready; skipped (--force true reruns it)"; stage_skipped
    else
        mkdir -p data
        start_work data 1
        # utt2num_samples and skipped_audio.txt are this stage's outputs: ones left from an earlier run (with other
        # utterances, or without the skipped ones) would fail the check of the data dirs local/data.sh writes again.
        for dset in ${train_set} ${valid_set} ${test_sets}; do
            rm -f "data/${dset}/utt2num_samples" "data/${dset}/skipped_audio.txt"
        done
        log "Stage 1: data preparation (local/data.sh ${local_data_opts})"
        local/data.sh ${local_data_opts}
        for dset in $(printf '%s\n' ${train_set} ${valid_set} ${test_sets} | awk '!seen[$0]++'); do
            utils/validate_data_dir.sh "data/${dset}"
            log "Stage 1: checking audio and writing data/${dset}/utt2num_samples"
            ${python} -m dphubert.bin.prepare_data --data "data/${dset}" --nj "${nj}" ${audio_opts}
            if [ -f "data/${dset}/skipped_audio.txt" ]; then  # (--skip_bad_audio true): the dir stays consistent
                log "Stage 1: leaving the $(wc -l < "data/${dset}/skipped_audio.txt") utterance(s) of" \
                    "data/${dset}/skipped_audio.txt out of data/${dset} (originals in data/${dset}/.backup/)"
                utils/fix_data_dir.sh "data/${dset}"
            fi
        done
        mark_done data 1
    fi
    stage_finished 1
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ] && [ "${dump_teacher}" = true ]; then
    stage_started
    # The layers (and what layer 0 is) come from the Step-1 config stage 3 trains with: one source of truth, and a
    # --dump_layers that misses one of them stops before any audio is read. Only the training set is dumped:
    # stage 3 validates with the online teacher.
    layers_opt=""
    [ -z "${dump_layers}" ] || layers_opt="--layers ${dump_layers}"
    log "Stage 2: dumping the teacher layers ${distill_prune_config} distils${dump_layers:+ (--dump_layers ${dump_layers})}" \
        "of data/${train_set} -> dump/teacher/${train_set} (log: ${logdir}/dump_teacher_${train_set}.log)"
    ${train_cmd} "${logdir}/dump_teacher_${train_set}.log" \
        ${python} -m dphubert.bin.dump_teacher --teacher "${teacher_pt}" --data "data/${train_set}" \
        --config "${distill_prune_config}" ${layers_opt} --out "dump/teacher/${train_set}" ${audio_opts}
    stage_finished 2
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    stage_started
    [ -f "${teacher_pt}" ] || die "${teacher_pt} is missing: run stage 0 first (./run.sh --stage 0 --stop_stage 0)"
    [ -f "data/${train_set}/utt2num_samples" ] || die "data/${train_set} is not prepared: run stage 1 first"
    if stage_done "${expdir}" 3; then
        log "Stage 3: ${expdir}/pruned.pt exists; skipped (--force true reruns it)"; stage_skipped
    else
        start_work "${expdir}" 3
        write_rerun_script 3
        feats=""
        [ "${dump_teacher}" = true ] && feats="--teacher-feats dump/teacher/${train_set}"
        log "Stage 3: joint distillation and pruning -> ${expdir} (log: $(train_log distill_prune))"
        ${cuda_cmd} $(train_opts) "$(train_log distill_prune)" \
            $(launcher distill_prune 0) -m dphubert.bin.distill_prune --config "${distill_prune_config}" \
            --teacher "${teacher_pt}" --data "data/${train_set}" --valid "data/${valid_set}" \
            --exp "${expdir}" ${feats} ${audio_opts} ${seed:+--seed ${seed}} ${distill_prune_opts} \
            $(resume_flag "${expdir}")
        if [ "${node_rank}" -eq 0 ]; then
            log "Stage 3: physical pruning -> ${expdir}/pruned.pt"
            ${python} -m dphubert.bin.prune --ckpt "${expdir}/last.pt" --out "${expdir}/pruned.pt" \
                --teacher "${teacher_pt}" ${prune_opts} 2>&1 | tee "${logdir}/prune.log"
        fi
        mark_done "${expdir}" 3
    fi
    stage_finished 3
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    stage_started
    # (the other nodes do not wait here: node 0 may still be pruning, their training starts when node 0 joins)
    # (a pruned.pt without .done.3 is left from a stage 3 killed midway)
    [ "${node_rank}" -gt 0 ] || { [ -f "${expdir}/pruned.pt" ] && [ -f "${expdir}/.done.3" ]; } \
        || die "${expdir}/pruned.pt is missing or stage 3 did not finish (no ${expdir}/.done.3): run stage 3 first"
    if stage_done "${expdir}" 4; then
        log "Stage 4: ${expdir}/final/model.pt exists; skipped (--force true reruns it)"; stage_skipped
    else
        start_work "${expdir}" 4
        write_rerun_script 4
        log "Stage 4: final distillation -> ${expdir}/final (log: $(train_log final_distill))"
        ${cuda_cmd} $(train_opts) "$(train_log final_distill)" \
            $(launcher final_distill 1) -m dphubert.bin.final_distill --config "${final_distill_config}" \
            --student "${expdir}/pruned.pt" --teacher "${teacher_pt}" --data "data/${train_set}" \
            --valid "data/${valid_set}" --exp "${expdir}/final" ${audio_opts} ${seed:+--seed ${seed}} \
            $(resume_flag "${expdir}/final")
        if [ "${node_rank}" -eq 0 ]; then
            ${python} -m dphubert.bin.package --model "${expdir}/final/last.pt" --teacher "${teacher_pt}" \
                --out "${expdir}/final/model.pt" --release-out "${expdir}/final/model_release.pth"
        fi
        if [ "${baseline}" != false ]; then
            log "Stage 4: DistilHuBERT-style baseline of the same size -> ${expdir}/distilhubert"
            if_possible=""
            [ "${baseline}" = auto ] && if_possible="--if-possible"
            rm -f "${expdir}/distilhubert/model.pt"  # a model of an earlier student size must not be reported
            ${cuda_cmd} $(train_opts) "$(train_log distilhubert)" \
                $(launcher distilhubert 2) -m dphubert.bin.distilhubert --config "${distilhubert_config}" \
                --teacher "${teacher_pt}" --data "data/${train_set}" --valid "data/${valid_set}" \
                --match "${expdir}/pruned.pt" --exp "${expdir}/distilhubert" ${audio_opts} ${if_possible} \
                ${seed:+--seed ${seed}} \
                $(resume_flag "${expdir}/distilhubert")
            if [ -f "${expdir}/distilhubert/NOT_BUILT.txt" ]; then
                log "Stage 4: no baseline for this student (--baseline auto):" \
                    "$(cat "${expdir}/distilhubert/NOT_BUILT.txt")"
            elif [ "${node_rank}" -eq 0 ]; then
                ${python} -m dphubert.bin.package --model "${expdir}/distilhubert/last.pt" \
                    --teacher "${teacher_pt}" --out "${expdir}/distilhubert/model.pt"
            fi
        fi
        mark_done "${expdir}" 4
        log "Stage 4: the compressed model is ${expdir}/final/model.pt (summary.json, architecture.png beside it)"
    fi
    stage_finished 4
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && [ -n "${superb_tasks}" ]; then
    stage_started
    models="teacher=${teacher_pt}"
    for _s in ${seeds:-0}; do  # without --seeds: one run, no suffix
        suffix=${seeds:+_seed${_s}}
        run_dir=exp/${tag}${suffix}
        { [ -f "${run_dir}/final/model.pt" ] && [ -f "${run_dir}/.done.4" ]; } \
            || die "${run_dir}/final/model.pt is missing or stage 4 did not finish (no ${run_dir}/.done.4): run" \
                "stages 3-4 first (./run.sh --stage 3${seeds:+ --seeds \"${seeds}\"})"
        models="${models} dphubert${suffix}=${run_dir}/final/model.pt"
        [ ! -f "${run_dir}/distilhubert/model.pt" ] || models="${models} distilhubert${suffix}=${run_dir}/distilhubert/model.pt"
    done
    # The marker holds what was evaluated: other tasks, options or models (or a model retrained since: its size
    # and time) run stage 5 again, where superb_stage keeps the pairs that are still valid.
    model_stamps=$(for m in ${models}; do stat -c '%s@%Y' "${m#*=}"; done | tr '\n' ' ')
    superb_run="tasks: ${superb_tasks}; models: ${models} (${model_stamps% }); options: ${superb_opts}"
    if [ "${force}" = false ] && [ "$(cat "${expdir}/.done.5" 2>/dev/null)" = "${superb_run}" ]; then
        log "Stage 5: ${expdir}/superb/RESULTS.md is up to date; skipped (--force true reruns it)"; stage_skipped
    else
        start_work "${expdir}" 5
        log "Stage 5: SUPERB tasks '${superb_tasks}' -> ${expdir}/superb (log: ${logdir}/superb.log)"
        superb_force=""
        [ "${force}" = true ] && superb_force="--force"  # else pairs finished before are kept
        ${cuda_cmd} --gpu "$(( ngpu > 0 ? 1 : 0 ))" "${logdir}/superb.log" \
            ${python} -m dphubert.bin.superb_stage --tasks "${superb_tasks}" --models ${models} \
            --out "${expdir}/superb" ${superb_opts} ${superb_force}
        echo "${superb_run}" > "${expdir}/.done.5"
        log "Stage 5: results in ${expdir}/superb/RESULTS.md"
    fi
    stage_finished 5
fi

log "Finished stages ${stage}-${stop_stage}; experiment dir: ${expdir}"
