#!/usr/bin/env bash
# CI's smoke test of a new corpus recipe, done as docs/recipes.md's "Your own corpus" says (make recipe-smoke, ~3 min):
#   1. egs/TEMPLATE/setup.sh makes a recipe in a scratch dir; only db.sh, local/data.sh and the run length in the
#      shipped conf/*.yaml are edited, as a user does;
#   2. the "downloaded corpus" is espeak-ng speech (22.05 kHz wav files, so the recipe runs with --resample true) in
#      <corpus>/<set>/<speaker>/<name>.wav, and the teacher a small random HF HubertModel (save_pretrained dir);
#   3. stages 0-4 run with stage 3 killed midway by the trainer's DPHUBERT_CRASH_AFTER_STEP hook; a plain rerun
#      must resume it from its checkpoint and finish stage 4.
# Usage: tools/recipe_smoke.sh [workdir]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${root}/.venv/bin/python
work=${1:-$(mktemp -d /tmp/dphubert-recipe-smoke.XXXXXX)}
recipe=${work}/egs/mycorpus
corpus=${work}/corpus
rm -rf "${work}/egs" "${corpus}"
mkdir -p "${work}/egs"
fail() { echo "recipe smoke: FAILED: $*" >&2; exit 1; }
start=$(date +%s)

# ---- the corpus and the teacher a user would bring ----
speakers=(en-us+m1 en-us+f2 en-gb+m3 en-gb+f4)
sentences=("the quick brown fox jumps over the lazy dog" "please turn the lights off in the kitchen"
           "she sells sea shells by the sea shore" "how much wood would a woodchuck chuck"
           "a stitch in time saves nine" "an apple a day keeps the doctor away")
for s in "${!speakers[@]}"; do
    set_name=train; [ "${s}" -lt 3 ] || set_name=dev
    dir=${corpus}/${set_name}/spk${s}
    mkdir -p "${dir}"
    for i in "${!sentences[@]}"; do
        espeak-ng -v "${speakers[s]}" -s $(( 150 + 10 * i )) -w "${dir}/utt${i}.wav" "${sentences[i]}"
    done
done
"${python}" - "${work}/hubert_tiny" <<'EOF'
import sys, torch
from transformers import HubertConfig, HubertModel
torch.manual_seed(0)
config = HubertConfig(hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96,
                      conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
HubertModel(config).save_pretrained(sys.argv[1])
EOF

# ---- the recipe, made and edited as docs/recipes.md says ----
"${root}/egs/TEMPLATE/setup.sh" "${recipe}"
cd "${recipe}"
sed -i "s|^MYCORPUS=.*|MYCORPUS=${corpus}|; s|^TEACHER=.*|TEACHER=${work}/hubert_tiny|" db.sh
# local/data.sh: its example (audio in <corpus>/<set>/<speaker>/<name>.flac) fits, with wav files.
sed -i '/^die "local\/data.sh is still the template/d; s/\.flac/.wav/g' local/data.sh
# A first try: the shipped configs with the run shortened (their comments say how), for a tiny teacher.
"${python}" - <<'EOF'
import yaml
short = {"distill_prune": dict(max_steps=8, warmup_steps=2, sparsity_warmup_steps=4, target_sparsity=0.3,
                               reg_lr=0.05, save_interval=3, valid_interval=8),
         "final_distill": dict(max_steps=4, warmup_steps=1, save_interval=2, valid_interval=4)}
for name, keys in short.items():
    path = f"conf/{name}.yaml"
    cfg = yaml.safe_load(open(path))
    cfg.update(keys, min_seconds=0.5, max_seconds=6.0, batch_seconds=8.0, num_buckets=None, num_workers=0,
               log_interval=2, valid_max_batches=1)
    yaml.safe_dump(cfg, open(path, "w"), sort_keys=False)
EOF

# ---- stages 0-4, stage 3 killed after step 5 (its checkpoint is at step 3), then a plain rerun ----
export OMP_NUM_THREADS=1
if DPHUBERT_CRASH_AFTER_STEP=5 ./run.sh --stop_stage 4 --resample true --nj 2 > "${work}/killed.log" 2>&1; then
    fail "the run with DPHUBERT_CRASH_AFTER_STEP=5 did not stop (${work}/killed.log)"
fi
grep -q "run.pl: 1 / 1 failed, log is in exp/distill_prune/logs/distill_prune.log" "${work}/killed.log" \
    || fail "the killed stage 3 is not what stopped the run (${work}/killed.log)"
[ ! -e exp/distill_prune/.done.3 ] || fail "a killed stage 3 left exp/distill_prune/.done.3"
./run.sh --stop_stage 4 --resample true --nj 2 > "${work}/rerun.log" 2>&1 \
    || { tail -20 "${work}/rerun.log" >&2; fail "the plain rerun failed (${work}/rerun.log)"; }
grep -q "Stage 0: teacher ready.*skipped" "${work}/rerun.log" || fail "stage 0 was not skipped on the rerun"
grep -q "resumed from .*ckpt_step00000003.pt (step 3)" exp/distill_prune/logs/distill_prune.log \
    || fail "stage 3 did not resume from its step-3 checkpoint (exp/distill_prune/logs/distill_prune.log)"
for f in exp/teacher/.done.0 data/.done.1 exp/distill_prune/.done.3 exp/distill_prune/.done.4 \
         exp/distill_prune/pruned.pt exp/distill_prune/final/model.pt exp/distill_prune/final/model_release.pth; do
    [ -f "${f}" ] || fail "${recipe}/${f} is missing"
done
"${python}" - <<'EOF'
from dphubert.models import load_model
model = load_model("exp/distill_prune/final/model.pt")
teacher = load_model("exp/teacher/teacher.pt")
assert model.num_params() < teacher.num_params(), (model.num_params(), teacher.num_params())
print(f"recipe smoke: student {model.num_params():,} of the teacher's {teacher.num_params():,} parameters")
EOF
echo "recipe smoke: OK in $(( $(date +%s) - start )) s (${recipe})"
