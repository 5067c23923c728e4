# HuBERT Base (94.7M) -> DPHuBERT sparsity 0.75 (23.6M), the paper's main setting.
teacher=${TEACHER}
teacher_format=${TEACHER_FORMAT}
teacher_tag=hubert_base
distill_prune_config=conf/hubert_base/distill_prune.yaml
final_distill_config=conf/hubert_base/final_distill.yaml
distilhubert_config=conf/hubert_base/distilhubert.yaml
tag=hubert_base_sp0.75
