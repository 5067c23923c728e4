# The demo with a deeper teacher (./run.sh --config conf/deep.sh): 12 layers instead of 4 (conf/pretrain_hubert_deep.yaml),
# everything else as conf/demo.sh. At sparsity 0.75 the DPHuBERT student keeps 12 thin layers where the same-size
# DistilHuBERT baseline has 3: depth against width, as in the paper (12 layers against DistilHuBERT's 2).
# It reuses the demo's corpus (data/, stage 1) and pretrains its own teacher in exp/teacher_deep.
. conf/demo.sh
pretrain_config=conf/pretrain_hubert_deep.yaml
teacher_tag=teacher_deep
tag=demo_deep_sp0.75
