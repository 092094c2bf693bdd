"""`python -m tasks.lm.embedded`: build the embedded assets (or find them built) and print their stats."""
from __future__ import annotations

import time

from tasks.lm.embedded.cache import ensure_embedded_assets

if __name__ == "__main__":
    t_start = time.perf_counter()
    assets = ensure_embedded_assets(log=print)
    print(f"corpus: {assets.corpus_path}")
    print(f"model:  {assets.model_dir}")
    for key in ("heldout_loss", "unigram_entropy", "train_seconds", "build_seconds", "n_params",
                "n_train_tokens", "n_heldout_tokens", "version"):
        print(f"{key:>16}: {assets.stats.get(key)}")
    print(f"(this call: {time.perf_counter() - t_start:.1f}s)")
