# WavLM Base+ (94.7M) -> DPWavLM sparsity 0.75. Set TEACHER/TEACHER_FORMAT in db.sh to the WavLM Base+ checkpoint
# (HF microsoft/wavlm-base-plus dir with TEACHER_FORMAT=hf, or the original WavLM-Base+.pt with fairseq).
teacher=${TEACHER}
teacher_format=${TEACHER_FORMAT}
teacher_tag=wavlm_base_plus
distill_prune_config=conf/wavlm_base_plus/distill_prune.yaml
final_distill_config=conf/wavlm_base_plus/final_distill.yaml
distilhubert_config=conf/wavlm_base_plus/distilhubert.yaml
tag=wavlm_base_plus_sp0.75
