"""The embedded default: deterministic corpus, a Gemma-style tokenizer, a tiny Gemma 2 that loads through the
plain transformers path and has learnt real structure, its instruction-tuned variant, and a cache that builds once, atomically, under a lock.

The real build takes about a minute, so it is done once into the default cache (as a user's first run would)
and reused by later test runs; the cache mechanics are tested separately with a fake, instant build."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
from transformers import AutoConfig, AutoTokenizer

from tasks.lm import embedded
from tasks.lm.embedded import (
    BOS_ID,
    CHAT_TEMPLATE,
    COMPLETE_MARKER,
    EMBEDDED_CHATS,
    EMBEDDED_CORPUS,
    EMBEDDED_IT_MODEL,
    EMBEDDED_MODEL,
    EMBEDDED_VERSION,
    EOS_ID,
    PAD_ID,
    STATS_FILE,
    UNK_ID,
    ensure_embedded_assets,
    generate_corpus,
    read_chats,
    read_corpus,
    resolve_embedded,
)
from tasks.lm.embedded import cache as embedded_cache
from tasks.lm.packing import pack_sequences


@pytest.fixture(scope="module")
def assets():
    return ensure_embedded_assets()


# --- corpus ----------------------------------------------------------------------------------------------

def test_corpus_is_deterministic(tmp_path):
    a = generate_corpus(tmp_path / "a.jsonl", 60, seed=7)
    b = generate_corpus(tmp_path / "b.jsonl", 60, seed=7)
    c = generate_corpus(tmp_path / "c.jsonl", 60, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    lines = a.read_text().splitlines()
    assert len(lines) == 60
    assert all(set(json.loads(line)) == {"text"} for line in lines)


def test_corpus_has_text_structure(tmp_path):
    docs = read_corpus(generate_corpus(tmp_path / "c.jsonl", 200, seed=0))
    text = "\n".join(docs)
    assert all(d.strip() for d in docs)
    assert text.count('"') % 2 == 0 and '"' in text  # quotes open and close
    assert "?" in text and "!" in text and "," in text
    assert any(ch.isdigit() for ch in text)
    assert " were " in text and " was " in text  # number agreement has both forms to learn
    # Names recur inside a document: the material for in-context copying.
    words = [w.strip('.,!?":') for w in docs[0].split()]
    names = {w for w in words[1:] if w[:1].isupper() and words.count(w) >= 2}
    assert names


# --- tokenizer -------------------------------------------------------------------------------------------

def test_tokenizer_adds_bos_and_has_gemma_special_ids(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    assert (tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id) == (
        PAD_ID, EOS_ID, BOS_ID, UNK_ID)
    assert tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<eos>", "<bos>", "<unk>"]
    ids = tok("Anna found a red key near the river.")["input_ids"]
    assert ids[0] == BOS_ID and ids.count(BOS_ID) == 1 and EOS_ID not in ids
    assert tok("x", add_special_tokens=False)["input_ids"][0] != BOS_ID
    batch = tok(["one", "two words here"])["input_ids"]
    assert all(row[0] == BOS_ID for row in batch)
    assert len(tok) == embedded.BUILD_VOCAB_SIZE


def test_tokenizer_round_trips_text(assets):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    for text in read_corpus(assets.corpus_path)[:50] + ['Odd: "Zqx" 1234, \u00e9t\u00e9!\n\n  end']:
        ids = tok(text)["input_ids"]
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert UNK_ID not in ids


# --- model -----------------------------------------------------------------------------------------------

def test_model_loads_as_gemma2_through_auto_classes(assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer, Gemma2ForCausalLM

    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    assert isinstance(model, Gemma2ForCausalLM)
    assert model.config.model_type == "gemma2"
    assert model.config.architectures == ["Gemma2ForCausalLM"]
    assert model.config.num_hidden_layers >= 4 and len(model.model.layers) >= 4
    assert model.config.vocab_size == len(tok)
    assert model.config.tie_word_embeddings
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert (model.config.bos_token_id, model.config.eos_token_id, model.config.pad_token_id) == (
        BOS_ID, EOS_ID, PAD_ID)
    assert (assets.model_dir / "config.json").is_file()
    assert (assets.model_dir / "model.safetensors").is_file()


def test_hook_sites_match_design(assets):
    """The sites of docs/architecture.md ("Stages and units"): the three are module boundaries of every decoder layer, and in transformers 5
    a decoder layer returns the residual tensor itself (not a tuple)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(assets.model_dir, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    cfg = model.config
    seen = {}
    layer = 1
    mods = model.model.layers[layer]
    hooks = [
        mods.register_forward_hook(lambda m, a, out: seen.__setitem__("res", out)),
        mods.self_attn.o_proj.register_forward_hook(lambda m, a, out: seen.__setitem__("att", a[0])),
        mods.post_feedforward_layernorm.register_forward_hook(lambda m, a, out: seen.__setitem__("mlp", out)),
    ]
    enc = tok(["Tom had three apples. He gave one apple to Anna."], return_tensors="pt")
    with torch.no_grad():
        out = model(**enc, output_hidden_states=True)
    for h in hooks:
        h.remove()
    n = enc["input_ids"].shape[1]
    assert isinstance(seen["res"], torch.Tensor) and seen["res"].shape == (1, n, cfg.hidden_size)
    assert seen["att"].shape == (1, n, cfg.num_attention_heads * cfg.head_dim)
    assert seen["mlp"].shape == (1, n, cfg.hidden_size)
    assert torch.equal(out.hidden_states[layer + 1], seen["res"])


def test_model_beats_unigram(assets):
    s = assets.stats
    for key in ("heldout_loss", "unigram_entropy", "train_seconds", "n_params", "n_train_tokens", "version"):
        assert key in s
    assert s["version"] == EMBEDDED_VERSION
    assert s["heldout_loss"] < s["unigram_entropy"] - 0.5
    assert json.loads((assets.model_dir / embedded.STATS_FILE).read_text())["heldout_loss"] == s["heldout_loss"]


def test_stats_loss_reproduces_from_saved_model(assets):
    """The recorded held-out loss is what the saved weights give, so the folder is the model that was
    measured (and the eval path of the pipeline will see the same numbers)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(assets.model_dir).eval()
    tok = AutoTokenizer.from_pretrained(assets.model_dir)
    docs = read_corpus(assets.corpus_path)
    n_held = max(1, int(round(len(docs) * 0.04)))
    rows = torch.from_numpy(pack_sequences(tok(docs[-n_held:], add_special_tokens=False)["input_ids"],
                                           embedded.TRAIN_CTX, BOS_ID, EOS_ID).astype("int64"))[:32]
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, :-1].double()
    targets = rows[:, 1:]
    ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                           reduction="none")
    keep = (targets > UNK_ID).reshape(-1)
    assert abs(ce[keep].mean().item() - assets.stats["heldout_loss"]) < 0.3


# --- the instruction-tuned variant -------------------------------------------------------------------------

def test_the_instruction_tuned_variant_is_the_base_model_tuned_on_chats(assets):
    """Same architecture and vocabulary as the base model, other weights, a chat template of its own, and
    better at the held-out chats than the base model it started from."""
    base, it = (AutoConfig.from_pretrained(d).to_dict() for d in (assets.model_dir, assets.it_model_dir))
    where = ("dtype", "_name_or_path")
    assert {k: v for k, v in it.items() if k not in where} == {k: v for k, v in base.items() if k not in where}
    tok = AutoTokenizer.from_pretrained(assets.it_model_dir)
    assert tok.chat_template == CHAT_TEMPLATE and not AutoTokenizer.from_pretrained(assets.model_dir).chat_template
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(assets.model_dir).get_vocab()
    chats = read_chats(assets.chats_path)
    assert len(chats) == 300 and all(m[0]["role"] == "user" and m[1]["role"] == "assistant" for m in chats)
    text = tok.apply_chat_template(chats[0], tokenize=False)
    assert text == "<bos>" + "".join(f"{'model' if m['role'] == 'assistant' else 'user'}: {m['content']}\n"
                                     for m in chats[0])
    stats = json.loads((assets.it_model_dir / STATS_FILE).read_text())
    assert stats["tuned_chat_loss"] < 0.6 * stats["base_chat_loss"], stats
    weights = [safetensors.torch.load_file(d / "model.safetensors") for d in (assets.model_dir, assets.it_model_dir)]
    assert weights[0].keys() == weights[1].keys()
    up = "model.layers.0.mlp.up_proj.weight"
    assert not torch.equal(weights[0][up], weights[1][up])


# --- cache -----------------------------------------------------------------------------------------------

def test_second_call_is_fast_and_resolves_names(assets):
    t0 = time.perf_counter()
    again = ensure_embedded_assets()
    assert time.perf_counter() - t0 < 1.0
    assert again.corpus_path == assets.corpus_path and again.model_dir == assets.model_dir
    assert (assets.corpus_path.parent / COMPLETE_MARKER).is_file()
    assert resolve_embedded(EMBEDDED_CORPUS) == assets.corpus_path
    assert resolve_embedded(EMBEDDED_MODEL) == assets.model_dir
    assert resolve_embedded(EMBEDDED_IT_MODEL) == assets.it_model_dir
    assert resolve_embedded(EMBEDDED_CHATS) == assets.chats_path
    assert resolve_embedded("embedded:nope") is None
    assert resolve_embedded("google/gemma-2-2b") is None


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOPEFLOW_CACHE", str(tmp_path / "c"))
    assert embedded.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("SCOPEFLOW_CACHE")
    assert embedded.default_cache_dir() == Path.home() / ".cache" / "scopeflow"


class _FakeBuild:
    """Stands in for the minute-long build: writes the same layout instantly and counts its calls."""

    def __init__(self, delay: float = 0.0, fail: bool = False):
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.lock = threading.Lock()

    def __call__(self, root: Path, log=None) -> None:
        with self.lock:
            self.calls += 1
        (root / "model").mkdir(parents=True)
        (root / "corpus.jsonl").write_text('{"text": "hi"}\n')
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("build interrupted")
        (root / "model" / embedded.STATS_FILE).write_text(json.dumps({"heldout_loss": 1.0, "version": 1}))
        (root / embedded.MANIFEST_FILE).write_text(json.dumps({"build_seconds": 0.0}))
        (root / COMPLETE_MARKER).write_text("done\n")


def test_interrupted_build_leaves_nothing_and_is_redone(monkeypatch, tmp_path):
    failing = _FakeBuild(fail=True)
    monkeypatch.setattr(embedded_cache, "build_embedded_assets", failing)
    with pytest.raises(RuntimeError):
        ensure_embedded_assets(tmp_path)
    final = tmp_path / f"embedded-v{EMBEDDED_VERSION}"
    assert not final.exists()
    # A half-written folder under the final name (no marker) is also not trusted.
    (final / "model").mkdir(parents=True)
    (final / "corpus.jsonl").write_text("partial")

    good = _FakeBuild()
    monkeypatch.setattr(embedded_cache, "build_embedded_assets", good)
    a = ensure_embedded_assets(tmp_path)
    assert good.calls == 1
    assert a.corpus_path.read_text() == '{"text": "hi"}\n'
    assert a.stats["heldout_loss"] == 1.0 and a.stats["build_seconds"] == 0.0
    assert sorted(p.name for p in tmp_path.iterdir()) == [final.name, final.name + ".lock"]
    ensure_embedded_assets(tmp_path)
    assert good.calls == 1


def test_concurrent_callers_build_once(monkeypatch, tmp_path):
    fake = _FakeBuild(delay=0.5)
    monkeypatch.setattr(embedded_cache, "build_embedded_assets", fake)
    results, errors = [], []

    def call():
        try:
            results.append(ensure_embedded_assets(tmp_path))
        except Exception as e:  # surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert fake.calls == 1
    assert len({r.model_dir for r in results}) == 1
