# Where the corpora live on this machine; local/data.sh reads these variables.
# Set MYCORPUS to the directory that holds the downloaded corpus, e.g. MYCORPUS=/data/mycorpus
# (rename the variable after your corpus, e.g. LIBRISPEECH=, and use that name in local/data.sh).
MYCORPUS=
# The teacher of stage 0: an HF save_pretrained dir (TEACHER_FORMAT=hf), a fairseq .pt (fairseq), a torchaudio
# state dict (torchaudio) or a dphubert model file (dphubert: ours, or a released DPHuBERT/DPWavLM file), e.g.
# TEACHER=/models/hubert-base-ls960 with TEACHER_FORMAT=hf. ./run.sh --teacher PATH --teacher_format F overrides.
TEACHER=
TEACHER_FORMAT=hf
