"""Evaluation from layer L (tasks/lm/partial_forward.py) against the full forward pass with a hook on
model(...): the clean and spliced losses at every site of the first, a middle and the last layer of the
embedded model, the evaluate stage's metrics against the previous implementation's (written out here with
plain hooks), repeatability, and the replay on other model families' decoder stacks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import zarr
import transformers

from flows.config import SuiteConfig
from sae import JumpReLUSAE, SAEMetrics
from storage.layout import TOKENS_EVAL
from storage.root import StorageRoot
from tasks.lm.model import keep_mask, load_model, load_tokenizer, special_token_ids
from tasks.lm.partial_forward import (forward_from_layer, logits_with_site_replaced, recording_layer_inputs,
                                      recording_splice_inputs)
from tasks.lm.sites import ActivationCapture, site_hooks, site_width
from tasks.stages.evaluate import evaluate_saes, spliced_site, token_losses
from tasks.stages.tokenize import tokenize_corpus
from tests.helpers import small_suite_dict

SITES = ("res", "att", "mlp")
LAYERS = (0, 2, 3)  # the embedded model's first, a middle and its last layer


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, embedded_assets):
    """The small suite's config and a root holding its tokens (eval: 8 sequences of 128, in batches of 4)."""
    tmp = tmp_path_factory.mktemp("from-layer")
    cfg = SuiteConfig.model_validate(small_suite_dict(tmp, **{"evaluate.batch_size": 4}))
    root = StorageRoot(str(tmp / "run"))
    tokenize_corpus(cfg, root)
    return cfg, root


@pytest.fixture(scope="module")
def eval_tokens(suite):
    cfg, root = suite
    return zarr.open_array(store=root.zarr_store(TOKENS_EVAL, read_only=True), mode="r")[:]


def random_sae(acts: torch.Tensor, width: int, seed: int) -> JumpReLUSAE:
    """A folded JumpReLU SAE on raw activations whose latents each fire on roughly a tenth of `acts`' rows."""
    gen = torch.Generator().manual_seed(seed)
    d = acts.shape[-1]
    w_dec = torch.randn(width, d, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    rows = acts.reshape(-1, d).float()
    z = rows @ w_dec.T
    threshold = (torch.quantile(z, 0.9, dim=0) * 1.001).clamp_min(1e-3)
    return JumpReLUSAE.from_tensors({"W_enc": w_dec.T.contiguous(), "W_dec": w_dec, "b_enc": torch.zeros(width),
                                     "b_dec": rows.mean(0), "threshold": threshold})


def site_activations(model, tokens: torch.Tensor, site: str, layer: int) -> torch.Tensor:
    capture = ActivationCapture([(site, layer)])
    with torch.inference_mode(), site_hooks(model, capture.hooks()):
        model(tokens)
    return capture.values[(site, layer)]


def hooked_spliced_logits(model, tokens: torch.Tensor, site: str, layer: int, sae, bos: int) -> torch.Tensor:
    """The previous evaluate stage's spliced pass: the whole model, the site replaced by a hook."""
    not_bos = (tokens != bos).unsqueeze(-1)

    def splice(t):
        x_hat, _ = sae(t.float())
        return torch.where(not_bos, x_hat.to(t.dtype), t)

    with torch.inference_mode(), site_hooks(model, {(site, layer): splice}):
        return model(tokens).logits


def test_the_embedded_model_has_sliding_layers_narrower_than_a_sequence(suite):
    """So the comparisons below see sliding-window masks that differ from full causal ones."""
    cfg, _ = suite
    config = load_model(cfg.model).config
    assert {"sliding_attention", "full_attention"} <= set(config.layer_types)
    assert config.sliding_window < cfg.corpus.ctx


@pytest.mark.parametrize("first", range(5))
def test_forward_from_each_layer_is_the_full_forward(suite, eval_tokens, first):
    cfg, _ = suite
    model = load_model(cfg.model)
    tokens = torch.from_numpy(eval_tokens.astype(np.int64))
    with torch.inference_mode():
        full = model(tokens).logits
        with recording_layer_inputs(model, first) as inputs:
            model(tokens, use_cache=False)
        hidden = inputs.hidden if first < 4 else site_activations(model, tokens, "res", 3)
        assert torch.equal(forward_from_layer(model, inputs, hidden), full)


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("layer", LAYERS)
def test_spliced_and_clean_losses_match_the_full_forward(suite, eval_tokens, site, layer):
    cfg, _ = suite
    model = load_model(cfg.model)
    tok = load_tokenizer(cfg.model)
    special = special_token_ids(tok)
    tokens = torch.from_numpy(eval_tokens.astype(np.int64))
    sae = random_sae(site_activations(model, tokens, site, layer), 128, seed=layer)

    reference = hooked_spliced_logits(model, tokens, site, layer, sae, tok.bos_token_id)
    with torch.inference_mode():
        clean_reference = model(tokens).logits
        capture = ActivationCapture([(site, layer)])
        with site_hooks(model, capture.hooks()), recording_splice_inputs(model, site, layer) as inputs:
            clean = model(tokens, use_cache=False).logits
        replaced, _, _ = spliced_site(sae, capture.values[(site, layer)], tokens, tok.bos_token_id)
        spliced = logits_with_site_replaced(model, inputs, site, layer, replaced)
        unchanged = logits_with_site_replaced(model, inputs, site, layer, capture.values[(site, layer)])

    assert torch.equal(clean, clean_reference) and torch.equal(unchanged, clean)
    torch.testing.assert_close(spliced, reference, rtol=1e-5, atol=1e-5)
    loss_ref, n_ref = token_losses(reference, tokens, special)
    loss, n = token_losses(spliced, tokens, special)
    assert n == n_ref and loss == pytest.approx(loss_ref, rel=1e-6)
    assert not torch.allclose(spliced, clean)  # the splice changed something downstream


def test_a_sliding_layer_replayed_with_the_full_mask_differs(suite, eval_tokens):
    """The replay is only right with each layer's own mask: layer 2 (sliding) given layer 1's (full) mask
    moves the logits, so the equalities above do test mask handling."""
    cfg, _ = suite
    model = load_model(cfg.model)
    tokens = torch.from_numpy(eval_tokens.astype(np.int64))
    with torch.inference_mode():
        full = model(tokens).logits
        with recording_layer_inputs(model, 1) as inputs:
            model(tokens, use_cache=False)
        inputs.calls[2] = inputs.calls[1]
        assert not torch.allclose(forward_from_layer(model, inputs), full, atol=1e-4)


def previous_token_losses(logits: torch.Tensor, tokens: torch.Tensor, special: set[int]) -> tuple[float, int]:
    """The previous evaluate stage's CE: the vocabulary along the transposed axis."""
    targets = tokens[:, 1:]
    ce = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none")
    keep = ~torch.isin(targets, torch.tensor(sorted(special)))
    return float(ce[keep].double().sum()), int(keep.sum())


def previous_evaluate(cfg, site: str, layer: int, saes, tokens_all: np.ndarray) -> tuple[list[dict], float]:
    """The previous evaluate stage's arithmetic with plain hooks on model(...): per batch the clean pass,
    then per SAE its metrics on the kept rows and the whole model with the site spliced."""
    model, tok = load_model(cfg.model), load_tokenizer(cfg.model)
    special = special_token_ids(tok)
    clean, spliced = [0.0, 0], [[0.0, 0] for _ in saes]
    metrics = [SAEMetrics(dense_threshold=cfg.evaluate.dense_threshold) for _ in saes]
    for start in range(0, len(tokens_all), cfg.evaluate.batch_size):
        batch_np = tokens_all[start:start + cfg.evaluate.batch_size]
        batch = torch.from_numpy(batch_np.astype(np.int64))
        capture = ActivationCapture([(site, layer)])
        with torch.inference_mode(), site_hooks(model, capture.hooks()):
            s, n = previous_token_losses(model(batch).logits, batch, special)
        clean[0] += s
        clean[1] += n
        rows = capture.values[(site, layer)][torch.from_numpy(keep_mask(batch_np, special))].float()
        for i, sae in enumerate(saes):
            with torch.inference_mode():
                metrics[i].update(rows, *sae(rows))
            logits = hooked_spliced_logits(model, batch, site, layer, sae, tok.bos_token_id)
            s, n = previous_token_losses(logits, batch, special)
            spliced[i][0] += s
            spliced[i][1] += n
    clean_loss = clean[0] / clean[1]
    out = []
    for m, (s, n) in zip(metrics, spliced):
        row = m.result(m.seen_mean())
        out.append({"l0": row["l0"], "fvu": row["fvu"], "mse": row["mse"], "n_dead": row["n_dead"],
                    "n_dense": row["n_dense"], "freq_hist": row["freq_hist"], "n_tokens": row["n_tokens"],
                    "spliced_loss": s / n, "delta_loss": s / n - clean_loss})
    return out, clean_loss


@pytest.mark.parametrize("site", SITES)
@pytest.mark.parametrize("layer", LAYERS)
def test_the_evaluate_stage_equals_the_previous_implementation(suite, eval_tokens, site, layer):
    cfg, root = suite
    model = load_model(cfg.model)
    tokens = torch.from_numpy(eval_tokens.astype(np.int64))
    acts = site_activations(model, tokens, site, layer)
    saes = [random_sae(acts, width, seed=10 * layer + i) for i, width in enumerate((64, 192))]
    assert cfg.evaluate.batch_size < len(eval_tokens)  # the sums stream over batches

    rows, clean_loss = evaluate_saes(cfg, site, layer, saes, root)
    expected, expected_clean = previous_evaluate(cfg, site, layer, saes, eval_tokens)
    assert clean_loss == pytest.approx(expected_clean, rel=1e-6)
    for got, want in zip(rows, expected, strict=True):
        for key in ("n_tokens", "n_dead", "n_dense", "freq_hist"):
            assert got[key] == want[key], key
        for key in ("l0", "fvu", "mse", "spliced_loss"):
            assert got[key] == pytest.approx(want[key], rel=1e-6), key
        assert got["delta_loss"] == pytest.approx(want["delta_loss"], rel=1e-4, abs=1e-7)
        assert got["d_in"] == site_width(model.config, site)


def test_the_evaluate_stage_is_bit_for_bit_repeatable(suite, eval_tokens):
    cfg, root = suite
    model = load_model(cfg.model)
    acts = site_activations(model, torch.from_numpy(eval_tokens.astype(np.int64)), "att", 2)
    saes = [random_sae(acts, 96, seed=7)]
    assert evaluate_saes(cfg, "att", 2, saes, root) == evaluate_saes(cfg, "att", 2, saes, root)


def _tiny_config(family: str):
    common = dict(vocab_size=97, num_hidden_layers=4)
    if family == "gpt2":
        return transformers.GPT2Config(n_embd=32, n_head=4, n_positions=64, **{"n_layer": 4, "vocab_size": 97})
    shapes = dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=64, **common)
    if family == "gemma3_text":
        return transformers.Gemma3TextConfig(head_dim=8, sliding_window=8, query_pre_attn_scalar=8, **shapes)
    return {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config}[family](**shapes)


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text", "gpt2"])
def test_other_families_replay_from_a_middle_layer(family):
    """The replay reads each layer's arguments from the model's own forward, so it holds for decoder stacks
    with other masks and position tables (Gemma 3: per-kind rotary tables and sliding windows; GPT-2:
    positional arguments and learnt positions)."""
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(_tiny_config(family), attn_implementation="eager").eval()
    tokens = torch.randint(1, 97, (2, 24))
    for site in SITES:
        acts = site_activations(model, tokens, site, 2)
        sae = random_sae(acts, 48, seed=1)
        reference = hooked_spliced_logits(model, tokens, site, 2, sae, bos=0)
        with torch.inference_mode():
            capture = ActivationCapture([(site, 2)])
            with site_hooks(model, capture.hooks()), recording_splice_inputs(model, site, 2) as inputs:
                clean = model(tokens, use_cache=False).logits
            replaced, _, _ = spliced_site(sae, capture.values[(site, 2)], tokens, bos=0)
            torch.testing.assert_close(logits_with_site_replaced(model, inputs, site, 2, replaced), reference,
                                       rtol=1e-5, atol=1e-5)
            # the site's own clean tensor put back gives the clean logits, bit for bit
            assert torch.equal(logits_with_site_replaced(model, inputs, site, 2, capture.values[(site, 2)]), clean), site
