# The demo corpus is synthesised by local/data.sh (espeak-ng): no corpus path is needed.
# It is written to downloads/demo (audio in the layouts s3prl's tasks read) and data/ (Kaldi dirs).
DEMO=downloads/demo
# Stage 5 (mini-SUPERB) reads the synthesised corpus in the layouts of s3prl's tasks:
SPEECH_COMMANDS=${DEMO}/speech_commands_v0.01
SPEECH_COMMANDS_TEST=${DEMO}/speech_commands_test_set_v0.01
FLUENT_SPEECH_COMMANDS=${DEMO}/fluent_speech_commands_dataset
VOXCELEB1=${DEMO}/VoxCeleb1
LIBRISPEECH=${DEMO}/LibriSpeech
LIBRIPHONE=${DEMO}/superb/pr
