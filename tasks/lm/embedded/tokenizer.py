"""The embedded model's tokenizer: byte-level BPE trained on the corpus, saved as a standard folder."""
from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from tasks.lm.embedded.grammar import read_corpus
from tasks.lm.embedded.spec import BOS_ID, SPECIAL_TOKENS


def train_tokenizer(corpus_path: Path, out_dir: Path, vocab_size: int):
    """Byte-level BPE: every string round-trips exactly and nothing maps to <unk>, which keeps the pipeline's
    token accounting honest. The special tokens take Gemma's ids so code written against gemma-2 (BOS=2,
    EOS=1, PAD=0) needs no special case for the embedded model."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(read_corpus(Path(corpus_path)), trainer=trainer)
    for i, t in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(t) != i:
            raise RuntimeError(f"tokenizer: {t} got id {tok.token_to_id(t)}, expected {i}")
    # Gemma's tokenizer prepends BOS to every encoded text (and to each side of a pair); the same template
    # here makes `tok(text)["input_ids"][0] == bos_token_id` hold for the embedded model too.
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B:1", special_tokens=[("<bos>", BOS_ID)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,
    )
    save_tokenizer(hf, Path(out_dir))
    return hf


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """transformers 5 records its own class name (TokenizersBackend); the alias it still exports,
    PreTrainedTokenizerFast, also loads in transformers 4, so the folder stays usable by either, like a hub
    checkpoint. BOS is added by the post-processor inside tokenizer.json: transformers 5 ignores (and does
    not save) `add_bos_token` whenever a tokenizer.json is present."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out_dir)
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
