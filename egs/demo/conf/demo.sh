# The demo's default setup (./run.sh): small teacher pretrained here, 0.75 sparsity, mini-SUPERB (KS, PR).
teacher_format=pretrain
pretrain_config=conf/pretrain_hubert.yaml
distill_prune_config=conf/distill_prune.yaml
final_distill_config=conf/final_distill.yaml
distilhubert_config=conf/distilhubert.yaml
baseline=true
# Stage 5: KS and PR learn above chance from this small teacher in 1200-1500 downstream steps; IC and SID
# (their layouts are in the corpus too: --superb_tasks "ks ic sid pr") stay near chance and double the time.
superb_tasks="ks pr"
superb_opts="--num-threads 1 --jobs 2"  # two s3prl runs at once, one core each
tag=demo_sp0.75
nj=2
