# Where the corpora live on this machine. LIBRISPEECH is the directory that holds train-clean-100/,
# train-clean-360/, train-other-500/, dev-clean/, dev-other/, test-clean/, test-other/ (flac, as downloaded
# from openslr.org/12 and unpacked), e.g. LIBRISPEECH=/data/LibriSpeech
LIBRISPEECH=
# The teacher of stage 0 (an HF save_pretrained dir, a fairseq .pt, a torchaudio state dict or one of ours),
# e.g. TEACHER=/models/hubert-base-ls960 with TEACHER_FORMAT=hf, or /models/hubert_base_ls960.pt with fairseq.
TEACHER=
TEACHER_FORMAT=hf
