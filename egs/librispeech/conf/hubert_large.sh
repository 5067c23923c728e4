# HuBERT Large (316M) -> sparsity 0.75. Set TEACHER/TEACHER_FORMAT in db.sh to the HuBERT Large checkpoint.
teacher=${TEACHER}
teacher_format=${TEACHER_FORMAT}
teacher_tag=hubert_large
distill_prune_config=conf/hubert_large/distill_prune.yaml
final_distill_config=conf/hubert_large/final_distill.yaml
distilhubert_config=conf/hubert_large/distilhubert.yaml
tag=hubert_large_sp0.75
