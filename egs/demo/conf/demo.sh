# The demo's default setup (./run.sh): small teacher pretrained here, 0.75 sparsity, mini-SUPERB (KS, IC, SID, PR).
# Corpus: 60 min of audio from 30 speakers, plus test utterances so that every test set gives a 95% interval of
# about +-3 points or less (KS 1000 clips, IC 600 commands, SID 900 utterances, PR 200 sentences; they are cheap
# to synthesise and, with a frozen upstream, to evaluate).
local_data_opts="--num-speakers 30 --extra-test ks=1000,ic=600,sid=900,pr=200"
teacher_format=pretrain
pretrain_config=conf/pretrain_hubert.yaml
distill_prune_config=conf/distill_prune.yaml
final_distill_config=conf/final_distill.yaml
distilhubert_config=conf/distilhubert.yaml
baseline=true
# Stage 5: every model and the FBANK row (s3prl's fbank upstream) on the four tasks, quick settings.
superb_tasks="ks ic sid pr"
superb_opts="--num-threads 1 --jobs 2"  # two s3prl runs at once, one core each
tag=demo_sp0.75
nj=2
