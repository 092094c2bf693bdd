"""Each stage's unit function on tiny data, called directly (no Ray, no Prefect), chained once per module."""
from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import zarr

from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from sae import load_gemma_scope_npz, load_saelens
from sae.metrics import FREQ_HIST_EDGES
from storage.arrays import read_rows
from storage.layout import LATENT_CONTEXTS, LATENT_STATS, latent_splitting, latents_dir
from storage.ledger import Ledger
from storage.layout import activation_shard as shard_group
from storage.layout import eval_table as eval_path
from storage.layout import import_eval_table as import_eval_path
from storage.layout import shuffled as shuffled_group
from tasks.execute import run_unit
from tasks.config import EvalModelConfig, ModelConfig
from tasks.lm.embedded import ensure_embedded_assets
from tasks.lm.eval_text import eval_model_tokens
from tasks.lm.model import load_model, load_tokenizer
from tasks.lm.packing import pack_sequences
from sae import SweepPoint
from tasks.lm.logit_lens import output_tokens
from tasks.stages.inspect import accumulate_latents, contexts_table, stats_table
from tasks.stages.train import sae_dir
from tests.helpers import IT_MODEL, run_suite_in_process, small_suite_dict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, embedded_assets):
    """Runs every unit of a small suite once through the runner, with the in-process executor."""
    tmp = tmp_path_factory.mktemp("stages")
    cfg = SuiteConfig.model_validate(small_suite_dict(tmp, **{"evaluate.models": [IT_MODEL]}))
    prepared = prepare_suite(cfg, "test")
    plan = run_suite_in_process(cfg, prepared)
    return cfg, prepared, plan


def _tokens(root, name):
    return zarr.open_array(store=root.zarr_store(name), mode="r")


def test_tokenize_packs_bos_sequences(suite):
    cfg, prepared, _ = suite
    tok = load_tokenizer(cfg.model)
    train, ev = _tokens(prepared.root, "tokens/train"), _tokens(prepared.root, "tokens/eval")
    assert train.dtype == np.int32 and train.shape == (96, cfg.corpus.ctx) and ev.shape == (8, cfg.corpus.ctx)
    assert (train[:, 0] == tok.bos_token_id).all() and (ev[:, 0] == tok.bos_token_id).all()
    assert not (train[:, 1:] == tok.bos_token_id).any()
    assert (train[:] == tok.eos_token_id).any()  # documents are closed by EOS inside sequences
    # eval and train sequences are disjoint rows of the shuffled packing
    assert not {r.tobytes() for r in ev[:]} & {r.tobytes() for r in train[:]}


def test_extract_rows_match_a_direct_forward_pass(suite):
    cfg, prepared, plan = suite
    root = prepared.root
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model)
    tokens = _tokens(root, "tokens/train")[: cfg.extract.seqs_per_shard]
    g = zarr.open_group(store=root.zarr_store(shard_group("mlp", 2, 0)), mode="r")
    x, index = read_rows(g["x"], 0, g["x"].shape[0]).float(), g["index"][:]
    special = [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id]
    assert x.shape[0] == int((~np.isin(tokens, special)).sum())
    assert not np.isin(tokens[index[:, 0], index[:, 1]], special).any()
    # a hand-written hook on the HF module, independent of tasks.lm.sites
    grabbed = {}
    h = model.model.layers[2].post_feedforward_layernorm.register_forward_hook(lambda m, a, o: grabbed.update(o=o))
    with torch.no_grad():
        model(torch.from_numpy(tokens[:4].astype(np.int64)))
    h.remove()
    rows = index[:, 0] < 4
    expected = grabbed["o"][torch.from_numpy(index[rows, 0]), torch.from_numpy(index[rows, 1])]
    assert torch.equal(x[torch.from_numpy(rows)], expected.to(torch.bfloat16).float())
    att = zarr.open_group(store=root.zarr_store(shard_group("att", 0, 1)), mode="r")
    assert att["x"].shape[1] == model.config.num_attention_heads * model.config.head_dim


def test_shuffle_is_a_permutation_with_statistics(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    shards = [zarr.open_group(store=root.zarr_store(shard_group("res", 0, s)), mode="r") for s in range(2)]
    src_x = torch.cat([read_rows(g["x"], 0, g["x"].shape[0]) for g in shards])
    src_i = np.concatenate([g["index"][:] for g in shards])
    out = zarr.open_group(store=root.zarr_store(shuffled_group("res", 0)), mode="r")
    out_x, out_i = read_rows(out["x"], 0, out["x"].shape[0]), out["index"][:]
    assert out_x.shape == src_x.shape and out["x"].chunks[0] == cfg.sae.batch_size
    # rows are a permutation of the input rows, traced through `index`
    order = {tuple(r): n for n, r in enumerate(src_i)}
    assert len(order) == len(src_i)
    perm = np.array([order[tuple(r)] for r in out_i])
    assert sorted(perm.tolist()) == list(range(len(src_i)))
    assert torch.equal(out_x.view(torch.uint16), src_x[torch.from_numpy(perm)].view(torch.uint16))
    assert (perm != np.arange(len(perm))).mean() > 0.9  # actually shuffled
    attrs = out.attrs
    xd = src_x.double()
    assert attrs["count"] == len(src_i)
    np.testing.assert_allclose(attrs["mean"], xd.mean(0).numpy(), rtol=1e-9, atol=1e-12)
    assert attrs["mean_sq_norm"] == pytest.approx(float((xd * xd).sum(1).mean()), rel=1e-9)


def test_train_writes_both_release_formats(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    for width in cfg.sae.widths:
        for lam in cfg.sae.lambdas:
            folder = root.path(sae_dir("att", 2, SweepPoint("jumprelu", width, lam)))
            npz = np.load(f"{folder}/params.npz")
            assert set(npz.files) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold"}
            assert npz["W_enc"].shape == (64, width) and npz["W_dec"].shape == (width, 64)
            sae_np = load_gemma_scope_npz(f"{folder}/params.npz")
            sae_sl, cfg_json = load_saelens(folder)
            assert cfg_json["architecture"] == "jumprelu" and cfg_json["metadata"]["hook_name"] == "blocks.2.attn.hook_z"
            assert torch.equal(sae_np.W_enc, sae_sl.W_enc) and torch.equal(sae_np.threshold, sae_sl.threshold)
            log = pq.read_table(f"{folder}/train_log.parquet").to_pylist()
            assert log and log[-1]["step"] > 0


def _chat_rows(tok, n: int) -> np.ndarray:
    """The instruction-tuned variant's evaluation rows, written out here from its chat file and template."""
    with open(ensure_embedded_assets().chats_path) as f:
        chats = [json.loads(line)["messages"] for line in f]
    ids = []
    for messages in chats:
        text = tok.apply_chat_template(messages, tokenize=False)
        assert text.startswith("<bos>user: ") and "\nmodel: " in text
        ids.append(tok(text, add_special_tokens=False)["input_ids"][1:])  # the row's BOS stands for the template's
    return pack_sequences(ids, 128, tok.bos_token_id, tok.eos_token_id)[:n]


def test_a_further_models_plain_text_is_packed_like_the_corpus(tmp_path):
    docs = ["The cat sat on the mat.", "A dog ran far away, and then it came back."] * 40
    (tmp_path / "text.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    m = EvalModelConfig(name="other", model=ModelConfig(), paths=[str(tmp_path / "text.jsonl")], n_seqs=3)
    tok = load_tokenizer(m.model)
    rows = eval_model_tokens(m, 0, tok, 16, {})
    ids = tok(docs, add_special_tokens=False)["input_ids"]
    assert rows.shape == (3, 16) and (rows == pack_sequences(ids, 16, tok.bos_token_id, tok.eos_token_id)[:3]).all()


@pytest.mark.parametrize("model_name", ["base", "it"])
def test_delta_loss_equals_a_hand_written_splice(suite, model_name):
    """On the suite's model and held-out tokens, and on the instruction-tuned variant and its chats (one row
    per SAE and model): the same SAE spliced in by a plain forward hook."""
    cfg, prepared, _ = suite
    root = prepared.root
    all_rows = pq.read_table(io.BytesIO(root.read_bytes(eval_path("res", 2)))).to_pylist()
    n_saes = len(cfg.sae.widths) * len(cfg.sae.lambdas)
    assert [r["model"] for r in all_rows] == ["base"] * n_saes + ["it"] * n_saes
    rows = [r for r in all_rows if r["model"] == model_name]
    assert [r["sae_path"] for r in rows] == [r["sae_path"] for r in all_rows[:n_saes]]
    row = rows[0]
    sae = load_gemma_scope_npz(root.path(row["sae_path"], "params.npz"))
    model_cfg = cfg.model if model_name == "base" else cfg.evaluate.models[0].model
    model = load_model(model_cfg)
    tok = load_tokenizer(model_cfg)
    held = _tokens(root, "tokens/eval")[:] if model_name == "base" else _chat_rows(tok, IT_MODEL["n_seqs"])
    tokens = torch.from_numpy(held.astype(np.int64))
    special = torch.tensor([tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])

    def ce(logits):
        t = tokens[:, 1:]
        loss = F.cross_entropy(logits[:, :-1].transpose(1, 2), t, reduction="none")
        keep = ~torch.isin(t, special)
        return loss[keep].double().mean().item()

    def splice(module, args, out):
        x = out
        z = x @ sae.W_enc + sae.b_enc
        f = z * (z > sae.threshold)
        x_hat = f @ sae.W_dec + sae.b_dec
        not_bos = (tokens != tok.bos_token_id).unsqueeze(-1)
        return torch.where(not_bos, x_hat, x)

    with torch.no_grad():
        clean = ce(model(tokens).logits)
        h = model.model.layers[2].register_forward_hook(splice)
        spliced = ce(model(tokens).logits)
        h.remove()
    assert row["clean_loss"] == pytest.approx(clean, rel=1e-5)
    assert row["delta_loss"] == pytest.approx(spliced - clean, rel=1e-4, abs=1e-6)
    assert row["delta_loss"] > 0
    assert row["n_tokens"] == int((~torch.isin(tokens, special)).sum())


def _eval_rows(cfg, prepared, models=("base",)):
    """(site, layer, evaluation row) for every SAE of the suite on each of `models`."""
    for site in cfg.sites:
        for layer in prepared.layers:
            for r in pq.read_table(io.BytesIO(prepared.root.read_bytes(eval_path(site, layer)))).to_pylist():
                if r["model"] in models:
                    yield site, layer, r


def test_eval_rows_and_report(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    for _, _, r in _eval_rows(cfg, prepared, models=("base", "it")):
        assert 0 < r["l0"] <= r["width"]
        assert 0 <= r["fvu"] < 1.5
        assert 0 <= r["dead_frac"] <= 1 and 0 <= r["dense_frac"] <= 1
        assert sum(r["freq_hist"]) + r["n_dead"] == r["width"]  # dead latents are counted apart
    metrics = pq.read_table(root.path("report/metrics.parquet"))
    per_model = len(cfg.sites) * len(prepared.layers) * len(cfg.sae.widths) * len(cfg.sae.lambdas)
    assert metrics.column("model").to_pylist().count("base") == per_model and metrics.num_rows == 2 * per_model
    html = open(root.path("report/index.html")).read()
    assert "delta_loss_by_layer.png" in html and 'src="transfer.png"' in html


def test_units_are_bit_for_bit_repeatable(suite, tmp_path):
    """Same config, same seed, same outputs: a re-run unit can be checked against a clean one."""
    cfg, prepared, plan = suite
    root = prepared.root
    spec = next(s for s in plan["train"] if s.site == "mlp" and s.layer == 0)
    folder = sae_dir("mlp", 0, SweepPoint("jumprelu", cfg.sae.widths[0], cfg.sae.lambdas[0]))
    before = root.read_bytes(f"{folder}/sae_weights.safetensors")
    run_unit(cfg, spec, root)
    assert root.read_bytes(f"{folder}/sae_weights.safetensors") == before


def test_a_gemma_scope_release_is_imported_and_evaluated_like_the_suites_own(suite, tmp_path, capsys):
    """The suite's own SAEs laid out as a Gemma Scope release (layer_{L}/width_{W}/average_l0_{N}/params.npz)
    evaluate to exactly the numbers the evaluate stage gave them; bad releases fail naming the file."""
    import shutil

    import yaml

    from flows.cli import main

    cfg, prepared, _ = suite
    root = prepared.root
    own = [r for r in pq.read_table(io.BytesIO(root.read_bytes(eval_path("att", 2)))).to_pylist() if r["model"] == "base"]
    release = tmp_path / "release"
    for row in own:
        target = release / f"layer_2/width_{row['width']}/average_l0_{round(row['l0'] * 1000)}"
        target.mkdir(parents=True)
        shutil.copyfile(root.path(row["sae_path"], "params.npz"), target / "params.npz")
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))

    assert main(["import", str(path), str(release), "--site", "att", "--name", "mine"]) == 0
    assert "'mine' (att)" in capsys.readouterr().out
    imported = pq.read_table(io.BytesIO(root.read_bytes(import_eval_path("mine", "att", 2)))).to_pylist()
    assert len(imported) == len(own)
    by_l0 = {r["average_l0_label"]: r for r in imported}
    for row in own:
        got = by_l0[round(row["l0"] * 1000)]
        for key in ("l0", "fvu", "delta_loss", "clean_loss", "dead_frac", "n_tokens", "freq_hist"):
            assert got[key] == row[key], key
        assert got["fvu_mean"] == "train" and got["source"] == "mine"
        assert root.exists(f"{got['sae_path']}/cfg.json") and root.exists(f"{got['sae_path']}/params.npz")

    bad = tmp_path / "bad"
    (bad / "layer_2/width_64").mkdir(parents=True)
    shutil.copyfile(release.glob("layer_2/*/*/params.npz").__next__(), bad / "layer_2/width_64/params.npz")
    assert main(["import", str(path), str(bad), "--site", "att"]) == 2
    err = capsys.readouterr().err
    assert "layer_2/width_64/params.npz" in err and "Gemma Scope's layout" in err
    shutil.move(bad / "layer_2/width_64/params.npz", bad / "params.npz")
    (bad / "layer_2").rename(bad / "layer_9")
    (bad / "layer_9/width_64/average_l0_5").mkdir()
    shutil.move(bad / "params.npz", bad / "layer_9/width_64/average_l0_5/params.npz")
    assert main(["import", str(path), str(bad), "--site", "att", "--name", "oob"]) == 2
    assert "layer 9 is out of range for a 4-layer model" in capsys.readouterr().err
    assert not root.exists("imports/oob")  # checked before anything was written


# ---------------------------------------------------------------- inspect


def _latents(root, site, layer, width, lam):
    folder = latents_dir(site, layer, width, SweepPoint("jumprelu", width, lam).slug)
    stats = pq.read_table(io.BytesIO(root.read_bytes(f"{folder}/{LATENT_STATS}")))
    contexts = pq.read_table(io.BytesIO(root.read_bytes(f"{folder}/{LATENT_CONTEXTS}")))
    return stats, contexts


def _site_rows(cfg, root, site, layer):
    """Every kept held-out row of the site, by a hand-written hook on the HF module over one full forward,
    with its (seq, pos)."""
    tok = load_tokenizer(cfg.model)
    model = load_model(cfg.model)
    tokens = _tokens(root, "tokens/eval")[:]
    grabbed = {}
    attn = model.model.layers[layer].self_attn.o_proj
    module = {"res": model.model.layers[layer], "att": attn,
              "mlp": model.model.layers[layer].post_feedforward_layernorm}[site]
    if site == "att":
        h = module.register_forward_pre_hook(lambda m, a: grabbed.update(x=a[0]))
    else:
        h = module.register_forward_hook(lambda m, a, o: grabbed.update(x=o[0] if isinstance(o, tuple) else o))
    with torch.no_grad():
        model(torch.from_numpy(tokens.astype(np.int64)))
    h.remove()
    keep = ~np.isin(tokens, [tok.bos_token_id, tok.eos_token_id, tok.pad_token_id])
    seq, pos = np.nonzero(keep)
    return tokens, grabbed["x"][torch.from_numpy(keep)].float(), seq, pos


@pytest.mark.parametrize("site,layer", [("att", 2), ("res", 0)])
def test_inspect_contexts_and_stats_equal_a_direct_computation(suite, site, layer):
    """Encode every held-out row at once and sort: the top-k contexts of sampled latents (ties to the earlier
    row), their windows, and the firing statistics are what the inspect stage streamed batch by batch."""
    cfg, prepared, _ = suite
    root = prepared.root
    k, w = cfg.inspect.top_k, cfg.inspect.window
    tokens, rows, seq, pos = _site_rows(cfg, root, site, layer)
    width, lam = cfg.sae.widths[-1], cfg.sae.lambdas[0]
    sae = load_gemma_scope_npz(root.path(sae_dir(site, layer, SweepPoint("jumprelu", width, lam)), "params.npz"))
    with torch.no_grad():
        f = sae.encode(rows)
    stats, contexts = _latents(root, site, layer, width, lam)
    st, cx = stats.to_pylist(), contexts.to_pylist()
    assert int(stats.schema.metadata[b"n_tokens"]) == len(rows) and len(st) == width
    by_latent = {}
    for r in cx:
        by_latent.setdefault(r["latent"], []).append(r)
    counts = (f != 0).sum(0)
    rare = [i for i in range(width) if 0 < counts[i] < k]  # where there are: test_inspect_dead_and_rare_latents
    sampled = sorted(set(np.random.default_rng(0).choice(width, 12, replace=False).tolist()) | set(rare[:4]))
    for i in sampled:
        fires = np.nonzero(f[:, i].numpy())[0]
        order = sorted(fires, key=lambda j: (-f[j, i].item(), seq[j], pos[j]))[:k]
        got = by_latent.get(i, [])
        assert [r["rank"] for r in got] == list(range(len(order)))
        assert [(r["seq"], r["pos"]) for r in got] == [(seq[j], pos[j]) for j in order], i
        np.testing.assert_allclose([r["activation"] for r in got], f[order, i].numpy(), rtol=1e-5)
        for r in got:
            lo = r["pos"] - w
            expected = [int(tokens[r["seq"], p]) if 0 <= p < tokens.shape[1] else -1 for p in range(lo, lo + 2 * w + 1)]
            assert r["window"] == expected
            # the latent at each window token: 0 outside the sequence and at BOS/EOS/padding (no row there)
            row_of = {(seq[j], pos[j]): j for j in range(len(seq))}
            acts = [f[row_of[(r["seq"], p)], i].item() if (r["seq"], p) in row_of else 0.0 for p in range(lo, lo + 2 * w + 1)]
            np.testing.assert_allclose(r["window_activations"], acts, rtol=1e-5, atol=1e-6)
            assert r["window_activations"][w] == pytest.approx(r["activation"], rel=1e-5)
        s = st[i]
        assert s["latent"] == i and s["n_firing"] == len(fires) and s["n_contexts"] == len(order)
        assert s["frequency"] == len(fires) / len(rows)
        if len(fires):
            assert s["max_activation"] == pytest.approx(f[fires, i].max().item(), rel=1e-5)
            assert s["mean_activation"] == pytest.approx(f[fires, i].double().mean().item(), rel=1e-5)
    assert not (set(by_latent) - {i for i in range(width) if counts[i] > 0})


def test_inspect_frequencies_match_the_evaluate_histogram(suite):
    cfg, prepared, _ = suite
    for site, layer, r in _eval_rows(cfg, prepared):
        stats, _ = _latents(prepared.root, site, layer, r["width"], r["lambda"])
        freq = np.asarray(stats.column("frequency"))
        assert int(stats.schema.metadata[b"n_tokens"]) == r["n_tokens"]
        assert int(np.asarray(stats.column("dead")).sum()) == r["n_dead"] == int((freq == 0).sum())
        log_freq = np.clip(np.log10(freq[freq > 0]), FREQ_HIST_EDGES[0], FREQ_HIST_EDGES[-1])
        assert np.histogram(log_freq, bins=np.asarray(r["freq_hist_edges"]))[0].tolist() == r["freq_hist"]


def test_inspect_dead_and_rare_latents(suite):
    """A latent that never fires has no contexts and says so; one firing on fewer than k tokens has exactly
    those (thresholds set by hand on a trained SAE)."""
    cfg, prepared, _ = suite
    root = prepared.root
    k = cfg.inspect.top_k
    tokens, rows, seq, pos = _site_rows(cfg, root, "mlp", 2)
    sae = load_gemma_scope_npz(root.path(sae_dir("mlp", 2, SweepPoint("jumprelu", cfg.sae.widths[0],
                                                                      cfg.sae.lambdas[0])), "params.npz"))
    with torch.no_grad():
        z = sae.pre_acts(rows)
        sae.threshold[0] = 1e9
        sae.threshold[1] = torch.sort(z[:, 1], descending=True).values[k // 2]  # strict: fires on k // 2 rows
        f = sae.encode(rows)
    assert (f[:, 1] != 0).sum() == k // 2
    summary = accumulate_latents(cfg, "mlp", 2, [sae], tokens)[0]
    stats = stats_table(summary, output_tokens(load_model(cfg.model), "mlp", 2, sae.W_dec, 3)).to_pylist()
    contexts = contexts_table(summary, tokens, cfg.inspect.window).to_pylist()
    assert stats[0]["dead"] and stats[0]["n_contexts"] == 0 and stats[0]["frequency"] == 0
    assert stats[0]["max_activation"] is None and stats[0]["mean_activation"] is None
    assert not [r for r in contexts if r["latent"] == 0]
    rare = [r for r in contexts if r["latent"] == 1]
    fires = np.nonzero(f[:, 1].numpy())[0]
    assert stats[1]["n_contexts"] == len(rare) == k // 2 and not stats[1]["dead"]
    assert sorted((r["seq"], r["pos"]) for r in rare) == sorted((seq[j], pos[j]) for j in fires)


def test_inspect_output_tokens_are_the_decoder_rows_through_the_unembedding(suite):
    """res: W_dec (1 + final norm weight) E^T; att: through o_proj and the post-attention norm's scale first."""
    cfg, prepared, _ = suite
    root = prepared.root
    model = load_model(cfg.model)
    n = cfg.inspect.n_output_tokens
    unembed = model.lm_head.weight.float()
    final = 1 + model.model.norm.weight.float()
    for site, layer in [("res", 0), ("att", 2)]:
        width, lam = cfg.sae.widths[0], cfg.sae.lambdas[-1]
        sae = load_gemma_scope_npz(root.path(sae_dir(site, layer, SweepPoint("jumprelu", width, lam)), "params.npz"))
        d = sae.W_dec
        if site == "att":
            d = d @ model.model.layers[layer].self_attn.o_proj.weight.T
            d = d * (1 + model.model.layers[layer].post_attention_layernorm.weight)
        with torch.no_grad():
            logits = (d * final) @ unembed.T
        stats, _ = _latents(root, site, layer, width, lam)
        st = stats.to_pylist()
        top, bottom = torch.topk(logits, n, dim=1), torch.topk(logits, n, dim=1, largest=False)
        for i in (0, width // 2, width - 1):
            assert st[i]["top_boosted"] == top.indices[i].tolist()
            assert st[i]["top_suppressed"] == bottom.indices[i].tolist()
            np.testing.assert_allclose(st[i]["top_boosted_logits"], top.values[i].numpy(), rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(st[i]["top_suppressed_logits"], bottom.values[i].numpy(), rtol=1e-5,
                                       atol=1e-6)


def test_inspect_is_bit_for_bit_repeatable(suite):
    cfg, prepared, plan = suite
    root = prepared.root
    spec = next(s for s in plan["inspect"] if s.site == "att" and s.layer == 0)
    record = Ledger(root).get("inspect", spec.unit)
    assert record.status == "complete" and record.fingerprint == spec.fingerprint
    before = {p: root.read_bytes(p) for p in record.outputs}
    # three files per SAE (stats, contexts, the browser's script), and one splitting.parquet for the (site, layer)
    assert len(before) == 3 * len(cfg.sae.widths) * len(cfg.sae.lambdas) + 1
    run_unit(cfg, spec, root)
    assert {p: root.read_bytes(p) for p in record.outputs} == before


def test_feature_splitting_is_each_wide_latents_nearest_narrow_latent_by_decoder_cosine(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    table = pq.read_table(io.BytesIO(root.read_bytes(latent_splitting("mlp", 2)))).to_pylist()
    (w1, w2), want_rows = sorted(cfg.sae.widths), 0
    for lam in cfg.sae.lambdas:
        slug = SweepPoint("jumprelu", w1, lam).slug
        dec = {w: load_gemma_scope_npz(root.path(sae_dir("mlp", 2, SweepPoint("jumprelu", w, lam)), "params.npz")).W_dec
               for w in (w1, w2)}
        cos = F.normalize(dec[w2], dim=1) @ F.normalize(dec[w1], dim=1).T
        rows = [r for r in table if r["setting"] == slug]
        assert [r["wide_latent"] for r in rows] == list(range(w2))
        assert all(r["narrow_width"] == w1 and r["wide_width"] == w2 and r["architecture"] == "jumprelu" for r in rows)
        assert [r["narrow_latent"] for r in rows] == cos.argmax(1).tolist()
        np.testing.assert_allclose([r["cosine"] for r in rows], cos.max(1).values.detach().numpy(), rtol=1e-5)
        want_rows += w2
    assert len(table) == want_rows
