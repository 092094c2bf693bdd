"""`report/latents.html`, the latent browser: a static page over the inspect stage's outputs.

Its data are scripts, `latents/index.js` (the SAEs), `latents/vocab.js` (the tokens they name) and one
`latents/sae_N.js` per SAE, added to the page when that SAE is picked: a page opened from the file system
may load scripts but not fetch() files, and a suite of hundreds of SAEs must not load at once."""
from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Iterable
from importlib import resources

import numpy as np

from tasks.latent_tables import SaeLatents, token_ids

from .page import REPORT_CSS

LATENTS_PAGE = "latents.html"
DATA_DIR = "latents"
_ASSETS = resources.files(__package__) / "assets"


_SPEC = {4: ".4g", 6: ".6g"}  # significant digits kept: 6 for statistics, 4 for logits and window shading


def _value(x: float | None, digits: int = 6) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(format(x, _SPEC[digits]))


def sae_data(s: SaeLatents) -> dict:
    """Per latent [frequency, n_firing, max, mean, boosted ids, their logits, suppressed ids, their logits]
    and its contexts [activation, seq, pos, window ids, window activations], best first."""
    cols = s.stats.to_pydict()
    latents = [[_value(cols["frequency"][i]), cols["n_firing"][i], _value(cols["max_activation"][i]),
                _value(cols["mean_activation"][i]), cols["top_boosted"][i],
                [_value(v, 4) for v in cols["top_boosted_logits"][i]], cols["top_suppressed"][i],
                [_value(v, 4) for v in cols["top_suppressed_logits"][i]]] for i in range(s.stats.num_rows)]
    c = s.contexts
    latent, activation, seq, pos, window = (c.column(k).to_pylist() for k in ("latent", "activation", "seq", "pos",
                                                                               "window"))
    shaded = c.column("window_activations").combine_chunks()  # 2w+1 values a context (a fixed-size list)
    n = shaded.type.list_size
    values = _rounded(shaded.flatten().to_numpy(zero_copy_only=False), 4)
    contexts: dict[int, list] = {}
    for i, lat in enumerate(latent):
        contexts.setdefault(lat, []).append([_value(activation[i]), seq[i], pos[i], window[i],
                                             values[i * n:(i + 1) * n]])
    return {"n_tokens": int(s.stats.schema.metadata[b"n_tokens"]), "latents": latents, "contexts": contexts}


def _rounded(values: np.ndarray, digits: int) -> list[float]:
    """`_value` of each value, with the zeros that most of a sparse code's windows hold left as they are
    (a report of the tiny suite formatted ~700k values one by one)."""
    out = values.astype(np.float64).tolist()
    for i in np.flatnonzero(values).tolist():
        out[i] = _value(out[i], digits)
    return out


def _script_text(target: str, value) -> str:
    return f"{target} = {json.dumps(value, separators=(',', ':'))};\n"


def sae_script(s: SaeLatents) -> str:
    """One SAE's data script. It names the SAE by key, not by its place in the suite, so the inspect stage
    writes it beside the SAE's latents (most of a report's time on the tiny suite, spread over the inspect
    units) and the report only copies it."""
    return _script_text(f"SCOPEFLOW_LATENTS.data[{json.dumps(s.key)}]", sae_data(s))


def write_latent_browser(out_dir: pathlib.Path, saes: Iterable[SaeLatents],
                         decode: Callable[[set[int]], dict[int, str]], title: str,
                         script: Callable[[SaeLatents], str] = sae_script) -> list[pathlib.Path]:
    """The data scripts (`script` of each SAE), one SAE at a time (`saes` may load each as it is asked for,
    so a suite's latents are never all in memory), then the vocabulary `decode` gives for the token ids they
    name, then the page (last, once what it loads exists)."""
    data = pathlib.Path(out_dir) / DATA_DIR
    data.mkdir(parents=True, exist_ok=True)
    index, written, ids, window = [], [], set(), 0
    for n, s in enumerate(saes):
        file = data / f"sae_{n}.js"
        file.write_text(script(s), encoding="utf-8")
        written.append(file)
        index.append({"key": s.key, "site": s.site, "layer": s.layer, "width": s.width, "setting": s.setting,
                      "n_dead": int(sum(s.stats.column("dead").to_pylist())), "file": f"{DATA_DIR}/{file.name}"})
        ids |= token_ids([s])
        window = s.window
    (data / "index.js").write_text(f"window.SCOPEFLOW_LATENTS = {{saes: {json.dumps(index)}, window: {window}, "
                                   f"data: {{}}, vocab: {{}}}};\n", encoding="utf-8")
    (data / "vocab.js").write_text(_script_text("SCOPEFLOW_LATENTS.vocab", {str(k): v for k, v in decode(ids).items()}),
                                   encoding="utf-8")
    page = (_ASSETS / "latents.html").read_text(encoding="utf-8")
    page = page.replace("__TITLE__", title).replace("__CSS__", REPORT_CSS)
    page = page.replace("__JS__", (_ASSETS / "latents.js").read_text(encoding="utf-8"))
    (out_dir / LATENTS_PAGE).write_text(page, encoding="utf-8")
    return [*written, data / "index.js", data / "vocab.js", out_dir / LATENTS_PAGE]
