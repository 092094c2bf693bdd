"""The run layout: every path of a run's public contract (docs/architecture.md, "The run layout"), relative
to the storage root, defined once. Stages, flows, tests and benchmarks import paths from here, never from
each other, so a path changes in one place and other tools can read this file as the contract's index.
"""
from __future__ import annotations

SUITE_JSON = "suite.json"
#: who holds the root: one run at a time (storage/lease.py)
LEASE = "lease.json"
TOKENS_TRAIN = "tokens/train"
TOKENS_EVAL = "tokens/eval"
REPORT_DIR = "report"
REPORT_INDEX = f"{REPORT_DIR}/index.html"
REPORT_METRICS = f"{REPORT_DIR}/metrics.parquet"
STATE_DIR = "state"
#: a unit's training log, inside its SAE folder
TRAIN_LOG = "train_log.parquet"
#: inside a latents_dir: one row per latent, and the top-k activating contexts of every latent
LATENT_STATS = "stats.parquet"
LATENT_CONTEXTS = "contexts.parquet"
LATENT_SPLITTING = "splitting.parquet"
#: inside a latents_dir: the latent browser's data script of that SAE, the bytes of its report/latents/sae_N.js
LATENT_BROWSER_DATA = "browser.js"


def site_layer(site: str, layer: int) -> str:
    """`{site}/layer_{L}`: the unit id of every per-(site, layer) stage and the middle of its paths."""
    return f"{site}/layer_{layer}"


def shard_name(shard: int) -> str:
    return f"shard_{shard:05d}"


def activation_shard(site: str, layer: int, shard: int) -> str:
    """zarr group: x [rows, d] and index [rows, 2] (seq, pos) of one extract shard."""
    return f"activations/{site_layer(site, layer)}/{shard_name(shard)}"


def shuffled(site: str, layer: int) -> str:
    """zarr group: x [N, d], index [N, 2]; attrs count, mean, mean_sq_norm, dtype, source fingerprint."""
    return f"shuffled/{site_layer(site, layer)}"


def sae_dir(site: str, layer: int, width: int, setting: str) -> str:
    """One SAE: params.npz (Gemma Scope) + cfg.json and sae_weights.safetensors (SAELens) + train_log.parquet.
    `setting` is its architecture's slug, e.g. `lambda_0.01`."""
    return f"saes/{site_layer(site, layer)}/width_{width}/{setting}"


def checkpoint(site: str, layer: int) -> str:
    """A train unit's latest state while it runs; the folder is deleted once its SAEs are written."""
    return f"checkpoints/{site_layer(site, layer)}/state.pt"


def eval_table(site: str, layer: int) -> str:
    return f"evals/{site_layer(site, layer)}.parquet"


def latent_splitting(site: str, layer: int) -> str:
    """Feature splitting of a (site, layer): each latent of a wider SAE and its nearest latent, by decoder
    cosine, of the next narrower SAE of the same architecture and sparsity setting."""
    return f"latents/{site_layer(site, layer)}/{LATENT_SPLITTING}"


def latents_dir(site: str, layer: int, width: int, setting: str) -> str:
    """One SAE's latents, as the inspect stage found them on the held-out tokens: LATENT_STATS (a row per
    latent), LATENT_CONTEXTS (its top-activating contexts) and LATENT_BROWSER_DATA (both as the browser
    loads them)."""
    return f"latents/{site_layer(site, layer)}/width_{width}/{setting}"


def import_sae_dir(name: str, site: str, release_rel: str) -> str:
    """An imported SAE; `release_rel` is its path inside the release (layer_{L}/width_{W}/average_l0_{N})."""
    return f"imports/{name}/{site}/{release_rel}"


def import_evals_dir(name: str, site: str) -> str:
    return f"imports/{name}/evals/{site}"


def import_eval_table(name: str, site: str, layer: int) -> str:
    return f"{import_evals_dir(name, site)}/layer_{layer}.parquet"


def embedded_assets(version: int) -> str:
    """The embedded corpus, tokenizer and model as the driver built them (a copy of its cache folder plus
    `files.json`, the sha256 of each file, written last): a node whose cache lacks them copies them from here."""
    return f"assets/embedded-v{version}"


def unit_record(stage: str, unit: str) -> str:
    """The ledger record of one unit (unit ids may hold '/', e.g. `res/layer_3`)."""
    return f"{STATE_DIR}/{stage}/{unit}.json"


def stage_records(stage: str) -> str:
    return f"{STATE_DIR}/{stage}"
