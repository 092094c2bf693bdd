"""The tiny Gemma 2: its config, and a deterministic CPU training run that saves it as a standard Hugging
Face folder together with its held-out loss against a unigram baseline."""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
import transformers
from transformers import Gemma2Config

from tasks.lm.embedded.grammar import read_corpus
from tasks.lm.embedded.spec import BOS_ID, BUILD_SEED, EMBEDDED_VERSION, EOS_ID, PAD_ID, STATS_FILE, TRAIN_CTX
from tasks.lm.embedded.tokenizer import save_tokenizer
from tasks.lm.packing import pack_sequences


def tiny_gemma2_config(vocab_size: int):
    """Gemma 2's architecture at toy size: alternating sliding/global attention, GQA, soft-capping, the
    four RMSNorms per layer and tied embeddings all present, so every hook site the pipeline uses exists
    and behaves as it does in gemma-2-2b."""
    return Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=256,
        sliding_window=64,
        query_pre_attn_scalar=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=BOS_ID,
        tie_word_embeddings=True,
        attn_implementation="eager",
    )


@contextlib.contextmanager
def deterministic_torch(threads: int):
    """Fixed thread count and deterministic kernels make CPU training bit-reproducible on one machine; the
    previous settings come back afterwards so a caller (a test session, a Ray worker) is not left changed."""
    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    # Filling every fresh allocation with NaN only helps catch reads of uninitialised memory; it cost ~10%
    # of a training step here and changes no result.
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
        torch.use_deterministic_algorithms(prev_det, warn_only=prev_warn)
        torch.set_num_threads(prev_threads)


def special_ids(tokenizer) -> list[int]:
    return sorted({i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id,
                               tokenizer.unk_token_id) if i is not None})


def train_steps(model, train_rows: torch.Tensor, *, steps: int, batch_size: int, lr: float, warmup_steps: int,
                seed: int, log: Callable[[str], None] | None = None) -> float:
    """AdamW with linear warm-up and cosine decay to 10% over shuffled rows, a fixed number of steps (the
    tiny model's training and its instruction tuning). Returns the seconds it took."""
    vocab = model.config.vocab_size
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95), eps=1e-8)

    def lr_at(step: int) -> float:
        if step < warmup_steps:
            return lr * (step + 1) / warmup_steps
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * t)))

    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(train_rows), generator=gen)
    cursor = 0
    t0 = time.perf_counter()
    for step in range(steps):
        if cursor + batch_size > len(order):
            order = torch.randperm(len(train_rows), generator=gen)
            cursor = 0
        batch = train_rows[order[cursor: cursor + batch_size]]
        cursor += batch_size
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(input_ids=batch, use_cache=False).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if log is not None and (step % 50 == 0 or step == steps - 1):
            log(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - t0:6.1f}s")
    model.eval()
    return time.perf_counter() - t0


def heldout_ce(model, rows: torch.Tensor, special: torch.Tensor, batch_size: int) -> tuple[float, int]:
    """Mean next-token CE (nats) over targets that are not special tokens, and their count."""
    vocab = model.config.vocab_size
    keep = ~torch.isin(rows[:, 1:], special)
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(rows), batch_size):
            b = rows[i: i + batch_size]
            logits = model(input_ids=b, use_cache=False).logits[:, :-1].double()
            ce = F.cross_entropy(logits.reshape(-1, vocab), b[:, 1:].reshape(-1), reduction="none")
            total += ce[keep[i: i + batch_size].reshape(-1)].sum().item()
    n = int(keep.sum())
    return total / n, n


def train_tiny_gemma2(
    corpus_path: Path,
    tokenizer,
    out_dir: Path,
    *,
    seed: int = BUILD_SEED,
    steps: int = 420,
    batch_size: int = 16,
    ctx: int = TRAIN_CTX,
    lr: float = 3e-3,
    warmup_steps: int = 30,
    heldout_fraction: float = 0.04,
    threads: int = 2,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Training length is a step count, not a wall-clock budget, so the same seed gives the same weights
    whatever else the machine is doing; the defaults take about a minute on two idle cores. Small batches
    and many steps: at this size the number of updates, not the batch noise, limits how much is learnt."""
    out_dir = Path(out_dir)
    docs = read_corpus(Path(corpus_path))
    n_held = max(1, int(round(len(docs) * heldout_fraction)))
    if len(docs) <= n_held:
        raise ValueError(f"corpus has {len(docs)} documents; need more than the {n_held} held out")
    ids = tokenizer(docs, add_special_tokens=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    # The tokenize stage's packing, so the model is trained on exactly what it will later be probed with.
    train_rows = torch.from_numpy(pack_sequences(ids[:-n_held], ctx, bos, eos).astype("int64"))
    held_rows = torch.from_numpy(pack_sequences(ids[-n_held:], ctx, bos, eos).astype("int64"))
    vocab = len(tokenizer)
    special = torch.tensor(special_ids(tokenizer))

    with deterministic_torch(threads):
        torch.manual_seed(seed)
        # through transformers' lazy module: its modelling code (~3 CPU-s to import) loads only when a model
        # is built, not in every process that imports the embedded assets' helpers
        model = transformers.Gemma2ForCausalLM(tiny_gemma2_config(vocab))
        train_seconds = train_steps(model, train_rows, steps=steps, batch_size=batch_size, lr=lr,
                                    warmup_steps=warmup_steps, seed=seed, log=log)
        heldout_loss, n_eval = heldout_ce(model, held_rows, special, batch_size)
        targets = held_rows[:, 1:]
        keep = ~torch.isin(targets, special)

        # Unigram baseline on exactly the same target tokens: frequencies from the training split, add-one
        # smoothed over the non-special vocabulary.
        train_tokens = train_rows[:, 1:].reshape(-1)
        train_tokens = train_tokens[~torch.isin(train_tokens, special)]
        counts = torch.bincount(train_tokens, minlength=vocab).double()
        counts[special] = 0.0
        n_ordinary = vocab - len(special)
        logp = torch.log((counts + 1.0) / (counts.sum() + n_ordinary))
        unigram_entropy = float(-logp[targets[keep]].mean())

        n_params = sum(p.numel() for p in model.parameters())
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
    save_tokenizer(tokenizer, out_dir)

    stats = {
        "heldout_loss": heldout_loss,
        "unigram_entropy": unigram_entropy,
        "train_seconds": train_seconds,
        "n_params": n_params,
        "n_train_tokens": int(train_rows.numel()),
        "n_heldout_tokens": n_eval,
        "tokens_seen": steps * batch_size * ctx,
        "steps": steps,
        "batch_size": batch_size,
        "ctx": ctx,
        "seed": seed,
        "vocab_size": vocab,
        "version": EMBEDDED_VERSION,
    }
    (out_dir / STATS_FILE).write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats
