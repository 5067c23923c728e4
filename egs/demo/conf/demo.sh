# The demo's default setup (./run.sh): small teacher pretrained here, 0.75 sparsity, mini-SUPERB.
teacher_format=pretrain
pretrain_config=conf/pretrain_hubert.yaml
distill_prune_config=conf/distill_prune.yaml
final_distill_config=conf/final_distill.yaml
distilhubert_config=conf/distilhubert.yaml
baseline=true
superb_tasks="ks ic sid pr"
superb_opts="--num-threads 1"
tag=demo_sp0.75
nj=2
