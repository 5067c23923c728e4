# Where the corpora live on this machine. LIBRISPEECH is the directory that holds train-clean-100/,
# train-clean-360/, train-other-500/, dev-clean/, dev-other/, test-clean/, test-other/ (flac, as downloaded
# from openslr.org/12 and unpacked), e.g. LIBRISPEECH=/data/LibriSpeech
LIBRISPEECH=
# The teacher of stage 0 (an HF save_pretrained dir, a fairseq .pt, a torchaudio state dict or one of ours),
# e.g. TEACHER=/models/hubert-base-ls960 with TEACHER_FORMAT=hf, or /models/hubert_base_ls960.pt with fairseq.
TEACHER=
TEACHER_FORMAT=hf
# Stage 5 (SUPERB with s3prl): the corpora of the tasks in --superb_tasks (empty = not available).
SPEECH_COMMANDS=          # ks: speech_commands_v0.01
SPEECH_COMMANDS_TEST=     # ks: speech_commands_test_set_v0.01 (default: next to SPEECH_COMMANDS)
FLUENT_SPEECH_COMMANDS=   # ic: fluent_speech_commands_dataset
LIBRIPHONE=               # pr: prepared LibriPhone lists ({train,dev,test}.csv, lexicon, phoneme.txt)
LIBRISPEECH_LEXICON=      # pr: lexicon file(s), used when LIBRIPHONE is empty
VOXCELEB1=                # sid, asv
IEMOCAP=                  # er
QUESST14=                 # qbe
SNIPS=                    # sf
LIBRIMIX=                 # sd
