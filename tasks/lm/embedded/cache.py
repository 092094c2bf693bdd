"""The locked on-disk cache of the embedded assets: built once, atomically, under a file lock, then reused;
and the mapping from the embedded names in suite configs to the built paths.

On a cluster no node reads the driver's disk: the driver publishes its build to the storage root at prepare
time (`publish_embedded_assets`), and a unit runs with that root as its asset source (`assets_source`), so a
node whose cache lacks the build copies it from the root (the same bytes, checked by sha256) instead of
building its own (minutes, and not bit-identical under another thread count)."""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from transformers.utils import logging as hf_logging

from storage.layout import embedded_assets as published_dir
from storage.root import StorageRoot
from tasks.lm.embedded.grammar import generate_chats, generate_corpus
from tasks.lm.embedded.it_model import tune_instruction_model
from tasks.lm.embedded.spec import (
    BUILD_N_DOCS,
    BUILD_SEED,
    BUILD_VOCAB_SIZE,
    COMPLETE_MARKER,
    EMBEDDED_CHATS,
    EMBEDDED_CORPUS,
    EMBEDDED_IT_MODEL,
    EMBEDDED_MODEL,
    EMBEDDED_VERSION,
    IT_N_CHATS,
    IT_N_EVAL_CHATS,
    IT_SEED,
    MANIFEST_FILE,
    STATS_FILE,
)
from tasks.lm.embedded.tiny_model import train_tiny_gemma2
from tasks.lm.embedded.tokenizer import train_tokenizer


#: in a published copy: {relative path: sha256} of every file, written last (a copy without it is unfinished)
PUBLISHED_INDEX = "files.json"
_source: StorageRoot | None = None


@dataclass(frozen=True)
class EmbeddedAssets:
    corpus_path: Path
    model_dir: Path
    stats: dict
    it_model_dir: Path  # the instruction-tuned variant, with its chat template
    chats_path: Path  # held-out chats it is evaluated on (jsonl, `messages` per line)


def default_cache_dir() -> Path:
    env = os.environ.get("SCOPEFLOW_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "scopeflow"


def _assets_in(root: Path) -> EmbeddedAssets:
    stats = json.loads((root / "model" / STATS_FILE).read_text())
    manifest = json.loads((root / MANIFEST_FILE).read_text())
    stats = {**stats, **{k: v for k, v in manifest.items() if k not in stats}}
    return EmbeddedAssets(corpus_path=root / "corpus.jsonl", model_dir=root / "model", stats=stats,
                          it_model_dir=root / "model-it", chats_path=root / "chats-eval.jsonl")


@contextlib.contextmanager
def _no_progress_bars():
    """transformers draws a bar for every save and load of the build's models, noise in a user's first run."""
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@_no_progress_bars()
def build_embedded_assets(root: Path, *, seed: int = BUILD_SEED, n_docs: int = BUILD_N_DOCS,
                          vocab_size: int = BUILD_VOCAB_SIZE, log: Callable[[str], None] | None = None,
                          **train_kwargs) -> None:
    """Builds everything into `root` (which must not be the final location: the caller renames it into
    place), writing the COMPLETE marker last."""
    t0 = time.perf_counter()
    root.mkdir(parents=True, exist_ok=True)
    corpus = generate_corpus(root / "corpus.jsonl", n_docs, seed)
    t_corpus = time.perf_counter() - t0
    tok = train_tokenizer(corpus, root / "tokenizer", vocab_size)
    t_tok = time.perf_counter() - t0 - t_corpus
    train_tiny_gemma2(corpus, tok, root / "model", seed=seed, log=log, **train_kwargs)
    shutil.rmtree(root / "tokenizer")  # its files now live in model/, next to the weights
    t_it = time.perf_counter()
    chats = generate_chats(root / "chats.jsonl", IT_N_CHATS, IT_SEED)
    eval_chats = generate_chats(root / "chats-eval.jsonl", IT_N_EVAL_CHATS, IT_SEED + 1)
    tune_instruction_model(root / "model", chats, eval_chats, root / "model-it", log=log)
    manifest = {
        "version": EMBEDDED_VERSION,
        "seed": seed,
        "n_docs": n_docs,
        "corpus_bytes": corpus.stat().st_size,
        "corpus_seconds": t_corpus,
        "tokenizer_seconds": t_tok,
        "instruction_tuning_seconds": time.perf_counter() - t_it,
        "build_seconds": time.perf_counter() - t0,
    }
    (root / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write_synced(root / COMPLETE_MARKER, f"embedded-v{EMBEDDED_VERSION}\n")
    _fsync_tree(root)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_tree(root: Path) -> None:
    """The rename that publishes the build must not reach disk before the files it publishes."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _file_lock(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def ensure_embedded_assets(cache_dir: Path | None = None, *, log: Callable[[str], None] | None = None,
                           source: StorageRoot | None = None) -> EmbeddedAssets:
    """Cheap when already built (one stat and two small reads, no lock). Otherwise one process fills the cache
    under an exclusive lock while others wait, then find it filled: from `source` (default: the asset source
    set by `assets_source`) when the driver published its build there, else by building. Either happens in a
    private folder that is renamed into place only once complete, so a crash at any point leaves either
    nothing or a whole build under the final name."""
    base = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root = base / f"embedded-v{EMBEDDED_VERSION}"
    if (root / COMPLETE_MARKER).is_file():
        return _assets_in(root)
    source = source if source is not None else _source
    base.mkdir(parents=True, exist_ok=True)
    with _file_lock(base / f"embedded-v{EMBEDDED_VERSION}.lock"):
        if (root / COMPLETE_MARKER).is_file():
            return _assets_in(root)
        # Holding the lock, any leftover build folder belongs to a builder that died: reclaim the space.
        for stale in base.glob(f".embedded-v{EMBEDDED_VERSION}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = base / f".embedded-v{EMBEDDED_VERSION}.build-{os.getpid()}"
        if source is None or not _fetch_published(source, tmp):
            build_embedded_assets(tmp, log=log)
        if root.exists():  # incomplete (no marker): move it aside first, since rename won't replace a folder
            aside = base / f".embedded-v{EMBEDDED_VERSION}.old-{os.getpid()}"
            os.rename(root, aside)
            shutil.rmtree(aside, ignore_errors=True)
        os.rename(tmp, root)
        fd = os.open(base, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return _assets_in(root)


def _file_index(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _published_index(root: StorageRoot) -> dict[str, str] | None:
    rel = f"{published_dir(EMBEDDED_VERSION)}/{PUBLISHED_INDEX}"
    data = root.read_optional(rel)
    return None if data is None else json.loads(data)


def publish_embedded_assets(root: StorageRoot, cache_dir: Path | None = None) -> str:
    """Copy this machine's build (built first if need be) to `{root}/assets/embedded-v{N}/`, the sha256 index
    last. Returns "published", "present" (the root holds these very files) or "kept": the root holds another
    build, which stays, since the root's outputs were computed from it and its nodes copy it."""
    folder = ensure_embedded_assets(cache_dir, source=None).model_dir.parent
    index = _file_index(folder)
    have = _published_index(root)
    if have is not None:
        return "present" if have == index else "kept"
    dest = published_dir(EMBEDDED_VERSION)
    for rel in index:
        root.write_bytes(f"{dest}/{rel}", (folder / rel).read_bytes())
    root.write_json(f"{dest}/{PUBLISHED_INDEX}", index)
    return "published"


def _fetch_published(root: StorageRoot, tmp: Path) -> bool:
    """Copy the published build into `tmp`, each file checked against its sha256; False when the root holds
    no (finished) published copy. A copy that does not match its index is an error, never a silent rebuild,
    whose bytes could differ from what the other nodes use."""
    index = _published_index(root)
    if index is None:
        return False
    src = published_dir(EMBEDDED_VERSION)
    for rel, digest in index.items():
        data = root.read_bytes(f"{src}/{rel}")
        if hashlib.sha256(data).hexdigest() != digest:
            raise OSError(f"embedded assets: {root.path(src, rel)} does not match its sha256 in {PUBLISHED_INDEX}; "
                          f"delete {root.path(src)} and run again to publish them anew")
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
    _fsync_tree(tmp)
    return True


@contextlib.contextmanager
def assets_source(root: StorageRoot | None):
    """Within this block (one unit, in this process), a cache that lacks the embedded assets copies them
    from `root`, where the driver published them, rather than building them."""
    global _source
    previous, _source = _source, root
    try:
        yield
    finally:
        _source = previous


def resolve_embedded(name: str, cache_dir: Path | None = None) -> Path | None:
    """Maps the embedded names used in suite configs to real paths, building (or fetching) on first use; any
    other string is not ours and gets None, so callers can fall through to their own resolution."""
    if name == EMBEDDED_CORPUS:
        return ensure_embedded_assets(cache_dir).corpus_path
    if name == EMBEDDED_MODEL:
        return ensure_embedded_assets(cache_dir).model_dir
    if name == EMBEDDED_IT_MODEL:
        return ensure_embedded_assets(cache_dir).it_model_dir
    if name == EMBEDDED_CHATS:
        return ensure_embedded_assets(cache_dir).chats_path
    return None
