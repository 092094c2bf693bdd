"""One SAE's latents as the inspect stage wrote them (`latents/.../{stats,contexts}.parquet`), read back
for what a researcher looks at: the browser page and `scopeflow latents`. Token ids are decoded here, once,
with the suite's tokenizer."""
from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from storage import layout
from storage.root import StorageRoot


@dataclass(frozen=True)
class SaeLatents:
    site: str
    layer: int
    width: int
    setting: str
    stats: pa.Table
    contexts: pa.Table

    @property
    def key(self) -> str:
        return f"{self.site}/layer_{self.layer}/width_{self.width}/{self.setting}"

    @property
    def window(self) -> int:
        return int(self.contexts.schema.metadata[b"window"])

    def contexts_of(self, latent: int) -> list[dict]:
        """Its top contexts, best first."""
        return self.contexts.filter(pc.equal(self.contexts["latent"], latent)).to_pylist()


def load_sae_latents(root: StorageRoot, site: str, layer: int, width: int, setting: str) -> SaeLatents:
    folder = layout.latents_dir(site, layer, width, setting)

    def read(name: str) -> pa.Table:
        return pq.read_table(io.BytesIO(root.read_bytes(f"{folder}/{name}")))

    return SaeLatents(site, layer, width, setting, read(layout.LATENT_STATS), read(layout.LATENT_CONTEXTS))


def token_ids(latents: list[SaeLatents]) -> set[int]:
    """Every token id a context window or an output-token list names."""
    ids: set[int] = set()
    for s in latents:
        for col in ("top_boosted", "top_suppressed"):
            ids.update(s.stats.column(col).combine_chunks().flatten().to_pylist())
        ids.update(s.contexts.column("window").combine_chunks().flatten().to_pylist())
    ids.discard(-1)
    return ids


def decode_tokens(tokenizer, ids: set[int]) -> dict[int, str]:
    """Each id as the text it stands for (a leading space kept), as a page or terminal shows it."""
    return {i: tokenizer.decode([i]) for i in sorted(ids)}
