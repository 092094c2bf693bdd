"""What a suite will cost before it runs: units, bytes and objects per stage, FLOPs and device-hours from
measured throughputs, and the waves a storage budget cuts it into.

Everything here is arithmetic on the config and the model's shape (read from its config.json, or from the
record below for the Gemma 2 checkpoints when the hub is out of reach), so `scopeflow plan` needs no
weights, no GPU and no tokenized corpus.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from transformers import AutoConfig

from storage.arrays import stored_itemsize
from tasks.config import StagesConfig
from tasks.lm.model import load_config, resolve_model_path
from tasks.lm.partial_forward import first_changed_layer
from tasks.registry import STAGE_NAMES, STAGES

# config.json of the public Gemma 2 base checkpoints (the fields a plan needs), so a plan for them works
# offline; a test checks them against transformers' own Gemma2Config.
KNOWN_CONFIGS: dict[str, dict] = {
    "google/gemma-2-2b": dict(model_type="gemma2", num_hidden_layers=26, hidden_size=2304, intermediate_size=9216,
                              num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=256000),
    "google/gemma-2-9b": dict(model_type="gemma2", num_hidden_layers=42, hidden_size=3584, intermediate_size=14336,
                              num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000),
}
TRAIN_FLOPS_PER_TOKEN_PER_LATENT = 12  # x d_in: encoder + decoder, forward and backward (dense step)


@dataclass(frozen=True)
class ModelShape:
    n_layers: int
    d_model: int
    d_ff: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def from_hf_config(cls, c) -> "ModelShape":
        get = (lambda k, default=None: c.get(k, default)) if isinstance(c, dict) else \
            (lambda k, default=None: getattr(c, k, default))
        heads = get("num_attention_heads")
        return cls(n_layers=get("num_hidden_layers"), d_model=get("hidden_size"), d_ff=get("intermediate_size"),
                   n_heads=heads, n_kv_heads=get("num_key_value_heads") or heads,
                   head_dim=get("head_dim") or get("hidden_size") // heads, vocab=get("vocab_size"))

    def site_width(self, site: str) -> int:
        return self.n_heads * self.head_dim if site == "att" else self.d_model

    def layer_flops_per_token(self, ctx: int) -> float:
        """Matmul FLOPs of one decoder layer per token: projections, gated MLP, and causal attention."""
        q = self.n_heads * self.head_dim
        kv = self.n_kv_heads * self.head_dim
        params = self.d_model * (q + 2 * kv) + q * self.d_model + 3 * self.d_model * self.d_ff
        return 2 * params + 2 * q * ctx  # scores and values over ~ctx/2 positions, 2 FLOPs per MAC

    def forward_flops_per_token(self, ctx: int, upto_layer: int | None = None, logits: bool = True) -> float:
        layers = self.n_layers if upto_layer is None else upto_layer + 1
        return layers * self.layer_flops_per_token(ctx) + (2 * self.d_model * self.vocab if logits else 0)


def load_shape(model_cfg) -> tuple[ModelShape, str]:
    """The model's shape and where it came from."""
    known = KNOWN_CONFIGS.get(model_cfg.name_or_path)
    try:
        if known is not None:  # a cached download if there is one, without waiting on the network
            c = AutoConfig.from_pretrained(model_cfg.name_or_path, revision=model_cfg.revision, local_files_only=True)
            return ModelShape.from_hf_config(c), "config.json (local cache)"
        resolve_model_path(model_cfg.name_or_path)
        return ModelShape.from_hf_config(load_config(model_cfg)), "config.json"
    except (OSError, ValueError) as e:
        if known is None:
            raise ValueError(f"model.name_or_path: cannot read the config of {model_cfg.name_or_path!r} "
                             f"({str(e).splitlines()[0]})") from None
        return ModelShape.from_hf_config(known), "scopeflow's record of its config.json"


@dataclass
class Throughputs:
    """Measured rates, each with the benchmark file it came from: FLOP/s of extraction's forward pass, FLOP/s
    of SAE training per width, and bytes/s of the shuffle."""
    extract_flops_per_s: float
    extract_source: str
    train_flops_per_s: dict[int, float]
    train_source: str
    shuffle_bytes_per_s: float | None
    shuffle_source: str

    def train_rate(self, width: int) -> float:
        """The measured width nearest in log scale (training FLOP/s depends on width, not on d_in much)."""
        best = min(self.train_flops_per_s, key=lambda w: abs(math.log(w / width)))
        return self.train_flops_per_s[best]


def load_throughputs(extract_json: Path, train_json: Path, shuffle_json: Path | None) -> Throughputs:
    """Rates from benchmarks/results files. Extraction's tokens/s on its model becomes FLOP/s (its forward
    FLOPs per token), so it transfers to another model of the same family on the same device."""
    rows = json.loads(extract_json.read_text())
    rows = rows["runs"] if isinstance(rows, dict) else rows
    best = max(rows, key=lambda r: r["extract_tokens_per_s"])
    if "forward_flops_per_token" not in best:
        raise ValueError(f"{extract_json}: written by an older benchmarks/extract.py (no forward_flops_per_token); "
                         "run it again")
    flops = best["extract_tokens_per_s"] * best["forward_flops_per_token"]
    device = best.get("device", "cpu")
    train = json.loads(train_json.read_text())
    per_width: dict[int, float] = {}
    for r in train["ours"]:
        per_width[r["width"]] = max(per_width.get(r["width"], 0.0), r["flops_per_s"])
    shuffle_rate, shuffle_src = None, "not measured"
    if shuffle_json is not None and shuffle_json.exists():
        runs = [r for r in json.loads(shuffle_json.read_text()).get("results", []) if r.get("kind") == "shuffle"]
        if runs:
            shuffle_rate = max(r["gb_per_s"] for r in runs) * 1e9
            shuffle_src = f"{shuffle_json} ({shuffle_rate / 1e9:.2f} GB/s)"
    return Throughputs(flops, f"{extract_json} ({device}, {best['extract_tokens_per_s']:,.0f} tok/s)",
                       per_width, f"{train_json} ({train['meta'].get('device_name', train['meta']['device'])})",
                       shuffle_rate, shuffle_src)


def rows_per_site_layer(cfg: StagesConfig, n_train_seqs: int) -> int:
    """An upper bound on activation rows: every position but the BOS that starts each sequence."""
    return n_train_seqs * (cfg.corpus.ctx - 1)


def group_bytes(cfg: StagesConfig, shape: ModelShape, site: str, n_rows: int) -> int:
    """Storage one (site, layer) holds while its wave runs: its extracted shards and its shuffled copy."""
    per_row = shape.site_width(site) * stored_itemsize(cfg.storage.activation_dtype) + 8  # + index (2 x int32)
    return 2 * n_rows * per_row


def plan_waves(cfg: StagesConfig, groups: list[tuple[str, int]], bytes_of: dict[tuple[str, int], int]
               ) -> list[list[tuple[str, int]]]:
    """Consecutive (site, layer) groups, in layer order, packed into waves whose storage fits the budget
    (one wave without a budget). Layer order keeps a wave's forward pass short: it stops at its last layer."""
    budget = cfg.storage.budget_bytes
    ordered = sorted(groups, key=lambda g: (g[1], g[0]))
    if budget is None:
        return [ordered]
    waves: list[list[tuple[str, int]]] = [[]]
    used = 0
    for g in ordered:
        need = bytes_of[g]
        if need > budget:
            raise ValueError(f"storage.budget_bytes: {budget:,} bytes cannot hold even one (site, layer): "
                             f"{g[0]} layer {g[1]} needs {need:,} (extracted + shuffled)")
        if used + need > budget and waves[-1]:
            waves.append([])
            used = 0
        waves[-1].append(g)
        used += need
    return waves


def _objects(rows: int, chunk_rows: int, shard_chunks: int) -> int:
    """Storage objects of one array (chunks, or shards of chunks) plus its metadata document."""
    per = chunk_rows * (shard_chunks if rows > chunk_rows else 1)
    return math.ceil(rows / per) + 1 if rows else 1


def sae_bytes(d: int, width: int) -> int:
    """params.npz and sae_weights.safetensors of one SAE (float32 W_enc, W_dec, biases, threshold)."""
    return 2 * 4 * (2 * d * width + 2 * width + d)


def latents_bytes(cfg: StagesConfig, width: int) -> int:
    """stats.parquet and contexts.parquet of one SAE, uncompressed: a stats row per latent (counts, max,
    mean, the output tokens with their weights) and up to top_k context rows (ids, value, the window)."""
    ins = cfg.inspect
    return width * (37 + 16 * ins.n_output_tokens + ins.top_k * (18 + 4 * (2 * ins.window + 1)))


def capacity_plan(cfg: StagesConfig, shape: ModelShape, layers: list[int], n_train_seqs: int,
                  rates: Throughputs | None) -> dict:
    """Per stage: units, bytes written, storage objects, FLOPs and device-hours; plus the waves."""
    ctx = cfg.corpus.ctx
    n_eval = cfg.evaluate.n_seqs or cfg.corpus.n_eval_seqs
    per = cfg.extract.seqs_per_shard
    shards = math.ceil(n_train_seqs / per)
    rows = rows_per_site_layer(cfg, n_train_seqs)
    shard_rows = per * (ctx - 1)
    groups = [(site, layer) for site in cfg.sites for layer in layers]
    bytes_of = {g: group_bytes(cfg, shape, g[0], rows) for g in groups}
    waves = suite_waves(cfg, layers, n_train_seqs, shape)  # exactly the waves the suite flow will run
    dbytes = stored_itemsize(cfg.storage.activation_dtype)
    act_bytes = sum(rows * (shape.site_width(s) * dbytes + 8) for s, _ in groups)
    sc = cfg.storage.shard_chunks
    act_objects = len(groups) * shards * (_objects(shard_rows, cfg.storage.chunk_rows, sc)
                                          + _objects(shard_rows, cfg.storage.chunk_rows * sc, 1) + 1)
    shuf_objects = len(groups) * (_objects(rows, cfg.sae.batch_size, sc) * 2 + 1)
    points = sum(len(cfg.sae.sparsities(a)) for a in cfg.sae.architectures)
    n_saes = len(cfg.sae.widths) * points
    # per (group, width): the sweep's SAEs of that width, trained together on the group's stream for its passes
    train_by = [(w, TRAIN_FLOPS_PER_TOKEN_PER_LATENT * shape.site_width(s) * w * points * rows * cfg.sae.epochs_of(w))
                for s, _ in groups for w in cfg.sae.widths]
    train_flops = sum(f for _, f in train_by)
    train_hours = None if rates is None else sum(f / rates.train_rate(w) for w, f in train_by) / 3600
    extract_flops = sum(n_train_seqs * ctx * shape.forward_flops_per_token(ctx, max(layer for _, layer in wave),
                                                                             logits=False) for wave in waves)
    # evaluate: per (site, layer), the clean pass, then per SAE the SAE (encode and decode) and the spliced
    # pass from the first layer the splice changes to the logits; the same again on each further evaluation
    # model (same architecture) over its own rows
    eval_seqs = n_eval + sum(m.n_seqs for m in cfg.evaluate.models)
    eval_flops = eval_seqs * ctx * sum(
        shape.forward_flops_per_token(ctx)
        + n_saes * ((shape.n_layers - first_changed_layer(s, layer)) * shape.layer_flops_per_token(ctx)
                    + 2 * shape.d_model * shape.vocab)
        + points * sum(4 * shape.site_width(s) * w for w in cfg.sae.widths)
        for s, layer in groups)
    # inspect: per (site, layer), the forward pass up to L, then per SAE its encoder, and once per SAE its
    # decoder rows through the unembedding
    inspect_flops = sum(
        n_eval * ctx * (shape.forward_flops_per_token(ctx, layer, logits=False)
                        + points * sum(2 * shape.site_width(s) * w for w in cfg.sae.widths))
        + points * sum(2 * w * shape.d_model * shape.vocab for w in cfg.sae.widths)
        for s, layer in groups)
    inspect_bytes = len(groups) * points * sum(latents_bytes(cfg, w) for w in cfg.sae.widths)
    sae_total = sum(sae_bytes(shape.site_width(s), w) * points for s, _ in groups for w in cfg.sae.widths)

    def hours(flops: float, rate: float | None) -> float | None:
        return None if rate is None else flops / rate / 3600

    ex_rate = None if rates is None else rates.extract_flops_per_s
    shuffle_hours = None if rates is None or rates.shuffle_bytes_per_s is None else \
        act_bytes / rates.shuffle_bytes_per_s / 3600
    estimates = {
        "tokenize": dict(units=1, bytes=(n_train_seqs + n_eval) * ctx * 4, objects=4, flops=0.0, hours=None),
        "extract": dict(units=shards * len(waves), bytes=act_bytes, objects=act_objects, flops=extract_flops,
                        hours=hours(extract_flops, ex_rate)),
        "shuffle": dict(units=len(groups), bytes=act_bytes, objects=shuf_objects, flops=0.0, hours=shuffle_hours),
        "train": dict(units=len(groups), bytes=sae_total, objects=len(groups) * n_saes * 4, flops=train_flops,
                      hours=train_hours),
        "evaluate": dict(units=len(groups), bytes=len(groups) * 4096, objects=len(groups), flops=eval_flops,
                         hours=hours(eval_flops, ex_rate)),
        "inspect": dict(units=len(groups), bytes=inspect_bytes, objects=len(groups) * n_saes * 2,
                        flops=inspect_flops, hours=hours(inspect_flops, ex_rate)),
        "report": dict(units=1, bytes=None, objects=None, flops=0.0, hours=None),
    }
    stages = [dict(stage=name, resource="GPU" if STAGES[name].uses_gpu else "CPU", **estimates[name])
              for name in STAGE_NAMES]
    wave_rows = [dict(wave=i, groups=w, bytes=sum(bytes_of[g] for g in w)) for i, w in enumerate(waves)]
    return dict(stages=stages, waves=wave_rows, n_train_seqs=n_train_seqs, tokens=n_train_seqs * ctx, rows=rows,
                saes=n_saes * len(groups), site_layers=len(groups),
                bytes_per_token=sum(shape.site_width(s) * dbytes for s, _ in groups),
                peak_storage=max(w["bytes"] for w in wave_rows))


def suite_waves(cfg: StagesConfig, layers: list[int], n_train_seqs: int,
                shape: ModelShape | None = None) -> list[list[tuple[str, int]]]:
    """The suite's (site, layer) groups cut into waves that fit storage.budget_bytes (one without a budget, in
    the order its extract units list them)."""
    groups = [(site, layer) for site in cfg.sites for layer in layers]
    if cfg.storage.budget_bytes is None:
        return [groups]
    if shape is None:
        shape, _ = load_shape(cfg.model)
    rows = rows_per_site_layer(cfg, n_train_seqs)
    return plan_waves(cfg, groups, {g: group_bytes(cfg, shape, g[0], rows) for g in groups})


def describe_groups(groups: list[tuple[str, int]]) -> str:
    """'res 0-12, att 0-12' for a wave's groups."""
    parts = []
    for site in dict.fromkeys(g[0] for g in groups):
        layers = sorted(layer for s, layer in groups if s == site)
        runs, start = [], layers[0]
        for a, b in zip(layers, layers[1:] + [None]):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}-{a}")
                start = b
        parts.append(f"{site} {','.join(runs)}")
    return ", ".join(parts)
