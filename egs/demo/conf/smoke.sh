# A reduced demo for CI's end-to-end smoke test: a 3-minute corpus and a few steps per stage.
local_data_opts="--minutes 3"
pretrain_config=conf/smoke/pretrain_hubert.yaml
distill_prune_config=conf/smoke/distill_prune.yaml
final_distill_config=conf/smoke/final_distill.yaml
distilhubert_config=conf/smoke/distilhubert.yaml
superb_tasks="ks"
tag=smoke
teacher_tag=teacher_smoke
# Stage 5: KS only, with few downstream steps (quick.yaml's 1200 would be most of the smoke test's time).
superb_opts="--num-threads 1 --jobs 2 --set runner.total_steps=60 runner.eval_step=30 runner.save_step=60"
