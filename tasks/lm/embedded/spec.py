"""What the embedded build is: its names, version, build parameters, special-token ids and file names,
in one place so that a change to any of them sits next to the version it must bump."""
from __future__ import annotations

EMBEDDED_CORPUS = "embedded:tiny-corpus"
EMBEDDED_MODEL = "embedded:tiny-gemma2"
#: the tiny model tuned briefly on chats, with a chat template (base -> instruction-tuned transfer)
EMBEDDED_IT_MODEL = "embedded:tiny-gemma2-it"
#: held-out chats (jsonl, a `messages` list per line) that the instruction-tuned variant is evaluated on
EMBEDDED_CHATS = "embedded:tiny-chats"

# Bump when anything below changes what gets built: the cache folder is named after it, so an old build is
# never mistaken for a new one.
EMBEDDED_VERSION = 2  # 2: the instruction-tuned variant and its chats

BUILD_SEED = 0
BUILD_N_DOCS = 4000
BUILD_VOCAB_SIZE = 1024
TRAIN_CTX = 128
# the instruction-tuned variant: chats to tune on and to evaluate on (other seeds than the corpus's), and how long
IT_SEED = 1
IT_N_CHATS = 2000
IT_N_EVAL_CHATS = 300
IT_STEPS = 100
IT_LR = 1e-3

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's tokenizer
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3

STATS_FILE = "scopeflow_embedded.json"
MANIFEST_FILE = "manifest.json"
COMPLETE_MARKER = "COMPLETE"
