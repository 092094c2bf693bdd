"""The embedded default: a corpus, a tokenizer and a tiny Gemma-2 causal LM that scopeflow makes itself,
offline and deterministically, so the whole SAE pipeline runs on a laptop with no downloads.

The corpus comes from a seeded probabilistic grammar rather than a bundled text so nothing large lives in
the repository and nothing is fetched; the grammar carries enough structure (agreement, articles, recurring
invented names, quotes, numbered steps, consistent arithmetic) that a small LM learns features an SAE can
find. The model is a genuine `Gemma2ForCausalLM` saved as a standard Hugging Face folder, so the rest of the
pipeline loads it through exactly the code path that loads google/gemma-2-2b.

Assets are built once into a cache folder (atomically, under a file lock) and reused. The modules follow
those jobs: spec (names, version, build parameters), lexicon, phrases and grammar (the corpus), tokenizer,
tiny_model (config and training), it_model (the instruction-tuned variant) and cache (the locked build, and its copy on the storage root for the
nodes of a cluster); this package re-exports what callers use.
"""
from tasks.lm.embedded.cache import (
    PUBLISHED_INDEX,
    EmbeddedAssets,
    assets_source,
    build_embedded_assets,
    default_cache_dir,
    ensure_embedded_assets,
    publish_embedded_assets,
    resolve_embedded,
)
from tasks.lm.embedded.grammar import generate_chat, generate_corpus, generate_document, read_chats, read_corpus
from tasks.lm.embedded.spec import (
    BOS_ID,
    BUILD_N_DOCS,
    BUILD_SEED,
    BUILD_VOCAB_SIZE,
    COMPLETE_MARKER,
    EMBEDDED_CHATS,
    EMBEDDED_CORPUS,
    EMBEDDED_IT_MODEL,
    EMBEDDED_MODEL,
    EMBEDDED_VERSION,
    EOS_ID,
    MANIFEST_FILE,
    PAD_ID,
    SPECIAL_TOKENS,
    STATS_FILE,
    TRAIN_CTX,
    UNK_ID,
)
from tasks.lm.embedded.it_model import CHAT_TEMPLATE, tune_instruction_model
from tasks.lm.embedded.tiny_model import tiny_gemma2_config, train_tiny_gemma2
from tasks.lm.embedded.tokenizer import save_tokenizer, train_tokenizer

__all__ = [
    "BOS_ID",
    "BUILD_N_DOCS",
    "BUILD_SEED",
    "BUILD_VOCAB_SIZE",
    "CHAT_TEMPLATE",
    "COMPLETE_MARKER",
    "EMBEDDED_CHATS",
    "EMBEDDED_CORPUS",
    "EMBEDDED_IT_MODEL",
    "EMBEDDED_MODEL",
    "EMBEDDED_VERSION",
    "EOS_ID",
    "MANIFEST_FILE",
    "PAD_ID",
    "PUBLISHED_INDEX",
    "SPECIAL_TOKENS",
    "STATS_FILE",
    "TRAIN_CTX",
    "UNK_ID",
    "EmbeddedAssets",
    "assets_source",
    "build_embedded_assets",
    "default_cache_dir",
    "ensure_embedded_assets",
    "generate_chat",
    "generate_corpus",
    "generate_document",
    "publish_embedded_assets",
    "read_chats",
    "read_corpus",
    "resolve_embedded",
    "save_tokenizer",
    "tiny_gemma2_config",
    "train_tiny_gemma2",
    "train_tokenizer",
    "tune_instruction_model",
]
