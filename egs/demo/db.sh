# The demo corpus is synthesised by local/data.sh (espeak-ng): no corpus path is needed.
# It is written to downloads/demo (audio in the layouts s3prl's tasks read) and data/ (Kaldi dirs).
DEMO=downloads/demo
