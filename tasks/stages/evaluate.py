"""Stage 5: one (site, layer)'s SAEs judged on held-out tokens.

delta loss = CE with the site's activation replaced by the SAE's reconstruction at every non-BOS position,
minus the clean CE, over predicted tokens that are not special. L0, FVU (against the dataset mean from the
shuffle statistics), dead and dense latents are measured on the same held-out activations.

Per batch the clean pass is the one full forward: layers below L are the same for every SAE, so it records
what layers L.. are given, and each SAE's spliced pass runs from layer L only, from L+1 for the residual and
MLP sites (`tasks.lm.partial_forward`).
Each SAE runs once per batch, on every position; the metrics read its output at the kept ones.

With `evaluate.models`, every SAE is also spliced into each further model on that model's own text (an
instruction-tuned variant on chats through its chat template): one row per (SAE, model), `model` naming it.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
import zarr

from sae import SAEMetrics, SparseAutoencoder
from storage import layout
from storage.root import StorageRoot
from tasks.config import SUITE_MODEL, EvalModelConfig, StagesConfig
from tasks.lm.eval_text import eval_model_tokens
from tasks.lm.heldout import load_eval_tokens, load_sweep_saes, write_parquet
from tasks.lm.model import keep_mask, load_model, load_tokenizer, pick_device, special_token_ids
from tasks.lm.partial_forward import logits_with_site_replaced, recording_splice_inputs
from tasks.lm.sites import ActivationCapture, site_hooks
from tasks.units import PlanContext, Planned, UnitResult, UnitSpec, units_on_trained_saes


def plan_units(ctx: PlanContext, planned: Planned) -> list[UnitSpec]:
    """One unit per (site, layer): its trained SAEs on the held-out tokens."""
    cfg = ctx.cfg
    return units_on_trained_saes(ctx, planned, "evaluate", cfg.model, cfg.evaluate)


def run_unit(cfg: StagesConfig, spec: UnitSpec, root: StorageRoot) -> UnitResult:
    return evaluate_site_layer(cfg, spec.site, spec.layer, root)


def token_losses(logits: torch.Tensor, tokens: torch.Tensor, special: set[int]) -> tuple[float, int]:
    """Summed next-token CE (nats) over targets that are not special, and their count.

    The CE runs over the logits' rows as they lie in memory, unpredicted positions labelled out: with the
    vocabulary along a strided axis it cost as much as the unembedding, once per SAE and batch.
    """
    targets = tokens[:, 1:]
    keep = ~torch.isin(targets, torch.tensor(sorted(special), device=targets.device))
    labels = torch.full_like(tokens, -100)
    labels[:, :-1] = torch.where(keep, targets, -100)
    ce = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), reduction="none").view_as(tokens)
    return float(ce[:, :-1][keep].double().sum()), int(keep.sum())


def spliced_site(sae: SparseAutoencoder, acts: torch.Tensor, tokens: torch.Tensor, bos: int
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The site's tensor with the SAE's reconstruction at every position that is not BOS, and the SAE's
    reconstruction and latents at every position (the metrics read them at the kept ones)."""
    x_hat, f = sae(acts.float())
    return torch.where((tokens != bos).unsqueeze(-1), x_hat.to(acts.dtype), acts), x_hat, f


def shuffle_stats(site: str, layer: int, root: StorageRoot) -> dict | None:
    """The training data's statistics, when the suite shuffled this (site, layer)."""
    group = layout.shuffled(site, layer)
    if not root.exists(f"{group}/zarr.json"):
        return None
    return dict(zarr.open_group(store=root.zarr_store(group, read_only=True), mode="r").attrs)


def evaluate_saes(cfg: StagesConfig, site: str, layer: int, saes: list[SparseAutoencoder], root: StorageRoot,
                  dataset_mean: torch.Tensor | None = None, *, on: EvalModelConfig | None = None
                  ) -> tuple[list[dict], float]:
    """Metric rows (one per SAE, in order) and the clean loss, on the suite's model and held-out tokens, or
    `on` a further model (`evaluate.models`) and its own text.

    FVU's denominator uses `dataset_mean` (the training data's mean, from the shuffle statistics) or, for
    SAEs trained elsewhere on a (site, layer) this suite has no training data for, and on a further model,
    whose activations the training data does not describe, the held-out mean.
    """
    model_cfg = on.model if on else cfg.model
    tok = load_tokenizer(model_cfg)
    if on is None:
        tokens_all = load_eval_tokens(cfg, root)
    else:
        tokens_all = eval_model_tokens(on, cfg.evaluate.models.index(on), tok, cfg.corpus.ctx,
                                       cfg.storage.storage_options)
    special = special_token_ids(tok)
    model = load_model(model_cfg)
    device = pick_device(model_cfg.device)
    saes = [sae.to(device).eval() for sae in saes]

    key = (site, layer)
    clean = [0.0, 0]
    spliced = [[0.0, 0] for _ in saes]
    metrics = [SAEMetrics(dense_threshold=cfg.evaluate.dense_threshold) for _ in saes]
    bs = cfg.evaluate.batch_size
    with torch.inference_mode():
        for start in range(0, len(tokens_all), bs):
            batch_np = tokens_all[start:start + bs]
            batch = torch.from_numpy(batch_np.astype(np.int64)).to(device)
            # The clean pass is the shared prefix: it records what the spliced passes start from.
            capture = ActivationCapture([key])
            with site_hooks(model, capture.hooks()), recording_splice_inputs(model, site, layer) as layer_inputs:
                logits = model(batch, use_cache=False).logits
            s, n = token_losses(logits, batch, special)
            clean[0] += s
            clean[1] += n
            acts = capture.values[key]
            keep = torch.from_numpy(keep_mask(batch_np, special)).to(device)
            rows = acts[keep].float()
            for i, sae in enumerate(saes):
                replaced, x_hat, f = spliced_site(sae, acts, batch, tok.bos_token_id)
                metrics[i].update(rows, x_hat[keep], f[keep])
                logits = logits_with_site_replaced(model, layer_inputs, site, layer, replaced)
                s, n = token_losses(logits, batch, special)
                spliced[i][0] += s
                spliced[i][1] += n

    clean_loss = clean[0] / clean[1]
    out_rows = []
    for i, sae in enumerate(saes):
        m = metrics[i].result(dataset_mean if dataset_mean is not None else metrics[i].seen_mean())
        spliced_loss = spliced[i][0] / spliced[i][1]
        out_rows.append({
            "site": site, "layer": layer, "model": on.name if on else SUITE_MODEL,
            "architecture": sae.architecture, "width": sae.d_sae,
            "d_in": sae.d_in, "l0": m["l0"], "fvu": m["fvu"], "mse": m["mse"],
            "delta_loss": spliced_loss - clean_loss, "clean_loss": clean_loss, "spliced_loss": spliced_loss,
            "dead_frac": m["dead_frac"], "dense_frac": m["dense_frac"], "n_dead": m["n_dead"],
            "n_dense": m["n_dense"], "n_tokens": m["n_tokens"], "freq_hist": list(m["freq_hist"]),
            "freq_hist_edges": list(m["freq_hist_edges"]),
        })
    return out_rows, clean_loss


def evaluate_site_layer(cfg: StagesConfig, site: str, layer: int, root: StorageRoot) -> UnitResult:
    stats = shuffle_stats(site, layer, root)
    if stats is None:
        raise FileNotFoundError(f"{layout.shuffled(site, layer)}: no shuffled activations to take the dataset mean from")
    points, saes, lasts = load_sweep_saes(cfg, site, layer, root)
    rows, clean_loss = evaluate_saes(cfg, site, layer, saes, root,
                                     dataset_mean=torch.tensor(stats["mean"], dtype=torch.float64))
    clean = {SUITE_MODEL: clean_loss}
    for m in cfg.evaluate.models:  # one row per (SAE, model): the base rows first, in sweep order
        more, clean[m.name] = evaluate_saes(cfg, site, layer, saes, root, on=m)
        rows += more
    n_models = 1 + len(cfg.evaluate.models)
    for row, point, last in zip(rows, points * n_models, lasts * n_models):
        row.update({"sparsity": float(point.sparsity),
                    "lambda": float(point.sparsity) if point.cls.sparsity_field == "lambdas" else None,
                    "train_steps": int(last.get("step", 0)), "train_tokens": int(last.get("tokens", 0)),
                    "sae_path": layout.sae_dir(site, layer, point.width, point.slug)})
    out = layout.eval_table(site, layer)
    write_parquet(root, out, rows)
    return UnitResult(outputs=[out], metrics={"clean_loss": clean_loss,
                                              "saes": {r["sae_path"]: {k: r[k] for k in ("l0", "fvu", "delta_loss")}
                                                       for r in rows if r["model"] == SUITE_MODEL},
                                              **({"clean_loss_by_model": clean} if len(clean) > 1 else {})})
