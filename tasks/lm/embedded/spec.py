"""What the embedded build is: its names, version, build parameters, special-token ids and file names,
in one place so that a change to any of them sits next to the version it must bump."""
from __future__ import annotations

EMBEDDED_CORPUS = "embedded:tiny-corpus"
EMBEDDED_MODEL = "embedded:tiny-gemma2"

# Bump when anything below changes what gets built: the cache folder is named after it, so an old build is
# never mistaken for a new one.
EMBEDDED_VERSION = 1

BUILD_SEED = 0
BUILD_N_DOCS = 4000
BUILD_VOCAB_SIZE = 1024
TRAIN_CTX = 128

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's tokenizer
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

STATS_FILE = "scopeflow_embedded.json"
MANIFEST_FILE = "manifest.json"
COMPLETE_MARKER = "COMPLETE"
