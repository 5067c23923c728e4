# Where the corpora live on this machine; local/data.sh reads these variables.
# Set MYCORPUS to the directory that holds the downloaded corpus, e.g. MYCORPUS=/data/mycorpus
# (rename the variable after your corpus, e.g. LIBRISPEECH=, and use that name in local/data.sh).
MYCORPUS=
