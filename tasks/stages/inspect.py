"""Stage 6: one (site, layer)'s SAEs, latent by latent, on evaluate's held-out tokens
(docs/architecture.md, "Latents").

Per SAE, under `latents/{site}/layer_{L}/width_{W}/{setting}/`:
- `stats.parquet`, one row per latent: its firing frequency over the held-out tokens evaluate keeps (not
  BOS, EOS or padding), so it is the frequency evaluate's `freq_hist` bins; max and mean activation when
  firing (null for a dead latent, whose `n_contexts` is 0); and the output tokens its decoder row boosts
  and suppresses most, with their logit weights (`tasks.lm.logit_lens`).
- `contexts.parquet`, the top-k activating examples of every latent that fired, best first (ties: the
  earlier row of `tokens/eval`, then the earlier position): latent, rank, activation, seq, pos, and
  `window`, the 2w+1 token ids centred on pos (-1 outside the sequence), so the firing token is window[w],
  and `window_activations`, the latent's activation at each of them (0 at BOS, EOS, padding and outside the
  sequence), which a browser shades the context by. Token ids only: a reader decodes them with the suite's
  tokenizer.
- `browser.js`, the two above as the latent browser loads them (`tasks.reporting.sae_script`), which the
  report copies to `report/latents/sae_N.js` instead of rendering every SAE's at the end of the run.
And per (site, layer), `latents/{site}/layer_{L}/splitting.parquet` where a setting has several widths:
each wider latent's nearest narrower latent by decoder cosine (feature splitting).

Per batch the model runs once, up to layer L only, and every SAE encodes the site's kept rows; each SAE's
`sae.LatentStats` keeps k examples per latent, so memory never grows with the held-out set. A second pass
over only the sequences some example lies in gives the window activations (which examples they are is
known only at the end).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from sae import LatentStats, LatentSummary, SparseAutoencoder, SweepPoint, nearest_by_decoder_cosine
from storage import layout
from storage.root import StorageRoot
from tasks.config import StagesConfig
from tasks.latent_tables import load_sae_latents
from tasks.lm.heldout import load_eval_tokens, load_sweep_saes, write_parquet
from tasks.lm.logit_lens import output_tokens
from tasks.lm.model import keep_mask, load_model, load_tokenizer, pick_device, special_token_ids
from tasks.lm.sites import ActivationCapture, forward_until, site_hooks
from tasks.reporting import sae_script
from tasks.units import PlanContext, Planned, UnitResult, UnitSpec, units_on_trained_saes


CONTEXTS_FORMAT = 2  # 2: contexts.parquet has window_activations; outputs without them are not trusted


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit per (site, layer): every SAE its train unit wrote, on the held-out tokens evaluate uses."""
    cfg = ctx.cfg
    return units_on_trained_saes(ctx, planned, "inspect", CONTEXTS_FORMAT, cfg.model, cfg.evaluate.n_seqs,
                                 cfg.inspect)


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return inspect_site_layer(cfg, spec.site, spec.layer, root)


def _site_batches(cfg: StagesConfig, site: str, layer: int, tokens: np.ndarray, seqs: np.ndarray):
    """Per `inspect.batch_size` of the sequences `seqs` (rows of `tokens`): (those rows, the site's
    activations [b, ctx, d] as the model gives them, the keep mask [b, ctx]), the model run up to layer L
    once a batch. Both passes of a unit read the site this way."""
    special = special_token_ids(load_tokenizer(cfg.model))
    model, device = load_model(cfg.model), pick_device(cfg.model.device)
    key, capture, bs = (site, layer), ActivationCapture([(site, layer)]), cfg.inspect.batch_size
    with torch.inference_mode(), site_hooks(model, capture.hooks()):
        for start in range(0, len(seqs), bs):
            chunk = seqs[start:start + bs]
            batch = tokens[chunk]
            forward_until(model, torch.from_numpy(batch.astype(np.int64)).to(device), layer)
            yield chunk, capture.values.pop(key), keep_mask(batch, special)


def accumulate_latents(cfg: StagesConfig, site: str, layer: int, saes: list[SparseAutoencoder],
                       tokens: np.ndarray) -> list[LatentSummary]:
    """Each SAE's latent statistics and top-k examples over `tokens` (rows of `tokens/eval`); an example's
    row id is seq * ctx + pos."""
    device = pick_device(cfg.model.device)
    saes = [sae.to(device).eval() for sae in saes]
    ctx = tokens.shape[1]
    if len(tokens) * ctx > 1 << 32:
        raise ValueError(f"inspect: {len(tokens)} held-out sequences of {ctx} tokens are too many to index")
    stats = [LatentStats(sae.d_sae, cfg.inspect.top_k, device) for sae in saes]
    with torch.inference_mode():
        for chunk, acts, keep in _site_batches(cfg, site, layer, tokens, np.arange(len(tokens))):
            seq, pos = np.nonzero(keep)
            row_ids = torch.from_numpy(chunk[seq].astype(np.int64) * ctx + pos).to(device)
            rows = acts[torch.from_numpy(keep).to(device)].float()
            for st, sae in zip(stats, saes):
                st.update(sae.encode(rows), row_ids)
    return [st.result() for st in stats]


def window_activations(cfg: StagesConfig, site: str, layer: int, saes: list[SparseAutoencoder],
                       contexts: list[pa.Table], tokens: np.ndarray) -> list[np.ndarray]:
    """Per SAE, [n_contexts, 2w+1]: each example's latent at the tokens of its window. The model runs on
    the example sequences only, and each SAE encodes one sequence at a time (ctx x width floats)."""
    w, ctx = cfg.inspect.window, tokens.shape[1]
    out = [np.zeros((t.num_rows, 2 * w + 1), dtype=np.float32) for t in contexts]
    by_sae = [{k: t.column(k).to_numpy() for k in ("latent", "seq", "pos")} for t in contexts]
    seqs = np.unique(np.concatenate([c["seq"] for c in by_sae] or [np.zeros(0, np.int32)]))
    device, offsets = pick_device(cfg.model.device), np.arange(-w, w + 1)
    with torch.inference_mode():
        for chunk, acts, keep in _site_batches(cfg, site, layer, tokens, seqs):
            acts = acts.float()
            for i, seq in enumerate(chunk):
                positions = np.arange(ctx)[keep[i]]
                for sae, c, o in zip(saes, by_sae, out):
                    (hit,) = np.nonzero(c["seq"] == seq)
                    if not len(hit):
                        continue
                    f = np.zeros((ctx, sae.d_sae), dtype=np.float32)
                    f[positions] = sae.encode(acts[i, torch.from_numpy(positions).to(device)]).cpu().numpy()
                    where = c["pos"][hit, None] + offsets
                    inside = (where >= 0) & (where < ctx)
                    o[hit] = np.where(inside, f[where.clip(0, ctx - 1), c["latent"][hit, None]], 0.0)
    return out


def _list_column(values: np.ndarray, pa_type: pa.DataType) -> pa.Array:
    """A [rows, n] array as a parquet list column of fixed length n."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=pa_type)
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])


def stats_table(summary: LatentSummary, outputs: tuple[torch.Tensor, ...]) -> pa.Table:
    counts = summary.fire_counts.numpy()
    dead = counts == 0
    top_ids, top_w, bottom_ids, bottom_w = (t.numpy() for t in outputs)
    return pa.table({
        "latent": pa.array(np.arange(len(counts), dtype=np.int32)),
        "frequency": pa.array(summary.frequency.numpy()),
        "n_firing": pa.array(counts),
        "max_activation": pa.array(summary.max_act.numpy().astype(np.float32), mask=dead),
        "mean_activation": pa.array(summary.mean_act.numpy(), mask=dead),
        "dead": pa.array(dead),
        "n_contexts": pa.array((summary.top_rows.numpy() >= 0).sum(0).astype(np.int32)),
        "top_boosted": _list_column(top_ids.astype(np.int32), pa.int32()),
        "top_boosted_logits": _list_column(top_w.astype(np.float32), pa.float32()),
        "top_suppressed": _list_column(bottom_ids.astype(np.int32), pa.int32()),
        "top_suppressed_logits": _list_column(bottom_w.astype(np.float32), pa.float32()),
    })


def contexts_table(summary: LatentSummary, tokens: np.ndarray, window: int) -> pa.Table:
    """Latent-major, rank within latent; `window` token ids centred on pos, -1 outside the sequence."""
    rows = summary.top_rows.numpy().T  # [d_sae, k]
    latent, rank = np.nonzero(rows >= 0)
    row = rows[latent, rank]
    ctx = tokens.shape[1]
    seq, pos = row // ctx, row % ctx
    padded = np.pad(tokens.astype(np.int32), ((0, 0), (window, window)), constant_values=-1)
    windows = padded[seq[:, None], pos[:, None] + np.arange(2 * window + 1)]
    return pa.table({
        "latent": pa.array(latent.astype(np.int32)),
        "rank": pa.array(rank.astype(np.int16)),
        "activation": pa.array(summary.top_values.numpy().T[latent, rank].astype(np.float32)),
        "seq": pa.array(seq.astype(np.int32)),
        "pos": pa.array(pos.astype(np.int32)),
        "window": _list_column(windows, pa.int32()),
    })


def splitting_table(points: list[SweepPoint], saes: list[SparseAutoencoder]) -> pa.Table | None:
    """Per (architecture, setting) with several widths, each pair of consecutive widths W1 < W2: every W2
    latent, its nearest W1 latent by decoder cosine and that cosine. None where no setting has two widths."""
    groups: dict[tuple[str, str], list[tuple[int, SparseAutoencoder]]] = {}
    for point, sae in zip(points, saes):
        groups.setdefault((point.architecture, point.slug), []).append((point.width, sae))
    parts = []
    for (arch, setting), members in groups.items():
        members.sort(key=lambda m: m[0])
        for (w1, narrow), (w2, wide) in zip(members, members[1:]):
            nearest, cos = nearest_by_decoder_cosine(wide.W_dec.detach().cpu(), narrow.W_dec.detach().cpu())
            n = len(nearest)
            parts.append(pa.table({
                "architecture": pa.array([arch] * n), "setting": pa.array([setting] * n),
                "narrow_width": pa.array(np.full(n, w1, dtype=np.int32)),
                "wide_width": pa.array(np.full(n, w2, dtype=np.int32)),
                "wide_latent": pa.array(np.arange(n, dtype=np.int32)),
                "narrow_latent": pa.array(nearest.numpy().astype(np.int32)),
                "cosine": pa.array(cos.numpy().astype(np.float32))}))
    return pa.concat_tables(parts) if parts else None


def inspect_site_layer(cfg: StagesConfig, site: str, layer: int, root: StorageRoot) -> UnitResult:
    points, saes, _ = load_sweep_saes(cfg, site, layer, root)
    tokens = load_eval_tokens(cfg, root)
    summaries = accumulate_latents(cfg, site, layer, saes, tokens)
    contexts = [contexts_table(summary, tokens, cfg.inspect.window) for summary in summaries]
    windows = window_activations(cfg, site, layer, saes, contexts, tokens)
    model = load_model(cfg.model)
    outputs, metrics = [], {}
    for point, sae, summary, table, window in zip(points, saes, summaries, contexts, windows):
        folder = layout.latents_dir(site, layer, point.width, point.slug)
        meta = {"site": site, "layer": str(layer), "sae_path": layout.sae_dir(site, layer, point.width, point.slug),
                "n_tokens": str(summary.n_rows), "top_k": str(cfg.inspect.top_k), "window": str(cfg.inspect.window)}
        with torch.inference_mode():
            tokens_out = output_tokens(model, site, layer, sae.W_dec, cfg.inspect.n_output_tokens)
        stats = stats_table(summary, tokens_out).replace_schema_metadata(meta)
        table = table.append_column("window_activations", _list_column(window, pa.float32()))
        write_parquet(root, f"{folder}/{layout.LATENT_STATS}", stats)
        write_parquet(root, f"{folder}/{layout.LATENT_CONTEXTS}", table.replace_schema_metadata(meta))
        # from the files as written, so these are the bytes the report would render from them
        script = sae_script(load_sae_latents(root, site, layer, point.width, point.slug))
        root.write_bytes(f"{folder}/{layout.LATENT_BROWSER_DATA}", script.encode("utf-8"))
        outputs += [f"{folder}/{name}" for name in (layout.LATENT_STATS, layout.LATENT_CONTEXTS,
                                                     layout.LATENT_BROWSER_DATA)]
        metrics[folder] = {"n_dead": int((summary.fire_counts == 0).sum()), "n_contexts": table.num_rows}
    splitting = splitting_table(points, saes)
    if splitting is not None:
        write_parquet(root, layout.latent_splitting(site, layer), splitting)
        outputs.append(layout.latent_splitting(site, layer))
    n_tokens = summaries[0].n_rows if summaries else 0
    return UnitResult(outputs=outputs, metrics={"n_tokens": n_tokens, "saes": metrics})
