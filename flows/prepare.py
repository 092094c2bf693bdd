"""Checks and resolution done once in the driver before any unit runs, so bad input fails in one line
before anything is scheduled or written."""
from __future__ import annotations

import math
import os
import platform
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import botocore.config
import botocore.exceptions as bx
import botocore.session
from botocore import UNSIGNED

from flows.config import ConfigError, SuiteConfig
from storage.layout import SUITE_JSON
from storage.root import StorageRoot
from tasks.config import ModelConfig
from tasks.lm.chat import has_chat_template
from tasks.lm.corpus import check_corpus_heads, expand_path_list, expand_paths, read_conversations
from tasks.lm.embedded import publish_embedded_assets
from tasks.lm.model import load_config, load_tokenizer, resolve_model_path
from tasks.lm.sites import n_layers, site_table, site_width
from tasks.units import suite_fingerprint

_VERSIONED = ("torch", "transformers", "ray", "prefect", "prefect-ray", "zarr", "pyarrow", "pydantic", "scopeflow")


@dataclass
class PreparedSuite:
    root: StorageRoot
    layers: list[int]
    model_name: str
    fingerprint: str


def open_root(cfg: SuiteConfig) -> StorageRoot:
    return StorageRoot(cfg.storage.root, cfg.storage.storage_options)


def size_problem(cfg: SuiteConfig, hf_config) -> str | None:
    """A size in the config that cannot work with this model or data, known before anything runs (one line:
    "field: what is wrong (got X); what to do"); None when every size fits. What depends on the corpus's
    sequence count is checked by the tokenize unit once it is known."""
    ctx, n_eval = cfg.corpus.ctx, cfg.corpus.n_eval_seqs
    attr = next((a for a in ("max_position_embeddings", "n_positions", "n_ctx")
                 if isinstance(getattr(hf_config, a, None), int)), None)
    positions = getattr(hf_config, attr) if attr else None
    if positions is not None and ctx > positions:
        return (f"corpus.ctx: longer than the model's positions (got {ctx}; {cfg.model.name_or_path} has "
                f"{attr}={positions}); set corpus.ctx to at most {positions}")
    if cfg.evaluate.n_seqs is not None and cfg.evaluate.n_seqs > n_eval:
        return (f"evaluate.n_seqs: more sequences than the held-out split holds (got {cfg.evaluate.n_seqs}; "
                f"corpus.n_eval_seqs={n_eval}); set evaluate.n_seqs to at most {n_eval}, or raise corpus.n_eval_seqs")
    bs, cap = cfg.sae.batch_size, cfg.corpus.max_train_seqs
    if cap is not None and cap * (ctx - 1) < bs:
        # an upper bound on rows (every position but the BOS): EOS and padding only make them fewer
        return (f"corpus.max_train_seqs: too few train sequences for one batch of sae.batch_size={bs} (got {cap}: "
                f"at most {cap} x (corpus.ctx-1={ctx - 1}) = {cap * (ctx - 1):,} activation rows, BOS excluded); "
                f"raise corpus.max_train_seqs to at least {math.ceil(bs / (ctx - 1))} or lower sae.batch_size")
    if "topk" in cfg.sae.architectures and max(cfg.sae.topk_ks) > min(cfg.sae.widths):
        return (f"sae.topk_ks: k larger than the narrowest SAE's latents (got {max(cfg.sae.topk_ks)}; sae.widths "
                f"has {min(cfg.sae.widths)}); use k of at most {min(cfg.sae.widths)}")
    return None


def model_config(model: ModelConfig) -> tuple[str, Any]:
    """The model's resolved path and its Hugging Face config; a local folder must hold a config.json. Errors
    name `model.name_or_path`."""
    path = resolve_model_path(model.name_or_path)
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file():
        raise FileNotFoundError(f"model.name_or_path: no config.json in {path} (got {model.name_or_path!r}); give a "
                                f"Hugging Face model folder (config.json, weights, tokenizer files)")
    return path, load_config(model)


def _shape(hf_config, sites: list[str]) -> tuple:
    return (hf_config.model_type, n_layers(hf_config), *(site_width(hf_config, s) for s in sites))


def eval_model_problem(cfg: SuiteConfig, hf_config) -> str | None:
    """Each further evaluation model (`evaluate.models`) loads, has the suite model's architecture (type,
    depth and every site's width, so each SAE splices in), a chat template where its text is chats, and
    text files that exist and read (one line, "field: what is wrong (got X); what to do")."""
    want = _shape(hf_config, cfg.sites)
    for i, m in enumerate(cfg.evaluate.models):
        at = f"evaluate.models[{i}]"
        try:
            other = model_config(m.model)[1]
        except (ValueError, FileNotFoundError, OSError) as e:
            return f"{at}.model.name_or_path: {str(e).splitlines()[0].removeprefix('model.name_or_path: ')}"
        except Exception as e:  # transformers' own config checks raise their own kinds
            return (f"{at}.model.name_or_path: {m.model.name_or_path}'s config.json does not load ({type(e).__name__}: "
                    f"{str(e).splitlines()[-1].strip()}); give a Hugging Face model folder")
        got = _shape(other, cfg.sites)
        if got != want:
            return (f"{at}.model: not the suite model's architecture, so its SAEs cannot be spliced in (got "
                    f"{m.model.name_or_path}: type, layers, site widths {got[0]}, {got[1]}, {list(got[2:])}; "
                    f"{cfg.model.name_or_path} has {want[0]}, {want[1]}, {list(want[2:])}); name a variant of the same model")
        if m.chat and not has_chat_template(load_tokenizer(m.model)):
            return (f"{at}.chat: {m.model.name_or_path}'s tokenizer has no chat template (got chat: true); give an "
                    f"instruction-tuned model's folder with one, or set chat: false for plain text")
        try:
            files = expand_path_list(m.paths, cfg.storage.storage_options, f"{at}.paths")
            if m.chat:
                next(read_conversations(files[0], m.messages_field, cfg.storage.storage_options), None)
            else:
                check_corpus_heads(files, m.text_field, cfg.storage.storage_options)
        except (ValueError, OSError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            return msg if msg.startswith(f"{at}.") else f"{at}.paths: {msg}"
    return None


def local_root_problem(url: str, need_write: bool = True) -> str | None:
    """Why a local root cannot be used, without creating anything: it, or its nearest existing ancestor, is a
    regular file, or (`need_write`) is not writable."""
    p = Path(url)
    ancestor = p
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return f"{ancestor} is a regular file, not a folder"
    if need_write and not os.access(ancestor, os.W_OK | os.X_OK):
        return f"{ancestor} is not writable" + ("" if ancestor == p else ", so the root cannot be created in it")
    return None


def s3_problem(url: str, options: dict[str, Any], timeout_s: float = 3.0) -> tuple[str, str] | None:
    """Why an s3:// URL cannot be used, as (what is wrong, what to do): no credentials in the AWS chain
    (environment, AWS_PROFILE, ~/.aws, instance metadata), or the endpoint not answering one listing of the
    bucket within `timeout_s`, without retries. Credentials are never printed."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    client_kwargs = dict(options.get("client_kwargs") or {})
    endpoint = options.get("endpoint_url") or client_kwargs.pop("endpoint_url", None)
    anon = bool(options.get("anon"))
    try:
        session = botocore.session.Session(profile=options.get("profile"))
        if not anon and session.get_credentials() is None:
            return (f"no AWS credentials for bucket {bucket!r} (none in the environment, AWS_PROFILE, ~/.aws or "
                    f"instance metadata)", "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        config = botocore.config.Config(**(options.get("config_kwargs") or {})).merge(botocore.config.Config(
            connect_timeout=timeout_s, read_timeout=timeout_s, retries={"max_attempts": 0, "mode": "standard"},
            **({"signature_version": UNSIGNED} if anon else {})))
        client = session.create_client("s3", endpoint_url=endpoint, region_name=client_kwargs.get("region_name"),
                                       use_ssl=options.get("use_ssl", True), verify=client_kwargs.get("verify"),
                                       config=config)
    except bx.BotoCoreError as e:
        return f"cannot set up S3 access for bucket {bucket!r} ({str(e).splitlines()[0]})", "check the AWS profile"
    at = client.meta.endpoint_url
    fix_endpoint = "check storage.storage_options.endpoint_url and the network"
    try:
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
    except (bx.EndpointConnectionError, bx.ConnectTimeoutError, bx.ReadTimeoutError) as e:
        return f"S3 endpoint {at} unreachable for bucket {bucket!r} within {timeout_s:g} s ({type(e).__name__})", fix_endpoint
    except bx.ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", "?"))
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket", "404") or status == 404:
            return f"bucket {bucket!r} not found at {at}", f"create it, or {fix_endpoint}"
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403") or status == 403:
            return (f"bucket {bucket!r} at {at} refuses these credentials ({code})",
                    "check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, and that they may list the bucket")
        return f"bucket {bucket!r} at {at} answered {code} (HTTP {status})", fix_endpoint
    except bx.BotoCoreError as e:
        return f"bucket {bucket!r} at {at}: {type(e).__name__} ({str(e).splitlines()[0]})", fix_endpoint
    return None


def storage_problem(cfg: SuiteConfig, need_write: bool = True) -> str | None:
    """The storage root can be written (a local folder; only read when not `need_write`) or reached (S3),
    and so can the corpus's buckets."""
    root = cfg.storage.root
    if root.startswith("s3://"):
        why = s3_problem(root, cfg.storage.storage_options)
        if why:
            return f"storage.root: {why[0]} (got {root!r}); {why[1]}"
    elif "://" not in root or root.startswith("file://"):
        why = local_root_problem(open_root(cfg).url, need_write)
        if why:
            return f"storage.root: cannot be written: {why} (got {root!r}); choose a root in a writable folder"
    buckets = sorted({p.removeprefix("s3://").split("/", 1)[0] for p in cfg.corpus.paths if p.startswith("s3://")})
    for bucket in buckets:
        if root == f"s3://{bucket}" or root.startswith(f"s3://{bucket}/"):
            continue
        why = s3_problem(f"s3://{bucket}", cfg.storage.storage_options)
        if why:
            return f"corpus.paths: {why[0]} (got s3://{bucket}); {why[1]}"
    return None


def prepare_suite(cfg: SuiteConfig, config_path: str, write: bool = True, need_write: bool | None = None) -> PreparedSuite:
    """Every check that can be made before a unit runs, each failing as a ConfigError of one line
    ("CONFIG: field: what is wrong (got X); what to do"): the model, sites and layers, the sizes, the storage
    root, the corpus files and their first bytes. Writes suite.json only when `write`, and never creates
    anything otherwise. `need_write` (default: `write`): a local root must be writable, not only readable
    (`scopeflow run` checks so before Prefect starts; `status` and `report` only read)."""
    try:
        model_path, hf_config = model_config(cfg.model)
        site_table(hf_config.model_type)
        layers = cfg.resolved_layers(n_layers(hf_config))
    except (ValueError, FileNotFoundError, OSError) as e:
        raise ConfigError(f"{config_path}: {str(e).splitlines()[0]}") from None
    problem = (size_problem(cfg, hf_config) or eval_model_problem(cfg, hf_config)
               or storage_problem(cfg, write if need_write is None else need_write))
    if problem:
        raise ConfigError(f"{config_path}: {problem}")
    try:
        paths = expand_paths(cfg.corpus, cfg.storage.storage_options)
        check_corpus_heads(paths, cfg.corpus.text_field, cfg.storage.storage_options)
    except (ValueError, OSError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{config_path}: {msg if msg.startswith('corpus.') else 'corpus.paths: ' + msg}") from None
    root = open_root(cfg)
    fp = suite_fingerprint(cfg)
    # the name SAELens/Neuronpedia know the model by: a hub id as given, else the folder name
    model_name = cfg.model.name_or_path if model_path == cfg.model.name_or_path else Path(model_path).name
    if write:
        named = [cfg.model.name_or_path, *cfg.corpus.paths,
                 *(p for m in cfg.evaluate.models for p in (m.model.name_or_path, *m.paths))]
        if any(p.startswith("embedded:") for p in named):
            publish_embedded_assets(root)  # what the nodes copy into their caches ("Scale")
        versions = {}
        for pkg in _VERSIONED:
            try:
                versions[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                pass
        root.write_json(SUITE_JSON, {
            "config": cfg.model_dump(mode="json"), "fingerprint": fp, "config_path": str(config_path),
            "resolved": {"layers": layers, "model_path": model_path, "model_type": hf_config.model_type},
            "versions": versions, "python": platform.python_version(),
            "written_at": datetime.now(timezone.utc).isoformat()})
    return PreparedSuite(root=root, layers=layers, model_name=model_name, fingerprint=fp)
