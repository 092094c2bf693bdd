"""Each stage's unit function on tiny data, called directly (no Ray, no Prefect), chained once per module."""
from __future__ import annotations

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F
import zarr

from flows.config import SuiteConfig
from flows.prepare import prepare_suite
from sae import load_gemma_scope_npz, load_saelens
from storage.arrays import read_rows
from storage.layout import activation_shard as shard_group
from storage.layout import eval_table as eval_path
from storage.layout import import_eval_table as import_eval_path
from storage.layout import shuffled as shuffled_group
from tasks.execute import run_unit
from tasks.lm.model import load_model, load_tokenizer
from sae import SweepPoint
from tasks.stages.train import sae_dir
from tests.helpers import run_suite_in_process, small_suite_dict


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def suite(tmp_path_factory, embedded_assets):
    """Runs every unit of a small suite once through the runner, with the in-process executor."""
    tmp = tmp_path_factory.mktemp("stages")
    cfg = SuiteConfig.model_validate(small_suite_dict(tmp))
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


def test_delta_loss_equals_a_hand_written_splice(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    rows = pq.read_table(io.BytesIO(root.read_bytes(eval_path("res", 2)))).to_pylist()
    assert len(rows) == len(cfg.sae.widths) * len(cfg.sae.lambdas)
    row = rows[0]
    sae = load_gemma_scope_npz(root.path(row["sae_path"], "params.npz"))
    model = load_model(cfg.model)
    tok = load_tokenizer(cfg.model)
    tokens = torch.from_numpy(_tokens(root, "tokens/eval")[:].astype(np.int64))
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


def test_eval_rows_and_report(suite):
    cfg, prepared, _ = suite
    root = prepared.root
    for site in cfg.sites:
        for layer in prepared.layers:
            for r in pq.read_table(io.BytesIO(root.read_bytes(eval_path(site, layer)))).to_pylist():
                assert 0 < r["l0"] <= r["width"]
                assert 0 <= r["fvu"] < 1.5
                assert 0 <= r["dead_frac"] <= 1 and 0 <= r["dense_frac"] <= 1
                assert sum(r["freq_hist"]) + r["n_dead"] == r["width"]  # dead latents are counted apart
    metrics = pq.read_table(root.path("report/metrics.parquet"))
    assert metrics.num_rows == len(cfg.sites) * len(prepared.layers) * len(cfg.sae.widths) * len(cfg.sae.lambdas)
    html = open(root.path("report/index.html")).read()
    assert "delta_loss_by_layer.png" in html


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
    own = pq.read_table(io.BytesIO(root.read_bytes(eval_path("att", 2)))).to_pylist()
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
